#!/usr/bin/env bash
# Fuzzes every target of fuzz/ (cargo-fuzz, libFuzzer with the address sanitizer) for
# FUZZ_SECONDS seconds each (default 60), FUZZ_JOBS targets at a time (default: one per core),
# starting from the checked-in seeds in fuzz/corpus/<target>/. The seeds are only read: what a
# run adds to the corpus goes to a scratch directory that is removed at the end.
# Exits 1 if any target crashed, hung (10 s for one input) or went over its memory limits, and
# says where the input that did it was left (fuzz/artifacts/<target>/) and how to replay it.
# Installs cargo-fuzz (`cargo install --locked`) when it is missing.
# Usage: scripts/fuzz.sh [TARGET...]      (from anywhere; default: every target)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-$(nproc)}
cargo_fuzz_version=0.13.2

# cargo-fuzz builds with flags that only a nightly compiler accepts (-Zsanitizer=address and the
# sanitizer-coverage options). The only toolchain on these machines is stable, and
# RUSTC_BOOTSTRAP=1 lets it accept them. Set here for the fuzz build alone, in its own target
# directory (fuzz/target): nothing that ships is built with it.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz $cargo_fuzz_version"
    cargo install --locked --version "$cargo_fuzz_version" cargo-fuzz
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz.sh: no fuzz target found in fuzz/" >&2
    exit 1
fi

# libFuzzer options. Every target: an input that takes 10 s is a hang; a single allocation
# above 64 MiB (from inputs of a few KiB) is a finding; the resident memory limit is set
# explicitly. The ZIP reader's is tighter: it must stay flat whatever an archive claims, so a
# rise past what the sanitizer itself holds (its quarantine keeps up to 256 MiB of freed
# memory) is a finding.
options_for() {
    local common=(-timeout=10 -malloc_limit_mb=64 -print_final_stats=1)
    case $1 in
        zip_reader) echo "${common[@]}" -rss_limit_mb=512 ;;
        *) echo "${common[@]}" -rss_limit_mb=2048 ;;
    esac
}

# Scratch space: the growing corpus, the logs, and the targets' own temporary files (per-input
# directories for the readers that take a path) in tmpfs when there is one: no disk syncs.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    work=$(mktemp -d /dev/shm/tope-fuzz.XXXXXX)
else
    work=$(mktemp -d)
fi
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tmp"

start=$SECONDS
echo "fuzz.sh: building ${#targets[@]} targets (cargo fuzz build, address sanitizer)"
if [ $# -gt 0 ]; then
    for t in "${targets[@]}"; do
        cargo fuzz build "$t"
    done
else
    cargo fuzz build
fi
echo "fuzz.sh: build took $((SECONDS - start)) s"

# run_one TARGET: fuzz it; its exit code goes to $work/TARGET.rc, its output to TARGET.log.
run_one() {
    local t=$1 rc=0
    local seeds=fuzz/corpus/$t
    mkdir -p "$work/corpus/$t" "fuzz/artifacts/$t" "$seeds"
    # shellcheck disable=SC2046 # the options are words
    TMPDIR=$work/tmp cargo fuzz run "$t" "$work/corpus/$t" "$seeds" -- \
        -max_total_time="$seconds" $(options_for "$t") >"$work/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$work/$t.rc"
}

fuzz_start=$SECONDS
echo "fuzz.sh: ${#targets[@]} targets, $seconds s each, $jobs at a time"
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    echo "fuzz.sh: fuzzing $t"
    run_one "$t" &
done
wait

failed=0
for t in "${targets[@]}"; do
    rc=$(cat "$work/$t.rc" 2>/dev/null || echo missing)
    final=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" | tail -n 1 || true)
    peak=$(grep -oE 'stat::peak_rss_mb:[[:space:]]*[0-9]+' "$work/$t.log" | grep -oE '[0-9]+$' || true)
    if [ "$rc" = 0 ]; then
        echo "fuzz.sh: $t: ok: ${final:-no final line} peak_rss=${peak:-?}Mb"
        continue
    fi
    failed=1
    echo "fuzz.sh: $t: FAILED (exit $rc); the end of its output:" >&2
    tail -n 60 "$work/$t.log" >&2
    # libFuzzer names the file it wrote the input to.
    found=$(grep -oE 'Test unit written to [^[:space:]]+' "$work/$t.log" | tail -n 1 || true)
    found=${found#Test unit written to }
    if [ -n "$found" ]; then
        echo "fuzz.sh: $t: the input is $found; replay it with:" >&2
        echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run $t $found" >&2
    fi
done
echo "fuzz.sh: fuzzing took $((SECONDS - fuzz_start)) s, $((SECONDS - start)) s with the build"
if [ "$failed" -ne 0 ]; then
    echo "fuzz.sh: a target failed" >&2
    exit 1
fi
echo "fuzz.sh: every target ran $seconds s without a finding"
