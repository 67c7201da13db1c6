#!/bin/sh
# Install tope-updater on a printer without dpkg. Idempotent: running it again upgrades the
# binary and the unit, and keeps an existing configuration.
#
# Usage: deploy/install.sh [--no-systemctl] [path/to/tope-updater]
#   The binary defaults to ./tope-updater.
#   DESTDIR=/some/root installs below that directory; combine with --no-systemctl when no
#   systemd runs there (e.g. in a test or an image being built).
#
# Over the Python updater (a tope-updater.service that runs python or a venv), it first takes
# over: the old unit is set aside in /var/lib/tope-updater/python-updater/, the Python updater
# is stopped, and the new daemon works in its working directory (its state.json, logs and
# backups carry on). To go back: sh /var/lib/tope-updater/python-updater/python-migration.sh revert
set -eu

usage() {
    echo "usage: $0 [--no-systemctl] [path/to/tope-updater]" >&2
    exit 2
}

run_systemctl=1
binary=./tope-updater
for arg in "$@"; do
    case "$arg" in
        --no-systemctl) run_systemctl=0 ;;
        -h | --help) usage ;;
        -*) echo "unknown option: $arg" >&2; usage ;;
        *) binary=$arg ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
unit_src="$here/tope-updater.service"
conf_src="$here/config.toml"
migration="$here/python-migration.sh"
destdir=${DESTDIR:-}

bin_dir="$destdir/usr/local/bin"
conf_dir="$destdir/etc/tope-updater"
state_dir="$destdir/var/lib/tope-updater"
unit_dir="$destdir/etc/systemd/system"

for f in "$binary" "$unit_src" "$conf_src" "$migration"; do
    if [ ! -f "$f" ]; then
        echo "install.sh: not found: $f" >&2
        exit 1
    fi
done

# The binary: copy next to the target, then rename, so a running daemon is never
# left with a half-written executable.
mkdir -p "$bin_dir"
cp "$binary" "$bin_dir/.tope-updater.new"
chmod 0755 "$bin_dir/.tope-updater.new"
mv -f "$bin_dir/.tope-updater.new" "$bin_dir/tope-updater"
echo "installed $bin_dir/tope-updater"

# Working directory and its contract subdirectories.
for d in "$state_dir" "$state_dir/tmp" "$state_dir/logs" "$state_dir/backups"; do
    mkdir -p "$d"
    chmod 0755 "$d"
done
echo "created $state_dir/{tmp,logs,backups}"

# Configuration: written only if absent, so local changes survive reinstalls.
mkdir -p "$conf_dir"
chmod 0755 "$conf_dir"
if [ -e "$conf_dir/config.toml" ]; then
    echo "kept existing $conf_dir/config.toml"
else
    cp "$conf_src" "$conf_dir/.config.toml.new"
    chmod 0644 "$conf_dir/.config.toml.new"
    mv -f "$conf_dir/.config.toml.new" "$conf_dir/config.toml"
    echo "wrote $conf_dir/config.toml"
fi

# The Python updater, if it is installed under the same unit name: stop it, set it aside,
# keep its working directory.
migration_args="--root ${destdir:-/}"
[ "$run_systemctl" -eq 0 ] && migration_args="$migration_args --no-systemctl"
# shellcheck disable=SC2086
sh "$migration" take-over $migration_args

# The systemd unit, with the binary where this script puts it.
mkdir -p "$unit_dir"
sed 's|^ExecStart=/usr/bin/tope-updater |ExecStart=/usr/local/bin/tope-updater |' "$unit_src" \
    > "$unit_dir/.tope-updater.service.new"
chmod 0644 "$unit_dir/.tope-updater.service.new"
mv -f "$unit_dir/.tope-updater.service.new" "$unit_dir/tope-updater.service"
echo "installed $unit_dir/tope-updater.service"

if [ "$run_systemctl" -eq 1 ]; then
    was_active=0
    if systemctl is-active --quiet tope-updater; then
        was_active=1
    fi
    systemctl daemon-reload && systemctl enable --now tope-updater
    if [ "$was_active" -eq 1 ]; then
        # A reinstall: run the new binary (the daemon is crash-safe, restarting is fine).
        systemctl restart tope-updater
    fi
    echo "tope-updater enabled and running: systemctl status tope-updater"
else
    echo "skipped systemctl (--no-systemctl)"
fi
