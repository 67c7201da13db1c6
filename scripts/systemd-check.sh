#!/usr/bin/env bash
# Checks deploy/tope-updater.service with systemd's own tools, without a running systemd:
#   - `systemd-analyze verify` must print nothing (it exits 0 on unknown keys, so any
#     output counts as a failure);
#   - `systemd-analyze security --offline=true` must report every hardening option the unit
#     turns on as effective; the overall exposure is printed (it stays high on purpose: the
#     unit explains why each other option is off).
# Usage: scripts/systemd-check.sh [path/to/tope-updater]   (default: target/debug/tope-updater)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=$(realpath "${1:-target/debug/tope-updater}")
[ -x "$binary" ] || { echo "systemd-check: no binary at $binary (cargo build first)" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "systemd-check: systemd-analyze missing (apt-get install systemd)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify checks that ExecStart exists: point it at the binary just built.
sed "s|^ExecStart=/usr/bin/tope-updater|ExecStart=$binary|" deploy/tope-updater.service \
    > "$tmp/tope-updater.service"
out=$(cd "$tmp" && systemd-analyze verify --man=no ./tope-updater.service 2>&1) || {
    echo "$out" >&2; echo "systemd-check: verify failed" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "$out" >&2
    echo "systemd-check: systemd-analyze verify printed warnings" >&2
    exit 1
fi
echo "systemd-check: systemd-analyze verify: no warnings"

report=$(cd "$tmp" && systemd-analyze security --offline=true --no-pager ./tope-updater.service 2>&1) || true
for option in NotifyAccess ProtectControlGroups ProtectKernelLogs LockPersonality; do
    if ! grep -q "✓ $option=" <<<"$report"; then
        echo "$report" >&2
        echo "systemd-check: $option is not reported as effective" >&2
        exit 1
    fi
done
grep "Overall exposure level" <<<"$report" | sed 's/^→ /systemd-check: /'
