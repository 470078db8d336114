#!/usr/bin/env bash
# hack/bench/preheat.sh — preheat benchmark (not a test: prints numbers, never fails on timing).
# A manager, a scheduler, 1 seed + PEERS peers in network namespaces (MANAGER=1
# hack/cluster.sh), each host's link shaped to RATE. An image of LAYERS layers, SIZE_MIB in
# all, is preheated with scope all_peers through the Open API, polled as Harbor's provider
# polls (every POLL seconds): the time from the POST to the SUCCESS it sees is compared with a
# plain swarm download of the same bytes (another image of the same sizes, every peer fetching
# every layer at once with dfget). Also: the manager's RSS idle and during the job, and
# ListSchedulers latency at LIST_RATE requests/s from simulated peers.
# PEERS (6), SIZE_MIB (1024), LAYERS (4), RATE (1gbit), POLL (1), LIST_RATE (2000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PEERS=${PEERS:-6}
SIZE_MIB=${SIZE_MIB:-1024}
LAYERS=${LAYERS:-4}
RATE=${RATE:-1gbit}
POLL=${POLL:-1}
LIST_RATE=${LIST_RATE:-2000}
export CLUSTER_DIR=${CLUSTER_DIR:-/tmp/dfrs-bench-preheat}
export MANAGER=1 MANAGER_ROOT_PASSWORD=bench-root-password-0123
bash hack/setup.sh
cargo build --release --workspace --bins
export DFRS_BIN_DIR=$PWD/target/release
work=$(mktemp -d /tmp/dfrs-bench.XXXXXX)
# Logs of the last run stay in $LOGS.
LOGS=${LOGS:-/tmp/dfrs-bench-preheat-logs}
keep_logs() {
  rm -rf "$LOGS"; mkdir -p "$LOGS"
  (cd "$CLUSTER_DIR" && find . -name '*.log' -exec cp --parents {} "$LOGS" \;) 2>/dev/null || true
}
trap 'keep_logs; bash hack/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
bash hack/cluster.sh down >/dev/null 2>&1 || true
bash hack/cluster.sh up $((PEERS + 1)) "$RATE"

origin=http://10.231.0.3:5000
manager=http://10.231.0.4:8080
in_ns() { ip netns exec dfrs-seed "$@"; }

# push_image REPO: LAYERS random layers and a config, as an OCI image REPO:v1; the layers'
# digests in $work/REPO.layers.
push_blob() { # push_blob REPO FILE -> digest
  local repo=$1 file=$2 digest loc
  digest=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  loc=$(in_ns curl -si -X POST "$origin/v2/$repo/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  in_ns curl -sf -X PUT -T "$file" "${loc}&digest=$digest" -o /dev/null
  echo "$digest"
}
push_image() {
  local repo=$1 i size digest layers="" cfg
  size=$((SIZE_MIB * 1048576 / LAYERS))
  : > "$work/${repo//\//_}.layers"
  for ((i = 0; i < LAYERS; i++)); do
    head -c "$size" /dev/urandom > "$work/layer"
    digest=$(push_blob "$repo" "$work/layer")
    echo "$digest" >> "$work/${repo//\//_}.layers"
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$digest\",\"size\":$size}"
  done
  rm -f "$work/layer"
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > "$work/config"
  cfg=$(push_blob "$repo" "$work/config")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
    "$cfg" "$(stat -c %s "$work/config")" "$layers" > "$work/manifest"
  in_ns curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$work/manifest" "$origin/v2/$repo/manifests/v1" -o /dev/null
}
push_image bench/swarm
push_image bench/preheat

# Every host announced, the scheduler active in the manager.
for ((i = 0; i < 100; i++)); do
  in_ns curl -sf "$manager/healthy" -o /dev/null && break; sleep 0.1
done
session=$(in_ns curl -sf -X POST "$manager/api/v1/users/signin" -H 'Content-Type: application/json' \
  -d "{\"name\":\"root\",\"password\":\"$MANAGER_ROOT_PASSWORD\"}" | jq -r .token)
for ((i = 0; i < 100; i++)); do
  in_ns curl -sf -H "Authorization: Bearer $session" "$manager/api/v1/schedulers" | jq -e 'map(select(.state=="active")) | length == 1' >/dev/null && break
  sleep 0.2
done
sleep 6   # every host announces itself within 5 s
pat=$(in_ns curl -sf -X POST "$manager/api/v1/personal-access-tokens" -H "Authorization: Bearer $session" \
  -H 'Content-Type: application/json' \
  -d "{\"name\":\"harbor\",\"scopes\":[\"job\"],\"expired_at\":\"2099-01-01T00:00:00Z\",\"user_id\":1}" | jq -r .token)

manager_pid=$(cat "$CLUSTER_DIR/manager.pid")
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$manager_pid/status"; }
rss_idle=$(rss_kib)

# The plain swarm: every peer fetches every layer, all at once.
start=$(date +%s.%N)
pids=()
for ((i = 1; i <= PEERS; i++)); do
  while read -r d; do
    "$DFRS_BIN_DIR/dfget" --no-progress -e "$CLUSTER_DIR/peer$i/dfdaemon.sock" \
      "$origin/v2/bench/swarm/blobs/$d" --digest "$d" -O "$work/swarm-$i-${d#sha256:}" 2>/dev/null &
    pids+=($!)
  done < "$work/bench_swarm.layers"
done
for p in "${pids[@]}"; do wait "$p"; done
swarm=$(echo "$(date +%s.%N) - $start" | bc -l)
rm -f "$work"/swarm-*

# The preheat, polled as Harbor polls; the manager's RSS sampled meanwhile.
( peak=0; while [[ ! -e $work/done ]]; do r=$(rss_kib); ((r > peak)) && peak=$r; echo "$peak" > "$work/peak"; sleep 0.2; done ) &
sampler=$!
body=$(printf '{"type":"preheat","args":{"type":"image","url":"%s/v2/bench/preheat/manifests/v1","tag":"","filtered_query_params":"","headers":{},"scope":"all_peers","concurrent_count":0,"timeout":0},"scheduler_cluster_ids":null}' "$origin")
start=$(date +%s.%N)
id=$(in_ns curl -sf -X POST "$manager/oapi/v1/jobs" -H "Authorization: Bearer $pat" -H 'Content-Type: application/json' -d "$body" | jq -r .id)
state=PENDING
while [[ $state == PENDING ]]; do
  sleep "$POLL"
  state=$(in_ns curl -sf "$manager/oapi/v1/jobs/$id" -H "Authorization: Bearer $pat" | jq -r .state)
done
preheat=$(echo "$(date +%s.%N) - $start" | bc -l)
touch "$work/done"; wait "$sampler" || true
rss_peak=$(cat "$work/peak")
hosts=$(in_ns curl -sf "$manager/oapi/v1/jobs/$id" -H "Authorization: Bearer $pat" | jq '[.result.job_states[].results[].success_tasks[]?.hostname] | unique | length')

list=$(ip netns exec dfrs-peer1 "$DFRS_BIN_DIR/bench-list-schedulers" http://10.231.0.4:65003 "$LIST_RATE" 10 16)
p99=$(echo "$list" | sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p')

printf '# Preheat: 1 seed + %d peers, %d MiB in %d layers, each host at %s, scope all_peers\n' "$PEERS" "$SIZE_MIB" "$LAYERS" "$RATE"
printf '| measure | value | target |\n|---|---|---|\n'
printf '| job state | %s on %s hosts | SUCCESS on %d |\n' "$state" "$hosts" "$PEERS"
printf '| POST to SUCCESS seen by the poller (every %s s) | %.2f s | |\n' "$POLL" "$preheat"
printf '| plain swarm download of the same bytes | %.2f s | |\n' "$swarm"
printf '| preheat / swarm | %.2f | <= 1.2 |\n' "$(echo "$preheat / $swarm" | bc -l)"
origin_bytes() { # origin_bytes REPO: bytes of blobs of REPO the origin sent
  grep "\"GET /v2/$1/blobs/" "$CLUSTER_DIR/origin.log" | awk '{for (i=1;i<=NF;i++) if ($i ~ /^HTTP\/1\.1"$/) {s=$(i+1); b=$(i+2)}; if (s>=200 && s<300) sum+=b} END {print sum+0}'
}
printf '| origin bytes / image size: swarm, preheat | %.3f, %.3f | <= 1.02 |\n' \
  "$(echo "$(origin_bytes bench/swarm) / ($SIZE_MIB * 1048576)" | bc -l)" \
  "$(echo "$(origin_bytes bench/preheat) / ($SIZE_MIB * 1048576)" | bc -l)"
printf '| manager RSS idle / during the job | %d MB / %d MB | <= 100 MB |\n' $((rss_idle / 1024)) $((rss_peak / 1024))
printf '| ListSchedulers p99 at %d/s | %s ms | <= 5 ms |\n' "$LIST_RATE" "$p99"
echo "$list"
