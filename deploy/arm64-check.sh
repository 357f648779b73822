#!/usr/bin/env bash
# The install path on arm64, without a Jetson: an arm64 Debian userland made with debootstrap, run through
# qemu-user-static (binfmt_misc), where deploy/install.sh runs end to end (its Jetson path: /etc/nv_tegra_release
# is there), then `edge-agent device --json --sysroot` and `edge-agent doctor` read a real Jetson's identity files.
#
#   sudo deploy/arm64-check.sh --samples device_identity_samples.txt [--root DIR] [--out FILE]
#
#   --samples FILE  the real Jetson identity snippets (the format tests/device/samples.py reads); the Orin NX 16GB
#                   JetPack 6.2 ones are used: /etc/nv_tegra_release R36.4.3, its device tree (p3767-0000), and
#                   the dpkg listing of TensorRT 10.3.0.30
#   --root DIR      where the arm64 userland lives (default /var/tmp/edge-agent-arm64; made once, then reused)
#   --suite NAME    the Debian release (default bookworm: Python 3.11, NumPy 1.24)
#   --mirror URL    the Debian mirror (default http://deb.debian.org/debian)
#   --out FILE      also write the transcript there (docs/hardware/arm64-install.txt is one)
#
# Needs root, debootstrap, qemu-user-static and binfmt_misc with the qemu-aarch64 handler enabled
# (apt install qemu-user-static binfmt-support debootstrap; update-binfmts --enable qemu-aarch64).
# Takes about 6 minutes the first time here (debootstrap 3, pip under emulation 3): with the suite next to it,
# more than CI can spare, so its output is
# committed in docs/hardware/ (docs/install.md says so).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/var/tmp/edge-agent-arm64
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SAMPLES=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --samples) SAMPLES=$2; shift 2 ;;
    --root) ROOT=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ -n "$SAMPLES" ] && [ -f "$SAMPLES" ] || { echo "--samples FILE is required (real Jetson identity snippets)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot)" >&2; exit 1; }
REVISION="$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$SRC" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  exec > >(tee "$OUT") 2>&1
fi
SAMPLES=$(cd "$(dirname "$SAMPLES")" && pwd)/$(basename "$SAMPLES")

echo "# deploy/arm64-check.sh --samples $(basename "$SAMPLES") --root $ROOT --suite $SUITE"
echo "# run $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m) $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
echo "# edge-agent $REVISION"
SECONDS=0
stamp() { echo "== [$SECONDS s] $*"; }

stamp "binfmt_misc: can this kernel run aarch64 programs through qemu?"
handler=/proc/sys/fs/binfmt_misc/qemu-aarch64
if [ ! -d /proc/sys/fs/binfmt_misc ] || [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
    || { echo "binfmt_misc is not mounted and cannot be (no privilege to mount it in this container)" >&2; exit 3; }
fi
if [ ! -e "$handler" ]; then
  command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi
if [ ! -e "$handler" ] || ! grep -q '^enabled' "$handler"; then
  echo "no enabled qemu-aarch64 handler in /proc/sys/fs/binfmt_misc (apt install qemu-user-static binfmt-support)" >&2
  exit 3
fi
sed 's/^/   /' "$handler"
case "$(sed -n 's/^flags: //p' "$handler")" in
  *F*) ;;  # the interpreter is opened at registration: it works inside the chroot without a copy
  *) install -D /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/qemu-aarch64-static" ;;
esac

if [ ! -x "$ROOT/usr/bin/python3" ]; then
  stamp "debootstrap --arch=arm64 $SUITE into $ROOT"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-numpy,ca-certificates,passwd "$SUITE" "$ROOT" "$MIRROR"
else
  stamp "reusing the arm64 userland in $ROOT"
fi
# The host's trust store goes in too (pip behind a TLS-inspecting proxy needs its CA), and its proxy settings.
mkdir -p "$ROOT/etc/ssl/certs"; cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT/etc/ssl/certs/host-ca-bundle.crt"
passthrough=()
for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -n "${!name:-}" ] && passthrough+=("$name=${!name}")
done
in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ${passthrough[@]+"${passthrough[@]}"} "$@"
}
echo "   uname -m in the userland: $(in_root uname -m); $(in_root /usr/bin/python3 --version); NumPy $(in_root /usr/bin/python3 -c 'import numpy; print(numpy.__version__)')"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

stamp "a real Jetson's identity: Orin NX 16GB, L4T R36.4.3 (JetPack 6.2), TensorRT 10.3.0.30 packages"
rm -rf "$ROOT/tmp/jetson-identity" "$ROOT/proc/device-tree"
mountpoint -q "$ROOT/proc" && umount "$ROOT/proc"
(cd "$SRC" && python3 - "$SAMPLES" "$ROOT" <<'PY'
import sys
from pathlib import Path
from tests.device.samples import lay_out, split_samples

samples = split_samples(Path(sys.argv[1]).read_text(encoding="utf-8"))
root = Path(sys.argv[2])
def pick(kind, needle):
    return next(s for s in samples if s.kind == kind and needle in s.text)
chosen = [pick("nv_tegra_release", "GCID: 38968081"), pick("device_tree", "p3767-0000"), pick("dpkg", "10.3.0.30")]
for sample in chosen:
    print("   sample:", sample.header[2:][:150])
    lay_out(sample, root / "tmp" / "jetson-identity")  # a --sysroot: the files as on the device
    if sample.kind != "dpkg":  # the userland itself looks like that Jetson to install.sh and doctor
        lay_out(sample, root)
PY
)

stamp "deploy/install.sh --no-systemd --no-apt inside the arm64 userland (the Jetson path)"
rm -rf "$ROOT/src/edge-agent" && mkdir -p "$ROOT/src/edge-agent"
tar -C "$SRC" --exclude=./.git --exclude='./.venv*' --exclude=__pycache__ --exclude='*.egg-info' --exclude=./.hypothesis \
  -cf - . | tar -C "$ROOT/src/edge-agent" -xf -
in_root bash /src/edge-agent/deploy/install.sh --prefix /opt/edge-agent --no-systemd --no-apt 2>&1 \
  | grep -v -E "Location 'file|BuildBackendWarning|SetuptoolsDeprecationWarning|SPDX expression|By 20[0-9]{2}-|no longer be supported|packaging.python.org|corresp\(dist|Continuing in [0-9]+ seconds|^\s*copying |no files found matching|^\s*(!!|\*{5,}|)$" \
  | sed 's/^/   /'
stamp "the unit as install.sh wrote it"
grep -E '^(ExecStart|User|SupplementaryGroups)=' "$ROOT/etc/systemd/system/edge-agent.service" | sed 's/^/   /'
[ -x "$ROOT/opt/edge-agent/venv/bin/edge-agent" ] && echo "   ExecStart's entry point exists in the userland"

stamp "edge-agent device --json --sysroot /tmp/jetson-identity (arm64 Python)"
in_root /opt/edge-agent/venv/bin/edge-agent device --json --sysroot /tmp/jetson-identity | sed 's/^/   /'

stamp "edge-agent doctor --no-broker --no-cameras (arm64 Python, the userland's own /etc and /proc/device-tree)"
echo "   (onnxruntime's 'Error in cpuinfo' lines: the userland has no /sys mounted; doctor imports onnxruntime)"
in_root /opt/edge-agent/venv/bin/edge-agent doctor --no-broker --no-cameras | sed 's/^/   /' || true
in_root /opt/edge-agent/venv/bin/python -c 'import platform, numpy, onnx, onnxruntime, msgspec; print("   arm64 environment:", platform.machine(), "Python", platform.python_version(), "NumPy", numpy.__version__, numpy.__file__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__, "msgspec", msgspec.__version__)'
stamp "done"
