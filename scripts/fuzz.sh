#!/usr/bin/env bash
# Fuzzes the parsers that take outside input: the push API's transaction bodies, the
# ChannelMessage wire format, chat commands, and the markdown → HTML formatter.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60 s, every target)
#
# Installs cargo-fuzz when it is missing. cargo-fuzz needs nightly compiler flags; on a
# stable toolchain RUSTC_BOOTSTRAP=1 enables them. Crashes land in
# fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(push_transaction channel_message command_parse markdown)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
echo "==> building the fuzz targets"
cargo fuzz build -O

status=0
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    echo "==> $target for ${seconds}s"
    # The seeds are read, new inputs go to the (ignored) corpus directory.
    set +e
    cargo fuzz run -O "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"fuzz/$target.log" 2>&1
    code=$?
    set -e
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|SUMMARY)' "fuzz/$target.log" || true
    if [[ $code -ne 0 ]]; then
        echo "!! $target failed (exit $code): see fuzz/$target.log and fuzz/artifacts/$target/"
        status=1
    fi
    echo "   corpus: $(find "$corpus" -type f | wc -l) inputs"
done
exit "$status"
