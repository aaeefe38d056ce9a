#!/usr/bin/env bash
# Install everything tunneld's demo and test suite need, idempotently:
# Debian packages (namespaces, nftables, traffic tools, strongSwan, OpenVPN)
# and the Python package itself with its test/dev extras.
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
  # the default interpreter (PYTHON=python3): Debian's python3 has no pip module
  python3 python3-pip
  # systemd-analyze verify/security on contrib/systemd/tunneld@.service (no running
  # systemd needed); setpriv (util-linux, Essential) starts the daemon as the unit would
  systemd
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
# Debian starts a strongSwan service on install; our tests run their own charons.
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop strongswan-starter strongswan 2>/dev/null || true
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "tunneld needs Python >= 3.11"'
# This project was distributed as "tunneld" before it became tunneld-ipsec (that name
# belongs to another project on the package index). An editable install under the old
# name would keep a second `tunneld` command and import path: remove it, and only it
# (an install of the other project is not editable).
if "$PY" -m pip show tunneld 2>/dev/null | grep -q '^Editable project location:'; then
  "$PY" -m pip -q uninstall -y tunneld 2>/dev/null ||
    "$PY" -m pip -q uninstall -y --break-system-packages tunneld
fi
pip_args=(-q install --disable-pip-version-check -e ".[test,dev]")
if ! "$PY" -m pip "${pip_args[@]}" 2>/tmp/tunneld-pip.err; then
  if grep -q externally-managed /tmp/tunneld-pip.err; then
    "$PY" -m pip "${pip_args[@]}" --break-system-packages
  else
    cat /tmp/tunneld-pip.err >&2
    exit 1
  fi
fi
echo "install-deps: ok ($("$PY" --version), $(command -v tunneld))"
