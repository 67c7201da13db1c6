#!/bin/sh
# Take over from the Python updater (same unit name, tope-updater.service), or go back to it.
#
# Usage: python-migration.sh detect|take-over|revert [--root DIR] [--no-systemctl]
#   detect     print what was found (unit, working directory, venv); exit 1 if nothing
#   take-over  stop the Python updater, set its unit (and drop-ins) aside, and make the new
#              daemon run in the Python updater's working directory, so its tmp/state.json
#              (a partial download), logs/ and backups/ are used as they are
#   revert     undo take-over: the Python unit back in place and started again
#   --root DIR act on a staged root (default: $DPKG_ROOT, else /); implies --no-systemctl
#              unless it is /
#
# What is kept aside, in /var/lib/tope-updater/python-updater/: the old unit file and its
# drop-in directory, migration.env (where everything was) and a copy of this script, so
# `sh /var/lib/tope-updater/python-updater/python-migration.sh revert` works even after the
# new updater is removed. The Python program and its venv stay where they are (a venv cannot
# be moved), untouched.
#
# Used by deploy/install.sh and, embedded, by the Debian package's maintainer scripts (which
# set TOPE_MIGRATION_LIB=1 to get the functions without running main).
set -eu

TM_UNIT=tope-updater.service
TM_ASIDE=/var/lib/tope-updater/python-updater
TM_DROPIN=50-python-work-dir.conf
TM_UNIT_DIRS="/etc/systemd/system /lib/systemd/system /usr/lib/systemd/system"
TM_ROOT=${DPKG_ROOT:-}
TM_SYSTEMCTL=1

tm_log() {
    echo "tope-updater migration: $*"
}

# Whether systemctl should be run: not disabled, a live systemd, the real root.
tm_live() {
    [ "$TM_SYSTEMCTL" -eq 1 ] && [ -z "$TM_ROOT" ] && [ -d /run/systemd/system ] \
        && command -v systemctl >/dev/null 2>&1
}

# tm_unit_value FILE KEY: the last value assigned to KEY (a later assignment wins).
tm_unit_value() {
    sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*//p" "$1" | tail -n 1
}

# tm_program FILE: the program of the unit's ExecStart, without systemd's prefixes.
tm_program() {
    tm_unit_value "$1" ExecStart | awk '{print $1}' | sed 's/^[-@:+!]*//'
}

# tm_is_python FILE: the unit runs python, a program of a venv, or a .py script.
tm_is_python() {
    tm_exec=$(tm_unit_value "$1" ExecStart)
    [ -n "$tm_exec" ] || return 1
    tm_prog=$(tm_program "$1")
    case $(basename "$tm_prog") in
        python*) return 0 ;;
    esac
    if [ -f "$TM_ROOT$(dirname "$(dirname "$tm_prog")")/pyvenv.cfg" ]; then
        return 0
    fi
    for tm_word in $tm_exec; do
        case $tm_word in
            *.py) return 0 ;;
        esac
    done
    return 1
}

# tm_find: print the path (below the root) of a Python updater's unit; exit 1 if none.
tm_find() {
    for tm_dir in $TM_UNIT_DIRS; do
        tm_f="$TM_ROOT$tm_dir/$TM_UNIT"
        if [ -f "$tm_f" ] && tm_is_python "$tm_f"; then
            echo "$tm_dir/$TM_UNIT"
            return 0
        fi
    done
    return 1
}

# tm_venv UNIT_PATH WORK_DIR: the venv the Python updater runs from, if any.
tm_venv() {
    tm_prog=$(tm_program "$TM_ROOT$1")
    tm_cand=$(dirname "$(dirname "$tm_prog")")
    for tm_v in "$tm_cand" "$2/venv" "$2/.venv"; do
        if [ -n "$tm_v" ] && [ -f "$TM_ROOT$tm_v/pyvenv.cfg" ]; then
            echo "$tm_v"
            return 0
        fi
    done
    echo ""
}

# tm_quote VALUE: VALUE as a single-quoted sh word.
tm_quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

tm_detect() {
    if ! tm_old=$(tm_find); then
        echo "no Python updater found"
        return 1
    fi
    tm_wd=$(tm_unit_value "$TM_ROOT$tm_old" WorkingDirectory | sed 's/^-//')
    echo "unit: $tm_old"
    echo "program: $(tm_unit_value "$TM_ROOT$tm_old" ExecStart)"
    echo "working directory: ${tm_wd:-none}"
    echo "venv: $(tm_venv "$tm_old" "$tm_wd")"
}

tm_take_over() {
    if ! tm_old=$(tm_find); then
        tm_log "no Python updater installed, nothing to take over"
        return 0
    fi
    tm_aside="$TM_ROOT$TM_ASIDE"
    if [ -e "$tm_aside/migration.env" ]; then
        tm_log "a previous take-over is recorded in $TM_ASIDE; revert it first" >&2
        return 1
    fi
    tm_wd=$(tm_unit_value "$TM_ROOT$tm_old" WorkingDirectory | sed 's/^-//')
    tm_venv_dir=$(tm_venv "$tm_old" "$tm_wd")
    tm_log "found the Python updater: $tm_old (working directory ${tm_wd:-none}, venv ${tm_venv_dir:-none})"

    if tm_live; then
        systemctl stop "$TM_UNIT" || true
        tm_log "stopped the Python updater"
    fi

    mkdir -p "$tm_aside/unit"
    chmod 0700 "$tm_aside"
    # Which targets wanted it (symlinks in /etc/systemd/system/*.wants), to restore them.
    tm_wanted=""
    for tm_link in "$TM_ROOT"/etc/systemd/system/*.wants/"$TM_UNIT"; do
        [ -L "$tm_link" ] || continue
        tm_target=$(basename "$(dirname "$tm_link")" .wants)
        tm_wanted="$tm_wanted $tm_target"
        rm -f "$tm_link"
    done
    mv "$TM_ROOT$tm_old" "$tm_aside/unit/$TM_UNIT"
    tm_dropins=no
    if [ -d "$TM_ROOT/etc/systemd/system/$TM_UNIT.d" ]; then
        mv "$TM_ROOT/etc/systemd/system/$TM_UNIT.d" "$tm_aside/unit/$TM_UNIT.d"
        tm_dropins=yes
    fi
    {
        echo "# Written by python-migration.sh take-over; read by its revert."
        echo "OLD_UNIT=$(tm_quote "$tm_old")"
        echo "OLD_DROPINS=$tm_dropins"
        echo "WANTED_BY=$(tm_quote "${tm_wanted# }")"
        echo "WORK_DIR=$(tm_quote "$tm_wd")"
        echo "VENV=$(tm_quote "$tm_venv_dir")"
        echo "EXEC_START=$(tm_quote "$(tm_unit_value "$tm_aside/unit/$TM_UNIT" ExecStart)")"
        echo "TAKEN_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } > "$tm_aside/migration.env.tmp"
    mv "$tm_aside/migration.env.tmp" "$tm_aside/migration.env"
    if [ -n "${TM_SELF:-}" ] && [ -f "$TM_SELF" ]; then
        cp "$TM_SELF" "$tm_aside/python-migration.sh"
    fi
    cat > "$tm_aside/README" <<EOF
The Python updater was replaced by tope-updater on $(date -u +%Y-%m-%d).
Kept here: its unit (unit/), where it ran from (migration.env). Its program and venv
(${tm_venv_dir:-no venv}) and its working directory (${tm_wd:-none}) were left in place.
To go back:
  Debian package:  apt remove tope-updater   (or dpkg -r tope-updater)
  install.sh:      sh $TM_ASIDE/python-migration.sh revert
EOF

    if [ -n "$tm_wd" ] && [ -d "$TM_ROOT$tm_wd" ]; then
        mkdir -p "$TM_ROOT/etc/systemd/system/$TM_UNIT.d"
        cat > "$TM_ROOT/etc/systemd/system/$TM_UNIT.d/$TM_DROPIN" <<EOF
# Written when tope-updater took over from the Python updater: the daemon works in the
# Python updater's directory, so its tmp/state.json (a partial download resumes), logs/ and
# backups/ carry on. Removed by python-migration.sh revert.
[Service]
WorkingDirectory=$tm_wd
EOF
        tm_log "the new updater will work in $tm_wd (its state.json, logs and backups kept)"
    else
        tm_log "the Python updater had no working directory; using /var/lib/tope-updater"
    fi
    tm_log "done; to go back: see $TM_ASIDE/README"
}

tm_revert() {
    tm_aside="$TM_ROOT$TM_ASIDE"
    if [ ! -f "$tm_aside/migration.env" ]; then
        tm_log "no take-over recorded in $TM_ASIDE, nothing to revert"
        return 0
    fi
    OLD_UNIT="" OLD_DROPINS=no WANTED_BY="" WORK_DIR=""
    . "$tm_aside/migration.env"
    if tm_live; then
        systemctl stop "$TM_UNIT" || true
    fi
    tm_etc="$TM_ROOT/etc/systemd/system"
    rm -f "$tm_etc/$TM_UNIT.d/$TM_DROPIN"
    rmdir "$tm_etc/$TM_UNIT.d" 2>/dev/null || true
    for tm_link in "$tm_etc"/*.wants/"$TM_UNIT"; do
        [ -L "$tm_link" ] && rm -f "$tm_link"
    done
    # The new unit installed by install.sh would override the old one in /usr/lib or /lib.
    if [ "$OLD_UNIT" != "/etc/systemd/system/$TM_UNIT" ] && [ -f "$tm_etc/$TM_UNIT" ] \
        && ! tm_is_python "$tm_etc/$TM_UNIT"; then
        rm -f "$tm_etc/$TM_UNIT"
    fi
    mkdir -p "$(dirname "$TM_ROOT$OLD_UNIT")"
    mv -f "$tm_aside/unit/$TM_UNIT" "$TM_ROOT$OLD_UNIT"
    if [ "$OLD_DROPINS" = yes ] && [ -d "$tm_aside/unit/$TM_UNIT.d" ]; then
        rm -rf "$tm_etc/$TM_UNIT.d"
        mv "$tm_aside/unit/$TM_UNIT.d" "$tm_etc/$TM_UNIT.d"
    fi
    for tm_target in $WANTED_BY; do
        mkdir -p "$tm_etc/$tm_target.wants"
        ln -sf "$OLD_UNIT" "$tm_etc/$tm_target.wants/$TM_UNIT"
    done
    rm -rf "$tm_aside"
    tm_log "the Python updater is back: $OLD_UNIT (working directory ${WORK_DIR:-none})"
    if tm_live; then
        systemctl daemon-reload
        systemctl start "$TM_UNIT"
        tm_log "started the Python updater"
    fi
}

tm_main() {
    tm_cmd=${1:-}
    [ $# -gt 0 ] && shift
    while [ $# -gt 0 ]; do
        case $1 in
            --root) TM_ROOT=${2:?--root needs a directory}; shift ;;
            --no-systemctl) TM_SYSTEMCTL=0 ;;
            *) echo "python-migration.sh: unknown argument $1" >&2; return 2 ;;
        esac
        shift
    done
    [ "$TM_ROOT" = / ] && TM_ROOT=""
    case $tm_cmd in
        detect) tm_detect ;;
        take-over) tm_take_over ;;
        revert) tm_revert ;;
        *) echo "usage: $0 detect|take-over|revert [--root DIR] [--no-systemctl]" >&2; return 2 ;;
    esac
}

if [ "${TOPE_MIGRATION_LIB:-0}" != 1 ]; then
    TM_SELF=$0
    tm_main "$@"
fi
