#!/bin/bash
# The hub's cost per node rotation against the kernel floor, on a real kernel
# (User-Mode Linux), with N nodes speaking the real protocol (rotor-loadgen).
#
#   scripts/bench.sh [--n 1000,10000] [--json] [--rounds R] [--hello 30s]
#                    [--ratchet-every K]
#                    [--addressing scattered|sequential]
#                    [--state hostfs|tmpfs|etcd[,...]] [--lease-ttl DUR]
#                    [--max-pending K] [--hub-log LEVEL] [--profile] [--syscalls]
#                    [--strongswan] [--strongswan-pfs GROUP]
#                    [--memory-lock on|off] [--mem SIZE]
#                    [--timeout SECS] [--keys files|one] [--retries K]
#                    [--takeover] [--handover on|off] [--etcd-members 3|1]
#
# On the host it builds the release binaries (cargo, CARGO_TARGET_DIR or
# ./target), then runs itself inside UML once (one boot for every N; see
# scripts/uml-run.sh), and prints ONE table (or, with --json, one JSON object
# per N per line). Inside, for each N:
#
#   namespaces `hub` (10.0.0.1 on a veth) and `load` (10.0.0.2, and the N node
#   addresses in 10.64.0.0/10 added with `ip -batch`; the hub routes them via
#   10.0.0.2, so one neighbour entry serves them all). --addressing scattered
#   (default) gives node i the address 10.64.0.0 + (i * K mod 2^22);
#   sequential gives 10.64.0.0 + i, which with the hub's reqid = base + i
#   makes the kernel's SA hash degenerate (every SA add walks all SAs: see
#   docs/performance.md) -- use it with small N. Above 20,000 nodes the load
#   side gets one local route for 10.64.0.0/10 (AnyIP) instead of N
#   addresses (adding addresses is quadratic in the kernel);
#   `rotor-loadgen gen`: N init keys and a hub config with N [[node]] entries,
#   rotate_interval 1h (rotations only when asked), grace 1s;
#   `rotor hub` (ROTOR_LOG=$HUB_LOG), then `rotor-loadgen run` (N real
#   rotor-core nodes, hello every $HELLO, at most $MAX_PENDING inits in flight).
#
# Measured (hub CPU = utime + stime of /proc/PID/stat: every thread of the
# process, in clock ticks; the user/system split from the same fields):
#   init      loadgen start -> every node acknowledged under generation 1:
#             wall, hub CPU;
#   rotate    one warm-up round (`rotor rotate --all`; the first rotation after
#             init has no outbound switch and nothing to delete), then
#             max(--rounds, 10000/N) (at most 50) measured rounds, each: `rotor rotate --all`, wait until every node
#             has adopted the new key and been acknowledged under it, then wait
#             the grace period (so the deletion of N-1's SAs is included), read
#             the hub's CPU. rotations per hub CPU-second, us per rotation,
#             wall time, kernel SA operations/s (5 per rotation: 2 adds, 1
#             policy update, 2 deletes), control datagrams handled;
#   restart   SIGTERM, then the hub started again on the same config and
#             state: seconds until it answers a control request (restart_s),
#             and the CPU the new hub used until then (restart_hub_cpu_s:
#             the load generator's N nodes share UML's one CPU with it and
#             keep sending hellos to the stopped hub, which slows its start),
#             then until one `rotor rotate --all` completed on every node
#             (restart_resync_s); inits during the restart (must be 0);
#   memory    (VmRSS of the hub with N nodes in sync - VmRSS of a 1-node hub
#             of the same build in the same boot) / N;
#   drops     the hub's drop counters (status JSON), the loadgen's, UDP
#             RcvbufErrors (/proc/net/snmp) in both namespaces, softnet drops;
#   floor     `rotor-loadgen floor` in an empty namespace: the same 5N SA
#             operations in one batched netlink write (CPU of the tool) and
#             with `ip -batch` (CPU of ip; skipped above 20,000 nodes), in us
#             per rotation.
#
# --profile runs the hub under valgrind --tool=callgrind, dumping a profile
# part before each control request it answers, so each measured round (it
# starts with `rotor rotate --all`) is a part of its own; the files are listed
# at the end (analyse with callgrind_annotate). CPU figures of a profiled run
# are not comparable.
#
# --ratchet-every K sets the hub's ratchet_every (default 1: an X25519
# ratchet step in every rotation; K: in every K-th), for the cost of forward
# secrecy per rotation.
#
# --flood K (K rounds, default 0: none) then measures K more rounds while
# `rotor-loadgen flood` floods the hub's control port from the load
# namespace's own address (inits forged under 3 nodes' real init SPIs,
# random SPIs), as fast as it sends, and prints one line: rotations per
# wall second calm and under the flood, the junk rate sent, the hub's
# intake, its CPU per rotation, and its drops by reason.
#
# --state etcd keeps the hub's records in etcd: three members in UML
# (netns-tests/etcd-lib.sh: namespaces etcd1..3 on a bridge the hub's
# namespace joins, data on a tmpfs, one cluster for the whole boot, a prefix
# per N), state = "etcd://...", a cluster key (`rotor genkey`), lease_ttl
# --lease-ttl when given (else the daemon's default). On top of the usual
# figures it reads etcd's own counters (each member's /metrics and
# `etcdctl endpoint status`, scripts/bench-etcd.sh) around the init and the
# measured rounds: transactions, puts, revisions and raft proposals per
# round and per rotation, and the three members' CPU. A list (--state
# tmpfs,etcd) runs every N once per state, in that order, in the same boot;
# each record then carries its rotations per hub CPU-second over the first
# state's for the same N (rate_vs_first_state).
#
# --takeover measures hub failover instead (scripts/bench-takeover.sh): two
# hubs on the nodes' L2 segment with a service address and their state in
# etcd, the N nodes in sync with the first; kill -9 of the leader, then
# (--handover on, default) the killed hub restarted as the standby and a
# SIGTERM of the new leader (a graceful hand-over). For each: until the
# standby leads, answers `rotor status`, until every node that waited for
# the hub heard from it again, until every node is in sync again (re-keyed
# by the new leader, which cannot send on the old one's SAs), its CPU, the
# inits (must be 0). The nodes' patience is --retries (default there: 10)
# x --hello: it must outlast the takeover.
#
# --etcd-members 1 runs a single etcd member instead of three (no raft
# replication: a third of etcd's CPU on UML's one CPU, where three members
# take 35 s over a 10,000-node init).
#
# --retries K: the nodes' retries (`rotor-loadgen run --retries`; default
# 3, 10 with --takeover).
#
# --keys one writes the nodes' init keys into one hub.keys_file instead of
# one psk_file per node (files, the default): reading 100,000 key files is
# most of a 100,000-node hub's start in UML.
#
# --memory-lock off starts every hub without CAP_IPC_LOCK (dropped from its
# bounding set) and with RLIMIT_MEMLOCK at 64 KiB, so it does not lock its
# memory (see docs/operations.md, "Secrets in memory"); on (default) is how
# the daemon runs as root and under the packaged units.
#
# --syscalls attaches strace -c to the hub during the measured rounds and
# prints its system-call counts (CPU figures of such a run are not comparable).
#
# --strongswan also runs bench/strongswan.sh --json for the same N (its own UML
# boot; it must print one JSON object per N with "n" and
# "strongswan_rekeys_per_hub_cpu_s") and merges that field, with the ratio
# rotor_vs_strongswan (rotations per hub CPU-s over rekeys per hub CPU-s);
# without it, or when the script is missing, both are null.
# --strongswan-pfs GROUP (implies --strongswan) gives strongSwan's CHILD_SAs
# that DH group (e.g. modp3072, x25519: bench/strongswan.sh --pfs), so every
# rekey is a DH exchange, as every rotor rotation is a ratchet step; the
# table's header names the group.
#
# Exit: 0 when every N completed; 1 when one did not (counts in the output);
# 2 bad usage; 3 the rig failed.
set -u

PROG=scripts/bench.sh
NS_LIST=1000,10000
JSON=0
ROUNDS=3
HELLO=30s
MAX_PENDING=256
HUB_LOG=warn
PROFILE=0
SYSCALLS=0
FLOOD_ROUNDS=0
RATCHET_EVERY=1
STRONGSWAN=0
SW_PFS=
MEM=
TIMEOUT=
KEYS=files
INSIDE=0
GRACE_S=1
ANYIP_ABOVE=20000 # more nodes: a local route instead of N addresses
ADDRESSING=scattered
STATE_LIST=hostfs
LEASE_TTL=
RETRIES=
TAKEOVER=0
HANDOVER=on
ETCD_MEMBERS_N=3
MEMORY_LOCK=on

usage() {
	echo "usage: $PROG [--n 1000,10000] [--json] [--addressing scattered|sequential] [--state hostfs|tmpfs|etcd[,...]] [--lease-ttl DUR] [--retries K] [--takeover] [--handover on|off] [--etcd-members 3|1] [--rounds R] [--hello DUR] [--max-pending K] [--hub-log LEVEL] [--profile] [--strongswan] [--strongswan-pfs GROUP] [--ratchet-every K] [--flood K] [--memory-lock on|off] [--mem SIZE] [--timeout SECS] [--keys files|one]" >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--n) NS_LIST=${2:-}; shift 2 ;;
	--json) JSON=1; shift ;;
	--rounds) ROUNDS=${2:-}; shift 2 ;;
	--hello) HELLO=${2:-}; shift 2 ;;
	--max-pending) MAX_PENDING=${2:-}; shift 2 ;;
	--hub-log) HUB_LOG=${2:-}; shift 2 ;;
	--profile) PROFILE=1; shift ;;
	--syscalls) SYSCALLS=1; shift ;;
	--flood) FLOOD_ROUNDS=${2:-}; shift 2 ;;
	--ratchet-every) RATCHET_EVERY=${2:-}; shift 2 ;;
	--addressing) ADDRESSING=${2:-}; shift 2 ;;
	--state) STATE_LIST=${2:-}; shift 2 ;;
	--lease-ttl) LEASE_TTL=${2:-}; shift 2 ;;
	--retries) RETRIES=${2:-}; shift 2 ;;
	--takeover) TAKEOVER=1; shift ;;
	--handover) HANDOVER=${2:-}; shift 2 ;;
	--etcd-members) ETCD_MEMBERS_N=${2:-}; shift 2 ;;
	--memory-lock) MEMORY_LOCK=${2:-}; shift 2 ;;
	--strongswan) STRONGSWAN=1; shift ;;
	--strongswan-pfs) [ -n "${2:-}" ] || usage; STRONGSWAN=1; SW_PFS=$2; shift 2 ;;
	--mem) MEM=${2:-}; shift 2 ;;
	--timeout) TIMEOUT=${2:-}; shift 2 ;;
	--keys) KEYS=${2:-}; shift 2 ;;
	--inside) INSIDE=1; shift ;;
	-h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "$PROG: unknown argument $1" >&2; usage ;;
	esac
done
[[ $ADDRESSING =~ ^(scattered|sequential)$ ]] || usage
[[ $STATE_LIST =~ ^(hostfs|tmpfs|etcd)(,(hostfs|tmpfs|etcd))*$ ]] || usage
IFS=, read -r -a STATES <<<"$STATE_LIST"
[ -z "$LEASE_TTL" ] || [[ $LEASE_TTL =~ ^[1-9][0-9]*(ms|s)$ ]] || usage
[ -z "$RETRIES" ] || [[ $RETRIES =~ ^[1-9][0-9]*$ ]] || usage
if [ -z "$RETRIES" ]; then RETRIES=3; [ "$TAKEOVER" = 1 ] && RETRIES=10; fi
[[ $HANDOVER =~ ^(on|off)$ ]] || usage
[[ $ETCD_MEMBERS_N =~ ^(1|3)$ ]] || usage
[[ $MEMORY_LOCK =~ ^(on|off)$ ]] || usage
[[ $KEYS =~ ^(files|one)$ ]] || usage
[[ $NS_LIST =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || usage
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage
[[ $MAX_PENDING =~ ^[0-9]+$ ]] || usage
[[ $RATCHET_EVERY =~ ^([1-9]|1[0-6])$ ]] || { echo "$PROG: --ratchet-every: 1..16, not '$RATCHET_EVERY'" >&2; usage; }
[[ $HELLO =~ ^[1-9][0-9]*(ms|s|m)$ ]] || usage
IFS=, read -r -a NS <<<"$NS_LIST"
MAXN=0
for n in "${NS[@]}"; do
	[ "$n" -le 1000000 ] || { echo "$PROG: N=$n is too large (max 1000000)" >&2; exit 2; }
	[ "$n" -gt "$MAXN" ] && MAXN=$n
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

# ============================================================== host side ===
if [ "$INSIDE" = 0 ]; then
	T=${CARGO_TARGET_DIR:-$ROOT/target}
	echo "$PROG: building release binaries in $T" >&2
	(cd "$ROOT" && CARGO_TARGET_DIR=$T cargo build --workspace --release -q) ||
		{ echo "$PROG: build failed" >&2; exit 3; }
	export ROTOR_BIN=$T/release/rotor ROTOR_LOADGEN=$T/release/rotor-loadgen \
		ROTOR_XFRMCTL=$T/release/rotor-xfrmctl
	ETCD_RUN=0
	[ "$TAKEOVER" = 1 ] && ETCD_RUN=1
	[[ ,$STATE_LIST, == *,etcd,* ]] && ETCD_RUN=1
	if [ -z "$MEM" ]; then
		MEM=2G
		[ "$MAXN" -gt 20000 ] && MEM=4G
		[ "$MAXN" -gt 50000 ] && MEM=8G
		# Three etcd members hold the records (and their revisions) too.
		[ "$ETCD_RUN" = 1 ] && [ "$MAXN" -le 20000 ] && MEM=3G
	fi
	if [ -z "$TIMEOUT" ]; then
		TIMEOUT=$((600 + MAXN / 20))
		[ "$PROFILE" = 1 ] && TIMEOUT=$((TIMEOUT * 8))
		# Each state is a run of its own; a takeover starts a second hub twice.
		TIMEOUT=$((TIMEOUT * ${#STATES[@]}))
		[ "$TAKEOVER" = 1 ] && TIMEOUT=$((TIMEOUT * 2))
	fi
	OUT=$(mktemp /tmp/rotor-bench.XXXXXX)
	# UML runs copies: bash reads a script as it goes, so editing one
	# during a run would otherwise change the run.
	COPY=$(mktemp -d /tmp/rotor-bench-scripts.XXXXXX)
	cp "$ROOT/scripts/bench.sh" "$ROOT/scripts/bench-etcd.sh" "$ROOT/scripts/bench-takeover.sh" \
		"$ROOT/netns-tests/etcd-lib.sh" "$COPY/" || { echo "$PROG: copying the scripts failed" >&2; exit 3; }
	trap 'rm -rf "$OUT" "$COPY"' EXIT
	args=(--inside --n "$NS_LIST" --state "$STATE_LIST" --rounds "$ROUNDS" --hello "$HELLO" --max-pending "$MAX_PENDING" --hub-log "$HUB_LOG" --addressing "$ADDRESSING")
	[ "${FLOOD_ROUNDS:-0}" -gt 0 ] && args+=(--flood "$FLOOD_ROUNDS")
	args+=(--ratchet-every "$RATCHET_EVERY" --memory-lock "$MEMORY_LOCK" --keys "$KEYS" --retries "$RETRIES" --handover "$HANDOVER" --etcd-members "$ETCD_MEMBERS_N")
	[ -n "$LEASE_TTL" ] && args+=(--lease-ttl "$LEASE_TTL")
	[ "$TAKEOVER" = 1 ] && args+=(--takeover)
	[ "$PROFILE" = 1 ] && args+=(--profile)
	[ "$SYSCALLS" = 1 ] && args+=(--syscalls)
	# Progress goes to stderr; the results are the BENCH-JSON lines.
	"$ROOT/scripts/uml-run.sh" --mem "$MEM" --timeout "$TIMEOUT" "$COPY/bench.sh" "${args[@]}" |
		tee "$OUT" | grep --line-buffered -v '^BENCH-JSON ' >&2
	rc=${PIPESTATUS[0]}
	results=$(sed -n 's/^BENCH-JSON //p' "$OUT")
	[ -n "$results" ] || { echo "$PROG: no results (the UML run ended with exit $rc)" >&2; exit 3; }
	[ "$rc" = 0 ] || [ "$rc" = 1 ] || echo "$PROG: the UML run failed (exit $rc); the results of the N that finished follow" >&2
	if [ "$STRONGSWAN" = 1 ] && [ "$TAKEOVER" = 0 ]; then
		SW=${ROTOR_STRONGSWAN_BENCH:-$ROOT/bench/strongswan.sh}
		if [ -x "$SW" ]; then
			sw_args=(--n "$NS_LIST" --json)
			[ -n "$SW_PFS" ] && sw_args+=(--pfs "$SW_PFS")
			sw=$("$SW" "${sw_args[@]}") || echo "$PROG: $SW failed; its figures stay null" >&2
			while read -r line; do
				n=$(jq -r '.n // empty' <<<"$line" 2>/dev/null) || continue
				v=$(jq -r '.strongswan_rekeys_per_hub_cpu_s // "null"' <<<"$line")
				results=$(jq -c --argjson n "$n" --argjson v "$v" \
					'if .n == $n then .strongswan_rekeys_per_hub_cpu_s = $v else . end' <<<"$results")
			done <<<"$sw"
		else
			echo "$PROG: --strongswan: $SW is missing; its figures stay null" >&2
		fi
	fi
	if [ "$TAKEOVER" = 0 ]; then
		# rotor's rotations against strongSwan's rekeys per hub CPU-second;
		# each state's rotations per hub CPU-second against the first state's,
		# same N, same boot.
		results=$(jq -c --arg first "${STATES[0]}" -s '
			. as $all | .[] | .rotor_vs_strongswan = (if (.strongswan_rekeys_per_hub_cpu_s // 0) > 0
				then .rotations_per_hub_cpu_s / .strongswan_rekeys_per_hub_cpu_s else null end)
			| .n as $n
			| ([$all[] | select(.n == $n and .state_fs == $first) | .rotations_per_hub_cpu_s][0]) as $base
			| .rate_vs_first_state = (if ($base // 0) > 0 and .rotations_per_hub_cpu_s != null
				then .rotations_per_hub_cpu_s / $base else null end)' <<<"$results")
	fi
	if [ "$JSON" = 1 ]; then
		echo "$results"
	elif [ "$TAKEOVER" = 1 ]; then
		jq -rs '
		def f(d): if . == null then "-" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
		(["N", "event", "lease s", "leads s", "answers s", "serving s (log)", "nodes quiet s", "node wait max s", "nodes waited",
		  "hub cpu to answer s", "hub cpu to quiet s", "in sync s", "hub cpu to in sync s", "inits", "fallbacks", "hub drops", "rcvbuf errs"] | @tsv),
		(.[] | . as $r | (.events[] | [($r.n | tostring), .event, ($r.lease_ttl_s | f(1)), (.lead_s | f(2)), (.answer_s | f(2)),
		  (.serving_s | f(2)), (.quiet_s | f(2)), (.wait_max_s | f(2)), (.waits | tostring),
		  (.cpu_to_answer_s | f(2)), (.cpu_to_quiet_s | f(2)), (.in_sync_s | f(2)), (.cpu_to_in_sync_s | f(2)),
		  (.inits | tostring), (.fallbacks | tostring), (.hub_drops | tostring), (.rcvbuf_errors | tostring)] | @tsv))
		' <<<"$results" | column -t -s $'\t'
		jq -rs '.[] | "N=\(.n): init \(.init_wall_s) s (hub \(.init_hub_cpu_s) CPU-s); standby start \(.standby_start_s) s (\(.standby_cpu_s) CPU-s); hello \(.hello_interval), retries \(.retries): a node gives up \(.patience_min_s)-\(.patience_max_s) s after the hub; complete \(.complete)"' <<<"$results"
		echo "(from the kill -9 / SIGTERM of the leader, one UML clock: leads: the standby's log says leading; answers: \`rotor status\` on its socket answered; serving: its log says serving; nodes quiet: the last node that waited >= 1 s for the hub heard from it; node wait max: the longest such wait; nodes waited: how many; hub cpu: the new leader's, from the signal; in sync: every node re-keyed by the new leader and acknowledged under its new key (the new leader cannot send on the old one's SAs); inits, fallbacks: during all of it, target 0)"
	else
		jq -rs --arg swan "swan rekey/cpu s${SW_PFS:+ (pfs $SW_PFS)}" '
		def f(d): if . == null then "-" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
		(["N", "state", "init s", "init hub cpu s", "rot/hub cpu s", "vs first state", "hub us/rot", "floor us/rot", "hub/floor",
		  "ip-batch us/rot", "hub/ip", "rot wall s", "SA ops/s", "ctl msg/s", "B/node", "drops", "restart s", "restart cpu s", "resync s", "restart inits", $swan, "rotor/swan"] | @tsv),
		(.[] | [(.n | tostring), .state_fs, (.init_wall_s | f(2)), (.init_hub_cpu_s | f(2)),
		  (.rotations_per_hub_cpu_s | f(0)), (.rate_vs_first_state | f(2)), (.hub_us_per_rotation | f(1)),
		  (.kernel_floor_us_per_rotation | f(1)), (.hub_vs_floor | f(2)),
		  (.ip_batch_us_per_rotation | f(1)), (.hub_vs_ip_batch | f(2)),
		  (.rotation_wall_s | f(2)), (.kernel_sa_ops_per_s | f(0)),
		  (.control_msgs_per_s | f(0)), (.hub_rss_bytes_per_node | f(0)),
		  (.control_drops | tostring), (.restart_s | f(2)), (.restart_hub_cpu_s | f(2)), (.restart_resync_s | f(2)),
		  (.restart_inits | tostring), (.strongswan_rekeys_per_hub_cpu_s | f(0)),
		  (.rotor_vs_strongswan | f(1))] | @tsv)
		' <<<"$results" | column -t -s $'\t'
		echo "(hub/floor: hub CPU per rotation over the batched-netlink kernel floor; target <= 2. rot/hub cpu s target >= 10000 (>= 5000 with the state in etcd); vs first state: over the first --state's, same N and boot; B/node target <= 1024; drops target 0; restart s: SIGTERM'd hub started again -> answering, target <= 5 at 100,000 nodes; restart cpu s: the new hub's CPU until then; resync s: then one rotate --all on every node; restart inits target 0; rotor/swan: rotations per hub CPU-s over strongSwan's CHILD_SA rekeys per hub CPU-s, same N, --strongswan)"
		if jq -e -s 'any(.etcd != null)' <<<"$results" >/dev/null; then
			echo
			jq -rs '
			def f(d): if . == null then "-" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
			(["N", "etcd txn/round", "txn/rot", "put/round", "put/rot", "revisions/round", "proposals/round",
			  "etcd cpu s/round", "etcd us/rot", "hub us/rot", "rot wall s", "init put/node", "init txn", "db MB"] | @tsv),
			(.[] | select(.etcd != null) | .etcd as $e | [(.n | tostring),
			  ($e.rounds.txn_per_round | f(1)), ($e.rounds.txn_per_rotation | f(4)),
			  ($e.rounds.put_per_round | f(0)), ($e.rounds.put_per_rotation | f(2)),
			  ($e.rounds.revisions_per_round | f(1)), ($e.rounds.proposals_per_round | f(1)),
			  ($e.rounds.cpu_s_per_round | f(2)), ($e.rounds.cpu_us_per_rotation | f(1)),
			  (.hub_us_per_rotation | f(1)), (.rotation_wall_s | f(2)),
			  (if $e.init.put != null then $e.init.put / .n else null end | f(2)), ($e.init.txn | tostring),
			  (if $e.after.db_bytes != null then $e.after.db_bytes / 1048576 else null end | f(1))] | @tsv)
			' <<<"$results" | column -t -s $'\t'
			echo "(etcd's own counters (/metrics of each member, the largest; revisions from etcdctl endpoint status) over the measured rounds, per round and per rotation; etcd cpu: the members' together; init: the init phase; db: the largest member's database)"
		fi
	fi
	[ "$rc" = 0 ] || [ "$rc" = 1 ] || exit 3
	jq -e -s 'all(.complete)' <<<"$results" >/dev/null || exit 1
	exit 0
fi

# ============================================================ inside UML ===
ROTOR=${ROTOR_BIN:?ROTOR_BIN not set}
LOADGEN=${ROTOR_LOADGEN:?ROTOR_LOADGEN not set}
for b in "$ROTOR" "$LOADGEN"; do [ -x "$b" ] || { echo "$PROG: $b missing" >&2; exit 3; }; done
# The helper scripts next to this one (the host side runs copies of all).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
W=$(mktemp -d /tmp/rotor-bench-in.XXXXXX)
# Keys and configs on a tmpfs: /tmp here is the host's directory through
# hostfs, where each of N key files costs several host system calls (a
# 10,000-node hub spent ~8 s of its start reading them); a production host
# reads them from its page cache. The hub's durable state stays on hostfs
# (STATE), so every fdatasync is a real one.
mount -t tmpfs -o size=$((64 + MAXN / 100))m tmpfs "$W" || { echo "$PROG: tmpfs on $W" >&2; exit 3; }
STATE_HOSTFS=$(mktemp -d /tmp/rotor-bench-state.XXXXXX)
# --state tmpfs: the state on the tmpfs too. UML runs a host fsync inside
# the calling process's system time, so on hostfs every fdatasync counts as
# hub CPU; on a tmpfs the store's CPU cost is measured alone.
STATE_TMPFS=$W/state
mkdir -p "$STATE_TMPFS"
# The 1-node baseline hub keeps its state in a directory: the first
# directory state asked for.
STATE=$STATE_HOSTFS
[[ ,$STATE_LIST, == *,hostfs,* ]] || STATE=$STATE_TMPFS
# The profile on the host's /tmp (hostfs): it outlives this UML boot.
PROF=
[ "$PROFILE" = 1 ] && PROF=$(mktemp -d /tmp/rotor-bench-prof.XXXXXX)
HUB_PID=
LG_PID=
HUB_LOG_FILE=
log() { echo "bench: $*" >&2; }
# The hubs' logs are copied here (the host's /tmp) at the end, for a
# post-mortem: $W goes with the boot.
LOGS=$(mktemp -d /tmp/rotor-bench-logs.XXXXXX)
log "hub logs will be in $LOGS (host /tmp)"

cleanup() {
	[ -n "$LG_PID" ] && kill "$LG_PID" 2>/dev/null
	[ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null
	declare -F takeover_cleanup >/dev/null && takeover_cleanup && takeover_close
	cp "$W"/*.log "$LOGS/" 2>/dev/null
	# etcd's members are children too: stopped before the wait for all.
	declare -F etcd_cleanup >/dev/null && etcd_cleanup
	wait 2>/dev/null
	for ns in hub hubb load floor; do ip netns del "$ns" 2>/dev/null; done
	rm -rf "$STATE_HOSTFS"
	umount "$W"
	rm -rf "$W"
}
trap cleanup EXIT

sysctl -qw net.core.netdev_max_backlog=100000 2>/dev/null

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
# cpu_ns PID: on-CPU time (user + system) of the whole process, every
# thread (exited ones too), in ns. /proc/PID/schedstat would count the main
# thread only: a hub on etcd does its gRPC on a thread of its own, and etcd
# is all goroutines on several threads. /proc/PID/stat counts in clock
# ticks (UML's clock advances in 10 ms ticks anyway).
CLK_TCK=$(getconf CLK_TCK)
cpu_ns() {
	local f
	{ read -r f <"/proc/$1/stat"; } 2>/dev/null || return 1
	f=${f##*) }
	# shellcheck disable=SC2086 # the fields, split
	set -- $f
	echo $(((${12} + ${13}) * 1000000000 / CLK_TCK))
}
# cpu_split PID: "utime stime" in clock ticks
cpu_split() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
rcvbuf_errors() { ip netns exec "$1" awk '/^Udp:/ { if (h) { print $6; exit } h = 1 }' /proc/net/snmp; }
softnet_drops() {
	local s=0 d
	while read -r _ d _; do s=$((s + 16#$d)); done </proc/net/softnet_stat
	echo "$s"
}
progress() { jq -c . "$W/progress.json" 2>/dev/null; }
pf() { jq -r "$1" "$W/progress.json" 2>/dev/null; }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "null"; else printf "%.6g\n", a / b }'; }

# wait_sync MIN_ROTATIONS TIMEOUT_S: until every node is in sync and the fleet
# has seen at least MIN_ROTATIONS rotations
wait_sync() {
	local want=$1 t=$2 n deadline
	deadline=$(($(now_ms) + t * 1000))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		if [ -s "$W/progress.json" ] && jq -e --argjson r "$want" \
			'.in_sync == .count and .rotations >= $r' "$W/progress.json" >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$HUB_PID" 2>/dev/null || {
			log "the hub died${HUB_LOG_FILE:+; the end of its log:}"
			[ -n "$HUB_LOG_FILE" ] && tail -n 6 "$HUB_LOG_FILE" | cut -c1-300 >&2
			return 1
		}
		kill -0 "$LG_PID" 2>/dev/null || { log "the load generator died"; return 1; }
		sleep 0.2
	done
	n=$(progress)
	log "timed out: $n"
	return 1
}

topology() { # N DIR (DIR/addresses.batch from rotor-loadgen gen)
	local n=$1 t0
	ip netns add hub
	ip netns add load
	ip link add veth0 netns hub type veth peer name veth0 netns load
	ip -n hub link set lo up
	ip -n load link set lo up
	ip -n hub link set veth0 up
	ip -n load link set veth0 up
	ip -n hub addr add 10.0.0.1/24 dev veth0
	ip -n load addr add 10.0.0.2/24 dev veth0
	ip -n hub route add 10.64.0.0/10 via 10.0.0.2
	t0=$(now_ms)
	if [ "$n" -gt "$ANYIP_ABOVE" ]; then
		# Adding an address walks the interface's address list, so N adds
		# are quadratic: 10,000 take 10-20 s in UML, 100,000 did not finish
		# in 17 minutes. A local route makes the whole /10 this namespace's
		# (AnyIP): it receives for every node address and may send from
		# any of them (IP_PKTINFO), without N addresses.
		ip -n load route add local 10.64.0.0/10 dev lo || return 1
		log "N=$n: node addresses by a local route (AnyIP), not $n addresses"
		return 0
	fi
	sed 's/ DEV$/ veth0/' "$2/addresses.batch" | ip -n load -batch - || return 1
	log "N=$n: $n addresses in $(( $(now_ms) - t0 )) ms"
}

gen() { # N DIR [hostfs|tmpfs|etcd (default: the baseline's directory) [ETCD_PREFIX]]
	"$LOADGEN" gen --count "$1" --dir "$2" --first-addr 10.64.0.0 --addr-map "$ADDRESSING" \
		--hub-addr 10.0.0.1 --grace "${GRACE_S}s" --ratchet-every "$RATCHET_EVERY" \
		$([ "$KEYS" = one ] && echo --keys-file) >/dev/null || return 1
	case ${3:-} in
	etcd) bench_etcd_config "$2/hub.toml" "${4:-rotor/bench-n$1}" || return 1 ;;
	hostfs) sed -i "s|^state_dir = .*|state_dir = \"$STATE_HOSTFS/n$1\"|" "$2/hub.toml" ;;
	tmpfs) sed -i "s|^state_dir = .*|state_dir = \"$STATE_TMPFS/n$1\"|" "$2/hub.toml" ;;
	*) sed -i "s|^state_dir = .*|state_dir = \"$STATE/n$1\"|" "$2/hub.toml" ;;
	esac
	# UML's kernel has no nf_tables for IPv4: the guard uses the legacy tools.
	sed -i '/^\[hub\]$/a guard = "iptables-legacy"' "$2/hub.toml"
}

# How each hub is started: as is, or unable to lock its memory.
HUB_WRAP=()
[ "$MEMORY_LOCK" = off ] && HUB_WRAP=(setpriv --bounding-set -ipc_lock prlimit --memlock=65536:65536 --)

start_hub() { # CONFIG LOGFILE
	if [ "$PROFILE" = 1 ] && [ "${2##*/}" != hub-1.log ]; then
		# A profile part is dumped before each control request is answered,
		# so every `rotor rotate --all` starts a new part.
		ip netns exec hub env ROTOR_LOG="$HUB_LOG" "${HUB_WRAP[@]}" valgrind --tool=callgrind \
			--dump-before='*daemon*answer*' --callgrind-out-file="$PROF/callgrind.out.hub" \
			"$ROTOR" hub --config "$1" >"$2" 2>&1 &
	else
		ip netns exec hub env ROTOR_LOG="$HUB_LOG" "${HUB_WRAP[@]}" "$ROTOR" hub --config "$1" >"$2" 2>&1 &
	fi
	HUB_PID=$!
	local sock
	sock=$(sed -n 's/^socket = "\(.*\)"$/\1/p' "$1")
	for _ in $(seq 1 3000); do
		[ -S "$sock" ] && return 0
		kill -0 "$HUB_PID" 2>/dev/null || { log "hub failed:"; tail -5 "$2" >&2; return 1; }
		sleep 0.1
	done
	log "hub did not come up"
	return 1
}

# start_hub_serving CONFIG LOGFILE: start_hub, then until the hub answers
# a control request. A hub that exits before (a fresh hub on etcd writes
# every node's record before it serves; one that etcd leaves without an
# acknowledgement for 5 s stops) is started again, as its service manager
# would, up to 5 times; each transaction etcd took stays. Attempt K logs
# to LOGFILE with -tryK before .log; sets START_ATTEMPTS and HUB_LOG_FILE
# (the serving attempt's log).
start_hub_serving() {
	local sock try
	sock=$(sed -n 's/^socket = "\(.*\)"$/\1/p' "$1")
	START_ATTEMPTS=0
	while [ "$START_ATTEMPTS" -lt 5 ]; do
		START_ATTEMPTS=$((START_ATTEMPTS + 1))
		try=${2%.log}-try$START_ATTEMPTS.log
		HUB_LOG_FILE=$try
		start_hub "$1" "$try" || continue
		until "$ROTOR" status --socket "$sock" >/dev/null 2>&1; do
			kill -0 "$HUB_PID" 2>/dev/null || break
			sleep 0.5
		done
		kill -0 "$HUB_PID" 2>/dev/null && return 0
		wait "$HUB_PID" 2>/dev/null
		log "start $START_ATTEMPTS: the hub exited before it served: $(tail -n 1 "$try" | cut -c1-200)"
	done
	return 1
}

start_loadgen() { # COUNT DIR
	rm -f "$W/progress.json"
	ip netns exec load "$LOADGEN" run --count "$1" --first-addr 10.64.0.0 --addr-map "$ADDRESSING" --hub 10.0.0.1:4820 \
		--psk-dir "$2/keys" --hello-interval "$HELLO" --retries "$RETRIES" --max-pending "$MAX_PENDING" --grace "${GRACE_S}s" \
		--silence 1s --mark-file "$W/mark" \
		--progress 200ms --progress-file "$W/progress.json" --quiet >"$W/loadgen.json" 2>"$W/loadgen.err" &
	LG_PID=$!
}

stop_all() {
	[ -n "$LG_PID" ] && kill "$LG_PID" 2>/dev/null && wait "$LG_PID" 2>/dev/null
	[ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null && wait "$HUB_PID" 2>/dev/null
	LG_PID=
	HUB_PID=
}

hub_rotate() { ip netns exec hub "$ROTOR" rotate --socket "$1" --all >/dev/null; }

# --- baseline: a hub of the same build with one node ------------------------
baseline_rss_kb() {
	gen 1 "$W/n1" || return 1
	topology 1 "$W/n1" >/dev/null 2>&1 || return 1
	start_hub "$W/n1/hub.toml" "$W/hub-1.log" || return 1
	start_loadgen 1 "$W/n1"
	wait_sync 0 60 || return 1
	sleep 1
	rss_kb "$HUB_PID"
	stop_all
	ip netns del hub
	ip netns del load
}

RC=0
TF=1 # timeouts are longer under valgrind
[ "$PROFILE" = 1 ] && TF=8
USE_ETCD=$TAKEOVER
[[ ,$STATE_LIST, == *,etcd,* ]] && USE_ETCD=1
if [ "$USE_ETCD" = 1 ]; then
	# shellcheck source=bench-etcd.sh
	. "$HERE/bench-etcd.sh"
	bench_etcd_up || { log "etcd did not come up"; exit 3; }
	log "etcd: ${#ETCD_MEMBERS[@]} member(s) healthy after ${ETCD_BOOT_MS} ms"
fi
if [ "$TAKEOVER" = 1 ]; then
	# shellcheck source=bench-takeover.sh
	. "$HERE/bench-takeover.sh"
	for N in "${NS[@]}"; do takeover_n "$N" || RC=1; done
	exit $RC
fi
BASE_RSS=$(baseline_rss_kb) || { log "the 1-node baseline failed"; exit 3; }
log "1-node hub VmRSS ${BASE_RSS} kB"

for KIND in "${STATES[@]}"; do
for N in "${NS[@]}"; do
	log "=== N=$N, state $KIND"
	complete=true
	D=$W/n$N-$KIND
	HUB_LOG_FILE=$W/hub-$N-$KIND.log
	t0=$(now_ms)
	gen "$N" "$D" "$KIND" || { log "gen failed"; exit 3; }
	log "N=$N: keys and config in $(( $(now_ms) - t0 )) ms"
	topology "$N" "$D" || { log "topology failed"; exit 3; }
	if [ "$KIND" = etcd ]; then
		etcd_attach hub 10.199.0.20 || { log "the hub's namespace did not join the etcd bridge"; exit 3; }
	fi
	etcd_at() { if [ "$KIND" = etcd ]; then etcd_counters; else echo null; fi; }
	SOCK=$D/hub.sock
	snd0=$(softnet_drops)
	t0=$(now_ms)
	if [ "$KIND" = etcd ]; then
		start_hub_serving "$D/hub.toml" "$HUB_LOG_FILE" || exit 3
		log "N=$N: the hub serves after $START_ATTEMPTS start(s)"
	else
		start_hub "$D/hub.toml" "$HUB_LOG_FILE" || exit 3
		START_ATTEMPTS=1
	fi
	hub_start_s=$(fdiv $(( $(now_ms) - t0 )) 1000)
	log "N=$N: hub up in ${hub_start_s}s (config, 2N policies), VmRSS $(rss_kb "$HUB_PID") kB, VmLck $(awk '/^VmLck:/ { print $2 }' "/proc/$HUB_PID/status") kB (--memory-lock $MEMORY_LOCK)"

	# --- init ---
	e0=$(etcd_at)
	c0=$(cpu_ns "$HUB_PID")
	start_loadgen "$N" "$D"
	wait_sync 0 $(((120 + N / 50) * TF)) || complete=false
	c1=$(cpu_ns "$HUB_PID")
	lg_start=$(jq -r '.unix_ms - .elapsed_ms' "$W/progress.json")
	init_end=$(pf '.all_in_sync_unix_ms // empty')
	init_wall=$(fdiv $(( ${init_end:-$(now_ms)} - lg_start )) 1000)
	init_cpu=$(fdiv $((c1 - c0)) 1000000000)
	init_msgs=$(pf '.sent + .received')
	e1=$(etcd_at)
	log "N=$N: init: ${init_wall}s wall, hub ${init_cpu} CPU-s, $(pf .inits) inits"

	# --- idle: the hub's CPU with nothing but hellos ---
	c0=$(cpu_ns "$HUB_PID"); i0=$(now_ms)
	sleep 2
	idle_cpu_per_s=$(fdiv $(( $(cpu_ns "$HUB_PID") - c0 )) $(( ($(now_ms) - i0) * 1000000 )))

	# --- warm-up rotation (no outbound switch, nothing to delete) ---
	hub_rotate "$SOCK" || complete=false
	wait_sync "$N" $(((60 + N / 100) * TF)) || complete=false
	sleep $((GRACE_S + 1))

	# --- measured rounds ---
	if [ "$SYSCALLS" = 1 ]; then
		strace -c -f -p "$HUB_PID" -o "$W/strace-$N.txt" 2>/dev/null &
		ST_PID=$!
		sleep 1
	fi
	rot_cpu=0; rot_wall=0; rot_user=0; rot_sys=0
	e2=$(etcd_at)
	m0=$(pf '.sent + .received')
	# At least 10,000 measured rotations (at most 50 rounds, ~1.5 s each at
	# small N): UML counts CPU time in 10 ms ticks, and a 200-node round
	# costs the hub only a few of them.
	R=$(( (10000 + N - 1) / N )); [ "$R" -lt "$ROUNDS" ] && R=$ROUNDS; [ "$R" -gt 50 ] && R=50
	[ "$ROUNDS" -gt 50 ] && R=$ROUNDS
	for r in $(seq 1 "$R"); do
		c0=$(cpu_ns "$HUB_PID"); read -r u0 s0 < <(cpu_split "$HUB_PID")
		t0=$(now_ms)
		hub_rotate "$SOCK" || complete=false
		wait_sync $((N * (r + 1))) $(((60 + N / 100) * TF)) || complete=false
		t1=$(pf '.all_in_sync_unix_ms // empty')
		sleep "$GRACE_S".3 # the hub deletes N-1's SAs one grace period after each rotation
		c1=$(cpu_ns "$HUB_PID"); read -r u1 s1 < <(cpu_split "$HUB_PID")
		rot_cpu=$((rot_cpu + c1 - c0))
		rot_wall=$((rot_wall + ${t1:-$(now_ms)} - t0))
		rot_user=$((rot_user + u1 - u0)); rot_sys=$((rot_sys + s1 - s0))
		log "N=$N: round $r: $(( ${t1:-$(now_ms)} - t0 )) ms wall, hub $(( (c1 - c0) / 1000000 )) ms CPU"
	done
	m1=$(pf '.sent + .received')
	e3=$(etcd_at)
	if [ "$SYSCALLS" = 1 ]; then
		kill -INT "$ST_PID"; wait "$ST_PID" 2>/dev/null
		log "N=$N: the hub's system calls during $R rounds of $N rotations (strace -c; CPU figures of this run are not comparable):"
		cat "$W/strace-$N.txt" >&2
	fi
	rotations=$((N * R))
	rot_cpu_s=$(fdiv "$rot_cpu" 1000000000)
	rot_wall_s=$(fdiv "$rot_wall" $((1000 * R)))
	rate=$(fdiv "$rotations" "$rot_cpu_s")
	hub_us=$(fdiv "$rot_cpu" $((rotations * 1000)))
	sa_ops_s=$(fdiv $((rotations * 5)) "$(fdiv "$rot_wall" 1000)")
	msgs=$((m1 - m0))
	msgs_per_s=$(fdiv "$msgs" "$(fdiv "$rot_wall" 1000)")
	msgs_per_cpu_s=$(fdiv "$msgs" "$rot_cpu_s")
	user_share=$(fdiv "$rot_user" $((rot_user + rot_sys)))

	# --- rounds under a flood ---
	EXTRA=0
	if [ "${FLOOD_ROUNDS:-0}" -gt 0 ]; then
		fl_wall=0; fl_cpu=0
		fm0=$(pf '.sent + .received')
		hr0=$(ip netns exec hub "$ROTOR" status --socket "$SOCK" --json | jq '.control_received')
		ip netns exec load "$LOADGEN" flood --to 10.0.0.1:4820 --duration 600s \
			--keys "$D/keys/n0.key,$D/keys/n1.key,$D/keys/n2.key" >"$W/flood.json" 2>&1 &
		FL_PID=$!
		sleep 1
		ft0=$(now_ms)
		for r in $(seq 1 "$FLOOD_ROUNDS"); do
			c0=$(cpu_ns "$HUB_PID"); t0=$(now_ms)
			hub_rotate "$SOCK" || complete=false
			wait_sync $((N * (R + r + 1))) $(((60 + N / 100) * TF)) || complete=false
			t1=$(pf '.all_in_sync_unix_ms // empty')
			sleep "$GRACE_S".3
			c1=$(cpu_ns "$HUB_PID")
			fl_cpu=$((fl_cpu + c1 - c0)); fl_wall=$((fl_wall + ${t1:-$(now_ms)} - t0))
			log "N=$N: round $r under the flood: $(( ${t1:-$(now_ms)} - t0 )) ms wall, hub $(( (c1 - c0) / 1000000 )) ms CPU"
		done
		ft1=$(now_ms)
		hr1=$(ip netns exec hub "$ROTOR" status --socket "$SOCK" --json | jq '.control_received')
		kill -INT "$FL_PID" 2>/dev/null; kill "$FL_PID" 2>/dev/null; wait "$FL_PID" 2>/dev/null
		fm1=$(pf '.sent + .received')
		junk=$(( hr1 - hr0 - (fm1 - fm0) / 2 ))
		log "N=$N: FLOOD: rotations per wall second calm $(fdiv $((N * R * 1000)) "$rot_wall"), under the flood $(fdiv $((N * FLOOD_ROUNDS * 1000)) "$fl_wall") ($(fdiv $((100 * rot_wall * FLOOD_ROUNDS)) $((fl_wall * R))) %); hub us per rotation calm $hub_us, under the flood $(fdiv "$fl_cpu" $((N * FLOOD_ROUNDS * 1000))); junk read by the hub $(fdiv $((junk * 1000)) $((ft1 - ft0)))/s; hub drops $(ip netns exec hub "$ROTOR" status --socket "$SOCK" --json | jq -c '.drops'); UDP RcvbufErrors at the hub $(ip netns exec hub nstat -az UdpRcvbufErrors | awk '$1 == "UdpRcvbufErrors" { print $2 }')"
		EXTRA=$FLOOD_ROUNDS
	fi

	# --- memory, drops, state ---
	rss=$(rss_kb "$HUB_PID"); hwm=$(hwm_kb "$HUB_PID")
	# --- restart: SIGTERM, start again with the same config and state ---
	# restart_s: exec of the new hub -> its event loop answers a control
	# request (it answers hellos from then on); resync_s: then one
	# `rotor rotate --all` completed by every node (each one's hello under
	# its restored generation answered, the new key adopted). No node may
	# re-initialise.
	inits_before=$(pf .inits)
	first=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$D/hub.toml" | head -n 1)
	kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null
	t0=$(now_ms)
	log "N=$N: restarting the hub at $(date -u +%H:%M:%S.%N)"
	ip netns exec hub env ROTOR_LOG="$HUB_LOG" "${HUB_WRAP[@]}" "$ROTOR" hub --config "$D/hub.toml" >>"$HUB_LOG_FILE" 2>&1 &
	HUB_PID=$!
	restart_s=null
	restart_cpu_s=null
	# One poller for the whole wait: a process started every 100 ms (ip
	# netns exec + rotor rotate) costs UML tens of ms of the one CPU the
	# starting hub needs. It asks what `rotor rotate --node FIRST` asks, on
	# the control socket (a path: no namespace needed), every 20 ms; a
	# connection the hub accepted before it serves waits for the answer.
	if python3 - "$SOCK" "$first" "$HUB_PID" $((600 * TF)) <<'PY'
import json, os, socket, sys, time
path, node, pid, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
req = (json.dumps({"cmd": "rotate", "node": node, "all": False}) + "\n").encode()
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(req)
            line = s.makefile().readline()
        if json.loads(line).get("ok") is True:
            sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.02)
sys.exit(1)
PY
	then
		restart_s=$(fdiv $(( $(now_ms) - t0 )) 1000)
		restart_cpu_s=$(fdiv "$(cpu_ns "$HUB_PID")" 1000000000)
	elif ! kill -0 "$HUB_PID" 2>/dev/null; then
		log "the restarted hub died:"; tail -5 "$HUB_LOG_FILE" >&2
	fi
	[ "$restart_s" = null ] && complete=false
	log "N=$N: restarted hub answers after ${restart_s}s, having used ${restart_cpu_s} CPU-s"
	# With --hub-log info: where the restart's time went.
	grep -E "configuration read|state read|state loaded|hub starting|guard in place|reconcile pass|kernel state adopted|reconciled|serving" "$HUB_LOG_FILE" | tail -n 9 >&2
	t0=$(now_ms)
	rot_before=$(pf .rotations)
	hub_rotate "$SOCK" || complete=false
	wait_sync $((rot_before + N)) $(((120 + N / 100) * TF)) || complete=false
	resync_s=$(fdiv $(( $(now_ms) - t0 )) 1000)
	restart_inits=$(( $(pf .inits) - inits_before ))
	[ "$restart_inits" = 0 ] || complete=false
	log "N=$N: after the restart every node rotated in ${resync_s}s; inits during the restart: $restart_inits"
	e4=$(etcd_at)
	etcd_fig=null
	if [ "$KIND" = etcd ]; then
		etcd_fig=$(jq -nc --argjson init "$(etcd_delta "$e0" "$e1")" --argjson rounds "$(etcd_delta "$e2" "$e3")" \
			--argjson restart "$(etcd_delta "$e3" "$e4")" --argjson after "$e4" --argjson r "$R" --argjson n "$N" '
			def per(x; d): if x == null then null else x / d end;
			{init: $init, restart: $restart, after: {db_bytes: ([$after.members[].db_bytes // empty] | max), revision: $after.revision},
			 rounds: ($rounds + {
				txn_per_round: per($rounds.txn; $r), txn_per_rotation: per($rounds.txn; $r * $n),
				put_per_round: per($rounds.put; $r), put_per_rotation: per($rounds.put; $r * $n),
				revisions_per_round: per($rounds.revisions; $r), proposals_per_round: per($rounds.proposals; $r),
				cpu_s_per_round: per($rounds.cpu_s; $r), cpu_us_per_rotation: per($rounds.cpu_s; $r * $n / 1e6)})}')
		log "N=$N: etcd over the $R measured rounds: $(jq -c .rounds <<<"$etcd_fig")"
		log "N=$N: etcd during the init: $(jq -c .init <<<"$etcd_fig"); during the restart: $(jq -c .restart <<<"$etcd_fig")"
	fi
	rss_per_node=$(fdiv $(((rss - BASE_RSS) * 1024)) "$N")
	st=$(ip netns exec hub "$ROTOR" status --socket "$SOCK" --json)
	hub_drops=$(jq -c '.drops' <<<"$st")
	hub_kernel_errors=$(jq '.kernel_errors' <<<"$st")
	hub_in_sync=$(jq '[.peers[] | select(.state == "in_sync")] | length' <<<"$st")
	# init (1), the warm-up, R measured rounds, the rotation after the restart
	want_gen=$((R + EXTRA + 3))
	hub_at_gen=$(jq --argjson g "$want_gen" '[.peers[] | select(.generation >= $g)] | length' <<<"$st")
	hub_resends=$(jq '[.peers[].resends] | add' <<<"$st")
	hub_inits=$(jq '[.peers[].inits] | add' <<<"$st")
	rcv_hub=$(rcvbuf_errors hub); rcv_load=$(rcvbuf_errors load)
	snd_drops=$(( $(softnet_drops) - snd0 ))
	lg_drops=$(pf '.drops')
	hub_drop_sum=$(jq '[.[]] | add // 0' <<<"$hub_drops")
	control_drops=$((hub_drop_sum + rcv_hub + rcv_load + snd_drops + $(pf '[.drops[]] | add // 0') + $(pf '.send_errors')))
	[ "$hub_in_sync" = "$N" ] && [ "$hub_at_gen" = "$N" ] || complete=false
	stop_all
	lg_summary=$(jq -c . "$W/loadgen.json" 2>/dev/null || echo null)
	ip netns del hub; ip netns del load
	# The next run's keys and state get the room.
	rm -rf "$D" "$STATE_HOSTFS/n$N" "$STATE_TMPFS/n$N"

	# --- the kernel floor, same boot ---
	ip netns add floor
	rep=$(( (20000 + N - 1) / N )); [ "$rep" -gt 20 ] && rep=20
	noip=()
	# ip -batch costs ~4 ms per rotation in UML (one netlink round trip per
	# operation): past 20,000 nodes it would take longer than everything else.
	[ "$N" -gt 20000 ] && noip=(--no-ip)
	fl=$(ip netns exec floor "$LOADGEN" floor --count "$N" --local 10.0.0.1 --first-remote 10.64.0.0 --addr-map "$ADDRESSING" --repeat "$rep" "${noip[@]}") ||
		{ log "floor failed"; fl=null; complete=false; }
	ip netns del floor
	floor_us=$(jq '.netlink_batch.us_per_rotation // null' <<<"$fl")
	ip_us=$(jq '.ip_batch.us_per_rotation // null' <<<"$fl")
	$complete || RC=1
	# A figure whose command failed (at 100,000 nodes the load generator
	# dies of a SIGKILL near the end and leaves no summary) is null, not
	# an empty argument that makes jq refuse the whole record.
	for v in init_wall init_cpu hub_start_s idle_cpu_per_s restart_s restart_cpu_s resync_s \
		restart_inits rotations rot_cpu_s rot_wall_s rate hub_us user_share sa_ops_s msgs \
		msgs_per_s msgs_per_cpu_s rss hwm rss_per_node hub_drops hub_kernel_errors rcv_hub \
		rcv_load snd_drops lg_drops control_drops hub_in_sync hub_at_gen hub_resends hub_inits \
		floor_us ip_us fl lg_summary etcd_fig; do
		[ -n "${!v}" ] || { printf -v "$v" null; complete=false; RC=1; }
	done

	jq -nc \
		--argjson n "$N" --argjson complete "$complete" \
		--argjson init_wall_s "$init_wall" --argjson init_hub_cpu_s "$init_cpu" --argjson init_msgs "${init_msgs:-null}" \
		--argjson hub_start_s "$hub_start_s" --argjson idle_cpu_per_s "$idle_cpu_per_s" \
		--argjson restart_s "$restart_s" --argjson restart_cpu_s "$restart_cpu_s" --argjson resync_s "$resync_s" --argjson restart_inits "$restart_inits" \
		--argjson rounds "$R" --argjson rotations "$rotations" \
		--argjson rot_cpu_s "$rot_cpu_s" --argjson rot_wall_s "$rot_wall_s" --argjson rate "$rate" \
		--argjson hub_us "$hub_us" --argjson user_share "$user_share" \
		--argjson sa_ops_s "$sa_ops_s" --argjson msgs "$msgs" --argjson msgs_per_s "$msgs_per_s" \
		--argjson msgs_per_cpu_s "$msgs_per_cpu_s" \
		--argjson rss "$rss" --argjson hwm "$hwm" --argjson base "$BASE_RSS" --argjson rss_per_node "$rss_per_node" \
		--argjson hub_drops "$hub_drops" --argjson hub_kernel_errors "$hub_kernel_errors" \
		--argjson rcv_hub "$rcv_hub" --argjson rcv_load "$rcv_load" --argjson snd_drops "$snd_drops" \
		--argjson lg_drops "$lg_drops" --argjson control_drops "$control_drops" \
		--argjson hub_in_sync "$hub_in_sync" --argjson hub_at_gen "$hub_at_gen" \
		--argjson hub_resends "$hub_resends" --argjson hub_inits "$hub_inits" \
		--argjson floor_us "$floor_us" --argjson ip_us "$ip_us" --argjson floor "$fl" \
		--argjson loadgen "$lg_summary" --argjson etcd "$etcd_fig" --argjson start_attempts "$START_ATTEMPTS" --arg lease_ttl "$LEASE_TTL" --arg hello "$HELLO" --arg hub_log "$HUB_LOG" \
		--argjson profile "$PROFILE" --arg addressing "$ADDRESSING" --arg state_fs "$KIND" --argjson ratchet_every "$RATCHET_EVERY" '{
		n: $n, complete: $complete,
		rotations_per_hub_cpu_s: $rate,
		kernel_floor_us_per_rotation: $floor_us,
		hub_us_per_rotation: $hub_us,
		hub_vs_floor: (if $floor_us then $hub_us / $floor_us else null end),
		ip_batch_us_per_rotation: $ip_us,
		hub_vs_ip_batch: (if $ip_us then $hub_us / $ip_us else null end),
		strongswan_rekeys_per_hub_cpu_s: null,
		hub_rss_bytes_per_node: $rss_per_node,
		control_drops: $control_drops,
		init_wall_s: $init_wall_s, init_hub_cpu_s: $init_hub_cpu_s, init_msgs: $init_msgs,
		hub_start_s: $hub_start_s, hub_idle_cpu_share: $idle_cpu_per_s,
		restart_s: $restart_s, restart_hub_cpu_s: $restart_cpu_s, restart_resync_s: $resync_s, restart_inits: $restart_inits,
		rounds: $rounds, rotations: $rotations, rotation_hub_cpu_s: $rot_cpu_s,
		rotation_wall_s: $rot_wall_s, rotation_user_share: $user_share,
		kernel_sa_ops_per_rotation: 5, kernel_sa_ops_per_s: $sa_ops_s,
		control_msgs: $msgs, control_msgs_per_s: $msgs_per_s, control_msgs_per_hub_cpu_s: $msgs_per_cpu_s,
		hub_rss_kb: $rss, hub_hwm_kb: $hwm, hub_1node_rss_kb: $base,
		drops: {hub: $hub_drops, hub_rcvbuf_errors: $rcv_hub, load_rcvbuf_errors: $rcv_load,
		        softnet: $snd_drops, loadgen: $lg_drops},
		hub_kernel_errors: $hub_kernel_errors, hub_in_sync: $hub_in_sync, hub_at_generation: $hub_at_gen,
		hub_resends: $hub_resends, hub_inits: $hub_inits,
		etcd: $etcd, hub_start_attempts: $start_attempts, lease_ttl: (if $lease_ttl == "" then null else $lease_ttl end),
		floor: $floor, loadgen: $loadgen, hello_interval: $hello, hub_log: $hub_log, addressing: $addressing, state_fs: $state_fs, ratchet_every: $ratchet_every, profiled: ($profile == 1)
		}' | sed 's/^/BENCH-JSON /'
done
done
if [ "$PROFILE" = 1 ]; then
	log "callgrind output: $PROF/callgrind.out.hub.* (one part per control request: the parts after the warm-up rotation's are the measured rounds; callgrind_annotate them)"
	ls -l "$PROF"/callgrind.out.hub* >&2
fi
exit $RC
