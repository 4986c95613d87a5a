#!/bin/bash
# What a path change costs the data: SAs moved in place (XFRM_MSG_MIGRATE,
# the default) against SAs re-added and re-keyed (ROTOR_MOVE=readd), same
# events, same probes (real kernel, inside UML). Transport mode.
#
#   hub 10.9.0.1 ---- wan ----+---- nat 10.9.0.100 (MASQUERADE) ---- n1 192.168.1.11
#                             +---- n3 10.9.0.4 <-> 10.9.0.14 (moves back and forth)
#
# ROTOR_MOVE_ROUNDS (default 4) rounds of: the NAT forgets its mappings and maps n1
# to a new port (P: port only, same address), then n3 moves to its other
# address (A: address). 200 probes/s each way per node: n1 both ways and
# n3 to the hub the whole run; the hub to n3's new address from each move
# on. Per event: packets lost and the longest outage, each direction.
#
# By default (SAs moved in place) it also proves the move in the kernel's
# own tables: after each event the SAs of the moved node, on the hub and
# (A) on n3, name the new address or NAT port, have the SPIs they had
# before, and their outbound sequence numbers went on from where they were
# (`ip -s xfrm state`); the hub's outbound policy names the new address
# and the same SPI (`ip xfrm policy`). With ROTOR_MOVE=readd (which the
# daemons read too) it checks only that the traffic comes back.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/daemon-lib.sh"

MOVE=migrate
[ "${ROTOR_MOVE:-}" = readd ] && MOVE=readd
ROUNDS=${ROTOR_MOVE_ROUNDS:-4}
RATE=200
GAP=3

modprobe -a -d /run/uml-modules nf_conntrack nf_nat iptable_nat xt_MASQUERADE nf_conntrack_netlink ||
	{ fail "the NAT modules load"; exit 1; }

ip netns add wan
ip -n wan link add br0 type bridge
ip -n wan link set br0 up
wan_port() { # wan_port NS IFACE PORT
	ip link add "$2" netns "$1" type veth peer name "$3" netns wan
	ip -n wan link set "$3" master br0 up
	ip -n "$1" link set lo up
	ip -n "$1" link set "$2" up
}
for ns in hub nat n3 n1; do ip netns add $ns; done
wan_port hub veth0 p0
ip -n hub addr add 10.9.0.1/24 dev veth0
wan_port nat wan0 pn
ip -n nat addr add 10.9.0.100/24 dev wan0
wan_port n3 veth0 p3
ip -n n3 addr add 10.9.0.4/24 dev veth0
ip netns exec n3 sysctl -qw net.ipv4.conf.veth0.promote_secondaries=1
ip link add veth0 netns n1 type veth peer name in1 netns nat
ip -n nat addr add 192.168.1.1/24 dev in1
ip -n nat link set in1 up
ip -n n1 link set lo up
ip -n n1 link set veth0 up
ip -n n1 addr add 192.168.1.11/24 dev veth0
ip -n n1 route add default via 192.168.1.1
ip netns exec nat sysctl -qw net.ipv4.ip_forward=1
ip netns exec nat iptables-legacy -t nat -A POSTROUTING -o wan0 -j MASQUERADE

for i in 1 3; do (umask 077; "$ROTOR" genkey >"$WORK/n$i.key"); done
# No timer rotation within the run (60 s or more on a busy host): the
# checks compare SPIs across each move, and a rotation in between would
# change them for a reason the move has nothing to do with.
cat >"$WORK/hub.toml" <<EOT
[hub]
address = "10.9.0.1"
rotate_interval = "10m"
grace = "3s"
socket = "$WORK/hub.sock"
state_dir = "$WORK/state"
guard = "$GUARD"

[[node]]
name = "n1"
psk_file = "$WORK/n1.key"

[[node]]
name = "n3"
psk_file = "$WORK/n3.key"
EOT
for i in 1 3; do
	cat >"$WORK/n$i.toml" <<EOT
[node]
name = "n$i"
hub = "10.9.0.1:4820"
psk_file = "$WORK/n$i.key"
hello_interval = "500ms"
retries = 5
grace = "3s"
socket = "$WORK/n$i.sock"
state_dir = "$WORK/state"
guard = "$GUARD"
EOT
done

hub_peer() { hub_status | python3 -c "import json,sys; p=next(p for p in json.load(sys.stdin)['peers'] if p['name']=='$1'); print($2)"; }
sas() { ip -n "$1" -s xfrm state | python3 "$HERE/xfrm_state.py" state; }
pols() { ip -n "$1" xfrm policy | python3 "$HERE/xfrm_state.py" policy; }
now() { date +%s.%N; }

start_hub || exit 1
start_node 1
start_node 3
for _ in $(seq 1 100); do
	ok=1
	for n in n1 n3; do [ "$(hub_peer $n "int(p['state'] == 'in_sync')" 2>/dev/null)" = 1 ] || ok=0; done
	[ $ok = 1 ] && break
	sleep 0.2
done
check "n1 and n3 have keys from the hub" [ $ok = 1 ]
check "the hub sees n1 behind the NAT" [ "$(hub_peer n1 "p['nat']")" = True ]

# stream NAME RECV_NS BIND SEND_NS TO SECONDS
stream() {
	ip netns exec "$2" $PROBE recv --bind "$3" --duration $(($6 + 5)) --sent-file "$WORK/sent-$1" --ready-file "$WORK/ready-$1" >"$WORK/probe-$1.json" &
	PIDS+=("$!")
	for _ in $(seq 1 50); do [ -e "$WORK/ready-$1" ] && break; sleep 0.1; done
	now >"$WORK/start-$1"
	(ip netns exec "$4" $PROBE send --to "$5" --rate $RATE --duration "$6" >"$WORK/sent-$1.tmp" && mv "$WORK/sent-$1.tmp" "$WORK/sent-$1") &
	PIDS+=("$!")
}
# A round takes about 8 s (status polls and kernel reads between the events).
TOTAL=$((ROUNDS * 10 + 6))
stream n1-up hub 10.9.0.1:5001 n1 10.9.0.1:5001 $TOTAL
stream n1-down n1 192.168.1.11:6001 hub 10.9.0.100:6001 $TOTAL
stream n3-up hub 10.9.0.1:5003 n3 10.9.0.1:5003 $TOTAL
sleep 2
: >"$WORK/events"

# settled NAME EXPR: waits up to 3 s for the hub to show EXPR of NAME's row true
settled() { for _ in $(seq 1 60); do [ "$(hub_peer "$1" "int($2)")" = 1 ] && return 0; sleep 0.05; done; return 1; }

# prove NS REQID_OF BEFORE_JSON ADDR_OR_PORT: the kernel's own tables
# after a move (MOVE=migrate): every SA of the node that existed before is
# there with the same SPI at the new place, none at the old one, the
# outbound sequence numbers went on
prove() { # prove LABEL NS BEFORE AFTER OLD NEW KIND
	python3 - "$@" <<'EOF'
import json, sys
label, ns, before, after, old, new, kind = sys.argv[1:8]
b = json.loads(before); a = json.loads(after)
def place(s):
    # where the SA's peer is: its address (A) or its NAT port (P)
    if kind == "A":
        return {s["src"], s["dst"]}
    return {str(p) for p in (s["encap"] or [])}
def key(s, at):
    # an SA's SPI and direction (both directions share the SPI)
    if kind == "A":
        return (s["spi"], "dst" if s["dst"] == at else "src")
    return (s["spi"], "out" if s["src"] == "10.9.0.1" else "in")
ob = {key(s, old): s for s in b if old in place(s)}
oa = [s for s in a if old in place(s) and not (kind == "P" and new in place(s))]
na = {key(s, new): s for s in a if new in place(s)}
spis_after = {s["spi"] for s in a}
bad = []
gone = 0
if not ob:
    bad.append("no SA at the old place before")
for k, s in ob.items():
    n = na.get(k)
    if n is None and s["spi"] not in spis_after:
        gone += 1  # retired after its grace between the two reads
    elif n is None:
        bad.append(f"spi {s['spi']:#x} ({k[1]}) not at the new place")
    elif s["oseq"] and n["oseq"] < s["oseq"]:
        bad.append(f"spi {s['spi']:#x} oseq went back {s['oseq']} -> {n['oseq']}")
if oa:
    bad.append(f"{len(oa)} SA(s) still at the old place")
went_on = [f"{s['spi']:#x}:{s['oseq']}->{na[k]['oseq']}" for k, s in ob.items() if s["oseq"] and k in na]
print(("ok " if not bad else "BAD ") + f"{label} {ns}: {len(ob) - gone} SAs moved with their SPIs ({gone} retired meanwhile); oseq " + (" ".join(went_on) or "-") + ("; " + "; ".join(bad) if bad else ""))
EOF
}

A=10.9.0.4
B=10.9.0.14
for r in $(seq 1 "$ROUNDS"); do
	# --- P: the NAT maps n1 to a new port ---
	before1=$(hub_peer n1 "p['endpoint']")
	hub_before=$(sas hub)
	# The event's time is taken before the NAT changes: on a busy host the
	# commands below take seconds, and a loss that began before the time
	# written would be charged to no event.
	echo "P $r $(now)" >>"$WORK/events"
	lo=$((20000 + r * 100))
	if [ "$r" = 1 ]; then
		ip netns exec nat iptables-legacy -t nat -I POSTROUTING 1 -o wan0 -p udp -j MASQUERADE --to-ports $lo-$((lo + 99))
	else
		ip netns exec nat iptables-legacy -t nat -R POSTROUTING 1 -o wan0 -p udp -j MASQUERADE --to-ports $lo-$((lo + 99))
	fi
	ip netns exec nat python3 - <<'EOF'
# conntrack -F: ctnetlink IPCTNL_MSG_CT_DELETE with no attributes
import socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
nfgen = struct.pack("BBH", socket.AF_INET, 0, 0)
s.send(struct.pack("=LHHLL", 16 + len(nfgen), (1 << 8) | 2, 1 | 4, 1, 0) + nfgen)
ln, typ, fl, seq, pid, err = struct.unpack("=LHHLLi", s.recv(4096)[:20])
assert typ == 2 and err == 0, (typ, err)
EOF
	settled n1 "p['endpoint'] != '$before1'" || fail "P$r: the hub follows n1 to a new NAT port"
	after1=$(hub_peer n1 "p['endpoint']")
	echo "  P$r: n1 $before1 -> $after1"
	if [ "$MOVE" = migrate ]; then
		sleep 0.3
		res=$(prove "P$r" hub "$hub_before" "$(sas hub)" "${before1##*:}" "${after1##*:}" P)
		echo "  $res"
		check "P$r: the hub's SAs of n1 took NAT port ${after1##*:} in place (same SPIs, oseq went on)" [ "${res%% *}" = ok ]
	fi
	sleep $GAP

	# --- A: n3 moves to its other address ---
	hub_before=$(sas hub)
	n3_before=$(sas n3)
	spi_out=$(ip -n hub xfrm policy | python3 "$HERE/xfrm_state.py" policy | python3 -c "import json,sys; print([p['spi'] for p in json.load(sys.stdin) if p['dst']=='$A/32' and p['dir']==1])")
	echo "A $r $(now)" >>"$WORK/events"
	ip -n n3 addr add $B/24 dev veth0
	ip -n n3 addr del $A/24 dev veth0
	stream "n3-down-$r" n3 $B:$((6100 + r)) hub $B:$((6100 + r)) $((GAP - 1))
	settled n3 "p['endpoint'] == '$B:4820'" || fail "A$r: the hub follows n3 to $B"
	if [ "$MOVE" = migrate ]; then
		sleep 0.3
		for ns in hub n3; do
			if [ $ns = hub ]; then bef=$hub_before; else bef=$n3_before; fi
			res=$(prove "A$r" $ns "$bef" "$(sas $ns)" $A $B A)
			echo "  $res"
			check "A$r: $ns's SAs with n3 moved from $A to $B in place (same SPIs, oseq went on)" [ "${res%% *}" = ok ]
		done
		spi_now=$(ip -n hub xfrm policy | python3 "$HERE/xfrm_state.py" policy | python3 -c "import json,sys; print([p['spi'] for p in json.load(sys.stdin) if p['dst']=='$B/32' and p['dir']==1 and p['action']=='allow'])")
		check "A$r: the hub's outbound policy names $B and the SPI it named before ($spi_out -> $spi_now)" [ "$spi_out" = "$spi_now" ]
	fi
	sleep $((GAP - 1))
	t=$A; A=$B; B=$t
done

sleep 6
for f in "$WORK"/probe-*.json; do
	s=$(basename "$f" .json); s=${s#probe-}
	for _ in $(seq 1 30); do [ -s "$f" ] && [ -e "$WORK/sent-$s" ] && break; sleep 1; done
done
# Every run of lost packets, attributed to the event of its stream's kind
# (n1: P, n3: A) it followed; a per-move stream's losses are its move's.
python3 "$HERE/move_figures.py" "$WORK" "$RATE" "$MOVE" | tee "$WORK/figures"
check "traffic came back after every event (no loss away from the events)" grep -q "outside the events: 0$" "$WORK/figures"
for n in n1 n3; do
	check "$n initialised once" [ "$(hub_peer $n "p['inits']")" = 1 ]
done
echo "  hub rotations: n1 $(hub_peer n1 "p['rotations']" 2>/dev/null), n3 $(hub_peer n3 "p['rotations']" 2>/dev/null)"
if [ "$MOVE" = migrate ]; then
	check "no in-place move fell back to re-adding" bash -c "! grep -q 'moving the SAs in place failed' '$WORK/hub.log' '$WORK/n1.log' '$WORK/n3.log'"
fi
if [ "$FAILS" != 0 ]; then
	for ns in hub n1 nat; do
		echo "--- $ns: xfrm_stat (non-zero), SAs"
		ip netns exec $ns grep -v " 0$" /proc/net/xfrm_stat
		ip -n $ns -s xfrm state | grep -E "^src|encap|packets\)"
		ip netns exec $ns nstat -az 2>/dev/null | grep -iE "UdpInCsumErrors|UdpNoPorts|UdpInErrors"
	done
	for f in hub n1 n3; do echo "--- $f.log (tail)"; tail -15 "$WORK/$f.log"; done
fi
echo "daemon move in place ($MOVE): $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
