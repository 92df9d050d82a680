#!/usr/bin/python3
"""Start, stop and describe the test S3 servers (radosgw and s3rver).

    servers.py start STATE_DIR   start both, print the `export` lines
    servers.py env STATE_DIR     print the `export` lines again
    servers.py stop STATE_DIR    stop them (by recorded PID) and wait

`eval "$(tests/servers/servers.py start /tmp/s3)"` sets SPRITE_TEST_*
in a shell; STATE_DIR/env.sh holds the same lines.  See
tests/lib/s3servers.py for the variables and the state directory layout.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import s3servers  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("start", "stop", "env"))
    ap.add_argument("state_dir")
    args = ap.parse_args()
    try:
        if args.command == "start":
            t0 = time.monotonic()
            env = s3servers.start(args.state_dir)
            print(f"servers: started in {time.monotonic() - t0:.1f} s "
                  f"(rgw {env['SPRITE_TEST_RGW_ENDPOINT']}, "
                  f"s3rver {env['SPRITE_TEST_S3RVER_ENDPOINT']})", file=sys.stderr)
            sys.stdout.write(s3servers.format_env(env))
        elif args.command == "env":
            sys.stdout.write(s3servers.format_env(s3servers.environment(args.state_dir)))
        else:
            s3servers.stop(args.state_dir)
    except s3servers.ServerError as e:
        print(f"servers.py {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
