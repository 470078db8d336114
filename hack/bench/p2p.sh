#!/usr/bin/env bash
# hack/bench/p2p.sh — swarm benchmark (not a test: prints ratios, never fails on timing).
# 1 seed + PEERS peers in network namespaces (hack/cluster.sh), each host's link shaped to RATE
# with tbf; all peers fetch one SIZE_MIB blob at once with dfget. Reports the slowest peer's
# time against the link's physical limit (SIZE / RATE) and the origin's bytes against SIZE.
# PEERS (6), SIZE_MIB (1024), RATE (1gbit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PEERS=${PEERS:-6}
SIZE_MIB=${SIZE_MIB:-1024}
RATE=${RATE:-1gbit}
export CLUSTER_DIR=${CLUSTER_DIR:-/tmp/dfrs-bench-p2p}
bash hack/setup.sh
cargo build --release --workspace --bins
export DFRS_BIN_DIR=$PWD/target/release
work=$(mktemp -d /tmp/dfrs-bench.XXXXXX)
# Logs of the last run stay in $LOGS (RUST_LOG=scheduler=debug shows every parent decision).
LOGS=${LOGS:-/tmp/dfrs-bench-p2p-logs}
keep_logs() {
  rm -rf "$LOGS"; mkdir -p "$LOGS"
  (cd "$CLUSTER_DIR" && find . -name '*.log' -exec cp --parents {} "$LOGS" \;) 2>/dev/null || true
}
# This machine is a VM that hands freed memory back to the hypervisor (free page reporting):
# touching such memory again costs a host page fault per 4 KiB page, and page-cache writes of
# the stored copies cost 1.5-4.0 CPU-s per GiB instead of 0.25. That is not what the bench
# measures (a node's page cache is its own memory), so by default reporting is paused for the
# run (order 11: no free block is that large), the memory the run writes is touched once
# beforehand, and the old setting is restored on exit. PAUSE_PAGE_REPORTING=0 keeps it on.
reporting=/sys/module/page_reporting/parameters/page_reporting_order
old_order=
restore_reporting() { if [[ -n $old_order ]]; then echo "$old_order" > "$reporting"; fi; }
trap 'keep_logs; bash hack/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$work"; restore_reporting' EXIT
bash hack/cluster.sh down >/dev/null 2>&1 || true
bash hack/cluster.sh up $((PEERS + 1)) "$RATE"

head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/blob"
digest=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
origin=http://10.231.0.3:5000
loc=$(ip netns exec dfrs-origin curl -si -X POST "$origin/v2/bench/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
ip netns exec dfrs-origin curl -sf -X PUT -T "$work/blob" "${loc}&digest=$digest" -o /dev/null
rm -f "$work/blob"
sleep 6   # every host announces itself within 5 s
if [[ ${PAUSE_PAGE_REPORTING:-1} == 1 && -w $reporting ]]; then
  old_order=$(cat "$reporting")
  echo 11 > "$reporting"
  dd if=/dev/zero of="$CLUSTER_DIR/warm" bs=1M count=$(((PEERS + 2) * SIZE_MIB)) status=none
  rm -f "$CLUSTER_DIR/warm"
  echo "p2p.sh: free page reporting paused for the run (page_reporting_order $old_order -> 11), $(((PEERS + 2) * SIZE_MIB)) MiB of memory touched beforehand"
fi

cpu_sample() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat; }
# The machine's CPU time by kind (user, system, irq + softirq: the hosts' packet paths), ticks.
cpu_kinds() { awk '/^cpu /{print $2+$3, $4, $7+$8}' /proc/stat; }
# Each process the cluster started: name and CPU ticks (utime + stime) so far.
proc_cpu() {
  local f p
  for f in "$CLUSTER_DIR"/*.pid; do
    p=$(cat "$f")
    [ -r "/proc/$p/stat" ] || continue
    echo "$(basename "$f" .pid) $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')"
  done
}
proc_cpu | sort > "$work/cpu.before"
read -r cpu_total0 cpu_idle0 < <(cpu_sample)
read -r k_user0 k_sys0 k_irq0 < <(cpu_kinds)
start=$(date +%s.%N)
pids=()
for ((i = 1; i <= PEERS; i++)); do
  ( TIMEFORMAT='%U %S'
    { time "$DFRS_BIN_DIR/dfget" --no-progress -e "$CLUSTER_DIR/peer$i/dfdaemon.sock" \
        "$origin/v2/bench/blobs/$digest" --digest "$digest" -O "$work/out$i" 2>/dev/null; } 2> "$work/dfget-cpu$i"
    date +%s.%N > "$work/done$i" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
read -r cpu_total1 cpu_idle1 < <(cpu_sample)
read -r k_user1 k_sys1 k_irq1 < <(cpu_kinds)
proc_cpu | sort > "$work/cpu.after"
slowest=0
for ((i = 1; i <= PEERS; i++)); do
  t=$(echo "$(cat "$work/done$i") - $start" | bc -l)
  slowest=$(echo "if ($t > $slowest) $t else $slowest" | bc -l)
done
origin_bytes=$(grep '"GET /v2/bench/blobs/' "$CLUSTER_DIR/origin.log" | awk '{for (i=1;i<=NF;i++) if ($i ~ /^HTTP\/1\.1"$/) {s=$(i+1); b=$(i+2)}; if (s>=200 && s<300) sum+=b} END {print sum+0}')
rate_bps=$(echo "$RATE" | sed -e 's/gbit$/*1000000000/' -e 's/mbit$/*1000000/' | bc)
limit=$(echo "$SIZE_MIB * 1048576 * 8 / $rate_bps" | bc -l)
printf '# P2P swarm: 1 seed + %d peers, %d MiB, each host at %s\n' "$PEERS" "$SIZE_MIB" "$RATE"
printf '| measure | value | target |\n|---|---|---|\n'
printf '| slowest peer | %.2f s (link limit %.2f s) | |\n' "$slowest" "$limit"
printf '| slowest / (size / rate) | %.2f | <= 1.3 at 250mbit, <= 2.0 at 1gbit |\n' "$(echo "$slowest / $limit" | bc -l)"
printf '| origin bytes / size | %.3f | <= 1.02 |\n' "$(echo "$origin_bytes / ($SIZE_MIB * 1048576)" | bc -l)"
# All hosts share this machine's CPUs: when they are saturated, the CPU, not the links, sets the pace.
printf '| machine CPU busy during the run | %.0f %% of %d cores | |\n' \
  "$(echo "100 * (1 - ($cpu_idle1 - $cpu_idle0) / ($cpu_total1 - $cpu_total0))" | bc -l)" "$(nproc)"
# Where the CPU went: each process's CPU-seconds during the run and per GiB the peers received;
# the floor is all the CPU time the run used spread over the cores.
hz=$(getconf CLK_TCK)
gib=$(echo "$PEERS * $SIZE_MIB / 1024" | bc -l)
printf '\n| CPU during the run | CPU-s | per GiB received |\n|---|---|---|\n'
join "$work/cpu.before" "$work/cpu.after" | while read -r name a b; do
  printf '| %s | %.2f | %.2f |\n' "$name" "$(echo "($b - $a) / $hz" | bc -l)" "$(echo "($b - $a) / $hz / $gib" | bc -l)"
done
dfget_cpu=$(cat "$work"/dfget-cpu* | awk '{s += $1 + $2} END {print s + 0}')
printf '| dfget (all %d) | %.2f | %.2f |\n' "$PEERS" "$dfget_cpu" "$(echo "$dfget_cpu / $gib" | bc -l)"
for k in user sys irq; do
  a=k_${k}0 b=k_${k}1
  printf '| machine: %s | %.2f | %.2f |\n' "$k" "$(echo "(${!b} - ${!a}) / $hz" | bc -l)" "$(echo "(${!b} - ${!a}) / $hz / $gib" | bc -l)"
done
busy=$(echo "(($cpu_total1 - $cpu_idle1) - ($cpu_total0 - $cpu_idle0)) / $hz" | bc -l)
printf '| machine: all busy time | %.2f | %.2f |\n' "$busy" "$(echo "$busy / $gib" | bc -l)"
# The floor: what the run must do, each stage's cost measured here, now, spread over the cores.
# Every byte a host receives crosses one shaped link (both ends' kernels, the veths, the
# bridge), is written to the host's page cache (on a VM whose freed memory goes back to the
# hypervisor this includes a host page fault per page touched) and is hashed with SHA-256.
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
probe_mib=512
b0=$(busy_ticks)
ip netns exec dfrs-peer1 curl -sf -o /dev/null -r "0-$((probe_mib * 1048576 - 1))" "$origin/v2/bench/blobs/$digest"
link=$(echo "($(busy_ticks) - $b0) / $hz * 1024 / $probe_mib" | bc -l)
write_mib=$((2 * SIZE_MIB))
probe_write() { # CPU-s per GiB of writing write_mib MiB to a new file
  local b0; b0=$(busy_ticks)
  dd if=/dev/zero of="$CLUSTER_DIR/pagecache.probe" bs=1M count="$write_mib" status=none
  echo "($(busy_ticks) - $b0) / $hz * 1024 / $write_mib" | bc -l
  rm -f "$CLUSTER_DIR/pagecache.probe"
}
store=$(probe_write)
# With reporting paused the run wrote to memory touched beforehand: measure that case.
if [[ -n $old_order ]]; then store=$(probe_write); fi
# dfdaemon hashes the bytes it received from memory with the CPU's SHA instructions, as
# openssl does (coreutils' sha256sum does not use them: 5x slower); the user time counts.
TIMEFORMAT=%U
if command -v openssl >/dev/null; then
  hash=$( { time openssl dgst -sha256 "$work/out1" > /dev/null; } 2>&1 )
else
  hash=$( { time sha256sum "$work/out1" > /dev/null; } 2>&1 )
fi
hash=$(echo "$hash * 1024 / $SIZE_MIB" | bc -l)
hosts_gib=$(echo "($PEERS + 1) * $SIZE_MIB / 1024" | bc -l)
cpu_floor=$(echo "($link + $store + $hash) * $hosts_gib / $(nproc)" | bc -l)
# No run is faster than its links either.
floor=$(echo "if ($cpu_floor > $limit) $cpu_floor else $limit" | bc -l)
printf '| stage: a GiB over a link (curl from the origin) | | %.2f |\n' "$link"
printf '| stage: a GiB written to page cache (dd, %d MiB%s) | | %.2f |\n' "$write_mib" "${old_order:+, memory touched before}" "$store"
printf '| stage: a GiB hashed with SHA-256 (openssl, user time) | | %.2f |\n' "$hash"
printf '| CPU floor: stages x %d GiB (every host receives the blob) / %d cores | %.2f s | %.2f x link time |\n' \
  "$((PEERS + 1))" "$(nproc)" "$cpu_floor" "$(echo "$cpu_floor / $limit" | bc -l)"
printf '| slowest / max(CPU floor, link time) | %.2f | |\n' "$(echo "$slowest / $floor" | bc -l)"
# What the swarm simulation (the scheduler's and the children's own code on a model network
# whose links are the limit, CPU not modelled) predicts for this scenario.
"$DFRS_BIN_DIR/swarm-sim" "$PEERS" "$SIZE_MIB" "$RATE" || true
# Where the bytes went: each host's upload total and each peer's time.
metric() { # metric NS IP NAME
  ip netns exec "$1" curl -sf "http://$2:4002/metrics" | awk -v m="$3" '$1 == m {print $2}'
}
printf '\n| host | done after | uploaded MiB | from peers MiB |\n|---|---|---|---|\n'
up=$(metric dfrs-seed 10.231.0.10 'dragonfly_dfdaemon_upload_traffic_bytes_total{protocol="tcp"}')
printf '| seed | | %.0f | |\n' "$(echo "${up:-0} / 1048576" | bc -l)"
for ((i = 1; i <= PEERS; i++)); do
  ip=10.231.0.$((10 + i))
  up=$(metric "dfrs-peer$i" "$ip" 'dragonfly_dfdaemon_upload_traffic_bytes_total{protocol="tcp"}')
  rp=$(metric "dfrs-peer$i" "$ip" 'dragonfly_dfdaemon_download_traffic_bytes_total{type="remote_peer"}')
  t=$(echo "$(cat "$work/done$i") - $start" | bc -l)
  printf '| peer%d | %.2f s | %.0f | %.0f |\n' "$i" "$t" "$(echo "${up:-0} / 1048576" | bc -l)" "$(echo "${rp:-0} / 1048576" | bc -l)"
done
