#!/bin/bash
# Runs a test script as root inside User-Mode Linux: a real Linux kernel with
# ESP, xfrm_user, veth, netem and iptables, booted as an ordinary process in a
# few seconds, with the host's / mounted read-only as its root.
#
#   scripts/uml-run.sh [--timeout SECS] [--mem SIZE] SCRIPT [ARGS...]
#
# SCRIPT runs with bash in the caller's working directory, with every ROTOR_*
# variable of the caller's environment. Its output streams to our stdout; our
# exit status is its exit status. Inside, /tmp is the host's /tmp (writable),
# /run is a fresh tmpfs, and the modules of DESIGN.md §3 are loaded.
#
# Never hangs: SCRIPT runs under `timeout` inside (default 600 s), and UML
# itself is killed from outside 60 s after that.
set -u

TIMEOUT=600
MEM=1G
while [ $# -gt 0 ]; do
	case $1 in
	--timeout) TIMEOUT=$2; shift 2 ;;
	--mem) MEM=$2; shift 2 ;;
	-h | --help) sed -n '2,15p' "$0"; exit 0 ;;
	--) shift; break ;;
	-*) echo "uml-run: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || { echo "usage: scripts/uml-run.sh [--timeout SECS] [--mem SIZE] SCRIPT [ARGS...]" >&2; exit 2; }
SCRIPT=$(realpath "$1") || { echo "uml-run: no such script: $1" >&2; exit 2; }
shift

MODULES="sha512_generic cryptomgr xfrm_user esp4 esp6 veth gcm ghash-generic ctr seqiv echainiv authenc hmac cbc drbg jitterentropy_rng sch_netem ip_tables iptable_filter ip6_tables ip6table_filter xt_tcpudp xt_multiport xt_statistic xt_u32 bridge"

install_missing() {
	local pkgs=()
	command -v linux.uml >/dev/null || pkgs+=(user-mode-linux)
	command -v ip >/dev/null || pkgs+=(iproute2)
	command -v iptables-legacy >/dev/null || pkgs+=(iptables)
	command -v modprobe >/dev/null || pkgs+=(kmod)
	command -v ping >/dev/null || pkgs+=(iputils-ping)
	command -v python3 >/dev/null || pkgs+=(python3)
	[ ${#pkgs[@]} -eq 0 ] && return 0
	if [ "$(id -u)" != 0 ]; then
		echo "uml-run: missing ${pkgs[*]}; run as root or apt-get install them" >&2
		return 1
	fi
	echo "uml-run: installing ${pkgs[*]}" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
}
install_missing || exit 1

KVER=$(ls /usr/lib/uml/modules 2>/dev/null | sort -V | tail -1)
[ -n "$KVER" ] || { echo "uml-run: no UML modules in /usr/lib/uml/modules (package user-mode-linux)" >&2; exit 1; }

RUN=$(mktemp -d /tmp/uml-run.XXXXXX)
cleanup() {
	[ -n "${UML_PID:-}" ] && kill -9 -- -"$UML_PID" 2>/dev/null
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The environment the test sees: ROTOR_* from ours, quoted for the shell.
env | grep '^ROTOR_[A-Za-z0-9_]*=' | while IFS= read -r kv; do
	printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
done >"$RUN/env"
{
	printf 'cd %q\n' "$(pwd)"
	printf 'set -- '
	printf '%q ' "$@"
	printf '\n'
} >"$RUN/args"

cat >"$RUN/init" <<EOF
#!/bin/bash
# PID 1 inside UML.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
read -r up0 _ </proc/uptime
mount -t sysfs sys /sys
mount -t hostfs -o /tmp hostfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/tmp 2>/dev/null
mkdir -p /run/netns /run/lock /run/mods/lib/modules/$KVER
mount -t hostfs -o /usr/lib/uml/modules/$KVER hostfs /run/mods/lib/modules/$KVER
out=$RUN/out
ok=1
# One modprobe for all (fast); on failure, one per module to name the culprit.
if ! modprobe -a -d /run/mods $MODULES >/dev/null 2>&1; then
	for m in $MODULES; do
		if ! err=\$(modprobe -d /run/mods \$m 2>&1); then
			echo "uml-run: module \$m failed to load: \$err" >>\$out
			ok=0
		fi
	done
fi
ip link set lo up
read -r up1 _ </proc/uptime
echo "uml-run: init at \${up0}s, modules loaded at \${up1}s" >>\$out
if [ \$ok = 1 ]; then
	echo booted >$RUN/booted
	source $RUN/env
	source $RUN/args
	timeout -k 5 $TIMEOUT bash "$SCRIPT" "\$@" >>\$out 2>&1 </dev/null
	echo \$? >$RUN/rc
else
	echo 3 >$RUN/rc
fi
sync
poweroff -f
EOF
chmod +x "$RUN/init"
: >"$RUN/out"

start=$(date +%s.%N)
# UML maps its memory from a file in TMPDIR; con0 on /dev/null input and a log
# file output, so a missing or closed stdin (CI) cannot disturb the console.
TMPDIR=$RUN setsid timeout -k 5 $((TIMEOUT + 60)) linux.uml \
	mem="$MEM" root=/dev/root rootfstype=hostfs rootflags=/ ro \
	init="$RUN/init" uml_dir="$RUN" con=null con0=null,fd:1 \
	</dev/null >"$RUN/console" 2>&1 &
UML_PID=$!

# Stream the test's output while UML runs.
tail -n +1 -f "$RUN/out" --pid=$UML_PID 2>/dev/null &
TAIL_PID=$!
wait $UML_PID
uml_rc=$?
UML_PID=
sleep 0.2
kill $TAIL_PID 2>/dev/null
wait $TAIL_PID 2>/dev/null
end=$(date +%s.%N)

if [ ! -f "$RUN/rc" ]; then
	echo "uml-run: UML did not complete the test (linux.uml exit $uml_rc; timeout ${TIMEOUT}s + 60s)." >&2
	[ -f "$RUN/booted" ] || echo "uml-run: it never finished booting. Console tail:" >&2
	tail -n 20 "$RUN/console" >&2
	exit 1
fi
rc=$(cat "$RUN/rc")
[ "$rc" = 124 ] && echo "uml-run: $(basename "$SCRIPT") timed out after ${TIMEOUT}s" >&2
[ "$rc" = 3 ] && [ ! -f "$RUN/booted" ] && echo "uml-run: kernel modules failed to load (see above); the test did not run" >&2
printf 'uml-run: %s exit %s in %.1fs (kernel %s)\n' "$(basename "$SCRIPT")" "$rc" \
	"$(python3 -c "print($end - $start)")" "$KVER" >&2
exit "$rc"
