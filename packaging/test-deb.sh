#!/bin/bash
# Builds rotor's Debian package (scripts/deb.sh) and checks it the way an
# operator meets it: installed with dpkg into a fresh Debian root of this
# host's release (debootstrap, minbase plus systemd and the package's
# dependencies, into a scratch folder),
# the binary runs, the directories have their modes, the man pages render,
# the bash completion loads, the example configuration passes `rotor check`'s
# configuration checks, the target's own systemd-analyze verifies both units
# and rates their confinement, and a purge removes what it should.
#
#   packaging/test-deb.sh      (as root; needs debootstrap, man, a Debian mirror)
#
# ROTOR_DEB_MIRROR overrides the mirror (default: deb.debian.org). Takes
# about 1.5 minutes, most of it debootstrap.
set -u
cd "$(dirname "$0")/.." || exit 1

PASSES=0
FAILS=0
pass() { echo "PASS: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
die() { echo "FAIL: $* (giving up)"; exit 1; }
quiet() { "$@" >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
for c in debootstrap man chroot; do command -v $c >/dev/null || die "$c not found"; done

DEB=$(scripts/deb.sh) || die "scripts/deb.sh failed"
VERSION=$(dpkg-deb -f "$DEB" Version)
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$SUITE" ] || die "no VERSION_CODENAME in /etc/os-release"
MIRROR=${ROTOR_DEB_MIRROR:-http://deb.debian.org/debian}
R=$(mktemp -d /tmp/rotor-deb-root.XXXXXX)
trap 'rm -rf "$R"' EXIT
in_root() { chroot "$R" "$@"; }

t0=$SECONDS
# With the package's dependencies of its own (the clear-text guard's
# iptables and ipset): dpkg -i installs nothing else.
debootstrap --variant=minbase --include=systemd,iptables,ipset "$SUITE" "$R" "$MIRROR" >"$R.log" 2>&1 ||
	{ tail -n 20 "$R.log"; rm -f "$R.log"; die "debootstrap $SUITE from $MIRROR"; }
rm -f "$R.log"
echo "  a fresh $SUITE root in $((SECONDS - t0)) s"

cp "$DEB" "$R/tmp/rotor.deb"
check "dpkg -i installs $(basename "$DEB") into the fresh root" in_root dpkg -i /tmp/rotor.deb
check "rotor --version says $VERSION ($(in_root rotor --version))" test "$(in_root rotor --version)" = "rotor $VERSION"
check "rotor check --help explains --config" bash -c "chroot '$R' rotor check --help | grep -q -- '--config'"
for d in /etc/rotor /var/lib/rotor; do
	m=$(in_root stat -c '%a %U' $d)
	check "$d is there, mode 0700, root's ($m)" test "$m" = "700 root"
done
for page in rotor rotor-hub rotor-node rotor-check rotor-reload rotor-status rotor-rotate rotor-purge rotor-genkey rotor-import; do
	f=$R/usr/share/man/man1/$page.1.gz
	sub=${page#rotor}
	check "man -l renders $page(1) with its synopsis" bash -c "MANWIDTH=80 man -l '$f' 2>/dev/null | grep -q '^ *rotor${sub:+ ${sub#-}} \\['"
done
check "the bash completion defines rotor's ($(in_root bash -c '. /usr/share/bash-completion/completions/rotor && complete -p rotor'))" \
	bash -c "chroot '$R' bash -c '. /usr/share/bash-completion/completions/rotor && complete -p rotor' | grep -q 'rotor$'"
for f in usr/share/zsh/vendor-completions/_rotor usr/share/fish/vendor_completions.d/rotor.fish usr/share/doc/rotor/copyright \
	usr/share/doc/rotor/configuration.md.gz usr/share/doc/rotor/operations.md.gz; do
	check "/$f is installed" test -s "$R/$f"
done

# The example configurations as an operator starts from them: keys made,
# files copied. The kernel check may fail (this host's kernel may lack
# ESP); the configuration checks must pass.
in_root sh -c 'umask 077 && rotor genkey >/etc/rotor/mn1.key'
in_root install -m 0600 /usr/share/doc/rotor/examples/hub.toml /etc/rotor/hub.toml
in_root install -m 0600 /usr/share/doc/rotor/examples/node.toml /etc/rotor/mn1.toml
for c in hub mn1; do
	out=$(in_root rotor check --config /etc/rotor/$c.toml 2>&1)
	echo "$out" | sed "s/^/  check $c: /"
	# A bad configuration stops `rotor check` before its first "ok" line.
	check "the example $c.toml passes the configuration checks" grep -q '^ok   config: ' <<<"$out"
done

# The target's own systemd (not running: offline checks only).
out=$(in_root systemd-analyze verify --man=no rotor-hub.service rotor-node@mn1.service 2>&1)
rc=$?
[ -z "$out" ] || echo "$out" | sed 's/^/  verify: /'
check "systemd-analyze verify: both units clean (exit $rc)" test "$rc" = 0 -a -z "$out"
for u in rotor-hub.service rotor-node@mn1.service; do
	level=$(in_root systemd-analyze security --offline=true "$u" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: //p')
	echo "  systemd-analyze security $u: $level"
	# On systemd's 0-100 scale: 25 is 2.5, inside its "OK" band.
	check "systemd-analyze security rates $u's exposure at most 2.5 ($level)" \
		quiet in_root systemd-analyze security --offline=true --threshold=25 "$u"
done

check "dpkg --purge removes the package" in_root dpkg --purge rotor
check "the purge took the binary, the units and /var/lib/rotor" bash -c "! test -e '$R/usr/bin/rotor' -o -e '$R/usr/lib/systemd/system/rotor-hub.service' -o -e '$R/var/lib/rotor'"
check "and left the operator's key in /etc/rotor" test -s "$R/etc/rotor/mn1.key"

echo "debian package: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
