# shellcheck shell=bash
# scripts/bench.sh --takeover, sourced by it inside UML (not run by hand):
# hub failover with N real nodes. Uses bench.sh's helpers (gen,
# start_loadgen, wait_sync, pf, cpu_ns, now_ms, fdiv, log, ...) and
# bench-etcd.sh's (the etcd members are up).
#
# Topology, for one N: namespaces hub (hub A) and hubb (hub B), each with a
# veth0 on bridge br0 in namespace load (10.0.0.2/24 on br0, the N node
# addresses as bench.sh gives them). Each hub host has its own address
# there (10.0.0.11, .12/24) and reaches 10.64.0.0/10 via 10.0.0.2; the
# leader adds the service address 10.0.0.1/24 beside it and announces it
# (arping -U). (With the service address as an interface's only address,
# giving it up would make the kernel flush every route through that
# interface, the route to the nodes included.) Both join the etcd bridge
# (10.199.0.20, .21) and share one prefix, rotor/takeover-nN; the same
# configuration but the control socket (hub.sock, hubb.sock).
#
#  1 A starts and leads (a start that exits before serving is made again,
#    up to 5 times, counted: first_hub_starts); the N nodes initialise and
#    are all in sync.
#  2 B starts and waits as the standby ("standby: waiting to lead"). B,
#    and A in 4, run supervised as rotor-hub.service runs a hub (started
#    again 5 s after a failed exit, at most 5 times: new_leader_restarts);
#    their CPU counts every run.
#  3 kill -9 of A (t0). From t0, on UML's one clock: B's log says leading
#    (lead_s), service address taken, state read (the records, from etcd),
#    serving (serving_s); `rotor status` on B's socket answered (answer_s,
#    polled: the call blocks until B serves); every node that waited for a
#    hub (a datagram unanswered >= 1 s, rotor-loadgen's `silence`) heard
#    from B again (quiet_s: the end of the last such wait, once none is
#    waiting), with the longest wait a node saw (wait_max_s) and how many
#    waited; every node in sync again (in_sync_s): B cannot send on the
#    SAs A sent on (a re-added SA would repeat IVs), so it re-keys every
#    node; each node counts once it adopted a new key and was acknowledged
#    under it (the loadgen's rotations since t0 reach N, all in sync). B's
#    CPU from t0 to each. Inits and fallbacks of the nodes and inits on
#    the hub's records from before the kill to then: each must be 0.
#  4 (--handover on) A started again, as a service manager would (the
#    socket file it left removed, as systemd's RuntimeDirectory would be):
#    it waits as the standby; SIGTERM of B (t0): the same figures for A,
#    and B's exit.
#
# One BENCH-JSON line per N: {"kind": "takeover", n, events: [kill, sigterm]}.

TK_SVC=10.0.0.1
TK_PREFIX=rotor/takeover
# The hubs' and etcd's logs, kept on the host's /tmp for a post-mortem.
TK_LOGS=$(mktemp -d /tmp/rotor-bench-takeover.XXXXXX)

# nap SECS: sleep without starting a process (a process start costs UML
# 30-150 ms of its one CPU, which the hubs and etcd need during a takeover)
mkfifo "$W/nap.fifo" && exec {NAP_FD}<>"$W/nap.fifo"
nap() { read -r -t "$1" -u "$NAP_FD" _; true; }

# progress_now: P_AT (unix_ms) and P_WAITING (silence.waiting) of the
# loadgen's progress line, without a process (polled); status 1 when it
# cannot be read
progress_now() {
	local line
	{ read -r line <"$W/progress.json"; } 2>/dev/null || return 1
	[[ $line =~ [{,]\"unix_ms\":([0-9]+) ]] || return 1
	P_AT=${BASH_REMATCH[1]}
	[[ $line =~ [{,]\"waiting\":([0-9]+) ]] || return 1
	P_WAITING=${BASH_REMATCH[1]}
}
# tick: NOW, the clock in ms (no command substitution: that forks)
tick() { NOW=$((${EPOCHREALTIME/./} / 1000)); }

# The hubs log the start-up and lead phases (info in rotor::daemon).
tk_log_level() {
	case $HUB_LOG in
	info | debug | trace) echo "$HUB_LOG" ;;
	*) echo "$HUB_LOG,rotor::daemon=info" ;;
	esac
}

topology_ha() { # N DIR
	local n=$1 ns t0
	ip netns add hub && ip netns add hubb && ip netns add load || return 1
	ip -n load link add br0 type bridge || return 1
	ip -n load link set br0 up
	ip -n load link set lo up
	local host=11
	for ns in hub hubb; do
		ip link add veth0 netns "$ns" type veth peer name "p-$ns" netns load || return 1
		ip -n load link set "p-$ns" master br0 up
		ip -n "$ns" link set lo up
		ip -n "$ns" link set veth0 up
		ip -n "$ns" addr add "10.0.0.$host/24" dev veth0 || return 1
		ip -n "$ns" route add 10.64.0.0/10 via 10.0.0.2 || return 1
		host=$((host + 1))
	done
	ip -n load addr add 10.0.0.2/24 dev br0 || return 1
	t0=$(now_ms)
	if [ "$n" -gt "$ANYIP_ABOVE" ]; then
		ip -n load route add local 10.64.0.0/10 dev lo || return 1
		log "N=$n: node addresses by a local route (AnyIP), not $n addresses"
	else
		sed 's/ DEV$/ br0/' "$2/addresses.batch" | ip -n load -batch - || return 1
		log "N=$n: $n addresses in $(($(now_ms) - t0)) ms"
	fi
	etcd_attach hub 10.199.0.20 && etcd_attach hubb 10.199.0.21
}

# log_ms FILE REGEX: the time (Unix ms) of the first line of FILE matching
# REGEX, from its timestamp; null when none
log_ms() {
	local line
	line=$(grep -m1 -E "$2" "$1" 2>/dev/null) || { echo null; return; }
	date -u -d "${line%% *}" +%s%3N 2>/dev/null || echo null
}
# since T0 MS: seconds from T0 to MS (ms), or null
since() { if [ "$2" = null ] || [ -z "$2" ]; then echo null; else fdiv $(($2 - $1)) 1000; fi; }

# start_ha_hub NS CONFIG LOG: a hub in NS; sets TK_PID
TK_PIDS=()
start_ha_hub() {
	ip netns exec "$1" env ROTOR_LOG="$(tk_log_level)" "${HUB_WRAP[@]}" "$ROTOR" hub --config "$2" >>"$3" 2>&1 &
	TK_PID=$!
	TK_PIDS+=("$TK_PID")
}
# supervise NS CONFIG LOG PIDFILE: a hub in NS kept running as its service
# manager would (packaging/systemd/rotor-hub.service: Restart=on-failure,
# RestartSec=5s), at most 5 restarts. PIDFILE holds the running hub's PID,
# PIDFILE.exits a line per failed exit (count, status, Unix ms), and
# PIDFILE.times the CPU of the exited ones (bash's `times` of their parent).
supervise() {
	local n=0 rc pid
	while :; do
		ip netns exec "$1" env ROTOR_LOG="$(tk_log_level)" "${HUB_WRAP[@]}" "$ROTOR" hub --config "$2" >>"$3" 2>&1 &
		pid=$!
		echo "$pid" >"$4"
		wait "$pid"
		rc=$?
		times | tail -n 1 >"$4.times"
		[ "$rc" = 0 ] && break
		n=$((n + 1))
		echo "$n $rc $((${EPOCHREALTIME/./} / 1000))" >>"$4.exits"
		[ "$n" -ge 5 ] && break
		sleep 5
	done
}
# start_supervised NS CONFIG LOG PIDFILE: supervise in the background;
# sets TK_PID (the supervisor) and waits for the hub's PID
start_supervised() {
	rm -f "$4" "$4.exits" "$4.times"
	supervise "$@" &
	TK_PID=$!
	TK_PIDS+=("$TK_PID")
	until [ -s "$4" ]; do nap 0.05; done
}
# sup_pid PIDFILE: the running hub's PID (no process started)
sup_pid() { local p; { read -r p <"$1"; } 2>/dev/null && echo "$p"; }
# sup_cpu_ns PIDFILE PID: the CPU of every run so far: the exited ones'
# (from the supervisor's times) and PID's
sup_cpu_ns() {
	local u s dead=0 live
	if { read -r u s <"$1.times"; } 2>/dev/null; then
		# "XmY.ZZZs XmY.ZZZs"
		dead=$(awk -v u="$u" -v s="$s" 'function sec(t, a) { split(t, a, "m"); sub("s", "", a[2]); return a[1] * 60 + a[2] }
			BEGIN { printf "%.0f\n", (sec(u) + sec(s)) * 1e9 }')
	fi
	live=$(cpu_ns "$2") || live=0
	echo $((dead + live))
}

# Stops every hub started here (bench.sh's cleanup calls it).
takeover_cleanup() {
	local p f
	for p in "${TK_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for f in "$W"/*.pid; do [ -s "$f" ] && kill "$(sup_pid "$f")" 2>/dev/null; done
	for p in "${TK_PIDS[@]}"; do wait "$p" 2>/dev/null; done
	TK_PIDS=()
}
# At exit: the nap FIFO keeps bench.sh's tmpfs busy.
takeover_close() { [ -n "${NAP_FD:-}" ] && exec {NAP_FD}>&-; NAP_FD=; }

# wait_log FILE REGEX PID SECS: until FILE has a line matching REGEX (PID
# must stay alive)
wait_log() {
	local deadline
	tick
	deadline=$((NOW + $4 * 1000))
	until grep -q -E "$2" "$1" 2>/dev/null; do
		kill -0 "$3" 2>/dev/null || { log "the hub (pid $3) died:"; tail -n 5 "$1" >&2; return 1; }
		tick
		((NOW < deadline)) || { log "timed out waiting for /$2/ in $1"; return 1; }
		nap 0.2
	done
}

# alive PID: the process runs (a zombie does not; builtins only, it is
# polled)
alive() {
	local st
	{ read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
	st=${st##*) }
	[ "${st%% *}" != Z ]
}

# hub_inits SOCKET: the inits on the hub's records, summed
hub_inits() { "$ROTOR" status --socket "$1" --json 2>/dev/null | jq '[.peers[].inits] | add // 0'; }

# takeover_event NAME OLD_PID SIGNAL NEW_PIDFILE NEW_SUPERVISOR NEW_NS NEW_SOCKET NEW_LOG OLD_SOCKET:
# signals the leader OLD_PID and measures the takeover of the standby
# (supervised: NEW_PIDFILE holds its PID, restarts included); prints the
# event's JSON object. The fleet must be in sync under OLD.
takeover_event() {
	local name=$1 old=$2 sig=$3 npidf=$4 nsup=$5 nns=$6 nsock=$7 nlog=$8 osock=$9 new
	local inits0 lg_inits0 lg_fb0 rot0 c0 t0 deadline answer=null c_answer=null quiet=null c_quiet=null
	local old_exit=null st waited wmax peak resync=null resync_cpu=null c1 t1 inits1 lg_inits1 lg_fb1
	local drops rcv lead taken sread serving settled ok=true
	inits0=$(hub_inits "$osock")
	lg_inits0=$(pf .inits); lg_fb0=$(pf .fallbacks); rot0=$(pf .rotations)
	# The nodes' ended waits start over at the loadgen's next progress period.
	touch "$W/mark"
	sleep 0.5
	new=$(sup_pid "$npidf")
	c0=$(sup_cpu_ns "$npidf" "$new")
	t0=$(now_ms)
	kill "-$sig" "$old"
	log "N=$N: $name: SIG$sig to the leader at $(date -u +%H:%M:%S.%N)"
	# This runs in a subshell: wait_sync's check of the hub is the new
	# one's supervisor (a restart is no death).
	HUB_PID=$nsup
	deadline=$((t0 + (120 + N / 200) * 1000))
	while tick && ((NOW < deadline)); do
		if [ "$old_exit" = null ] && ! alive "$old"; then
			old_exit=$NOW
		fi
		# The socket appears when the standby binds (it leads by then); a
		# `rotor status` then waits until it serves (or 10 s: again).
		if [ -S "$nsock" ] && "$ROTOR" status --socket "$nsock" >/dev/null 2>&1; then
			tick
			answer=$NOW
			new=$(sup_pid "$npidf")
			c_answer=$(sup_cpu_ns "$npidf" "$new")
			break
		fi
		kill -0 "$nsup" 2>/dev/null || { log "N=$N: $name: the standby stopped for good:"; tail -n 8 "$nlog" >&2; ok=false; break; }
		nap 0.05
	done
	[ "$answer" = null ] && { ok=false; log "N=$N: $name: the standby did not answer"; }
	# What one `rotor status` costs once the hub serves (answer_s includes
	# the call that got the first answer).
	local s0 status_s=null
	s0=$(now_ms)
	"$ROTOR" status --socket "$nsock" >/dev/null 2>&1 && status_s=$(fdiv $(($(now_ms) - s0)) 1000)
	while [ "$old_exit" = null ]; do
		tick
		alive "$old" || old_exit=$NOW
		((NOW < deadline)) || break
		nap 0.05
	done
	# Quiet: no node waits for a hub any more (a report after the answer),
	# and the moment the last wait ended.
	if $ok; then
		deadline=$(($(now_ms) + 60000 + 2 * $(hello_ms) + N * 2))
		while tick && ((NOW < deadline)); do
			progress_now && [ "$P_AT" -gt "$answer" ] && [ "$P_WAITING" = 0 ] && {
				new=$(sup_pid "$npidf")
				c_quiet=$(sup_cpu_ns "$npidf" "$new")
				quiet=$(pf '.silence.last_wait_end_unix_ms // "null"')
				break
			}
			kill -0 "$nsup" 2>/dev/null || { log "N=$N: $name: the new leader stopped for good"; ok=false; break; }
			nap 0.2
		done
		[ "$quiet" = null ] && [ "$(pf .silence.waits)" != 0 ] && { ok=false; log "N=$N: $name: nodes still waiting: $(progress)"; }
	fi
	waited=$(pf .silence.waits); wmax=$(pf .silence.wait_max_ms); peak=$(pf .silence.waiting_peak)
	log "N=$N: $name: answered after $(since "$t0" "$answer") s; nodes quiet after $(since "$t0" "$quiet") s ($waited waited, the longest $wmax ms, at most $peak at once)"
	# In sync again: the new leader cannot send on the SAs the old one
	# sent on (a re-added SA would repeat IVs): it re-keys every node, and
	# each node is in sync again once it adopted its new key and was
	# acknowledged under it. Until then the hub's outbound SA to that node
	# is blocked.
	if $ok; then
		if wait_sync $((rot0 + N)) $((60 + 2 * $(hello_ms) / 1000 + N / 200)); then
			local end
			end=$(pf '.all_in_sync_unix_ms // empty')
			[ -n "$end" ] && [ "$end" -ge "$t0" ] || end=$(now_ms)
			resync=$end
			new=$(sup_pid "$npidf")
			resync_cpu=$(fdiv $(($(sup_cpu_ns "$npidf" "$new") - c0)) 1000000000)
		else
			ok=false
		fi
	fi
	log "N=$N: $name: node rotations since t0: $(($(pf .rotations) - rot0)) ($N nodes)"
	log "N=$N: $name: the service address's neighbour at the nodes: $(ip -n load neigh show 10.0.0.1 | tr '\n' ' '); hub $(ip -n hub -br link show veth0 | awk '{print $3}'), hubb $(ip -n hubb -br link show veth0 | awk '{print $3}')"
	lg_inits1=$(pf .inits); lg_fb1=$(pf .fallbacks)
	local rekeys restarts=0
	rekeys=$(($(pf .rotations) - rot0))
	[ -s "$npidf.exits" ] && restarts=$(wc -l <"$npidf.exits")
	[ "$restarts" -gt 0 ] && log "N=$N: $name: the new leader exited $restarts time(s) and was started again 5 s later (count, status, Unix ms): $(tr '\n' ';' <"$npidf.exits")"
	st=$("$ROTOR" status --socket "$nsock" --json 2>/dev/null | jq -c '{drops: .drops, inits: ([.peers[].inits] | add // 0)}')
	drops=$(jq -c '.drops // null' <<<"$st" 2>/dev/null)
	inits1=$(jq '.inits // empty' <<<"$st" 2>/dev/null)
	rcv=$(rcvbuf_errors "$nns")
	lead=$(log_ms "$nlog" ' INFO leading( |$)')
	taken=$(log_ms "$nlog" ' INFO service address taken')
	sread=$(log_ms "$nlog" ' INFO state read')
	serving=$(log_ms "$nlog" ' INFO serving *$')
	settled=$(log_ms "$nlog" ' INFO repairs settled')
	log "N=$N: $name: from the new leader's log (s after t0): leading $(since "$t0" "$lead"), address $(since "$t0" "$taken"), state read $(since "$t0" "$sread"), serving $(since "$t0" "$serving"), repairs settled $(since "$t0" "$settled")"
	grep -E 'waiting to lead|leading|service address|state read|state loaded|hub starting|guard in place|kernel state adopted|reconciled|serving|repairs|ERROR|WARN' "$nlog" | tail -n 14 | cut -c1-240 >&2
	local inits_d=null lg_d=null fb_d=null
	[ -n "$inits0" ] && [ -n "$inits1" ] && inits_d=$((inits1 - inits0))
	[ -n "$lg_inits0" ] && [ -n "$lg_inits1" ] && lg_d=$((lg_inits1 - lg_inits0))
	[ -n "$lg_fb0" ] && [ -n "$lg_fb1" ] && fb_d=$((lg_fb1 - lg_fb0))
	[ "$inits_d" = 0 ] && [ "$lg_d" = 0 ] && [ "$fb_d" = 0 ] || ok=false
	log "N=$N: $name: every node in sync again after $(since "$t0" "$resync") s (the new leader's CPU since t0: $resync_cpu s); inits on the hub's records $inits_d, at the nodes $lg_d, fallbacks $fb_d"
	jq -nc --arg event "$name" --argjson ok "$ok" \
		--argjson lead_s "$(since "$t0" "$lead")" --argjson address_s "$(since "$t0" "$taken")" --argjson settled_s "$(since "$t0" "$settled")" \
		--argjson state_read_s "$(since "$t0" "$sread")" --argjson serving_s "$(since "$t0" "$serving")" \
		--argjson answer_s "$(since "$t0" "$answer")" --argjson quiet_s "$(since "$t0" "$quiet")" \
		--argjson old_exit_s "$(since "$t0" "$old_exit")" --argjson status_call_s "$status_s" \
		--argjson cpu_to_answer_s "$([ "$c_answer" = null ] && echo null || fdiv $((c_answer - c0)) 1000000000)" \
		--argjson cpu_to_quiet_s "$([ "$c_quiet" = null ] && echo null || fdiv $((c_quiet - c0)) 1000000000)" \
		--argjson waits "${waited:-null}" --argjson wait_max_ms "${wmax:-null}" --argjson waiting_peak "${peak:-null}" \
		--argjson in_sync_s "$(since "$t0" "$resync")" --argjson cpu_to_in_sync_s "$resync_cpu" \
		--argjson hub_inits "$inits_d" --argjson inits "$lg_d" --argjson fallbacks "$fb_d" \
		--argjson hub_drops "${drops:-null}" --argjson rcvbuf_errors "${rcv:-null}" --argjson rekeys "$rekeys" --argjson restarts "$restarts" '{
		event: $event, complete: $ok, lead_s: $lead_s, address_s: $address_s, settled_s: $settled_s, state_read_s: $state_read_s,
		serving_s: $serving_s, answer_s: $answer_s, status_call_s: $status_call_s, quiet_s: $quiet_s, old_leader_exit_s: $old_exit_s,
		wait_max_s: (if $wait_max_ms == null then null else $wait_max_ms / 1000 end), waits: $waits, waiting_peak: $waiting_peak,
		cpu_to_answer_s: $cpu_to_answer_s, cpu_to_quiet_s: $cpu_to_quiet_s,
		in_sync_s: $in_sync_s, cpu_to_in_sync_s: $cpu_to_in_sync_s, node_rotations: $rekeys, new_leader_restarts: $restarts,
		inits: $inits, hub_inits: $hub_inits, fallbacks: $fallbacks,
		hub_drops: $hub_drops, rcvbuf_errors: $rcvbuf_errors}'
}

# tk_with_etcd EVENT_JSON COUNTERS_BEFORE: the event with what etcd did
# from then to now (the records read, the resync's writes, the members' CPU)
tk_with_etcd() {
	local e
	e=$(etcd_delta "$2" "$(etcd_counters)")
	jq -c --argjson e "$e" '.etcd = $e' <<<"$1" 2>/dev/null || echo "$1"
}

takeover_n() { # N
	local n=$1 D=$W/t$1 complete=true t0 c0 init_wall init_cpu lg_start init_end init_etcd
	local A B BS A2 A2S sb_start sb_cpu ev_kill=null ev_term=null e0 e1 ttl_s
	N=$n
	log "=== N=$n: takeover"
	gen "$n" "$D" etcd "$TK_PREFIX-n$n" || { log "gen failed"; return 1; }
	sed -i "/^\[hub\]$/a service_address = \"$TK_SVC/24\"\nservice_interface = \"veth0\"" "$D/hub.toml"
	sed "s|^socket = .*|socket = \"$D/hubb.sock\"|" "$D/hub.toml" >"$D/hubb.toml"
	topology_ha "$n" "$D" || { log "topology failed"; return 1; }
	e0=$(etcd_counters)

	# 1: A leads, the fleet initialises under it. A fresh hub writes every
	# node's record before it serves; when etcd leaves it without an
	# acknowledgement for 5 s it exits, and is started again (as its
	# service manager would), up to 5 times.
	local starts=0
	while [ "$starts" -lt 5 ]; do
		starts=$((starts + 1))
		start_ha_hub hub "$D/hub.toml" "$W/tk-$n-A.log"
		A=$TK_PID
		HUB_PID=$A
		wait_log "$W/tk-$n-A.log" ' INFO serving *$' "$A" $((120 + n / 1000)) && break
		wait "$A" 2>/dev/null
		log "N=$n: A's start $starts failed: $(tail -n 1 "$W/tk-$n-A.log" | cut -c1-200)"
	done
	kill -0 "$A" 2>/dev/null || return 1
	# The lease's TTL as the hub took it (from --lease-ttl or its default).
	ttl_s=$(grep -m1 -o 'lease_ttl_ms=[0-9]*' "$W/tk-$n-A.log" | cut -d= -f2)
	[ -n "$ttl_s" ] && ttl_s=$(fdiv "$ttl_s" 1000)
	c0=$(cpu_ns "$A")
	start_loadgen "$n" "$D"
	# A long init is watched from the host: A's log and the load
	# generator's progress copied out every 30 s while it lasts.
	(while sleep 30; do cp "$W/tk-$n-A.log" "$W/progress.json" "$TK_LOGS/" 2>/dev/null; done) &
	local mirror=$!
	wait_sync 0 $((120 + n / 50)) || complete=false
	kill "$mirror" 2>/dev/null
	init_end=$(pf '.all_in_sync_unix_ms // empty')
	lg_start=$(jq -r '.unix_ms - .elapsed_ms' "$W/progress.json")
	init_wall=$(fdiv $((${init_end:-$(now_ms)} - lg_start)) 1000)
	init_cpu=$(fdiv $(($(cpu_ns "$A") - c0)) 1000000000)
	e1=$(etcd_counters)
	init_etcd=$(etcd_delta "$e0" "$e1")
	log "N=$n: init under A: ${init_wall}s wall, ${init_cpu} hub CPU-s; etcd: $init_etcd"

	# 2: B waits as the standby.
	t0=$(now_ms)
	start_supervised hubb "$D/hubb.toml" "$W/tk-$n-B.log" "$W/B.pid"
	BS=$TK_PID
	B=$(sup_pid "$W/B.pid")
	wait_log "$W/tk-$n-B.log" 'standby: waiting to lead' "$B" $((120 + n / 500)) || return 1
	sb_start=$(fdiv $(($(now_ms) - t0)) 1000)
	sb_cpu=$(fdiv "$(cpu_ns "$B")" 1000000000)
	log "N=$n: B is the standby after ${sb_start}s (${sb_cpu} CPU-s: configuration, the records read once to check the cluster key)"
	sleep 2
	wait_sync 0 60 || complete=false

	# 3: kill -9 of the leader.
	e0=$(etcd_counters)
	ev_kill=$(takeover_event kill "$A" KILL "$W/B.pid" "$BS" hubb "$D/hubb.sock" "$W/tk-$n-B.log" "$D/hub.sock") || complete=false
	HUB_PID=$BS
	B=$(sup_pid "$W/B.pid")
	jq -e '.complete' <<<"$ev_kill" >/dev/null 2>&1 || complete=false
	ev_kill=$(tk_with_etcd "$ev_kill" "$e0")

	# 4: A back as the standby, then SIGTERM of B.
	if [ "$HANDOVER" = on ] && [ "$complete" = true ]; then
		rm -f "$D/hub.sock"
		start_supervised hub "$D/hub.toml" "$W/tk-$n-A2.log" "$W/A2.pid"
		A2S=$TK_PID
		A2=$(sup_pid "$W/A2.pid")
		if wait_log "$W/tk-$n-A2.log" 'standby: waiting to lead' "$A2" $((120 + n / 500)); then
			sleep 2
			wait_sync 0 60 || complete=false
			e0=$(etcd_counters)
			ev_term=$(takeover_event sigterm "$B" TERM "$W/A2.pid" "$A2S" hub "$D/hub.sock" "$W/tk-$n-A2.log" "$D/hubb.sock") || complete=false
			HUB_PID=$A2S
			jq -e '.complete' <<<"$ev_term" >/dev/null 2>&1 || complete=false
			ev_term=$(tk_with_etcd "$ev_term" "$e0")
		else
			complete=false
		fi
	fi
	[ -n "$ev_kill" ] || ev_kill=null
	[ -n "$ev_term" ] || ev_term=null
	$complete || RC=1
	stop_all
	takeover_cleanup
	local lg_summary
	lg_summary=$(jq -c . "$W/loadgen.json" 2>/dev/null || echo null)
	[ -n "$lg_summary" ] || lg_summary=null
	jq -nc --argjson n "$n" --argjson complete "$complete" \
		--argjson init_wall_s "$init_wall" --argjson init_hub_cpu_s "$init_cpu" \
		--argjson standby_start_s "$sb_start" --argjson standby_cpu_s "$sb_cpu" \
		--argjson kill "$ev_kill" --argjson sigterm "$ev_term" \
		--argjson lease_ttl_s "${ttl_s:-null}" --arg hello "$HELLO" --argjson retries "$RETRIES" \
		--argjson a_starts "$starts" --argjson etcd_members "${#ETCD_MEMBERS[@]}" \
		--argjson init_etcd "${init_etcd:-null}" --argjson loadgen "$lg_summary" \
		--argjson hello_ms "$(hello_ms)" '{
		kind: "takeover", n: $n, complete: $complete,
		events: ([$kill, $sigterm] | map(select(. != null))),
		init_wall_s: $init_wall_s, init_hub_cpu_s: $init_hub_cpu_s, init_etcd: $init_etcd,
		standby_start_s: $standby_start_s, standby_cpu_s: $standby_cpu_s, first_hub_starts: $a_starts, etcd_members: $etcd_members,
		lease_ttl_s: $lease_ttl_s, hello_interval: $hello, retries: $retries,
		patience_min_s: ($retries * $hello_ms / 1000), patience_max_s: (($retries + 1) * $hello_ms / 1000),
		loadgen: $loadgen}' | sed 's/^/BENCH-JSON /'
	ip netns del hub; ip netns del hubb; ip netns del load
	cp "$W"/tk-"$n"-*.log "$TK_LOGS/" 2>/dev/null
	log "N=$n: the hubs' logs are in $TK_LOGS, etcd's in $ETCD_WORK (host /tmp)"
	rm -rf "$D"
	$complete
}

# hello_ms: --hello in ms
hello_ms() {
	case $HELLO in
	*ms) echo "${HELLO%ms}" ;;
	*s) echo $((${HELLO%s} * 1000)) ;;
	*m) echo $((${HELLO%m} * 60000)) ;;
	esac
}
