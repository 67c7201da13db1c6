#!/usr/bin/env bash
# Makes goosebit (a hawkBit DDI fleet server in Python) available to the fleet tests: installs
# the pinned version with the pinned set of its dependencies (scripts/goosebit-requirements.txt)
# into a virtual environment of its own under the user's cache directory, then prints the
# environment's path on stdout (nothing else goes to stdout).
#
# Idempotent: an environment whose stamp matches the requirements file and whose goosebit
# answers with the pinned version is used as it is (well under a second). A missing, broken or
# half-installed one (the stamp is written last) is removed and installed again. Concurrent runs
# wait for each other (flock). A failing pip ends the script non-zero with pip's output.
#
# Usage: scripts/goosebit.sh
# Environment: GOOSEBIT_PYTHON  the interpreter to build the environment with (default: the
#                               first python3.11 or python3 on PATH that is 3.11 or newer)
#              XDG_CACHE_HOME   the cache root (default ~/.cache)
set -euo pipefail

GOOSEBIT_VERSION=0.2.12

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requirements="$here/goosebit-requirements.txt"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tope-updater"
venv="$cache/goosebit-$GOOSEBIT_VERSION"
stamp="$venv/.tope-updater-installed"

log() { echo "goosebit.sh: $*" >&2; }

[ -f "$requirements" ] || {
    log "missing $requirements"
    exit 1
}
grep -qx "goosebit==$GOOSEBIT_VERSION" "$requirements" || {
    log "$requirements does not pin goosebit==$GOOSEBIT_VERSION"
    exit 1
}
want_stamp="goosebit==$GOOSEBIT_VERSION $(sha256sum "$requirements" | cut -d' ' -f1)"

# The environment is usable: stamped for this requirements file, and its goosebit, aerich and
# uvicorn are importable at the pinned version (package metadata only: no server code runs).
usable() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && [ -x "$venv/bin/python" ] &&
        "$venv/bin/python" - "$GOOSEBIT_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, importlib.util as u, sys
assert m.version("goosebit") == sys.argv[1]
for mod in ("goosebit", "aerich", "uvicorn"):
    assert u.find_spec(mod) is not None, mod
EOF
}

if usable; then
    echo "$venv"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/goosebit-$GOOSEBIT_VERSION.lock"
flock 9
# Another run may have installed it while this one waited for the lock.
if usable; then
    echo "$venv"
    exit 0
fi

pick_python() {
    local candidates=()
    if [ -n "${GOOSEBIT_PYTHON:-}" ]; then
        candidates=("$GOOSEBIT_PYTHON")
    else
        candidates=(python3.11 python3)
    fi
    local py
    for py in "${candidates[@]}"; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    log "no Python 3.11 or newer with the venv module found (tried: ${candidates[*]});" \
        "install python3 and python3-venv, or set GOOSEBIT_PYTHON"
    return 1
}
python=$(pick_python)

if [ -e "$venv" ]; then
    log "removing the unusable environment $venv"
    rm -rf "$venv"
fi
log "installing goosebit $GOOSEBIT_VERSION into $venv (with $("$python" --version 2>&1))"
start=$SECONDS
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
# --no-deps: exactly the frozen set, nothing resolved afresh; `pip check` then proves the set
# is complete and consistent.
if ! "${pip[@]}" install --quiet --no-deps -r "$requirements" >&2; then
    log "pip install failed (see above); the half-made environment is removed"
    rm -rf "$venv"
    exit 1
fi
if ! "${pip[@]}" check >&2; then
    log "pip check failed: $requirements is not a complete, consistent set"
    rm -rf "$venv"
    exit 1
fi
echo "$want_stamp" >"$stamp"
if ! usable; then
    log "goosebit $GOOSEBIT_VERSION installed but not importable from $venv"
    exit 1
fi
log "installed in $((SECONDS - start)) s"
echo "$venv"
