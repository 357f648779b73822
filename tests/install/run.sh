#!/usr/bin/env bash
# The install path, as a new user meets it (called by .ci/run; needs root and Debian/Ubuntu):
#
#   sudo bash tests/install/run.sh            # both parts
#   sudo bash tests/install/run.sh wheels     # only part 1
#   sudo bash tests/install/run.sh debian     # only part 2
#
# 1. wheels: every runtime dependency resolves to binary wheels for manylinux aarch64 on Python 3.8, 3.10 and 3.12
#    under the JetPack 5, 6 and 7 NumPy constraints (tests/install/wheels.sh; downloads cached).
# 2. debian: the JetPack situation reproduced on Debian: the distribution's python3-opencv and python3-numpy,
#    deploy/install.sh itself (--no-apt --no-systemd) into a virtual environment with system site packages
#    (/usr/bin/python3); cv2 imports there and `edge-agent doctor --json` shows every package check ok; the unit
#    install.sh wrote passes `systemd-analyze verify`; then NumPy 2 over the distribution's NumPy 1.x cv2 on
#    purpose: doctor names the mismatch with both versions and the fix, and the fix it names repairs it.
#
#   PREFIX=/tmp/edge-agent-install-ci   where install.sh puts the environment (removed first)
#   ARM64_SAMPLES=FILE                  also run deploy/arm64-check.sh with those Jetson identity snippets
#                                       (about 6 minutes; needs binfmt_misc: not in CI by default, docs/install.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$PWD
PARTS=${1:-all}
PREFIX=${PREFIX:-/tmp/edge-agent-install-ci}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { STEP_NAME=$1; STEP_START=$(date +%s); echo "== install: $1"; }
done_step() { echo "== install: $STEP_NAME: ok ($(( $(date +%s) - STEP_START )) s)"; }
fail() { echo "FAIL (install: $STEP_NAME): $*" >&2; exit 1; }

if [ "$PARTS" = all ] || [ "$PARTS" = wheels ]; then
  step "aarch64 wheels for JetPack 5, 6, 7"
  bash tests/install/wheels.sh
  done_step
fi
[ "$PARTS" = all ] || [ "$PARTS" = debian ] || exit 0

if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
  exec sudo --preserve-env=PREFIX,ARM64_SAMPLES bash "$0" debian
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the Debian install test needs root (deploy/install.sh makes a user and writes /etc): sudo $0" >&2
  exit 1
fi

step "the distribution's python3-opencv and python3-numpy"
packages=""
for package in python3-opencv python3-numpy python3-venv; do
  dpkg -s "$package" >/dev/null 2>&1 || packages="$packages $package"
done
if [ -n "$packages" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi
SYSTEM_NUMPY=$(/usr/bin/python3 -s -c 'import numpy; print(numpy.__version__)')
/usr/bin/python3 -s -c 'import cv2' || fail "the distribution's cv2 does not import with the system Python"
echo "   system Python $(/usr/bin/python3 --version 2>&1 | cut -d' ' -f2), NumPy $SYSTEM_NUMPY, cv2 $(/usr/bin/python3 -s -c 'import cv2; print(cv2.__version__)')"
done_step

step "deploy/install.sh --no-apt --no-systemd"
rm -rf "$PREFIX"
cat > "$WORK/agent.toml" <<TOML
[device]
id = "ci-install"
[broker]
host = "127.0.0.1"
port = 1
[state]
dir = "$WORK/state"
TOML
# The machine's own pip constraints (a CI image's) must not mix in: install.sh brings its own.
env -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null bash deploy/install.sh --prefix "$PREFIX" --config "$WORK/agent.toml" --no-apt --no-systemd
done_step

VPY="$PREFIX/venv/bin/python"
doctor() {  # the package rows of `edge-agent doctor --json`, one "name<TAB>status<TAB>detail<TAB>fix" a line
  "$PREFIX/venv/bin/edge-agent" --config "$WORK/agent.toml" doctor --json --no-broker --no-cameras > "$WORK/doctor.json" || true
  "$VPY" - "$WORK/doctor.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for check in report["checks"]:
    if check["name"].startswith("package "):
        print("\t".join([check["name"][len("package "):], check["status"], check["detail"], check["fix"]]))
PY
}

step "cv2 imports in the environment; doctor: every package check ok"
where=$("$VPY" -c 'import cv2, numpy; print(cv2.__file__, numpy.__version__)') || fail "cv2 does not import in $PREFIX/venv"
echo "   cv2 and NumPy in the environment: $where"
case "$where" in /usr/lib/python3/dist-packages/*) ;; *) fail "cv2 does not come from the distribution: $where" ;; esac
"$VPY" -m pip show -q opencv-python opencv-python-headless >/dev/null 2>&1 && fail "a pip OpenCV was installed over the distribution's"
doctor > "$WORK/rows.txt"
sed 's/^/   /' "$WORK/rows.txt"
for module in numpy cv2 onnx onnxruntime msgspec paho.mqtt psutil cryptography; do
  grep -q "^$module	ok	" "$WORK/rows.txt" || fail "doctor's package $module check is not ok"
done
for module in tensorrt pycuda; do  # not a Jetson: not installed, and told apart from broken
  grep -q "^$module	skip	$module is not installed" "$WORK/rows.txt" || fail "doctor's package $module check: $(grep "^$module	" "$WORK/rows.txt")"
done
done_step

if command -v systemd-analyze >/dev/null 2>&1; then
  step "systemd-analyze verify on the unit install.sh wrote"
  grep -q "^ExecStart=$PREFIX/venv/bin/edge-agent " /etc/systemd/system/edge-agent.service || fail "ExecStart does not point at $PREFIX"
  systemd-analyze verify /etc/systemd/system/edge-agent.service 2>&1 | tee "$WORK/verify.txt"
  if [ -s "$WORK/verify.txt" ]; then fail "systemd-analyze verify reported the lines above"; fi
  done_step
fi

step "NumPy 2 over the distribution's NumPy $SYSTEM_NUMPY cv2, on purpose"
env -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$VPY" -m pip install -q "numpy>=2"
NEW_NUMPY=$("$VPY" -c 'import numpy; print(numpy.__version__)')
doctor > "$WORK/rows.txt"
row=$(grep "^cv2	" "$WORK/rows.txt") || fail "no cv2 row"
echo "   $row"
status=$(echo "$row" | cut -f2); detail=$(echo "$row" | cut -f3); fix=$(echo "$row" | cut -f4)
[ "$status" = fail ] || fail "cv2 is $status, not fail"
case "$detail" in *"installed but fails to import: NumPy ABI mismatch"*) ;; *) fail "no NumPy ABI mismatch named: $detail" ;; esac
case "$detail" in *"NumPy $SYSTEM_NUMPY"*) ;; *) fail "the system's NumPy $SYSTEM_NUMPY is not named: $detail" ;; esac
case "$detail" in *"NumPy $NEW_NUMPY"*) ;; *) fail "the environment's NumPy $NEW_NUMPY is not named: $detail" ;; esac
case "$fix" in "$VPY -m pip install \"numpy<2\""*) ;; *) fail "the fix is not pip install \"numpy<2\" in this environment: $fix" ;; esac
done_step

step "the fix doctor named repairs it"
fix_command=${fix%% (*}
env -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null bash -c "$fix_command -q"
"$VPY" -c 'import cv2' || fail "cv2 still fails after: $fix_command"
doctor > "$WORK/rows.txt"
grep -q "^cv2	ok	" "$WORK/rows.txt" || fail "doctor's cv2 check is not ok after the fix"
done_step
rm -rf "$PREFIX"
if [ -n "${ARM64_SAMPLES:-}" ]; then
  step "deploy/arm64-check.sh (arm64 userland under qemu)"
  bash deploy/arm64-check.sh --samples "$ARM64_SAMPLES"
  done_step
fi
echo "== install: all passed"
