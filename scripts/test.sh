#!/usr/bin/env bash
# The project's test command: installs the tools the integration tests run against
# (nginx, strace, curl, ...) when they are missing, then runs format check, clippy and all
# tests, then the shipping checks: the systemd unit, the third-party notices, the ARM builds
# under qemu-user and the Debian package in a scratch root (each timed).
# Usage: scripts/test.sh        (from anywhere; runs in the repository root)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# nginx lives in /usr/sbin, which is not on every user's PATH.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) export PATH="$PATH:/usr/sbin" ;;
esac

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "test.sh: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

apt_updated=0
# apt_install DEBIAN-PACKAGE
apt_install() {
    local package=$1
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: apt-get is not available; install '$package'" >&2
        return 1
    fi
    echo "test.sh: installing $package"
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$package"
}

# ensure_tool COMMAND DEBIAN-PACKAGE
ensure_tool() {
    local tool=$1 package=$2
    if command -v "$tool" >/dev/null 2>&1; then
        return 0
    fi
    echo "test.sh: '$tool' is missing"
    apt_install "$package"
    command -v "$tool" >/dev/null 2>&1 || {
        echo "test.sh: '$tool' still missing after installing $package" >&2
        return 1
    }
}

ensure_tool nginx nginx-light
ensure_tool strace strace
ensure_tool curl curl
ensure_tool unzip unzip
# The man page check, the network-namespace watchdog test, the unit checks.
ensure_tool groff groff-base
ensure_tool ip iproute2
ensure_tool nsenter util-linux
ensure_tool systemd-analyze systemd
# The SWU envelope's tests (docs/API.md 9.3): SWUpdate itself reads what `swu` writes (its
# Debian build only takes signed descriptions: openssl signs them), GNU cpio lists and packs.
ensure_tool swupdate swupdate
ensure_tool openssl openssl
ensure_tool cpio cpio
# The USB stick example's test: an ext4 image on a loop device; `install` on a terminal.
ensure_tool mkfs.ext4 e2fsprogs
ensure_tool losetup mount
ensure_tool script bsdutils
# The fleet tests (docs/API.md 9.1) run a real goosebit: a SWU made with GNU cpio, goosebit
# installed once into a cached virtual environment (scripts/goosebit.sh says why it fails).
ensure_tool python3 python3
# Debian's python3 comes without venv and ensurepip: they are python3-venv.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -c 'import venv, ensurepip' || {
        echo "test.sh: python3's venv module is still missing after installing python3-venv" >&2
        exit 1
    }
fi
scripts/goosebit.sh >/dev/null

# Every check is timed; the times are printed at the end (the budget is 90 minutes on a fresh
# 2-core machine; the test suite is built first, so that its run time stands on its own).
timings=()
step() { # NAME COMMAND...
    local name=$1 start=$SECONDS
    shift
    echo "test.sh: $name"
    "$@"
    timings+=("$name: $((SECONDS - start)) s")
}
step "cargo fmt --check" cargo fmt --check
step "cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets -- -D warnings
# The lean printer build (no demo) must keep compiling.
step "cargo check --no-default-features" cargo check --no-default-features
# docs/API.md 9.4: tests/upgrade_0_1_0_self.rs runs the real release 0.1.0, built once per
# machine into a cache (about 5.5 minutes on 2 cores the first time, then reused at once).
v010_bin() {
    TOPE_V010_BIN=$(scripts/make-v0.1.0-fixtures.sh --bin)
    export TOPE_V010_BIN
}
step "release 0.1.0 binary (scripts/make-v0.1.0-fixtures.sh --bin)" v010_bin
step "cargo test --all-targets --no-run (build)" cargo test --all-targets --no-fail-fast --no-run
# The test runs are bounded (about 4 times what they take): a test that hangs fails the run
# within the budget, named by the harness's "has been running for over 60 seconds" line,
# instead of running out the whole budget. `timeout` signals its whole process group, so the
# test binaries stop with cargo.
bounded() { # SECONDS COMMAND...
    local limit=$1 status=0
    shift
    timeout --kill-after=30 "$limit" "$@" || status=$?
    [ "$status" -ne 124 ] || echo "test.sh: FAIL: '$*' was still running after $limit s" >&2
    return "$status"
}
step "cargo test --all-targets --no-fail-fast (run)" \
    bounded 2400 cargo test --all-targets --no-fail-fast
# The download tests that need more than a minute by definition (the 60 s stall window).
step "cargo test --test download_long -- --ignored" \
    bounded 1200 cargo test --test download_long -- --ignored
step "scripts/fuzz.sh (every fuzz target for FUZZ_SECONDS, default 60)" scripts/fuzz.sh

# Shipping checks (about 15 minutes together on a fresh 2-core machine, most of it the two ARM
# release builds and the emulated unit tests).
step "systemd unit (verify, security)" scripts/systemd-check.sh target/debug/tope-updater
step "third-party notices (cargo about)" scripts/licenses.sh --check
step "ARM builds under qemu-user" scripts/arm.sh
step "Debian package in a scratch root" scripts/deb.sh
for t in "${timings[@]}"; do
    echo "test.sh: took $t"
done
echo "test.sh: all checks passed"
