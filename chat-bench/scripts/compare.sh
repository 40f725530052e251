#!/usr/bin/env bash
# Runs the same chat-bench scenario against an embedded node (baseline) and a
# 3-node Redis cluster, alternating, RUNS times each, and prints the median of
# each figure plus cluster/embedded ratios.
#
#   chat-bench/scripts/compare.sh [RUNS] -- <chat-bench scenario flags>
#   e.g. chat-bench/scripts/compare.sh 3 -- -n 1000 -c 1 -r 50 -d 10s
#
# Needs release builds (cargo build --release -p chat-node -p chat-bench),
# redis-server and python3. Everything listens on loopback and is stopped at
# the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
scenario=("$@")
[ ${#scenario[@]} -gt 0 ] || scenario=(-n 1000 -c 1 -r 50 -d 10s)

node=target/release/chat-node
bench=target/release/chat-bench
[ -x "$node" ] && [ -x "$bench" ] || { echo "build first: cargo build --release -p chat-node -p chat-bench" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "node on $1 not ready" >&2; exit 1; }
limits=(--publish-rate 100000 --publish-burst 100000 --frame-rate 100000 --connect-rate 0 --max-connections-per-ip 0)

# Baseline: one embedded node.
ep=$(free_port)
"$node" --dev-mode --listen "127.0.0.1:$ep" "${limits[@]}" >"$work/embedded.log" 2>&1 & pids+=($!)
wait_ready "$ep"

# Cluster: Redis and three nodes with a static ring.
rp=$(free_port)
redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 & pids+=($!)
sleep 0.3
urls=()
for i in 0 1 2; do
  p=$(free_port)
  "$node" --dev-mode --listen "127.0.0.1:$p" --node-id "n$i" --peers n0,n1,n2 --redis-url "redis://127.0.0.1:$rp" "${limits[@]}" \
    >"$work/n$i.log" 2>&1 & pids+=($!)
  wait_ready "$p"
  urls+=("ws://127.0.0.1:$p")
done
cluster_urls=$(IFS=,; echo "${urls[*]}")

for r in $(seq "$runs"); do
  "$bench" --json -q -u "ws://127.0.0.1:$ep" "${scenario[@]}" >"$work/embedded-$r.json" || true
  "$bench" --json -q -u "$cluster_urls" "${scenario[@]}" >"$work/cluster-$r.json" || true
done

python3 - "$work" "$runs" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
def load(kind):
    return [json.load(open(f"{work}/{kind}-{r}.json")) for r in range(1, runs + 1)]
figures = [
    ("delivered msgs/s", lambda j: j["delivered"]["per_sec"]),
    ("accepted msgs/s", lambda j: j["sent"]["per_sec"]),
    ("latency p50 µs", lambda j: j["latency_us"]["p50"]),
    ("latency p90 µs", lambda j: j["latency_us"]["p90"]),
    ("latency p99 µs", lambda j: j["latency_us"]["p99"]),
    ("latency p99.9 µs", lambda j: j["latency_us"]["p999"]),
    ("latency max µs", lambda j: j["latency_us"]["max"]),
    ("lost", lambda j: j["correctness"]["lost"]),
    ("duplicated", lambda j: j["correctness"]["duplicated"]),
    ("out of order", lambda j: j["correctness"]["out_of_order"]),
]
emb, clu = load("embedded"), load("cluster")
print(f"runs: {runs} each; passed: embedded {sum(j['passed'] for j in emb)}/{runs}, cluster {sum(j['passed'] for j in clu)}/{runs}")
print(f"{'figure':<20} {'embedded (median)':>18} {'cluster (median)':>18} {'cluster/embedded':>17}")
for name, get in figures:
    e = statistics.median(get(j) for j in emb)
    c = statistics.median(get(j) for j in clu)
    ratio = f"{c / e:.2f}" if e else "-"
    print(f"{name:<20} {e:>18,.0f} {c:>18,.0f} {ratio:>17}")
PY
