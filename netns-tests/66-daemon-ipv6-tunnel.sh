#!/bin/bash
# S7c IPv6 tunnel mode: a LAN behind the hub (fd01::/64) and one behind each
# of 3 nodes (fd02:<i>::/64), gateways on IPv6 outer addresses forwarding
# through ESP tunnel SAs (fwd policies on both sides). S1's checks on probe
# streams between the LAN namespaces (30 s by default), plus: they leave the
# hub as ESP only, and nothing is left after SIGTERM.
FAMILY=6
TUNNEL=1
. "$(dirname "$0")/daemon-lib.sh"
steady S7-ipv6-tunnel 3 "${ROTOR_S7C_SECONDS:-12}"
stop_all_clean S8-ipv6-tunnel
echo "daemon ipv6 tunnel: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
