#!/bin/bash
# S7b IPv6 transport mode: the hub (fd00:9::1) and 3 nodes (fd00:9::2-4), the
# control channel and the ESP SAs over IPv6. S1's checks, plus: the probes
# leave the hub as ESP only.
FAMILY=6
. "$(dirname "$0")/daemon-lib.sh"
# Neighbour discovery between the outer addresses must keep working while
# rotor's policies select all traffic between them (ND bypass policies).
steady S7-ipv6 3 "${ROTOR_S7_SECONDS:-12}"
check "S7-ipv6: the hub's neighbour entries for the nodes are usable" test "$(ip -n hub -6 neigh show dev veth0 | grep -c 'fd00:9::[234] .*\(REACHABLE\|STALE\|DELAY\|PROBE\)')" -eq 3
# Nothing at all may remain, the ND bypass policies included.
stop_all_clean S8-ipv6
echo "daemon ipv6: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
