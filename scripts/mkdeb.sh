#!/usr/bin/env bash
# mkdeb.sh — build coffer_<version>_<arch>.deb with dpkg-deb (no external
# packager). Called by `make deb` after `make install` staged the tree:
#
#   scripts/mkdeb.sh STAGE_DIR VERSION COMMIT OUT_DIR
#
# VERSION becomes a Debian version: without a leading v, "-" as "+"
# (v1.2.0-3-gabc1234: 1.2.0+3+gabc1234), or 0~git<VERSION> before any tag.
#
# It adds what a Debian package needs besides the installed files:
# DEBIAN/{control,postinst,prerm,postrm,md5sums}, the copyright file and a
# changelog, compresses man pages and the changelog (gzip -9n: reproducible),
# strips the binaries, and prints the .deb's path.
set -euo pipefail
stage=${1:?stage dir}; version=${2:?version}; commit=${3:?commit}; out=${4:?out dir}
here=$(cd "$(dirname "$0")/.." && pwd)
pkg=$here/packaging/deb
arch=$(dpkg --print-architecture)
doc=$stage/usr/share/doc/coffer

version=${version#v}
# A release tag (1.2.0, v1.2.0-3-gabc1234) is kept; a bare commit hash
# (no tag yet; it may start with a digit) sorts before any release.
if echo "$version" | grep -Eq '^[0-9]+\.[0-9]'; then
	version=$(echo "$version" | tr - +)
else
	version="0~git$(echo "$version" | tr - +)"
fi

# Debian ships the licence as the copyright file and the common licence
# text; the repository's LICENSE would be an extra copy (lintian).
rm -f "$doc/LICENSE"
install -m 0644 "$pkg/copyright" "$doc/copyright"
# SOURCE_DATE_EPOCH keeps the changelog date (and the archive) reproducible.
date=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)}")
sed -e "s/@VERSION@/$version/" -e "s/@COMMIT@/$commit/" -e "s/@DATE@/$date/" "$pkg/changelog.in" |
	gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
find "$stage/usr/share/man" -type f ! -name '*.gz' -exec gzip -9nf {} +
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/cofferd" "$stage/usr/bin/coffer"

install -d -m 0755 "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$pkg/control.in" > "$stage/DEBIAN/control"
install -m 0755 "$pkg/postinst" "$pkg/prerm" "$pkg/postrm" "$stage/DEBIAN/"
(cd "$stage" && find usr -type f -print0 | sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"
# Directories 0755, files as installed, everything owned by root.
find "$stage" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb=$out/coffer_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
