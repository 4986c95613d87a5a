#!/bin/bash
# S1 steady: a hub and 3 nodes (transport mode) rotating every second, a
# 200 packets/s probe stream each way per node through ESP; zero missing
# sequence numbers, no XFRM errors in any namespace, >= DURATION-5 rotations
# per node, one init each. S8: stop and purge.
. "$(dirname "$0")/daemon-lib.sh"
N=3
DURATION=${ROTOR_S1_SECONDS:-30}
METRICS=127.0.0.1:9474
steady S1 $N "$DURATION"
# Metrics: a real scrape of the running hub, checked by Prometheus' own
# promtool and against the hub's status.
ip netns exec hub python3 -c '
import sys, urllib.request
r = urllib.request.urlopen("http://127.0.0.1:9474/metrics", timeout=5)
assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
sys.stdout.write(r.read().decode())' >"$WORK/metrics.txt"
check "metrics: promtool accepts the scrape ($(wc -l <"$WORK/metrics.txt") lines)" sh -c "promtool check metrics <'$WORK/metrics.txt'"
sample() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/metrics.txt"; }
rot_status=$(hub_status | python3 -c 'import json,sys; print(sum(p["rotations"] for p in json.load(sys.stdin)["peers"]))')
check "metrics: rotor_rotations_total ($(sample rotor_rotations_total)) is within the status' total ($rot_status) and >= $((N * (DURATION - 5)))" \
	sh -c "[ $(sample rotor_rotations_total) -le $rot_status ] && [ $(sample rotor_rotations_total) -ge $((N * (DURATION - 5))) ]"
check "metrics: 3 peers in sync or awaiting confirmation" \
	test "$(( $(sample 'rotor_peers{state="in_sync"}') + $(sample 'rotor_peers{state="awaiting_confirm"}') ))" -eq $N
check "metrics: one init per node ($(sample rotor_inits_total))" test "$(sample rotor_inits_total)" -eq $N
check "metrics: a series per node" test "$(grep -c '^rotor_node_rotations_total{node="n[1-3]"}' "$WORK/metrics.txt")" -eq $N
check "metrics: rotation lag under 5 s with 1 s rotations ($(sample rotor_rotation_lag_seconds))" \
	python3 -c "import sys; sys.exit(not float('$(sample rotor_rotation_lag_seconds)') < 5)"
# Key material stays out of core dumps: no core file limit, not dumpable.
check "the hub may not dump core ($(grep 'Max core file size' /proc/$HUB_PID/limits | tr -s ' '))" \
	sh -c "grep -Eq 'Max core file size +0 +0 ' /proc/$HUB_PID/limits"
ip netns exec hub ip -s xfrm state | grep -c "^src" | sed 's/^/  hub SAs now: /'
# S8: SIGTERM leaves rotor's SAs and policies in place (traffic goes on);
# `rotor purge` removes exactly them. A foreign SA and policy (reqid 7,
# another daemon's) survive both.
ip -n hub xfrm state add src 10.9.0.1 dst 10.9.0.200 proto esp spi 0x77 reqid 7 mode transport \
	aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
ip -n hub xfrm policy add src 10.9.0.1/32 dst 10.9.0.200/32 dir out tmpl proto esp reqid 7 mode transport
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null
owned_sas() { ip netns exec hub "$ROTOR_XFRMCTL" dump sa --owned | wc -l; }
owned_policies() { ip netns exec hub "$ROTOR_XFRMCTL" dump policy --owned | wc -l; }
check "S8: after SIGTERM the hub's SAs stay ($(owned_sas))" test "$(owned_sas)" -ge $((2 * N))
check "S8: after SIGTERM the hub's policies stay ($(owned_policies))" test "$(owned_policies)" -ge $((2 * N))
check "S8: rotor purge succeeds on the stopped hub" ip netns exec hub "$ROTOR" purge --config "$WORK/hub.toml"
check "S8: after rotor purge the hub has no rotor SA" test "$(owned_sas)" -eq 0
check "S8: after rotor purge the hub has no rotor policy" test "$(owned_policies)" -eq 0
check "S8: rotor purge removed the hub's state" test ! -e "$WORK/state/hub.snap"
check "S8: the foreign SA (reqid 7) is still there" test "$(ip -n hub xfrm state list spi 0x77 | grep -c '^src')" -eq 1
check "S8: the foreign policy (reqid 7) is still there" test "$(ip -n hub xfrm policy list dst 10.9.0.200/32 | grep -c '^src')" -eq 1
# A running node's purge is refused (its lock is held) and changes nothing:
# the SA its outbound policy names is still there, and the policies too
# (the SA count itself moves as grace periods end).
tx=$(ip -n n1 xfrm policy list dir out | sed -n 's/.*spi \(0x[0-9a-f]*\).*/\1/p' | head -n 1)
policies=$(ip -n n1 xfrm policy | grep -c '^src')
if ip netns exec n1 "$ROTOR" purge --config "$WORK/n1.toml" >"$WORK/purge-live.log" 2>&1; then
	fail "S8: rotor purge refuses while the node runs"
else
	pass "S8: rotor purge refuses while the node runs ($(tail -n 1 "$WORK/purge-live.log"))"
fi
check "S8: the refused purge left n1's sending SA ($tx) alone" test -n "$tx" -a "$(ip -n n1 xfrm state list spi "$tx" | grep -c '^src')" -ge 1
check "S8: ... and its policies ($policies)" test "$(ip -n n1 xfrm policy | grep -c '^src')" -eq "$policies"
for i in $(seq 1 $N); do eval "kill \$NODE_PID_$i"; done
sleep 2
for i in $(seq 1 $N); do
	ip netns exec n$i "$ROTOR" purge --config "$WORK/n$i.toml" >>"$WORK/purge.log" 2>&1
	check "S8: after SIGTERM and rotor purge n$i has no SA or policy" test "$(ip -n n$i xfrm state | grep -c '^src'):$(ip -n n$i xfrm policy | grep -c '^src')" = 0:0
done
echo "daemon steady: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
