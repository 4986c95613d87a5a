#!/bin/bash
# Runs every test rotor has: formatting, lints, the Rust tests (unit, golden
# bytes, property tests, the seeded simulation), then each real-kernel scenario
# in netns-tests/ inside User-Mode Linux, then the Debian package installed
# into a fresh Debian root (packaging/test-deb.sh). Installs the Debian
# packages it needs when run as root. Exit status 0 only if everything passed.
#
#   scripts/test.sh              everything
#   scripts/test.sh --quick      only the Rust checks (no UML)
#   scripts/test.sh 10-xfrm      only the netns tests whose name matches
#   scripts/test.sh deb          only the Debian package's test (and the Rust checks)
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
FILTER=""
for a in "$@"; do
	case $a in
	--quick) QUICK=1 ;;
	-h | --help) sed -n '2,12p' "$0"; exit 0 ;;
	*) FILTER=$a ;;
	esac
done

# Each step says when it starts (seconds since the start), so a slow step
# shows in CI's log.
step() { printf '\n=== %s (at %d s)\n' "$*" "$SECONDS"; }
die() { echo "test.sh: $*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.88 (https://rustup.rs) and retry"

need_pkgs=()
command -v linux.uml >/dev/null || need_pkgs+=(user-mode-linux)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v iptables-legacy >/dev/null || need_pkgs+=(iptables)
command -v ipset >/dev/null || need_pkgs+=(ipset)
command -v modprobe >/dev/null || need_pkgs+=(kmod)
command -v ping >/dev/null || need_pkgs+=(iputils-ping)
# The active hub of a failover pair announces the service address with it.
command -v arping >/dev/null || need_pkgs+=(iputils-arping)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v man >/dev/null || need_pkgs+=(man-db)
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
command -v protoc >/dev/null || need_pkgs+=(protobuf-compiler)
# The Rust build needs protoc (etcd-client compiles etcd's protobufs) and
# cargo test a real etcd (tests/etcd_store.rs): those even with --quick.
if [ "$QUICK" = 1 ]; then
	quick_pkgs=()
	for p in "${need_pkgs[@]}"; do
		case $p in etcd-server | protobuf-compiler) quick_pkgs+=("$p") ;; esac
	done
	need_pkgs=("${quick_pkgs[@]}")
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing packages ${need_pkgs[*]}: run as root, or apt-get install them"
	step "installing ${need_pkgs[*]}"
	apt-get update -qq || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
		die "apt-get install ${need_pkgs[*]} failed"
fi

PASSED=0
FAILED=0
FAILED_NAMES=()
record() { # record NAME STATUS
	if [ "$2" = 0 ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); fi
}

step "cargo fmt --check"
cargo fmt --all -- --check
record fmt $?

# In the release profile, like the tests below: the build scripts and
# proc-macros both need (protoc's prost/tonic builders, syn, serde's
# derives) are then compiled once, not once per profile.
step "cargo clippy --release --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --release --quiet -- -D warnings
record clippy $?

# Optimised, as the binaries the real-kernel tests run: one build of the
# dependencies serves both (an unoptimised test build beside the release
# one cost CI about two minutes of its 25).
step "cargo test --release"
cargo test --workspace --release --no-fail-fast 2>&1 | tee /tmp/rotor-cargo-test.$$ | grep -Ev '^test .* ok$'
rc=${PIPESTATUS[0]}
record cargo-test "$rc"
awk '/^test result:/ { p += $4; f += $6 } END { printf "cargo test: %d passed, %d failed\n", p, f }' /tmp/rotor-cargo-test.$$
rm -f /tmp/rotor-cargo-test.$$

if [ "$QUICK" = 0 ]; then
	step "cargo build --release (binaries for the real-kernel tests)"
	cargo build --workspace --release --quiet
	record build $?
	TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
	export ROTOR_BIN=$TARGET_DIR/release/rotor
	export ROTOR_XFRMCTL=$TARGET_DIR/release/rotor-xfrmctl
	# The package test mostly waits on the mirror and on dpkg: it runs
	# beside the first scenarios (smoke, XFRM layer), which assert on kernel
	# state, not on timing, and its output is shown when it is done.
	DEB_PID=
	if [[ deb == *"$FILTER"* ]]; then
		DEB_LOG=$(mktemp)
		packaging/test-deb.sh >"$DEB_LOG" 2>&1 &
		DEB_PID=$!
	fi
	# Scenarios 0* and 1* (no daemon timing) run one at a time beside the
	# package test; the daemon scenarios then run $LANES at once. A UML
	# kernel is one host process on one CPU: two of them use a two-core
	# machine's cores. Each writes to its own log, printed whole when it
	# ends.
	LANES=${ROTOR_UML_LANES:-2}
	LOGS=$(mktemp -d)
	declare -A RUNNING=()
	reap() { # waits for one running scenario, prints its log, records it
		local pid t rc
		wait -n -p pid "${!RUNNING[@]}"
		t=${RUNNING[$pid]}
		unset "RUNNING[$pid]"
		rc=$(cat "$LOGS/$(basename "$t").rc" 2>/dev/null || echo 1)
		step "UML: $t (exit $rc)"
		cat "$LOGS/$(basename "$t").log"
		record "$t" "$rc"
	}
	for t in netns-tests/[0-9]*.sh; do
		case $t in *"$FILTER"*) ;; *) continue ;; esac
		case $t in
		netns-tests/0* | netns-tests/1*)
			step "UML: $t"
			scripts/uml-run.sh "$t"
			record "$t" $?
			continue ;;
		esac
		if [ -n "$DEB_PID" ] && [ "$DEB_PID" != done ]; then
			wait "$DEB_PID"
			DEB_RC=$?
			DEB_PID=done
		fi
		while [ ${#RUNNING[@]} -ge "$LANES" ]; do reap; done
		(
			scripts/uml-run.sh "$t" >"$LOGS/$(basename "$t").log" 2>&1
			echo $? >"$LOGS/$(basename "$t").rc"
		) &
		RUNNING[$!]=$t
	done
	while [ ${#RUNNING[@]} -gt 0 ]; do reap; done
	rm -rf "$LOGS"
	if [ -n "$DEB_PID" ]; then
		[ "$DEB_PID" = done ] || { wait "$DEB_PID"; DEB_RC=$?; }
		step "Debian package: built, installed into a fresh Debian root, units verified"
		cat "$DEB_LOG"
		rm -f "$DEB_LOG"
		record deb "$DEB_RC"
	fi
fi

echo
if [ "$FAILED" -gt 0 ]; then
	echo "failed: ${FAILED_NAMES[*]}"
fi
echo "$PASSED passed, $FAILED failed in $SECONDS s"
[ "$FAILED" -eq 0 ]
