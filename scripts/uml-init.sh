#!/bin/bash
# PID 1 inside User-Mode Linux, started by scripts/uml-run.sh (which copies
# this file to its run directory RUN and boots with init=RUN/init). Not meant
# to be run by hand.
#
# RUN is a directory under the host's /tmp; once host /tmp is mounted here it
# is shared with the host. The runner writes RUN/params (KVER, MODULES,
# TIMEOUT, SCRIPT, WORKDIR, ARGS, and the variables to export) and reads back:
#   RUN/out          the test's stdout+stderr (streamed to the caller as it grows)
#   RUN/boot-detail  uptime when init started and when the modules were in
#   RUN/booted       time (epoch s) the test started
#   RUN/ended        time the test ended
#   RUN/rc           the test's exit status (written last, atomically)
#   RUN/fail         why the rig could not run the test (module, mount, cwd)
#
# Whatever happens, this script ends with `poweroff -f`: PID 1 must not exit.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
umask 022
RUN=${UML_RUN:-${0%/*}}
unset UML_RUN

halt() {
	sync
	poweroff -f
	sleep 60 # poweroff -f does not return; never let PID 1 exit
}
# Before /tmp is mounted only the console hears us (the runner shows its
# tail on failure); after, RUN/fail carries the reason.
fail() {
	echo "uml-init: $*" >&2
	echo "$*" >>"$RUN/fail" 2>/dev/null
	halt
}

mount -t proc proc /proc || fail "cannot mount /proc"
read -r up_kernel _ </proc/uptime
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mount -t hostfs -o /tmp hostfs /tmp || fail "cannot mount host /tmp with hostfs"
[ -r "$RUN/params" ] || fail "no $RUN/params: is host /tmp shared?"
# shellcheck source=/dev/null
. "$RUN/params"
OUT=$RUN/out

# Writable, private places; the host's / stays read-only.
mount -t tmpfs -o mode=0755 tmpfs /run || fail "cannot mount tmpfs on /run"
mkdir -p /run/netns /run/lock
[ -d /var/tmp ] && mount -t tmpfs -o mode=1777 tmpfs /var/tmp
# /dev is the kernel's devtmpfs: add what a normal system has (bash's <(...)
# needs /dev/fd; Python's multiprocessing needs /dev/shm).
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts 2>/dev/null
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr

# Kernel modules: the host's copy of the UML module tree, seen where
# `modprobe -d` expects it. One modprobe -a is fast; if it fails, one per
# module names the culprit (built-in or already loaded modules succeed).
MODROOT=/run/uml-modules
mkdir -p "$MODROOT/lib/modules/$KVER"
mount -t hostfs -o "/usr/lib/uml/modules/$KVER" hostfs "$MODROOT/lib/modules/$KVER" ||
	fail "cannot mount /usr/lib/uml/modules/$KVER"
# shellcheck disable=SC2086 # MODULES is a word list
if ! modprobe -a -d "$MODROOT" $MODULES >/dev/null 2>&1; then
	bad=""
	for m in $MODULES; do
		if ! err=$(modprobe -d "$MODROOT" "$m" 2>&1); then
			bad="$bad $m"
			echo "uml-run: module $m failed to load: ${err:-no message}" >>"$OUT"
		fi
	done
	[ -n "$bad" ] && fail "kernel module(s) failed to load:$bad"
fi
read -r up_modules _ </proc/uptime
ip link set lo up || fail "cannot bring up lo"
echo "$up_kernel $up_modules" >"$RUN/boot-detail"

# The test: the caller's working directory and variables, stdin /dev/null.
cd "$WORKDIR" || fail "cannot cd to $WORKDIR inside UML"
if [ -x "$SCRIPT" ]; then CMD=("$SCRIPT"); else CMD=(bash "$SCRIPT"); fi
date +%s.%N >"$RUN/booted"
timeout -k 10 "$TIMEOUT" "${CMD[@]}" "${ARGS[@]}" >>"$OUT" 2>&1 </dev/null
rc=$?
date +%s.%N >"$RUN/ended"
echo "$rc" >"$RUN/rc.tmp" && mv "$RUN/rc.tmp" "$RUN/rc"
halt
