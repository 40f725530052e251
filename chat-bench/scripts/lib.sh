# Shared helpers of the chat-bench scripts (sourced, not run). Everything
# listens on loopback; every process started here is recorded in `pids`
# and stopped by `stop_all` (the scripts trap EXIT with it).
#
# Binaries: $BIN_DIR (default target/release) holds chat-node and chat-bench.

BIN_DIR=${BIN_DIR:-target/release}
node_bin=$BIN_DIR/chat-node
bench_bin=$BIN_DIR/chat-bench
pids=()

# The nodes run with raised per-connection limits so a benchmark measures
# the server, not the abuse limits (docs/benchmarks.md).
node_limits=(--publish-rate 100000 --publish-burst 100000 --frame-rate 100000 --connect-rate 0 --max-connections-per-ip 0 --dm-recipient-rate 100000)

need_binaries() {
  if [ ! -x "$node_bin" ] || [ ! -x "$bench_bin" ]; then
    echo "build first: cargo build --release -p chat-node -p chat-bench (or set BIN_DIR)" >&2
    exit 2
  fi
  command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install -y redis-server)" >&2; exit 2; }
  command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 2; }
}

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_ready PORT [SECONDS]: until /readyz answers 200.
wait_ready() {
  local tries=$(( ${2:-10} * 10 ))
  for _ in $(seq "$tries"); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node on port $1 not ready" >&2
  return 1
}

# start_redis PORT DIR [redis-server flags...]: prints nothing, sets redis_pid.
start_redis() {
  local port=$1 dir=$2
  shift 2
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" "$@" >>"$dir/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis on port $port did not start" >&2
  return 1
}

# start_node LOG PORT [chat-node flags...]: sets node_pid.
start_node() {
  local log=$1 port=$2
  shift 2
  "$node_bin" --dev-mode --listen "127.0.0.1:$port" "${node_limits[@]}" "$@" >>"$log" 2>&1 &
  node_pid=$!
  pids+=("$node_pid")
}

# redis_cmdstats PORT: total calls and usec of every command, as JSON.
redis_cmdstats() {
  redis-cli -p "$1" info commandstats | python3 -c '
import json, re, sys
out = {}
for line in sys.stdin:
    m = re.match(r"cmdstat_(\S+):calls=(\d+),usec=(\d+)", line)
    if m:
        out[m.group(1)] = {"calls": int(m.group(2)), "usec": int(m.group(3))}
print(json.dumps(out))'
}

# redis_cpu PORT: seconds of CPU (user + sys) the Redis process has used.
redis_cpu() {
  redis-cli -p "$1" info cpu | python3 -c '
import sys
v = {}
for line in sys.stdin:
    if ":" in line:
        k, x = line.strip().split(":", 1)
        v[k] = x
print(float(v.get("used_cpu_user", 0)) + float(v.get("used_cpu_sys", 0)))'
}

# cpu_seconds PID...: user + system CPU seconds the processes have used.
cpu_seconds() {
  local total=0 t
  for pid in "$@"; do
    t=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$(python3 -c "print($total + $t)")
  done
  echo "$total"
}
