#!/usr/bin/env bash
# Writes the seed packages of the zip_reader fuzz target into fuzz/corpus/zip_reader/: real
# packages made by `tope-updater pack` (plain and signed with package-key.pem, a throwaway key
# whose public half the target trusts; no printer ever does), and a few hostile archives that
# pack refuses to make (written with Python's zipfile). Run it after a change to the package
# format; the output is checked in.
# Usage: fuzz/seeds/make-zip-seeds.sh   (builds target/debug/tope-updater first)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --quiet
bin=$PWD/target/debug/tope-updater
out=$PWD/fuzz/corpus/zip_reader
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The key file must be private to be read, whatever mode git gave it.
install -m 0600 fuzz/seeds/package-key.pem "$work/key.pem"

# One module, one executable file.
mkdir -p "$work/one/bin"
printf '#!/bin/sh\necho printerd 1.2.3\n' >"$work/one/bin/printerd"
chmod 0755 "$work/one/bin/printerd"
cat >"$work/one/manifest.json" <<'JSON'
{"version": "1.2.3",
 "modules": [
   {"name": "printerd", "src": "bin/printerd", "dst": "/opt/tope/printerd/printerd",
    "process_name": "printerd", "restart_order": 1,
    "start_cmd": ["/opt/tope/printerd/printerd", "--daemon"]}
 ]}
JSON

# Two modules: a directory with a subdirectory, a service, both post_cmds forms, a health check.
mkdir -p "$work/two/modules/web/static" "$work/two/modules/device-api"
printf '<html>ok</html>\n' >"$work/two/modules/web/index.html"
printf 'body{}\n' >"$work/two/modules/web/static/app.css"
printf 'x%.0s' $(seq 1 300) >"$work/two/modules/web/static/big.txt"
printf '\177ELF fake device-api\n' >"$work/two/modules/device-api/device-api"
chmod 0750 "$work/two/modules/device-api/device-api"
cat >"$work/two/manifest.json" <<'JSON'
{"version": "2.0.10",
 "modules": [
   {"name": "device-api", "src": "modules/device-api/device-api",
    "dst": "/opt/tope/device-api/device-api", "process_name": "device-api",
    "restart_order": 1, "health_cmd": ["/usr/bin/curl", "-fsS", "http://127.0.0.1:9080/health"],
    "health_timeout_s": 20},
   {"name": "web", "src": "modules/web", "dst": "/opt/tope/web", "service": "tope-web.service",
    "restart_order": 2,
    "post_cmds": [["/bin/chown", "-R", "tope", "/opt/tope/web"], "systemctl reload nginx || true"]}
 ]}
JSON

"$bin" pack "$work/one" --out "$out/one-module.zip" >/dev/null
"$bin" pack "$work/two" --out "$out/two-modules.zip" >/dev/null
"$bin" pack "$work/one" --out "$out/one-module-signed.zip" --key "$work/key.pem" >/dev/null
"$bin" pack "$work/two" --out "$out/two-modules-signed.zip" --key "$work/key.pem" >/dev/null

python3 - "$out" <<'PY'
import stat, sys, zipfile
out = sys.argv[1]
manifest = ('{"version": "1.0.0", "modules": [{"name": "a", "src": "a", '
            '"dst": "/opt/tope/a/a"}]}')

def entry(name, mode):
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: the mode bits below are read
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info

def package(file, extra, **kw):
    with zipfile.ZipFile(f"{out}/{file}", "w", **kw) as z:
        z.writestr(entry("manifest.json", stat.S_IFREG | 0o644), manifest)
        for name, mode, data in extra:
            z.writestr(entry(name, mode), data)

package("symlink.zip", [("a", stat.S_IFLNK | 0o777, "/etc/shadow")])
package("zip-slip.zip", [("a", stat.S_IFREG | 0o755, "x"), ("../../etc/cron.d/x", stat.S_IFREG | 0o644, "x")])
package("absolute-name.zip", [("/etc/passwd", stat.S_IFREG | 0o644, "x")])
package("file-and-dir.zip", [("a", stat.S_IFREG | 0o644, "x"), ("a/b", stat.S_IFREG | 0o644, "y")])
package("zip64.zip", [("a", stat.S_IFREG | 0o755, "zip64 " * 20)])
with zipfile.ZipFile(f"{out}/zip64.zip", "a") as z:
    with z.open(entry("b", stat.S_IFREG | 0o644), "w", force_zip64=True) as f:
        f.write(b"forced zip64 entry")
with zipfile.ZipFile(f"{out}/stored.zip", "w", zipfile.ZIP_STORED) as z:
    z.writestr("manifest.json", manifest)
    z.writestr("a", "stored, not deflated")
with zipfile.ZipFile(f"{out}/duplicate.zip", "w") as z:
    z.writestr("manifest.json", manifest)
    z.writestr("a", "first")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z.writestr("a", "second")
with open(f"{out}/one-module.zip", "rb") as f:
    data = f.read()
with open(f"{out}/prepended.zip", "wb") as f:
    f.write(b"#!/bin/sh\nexit 0\n" + data)
PY
ls -l "$out"
