#!/usr/bin/env bash
# The long benchmarks in a release build: peak memory of the daemon over a download + install,
# /progress latency under load, callback latency, download speed against curl (tests/bench.rs);
# installing 5000 small files against unzip + sync, flush calls, 10 ms flushes, the time the
# printer's processes are down (tests/bench_install.rs); a delta download of a signed package
# of 400 files of which 20 change against its full download over a 10 MiB/s link: bytes on the
# wire, requests, wall time, CPU, peak memory (tests/bench.rs bench_delta_download). Prints every
# figure, then a summary of the `bench:` lines.
#
# Usage: scripts/bench.sh [TEST-NAME-FILTER]
#   BENCH_PACKAGE_MB=500 (default here)  package size in MiB
#   BENCH_DELTA_MB=200 (default here)    size of the delta benchmark's package in MiB
#   BENCH_CONNS=2 BENCH_REPEAT=3 BENCH_LOAD_CPU=<last cpu>|none   see tests/bench.rs
#   BENCH_LINK_RATES=1,10 BENCH_LINK_SECS=10 (default here)        see tests/bench.rs
#   BENCH_FILES=5000 BENCH_FLUSH_FILES=2000 (defaults here)         see tests/bench_install.rs
# Needs nginx (Debian package nginx-light), curl, unzip and strace; scripts/test.sh installs
# them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# nginx lives in /usr/sbin, which is not on every user's PATH.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) export PATH="$PATH:/usr/sbin" ;;
esac

if ! command -v nginx >/dev/null 2>&1; then
    echo "bench.sh: nginx is missing: run scripts/test.sh (it installs it) or" >&2
    echo "          sudo apt-get install --no-install-recommends nginx-light" >&2
    exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
    echo "bench.sh: curl is missing, the download is timed without the curl comparison" >&2
    echo "          (sudo apt-get install curl, or run scripts/test.sh)" >&2
fi

export BENCH_PACKAGE_MB="${BENCH_PACKAGE_MB:-500}"
export BENCH_LINK_SECS="${BENCH_LINK_SECS:-10}"
export BENCH_DELTA_MB="${BENCH_DELTA_MB:-200}"
export BENCH_FILES="${BENCH_FILES:-5000}"
export BENCH_FLUSH_FILES="${BENCH_FLUSH_FILES:-2000}"

# Each benchmark keeps up to about three copies of the package on disk at once (served,
# downloaded, installed).
tmp="${TMPDIR:-/tmp}"
need_kib=$(( BENCH_PACKAGE_MB * 1024 * 3 + 200 * 1024 ))
free_kib=$(df -Pk "$tmp" | awk 'NR == 2 { print $4 }')
if [ "$free_kib" -lt "$need_kib" ]; then
    echo "bench.sh: $tmp has $(( free_kib / 1024 )) MiB free; ${BENCH_PACKAGE_MB} MiB packages need about $(( need_kib / 1024 )) MiB" >&2
    exit 1
fi

echo "bench.sh: BENCH_PACKAGE_MB=$BENCH_PACKAGE_MB on $(nproc) CPUs ($(uname -srm))"
echo "bench.sh: cargo test --release --test bench --test bench_install -- --nocapture --test-threads=1 $*"
log=$(mktemp "${tmp}/tope-bench-XXXXXX.log")
trap 'rm -f "$log"' EXIT

status=0
cargo test --release --test bench --test bench_install -- --nocapture --test-threads=1 "$@" 2>&1 | tee "$log" ||
    status=$?

echo
echo "bench.sh: summary"
grep -E '^(test .* \.\.\. )?bench:' "$log" | sed -E 's/^test .* \.\.\. //' || true
if [ "$status" -ne 0 ]; then
    echo "bench.sh: a benchmark failed (exit $status)" >&2
fi
exit "$status"
