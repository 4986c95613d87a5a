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
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null
check "S8: after SIGTERM the hub left no rotor SA" test "$(ip netns exec hub "$ROTOR_XFRMCTL" dump sa --owned | wc -l)" -eq 0
check "S8: after SIGTERM the hub left no rotor policy" test "$(ip netns exec hub "$ROTOR_XFRMCTL" dump policy --owned | wc -l)" -eq 0
echo "daemon steady: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
