#!/usr/bin/env bash
# The project's benchmark: one TCP stream (iperf3) and ping from site A to site B
# through plain routing, tunneld and OpenVPN 2.6 on the lab topology, interleaved
# over rounds; prints medians and ratios (docs/performance.md). Needs root.
# Every argument goes to `python -m tools.bench`, e.g.
#   netns-scripts/bench.sh                      # 3 rounds x 10 s, all configurations
#   netns-scripts/bench.sh --quick --json       # 1 round x 3 s, JSON on the last line
#   netns-scripts/bench.sh --configs plain,tunneld --rounds 5
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's environment (.venv/, made by install-deps.sh with what the bench needs).
[ -x .venv/bin/python ] || bash netns-scripts/install-deps.sh >&2
exec .venv/bin/python -m tools.bench "$@"
