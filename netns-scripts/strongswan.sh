#!/usr/bin/env bash
# strongswan.sh: run strongSwan (charon + swanctl, userspace ESP through
# kernel-libipsec) as one IPsec gateway inside a network namespace.
#
#   strongswan.sh start --ns NS --dir DIR --local-addr A --remote-addr A
#       --local-id ID --remote-id ID --local-ts CIDR[,CIDR] --remote-ts CIDR[,CIDR]
#       --auth pubkey|psk [--cert F --key F --ca F | --psk-file F]
#       [--ike PROPOSALS] [--esp PROPOSALS] [--esn yes|no|both]
#       [--rekey-time T] [--life-time T] [--ike-rekey-time T] [--ike-over-time T]
#       [--reauth-time T] [--dpd-delay T]
#       [--start-action none|start|trap] [--make-before-break yes|no]
#       [--delete-rekeyed-delay SECONDS] [--replay-window N] [--send-cert always|ifasked]
#       [--conn NAME] [--child NAME] [--extra-child NAME,LOCAL_TS,REMOTE_TS]...
#       [--log SUBSYS=LEVEL]... [--timeout SECONDS]
#       [--encap yes|no] [--plugins "LIST"]   (only to reproduce failures)
#   strongswan.sh stop --dir DIR
#   strongswan.sh swanctl --dir DIR -- SWANCTL_ARGS...
#
# Everything the gateway owns lives in DIR: strongswan.conf, swanctl/ (config
# and credentials), charon.log, charon.stdout, charon.vici, charon.pid.
# Steps of `start`:
#   1. write strongswan.conf (explicit plugin list) and swanctl/swanctl.conf;
#   2. run charon in NS inside a private mount namespace where DIR is bind
#      mounted over /run: charon's pid file path is compiled in, so two charons
#      on one machine would otherwise collide;
#   3. wait until charon answers on DIR/charon.vici, then `swanctl --load-all`.
# `stop` kills exactly the charon started from DIR and removes nothing.
set -euo pipefail

readonly CHARON=/usr/lib/ipsec/charon
# kernel-libipsec must come before kernel-netlink: the first kernel-ipsec
# backend that registers wins, and this kernel has no ESP/XFRM crypto.
# kernel-netlink stays for routes (table 220). kdf is needed for prf+.
readonly PLUGINS="random nonce openssl kdf pem pkcs1 pkcs8 x509 pubkey revocation constraints \
curve25519 kernel-libipsec kernel-netlink socket-default vici"
readonly PLUGIN_DIR=/usr/lib/ipsec/plugins
# plugin_package NAME: the Debian 12 package that ships PLUGIN_DIR/libstrongswan-NAME.so
# (from `dpkg -S`). Some are only Recommends of strongswan-charon's dependencies,
# so an install with --no-install-recommends lacks them (netns-scripts/install-deps.sh).
plugin_package() {
	case $1 in
	random | nonce | kdf | pem | pkcs1 | pkcs8 | x509 | pubkey | revocation | constraints | \
		kernel-netlink) echo libstrongswan ;;
	openssl) echo libstrongswan-standard-plugins ;;
	curve25519) echo libstrongswan-extra-plugins ;;
	kernel-libipsec) echo libcharon-extra-plugins ;;
	socket-default) echo strongswan-libcharon ;;
	vici) echo strongswan-swanctl ;;
	*) echo "unknown (apt-file search libstrongswan-$1.so)" ;;
	esac
}
# Subdirectories swanctl expects; it prints an error for each one missing.
readonly CRED_DIRS="conf.d x509 x509ca x509aa x509ocsp x509crl x509ac pubkey private rsa ecdsa \
bliss pkcs8 pkcs12"

die() {
	echo "strongswan.sh: $*" >&2
	exit 1
}

usage() { # usage EXIT_CODE: the header comment, on stdout for --help
	if (($1 == 0)); then
		sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
	else
		sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
	fi
	exit "$1"
}

# --- argument checks --------------------------------------------------------

check_re() { # check_re NAME VALUE REGEX
	[[ $2 =~ $3 ]] || die "bad value for $1: '$2'"
}

readonly RE_DURATION='^[0-9]+[smhd]?$'
readonly RE_PROPOSALS='^[a-z0-9_]+(-[a-z0-9_]+)*(,[a-z0-9_]+(-[a-z0-9_]+)*)*$'
readonly RE_TS='^[0-9a-fA-F:.]+(/[0-9]+)?(,[0-9a-fA-F:.]+(/[0-9]+)?)*$'
readonly RE_ADDR='^[0-9a-fA-F:.]+$'
readonly RE_NAME='^[A-Za-z0-9_-]+$'
# Identities go into a quoted swanctl.conf string: no quotes, backslashes or newlines.
readonly RE_ID='^[^"\\]+$'

# --- start ------------------------------------------------------------------

# check_installed PLUGINS: charon and every plugin of the load list exist. charon
# skips a plugin it cannot load and fails much later (no openssl: no AES-GCM
# proposal, no ECDSA), so a missing package is named here instead.
check_installed() {
	[[ -x $CHARON ]] || die "$CHARON missing: apt-get install strongswan-charon"
	command -v swanctl >/dev/null || die "swanctl missing: apt-get install strongswan-swanctl"
	local p i missing=() pkgs=()
	for p in $1; do
		[[ -f $PLUGIN_DIR/libstrongswan-$p.so ]] && continue
		missing+=("$p")
		pkgs+=("$(plugin_package "$p")")
	done
	((${#missing[@]} == 0)) && return 0
	for i in "${!missing[@]}"; do
		echo "strongswan.sh: plugin ${missing[i]} missing" \
			"($PLUGIN_DIR/libstrongswan-${missing[i]}.so), Debian package ${pkgs[i]}" >&2
	done
	die "install the package(s) above (bash netns-scripts/install-deps.sh does)"
}

cmd_start() {
	local ns="" dir="" laddr="" raddr="" lid="" rid="" lts="" rts="" auth=""
	local cert="" key="" ca="" psk_file="" timeout=15
	local ike="aes256gcm16-prfsha256-x25519" esp="aes256gcm16" esn="no"
	local rekey="1h" ike_rekey="4h" life="" over="" reauth="0s" dpd="0s" start_action="none"
	local mbb="no" del_delay="5" replay="32" send_cert="always" conn="gw" child="net"
	local encap="yes" plugins=$PLUGINS
	local -a logs=() extra_children=()
	while (($#)); do
		(($# >= 2)) || die "option $1 needs a value"
		case $1 in
		--ns) ns=$2 ;;
		--dir) dir=$2 ;;
		--local-addr) laddr=$2 ;;
		--remote-addr) raddr=$2 ;;
		--local-id) lid=$2 ;;
		--remote-id) rid=$2 ;;
		--local-ts) lts=$2 ;;
		--remote-ts) rts=$2 ;;
		--auth) auth=$2 ;;
		--cert) cert=$2 ;;
		--key) key=$2 ;;
		--ca) ca=$2 ;;
		--psk-file) psk_file=$2 ;;
		--ike) ike=$2 ;;
		--esp) esp=$2 ;;
		--esn) esn=$2 ;;
		--rekey-time) rekey=$2 ;;
		--ike-rekey-time) ike_rekey=$2 ;;
		--life-time) life=$2 ;;
		--ike-over-time) over=$2 ;;
		--reauth-time) reauth=$2 ;;
		--dpd-delay) dpd=$2 ;;
		--start-action) start_action=$2 ;;
		--make-before-break) mbb=$2 ;;
		--delete-rekeyed-delay) del_delay=$2 ;;
		--replay-window) replay=$2 ;;
		--send-cert) send_cert=$2 ;;
		--conn) conn=$2 ;;
		--child) child=$2 ;;
		--extra-child) extra_children+=("$2") ;;
		--log) logs+=("$2") ;;
		--timeout) timeout=$2 ;;
		--encap) encap=$2 ;;
		--plugins) plugins=$2 ;;
		*) die "unknown option $1" ;;
		esac
		shift 2
	done
	[[ -n $ns && -n $dir && -n $laddr && -n $raddr && -n $lid && -n $rid && -n $lts && -n $rts ]] ||
		die "start needs --ns --dir --local-addr --remote-addr --local-id --remote-id --local-ts --remote-ts"
	check_re --ns "$ns" "$RE_NAME"
	check_re --local-addr "$laddr" "$RE_ADDR"
	check_re --remote-addr "$raddr" "$RE_ADDR"
	check_re --local-id "$lid" "$RE_ID"
	check_re --remote-id "$rid" "$RE_ID"
	check_re --local-ts "$lts" "$RE_TS"
	check_re --remote-ts "$rts" "$RE_TS"
	check_re --ike "$ike" "$RE_PROPOSALS"
	check_re --esp "$esp" "$RE_PROPOSALS"
	check_re --esn "$esn" '^(yes|no|both)$'
	check_re --delete-rekeyed-delay "$del_delay" '^[0-9]+$'
	for v in "$rekey" "$ike_rekey" "$reauth" "$dpd" ${life:+"$life"} ${over:+"$over"}; do
		check_re duration "$v" "$RE_DURATION"
	done
	check_re --start-action "$start_action" '^(none|start|trap)$'
	check_re --make-before-break "$mbb" '^(yes|no)$'
	check_re --replay-window "$replay" '^[0-9]+$'
	check_re --send-cert "$send_cert" '^(always|ifasked|never)$'
	check_re --conn "$conn" "$RE_NAME"
	check_re --child "$child" "$RE_NAME"
	local extra
	for extra in ${extra_children[@]+"${extra_children[@]}"}; do
		# NAME,LOCAL_TS,REMOTE_TS (one network each): another child, same settings
		check_re --extra-child "$extra" '^[A-Za-z0-9_-]+,[0-9a-fA-F:.]+(/[0-9]+)?,[0-9a-fA-F:.]+(/[0-9]+)?$'
	done
	check_re --timeout "$timeout" '^[0-9]+$'
	check_re --encap "$encap" '^(yes|no)$'
	check_re --plugins "$plugins" '^[a-z0-9 -]+$'
	for l in "${logs[@]}"; do check_re --log "$l" '^[a-z]{3}=-?[0-4]$'; done
	case $auth in
	pubkey) [[ -f $cert && -f $key && -f $ca ]] || die "--auth pubkey needs --cert, --key, --ca files" ;;
	psk) [[ -f $psk_file ]] || die "--auth psk needs --psk-file FILE" ;;
	*) die "--auth must be pubkey or psk" ;;
	esac
	check_installed "$plugins"
	ip netns list | awk '{print $1}' | grep -qx -- "$ns" || die "no network namespace '$ns'"
	mkdir -p -- "$dir"
	dir=$(cd -- "$dir" && pwd -P)
	[[ $dir != /run && $dir != /run/* && $dir != /var/run/* ]] || die "--dir must not be under /run"
	if pid=$(live_pid "$dir"); then die "charon already running from $dir (pid $pid)"; fi

	# swanctl computes life_time = rekey_time * 110 / 100 and over_time = rekey_time * 10 / 100
	# in whole seconds: below 10 s the margin is 0 and the SA expires instead of rekeying.
	if [[ -z $life ]] && (($(seconds "$rekey") < 10)); then
		echo "strongswan.sh: warning: --rekey-time $rekey without --life-time:" \
			"the Child SA expires when it should be rekeyed" >&2
	fi
	if [[ -z $over ]] && (($(seconds "$ike_rekey") < 10)); then
		echo "strongswan.sh: warning: --ike-rekey-time $ike_rekey without --ike-over-time:" \
			"the IKE SA expires when it should be rekeyed" >&2
	fi
	[[ $esn == no ]] || echo "strongswan.sh: warning: libipsec 5.9.8 cannot install ESN SAs;" \
		"a Child SA that selects ESN fails (NO_PROPOSAL_CHOSEN)" >&2
	esp=$(esp_with_esn "$esp" "$esn")
	write_strongswan_conf "$dir" "$mbb" "$del_delay" "${logs[@]}"
	write_swanctl_conf "$dir"
	install_credentials "$dir"
	launch_charon "$ns" "$dir"
	# From here on a failed start must not leave charon behind.
	STARTING_DIR=$dir
	trap abort_start EXIT
	wait_for_vici "$dir" "$timeout"
	swanctl_in "$dir" --load-all --noprompt >"$dir/load-all.out" 2>&1 ||
		{
			cat "$dir/load-all.out" >&2
			die "swanctl --load-all failed (log: $dir/charon.log)"
		}
	trap - EXIT
	echo "charon pid $(cat "$dir/daemon.pid") in $ns, vici unix://$dir/charon.vici"
}

abort_start() {
	[[ -z ${STARTING_DIR:-} ]] || cmd_stop --dir "$STARTING_DIR" || true
}

seconds() { # seconds DURATION: swanctl's 30, 30s, 10m, 1h, 1d in seconds
	local n=${1%[smhd]}
	case $1 in
	*m) echo $((10#$n * 60)) ;;
	*h) echo $((10#$n * 3600)) ;;
	*d) echo $((10#$n * 86400)) ;;
	*) echo $((10#$n)) ;;
	esac
}

esp_with_esn() { # ESN is a transform of its own (RFC 7296 §3.3.2, type 5)
	local out="" p suffix
	case $2 in yes) suffix=-esn ;; no) suffix=-noesn ;; both) suffix=-esn-noesn ;; esac
	IFS=, read -ra props <<<"$1"
	for p in "${props[@]}"; do
		[[ $p == *esn* ]] || p+=$suffix
		out+=${out:+,}$p
	done
	echo "$out"
}

write_strongswan_conf() { # DIR MBB DELETE_DELAY [SUBSYS=LEVEL]...
	local dir=$1 mbb=$2 del_delay=$3
	shift 3
	local levels="ike = 2
      cfg = 2
      knl = 2
      net = 1
      enc = 1
      chd = 2"
	local l
	for l in "$@"; do levels+=$'\n'"      ${l%%=*} = ${l#*=}"; done
	# Inside charon's mount namespace /run is DIR; the paths below are seen
	# from there.
	cat >"$dir/strongswan.conf" <<EOF
# generated by netns-scripts/strongswan.sh
charon {
  load_modular = no
  load = $plugins
  # make_before_break only concerns IKE reauthentication; Child SA rekeys
  # keep the old inbound SA for delete_rekeyed_delay seconds.
  make_before_break = $mbb
  delete_rekeyed_delay = $del_delay
  install_routes = yes
  retransmit_timeout = 2.0
  retransmit_tries = 3
  plugins {
    vici {
      socket = unix:///run/charon.vici
    }
    revocation {
      enable_ocsp = no
      enable_crl = no
    }
  }
  filelog {
    charon {
      path = /run/charon.log
      append = yes
      flush_line = yes
      time_format = %F %T
      ike_name = yes
      default = 1
      $levels
    }
  }
}
EOF
}

write_swanctl_conf() { # DIR; reads the option variables of cmd_start
	local dir=$1 sw="$1/swanctl" d
	for d in $CRED_DIRS; do mkdir -p "$sw/$d"; done
	local lauth="auth = $auth" rauth="auth = $auth"
	if [[ $auth == pubkey ]]; then
		lauth+=$'\n      certs = local.pem'
		rauth+=$'\n      cacerts = ca.pem'
	fi
	# swanctl's defaults add 10% to the rekey time (life_time, over_time), which
	# rounds to nothing for rekey times of a few seconds: the SA then expires
	# instead of being rekeyed. Give both explicitly for short timers.
	local life_line="" over_line=""
	[[ -z $life ]] || life_line="life_time = $life"
	[[ -z $over ]] || over_line="over_time = $over"
	cat >"$sw/swanctl.conf" <<EOF
# generated by netns-scripts/strongswan.sh
connections {
  $conn {
    version = 2
    local_addrs = $laddr
    remote_addrs = $raddr
    proposals = $ike
    # libipsec only does ESP in UDP (RFC 3948). kernel-libipsec makes charon
    # fake a NAT anyway; encap = yes says so explicitly.
    encap = $encap
    rekey_time = $ike_rekey
    $over_line
    reauth_time = $reauth
    rand_time = 0
    dpd_delay = $dpd
    send_cert = $send_cert
    local {
      $lauth
      id = "$lid"
    }
    remote {
      $rauth
      id = "$rid"
    }
    children {
$(child_block "$child" "$lts" "$rts")
$(for extra in ${extra_children[@]+"${extra_children[@]}"}; do
		IFS=, read -r name ets_l ets_r <<<"$extra"
		child_block "$name" "$ets_l" "$ets_r"
	done)
    }
  }
}
include conf.d/*.conf
EOF
}

child_block() { # NAME LOCAL_TS REMOTE_TS; reads the option variables of cmd_start
	cat <<EOF
      $1 {
        mode = tunnel
        local_ts = $2
        remote_ts = $3
        esp_proposals = $esp
        rekey_time = $rekey
        $life_line
        rand_time = 0
        replay_window = $replay
        start_action = $start_action
      }
EOF
}

install_credentials() { # DIR; reads the option variables of cmd_start
	local sw="$1/swanctl"
	rm -f "$sw/conf.d/secrets.conf" "$sw/x509/local.pem" "$sw/x509ca/ca.pem" "$sw/private/local.pem"
	if [[ $auth == pubkey ]]; then
		cp -- "$cert" "$sw/x509/local.pem"
		cp -- "$ca" "$sw/x509ca/ca.pem"
		install -m 600 -- "$key" "$sw/private/local.pem"
		return
	fi
	# The PSK is the file's bytes minus trailing newlines, written as hex so
	# that no byte needs quoting; the file is private to root.
	local hex
	hex=$(od -An -v -tx1 -- "$psk_file" | tr -d ' \n')
	while [[ $hex == *0a ]]; do hex=${hex%0a}; done
	[[ -n $hex ]] || die "empty PSK file"
	(
		umask 077
		cat >"$sw/conf.d/secrets.conf" <<EOF
secrets {
  ike-peer {
    id-local = "$lid"
    id-remote = "$rid"
    secret = 0x$hex
  }
}
EOF
	)
}

launch_charon() { # NS DIR
	local ns=$1 dir=$2
	rm -f -- "$dir/charon.vici" "$dir/charon.pid" "$dir/daemon.pid"
	# ip netns exec, unshare and sh all exec in place, so $! is charon's pid.
	STRONGSWAN_CONF="$dir/strongswan.conf" \
		ip netns exec "$ns" unshare --mount --propagation private \
		/bin/sh -c 'mount --bind "$1" /run && exec "$2"' charon-netns "$dir" "$CHARON" \
		</dev/null >>"$dir/charon.stdout" 2>&1 &
	echo $! >"$dir/daemon.pid"
}

wait_for_vici() { # DIR TIMEOUT
	local dir=$1 deadline=$((SECONDS + $2))
	until [[ -S $dir/charon.vici ]] && swanctl_in "$dir" --stats >/dev/null 2>&1; do
		if ! live_pid "$dir" >/dev/null; then
			tail -n 20 "$dir/charon.stdout" "$dir/charon.log" >&2 2>/dev/null || true
			die "charon exited during startup"
		fi
		((SECONDS < deadline)) || die "charon did not answer on vici within $2 s"
		sleep 0.05
	done
}

# --- stop -------------------------------------------------------------------

# live_pid DIR: print the pid of the charon started from DIR if it still runs
# (a zombie or a recycled pid does not count).
live_pid() {
	local pid state exe
	pid=$(cat -- "$1/daemon.pid" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
	[[ $state != Z && $state != X ]] || return 1
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	# before the final exec the pid still belongs to ip/unshare/sh
	case $exe in "$CHARON" | */ip | */unshare | */sh | */dash | */bash) ;; *) return 1 ;; esac
	echo "$pid"
}

cmd_stop() {
	local dir=""
	while (($#)); do
		(($# >= 2)) || die "option $1 needs a value"
		case $1 in --dir) dir=$2 ;; *) die "unknown option $1" ;; esac
		shift 2
	done
	[[ -n $dir ]] || die "stop needs --dir"
	local pid i
	pid=$(live_pid "$dir") || {
		rm -f -- "$dir/daemon.pid"
		return 0
	}
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		live_pid "$dir" >/dev/null || break
		sleep 0.05
	done
	if live_pid "$dir" >/dev/null; then
		echo "strongswan.sh: charon $pid ignored SIGTERM for 5 s, sending SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 40; i++)); do
			live_pid "$dir" >/dev/null || break
			sleep 0.05
		done
	fi
	live_pid "$dir" >/dev/null && die "charon $pid is still running"
	rm -f -- "$dir/daemon.pid"
}

# --- swanctl ----------------------------------------------------------------

swanctl_in() { # DIR SWANCTL_ARGS...; swanctl takes --uri after the command
	local dir=$1
	shift
	SWANCTL_DIR="$dir/swanctl" STRONGSWAN_CONF="$dir/strongswan.conf" \
		swanctl "$@" --uri "unix://$dir/charon.vici"
}

cmd_swanctl() {
	local dir=""
	while (($#)); do
		case $1 in
		--dir)
			(($# >= 2)) || die "--dir needs a value"
			dir=$2
			shift 2
			;;
		--)
			shift
			break
			;;
		*) die "unknown option $1 (swanctl arguments go after --)" ;;
		esac
	done
	[[ -n $dir && $# -gt 0 ]] || die "usage: swanctl --dir DIR -- SWANCTL_ARGS..."
	[[ -d $dir ]] || die "no directory $dir"
	dir=$(cd -- "$dir" && pwd -P)
	swanctl_in "$dir" "$@"
}

main() {
	(($#)) || usage 2
	local cmd=$1
	shift
	case $cmd in
	start) cmd_start "$@" ;;
	stop) cmd_stop "$@" ;;
	swanctl) cmd_swanctl "$@" ;;
	-h | --help | help) usage 0 ;;
	*) die "unknown command $cmd" ;;
	esac
}

main "$@"
