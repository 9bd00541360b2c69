# Shared by the scripts (sourced): installing what they need.

# need COMMAND PACKAGE: installs PACKAGE from Debian's packages when
# COMMAND is missing.
need() {
  command -v "$1" >/dev/null 2>&1 && return
  echo "installing $2" >&2
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"
}

# proxy_stack BIN WORK MEMORY KEY SECRET: starts the test S3 server (rooted
# at WORK/up, exiting when the script does) and `headroom proxy --memory
# MEMORY` in front of it with the client credential KEY/SECRET. Sets
# upstream, proxy (their URLs), proxy_pid and up_env (the upstream's
# credentials); their pids are in WORK/up.pid and WORK/proxy.pid.
proxy_stack() {
  local bin=$1 work=$2 memory=$3 key=$4 secret=$5
  mkfifo "$work/up.in"
  "$bin/examples/s3_test_server" --root "$work/up" < "$work/up.in" > "$work/up.out" &
  echo $! > "$work/up.pid"
  exec 3> "$work/up.in"
  until [ -s "$work/up.out" ]; do sleep 0.1; done
  upstream=$(head -1 "$work/up.out")
  up_env=(AWS_ACCESS_KEY_ID=headroom-test-key AWS_SECRET_ACCESS_KEY=headroom-test-secret AWS_REGION=us-east-1)
  "$bin/headroom" proxy keygen --access-key "$key" --secret-key "$secret" > "$work/keys.json"
  chmod 600 "$work/keys.json"
  env "${up_env[@]}" RUST_LOG=warn "$bin/headroom" --memory "$memory" proxy \
    --listen 127.0.0.1:0 --upstream "$upstream" --keys "$work/keys.json" > "$work/proxy.out" &
  echo $! > "$work/proxy.pid"
  until [ -s "$work/proxy.out" ]; do sleep 0.1; done
  proxy=$(sed -n 's/^listening on //p' "$work/proxy.out")
  proxy_pid=$(cat "$work/proxy.pid")
}

# start_postgres: Debian's PostgreSQL cluster, installed if missing and
# started on loopback, with a role (headroom_test) that may create
# databases; exports HEADROOM_TEST_POSTGRES, its URL.
start_postgres() {
  need pg_ctlcluster postgresql
  cluster=$(pg_lsclusters --no-header | awk 'NR == 1 { print $1, $2 }')
  if [ -z "$cluster" ]; then
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    pg_createcluster "$version" main
    cluster="$version main"
  fi
  # shellcheck disable=SC2086
  if ! pg_lsclusters --no-header | awk '$4 == "online"' | grep -q .; then
    if [ "$(id -u)" = 0 ]; then pg_ctlcluster $cluster start; else sudo pg_ctlcluster $cluster start; fi
  fi
  port=$(pg_lsclusters --no-header | awk 'NR == 1 { print $3 }')
  as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
  as_postgres psql -p "$port" -v ON_ERROR_STOP=1 -qc \
    "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'headroom_test') THEN CREATE ROLE headroom_test LOGIN SUPERUSER PASSWORD 'headroom_test'; END IF; END \$\$;"
  export HEADROOM_TEST_POSTGRES="postgres://headroom_test:headroom_test@127.0.0.1:$port/postgres"
}

# small_files DIR N: N files of 1-64 KiB of random bytes in 50
# subdirectories of DIR, the same for the same N (seeded), for the copy
# benchmarks.
small_files() {
  python3 - "$1" "$2" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
for i in range(n):
    sub = os.path.join(d, f"{i % 50:02}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}.bin"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 64 * 1024)))
PY
}
