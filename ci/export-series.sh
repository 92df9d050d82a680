#!/usr/bin/env bash
# Export the whole QEMU change as one upstream-style series:
#   ci/export-series.sh OUTDIR
# Applies qemu-patches/series to pristine QEMU 10.0.2, folds our QEMU-side
# files (block-sprite/qemu/) into the first patch, which is the one that
# wires the driver into the build, and writes numbered `git format-patch`
# files plus a cover letter to OUTDIR.  The +ds fixes in
# qemu-patches/local/ are not part of it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: ci/export-series.sh OUTDIR}
cache=${SPRITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sprite}
tarball=${SPRITE_QEMU_TARBALL:-$cache/dl/qemu_10.0.2+ds.orig.tar.xz}
[ -f "$tarball" ] || {
    echo "export-series: $tarball missing: run ci/build-qemu.sh first" >&2
    exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar --no-same-owner -xJf "$tarball" -C "$work" --strip-components=1
cd "$work"
git init -q
git config user.name "Sprite export"
git config user.email "export@sprite.invalid"
git add -A
git commit -qm "QEMU 10.0.2"
base=$(git rev-parse HEAD)

first=1
grep -v '^\s*\(#\|$\)' "$top/qemu-patches/series" | while read -r p; do
    git am -q "$top/qemu-patches/$p"
    if [ "$first" = 1 ]; then
        cp -r "$top/block-sprite/qemu/." .
        git add -A
        git commit -q --amend --no-edit
        first=0
    fi
done
mkdir -p "$out"
git format-patch -q --cover-letter -o "$out" "$base"..HEAD
echo "export-series: $(ls "$out" | wc -l) files in $out"
