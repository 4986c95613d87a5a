#!/bin/bash
# G1-G2: a restart adopts the clear-text guard's set that the previous run
# left (src/guard.rs reads it with one `ipset save` and adds only what it
# lacks), on the kernel's own set:
#  G1 a node configured while the hub was stopped: its pair is added, the
#     others stay (the set holds exactly the three pairs)
#  G2 a pair someone turned into a `nomatch` exception while the hub was
#     stopped counts as missing: after the restart it matches again (a
#     nomatch entry would let that flow leave in clear)
. "$(dirname "$0")/daemon-lib.sh"
N=3
topo_up $N
configs 2 1h 500ms
start_hub
SET=rotor-guard-52540000-v4
pairs() { ip netns exec hub ipset save $SET | grep -c '^add '; }
check "the first start puts in the two configured pairs" test "$(pairs)" = 2
kill "$HUB_PID"
wait "$HUB_PID" 2>/dev/null
(umask 077; "$ROTOR" genkey >"$WORK/n3.key")
printf '\n[[node]]\nname = "n3"\naddress = "%s"\npsk_file = "%s"\n' "$(outer 3)" "$WORK/n3.key" >>"$WORK/hub.toml"
ip netns exec hub ipset del $SET "$(outer 0),$(outer 1)"
ip netns exec hub ipset add $SET "$(outer 0),$(outer 1)" nomatch
start_hub
check "G1: after the restart the set holds the three pairs" test "$(pairs)" = 3
check "G1: n3's pair was added" ip netns exec hub ipset -q test $SET "$(outer 0),$(outer 3)"
check "G1: n2's pair stayed" ip netns exec hub ipset -q test $SET "$(outer 0),$(outer 2)"
check "G2: n1's pair matches again (no nomatch exception left)" ip netns exec hub ipset -q test $SET "$(outer 0),$(outer 1)"
check "G2: no entry carries an option" test "$(ip netns exec hub ipset save $SET | grep '^add ' | awk 'NF > 3' | wc -l)" = 0
echo "daemon guard adoption: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ] || { tail -n 20 "$WORK/hub.log"; exit 1; }
