#!/usr/bin/env bash
# Assemble and build the patched QEMU that carries the sprite driver.
#
# The tree is generated, never edited by hand:
#   QEMU 10.0.2 tarball (Debian's +ds orig, pinned by sha256)
#   + qemu-patches/local/series   (fixes for the +ds tarball, not exported)
#   + qemu-patches/series         (the upstream-style series)
#   + block-sprite/qemu/          (our QEMU-side files, copied in place)
#   + libsprite, installed from build/sprite into the tree's own prefix
# Assembled tree and build live in $SPRITE_CACHE/qemu/<key>, where <key>
# hashes everything but our QEMU-side files and libsprite: those are
# synced into the tree on every run and rebuilt incrementally by ninja.
# build/qemu is a symlink to the build directory.
#
# Environment:
#   SPRITE_QEMU_TARBALL  use this local copy of qemu_10.0.2+ds.orig.tar.xz
#   SPRITE_CACHE         cache root (default: ${XDG_CACHE_HOME:-~/.cache}/sprite)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPRITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sprite}

QEMU_VERSION=10.0.2
TARBALL=qemu_${QEMU_VERSION}+ds.orig.tar.xz
TARBALL_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
APT_VERSION="1:${QEMU_VERSION}+ds-2+deb13u1~bpo12+1"
CONFIGURE_FLAGS=(
    --target-list=x86_64-softmmu
    --without-default-features
    --enable-kvm --enable-tools --enable-linux-aio --enable-slirp
    --enable-sprite
    --disable-docs --disable-install-blobs --disable-download
    --firmwarepath=/usr/share/qemu:/usr/share/seabios
    --python=/usr/bin/python3
)
# Bump when this script changes how a tree is assembled.
ASSEMBLY_VERSION=1

die() {
    echo "build-qemu: error: $*" >&2
    exit 1
}

log() {
    echo "build-qemu: $*"
}

sha256() {
    sha256sum "$1" | cut -d' ' -f1
}

# Print the path of a verified tarball, fetching it if needed.
fetch_tarball() {
    local dl=$cache/dl want=$cache/dl/$TARBALL url tmp
    if [ -n "${SPRITE_QEMU_TARBALL:-}" ]; then
        [ -f "$SPRITE_QEMU_TARBALL" ] ||
            die "SPRITE_QEMU_TARBALL=$SPRITE_QEMU_TARBALL does not exist"
        [ "$(sha256 "$SPRITE_QEMU_TARBALL")" = "$TARBALL_SHA256" ] ||
            die "$SPRITE_QEMU_TARBALL has the wrong sha256 (want $TARBALL_SHA256): not Debian's $TARBALL"
        echo "$SPRITE_QEMU_TARBALL"
        return
    fi
    if [ -f "$want" ] && [ "$(sha256 "$want")" = "$TARBALL_SHA256" ]; then
        echo "$want"
        return
    fi
    mkdir -p "$dl"
    log "fetching $TARBALL (QEMU $APT_VERSION source from Debian)" >&2
    url=$(cd "$dl" && apt-get source --print-uris "qemu=$APT_VERSION" 2>/dev/null |
        grep -o "'[^']*orig\.tar\.xz'" | tr -d "'") || true
    [ -n "$url" ] ||
        die "apt does not know qemu=$APT_VERSION: is bookworm-backports deb-src configured (ci/install-deps.sh does it)? Or download $TARBALL yourself and set SPRITE_QEMU_TARBALL=/path/to/it"
    tmp=$want.part
    curl -fsSL --retry 3 -o "$tmp" "$url" ||
        die "could not download $url; download $TARBALL yourself and set SPRITE_QEMU_TARBALL=/path/to/it"
    if [ "$(sha256 "$tmp")" != "$TARBALL_SHA256" ]; then
        rm -f "$tmp"
        die "$url has the wrong sha256 (want $TARBALL_SHA256); refusing it"
    fi
    mv "$tmp" "$want"
    echo "$want"
}

patch_list() {
    local dir=$1
    [ -f "$dir/series" ] || return 0
    grep -v '^\s*\(#\|$\)' "$dir/series" | sed "s|^|$dir/|"
}

# Everything that, when changed, needs a new tree from scratch.
tree_key() {
    {
        echo "assembly $ASSEMBLY_VERSION tarball $TARBALL_SHA256"
        echo "configure ${CONFIGURE_FLAGS[*]}"
        for p in $(patch_list "$top/qemu-patches/local") \
                 $(patch_list "$top/qemu-patches"); do
            [ -f "$p" ] || die "series names $p, which does not exist"
            echo "patch $(basename "$p") $(sha256 "$p")"
        done
    } | sha256sum | cut -c1-16
}

assemble() {
    local tarball=$1 src=$2 p
    log "assembling QEMU tree in $src"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar --no-same-owner -xJf "$tarball" -C "$src.tmp" --strip-components=1
    (
        cd "$src.tmp"
        git init -q
        git config user.name "Sprite build"
        git config user.email "build@sprite.invalid"
        git add -A
        git commit -qm "QEMU $QEMU_VERSION ($TARBALL)"
        git tag upstream
        for p in $(patch_list "$top/qemu-patches/local") \
                 $(patch_list "$top/qemu-patches"); do
            if ! git am -q --keep-cr "$p" >/dev/null 2>&1; then
                git am --abort >/dev/null 2>&1 || true
                die "patch $(basename "$p") does not apply to QEMU $QEMU_VERSION plus the patches before it; see docs/building.md ('Changing a patch') to refresh it"
            fi
        done
    )
    mv "$src.tmp" "$src"
}

# Copy our QEMU-side files into the tree, touching only what changed so
# that ninja rebuilds incrementally.
sync_overlay() {
    local src=$1 f rel
    (cd "$top/block-sprite/qemu" && find . -type f) | while read -r f; do
        rel=${f#./}
        if ! cmp -s "$top/block-sprite/qemu/$rel" "$src/$rel"; then
            mkdir -p "$(dirname "$src/$rel")"
            cp "$top/block-sprite/qemu/$rel" "$src/$rel"
            log "updated $rel"
        fi
    done
}

build_libsprite() {
    local prefix=$1 b=$top/build/sprite
    if [ ! -f "$b/build.ninja" ]; then
        meson setup "$b" "$top" --prefix="$prefix" --libdir=lib >/dev/null
    elif [ "$(meson introspect "$b" --buildoptions |
        python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"][0])')" != "$prefix" ]; then
        meson configure "$b" --prefix="$prefix" >/dev/null
    fi
    ninja -C "$b" >/dev/null || {
        ninja -C "$b"
        die "libsprite does not build"
    }
    meson install -C "$b" --quiet >/dev/null
}

main() {
    local tarball key dir src bld configured pc
    command -v meson >/dev/null ||
        die "meson is missing: run ci/install-deps.sh first"
    tarball=$(fetch_tarball)
    key=$(tree_key)
    dir=$cache/qemu/$key
    src=$dir/src
    bld=$dir/build
    mkdir -p "$dir"
    exec 9>"$dir/lock"
    flock 9

    [ -f "$src/.git/refs/tags/upstream" ] && [ -f "$src/VERSION" ] ||
        assemble "$tarball" "$src"
    sync_overlay "$src"
    build_libsprite "$dir/prefix"

    export PKG_CONFIG_PATH=$dir/prefix/lib/pkgconfig
    configured=$([ -f "$bld/build.ninja" ] && echo yes || true)
    if [ -z "$configured" ]; then
        log "configuring QEMU in $bld"
        rm -rf "$bld"
        mkdir -p "$bld"
        (cd "$bld" && "$src/configure" "${CONFIGURE_FLAGS[@]}" >configure.log 2>&1) || {
            tail -30 "$bld/configure.log" >&2
            rm -f "$bld/build.ninja"
            die "QEMU configure failed (full log: $bld/configure.log)"
        }
    fi
    # QEMU reads libsprite's pkg-config file when it is configured (a copy
    # is kept as $bld/sprite.pc): after a change there (a new dependency),
    # meson runs again in place.
    pc=$dir/prefix/lib/pkgconfig/sprite.pc
    if ! cmp -s "$pc" "$bld/sprite.pc"; then
        if [ -n "$configured" ]; then
            log "libsprite's pkg-config file changed: reconfiguring QEMU"
            { "$bld/pyvenv/bin/meson" configure --clearcache "$bld" &&
              ninja -C "$bld" reconfigure; } >"$dir/reconfigure.log" 2>&1 || {
                tail -30 "$dir/reconfigure.log" >&2
                die "QEMU reconfigure failed (full log: $dir/reconfigure.log)"
            }
        fi
        cp "$pc" "$bld/sprite.pc"
    fi
    log "building QEMU (key $key)"
    ninja -C "$bld" >"$dir/ninja.log" 2>&1 || {
        grep -B2 -A12 -m3 'error' "$dir/ninja.log" >&2 || tail -40 "$dir/ninja.log" >&2
        die "QEMU build failed (full log: $dir/ninja.log)"
    }
    mkdir -p "$top/build"
    ln -sfn "$bld" "$top/build/qemu"
    touch "$dir"
    # Keep the three most recently used trees.
    ls -1dt "$cache"/qemu/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
    log "$("$bld/qemu-img" --version | head -1) in build/qemu"
}

main "$@"
