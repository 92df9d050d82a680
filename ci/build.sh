#!/usr/bin/env bash
# Build everything: libsprite and its tests (build/sprite), the patched
# QEMU (build/qemu, see ci/build-qemu.sh) and the test guest
# (build/guest).  Incremental: a second run with no change does nothing.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

"$top/ci/build-qemu.sh"
# build-qemu.sh built and installed libsprite for QEMU; build the tests too.
ninja -C "$top/build/sprite" >/dev/null
"$top/tests/guest/build-initramfs.sh" "$top/build/guest"
