#!/bin/bash
# S3 hostile network: 30 % random loss on all control traffic both ways
# (iptables statistic at the hub), plus netem on the control path only (delay
# 30 ms +- 20 ms, so reordering, 25 % sent out of order, 10 % duplicated), a
# hub and 3 nodes rotating every second, 200 packets/s each way per node:
# zero data lost, every node back in sync.
. "$(dirname "$0")/daemon-lib.sh"
N=3
DURATION=${ROTOR_S3_SECONDS:-30}
topo_up $N
# retries 5: a node gives up on its hub after 20 unanswered hellos (a
# quarter interval apart, ~3 s of silence); at 30 % loss each way that
# happens about once in 700,000 hellos, so no node re-initialises here.
configs $N 1s 500ms 5
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "S3: every node initialised and both sides send" wait_all_sending $N 20
control_loss 30
control_netem delay 30ms 20ms reorder 25% 50% duplicate 10%
probes $N "$DURATION" 200
echo "  control datagrams dropped by the 30 % rule: $(control_dropped); sent through netem: $(control_netem_sent)"
hub_status | python3 -c "import json,sys; print('  hub drops by reason:', json.dumps(json.load(sys.stdin)['drops'], sort_keys=True))"
check "S3: the control path really was delayed and duplicated (netem saw >= 100 datagrams)" test "$(control_netem_sent)" -ge 100
check "S3: zero probe packets lost under 30 % control loss" probe_report $N
for ns in hub n1 n2 n3; do check "S3: no XFRM errors in $ns" xfrm_clean $ns; done
read -r rot res ini <<<"$(totals)"
echo "  totals: rotations=$rot resends=$res inits=$ini"
check "S3: rotations continued under loss ($rot)" test "$rot" -ge $((N * DURATION / 4))
check "S3: lost key messages were repaired by resends ($res)" test "$res" -gt 0
check "S3: no node re-initialised under loss (inits $ini = one per node)" test "$ini" -eq $N
iptables-legacy --version >/dev/null 2>&1
ip netns exec hub iptables-legacy -F
check "S3: every node sending again after loss stops" wait_all_sending $N 15
check "S3: every node in_sync at the end" wait_all_in_sync $N 15
figures S3 $N 200
echo "daemon lossy: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
