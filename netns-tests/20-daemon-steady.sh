#!/bin/bash
# S1 steady: a hub and 3 nodes (transport mode) rotating every second, a
# 200 packets/s probe stream each way per node through ESP; zero missing
# sequence numbers, no XFRM errors in any namespace, >= DURATION-5 rotations
# per node, one init each.
. "$(dirname "$0")/daemon-lib.sh"
N=3
DURATION=${ROTOR_S1_SECONDS:-60}
steady S1 $N "$DURATION"
ip netns exec hub ip -s xfrm state | grep -c "^src" | sed 's/^/  hub SAs now: /'
# A foreign SA and policy (reqid 7, another daemon's) must survive our stop.
ip -n hub xfrm state add src 10.9.0.1 dst 10.9.0.200 proto esp spi 0x77 reqid 7 mode transport \
	aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
ip -n hub xfrm policy add src 10.9.0.1/32 dst 10.9.0.200/32 dir out tmpl proto esp reqid 7 mode transport
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null
check "S8: after SIGTERM the hub left no rotor SA" test "$(ip netns exec hub "$ROTOR_XFRMCTL" dump sa --owned | wc -l)" -eq 0
check "S8: after SIGTERM the hub left no rotor policy" test "$(ip netns exec hub "$ROTOR_XFRMCTL" dump policy --owned | wc -l)" -eq 0
check "S8: the foreign SA (reqid 7) is still there" test "$(ip -n hub xfrm state list spi 0x77 | grep -c '^src')" -eq 1
check "S8: the foreign policy (reqid 7) is still there" test "$(ip -n hub xfrm policy list dst 10.9.0.200/32 | grep -c '^src')" -eq 1
for i in $(seq 1 $N); do eval "kill \$NODE_PID_$i"; done
sleep 2
for i in $(seq 1 $N); do
	check "S8: after SIGTERM n$i left no SA or policy" test "$(ip -n n$i xfrm state | grep -c '^src'):$(ip -n n$i xfrm policy | grep -c '^src')" = 0:0
done
echo "daemon steady: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
