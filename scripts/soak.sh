#!/usr/bin/env bash
# Runs the zero-loss soak (tests/soak.rs, on SQLite and on PostgreSQL) several times and
# sums up: how many runs passed, what was lost or doubled, and the slowest run.
#
#   scripts/soak.sh [--runs N] [--messages M]
#
# --runs N      soak runs (default 5); each run is both soaks, one after the other
# --messages M  messages per person per soak (default 8; 300 gives 1,800 messages and
#               9,000 deliveries per soak)
# Sets up Synapse and PostgreSQL as scripts/test.sh does. The output of each run is kept
# in target/soak/run-<n>.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=5
messages=8
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $runs =~ ^[0-9]+$ && $runs -ge 1 ]] || { echo "soak.sh: --runs wants a positive number" >&2; exit 2; }
[[ $messages =~ ^[0-9]+$ && $messages -ge 3 ]] || { echo "soak.sh: --messages wants a number of at least 3" >&2; exit 2; }

bash scripts/synapse.sh install >/dev/null
MOSAIC_TEST_POSTGRES_URL="$(bash scripts/postgres.sh ensure | tail -n 1)"
export MOSAIC_TEST_POSTGRES_URL MOSAIC_SOAK_MESSAGES=$messages
cargo test --test soak --no-run >/dev/null 2>&1 || cargo test --test soak --no-run

mkdir -p target/soak
passed=0 lost=0 doubled=0 slowest=0 slowest_run=0
for ((run = 1; run <= runs; run++)); do
    log=target/soak/run-$run.log
    started=$(date +%s)
    if cargo test --test soak -- --nocapture >"$log" 2>&1; then
        passed=$((passed + 1))
        result=passed
    else
        result=FAILED
    fi
    took=$(($(date +%s) - started))
    if ((took > slowest)); then slowest=$took slowest_run=$run; fi
    # "soak: … N lost, M duplicated, …" once per backend.
    run_lost=$(grep -o '[0-9]* lost' "$log" | awk '{s += $1} END {print s + 0}')
    run_doubled=$(grep -o '[0-9]* duplicated' "$log" | awk '{s += $1} END {print s + 0}')
    lost=$((lost + run_lost)) doubled=$((doubled + run_doubled))
    echo "run $run: $result in ${took} s, lost $run_lost, duplicated $run_doubled ($log)"
    grep '^soak:' "$log" | sed 's/^/    /' || true
done
echo "$runs runs: $passed passed, lost $lost, duplicated $doubled; slowest run $slowest_run took ${slowest} s"
((passed == runs))
