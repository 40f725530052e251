#!/usr/bin/env bash
# Fault soak: chat-bench traffic against 3 nodes over Redis while the script
# SIGKILLs and restarts a node, kills and restarts Redis, and changes the
# ring 3 -> 4 -> 3, over and over. At the end chat-bench's own accounting
# must show every accepted message delivered to every member exactly once,
# in order (lost = duplicated = out_of_order = 0; messages inside a window
# the server declared with recovered:false or a gap push are "excused").
#
#   chat-bench/scripts/soak.sh [DURATION]        default 10m; e.g. 90s, 10m
#
# Environment:
#   BIN_DIR      where chat-node and chat-bench are (default target/release)
#   SOAK_REPORT  also write chat-bench's JSON summary there
#   SOAK_LOAD    chat-bench scenario flags (default: -n 300 -c 30 -p 2 -r 200)
#   SOAK_PERIOD  seconds between two faults (default: DURATION/12, 5..60)
#   SOAK_FAULTS  which faults, in turn (default: "kill redis ring-up ring-down")
#
# Redis runs with appendonly yes + appendfsync always, so killing it loses
# nothing it acknowledged: the run must be exact. Exit status: chat-bench's
# (0 = passed). Logs stay in the printed work directory on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
source chat-bench/scripts/lib.sh
need_binaries

duration=${1:-10m}
secs=$(python3 -c "import sys; s=sys.argv[1]; print(int(float(s[:-1])*60) if s.endswith('m') else int(float(s.rstrip('s'))))" "$duration")
period=${SOAK_PERIOD:-$(( secs / 12 ))}
[ "$period" -lt 5 ] && period=5
[ "$period" -gt 60 ] && period=60
read -r -a load <<<"${SOAK_LOAD:--n 300 -c 30 -p 2 -r 200}"
read -r -a faults <<<"${SOAK_FAULTS:-kill redis ring-up ring-down}"

work=$(mktemp -d)
ok=0
cleanup() { stop_all; if [ "$ok" = 1 ]; then rm -rf "$work"; else echo "soak: logs kept in $work" >&2; fi; }
trap cleanup EXIT
log() { echo "soak $(date +%T): $*" >&2; }

rport=$(free_port)
redis_flags=(--appendonly yes --appendfsync always)
start_redis "$rport" "$work" "${redis_flags[@]}"
epoch=1
set_ring() { # nodes...
  local nodes
  nodes=$(printf '"%s",' "$@")
  redis-cli -p "$rport" set shardchat:ring "{\"epoch\":$epoch,\"vnodes\":128,\"nodes\":[${nodes%,}]}" >/dev/null
  log "ring epoch $epoch: $*"
  epoch=$((epoch + 1))
}
set_ring n0 n1 n2

declare -A port node
node_flags=(--redis-url "redis://127.0.0.1:$rport" --node-ttl 3s --request-timeout 2s --shutdown-grace 2s)
launch() { # i
  start_node "$work/n$1.log" "${port[$1]}" --node-id "n$1" "${node_flags[@]}"
  node[$1]=$node_pid
}
for i in 0 1 2 3; do port[$i]=$(free_port); done
for i in 0 1 2; do launch "$i"; done
for i in 0 1 2; do wait_ready "${port[$i]}" 20; done
urls="ws://127.0.0.1:${port[0]},ws://127.0.0.1:${port[1]},ws://127.0.0.1:${port[2]}"

log "chat-bench for $duration (${load[*]}), a fault every ${period}s"
"$bench_bin" --json -q -u "$urls" "${load[@]}" -d "${secs}s" --drain 20s \
  --reconnect --retry-publishes --connect-timeout 5s >"$work/bench.json" 2>"$work/bench.err" &
bench=$!
pids+=("$bench")

# Faults run until 10 s before the end of the publish window, so the last
# recovery happens under traffic too.
started=$(date +%s)
step=0
sleep "$period"
while [ $(( $(date +%s) - started + period )) -lt $(( secs - 10 )) ] && kill -0 "$bench" 2>/dev/null; do
  fault=${faults[$(( step % ${#faults[@]} ))]}
  case $fault in
    kill)
      victim=$(( (step / ${#faults[@]}) % 3 ))
      log "SIGKILL n$victim"
      kill -9 "${node[$victim]}" 2>/dev/null || true
      sleep 2
      log "restart n$victim"
      launch "$victim"
      wait_ready "${port[$victim]}" 20
      ;;
    redis)
      log "SIGKILL redis"
      kill -9 "$redis_pid" 2>/dev/null || true
      sleep 2
      log "restart redis"
      start_redis "$rport" "$work" "${redis_flags[@]}"
      ;;
    ring-up)
      launch 3
      wait_ready "${port[3]}" 20
      set_ring n0 n1 n2 n3
      ;;
    ring-down)
      set_ring n0 n1 n2
      sleep 3
      log "SIGTERM n3"
      kill "${node[3]}" 2>/dev/null || true
      ;;
    *)
      echo "unknown fault $fault" >&2
      exit 2
      ;;
  esac
  step=$((step + 1))
  sleep "$period"
done
log "faults done ($step); waiting for chat-bench"
status=0
wait "$bench" || status=$?
[ -n "${SOAK_REPORT:-}" ] && cp "$work/bench.json" "$SOAK_REPORT"
python3 - "$work/bench.json" "$step" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s, c, r = j["sent"], j["correctness"], j["recovery"]
print(f"faults injected: {sys.argv[2]}")
print(f"publishes: {s['accepted']:,} accepted of {s['attempted']:,} sent, {s['rejected']} rejected, "
      f"{s['unanswered']} unanswered, {s['interrupted']} interrupted, {s['retries']} retries, "
      f"{s['deduplicated']} answered as duplicates")
print(f"deliveries: {j['delivered']['unique']:,} of {j['delivered']['expected']:,} expected; "
      f"latency p50 {j['latency_us']['p50']/1000:.1f} ms, p99 {j['latency_us']['p99']/1000:.1f} ms, max {j['latency_us']['max']/1000:.0f} ms")
print(f"recovery: {r['reconnects']} reconnects, {r['recovered_false']} recovered:false, {r['gaps']} gap pushes")
print(f"correctness: lost {c['lost']}, excused {c['excused']}, duplicated {c['duplicated']}, "
      f"out of order {c['out_of_order']}, protocol violations {c['protocol_violations']}")
print(f"errors: {j['errors']}")
print("PASS" if j["passed"] else "FAIL: " + "; ".join(j["failures"]))
PY
[ "$status" = 0 ] && ok=1
exit "$status"
