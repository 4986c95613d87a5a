#!/bin/bash
# C1-C4: the daemons confined as the systemd units confine them
# (packaging/systemd, with the drop-in the legacy guard tools need): root
# whose only capabilities are CAP_NET_ADMIN, CAP_NET_RAW and CAP_IPC_LOCK (`rotor check`:
# CAP_NET_ADMIN alone) (setpriv
# empties the bounding set but for it, as CapabilityBoundingSet= does; no
# new privileges), reporting to a NOTIFY_SOCKET as systemd listens on one:
#  C1 `rotor check` passes without CAP_SYS_ADMIN (its ESP probe then uses
#     the namespace it runs in) and leaves no SA behind, also beside a
#     running hub
#  C2 without CAP_NET_ADMIN it fails, naming the privileges
#  C3 a confined hub and node start, key their SAs and rotate
#  C5 the hub (CAP_IPC_LOCK, as the units give it) locks its memory; a node
#     without it under a small RLIMIT_MEMLOCK runs, locks nothing, says so
#  C4 the hub says READY=1 once it answers, pings the watchdog at half
#     WATCHDOG_USEC, brackets `rotor reload` with RELOADING=1 (with the
#     monotonic clock) and READY=1, and says STOPPING=1 at SIGTERM
. "$(dirname "$0")/daemon-lib.sh"
CONFINE_CHECK=(setpriv '--bounding-set=-all,+net_admin' --inh-caps=-all --no-new-privs)
# The daemons with CAP_NET_RAW too, as the units give it with the drop-in
# for guard = "iptables-legacy" (docs/operations.md): the legacy iptables
# (the only one UML's kernel can serve) opens a raw socket; the nf_tables
# iptables of the units' default does not.
CONFINE=(setpriv '--bounding-set=-all,+net_admin,+net_raw,+ipc_lock' --inh-caps=-all --no-new-privs)
# A node confined without CAP_IPC_LOCK under a small locked-memory limit:
# it must run, and lock nothing.
CONFINE_NOLOCK=(prlimit --memlock=65536:65536 setpriv '--bounding-set=-all,+net_admin,+net_raw' --inh-caps=-all --no-new-privs)
topo_up 1
configs 1 1s 500ms
sas() { ip -n hub xfrm state | grep -c '^src'; }

ip netns exec hub "${CONFINE_CHECK[@]}" "$ROTOR" check --config "$WORK/hub.toml" >"$WORK/check.log" 2>&1
rc=$?
sed 's/^/  check: /' "$WORK/check.log"
check "C1: rotor check passes with CAP_NET_ADMIN alone (exit $rc)" test "$rc" = 0
check "C1: its probe found ESP" grep -q '^ok   kernel' "$WORK/check.log"
check "C1: its probe SA is gone ($(sas) SAs in the hub's namespace)" test "$(sas)" = 0
ip netns exec hub setpriv --bounding-set=-all --inh-caps=-all "$ROTOR" check --config "$WORK/hub.toml" >"$WORK/check2.log" 2>&1
rc=$?
check "C2: without CAP_NET_ADMIN it fails (exit $rc)" test "$rc" != 0
check "C2: naming the privileges" grep -q '^FAIL privileges' "$WORK/check2.log"

# What systemd's end of NOTIFY_SOCKET would see: one line per datagram,
# with the listener's CLOCK_MONOTONIC at receipt.
python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "w", buffering=1) as f:
    while True:
        m = s.recv(4096).decode()
        f.write("%d %s\n" % (time.monotonic_ns() // 1000, m.replace("\n", " ")))
' "$WORK/notify" "$WORK/notify.log" &
PIDS+=("$!")
wait_for_file() { for _ in $(seq 1 50); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }
wait_for_file "$WORK/notify" || fail "the notification listener is up"
# 1 s watchdog: a ping every 500 ms.
ip netns exec hub env NOTIFY_SOCKET="$WORK/notify" WATCHDOG_USEC=1000000 \
	"${CONFINE[@]}" "$ROTOR" hub --config "$WORK/hub.toml" >>"$WORK/hub.log" 2>&1 &
HUB_PID=$!
PIDS+=("$HUB_PID")
for _ in $(seq 1 200); do hub_status >/dev/null && break; sleep 0.1; done
ip netns exec n1 "${CONFINE_NOLOCK[@]}" "$ROTOR" node --config "$WORK/n1.toml" >>"$WORK/n1.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")
check "C3: confined, the hub and n1 key their SAs" wait_all_sending 1 20
sleep 3
gen=$(peer_field n1 generation)
check "C3: and rotate (generation $gen after 3 s more at 1 s)" test "$gen" -ge 3
locked() { awk '/^VmLck:/ { print $2 }' "/proc/$1/status"; }
check "C5: the hub, with CAP_IPC_LOCK as the unit gives it, locked its memory (VmLck $(locked "$HUB_PID") kB)" \
	test "$(locked "$HUB_PID")" -gt 1000
check "C5: and says so" grep -q "memory locked" "$WORK/hub.log"
check "C5: n1, without CAP_IPC_LOCK under a 64 KiB limit, locked nothing (VmLck $(locked "$NODE_PID") kB)" \
	test "$(locked "$NODE_PID")" = 0
check "C5: and says why" grep -q "memory not locked (no CAP_IPC_LOCK" "$WORK/n1.log"
ip netns exec hub "${CONFINE_CHECK[@]}" "$ROTOR" check --config "$WORK/hub.toml" >"$WORK/check3.log" 2>&1
rc=$?
probe_sas=$(ip -n hub xfrm state | grep -Ec '203\.0\.113\.|2001:db8:ffff:')
check "C1: beside the running hub too (exit $rc), leaving no probe SA ($probe_sas)" test "$rc" = 0 -a "$probe_sas" = 0
msgs() { cut -d' ' -f2- "$WORK/notify.log" | grep -v '^WATCHDOG=1$'; }
check "C4: the first notification is READY=1 ($(head -n 1 "$WORK/notify.log" | cut -d' ' -f2-))" test "$(head -n 1 "$WORK/notify.log" | cut -d' ' -f2-)" = READY=1
pings=$(grep -c ' WATCHDOG=1$' "$WORK/notify.log")
check "C4: the watchdog is pinged every 500 ms ($pings pings in 4 s and more)" test "$pings" -ge 7
out=$(ip netns exec hub "${CONFINE[@]}" "$ROTOR" reload --socket "$WORK/hub.sock" 2>&1)
echo "  $out"
sleep 0.5
check "C4: the reload is bracketed by RELOADING=1 and READY=1 ($(msgs | tr '\n' '|'))" test "$(msgs | sed 's/MONOTONIC_USEC=[0-9]*/MONOTONIC_USEC=T/' | tr '\n' '|')" = "READY=1|RELOADING=1 MONOTONIC_USEC=T|READY=1|"
check "C4: MONOTONIC_USEC is the clock the listener reads (within 1 s)" python3 -c "
import sys
for line in open('$WORK/notify.log'):
    at, *m = line.split()
    if m[0] == 'RELOADING=1':
        sent = int(m[1].split('=')[1])
        print('  sent', sent, 'received', at)
        sys.exit(0 if 0 <= int(at) - sent < 1000000 else 1)
sys.exit(1)"
kill "$HUB_PID"
wait "$HUB_PID"
sleep 0.2
check "C4: SIGTERM: STOPPING=1 last ($(msgs | tail -n 1))" test "$(msgs | tail -n 1)" = STOPPING=1
echo "daemon confined: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 30 "$WORK/hub.log"; exit 1; }
