#!/bin/bash
# R1-R6: live reload under a 100 packets/s probe stream each way between the
# hub and n1, rotating every 2 s, the wire at the hub captured throughout:
#  R1 `rotor reload` adding n3 (configured, then started): it initialises
#  R2 `rotor reload` removing n2: its SAs and policies leave the hub's kernel
#  R3 `rotor reload` changing n3's rotation period: n3 only
#  R4 a configuration with an error: refused with the error, nothing changes
#  R5 a changed port: refused (needs a restart), nothing changes
#  R6 SIGHUP with n2 back: it re-initialises
#  n1 is never touched: not one probe lost, no init, nothing in clear.
. "$(dirname "$0")/daemon-lib.sh"
RATE=100
topo_up 3
configs 3 2s 500ms 6
cp "$WORK/hub.toml" "$WORK/hub-all.toml"
# hub_config NAMES...: the hub's config with only these nodes
hub_config() {
	python3 - "$WORK/hub-all.toml" "$@" >"$WORK/hub.toml" <<'PY'
import sys
text = open(sys.argv[1]).read()
keep = set(sys.argv[2:])
head, *nodes = text.split("\n[[node]]")
out = [head] + ["[[node]]" + n for n in nodes if any(f'name = "{k}"' in n for k in keep)]
print("\n".join(out))
PY
}
hub_config n1 n2
start_hub
start_node 1
start_node 2
check "n1 and n2 initialised and both sides send" wait_all_sending 2 20
reload() { ip netns exec hub "$ROTOR" reload --socket "$WORK/hub.sock" 2>&1; }
hub_sas_to() { ip -n hub xfrm state | grep -c "dst $1"; }
hub_policies_to() { ip -n hub xfrm policy | grep -c "dst $1"; }
WIRE_SECONDS=24 probes 1 26 $RATE &
PROBES=$!
sleep 3
hub_config n1 n2 n3
out=$(reload)
echo "  t=3s: R1 $out"
start_node 3
check "R1: the reload reported n3 added" grep -q "added n3" <<<"$out"
check "R1: n3 initialised and both sides send" wait_all_sending 3 10
sleep 2
hub_config n1 n3
out=$(reload)
echo "  t=8s: R2 $out"
check "R2: the reload reported n2 removed" grep -q "removed n2" <<<"$out"
check "R2: n2's SAs left the hub's kernel ($(hub_sas_to "$(outer 2)"))" test "$(hub_sas_to "$(outer 2)")" -eq 0
check "R2: n2's policies left the hub's kernel ($(hub_policies_to "$(outer 2)"))" test "$(hub_policies_to "$(outer 2)")" -eq 0
kill "$NODE_PID_2"; wait "$NODE_PID_2" 2>/dev/null
ip netns exec n2 "$ROTOR" purge --config "$WORK/n2.toml" >>"$WORK/purge.log" 2>&1
sleep 2
sed -i '/name = "n3"/a rotate_interval = "3s"' "$WORK/hub.toml"
out=$(reload)
echo "  t=12s: R3 $out"
check "R3: the reload reported n3 changed, n1 unchanged" grep -q "changed n3, 1 unchanged" <<<"$out"
sleep 2
cp "$WORK/hub.toml" "$WORK/hub-good.toml"
sed -i '0,/^grace = .*/s//grace = "banana"/' "$WORK/hub.toml"
out=$(reload)
echo "  t=14s: R4 $out"
check "R4: a bad configuration is refused, naming the key" grep -q "hub.grace" <<<"$out"
check "R4: ... and changes nothing (2 nodes served)" test "$(hub_status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["peers"]))')" -eq 2
sed 's/^port = 4820/port = 4821/' "$WORK/hub-good.toml" >"$WORK/hub.toml"
out=$(reload)
echo "  t=14s: R5 $out"
check "R5: a port change is refused as needing a restart" grep -q "hub.port changed" <<<"$out"
sleep 2
hub_config n1 n2 n3
start_node 2
kill -HUP "$HUB_PID"
echo "  t=16s: R6 SIGHUP with n2 back"
check "R6: after SIGHUP n2 is served again and both sides send" wait_all_sending 3 10
check "R6: the hub logged the reload" grep -q "configuration reloaded" "$WORK/hub.log"
wait "$PROBES"
echo "  the wire at the hub's bridge port, 24 s of frames: $(cat "$WORK/wire.json")"
check "R1-R6: on the wire n1's probe streams are ESP only" python3 -c "
import json; d=json.load(open('$WORK/wire.json')); raise SystemExit(0 if d['esp'] > 2000 and d['plain_probe'] == 0 else 1)"
check "R1-R6: n1 lost not one probe packet, either way" probe_report 1
check "R1-R6: n1 never re-initialised (hub's count $(peer_field n1 inits))" test "$(peer_field n1 inits)" -eq 1
for ns in hub n1; do
	bad=$(ip netns exec "$ns" awk '$2 != 0 && $1 != "XfrmInTmplMismatch"' /proc/net/xfrm_stat)
	check "R1-R6: no XFRM errors in $ns but the ICMP of closed control ports ($(echo $bad))" test -z "$bad"
done
figures R1-R6 1 $RATE
echo "daemon reload: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
