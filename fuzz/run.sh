#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for SECONDS (default 20), on stable Rust
# (`-s none`: no sanitizer). New corpus entries go to fuzz/corpus/<target>/ (not
# committed); the committed seeds in fuzz/seeds/<target>/ are read too. A crash stops the
# run with the input under fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/
# once fixed, and `cargo test` replays it for ever. Prints one summary line per target.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# HUSKIES_FUZZ_SEED fixes libFuzzer's seed (CI uses 1, so a smoke run of unchanged code
# takes the same path every time); unset, every run explores differently.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(op_decode bundle_decode frame_decode session ingest merge_convergence)
fi
cargo fuzz build -s none
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    # Structured targets need inputs long enough for a script of many ops: no slow ramp.
    extra=()
    case "$t" in session | ingest | merge_convergence) extra=(-max_len=4096 -len_control=0) ;; esac
    log=$(mktemp)
    if ! cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=60 -print_final_stats=1 -seed="${HUSKIES_FUZZ_SEED:-0}" "${extra[@]}" >"$log" 2>&1; then
        tail -n 60 "$log"
        rm -f "$log"
        echo "fuzz: $t FAILED (input under fuzz/artifacts/$t/)"
        exit 1
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz: $t ok: ${execs:-?} runs in ${secs}s; ${done_line}"
    rm -f "$log"
done
