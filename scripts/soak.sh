#!/usr/bin/env bash
# The long power-cut soak (tests/soak.rs): SIGKILLs the real daemon at random instants and at
# every persisted stage of installations and throttled downloads, and restarts it on torn
# state.json files, checking docs/API.md section 6 after every restart; then SIGKILLs both
# binaries of self-updates at random instants (docs/API.md 9.4, tests/self_update.rs).
# Usage: scripts/soak.sh [extra libtest args, e.g. a test name]
#   SOAK_ITERATIONS  iterations per loop (default 100 here, 3 under plain `cargo test`)
#   SOAK_SEED        replay a run (every loop prints its seed)
# Needs nginx (nginx-light); scripts/test.sh installs it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x /usr/sbin/nginx ]; then
    echo "soak.sh: /usr/sbin/nginx not found: the soak needs it to serve packages." >&2
    echo "soak.sh: run scripts/test.sh once (it installs nginx-light, strace, curl)," >&2
    echo "soak.sh: or: sudo apt-get install -y --no-install-recommends nginx-light" >&2
    exit 1
fi

export SOAK_ITERATIONS="${SOAK_ITERATIONS:-100}"
echo "soak.sh: SOAK_ITERATIONS=$SOAK_ITERATIONS${SOAK_SEED:+ SOAK_SEED=$SOAK_SEED}"
start=$(date +%s)
cargo test --release --test soak -- --nocapture --test-threads=1 "$@"
# docs/API.md 9.4: power cuts at random instants of a self-update (tests/self_update.rs).
if [ $# -eq 0 ]; then
    cargo test --release --test self_update soak_ -- --nocapture --test-threads=1
fi
echo "soak.sh: passed in $(( $(date +%s) - start )) s"
