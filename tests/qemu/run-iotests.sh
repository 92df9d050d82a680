#!/usr/bin/env bash
# Run the sprite qemu-iotests (group "sprite", in block-sprite/qemu/tests/
# qemu-iotests/tests/) with QEMU's own harness in the build tree.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top/build/qemu/tests/qemu-iotests"
exec ./check -raw -g sprite
