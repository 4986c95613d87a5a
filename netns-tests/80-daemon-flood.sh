#!/bin/bash
# F1 flood: a hub rotating 3 nodes every second (hellos every 500 ms) while
# 3 sender namespaces flood its control port as fast as they can
# (`rotor-loadgen flood`, sendmmsg) with inits forged under the nodes' real
# init SPIs, datagrams under random SPIs and replays of captured genuine
# control datagrams. The same run measures the
# hub's rotations per second without the flood (the first half of the probe
# streams) and under it (the second half). Every node keeps rotating without
# re-initialising, no probe packet is lost, the hub's status answers during
# the flood.
# F2 cookies: the forged inits turn the hub's cookie round on (docs/protocol.md
# §4); a fourth node whose address the hub learns (none in its config),
# started as the flood ends, while the hub still asks for cookies, gets in
# after one: on its wire, its init, the hub's 48-byte cookie message, the
# same init with the cookie (120 bytes), the init reply; SAs in both
# kernels.
. "$(dirname "$0")/daemon-lib.sh"
# The flood comes from rotor-loadgen (sendmmsg), next to the rotor binary.
LOADGEN=${ROTOR_LOADGEN:-$(dirname "$ROTOR")/rotor-loadgen}
[ -x "$LOADGEN" ] || { echo "FAIL: rotor-loadgen not found at $LOADGEN (set ROTOR_LOADGEN)"; exit 1; }
N=3
SENDERS=3
CALM=${ROTOR_FLOOD_CALM:-8}
FLOOD=${ROTOR_FLOOD_SECONDS:-10}
# The senders, the nodes and the hub share UML's one CPU, hence one input
# backlog for every veth (netdev_max_backlog, 1,000 by default). A flood
# that fills it makes veth_xmit drop every namespace's packets alike; UDP
# hides that ENOBUFS from the sender (counted as IpOutDiscards and
# UdpSndbufErrors only), so probes of every stream vanished in the same
# 30-50 ms (a CI run: 39-46 per stream, the nodes' IpOutDiscards 40-43).
# No real network shares that queue between an attacker and its victims.
# A deeper backlog (as scripts/bench.sh sets) leaves the junk's drops where
# they belong, the hub's socket queue; the check below names the backlog if
# it still drops.
sysctl -qw net.core.netdev_max_backlog=100000
softnet_drops() {
	local s=0 d
	while read -r _ d _; do s=$((s + 16#$d)); done </proc/net/softnet_stat
	echo "$s"
}
topo_up $((N + 1))
for k in $(seq 1 $SENDERS); do
	ip netns add f$k
	ip link add veth0 netns f$k type veth peer name pf$k netns lan
	ip -n lan link set pf$k master br0 up
	ip -n f$k link set lo up
	ip -n f$k link set veth0 up
	ip -n f$k addr add "10.9.0.$((100 + k))/24" dev veth0
done
configs $((N + 1)) 1s 500ms
# n4's address is learned: its [[node]] block keeps only name and key.
python3 - "$WORK/hub.toml" <<'EOP'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r'(name = "n4"\n)address = "[^"]*"\n', r'\1', s)
open(p, "w").write(s)
EOP
check "F2: n4 has no address in the hub's config" sh -c "! grep -A1 'name = \"n4\"' '$WORK/hub.toml' | grep -q address"
start_hub
for i in $(seq 1 $N); do start_node $i; done
check "F1: every node initialised and both sides send" wait_all_sending $N 20
captured=$(ip netns exec hub python3 "$HERE/hostile.py" capture --iface veth0 --seconds 2 --out "$WORK/samples.json" | python3 -c "import json,sys; print(json.load(sys.stdin)['captured'])")
check "F1: genuine control datagrams captured for replay ($captured)" test "$captured" -ge 4
rotations() { totals | awk '{ print $1 }'; }
received() { hub_status | python3 -c "import json,sys; print(json.load(sys.stdin)['control_received'])"; }
rcvbuf() { ip netns exec hub nstat -az UdpRcvbufErrors 2>/dev/null | awk '$1 == "UdpRcvbufErrors" { print $2 }'; }
probes $N $((CALM + FLOOD)) 200 &
PROBES=$!
sleep 1
r0=$(rotations); t0=$(date +%s.%N)
sleep "$CALM"
r1=$(rotations); t1=$(date +%s.%N); m1=$(received); b1=$(rcvbuf); sd1=$(softnet_drops)
keys=$(seq -f "$WORK/n%g.key" -s, 1 $N)
FLOODERS=()
for k in $(seq 1 $SENDERS); do
	ip netns exec f$k "$LOADGEN" flood --to 10.9.0.1:4820 --samples "$WORK/samples.json" \
		--keys "${keys%,}" --duration $((FLOOD - 1))s --seed "$k" >"$WORK/flood-$k.json" &
	FLOODERS+=($!)
done
# n4's wire, from now until after its init (n4 sends nothing before): a
# capture started only once the flood ends could miss n4's first init on
# a busy host, where starting python takes a second or more.
ip netns exec n4 python3 "$HERE/hostile.py" capture --iface veth0 --seconds $((FLOOD + 12)) --out "$WORK/n4-wire.json" >/dev/null &
CAPTURE=$!
# The hub's status during the flood: each answer's latency, beside that
# of starting a process in the hub's namespace at the same moment (the
# senders keep UML's one CPU busy, and every process start pays for it).
slow=0 unanswered=0
for _ in $(seq 1 3); do
	sleep 2
	s0=$(date +%s%N)
	ip netns exec hub true
	s1=$(date +%s%N)
	hub_status >/dev/null || unanswered=$((unanswered + 1))
	s2=$(date +%s%N)
	ms=$(((s2 - s1) / 1000000))
	echo "  status during the flood answered in ${ms} ms (a bare process start in the hub's namespace: $(((s1 - s0) / 1000000)) ms)"
	[ "$ms" -gt "$slow" ] && slow=$ms
done
wait "${FLOODERS[@]}"
# F2: n4 starts now, within the 5 s the hub keeps asking for cookies:
# before the readings below, each of which starts processes (seconds on a
# busy host, which would let the hub's cookie round end first).
start_node 4
r2=$(rotations); t2=$(date +%s.%N); m2=$(received); b2=$(rcvbuf); sd2=$(softnet_drops)
n4_in=0
for _ in $(seq 1 80); do
	[ "$(peer_field n4 generation 2>/dev/null)" -ge 1 ] 2>/dev/null && { n4_in=1; break; }
	sleep 0.1
done
wait_probes
sent=$(cat "$WORK"/flood-*.json | python3 -c "import json,sys; print(sum(json.loads(l)['sent'] for l in sys.stdin))")
read -r calm_rate flood_rate junk_rate <<<"$(python3 -c "
calm=($r1-$r0)/($t1-$t0); flood=($r2-$r1)/($t2-$t1)
print(f'{calm:.2f} {flood:.2f} {($m2-$m1)/($t2-$t1):.0f}')")"
echo "FLOOD: rotations/s without the flood $calm_rate, under it $flood_rate ($(python3 -c "print(round(100*$flood_rate/$calm_rate))") %); junk sent $sent in $((FLOOD - 1)) s by $SENDERS senders ($((sent / (FLOOD - 1)))/s); the hub received ${junk_rate} datagrams/s under the flood, UDP receive-buffer overflows at the hub $((${b2:-0} - ${b1:-0}))"
echo "  dropped by the kernel's input backlog during the flood: $((sd2 - sd1))"
check "F1: the rig's input backlog dropped nothing ($((sd2 - sd1)))" test $((sd2 - sd1)) -eq 0
echo "  hub drops by reason: $(hub_status | python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)['drops'], sort_keys=True))")"
# The hub's two queues on the control port (the nodes' and everyone
# else's): the kernel's drop count of each (the last column of
# /proc/net/udp; UML's kernel has no udp_diag for `ss`). 4820 = 0x12D4.
queues=$(ip netns exec hub awk '$2 ~ /:12D4$/ { print $NF }' /proc/net/udp | sort -n | tr '\n' ' ')
echo "  the hub's control-port queues, datagrams the kernel dropped from each: $queues"
check "F1: the hub has two queues on its control port (got: $queues)" test "$(echo $queues | wc -w)" -eq 2
check "F1: the nodes' queue dropped nothing, the junk's overflowed" test "$(echo $queues | awk '{ print ($1 == 0 && $2 > 0) }')" = 1
check "F1: zero probe packets lost, both directions, every node" probe_report $N || net_drops
for i in $(seq 1 $N); do
	check "F1: n$i never re-initialised (inits $(peer_field "n$i" inits))" test "$(peer_field "n$i" inits)" -eq 1
	check "F1: n$i's node saw no fallback to init" sh -c "! grep -q 'falling back to init' '$WORK/n$i.log'"
done
check "F1: every node kept rotating under the flood ($r1 -> $r2 rotations)" test $((r2 - r1)) -ge $((N * (FLOOD - 3)))
check "F1: the flood reached the hub (>= 10,000 datagrams: $((m2 - m1)))" test $((m2 - m1)) -ge 10000
check "F1: the hub's status answered every time during the flood (slowest ${slow} ms)" test "$unanswered" -eq 0
check "F1: the hub is still running" kill -0 "$HUB_PID"
for ns in hub n1 n2 n3; do check "F1: no XFRM errors in $ns" xfrm_clean "$ns"; done
wait "$CAPTURE"
# n4's wire: every control datagram on its port (4-byte non-ESP marker,
# then version 2, then the type).
read -r inits cookies cookied replies <<<"$(python3 -c "
import json
d = [bytes.fromhex(h) for h in json.load(open('$WORK/n4-wire.json'))]
c = lambda t, n: sum(1 for x in d if x[:4] == bytes(4) and x[4:6] == bytes([2, t]) and len(x) == 4 + n)
print(c(2, 104), c(5, 48), c(2, 120), c(3, 188))")"
echo "  n4's wire: inits $inits, cookie messages $cookies, inits with a cookie $cookied, init replies $replies; hub drops cookie_required $(hub_status | python3 -c "import json,sys; print(json.load(sys.stdin)['drops'].get('cookie_required', 0))")"
check "F2: n4 initialised after the flood (the hub learned its address)" test "$n4_in" = 1
check "F2: the hub answered n4's init with a cookie message" test "${cookies:-0}" -ge 1
check "F2: n4 sent the same init again with the cookie, and got its init reply" test "${cookied:-0}" -ge 1 -a "${replies:-0}" -ge 1
check "F2: n4's SAs are in the hub's kernel" sh -c "ip -n hub xfrm state | grep -q 'dst $(outer 4)'"
check "F2: the hub's SAs are in n4's kernel" sh -c "ip -n n4 xfrm state | grep -q 'dst $(outer 0)'"
check "F2: n4 initialised once (inits $(peer_field n4 inits))" test "$(peer_field n4 inits)" -eq 1
check "F2: no XFRM errors in n4" xfrm_clean n4
figures F1 $N 200
echo "daemon flood: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
