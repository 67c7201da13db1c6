//! Packages made with the package author's tools, installed by the real daemon (nginx over
//! HTTPS, fake device-api): docs/API.md sections 8.6 (signed packages), 8.7 (`pack`'s JSON
//! line is the `/download` body) and 8.8 (`post_cmds` as shell strings).

mod common;
mod pkgkit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::stage_of;
use common::*;
use pkgkit::{download_body, entries, keygen, pack, rebuild};
use serde_json::{json, Value};
use tope_updater::package::SigningKey;

const V: &str = "3.1.4";

/// A printer with two modules installed (a program file and a directory of configuration)
/// and a package directory with their new version.
struct Fx {
    ws: Workspace,
    api: FakeDeviceApi,
    nginx: Nginx,
    app: PathBuf,
    conf: PathBuf,
    src: PathBuf,
}

const OLD: [(&str, &[u8], u32); 3] = [
    ("app/app", b"old app\n", 0o755),
    ("conf/a.conf", b"old a\n", 0o644),
    ("conf/sub/b.conf", b"old b\n", 0o640),
];
const NEW: [(&str, &[u8], u32); 3] = [
    ("app/app", b"#!/bin/sh\necho new app\n", 0o755),
    ("conf/a.conf", b"new a\n", 0o644),
    ("conf/sub/b.conf", b"new b\n", 0o600),
];

fn fx(conf_extra: Value) -> Option<Fx> {
    let ws = Workspace::new();
    let nginx = ws.nginx()?;
    let api = FakeDeviceApi::start();
    for (rel, data, mode) in OLD {
        write_file(&ws.root().join(rel), data, mode);
    }
    let app = ws.root().join("app/app");
    let conf = ws.root().join("conf");
    let mut conf_module = json!({"name": "conf", "src": "conf", "dst": conf.display().to_string()});
    if let (Some(m), Some(extra)) = (conf_module.as_object_mut(), conf_extra.as_object()) {
        m.extend(extra.clone());
    }
    let manifest = manifest(
        V,
        vec![
            json!({"name": "app", "src": "bin/app", "dst": app.display().to_string()}),
            conf_module,
        ],
    );
    let src = ws.path().join("src");
    pkgkit::package_dir(
        &src,
        &manifest,
        &[
            ("bin/app", NEW[0].1, NEW[0].2),
            ("conf/a.conf", NEW[1].1, NEW[1].2),
            ("conf/sub/b.conf", NEW[2].1, NEW[2].2),
        ],
    );
    Some(Fx {
        ws,
        api,
        nginx,
        app,
        conf,
        src,
    })
}

impl Fx {
    /// Every destination holds exactly `files` (content and mode).
    #[track_caller]
    fn assert_files(&self, files: &[(&str, &[u8], u32)], what: &str) {
        for (rel, data, mode) in files {
            let p = self.ws.root().join(rel);
            assert_eq!(
                std::fs::read(&p).unwrap(),
                *data,
                "{what}: content of {}",
                p.display()
            );
            assert_eq!(mode_of(&p), *mode, "{what}: mode of {}", p.display());
        }
        assert!(self.app.exists() && self.conf.is_dir());
    }

    /// The daemon, with `toml` added to its config (no settle time: these modules run no
    /// process).
    fn daemon(&self, toml: &str) -> Daemon {
        Daemon::start(
            &self.ws,
            &self.api,
            DaemonOptions {
                extra_toml: format!("settle_s = 0\n{toml}"),
                ..Default::default()
            },
        )
    }

    /// Serves `bytes`, sends the `/download` body `packed` describes, then `/update`; the
    /// final /progress.
    fn install(&self, d: &Daemon, packed: &Value, bytes: &[u8]) -> Value {
        let name = packed["package_name"].as_str().unwrap();
        let url = self.nginx.put(name, bytes);
        d.post_download(&download_body(packed, &url));
        d.wait_stage("toInstall", Duration::from_secs(30));
        d.post_update(packed["version"].as_str().unwrap());
        d.wait_outcome()
    }

    /// `pack` into the workspace; its JSON line and the package's bytes.
    fn pack(&self, name: &str, key: Option<&Path>) -> (Value, Vec<u8>) {
        let out = self.ws.path().join(name);
        let packed = pack(&self.src, &out, key);
        (packed, std::fs::read(&out).unwrap())
    }
}

/// The `/download` body of a package that was not made by `pack` (a tampered one).
fn describe(name: &str, bytes: &[u8]) -> Value {
    json!({"version": V, "package_name": name, "package_size": bytes.len(),
           "package_md5": md5_hex(bytes)})
}

#[track_caller]
fn assert_refused(p: &Value, needle: &str) {
    assert_eq!(stage_of(p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("INVALID_PACKAGE: "), "{p}");
    assert!(err.contains(needle), "error should mention `{needle}`: {p}");
}

#[track_caller]
fn assert_success(p: &Value, d: &Daemon) {
    assert_eq!(stage_of(p), "success", "{p}\n{}", d.output());
}

/// 8.6 + 8.7: `pack --key` makes a package the daemon installs with `require_signature`,
/// using the JSON line pack printed as the `/download` body.
#[test]
fn contract_8_6_signed_package_from_pack_installs_with_require_signature() {
    let Some(f) = fx(json!({})) else { return };
    let (key, public) = keygen(f.ws.path(), "signing.pem");
    let (packed, bytes) = f.pack("signed-3.1.4.zip", Some(&key));
    assert_eq!(packed["version"], V);
    assert_eq!(packed["package_name"], "signed-3.1.4.zip");
    assert_eq!(packed["package_size"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(packed["package_md5"], md5_hex(&bytes));
    let names: Vec<String> = entries(&bytes).into_iter().map(|e| e.0).collect();
    assert!(names.contains(&"manifest.sig".to_string()), "{names:?}");

    let d = f.daemon(&format!(
        "trusted_keys = [\"{public}\"]\nrequire_signature = true\n"
    ));
    let p = f.install(&d, &packed, &bytes);
    assert_success(&p, &d);
    f.assert_files(&NEW, "after the signed install");
}

/// 8.6 with `require_signature = true`: unsigned, signed by another key, a tampered entry
/// (ZIP rebuilt, outer MD5 right), and a signed `sha256` map missing an entry are each
/// refused with INVALID_PACKAGE, and no destination file changes.
#[test]
fn contract_8_6_unsigned_wrong_key_tampered_and_incomplete_packages_are_refused() {
    let Some(f) = fx(json!({})) else { return };
    let (key, public) = keygen(f.ws.path(), "signing.pem");
    let (other, _) = keygen(f.ws.path(), "other.pem");
    let d = f.daemon(&format!(
        "trusted_keys = [\"{public}\"]\nrequire_signature = true\n"
    ));

    let (packed, bytes) = f.pack("unsigned.zip", None);
    assert_refused(&f.install(&d, &packed, &bytes), "not signed");
    f.assert_files(&OLD, "unsigned package");

    let (packed, bytes) = f.pack("other-key.zip", Some(&other));
    assert_refused(&f.install(&d, &packed, &bytes), "not verified");
    f.assert_files(&OLD, "package signed by an untrusted key");

    // The last file deployed is changed; manifest.json and manifest.sig are untouched.
    let (_, signed) = f.pack("signed.zip", Some(&key));
    let mut es = entries(&signed);
    let last = es.iter_mut().find(|e| e.0 == "conf/sub/b.conf").unwrap();
    last.1 = b"evil b\n".to_vec();
    let tampered = rebuild(&es);
    let p = f.install(&d, &describe("tampered.zip", &tampered), &tampered);
    assert_refused(&p, "sha256");
    assert!(
        p["data"]["error"]
            .as_str()
            .unwrap()
            .contains("conf/sub/b.conf"),
        "{p}"
    );
    f.assert_files(&OLD, "tampered entry");

    // A correctly signed manifest whose map lacks a deployed entry.
    let mut es = entries(&signed);
    let m = es.iter_mut().find(|e| e.0 == "manifest.json").unwrap();
    let mut manifest: Value = serde_json::from_slice(&m.1).unwrap();
    manifest["sha256"]
        .as_object_mut()
        .unwrap()
        .remove("conf/a.conf")
        .expect("pack put conf/a.conf in the map");
    m.1 = serde_json::to_vec(&manifest).unwrap();
    let sig = SigningKey::from_pem(&std::fs::read(&key).unwrap())
        .unwrap()
        .sign_manifest(&m.1);
    es.iter_mut().find(|e| e.0 == "manifest.sig").unwrap().1 = sig.into_bytes();
    let incomplete = rebuild(&es);
    let p = f.install(&d, &describe("incomplete.zip", &incomplete), &incomplete);
    assert_refused(&p, "has no sha256");
    f.assert_files(&OLD, "sha256 map missing an entry");

    // The genuine package still installs after all that.
    let p = f.install(&d, &describe("signed.zip", &signed), &signed);
    assert_success(&p, &d);
    f.assert_files(&NEW, "genuine package");
}

/// 8.6 with keys but `require_signature = false`: a package made by `pack` without `--key`
/// installs as before, a present signature that no trusted key verifies is refused.
#[test]
fn contract_8_6_optional_signature_unsigned_installs_bad_signature_refused() {
    let Some(f) = fx(json!({})) else { return };
    let (_, public) = keygen(f.ws.path(), "signing.pem");
    let (other, _) = keygen(f.ws.path(), "other.pem");
    let d = f.daemon(&format!("trusted_keys = [\"{public}\"]\n"));

    let (packed, bytes) = f.pack("other-key.zip", Some(&other));
    assert_refused(&f.install(&d, &packed, &bytes), "not verified");
    f.assert_files(&OLD, "badly signed package");

    let (packed, bytes) = f.pack("unsigned.zip", None);
    let p = f.install(&d, &packed, &bytes);
    assert_success(&p, &d);
    f.assert_files(&NEW, "unsigned package");
}

/// 8.6 and 8.7 with no keys configured: `manifest.sig` is ignored, so a package signed by any
/// key installs, through the `/download` body pack printed.
#[test]
fn contract_8_6_without_keys_a_signature_is_ignored() {
    let Some(f) = fx(json!({})) else { return };
    let (someone, _) = keygen(f.ws.path(), "someone.pem");
    let d = f.daemon("");
    let (packed, bytes) = f.pack("pkg.zip", Some(&someone));
    let p = f.install(&d, &packed, &bytes);
    assert_success(&p, &d);
    f.assert_files(&NEW, "package signed by an unknown key, no keys configured");
}

/// 8.8: string post_cmds (a pipe and `&&`) run through `/bin/sh -c` after deployment (they
/// read the new file); a failing string command rolls the installation back.
#[test]
fn contract_8_8_string_post_cmds_run_after_deployment_and_failure_rolls_back() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("post-cmd-ran");
    let a_conf = "ROOT/conf/a.conf";
    let cmd = format!(
        "tr a-z A-Z < {a_conf} | tee '{}' > /dev/null && echo done >> '{}'",
        marker.display(),
        marker.display()
    );
    let Some(mut f) = fx(json!({ "post_cmds": [cmd] })) else {
        return;
    };
    // The command names the destination, known only now.
    let m = f.src.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("ROOT", &f.ws.root().display().to_string())).unwrap();
    let d = f.daemon("");
    let (packed, bytes) = f.pack("strings.zip", None);
    let p = f.install(&d, &packed, &bytes);
    assert_success(&p, &d);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "NEW A\ndone\n");
    f.assert_files(&NEW, "after the string post_cmds");

    // Version 2: new files and a string command whose pipeline fails after an `&&`.
    let src2 = f.ws.path().join("src2");
    let manifest2 = manifest(
        "3.1.5",
        vec![
            json!({"name": "app", "src": "bin/app", "dst": f.app.display().to_string()}),
            json!({"name": "conf", "src": "conf", "dst": f.conf.display().to_string(),
                   "post_cmds": [["true"], "echo one | grep -q one && echo two | grep -q three"]}),
        ],
    );
    pkgkit::package_dir(
        &src2,
        &manifest2,
        &[
            ("bin/app", b"app v2\n", 0o755),
            ("conf/a.conf", b"a v2\n", 0o644),
            ("conf/sub/b.conf", b"b v2\n", 0o644),
        ],
    );
    f.src = src2;
    let (packed, bytes) = f.pack("strings2.zip", None);
    let p = f.install(&d, &packed, &bytes);
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{p}");
    f.assert_files(&NEW, "rolled back after the failing string command");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "NEW A\ndone\n");
}
