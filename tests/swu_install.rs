//! SWU envelopes wherever a package goes (docs/API.md 9.3), with the real binary: `pack --out
//! X.swu` writes one and `verify` checks it; the daemon downloads and installs one (signed,
//! under `require_signature = true`), and refuses a tampered image, an image of another type,
//! two images and a missing member with `INVALID_PACKAGE` naming what is wrong.

mod common;
mod pkgkit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::stage_of;
use common::*;
use pkgkit::{keygen, tool, verify};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tope_updater::download::file::file_url_of;

const V: &str = "4.5.6";
const BLOB_SEED: u64 = 23;
const BLOB_LEN: usize = 300 * 1024;

/// A package directory under `dir/src` deploying `app/bin` and a 300 KiB blob under `root`.
fn package_dir(dir: &Path, root: &Path) -> PathBuf {
    let src = dir.join("src");
    let m = manifest(
        V,
        vec![json!({"name": "app", "src": "app", "dst": root.join("app").display().to_string()})],
    );
    let blob = pseudo_random_bytes(BLOB_LEN, BLOB_SEED);
    pkgkit::package_dir(
        &src,
        &m,
        &[
            ("app/bin", b"#!/bin/sh\necho v4\n", 0o755),
            ("app/data/blob", &blob, 0o644),
        ],
    );
    src
}

/// `pack <src> --out <out> [--key K] [extra...]`, asserting success; its JSON line.
fn pack(src: &Path, out: &Path, key: Option<&Path>, extra: &[&str]) -> Value {
    let mut args: Vec<std::ffi::OsString> =
        vec!["pack".into(), src.into(), "--out".into(), out.into()];
    if let Some(k) = key {
        args.extend(["--key".into(), k.into()]);
    }
    args.extend(extra.iter().map(Into::into));
    let r = tool(&args);
    assert!(r.ok, "pack failed: {r:?}");
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// docs/API.md 9.3: `pack --out X.swu` writes an envelope (the JSON line describes it: name,
/// size, MD5), with `--board` and `--hardware-compatibility` in `sw-description`, leaves no
/// temporary behind, and `verify` checks it, saying it is an envelope and for which board.
/// `--board` without a `.swu` output is a usage error.
#[test]
fn api_9_3_pack_writes_an_envelope_that_verify_accepts() {
    let d = tempfile::tempdir().unwrap();
    let src = package_dir(d.path(), Path::new("/opt/tope"));
    let (key, public) = keygen(d.path(), "k.pem");
    let outdir = d.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("printer-4.5.6.swu");
    let packed = pack(
        &src,
        &out,
        Some(&key),
        &[
            "--board",
            "tope-mk4",
            "--hardware-compatibility",
            "1.0",
            "--hardware-compatibility",
            "2.0",
        ],
    );
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(
        packed,
        json!({"version": V, "package_name": "printer-4.5.6.swu",
               "package_size": bytes.len(), "package_md5": md5_hex(&bytes)}),
        "the line describes the envelope file"
    );
    assert!(bytes.starts_with(b"070702"), "a crc cpio archive");
    assert_eq!(
        files_in(&outdir),
        ["printer-4.5.6.swu"],
        "no temporary left"
    );
    let env = tope_updater::swu::open(&out).unwrap();
    assert_eq!(env.filename, "printer-4.5.6.zip");
    assert_eq!(env.board.as_deref(), Some("tope-mk4"));
    assert_eq!(env.hardware_compatibility, ["1.0", "2.0"]);

    let r = verify(&out, &[&public]);
    assert!(r.ok, "{r:?}");
    for what in [
        format!("version {V}"),
        format!("signed by {public}"),
        "SWU envelope holding printer-4.5.6.zip".into(),
        "board tope-mk4".into(),
        "hardware compatibility 1.0, 2.0".into(),
    ] {
        assert!(r.stdout.contains(&what), "{what:?} missing: {r:?}");
    }

    // Only with .swu; nothing is written.
    let zip = outdir.join("p.zip");
    for extra in [["--board", "tope-mk4"], ["--hardware-compatibility", "1.0"]] {
        let r = tool(&[
            "pack".as_ref(),
            src.as_os_str(),
            "--out".as_ref(),
            zip.as_os_str(),
            extra[0].as_ref(),
            extra[1].as_ref(),
        ]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains(".swu"), "{r:?}");
    }
    // A board the writer refuses is refused before packing.
    let r = tool(&[
        "pack".as_ref(),
        src.as_os_str(),
        "--out".as_ref(),
        outdir.join("bad.swu").as_os_str(),
        "--board".as_ref(),
        "9 lives".as_ref(),
    ]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("board"), "{r:?}");
    assert_eq!(
        files_in(&outdir),
        ["printer-4.5.6.swu"],
        "nothing else written"
    );
}

/// One daemon for a test: `require_signature` with the test's key when given.
struct Fx {
    ws: Workspace,
    _api: FakeDeviceApi,
    d: Daemon,
}

fn fx(extra_toml: &str) -> Fx {
    fx_in(Workspace::new(), extra_toml)
}

/// A daemon in `ws` (started after nginx, whose CA it trusts, when the test serves one).
fn fx_in(ws: Workspace, extra_toml: &str) -> Fx {
    let api = FakeDeviceApi::start();
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: format!("settle_s = 0\n{extra_toml}"),
            ..DaemonOptions::default()
        },
    );
    Fx { ws, _api: api, d }
}

impl Fx {
    /// `/download` of the file at `path` through a `file://` URL (docs/API.md 9.2), then
    /// `/update`; the outcome's /progress.
    fn install_file(&self, path: &Path) -> Value {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        self.d.post_download(&json!({
            "version": V, "package_url": file_url_of(path), "package_name": name,
            "package_size": bytes.len(), "package_md5": md5_hex(&bytes),
        }));
        self.d.wait_stage("toInstall", Duration::from_secs(30));
        self.d.post_update(V);
        self.d.wait_outcome()
    }
}

fn assert_refused(p: &Value, what: &str) {
    assert_eq!(stage_of(p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("INVALID_PACKAGE: "), "{p}");
    assert!(err.contains(what), "the error names {what:?}: {p}");
}

/// docs/API.md 9.3 with 8.6: the daemon downloads an envelope `pack` wrote (over HTTPS from
/// nginx) and installs it with `require_signature = true`: the inner package's signature is
/// what counts. The files are deployed.
#[test]
fn api_9_3_daemon_installs_a_signed_envelope_with_require_signature() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let d = tempfile::tempdir().unwrap();
    let (key, public) = keygen(d.path(), "k.pem");
    let f = fx_in(
        ws,
        &format!("trusted_keys = [\"{public}\"]\nrequire_signature = true\n"),
    );
    let src = package_dir(d.path(), &f.ws.root());
    let out = d.path().join("printer-4.5.6.swu");
    let packed = pack(&src, &out, Some(&key), &["--board", "tope-mk4"]);
    let bytes = std::fs::read(&out).unwrap();
    let url = nginx.put("printer-4.5.6.swu", &bytes);
    f.d.post_download(&pkgkit::download_body(&packed, &url));
    f.d.wait_stage("toInstall", Duration::from_secs(30));
    f.d.post_update(V);
    let p = f.d.wait_outcome();
    assert_eq!(stage_of(&p), "success", "{p}");
    let app = f.ws.root().join("app");
    assert_eq!(
        std::fs::read(app.join("bin")).unwrap(),
        b"#!/bin/sh\necho v4\n"
    );
    assert_eq!(
        std::fs::read(app.join("data/blob")).unwrap(),
        pseudo_random_bytes(BLOB_LEN, BLOB_SEED)
    );
    assert_eq!(mode_of(&app.join("bin")), 0o755);

    // The same envelope around an unsigned package is refused: the envelope is no signature.
    std::fs::write(src.join("app/bin"), b"#!/bin/sh\necho unsigned\n").unwrap();
    let out = d.path().join("unsigned.swu");
    let packed = pack(&src, &out, None, &["--board", "tope-mk4"]);
    let url = nginx.put("unsigned.swu", &std::fs::read(&out).unwrap());
    f.d.post_download(&pkgkit::download_body(&packed, &url));
    f.d.wait_stage("toInstall", Duration::from_secs(30));
    f.d.post_update(V);
    assert_refused(&f.d.wait_outcome(), "not signed");
    assert_eq!(
        std::fs::read(app.join("bin")).unwrap(),
        b"#!/bin/sh\necho v4\n"
    );
}

/// docs/API.md 9.3: a byte of the image flipped (nothing else fixed; the MD5 announced is the
/// tampered file's) is refused as `INVALID_PACKAGE` naming the sha256, by `verify` and by the
/// daemon, and nothing is deployed; the untampered envelope then installs (by a `file://` URL).
#[test]
fn api_9_3_tampered_image_is_refused_naming_the_sha256() {
    let d = tempfile::tempdir().unwrap();
    let f = fx("");
    let src = package_dir(d.path(), &f.ws.root());
    let good = d.path().join("good.swu");
    pack(&src, &good, None, &[]);
    let mut bytes = std::fs::read(&good).unwrap();
    let env = tope_updater::swu::open(&good).unwrap();
    // A byte in the middle of the blob's data (stored or deflated), inside the ZIP member.
    let at = (env.offset + env.len / 2) as usize;
    bytes[at] ^= 0x01;
    let bad = d.path().join("bad.swu");
    std::fs::write(&bad, &bytes).unwrap();

    let r = verify(&bad, &[]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("INVALID_PACKAGE: SWU envelope"), "{r:?}");
    assert!(r.stderr.contains("sha256 mismatch"), "{r:?}");

    let p = f.install_file(&bad);
    assert_refused(&p, "sha256 mismatch");
    assert!(!f.ws.root().join("app").exists(), "nothing deployed");

    let p = f.install_file(&good);
    assert_eq!(stage_of(&p), "success", "{p}");
    assert!(f.ws.root().join("app/data/blob").exists());
}

/// One `newc` cpio member (the trailer with mode 0).
fn newc(name: &str, data: &[u8]) -> Vec<u8> {
    let mode: u32 = if name == "TRAILER!!!" { 0 } else { 0o100644 };
    common::cpio::member("070701", name, data, mode)
}

/// An envelope of `images` (libconfig image groups) and `members` after `sw-description`.
fn hand_envelope(images: &[String], members: &[(&str, &[u8])]) -> Vec<u8> {
    let desc = format!(
        "software = {{ version = \"{V}\"; images: ( {} ); }};\n",
        images.join(", ")
    );
    let mut out = newc("sw-description", desc.as_bytes());
    for (name, data) in members {
        out.extend(newc(name, data));
    }
    out.extend(newc("TRAILER!!!", b""));
    out
}

fn image(filename: &str, kind: &str, zip: &[u8]) -> String {
    let sha: String = Sha256::digest(zip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{{ filename = \"{filename}\"; type = \"{kind}\"; sha256 = \"{sha}\"; }}")
}

/// docs/API.md 9.3: an envelope whose image has another type, one with two images and one
/// whose image member is missing are refused by the daemon with `INVALID_PACKAGE` naming
/// what is wrong; nothing is deployed. The same ZIP in a well-formed hand-built `newc`
/// envelope installs, so each refusal is the envelope's fault.
#[test]
fn api_9_3_foreign_double_and_missing_images_are_invalid_package() {
    let d = tempfile::tempdir().unwrap();
    let f = fx("");
    let src = package_dir(d.path(), &f.ws.root());
    let zip_path = d.path().join("p.zip");
    pack(&src, &zip_path, None, &[]);
    let zip = std::fs::read(&zip_path).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "foreign.swu",
            hand_envelope(&[image("p.zip", "rawfile", &zip)], &[("p.zip", &zip)]),
            "has type \"rawfile\"",
        ),
        (
            "two.swu",
            hand_envelope(
                &[
                    image("p.zip", "tope-package", &zip),
                    image("q.zip", "tope-package", &zip),
                ],
                &[("p.zip", &zip), ("q.zip", &zip)],
            ),
            "lists 2 images",
        ),
        (
            "missing.swu",
            hand_envelope(&[image("p.zip", "tope-package", &zip)], &[("q.zip", &zip)]),
            "image \"p.zip\" named in sw-description is missing",
        ),
    ];
    for (name, bytes, what) in cases {
        let path = d.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let p = f.install_file(&path);
        assert_refused(&p, what);
        assert!(
            !f.ws.root().join("app").exists(),
            "{name}: nothing deployed"
        );
    }
    let path = d.path().join("fine.swu");
    let fine = hand_envelope(&[image("p.zip", "tope-package", &zip)], &[("p.zip", &zip)]);
    std::fs::write(&path, fine).unwrap();
    let p = f.install_file(&path);
    assert_eq!(stage_of(&p), "success", "{p}");
    assert!(f.ws.root().join("app/bin").exists());
}

/// docs/API.md 9.3: the ZIP inside an envelope is read in place, never held in memory: the
/// daemon installing an envelope around a 40 MiB file grows its peak resident memory
/// (`VmHWM`) by far less than the image (it grew by more than the image with the image read
/// into memory).
#[test]
fn api_9_3_envelope_installs_in_constant_memory() {
    const BIG: usize = 40 * 1024 * 1024;
    let d = tempfile::tempdir().unwrap();
    let f = fx("");
    let src = d.path().join("src");
    let dst = f.ws.root().join("big/blob");
    pkgkit::package_dir(
        &src,
        &manifest(
            V,
            vec![json!({"name": "big", "src": "blob", "dst": dst.display().to_string()})],
        ),
        &[("blob", &pseudo_random_bytes(BIG, 5), 0o644)],
    );
    let out = d.path().join("big.swu");
    pack(&src, &out, None, &[]);
    let pid = f.d.pid();
    let before = common::bench::proc_status_kib(pid, "VmHWM").expect("VmHWM");
    let p = f.install_file(&out);
    assert_eq!(stage_of(&p), "success", "{p}");
    let after = common::bench::proc_status_kib(pid, "VmHWM").expect("VmHWM");
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB for a {} KiB image",
        BIG / 1024
    );
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), BIG as u64);
}

/// docs/API.md 9.3 with 9.2: `tope-updater install X.swu` (a person at the printer with a USB
/// stick) reads the version from the package inside the envelope and installs it to `success`.
#[test]
fn api_9_3_install_command_takes_an_envelope_from_a_stick() {
    let d = tempfile::tempdir().unwrap();
    let f = fx("");
    let src = package_dir(d.path(), &f.ws.root());
    let stick = d.path().join("stick");
    std::fs::create_dir(&stick).unwrap();
    let swu = stick.join("update.swu");
    pack(&src, &swu, None, &["--board", "tope-mk4"]);
    let out = std::process::Command::new(common::daemon::BIN)
        .arg("install")
        .arg(&swu)
        .arg("--config")
        .arg(&f.d.config_path)
        .output()
        .expect("run tope-updater install");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.ends_with(&format!("installed version {V}\n")),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(f.ws.root().join("app/data/blob")).unwrap(),
        pseudo_random_bytes(BLOB_LEN, BLOB_SEED)
    );
}
