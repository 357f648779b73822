#!/usr/bin/env bash
# Install edge-agent on a Jetson (or any Debian/Ubuntu machine) as a systemd service.
#
#   sudo deploy/install.sh [--config FILE] [--no-start] [--prefix /opt/edge-agent]
#
# On a Jetson, JetPack's own python3, TensorRT (python3-libnvinfer) and OpenCV (python3-opencv, built with
# GStreamer) are kept: the virtual environment sees them (--system-site-packages) and nothing from pip
# replaces them (no opencv-python, no tensorrt wheel). Elsewhere the 'cpu' extra brings onnxruntime and
# opencv-python-headless. Re-running upgrades in place; the state in /var/lib/edge-agent is kept.
set -euo pipefail

PREFIX=/opt/edge-agent
CONFIG=""
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root (sudo $0 $*)" >&2
  exit 1
fi
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=/usr/bin/python3
IS_JETSON=0
[ -f /etc/nv_tegra_release ] && IS_JETSON=1

echo "== edge-agent from $SRC into $PREFIX (Jetson: $IS_JETSON)"
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 8)' 2>/dev/null; then
  echo "$PYTHON is older than 3.8 (JetPack 5 and 6 ship 3.8 and 3.10)" >&2
  exit 1
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
  apt-get install -y python3-venv
fi

# The service user: no login, no home; video (and render where it exists) for the GPU, DLA and cameras.
if ! id edge-agent >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
fi
for group in video render; do
  getent group "$group" >/dev/null && usermod -a -G "$group" edge-agent
done

# The virtual environment: JetPack's site packages visible (tensorrt, cv2, numpy), ours on top.
mkdir -p "$PREFIX"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  "$PYTHON" -m venv --system-site-packages "$PREFIX/venv"
fi
"$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
if [ "$IS_JETSON" = 1 ]; then
  # TensorRT and cv2 must come from JetPack; check before installing anything.
  "$PREFIX/venv/bin/python" -c 'import tensorrt' 2>/dev/null \
    || echo "warning: JetPack's TensorRT is not importable (apt install python3-libnvinfer); only the CPU backend will work" >&2
  "$PREFIX/venv/bin/python" -c 'import cv2' 2>/dev/null \
    || echo "warning: JetPack's OpenCV is not importable (apt install python3-opencv); cameras will not open" >&2
  "$PREFIX/venv/bin/python" -m pip install -q "$SRC[jetson]" || "$PREFIX/venv/bin/python" -m pip install -q "$SRC"
  # onnxruntime for the CPU fallback and the accuracy gate's reference, when a wheel exists for this Python
  "$PREFIX/venv/bin/python" -m pip install -q onnxruntime || echo "note: no onnxruntime wheel here; the gate uses TensorRT only" >&2
  if "$PREFIX/venv/bin/python" -m pip show -q opencv-python opencv-python-headless >/dev/null 2>&1; then
    echo "warning: a pip OpenCV is installed in the venv and shadows JetPack's (no GStreamer): pip uninstall it" >&2
  fi
else
  "$PREFIX/venv/bin/python" -m pip install -q "$SRC[cpu]"
fi
mkdir -p "$PREFIX/docs" && cp -r "$SRC/docs/." "$PREFIX/docs/" 2>/dev/null || true

# Configuration: keep an existing one.
install -d -m 0750 -o root -g edge-agent /etc/edge-agent
if [ -n "$CONFIG" ]; then
  install -m 0640 -o root -g edge-agent "$CONFIG" /etc/edge-agent/agent.toml
elif [ ! -f /etc/edge-agent/agent.toml ]; then
  cat > /etc/edge-agent/agent.toml <<TOML
# edge-agent configuration (see docs/daemon.md). Environment overrides: EDGE_AGENT_<SECTION>_<KEY>.
[device]
# id = "cam-017"          # default: from /etc/machine-id
# groups = ["lobby"]

[broker]
host = "localhost"
port = 1883
# tls = true
# ca_file = "/etc/edge-agent/ca.crt"

[artifacts]
# public_keys = ["/etc/edge-agent/fleet-signing.pub"]
TOML
  chown root:edge-agent /etc/edge-agent/agent.toml
  chmod 0640 /etc/edge-agent/agent.toml
  echo "wrote /etc/edge-agent/agent.toml: set the broker and the signing key, then: systemctl restart edge-agent"
fi
install -d -m 0750 -o edge-agent -g edge-agent /var/lib/edge-agent

# The unit: ExecStart points at this prefix.
sed "s#/opt/edge-agent#$PREFIX#g" "$SRC/systemd/edge-agent.service" > /etc/systemd/system/edge-agent.service
chmod 0644 /etc/systemd/system/edge-agent.service
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /etc/systemd/system/edge-agent.service || echo "warning: systemd-analyze verify reported problems" >&2
fi
systemctl daemon-reload
systemctl enable edge-agent.service
if [ "$START" = 1 ]; then
  systemctl restart edge-agent.service
  sleep 2
  systemctl --no-pager --lines=5 status edge-agent.service || true
fi
echo "== done. Check it: sudo -u edge-agent $PREFIX/venv/bin/edge-agent --config /etc/edge-agent/agent.toml doctor"
