#!/usr/bin/env bash
# Give each device a random password: adds it to the mosquitto password file (hashed, via mosquitto_passwd)
# and writes the clear text to OUT_DIR/DEVICE_ID.password (0600) for provisioning the device's agent.toml
# (broker.password, or the EDGE_AGENT_BROKER_PASSWORD environment variable). Delete those files once the
# devices have them. Run it again for a device to rotate its password.
# Usage: bash add-passwords.sh OUT_DIR DEVICE_ID [DEVICE_ID ...]
set -euo pipefail
# shellcheck source=device-ids.sh
source "$(dirname "$0")/device-ids.sh"
out=${1:?usage: add-passwords.sh OUT_DIR DEVICE_ID [DEVICE_ID ...]}
shift
[ "$#" -gt 0 ] || { echo "usage: add-passwords.sh OUT_DIR DEVICE_ID [DEVICE_ID ...]" >&2; exit 2; }
command -v mosquitto_passwd > /dev/null || { echo "mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 3; }
for device in "$@"; do
  case "$device" in
    operator) echo "the operator authenticates with its certificate on the operator listener, not a password" >&2; exit 2 ;;
  esac
  check_device_id "$device"
done
mkdir -p "$out"
umask 077
touch "$out/passwords"
for device in "$@"; do
  password=$(openssl rand -base64 24 | tr -d '/+=\n')
  printf '%s\n' "$password" > "$out/$device.password"
  # -b takes the password on the command line (visible to `ps` for a moment); run this on the broker host
  mosquitto_passwd -b "$out/passwords" "$device" "$password"
done
echo "added ${#} device password(s) to $out/passwords"
