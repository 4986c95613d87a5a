#!/bin/bash
# Shared helpers for the daemon scenarios (sourced, run inside UML as root).
# Topology: namespace "lan" holds bridge br0; the hub (10.9.0.1) and nodes
# n1..nN (10.9.0.(i+1)) each join it with a veth. Everything rotor writes goes
# to $WORK (keys 0600, configs, logs, control sockets).
set -u
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
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	for ns in $(ip netns list | awk '{print $1}'); do ip netns del "$ns" 2>/dev/null; done
}
trap cleanup EXIT

# topo_up N: hub + N nodes on one bridge
topo_up() {
	local n=$1 i
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
		ip -n $ns addr add 10.9.0.$((i + 1))/24 dev veth0
	done
}

# configs N ROTATE HELLO [RETRIES]: keys and config files in $WORK
configs() {
	local n=$1 rotate=$2 hello=$3 retries=${4:-3} i
	cat >"$WORK/hub.toml" <<EOT
[hub]
address = "10.9.0.1"
port = 4820
rotate_interval = "$rotate"
grace = "3s"
socket = "$WORK/hub.sock"
EOT
	for i in $(seq 1 "$n"); do
		(umask 077; "$ROTOR" genkey >"$WORK/n$i.key")
		cat >>"$WORK/hub.toml" <<EOT

[[node]]
name = "n$i"
address = "10.9.0.$((i + 1))"
psk_file = "$WORK/n$i.key"
EOT
		cat >"$WORK/n$i.toml" <<EOT
[node]
name = "n$i"
address = "10.9.0.$((i + 1))"
hub = "10.9.0.1:4820"
psk_file = "$WORK/n$i.key"
hello_interval = "$hello"
retries = $retries
grace = "3s"
socket = "$WORK/n$i.sock"
EOT
	done
}

start_hub() {
	ip netns exec hub "$ROTOR" hub --config "$WORK/hub.toml" >>"$WORK/hub.log" 2>&1 &
	HUB_PID=$!
	PIDS+=("$HUB_PID")
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

# wait_all_sending N TIMEOUT_S: until the hub sends to every node and each node sends
wait_all_sending() {
	local n=$1 t=$2 i
	for _ in $(seq 1 $((t * 10))); do
		if hub_status | python3 -c "
import json,sys
d=json.load(sys.stdin)
sys.exit(0 if len(d['peers'])==$n and all(p['tx_spi'] and p['generation']>=1 for p in d['peers']) else 1)" 2>/dev/null; then
			return 0
		fi
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
	for i in $(seq 1 "$n"); do
		ip netns exec hub $PROBE recv --bind 10.9.0.1:$((5000 + i)) --duration $((d + 5)) --sent-file "$WORK/sent-up-$i" --ready-file "$WORK/ready-up-$i" >"$WORK/probe-up-$i.json" &
		ip netns exec n$i $PROBE recv --bind 10.9.0.$((i + 1)):6000 --duration $((d + 5)) --sent-file "$WORK/sent-down-$i" --ready-file "$WORK/ready-down-$i" >"$WORK/probe-down-$i.json" &
	done
	# Start sending only when every receiver is bound (python start-up in UML
	# can take over a second under load).
	for _ in $(seq 1 100); do
		[ "$(ls "$WORK"/ready-* 2>/dev/null | wc -l)" -ge $((2 * n)) ] && break
		sleep 0.1
	done
	for i in $(seq 1 "$n"); do
		(ip netns exec n$i $PROBE send --to 10.9.0.1:$((5000 + i)) --rate "$r" --duration "$d" >"$WORK/sent-up-$i.tmp" && mv "$WORK/sent-up-$i.tmp" "$WORK/sent-up-$i") &
		(ip netns exec hub $PROBE send --to 10.9.0.$((i + 1)):6000 --rate "$r" --duration "$d" >"$WORK/sent-down-$i.tmp" && mv "$WORK/sent-down-$i.tmp" "$WORK/sent-down-$i") &
	done
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

# control_loss PERCENT: drop that share of control datagrams both ways at the hub
control_loss() {
	local p
	p=$(python3 -c "print($1 / 100)")
	ip netns exec hub iptables-legacy -A INPUT -p udp --dport 4820 -m statistic --mode random --probability "$p" -j DROP
	ip netns exec hub iptables-legacy -A OUTPUT -p udp --dport 4820 -m statistic --mode random --probability "$p" -j DROP
}

# control_dropped: packets the control-loss rules dropped so far
control_dropped() {
	ip netns exec hub iptables-legacy -L -v -n -x | awk '/DROP/ && /4820/ { s += $1 } END { print s + 0 }'
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
# sequence numbers as outages in ms; fails if any exceeds BOUND_MS or a stream
# has more than MAX_RUNS_<name> runs (default 1).
outage_report() {
	local n=$1 rate=$2 bound=$3
	python3 - "$WORK" "$n" "$rate" "$bound" <<'PY'
import json, sys
work, n, rate, bound = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
bad = 0
for i in range(1, n + 1):
    for d in ("up", "down"):
        j = json.load(open(f"{work}/probe-{d}-{i}.json"))
        runs, start, prev = [], None, None
        for s in j["missing"]:
            if prev is None or s != prev + 1:
                if start is not None:
                    runs.append((start, prev))
                start = s
            prev = s
        if start is not None:
            runs.append((start, prev))
        ms = [round((b - a + 1) * 1000 / rate) for a, b in runs]
        print(f"  n{i} {d}: expected={j['expected']} lost={len(j['missing'])} outages_ms={ms}")
        if j["expected"] == 0 or any(m > bound for m in ms):
            bad = 1
sys.exit(bad)
PY
}

# runs_of NAME DIR: number of outages (runs of missing packets) in a stream
runs_of() {
	python3 -c "
import json
m=json.load(open('$WORK/probe-$2-$1.json'))['missing']
print(sum(1 for k, s in enumerate(m) if k == 0 or s != m[k-1] + 1))"
}
