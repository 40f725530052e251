#!/usr/bin/env bash
# Maximum sustainable publish rate of one embedded node and of a 3-node
# cluster over Redis, measured in one run on the same machine: for each
# rate in turn (alternating embedded / cluster at every step) run the
# scenario; a rate "holds" when the run passes (nothing lost, duplicated or
# reordered, every publish answered) with p99 <= 50 ms. Stepping stops for
# a mode at its first rate that does not hold; the last one that held is
# its maximum. Also reports the servers' CPU time per accepted publish
# (embedded: the node; cluster: the three nodes and Redis), and Redis commands (those run inside scripts
# included) and Redis CPU per accepted publish for the cluster (INFO
# commandstats / INFO cpu before and after, minus what the idle cluster
# does in the same time, measured for 2 s just before).
#
#   chat-bench/scripts/max-rate.sh "<scenario flags>" RATE...
#   e.g. chat-bench/scripts/max-rate.sh "-n 1000 -c 1 -d 10s" 100 200 400 800 1200
#        chat-bench/scripts/max-rate.sh "-n 1000 -c 100 -d 10s" 2000 5000 10000 20000
#
# Needs release builds (BIN_DIR, default target/release), redis-server, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
source chat-bench/scripts/lib.sh
need_binaries
[ $# -ge 2 ] || { sed -n 2,16p "$0" >&2; exit 2; }
read -r -a scenario <<<"$1"
shift
rates=("$@")

work=$(mktemp -d)
trap 'stop_all; rm -rf "$work"' EXIT

ep=$(free_port)
start_node "$work/embedded.log" "$ep"
embedded_pids=("$node_pid")
wait_ready "$ep"
rp=$(free_port)
start_redis "$rp" "$work" --appendonly no
cluster_pids=("$redis_pid")
urls=()
for i in 0 1 2; do
  p=$(free_port)
  start_node "$work/n$i.log" "$p" --node-id "n$i" --peers n0,n1,n2 --redis-url "redis://127.0.0.1:$rp"
  cluster_pids+=("$node_pid")
  wait_ready "$p"
  urls+=("ws://127.0.0.1:$p")
done
cluster_urls=$(IFS=,; echo "${urls[*]}")

# Server CPU per accepted publish (all nodes, and Redis for the cluster):
# the cost that decides how far a mode scales with cores.
per_publish_cpu() { # cpu_before cpu_after json
  python3 - "$@" <<'PY'
import json, sys
acc = max(1, json.load(open(sys.argv[3]))["sent"]["accepted"])
print(f"; server CPU {(float(sys.argv[2]) - float(sys.argv[1])) * 1e6 / acc:.0f} µs per publish")
PY
}

holds() { # json file -> exit 0 when the rate held
  python3 - "$1" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(1)
sys.exit(0 if j["passed"] and j["latency_us"]["p99"] <= 50_000 else 1)
PY
}
summary() { # label json
  python3 - "$@" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
extra = sys.argv[3] if len(sys.argv) > 3 else ""
j = json.load(open(path))
c = j["correctness"]
print(f"  {label:<9} rate {j['config']['rate']:>8,.0f}/s: delivered {j['delivered']['per_sec']:>11,.0f}/s "
      f"p50 {j['latency_us']['p50']/1000:7.1f} ms p99 {j['latency_us']['p99']/1000:8.1f} ms "
      f"lost {c['lost']} dup {c['duplicated']} ooo {c['out_of_order']} unanswered {j['sent']['unanswered']}"
      f" {'held' if j['passed'] and j['latency_us']['p99'] <= 50000 else 'FAILED'}{extra}")
PY
}
best_e=0 best_c=0 live_e=1 live_c=1
for r in "${rates[@]}"; do
  if [ "$live_e" = 1 ]; then
    c0=$(cpu_seconds "${embedded_pids[@]}")
    "$bench_bin" --json -q -u "ws://127.0.0.1:$ep" "${scenario[@]}" -r "$r" >"$work/e-$r.json" || true
    c1=$(cpu_seconds "${embedded_pids[@]}")
    summary embedded "$work/e-$r.json" "$(per_publish_cpu "$c0" "$c1" "$work/e-$r.json")"
    if holds "$work/e-$r.json"; then best_e=$r; else live_e=0; fi
  fi
  if [ "$live_c" = 1 ]; then
    # The idle cluster's own Redis traffic (heartbeats, blocking reads,
    # config polling) over 2 s, subtracted pro rata from the run's.
    idle0=$(redis_cmdstats "$rp"); icpu0=$(redis_cpu "$rp"); t0=$(date +%s.%N)
    sleep 2
    before=$(redis_cmdstats "$rp"); cpu0=$(redis_cpu "$rp"); t1=$(date +%s.%N)
    c0=$(cpu_seconds "${cluster_pids[@]}")
    "$bench_bin" --json -q -u "$cluster_urls" "${scenario[@]}" -r "$r" >"$work/c-$r.json" || true
    c1=$(cpu_seconds "${cluster_pids[@]}")
    after=$(redis_cmdstats "$rp"); cpu1=$(redis_cpu "$rp"); t2=$(date +%s.%N)
    per=$(python3 - "$idle0" "$before" "$after" "$icpu0" "$cpu0" "$cpu1" "$t0" "$t1" "$t2" "$work/c-$r.json" <<'PY'
import json, sys
i, b, a = (json.loads(x) for x in sys.argv[1:4])
icpu0, cpu0, cpu1, t0, t1, t2 = (float(x) for x in sys.argv[4:10])
acc = max(1, json.load(open(sys.argv[10]))["sent"]["accepted"])
def calls(x, y):
    return sum(v["calls"] - x.get(k, {}).get("calls", 0) for k, v in y.items() if k != "info")
scale = (t2 - t1) / max(t1 - t0, 1e-3)
net_calls = calls(b, a) - calls(i, b) * scale
net_cpu = (cpu1 - cpu0) - (cpu0 - icpu0) * scale
print(f"; Redis {net_calls/acc:.1f} commands (in scripts too) and {net_cpu*1e6/acc:.0f} µs CPU per publish, idle traffic subtracted")
PY
)
    summary cluster "$work/c-$r.json" "$(per_publish_cpu "$c0" "$c1" "$work/c-$r.json")$per"
    if holds "$work/c-$r.json"; then best_c=$r; else live_c=0; fi
  fi
  [ "$live_e" = 0 ] && [ "$live_c" = 0 ] && break
done
ratio=$(python3 -c "import sys; e,c=float(sys.argv[1]),float(sys.argv[2]); print(f'{c/e:.2f}' if e else '-')" "$best_e" "$best_c")
echo "max sustainable rate: embedded $best_e/s, cluster $best_c/s, cluster/embedded $ratio"
