# Servers the tests need, from Debian's packages (sourced by scripts/test.sh).
# The tests start their own instances on free loopback ports, so here they
# are only installed.

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# redis-server for `headroom ingest` (tests/ingest.rs).
need redis-server redis-server
redis-server --version
