# shellcheck shell=bash
# A three-member etcd cluster for the real-kernel tests (run inside UML as
# root, see scripts/uml-run.sh). Source it after lib.sh or daemon-lib.sh:
#
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/etcd-lib.sh"
#
# Topology: namespace etcdnet holds bridge br0 (no address of its own);
# member I (1..3) runs in namespace etcd<I>, 10.199.0.1<I>/24 on its device
# eth0, clients on port 2379, peers on 2380. The test's own etcdctl runs in
# namespace etcdc (10.199.0.10). Other namespaces (hubs) join with etcd_attach.
# The subnet lies outside 10.64.0.0/10, where scripts/bench.sh puts its
# nodes: a hub joined to this bridge would route a node address inside it
# to the bridge, and that node would never hear its hub.
# Data directories live in a tmpfs (/dev/shm), logs in $ETCD_WORK under /tmp
# (kept when ETCD_KEEP=1, for a post-mortem).
#
# Timing, for UML's one slow CPU (every syscall ~50 us, a process start
# 30-150 ms): ETCD_HEARTBEAT_MS (default 100) and ETCD_ELECTION_MS (1000).
# A leader lost is replaced after about one election timeout.
#
# Functions (status 0 on success; nothing exits the test):
#   etcd_up                 namespaces, bridge, the three members started;
#                           waits until all are healthy (ETCD_UP_TIMEOUT, 30
#                           s); sets ETCD_BOOT_MS (first start to healthy)
#   etcd_start I            start member I (again: it rejoins with its data)
#   etcd_stop I             SIGTERM member I and wait for it
#   etcd_kill I             SIGKILL member I and wait for it
#   etcd_running I          status 0 if member I's process is alive
#   etcd_attach NS ADDR     give namespace NS (existing) a device etcd0 on the
#                           bridge with ADDR/24 (10.199.0.x, not .10-.13)
#   etcd_cut NS             cut NS off the bridge (its port down): member
#                           namespaces etcd<I> or attached ones
#   etcd_heal NS            undo etcd_cut
#   etcd_endpoints [I...]   comma-separated client URLs (default: all three)
#   ectl ARGS...            etcdctl (API v3) from etcdc against all members
#   ectl_at I ARGS...       etcdctl from etcdc against member I only
#   ectl_in NS I ARGS...    etcdctl from namespace NS against member I only
#   etcd_healthy SECS [I...]
#                           wait until `endpoint health` passes on each
#                           member given (default all); status 1 at timeout
#   etcd_leader             the index of the member the others follow
#                           (empty, status 1, when they disagree or none)
#   etcd_term I             member I's raft term
#   etcd_log_tail [LINES]   the last lines of each member's log
#   etcd_cleanup            kill the members, delete namespaces and data
#                           (registered with on_exit when lib.sh is loaded;
#                           daemon-lib.sh users call it from their cleanup)
#
# Needs etcd and etcdctl (Debian: etcd-server, etcd-client).

ETCD_HEARTBEAT_MS=${ETCD_HEARTBEAT_MS:-100}
ETCD_ELECTION_MS=${ETCD_ELECTION_MS:-1000}
ETCD_UP_TIMEOUT=${ETCD_UP_TIMEOUT:-30}
ETCD_MEMBERS=(1 2 3)
ETCD_PIDS=([1]="" [2]="" [3]="")
ETCD_NETNS=()
declare -A ETCD_PORT=() # namespace -> its port on br0
ETCD_BOOT_MS=""
# etcdctl waits at most this long for a connection / a request: a member
# that is down answers "unhealthy" after the dial timeout, not after 5 s.
ETCDCTL_FLAGS=(--dial-timeout=1s --command-timeout=3s)

command -v etcd >/dev/null || { echo "FAIL: etcd not found (apt-get install etcd-server)"; exit 1; }
command -v etcdctl >/dev/null || { echo "FAIL: etcdctl not found (apt-get install etcd-client)"; exit 1; }
ETCD_WORK=$(mktemp -d /tmp/etcd-rig.XXXXXX) || { echo "FAIL: cannot create a directory in /tmp"; exit 1; }
ETCD_DATA=$(mktemp -d /dev/shm/etcd-rig.XXXXXX) || { echo "FAIL: cannot create a directory in /dev/shm"; exit 1; }

etcd_addr() { echo "10.199.0.1$1"; }
etcd_endpoints() {
	local i out="" sep=""
	[ $# -gt 0 ] || set -- "${ETCD_MEMBERS[@]}"
	for i in "$@"; do
		out+="${sep}http://$(etcd_addr "$i"):2379"
		sep=,
	done
	echo "$out"
}
etcd_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

etcd_in() {
	local ns=$1
	shift
	nsenter --net="/run/netns/$ns" "$@"
}

etcd_attach() {
	local ns=$1 addr=$2 port
	port=ep${#ETCD_PORT[@]}
	ip link add etcd0 netns "$ns" type veth peer name "$port" netns etcdnet || return 1
	ip -n etcdnet link set "$port" master br0 up || return 1
	ip -n "$ns" addr add "$addr/24" dev etcd0 || return 1
	ip -n "$ns" link set etcd0 up || return 1
	ETCD_PORT[$ns]=$port
}

etcd_net_up() {
	local ns
	for ns in etcdnet etcdc etcd1 etcd2 etcd3; do
		ip netns add "$ns" || return 1
		ETCD_NETNS+=("$ns")
		ip -n "$ns" link set lo up || return 1
	done
	ip -n etcdnet link add br0 type bridge || return 1
	ip -n etcdnet link set br0 up || return 1
	etcd_attach etcdc 10.199.0.10 || return 1
	for i in "${ETCD_MEMBERS[@]}"; do
		etcd_attach "etcd$i" "$(etcd_addr "$i")" || return 1
	done
}

etcd_start() {
	local i=$1 addr cluster="" j sep=""
	addr=$(etcd_addr "$i")
	for j in "${ETCD_MEMBERS[@]}"; do
		cluster+="${sep}m$j=http://$(etcd_addr "$j"):2380"
		sep=,
	done
	# With a data directory from an earlier run the member ignores the
	# initial-cluster flags and rejoins as itself. nsenter execs etcd, so
	# $! is etcd's own PID (a shell function here would leave a subshell
	# between them, and a kill would miss etcd).
	nsenter --net="/run/netns/etcd$i" etcd --name "m$i" --data-dir "$ETCD_DATA/m$i" \
		--listen-client-urls "http://$addr:2379" --advertise-client-urls "http://$addr:2379" \
		--listen-peer-urls "http://$addr:2380" --initial-advertise-peer-urls "http://$addr:2380" \
		--initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token rotor-rig \
		--heartbeat-interval "$ETCD_HEARTBEAT_MS" --election-timeout "$ETCD_ELECTION_MS" \
		--logger zap --log-outputs stderr \
		</dev/null >>"$ETCD_WORK/m$i.log" 2>&1 &
	ETCD_PIDS[i]=$!
}

etcd_running() { [ -n "${ETCD_PIDS[$1]}" ] && kill -0 "${ETCD_PIDS[$1]}" 2>/dev/null; }

etcd_signal() {
	local i=$2
	[ -n "${ETCD_PIDS[i]}" ] || return 0
	kill "-$1" "${ETCD_PIDS[i]}" 2>/dev/null
	wait "${ETCD_PIDS[i]}" 2>/dev/null
	ETCD_PIDS[i]=""
}
etcd_stop() { etcd_signal TERM "$1"; }
etcd_kill() { etcd_signal KILL "$1"; }

etcd_cut() { ip -n etcdnet link set "${ETCD_PORT[$1]:?not attached: $1}" down; }
etcd_heal() { ip -n etcdnet link set "${ETCD_PORT[$1]:?not attached: $1}" up; }

ectl_in() {
	local ns=$1 i=$2
	shift 2
	ETCDCTL_API=3 etcd_in "$ns" etcdctl "${ETCDCTL_FLAGS[@]}" --endpoints="$(etcd_endpoints "$i")" "$@"
}
ectl_at() { ectl_in etcdc "$@"; }
ectl() { ETCDCTL_API=3 etcd_in etcdc etcdctl "${ETCDCTL_FLAGS[@]}" --endpoints="$(etcd_endpoints)" "$@"; }

# One etcdctl for all members: it prints "URL is healthy: ..." per member and
# fails when any is not.
etcd_health_once() {
	local out n
	out=$(ETCDCTL_API=3 etcd_in etcdc etcdctl "${ETCDCTL_FLAGS[@]}" --endpoints="$(etcd_endpoints "$@")" \
		endpoint health 2>&1) || return 1
	n=$(grep -c ' is healthy' <<<"$out")
	[ "$n" -eq $# ]
}
etcd_healthy() {
	local secs=$1
	shift
	[ $# -gt 0 ] || set -- "${ETCD_MEMBERS[@]}"
	local deadline=$(($(etcd_ms) + secs * 1000))
	until etcd_health_once "$@"; do
		[ "$(etcd_ms)" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}

etcd_up() {
	local t0 i
	etcd_net_up || return 1
	t0=$(etcd_ms)
	for i in "${ETCD_MEMBERS[@]}"; do etcd_start "$i"; done
	etcd_healthy "$ETCD_UP_TIMEOUT" || return 1
	ETCD_BOOT_MS=$(($(etcd_ms) - t0))
}

# `endpoint status -w fields` prints per member a block of
# "MemberID" : N, "Leader" : N, ..., "Endpoint" : "URL"; the leader is the
# member whose ID the others name as leader.
# shellcheck disable=SC2016 # awk program
etcd_leader() {
	local out
	out=$(ectl endpoint status -w fields 2>/dev/null)
	awk -F' : ' '
		$1 == "\"MemberID\"" { id = $2 }
		$1 == "\"Leader\"" { leader[$2]++; n++ }
		$1 == "\"Endpoint\"" { gsub(/"/, "", $2); ep[id] = $2 }
		END {
			for (l in leader) if (leader[l] == n && (l in ep)) {
				split(ep[l], a, ".")         # http://10.199.0.1I:2379
				split(a[4], b, ":")
				print substr(b[1], 2); exit 0
			}
			exit 1
		}' <<<"$out"
}

# shellcheck disable=SC2016 # awk program
etcd_term() {
	ectl_at "$1" endpoint status -w fields 2>/dev/null |
		awk -F' : ' '$1 == "\"RaftTerm\"" { print $2; exit }'
}

etcd_log_tail() {
	local i
	for i in "${ETCD_MEMBERS[@]}"; do
		echo "--- etcd member $i ($ETCD_WORK/m$i.log), last ${1:-15} lines"
		tail -n "${1:-15}" "$ETCD_WORK/m$i.log" 2>/dev/null | cut -c1-300
	done
}

etcd_cleanup() {
	local i ns
	for i in "${ETCD_MEMBERS[@]}"; do etcd_kill "$i"; done
	for ns in "${ETCD_NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
	ETCD_NETNS=()
	rm -rf "$ETCD_DATA"
	[ "${ETCD_KEEP:-0}" = 1 ] || rm -rf "$ETCD_WORK"
}
if declare -F on_exit >/dev/null; then on_exit etcd_cleanup; fi
