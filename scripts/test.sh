#!/usr/bin/env bash
# The whole test suite: unit tests, store tests on SQLite and PostgreSQL, and the
# integration tests against a real Synapse. Installs what it needs (Synapse into a
# virtualenv under .synapse/, PostgreSQL from the system packages when none runs).
#
#   scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> Synapse (for the integration tests)"
bash scripts/synapse.sh install

echo "==> PostgreSQL (for the store tests)"
MOSAIC_TEST_POSTGRES_URL="$(bash scripts/postgres.sh ensure | tail -n 1)"
export MOSAIC_TEST_POSTGRES_URL
# Databases left by earlier runs of the store tests.
if command -v psql >/dev/null; then
    psql "$MOSAIC_TEST_POSTGRES_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'mosaic_store_%'" 2>/dev/null |
        while read -r db; do psql "$MOSAIC_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; done
fi

stop_synapse() {
    local dir=target/tmp/homeserver-tests/synapse
    if [[ -d $dir ]]; then bash scripts/synapse.sh stop --dir "$dir" >/dev/null 2>&1 || true; fi
}
trap stop_synapse EXIT

echo "==> cargo test"
log="$(mktemp)"
trap 'stop_synapse; rm -f "$log"' EXIT
# Library, binary and integration tests (the crate has no doc tests).
cargo test --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# One summary line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
