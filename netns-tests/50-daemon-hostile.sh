#!/bin/bash
# S6 hostile input: random, truncated, bit-flipped, forged datagrams and
# replays of captured genuine control messages, sent to the hub and to a node
# while probes run: no crash, no state change (status before = after, apart
# from last_seen), drop counters rise, zero data lost.
. "$(dirname "$0")/daemon-lib.sh"
N=2
topo_up $N
configs $N 1h 500ms   # no rotation during the test: state must stay still
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "every node initialised and both sides send" wait_all_sending $N 20
sleep 1
captured=$(ip netns exec hub python3 "$HERE/hostile.py" capture --iface veth0 --seconds 3 --out "$WORK/samples.json" | python3 -c "import json,sys; print(json.load(sys.stdin)['captured'])")
check "S6: genuine control messages captured for replay ($captured)" test "$captured" -ge 4
snapshot() { # hub and node statuses without last_seen_ms and key_age_ms (clocks)
	{
		hub_status
		for i in $(seq 1 $N); do ip netns exec n$i "$ROTOR" status --socket "$WORK/n$i.sock" --json; done
	} | python3 -c "
import json,sys
for line in sys.stdin:
    d=json.loads(line)
    for p in d['peers']:
        p.pop('last_seen_ms', None)
        p.pop('key_age_ms', None)
    print(json.dumps(d['peers'], sort_keys=True))"
}
drops() { # total drops of the hub, or of node I
	if [ "$1" = hub ]; then hub_status; else ip netns exec n$1 "$ROTOR" status --socket "$WORK/n$1.sock" --json; fi |
		python3 -c "import json,sys; print(sum(json.load(sys.stdin)['drops'].values()))"
}
# The control port is also the ESP-in-UDP port: a datagram that does not
# start with the non-ESP marker is the kernel's to drop (as ESP under an
# SPI no SA has), never rotor's. Both count.
kernel_drops() { # XFRM input errors of namespace NS
	ip netns exec "$1" awk '$1 ~ /^XfrmIn/ { s += $2 } END { print s + 0 }' /proc/net/xfrm_stat
}
before=$(snapshot)
hd0=$(( $(drops hub) + $(kernel_drops hub) )); nd0=$(( $(drops 1) + $(kernel_drops n1) ))
probes $N 12 200 &
PROBES=$!
ip netns exec n2 python3 "$HERE/hostile.py" attack --to 10.9.0.1:4820 --samples "$WORK/samples.json" --count 2000 --seed 1
ip netns exec hub python3 "$HERE/hostile.py" attack --to 10.9.0.2:4820 --samples "$WORK/samples.json" --count 1000 --seed 2
wait "$PROBES"
after=$(snapshot)
hd1=$(( $(drops hub) + $(kernel_drops hub) )); nd1=$(( $(drops 1) + $(kernel_drops n1) ))
echo "  hub drops (rotor + kernel) $hd0 -> $hd1, n1 drops $nd0 -> $nd1 (kernel: hub $(kernel_drops hub), n1 $(kernel_drops n1))"
check "S6: hub and nodes still running" kill -0 "$HUB_PID" "$NODE_PID_1" "$NODE_PID_2"
check "S6: no state change in hub or nodes (status before = after)" test "$before" = "$after"
check "S6: hub drop counters rose by the attack (>= 1900 of 2000)" test $((hd1 - hd0)) -ge 1900
check "S6: node drop counters rose by the attack (>= 950 of 1000)" test $((nd1 - nd0)) -ge 950
check "S6: zero probe packets lost during the attack" probe_report $N
reasons() { # the drop counters by reason, of the hub or of node I
	if [ "$1" = hub ]; then hub_status; else ip netns exec n$1 "$ROTOR" status --socket "$WORK/n$1.sock" --json; fi |
		python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)['drops'], sort_keys=True))"
}
echo "  hub drops by reason: $(reasons hub)"
echo "  n1 drops by reason: $(reasons 1)"
check "S6: the hub told >= 4 kinds of bad input apart" test "$(reasons hub | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")" -ge 4
figures S6 $N 200
echo "daemon hostile: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { echo "before: $before"; echo "after: $after"; tail -n 30 "$WORK/hub.log"; exit 1; }
