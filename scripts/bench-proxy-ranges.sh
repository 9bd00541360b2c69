#!/usr/bin/env bash
# Ranged GETs into a big multipart object through the proxy: PARTS parts of
# 5 MiB (boto3, one upload), then 20 ranged GETs of 100 kB near its end,
# timed and checked. A range finds its part in one header read when the
# parts are equal (it walked every header before it until 24e866e).
#
#   scripts/bench-proxy-ranges.sh [PARTS] [HEADROOM_BINARY]
#
# Defaults: 200 parts (1 GB upstream), target/release/headroom.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

parts=${1:-200}
if [ ! -x target/pyclients/bin/python ] || ! target/pyclients/bin/python -c 'import boto3' 2>/dev/null; then
  python3 -m venv target/pyclients
  target/pyclients/bin/pip install -q --disable-pip-version-check awscli==1.45.11 boto3
fi
cargo build --release --locked -q -p headroom --bin headroom --example s3_test_server
bin=target/release
work=$(mktemp -d)
cleanup() {
  kill "$(cat "$work/proxy.pid" 2>/dev/null)" 2>/dev/null || true
  kill "$(cat "$work/up.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/up/vault"
if [ -n "${2:-}" ]; then
  # Another build of headroom (an older commit, to compare), with this
  # tree's test server.
  mkdir -p "$work/bin/examples"
  cp "$2" "$work/bin/headroom"
  ln -s "$PWD/$bin/examples/s3_test_server" "$work/bin/examples/s3_test_server"
  bin=$work/bin
fi
proxy_stack "$bin" "$work" 256MiB ranges ranges-secret-0123456789

AWS_CA_BUNDLE='' AWS_ACCESS_KEY_ID=ranges AWS_SECRET_ACCESS_KEY=ranges-secret-0123456789 AWS_DEFAULT_REGION=us-east-1 \
  target/pyclients/bin/python - "$proxy" "$parts" <<'PY'
import os, sys, time
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
n, part = int(sys.argv[2]), 5 << 20
chunk = os.urandom(part)
up = s3.create_multipart_upload(Bucket="vault", Key="big")["UploadId"]
done = [{"ETag": s3.upload_part(Bucket="vault", Key="big", UploadId=up, PartNumber=i + 1, Body=chunk)["ETag"],
         "PartNumber": i + 1} for i in range(n)]
s3.complete_multipart_upload(Bucket="vault", Key="big", UploadId=up, MultipartUpload={"Parts": done})
start = time.time()
for i in range(20):
    at = (n - 1 - i) * part + 12345
    got = s3.get_object(Bucket="vault", Key="big", Range=f"bytes={at}-{at + 99999}")["Body"].read()
    assert got == chunk[12345:12345 + 100000], f"the range at {at} came back other bytes"
print(f"{n} parts of 5 MiB: 20 ranged GETs near the end in {time.time() - start:.2f} s")
PY
