#!/usr/bin/env bash
# Install everything tunneld's demo and test suite need, idempotently:
# Debian packages (namespaces, nftables, traffic tools, strongSwan, OpenVPN)
# and the Python package itself with its test/dev extras, in .venv/ of this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installed with --no-install-recommends: whatever the suite uses is listed here,
# including what a Debian install usually has but need not (not Essential: yes).
APT_PACKAGES=(
  # ip/ss (iproute2), sysctl (procps), unshare (util-linux is Essential) and
  # mount --bind (mount) in the lab and strongswan.sh; awk in the scripts; modprobe
  # (kmod) for a modular kernel to load veth, bridge, tun and nf_tables on demand
  iproute2 procps psmisc mount mawk kmod
  iputils-ping nftables iperf3 tcpdump tshark
  # checksum/segmentation offloads off in the TSO tests (tests/netns/test_tso_netns.py)
  ethtool
  openvpn
  # strongSwan: charon's plugins come from several packages, one of them (openssl,
  # in libstrongswan-standard-plugins) only a Recommends; strongswan.sh checks them
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
  libstrongswan-standard-plugins
  # the interpreter .venv is made from (PYTHON=python3); Debian's python3 makes a
  # venv with pip only with python3-venv (ensurepip)
  python3 python3-venv
  # systemd-analyze verify/security on contrib/systemd/tunneld@.service (no running
  # systemd needed); setpriv (util-linux, Essential) starts the daemon as the unit would
  systemd
  # tests/netns/test_metrics_netns.py runs Prometheus (the server binary only: its
  # Depends are adduser and the web UI's JavaScript; the Recommends, node-exporter,
  # is not needed) to scrape a gateway's [metrics] endpoint
  prometheus
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts strongSwan and Prometheus services on install; our tests run their own.
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop strongswan-starter strongswan prometheus 2>/dev/null || true
fi

# The project's own virtual environment, .venv/ in this checkout: the demo, the
# tests and the benchmark run from it, and nothing is installed into the system
# interpreter (a second clone gets a second .venv; deleting a clone deletes its
# environment). PYTHON names the interpreter the environment is made from.
BASE=${PYTHON:-python3}
"$BASE" -c 'import sys; assert sys.version_info >= (3, 11), "tunneld needs Python >= 3.11"'
VENV=.venv
# A stale environment (its base interpreter upgraded or removed) is made again.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  echo "install-deps: $VENV is broken (its base interpreter is gone): making it again"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "install-deps: python venv $VENV (from $("$BASE" --version))"
  "$BASE" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip -q install --disable-pip-version-check -e ".[test,dev]"
echo "install-deps: ok ($("$VENV/bin/python" --version) in $PWD/$VENV)"
