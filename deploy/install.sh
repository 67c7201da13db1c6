#!/bin/sh
# Install tope-updater on a printer. Idempotent: running it again upgrades the binary and
# the unit, and keeps an existing configuration.
#
# Usage: deploy/install.sh [--no-systemctl] [path/to/tope-updater]
#   The binary defaults to ./tope-updater.
#   DESTDIR=/some/root installs below that directory (implies nothing about systemctl;
#   combine with --no-systemctl when there is no running systemd, e.g. in a test).
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
destdir=${DESTDIR:-}

bin_dir="$destdir/usr/local/bin"
conf_dir="$destdir/etc/tope-updater"
state_dir="$destdir/var/lib/tope-updater"
unit_dir="$destdir/etc/systemd/system"

if [ ! -f "$binary" ]; then
    echo "install.sh: binary not found: $binary" >&2
    exit 1
fi
if [ ! -f "$unit_src" ]; then
    echo "install.sh: unit file not found: $unit_src" >&2
    exit 1
fi

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
    cat > "$conf_dir/config.toml" <<'CONF'
# tope-updater configuration. Every key is optional; the values shown are the defaults.
# Uncomment a line to change it, then: systemctl restart tope-updater

# Address of the HTTP API (/api/v1.0/...). The daemon exits if the port is taken.
#listen = "127.0.0.1:12315"

# device-api, which receives progress reports at <url>/api/v1.0/ota/report.
#device_api_url = "http://127.0.0.1:9080"

# Directory holding tmp/, logs/ and backups/ (default: the working directory,
# /var/lib/tope-updater under systemd).
#work_dir = "/var/lib/tope-updater"

# Directories a package may write to; a manifest `dst` outside them is refused.
#allowed_roots = ["/opt/tope"]

# Accept plain http:// package URLs (https only by default).
#allow_http = false

# An extra PEM CA certificate to trust, e.g. for a private S3/MinIO server.
#ca_file = "/etc/tope-updater/ca.pem"

# The OTA screen, started when an installation begins (if it exists).
#ota_gui_path = "/opt/tope/ota-gui"

# Seconds between SIGTERM and SIGKILL when stopping a module's process.
#stop_timeout_s = 10

# Hours a verified package may wait for /update before it must be downloaded again.
#trust_window_hours = 24

# Largest package accepted by /download, in bytes (4 GiB).
#max_package_size = 4294967296

# Download speed cap in bytes per second; 0 means no cap.
#max_download_bytes_per_s = 0

# debug, info, warn or error.
#log_level = "info"
CONF
    chmod 0644 "$conf_dir/config.toml"
    echo "wrote $conf_dir/config.toml"
fi

# The systemd unit.
mkdir -p "$unit_dir"
cp "$unit_src" "$unit_dir/.tope-updater.service.new"
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
