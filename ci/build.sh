#!/usr/bin/env bash
# Build everything: libsprite and its tests (build/sprite) and the
# patched QEMU (build/qemu, see ci/build-qemu.sh).  Incremental: a second
# run with no change does nothing.  The test guest is built on first use
# (tests/lib/guest.py).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

"$top/ci/build-qemu.sh"
# build-qemu.sh built and installed libsprite for QEMU; build the tests too.
ninja -C "$top/build/sprite" >/dev/null
