#!/usr/bin/env bash
# The two-site lab: five network namespaces joined by veth pairs.
#
#   PREFIX-a            PREFIX-gwa                PREFIX-wan            PREFIX-gwb             PREFIX-b
#   198.51.100.10 --- 198.51.100.1                 bridge               203.0.113.1 --- 203.0.113.10
#   (site A host)       192.0.2.1  ------------  P-br (P-wa, P-wb)  ---  192.0.2.2         (site B host)
#
# Site A reaches site B only through a tunnel between the gateways: the
# gateways route their own site and the underlay 192.0.2.0/24, nothing else,
# until a tunnel daemon adds a route to the remote site via its TUN device.
# PREFIX-wan holds a plain Linux bridge; faults are injected there with
# nftables (bridge family) and captures are taken on its ports.
#
# Usage:
#   lab.sh up PREFIX        create the lab (idempotent: an existing complete lab is kept)
#   lab.sh down PREFIX      kill every process inside the lab, delete it (idempotent)
#   lab.sh exec PREFIX NODE CMD...   run CMD in PREFIX-NODE (NODE: a gwa wan gwb b)
#   lab.sh status PREFIX    addresses and routes of every node
#
# PREFIX: 1-8 characters [a-z0-9], so that interface names (PREFIX-xxx)
# fit in 15 characters. Use a random suffix per test run.
set -euo pipefail

NODES=(a gwa wan gwb b)

usage() {
  sed -n '/^# Usage:/,/^# fit in/p' "$0" >&2
  exit 2
}

say() { printf 'lab.sh: %s\n' "$*"; }

check_prefix() {
  [[ "${1:-}" =~ ^[a-z0-9]{1,8}$ ]] || {
    echo "lab.sh: PREFIX must be 1-8 characters [a-z0-9], got '${1:-}'" >&2
    exit 2
  }
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

# run a command in a namespace, echoing it
nx() {
  local ns=$1
  shift
  say "[$ns] $*"
  ip netns exec "$ns" "$@"
}

lab_complete() {
  local p=$1 node
  for node in "${NODES[@]}"; do
    ns_exists "$p-$node" || return 1
  done
}

# veth pair with ends created directly inside the namespaces (nothing in the root namespace)
veth() {
  local ns1=$1 if1=$2 ns2=$3 if2=$4
  say "veth $ns1/$if1 <-> $ns2/$if2"
  ip -n "$ns1" link add "$if1" type veth peer name "$if2" netns "$ns2"
}

addr_up() {
  local ns=$1 ifname=$2 addr=$3
  nx "$ns" ip addr add "$addr" dev "$ifname"
  nx "$ns" ip link set "$ifname" up
}

lab_up() {
  local p=$1 node
  if lab_complete "$p"; then
    say "lab $p is already up"
    return 0
  fi
  lab_down "$p" # clean a partial lab
  for node in "${NODES[@]}"; do
    say "netns add $p-$node"
    ip netns add "$p-$node"
    nx "$p-$node" ip link set lo up
  done
  # The wan node itself stays silent (no IPv6, no multicast snooping reports),
  # so that a capture on the bridge shows only what the gateways send.
  nx "$p-wan" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  veth "$p-a" "$p-a0" "$p-gwa" "$p-ga1"
  veth "$p-gwa" "$p-ga0" "$p-wan" "$p-wa"
  veth "$p-gwb" "$p-gb0" "$p-wan" "$p-wb"
  veth "$p-b" "$p-b0" "$p-gwb" "$p-gb1"

  # The underlay: one bridge, both gateways on 192.0.2.0/24.
  nx "$p-wan" ip link add "$p-br" type bridge stp_state 0 forward_delay 0 mcast_snooping 0
  nx "$p-wan" ip link set "$p-wa" master "$p-br"
  nx "$p-wan" ip link set "$p-wb" master "$p-br"
  for ifname in "$p-wa" "$p-wb" "$p-br"; do nx "$p-wan" ip link set "$ifname" up; done

  addr_up "$p-a" "$p-a0" 198.51.100.10/24
  nx "$p-a" ip route add default via 198.51.100.1
  addr_up "$p-gwa" "$p-ga1" 198.51.100.1/24
  addr_up "$p-gwa" "$p-ga0" 192.0.2.1/24
  addr_up "$p-gwb" "$p-gb0" 192.0.2.2/24
  addr_up "$p-gwb" "$p-gb1" 203.0.113.1/24
  addr_up "$p-b" "$p-b0" 203.0.113.10/24
  nx "$p-b" ip route add default via 203.0.113.1
  for node in gwa gwb; do
    nx "$p-$node" sysctl -q -w net.ipv4.ip_forward=1
  done
  say "lab $p is up"
}

lab_down() {
  local p=$1 node pids
  for node in "${NODES[@]}"; do
    ns_exists "$p-$node" || continue
    pids=$(ip netns pids "$p-$node" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      say "kill (TERM) in $p-$node: $(echo $pids)"
      kill $pids 2>/dev/null || true
    fi
  done
  # give them a moment to exit cleanly, then KILL what is left
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    pids=""
    for node in "${NODES[@]}"; do
      ns_exists "$p-$node" && pids+=" $(ip netns pids "$p-$node" 2>/dev/null || true)"
    done
    [ -z "${pids// /}" ] && break
    sleep 0.2
  done
  if [ -n "${pids// /}" ]; then
    say "kill (KILL):$pids"
    kill -9 $pids 2>/dev/null || true
  fi
  for node in "${NODES[@]}"; do
    if ns_exists "$p-$node"; then
      say "netns del $p-$node"
      ip netns del "$p-$node"
    fi
  done
}

lab_status() {
  local p=$1 node
  for node in "${NODES[@]}"; do
    if ! ns_exists "$p-$node"; then
      echo "== $p-$node: missing"
      continue
    fi
    echo "== $p-$node"
    ip -n "$p-$node" -brief addr show
    ip -n "$p-$node" route show | sed 's/^/   route: /'
  done
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case "$cmd" in
up)
  check_prefix "${1:-}"
  lab_up "$1"
  ;;
down)
  check_prefix "${1:-}"
  lab_down "$1"
  ;;
status)
  check_prefix "${1:-}"
  lab_status "$1"
  ;;
exec)
  check_prefix "${1:-}"
  [ $# -ge 3 ] || usage
  p=$1 node=$2
  shift 2
  exec ip netns exec "$p-$node" "$@"
  ;;
*) usage ;;
esac
