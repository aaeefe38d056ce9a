#!/usr/bin/env bash
# The project's benchmarks (docs/performance.md). Needs root.
# Throughput and ping: one TCP stream (iperf3) from site A to site B through plain
# routing, tunneld and OpenVPN 2.6 on the lab topology, interleaved over rounds;
# prints medians and ratios. Every argument goes to `python -m tools.bench`, e.g.
#   netns-scripts/bench.sh                      # 3 rounds x 10 s, all configurations
#   netns-scripts/bench.sh --quick --json       # 1 round x 3 s, JSON on the last line
#   netns-scripts/bench.sh --configs plain,tunneld --rounds 5
# Handshakes: `handshake` first, the rest goes to `python -m tools.bench_handshake`:
#   netns-scripts/bench.sh handshake --peers 1000 --batches 10 --json   # SAs/s, CPU, RSS
#   netns-scripts/bench.sh handshake --mode hub --peers 1000 --json     # a 1,000-spoke hub
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's environment (.venv/, made by install-deps.sh with what the bench needs).
[ -x .venv/bin/python ] || bash netns-scripts/install-deps.sh >&2
if [[ ${1:-} == handshake ]]; then
	shift
	exec .venv/bin/python -m tools.bench_handshake "$@"
fi
exec .venv/bin/python -m tools.bench "$@"
