#!/usr/bin/env bash
# Make tests/fixtures/v0.1.0/: what release 0.1.0 (commit f0f7fcb) leaves in its work dir when
# it is killed (SIGKILL, a pulled plug) in each phase of its install journal, made by the real
# 0.1.0 binary. tests/upgrade_0_1_0.rs recovers them with this release (docs/API.md 9.4).
#
# Slow (builds 0.1.0 in release mode the first time); CI does not run it: the fixtures are
# committed. Run as root from anywhere in the repository:
#     scripts/make-v0.1.0-fixtures.sh [PHASE...]   (default: prepared deploying committed)
#     scripts/make-v0.1.0-fixtures.sh --bin        only build (or reuse) the 0.1.0 binary and
#                                                  print its path (scripts/test.sh exports it
#                                                  as TOPE_V010_BIN for tests/upgrade_0_1_0_self.rs)
# Needs: cargo, git, curl, python3 (package server and ZIP), strace.
#
# The 0.1.0 build is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/tope-updater/v0.1.0 and reused.
# Each phase is reached by a condition, never by a sleep:
#   prepared   the old module process ignores SIGTERM and stop_timeout_s is 60: the daemon is
#              killed once the journal says "prepared" (it is waiting for the process to die);
#   deploying  a post command writes its pid and sleeps: every file is deployed and the journal
#              says "deploying" when the pid file appears; the daemon is killed then;
#   committed  the daemon runs under strace, which kills it (SIGKILL injected) when it enters
#              the unlink of the committed journal (the cleanup after the commit).
# Absolute paths of the scratch directory are replaced by @ROOT@, the module's process name
# (in contents and file names) by @APP@; tests substitute both.
set -euo pipefail

COMMIT=f0f7fcb6f653c6c1d9d66f9c5734ccc3f1357f07
APP=tlegacyapp
REPO=$(git rev-parse --show-toplevel)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tope-updater/v0.1.0
OUT=$REPO/tests/fixtures/v0.1.0
BIN=$CACHE/target/release/tope-updater

say() { printf '%s\n' "make-v0.1.0-fixtures: $*" >&2; }

# wait_for DESCRIPTION SECONDS COMMAND...: run COMMAND every 0.1 s until it succeeds.
wait_for() {
    local what=$1 limit=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            say "timed out after ${limit} s waiting for: $what"
            return 1
        fi
        sleep 0.1
    done
}

# --- the 0.1.0 binary --------------------------------------------------------------------
if ! git -C "$REPO" rev-parse -q --verify refs/tags/v0.1.0 >/dev/null; then
    git -C "$REPO" tag v0.1.0 "$COMMIT"
    say "tagged v0.1.0 on $COMMIT"
fi
if [[ ! -x $BIN ]]; then
    say "building 0.1.0 ($COMMIT) in $CACHE"
    rm -rf "$CACHE/src"
    mkdir -p "$CACHE/src"
    git -C "$REPO" archive "$COMMIT" | tar -x -C "$CACHE/src"
    # Its output goes to stderr: with --bin, stdout is the path alone.
    (cd "$CACHE/src" && CARGO_TARGET_DIR=$CACHE/target cargo build --release --locked) >&2
fi
if [[ ${1:-} == --bin ]]; then
    printf '%s\n' "$BIN"
    exit 0
fi

# --- one scratch printer per phase ---------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The package: module app (a directory: the process script, a changed file, a new file in a
# new directory) and module web (one file) whose post command holds when $S/hold exists.
make_package() {
    local s=$1 pkg=$2
    python3 - "$s" "$pkg" "$APP" <<'EOF'
import json, sys, zipfile
s, pkg, app = sys.argv[1:]
hold = f'if [ -e {s}/hold ]; then echo $$ > {s}/post.pid; exec sleep 600; fi'
manifest = {"version": "1.0.1", "modules": [
    {"name": "app", "src": "app", "dst": f"{s}/opt/app", "process_name": app,
     "restart_order": 1, "start_cmd": [f"{s}/opt/app/{app}"]},
    {"name": "web", "src": "web/index.html", "dst": f"{s}/opt/web/index.html",
     "restart_order": 2, "post_cmds": [["/bin/sh", "-c", hold]]},
]}
files = [
    ("manifest.json", json.dumps(manifest, indent=1).encode(), 0o644),
    (f"app/{app}", b"#!/bin/sh\n# app 1.0.1\nwhile :; do sleep 1; done\n", 0o755),
    ("app/conf.txt", b"conf of 1.0.1\n", 0o644),
    ("app/lib/new.txt", b"new in 1.0.1\n", 0o644),
    ("web/index.html", b"<p>1.0.1</p>\n", 0o644),
]
with zipfile.ZipFile(pkg, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data, mode in files:
        info = zipfile.ZipInfo(name, date_time=(2026, 11, 26, 0, 0, 0))
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)
EOF
}

# The printer before the installation (version 1.0.0).
make_old() {
    local opt=$1
    mkdir -p "$opt/app" "$opt/web"
    printf '#!/bin/sh\n# app 1.0.0: ignores SIGTERM\ntrap "" TERM\nwhile :; do sleep 1; done\n' >"$opt/app/$APP"
    chmod 0755 "$opt/app/$APP"
    printf 'conf of 1.0.0\n' >"$opt/app/conf.txt"
    printf 'kept by 1.0.0\n' >"$opt/app/keep.txt"
    printf '<p>1.0.0</p>\n' >"$opt/web/index.html"
    chmod 0644 "$opt/app/conf.txt" "$opt/app/keep.txt" "$opt/web/index.html"
}

journal_phase() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["phase"])' "$1" 2>/dev/null
}

api() { curl -fsS --max-time 5 "http://127.0.0.1:$PORT/api/v1.0/$1" "${@:2}"; }

stage_is() { api progress | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["data"]["stage"]!=sys.argv[1])' "$1"; }

# Copy a tree, replacing the scratch path by @ROOT@ and the process name by @APP@.
save_tree() {
    local from=$1 to=$2 s=$3
    python3 - "$from" "$to" "$s" "$APP" <<'EOF'
import os, shutil, stat, sys
src, dst, s, app = sys.argv[1:]
for dirpath, dirnames, filenames in os.walk(src):
    rel = os.path.relpath(dirpath, src)
    out = os.path.normpath(os.path.join(dst, rel.replace(app, "@APP@")))
    os.makedirs(out, exist_ok=True)
    for f in filenames:
        p = os.path.join(dirpath, f)
        data = open(p, "rb").read().replace(s.encode(), b"@ROOT@").replace(app.encode(), b"@APP@")
        q = os.path.join(out, f.replace(app, "@APP@"))
        open(q, "wb").write(data)
        os.chmod(q, stat.S_IMODE(os.lstat(p).st_mode))
EOF
}

# Kill the module processes of scratch printer $1 (found by pid: those whose command line
# names a file of that scratch directory), with their process group.
kill_app() {
    local s=$1 pid
    for pid in $(pgrep -x "$APP" || true); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$s/"; then
            kill -KILL -- "-$(ps -o pgid= -p "$pid" | tr -d ' ')" 2>/dev/null || kill -KILL "$pid" || true
        fi
    done
}

run_phase() {
    local phase=$1
    local S
    S=$(mktemp -d /tmp/tope-v010-fixture.XXXXXX)
    PORT=$(free_port)
    local srv_port
    srv_port=$(free_port)
    mkdir -p "$S/work" "$S/srv"
    make_old "$S/opt"
    make_package "$S" "$S/srv/legacy-1.0.1.zip"
    local stop=10
    [[ $phase == prepared ]] && stop=60
    cat >"$S/config.toml" <<EOF
listen = "127.0.0.1:$PORT"
device_api_url = "http://127.0.0.1:9"
work_dir = "$S/work"
allowed_roots = ["$S/opt"]
allow_http = true
ota_gui_path = "$S/no-ota-gui"
stop_timeout_s = $stop
EOF
    (cd "$S/srv" && exec python3 -m http.server --bind 127.0.0.1 "$srv_port" >/dev/null 2>&1) &
    local srv=$!
    local -a run=("$BIN" --config "$S/config.toml")
    if [[ $phase == committed ]]; then
        run=(strace -f -qq -o /dev/null -P "$S/work/backups/journal.json"
            -e trace=unlink,unlinkat -e inject=unlink,unlinkat:signal=SIGKILL "${run[@]}")
    fi
    case $phase in
    prepared)
        setsid "$S/opt/app/$APP" </dev/null >/dev/null 2>&1 &
        wait_for "the old process" 10 pgrep -x "$APP"
        ;;
    deploying) touch "$S/hold" ;;
    esac
    (cd "$S/work" && exec "${run[@]}" >"$S/daemon.log" 2>&1) &
    local daemon=$!
    wait_for "the 0.1.0 API" 30 api progress
    wait_for "the package server" 10 curl -fsS -o /dev/null "http://127.0.0.1:$srv_port/legacy-1.0.1.zip"
    local size md5
    size=$(stat -c %s "$S/srv/legacy-1.0.1.zip")
    md5=$(md5sum "$S/srv/legacy-1.0.1.zip" | cut -d' ' -f1)
    api download -H 'content-type: application/json' -d "{\"version\":\"1.0.1\",
        \"package_url\":\"http://127.0.0.1:$srv_port/legacy-1.0.1.zip\",
        \"package_name\":\"legacy-1.0.1.zip\",\"package_size\":$size,\"package_md5\":\"$md5\"}" >/dev/null
    wait_for "toInstall" 30 stage_is toInstall
    api update -H 'content-type: application/json' -d '{"version":"1.0.1"}' >/dev/null
    case $phase in
    prepared)
        wait_for "journal phase prepared" 30 bash -c "[[ \$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"phase\"])' '$S/work/backups/journal.json' 2>/dev/null) == prepared ]]"
        kill -KILL "$daemon"
        ;;
    deploying)
        wait_for "the post command" 60 test -s "$S/post.pid"
        [[ $(journal_phase "$S/work/backups/journal.json") == deploying ]]
        kill -KILL "$daemon"
        kill -KILL "$(cat "$S/post.pid")" || true
        ;;
    committed)
        # strace kills the daemon at the unlink of the committed journal (strace itself lives
        # on while the module process it also traces runs).
        local tracee
        tracee=$(pgrep -P "$daemon" -x tope-updater)
        wait_for "the daemon killed at the cleanup" 60 bash -c "! kill -0 $tracee"
        [[ $(journal_phase "$S/work/backups/journal.json") == committed ]]
        ;;
    esac
    kill_app "$S"
    wait "$daemon" 2>/dev/null || true
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true

    rm -rf "${OUT:?}/$phase"
    mkdir -p "$OUT/$phase/work/tmp"
    save_tree "$S/work/backups" "$OUT/$phase/work/backups" "$S"
    save_tree "$S/opt" "$OUT/$phase/opt" "$S"
    # state.json, as 0.1.0 left it; the package itself is not kept (it embeds the scratch
    # paths in its compressed manifest, and recovery never reads it).
    if [[ -f $S/work/tmp/state.json ]]; then
        save_tree "$S/work/tmp" "$OUT/$phase/work/tmp.all" "$S"
        mv "$OUT/$phase/work/tmp.all/state.json" "$OUT/$phase/work/tmp/state.json"
        rm -rf "$OUT/$phase/work/tmp.all"
    fi
    say "$phase: journal phase $(journal_phase "$S/work/backups/journal.json"), saved in $OUT/$phase"
    rm -rf "$S"
}

mkdir -p "$OUT"
S0=$(mktemp -d /tmp/tope-v010-fixture.XXXXXX)
make_old "$S0/opt"
rm -rf "$OUT/old"
save_tree "$S0/opt" "$OUT/old" "$S0"
rm -rf "$S0"
phases=("$@")
((${#phases[@]})) || phases=(prepared deploying committed)
for phase in "${phases[@]}"; do
    run_phase "$phase"
done
say "done: $OUT"
