#!/usr/bin/env bash
# One command on a fresh machine: install dependencies, build everything,
# run the main job (a VM on a Sprite volume, see ci/demo.py).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/ci/install-deps.sh"
"$top/ci/build.sh"
exec python3 "$top/ci/demo.py" "$@"
