#!/usr/bin/python3
"""Self-test of the S3 server fixtures (run standalone or under the suite).

Checks, on radosgw and s3rver: a signed PUT/GET round trip (also ranged
GET, listing, delete, a fresh unique bucket), and that curl's own SigV4
(what libcurl does for the C code) is accepted.  On radosgw only: a
wrong secret is refused with 403, and `If-None-Match: *` on an existing
key gives 412.  Exits non-zero on the first failure.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import s3servers  # noqa: E402


def check(what: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
    if not ok:
        sys.exit(1)


def curl_put_get(srv: s3servers.Server, key: str, data: bytes) -> bytes:
    """PUT then GET with curl --aws-sigv4, as the C backend signs."""
    url = f"http://{srv.endpoint}/{srv.bucket}/{key}"
    auth = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
            f"{srv.access_key}:{srv.secret_key}", "-sSf"]
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        subprocess.run(["curl", *auth, "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                        "-T", f.name, url], check=True)
    return subprocess.run(["curl", *auth, "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                           url], check=True, capture_output=True).stdout


def test_common(srv: s3servers.Server) -> None:
    c = srv.client()
    name = srv.kind.lower()
    data = os.urandom(100_000)
    key = "self-test/obj 1+é"
    c.put_object(srv.bucket, key, data)
    check(f"{name}: signed PUT/GET round trip", c.get_object(srv.bucket, key) == data)
    check(f"{name}: ranged GET", c.get_object(srv.bucket, key, (10, 4105)) == data[10:4106])
    listed = c.list_objects(srv.bucket, "self-test/")
    check(f"{name}: list shows the object",
          [(o["key"], o["size"]) for o in listed] == [(key, len(data))], str(listed))
    c.delete_object(srv.bucket, key)
    check(f"{name}: delete", c.head_object(srv.bucket, key) is None)
    b = c.new_bucket("self-test")
    for i in range(3):
        c.put_object(b, f"k{i}", b"%d" % i)
    check(f"{name}: fresh bucket {b} lists 3 objects", len(c.list_objects(b)) == 3)
    check(f"{name}: listing pages with continuation tokens",
          [o["key"] for o in c.list_objects(b, page_size=2)] == ["k0", "k1", "k2"])
    c.delete_bucket(b)
    check(f"{name}: bucket deleted", c.request("HEAD", b).status == 404)
    check(f"{name}: curl --aws-sigv4 PUT/GET",
          curl_put_get(srv, "self-test/curl", data) == data)
    c.delete_object(srv.bucket, "self-test/curl")


def test_rgw(srv: s3servers.Server) -> None:
    c = srv.client()
    r = c.request("PUT", srv.bucket, "self-test/bad", b"x", secret_key="wrong" + srv.secret_key)
    check("rgw: wrong secret refused with 403", r.status == 403, f"HTTP {r.status}")
    r = c.request("PUT", srv.bucket, "self-test/cond", b"1", headers={"If-None-Match": "*"})
    check("rgw: If-None-Match: * on a new key -> 200", r.status == 200, f"HTTP {r.status}")
    r = c.request("PUT", srv.bucket, "self-test/cond", b"2", headers={"If-None-Match": "*"})
    check("rgw: If-None-Match: * on an existing key -> 412", r.status == 412, f"HTTP {r.status}")
    check("rgw: the object kept its first value",
          c.get_object(srv.bucket, "self-test/cond") == b"1")
    c.delete_object(srv.bucket, "self-test/cond")


def main() -> int:
    servers = s3servers.ensure_servers()
    for srv in servers.values():
        print(f"# {srv.kind} at {srv.endpoint}, bucket {srv.bucket}")
        test_common(srv)
    test_rgw(servers["RGW"])
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
