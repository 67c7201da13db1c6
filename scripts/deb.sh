#!/usr/bin/env bash
# Builds the Debian package of the printer build and tests it in a scratch root.
#
# Usage: scripts/deb.sh [build|test|all] [--target TRIPLE]
#   build  static binary (default target aarch64-unknown-linux-musl, the ARM printers';
#          x86_64-unknown-linux-musl for x86 ones), man pages, maintainer scripts, then
#          cargo deb -> target/debian/
#   test   installs the .deb with dpkg into a scratch root holding a fake Python updater
#          (dpkg --root, maintainer scripts run chrootless with DPKG_ROOT set), then checks
#          the files, the conffile, the take-over, a reinstall keeping a changed conffile,
#          removal (the Python updater comes back) and purge. A package of another
#          architecture is installed with --force-architecture and its binary run under
#          qemu-user (qemu-user-static).
#   all    both (the default)
# Installs cargo-deb (cargo install --locked) when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

action=all
target=aarch64-unknown-linux-musl
while [ $# -gt 0 ]; do
    case $1 in
        build | test | all) action=$1 ;;
        --target) target=${2:?--target needs a triple}; shift ;;
        *) echo "usage: $0 [build|test|all] [--target TRIPLE]" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "deb.sh: $*"; }

build() {
    command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    case $target in
        aarch64-unknown-linux-musl)
            export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
            export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc ;;
    esac
    say "building the printer binary for $target"
    cargo build --release --no-default-features --target "$target"

    rm -rf target/deb
    mkdir -p target/deb/man target/deb/maintainer-scripts
    say "man pages"
    cargo run -q --example man -- target/deb/man >/dev/null
    gzip -9n target/deb/man/*.1
    # The maintainer scripts carry python-migration.sh (without its shebang) where they say
    # #MIGRATION#: preinst takes over before the unit is unpacked, postrm reverts once the
    # package's files are gone.
    for s in preinst postinst prerm postrm; do
        awk 'FNR == NR { if (FNR > 1) body = body $0 "\n"; next }
             /^#MIGRATION#$/ { printf "%s", body; next } { print }' \
            deploy/python-migration.sh "deploy/debian/$s" > "target/deb/maintainer-scripts/$s"
        chmod 0755 "target/deb/maintainer-scripts/$s"
        sh -n "target/deb/maintainer-scripts/$s"
    done
    [ -f THIRD-PARTY-NOTICES.md ] || { say "THIRD-PARTY-NOTICES.md missing (scripts/licenses.sh)"; exit 1; }
    say "cargo deb"
    cargo deb --no-build --no-strip --target "$target" --output target/debian/ >/dev/null
    deb=$(ls -t target/debian/tope-updater_*"$(deb_arch)".deb | head -n 1)
    say "built $deb ($(stat -c %s "$deb") bytes)"
}

deb_arch() {
    case $target in
        x86_64-*) echo amd64 ;;
        aarch64-*) echo arm64 ;;
        armv7-* | arm-*) echo armhf ;;
        *) echo unknown ;;
    esac
}

fail() { say "FAIL: $*"; exit 1; }
check() { local what=$1; shift; if "$@"; then say "ok: $what"; else fail "$what"; fi; }
quiet() { "$@" >/dev/null; }

test_package() {
    local deb root status
    deb=$(ls -t target/debian/tope-updater_*"$(deb_arch)".deb 2>/dev/null | head -n 1)
    [ -n "$deb" ] || fail "no .deb for $target in target/debian (run: $0 build)"
    local -a force=() run=()
    if [ "$(dpkg --print-architecture)" != "$(deb_arch)" ]; then
        force=(--force-architecture)
        case $(deb_arch) in
            arm64) run=(qemu-aarch64-static) ;;
            armhf) run=(qemu-arm-static -L /usr/arm-linux-gnueabihf) ;;
            *) fail "no emulator known for $(deb_arch)" ;;
        esac
        command -v "${run[0]}" >/dev/null || fail "${run[0]} missing (apt-get install qemu-user-static)"
    fi
    root=$(mktemp -d /tmp/tope-deb-root.XXXXXX)
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
    : > "$root/var/lib/dpkg/status"

    # A Python updater, as printers in the field have it.
    mkdir -p "$root/opt/tope-updater/venv/bin" "$root/opt/tope-updater/tmp" \
        "$root/opt/tope-updater/logs" "$root/etc/systemd/system/multi-user.target.wants"
    echo "home = /usr/bin" > "$root/opt/tope-updater/venv/pyvenv.cfg"
    printf '#!/bin/sh\n' > "$root/opt/tope-updater/venv/bin/python3"
    echo '{"version":"1.0.1","stage":"downloading","bytes_downloaded":5}' > "$root/opt/tope-updater/tmp/state.json"
    echo "python log line" > "$root/opt/tope-updater/logs/updater.log"
    cat > "$root/etc/systemd/system/tope-updater.service" <<'UNIT'
[Service]
WorkingDirectory=/opt/tope-updater
ExecStart=/opt/tope-updater/venv/bin/python3 -m tope_updater
[Install]
WantedBy=multi-user.target
UNIT
    ln -s /etc/systemd/system/tope-updater.service \
        "$root/etc/systemd/system/multi-user.target.wants/tope-updater.service"
    cp "$root/etc/systemd/system/tope-updater.service" "$root/old-unit"

    dpkg_root() { dpkg --root="$root" --force-script-chrootless "${force[@]}" --log=/dev/null "$@"; }
    say "dpkg -i $deb into $root"
    dpkg_root -i "$deb"
    status=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' tope-updater)
    check "installed ($status)" test "$status" = "install ok installed"
    check "binary in /usr/bin runs" "${run[@]}" "$root/usr/bin/tope-updater" --version
    check "config is valid" quiet "${run[@]}" "$root/usr/bin/tope-updater" check-config --config "$root/etc/tope-updater/config.toml"
    check "unit in /usr/lib/systemd/system" test -f "$root/usr/lib/systemd/system/tope-updater.service"
    check "config is a conffile" grep -q "/etc/tope-updater/config.toml" \
        <(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}' tope-updater)
    for d in tmp logs backups; do
        check "work dir $d (0755)" test "$(stat -c %a "$root/var/lib/tope-updater/$d")" = 755
    done
    check "man page" test -f "$root/usr/share/man/man1/tope-updater.1.gz"
    check "docs and notices" test -f "$root/usr/share/doc/tope-updater/API.md" -a \
        -f "$root/usr/share/doc/tope-updater/THIRD-PARTY-NOTICES.md" -a -f "$root/usr/share/doc/tope-updater/copyright"
    check "Python unit set aside" cmp -s "$root/old-unit" "$root/var/lib/tope-updater/python-updater/unit/tope-updater.service"
    check "Python unit gone from /etc" test ! -e "$root/etc/systemd/system/tope-updater.service"
    check "work dir taken over" grep -qx "WorkingDirectory=/opt/tope-updater" \
        "$root/etc/systemd/system/tope-updater.service.d/50-python-work-dir.conf"
    check "revert script kept aside" test -f "$root/var/lib/tope-updater/python-updater/python-migration.sh"
    check "Python state and logs untouched" grep -q '"bytes_downloaded":5' "$root/opt/tope-updater/tmp/state.json"
    check "Python logs untouched" grep -qx "python log line" "$root/opt/tope-updater/logs/updater.log"
    if command -v systemctl >/dev/null 2>&1; then
        check "new unit enabled offline" test "$(readlink "$root/etc/systemd/system/multi-user.target.wants/tope-updater.service")" \
            = /usr/lib/systemd/system/tope-updater.service
    fi

    # A local change to the conffile survives a reinstall.
    echo 'log_level = "debug"' >> "$root/etc/tope-updater/config.toml"
    dpkg_root --force-confold -i "$deb"
    check "changed conffile kept on reinstall" grep -qx 'log_level = "debug"' "$root/etc/tope-updater/config.toml"
    check "no second take-over" test -f "$root/var/lib/tope-updater/python-updater/migration.env"

    say "dpkg -r"
    dpkg_root -r tope-updater
    check "binary removed" test ! -e "$root/usr/bin/tope-updater"
    check "conffile kept on remove" test -f "$root/etc/tope-updater/config.toml"
    check "Python unit back" cmp -s "$root/old-unit" "$root/etc/systemd/system/tope-updater.service"
    check "Python unit enabled again" test "$(readlink "$root/etc/systemd/system/multi-user.target.wants/tope-updater.service")" \
        = /etc/systemd/system/tope-updater.service
    check "work-dir drop-in removed" test ! -e "$root/etc/systemd/system/tope-updater.service.d"
    say "dpkg -P"
    dpkg_root -P tope-updater
    check "purged config" test ! -e "$root/etc/tope-updater"
    check "purged work dir" test ! -e "$root/var/lib/tope-updater"
    check "Python files survive everything" grep -q '"bytes_downloaded":5' "$root/opt/tope-updater/tmp/state.json"
    say "scratch-root install test passed"
}

case $action in
    build) build ;;
    test) test_package ;;
    all) build; test_package ;;
esac
