#!/usr/bin/env bash
# Fleet benchmark of chat-operator: builds the release operator and the
# benchmark driver, then runs operator/examples/fleet_bench.rs (the real
# operator binary against the in-repo fake Kubernetes API server and a real
# redis-server). Arguments go to the driver, e.g.
#
#   operator/scripts/fleet-bench.sh --channels 10000 --runs 3
#   operator/scripts/fleet-bench.sh --channels 2000 --runs 3 --env CHAT_OPERATOR_CONCURRENCY=64
#
# Needs redis-server and redis-cli on the PATH. Prints one table with the
# median and every run; per-run details go to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p chat-operator --bin chat-operator --example fleet_bench
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
exec "$target_dir/release/examples/fleet_bench" --operator-bin "$target_dir/release/chat-operator" "$@"
