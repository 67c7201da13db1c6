//! The commands for package authors, run as a person would (docs/API.md section 8.7, and the
//! manifest rules of 8.8 they share with the daemon): `keygen`, `pack`, `verify`.

mod common;
mod pkgkit;

use std::path::Path;

use common::*;
use pkgkit::{entries, keygen, pack, pack_run, verify};
use serde_json::{json, Value};

fn simple_manifest(extra: Value) -> Value {
    let mut m = json!({"name": "app", "src": "app", "dst": "/opt/tope/app"});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    manifest("1.0.0", vec![m])
}

fn app_dir(dir: &Path, extra: Value) {
    pkgkit::package_dir(
        dir,
        &simple_manifest(extra),
        &[
            ("app/bin/app", b"#!/bin/sh\necho app\n", 0o755),
            ("app/etc/app.conf", b"secret = 1\n", 0o600),
            ("app/share/readme", b"hello\n", 0o644),
        ],
    );
}

#[test]
fn contract_8_7_keygen_writes_a_0600_key_and_prints_its_public_key() {
    let d = tempfile::tempdir().unwrap();
    let (key, public) = keygen(d.path(), "k.pem");
    assert_eq!(pkgkit::mode(&key), 0o600);
    assert_eq!(public.len(), 44, "base64 of 32 bytes: {public}");
    // The key signs, the printed public key verifies.
    app_dir(&d.path().join("src"), json!({}));
    let out = d.path().join("p.zip");
    pack(&d.path().join("src"), &out, Some(&key));
    let r = verify(&out, &[&public]);
    assert!(r.ok, "{r:?}");
    assert!(r.stdout.contains(&format!("signed by {public}")), "{r:?}");

    // Never over an existing file.
    let before = std::fs::read(&key).unwrap();
    let r = pkgkit::tool(&["keygen".as_ref(), "--out".as_ref(), key.as_os_str()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("already exists"), "{r:?}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn contract_8_7_verify_catches_zip_slip_and_a_wrong_key() {
    let d = tempfile::tempdir().unwrap();
    // Zip-slip: an entry named ../evil (written as XX/evil, then renamed in the bytes).
    let m = simple_manifest(json!({}));
    for (written, evil) in [("XX/evil", "../evil"), ("Xetc/evil", "/etc/evil")] {
        let mut zip = build_package(
            &m,
            &[
                Entry::file("app/x", b"x", 0o644),
                Entry::file(written, b"pwned", 0o644),
            ],
        );
        let n = replace_all(&mut zip, written.as_bytes(), evil.as_bytes());
        assert_eq!(n, 2, "the name is in the local and the central header");
        let p = d.path().join("slip.zip");
        std::fs::write(&p, &zip).unwrap();
        let r = verify(&p, &[]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("INVALID_PACKAGE"), "{r:?}");
        assert!(r.stderr.contains(evil), "the reason names the entry: {r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
    }

    // A wrong key; any one of several keys is enough; no key checks no signature.
    let (k1, pub1) = keygen(d.path(), "k1.pem");
    let (_, pub2) = keygen(d.path(), "k2.pem");
    app_dir(&d.path().join("src"), json!({}));
    let out = d.path().join("signed.zip");
    pack(&d.path().join("src"), &out, Some(&k1));
    let r = verify(&out, &[&pub2]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("INVALID_PACKAGE") && r.stderr.contains("not verified"),
        "{r:?}"
    );
    assert!(verify(&out, &[&pub2, &pub1]).ok);
    assert!(verify(&out, &[]).ok);
    let r = verify(&out, &["not-a-key"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("not-a-key"), "{r:?}");

    // verify reads every deployed byte: a tampered entry fails with or without a key.
    let mut es = entries(&std::fs::read(&out).unwrap());
    es.iter_mut().find(|e| e.0 == "app/share/readme").unwrap().1 = b"HELLO\n".to_vec();
    std::fs::write(&out, pkgkit::rebuild(&es)).unwrap();
    for keys in [vec![pub1.as_str()], vec![]] {
        let r = verify(&out, &keys);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(
            r.stderr.contains("app/share/readme") && r.stderr.contains("sha256"),
            "{r:?}"
        );
    }
}

fn replace_all(b: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    for i in 0..=b.len() - from.len() {
        if &b[i..i + from.len()] == from {
            b[i..i + from.len()].copy_from_slice(to);
            n += 1;
        }
    }
    n
}

#[test]
fn contract_8_7_pack_prints_the_download_body_keeps_modes_and_is_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    app_dir(&src, json!({}));
    let out = d.path().join("app-1.0.0.zip");
    let packed = pack(&src, &out, None);
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(
        packed,
        json!({"version": "1.0.0", "package_name": "app-1.0.0.zip",
               "package_size": bytes.len(), "package_md5": md5_hex(&bytes)})
    );
    let es = entries(&bytes);
    let got: Vec<(&str, u32)> = es.iter().map(|(n, _, m)| (n.as_str(), *m)).collect();
    assert_eq!(
        got,
        vec![
            ("app/bin/app", 0o755),
            ("app/etc/app.conf", 0o600),
            ("app/share/readme", 0o644),
            ("manifest.json", 0o644),
        ]
    );
    // Unsigned, manifest.json is packed exactly as written.
    assert_eq!(es[3].1, std::fs::read(src.join("manifest.json")).unwrap());
    assert!(verify(&out, &[]).ok);
    assert!(!d.path().join("app-1.0.0.zip.tmp").exists());

    // The same directory gives the same bytes, signed too (Ed25519 is deterministic).
    let again = d.path().join("again.zip");
    assert_eq!(
        pack(&src, &again, None)["package_md5"],
        packed["package_md5"]
    );
    let (key, _) = keygen(d.path(), "k.pem");
    let s1 = pack(&src, &d.path().join("s1.zip"), Some(&key));
    let s2 = pack(&src, &d.path().join("s2.zip"), Some(&key));
    assert_eq!(s1["package_md5"], s2["package_md5"]);
}

#[test]
fn contract_8_7_pack_refuses_links_and_manifests_the_daemon_would_refuse() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let out = d.path().join("p.zip");
    let refused = |r: &pkgkit::Run, needle: &str| {
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(
            r.stderr.contains(needle),
            "stderr should say `{needle}`: {r:?}"
        );
        assert!(r.stdout.is_empty(), "{r:?}");
        assert!(!out.exists(), "no package is left behind: {r:?}");
    };

    app_dir(&src, json!({}));
    std::os::unix::fs::symlink("/etc/passwd", src.join("app/share/passwd")).unwrap();
    refused(&pack_run(&src, &out, None, None), "symbolic link");
    std::fs::remove_file(src.join("app/share/passwd")).unwrap();

    // A misspelt key, named with the key probably meant (section 8.8).
    app_dir(&src, json!({"proces_name": "app"}));
    refused(
        &pack_run(&src, &out, None, None),
        "unknown key `proces_name` in module app (did you mean `process_name`?)",
    );

    // allowed_roots apply only with --config.
    app_dir(&src, json!({}));
    let cfg = d.path().join("updater.toml");
    std::fs::write(&cfg, "allowed_roots = [\"/srv/printer\"]\n").unwrap();
    refused(
        &pack_run(&src, &out, None, Some(&cfg)),
        "outside the allowed roots",
    );
    assert!(pack_run(&src, &out, None, None).ok);
    std::fs::remove_file(&out).unwrap();

    // A src that is not there, a key that is not a key, a name /download would refuse.
    std::fs::remove_dir_all(src.join("app")).unwrap();
    refused(&pack_run(&src, &out, None, None), "src");
    app_dir(&src, json!({}));
    let not_key = d.path().join("not-a-key.pem");
    std::fs::write(&not_key, "hello").unwrap();
    refused(&pack_run(&src, &out, Some(&not_key), None), "--key");
    // docs/API.md 9.6: a key that is a device or a FIFO is refused at once, never read.
    let fifo = d.path().join("key.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for key in [Path::new("/dev/zero"), fifo.as_path()] {
        refused(&pack_run(&src, &out, Some(key), None), "not a regular file");
    }
    let r = pack_run(&src, &d.path().join("p.zip.tmp"), None, None);
    assert_eq!(r.code, Some(1), "{r:?}");
}

#[test]
fn contract_8_8_pack_and_verify_accept_string_post_cmds() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    app_dir(
        &src,
        json!({"post_cmds": ["systemctl daemon-reload && echo ok | logger", ["/bin/true"]]}),
    );
    let out = d.path().join("p.zip");
    pack(&src, &out, None);
    let r = verify(&out, &[]);
    assert!(r.ok, "{r:?}");
    // An empty string command is refused, naming it.
    app_dir(&src, json!({"post_cmds": ["  "]}));
    let r = verify(&out, &[]);
    assert!(r.ok, "the old package is still fine: {r:?}");
    let r = pack_run(&src, &d.path().join("q.zip"), None, None);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("module app: post_cmds[0]"), "{r:?}");
}

/// Incompressible files are stored, the others deflated; both come back intact.
#[test]
fn pack_stores_what_does_not_shrink() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let noise = pseudo_random_bytes(300 * 1024, 3);
    let text = "a line of a configuration file, repeated\n".repeat(8000);
    pkgkit::package_dir(
        &src,
        &simple_manifest(json!({})),
        &[
            ("app/noise.bin", &noise, 0o644),
            ("app/text.conf", text.as_bytes(), 0o644),
        ],
    );
    let out = d.path().join("p.zip");
    pack(&src, &out, None);
    let mut a = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let method =
        |a: &mut zip::ZipArchive<std::fs::File>, n: &str| a.by_name(n).unwrap().compression();
    assert_eq!(
        method(&mut a, "app/noise.bin"),
        zip::CompressionMethod::Stored
    );
    assert_eq!(
        method(&mut a, "app/text.conf"),
        zip::CompressionMethod::Deflated
    );
    let es = entries(&std::fs::read(&out).unwrap());
    assert_eq!(es[0].1, noise);
    assert_eq!(es[1].1, text.as_bytes());
    assert!(verify(&out, &[]).ok);
}
