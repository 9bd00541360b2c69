#!/usr/bin/env bash
# The Ceph s3-tests (vendor/ceph-s3-tests, unmodified) that apply to an S3
# server without versioning, ACL policies, lifecycle, SSE, logging, website
# or IAM: run directly against moto_server, then through `headroom proxy`
# in front of a fresh moto_server. Prints both pass rates and every test
# moto passes that the proxy does not; each must be listed with its reason
# in scripts/s3-tests-differences.txt, or the script fails.
#
#   scripts/s3-tests.sh [PYTEST_ARGS...]     (e.g. -k multipart)
#
# About 4 minutes for each run on 2 cores. The suite's fixtures empty
# buckets with ListObjectVersions in pages of 128 and moto's paging skips
# what follows a deleted key marker, so after a test that writes more than
# 128 keys the next tests may fail their set-up with BucketNotEmpty (moto
# does this directly too). Tests that fail their set-up are run once more,
# on their own, and that second result is the one counted.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

if [ ! -x target/s3tests/bin/moto_server ] || [ ! -x target/s3tests/bin/pytest ]; then
  python3 -m venv target/s3tests
  target/s3tests/bin/pip install -q --disable-pip-version-check -r scripts/s3tests-requirements.txt
fi
cargo build --release --locked -q -p headroom --bin headroom
bin=$PWD/target/s3tests/bin
headroom=$PWD/target/release/headroom
suite=$PWD/vendor/ceph-s3-tests
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

markers='not (fails_on_aws or bucket_logging or bucket_logging_cleanup or fails_without_logging_rollover or lifecycle or lifecycle_expiration or lifecycle_transition or bucket_policy or tagging or encryption or sse_s3 or bucket_encryption or cloud_transition or cloud_restore or object_ownership or iam_user or iam_account or delete_marker or target_by_bucket or checksum)'

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }

# Starts a moto_server and sets moto_port (not in a subshell: its pid must
# reach pids, for the clean-up).
start_moto() {
  moto_port=$(free_port)
  "$bin/moto_server" -H 127.0.0.1 -p "$moto_port" > "$work/moto-$moto_port.log" 2>&1 &
  pids+=($!)
  wait_port "$moto_port"
}

# The three users the suite signs as; through the proxy, the key file's
# client credentials.
users=(main:s3testsmainaccesskey:s3testsmainsecretkey0000000000000000000000
       alt:s3testsaltaccesskey0:s3testsaltsecretkey00000000000000000000000
       tenant:s3teststenantaccess0:s3teststenantsecretkey00000000000000000000)
conf() { # PORT FILE
  {
    printf '[DEFAULT]\nhost = 127.0.0.1\nport = %s\nis_secure = False\nssl_verify = False\n\n[fixtures]\nbucket prefix = hr-{random}-\n\n' "$1"
    for u in "${users[@]}"; do
      local user key secret
      IFS=: read -r user key secret <<< "$u"
      printf '[s3 %s]\ndisplay_name = %s\nuser_id = %s\nemail = %s@example.com\napi_name = default\ntenant = %s\naccess_key = %s\nsecret_key = %s\n\n' \
        "$user" "$user" "$user" "$user" "$user" "$key" "$secret"
    done
    IFS=: read -r _ key secret <<< "${users[0]}"
    for s in "iam" "iam root" "iam alt root"; do
      printf '[%s]\ndisplay_name = iam\nuser_id = RGW11111111111111111\nemail = iam@example.com\naccess_key = %s\nsecret_key = %s\n\n' "$s" "$key" "$secret"
    done
  } > "$2"
}

# Empties and deletes the suite's buckets at PORT by plain listings (not
# versions, whose paging moto gets wrong), so that a rerun starts clean.
empty_buckets() {
  IFS=: read -r _ key secret <<< "${users[0]}"
  "$bin/python" - "http://127.0.0.1:$1" "$key" "$secret" <<'PY'
import sys, boto3
endpoint, key, secret = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="us-east-1")
for b in s3.list_buckets()["Buckets"]:
    if not b["Name"].startswith("hr-"):
        continue
    try:
        # Each round lists from the start (no markers), until nothing is left.
        while True:
            v = s3.list_object_versions(Bucket=b["Name"])
            keys = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                    for o in v.get("Versions", []) + v.get("DeleteMarkers", [])]
            keys += [{"Key": o["Key"]} for o in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", [])]
            for u in s3.list_multipart_uploads(Bucket=b["Name"]).get("Uploads", []):
                s3.abort_multipart_upload(Bucket=b["Name"], Key=u["Key"], UploadId=u["UploadId"])
            if not keys:
                break
            s3.delete_objects(Bucket=b["Name"], Delete={"Objects": keys[:1000], "Quiet": True})
        s3.delete_bucket(Bucket=b["Name"])
    except Exception as e:
        print(f"could not empty {b['Name']}: {e}", file=sys.stderr)
PY
}

run_suite() { # NAME PORT
  local name=$1 port=$2
  conf "$port" "$work/$name.conf"
  (cd "$suite" && S3TEST_CONF="$work/$name.conf" "$bin/pytest" -p no:cacheprovider -q -rA --timeout 60 \
     -m "$markers" s3tests/functional/test_s3.py s3tests/functional/test_headers.py "${@:3}" > "$work/$name.out" 2>&1) || true
  # Tests that erred (in set-up, mostly) run again on their own.
  grep -E '^ERROR s3tests/.*::' "$work/$name.out" | awk '{print $2}' | sort -u > "$work/$name.errors" || true
  : > "$work/$name.rerun"
  # Each on its own, in clean buckets: one that writes many keys would
  # otherwise leave the next one the same trouble.
  while read -r t; do
    empty_buckets "$port"
    (cd "$suite" && S3TEST_CONF="$work/$name.conf" "$bin/pytest" -p no:cacheprovider -q -rA --timeout 60 \
       "$t" >> "$work/$name.rerun" 2>&1) || true
  done < "$work/$name.errors"
  # A test passed if its body passed in either run (a teardown that cannot
  # empty a bucket is moto's paging, above).
  grep -hE '^(PASSED|FAILED|ERROR) s3tests/.*::' "$work/$name.out" | awk '{print $2}' | sort -u > "$work/$name.ran"
  grep -hE '^PASSED s3tests' "$work/$name.out" "$work/$name.rerun" | awk '{print $2}' | sed 's/.*:://' | sort -u > "$work/$name.passed"
  local total passed
  total=$(wc -l < "$work/$name.ran")
  passed=$(wc -l < "$work/$name.passed")
  printf '%-8s %4d of %4d passed (%s %%), %d that erred run again\n' "$name" "$passed" "$total" \
    "$(awk -v p="$passed" -v t="$total" 'BEGIN {printf "%.1f", t ? 100 * p / t : 0}')" "$(wc -l < "$work/$name.errors")"
}

step() { printf '\n==> %s\n' "$*"; }

step "directly against moto_server"
start_moto
run_suite direct "$moto_port" "$@"

step "through headroom proxy to moto_server"
start_moto
up=$moto_port
"$headroom" proxy keygen --access-key s3testsmainaccesskey --secret-key s3testsmainsecretkey0000000000000000000000 > "$work/keys.json"
python3 - "$work/keys.json" "${users[@]}" <<'PY'
import json, sys
path, users = sys.argv[1], sys.argv[2:]
keys = json.load(open(path))
keys["credentials"] = [{"access_key": u.split(":")[1], "secret_key": u.split(":")[2]} for u in users]
json.dump(keys, open(path, "w"))
PY
chmod 600 "$work/keys.json"
px=$(free_port)
env AWS_ACCESS_KEY_ID=moto-upstream AWS_SECRET_ACCESS_KEY=moto-upstream-secret AWS_REGION=us-east-1 RUST_LOG=warn \
  "$headroom" --memory 256MiB proxy --listen "127.0.0.1:$px" --upstream "http://127.0.0.1:$up" \
  --keys "$work/keys.json" > "$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$px"
run_suite proxy "$px" "$@"

step "passed directly, not through the proxy"
comm -23 "$work/direct.passed" "$work/proxy.passed" > "$work/lost"
unexplained=0
while read -r t; do
  reason=""
  while IFS=$'\t' read -r pattern why; do
    [[ -z "$pattern" || "$pattern" == \#* ]] && continue
    # shellcheck disable=SC2053
    if [[ "$t" == $pattern ]]; then reason=$why; break; fi
  done < scripts/s3-tests-differences.txt
  if [ -n "$reason" ]; then
    printf '  %s: %s\n' "$t" "$reason"
  else
    printf '  %s: NOT EXPLAINED\n' "$t"
    unexplained=$((unexplained + 1))
  fi
done < "$work/lost"
printf '%d passed directly and not through the proxy; %d of them not explained\n' "$(wc -l < "$work/lost")" "$unexplained"
printf '%d passed through the proxy and not directly\n' "$(comm -13 "$work/direct.passed" "$work/proxy.passed" | wc -l)"
if [ -n "${KEEP:-}" ]; then cp "$work"/*.out "$work"/*.rerun "$work"/*.passed "$KEEP"/; fi
[ "$unexplained" = 0 ]
