#!/bin/bash
# S7a tunnel mode: a LAN behind the hub (10.1.0.0/24) and one behind each of
# 3 nodes (10.2.<i>.0/24); the gateways forward between them through ESP
# tunnel SAs (fwd policies on both sides). S1's checks on probe streams that
# run between the LAN namespaces, plus: the probes leave the hub as ESP only.
TUNNEL=1
. "$(dirname "$0")/daemon-lib.sh"
steady S7-tunnel 3 "${ROTOR_S7_SECONDS:-12}"
echo "daemon tunnel: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
