# Servers the tests need, from Debian's packages (sourced by scripts/test.sh).
# The tests start their own instances on free loopback ports, so here they
# are only installed.

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# redis-server for `headroom ingest` (tests/ingest.rs).
need redis-server redis-server
redis-server --version

# PostgreSQL for `headroom serve` (tests/serve.rs runs its API suite on
# SQLite and on PostgreSQL): Debian's cluster, started on loopback, with a
# role the tests use to create a database each.
start_postgres
psql "$HEADROOM_TEST_POSTGRES" -tAc 'SELECT version()'

# Debian's Chromium and playwright-core (from the npm registry, pinned by
# package-lock.json; it downloads no browser) for the dashboard test
# (tests/dashboard.rs).
need chromium chromium
need chromedriver chromium-driver
npm ci --prefix crates/headroom/tests/browser --no-audit --no-fund --loglevel=error

# The reference AT Protocol PDS (@atproto/pds) and the PLC directory it
# registers accounts with (@did-plc/server), from the npm registry, pinned
# by package-lock.json, run on the machine's Node.js: a real firehose for
# tests/ingest_pds.rs. (Node 20 runs it; the `node@22` package would too,
# but its better-sqlite3 must then be compiled against Node 22's headers,
# which only nodejs.org serves.)
npm ci --prefix crates/headroom/tests/pds --no-audit --no-fund --loglevel=error
node --version

# Azurite, Microsoft's Azure Storage emulator, from the npm registry, pinned
# by package-lock.json (3.35.0: the last release that runs on Node 20), for
# copies to and from az:// (tests/copy_clouds.rs).
npm ci --prefix crates/headroom/tests/azurite --no-audit --no-fund --loglevel=error

# S3 clients nobody on this project wrote, for the proxy's interoperability
# test (tests/proxy.rs): aws-cli and boto3 from PyPI in a virtualenv of the
# project's own, rclone from Debian's packages.
need rclone rclone
if [ ! -x target/pyclients/bin/aws ]; then
  python3 -m venv target/pyclients
  target/pyclients/bin/pip install -q --disable-pip-version-check awscli==1.45.11 boto3
fi
export HEADROOM_TEST_PYCLIENTS="$PWD/target/pyclients/bin"
"$HEADROOM_TEST_PYCLIENTS/aws" --version
rclone version | sed -n 1p

# moto_server (a second S3 server the proxy is tested against) and the
# Python dependencies of the Ceph s3-tests (vendor/ceph-s3-tests), pinned
# in scripts/s3tests-requirements.txt, in a virtualenv of their own.
if [ ! -x target/s3tests/bin/moto_server ] || [ ! -x target/s3tests/bin/pytest ]; then
  python3 -m venv target/s3tests
  target/s3tests/bin/pip install -q --disable-pip-version-check -r scripts/s3tests-requirements.txt
fi
export HEADROOM_TEST_S3TESTS="$PWD/target/s3tests/bin"
"$HEADROOM_TEST_S3TESTS/python" -c 'import moto, pytest, munch; print("moto", moto.__version__, "pytest", pytest.__version__)'

# The Kubernetes deployment (deploy/kubernetes) is rendered by kubectl's
# kustomize and checked against the Kubernetes schemas by
# kubernetes-validate (PyPI), offline, by tests/deploy.rs.
need kubectl kubernetes-client
if [ ! -x target/k8s/bin/kubernetes-validate ]; then
  python3 -m venv target/k8s
  target/k8s/bin/pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
export HEADROOM_TEST_K8S="$PWD/target/k8s/bin"
kubectl version --client 2>/dev/null | sed -n 1p
