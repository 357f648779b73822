#!/usr/bin/env bash
# Every runtime dependency of edge-agent resolves to binary wheels for manylinux aarch64 on the Python of
# JetPack 5, 6 and 7, under the constraints deploy/constraints.py makes from that JetPack's system NumPy.
# Prints the versions pip picks (the table in docs/install.md comes from here). Called by tests/install/run.sh.
#
#   bash tests/install/wheels.sh
#   WHEEL_CACHE=DIR   where the downloads are kept between runs (default ~/.cache/edge-agent-ci/wheels)
#
# pycuda is the documented exception: an sdist, built on the device against JetPack's CUDA (the 'jetson' extra).
# cv2 and tensorrt are not from pip on a Jetson (JetPack's python3-opencv and python3-libnvinfer).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent-ci/wheels}
mkdir -p "$CACHE"

PY=${PYTHON:-python3}
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  [ -x "$CACHE/pip-venv/bin/pip" ] || "$PY" -m venv "$CACHE/pip-venv"
  PY="$CACHE/pip-venv/bin/python"
fi

# The runtime requirements: pyproject.toml's dependencies, and onnxruntime (the 'cpu' extra without OpenCV,
# which JetPack provides), their markers evaluated for the target Python (pip download evaluates markers for
# the interpreter that runs it, not for --python-version). Read with a regular expression: the interpreter
# may predate tomllib.
requirements() {
  "$PY" - "$1" <<'PY'
import re, sys
from pip._vendor.packaging.markers import Marker
text = open("pyproject.toml", encoding="utf-8").read()
deps = re.findall(r'"([^"]+)"', re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1))
deps += [d for d in re.findall(r'"([^"]+)"', re.search(r"^cpu = \[(.*?)\]", text, re.M).group(1)) if d.startswith("onnxruntime")]
target = {"python_version": sys.argv[1], "python_full_version": sys.argv[1] + ".0"}
for dep in deps:
    name, _, marker = dep.partition(";")
    if not marker.strip() or Marker(marker.strip()).evaluate(target):
        print(name.strip())
PY
}

# JetPack: Python, the system NumPy (Ubuntu's python3-numpy), glibc (the newest manylinux tag it can load).
failed=0
printf '%-10s %-7s %-8s %s\n' JetPack Python NumPy "resolved (package==version)" > "$CACHE/table.txt"
for row in "5 3.8 1.17.4 31" "6 3.10 1.21.5 35" "7 3.12 1.26.4 39"; do
  set -- $row
  jetpack=$1; python=$2; numpy=$3; glibc=$4
  dest="$CACHE/jetpack$jetpack"
  mkdir -p "$dest"
  "$PY" deploy/constraints.py --numpy "$numpy" -o "$dest/constraints.txt"
  requirements "$python" > "$dest/requirements.txt"
  platforms=(--platform manylinux2014_aarch64)
  for minor in $(seq 17 "$glibc"); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
  start=$(date +%s)
  if ! PIP_CONSTRAINT="" "$PY" -m pip download --disable-pip-version-check --only-binary=:all: "${platforms[@]}" \
      --implementation cp --python-version "$python" -c "$dest/constraints.txt" -d "$dest" -r "$dest/requirements.txt" \
      > "$dest/pip.log" 2>&1; then
    echo "FAIL: JetPack $jetpack (Python $python, NumPy constraint $(grep -v '^#' "$dest/constraints.txt")): not every dependency has an aarch64 wheel" >&2
    grep -v "Location 'file" "$dest/pip.log" | tail -5 >&2
    failed=1
    continue
  fi
  # The wheels this resolution chose (the folder may hold others from earlier runs).
  resolved=$(grep -E "File was already downloaded|Saved" "$dest/pip.log" | grep -oE "[^/ ]+\.whl" \
    | sed -E 's/^([A-Za-z0-9_.]+)-([0-9][^-]*)-.*/\1==\2/' | sort -f | tr '\n' ' ')
  case "$resolved" in *numpy==1.*) ;; *) echo "FAIL: JetPack $jetpack: NumPy is not 1.x: $resolved" >&2; failed=1 ;; esac
  printf '%-10s %-7s %-8s %s\n' "$jetpack" "$python" "$numpy" "$resolved" >> "$CACHE/table.txt"
  echo "   JetPack $jetpack (Python $python, manylinux_2_$glibc aarch64): $(( $(date +%s) - start )) s"
done
cat "$CACHE/table.txt"
exit "$failed"
