#!/bin/bash
# Smoke test of the real-kernel rig; runs as root inside UML:
#
#   scripts/uml-run.sh netns-tests/00-smoke.sh
#
# Proves in a few seconds what the other tests rely on:
#   - network namespaces a and b joined by veth, 10.9.0.1/2 and fd00::1/2
#   - ESP transport SAs (rfc4106(gcm(aes)), installed with `ip xfrm`) and
#     out/in policies in both; ping through them, IPv4 and IPv6, both ways
#   - the per-SA packet counters rose on both sides (ip -s xfrm state), and
#     /proc/net/xfrm_stat is clean in both namespaces
#   - iptables-legacy with -m u32 and -m statistic, tc netem loss, bridge
#   - the checks can fail: without the inbound SA, XfrmInNoStates counts
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "not root; run me with scripts/uml-run.sh"
echo "kernel $(uname -r), $(nproc) CPU, $(awk '/MemTotal/ { printf "%d MiB", $2 / 1024 }' /proc/meminfo)"

# --- topology and ESP transport, IPv4 and IPv6 ----------------------------------
# Each `ip` run costs ~0.1 s in UML: one batch per namespace does it all.
# rfc4106(gcm(aes)): 16-byte AES key + 4-byte salt = 40 hex digits, 128-bit ICV.
K_AB=0x0a0b0c0d0e0f101112131415161718191a1b1c1d
K_BA=0xb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3

# esp_transport NS ADDR_A ADDR_B SPI_A2B SPI_B2A PREFIXLEN: the `ip xfrm`
# commands for namespace a or b: both SAs, and out/in policies; the out
# policy names the SPI to send on.
esp_transport() {
	local side=$1 a=$2 b=$3 s_ab=$4 s_ba=$5 plen=$6 t
	echo "xfrm state add src $a dst $b proto esp spi $s_ab mode transport aead rfc4106(gcm(aes)) $K_AB 128"
	echo "xfrm state add src $b dst $a proto esp spi $s_ba mode transport aead rfc4106(gcm(aes)) $K_BA 128"
	if [ "$side" = b ]; then # the mirror image
		t=$a; a=$b; b=$t; t=$s_ab; s_ab=$s_ba; s_ba=$t
	fi
	echo "xfrm policy add dir out src $a/$plen dst $b/$plen tmpl src $a dst $b proto esp spi $s_ab mode transport"
	echo "xfrm policy add dir in src $b/$plen dst $a/$plen tmpl src $b dst $a proto esp mode transport"
}

ns_add a b || die "cannot create namespaces a, b (is /run/netns writable?)"
veth_link a b veth0 || die "cannot create the veth pair (module veth?)"
i=1
for ns in a b; do
	{
		echo "addr add 10.9.0.$i/24 dev veth0"
		echo "addr add fd00::$i/64 dev veth0 nodad"
		esp_transport $ns 10.9.0.1 10.9.0.2 0x1001 0x2002 32
		esp_transport $ns fd00::1 fd00::2 0x3003 0x4004 128
	} | ip_batch $ns || die "ip -batch of addresses, SAs and policies failed in $ns"
	i=$((i + 1))
done
pass "addresses, 4 ESP transport SAs (rfc4106(gcm(aes))) and 4 policies in a and b"

# shellcheck disable=SC2317 # called through check
pings() { in_ns "$1" ping -q -c 5 -i 0.02 -W 2 "$2" >/dev/null; }
check "ping a -> b through ESP (IPv4)" pings a 10.9.0.2
check "ping b -> a through ESP (IPv4)" pings b 10.9.0.1
check "ping a -> b through ESP (IPv6)" pings a fd00::2
check "ping b -> a through ESP (IPv6)" pings b fd00::1

# Each SA carried 5 requests one way and 5 replies: >= 10 packets, counted by
# the sender's kernel on output and by the receiver's on input.
for ns in a b; do
	declare -A pk=()
	n=0
	while read -r spi _ _ packets _; do
		pk[$spi]=$packets
		n=$((n + 1))
	done < <(sa_table $ns)
	assert_eq "SAs in $ns" 4 $n
	for spi in 0x00001001 0x00002002 0x00003003 0x00004004; do
		assert_ge "SA $spi in $ns counted packets" 10 "${pk[$spi]:-absent}"
	done
	unset pk
done

for ns in a b; do
	check "no XFRM errors in $ns: XfrmInNoStates, XfrmOutNoStates, all of /proc/net/xfrm_stat 0" \
		xfrm_stat_check $ns
done

# --- the tools later tests script loss with -------------------------------------
# iptables-legacy: u32 drops datagrams whose first payload byte is 'B' (0x42);
# statistic drops every 2nd of the rest. 10 "BBBB" and 10 "AAAA" sent (u32
# reads whole 32-bit words: a shorter payload never matches).
ipt() { in_ns a iptables-legacy "$@"; }
if in_ns a iptables-legacy-restore --noflush <<'EOF'
*filter
-A OUTPUT -p udp --dport 9999 -m u32 --u32 0>>22&0x3C@8>>24=0x42 -j DROP
-A OUTPUT -p udp --dport 9999 -m statistic --mode nth --every 2 --packet 0 -j DROP
COMMIT
EOF
then
	pass "iptables-legacy accepts -m u32 and -m statistic rules"
	# shellcheck disable=SC2016 # expanded by the inner bash
	in_ns a bash -c 'for i in 1 2 3 4 5 6 7 8 9 10; do
		printf BBBB >/dev/udp/10.9.0.2/9999; printf AAAA >/dev/udp/10.9.0.2/9999; done' 2>/dev/null
	hits=$(ipt -L OUTPUT -v -n -x | awk 'NR > 2 { printf "%s%s", s, $1; s = " " }')
	assert_eq "iptables -m u32 / -m statistic dropped (packets per rule)" "10 5" "$hits"
	ipt -F OUTPUT
else
	fail "iptables-legacy rejected -m u32 / -m statistic (modules xt_u32, xt_statistic?)"
fi

# tc netem: 30 % loss on a's egress, 100 pings through ESP.
if tc -n a qdisc add dev veth0 root netem loss 30%; then
	pass "tc qdisc netem loss 30% added"
	got=$(in_ns a ping -q -c 100 -i 0.005 -W 0.5 10.9.0.2 |
		awk '/packets transmitted/ { print $4 }')
	assert_range "replies with 30% netem loss (expect ~70 of 100)" 45 90 "${got:-none}"
	tc -n a qdisc del dev veth0 root
else
	fail "tc qdisc netem not available (module sch_netem?)"
fi

check "a bridge can be created" ip -n a link add br0 type bridge
q ip -n a link del br0

# --- and the checks can fail ----------------------------------------------------
# Without b's inbound SA, a's ESP packets are dropped and counted in b.
ip -n b xfrm state delete src 10.9.0.1 dst 10.9.0.2 proto esp spi 0x1001
check "without b's inbound SA, ping a -> b fails" \
	eval '! in_ns a ping -q -c 1 -W 0.5 10.9.0.2 >/dev/null'
assert_ge "XfrmInNoStates in b counts the dropped packet" 1 "$(xfrm_stat b XfrmInNoStates)"
check "xfrm_stat_check b reports it" eval '! xfrm_stat_check b XfrmInNoStates >/dev/null'

finish smoke
