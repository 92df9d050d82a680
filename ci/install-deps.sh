#!/usr/bin/env bash
# Install everything Sprite needs to build and test, from Debian (bookworm
# and bookworm-backports) and npm.  Idempotent: a second run changes nothing.
#
# Usage: ci/install-deps.sh            (as root, or with sudo available)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
SUDO=
if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
fi

# Versions that matter are pinned; the rest follow the Debian release.
BPO=bookworm-backports
BPO_PKGS=(
    meson=1.7.0-1~bpo12+1
    python3-pycotap=1.3.1-2~bpo12+1
    seabios=1.16.3-2~bpo12+1
    qemu-system-data=1:10.0.2+ds-2+deb13u1~bpo12+1
)
PKGS=(
    # build
    build-essential pkg-config ninja-build python3 python3-venv
    libglib2.0-dev libpixman-1-dev libslirp-dev libaio-dev
    libsqlite3-dev sqlite3 libcurl4-openssl-dev libssl-dev libxml2-dev
    libxxhash-dev
    libfdt-dev
    xz-utils ca-certificates curl
    # test guest
    linux-image-cloud-amd64 busybox-static cpio
    # S3 servers: Ceph RADOS Gateway (server of record); s3rver comes from npm
    radosgw ceph-mon ceph-osd ceph-common uuid-runtime
    # benchmarks and tests
    python3-matplotlib fio
)

src=/etc/apt/sources.list.d/sprite-backports.sources
if [ ! -f "$src" ]; then
    echo "install-deps: adding $BPO (deb and deb-src) to apt sources"
    $SUDO tee "$src" >/dev/null <<SRC
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: $BPO
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    stamp_update=1
fi

missing=()
for p in "${BPO_PKGS[@]}" "${PKGS[@]}"; do
    name=${p%%=*}
    want=${p#*=}
    have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
    case "$have" in
    "install ok installed "*)
        if [ "$name" != "$p" ] && [ "${have##* }" != "$want" ]; then
            missing+=("$p")
        fi
        ;;
    *) missing+=("$p") ;;
    esac
done

if [ ${#missing[@]} -gt 0 ] || [ -n "${stamp_update:-}" ]; then
    echo "install-deps: installing ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
        --no-install-recommends -t "$BPO" "${BPO_PKGS[@]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
        --no-install-recommends "${PKGS[@]}"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
        --no-install-recommends nodejs npm
fi

# s3rver, pinned by tests/package-lock.json (integrity hashes checked by npm)
if [ ! -x "$top/tests/node_modules/.bin/s3rver" ]; then
    (cd "$top/tests" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-deps: done"
