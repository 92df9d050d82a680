#!/usr/bin/env bash
# The whole test suite: install what is missing, build, start the S3
# servers (Ceph radosgw and s3rver on loopback), run every suite, stop
# the servers.  Extra arguments go to `meson test` (e.g. --suite unit).
# Ends with the line "N passed, N failed".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

"$top/ci/install-deps.sh"
"$top/ci/build.sh"

state=$(mktemp -d /tmp/sprite-servers.XXXXXX)
stop_servers() {
    python3 "$top/tests/servers/servers.py" stop "$state" || true
    rm -rf "$state"
}
trap stop_servers EXIT
python3 "$top/tests/servers/servers.py" start "$state"
eval "$(python3 "$top/tests/servers/servers.py" env "$state")"

rc=0
meson test -C "$top/build/sprite" --print-errorlogs --num-processes 2 \
    "$@" || rc=$?

python3 - "$top/build/sprite/meson-logs/testlog.json" <<'PY'
import json, sys
passed = failed = skipped = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"):
        passed += 1
    elif r == "SKIP":
        skipped += 1
    else:
        failed += 1
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
PY
exit $rc
