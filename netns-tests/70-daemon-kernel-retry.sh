#!/bin/bash
# Kernel refusals are retried: with the esp6 module unloaded (and module
# autoloading unavailable, as in this UML), every IPv6 ESP SA add is refused by
# the kernel (EPROTONOSUPPORT). The daemons must keep running, log the errno,
# count the errors in `rotor status`, and once the module is back install
# every SA by retrying, after which the probe streams flow with zero loss.
FAMILY=6
. "$(dirname "$0")/daemon-lib.sh"
N=2
MODROOT=/run/uml-modules
# An empty kernel.modprobe makes request_module() fail at once, as on a host
# with module autoloading disabled (here autoloading could not succeed anyway,
# but each attempt would run a slow user-space helper inside a netlink call).
OLD_MODPROBE=$(cat /proc/sys/kernel/modprobe)
echo >/proc/sys/kernel/modprobe
modprobe -r -d "$MODROOT" esp6 || { echo "FAIL: cannot unload esp6 (is an IPv6 SA in use?)"; exit 1; }
topo_up $N
configs $N 1s 500ms
# The daemons refuse to start on a kernel without ESP (their start-up
# probe); this test wants exactly that kernel, so it skips the probe.
export ROTOR_TEST_SKIP_ESP_PROBE=1
start_hub
for i in $(seq 1 $N); do start_node $i; done
sleep 4
errs() { hub_status | python3 -c "import json,sys; print(json.load(sys.stdin)['kernel_errors'])"; }
e1=$(errs)
check "kernel refusals: the hub keeps running and answers status" kill -0 "$HUB_PID"
check "kernel refusals: counted in the hub's status ($e1)" test "${e1:-0}" -gt 0
check "kernel refusals: logged with the errno" grep -q "kernel refused: add SA.*errno 93" "$WORK/hub.log"
sas=$(ip -n hub xfrm state | grep -c '^src')
check "kernel refusals: no SA could be installed meanwhile ($sas)" test "$sas" -eq 0
echo "$OLD_MODPROBE" >/proc/sys/kernel/modprobe
modprobe -d "$MODROOT" esp6 || { echo "FAIL: cannot load esp6 again"; exit 1; }
echo "  esp6 loaded again"
check "kernel refusals: every node sends again once the kernel accepts" wait_all_sending $N 20
sleep 3
grep -h "kernel accepted on retry" "$WORK/hub.log" "$WORK"/n*.log | sed 's/\x1b\[[0-9;]*m//g' | head -3 | cut -c1-160
check "kernel refusals: the refused operations were retried and accepted" grep -q "kernel accepted on retry" "$WORK/hub.log"
# Packets in flight while one side had its SAs and the other not yet may
# have counted XFRM errors; from here on there must be none.
for ns in hub n1 n2; do ip netns exec $ns cat /proc/net/xfrm_stat >"$WORK/xfrm-$ns.before"; done
probes $N 10 200
check "kernel refusals: zero probe packets lost after recovery" probe_report $N
for ns in hub n1 n2; do
	grew=$(ip netns exec $ns cat /proc/net/xfrm_stat | diff "$WORK/xfrm-$ns.before" - | grep '^>' | tr -s ' ' | tr '\n' ' ')
	check "kernel refusals: no XFRM error counter grew in $ns after recovery ${grew}" test -z "$grew"
done
figures kernel-retry $N 200
echo "daemon kernel retry: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
