#!/bin/bash
# A pair of hubs on etcd sharing a service address, for the failover
# scenarios (87, 88). Source after daemon-lib.sh and etcd-lib.sh.
#
# ha_pair_up N PREFIX TTL_S RETRIES: the topology of N nodes with hub A in
# namespace `hub` and hub B in `hubb`, both on the nodes' LAN bridge and on
# the etcd bridge (10.199.0.20 and .21), the three etcd members healthy, and
# the hubs' configs $WORK/hub.toml and $WORK/hubb.toml: state in etcd under
# PREFIX, service address $SVC/24 on veth0, lease_ttl TTL_S; the nodes
# patient for RETRIES hellos of 500 ms. Sets SVC. Exits on a failed step.
ha_pair_up() {
	local n=$1 prefix=$2 ttl_s=$3 retries=$4 ns
	SVC=$(outer 0)
	topo_up "$n"
	ip -n hub addr flush dev veth0
	ip netns add hubb
	ip link add veth0 netns hubb type veth peer name pb netns lan
	ip -n lan link set pb master br0 up
	ip -n hubb link set lo up
	ip -n hubb link set veth0 up
	# For the probe receivers only (ready before their hub holds the
	# address): the hubs bind the service address with IP_FREEBIND.
	for ns in hub hubb; do ip netns exec $ns sysctl -qw net.ipv4.ip_nonlocal_bind=1; done
	# The hubs re-validate their neighbour entries often (reachable for
	# 0.5-1.5 s, probed 1 s after use): a hub that still holds the service
	# address after its successor serves (the hand-over's linger) would
	# then probe the nodes with the service address as sender, and move
	# their ARP entries back to it, in nearly every hand-over, unless it
	# holds its neighbours without probing meanwhile (service_addr.rs).
	for ns in hub hubb; do
		ip netns exec $ns sysctl -qw net.ipv4.neigh.veth0.base_reachable_time_ms=1000
		ip netns exec $ns sysctl -qw net.ipv4.neigh.veth0.delay_first_probe_time=1
	done
	etcd_up || { fail "the etcd cluster became healthy within ${ETCD_UP_TIMEOUT}s"; etcd_log_tail 20; exit 1; }
	etcd_attach hub 10.199.0.20 || { fail "hub A joins the etcd bridge"; exit 1; }
	etcd_attach hubb 10.199.0.21 || { fail "hub B joins the etcd bridge"; exit 1; }
	configs "$n" 1s 500ms "$retries"
	(umask 077; "$ROTOR" genkey >"$WORK/cluster.key")
	sed -i "s|^state_dir = .*|state = \"etcd://$(etcd_endpoints | sed 's|http://||g')/$prefix\"\nstate_key_file = \"$WORK/cluster.key\"\nservice_address = \"$SVC/24\"\nservice_interface = \"veth0\"\nlease_ttl = \"${ttl_s}s\"|" "$WORK/hub.toml"
	sed "s|^socket = .*|socket = \"$WORK/hubb.sock\"|" "$WORK/hub.toml" >"$WORK/hubb.toml"
}

# ha_status NS SOCKET: the hub's status JSON (nothing if it does not answer)
ha_status() { ip netns exec "$1" "$ROTOR" status --socket "$2" --json 2>/dev/null; }
# ha_field NS SOCKET PEER FIELD: one field of PEER's row
ha_field() {
	ha_status "$1" "$2" | python3 -c "import json,sys; d=json.load(sys.stdin); print(next(p['$4'] for p in d['peers'] if p['name']=='$3'))"
}
# ha_sending NS SOCKET N: the hub sends to all of its N nodes
ha_sending() {
	ha_status "$1" "$2" | python3 -c "
import json,sys
d=json.load(sys.stdin)
sys.exit(0 if sum(1 for p in d['peers'] if p['tx_spi'] and p['generation']>=1)==$3 else 1)"
}
# node_inits I: node nI's own count of its inits
node_inits() { ha_status "n$1" "$WORK/n$1.sock" | python3 -c "import json,sys; print(json.load(sys.stdin)['peers'][0]['inits'])"; }
# ha_has_svc NS: NS holds the service address
ha_has_svc() { ip -n "$1" -4 addr show dev veth0 | grep -q "inet $SVC/"; }
# ha_sas_with NS I: SAs in NS's kernel to and from node I (both directions)
ha_sas_with() {
	local out inb
	out=$(ip -n "$1" xfrm state | grep -c "^src $SVC dst $(outer "$2")\$")
	inb=$(ip -n "$1" xfrm state | grep -c "^src $(outer "$2") dst $SVC\$")
	echo "$out out, $inb in"
	[ "$out" -ge 1 ] && [ "$inb" -ge 1 ]
}
# ha_sas_of NS: SAs in NS's kernel
ha_sas_of() { ip -n "$1" xfrm state | grep -c '^src'; }
# ha_standby_guard NS: the hub's clear-text guard in NS as a standby puts it
# in: OUTPUT and FORWARD jump to its chain, whose set is empty (it drops
# nothing until the hub leads). Prints what it found.
ha_standby_guard() {
	local jumps entries
	jumps=$(ip netns exec "$1" iptables-legacy -S 2>/dev/null | grep -cE '^-A (OUTPUT|FORWARD) -j ROTOR-GUARD-52540000$')
	entries=$(ip netns exec "$1" ipset -terse list rotor-guard-52540000-v4 2>/dev/null | awk -F': ' '/^Number of entries/ { print $2 }')
	echo "jumps=$jumps set_entries=${entries:-none}"
	[ "$jumps" = 2 ] && [ "$entries" = 0 ]
}
# wait_ms MS CMD...: until CMD succeeds, for at most MS ms
wait_ms() { local d=$(($(etcd_ms) + $1)); shift; until "$@"; do [ "$(etcd_ms)" -lt "$d" ] || return 1; sleep 0.05; done; }
