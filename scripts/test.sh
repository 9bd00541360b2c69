#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs and starts what the tests need, then runs lints and every test.
# .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" \
    || rustup component add "$component"
done

step "services"
# The governor and CLI tests need no servers. Jobs that talk to S3, Redis or
# PostgreSQL add their set-up to scripts/services.sh, sourced here.
if [ -f scripts/services.sh ]; then
  # shellcheck source=/dev/null
  source scripts/services.sh
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  # One process per test: counting-allocator measurements stay isolated.
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --all-targets --no-fail-fast
fi

step "doc tests"
cargo test --workspace --locked --doc

step "cargo doc, warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --locked --no-deps

step "the governor packages for crates.io"
cargo package -p headroom-governor --locked --allow-dirty --quiet

step "all green"
