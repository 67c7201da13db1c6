#!/usr/bin/env bash
# ARM builds, proven under emulation:
#   1. aarch64-unknown-linux-musl, static (64-bit ARM printers), printer build;
#   2. armv7-unknown-linux-gnueabihf for glibc 2.28 with cargo-zigbuild (32-bit ARM printers
#      with older images), printer build; the glibc symbol versions it needs are checked;
#   3. the library's unit tests for aarch64, run under qemu-user one at a time, each run bounded;
#   4. a smoke run of each release binary under qemu-user: a config in a temp dir, time to
#      READY=1 on a notify socket, GET /api/v1.0/progress answers, SIGTERM exits 0 (a run
#      that outlives SMOKE_LIMIT fails).
# Prints the stripped sizes (failing at 4.5 MB) and the start-up times. Installs what is
# missing (rustup targets, Debian's cross gcc and arm64 libc headers, qemu-user-static and
# armhf libc, ziglang from PyPI, cargo-zigbuild).
# Usage: scripts/arm.sh [--no-unit-tests]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

unit_tests=1
[ "${1:-}" = "--no-unit-tests" ] && unit_tests=0

say() { echo "arm.sh: $*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

AARCH64=aarch64-unknown-linux-musl
ARMV7=armv7-unknown-linux-gnueabihf
ARMV7_GLIBC=2.28

apt_updated=0
need_deb() { # COMMAND-OR-PATH PACKAGE
    if command -v "$1" >/dev/null 2>&1 || [ -e "$1" ]; then return 0; fi
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    say "installing $2"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

tools() {
    for t in $AARCH64 $ARMV7; do
        rustup target list --installed | grep -qx "$t" || rustup target add "$t"
    done
    need_deb aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
    # ring's C code includes <stdint.h>, which the cross gcc takes from the arm64 libc headers
    # (a recommendation of gcc-aarch64-linux-gnu, so not installed with it here).
    need_deb /usr/aarch64-linux-gnu/include/stdint.h libc6-dev-arm64-cross
    need_deb qemu-aarch64-static qemu-user-static
    need_deb /usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3 libc6-armhf-cross
    need_deb readelf binutils
    need_deb curl curl
    # cargo-zigbuild runs `python3 -m ziglang` when no zig is on PATH.
    if ! python3 -c "import ziglang" 2>/dev/null; then
        python3 -m pip install -q ziglang \
            || python3 -m pip install -q --break-system-packages ziglang
    fi
    command -v cargo-zigbuild >/dev/null 2>&1 || cargo install --locked cargo-zigbuild
}

# ring compiles C and assembly: Debian's aarch64 gcc does for musl too (with the arm64 libc
# headers for <stdint.h>; the code links no libc function from them).
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc

timed() { # LABEL COMMAND...
    local label=$1 s=$SECONDS
    shift
    "$@"
    say "$label took $((SECONDS - s)) s"
}

build_aarch64() { cargo build -q --release --no-default-features --target $AARCH64; }
build_armv7() {
    cargo zigbuild -q --release --no-default-features --target "$ARMV7.$ARMV7_GLIBC"
}
# The library's unit tests, built for aarch64 and run under qemu-user. qemu-user is weakest at
# emulating threads (a multi-threaded guest that forks can hang in the emulator, and many unit
# tests spawn processes), so the tests run one at a time, and a run is bounded: a run that
# hangs is killed after UNIT_TESTS_LIMIT seconds, names the test it hung in, and is run once
# more. A second hang fails, and so does any failing test.
UNIT_TESTS_LIMIT=${UNIT_TESTS_LIMIT:-600}
unit_tests_aarch64() {
    local build bin out status attempt
    build=$(mktemp /tmp/tope-arm-build.XXXXXX)
    if ! cargo test --lib --no-default-features --target $AARCH64 --no-run > "$build" 2>&1; then
        tail -n 40 "$build"; rm -f "$build"
        say "FAIL: the aarch64 unit tests did not build"; return 1
    fi
    bin=$(sed -n 's/^ *Executable unittests src\/lib.rs (\(.*\))$/\1/p' "$build")
    rm -f "$build"
    [ -n "$bin" ] || { say "FAIL: cargo named no aarch64 unit test binary"; return 1; }
    out=$(mktemp /tmp/tope-arm-unit.XXXXXX)
    for attempt in 1 2; do
        status=0
        timeout --kill-after=10 "$UNIT_TESTS_LIMIT" qemu-aarch64-static "$bin" --test-threads=1 \
            > "$out" 2>&1 || status=$?
        if [ "$status" -eq 0 ]; then
            grep '^test result:' "$out"
            rm -f "$out"
            [ "$attempt" -eq 1 ] || say "the second run passed: the hang above was in the emulator"
            return 0
        fi
        if [ "$status" -ne 124 ] && [ "$status" -ne 137 ]; then
            tail -n 40 "$out"; rm -f "$out"
            say "FAIL: the aarch64 unit tests failed (exit $status)"; return 1
        fi
        say "the aarch64 unit tests hung under qemu for $UNIT_TESTS_LIMIT s (run $attempt of 2)," \
            "in: $(tail -n 1 "$out")"
    done
    rm -f "$out"
    say "FAIL: the aarch64 unit tests hung twice under qemu"
    return 1
}

# The longest a smoke run may take, start to exit (it takes about a second).
SMOKE_LIMIT=180
# smoke NAME BINARY QEMU...: start the binary under qemu with NOTIFY_SOCKET, measure the time
# to READY=1, ask /progress, SIGTERM, expect exit 0.
smoke() {
    local name=$1 bin=$2; shift 2
    local dir port pid ready_ms status
    dir=$(mktemp -d /tmp/tope-arm-smoke.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$dir/config.toml" <<EOF
listen = "127.0.0.1:$port"
work_dir = "$dir/work"
device_api_url = "http://127.0.0.1:9"
allowed_roots = ["$dir/opt"]
EOF
    # The test's side of NOTIFY_SOCKET: prints the milliseconds from its start to READY=1.
    python3 - "$dir/notify.sock" > "$dir/ready_ms" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(120)
t0 = time.monotonic()
while True:
    msg = s.recv(4096).decode()
    if "READY=1" in msg.splitlines():
        print(int((time.monotonic() - t0) * 1000))
        break
PY
    local listener=$!
    while [ ! -S "$dir/notify.sock" ]; do sleep 0.05; done
    # Bounded: timeout passes the SIGTERM below on, and kills a daemon that never exits.
    NOTIFY_SOCKET="$dir/notify.sock" timeout --kill-after=10 "$SMOKE_LIMIT" \
        "$@" "$bin" serve --config "$dir/config.toml" > "$dir/out" 2>&1 &
    pid=$!
    if ! wait "$listener"; then
        cat "$dir/out"; kill "$pid" 2>/dev/null || true
        say "FAIL: $name never sent READY=1"; return 1
    fi
    ready_ms=$(cat "$dir/ready_ms")
    local body
    body=$(curl -fsS --max-time 10 "http://127.0.0.1:$port/api/v1.0/progress") || {
        cat "$dir/out"; kill "$pid"; say "FAIL: $name: /progress did not answer"; return 1; }
    case $body in
        *'"stage":"idle"'*) ;;
        *) kill "$pid"; say "FAIL: $name: unexpected /progress: $body"; return 1 ;;
    esac
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        cat "$dir/out"; say "FAIL: $name was still running $SMOKE_LIMIT s after its start"; return 1
    elif [ "$status" -ne 0 ]; then
        cat "$dir/out"; say "FAIL: $name exited $status after SIGTERM"; return 1
    fi
    say "$name: READY after ${ready_ms} ms under qemu, /progress answered idle, SIGTERM -> exit 0"
    rm -rf "$dir"
}

# The newest GLIBC_x.y an ELF binary requires.
max_glibc() {
    readelf -V --wide "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1
}

tools
timed "aarch64 release build" build_aarch64
timed "armv7 release build (zigbuild, glibc $ARMV7_GLIBC)" build_armv7
a64=target/$AARCH64/release/tope-updater
a32=target/$ARMV7/release/tope-updater

file "$a64" | grep -q "statically linked" || { file "$a64"; say "FAIL: $a64 is not static"; exit 1; }
need=$(max_glibc "$a32")
if [ "$(printf '%s\n%s\n' "$need" "$ARMV7_GLIBC" | sort -V | tail -n 1)" != "$ARMV7_GLIBC" ]; then
    say "FAIL: $a32 needs GLIBC_$need, more than $ARMV7_GLIBC"; exit 1
fi
say "armv7 binary needs at most GLIBC_$need"

if [ "$unit_tests" -eq 1 ]; then
    timed "aarch64 unit tests under qemu" unit_tests_aarch64
fi
smoke "aarch64 (static musl)" "$a64" qemu-aarch64-static
smoke "armv7 (glibc $ARMV7_GLIBC)" "$a32" qemu-arm-static -L /usr/arm-linux-gnueabihf

for b in "$a64" "$a32"; do
    say "size $(stat -c %s "$b") bytes ($(( $(stat -c %s "$b") / 1024 )) KiB, stripped): $b"
done
# The printer budget: under 4.5 MB stripped. It was 4 MB until the SWU envelope reader, the
# typed errors and the typed requests took the aarch64 build from 3.88 MB to 4.01 MB.
limit=4500000
for b in "$a64" "$a32"; do
    [ "$(stat -c %s "$b")" -lt "$limit" ] || { say "FAIL: $b is not under 4.5 MB"; exit 1; }
done
say "ARM builds proven"
