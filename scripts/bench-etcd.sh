# shellcheck shell=bash
# scripts/bench.sh's etcd, sourced by it inside UML (not run by hand):
# netns-tests/etcd-lib.sh's three members (namespaces etcd1..3, 10.199.0.11-13,
# the test's etcdctl and curl in namespace etcdc), the hubs' configuration
# for them, and what etcd itself counts.
#
#   bench_etcd_up            start the three members; sets ETCD_BOOT_MS
#   bench_etcd_config CONFIG PREFIX
#                            point a hub config (from `rotor-loadgen gen`)
#                            at etcd: its state_dir becomes state =
#                            "etcd://MEMBERS/PREFIX", with the boot's
#                            cluster key; lease_ttl = $LEASE_TTL when set
#   etcd_counters            one JSON object: per member (m1..m3) the
#                            counters of its /metrics (puts, txns, ranges,
#                            proposals committed, the db size) and its CPU
#                            (ns, bench.sh's cpu_ns); the cluster's
#                            revision (`etcdctl endpoint status`)
#   etcd_delta A B           what happened between two etcd_counters: puts,
#                            txns, ranges and proposals (each member applies
#                            every write: the largest member's count),
#                            revisions, and the three members' CPU in s
#
# Each write transaction of the hub (up to 128 puts) is one revision and
# one raft proposal; etcd_mvcc_txn_total counts the applied transactions
# with more than one operation, etcd_mvcc_put_total every put (inside
# transactions too), on every member.
#
# Needs: etcd, etcdctl, curl, jq; bench.sh's W (its tmpfs) and ROTOR.

ETCD_LIB=$HERE/etcd-lib.sh
[ -f "$ETCD_LIB" ] || ETCD_LIB=$HERE/../netns-tests/etcd-lib.sh
# shellcheck source=../netns-tests/etcd-lib.sh
. "$ETCD_LIB"
CLUSTER_KEY=$W/cluster.key
# --etcd-members 1: member 1 alone (etcd-lib.sh starts, checks and names
# the members of this list).
[ "${ETCD_MEMBERS_N:-3}" = 1 ] && ETCD_MEMBERS=(1)
# The members' logs stay in ETCD_WORK (the host's /tmp) for a post-mortem.
export ETCD_KEEP=1

bench_etcd_up() {
	(umask 077 && "$ROTOR" genkey >"$CLUSTER_KEY") || return 1
	etcd_up || { etcd_log_tail 20 >&2; return 1; }
	log "etcd's logs are in $ETCD_WORK (host /tmp)"
}

bench_etcd_config() { # CONFIG PREFIX
	local members
	members=$(etcd_endpoints | sed 's|http://||g')
	sed -i "s|^state_dir = .*|state = \"etcd://$members/$2\"\nstate_key_file = \"$CLUSTER_KEY\"${LEASE_TTL:+\nlease_ttl = \"$LEASE_TTL\"}|" "$1"
	grep -q '^state = "etcd://' "$1"
}

# etcd_metric TEXT NAME: the value of an unlabelled counter, or null
etcd_metric() {
	awk -v m="$2" '$1 == m { v = $2 } END { if (v == "") print "null"; else printf "%.0f\n", v }' <<<"$1"
}

etcd_counters() {
	local i m text cpu rev members="{}"
	for i in "${ETCD_MEMBERS[@]}"; do
		text=$(etcd_in etcdc curl -s --max-time 5 "http://$(etcd_addr "$i"):2379/metrics" 2>/dev/null)
		cpu=null
		etcd_running "$i" && cpu=$(cpu_ns "${ETCD_PIDS[$i]}")
		m=$(jq -nc --argjson put "$(etcd_metric "$text" etcd_mvcc_put_total)" \
			--argjson txn "$(etcd_metric "$text" etcd_mvcc_txn_total)" \
			--argjson range "$(etcd_metric "$text" etcd_mvcc_range_total)" \
			--argjson proposals "$(etcd_metric "$text" etcd_server_proposals_committed_total)" \
			--argjson db "$(etcd_metric "$text" etcd_mvcc_db_total_size_in_bytes)" \
			--argjson cpu "${cpu:-null}" \
			'{put: $put, txn: $txn, range: $range, proposals: $proposals, db_bytes: $db, cpu_ns: $cpu}')
		members=$(jq -c --arg k "m$i" --argjson v "$m" '.[$k] = $v' <<<"$members")
	done
	rev=$(ectl endpoint status -w json 2>/dev/null | jq '[.[].Status.header.revision] | max // null' 2>/dev/null)
	jq -nc --argjson m "$members" --argjson rev "${rev:-null}" '{members: $m, revision: $rev}'
}

etcd_delta() { # A B
	jq -nc --argjson a "$1" --argjson b "$2" '
		def d(k): [($b.members | keys[]) as $m
			| if ($b.members[$m][k] != null and $a.members[$m][k] != null)
			  then $b.members[$m][k] - $a.members[$m][k] else empty end] | max;
		{put: d("put"), txn: d("txn"), range: d("range"), proposals: d("proposals"),
		 revisions: (if $a.revision != null and $b.revision != null then $b.revision - $a.revision else null end),
		 cpu_s: ([($b.members | keys[]) as $m
			| if ($b.members[$m].cpu_ns != null and $a.members[$m].cpu_ns != null)
			  then $b.members[$m].cpu_ns - $a.members[$m].cpu_ns else empty end] | add // null
			| if . == null then null else . / 1e9 end),
		 db_bytes: ([$b.members[].db_bytes // empty] | max)}'
}
