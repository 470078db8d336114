#!/usr/bin/env bash
# hack/cluster.sh — a local multi-host P2P cluster in network namespaces.
#
#   hack/cluster.sh up N [RATE]   # 1 scheduler, 1 origin registry, 1 seed peer, N-1 peers
#   MANAGER=1 hack/cluster.sh up N [RATE]   # also a manager (10.231.0.4, REST :8080, gRPC
#                                           # :65003) the scheduler registers with and the
#                                           # dfdaemons find the scheduler through
#   hack/cluster.sh down          # stop everything started by `up`, delete the namespaces
#   hack/cluster.sh status
#
# Every host is a network namespace (dfrs-<name>) with one veth into a bridge that lives in
# its own namespace (dfrs-hub); addresses are 10.231.0.0/24 and exist only inside these
# namespaces, which have no route anywhere else. RATE (e.g. 1gbit) shapes every host's link
# with tbf, and each dfdaemon gets it as its upload limit (upload.rateLimit, which it announces
# to children as its maximum upload bandwidth). Daemons run from target/debug (DFRS_BIN_DIR
# overrides), their state, configs, logs and PID files live in $CLUSTER_DIR (default
# /tmp/dfrs-cluster); `down` stops them by PID and removes the namespaces by name. dfdaemon's
# unix sockets are files, so dfget runs from the root namespace: dfget -e $CLUSTER_DIR/peer1/dfdaemon.sock http://10.231.0.3:5000/v2/...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${CLUSTER_DIR:-/tmp/dfrs-cluster}
BIN=${DFRS_BIN_DIR:-$PWD/target/debug}
NET=10.231.0
HUB=dfrs-hub

say() { printf 'cluster: %s\n' "$*" >&2; }

add_host() { # add_host NAME LAST_OCTET [RATE]
  local name=$1 ip=$NET.$2 rate=${3:-} ns=dfrs-$1 n=$2
  ip netns add "$ns"
  ip link add "vh$n" type veth peer name "vb$n"
  ip link set "vh$n" netns "$ns"
  ip link set "vb$n" netns "$HUB"
  ip -n "$HUB" link set "vb$n" master br0 up
  ip -n "$ns" addr add "$ip/24" dev "vh$n"
  ip -n "$ns" link set "vh$n" up
  ip -n "$ns" link set lo up
  if [[ -n $rate ]]; then
    ip netns exec "$ns" tc qdisc add dev "vh$n" root tbf rate "$rate" burst 1mb latency 50ms
  fi
  echo "$name $ip" >> "$DIR/hosts"
}

spawn() { # spawn NAME NS CMD... : background in namespace NS, PID in $DIR/NAME.pid
  local name=$1 ns=$2; shift 2
  setsid ip netns exec "$ns" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! > "$DIR/$name.pid"
}

wait_http() { # wait_http NS URL
  local i
  for ((i = 0; i < 100; i++)); do
    ip netns exec "$1" curl -sf -o /dev/null "$2" && return 0
    sleep 0.1
  done
  say "timeout waiting for $2 in $1"; return 1
}

rate_bytes() { # rate_bytes RATE: tc rate (e.g. 1gbit, 500mbit) in bytes per second, 0 if none
  local r=${1:-}
  [[ -z $r ]] && { echo 0; return; }
  echo "$r" | sed -e 's/gbit$/*125000000/' -e 's/mbit$/*125000/' -e 's/kbit$/*125/' | bc
}

dfdaemon_config() { # dfdaemon_config NAME IP SEED [RATE]
  local d=$DIR/$1 upload_rate
  upload_rate=$(rate_bytes "${4:-}")
  mkdir -p "$d"
  cat > "$d/dfdaemon.yaml" <<YAML
host: {hostname: $1, ip: $2}
storage: {dir: $d/store, server: {ip: $2, tcpPort: 4005, quicPort: 4006}}
proxy: {server: {ip: 127.0.0.1, port: 4001}}
metrics: {server: {ip: $2, port: 4002}}
upload: {server: {ip: $2, port: 4000}, rateLimit: $upload_rate}
download: {server: {socketPath: $d/dfdaemon.sock}}
runtime: {mountRoot: $d/mounts}
snapshotter: {socketPath: $d/snapshotter.sock, root: $d/snapshotter}
seedPeer: {enable: $3, keepaliveInterval: 1s}
YAML
  if [[ ${MANAGER:-0} == 1 ]]; then
    echo "manager: {addr: 'http://$NET.4:65003'}" >> "$d/dfdaemon.yaml"
    echo "dynconfig: {refreshInterval: 1s}" >> "$d/dfdaemon.yaml"
  else
    echo "scheduler: {addrs: ['$NET.2:8002']}" >> "$d/dfdaemon.yaml"
  fi
}

up() {
  local n=${1:?usage: cluster.sh up N [RATE]} rate=${2:-} i
  ((n >= 2)) || { say "N must be at least 2 (a seed and a peer)"; exit 2; }
  [[ -e $DIR/hosts ]] && { say "a cluster is up ($DIR); run down first"; exit 1; }
  local bins=(dfdaemon scheduler dfget)
  [[ ${MANAGER:-0} == 1 ]] && bins+=(manager)
  for b in "${bins[@]}"; do
    [[ -x $BIN/$b ]] || { say "$BIN/$b missing: cargo build --workspace --bins"; exit 1; }
  done
  mkdir -p "$DIR"; : > "$DIR/hosts"
  ip netns add "$HUB"
  ip -n "$HUB" link add br0 type bridge
  ip -n "$HUB" link set br0 up
  add_host scheduler 2
  add_host origin 3 "$rate"
  [[ ${MANAGER:-0} == 1 ]] && add_host manager 4
  add_host seed 10 "$rate"
  for ((i = 1; i < n; i++)); do add_host "peer$i" $((10 + i)) "$rate"; done

  mkdir -p "$DIR/origin/storage"
  cat > "$DIR/origin/config.yml" <<YAML
version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $DIR/origin/storage}, delete: {enabled: true}}
http: {addr: $NET.3:5000, secret: dfrs-cluster}
YAML
  spawn origin dfrs-origin docker-registry serve "$DIR/origin/config.yml"
  cat > "$DIR/scheduler.yaml" <<YAML
server: {ip: $NET.2, port: 8002, host: scheduler}
YAML
  if [[ ${MANAGER:-0} == 1 ]]; then
    mkdir -p "$DIR/manager"
    cat > "$DIR/manager.yaml" <<YAML
server:
  workHome: $DIR/manager
  rest: {addr: '$NET.4:8080'}
  grpc: {listenIP: $NET.4, port: {start: 65003, end: 65003}}
job: {preheat: {allowedHosts: ['$NET.3:5000']}}
YAML
    DRAGONFLY_INITIAL_ROOT_PASSWORD=${MANAGER_ROOT_PASSWORD:-dfrs-cluster-root} \
      spawn manager dfrs-manager "$BIN/manager" --config "$DIR/manager.yaml"
    wait_http dfrs-manager "http://$NET.4:8080/healthy"
    cat >> "$DIR/scheduler.yaml" <<YAML
manager: {addr: '$NET.4:65003', schedulerClusterID: 1, keepAlive: {interval: 1s}}
dynConfig: {refreshInterval: 10s}
YAML
  fi
  spawn scheduler dfrs-scheduler "$BIN/scheduler" --config "$DIR/scheduler.yaml"
  dfdaemon_config seed "$NET.10" true "$rate"
  spawn seed dfrs-seed "$BIN/dfdaemon" --config "$DIR/seed/dfdaemon.yaml"
  for ((i = 1; i < n; i++)); do
    dfdaemon_config "peer$i" "$NET.$((10 + i))" false "$rate"
    spawn "peer$i" "dfrs-peer$i" "$BIN/dfdaemon" --config "$DIR/peer$i/dfdaemon.yaml"
  done
  wait_http dfrs-origin "http://$NET.3:5000/v2/"
  wait_http dfrs-seed "http://$NET.10:4002/healthy"
  for ((i = 1; i < n; i++)); do wait_http "dfrs-peer$i" "http://$NET.$((10 + i)):4002/healthy"; done
  say "up: origin registry http://$NET.3:5000 (in dfrs-origin), scheduler $NET.2:8002, seed $NET.10, peers $NET.11-$NET.$((10 + n - 1))"
  [[ ${MANAGER:-0} == 1 ]] && say "manager: http://$NET.4:8080 (root's password: \$MANAGER_ROOT_PASSWORD, default dfrs-cluster-root)"
  say "dfget: $BIN/dfget -e $DIR/peer1/dfdaemon.sock http://$NET.3:5000/v2/<repo>/blobs/sha256:<hex> -O FILE"
}

alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $st != Z* ]]; }

down() {
  local f p i
  for f in "$DIR"/*.pid; do
    [[ -e $f ]] || continue
    p=$(cat "$f")
    if alive "$p"; then
      kill "$p" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do alive "$p" || break; sleep 0.1; done
      alive "$p" && kill -9 "$p" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  for ns in $(ip netns list | awk '{print $1}' | grep '^dfrs-' || true); do ip netns del "$ns"; done
  rm -rf "$DIR"
  say "down"
}

status() {
  [[ -e $DIR/hosts ]] || { say "no cluster"; return 0; }
  cat "$DIR/hosts"
  local f; for f in "$DIR"/*.pid; do
    local n; n=$(basename "$f" .pid)
    if alive "$(cat "$f")"; then echo "$n running"; else echo "$n stopped"; fi
  done
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
