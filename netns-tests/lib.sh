# shellcheck shell=bash
# Shared helpers for the real-kernel tests in netns-tests/, which run as root
# inside User-Mode Linux (scripts/uml-run.sh TEST). Source it first:
#
#   . "$(dirname "$0")/lib.sh"
#
# Results (every check prints one PASS:/FAIL: line; nothing exits early but die):
#   pass MSG                    count and print a pass
#   fail MSG                    count and print a failure (the test goes on)
#   die MSG                     print a failure and exit 1 now (setup broke)
#   check DESC CMD [ARGS...]    pass if CMD succeeds, fail otherwise
#   assert_eq DESC WANT GOT     pass if the strings are equal
#   assert_ge DESC MIN GOT      pass if GOT is an integer >= MIN
#   assert_range DESC LO HI GOT pass if GOT is an integer, LO <= GOT <= HI
#   finish [NAME]               print "NAME: P passed, F failed in Ts"; exit 1
#                               if F > 0
#
# Namespaces (all deleted at exit, see on_exit):
#   ns_add NS...                create namespaces with lo up
#   veth_link NS_A NS_B [DEV]   a veth pair named DEV (default veth0) in both, up
#   addr_add NS DEV CIDR        add an address (IPv6 without duplicate detection)
#   in_ns NS CMD...             run CMD in NS's network namespace (nsenter: cheaper
#                               than `ip netns exec`, but /sys is not remounted)
#   ip_batch NS                 run the `ip` commands on stdin in NS, one process
#
# Every process costs 30-150 ms inside UML (python3 starts in ~0.5 s): batch
# with ip_batch, read whole tables once (sa_table), prefer ip -n / in_ns.
#
# XFRM, read from the kernel (ip -s xfrm state, /proc/net/xfrm_stat):
#   sa_table NS                 one line per SA: SPI(0x%08x) SRC DST PACKETS BYTES
#   sa_packets NS SPI [DST]     packets counted on the SA with that SPI
#                               (0x-hex or decimal), optionally with that
#                               destination; prints nothing, status 1 if absent
#   sa_bytes NS SPI [DST]       the same for bytes
#   xfrm_count NS state|policy  how many states / policies NS holds
#   xfrm_stat NS COUNTER        one counter of NS's /proc/net/xfrm_stat
#   xfrm_stat_check NS [COUNTER...]
#                               status 0 if the counters (default: all) are 0
#                               in NS; prints the nonzero ones otherwise
#
# Misc:
#   q CMD...                    run quietly, keep the exit status
#   wait_for SECS CMD...        retry CMD every 0.1 s until it succeeds (0) or
#                               SECS pass (1)
#   on_exit CMD                 run the shell command string CMD at exit
#                               (last registered first), before namespaces go
#
# lib.sh sets an EXIT trap; a test that needs its own should call lib_cleanup
# from it. Variables: PASSES, FAILS (counts).

LIB_T0=${EPOCHREALTIME/./}
PASSES=${PASSES:-0}
FAILS=${FAILS:-0}
LIB_NETNS=()
LIB_ON_EXIT=()

pass() { echo "PASS: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
die() { echo "FAIL: $* (giving up)"; FAILS=$((FAILS + 1)); exit 1; }

check() {
	local what=$1
	shift
	if "$@"; then pass "$what"; else fail "$what"; fi
}

assert_eq() {
	if [ "$2" = "$3" ]; then pass "$1 ($3)"; else fail "$1: want '$2', got '$3'"; fi
}

lib_is_int() { [[ $1 =~ ^-?[0-9]+$ ]]; }

assert_ge() {
	if lib_is_int "$3" && [ "$3" -ge "$2" ]; then pass "$1 ($3 >= $2)"; else fail "$1: want >= $2, got '$3'"; fi
}

assert_range() {
	if lib_is_int "$4" && [ "$4" -ge "$2" ] && [ "$4" -le "$3" ]; then
		pass "$1 ($4 in $2..$3)"
	else
		fail "$1: want $2..$3, got '$4'"
	fi
}

# microseconds since lib.sh was sourced, as seconds with one decimal
lib_elapsed() {
	local us=$((${EPOCHREALTIME/./} - LIB_T0))
	printf '%d.%ds' $((us / 1000000)) $((us % 1000000 / 100000))
}

finish() {
	local name=${1:-$(basename "$0" .sh)}
	echo "$name: $PASSES passed, $FAILS failed in $(lib_elapsed)"
	[ "$FAILS" -eq 0 ] || exit 1
	exit 0
}

q() { "$@" >/dev/null 2>&1; }

wait_for() {
	local deadline=$(($(date +%s%N) + $1 * 1000000000))
	shift
	until "$@"; do
		[ "$(date +%s%N)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

on_exit() { LIB_ON_EXIT+=("$1"); }

lib_cleanup() {
	local i ns
	for ((i = ${#LIB_ON_EXIT[@]} - 1; i >= 0; i--)); do
		eval "${LIB_ON_EXIT[i]}" || true
	done
	LIB_ON_EXIT=()
	for ns in "${LIB_NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
	LIB_NETNS=()
}
trap lib_cleanup EXIT

ns_add() {
	local ns
	for ns in "$@"; do
		ip netns add "$ns" || return 1
		LIB_NETNS+=("$ns")
		ip -n "$ns" link set lo up || return 1
	done
}

veth_link() {
	local a=$1 b=$2 dev=${3:-veth0}
	ip link add "$dev" netns "$a" type veth peer name "$dev" netns "$b" || return 1
	ip -n "$a" link set "$dev" up && ip -n "$b" link set "$dev" up
}

in_ns() {
	local ns=$1
	shift
	nsenter --net="/run/netns/$ns" "$@"
}

ip_batch() { ip -n "$1" -batch -; }

addr_add() {
	case $3 in
	*:*) ip -n "$1" addr add "$3" dev "$2" nodad ;;
	*) ip -n "$1" addr add "$3" dev "$2" ;;
	esac
}

# sa_table NS, from the blocks of `ip -s xfrm state`:
#   src 10.9.0.1 dst 10.9.0.2
#   	proto esp spi 0x00001001(4097) reqid 0(0x00000000) mode transport
#   	...
#   	lifetime current:
#   	  192(bytes), 3(packets)
sa_table() {
	ip -n "$1" -s xfrm state | awk '
		/^src / { src = $2; dst = $4; cur = 0 }
		$1 == "proto" && $3 == "spi" { spi = $4; sub(/\(.*/, "", spi) }
		/lifetime current:/ { cur = 1; next }
		cur {
			cur = 0; b = $1; p = $2
			gsub(/[^0-9]/, "", b); gsub(/[^0-9]/, "", p)
			print spi, src, dst, p, b
		}'
}
# lib_sa_counter NS SPI DST COLUMN (4 packets, 5 bytes)
lib_sa_counter() {
	local spi v
	spi=$(printf '0x%08x' "$2") || return 1
	v=$(sa_table "$1" | awk -v spi="$spi" -v dst="$3" -v col="$4" \
		'$1 == spi && (dst == "" || $3 == dst) { print $col; exit }')
	[ -n "$v" ] || return 1
	echo "$v"
}
sa_packets() { lib_sa_counter "$1" "$2" "${3:-}" 4; }
sa_bytes() { lib_sa_counter "$1" "$2" "${3:-}" 5; }

xfrm_count() {
	case $2 in
	state) ip -n "$1" xfrm state count | awk '{ print $NF }' ;; # "SAD count N"
	policy) ip -n "$1" xfrm policy list | grep -c '^src' ;;
	*) echo "xfrm_count: state or policy, not '$2'" >&2; return 2 ;;
	esac
}

# shellcheck disable=SC2016 # awk programs
xfrm_stat() {
	in_ns "$1" awk -v c="$2" '$1 == c { print $2; found = 1 } END { exit !found }' /proc/net/xfrm_stat
}

# shellcheck disable=SC2016 # awk programs
xfrm_stat_check() {
	local ns=$1 bad
	shift
	bad=$(in_ns "$ns" awk -v want=" $* " '
		(want == "  " || index(want, " " $1 " ")) && $2 != 0 { printf "%s%s=%s", sep, $1, $2; sep = " " }
	' /proc/net/xfrm_stat) || return 1
	if [ -n "$bad" ]; then
		echo "  xfrm_stat in $ns: $bad"
		return 1
	fi
}
