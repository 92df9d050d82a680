#!/usr/bin/env bash
# Build the test guest from installed Debian packages only (no download):
#   OUTDIR/vmlinuz     copy of /boot/vmlinuz-*-cloud-amd64 (newest)
#   OUTDIR/initrd.img  newc cpio + gzip: busybox-static, the virtio-blk
#                      modules of that kernel, and tests/guest/init
#
# Usage: tests/guest/build-initramfs.sh OUTDIR
#
# Rebuilt only when an input changes: OUTDIR/inputs.sha256 records the hash
# of this script, init, the kernel, busybox and the modules.  Safe to run
# concurrently on the same OUTDIR (flock); outputs are replaced atomically.
# Prints OUTDIR/vmlinuz and OUTDIR/initrd.img paths on stdout.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

# Loaded in this order by init; a module built into the kernel is skipped.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)

kernel=$(printf '%s\n' /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -n 1)
[ -f "$kernel" ] || { echo "$0: no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64" >&2; exit 1; }
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
busybox=/bin/busybox
case "$(ldd "$busybox" 2>&1)" in
*"not a dynamic"*) ;;
*) echo "$0: $busybox is missing or not static: install busybox-static" >&2; exit 1 ;;
esac

# Resolve each module to a file, or to nothing if built in.
modfiles=()
for m in "${MODULES[@]}"; do
    # modules.dep/modules.builtin use the file name, with '_' or '-'.
    pat="/(${m}|${m//_/-})\.ko(\.xz|\.zst|\.gz)?"
    if grep -Eq "${pat}\$" "$moddir/modules.builtin"; then
        continue
    fi
    rel=$(grep -Eo "^[^:]*${pat}:" "$moddir/modules.dep" | head -n 1 | tr -d :) || true
    [ -n "$rel" ] || { echo "$0: module $m neither built into $kver nor in $moddir" >&2; exit 1; }
    modfiles+=("$m=$moddir/$rel")
done

exec 9>"$out/.lock"
flock 9

hash=$( {
    sha256sum "$0" "$here/init" "$kernel" "$busybox"
    for mf in "${modfiles[@]}"; do echo "${mf%%=*}"; sha256sum "${mf#*=}"; done
} | sed "s|  .*/|  |" | sha256sum | cut -d' ' -f1)

if [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ] &&
   [ "$(cat "$out/inputs.sha256" 2>/dev/null)" = "$hash" ]; then
    echo "$out/vmlinuz"; echo "$out/initrd.img"
    exit 0
fi

tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,mnt,lib/modules}
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
: >"$root/lib/modules/load-order"
for mf in "${modfiles[@]}"; do
    m=${mf%%=*} f=${mf#*=}
    case "$f" in
    *.ko.xz) xz -dc "$f" ;;
    *.ko.zst) zstd -qdc "$f" ;;
    *.ko.gz) gzip -dc "$f" ;;
    *.ko) cat "$f" ;;
    esac >"$root/lib/modules/$m.ko"
    echo "$m" >>"$root/lib/modules/load-order"
done
# Reproducible archive: fixed times, sorted names, no owner data.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9n >"$tmp/initrd.img"
cp "$kernel" "$tmp/vmlinuz"
mv -f "$tmp/vmlinuz" "$out/vmlinuz"
mv -f "$tmp/initrd.img" "$out/initrd.img"
echo "$hash" >"$out/inputs.sha256"
echo "build-initramfs: built $out/initrd.img for $kver ($(tr '\n' ' ' <"$root/lib/modules/load-order"))" >&2
echo "$out/vmlinuz"; echo "$out/initrd.img"
