#!/usr/bin/env bash
# Set up and run the test suite on a fresh Debian/Ubuntu machine:  bash tests/run.sh
#   PYTHON=/path/to/python3   interpreter for the virtual environment (default: python3)
#   VENV=.venv                where the environment lives (created if missing)
#   LINT=1                    also run ruff and mypy (needs Python >= 3.10 for mypy)
#   WITH_RABBITMQ=1           also install rabbitmq-server, for the clustered-broker tests (they skip without it)
#   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Real brokers for the integration tests: mosquitto (and its mosquitto_passwd), openssl for test PKI,
# RabbitMQ's MQTT plugin for the clustered-broker tests when asked.
packages=""
{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || packages="$packages mosquitto"
command -v openssl >/dev/null 2>&1 || packages="$packages openssl"
if [ "${WITH_RABBITMQ:-0}" = "1" ] && [ ! -x /usr/sbin/rabbitmq-server ]; then packages="$packages rabbitmq-server"; fi
if [ -n "$packages" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi
# The packaged broker must not hold port 1883 for nothing; the tests start their own on free ports.
command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null && systemctl stop mosquitto || true

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".[cpu,operator,test]"
if [ "${LINT:-0}" = "1" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[cpu,dev]"
  "$VENV/bin/python" -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
fi

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
