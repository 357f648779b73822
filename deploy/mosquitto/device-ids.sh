# Sourced by make-certs.sh and add-passwords.sh. A device id becomes an MQTT username (the ACL's %u), a topic
# level and a file name: refuse anything that could escape the ACL or the folder.
# check_device_id ID: exits 2 with the reason unless ID is 1 to 64 letters, digits, '-' or '_' and not a
# reserved topic level.
check_device_id() {
  case "$1" in
    group | artifacts | fleet) echo "device id '$1' is a reserved topic level" >&2; exit 2 ;;
  esac
  if ! [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]]; then
    echo "device id '$1': use 1 to 64 letters, digits, '-' or '_' (no '/', '+', '#', '.', spaces)" >&2
    exit 2
  fi
}
