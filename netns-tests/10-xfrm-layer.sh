#!/bin/bash
# Real-kernel tests of rotor's XFRM layer (crates/rotor-xfrm), run inside UML
# by scripts/uml-run.sh. Every SA and policy is installed through our Rust
# layer (rotor-xfrmctl); every assertion reads the kernel's own state (dumps,
# per-SA counters, /proc/net/xfrm_stat), never our logs.
#
#   T1 transport pair IPv4 and IPv6: ping through ESP both ways, per-SA counters
#      rise on the intended SAs, no XFRM errors in either namespace
#   T2 two outbound SAs for one peer: packets leave on the SPI the policy names;
#      one policy update moves them to the other SPI (counters prove it)
#   T3 tunnel mode between two subnets behind the two hosts
#   T4 per-socket IPsec bypass: a UDP socket with the bypass talks past a
#      policy that has no SA; one without it cannot
#   T4b a fail-closed (block) outbound policy drops and counts, and unblocks
#   T5 kernel errors carry errno and the kernel's text (duplicate SA)
#   T6 remove-owned deletes all of ours and leaves a foreign SA and policy; a
#      deletion by (destination, SPI) of the foreign SA is refused
#   T7 10,000 SAs in batched writes, dumped back; SAs/s for our layer and for
#      `ip -batch` doing the same work in the same boot
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
XC=${ROTOR_XFRMCTL:-$HERE/../target/debug/rotor-xfrmctl}
BENCH_N=${ROTOR_BENCH_SAS:-10000}
[ -x "$XC" ] || { echo "FAIL: rotor-xfrmctl not found at $XC (build it, or set ROTOR_XFRMCTL)"; exit 1; }

FAILS=0
PASSES=0
pass() { echo "PASS: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
check() { # check DESCRIPTION COMMAND...
	local what=$1; shift
	if "$@"; then pass "$what"; else fail "$what"; fi
}
xc() { local ns=$1; shift; ip netns exec "$ns" "$XC" "$@"; }
q() { "$@" >/dev/null 2>&1; } # run quietly, keep the exit status

# packets on the SA (dst, spi) in namespace ns, from our own dump (0 if absent)
sa_packets() {
	local ns=$1 dst=$2 spi=$3 v
	v=$(xc "$ns" dump sa | awk -v s="$(printf 'spi=0x%08x' "$spi")" -v d="dst=$dst" \
		'$2 == s && $4 == d { for (i = 1; i <= NF; i++) if ($i ~ /^packets=/) { sub("packets=", "", $i); print $i } }')
	echo "${v:-0}"
}

# every error counter of /proc/net/xfrm_stat in ns must be zero
xfrm_stat_clean() {
	local ns=$1 bad
	bad=$(ip netns exec "$ns" cat /proc/net/xfrm_stat | awk '$2 != 0')
	if [ -n "$bad" ]; then
		echo "  xfrm_stat in $ns: $bad"
		return 1
	fi
}

setup_pair() {
	ip netns del hub 2>/dev/null; ip netns del node 2>/dev/null
	ip netns add hub && ip netns add node
	ip link add veth0 netns hub type veth peer name veth0 netns node
	for ns in hub node; do
		ip -n $ns link set lo up
		ip -n $ns link set veth0 up
	done
	ip -n hub addr add 10.9.0.1/24 dev veth0
	ip -n node addr add 10.9.0.2/24 dev veth0
	ip -n hub addr add fd00:9::1/64 dev veth0 nodad
	ip -n node addr add fd00:9::2/64 dev veth0 nodad
}

K1=0x0101010101010101010101010101010101010101
K2=0x0202020202020202020202020202020202020202020202020202020202020202a2a2a2a2
K3=0x0303030303030303030303030303030303030303
K4=0x0404040404040404040404040404040404040404

# install_transport FAMILY_HUB FAMILY_NODE SPI_H2N SPI_N2H: one batch per side
install_transport() {
	local h=$1 n=$2 s_hn=$3 s_nh=$4
	xc hub batch - <<EOF || return 1
sa add --src $h --dst $n --spi $s_hn --key $K1 --peer 1
sa add --src $n --dst $h --spi $s_nh --key $K2 --peer 1
policy add --dir out --src $h --dst $n --spi $s_hn --peer 1
policy add --dir in --src $n --dst $h --peer 1
EOF
	xc node batch - <<EOF || return 1
sa add --src $h --dst $n --spi $s_hn --key $K1 --peer 1
sa add --src $n --dst $h --spi $s_nh --key $K2 --peer 1
policy add --dir out --src $n --dst $h --spi $s_nh --peer 1
policy add --dir in --src $h --dst $n --peer 1
EOF
}

echo "== probe"
check "probe: kernel can create rfc4106 ESP SAs with ESN (v4+v6)" "$XC" probe

setup_pair

echo "== T1 transport pair"
for fam in 4 6; do
	if [ $fam = 4 ]; then H=10.9.0.1; N=10.9.0.2; SHN=0x1001; SNH=0x2001
	else H=fd00:9::1; N=fd00:9::2; SHN=0x1601; SNH=0x2601; fi
	check "T1 IPv$fam: install transport pair in one batch per side" install_transport $H $N $SHN $SNH
	check "T1 IPv$fam: ping hub->node through ESP" q ip netns exec hub ping -$fam -c 5 -i 0.05 -W 2 -q $N
	check "T1 IPv$fam: ping node->hub through ESP" q ip netns exec node ping -$fam -c 5 -i 0.05 -W 2 -q $H
	hub_out=$(sa_packets hub $N $SHN); node_in=$(sa_packets node $N $SHN)
	node_out=$(sa_packets node $H $SNH); hub_in=$(sa_packets hub $H $SNH)
	echo "  counters: hub out $SHN=$hub_out node in $SHN=$node_in node out $SNH=$node_out hub in $SNH=$hub_in"
	check "T1 IPv$fam: hub->node SA counted >= 10 packets on both ends" \
		test "$hub_out" -ge 10 -a "$node_in" -ge 10
	check "T1 IPv$fam: node->hub SA counted >= 10 packets on both ends" \
		test "$node_out" -ge 10 -a "$hub_in" -ge 10
	check "T1 IPv$fam: sender and receiver counts agree" \
		test "$hub_out" -eq "$node_in" -a "$node_out" -eq "$hub_in"
done
dump_has() { xc "$1" dump sa | grep -q "$2"; }
check "T1: dump shows rfc4106, 288-bit key, ESN window 1024" \
	dump_has hub 'spi=0x00002001 .*replay_window=1024 esn=true rfc4106=true key_bits=288'
check "T1: no XFRM errors in hub" xfrm_stat_clean hub
check "T1: no XFRM errors in node" xfrm_stat_clean node

echo "== T2 outbound SPI switch by one policy update"
# second generation hub->node: SA 0x1002 on both sides, policy still on 0x1001
xc hub sa add --src 10.9.0.1 --dst 10.9.0.2 --spi 0x1002 --key $K3 --peer 1 &&
	xc node sa add --src 10.9.0.1 --dst 10.9.0.2 --spi 0x1002 --key $K3 --peer 1 ||
	fail "T2: install second outbound SA"
a0=$(sa_packets hub 10.9.0.2 0x1001); b0=$(sa_packets hub 10.9.0.2 0x1002)
ip netns exec hub ping -c 20 -i 0.02 -W 2 -q 10.9.0.2 >/dev/null || fail "T2: ping before switch"
a1=$(sa_packets hub 10.9.0.2 0x1001); b1=$(sa_packets hub 10.9.0.2 0x1002)
echo "  before switch: 0x1001 +$((a1 - a0)), 0x1002 +$((b1 - b0))"
check "T2: before the update, all 20 go out on the pinned SPI 0x1001" test $((a1 - a0)) -eq 20 -a $((b1 - b0)) -eq 0
check "T2: policy update to SPI 0x1002" xc hub policy update --dir out --src 10.9.0.1 --dst 10.9.0.2 --spi 0x1002 --peer 1
ip netns exec hub ping -c 20 -i 0.02 -W 2 -q 10.9.0.2 >/dev/null || fail "T2: ping after switch"
a2=$(sa_packets hub 10.9.0.2 0x1001); b2=$(sa_packets hub 10.9.0.2 0x1002); n2=$(sa_packets node 10.9.0.2 0x1002)
echo "  after switch: 0x1001 +$((a2 - a1)), 0x1002 +$((b2 - b1)) (node saw $n2 on 0x1002)"
check "T2: after the update, all 20 go out on 0x1002 and none on 0x1001" test $((a2 - a1)) -eq 0 -a $((b2 - b1)) -eq 20
check "T2: node received them on its inbound 0x1002" test "$n2" -eq 20
check "T2: no XFRM errors in hub" xfrm_stat_clean hub
check "T2: no XFRM errors in node" xfrm_stat_clean node

echo "== T3 tunnel mode between subnets"
ip -n hub addr add 10.1.0.1/24 dev lo
ip -n node addr add 10.2.0.1/24 dev lo
ip -n hub route add 10.2.0.0/24 via 10.9.0.2 src 10.1.0.1
ip -n node route add 10.1.0.0/24 via 10.9.0.1 src 10.2.0.1
for ns in hub node; do
	if [ $ns = hub ]; then L=10.1.0.0/24; R=10.2.0.0/24; A=10.9.0.1; B=10.9.0.2; OUT=0x3001; IN=0x3002
	else L=10.2.0.0/24; R=10.1.0.0/24; A=10.9.0.2; B=10.9.0.1; OUT=0x3002; IN=0x3001; fi
	xc $ns batch - <<EOF || fail "T3: tunnel batch in $ns"
sa add --src $A --dst $B --spi $OUT --key $K4 --peer 2 --mode tunnel
sa add --src $B --dst $A --spi $IN --key $K4 --peer 2 --mode tunnel
policy add --dir out --src $L --dst $R --spi $OUT --peer 2 --mode tunnel --tmpl-src $A --tmpl-dst $B
policy add --dir in --src $R --dst $L --peer 2 --mode tunnel --tmpl-src $B --tmpl-dst $A
policy add --dir fwd --src $R --dst $L --peer 2 --mode tunnel --tmpl-src $B --tmpl-dst $A
EOF
done
check "T3: ping subnet to subnet through the tunnel" q ip netns exec hub ping -c 5 -i 0.05 -W 2 -q -I 10.1.0.1 10.2.0.1
t_out=$(sa_packets hub 10.9.0.2 0x3001); t_in=$(sa_packets hub 10.9.0.1 0x3002)
echo "  tunnel counters on hub: out 0x3001=$t_out in 0x3002=$t_in"
check "T3: tunnel SAs carried the traffic both ways" test "$t_out" -ge 5 -a "$t_in" -ge 5
check "T3: no XFRM errors in hub" xfrm_stat_clean hub
check "T3: no XFRM errors in node" xfrm_stat_clean node

echo "== T4 per-socket bypass for the control channel"
# node->hub on port 4820 is covered by the transport policy; remove the node's
# outbound SA so that policy cannot be satisfied, then try with and without bypass.
xc node policy update --dir out --src 10.9.0.2 --dst 10.9.0.1 --spi 0x7777 --peer 1 ||
	fail "T4: repoint node policy at a missing SA"
ip netns exec hub "$XC" udp-recv --bind 10.9.0.1:4820 --count 5 --timeout-ms 1500 >/tmp/rx.nobypass.$$ &
sleep 0.3
xc node udp-send --to 10.9.0.1:4820 --count 5 >/dev/null
wait
ip netns exec hub "$XC" udp-recv --bind 10.9.0.1:4820 --count 5 --timeout-ms 3000 --bypass >/tmp/rx.bypass.$$ &
sleep 0.3
xc node udp-send --to 10.9.0.1:4820 --count 5 --bypass >/dev/null
wait
echo "  without bypass: $(cat /tmp/rx.nobypass.$$); with bypass: $(cat /tmp/rx.bypass.$$)"
check "T4: without bypass nothing passes a policy with no SA" grep -q "received=0 " /tmp/rx.nobypass.$$
check "T4: with bypass all 5 datagrams arrive" grep -q "received=5 " /tmp/rx.bypass.$$
rm -f /tmp/rx.nobypass.$$ /tmp/rx.bypass.$$

echo "== T4b fail-closed outbound policy (block)"
xc node policy update --dir out --src 10.9.0.2 --dst 10.9.0.1 --spi 0x2001 --peer 1 --block ||
	fail "T4b: block policy"
blocked0=$(ip netns exec node awk '$1 == "XfrmOutPolBlock" { print $2 }' /proc/net/xfrm_stat)
check "T4b: ping is refused while the outbound policy blocks" bash -c "! ip netns exec node ping -c 2 -i 0.05 -W 1 -q 10.9.0.1 >/dev/null 2>&1"
blocked1=$(ip netns exec node awk '$1 == "XfrmOutPolBlock" { print $2 }' /proc/net/xfrm_stat)
check "T4b: the kernel counted the blocked packets (XfrmOutPolBlock $blocked0 -> $blocked1)" test "$blocked1" -gt "$blocked0"
check "T4b: dump shows the policy as rotor's with action=block" \
	bash -c "ip netns exec node '$XC' dump policy --owned | grep -q 'dir=out .*action=block owned=yes'"
xc node policy update --dir out --src 10.9.0.2 --dst 10.9.0.1 --spi 0x2001 --peer 1 || fail "T4: restore policy"
check "T4b: traffic flows again after the policy allows it" q ip netns exec node ping -c 2 -i 0.05 -W 2 -q 10.9.0.1

echo "== T5 kernel errors name the operation, errno and kernel text"
err=$(xc hub sa add --src 10.9.0.1 --dst 10.9.0.2 --spi 0x1001 --key $K1 --peer 1 2>&1)
echo "  $err"
check "T5: duplicate SA is refused with EEXIST and names the SPI" \
	bash -c "echo '$err' | grep -q 'add SA spi=0x00001001 10.9.0.1 -> 10.9.0.2: kernel said errno 17'"
err=$(xc hub sa add --src 10.9.0.1 --dst 10.9.0.2 --spi 0x1003 --key $K1 --peer 1 --no-esn --replay-window 0 --lifetime 3600 2>&1 >/dev/null; echo "rc=$?")
check "T5: a valid non-ESN SA is accepted" bash -c "echo '$err' | grep -q 'rc=0'"

echo "== T6 remove-owned leaves foreign objects alone"
ip -n hub xfrm state add src 10.9.0.1 dst 10.9.0.77 proto esp spi 0x4242 reqid 7 mode transport \
	aead 'rfc4106(gcm(aes))' 0x0909090909090909090909090909090909090909 128 || fail "T6: foreign SA"
ip -n hub xfrm policy add src 10.9.0.1 dst 10.9.0.77 dir out tmpl proto esp reqid 7 mode transport ||
	fail "T6: foreign policy"
before_sas=$(xc hub dump sa --owned | wc -l); before_pols=$(xc hub dump policy --owned | wc -l)
out=$(xc hub remove-owned)
echo "  owned before: $before_sas SAs, $before_pols policies; $out"
check "T6: remove-owned reports what it removed" test "$out" = "removed sas=$before_sas policies=$before_pols failures=0"
check "T6: no rotor SA left" test "$(xc hub dump sa --owned | wc -l)" -eq 0
check "T6: no rotor policy left" test "$(xc hub dump policy --owned | wc -l)" -eq 0
check "T6: foreign SA untouched" bash -c "ip -n hub xfrm state list | grep -q 'spi 0x00004242 reqid 7'"
check "T6: foreign policy untouched" bash -c "ip -n hub xfrm policy list | grep -q 'dst 10.9.0.77/32'"
check "T6: remove-owned again is a no-op" test "$(xc hub remove-owned)" = "removed sas=0 policies=0 failures=0"
# An SA deletion names (destination, SPI) only: ours checks the reqid first.
err=$(xc hub sa del --dst 10.9.0.77 --spi 0x4242 2>&1; echo "rc=$?")
echo "  $err"
check "T6: deleting the foreign SA by its id is refused, naming its reqid" \
	bash -c "echo '$err' | grep -q 'has reqid 7, not ours' && echo '$err' | grep -q 'rc=1'"
check "T6: and the foreign SA is still there" bash -c "ip -n hub xfrm state list | grep -q 'spi 0x00004242 reqid 7'"
xc hub sa add --src 10.9.0.1 --dst 10.9.0.77 --spi 0x4243 --key $K1 --peer 1 || fail "T6: an own SA beside it"
check "T6: an own SA is deleted as before" bash -c "ip netns exec hub '$XC' sa del --dst 10.9.0.77 --spi 0x4243 && ! ip -n hub xfrm state list | grep -q 'spi 0x00004243'"

echo "== T7 $BENCH_N SAs: our batched layer vs ip -batch"
ip netns add bench
# One SA per destination address, 10.8.0.2 upwards, as a hub has one per node.
ours=$(ip netns exec bench "$XC" bench --count "$BENCH_N" --src 10.7.0.1 --dst 10.8.0.2)
echo "$ours" | sed 's/^/  /'
check "T7: all $BENCH_N SAs installed, dumped back and deleted by our layer" \
	bash -c "echo '$ours' | grep -q 'bench dump count=$BENCH_N '"
batch=/tmp/ipbatch.$$
python3 - "$BENCH_N" >"$batch" <<'EOF'
import os, sys
import ipaddress
n = int(sys.argv[1])
base = ipaddress.ip_address("10.8.0.2")
for i in range(n):
    key = os.urandom(20).hex()
    print(f"xfrm state add src 10.7.0.1 dst {base + i} proto esp spi {0x10000 + i} reqid 1381236736 "
          f"mode transport flag esn replay-window 1024 aead rfc4106(gcm(aes)) 0x{key} 128")
EOF
t0=$(date +%s.%N)
ip -n bench -batch "$batch" || fail "T7: ip -batch"
t1=$(date +%s.%N)
count=$(ip -n bench xfrm state list | grep -c '^src 10.7.0.1')
rm -f "$batch"
ip_s=$(python3 -c "print(round($t1 - $t0, 4))")
ours_rate=$(echo "$ours" | awk '/^bench add/ { for (i=1;i<=NF;i++) if ($i ~ /^rate=/) { sub("rate=","",$i); print $i } }')
ip_rate=$(python3 -c "print(round($BENCH_N / $ip_s))")
ratio=$(python3 -c "print(round(${ours_rate:-0} / $ip_rate, 1))")
echo "  ip -batch: $count SAs in ${ip_s}s = $ip_rate SAs/s"
echo "FIGURE: install $BENCH_N SAs: rotor-xfrm $ours_rate SAs/s, ip -batch $ip_rate SAs/s, ratio ${ratio}x"
check "T7: ip -batch installed all $BENCH_N too (fair comparison)" test "$count" -eq "$BENCH_N"
ip netns del bench

ip netns del hub; ip netns del node
echo "xfrm layer: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
