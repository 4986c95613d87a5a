#!/bin/bash
# S7c IPv6 tunnel mode: a LAN behind the hub (fd01::/64) and one behind each
# of 3 nodes (fd02:<i>::/64), gateways on IPv6 outer addresses forwarding
# through ESP tunnel SAs (fwd policies on both sides). S1's checks on probe
# streams between the LAN namespaces (30 s by default), plus: they leave the
# hub as ESP only, and nothing is left after SIGTERM.
FAMILY=6
TUNNEL=1
. "$(dirname "$0")/daemon-lib.sh"
steady S7-ipv6-tunnel 3 "${ROTOR_S7C_SECONDS:-30}"
for i in 0 1 2 3; do ns=hub; [ $i -gt 0 ] && ns=n$i; ip netns exec $ns kill $(ip netns pids $ns) 2>/dev/null; done
sleep 2
for ns in hub n1 n2 n3; do
	check "S8-ipv6-tunnel: after SIGTERM no XFRM policy or SA is left in $ns" test "$(ip -n $ns xfrm policy | grep -c '^src'):$(ip -n $ns xfrm state | grep -c '^src')" = 0:0
done
echo "daemon ipv6 tunnel: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
