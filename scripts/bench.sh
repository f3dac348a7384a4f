#!/usr/bin/env bash
# Run every benchmark and print all their figures, then a summary of them.
#
#   scripts/bench.sh [--runs N]
#
# Benchmarks: ingest (SQLite, and PostgreSQL when scripts/postgres.sh can provide one),
# stream_latency, capacity (echoes/s and CPU per echo against a fake homeserver,
# mosaic-as on SQLite and PostgreSQL beside the mautrix-python reference), homeserver
# (e2e latency, a burst and resident memory through a real Synapse, mosaic-as beside the
# reference, with CPU per echo). With --runs N (default 1) each is run N times, so that
# medians can be taken over runs on a noisy machine. The summary ends with every ratio
# of mosaic-as to the reference.
#
# The full output is also written to <target>/bench/results-<UTC time>.txt. See
# docs/benchmarks.md for what each figure means.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
RUNS=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --runs needs a positive number" >&2; exit 2; }

cd "$REPO"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
mkdir -p "$TARGET/bench"
RESULTS="$TARGET/bench/results-$(date -u +%Y%m%dT%H%M%SZ).txt"

echo "Building the benchmarks (release profile)..." >&2
cargo bench --no-run --bench ingest --bench stream_latency --bench capacity --bench homeserver >&2

{
    echo "mosaic-as benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -sr)"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "load before: $(uptime)"
} | tee "$RESULTS"

status=0
for run in $(seq 1 "$RUNS"); do
    for bench in ingest stream_latency capacity homeserver; do
        echo | tee -a "$RESULTS"
        echo "== $bench (run $run of $RUNS)" | tee -a "$RESULTS"
        if ! cargo bench --quiet --bench "$bench" 2>&1 | tee -a "$RESULTS"; then
            echo "bench.sh: $bench failed" | tee -a "$RESULTS" >&2
            status=1
        fi
    done
done

echo "load after: $(uptime)" | tee -a "$RESULTS"

echo
echo "== Summary (every figure line, all runs; full output in $RESULTS)"
grep -E '^== |^load |p50|events/s|echoes/s|replies/s|per echo|^memory |^capacity memory|resident memory' "$RESULTS" || true
echo
echo "== Ratios of mosaic-as to the mautrix-python reference (all runs)"
grep -E 'ratio|vs one-way floor' "$RESULTS" || true
exit "$status"
