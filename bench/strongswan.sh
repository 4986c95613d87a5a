#!/bin/bash
# strongSwan's cost per CHILD_SA rekey on a hub, measured on the same UML
# harness as rotor's hub (docs/bench-strongswan.md has the method and figures).
#
#   bench/strongswan.sh [--n 200,1000] [--json] [--rounds R] [--log-level L]
#                       [--retransmit-timeout S] [--mem SIZE] [--pfs GROUP]
#
# On the host (as root) it installs Debian's strongswan, strongswan-swanctl,
# strongswan-charon and libstrongswan-standard-plugins when missing, then runs
# itself inside User-Mode Linux (scripts/uml-run.sh ... --inside N...).
#
# Inside UML, for each N: namespaces `hub` (10.77.0.1) and `nodes` (N
# addresses 10.77.x.y on one veth), one charon in each, each with its own
# strongswan.conf (STRONGSWAN_CONF), vici socket, log and private /run (for
# its pid file). The node charon has N connections, one per source address,
# IKEv2 + PSK, ESP aes128gcm16 (no PFS; with --pfs GROUP, e.g. x25519 or
# modp3072, every rekey is a DH exchange in that group) in transport mode,
# start_action=start;
# the hub has one connection accepting all of them. Measured:
#   ike_up     from loading the N node connections until both kernels hold all
#              2N ESP SAs: wall time and the hub charon's CPU (utime+stime of
#              /proc/PID/stat, which sums all its threads, in clock ticks)
#   rekey      rounds of one `swanctl --rekey --child node` on the hub (vici
#              queues one CREATE_CHILD_SA rekey per CHILD_SA, the hub
#              initiating each: the hub rekeys every node once); a round is
#              over when the hub's kernel holds a new SA pair for every node
#              and no old SA (the replaced inbound SAs go
#              delete_rekeyed_delay = 1 s after each rekey: the hub's CPU is
#              read after that, so it includes their deletion). One warm-up
#              round, then --rounds measured ones. SAs are followed with
#              `ip xfrm monitor` (a process start costs ~0.25 s in UML, so no
#              polling loop), with a full dump every 5 s as a fallback.
#   rate       rekeys / hub CPU-seconds over the measured rounds
# The swanctl client's and the node charon's CPU are reported apart.
#
# Output: a table, or with --json one object per N per line:
#   {"n":N,"complete":true,"ike_up":N,"ike_up_s":..,"ike_up_hub_cpu_s":..,
#    "rounds":R,"rekeys":R*N,"rekey_wall_s":..,"rekey_done_s":..,
#    "rekey_hub_cpu_s":..,"strongswan_rekeys_per_hub_cpu_s":..,
#    "round_rekeys_per_hub_cpu_s":[..],"best_round_rekeys_per_hub_cpu_s":..,
#    "rekey_client_cpu_s":..,"rekey_node_cpu_s":..,"log_level":L,
#    "version":"5.9.8"}
# rekey_* are totals over the measured rounds: rekey_wall_s until every node
# had its new pair (old outbound SAs gone), rekey_done_s until the old inbound
# SAs were gone too. Other jobs on the machine only inflate CPU figures inside
# UML (host preemption is charged to the running task), hence the best round.
# "complete": false when not all N came up or not all were rekeyed (counts
# say how many); the exit status is then 1. Exit 2: bad usage; 3: setup
# failed (a charon did not start, ...: a JSON line with "error" under
# --json), with the tail of the charon logs. Results go to stdout, progress
# and diagnostics to stderr.
#
#   --n LIST        comma-separated N values (default 200,1000; max 60000)
#   --json          JSON lines instead of the table
#   --log-level L   charon's log level for all groups (-1..4; default 1, the
#                   level of a stock install)
#   --rounds R      measured rekey rounds per N, after one warm-up round
#                   (default 3); the figures are totals over them
#   --retransmit-timeout S
#                   charon's first IKE retransmission timeout (default: 4, the
#                   stock value, for N <= 2000; 60 above: at N = 10000 the one
#                   node charon answering every rekey on the shared CPU is too
#                   slow for 4 s and the hub gave up on 13 % of them)
#   --mem SIZE      UML memory (default 1G, 2G when an N exceeds 2000)
#
# ROTOR_SWAN_KEEP=DIR (under /tmp) keeps the configurations and charon logs.
set -u

PROG=bench/strongswan.sh
NS_LIST=200,1000
JSON=0
LOG_LEVEL=1
ROUNDS=3
RETRANSMIT=
MEM=
INSIDE=0
CHARON=/usr/lib/ipsec/charon
HUB_IP=10.77.0.1
PSK=0sdG90YWxseS1ub3QtYS1yZWFsLXNlY3JldA==
IKE_PROPOSAL=aes128gcm16-prfsha256-x25519
ESP_PROPOSAL=aes128gcm16
PFS=

usage() {
	echo "usage: $PROG [--n 200,1000] [--json] [--rounds R] [--log-level L] [--retransmit-timeout S] [--mem SIZE] [--pfs GROUP]" >&2
	exit 2
}
err() { echo "$PROG: $*" >&2; }
die() { err "$*"; exit 3; }

ARGS=()
while [ $# -gt 0 ]; do
	case $1 in
	--n) [ $# -ge 2 ] || usage; NS_LIST=$2; shift 2 ;;
	--n=*) NS_LIST=${1#*=}; shift ;;
	--json) JSON=1; shift ;;
	--log-level) [ $# -ge 2 ] || usage; LOG_LEVEL=$2; shift 2 ;;
	--log-level=*) LOG_LEVEL=${1#*=}; shift ;;
	--rounds) [ $# -ge 2 ] || usage; ROUNDS=$2; shift 2 ;;
	--rounds=*) ROUNDS=${1#*=}; shift ;;
	--retransmit-timeout) [ $# -ge 2 ] || usage; RETRANSMIT=$2; shift 2 ;;
	--retransmit-timeout=*) RETRANSMIT=${1#*=}; shift ;;
	--mem) [ $# -ge 2 ] || usage; MEM=$2; shift 2 ;;
	--mem=*) MEM=${1#*=}; shift ;;
	--pfs) [ $# -ge 2 ] || usage; PFS=$2; shift 2 ;;
	--pfs=*) PFS=${1#*=}; shift ;;
	--inside) INSIDE=1; shift ;;
	-h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) err "unknown option $1"; usage ;;
	*) ARGS+=("$1"); shift ;;
	esac
done
[[ $LOG_LEVEL =~ ^(-1|[0-4])$ ]] || { err "--log-level: -1..4, not '$LOG_LEVEL'"; usage; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { err "--rounds: a positive integer, not '$ROUNDS'"; usage; }
[ -z "$RETRANSMIT" ] || [[ $RETRANSMIT =~ ^[1-9][0-9]*$ ]] || { err "--retransmit-timeout: seconds, not '$RETRANSMIT'"; usage; }
[ -z "$PFS" ] || [[ $PFS =~ ^(x25519|curve25519|ecp(256|384|521)|modp(2048|3072|4096))$ ]] ||
	{ err "--pfs: a DH group (x25519, ecp256, ecp384, ecp521, modp2048, modp3072, modp4096), not '$PFS'"; usage; }
[ -n "$PFS" ] && ESP_PROPOSAL=$ESP_PROPOSAL-$PFS
if [ ${#ARGS[@]} -eq 0 ]; then
	IFS=, read -r -a ARGS <<<"$NS_LIST"
fi
for n in "${ARGS[@]}"; do
	if ! [[ $n =~ ^[1-9][0-9]*$ ]] || [ "$n" -gt 60000 ]; then
		err "N must be 1..60000, not '$n'"
		usage
	fi
done

# --- on the host: install, then run ourselves inside UML ----------------------
if [ "$INSIDE" = 0 ]; then
	HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
	ROOT=$(dirname "$HERE")
	pkgs=()
	[ -x "$CHARON" ] || pkgs+=(strongswan strongswan-charon)
	command -v swanctl >/dev/null || pkgs+=(strongswan-swanctl)
	[ -f /usr/lib/ipsec/plugins/libstrongswan-openssl.so ] || pkgs+=(libstrongswan-standard-plugins)
	if [ ${#pkgs[@]} -gt 0 ]; then
		[ "$(id -u)" = 0 ] || die "missing ${pkgs[*]}: run as root, or apt-get install ${pkgs[*]}"
		err "installing ${pkgs[*]}"
		apt-get update -qq >&2 || die "apt-get update failed"
		# policy-rc.d or not, no init system here starts the services.
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strongswan strongswan-charon \
			strongswan-swanctl libstrongswan-standard-plugins >&2 ||
			die "apt-get install strongswan strongswan-charon strongswan-swanctl libstrongswan-standard-plugins failed"
		[ -x "$CHARON" ] || die "$CHARON still missing after installing strongswan-charon"
	fi
	# Time limit inside UML: per N a minute of fixed costs, up to 250 ms per
	# node to come up and 40 ms per node and round to rekey (a loaded host).
	limit=120 max=0
	for n in "${ARGS[@]}"; do
		limit=$((limit + 60 + n / 4 + (ROUNDS + 1) * (10 + n / 25)))
		[ "$n" -gt "$max" ] && max=$n
	done
	[ -n "$MEM" ] || { MEM=1G; [ "$max" -gt 2000 ] && MEM=2G; }
	flags=(--inside --log-level "$LOG_LEVEL" --rounds "$ROUNDS")
	[ -n "$RETRANSMIT" ] && flags+=(--retransmit-timeout "$RETRANSMIT")
	[ -n "$PFS" ] && flags+=(--pfs "$PFS")
	[ "$JSON" = 1 ] && flags+=(--json)
	cd "$ROOT" || die "cannot cd to $ROOT"
	# Results (lines marked SWAN-RESULT inside) go to stdout, all else
	# (progress, errors, log tails, uml-run's summary) to stderr.
	err "host load average: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs on this machine make the CPU figures noisy)"
	scripts/uml-run.sh --mem "$MEM" --timeout "$limit" bench/strongswan.sh "${flags[@]}" "${ARGS[@]}" |
		while IFS= read -r line; do
			case $line in
			"SWAN-RESULT "*) printf '%s\n' "${line#SWAN-RESULT }" ;;
			*) printf '%s\n' "$line" >&2 ;;
			esac
		done
	rc=${PIPESTATUS[0]}
	err "host load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
	exit "$rc"
fi

# --- inside UML ---------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "--inside needs root inside UML; run $PROG on the host"
[ -x "$CHARON" ] || die "no $CHARON (package strongswan-charon)"
command -v swanctl >/dev/null || die "no swanctl (package strongswan-swanctl)"
[ -d /proc/sys/net/ipv4/conf ] || die "no /proc/sys: not inside UML?"
TCK=$(getconf CLK_TCK)
VERSION=$("$CHARON" --version 2>/dev/null | awk '{ print $NF; exit }')
WORK=$(mktemp -d /var/tmp/swanbench.XXXXXX) || die "cannot create a directory in /var/tmp"

# One kernel for both namespaces: the neighbour table is global (the hub
# resolves N addresses), and a burst of N IKE_SA_INITs must not overflow the
# hub's UDP receive buffer (charon's socket takes the default size).
sysctl -qw net.ipv4.neigh.default.gc_thresh1=131072 net.ipv4.neigh.default.gc_thresh2=131072 \
	net.ipv4.neigh.default.gc_thresh3=131072 net.core.rmem_default=8388608 \
	net.core.rmem_max=33554432 net.core.wmem_default=1048576 ||
	err "warning: could not raise neighbour / socket buffer limits"

declare -A PID=()
# shellcheck disable=SC2317 # also called by the EXIT trap
stop_charons() {
	local name p i
	for name in "${!PID[@]}"; do
		p=${PID[$name]}
		kill "$p" 2>/dev/null
		for ((i = 0; i < 50; i++)); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$p" 2>/dev/null
		wait "$p" 2>/dev/null
		unset "PID[$name]"
	done
}
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	mon_stop
	stop_charons
	if [ -n "${ROTOR_SWAN_KEEP:-}" ]; then
		mkdir -p "$ROTOR_SWAN_KEEP" && cp -r "$WORK"/. "$ROTOR_SWAN_KEEP"/ &&
			err "configurations and logs copied to $ROTOR_SWAN_KEEP"
	fi
	ip netns del hub 2>/dev/null
	ip netns del nodes 2>/dev/null
}
trap cleanup EXIT

# After stopping both charons (which flushes their logs): per log, how many
# lines tell of failures, and its last 25 lines before the shutdown began.
show_logs() {
	local f
	stop_charons
	for f in "$D"/hub.log "$D"/hub.out "$D"/nodes.log "$D"/nodes.out; do
		[ -s "$f" ] || continue
		echo "--- $f: $(grep -ciE 'fail|error|giving up|retransmit|timeout|no (matching|proposal)' "$f") lines with fail/error/giving up/retransmit/timeout/no matching/no proposal; last 25 before the shutdown:" >&2
		awk '/SIGTERM received, shutting down/ { exit } { print }' "$f" | tail -n 25 >&2
	done
}
setup_fail() {
	local msg="$*"
	err "N=$N: $msg"
	if [ "$JSON" = 1 ]; then
		msg=${msg//[$'\n\t\r']/ } msg=${msg//\\/\/} msg=${msg//\"/\'}
		printf 'SWAN-RESULT {"n":%d,"complete":false,"error":"%s","version":"%s"}\n' "$N" "$msg" "$VERSION"
	fi
	show_logs
	exit 3
}

# progress on stderr: note MSG -> "bench/strongswan.sh: N=200 +1.2s: MSG"
RUN_T0=0
note() {
	local us=$((${EPOCHREALTIME/./} - RUN_T0))
	printf '%s: N=%d +%d.%ds: %s\n' "$PROG" "$N" $((us / 1000000)) $((us % 1000000 / 100000)) "$*" >&2
}
T_US=0
now() { T_US=${EPOCHREALTIME/./}; }
# CPU_TICKS: utime + stime of a process (all its threads), fields 14 and 15 of
# /proc/PID/stat, counted after the ")" that ends the command name.
CPU_TICKS=0
cpu_of() {
	local line rest f
	read -r line <"/proc/$1/stat" || return 1
	rest=${line##*) }
	read -r -a f <<<"$rest"
	CPU_TICKS=$((f[11] + f[12]))
}
# secs US -> seconds with 3 decimals; ticks T -> seconds with 2
secs() { printf '%d.%03d' $(($1 / 1000000)) $(($1 % 1000000 / 1000)); }
ticks() { printf '%d.%02d' $(($1 / TCK)) $(($1 % TCK * 100 / TCK)); }

# node_ip I (0-based) sets IP: 10.77.1.1, 10.77.1.2, ... 250 a /24, skipping
# .0/.255 (no subshell: a fork costs 30-150 ms inside UML)
IP=""
node_ip() { IP="10.77.$((1 + $1 / 250)).$((1 + $1 % 250))"; }

# write_conf NAME: NAME.conf (strongswan.conf) for one charon and its swanctl.
write_conf() {
	local name=$1
	cat >"$D/$name.conf" <<EOF
# strongswan.conf for the $name charon (bench/strongswan.sh)
charon {
	# only what PSK + x25519 + AES-GCM (openssl), KDF_PRF (kdf), XFRM
	# (kernel-netlink), UDP (socket-default) and swanctl (vici) need
	load_modular = no
	load = random nonce openssl kdf kernel-netlink socket-default vici
	# no cookies, no per-IP half-open blocking: N peers start at once
	dos_protection = no
	# the IKE_SA table is one bucket by default: a list scan per message
	ikesa_table_size = 4096
	ikesa_table_segments = 16
	# delete the replaced inbound SA 1 s after a rekey (default 5 s), like
	# rotor's grace 1s in scripts/bench.sh; the same work, done sooner
	delete_rekeyed_delay = 1
	# first retransmission of an IKE request after this many seconds (then
	# x1.8 each time, 5 retries: strongSwan's defaults but the timeout)
	retransmit_timeout = $RT
	# transport mode between hosts on one link: no routes, no virtual IPs
	install_routes = no
	install_virtual_ip = no
	plugins {
		vici {
			socket = unix://$D/$name.vici
		}
	}
	filelog {
		$name {
			path = $D/$name.log
			default = $LOG_LEVEL
			time_format = %H:%M:%S
			ike_name = yes
			append = no
		}
	}
	syslog {
		daemon {
			default = -1
		}
	}
}
swanctl {
	load = random nonce openssl
}
EOF
}

# swanctl_ NAME ARGS...: swanctl against NAME's charon, at most SWANCTL_TIMEOUT s
SWANCTL_TIMEOUT=60
swanctl_() {
	local name=$1
	shift
	STRONGSWAN_CONF=$D/$name.conf timeout "$SWANCTL_TIMEOUT" swanctl "$@" --uri "unix://$D/$name.vici"
}

# start_charon NAME NS: charon in NS's network namespace and in a mount
# namespace of its own whose /run is $D/NAME-run (its pid file is /run/charon.pid).
start_charon() {
	local name=$1 ns=$2 i
	mkdir -p "$D/$name-run"
	# shellcheck disable=SC2016 # $1, $2 expand in the inner sh
	STRONGSWAN_CONF=$D/$name.conf nsenter --net="/run/netns/$ns" \
		unshare --mount --propagation private \
		sh -c 'mount --bind "$1" /run && exec "$2"' "charon-$name" "$D/$name-run" "$CHARON" \
		</dev/null >"$D/$name.out" 2>&1 &
	PID[$name]=$!
	for ((i = 0; i < 200; i++)); do
		[ -S "$D/$name.vici" ] && return 0
		kill -0 "${PID[$name]}" 2>/dev/null || setup_fail "the $name charon exited at start"
		sleep 0.1
	done
	setup_fail "the $name charon's vici socket $D/$name.vici did not appear in 20 s"
}

# hub_sas: "NEW_IN NEW_OUT OLD_IN OLD_OUT TOTAL" for the hub's ESP SAs, old
# meaning listed in $D/old-sas ("in SPI" / "out SPI"); out = src is the hub.
hub_sas() {
	ip -n hub xfrm state | awk -v hub="$HUB_IP" -v oldf="$D/old-sas" '
		BEGIN { while ((getline l < oldf) > 0) old[l] = 1 }
		/^src / { dir = ($2 == hub) ? "out" : "in" }
		$1 == "proto" && $3 == "spi" {
			k = dir " " $4
			if (k in old) c["old" dir]++; else c["new" dir]++
			total++
		}
		END { printf "%d %d %d %d %d\n", c["newin"], c["newout"], c["oldin"], c["oldout"], total }'
}
# Following SAs without polling: every process start costs ~0.25 s of the one
# CPU inside UML (ip xfrm state count included), so instead one
# `ip xfrm monitor nokeys SA` per namespace and phase feeds an awk that keeps
# the set of SAs and writes "new" to $D/mon-NS.out once every node has a new
# inbound and outbound SA and no old outbound one is left, then "all" once no
# old SA is left at all (old: listed in OLDF as "in SPI" / "out SPI"; in/out
# from the hub's side: out = source is the hub; charon installs inbound SAs
# as updates of the SPI it allocated). A probe SA from 127.0.0.1,
# added and deleted once the monitor runs, proves it is listening ("ready").
# shellcheck disable=SC2016 # awk program
MON_AWK='
BEGIN {
	while ((getline l < oldf) > 0) { old[l] = 1; split(l, a, " "); o[a[1]]++ }
}
function check() {
	if (!s1 && n["in"] >= want && n["out"] >= want && o["out"] == 0) { print "new"; s1 = 1; fflush() }
	if (s1 && !s2 && o["in"] == 0) { print "all"; s2 = 1; fflush() }
}
/^Deleted src / { del = 1; probe = ($3 == "127.0.0.1"); dir = ($3 == hub) ? "out" : "in"; next }
/^Updated src / { del = 0; probe = ($3 == "127.0.0.1"); dir = ($3 == hub) ? "out" : "in"; next }
/^src / { del = 0; probe = ($2 == "127.0.0.1"); dir = ($2 == hub) ? "out" : "in"; next }
$1 == "proto" && $3 == "spi" {
	if (probe) { if (!ready) { print "ready"; ready = 1; fflush() } next }
	k = dir " " $4
	if (del) {
		if (k in old) { delete old[k]; o[dir]-- }
		else if (k in cur) { delete cur[k]; n[dir]-- }
	} else if (!(k in old) && !(k in cur)) { cur[k] = 1; n[dir]++ }
	check()
}
END { check() }'
declare -A MON=()
# mawk (Debian's awk) reads a pipe in big blocks: -W interactive makes it read
# line by line, as this streaming use needs
STREAM_AWK=(awk)
awk -W version 2>&1 | grep -q mawk && STREAM_AWK=(awk -W interactive)
# mon_start NS WANT [OLDF]: start following NS; "ready" must show within 10 s
mon_start() {
	local ns=$1 want=$2 oldf=${3:-/dev/null} i try out=$D/mon-$1.out lines=()
	: >"$out"
	# iproute2 asks for a 1 MiB socket buffer; a round of 1000 rekeys is
	# ~4000 events, which a starved monitor may not read in time (ENOBUFS)
	ip -rcvbuf 33554432 -n "$ns" xfrm monitor nokeys SA 2>"$D/mon-$ns.err" \
		> >("${STREAM_AWK[@]}" -v hub="$HUB_IP" -v want="$want" -v oldf="$oldf" "$MON_AWK" >"$out") &
	MON[$ns]=$!
	sleep 0.3 # ip takes ~0.25 s to start in UML
	for ((try = 0; try < 10; try++)); do
		printf '%s\n' "xfrm state add src 127.0.0.1 dst 127.0.0.2 proto esp spi 0x7f000001 mode transport aead rfc4106(gcm(aes)) 0x0a0b0c0d0e0f101112131415161718191a1b1c1d 128" \
			"xfrm state delete src 127.0.0.1 dst 127.0.0.2 proto esp spi 0x7f000001" |
			ip -n "$ns" -batch - 2>/dev/null
		for ((i = 0; i < 10; i++)); do
			mapfile -t lines <"$out"
			[ "${lines[0]:-}" = ready ] && return 0
			sleep 0.1
		done
		kill -0 "${MON[$ns]}" 2>/dev/null || setup_fail "ip xfrm monitor in $ns exited"
	done
	setup_fail "ip xfrm monitor in $ns did not see a probe SA within 10 s"
}
# mon_has NS WORD: the monitor of NS has written WORD (no process started)
mon_has() {
	local lines=() l
	mapfile -t lines <"$D/mon-$1.out"
	for l in "${lines[@]}"; do [ "$l" = "$2" ] && return 0; done
	return 1
}
# shellcheck disable=SC2317 # also called by the EXIT trap
mon_stop() {
	local ns
	for ns in "${!MON[@]}"; do
		kill "${MON[$ns]}" 2>/dev/null
		wait "${MON[$ns]}" 2>/dev/null
		unset "MON[$ns]"
	done
}

# list_sas: IKE_SAS and CHILD_SAS the hub charon lists as ESTABLISHED / INSTALLED
IKE_SAS=0 CHILD_SAS=0
list_sas() {
	read -r IKE_SAS CHILD_SAS < <(swanctl_ hub --list-sas 2>/dev/null | awk '
		/, ESTABLISHED, IKEv2/ { i++ }
		/, INSTALLED, TRANSPORT/ { c++ }
		END { print i + 0, c + 0 }')
}
sa_count() { ip -n "$1" xfrm state count | awk '{ print $NF }'; }

# rate REKEYS TICKS: rekeys per CPU-second, one decimal (null without CPU)
rate() { awk -v r="$1" -v t="$2" -v hz="$TCK" 'BEGIN { if (t > 0) printf "%.1f", r * hz / t; else print "null" }'; }

# rekey_round: one `swanctl --rekey --child node` on the hub, then poll the
# hub's kernel until every node has a new SA pair and no old SA is left (the
# old inbound ones go delete_rekeyed_delay after each rekey). Sets R_REKEYS
# (new pairs), R_WALL_US (until the new pairs are in and the old outbound SAs
# gone), R_DONE_US (until the old inbound SAs are gone too), R_TICKS (hub CPU
# over R_DONE_US), R_NODE_TICKS, R_CLIENT_MS (swanctl's CPU), R_OK.
R_REKEYS=0 R_WALL_US=0 R_DONE_US=0 R_TICKS=0 R_NODE_TICKS=0 R_CLIENT_MS=0 R_OK=0 R_BY=
rekey_round() {
	R_BY=timeout
	local c1 n1 t1 cu cs deadline t_done=0 new_in=0 new_out=0 old_in=0 old_out=0 total=0
	ip -n hub xfrm state | awk -v hub="$HUB_IP" '
		/^src / { dir = ($2 == hub) ? "out" : "in" }
		$1 == "proto" && $3 == "spi" { print dir, $4 }' >"$D/old-sas"
	mon_start hub "$up" "$D/old-sas"
	sleep 0.2
	cpu_of "${PID[hub]}" || setup_fail "the hub charon is gone"
	c1=$CPU_TICKS
	cpu_of "${PID[nodes]}" || setup_fail "the node charon is gone"
	n1=$CPU_TICKS
	now
	t1=$T_US
	local TIMEFORMAT='%3U %3S'
	local rc
	SWANCTL_TIMEOUT=$((60 + N / 50))
	{ time swanctl_ hub --rekey --child node >"$D/rekey.out" 2>&1; } 2>"$D/rekey.time"
	rc=$?
	SWANCTL_TIMEOUT=60
	R_CLIENT_MS=0
	read -r cu cs <"$D/rekey.time" && R_CLIENT_MS=$((10#${cu/./} + 10#${cs/./}))
	grep -q 'successfully' "$D/rekey.out" ||
		err "N=$N: swanctl --rekey (exit $rc, 124: timed out after $((60 + N / 50)) s) said: $(tr '\n' ' ' <"$D/rekey.out")"
	deadline=$((t1 + (20 + N / 20) * 1000000))
	local next_check=$((t1 + 5000000))
	while :; do
		now
		if [ "$t_done" = 0 ] && mon_has hub new; then t_done=$T_US; fi
		[ "$t_done" != 0 ] && mon_has hub all && { R_BY=monitor; break; }
		if [ "$T_US" -ge "$next_check" ]; then # in case the monitor missed something
			read -r new_in new_out old_in old_out total < <(hub_sas)
			now
			next_check=$((T_US + 5000000))
			if [ "$new_in" -ge "$up" ] && [ "$new_out" -ge "$up" ] && [ "$old_out" = 0 ]; then
				[ "$t_done" = 0 ] && t_done=$T_US
				[ "$old_in" = 0 ] && { R_BY="5 s dump$([ -s "$D/mon-hub.err" ] && echo ", monitor: $(tail -n 1 "$D/mon-hub.err")")"; break; }
			fi
		fi
		kill -0 "${PID[hub]}" 2>/dev/null || setup_fail "the hub charon died during the rekeys"
		[ "$T_US" -lt "$deadline" ] || break
		sleep 0.05
	done
	cpu_of "${PID[hub]}" || setup_fail "the hub charon is gone"
	R_TICKS=$((CPU_TICKS - c1))
	R_DONE_US=$((T_US - t1))
	cpu_of "${PID[nodes]}" || setup_fail "the node charon is gone"
	R_NODE_TICKS=$((CPU_TICKS - n1))
	[ "$t_done" = 0 ] && t_done=$T_US
	R_WALL_US=$((t_done - t1))
	mon_stop
	read -r new_in new_out old_in old_out total < <(hub_sas)
	R_REKEYS=$new_in
	[ "$new_out" -lt "$R_REKEYS" ] && R_REKEYS=$new_out
	R_OK=1
	if [ "$R_REKEYS" -lt "$up" ] || [ "$old_in" != 0 ] || [ "$old_out" != 0 ]; then
		R_OK=0
		err "N=$N: rekey round incomplete after $(secs "$R_DONE_US") s: the hub's kernel has $new_in new inbound and $new_out new outbound SAs for $up nodes, $old_in old inbound and $old_out old outbound left ($total SAs)"
	fi
	[ "$R_OK" = 1 ]
}

# --- one N --------------------------------------------------------------------
run_one() {
	N=$1
	D=$WORK/n$N
	RUN_T0=${EPOCHREALTIME/./}
	RT=${RETRANSMIT:-4}
	[ -z "$RETRANSMIT" ] && [ "$N" -gt 2000 ] && RT=60
	mkdir -p "$D"
	local i ip up=0 hub_n node_n deadline ike_sas child_sas

	# namespaces, veth, addresses (one ip -batch per namespace)
	ip netns add hub || setup_fail "cannot create namespace hub"
	ip netns add nodes || setup_fail "cannot create namespace nodes"
	ip link add veth0 netns hub type veth peer name veth0 netns nodes || setup_fail "cannot create the veth pair"
	printf 'link set lo up\nlink set veth0 up\naddr add %s/16 dev veth0\n' "$HUB_IP" |
		ip -n hub -batch - || setup_fail "ip -batch in hub failed"
	{
		printf 'link set lo up\nlink set veth0 up\n'
		for ((i = 0; i < N; i++)); do
			node_ip "$i"
			printf 'addr add %s/16 dev veth0\n' "$IP"
		done
	} | ip -n nodes -batch - || setup_fail "ip -batch of $N addresses in nodes failed"

	# configuration
	write_conf hub
	write_conf nodes
	cat >"$D/hub-swanctl.conf" <<EOF
connections {
	hub {
		version = 2
		local_addrs = $HUB_IP
		remote_addrs = 10.77.0.0/16
		proposals = $IKE_PROPOSAL
		local {
			auth = psk
			id = $HUB_IP
		}
		remote {
			auth = psk
		}
		children {
			node {
				mode = transport
				esp_proposals = $ESP_PROPOSAL
			}
		}
	}
}
secrets {
	ike-all {
		secret = $PSK
	}
}
EOF
	{
		echo "connections {"
		for ((i = 0; i < N; i++)); do
			node_ip "$i"
			ip=$IP
			printf '\tn%d {\n\t\tversion = 2\n\t\tlocal_addrs = %s\n\t\tremote_addrs = %s\n' "$i" "$ip" "$HUB_IP"
			printf '\t\tproposals = %s\n\t\tlocal {\n\t\t\tauth = psk\n\t\t\tid = %s\n\t\t}\n' "$IKE_PROPOSAL" "$ip"
			printf '\t\tremote {\n\t\t\tauth = psk\n\t\t\tid = %s\n\t\t}\n' "$HUB_IP"
			printf '\t\tchildren {\n\t\t\tc {\n\t\t\t\tmode = transport\n\t\t\t\tesp_proposals = %s\n' "$ESP_PROPOSAL"
			printf '\t\t\t\tstart_action = start\n\t\t\t}\n\t\t}\n\t}\n'
		done
		printf '}\nsecrets {\n\tike-hub {\n\t\tsecret = %s\n\t}\n}\n' "$PSK"
	} >"$D/nodes-swanctl.conf"

	note "namespaces, $N addresses and configuration written"
	# the hub: up and configured, then idle
	start_charon hub hub
	swanctl_ hub --load-all --noprompt --file "$D/hub-swanctl.conf" >"$D/hub-load.out" 2>&1 ||
		setup_fail "swanctl --load-all on the hub failed: $(tail -n 3 "$D/hub-load.out")"
	start_charon nodes nodes

	note "both charons running, hub configured"
	# (a) N IKE_SAs + CHILD_SAs: loading the node connections starts them all
	mon_start hub "$N"
	mon_start nodes "$N"
	sleep 0.3
	cpu_of "${PID[hub]}" || setup_fail "the hub charon is gone"
	local c0=$CPU_TICKS
	now
	local t0=$T_US
	# charon initiates while swanctl still loads, and both charons share one
	# CPU: loading 10000 took > 560 s on a loaded host
	SWANCTL_TIMEOUT=$((60 + N / 4))
	swanctl_ nodes --load-all --noprompt --file "$D/nodes-swanctl.conf" >"$D/nodes-load.out" 2>&1 ||
		setup_fail "swanctl --load-all on the nodes failed (exit $?, 124: timed out after $SWANCTL_TIMEOUT s) after $(grep -c '^loaded connection' "$D/nodes-load.out") of $N connections: $(tail -n 1 "$D/nodes-load.out")"
	SWANCTL_TIMEOUT=60
	now
	deadline=$((T_US + (30 + N / 10) * 1000000))
	local next_check=$((T_US + 5000000))
	while :; do
		now
		mon_has hub new && mon_has nodes new && break
		if [ "$T_US" -ge "$next_check" ]; then # in case a monitor missed something
			hub_n=$(sa_count hub)
			node_n=$(sa_count nodes)
			now
			next_check=$((T_US + 5000000))
			[ "$hub_n" -ge $((2 * N)) ] && [ "$node_n" -ge $((2 * N)) ] && break
		fi
		kill -0 "${PID[hub]}" 2>/dev/null || setup_fail "the hub charon died while the IKE_SAs came up"
		[ "$T_US" -lt "$deadline" ] || break
		sleep 0.05
	done
	cpu_of "${PID[hub]}" || setup_fail "the hub charon is gone"
	local up_us=$((T_US - t0)) up_ticks=$((CPU_TICKS - c0))
	mon_stop
	hub_n=$(sa_count hub)
	node_n=$(sa_count nodes)
	list_sas
	ike_sas=$IKE_SAS child_sas=$CHILD_SAS
	up=$((hub_n / 2))
	[ "$child_sas" -lt "$up" ] && up=$child_sas
	if [ "$up" -lt "$N" ]; then
		err "N=$N: only $up of $N came up in $(secs "$up_us") s (hub: $ike_sas IKE_SAs, $child_sas CHILD_SAs, $hub_n ESP SAs; nodes: $node_n ESP SAs)"
	fi

	note "$up of $N IKE_SAs + CHILD_SAs up"
	[ "$up" -gt 0 ] || setup_fail "no IKE_SA + CHILD_SA came up"

	# (b) the hub rekeys every CHILD_SA once, per round: one warm-up round,
	# then ROUNDS measured ones
	local r ok=1 tot_rekeys=0 tot_wall=0 tot_done=0 tot_ticks=0 tot_node=0 tot_client=0 rates=""
	for ((r = 0; r <= ROUNDS; r++)); do
		rekey_round || ok=0
		if [ "$r" -gt 0 ]; then
			tot_rekeys=$((tot_rekeys + R_REKEYS)) tot_wall=$((tot_wall + R_WALL_US))
			tot_done=$((tot_done + R_DONE_US)) tot_ticks=$((tot_ticks + R_TICKS))
			tot_node=$((tot_node + R_NODE_TICKS)) tot_client=$((tot_client + R_CLIENT_MS))
			rates+="${rates:+,}$(rate "$R_REKEYS" "$R_TICKS")"
		fi
		note "round $r$([ "$r" = 0 ] && echo " (warm-up)"): $R_REKEYS of $up rekeyed in $(secs "$R_WALL_US") s (old SAs gone after $(secs "$R_DONE_US") s, seen by $R_BY), hub CPU $(ticks "$R_TICKS") s"
		[ "$R_OK" = 1 ] || break
		sleep 0.3
	done
	list_sas
	child_sas=$CHILD_SAS
	local complete=true
	if [ "$ok" = 0 ] || [ "$up" -lt "$N" ] || [ "$tot_rekeys" -lt $((ROUNDS * N)) ] || [ "$child_sas" -lt "$N" ]; then
		complete=false
		err "N=$N: incomplete: $up of $N up; $tot_rekeys of $((ROUNDS * N)) rekeys in $ROUNDS measured rounds; the hub lists $child_sas CHILD_SAs at the end"
	fi

	local ratev best
	ratev=$(rate "$tot_rekeys" "$tot_ticks")
	best=$(tr , '\n' <<<"${rates:-null}" | sort -g | tail -n 1)
	if [ "$JSON" = 1 ]; then
		printf 'SWAN-RESULT {"n":%d,"complete":%s,"ike_up":%d,"ike_up_s":%s,"ike_up_hub_cpu_s":%s,"rounds":%d,"rekeys":%d,"rekey_wall_s":%s,"rekey_done_s":%s,"rekey_hub_cpu_s":%s,"strongswan_rekeys_per_hub_cpu_s":%s,"round_rekeys_per_hub_cpu_s":[%s],"best_round_rekeys_per_hub_cpu_s":%s,"rekey_client_cpu_s":%s,"rekey_node_cpu_s":%s,"log_level":%d,"retransmit_timeout_s":%d,"esp_proposal":"%s","version":"%s"}\n' \
			"$N" "$complete" "$up" "$(secs "$up_us")" "$(ticks "$up_ticks")" "$ROUNDS" "$tot_rekeys" \
			"$(secs "$tot_wall")" "$(secs "$tot_done")" "$(ticks "$tot_ticks")" "$ratev" "$rates" "$best" \
			"$(secs $((tot_client * 1000)))" "$(ticks "$tot_node")" "$LOG_LEVEL" "$RT" "$ESP_PROPOSAL" "$VERSION"
	else
		printf 'SWAN-RESULT %6s %8s %6s %8s %10s %7s %8s %8s %9s %12s %-24s %10s %9s\n' \
			"$N" "$complete" "$up" "$(secs "$up_us")" "$(ticks "$up_ticks")" "$tot_rekeys" \
			"$(secs "$tot_wall")" "$(secs "$tot_done")" "$(ticks "$tot_ticks")" "$ratev" "$rates" \
			"$(secs $((tot_client * 1000)))" "$(ticks "$tot_node")"
	fi

	if [ "$complete" = true ]; then
		stop_charons
	else
		show_logs
	fi
	ip netns del hub
	ip netns del nodes
	note "charons stopped, namespaces deleted"
	[ "$complete" = true ]
}

if [ "$JSON" = 0 ]; then
	echo "SWAN-RESULT strongSwan $VERSION, ESP $ESP_PROPOSAL, charon log level $LOG_LEVEL, retransmit_timeout ${RETRANSMIT:-4 (60 for N > 2000)} s, $ROUNDS measured rounds (+1 warm-up) of N rekeys each, kernel $(uname -r), $(nproc) CPU"
	printf 'SWAN-RESULT %6s %8s %6s %8s %10s %7s %8s %8s %9s %12s %-24s %10s %9s\n' \
		N complete ike_up up_s up_hub_cpu rekeys rekey_s done_s hub_cpu_s rekeys/cpu_s per_round client_cpu node_cpu
fi
status=0
for n in "${ARGS[@]}"; do
	run_one "$n" || status=1
done
exit $status
