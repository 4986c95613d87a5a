#!/bin/bash
# D1-D6: the kernel changed under the daemons (rotate_interval 1 h, so no
# rotation repairs anything by chance), under a 100 packets/s probe stream
# each way per node, the wire at the hub captured throughout:
#  D1 `ip xfrm state flush` on the hub    D2 `ip xfrm policy flush` on the hub
#  D3 `ip xfrm state flush` on n1         D4 `ip xfrm policy flush` on n1
#  every outage under 1 s (repaired from state), no init, nothing in clear
#  D5 a hub that cannot start (its UDP port is taken) leaves the kernel
#     exactly as it found it (dumps compared)
#  D6 foreign objects (another reqid) are never touched
. "$(dirname "$0")/daemon-lib.sh"
N=2
RATE=100
topo_up $N
configs $N 1h 500ms
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "every node initialised and both sides send" wait_all_sending $N 20
# D6: a foreign SA and policy (reqid 7) in the hub's namespace
ip -n hub xfrm state add src 10.9.0.1 dst 192.0.2.7 proto esp spi 0x7007 reqid 7 mode transport aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
ip -n hub xfrm policy add src 10.9.0.1 dst 192.0.2.7 dir out tmpl proto esp reqid 7 mode transport
WIRE_SECONDS=28 probes $N 30 $RATE &
PROBES=$!
sleep 3
ip -n hub xfrm state flush
echo "  t=3s: D1 hub: ip xfrm state flush"
ip -n hub xfrm state add src 10.9.0.1 dst 192.0.2.7 proto esp spi 0x7007 reqid 7 mode transport aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
sleep 5
ip -n hub xfrm policy flush
echo "  t=8s: D2 hub: ip xfrm policy flush"
ip -n hub xfrm policy add src 10.9.0.1 dst 192.0.2.7 dir out tmpl proto esp reqid 7 mode transport
sleep 5
ip -n n1 xfrm state flush
echo "  t=13s: D3 n1: ip xfrm state flush"
sleep 5
ip -n n1 xfrm policy flush
echo "  t=18s: D4 n1: ip xfrm policy flush"
# the repairs' rotations and their grace deletions (3 s) are over by t=24 s
sleep 6
dump() { { ip -n hub xfrm state list | grep -E '^src|proto'; ip -n hub xfrm policy list | grep -E '^src|dir|tmpl|proto'; } | sort; }
dump >"$WORK/dump-before"
sed -e "s|state_dir = .*|state_dir = \"$WORK/state2\"|" -e "s|socket = .*|socket = \"$WORK/hub2.sock\"|" "$WORK/hub.toml" >"$WORK/hub2.toml"
ip netns exec hub "$ROTOR" hub --config "$WORK/hub2.toml" >"$WORK/failed.log" 2>&1
failed_rc=$?
dump >"$WORK/dump-after"
echo "  t=24s: D5 a hub whose port is taken exited $failed_rc: $(tail -n 1 "$WORK/failed.log")"
wait "$PROBES"
echo "  the wire at the hub's bridge port, 28 s of frames: $(cat "$WORK/wire.json")"
check "D1-D4: on the wire the probe streams are ESP only, both ways, through every flush" python3 -c "
import json; d=json.load(open('$WORK/wire.json')); raise SystemExit(0 if d['esp'] > 2000 and d['plain_probe'] == 0 else 1)"
check "D1-D4: every outage under 1000 ms (repaired from state)" outage_report $N $RATE 1000
for i in $(seq 1 $N); do
	check "D1-D4: n$i never re-initialised (hub's count $(peer_field n$i inits))" test "$(peer_field n$i inits)" -eq 1
done
check "D5: the failed start exited non-zero ($failed_rc)" test "$failed_rc" -ne 0
check "D5: the kernel is exactly as before the failed start" diff "$WORK/dump-before" "$WORK/dump-after"
check "D6: the foreign SA survived the hub's reconcile passes" test "$(ip -n hub xfrm state list spi 0x7007 | grep -c '^src')" -eq 1
check "D6: the foreign policy too" test "$(ip -n hub xfrm policy list dst 192.0.2.7/32 | grep -c '^src')" -eq 1
grep -h "reconciled" "$WORK/hub.log" "$WORK/n1.log" | sed 's/^/  /' | head -n 8
figures D1-D6 $N $RATE
echo "daemon drift: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; tail -n 20 "$WORK/n1.log"; exit 1; }
