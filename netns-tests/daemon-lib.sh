#!/bin/bash
# Shared helpers for the daemon scenarios (sourced, run inside UML as root).
# Topology: namespace "lan" holds bridge br0; the hub (10.9.0.1) and nodes
# n1..nN (10.9.0.(i+1)) each join it with a veth. Everything rotor writes goes
# to $WORK (keys 0600, configs, logs, control sockets).
#
# Set before sourcing:
#   FAMILY=6   outer addresses fd00:9::1 (hub), fd00:9::(i+1) (nodes)
#   ROTOR_TEST_GUARD=off  no clear-text guard, to show what it prevents
#              (default iptables-legacy: UML's kernel has no nf_tables for
#              IPv4/IPv6, so not the nf_tables iptables)
#   TUNNEL=1   tunnel mode: namespace hublan (10.1.0.2/24) sits behind the hub
#              (10.1.0.1) and n<i>lan (10.2.<i>.2/24) behind node i
#              (10.2.<i>.1); the gateways forward, and the probes run between
#              the LAN namespaces, so they cross the fwd policies. With
#              FAMILY=6 the LANs are fd01::/64 and fd02:<i>::/64 (gateway ::1,
#              host ::2) behind IPv6 outer addresses.
set -u
FAMILY=${FAMILY:-4}
TUNNEL=${TUNNEL:-0}
GUARD=${ROTOR_TEST_GUARD:-iptables-legacy}
# outer I: the outer address of the hub (0) or of node I
outer() { if [ "$FAMILY" = 6 ]; then echo "fd00:9::$(($1 + 1))"; else echo "10.9.0.$(($1 + 1))"; fi; }
# endpoint ADDR PORT: ADDR:PORT, bracketed for IPv6
endpoint() { case $1 in *:*) echo "[$1]:$2" ;; *) echo "$1:$2" ;; esac; }
# data_ns I / data_addr I: where the probe streams of the hub (0) or node I run
data_ns() {
	if [ "$TUNNEL" = 1 ]; then
		if [ "$1" = 0 ]; then echo hublan; else echo "n$1lan"; fi
	elif [ "$1" = 0 ]; then echo hub; else echo "n$1"; fi
}
data_addr() {
	if [ "$TUNNEL" = 1 ]; then lan_addr "$1" 2; else outer "$1"; fi
}
# lan_net I: the subnet behind the hub (0) or node I (tunnel mode)
lan_net() {
	if [ "$FAMILY" = 6 ]; then
		if [ "$1" = 0 ]; then echo fd01::/64; else echo "fd02:$1::/64"; fi
	elif [ "$1" = 0 ]; then echo 10.1.0.0/24; else echo "10.2.$1.0/24"; fi
}
# lan_addr I H: host H of that subnet (1: the gateway, 2: the LAN host)
lan_addr() {
	if [ "$FAMILY" = 6 ]; then
		if [ "$1" = 0 ]; then echo "fd01::$2"; else echo "fd02:$1::$2"; fi
	elif [ "$1" = 0 ]; then echo "10.1.0.$2"; else echo "10.2.$1.$2"; fi
}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROTOR=${ROTOR_BIN:-$HERE/../target/debug/rotor}
PROBE="python3 $HERE/probe.py"
[ -x "$ROTOR" ] || { echo "FAIL: rotor not found at $ROTOR (set ROTOR_BIN)"; exit 1; }
WORK=$(mktemp -d /tmp/rotor-netns.XXXXXX)
PIDS=()
FAILS=0
PASSES=0
pass() { echo "PASS: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; return 1; fi; }

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	# Every other background job too (a sampler waiting for its stop file,
	# a probe stream): a scenario that stops early must not wait for them.
	# shellcheck disable=SC2046 # one PID per word
	kill $(jobs -p) 2>/dev/null
	wait 2>/dev/null
	for ns in $(ip netns list | awk '{print $1}'); do ip netns del "$ns" 2>/dev/null; done
}
trap cleanup EXIT

# topo_up N: hub + N nodes on one bridge
topo_up() {
	local n=$1 i
	NODES=$n
	ip netns add lan
	ip -n lan link add br0 type bridge
	ip -n lan link set br0 up
	for i in $(seq 0 "$n"); do
		local ns=hub
		[ "$i" -gt 0 ] && ns=n$i
		ip netns add $ns
		ip link add veth0 netns $ns type veth peer name p$i netns lan
		ip -n lan link set p$i master br0 up
		ip -n $ns link set lo up
		ip -n $ns link set veth0 up
		if [ "$FAMILY" = 6 ]; then
			ip -n $ns addr add "$(outer $i)/64" dev veth0 nodad
		else
			ip -n $ns addr add "$(outer $i)/24" dev veth0
		fi
		[ "$TUNNEL" = 1 ] && lan_behind $i
	done
	return 0
}

# lan_behind I: a LAN namespace behind the hub (0) or node I, routed through it
lan_behind() {
	local i=$1 ns lan len=24 nodad=()
	ns=hub; [ "$i" -gt 0 ] && ns=n$i
	lan=$(data_ns "$i")
	[ "$FAMILY" = 6 ] && { len=64; nodad=(nodad); }
	ip netns add "$lan"
	ip link add veth1 netns "$ns" type veth peer name veth0 netns "$lan"
	ip -n "$ns" addr add "$(lan_addr "$i" 1)/$len" dev veth1 "${nodad[@]}"
	ip -n "$ns" link set veth1 up
	ip -n "$lan" link set lo up
	ip -n "$lan" addr add "$(lan_addr "$i" 2)/$len" dev veth0 "${nodad[@]}"
	ip -n "$lan" link set veth0 up
	ip -"$FAMILY" -n "$lan" route add default via "$(lan_addr "$i" 1)"
	if [ "$FAMILY" = 6 ]; then
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.forwarding=1
	else
		ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
	fi
	if [ "$i" = 0 ]; then
		local k
		for k in $(seq 1 "$NODES"); do ip -n hub route add "$(lan_net "$k")" via "$(outer "$k")"; done
	else
		ip -n "$ns" route add "$(lan_net 0)" via "$(outer 0)"
	fi
}

# configs N ROTATE HELLO [RETRIES]: keys and config files in $WORK
configs() {
	local n=$1 rotate=$2 hello=$3 retries=${4:-3} i
	cat >"$WORK/hub.toml" <<EOT
[hub]
address = "$(outer 0)"
port = 4820
rotate_interval = "$rotate"
grace = "3s"
socket = "$WORK/hub.sock"
state_dir = "$WORK/state"
guard = "$GUARD"
EOT
	[ -n "${SA_LIFETIME:-}" ] && echo "sa_lifetime = \"$SA_LIFETIME\"" >>"$WORK/hub.toml"
	[ -n "${METRICS:-}" ] && printf 'metrics = "%s"\nmetrics_per_node = true\n' "$METRICS" >>"$WORK/hub.toml"
	for i in $(seq 1 "$n"); do
		(umask 077; "$ROTOR" genkey >"$WORK/n$i.key")
		cat >>"$WORK/hub.toml" <<EOT

[[node]]
name = "n$i"
address = "$(outer $i)"
psk_file = "$WORK/n$i.key"
EOT
		[ "$TUNNEL" = 1 ] && cat >>"$WORK/hub.toml" <<EOT
mode = "tunnel"
local_subnets = ["$(lan_net 0)"]
remote_subnets = ["$(lan_net "$i")"]
EOT
		cat >"$WORK/n$i.toml" <<EOT
[node]
name = "n$i"
address = "$(outer $i)"
hub = "$(endpoint "$(outer 0)" 4820)"
psk_file = "$WORK/n$i.key"
hello_interval = "$hello"
retries = $retries
grace = "3s"
socket = "$WORK/n$i.sock"
state_dir = "$WORK/state"
guard = "$GUARD"
EOT
		[ -n "${SA_LIFETIME:-}" ] && echo "sa_lifetime = \"$SA_LIFETIME\"" >>"$WORK/n$i.toml"
		[ "$TUNNEL" = 1 ] && cat >>"$WORK/n$i.toml" <<EOT
mode = "tunnel"
local_subnets = ["$(lan_net "$i")"]
remote_subnets = ["$(lan_net 0)"]
EOT
	done
	return 0
}

# start_hub: starts the hub and returns once it answers on its control
# socket, which it serves only after its policies are in and its UDP control
# socket is bound. A node started earlier sends its first hello to a hub host
# with no listener on the control port: the hub's kernel answers with an ICMP
# port unreachable in clear, which the node's inbound policy (ESP from the
# hub) rejects as XfrmInTmplMismatch, a real error every scenario checks for.
start_hub() {
	ip netns exec hub "$ROTOR" hub --config "$WORK/hub.toml" >>"$WORK/hub.log" 2>&1 &
	HUB_PID=$!
	PIDS+=("$HUB_PID")
	for _ in $(seq 1 200); do
		hub_status >/dev/null && return 0
		kill -0 "$HUB_PID" 2>/dev/null || break
		sleep 0.1
	done
	fail "the hub answers on its control socket within 20 s"
	return 1
}

start_node() { # start_node I
	ip netns exec n$1 "$ROTOR" node --config "$WORK/n$1.toml" >>"$WORK/n$1.log" 2>&1 &
	eval "NODE_PID_$1=$!"
	PIDS+=("$!")
}

hub_status() { ip netns exec hub "$ROTOR" status --socket "$WORK/hub.sock" --json 2>/dev/null; }

# peer_field NAME FIELD: one field of one peer from the hub's status
peer_field() {
	hub_status | python3 -c "import json,sys; d=json.load(sys.stdin); print(next(p['$2'] for p in d['peers'] if p['name']=='$1'))"
}

# wait_all_sending N TIMEOUT_S: until the hub sends to n1..nN and each of them sends
wait_all_sending() {
	local n=$1 t=$2 i
	for _ in $(seq 1 $((t * 10))); do
		if hub_status | python3 -c "
import json,sys
d=json.load(sys.stdin)
names={'n%d' % i for i in range(1, $n + 1)}
sys.exit(0 if sum(1 for p in d['peers'] if p['name'] in names and p['tx_spi'] and p['generation']>=1)==$n else 1)" 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# wait_all_in_sync N TIMEOUT_S: until the hub reports every node in_sync
wait_all_in_sync() {
	local n=$1 t=$2
	for _ in $(seq 1 $((t * 10))); do
		hub_status | python3 -c "
import json,sys
d=json.load(sys.stdin)
sys.exit(0 if len(d['peers'])==$n and all(p['state']=='in_sync' for p in d['peers']) else 1)" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# xfrm_clean NS: no error counter in /proc/net/xfrm_stat
xfrm_clean() {
	local bad
	bad=$(ip netns exec "$1" awk '$2 != 0' /proc/net/xfrm_stat)
	[ -z "$bad" ] || { echo "  xfrm_stat $1: $(echo $bad)"; return 1; }
}

# probes N DURATION RATE: both directions per node; fills $WORK/probe-*.json
probes() {
	local n=$1 d=$2 r=$3 i
	# A receiver takes the count of sent packets from its sent file, and the
	# senders wait for the ready files: none may be left by an earlier run.
	rm -f "$WORK"/sent-* "$WORK"/ready-* "$WORK"/probe-*.json "$WORK"/wire.json
	for i in $(seq 1 "$n"); do
		ip netns exec "$(data_ns 0)" $PROBE recv --bind "$(endpoint "$(data_addr 0)" $((5000 + i)))" --duration $((d + 5)) --sent-file "$WORK/sent-up-$i" --ready-file "$WORK/ready-up-$i" >"$WORK/probe-up-$i.json" &
		ip netns exec "$(data_ns $i)" $PROBE recv --bind "$(endpoint "$(data_addr $i)" 6000)" --duration $((d + 5)) --sent-file "$WORK/sent-down-$i" --ready-file "$WORK/ready-down-$i" >"$WORK/probe-down-$i.json" &
	done
	# Start sending only when every receiver is bound (python start-up in UML
	# can take over a second under load).
	for _ in $(seq 1 100); do
		[ "$(ls "$WORK"/ready-* 2>/dev/null | wc -l)" -ge $((2 * n)) ] && break
		sleep 0.1
	done
	for i in $(seq 1 "$n"); do
		(ip netns exec "$(data_ns $i)" $PROBE send --to "$(endpoint "$(data_addr 0)" $((5000 + i)))" --rate "$r" --duration "$d" >"$WORK/sent-up-$i.tmp" && mv "$WORK/sent-up-$i.tmp" "$WORK/sent-up-$i") &
		(ip netns exec "$(data_ns 0)" $PROBE send --to "$(endpoint "$(data_addr $i)" 6000)" --rate "$r" --duration "$d" >"$WORK/sent-down-$i.tmp" && mv "$WORK/sent-down-$i.tmp" "$WORK/sent-down-$i") &
	done
	# WIRE_SECONDS=S: capture S seconds of the wire at the hub's bridge port
	# (p0 in "lan": every frame the hub sends or receives), from 1 s into the
	# streams, into $WORK/wire.json (see wire_check.py)
	if [ -n "${WIRE_SECONDS:-}" ]; then
		(sleep 1; ip netns exec lan python3 "$HERE/wire_check.py" --iface p0 --seconds "$WIRE_SECONDS" >"$WORK/wire.json") &
	fi
	wait_probes
}

wait_probes() {
	local f
	for f in $(jobs -p); do
		case " ${PIDS[*]} " in *" $f "*) ;; *) wait "$f" ;; esac
	done
}

# probe_report N: prints per direction sent/lost, fails on any missing
probe_report() {
	local n=$1 i dir ok=0
	for i in $(seq 1 "$n"); do
		for dir in up down; do
			local line
			line=$(python3 -c "
import json
d=json.load(open('$WORK/probe-$dir-$i.json'))
m=d['missing']
print(f\"n$i $dir: expected={d['expected']} received={d['received']} lost={len(m)} missing={m[:20]}\")
raise SystemExit(1 if m or d['expected']==0 else 0)") || ok=1
			echo "  $line"
		done
	done
	return $ok
}

# net_drops: every namespace's non-zero drop counters (UDP receive-buffer
# overflows, IP discards, missing routes, neighbour failures), to tell where
# missing probe packets went when the kernel's XFRM counters are clean
net_drops() {
	local ns
	for ns in $(ip netns list | awk '{print $1}'); do
		local c
		c=$(ip netns exec "$ns" nstat -az 2>/dev/null | awk '$2 != 0 && $1 ~ /RcvbufErrors|SndbufErrors|InErrors|Discards|NoRoutes|InTooBig|OutDrop|FragFails/ { printf "%s=%s ", $1, $2 }')
		[ -n "$c" ] && echo "  $ns: $c"
	done
	return 0
}

# control_loss PERCENT: drop that share of control datagrams both ways at the hub
control_loss() {
	local p
	p=$(python3 -c "print($1 / 100)")
	ip netns exec hub "$(iptables_of_family)" -A INPUT -p udp --dport 4820 -m statistic --mode random --probability "$p" -j DROP
	ip netns exec hub "$(iptables_of_family)" -A OUTPUT -p udp --dport 4820 -m statistic --mode random --probability "$p" -j DROP
}

# control_loss_off: removes control_loss's rules (and only them)
control_loss_off() {
	local chain r
	for chain in INPUT OUTPUT; do
		ip netns exec hub "$(iptables_of_family)" -S $chain | grep -- '--dport 4820 .*statistic' | sed 's/^-A //' |
			while read -r r; do
				# shellcheck disable=SC2086 # the rule's words
				ip netns exec hub "$(iptables_of_family)" -D $r
			done
	done
}

# iptables_of_family: the legacy iptables of the outer addresses' family
iptables_of_family() { if [ "$FAMILY" = 6 ]; then echo ip6tables-legacy; else echo iptables-legacy; fi; }

# control_netem NETEM_ARGS...: netem on control datagrams only (UDP port
# 4820, both ways: on the hub's and every node's outer interface), through a
# prio qdisc whose third band only the control traffic reaches; data (ESP)
# takes the first band untouched
control_netem() {
	local ns
	for ns in hub $(seq -f 'n%g' 1 "$NODES"); do
		ip -n "$ns" link set veth0 txqueuelen 1000
		tc -n "$ns" qdisc add dev veth0 root handle 1: prio bands 3 priomap 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
		tc -n "$ns" qdisc add dev veth0 parent 1:3 handle 30: netem "$@"
		tc -n "$ns" filter add dev veth0 parent 1: protocol ip prio 1 u32 \
			match ip protocol 17 0xff match ip dport 4820 0xffff flowid 1:3
	done
}

# control_netem_sent: control datagrams that went through the netem bands
control_netem_sent() {
	local ns s=0 k
	for ns in hub $(seq -f 'n%g' 1 "$NODES"); do
		k=$(tc -n "$ns" -s qdisc show dev veth0 | awk '/qdisc netem/ { f = 1 } f && /Sent/ { print $4; exit }')
		s=$((s + ${k:-0}))
	done
	echo "$s"
}

# control_dropped: packets the control-loss rules dropped so far
control_dropped() {
	ip netns exec hub "$(iptables_of_family)" -L -v -n -x | awk '/DROP/ && /4820/ { s += $1 } END { print s + 0 }'
}

# status_table: the hub's key-SPI table
status_table() { ip netns exec hub "$ROTOR" status --socket "$WORK/hub.sock"; }

# totals: "rotations resends inits" summed over nodes
totals() {
	hub_status | python3 -c "
import json,sys
p=json.load(sys.stdin)['peers']
print(sum(x['rotations'] for x in p), sum(x['resends'] for x in p), sum(x['inits'] for x in p))"
}

# probe_totals N: "sent lost" over every stream
probe_totals() {
	python3 -c "
import json
s=l=0
for i in range(1, $1 + 1):
    for d in ('up', 'down'):
        j=json.load(open(f'$WORK/probe-{d}-{i}.json'))
        s+=j['expected']; l+=len(j['missing'])
print(s, l)"
}

# outage_report N RATE BOUND_MS: per stream, the runs of consecutive missing
# sequence numbers as outages in ms (probe.py outages); fails if any exceeds
# BOUND_MS.
outage_report() {
	local n=$1 rate=$2 bound=$3 i d bad=0
	for i in $(seq 1 "$n"); do
		for d in up down; do
			$PROBE outages --rate "$rate" --bound "$bound" --label "n$i $d" "$WORK/probe-$d-$i.json" || bad=1
		done
	done
	return $bad
}

# runs_of NAME DIR: number of outages (runs of missing packets) in a stream
runs_of() {
	python3 -c "
import json
m=json.load(open('$WORK/probe-$2-$1.json'))['missing']
print(sum(1 for k, s in enumerate(m) if k == 0 or s != m[k-1] + 1))"
}

# steady LABEL N DURATION: S1's checks. A hub and N nodes rotating every
# second, a 200 packets/s probe stream each way per node through ESP: zero
# missing sequence numbers, no XFRM errors in any namespace, >= DURATION-5
# rotations per node, one init each.
steady() {
	local label=$1 n=$2 duration=$3 i ns
	topo_up "$n"
	configs "$n" 1s 500ms
	start_hub
	for i in $(seq 1 "$n"); do start_node "$i"; done
	check "$label: every node initialised and both sides send" wait_all_sending "$n" 20
	WIRE_SECONDS=10 probes "$n" "$duration" 200
	echo "  the wire at the hub's bridge port, 10 s of frames both ways 1 s into the streams: $(cat "$WORK/wire.json")"
	check "$label: on the wire the probe streams are ESP only, both ways" python3 -c "
import json; d=json.load(open('$WORK/wire.json')); raise SystemExit(0 if d['esp'] > 1000 and d['plain_probe'] == 0 else 1)"
	check "$label: zero probe packets lost, both directions, every node" probe_report "$n" || net_drops
	for ns in $(ip netns list | awk '{print $1}'); do check "$label: no XFRM errors in $ns" xfrm_clean "$ns"; done
	hub_status | python3 -c "
import json,sys
for p in json.load(sys.stdin)['peers']:
    print(f\"  {p['name']}: generation={p['generation']} rotations={p['rotations']} resends={p['resends']} inits={p['inits']} state={p['state']}\")"
	for i in $(seq 1 "$n"); do
		local r
		r=$(peer_field "n$i" rotations)
		check "$label: n$i rotated at least $((duration - 5)) times (did $r)" test "$r" -ge $((duration - 5))
		check "$label: n$i initialised once" test "$(peer_field "n$i" inits)" -eq 1
	done
	figures "$label" "$n" 200
}

# figures LABEL N RATE: one summary line for the closing notes: the hub's
# rotations/resends/inits over all nodes, probe packets sent/lost per
# direction, and every outage (run of consecutive missing packets) in ms
figures() {
	local label=$1 n=$2 rate=$3
	read -r rot res ini <<<"$(totals)"
	python3 - "$WORK" "$n" "$rate" "$label" "$rot" "$res" "$ini" <<'PY'
import json, sys
work, n, rate, label = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rot, res, ini = sys.argv[5:8]
out = {}
outages = []
for d in ("up", "down"):
    sent = lost = 0
    for i in range(1, n + 1):
        j = json.load(open(f"{work}/probe-{d}-{i}.json"))
        m = j["missing"]
        sent += j["expected"]
        lost += len(m)
        k = 0
        while k < len(m):
            e = k
            while e + 1 < len(m) and m[e + 1] == m[e] + 1:
                e += 1
            outages.append(round((e - k + 1) * 1000 / rate))
            k = e + 1
    out[d] = f"{sent}/{lost}"
print(f"FIGURES {label}: rotations={rot} resends={res} inits={ini} "
      f"up_sent/lost={out['up']} down_sent/lost={out['down']} outages_ms={sorted(outages, reverse=True)[:12]}")
PY
}

# guard_objects NS: the clear-text guard's chains (both families) and sets in NS
guard_objects() {
	{
		ip netns exec "$1" iptables-legacy -S
		ip netns exec "$1" ip6tables-legacy -S
	} 2>/dev/null | awk '$1 == "-N" && $2 ~ /^ROTOR-GUARD-/ { print $2 }'
	ip netns exec "$1" ipset list -n 2>/dev/null | grep '^rotor-guard-'
}

# wait_no_pids NS TIMEOUT_S: until no process runs in namespace NS
wait_no_pids() {
	local _
	for _ in $(seq 1 $(($2 * 10))); do
		[ -z "$(ip netns pids "$1")" ] && return 0
		sleep 0.1
	done
	return 1
}

# stop_all_clean LABEL: SIGTERM to every daemon (hub, n1..n$NODES): each
# leaves its SAs and policies in the kernel (checked); then `rotor purge`
# with each config, after which no XFRM policy or SA is left in any namespace
stop_all_clean() {
	local label=$1 i ns cfg
	for i in $(seq 0 "$NODES"); do
		ns=hub; [ "$i" -gt 0 ] && ns=n$i
		ip netns exec $ns kill $(ip netns pids $ns) 2>/dev/null
	done
	# Until every process has exited: a daemon still stopping holds its
	# state lock, and purge would be refused.
	for i in $(seq 0 "$NODES"); do
		ns=hub; [ "$i" -gt 0 ] && ns=n$i
		check "$label: $ns's processes exit within 20 s of SIGTERM" wait_no_pids $ns 20
	done
	for i in $(seq 0 "$NODES"); do
		ns=hub; cfg=hub; [ "$i" -gt 0 ] && ns=n$i && cfg=n$i
		check "$label: after SIGTERM $ns keeps its policies and SAs" test "$(ip -n $ns xfrm policy | grep -c '^src')" -gt 0 -a "$(ip -n $ns xfrm state | grep -c '^src')" -gt 0
		[ "$GUARD" != off ] && check "$label: and its clear-text guard ($(guard_objects $ns | wc -l) objects)" test "$(guard_objects $ns | wc -l)" -ge 2
		ip netns exec $ns "$ROTOR" purge --config "$WORK/$cfg.toml" >>"$WORK/purge.log" 2>&1
		check "$label: after rotor purge no XFRM policy or SA is left in $ns" test "$(ip -n $ns xfrm policy | grep -c '^src'):$(ip -n $ns xfrm state | grep -c '^src')" = 0:0
		check "$label: nor any object of the clear-text guard ($(guard_objects $ns | tr '\n' ' '))" test -z "$(guard_objects $ns)"
	done
}
