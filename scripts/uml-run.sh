#!/bin/bash
# Runs a test script as root inside User-Mode Linux: a real Linux kernel with
# ESP, xfrm_user, veth, netem, bridge and iptables, booted as an ordinary
# process in a few seconds, with the host's / mounted read-only as its root.
#
#   scripts/uml-run.sh [--timeout SECS] [--mem SIZE] [--boot-timeout SECS]
#                      TEST_SCRIPT [ARGS...]
#
#   --timeout SECS       the test's time limit inside UML (default 600)
#   --mem SIZE           UML's memory, e.g. 512M, 2G (default 1G)
#   --boot-timeout SECS  give up if the test has not started by then (default 60)
#
# TEST_SCRIPT runs as root with ARGS, in the caller's working directory, with
# the caller's ROTOR_* variables (and RUST_LOG, RUST_BACKTRACE, CI, NO_COLOR).
# It is executed directly if executable, with bash otherwise; stdin is
# /dev/null. Inside: /tmp is the host's /tmp (writable, shared), /run, /dev/shm
# and /var/tmp are fresh tmpfs, everything else is the host's, read-only; the
# modules in MODULES below (ESP, XFRM netlink, AES-GCM, veth, netem, iptables
# matches, ipset, bridge) are loaded and lo is up. The in-UML side of the rig
# is scripts/uml-init.sh.
#
# Its stdout+stderr stream to our stdout as they come; our exit status is its
# exit status (124: it hit --timeout). Exit 2: bad usage; exit 3: the rig
# failed (UML did not boot, a module did not load, ...), with the reason and
# the tail of UML's console on stderr. One summary line goes to stderr:
#   uml-run: boot 3.6s (kernel 1.9s, modules 1.7s), test 12.1s, shutdown 0.3s, exit 0
#
# Never hangs: the test runs under `timeout` inside; from outside, UML's whole
# process group is killed when the test has not started after --boot-timeout,
# at boot-timeout + timeout + 30 s, and when we exit for any reason (a
# detached reaper covers even our being SIGKILLed). Installs user-mode-linux,
# iproute2, iptables, ipset, kmod when missing (as root). Parallel runs are fine:
# each has its own directory.
set -u

PROG=uml-run
TIMEOUT=600
MEM=1G
BOOT_TIMEOUT=60
MODULES="sha512_generic cryptomgr xfrm_user esp4 esp6 veth gcm ghash-generic ctr
seqiv echainiv authenc hmac cbc drbg jitterentropy_rng sch_netem ip_tables
iptable_filter ip6_tables ip6table_filter xt_tcpudp xt_multiport xt_statistic
xt_u32 xt_quota bridge sch_prio cls_u32 xt_policy xt_set ip_set ip_set_hash_netnet"
MODULES=$(tr -s '\n' ' ' <<<"$MODULES")

usage() {
	echo "usage: scripts/uml-run.sh [--timeout SECS] [--mem SIZE] [--boot-timeout SECS] TEST_SCRIPT [ARGS...]" >&2
	exit 2
}
die() { echo "$PROG: $*" >&2; exit 3; }
is_uint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_size() { [[ $1 =~ ^[1-9][0-9]*[KMG]?$ ]]; }

while [ $# -gt 0 ]; do
	case $1 in
	--timeout) is_uint "${2:-}" || usage; TIMEOUT=$2; shift 2 ;;
	--timeout=*) TIMEOUT=${1#*=}; is_uint "$TIMEOUT" || usage; shift ;;
	--mem) is_size "${2:-}" || usage; MEM=$2; shift 2 ;;
	--mem=*) MEM=${1#*=}; is_size "$MEM" || usage; shift ;;
	--boot-timeout) is_uint "${2:-}" || usage; BOOT_TIMEOUT=$2; shift 2 ;;
	--boot-timeout=*) BOOT_TIMEOUT=${1#*=}; is_uint "$BOOT_TIMEOUT" || usage; shift ;;
	-h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	--) shift; break ;;
	-*) echo "$PROG: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || usage
[ -f "$1" ] || { echo "$PROG: no such test script: $1" >&2; exit 2; }
SCRIPT=$(realpath "$1")
shift
WORKDIR=$(pwd -P)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
for p in "$SCRIPT" "$WORKDIR"; do
	case $p/ in /run/* | /proc/* | /sys/* | /dev/*)
		die "$p is hidden inside UML (fresh /run, /proc, /sys, /dev there); use a path elsewhere" ;;
	esac
done

# --- host packages ------------------------------------------------------------
install_missing() {
	local pkgs=()
	command -v linux.uml >/dev/null || pkgs+=(user-mode-linux)
	command -v ip >/dev/null || pkgs+=(iproute2)
	command -v iptables-legacy >/dev/null || pkgs+=(iptables)
	command -v ipset >/dev/null || pkgs+=(ipset)
	command -v modprobe >/dev/null || pkgs+=(kmod)
	[ ${#pkgs[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing ${pkgs[*]}: run as root, or: sudo apt-get install ${pkgs[*]}"
	command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them"
	echo "$PROG: installing ${pkgs[*]}" >&2
	apt-get update -qq >&2 || die "apt-get update failed"
	# The full set: cheap when present, and iptables brings iptables-legacy.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq user-mode-linux iproute2 iptables ipset kmod >&2 ||
		die "apt-get install user-mode-linux iproute2 iptables ipset kmod failed"
	command -v linux.uml >/dev/null || die "linux.uml still missing after installing user-mode-linux"
}
install_missing

# The module tree matching the kernel (linux.uml --version prints e.g. 6.1.176).
KVER=$(linux.uml --version 2>/dev/null </dev/null | head -n1)
if [ -z "$KVER" ] || [ ! -d "/usr/lib/uml/modules/$KVER" ]; then
	# shellcheck disable=SC2012 # plain version directory names
	KVER=$(ls /usr/lib/uml/modules 2>/dev/null | sort -V | tail -n1)
fi
if [ -z "$KVER" ] || [ ! -f "/usr/lib/uml/modules/$KVER/modules.dep" ]; then
	die "no UML kernel modules in /usr/lib/uml/modules (package user-mode-linux)"
fi

# --- the FPU state shim ----------------------------------------------------------
# On a CPU whose XSAVE area is larger than UML knows (AVX-512, AMX) UML
# panics at its first process; scripts/uml-xstate.c keeps the whole state
# for it (see there). Built once per source version, used on every host (a
# plain pass-through where UML's buffer is big enough).
XSTATE_SRC=$HERE/uml-xstate.c
XSTATE_SO=/tmp/rotor-uml-xstate-$(sha256sum "$XSTATE_SRC" | cut -c1-16).so
if [ ! -f "$XSTATE_SO" ]; then
	command -v gcc >/dev/null || die "gcc not found (needed to build $XSTATE_SRC): apt-get install gcc"
	tmp_so=$(mktemp /tmp/rotor-uml-xstate.XXXXXX) || die "cannot create a file in /tmp"
	gcc -O2 -Wall -shared -fPIC -o "$tmp_so" "$XSTATE_SRC" -ldl >&2 || { rm -f "$tmp_so"; die "building $XSTATE_SRC failed"; }
	chmod 0755 "$tmp_so" && mv -f "$tmp_so" "$XSTATE_SO" || die "cannot install $XSTATE_SO"
fi

# --- the run directory, shared with UML through host /tmp ---------------------
# Must be under /tmp: inside UML that is the only writable host directory.
RUN=$(mktemp -d /tmp/uml-run.XXXXXX) || die "cannot create a directory in /tmp"
UML_PID=""
TAIL_PID=""
REAPER_PID=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	# linux.uml makes itself a session and process group leader; its helper
	# processes (I/O threads, one traced process per UML address space) share
	# that group, so one group kill ends them all.
	if [ -n "$UML_PID" ]; then
		kill -9 -- "-$UML_PID" 2>/dev/null
		kill -9 "$UML_PID" 2>/dev/null # before it made its own group
	fi
	[ -n "$REAPER_PID" ] && kill -9 -- "-$REAPER_PID" 2>/dev/null
	[ -n "$TAIL_PID" ] && kill "$TAIL_PID" 2>/dev/null
	wait 2>/dev/null # reap them, without "Killed" notices
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'echo "$PROG: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

install -m 0755 "$HERE/uml-init.sh" "$RUN/init" || die "cannot copy $HERE/uml-init.sh"
{
	printf 'KVER=%q\n' "$KVER"
	printf 'MODULES=%q\n' "$MODULES"
	printf 'TIMEOUT=%q\n' "$TIMEOUT"
	printf 'SCRIPT=%q\n' "$SCRIPT"
	printf 'WORKDIR=%q\n' "$WORKDIR"
	printf 'ARGS=('
	[ $# -gt 0 ] && printf '%q ' "$@"
	printf ')\n'
	for v in $(compgen -e); do
		case $v in
		ROTOR_* | RUST_LOG | RUST_BACKTRACE | CI | NO_COLOR)
			printf 'export %s=%q\n' "$v" "${!v}" ;;
		esac
	done
} >"$RUN/params"
: >"$RUN/out"

# UML maps its memory from an unlinked file in $TMPDIR, which must allow
# PROT_EXEC mappings and hold all of --mem once touched (or UML dies of
# SIGBUS). Prefer /dev/shm (tmpfs, no disk writeback) when it is roomy enough.
mem_kib() {
	local n=${MEM%[KMG]}
	case $MEM in *K) echo "$n" ;; *M) echo $((n * 1024)) ;; *G) echo $((n * 1048576)) ;; *) echo $((n / 1024)) ;; esac
}
MEMDIR=$RUN
if grep -qE '^[^ ]+ /dev/shm tmpfs ' /proc/mounts && ! grep -qE '^[^ ]+ /dev/shm [^ ]+ [^ ]*noexec' /proc/mounts; then
	shm_free=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
	[ -n "$shm_free" ] && [ "$shm_free" -gt $(($(mem_kib) + 262144)) ] && MEMDIR=/dev/shm
fi

# A process inside UML has its memory mapped page by page into a host process,
# so the host's vm.max_map_count (default 65530) caps one UML process near
# 256 MiB; beyond, it is killed ("UML ran out of memory on the host side" in
# dmesg). `ip -batch` of 100,000 SAs needs more: raise it when we may.
MAX_MAPS=1048576
maps=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo "$MAX_MAPS")
if [ "$maps" -lt "$MAX_MAPS" ]; then
	if { echo "$MAX_MAPS" >/proc/sys/vm/max_map_count; } 2>/dev/null; then
		echo "$PROG: raised vm.max_map_count from $maps to $MAX_MAPS (processes inside UML may use > 256 MiB)" >&2
	else
		echo "$PROG: note: vm.max_map_count is $maps: one process inside UML can use only ~$((maps / 256)) MiB" >&2
	fi
fi

# --- boot ---------------------------------------------------------------------
# con0 reads /dev/null and writes a log file: no stdin (CI), a closed stdin or
# a terminal cannot disturb it, and the console never mixes with test output.
HARD_LIMIT=$((BOOT_TIMEOUT + TIMEOUT + 30))
t0=$(date +%s.%N)
start=$SECONDS
TMPDIR=$MEMDIR LD_PRELOAD=$XSTATE_SO linux.uml \
	mem="$MEM" uml_dir="$RUN" \
	root=/dev/root rootfstype=hostfs rootflags=/ ro init="$RUN/init" UML_RUN="$RUN" \
	con=null con0=null,fd:1 ssl=null \
	</dev/null >"$RUN/console" 2>&1 &
UML_PID=$!

# A reaper in its own session kills UML's group if we die without running our
# EXIT trap (SIGKILL, or a CI runner killing our process group, which UML, in
# its own session, would survive), and at the hard limit plus a margin.
# shellcheck disable=SC2016 # $1.. expand in the reaper's shell
setsid bash -c 'while kill -0 "$2" && kill -0 "$1" && [ "$SECONDS" -lt "$3" ]; do sleep 1; done
	kill -9 -- "-$2"
	kill -0 "$1" || { sleep 1; rm -rf "$4"; }' \
	uml-run-reaper $$ "$UML_PID" $((HARD_LIMIT + 15)) "$RUN" </dev/null >/dev/null 2>&1 &
REAPER_PID=$!
disown "$REAPER_PID" # no "Killed" notice when we end it

# Stream the test's output as it grows; tail exits by itself soon after UML.
tail -s 0.2 -n +1 -f --pid="$UML_PID" "$RUN/out" 2>/dev/null &
TAIL_PID=$!

why=""
while kill -0 "$UML_PID" 2>/dev/null; do
	elapsed=$((SECONDS - start))
	if [ ! -e "$RUN/booted" ] && [ ! -e "$RUN/fail" ] && [ "$elapsed" -ge "$BOOT_TIMEOUT" ]; then
		why="the test had not started after ${BOOT_TIMEOUT}s (boot hung?); UML killed"
	elif [ "$elapsed" -ge "$HARD_LIMIT" ]; then
		why="still running after ${HARD_LIMIT}s (--timeout $TIMEOUT did not end it); UML killed"
	fi
	if [ -n "$why" ]; then
		kill -9 -- "-$UML_PID" 2>/dev/null
		kill -9 "$UML_PID" 2>/dev/null
		break
	fi
	sleep 0.2
done
{ wait "$UML_PID"; } 2>/dev/null
uml_rc=$?
kill -9 -- "-$UML_PID" 2>/dev/null # any helper left behind
UML_PID=""
t_end=$(date +%s.%N)
kill -9 -- "-$REAPER_PID" 2>/dev/null
REAPER_PID=""
wait "$TAIL_PID" 2>/dev/null
TAIL_PID=""

# --- verdict --------------------------------------------------------------------
console_tail() {
	echo "$PROG: last lines of UML's console:" >&2
	tail -n 25 "$RUN/console" | sed 's/^/  | /' >&2
}
if [ -s "$RUN/fail" ]; then
	echo "$PROG: UML could not run the test: $(tr '\n' ' ' <"$RUN/fail")" >&2
	console_tail
	exit 3
fi
if [ ! -s "$RUN/rc" ]; then
	if [ -z "$why" ]; then
		if [ -e "$RUN/booted" ]; then
			why="UML exited (status $uml_rc) while the test was running"
		else
			why="UML exited (status $uml_rc) before the test started: it did not boot"
		fi
	fi
	echo "$PROG: UML did not complete the test: $why" >&2
	console_tail
	exit 3
fi
rc=$(cat "$RUN/rc")
[ "$rc" = 124 ] && echo "$PROG: $(basename "$SCRIPT") timed out after ${TIMEOUT}s" >&2
awk -v t0="$t0" -v b="$(cat "$RUN/booted")" -v e="$(cat "$RUN/ended")" -v t1="$t_end" \
	-v d="$(cat "$RUN/boot-detail" 2>/dev/null)" -v rc="$rc" 'BEGIN {
	split(d, u, " ") # uptime inside UML when init started, when modules were in
	printf "uml-run: boot %.1fs (kernel %.1fs, modules %.1fs), test %.1fs, shutdown %.1fs, exit %s\n",
		b - t0, u[1], u[2] - u[1], e - b, t1 - e, rc
}' >&2
exit "$rc"
