#!/bin/bash
# D1-D6: the kernel changed under the daemons (rotate_interval 1 h, so no
# rotation repairs anything by chance), under a 100 packets/s probe stream
# each way per node, the wire at the hub captured throughout:
#  D1 `ip xfrm state flush` on the hub    D2 `ip xfrm policy flush` on the hub
#  D3 `ip xfrm state flush` on n1         D4 `ip xfrm policy flush` on n1
#  every outage under 1 s (repaired from state), no init; not one probe
#  packet in clear on the wire, after the state flushes and after the policy
#  flushes: until the repair each side's clear-text guard (src/guard.rs)
#  drops what the flushed policies no longer send through ESP (its DROP
#  counter shows it did). ROTOR_TEST_GUARD=off shows the gap it closes: the
#  run then fails D7 (and D2+D4 whenever a packet left before a repair).
#  D5 a hub that cannot start (its UDP port is taken) leaves the kernel
#     exactly as it found it (XFRM, iptables and ipset dumps compared)
#  D6 foreign objects (another reqid) are never touched
#  D7 with the hub and n1 stopped (SIGTERM) and their policies flushed, a
#     fresh probe stream: nothing in clear on the wire, the guards drop it
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
probes $N 30 $RATE &
PROBES=$!
# capture NAME SECONDS: the wire at the hub's bridge port into $WORK/NAME.json
capture() { ip netns exec lan python3 "$HERE/wire_check.py" --iface p0 --seconds "$2" >"$WORK/$1.json" & }
sleep 2
capture wire-state 8
sleep 1
ip -n hub xfrm state flush
echo "  t=3s: D1 hub: ip xfrm state flush"
ip -n hub xfrm state add src 10.9.0.1 dst 192.0.2.7 proto esp spi 0x7007 reqid 7 mode transport aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
sleep 3
ip -n n1 xfrm state flush
echo "  t=6s: D3 n1: ip xfrm state flush"
sleep 5
capture wire-policy 8
sleep 1
ip -n hub xfrm policy flush
echo "  t=12s: D2 hub: ip xfrm policy flush"
ip -n hub xfrm policy add src 10.9.0.1 dst 192.0.2.7 dir out tmpl proto esp reqid 7 mode transport
sleep 3
ip -n n1 xfrm policy flush
echo "  t=15s: D4 n1: ip xfrm policy flush"
# the repairs' rotations and their grace deletions (3 s) are over by t=22 s
sleep 7
dump() {
	{ ip -n hub xfrm state list | grep -E '^src|proto'; ip -n hub xfrm policy list | grep -E '^src|dir|tmpl|proto'; } | sort
	ip netns exec hub iptables-legacy -S
	ip netns exec hub ipset list
}
dump >"$WORK/dump-before"
sed -e "s|state_dir = .*|state_dir = \"$WORK/state2\"|" -e "s|socket = .*|socket = \"$WORK/hub2.sock\"|" "$WORK/hub.toml" >"$WORK/hub2.toml"
ip netns exec hub "$ROTOR" hub --config "$WORK/hub2.toml" >"$WORK/failed.log" 2>&1
failed_rc=$?
dump >"$WORK/dump-after"
echo "  t=22s: D5 a hub whose port is taken exited $failed_rc: $(tail -n 1 "$WORK/failed.log")"
wait "$PROBES"
echo "  the wire around the state flushes (t=2-10 s): $(cat "$WORK/wire-state.json")"
echo "  the wire around the policy flushes (t=11-19 s): $(cat "$WORK/wire-policy.json")"
check "D1+D3: after the state flushes the probe streams stay ESP only, both ways" python3 -c "
import json; d=json.load(open('$WORK/wire-state.json')); raise SystemExit(0 if d['esp'] > 1000 and d['plain_probe'] == 0 else 1)"
leaked=$(python3 -c "import json; print(json.load(open('$WORK/wire-policy.json'))['plain_probe'])")
esp=$(python3 -c "import json; print(json.load(open('$WORK/wire-policy.json'))['esp'])")
check "D2+D4: not one probe packet in clear on the wire around the policy flushes ($leaked clear, $esp ESP)" test "$leaked" -eq 0 -a "$esp" -gt 1000
# guard_drops NS: packets the guard's DROP rule took in NS
guard_drops() { ip netns exec "$1" iptables-legacy -L -v -n -x | awk '$3 == "DROP" && /match-set rotor-guard-/ { s += $1 } END { print s + 0 }'; }
# How many the repair left to the guard depends on its speed (often none).
echo "  D2+D4: the guards dropped $(guard_drops hub) packets at the hub and $(guard_drops n1) at n1 until the repairs"
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
# D7: stopped daemons leave their guard in place with their SAs and
# policies (a hitless restart finds them); a policy flush that no daemon
# repairs sends nothing in clear either: every packet of a fresh probe
# stream is dropped by the guards, counted by their DROP rules.
kill "$HUB_PID" "$NODE_PID_1"
for _ in $(seq 1 50); do kill -0 "$HUB_PID" 2>/dev/null || kill -0 "$NODE_PID_1" 2>/dev/null || break; sleep 0.1; done
hub_before=$(guard_drops hub)
n1_before=$(guard_drops n1)
ip -n hub xfrm policy flush
ip -n n1 xfrm policy flush
echo "  D7: hub and n1 stopped, their policies flushed; a 3 s probe stream each way"
capture wire-stopped 5
probes 1 3 $RATE
leaked=$(python3 -c "import json; print(json.load(open('$WORK/wire-stopped.json'))['plain_probe'])")
hub_d=$(($(guard_drops hub) - hub_before))
n1_d=$(($(guard_drops n1) - n1_before))
echo "  the wire with the daemons stopped and their policies flushed: $(cat "$WORK/wire-stopped.json")"
check "D7: not one probe packet in clear on the wire ($leaked)" test "$leaked" -eq 0
check "D7: the stopped hub's guard dropped its stream ($hub_d of $((3 * RATE)) packets)" test "$hub_d" -ge $((3 * RATE * 9 / 10))
check "D7: the stopped n1's guard too ($n1_d)" test "$n1_d" -ge $((3 * RATE * 9 / 10))
echo "daemon drift: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; tail -n 20 "$WORK/n1.log"; exit 1; }
