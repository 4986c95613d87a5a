#!/bin/bash
# Roaming in transport mode under control loss, and a hub found by its name
# (real kernel, inside UML). FAMILY=6 runs the same over IPv6 (77).
#
#   hub $(outer 0), later $(outer 10) ---- lan ---- n1 $(outer 1), later $(outer 11)
#
# n1 has no address in either file (the hub learns it, n1 sends from what
# its route gives) and names the hub `hub.rotor.test`, which only its own
# hosts file (bind-mounted over /etc/hosts in n1's mount namespace) resolves.
#
# M1 (issue 12 (d), (e), (g)): 30 % of the control datagrams are dropped
#   both ways while n1 moves to another address mid-stream (transport mode:
#   the SAs' and policies' outer addresses are the traffic's own): the
#   stream from n1 to the hub loses packets only at the move, at most 2 s
#   (a hello and its answer must both get through the loss);
#   one from the hub to n1's new address, started at the move, too; no
#   init, the generations continue, the hub shows the new address.
# M2 (item 4): the hub is renumbered (stopped, its address and the name's
#   record changed, started on the same state): n1 finds the hub's silence,
#   resolves the name again, moves its SAs to the new address, and the
#   generations continue there without an init; no SA names the old
#   address afterwards, and a stream to the new address loses nothing.
. "$(dirname "$0")/daemon-lib.sh"

ROTATE=1s
HELLO=500ms
DURATION=${ROTOR_ROAM_DURATION:-12}
RATE=200
LEN=24
[ "$FAMILY" = 6 ] && LEN=64
HUB_A=$(outer 0)
HUB_B=$(outer 10)
N_A=$(outer 1)
N_B=$(outer 11)

topo_up 1
(umask 077; "$ROTOR" genkey >"$WORK/n1.key")
cat >"$WORK/hub.toml" <<EOT
[hub]
address = "$HUB_A"
rotate_interval = "$ROTATE"
grace = "3s"
socket = "$WORK/hub.sock"
state_dir = "$WORK/state"
guard = "$GUARD"

[[node]]
name = "n1"
psk_file = "$WORK/n1.key"
EOT
cat >"$WORK/n1.toml" <<EOT
[node]
name = "n1"
hub = "hub.rotor.test:4820"
psk_file = "$WORK/n1.key"
hello_interval = "$HELLO"
retries = 5
grace = "3s"
socket = "$WORK/n1.sock"
state_dir = "$WORK/state"
guard = "$GUARD"
EOT
# Rewritten in place later: the bind mount holds this inode.
echo "$HUB_A hub.rotor.test" >"$WORK/hosts"

node_status() { ip netns exec n1 "$ROTOR" status --socket "$WORK/n1.sock" --json 2>/dev/null; }
node_hub() { node_status | python3 -c "import json,sys; print(json.load(sys.stdin)['peers'][0]['endpoint'])" 2>/dev/null; }
hub_n1() { hub_status | python3 -c "import json,sys; p=json.load(sys.stdin)['peers'][0]; print($1)" 2>/dev/null; }
# move NS FROM TO: the new address takes over as the old one goes (as a
# DHCP lease is replaced), not deleted with it as a secondary
move() {
	local nodad=()
	[ "$FAMILY" = 6 ] && nodad=(nodad)
	[ "$FAMILY" = 4 ] && ip netns exec "$1" sysctl -qw net.ipv4.conf.veth0.promote_secondaries=1
	ip -n "$1" addr add "$3/$LEN" dev veth0 "${nodad[@]}"
	ip -n "$1" addr del "$2/$LEN" dev veth0
}
stream() { # stream NAME RECV_NS BIND SEND_NS TO SECONDS
	ip netns exec "$2" $PROBE recv --bind "$3" --duration $(($6 + 5)) --sent-file "$WORK/sent-$1" --ready-file "$WORK/ready-$1" >"$WORK/probe-$1.json" &
	PIDS+=("$!")
	for _ in $(seq 1 50); do [ -e "$WORK/ready-$1" ] && break; sleep 0.1; done
	(ip netns exec "$4" $PROBE send --to "$5" --rate $RATE --duration "$6" >"$WORK/sent-$1.tmp" && mv "$WORK/sent-$1.tmp" "$WORK/sent-$1") &
	PIDS+=("$!")
}
report() { # report NAME: "sent lost longest_outage_ms outage_runs"
	for _ in $(seq 1 $((DURATION + 15))); do [ -s "$WORK/probe-$1.json" ] && break; sleep 1; done
	python3 - "$WORK/probe-$1.json" "$WORK/sent-$1" "$RATE" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); sent = json.load(open(sys.argv[2]))["sent"]
miss = sorted(r["missing"]); runs = []; i = 0
while i < len(miss):
    j = i
    while j + 1 < len(miss) and miss[j + 1] == miss[j] + 1: j += 1
    runs.append(j - i + 1); i = j + 1
print(sent, len(miss), round(max(runs, default=0) * 1000 / float(sys.argv[3])), len(runs))
EOF
}

start_hub || exit 1
ip netns exec n1 unshare -m sh -c 'mount --bind "$1" /etc/hosts && exec "$2" node --config "$3"' \
	- "$WORK/hosts" "$ROTOR" "$WORK/n1.toml" >>"$WORK/n1.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 100); do
	[ "$(hub_n1 "int(p['state'] != 'init' and p['generation'] >= 2)")" = 1 ] && break
	sleep 0.2
done
check "n1 found the hub by name and rotates" [ "$(hub_n1 "int(p['generation'] >= 2)")" = 1 ]
check "n1 reaches the hub at $(node_hub) (hub.rotor.test)" [ "$(node_hub)" = "$(endpoint "$HUB_A" 4820)" ]
check "the hub learned n1 at $(endpoint "$N_A" 4820)" [ "$(hub_n1 "p['endpoint']")" = "$(endpoint "$N_A" 4820)" ]

# --- M1: the move, under 30 % control loss ---
control_loss 30
stream up hub "$(endpoint "$HUB_A" 5001)" n1 "$(endpoint "$HUB_A" 5001)" "$DURATION"
sleep $((DURATION / 2))
gen_before=$(hub_n1 "p['generation']")
move n1 "$N_A" "$N_B"
stream down n1 "$(endpoint "$N_B" 6001)" hub "$(endpoint "$N_B" 6001)" $((DURATION / 2))
for _ in $(seq 1 60); do
	[ "$(hub_n1 "p['endpoint']")" = "$(endpoint "$N_B" 4820)" ] && break
	sleep 0.05
done
check "M1: the hub follows n1 to $N_B under 30 % control loss" [ "$(hub_n1 "p['endpoint']")" = "$(endpoint "$N_B" 4820)" ]
read -r up_sent up_lost up_out up_runs <<<"$(report up)"
read -r dn_sent dn_lost dn_out dn_runs <<<"$(report down)"
echo "  M1: n1->hub sent=$up_sent lost=$up_lost outage=${up_out}ms runs=$up_runs; hub->n1 (from the move) sent=$dn_sent lost=$dn_lost outage=${dn_out}ms runs=$dn_runs; control datagrams dropped: $(control_dropped)"
check "M1: n1->hub lost packets only at the move (${up_runs} outage)" [ "$up_runs" -le 1 ]
# Under 30 % loss each way a move takes a hello and its answer both
# getting through, tried every quarter hello interval (125 ms): 0.49 per
# try, so 16 failed tries in a row (2 s) happen once in ~50,000 moves.
check "M1: n1->hub outage ${up_out} ms <= 2000 ms (16 tries of a hello and its answer under 30 % loss)" [ "$up_out" -le 2000 ]
check "M1: hub->n1's new address lost packets only at the move (${dn_runs} outage)" [ "$dn_runs" -le 1 ]
check "M1: hub->n1 outage ${dn_out} ms <= 2000 ms" [ "$dn_out" -le 2000 ]
check "M1: the control loss was real ($(control_dropped) datagrams dropped)" [ "$(control_dropped)" -gt 10 ]
check "M1: n1's generations continued ($gen_before -> $(hub_n1 "p['generation']"))" [ "$(hub_n1 "p['generation']")" -gt "$gen_before" ]
check "M1: no init (inits: $(hub_n1 "p['inits']"))" [ "$(hub_n1 "p['inits']")" = 1 ]
control_loss_off
check "M1: the control loss is off again" [ "$(ip netns exec hub "$(iptables_of_family)" -S | grep -c statistic)" = 0 ]

# --- M2: the hub is renumbered; n1 finds it again by name ---
gen_before=$(hub_n1 "p['generation']")
kill "$HUB_PID"
for _ in $(seq 1 50); do kill -0 "$HUB_PID" 2>/dev/null || break; sleep 0.1; done
sed -i "s/^address = .*/address = \"$HUB_B\"/" "$WORK/hub.toml"
move hub "$HUB_A" "$HUB_B"
echo "$HUB_B hub.rotor.test" >"$WORK/hosts"
renumbered_at=$(date +%s.%N)
start_hub || exit 1
for _ in $(seq 1 100); do
	[ "$(node_hub)" = "$(endpoint "$HUB_B" 4820)" ] &&
		[ "$(hub_n1 "int(p['state'] == 'in_sync' and p['generation'] > $gen_before)")" = 1 ] && break
	sleep 0.1
done
echo "  M2: n1 reaches the hub at $(node_hub), in sync at generation $(hub_n1 "p['generation']") $(python3 -c "print(round($(date +%s.%N) - $renumbered_at, 2))") s after the renumbering"
check "M2: n1 resolved the hub's name again and follows it to $HUB_B" [ "$(node_hub)" = "$(endpoint "$HUB_B" 4820)" ]
check "M2: the generations continued at the new address ($gen_before -> $(hub_n1 "p['generation']"))" [ "$(hub_n1 "p['generation']")" -gt "$gen_before" ]
check "M2: no init (inits: $(hub_n1 "p['inits']"))" [ "$(hub_n1 "p['inits']")" = 1 ]
rm -f "$WORK"/sent-* "$WORK"/ready-*
stream after hub "$(endpoint "$HUB_B" 5002)" n1 "$(endpoint "$HUB_B" 5002)" 4
sleep 4
read -r af_sent af_lost _ _ <<<"$(report after)"
echo "  M2: n1->hub at the new address: sent=$af_sent lost=$af_lost"
check "M2: a stream to the hub's new address loses nothing ($af_lost of $af_sent)" [ "$af_sent" -gt 0 ] && [ "$af_lost" = 0 ]
sleep 3
for ns in hub n1; do
	old=$(ip -n $ns xfrm state | grep -c "$HUB_A ")
	check "M2: no SA in $ns names the hub's old address ($old)" [ "$old" = 0 ]
done
check "M2: n1's log says why it moved" grep -q "resolves to a new address" "$WORK/n1.log"
if [ "$FAILS" != 0 ]; then
	for f in hub n1; do echo "--- $f.log (tail)"; tail -20 "$WORK/$f.log"; done
fi
echo "daemon roaming (IPv$FAMILY): $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
