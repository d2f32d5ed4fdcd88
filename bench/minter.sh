#!/usr/bin/env bash
# Sign-ins per second through `sso.minter: builtin` (issue 7): new users and returning users,
# against a real PostgreSQL and Redis started by scripts/test-services (installed from Debian when
# missing). Prints a Markdown table and keeps it in bench/results/minter-<timestamp>.md.
#
#   bench/minter.sh [seconds per scenario, default 10] [sign-ins in flight, default 16]
#
# Measures the minter's whole work per sign-in (one PostgreSQL transaction with the advisory lock,
# look-ups and inserts or the login update; the Redis SETEX pair; the HS256 access token), in one
# process with PostgreSQL and Redis on the same machine. The browser-facing part of a sign-in (the
# identity provider's round trips, the cookies) is not in these figures: bench/run measures it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
concurrency="${2:-16}"
bash scripts/test-services start >/dev/null
# shellcheck disable=SC1091
. target/test-services.env
cargo build --release --example minter_bench >&2
mkdir -p bench/results
out="bench/results/minter-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "# builtin minter sign-ins per second ($(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
  echo
  target/release/examples/minter_bench "$DIFY_TEST_PG_URL" "$DIFY_TEST_REDIS_URL" "$seconds" "$concurrency"
} | tee "$out"
echo "written: $out" >&2
