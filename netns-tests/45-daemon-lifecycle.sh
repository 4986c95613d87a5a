#!/bin/bash
# L1-L3, L6, L8: the daemons' lifecycle under a 100 packets/s probe stream
# each way per node, rotating every 2 s, with the wire at the hub captured
# throughout:
#  L1 SIGTERM the hub and start it again at once (as `systemctl restart`
#     does): nothing lost, no node re-initialises
#  L2 the same for node n1
#  L3 kill -9 the hub, then node n2, each restarted 1 s later: outage bounded
#     (stated), no init
#  L6 a second `rotor hub` with the same config while the first runs: refused
#     by the state lock before any kernel change; the first loses nothing
#  every probe packet on the wire is ESP, none in clear
# then
#  L8 every daemon killed, its SAs reach their hard lifetime (20 s) in the
#     kernel: they are gone, the policies still block (nothing in clear, on
#     the wire); restarted, the daemons resume without init and traffic flows.
. "$(dirname "$0")/daemon-lib.sh"
N=2
RATE=100
SA_LIFETIME=20s
topo_up $N
# A node waits retries x hello = 10 s for an answer before it falls back to
# init. A hub restart in UML takes far longer than on hardware: with four
# probe streams competing for UML's one CPU, starting a process and running
# iptables-save cost seconds; 2.3-4.2 s from SIGTERM to the first answer were
# seen here, more on a slower host. The restart times are measured below and
# bounded at 7 s, so a slow restart fails as what it is, not as an init.
configs $N 2s 500ms 20
now_ms() { date +%s%3N; }
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "every node initialised and both sides send" wait_all_sending $N 20
WIRE_SECONDS=36 probes $N 38 $RATE &
PROBES=$!
sleep 4
t0=$(now_ms)
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null
policies_stopped=$(ip -n hub xfrm policy | grep -c '^src')
sas_stopped=$(ip -n hub xfrm state | grep -c '^src')
start_hub
l1_ms=$(($(now_ms) - t0))
echo "  t=4s: L1 hub stopped with SIGTERM ($policies_stopped policies, $sas_stopped SAs left in the kernel), restarted"
sleep 6
kill "$NODE_PID_1"; wait "$NODE_PID_1" 2>/dev/null
start_node 1
echo "  t=11s: L2 n1 stopped with SIGTERM, restarted"
sleep 6
t0=$(now_ms)
kill -9 "$HUB_PID"
sleep 1
start_hub
l3_ms=$(($(now_ms) - t0))
echo "  t=18s: L3 hub killed with -9, restarted"
sleep 6
kill -9 "$NODE_PID_2"
sleep 1
start_node 2
echo "  t=25s: L3 n2 killed with -9, restarted"
sleep 6
ip netns exec hub "$ROTOR" hub --config "$WORK/hub.toml" >"$WORK/second.log" 2>&1
second_rc=$?
echo "  t=31s: L6 a second hub with the same config exited $second_rc: $(tail -n 1 "$WORK/second.log")"
wait "$PROBES"
echo "  the wire at the hub's bridge port, 36 s of frames: $(cat "$WORK/wire.json")"
check "L1-L6: on the wire the probe streams are ESP only, both ways, through every restart" python3 -c "
import json; d=json.load(open('$WORK/wire.json')); raise SystemExit(0 if d['esp'] > 3000 and d['plain_probe'] == 0 else 1)"
check "L1: the stopped hub left its policies ($policies_stopped) and SAs ($sas_stopped) in the kernel" test "$policies_stopped" -ge $N -a "$sas_stopped" -ge $((2 * N))
# missing sequence numbers in [FROM, TO) of one stream
missing_in() {
	python3 -c "
import json
m=json.load(open('$WORK/probe-$2-$1.json'))['missing']
print(sum(1 for s in m if $3 <= s < $4))"
}
for i in 1 2; do
	for d in up down; do
		# t=2..16 s: the hub's and n1's SIGTERM restarts (L1, L2)
		check "L1+L2: n$i $d lost nothing around the graceful restarts ($(missing_in $i $d 200 1600) missing)" test "$(missing_in $i $d 200 1600)" -eq 0
		# t=29..38 s: the second instance (L6)
		check "L6: n$i $d lost nothing while a second hub was refused ($(missing_in $i $d 2900 3800) missing)" test "$(missing_in $i $d 2900 3800)" -eq 0
	done
done
check "L3: every outage (kill -9 restarts) under 1000 ms" outage_report $N $RATE 1000
echo "FIGURES L1+L3: the hub answered ${l1_ms} ms after SIGTERM, ${l3_ms} ms after kill -9 (1 s of it down on purpose)"
check "L1: the hub answered within 7 s of SIGTERM (${l1_ms} ms)" test "$l1_ms" -le 7000
check "L3: the hub answered within 7 s of kill -9 (${l3_ms} ms)" test "$l3_ms" -le 7000
check "L6: the second hub was refused (exit $second_rc)" test "$second_rc" -ne 0
check "L6: it named the lock and the running instance" grep -q "another rotor" "$WORK/second.log"
for i in $(seq 1 $N); do
	check "L1-L3: n$i never re-initialised (hub's count $(peer_field n$i inits))" test "$(peer_field n$i inits)" -eq 1
done
# While a daemon is down its control port is closed: the peer's datagrams to
# it draw an ICMP port unreachable, sent in clear, which the receiver's
# inbound policy refuses (XfrmInTmplMismatch). Every other counter stays 0.
for ns in $(ip netns list | awk '{print $1}'); do
	bad=$(ip netns exec "$ns" awk '$2 != 0 && $1 != "XfrmInTmplMismatch"' /proc/net/xfrm_stat)
	check "L1-L6: no XFRM errors in $ns but the ICMP of closed control ports ($(echo $bad))" test -z "$bad"
done
figures L1-L6 $N $RATE
inits_before=$(hub_status | python3 -c "import json,sys; print(' '.join(str(p['inits']) for p in json.load(sys.stdin)['peers']))")
# L8
kill -9 "$HUB_PID" "$NODE_PID_1" "$NODE_PID_2"
sleep 22
for ns in hub n1 n2; do
	check "L8: $ns's SAs expired with the daemon dead ($(ip -n $ns xfrm state | grep -c '^src') left)" test "$(ip -n $ns xfrm state | grep -c '^src')" -eq 0
	check "L8: $ns's policies stay and block ($(ip -n $ns xfrm policy | grep -c '^src'))" test "$(ip -n $ns xfrm policy | grep -c '^src')" -ge 1
done
WIRE_SECONDS=3 probes $N 4 $RATE
check "L8: with the keys expired no probe arrives and none is on the wire in clear ($(cat "$WORK/wire.json"))" python3 -c "
import json
d=json.load(open('$WORK/wire.json'))
runs=[json.load(open(f'$WORK/probe-{x}-{i}.json')) for x in ('up','down') for i in range(1, $N + 1)]
sent=sum(r['expected'] for r in runs); got=sum(r['received'] for r in runs)
print(f'  probes sent {sent}, received {got}')
raise SystemExit(0 if d['plain_probe'] == 0 and got == 0 and sent > 0 else 1)"
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "L8: restarted after expiry, both sides send again" wait_all_sending $N 10
sleep 3
probes $N 5 $RATE
check "L8: zero probe packets lost once recovered" probe_report $N
inits_after=$(hub_status | python3 -c "import json,sys; print(' '.join(str(p['inits']) for p in json.load(sys.stdin)['peers']))")
check "L8: recovered by re-keying, not by init (inits $inits_before -> $inits_after)" test "$inits_before" = "$inits_after"
echo "daemon lifecycle: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
