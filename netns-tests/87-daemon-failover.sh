#!/bin/bash
# F1, hub failover on etcd: two hubs (namespaces hub = A, hubb = B) share one
# etcd prefix (etcd-lib.sh's three members) and the service address 10.9.0.1/24
# on the nodes' LAN; neither has any other address there, so the leader
# alone reaches and is reached by the nodes. Two nodes rotate every second
# and stream 100 probe packets/s each to the service address (ESP with the
# node->hub SA); a receiver listens on it in each hub's namespace (B's with
# ip_nonlocal_bind, so it is ready before B holds the address).
#  1 A starts alone and leads: it holds the service address; B starts and
#    waits: no address, no SA, no policy, no control socket
#  2 A's host dies under traffic: its link to the nodes' LAN goes down and
#    its process is killed (-9), so nothing of A receives or answers. B
#    takes over (leader key, service address, both nodes' SAs in B's
#    kernel, B sends to every node); no node re-initialises (inits on the
#    hub's records and on each node); the probe outage of each stream
#    stays within the bound below
#  3 A's host comes back (link up, its kernel still holding the address
#    and the SAs, as after a frozen VM resumes) and a service manager
#    starts A again: it gives up the address it left behind and waits as
#    the standby; B keeps leading
#  4 B cut off from etcd (its etcd link down; the nodes' LAN stays): B
#    steps down on its own clock (exit 75, the address given up) before A
#    leads; A takes over with the kernel objects it kept and serves every
#    node; no node re-initialises
. "$(dirname "$0")/daemon-lib.sh"
. "$(dirname "$0")/etcd-lib.sh"
. "$(dirname "$0")/ha-lib.sh"
trap 'etcd_cleanup; cleanup' EXIT
N=2
PREFIX=rotor/f1
RATE=100
TTL_S=2
# The lease runs out TTL after A's last keep-alive (<= TTL after the kill),
# etcd finds it expired within its 500 ms check, then B campaigns, completes
# its warm copy of the records, installs the clear-text guard (~1.5 s of
# iptables-legacy processes in UML) and every SA and policy, then takes and
# announces the address: TTL + 3 s in all here. Every packet sent to the
# address from A's death until the nodes heard B's announcement is lost.
BOUND_MS=$((TTL_S * 1000 + 3000))
# A node's patience (hello_interval x retries, 7 s) must outlast the
# takeover, or it falls back to init.
RETRIES=14
ha_pair_up $N $PREFIX $TTL_S $RETRIES

no_svc() { ! ha_has_svc "$1"; }
leader_val() { ectl get "$PREFIX/leader" --print-value-only 2>/dev/null | head -n1; }

start_hub || { tail -n 20 "$WORK/hub.log"; exit 1; }
A_PID=$HUB_PID
for i in $(seq 1 $N); do start_node "$i"; done
check "1: every node initialised and A sends to each" wait_all_sending $N 20
check "1: A holds the service address" ha_has_svc hub
ip netns exec hubb "$ROTOR" hub --config "$WORK/hubb.toml" >>"$WORK/hubb.log" 2>&1 &
B_PID=$!
PIDS+=("$B_PID")
waiting() { grep -q "standby: waiting to lead" "$WORK/hubb.log"; }
check "1: B waits as the standby" wait_ms 15000 waiting
sleep 1
check "1: the standby B holds no service address" no_svc hubb
check "1: the standby B installed no SA (SAs: $(ha_sas_of hubb))" test "$(ha_sas_of hubb)" = 0
check "1: the standby B's clear-text guard is in, its set empty ($(ha_standby_guard hubb))" ha_standby_guard hubb
check "1: the standby B serves no control socket" test ! -S "$WORK/hubb.sock"
echo "  leader key: $(leader_val)"
sleep 2
hub_inits_before="$(peer_field n1 inits) $(peer_field n2 inits)"
node_inits_before="$(node_inits 1) $(node_inits 2)"
gen_before=$(peer_field n1 generation)

# Probes: each node -> the service address; a receiver in each hub.
rm -f "$WORK"/sent-* "$WORK"/ready-* "$WORK"/probe-*.json
DUR=12
PROBE_PIDS=()
for i in $(seq 1 $N); do
	for ns in hub hubb; do
		ip netns exec $ns $PROBE recv --bind "$SVC:$((5000 + i))" --duration $((DUR + 5)) --sent-file "$WORK/sent-$i" --ready-file "$WORK/ready-$ns-$i" >"$WORK/probe-$ns-$i.json" &
		PROBE_PIDS+=($!)
	done
done
for _ in $(seq 1 100); do
	[ "$(ls "$WORK"/ready-* 2>/dev/null | wc -l)" -ge $((2 * N)) ] && break
	sleep 0.1
done
for i in $(seq 1 $N); do
	(ip netns exec "n$i" $PROBE send --to "$SVC:$((5000 + i))" --rate $RATE --duration $DUR >"$WORK/sent-$i.tmp" && mv "$WORK/sent-$i.tmp" "$WORK/sent-$i") &
	PROBE_PIDS+=($!)
done
sleep 3
ip -n hub link set veth0 down
kill -9 "$A_PID"
t0=$(etcd_ms)
echo "  A's host died under traffic (link down, process killed with -9)"
leads_b() { [ "$(leader_val)" != "" ] && grep -q 'INFO serving' "$WORK/hubb.log" && test -S "$WORK/hubb.sock"; }
check "2: B leads and serves" wait_ms 10000 leads_b
t_serve=$(($(etcd_ms) - t0))
# Taken in its first step, once its SAs are in.
check "2: B holds the service address" wait_ms 5000 ha_has_svc hubb
check "2: B sends to every node" wait_ms 10000 ha_sending hubb "$WORK/hubb.sock" $N
# Rotations go on under B, from the generations A left in etcd.
sleep 2
gen_after=$(ha_field hubb "$WORK/hubb.sock" n1 generation)
check "2: n1's generations went on under B ($gen_before -> $gen_after)" test "$gen_after" -gt "$gen_before"
hub_inits_after="$(ha_field hubb "$WORK/hubb.sock" n1 inits) $(ha_field hubb "$WORK/hubb.sock" n2 inits)"
node_inits_after="$(node_inits 1) $(node_inits 2)"
check "2: no node re-initialised, hub records (inits $hub_inits_before -> $hub_inits_after)" test "$hub_inits_before" = "$hub_inits_after"
check "2: no node re-initialised, nodes (inits $node_inits_before -> $node_inits_after)" test "$node_inits_before" = "$node_inits_after"
for ns in hub hubb; do
	for i in $(seq 1 $N); do
		check "2: $ns's kernel holds the SAs of n$i ($(ha_sas_with $ns $i))" ha_sas_with $ns $i
	done
done
for j in "${PROBE_PIDS[@]}"; do wait "$j" 2>/dev/null; done
# Lost: missing at both receivers (each counts against what was sent).
report() {
	local i bad=0
	for i in $(seq 1 $N); do
		$PROBE outages --rate $RATE --bound $BOUND_MS --max-runs 1 --all-received --label "n$i up (at A/B)" "$WORK/probe-hub-$i.json" "$WORK/probe-hubb-$i.json" || bad=1
	done
	return $bad
}
check "2: at most one outage per stream, each within ${BOUND_MS} ms (lease TTL ${TTL_S} s + 3 s)" report
echo "  takeover: A's host died -> B serving after ${t_serve} ms"

# 3: A's host back, A restarted as a service manager would: it gives up
# what it left.
ip -n hub link set veth0 up
ip netns exec hub "$ROTOR" hub --config "$WORK/hub.toml" >>"$WORK/hub-again.log" 2>&1 &
A2=$!
PIDS+=("$A2")
waiting_a() { grep -q "standby: waiting to lead" "$WORK/hub-again.log"; }
check "3: A restarted waits as the standby" wait_ms 15000 waiting_a
check "3: A gave up the service address it had left" no_svc hub
check "3: B still leads" ha_sending hubb "$WORK/hubb.sock" $N
check "3: B is still running" kill -0 "$B_PID"
A_PID=$A2

# 4: the leader cut off from etcd.
inits4_before="$(node_inits 1) $(node_inits 2)"
etcd_cut hubb
t1=$(etcd_ms)
b_exited() { ! kill -0 "$B_PID" 2>/dev/null; }
check "4: B, cut off from etcd, stops" wait_ms $((TTL_S * 1000 + 2000)) b_exited
t_down=$(($(etcd_ms) - t1))
wait "$B_PID" 2>/dev/null
b_rc=$?
check "4: B exits with status 75 (stepped down; rc $b_rc)" test "$b_rc" = 75
check "4: B gave up the service address" no_svc hubb
a_serves() { ha_status hub "$WORK/hub.sock" >/dev/null; }
check "4: A leads and serves" wait_ms 10000 a_serves
t_a=$(($(etcd_ms) - t1))
check "4: A holds the service address" wait_ms 5000 ha_has_svc hub
check "4: A sends to every node" wait_ms 10000 ha_sending hub "$WORK/hub.sock" $N
# B's step-down is logged before A's lead (one clock: the same UML).
stamp() { grep -m1 "$2" "$1" | cut -d' ' -f1; }
b_down=$(stamp "$WORK/hubb.log" "stepping down")
a_lead=$(stamp "$WORK/hub-again.log" "INFO leading")
check "4: B stepped down ($b_down) before A led ($a_lead)" test -n "$b_down" -a -n "$a_lead" -a "$b_down" \< "$a_lead"
sleep 3
inits4_after="$(node_inits 1) $(node_inits 2)"
check "4: no node re-initialised (inits $inits4_before -> $inits4_after)" test "$inits4_before" = "$inits4_after"
echo "  leader cut off: B exited after ${t_down} ms, A serving after ${t_a} ms"
echo "daemon failover: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { echo "--- hub A"; tail -n 20 "$WORK/hub.log"; echo "--- hub B"; tail -n 30 "$WORK/hubb.log"; echo "--- hub A again"; tail -n 30 "$WORK/hub-again.log"; exit 1; }
