#!/bin/bash
# Builds rotor's Debian package and prints its path:
# target/debian/rotor_VERSION_ARCH.deb with /usr/bin/rotor, the systemd units
# (packaging/systemd), the man pages and bash/zsh/fish completions that
# build.rs renders from src/cli.rs, the documentation, example
# configurations, and /etc/rotor and /var/lib/rotor (both 0700).
#
#   scripts/deb.sh            build (cargo build --release first)
#
# The layout is put together by hand and packed with dpkg-deb, which every
# Debian system has: no debhelper tree, and no cargo-deb to compile first.
# Set DEB_MAINTAINER to name the package's maintainer.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
ROOT=$(pwd)

die() { echo "deb.sh: $*" >&2; exit 1; }
for c in cargo dpkg-deb dpkg strip gzip readelf; do
	command -v "$c" >/dev/null || die "$c not found (cargo: Rust >= 1.88; the rest: apt-get install dpkg binutils gzip)"
done

# The build's messages name the binary and build.rs's output directory.
MSGS=$(mktemp)
trap 'rm -f "$MSGS"; [ -z "${STAGE:-}" ] || rm -rf "$STAGE"' EXIT
cargo build --release --locked -p rotor --bin rotor --message-format=json-render-diagnostics >"$MSGS" ||
	die "cargo build --release failed"
BIN=$(grep '"reason":"compiler-artifact"' "$MSGS" | grep -o '"executable":"[^"]*/rotor"' | head -n 1 | cut -d'"' -f4)
OUT=""
for d in $(grep '"reason":"build-script-executed"' "$MSGS" | grep -o '"out_dir":"[^"]*"' | cut -d'"' -f4); do
	[ -f "$d/man/rotor.1" ] && OUT=$d
done
[ -n "$BIN" ] && [ -x "$BIN" ] || die "the build named no rotor binary"
[ -n "$OUT" ] || die "the build named no directory with build.rs's man pages"

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || die "no version in Cargo.toml"
ARCH=$(dpkg --print-architecture)
# Reproducible: every file dated by the last commit.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

STAGE=$(mktemp -d)
P=$STAGE/rotor
DOC=$P/usr/share/doc/rotor
install -d -m 0755 "$P/usr/bin" "$P/usr/lib/systemd/system" "$P/usr/share/man/man1" \
	"$P/usr/share/bash-completion/completions" "$P/usr/share/zsh/vendor-completions" \
	"$P/usr/share/fish/vendor_completions.d" "$DOC/examples" "$P/DEBIAN"
install -d -m 0700 "$P/etc/rotor" "$P/var/lib/rotor"

strip --strip-unneeded -o "$P/usr/bin/rotor" "$BIN"
chmod 0755 "$P/usr/bin/rotor"
install -m 0644 packaging/systemd/rotor-hub.service packaging/systemd/rotor-node@.service \
	"$P/usr/lib/systemd/system/"
for m in "$OUT"/man/*.1; do
	gzip -9n <"$m" >"$P/usr/share/man/man1/$(basename "$m").gz"
done
install -m 0644 "$OUT/completions/rotor.bash" "$P/usr/share/bash-completion/completions/rotor"
install -m 0644 "$OUT/completions/_rotor" "$P/usr/share/zsh/vendor-completions/_rotor"
install -m 0644 "$OUT/completions/rotor.fish" "$P/usr/share/fish/vendor_completions.d/rotor.fish"
install -m 0644 README.md docs/*.md "$DOC/"
install -m 0644 packaging/examples/*.toml "$DOC/examples/"
# Debian policy: documentation over 4 KB is compressed.
find "$DOC" -name '*.md' -size +4k -exec gzip -9n {} +
{
	cat packaging/copyright
	for l in Apache-2.0:LICENSE-APACHE MIT:LICENSE-MIT; do
		printf '\nLicense: %s\n' "${l%%:*}"
		sed -e 's/^[[:space:]]*$/./' -e 's/^/ /' "${l#*:}"
	done
} >"$DOC/copyright"

# Dependencies: the package of each shared library the binary links, at
# least the newest glibc symbol version it uses.
DEPENDS=""
GLIBC=$(readelf -V --wide "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
for lib in $(readelf -d --wide "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
	pkg=$(dpkg -S "*/$lib" 2>/dev/null | head -n 1 | cut -d: -f1) || true
	[ -n "$pkg" ] || die "no Debian package holds $lib, which rotor links"
	case $pkg in libc6) pkg="libc6 (>= $GLIBC)" ;; esac
	case ", $DEPENDS, " in *", $pkg, "*) ;; *) DEPENDS=${DEPENDS:+$DEPENDS, }$pkg ;; esac
done

# The clear-text guard runs these (src/guard.rs).
DEPENDS="$DEPENDS, iptables, ipset"

{
	echo "Package: rotor"
	echo "Version: $VERSION"
	echo "Architecture: $ARCH"
	echo "Maintainer: ${DEB_MAINTAINER:-rotor developers <rotor@localhost>}"
	echo "Installed-Size: $(du -sk --exclude=DEBIAN "$P" | cut -f1)"
	echo "Depends: $DEPENDS"
	cat packaging/control
} >"$P/DEBIAN/control"
install -m 0755 packaging/maintainer/postinst packaging/maintainer/prerm packaging/maintainer/postrm "$P/DEBIAN/"
(cd "$P" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$P/DEBIAN/md5sums"
chmod 0644 "$P/DEBIAN/md5sums"
find "$P" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

DEST=${CARGO_TARGET_DIR:-$ROOT/target}/debian
mkdir -p "$DEST"
DEB=$DEST/rotor_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$P" "$DEB" >/dev/null || die "dpkg-deb failed"
echo "$DEB"
