//! docs/API.md 9.6, the updater touches only names it owns, and modes are sealed: the real
//! daemon installs into a root holding things that are not its own (a directory or a user's
//! file named `<dst>.tmp`, a destination name of 255 bytes), an installation that fails ends
//! with nothing pending, and the unix modes of ZIP entries (outside the signed manifest) are
//! deployed with setuid, setgid, sticky and group/other write taken away.

mod common;
mod pkgkit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::daemon::{stage_of, status_json};
use common::*;
use serde_json::{json, Value};

/// Prefix of the updater's own staging names (src/deploy/beneath.rs).
const STAGE_PREFIX: &str = ".tope-stage-";

/// A printer whose one module `app` deploys a single file to `dst`, with a daemon running.
struct Fx {
    ws: Workspace,
    nginx: Nginx,
    d: Daemon,
    _api: FakeDeviceApi,
    dst: PathBuf,
    /// Packages served so far (each gets its own name).
    served: std::cell::Cell<u32>,
}

fn fx(dst_name: &str, extra_toml: &str) -> Option<Fx> {
    let ws = Workspace::new();
    let nginx = ws.nginx()?;
    let api = FakeDeviceApi::start();
    let dst = ws.root().join("app").join(dst_name);
    write_file(&dst, b"old\n", 0o755);
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: format!("settle_s = 0\n{extra_toml}"),
            ..Default::default()
        },
    );
    Some(Fx {
        ws,
        nginx,
        d,
        _api: api,
        dst,
        served: std::cell::Cell::new(0),
    })
}

impl Fx {
    /// A package of `version` writing `content` to the destination, with `post_cmds`.
    fn package(&self, version: &str, content: &[u8], post_cmds: Value) -> Vec<u8> {
        let m = manifest(
            version,
            vec![json!({"name": "app", "src": "bin/app",
                        "dst": self.dst.display().to_string(), "post_cmds": post_cmds})],
        );
        build_package(&m, &[Entry::file("bin/app", content, 0o755)])
    }

    /// Download and install `package` as `version`; the outcome's /progress.
    fn install(&self, version: &str, package: &[u8]) -> Value {
        let n = self.served.get() + 1;
        self.served.set(n);
        self.d
            .install_package(&self.nginx, &format!("p{n}.zip"), version, package)
    }

    #[track_caller]
    fn assert_success(&self, p: &Value) {
        assert_eq!(stage_of(p), "success", "{p}\n{}", self.d.output());
    }

    /// `failed` with DEPLOYMENT_FAILED, rolled back, nothing pending: no journal, nothing in
    /// `backups/`, `status --json` shows no pending installation.
    #[track_caller]
    fn assert_rolled_back(&self, p: &Value) {
        assert_eq!(stage_of(p), "failed", "{p}");
        let err = p["data"]["error"].as_str().unwrap_or_default();
        assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{p}");
        assert!(err.ends_with("rolled back"), "{p}\n{}", self.d.output());
        let backups = self.ws.work_dir().join("backups");
        assert!(!backups.join("journal.json").exists(), "journal left");
        assert!(
            files_below(&backups).is_empty(),
            "{:?}",
            files_below(&backups)
        );
        let s = status_json(&self.d.config_path);
        assert!(s["pending_installation"].is_null(), "{s}");
    }

    /// No staging file of the updater's own is left below the root.
    #[track_caller]
    fn assert_no_staging_files(&self) {
        let left: Vec<_> = files_below(&self.ws.root())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(STAGE_PREFIX))
            })
            .collect();
        assert!(left.is_empty(), "staging files left: {left:?}");
    }
}

/// Every path below `dir` (directories included) with its mode and, for files, content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = m.is_file().then(|| std::fs::read(&p).unwrap());
            out.insert(p.clone(), (mode_of(&p), data));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// docs/API.md 9.6: a directory named `<dst>.tmp` (deployed by an earlier package, or made by
/// someone on the device) is not the updater's: the package installs beside it and the
/// directory and its content stay as they were. (Staging into `<dst>.tmp` used to remove it
/// first, fail, fail its rollback too and keep refusing every later package.)
#[test]
fn contract_9_6_a_directory_named_dst_tmp_is_left_alone_and_the_package_installs() {
    let Some(f) = fx("data", "") else { return };
    let dir = f.ws.root().join("app/data.tmp");
    write_file(&dir.join("keep.txt"), b"not the updater's\n", 0o640);
    let before = snapshot(&dir);
    let p = f.install("1.0.1", &f.package("1.0.1", b"new\n", json!([])));
    f.assert_success(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"new\n");
    assert_eq!(snapshot(&dir), before, "data.tmp/ changed");
    f.assert_no_staging_files();
    // And the next package installs too.
    let p = f.install("1.0.2", &f.package("1.0.2", b"newer\n", json!([])));
    f.assert_success(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"newer\n");
    assert_eq!(snapshot(&dir), before, "data.tmp/ changed");
}

/// docs/API.md 9.6: a user's regular file `<dst>.tmp` is never deleted or overwritten: it
/// survives a successful installation and a rolled-back one (a failing post command).
#[test]
fn contract_9_6_a_users_dst_tmp_file_survives_success_and_rollback() {
    let Some(f) = fx("data", "") else { return };
    let user = f.ws.root().join("app/data.tmp");
    write_file(&user, b"the user's notes\n", 0o600);
    let p = f.install("1.0.1", &f.package("1.0.1", b"new\n", json!([])));
    f.assert_success(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"new\n");
    assert_eq!(std::fs::read(&user).unwrap(), b"the user's notes\n");
    assert_eq!(mode_of(&user), 0o600);

    let p = f.install("1.0.2", &f.package("1.0.2", b"newer\n", json!([["false"]])));
    f.assert_rolled_back(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"new\n");
    assert_eq!(std::fs::read(&user).unwrap(), b"the user's notes\n");
    f.assert_no_staging_files();
}

/// docs/API.md 9.6: a destination name of 255 bytes (the most ext4 takes, so `<name>.tmp`
/// cannot exist) installs, and a failing post command rolls it back to the old content.
#[test]
fn contract_9_6_a_255_byte_destination_name_installs_and_rolls_back() {
    let name = "n".repeat(255);
    let Some(f) = fx(&name, "") else { return };
    let p = f.install("1.0.1", &f.package("1.0.1", b"new\n", json!([])));
    f.assert_success(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"new\n");
    assert_eq!(mode_of(&f.dst), 0o755);

    let p = f.install("1.0.2", &f.package("1.0.2", b"newer\n", json!([["false"]])));
    f.assert_rolled_back(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"new\n");
    f.assert_no_staging_files();
}

/// docs/API.md 9.6: an installation that fails (here a failing post command, beside a
/// `<dst>.tmp` directory that is not the updater's) ends `failed`, rolled back, its journal
/// gone and `status --json` showing nothing pending, every file under the root as it was; the
/// next package installs without a restart, and again after a power cut (SIGKILL) and start.
#[test]
fn contract_9_6_a_failed_installation_leaves_nothing_pending_and_the_next_one_installs() {
    let Some(mut f) = fx("data", "") else { return };
    write_file(&f.ws.root().join("app/data.tmp/keep"), b"x\n", 0o644);
    write_file(&f.ws.root().join("app/other.conf"), b"other\n", 0o600);
    let failing = f.package("2.0.0", b"two\n", json!([["false"]]));

    let before = snapshot(&f.ws.root());
    let p = f.install("2.0.0", &failing);
    f.assert_rolled_back(&p);
    assert_eq!(
        snapshot(&f.ws.root()),
        before,
        "files under the root changed"
    );

    // Without a restart.
    let p = f.install("2.0.1", &f.package("2.0.1", b"two-one\n", json!([])));
    f.assert_success(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"two-one\n");

    // Fail again, then a power cut and a start: still nothing pending, the next one installs.
    let before = snapshot(&f.ws.root());
    let p = f.install("2.0.2", &f.package("2.0.2", b"bad\n", json!([["false"]])));
    f.assert_rolled_back(&p);
    f.d.sigkill();
    f.d.restart();
    assert!(f.d.first_progress.is_some());
    assert_eq!(
        snapshot(&f.ws.root()),
        before,
        "files under the root changed"
    );
    assert!(status_json(&f.d.config_path)["pending_installation"].is_null());
    let p = f.install("2.0.3", &f.package("2.0.3", b"two-three\n", json!([])));
    f.assert_success(&p);
    assert_eq!(std::fs::read(&f.dst).unwrap(), b"two-three\n");
    f.assert_no_staging_files();
}

/// Rewrite the unix mode of the central directory entry `name` of a ZIP (the external
/// attributes, outside anything `manifest.sig` covers), as someone tampering with a signed
/// package would.
fn set_zip_mode(zip: &mut [u8], name: &str, mode: u32) {
    let u16_at = |z: &[u8], i: usize| u16::from_le_bytes([z[i], z[i + 1]]) as usize;
    let u32_at = |z: &[u8], i: usize| u32::from_le_bytes([z[i], z[i + 1], z[i + 2], z[i + 3]]);
    let eocd = (0..=zip.len() - 22)
        .rev()
        .find(|&i| zip[i..i + 4] == *b"PK\x05\x06")
        .expect("end of central directory");
    let count = u16_at(zip, eocd + 10);
    let mut at = u32_at(zip, eocd + 16) as usize;
    for _ in 0..count {
        assert_eq!(zip[at..at + 4], *b"PK\x01\x02", "central directory header");
        let name_len = u16_at(zip, at + 28);
        let extra_len = u16_at(zip, at + 30);
        let comment_len = u16_at(zip, at + 32);
        if &zip[at + 46..at + 46 + name_len] == name.as_bytes() {
            zip[at + 5] = 3; // made by: unix
            zip[at + 38..at + 42].copy_from_slice(&(mode << 16).to_le_bytes());
            return;
        }
        at += 46 + name_len + extra_len + comment_len;
    }
    panic!("no entry {name} in the ZIP");
}

/// docs/API.md 9.6: a package signed with `pack --key`, its ZIP then rewritten to give the
/// root-run program mode 06777 (setuid, setgid, writable by all): the signature still verifies
/// (modes lie outside it) and the file deploys as 0755. An unsigned package's directory entry
/// with mode 01777 and files with 0666 / 02775 deploy as 0755 directories and 0644 / 0755 files.
#[test]
fn contract_9_6_zip_modes_are_deployed_masked_even_when_tampered_outside_the_signature() {
    // The author's side: a key and the package directory, apart from the printer's workspace.
    let ws = Workspace::new();
    let (key, public) = pkgkit::keygen(ws.path(), "signing.pem");
    let Some(f) = fx(
        "tool",
        &format!("trusted_keys = [\"{public}\"]\nrequire_signature = true\n"),
    ) else {
        return;
    };
    let src = ws.path().join("src");
    let m = manifest(
        "1.0.1",
        vec![json!({"name": "app", "src": "bin/tool", "dst": f.dst.display().to_string()})],
    );
    pkgkit::package_dir(&src, &m, &[("bin/tool", b"#!/bin/sh\necho new\n", 0o755)]);
    let out = ws.path().join("signed.zip");
    pkgkit::pack(&src, &out, Some(&key));
    let mut bytes = std::fs::read(&out).unwrap();
    set_zip_mode(&mut bytes, "bin/tool", 0o106777);
    let tampered = pkgkit::entries(&bytes);
    let tool = tampered.iter().find(|e| e.0 == "bin/tool").unwrap();
    // (The ZIP reader may drop the special bits itself; group/other write it keeps.)
    assert_eq!(tool.2 & 0o777, 0o777, "the ZIP carries the tampered mode");
    assert!(
        pkgkit::verify(&out_with(&ws, "tampered.zip", &bytes), &[&public]).ok,
        "the tampered package still verifies"
    );
    let p = f.install("1.0.1", &bytes);
    f.assert_success(&p);
    assert_eq!(
        std::fs::read(&f.dst).unwrap(),
        b"#!/bin/sh\necho new\n".as_slice()
    );
    assert_eq!(mode_of(&f.dst), 0o755, "setuid/setgid/other-write deployed");
}

/// The same rule for directory entries and other file modes, in an unsigned package.
#[test]
fn contract_9_6_directory_and_file_entry_modes_are_masked() {
    let Some(f) = fx("data", "") else { return };
    let dst = f.ws.root().join("newdir");
    let m = manifest(
        "1.0.1",
        vec![json!({"name": "d", "src": "d", "dst": dst.display().to_string()})],
    );
    let mut bytes = build_package(
        &m,
        &[
            Entry::dir("d"),
            Entry::dir("d/sub"),
            Entry::file("d/sub/shared", b"shared\n", 0o644),
            Entry::file("d/run", b"#!/bin/sh\n", 0o755),
        ],
    );
    set_zip_mode(&mut bytes, "d/", 0o41777);
    set_zip_mode(&mut bytes, "d/sub/", 0o40777);
    set_zip_mode(&mut bytes, "d/sub/shared", 0o100666);
    set_zip_mode(&mut bytes, "d/run", 0o102775);
    let p = f.install("1.0.1", &bytes);
    f.assert_success(&p);
    assert_eq!(mode_of(&dst), 0o755);
    assert_eq!(mode_of(&dst.join("sub")), 0o755);
    assert_eq!(mode_of(&dst.join("sub/shared")), 0o644);
    assert_eq!(mode_of(&dst.join("run")), 0o755);
    assert_eq!(std::fs::read(dst.join("run")).unwrap(), b"#!/bin/sh\n");
}

/// Writes `bytes` to `<workspace>/<name>`; the path.
fn out_with(ws: &Workspace, name: &str, bytes: &[u8]) -> PathBuf {
    let p = ws.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// docs/API.md 9.6, the package author's side: `pack --out FILE` writes through a file of its
/// own, so a `FILE.tmp` of someone else's beside it is neither deleted nor overwritten.
#[test]
fn contract_9_6_pack_leaves_a_users_out_tmp_alone() {
    let ws = Workspace::new();
    let src = ws.path().join("src");
    let m = manifest(
        "1.0.1",
        vec![json!({"name": "app", "src": "bin/app", "dst": "/opt/tope/app/app"})],
    );
    pkgkit::package_dir(&src, &m, &[("bin/app", b"app\n", 0o755)]);
    let out = ws.path().join("out/app.zip");
    let user = ws.path().join("out/app.zip.tmp");
    write_file(&user, b"someone else's\n", 0o600);
    let packed = pkgkit::pack(&src, &out, None);
    assert_eq!(packed["package_name"], "app.zip");
    assert!(pkgkit::verify(&out, &[]).ok);
    assert_eq!(std::fs::read(&user).unwrap(), b"someone else's\n");
    let names: Vec<String> = std::fs::read_dir(ws.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the package and the user's file: {names:?}"
    );
}

/// docs/API.md 9.6: `pack` keeps a file's mode in the ZIP but warns when the daemon will not
/// deploy it as it is (group/other write, setuid).
#[test]
fn contract_9_6_pack_warns_about_modes_the_daemon_masks() {
    let ws = Workspace::new();
    let src = ws.path().join("src");
    let m = manifest(
        "1.0.1",
        vec![json!({"name": "app", "src": "bin", "dst": "/opt/tope/app"})],
    );
    pkgkit::package_dir(
        &src,
        &m,
        &[("bin/shared", b"x\n", 0o666), ("bin/ok", b"y\n", 0o755)],
    );
    let out = ws.path().join("app.zip");
    let r = pkgkit::pack_run(&src, &out, None, None);
    assert!(r.ok, "{r:?}");
    assert!(
        r.stderr.contains("bin/shared has mode 0666") && r.stderr.contains("as 0644"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("bin/ok"), "{r:?}");
    let modes: Vec<(String, u32)> = pkgkit::entries(&std::fs::read(&out).unwrap())
        .into_iter()
        .map(|e| (e.0, e.2))
        .collect();
    assert!(modes.contains(&("bin/shared".into(), 0o666)), "{modes:?}");
}
