#!/usr/bin/env bash
# Runs the fuzz targets one after another on stable Rust (`-s none`: no sanitizer). New
# corpus entries go to fuzz/corpus/<target>/ (not committed); the committed seeds in
# fuzz/seeds/<target>/ are read too. A crash stops the run with the input under
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ once fixed, and
# `cargo test` replays it for ever. Prints one summary line per target.
#
#   fuzz/run.sh [SECONDS] [TARGET...]   each target for SECONDS (default 20), exploring
#   fuzz/run.sh --smoke [TARGET...]     CI's smoke: a fixed number of executions per target
#                                       with libFuzzer's seed 1
#
# The smoke is fixed in executions, not seconds, so that it takes nearly the same path on
# every machine, loaded or not (coverage varies by a few percent between runs): a run of
# unchanged code here finds what CI finds (session 10: a
# 15-second smoke found a crash on CI's faster machine that two local runs of the same code
# did not reach). About 15 s per target on CI's machine. HUSKIES_FUZZ_SEED fixes the seed of
# a timed run too; unset, every timed run explores differently.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false
secs=20
if [ "${1:-}" = "--smoke" ]; then
    smoke=true
    shift
elif [ $# -gt 0 ]; then
    secs=$1
    shift
fi
# Executions per target in a smoke (each about 15 s on CI's machine in session 9's runs).
smoke_runs() {
    case "$1" in
        op_decode) echo 3000000 ;;
        bundle_decode | frame_decode) echo 1000000 ;;
        session) echo 1000 ;;
        ingest) echo 700 ;;
        merge_convergence) echo 400 ;;
        *) echo 1000 ;;
    esac
}
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
    if $smoke; then
        # Only the committed seeds, into a corpus of its own: the same start everywhere.
        corpus=$(mktemp -d)
        budget=(-runs="$(smoke_runs "$t")" -seed=1)
    else
        corpus="fuzz/corpus/$t"
        budget=(-max_total_time="$secs" -seed="${HUSKIES_FUZZ_SEED:-0}")
    fi
    log=$(mktemp)
    start=$SECONDS
    if ! cargo fuzz run -s none "$t" "$corpus" "fuzz/seeds/$t" -- \
        "${budget[@]}" -timeout=60 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        # The panic message first (the tail is mostly libFuzzer's stack), then the tail.
        grep -E -A3 "panicked at" "$log" | head -n 20 || true
        tail -n 40 "$log"
        rm -f "$log"
        if $smoke; then rm -rf "$corpus"; fi
        echo "fuzz: $t FAILED (input under fuzz/artifacts/$t/)"
        exit 1
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz: $t ok: ${execs:-?} runs in $((SECONDS - start))s; ${done_line}"
    rm -f "$log"
    if $smoke; then rm -rf "$corpus"; fi
done
