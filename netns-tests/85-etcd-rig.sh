#!/bin/bash
# E0, the etcd rig itself (netns-tests/etcd-lib.sh): three etcd members in
# their own namespaces on one bridge, as the hub-failover scenarios use them.
#  1 all three healthy; a put through one member is read back from each
#    member's own copy (serializable reads: replication happened)
#  2 the leader killed with -9: the two others elect a leader and serve
#    writes and linearizable reads (quorum 2 of 3); the dead one is unhealthy
#  3 it restarts on its data directory, rejoins and holds what was written
#    while it was down
#  4 the leader cut off the bridge: it cannot write alone (no quorum), the
#    two others elect a leader and serve writes; healed, it catches up
# Prints the timings: boot to healthy, writes resumed after a leader's
# death and after a cut, rejoin.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/etcd-lib.sh"

# put_via I KEY VALUE: one write through member I only, "OK" on success
put_via() { ectl_at "$1" put "$2" "$3" 2>&1; }
# put_quick I KEY VALUE: the same, given up after 300 ms: a write forwarded
# to a dead leader waits out the timeout, which bounds how precisely
# write_resumes measures
put_quick() { ectl_at "$1" --command-timeout=300ms put "$2" "$3" 2>&1; }
# get_local I KEY: member I's own copy of KEY (serializable: no quorum asked)
get_local() { ectl_at "$1" get "$2" --print-value-only --consistency=s 2>/dev/null; }
# has_local I KEY VALUE
has_local() { [ "$(get_local "$1" "$2")" = "$3" ]; }
# others I: the two members that are not I
others() { local j; for j in "${ETCD_MEMBERS[@]}"; do [ "$j" = "$1" ] || echo "$j"; done; }
# write_resumes I J KEY VALUE SECS: retry a put through I then J until one
# says OK; prints the milliseconds it took
write_resumes() {
	local t0 deadline
	t0=$(etcd_ms)
	deadline=$((t0 + $5 * 1000))
	until [ "$(put_quick "$1" "$3" "$4")" = OK ] || [ "$(put_quick "$2" "$3" "$4")" = OK ]; do
		[ "$(etcd_ms)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
	echo $(($(etcd_ms) - t0))
}
unhealthy() { ! etcd_health_once "$1"; }
report() { echo "  $*"; }
on_fail_logs() { [ "$FAILS" -eq 0 ] || etcd_log_tail 20; }
on_exit on_fail_logs

echo "E0: etcd $(etcd --version | awk '/^etcd Version/ { print $3 }'), heartbeat ${ETCD_HEARTBEAT_MS} ms, election ${ETCD_ELECTION_MS} ms"
etcd_up || die "the cluster did not become healthy within ${ETCD_UP_TIMEOUT}s"
report "boot to healthy (3 members): ${ETCD_BOOT_MS} ms"

# --- 1 healthy, replicated -----------------------------------------------------
health=$(ectl endpoint health 2>&1)
assert_eq "1: endpoint health: all three members healthy" 3 "$(grep -c ' is healthy' <<<"$health")"
assert_eq "1: put rig/k1 through member 1" OK "$(put_via 1 rig/k1 v1)"
assert_eq "1: linearizable get of rig/k1 through all members" v1 "$(ectl get rig/k1 --print-value-only 2>&1)"
for i in "${ETCD_MEMBERS[@]}"; do
	check "1: member $i's own copy of rig/k1 is v1" wait_for 5 has_local "$i" rig/k1 v1
done
members=$(ectl member list 2>&1)
assert_eq "1: member list: three started voting members" 3 "$(grep -c ', started, m[123], .*, false$' <<<"$members")"

# --- 2 the leader killed --------------------------------------------------------
L=$(etcd_leader) || die "no leader agreed on by the three members"
term0=$(etcd_term "$L")
mapfile -t O < <(others "$L")
report "leader: member $L (term $term0); followers ${O[*]}"
etcd_kill "$L"
ms=$(write_resumes "${O[0]}" "${O[1]}" rig/k2 v2 10) || fail "2: no write accepted by members ${O[*]} within 10 s of the leader's death"
report "leader $L killed (-9): writes accepted again after ${ms:-?} ms"
check "2: members ${O[*]} healthy without $L" etcd_healthy 5 "${O[@]}"
check "2: member $L reported unhealthy" unhealthy "$L"
assert_eq "2: put rig/k3 through member ${O[0]} (quorum of 2)" OK "$(put_via "${O[0]}" rig/k3 v3)"
assert_eq "2: linearizable get of rig/k3 through member ${O[1]}" v3 "$(ectl_at "${O[1]}" get rig/k3 --print-value-only 2>&1)"
L2=$(etcd_leader)
check "2: a new leader among ${O[*]} (member ${L2:-none})" test -n "$L2" -a "$L2" != "$L"
term1=$(etcd_term "${O[0]}")
check "2: the raft term went up ($term0 -> $term1)" test "${term1:-0}" -gt "$term0"

# --- 3 the killed member rejoins ------------------------------------------------
t0=$(etcd_ms)
etcd_start "$L"
check "3: member $L restarted and healthy" etcd_healthy 15 "$L"
check "3: member $L's own copy has rig/k3 (written while it was down)" wait_for 5 has_local "$L" rig/k3 v3
report "member $L rejoined and caught up after $(($(etcd_ms) - t0)) ms"
check "3: all three healthy" etcd_healthy 5

# --- 4 the leader cut off -------------------------------------------------------
L=$(etcd_leader) || die "no leader agreed on by the three members after the rejoin"
mapfile -t O < <(others "$L")
etcd_cut "etcd$L"
t0=$(etcd_ms)
ms=$(write_resumes "${O[0]}" "${O[1]}" rig/k4 v4 10) || fail "4: no write accepted by members ${O[*]} within 10 s of the leader's cut"
report "leader $L cut off: the others accepted writes again after ${ms:-?} ms"
alone=$(ectl_in "etcd$L" "$L" put rig/k5 lost 2>&1)
check "4: member $L alone refuses a write (no quorum: '$(tail -n1 <<<"$alone" | cut -c1-80)')" test "$alone" != OK
check "4: rig/k5 was not written" test -z "$(ectl_at "${O[0]}" get rig/k5 --print-value-only 2>&1)"
etcd_heal "etcd$L"
t0=$(etcd_ms)
check "4: member $L healed: its own copy has rig/k4" wait_for 15 has_local "$L" rig/k4 v4
report "member $L back on the bridge: caught up after $(($(etcd_ms) - t0)) ms"
check "4: all three healthy" etcd_healthy 10
assert_eq "4: every key written, read back" "rig/k1 v1 rig/k2 v2 rig/k3 v3 rig/k4 v4" \
	"$(ectl get rig/ --prefix 2>&1 | tr '\n' ' ' | sed 's/ $//')"

finish "etcd rig"
