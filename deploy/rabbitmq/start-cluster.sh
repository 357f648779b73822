#!/usr/bin/env bash
# A two-node RabbitMQ cluster with the MQTT plugin, on one machine, for the fleet integration tests and for
# trying edge-agent on a clustered broker. Not a production layout (one host, plain TCP, test passwords).
#
#   start-cluster.sh start BASE_DIR MQTT_PORT_1 MQTT_PORT_2   start both nodes, cluster them, print env lines
#   start-cluster.sh stop  BASE_DIR                           stop both nodes (what `start` wrote under BASE_DIR)
#
# Needs Debian's rabbitmq-server (apt-get install --no-install-recommends rabbitmq-server). Runs the nodes as
# the calling user (root is fine), with their own node names, ports, data and log folders under BASE_DIR and a
# shared Erlang cookie in BASE_DIR/home, so it never touches the system node in /var/lib/rabbitmq.
#
# Users it creates on the cluster (users are cluster-wide; passwords from the environment):
#   operator  ($EDGE_RABBIT_OPERATOR_PASSWORD, default operator-test)  all topics
#   any id in $EDGE_RABBIT_DEVICES (space separated), password "$EDGE_RABBIT_DEVICE_PASSWORD_PREFIX<id>"
#     (default prefix device-test-), confined by topic permissions to its own subtree like deploy/mosquitto/acl.
set -euo pipefail

RABBIT_BIN=${RABBIT_BIN:-/usr/lib/rabbitmq/bin}
action=${1:?start or stop}
base=${2:?BASE_DIR}
mkdir -p "$base"
base=$(cd "$base" && pwd)
export HOME="$base/home"  # the Erlang cookie both nodes and rabbitmqctl read
export RABBITMQ_USE_LONGNAME=false
prefix=${EDGE_RABBIT_PREFIX:-edge}

node_name() { echo "edge$1-$(cat "$base/run-id")@localhost"; }

ctl() {  # node number, rabbitmqctl arguments...
  local n=$1; shift
  "$RABBIT_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

node_env() {  # node number: the environment one node runs with
  local n=$1 dir="$base/node$1"
  echo RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_PORT="$(cat "$dir/amqp-port")" \
    RABBITMQ_DIST_PORT="$(cat "$dir/dist-port")" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local mqtt1=${1:?MQTT_PORT_1} mqtt2=${2:?MQTT_PORT_2}
  [ -x "$RABBIT_BIN/rabbitmq-server" ] || { echo "rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2; exit 3; }
  mkdir -p "$HOME"
  # a run id keeps node names unique, so a node left over from a crashed run never answers for this one
  echo "$$" > "$base/run-id"
  if [ ! -f "$HOME/.erlang.cookie" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(20))' > "$HOME/.erlang.cookie")
    chmod 400 "$HOME/.erlang.cookie"
  fi
  local n mqtt
  for n in 1 2; do
    mqtt=$([ "$n" = 1 ] && echo "$mqtt1" || echo "$mqtt2")
    local dir="$base/node$n"
    mkdir -p "$dir/mnesia" "$dir/log"
    free_port > "$dir/amqp-port"
    free_port > "$dir/dist-port"
    echo "$mqtt" > "$dir/mqtt-port"
    echo "[rabbitmq_mqtt]." > "$dir/enabled_plugins"
    echo "[]." > "$dir/advanced.config"
    cat > "$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(cat "$dir/amqp-port")
mqtt.listeners.tcp.default = 127.0.0.1:$mqtt
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
loopback_users = none
log.console = false
log.file.level = warning
# a test machine has little free disk; the default 50 MB alarm is fine, a relative one would block publishers
disk_free_limit.absolute = 50MB
EOF
    # shellcheck disable=SC2046
    env $(node_env "$n") "$RABBIT_BIN/rabbitmq-server" > "$dir/log/stdout.log" 2>&1 &
    echo $! > "$dir/launcher-pid"
  done
  for n in 1 2; do
    # `wait` polls for the pid file, then for the application to boot
    if ! ctl "$n" wait "$base/node$n/pid" --timeout 120 > /dev/null 2>&1; then
      echo "node $n did not start; see $base/node$n/log" >&2
      tail -n 30 "$base/node$n/log/stdout.log" >&2 || true
      exit 1
    fi
  done
  ctl 2 stop_app > /dev/null
  ctl 2 join_cluster "$(node_name 1)" > /dev/null
  ctl 2 start_app > /dev/null
  ctl 1 await_online_nodes 2 --timeout 60 > /dev/null 2>&1 || true
  ctl 1 add_user operator "${EDGE_RABBIT_OPERATOR_PASSWORD:-operator-test}" > /dev/null
  ctl 1 set_permissions -p / operator ".*" ".*" ".*" > /dev/null
  local device
  for device in ${EDGE_RABBIT_DEVICES:-}; do
    ctl 1 add_user "$device" "${EDGE_RABBIT_DEVICE_PASSWORD_PREFIX:-device-test-}$device" > /dev/null
    # configure/write/read on queues and exchanges: the MQTT plugin needs its own queue and amq.topic
    ctl 1 set_permissions -p / "$device" "^(amq\.topic|mqtt-subscription-.*)$" "^(amq\.topic|mqtt-subscription-.*)$" "^(amq\.topic|mqtt-subscription-.*)$" > /dev/null
    # topic permissions (routing keys: MQTT '/' becomes '.'): the same confinement as deploy/mosquitto/acl
    ctl 1 set_topic_permissions -p / "$device" amq.topic \
      "^${prefix}\.{username}\.(status|reply|events|telemetry|results|snapshot|artifact-req)$" \
      "^(${prefix}\.{username}\.(desired|cmd|artifact-data)|${prefix}\.group\.[^.]+\.desired|${prefix}\.artifacts\.[0-9a-f]+\.manifest)$" > /dev/null
  done
  echo "RABBIT_NODE1=$(node_name 1)"
  echo "RABBIT_NODE2=$(node_name 2)"
  echo "RABBIT_MQTT_PORT1=$mqtt1"
  echo "RABBIT_MQTT_PORT2=$mqtt2"
  echo "RABBIT_VERSION=$(ctl 1 version 2>/dev/null | tail -n 1)"
  echo "RABBIT_CLUSTER_NODES=$(ctl 1 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null | tail -n 1)"
}

stop() {
  [ -f "$base/run-id" ] || exit 0
  local n pid
  for n in 2 1; do
    ctl "$n" stop > /dev/null 2>&1 || true
  done
  for n in 2 1; do
    pid=$(cat "$base/node$n/launcher-pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
    fi
  done
}

case "$action" in
  start) shift 2; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start BASE_DIR MQTT_PORT_1 MQTT_PORT_2 | stop BASE_DIR" >&2; exit 2 ;;
esac
