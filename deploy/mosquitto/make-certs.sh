#!/usr/bin/env bash
# Make a CA, a server certificate and one client certificate per device (and one for the operator) for a
# test fleet. Run it again with more device ids to add devices: what exists is kept.
# Usage: bash make-certs.sh OUT_DIR SERVER_NAME [DEVICE_ID ...]
# Writes OUT_DIR/ca.{crt,key}, server.{crt,key}, operator.{crt,key}, DEVICE_ID.{crt,key}.
# For production use your own PKI and keep ca.key offline: these keys are unencrypted, valid for 825 days.
set -euo pipefail
# shellcheck source=device-ids.sh
source "$(dirname "$0")/device-ids.sh"
out=${1:?usage: make-certs.sh OUT_DIR SERVER_NAME [DEVICE_ID ...]}
server=${2:?usage: make-certs.sh OUT_DIR SERVER_NAME [DEVICE_ID ...]}
shift 2

# A certificate's CN becomes the MQTT username (use_identity_as_username) that the ACL's %u stands for, and
# the file names below are made from it: refuse anything that could escape the ACL or the folder.
for device in "$@"; do
  case "$device" in
    ca | server | operator) echo "device id '$device' is reserved (it names the CA, the server or the operator)" >&2; exit 2 ;;
  esac
  check_device_id "$device"
done

mkdir -p "$out"
cd "$out"
umask 077
if [ ! -f ca.key ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 825 -subj "/CN=edge-agent fleet CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
fi

issue() {  # name, extensions
  local name=$1 ext=$2
  if [ -f "$name.crt" ] && [ -f "$name.key" ]; then
    return 0
  fi
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 825 \
    -extfile "$name.ext" -out "$name.crt" 2> /dev/null
  rm -f "$name.csr" "$name.ext"
}

issue server "extendedKeyUsage=serverAuth
subjectAltName=DNS:$server,DNS:localhost,IP:127.0.0.1"
for name in operator "$@"; do
  issue "$name" "extendedKeyUsage=clientAuth"
done
# certificates are public; keys stay 0600 (umask). mosquitto must read server.key: see README.md.
chmod 644 ca.crt ./*.crt
echo "wrote the CA, the server certificate and client certificates for: operator $* (in $(pwd))"
