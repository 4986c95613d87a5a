#!/bin/bash
# S4 node restart and S5 hub crash, under a 200 packets/s probe stream each
# way per node:
#  S4 kill -9 node n2, delete its durable state (a node that lost its disk)
#     and start it again: it re-initialises with the init key; its outage is
#     printed; n1 and n3 lose nothing then.
#  S5 kill -9 the hub, flush its SAs and policies (as a reboot would), start it
#     again: it resumes from its durable state, re-installs what it safely can
#     and re-keys the rest; no node re-initialises; each outage stays under
#     retries x hello interval + 2 s.
. "$(dirname "$0")/daemon-lib.sh"
N=3
HELLO_MS=500
# A node waits about (retries + 1) x hello_interval for a silent hub: 3 s
# here, above the 1.5-2 s a killed hub takes in UML to answer again (exec,
# state, ESP probe, reconcile). With retries 3 the two raced and nodes
# sometimes re-initialised (harmless, but not what S5 asserts).
RETRIES=5
topo_up $N
configs $N 1s ${HELLO_MS}ms $RETRIES
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "every node initialised and both sides send" wait_all_sending $N 20
probes $N 30 200 &
PROBES=$!
sleep 5
inits_before=$(peer_field n2 inits)
kill -9 "$NODE_PID_2"
rm -f "$WORK"/state/node-n2.*
start_node 2
echo "  t=5s: n2 killed with -9, its state deleted, restarted"
sleep 10
check "S4: n2 re-initialised (inits $inits_before -> $(peer_field n2 inits))" test "$(peer_field n2 inits)" -gt "$inits_before"
inits_before_crash=$(hub_status | python3 -c "import json,sys; print(' '.join(str(p['inits']) for p in json.load(sys.stdin)['peers']))")
kill -9 "$HUB_PID"
ip -n hub xfrm state flush
ip -n hub xfrm policy flush
start_hub
echo "  t=15s: hub killed with -9, its SAs and policies flushed, restarted"
wait "$PROBES"
BOUND=$((RETRIES * HELLO_MS + 2000))
check "S4+S5: every outage under $BOUND ms (retries x hello + 2 s)" outage_report $N 200 $BOUND
# n2 restarts at t=5 s (sequence ~1000 at 200/s), the hub crashes at t>=15 s
# (sequence >= 3000): n1 and n3 must miss nothing before t=10 s.
first_missing() {
	python3 -c "
import json
m=json.load(open('$WORK/probe-$2-$1.json'))['missing']
print(min(m) if m else 1000000)"
}
for i in 1 3; do
	for d in up down; do
		check "S4: n$i $d lost nothing around n2's restart (first missing seq $(first_missing $i $d) >= 2000)" test "$(first_missing $i $d)" -ge 2000
		check "S4+S5: n$i $d: one outage at most (the hub crash)" test "$(runs_of $i $d)" -le 1
	done
done
for d in up down; do
	check "S4+S5: n2 $d: at most two outages (its restart, the hub crash)" test "$(runs_of 2 $d)" -le 2
done
hub_status | python3 -c "
import json,sys
for p in json.load(sys.stdin)['peers']:
    print(f\"  {p['name']}: generation={p['generation']} inits={p['inits']} state={p['state']}\")"
check "S5: the restarted hub sends to every node again" wait_all_sending $N 10
inits_after=$(hub_status | python3 -c "import json,sys; print(' '.join(str(p['inits']) for p in json.load(sys.stdin)['peers']))")
check "S5: no node re-initialised after the hub's crash and flush (inits $inits_before_crash -> $inits_after)" test "$inits_before_crash" = "$inits_after"
figures S4+S5 $N 200
echo "daemon restarts: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
