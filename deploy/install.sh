#!/usr/bin/env bash
# Install edge-agent on a Jetson (or any Debian/Ubuntu machine) as a systemd service.
#
#   sudo deploy/install.sh [--config FILE] [--no-start] [--prefix /opt/edge-agent] [--no-apt] [--no-systemd]
#
# On a Jetson, JetPack's own python3, TensorRT (python3-libnvinfer) and OpenCV (python3-opencv, built with
# GStreamer) are kept: the virtual environment sees them (--system-site-packages) and nothing from pip
# replaces them (no opencv-python, no tensorrt wheel) or their ABI: every pip install runs under the
# constraints deploy/constraints.py derives from the system's NumPy (same major version; docs/install.md).
# The same holds on any Debian/Ubuntu whose python3-opencv is installed. Elsewhere the 'cpu' extra brings
# onnxruntime and opencv-python-headless. Re-running upgrades in place; the state in /var/lib/edge-agent is kept.
#   --no-apt      never call apt-get (no JetPack apt repository, or a machine without network to it)
#   --no-systemd  write and verify the unit, but do not reload, enable or start it (no running systemd:
#                 a container, a chroot, CI)
set -euo pipefail

PREFIX=/opt/edge-agent
CONFIG=""
START=1
APT=1
SYSTEMD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    --no-apt) APT=0; shift ;;
    --no-systemd) SYSTEMD=0; START=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
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
if ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
  if [ "$APT" = 1 ]; then
    apt-get install -y python3-venv
  else
    echo "$PYTHON cannot make virtual environments: apt install python3-venv (--no-apt given)" >&2
    exit 1
  fi
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
VPY="$PREFIX/venv/bin/python"
# What the system Python provides (-s: not a user's ~/.local): these must still import after our install.
SYSTEM_MODULES=""
for module in numpy cv2 tensorrt; do
  "$PYTHON" -s -c "import $module" >/dev/null 2>&1 && SYSTEM_MODULES="$SYSTEM_MODULES $module"
done
provides() { case " $SYSTEM_MODULES " in *" $1 "*) return 0 ;; esac; return 1; }
echo "== the system Python provides:${SYSTEM_MODULES:- none of numpy, cv2, tensorrt}"
# Constraints from the system's NumPy: pip keeps its major version, and picks onnx/onnxruntime to fit.
"$PYTHON" -s "$SRC/deploy/constraints.py" -o "$PREFIX/constraints.txt"
grep -v '^#' "$PREFIX/constraints.txt" | sed 's/^/   constraint: /' || true
PIP=("$VPY" -m pip install -q -c "$PREFIX/constraints.txt")
"$VPY" -m pip install -q --upgrade pip
if [ "$IS_JETSON" = 1 ]; then
  # TensorRT and cv2 must come from JetPack; check before installing anything.
  provides tensorrt || echo "warning: JetPack's TensorRT is not importable (apt install python3-libnvinfer); only the CPU backend will work" >&2
  provides cv2 || echo "warning: JetPack's OpenCV is not importable (apt install python3-opencv); cameras will not open" >&2
  "${PIP[@]}" "$SRC[jetson]" || "${PIP[@]}" "$SRC"
  # onnxruntime for the CPU fallback and the accuracy gate's reference, when a wheel exists for this Python
  "${PIP[@]}" onnxruntime || echo "note: no onnxruntime wheel here; the gate uses TensorRT only" >&2
elif provides cv2; then
  # The distribution's OpenCV (python3-opencv) is kept, as on a Jetson: onnxruntime from pip, no pip OpenCV.
  "${PIP[@]}" "$SRC" onnxruntime
elif ! "${PIP[@]}" "$SRC[cpu]"; then
  # opencv-python-headless >= 4.13 needs NumPy 2 on Python >= 3.9: none may fit the system's NumPy 1.x.
  echo "warning: no pip OpenCV fits the constraints above; installing without it (apt install python3-opencv for cameras)" >&2
  "${PIP[@]}" "$SRC" onnxruntime
fi
if provides cv2 && "$VPY" -m pip show -q opencv-python opencv-python-headless >/dev/null 2>&1; then
  echo "warning: a pip OpenCV is installed in the venv and shadows the system's (no GStreamer): pip uninstall it" >&2
fi
# Everything the system provided still imports in the environment (the NumPy ABI is intact); doctor's
# classifier says why not otherwise.
for module in $SYSTEM_MODULES; do
  if ! "$VPY" -c "import $module" >/dev/null 2>&1; then
    "$VPY" -c "from agent.lazy import probe; p = probe('$module')[1]; print(f'error: {p.detail}. Fix: {p.fix}')" >&2
    exit 1
  fi
done
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

# The unit: ExecStart points at this prefix's entry point.
[ -x "$PREFIX/venv/bin/edge-agent" ] || { echo "error: $PREFIX/venv/bin/edge-agent was not installed" >&2; exit 1; }
mkdir -p /etc/systemd/system
sed "s#/opt/edge-agent#$PREFIX#g" "$SRC/systemd/edge-agent.service" > /etc/systemd/system/edge-agent.service
chmod 0644 /etc/systemd/system/edge-agent.service
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /etc/systemd/system/edge-agent.service || echo "warning: systemd-analyze verify reported problems" >&2
fi
if [ "$SYSTEMD" = 0 ]; then
  echo "== done (--no-systemd: unit written, not enabled). Check it: $PREFIX/venv/bin/edge-agent --config /etc/edge-agent/agent.toml doctor"
  exit 0
fi
systemctl daemon-reload
systemctl enable edge-agent.service
if [ "$START" = 1 ]; then
  systemctl restart edge-agent.service
  sleep 2
  systemctl --no-pager --lines=5 status edge-agent.service || true
fi
echo "== done. Check it: sudo -u edge-agent $PREFIX/venv/bin/edge-agent --config /etc/edge-agent/agent.toml doctor"
