#!/bin/bash
# S1 steady: a hub and 3 nodes (transport mode) rotating every second, a
# 200 packets/s probe stream each way per node through ESP; zero missing
# sequence numbers, no XFRM errors in any namespace, >= DURATION-5 rotations
# per node, one init each.
. "$(dirname "$0")/daemon-lib.sh"
N=3
DURATION=${ROTOR_S1_SECONDS:-60}
topo_up $N
configs $N 1s 500ms
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "S1: every node initialised and both sides send" wait_all_sending $N 20
probes $N "$DURATION" 200
check "S1: zero probe packets lost, both directions, every node" probe_report $N
for ns in hub n1 n2 n3; do check "S1: no XFRM errors in $ns" xfrm_clean $ns; done
hub_status | python3 -c "
import json,sys
for p in json.load(sys.stdin)['peers']:
    print(f\"  {p['name']}: generation={p['generation']} rotations={p['rotations']} resends={p['resends']} inits={p['inits']} state={p['state']}\")"
for i in $(seq 1 $N); do
	r=$(peer_field n$i rotations)
	check "S1: n$i rotated at least $((DURATION - 5)) times (did $r)" test "$r" -ge $((DURATION - 5))
	check "S1: n$i initialised once" test "$(peer_field n$i inits)" -eq 1
done
ip netns exec hub ip -s xfrm state | grep -c "^src" | sed 's/^/  hub SAs now: /'
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null
check "S8: after SIGTERM the hub left no rotor SA" test "$(ip netns exec hub "$ROTOR_XFRMCTL" dump sa --owned | wc -l)" -eq 0
check "S8: after SIGTERM the hub left no rotor policy" test "$(ip netns exec hub "$ROTOR_XFRMCTL" dump policy --owned | wc -l)" -eq 0
echo "daemon steady: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
