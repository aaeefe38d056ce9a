#!/usr/bin/env bash
# The main job: the two-site demo in network namespaces (handshake, traffic,
# status, teardown). Installs what it needs first. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: run as root (network namespaces and TUN devices need it)" >&2
  exit 1
fi
bash netns-scripts/install-deps.sh
exec .venv/bin/python -m tools.demo "$@"
