#!/bin/bash
# F2, a rolling restart of a hub pair on etcd, and etcd members lost under
# it. The rig of 87: hubs A (namespace hub) and B (hubb) share one etcd
# prefix (etcd-lib.sh's three members) and the service address 10.9.0.1/24
# on the nodes' LAN, neither holding another address there. Two nodes
# rotate every second and stream 100 probe packets/s each to the service
# address (ESP with the node->hub SA); a receiver listens on it in each
# hub's namespace. The other way, each hub's namespace sends one stream to
# each node, both hubs the same sequence numbers at the same times (probe.py
# send --start-at): whichever holds the service address sends (the other
# has no route), so a node's receiver sees one stream across the
# hand-overs. The nodes' bridge ports are captured for the whole restart.
#  1 A leads, B waits (a warm copy: it read the records and follows them)
#  2 the rolling restart under traffic, each hub stopped with SIGTERM and
#    started again as a service manager would:
#    a the standby B restarted: A keeps the lead
#    b the leader A stopped: it hands over make-before-break (B installs
#      every SA and policy, then takes and announces the address, marks
#      itself serving; only then A gives the address up and exits 0); A
#      started again waits as the standby
#    c the leader B stopped the same way: A leads again (with the kernel
#      objects it kept, compared and completed before it takes the address);
#      B started again waits
#    checked: every probe packet arrives at one hub or the other (0 lost;
#    each outage reported with the step it fell in); hub to node, at most
#    one outage per hand-over, each within DOWN_BOUND_MS (below: the new
#    leader cannot send on the SAs the old one sent on, so each node's
#    traffic waits for its first re-key); no node re-initialises,
#    no probe packet in clear on the wire, the old leader gave the address
#    up only after the new one marked itself serving and sent no ARP frame
#    claiming it meanwhile (ha-lib.sh makes the hubs probe their
#    neighbours every 1.5-2.5 s), the new leader's kernel holds every
#    node's SAs
#  3 etcd's leader member killed (-9), then (after it rejoined) a follower:
#    A keeps the lead and keeps rotating, B stays the standby, no step-down,
#    no node re-initialises
. "$(dirname "$0")/daemon-lib.sh"
. "$(dirname "$0")/etcd-lib.sh"
. "$(dirname "$0")/ha-lib.sh"
trap 'etcd_cleanup; cleanup' EXIT
N=2
PREFIX=rotor/f2
RATE=100
# Part 3 kills etcd's leader: the lead survives only if a renewal gets
# through within TTL - 0.5 s (86 needed 6 s under CI's load). A hand-over
# revokes the lease and does not wait for it.
TTL_S=6
RETRIES=14
# Hub to node after a hand-over: the old leader sends until it gives the
# address up, once the new one serves; the new one sends once it re-keyed
# the node (one control round trip, started in its first step, often done
# before the address moves). A bound for a round trip through a loaded UML,
# not a target.
DOWN_BOUND_MS=1000
ha_pair_up $N $PREFIX $TTL_S $RETRIES

declare -A NS=([A]=hub [B]=hubb) SOCK=([A]="$WORK/hub.sock" [B]="$WORK/hubb.sock") CONF=([A]="$WORK/hub.toml" [B]="$WORK/hubb.toml")
declare -A PID=() LOG=() RUNS=([A]=0 [B]=0)
# start_hub_x X: start hub X (A or B) again, with a log of its own per run
start_hub_x() {
	local x=$1
	RUNS[$x]=$((RUNS[$x] + 1))
	LOG[$x]="$WORK/hub$x-${RUNS[$x]}.log"
	: >"${LOG[$x]}"
	ip netns exec "${NS[$x]}" "$ROTOR" hub --config "${CONF[$x]}" >"${LOG[$x]}" 2>&1 &
	PID[$x]=$!
	PIDS+=("${PID[$x]}")
}
status_x() { ha_status "${NS[$1]}" "${SOCK[$1]}"; }
# field_x X PEER FIELD
field_x() { ha_field "${NS[$1]}" "${SOCK[$1]}" "$2" "$3"; }
sending_x() { ha_sending "${NS[$1]}" "${SOCK[$1]}" $N; }
inits_all() { echo "$(field_x "$1" n1 inits) $(field_x "$1" n2 inits) / $(node_inits 1) $(node_inits 2)"; }
has_svc() { ha_has_svc "${NS[$1]}"; }
no_svc() { ! has_svc "$1"; }
sas_with() { ha_sas_with "${NS[$1]}" "$2"; }
sas_of() { ha_sas_of "${NS[$1]}"; }
logged() { grep -q "$2" "${LOG[$1]}"; }
waiting_x() { logged "$1" "standby: waiting to lead"; }
serving_x() { logged "$1" "INFO serving"; }
exited_x() { ! kill -0 "${PID[$1]}" 2>/dev/null; }
# stamp FILE PATTERN: the first matching line's time (RFC 3339: sorts as text)
stamp() { grep -m1 "$2" "$1" | cut -d' ' -f1; }

# 1
start_hub_x A
check "1: A leads and serves" wait_ms 20000 serving_x A || { tail -n 20 "${LOG[A]}"; exit 1; }
for i in $(seq 1 $N); do start_node "$i"; done
check "1: every node initialised and A sends to each" wait_ms 20000 sending_x A
start_hub_x B
check "1: B waits as the standby" wait_ms 15000 waiting_x B
check "1: A holds the service address, B does not" eval 'has_svc A && no_svc B'
check "1: the standby B installed no SA (SAs: $(sas_of B))" test "$(sas_of B)" = 0
check "1: the standby B's clear-text guard is in, its set empty ($(ha_standby_guard hubb))" ha_standby_guard hubb
sleep 2
inits0=$(inits_all A)

# 2: probes for the whole rolling restart, the nodes' ports captured.
rm -f "$WORK"/sent-* "$WORK"/ready-* "$WORK"/probe-*.json "$WORK"/wire-*.json "$WORK/stop"
# A cap: the streams and captures end when the restart is done ($WORK/stop).
DUR=90
BG=() # the streams, receivers and captures (not etcd's members)
for i in $(seq 1 $N); do
	for x in A B; do
		ip netns exec "${NS[$x]}" $PROBE recv --bind "$SVC:$((5000 + i))" --duration $((DUR + 5)) --sent-file "$WORK/sent-$i" --ready-file "$WORK/ready-$x-$i" >"$WORK/probe-$x-$i.json" &
		BG+=($!)
	done
done
for i in $(seq 1 $N); do
	ip netns exec "n$i" $PROBE recv --bind "$(outer "$i"):$((5500 + i))" --duration $((DUR + 5)) --sent-file "$WORK/down-sent-A-$i" --ready-file "$WORK/ready-n$i" >"$WORK/down-$i.json" &
	BG+=($!)
done
for _ in $(seq 1 100); do
	[ "$(ls "$WORK"/ready-* 2>/dev/null | wc -l)" -ge $((3 * N)) ] && break
	sleep 0.1
done
for i in $(seq 1 $N); do
	ip netns exec lan python3 "$HERE/wire_check.py" --iface "p$i" --seconds "$DUR" --stop-file "$WORK/stop" >"$WORK/wire-$i.json" &
	BG+=($!)
done
# The hubs' control datagrams on the wire (from the service address, UDP
# source port 4820), with their times, per hub port (A: p0, B: pb): which
# hub sent to the nodes when; and the ARP frames whose sender is the
# service address (arp_p0, arp_pb): which hub claimed it when.
ip netns exec lan python3 - "$SVC" "$WORK/stop" >"$WORK/ctl.json" <<'PY' &
import json, os, select, socket, struct, sys
svc, stop = socket.inet_aton(sys.argv[1]), sys.argv[2]
SO_TIMESTAMP = 29  # the kernel's receive time: this process may run late
socks = {}
for port in ("p0", "pb"):
    # ETH_P_ALL: on a bridge port, taps for one protocol see no frame (the
    # bridge takes it first).
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    s.bind((port, 0))
    socks[s] = port
seen = {"p0": [], "pb": [], "arp_p0": [], "arp_pb": [], "what_p0": [], "what_pb": []}
while not os.path.exists(stop):
    for s in select.select(list(socks), [], [], 0.2)[0]:
        f, anc, _, addr = s.recvmsg(2048, 64)
        if addr[2] == socket.PACKET_OUTGOING:
            continue  # the bridge's flooding to this port, not the hub's frame
        ip = f[14:]
        if f[12:14] == b"\x08\x06" and len(ip) >= 28 and ip[14:18] == svc:
            key = "arp_" + socks[s]
        elif f[12:14] != b"\x08\x00" or len(ip) < 28 or ip[9] != 17 or ip[12:16] != svc:
            continue
        elif int.from_bytes(ip[(ip[0] & 0x0F) * 4:][0:2], "big") != 4820:
            continue
        else:
            key = socks[s]
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
                sec, usec = struct.unpack("qq", data[:16])
                seen[key].append(sec + usec / 1e6)
                if key.startswith("arp_"):
                    # op (1 request, 2 reply), target IP, destination MAC
                    seen["what_" + socks[s]].append(
                        [sec + usec / 1e6, ip[7], socket.inet_ntoa(ip[24:28]), f[0:6].hex(":")])
print(json.dumps(seen))
PY
BG+=($!)
T_STREAM=$(etcd_ms)
for i in $(seq 1 $N); do
	(ip netns exec "n$i" $PROBE send --to "$SVC:$((5000 + i))" --rate $RATE --duration $DUR --stop-file "$WORK/stop" >"$WORK/sent-$i.tmp" && mv "$WORK/sent-$i.tmp" "$WORK/sent-$i") &
	BG+=($!)
done
T_DOWN=$(python3 -c 'import time; print(f"{time.time() + 0.5:.3f}")')
for i in $(seq 1 $N); do
	for x in A B; do
		(ip netns exec "${NS[$x]}" $PROBE send --to "$(outer "$i"):$((5500 + i))" --rate $RATE --duration $DUR --stop-file "$WORK/stop" --start-at "$T_DOWN" >"$WORK/down-sent-$x-$i.tmp" && mv "$WORK/down-sent-$x-$i.tmp" "$WORK/down-sent-$x-$i") &
		BG+=($!)
	done
done
STEPS=""
mark() { STEPS+="$1@$(($(etcd_ms) - T_STREAM)) "; }
sleep 3

# 2a: the standby restarted.
mark 2a
kill -TERM "${PID[B]}"
wait "${PID[B]}" 2>/dev/null
start_hub_x B
check "2a: B restarted waits as the standby" wait_ms 15000 waiting_x B
check "2a: A still leads and sends to every node" sending_x A
sleep 2

# hand_over OLD NEW LABEL: SIGTERM to the leader OLD; NEW takes over.
hand_over() {
	local old=$1 new=$2 l=$3 t0 rc t_serve t_exit mark_new gave_old
	mark "$l"
	t0=$(etcd_ms)
	kill -TERM "${PID[$old]}"
	check "$l: $new leads and serves" wait_ms 20000 serving_x "$new"
	t_serve=$(($(etcd_ms) - t0))
	check "$l: $old exits" wait_ms 20000 exited_x "$old"
	t_exit=$(($(etcd_ms) - t0))
	wait "${PID[$old]}" 2>/dev/null
	rc=$?
	check "$l: $old exits with status 0 (rc $rc)" test "$rc" = 0
	check "$l: $old stopped its loop before it revoked its lease" test "$(stamp "${LOG[$old]}" 'INFO stopped;')" \< "$(stamp "${LOG[$old]}" 'handing over: revoking')"
	check "$l: $old revoked its lease before $new led" test "$(stamp "${LOG[$old]}" 'handing over: revoking')" \< "$(stamp "${LOG[$new]}" 'INFO leading')"
	mark_new=$(stamp "${LOG[$new]}" "marked serving")
	gave_old=$(stamp "${LOG[$old]}" "service address given up")
	check "$l: $new took the address and marked itself serving ($mark_new) before $old gave it up ($gave_old)" test -n "$mark_new" -a -n "$gave_old" -a "$mark_new" \< "$gave_old"
	check "$l: $old waited for $new to serve" logged "$old" "the next leader serves"
	check "$l: $new holds the service address, $old does not" eval "has_svc $new && no_svc $old"
	check "$l: $new sends to every node" wait_ms 10000 sending_x "$new"
	for i in $(seq 1 $N); do
		check "$l: $new's kernel holds the SAs of n$i ($(sas_with "$new" "$i"))" sas_with "$new" "$i"
		check "$l: $old's kernel kept the SAs of n$i ($(sas_with "$old" "$i"))" sas_with "$old" "$i"
	done
	echo "  $l: SIGTERM to $old -> $new serving after ${t_serve} ms, $old gone after ${t_exit} ms; takeover $(grep -m1 'warm copy completed' "${LOG[$new]}" | grep -o 'changed=[0-9]* .*ms=[0-9]*')"
	echo "  $l: $new: won $(stamp "${LOG[$new]}" 'INFO leading'), marked serving $mark_new; $old: address given up $gave_old"
	start_hub_x "$old"
	check "$l: $old started again waits as the standby" wait_ms 15000 waiting_x "$old"
	check "$l: $old holds no service address" no_svc "$old"
}
hand_over A B 2b
sleep 2
hand_over B A 2c
sleep 2
mark end
touch "$WORK/stop"
for j in "${BG[@]}"; do wait "$j"; done
echo "  steps (ms into the streams): $STEPS"
report() {
	local i bad=0
	for i in $(seq 1 $N); do
		$PROBE outages --rate $RATE --max-runs 0 --at --label "n$i up (at A/B)" "$WORK/probe-A-$i.json" "$WORK/probe-B-$i.json" || bad=1
	done
	return $bad
}
check "2: every probe packet arrived at one hub or the other" report
report_down() {
	local i bad=0
	for i in $(seq 1 $N); do
		$PROBE outages --rate $RATE --bound $DOWN_BOUND_MS --max-runs 2 --at --label "n$i down (from A or B)" "$WORK/down-$i.json" || bad=1
	done
	return $bad
}
check "2: hub to node, at most one outage per hand-over, each within ${DOWN_BOUND_MS} ms" report_down
for i in $(seq 1 $N); do
	check "2: n$i's port: ESP on the wire, no probe packet in clear ($(cat "$WORK/wire-$i.json" | cut -c1-120))" python3 -c "
import json; d=json.load(open('$WORK/wire-$i.json')); raise SystemExit(0 if d['esp'] > 1000 and d['plain_probe'] == 0 else 1)"
done
# ctl_after PORT RFC3339 [UNTIL]: control datagrams on PORT after that time
# (and before UNTIL)
ctl_after() {
	python3 - "$WORK/ctl.json" "$@" <<'PY'
import datetime, json, sys
seen = json.load(open(sys.argv[1]))[sys.argv[2]]
t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
lo = t(sys.argv[3])
hi = t(sys.argv[4]) if len(sys.argv) > 4 else float("inf")
print(sum(1 for x in seen if lo < x < hi))
PY
}
# Runs: A1 led, B2 (restarted in 2a) took over in 2b, A2 (restarted in 2b)
# in 2c. The old leader's port carries no control datagram from its
# revocation until it leads again; the new one's does once it serves.
a_rev=$(stamp "$WORK/hubA-1.log" 'handing over: revoking')
b_srv=$(stamp "$WORK/hubB-2.log" 'INFO serving')
b_rev=$(stamp "$WORK/hubB-2.log" 'handing over: revoking')
a_srv=$(stamp "$WORK/hubA-2.log" 'INFO serving')
n_a=$(ctl_after p0 "$a_rev" "$a_srv")
n_b=$(ctl_after pb "$b_srv" "$b_rev")
check "2b: no control datagram left A between its revocation and its next lead ($n_a); B sent $n_b while it led" test "$n_a" = 0 -a "$n_b" -gt 0
n_b=$(ctl_after pb "$b_rev")
n_a=$(ctl_after p0 "$a_srv")
check "2c: no control datagram left B after its revocation ($n_b); A sent $n_a once it led again" test "$n_b" = 0 -a "$n_a" -gt 0
# The old leader holds the address for a second after the new one's mark:
# an ARP frame from it with the service address as sender (its kernel
# probing a node) would move that node back to it. The new one's port
# carries its announcements from the moment it takes the address (the
# capture's own check).
# no_claim LABEL OLD NEW OLD_PORT NEW_PORT OLD_LOG NEW_LOG
no_claim() {
	local take mark gave n_old n_new
	take=$(stamp "$7" 'service address taken')
	mark=$(stamp "$7" 'marked serving')
	gave=$(stamp "$6" 'service address given up')
	n_old=$(ctl_after "arp_$4" "$mark" "$gave")
	n_new=$(ctl_after "arp_$5" "$take" "$gave")
	check "$1: no ARP frame claimed the service address from $2 between $3's mark and $2 giving it up ($n_old; from $3 since it took it: $n_new)" test "$n_old" = 0 -a "$n_new" -gt 0
}
no_claim 2b A B p0 pb "$WORK/hubA-1.log" "$WORK/hubB-2.log"
no_claim 2c B A pb p0 "$WORK/hubB-2.log" "$WORK/hubA-2.log"
inits2=$(inits_all A)
check "2: no node re-initialised (hub / nodes: $inits0 -> $inits2)" test "$inits0" = "$inits2"

# 3: etcd members lost under the pair.
lost_member() {
	local l=$1 victim=$2 role=$3 g0 g1
	g0=$(field_x A n1 generation)
	etcd_kill "$victim"
	echo "  $l: etcd member $victim ($role) killed"
	sleep $((TTL_S + 2))
	g1=$(field_x A n1 generation)
	check "$l: A kept rotating (n1 generation $g0 -> $g1)" test "${g1:-0}" -ge $((g0 + TTL_S / 2))
	check "$l: A is still running and never stepped down" eval "kill -0 ${PID[A]} && ! logged A 'stepping down'"
	check "$l: A holds the service address" has_svc A
	check "$l: B is still the standby (running, not leading, no address)" eval "kill -0 ${PID[B]} && ! logged B 'INFO leading' && no_svc B"
	etcd_start "$victim"
	check "$l: member $victim rejoined" etcd_healthy 20
}
L=$(etcd_leader)
check "3: etcd has a leader ($L)" test -n "$L"
lost_member 3a "${L:-1}" "the leader"
L=$(etcd_leader)
F=$(for i in 1 2 3; do [ "$i" != "$L" ] && echo "$i" && break; done)
lost_member 3b "$F" "a follower of $L"
inits3=$(inits_all A)
check "3: no node re-initialised (hub / nodes: $inits2 -> $inits3)" test "$inits2" = "$inits3"
echo "daemon HA rolling restart: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || {
	for f in "$WORK"/hub[AB]-*.log; do echo "--- $f"; tail -n 25 "$f"; done
	exit 1
}
