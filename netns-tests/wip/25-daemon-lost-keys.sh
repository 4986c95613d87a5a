#!/bin/bash
# S2 lost key messages: every `key` message to n1 is dropped (iptables u32 on
# the type byte) for several rotation periods, then allowed. The hub resends
# the same key instead of making new ones, is never two generations ahead of
# n1, n1 catches up by resend, and no data packet is lost.
. "$(dirname "$0")/../daemon-lib.sh"
N=2
topo_up $N
# retries 12: the node must not give up on the hub (init) during the 4 s drop;
# this scenario is about resends.
configs $N 1s 500ms 12
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "every node initialised and both sides send" wait_all_sending $N 20
node_gen() { ip netns exec n$1 "$ROTOR" status --socket "$WORK/n$1.sock" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['peers'][0]['generation'])"; }
probes $N 15 200 &
PROBES=$!
sleep 2
resends0=$(peer_field n1 resends)
# UDP payload byte 1 is the message type; 3 = key.
RULE=(OUTPUT -p udp -d 10.9.0.2 --dport 4820 -m u32 --u32 "0>>22&0x3C@8>>16&0xFF=3" -j DROP)
ip netns exec hub iptables-legacy -A "${RULE[@]}"
max_ahead=0
for _ in $(seq 1 40); do
	h=$(peer_field n1 generation); n=$(node_gen 1)
	[ $((h - n)) -gt $max_ahead ] && max_ahead=$((h - n))
	sleep 0.1
done
dropped=$(ip netns exec hub iptables-legacy -L OUTPUT -v -n -x | awk '/u32/ { print $1 }')
gen_during=$(node_gen 1)
ip netns exec hub iptables-legacy -D "${RULE[@]}"
echo "  key messages to n1 dropped: $dropped; hub at most $max_ahead generation(s) ahead of n1"
check "S2: key messages to n1 were dropped for ~4 s (>= 3)" test "${dropped:-0}" -ge 3
check "S2: the hub was never two generations ahead of n1" test "$max_ahead" -le 1
sleep 3
gen_after=$(node_gen 1)
resends1=$(peer_field n1 resends)
echo "  n1 generation $gen_during -> $gen_after; hub resends for n1 $resends0 -> $resends1"
check "S2: n1 caught up after the drop (generation advanced)" test "$gen_after" -gt "$gen_during"
check "S2: the lost key was resent, not regenerated (resends rose)" test "$resends1" -gt "$resends0"
wait "$PROBES"
check "S2: zero probe packets lost" probe_report $N
for ns in hub n1 n2; do check "S2: no XFRM errors in $ns" xfrm_clean $ns; done
echo "daemon lost keys: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
