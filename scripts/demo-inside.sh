#!/bin/bash
# The demo, inside UML (scripts/demo.sh runs it): a hub and 3 nodes rotating
# keys every second with 30 % of all control datagrams dropped, while a
# 200 packets/s probe stream flows each way per node through kernel ESP.
. "$(dirname "$0")/../netns-tests/daemon-lib.sh"
N=3
DURATION=${ROTOR_DEMO_SECONDS:-30}
topo_up $N
configs $N 1s 500ms
start_hub
for i in $(seq 1 $N); do start_node $i; done
wait_all_sending $N 20 || { echo "demo: nodes did not come up"; tail "$WORK"/*.log; exit 1; }
echo "demo: hub 10.9.0.1 and nodes n1..n$N are up; dropping 30 % of control traffic both ways"
control_loss 30
probes $N "$DURATION" 200 &
PROBES=$!
for t in $(seq 5 5 "$DURATION"); do
	sleep 5
	echo
	echo "--- t=${t}s  rotor status (hub)"
	status_table
done
wait "$PROBES"
read -r rot res ini <<<"$(totals)"
read -r sent lost <<<"$(probe_totals $N)"
echo
echo "demo: $rot rotations, $res key resends, $ini inits, $(control_dropped) control datagrams dropped; data packets sent $sent, lost $lost"
[ "$lost" = 0 ]
