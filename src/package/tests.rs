//! Tests of the ZIP reader's rules and of planning, on ZIPs built here. The helpers are
//! shared with the deployment tests.

use super::archive::deploy_mode;
use super::*;
use crate::checksum::{Algorithm, Hasher};
use crate::error::{ErrorCode, OtaError};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

/// One entry of a test ZIP.
pub(crate) enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

pub(crate) fn build_zip(path: &Path, entries: &[E]) {
    let mut w = zip::ZipWriter::new(File::create(path).unwrap());
    for e in entries {
        match e {
            E::File(n, data, mode) => {
                let o = SimpleFileOptions::default()
                    .compression_method(CompressionMethod::Deflated)
                    .unix_permissions(*mode);
                w.start_file(*n, o).unwrap();
                w.write_all(data).unwrap();
            }
            E::Dir(n) => w.add_directory(*n, SimpleFileOptions::default()).unwrap(),
            E::Symlink(n, t) => w.add_symlink(*n, *t, SimpleFileOptions::default()).unwrap(),
        }
    }
    w.finish().unwrap();
}

pub(crate) fn manifest_json(version: &str, modules: &str) -> String {
    format!(r#"{{"version": "{version}", "modules": [{modules}]}}"#)
}

struct Fx {
    _d: tempfile::TempDir,
    zip: PathBuf,
    root: PathBuf,
}

fn fx() -> Fx {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    Fx {
        zip: d.path().join("p.zip"),
        root,
        _d: d,
    }
}

fn module(root: &Path, name: &str, src: &str, dst: &str) -> String {
    format!(
        r#"{{"name": "{name}", "src": "{src}", "dst": "{}/{dst}"}}"#,
        root.display()
    )
}

fn open(f: &Fx) -> Result<Package, OtaError> {
    open_package(
        &f.zip,
        "1.2.3",
        std::slice::from_ref(&f.root),
        Signatures::default(),
    )
    .map_err(OtaError::from)
}

fn err(f: &Fx) -> OtaError {
    open(f).unwrap_err()
}

/// Replace every occurrence of `from` by `to` (same length) in the file's bytes.
fn patch(path: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(path).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= b.len() {
        if &b[i..i + from.len()] == from {
            b[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
        i += 1;
    }
    assert!(hits > 0);
    std::fs::write(path, b).unwrap();
}

#[test]
fn file_and_directory_src_are_planned_with_modes() {
    let f = fx();
    let m = manifest_json(
        "1.2.3",
        &[
            module(&f.root, "api", "mods/api/api-bin", "api/api-bin"),
            module(&f.root, "web", "mods/web/", "web"),
        ]
        .join(","),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::Dir("mods/"),
            E::File("mods/api/api-bin", b"#!/bin/sh\n", 0o755),
            E::Dir("mods/web/"),
            E::Dir("mods/web/static/"),
            E::File("mods/web/index.html", b"<html>", 0o644),
            E::File("mods/web/static/app.js", b"js", 0o600),
        ],
    );
    let mut p = open(&f).unwrap();
    assert_eq!(p.manifest.modules.len(), 2);
    let got: Vec<(usize, PathBuf, u32, u64)> = p
        .files
        .iter()
        .map(|x| (x.module, x.dst.clone(), x.mode, x.size))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, f.root.join("api/api-bin"), 0o755, 10),
            (1, f.root.join("web/index.html"), 0o644, 6),
            (1, f.root.join("web/static/app.js"), 0o600, 2),
        ]
    );
    let pf = p.files[1].clone();
    let mut out = Vec::new();
    assert_eq!(p.extract_to(&pf, &mut out).unwrap(), 6);
    assert_eq!(out, b"<html>");
}

#[test]
fn unsafe_entries_are_invalid_package() {
    let cases: Vec<(&str, Vec<E>)> = vec![
        ("symlink", vec![E::Symlink("mods/a", "/etc/passwd")]),
        ("absolute", vec![E::File("Xetc/evil", b"x", 0o644)]),
        ("dotdot", vec![E::File("XX/evil", b"x", 0o644)]),
        ("inner dotdot", vec![E::File("a/XX/b", b"x", 0o644)]),
        ("backslash", vec![E::File("aXb", b"x", 0o644)]),
        (
            "duplicate",
            vec![E::File("dup1", b"x", 0o644), E::File("dup2", b"y", 0o644)],
        ),
        (
            "same canonical",
            vec![E::File("a//b", b"x", 0o644), E::File("a/b", b"y", 0o644)],
        ),
        (
            "file and dir",
            vec![E::File("a", b"x", 0o644), E::File("a/b", b"y", 0o644)],
        ),
    ];
    for (what, mut entries) in cases {
        let f = fx();
        let m = manifest_json("1.2.3", &module(&f.root, "a", "manifest.json", "m"));
        entries.push(E::File("manifest.json", m.as_bytes(), 0o644));
        build_zip(&f.zip, &entries);
        match what {
            "absolute" => patch(&f.zip, b"Xetc/evil", b"/etc/evil"),
            "dotdot" => patch(&f.zip, b"XX/evil", b"../evil"),
            "inner dotdot" => patch(&f.zip, b"a/XX/b", b"a/../b"),
            "backslash" => patch(&f.zip, b"aXb", b"a\\b"),
            "duplicate" => patch(&f.zip, b"dup2", b"dup1"),
            _ => {}
        }
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidPackage, "{what}: {e}");
    }
}

#[test]
fn overlapping_entries_are_invalid_package() {
    let f = fx();
    let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
    let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
    w.start_file("manifest.json", SimpleFileOptions::default())
        .unwrap();
    w.write_all(m.as_bytes()).unwrap();
    w.start_file("x", SimpleFileOptions::default()).unwrap();
    w.write_all(b"data").unwrap();
    w.shallow_copy_file("x", "y").unwrap();
    w.finish().unwrap();
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(e.detail.contains("overlap"), "{e}");
}

#[test]
fn not_a_zip_or_missing_is_invalid_package() {
    let f = fx();
    std::fs::write(&f.zip, b"this is not a zip").unwrap();
    assert_eq!(err(&f).code, ErrorCode::InvalidPackage);
    std::fs::remove_file(&f.zip).unwrap();
    assert_eq!(err(&f).code, ErrorCode::InvalidPackage);
}

#[test]
fn zip_bomb_ratio_is_refused() {
    let f = fx();
    let m = manifest_json("1.2.3", &module(&f.root, "a", "big", "big"));
    let zeros = vec![0u8; 8 * 1024 * 1024];
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("big", &zeros, 0o644),
        ],
    );
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(e.detail.contains("ratio"), "{e}");
}

#[test]
fn manifest_problems_are_invalid_manifest() {
    let f = fx();
    build_zip(&f.zip, &[E::File("x", b"x", 0o644)]);
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidManifest);
    assert!(e.detail.contains("not found"), "{e}");

    // Not at the root.
    let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
    build_zip(
        &f.zip,
        &[
            E::File("sub/manifest.json", m.as_bytes(), 0o644),
            E::File("x", b"x", 0o644),
        ],
    );
    assert_eq!(err(&f).code, ErrorCode::InvalidManifest);

    // Incompressible, so that the zip-bomb rule does not fire first.
    let mut x: u32 = 1;
    let big: Vec<u8> = (0..=MAX_MANIFEST_BYTES)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    build_zip(&f.zip, &[E::File("manifest.json", &big, 0o644)]);
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidManifest);
    assert!(e.detail.contains("more than"), "{e}");

    let cases = [
        (
            manifest_json("1.2.4", &module(&f.root, "a", "x", "x")),
            "differs",
        ),
        (
            manifest_json("1.2.3", &module(&f.root, "a", "nope", "x")),
            "src nope not found",
        ),
        (
            manifest_json("1.2.3", &module(&f.root, "a", "../x", "x")),
            "src",
        ),
        (
            manifest_json("1.2.3", &module(&f.root, "a", "x", "../x")),
            "dst",
        ),
        (
            manifest_json(
                "1.2.3",
                r#"{"name": "a", "src": "x", "dst": "/etc/passwd"}"#,
            ),
            "outside",
        ),
        (
            manifest_json(
                "1.2.3",
                &module(&f.root, "a", "x", "x").replace("\"dst\"", "\"dts\""),
            ),
            "dts",
        ),
        (
            manifest_json(
                "1.2.3",
                &[
                    module(&f.root, "a", "x", "x"),
                    module(&f.root, "a", "x", "y"),
                ]
                .join(","),
            ),
            "module a: name",
        ),
    ];
    for (m, needle) in cases {
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("x", b"x", 0o644),
            ],
        );
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidManifest, "{m}: {e}");
        assert!(e.detail.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn planned_destinations_may_not_collide() {
    let f = fx();
    let m = manifest_json(
        "1.2.3",
        &[
            module(&f.root, "a", "d", "t"),
            module(&f.root, "b", "x", "t/y"),
        ]
        .join(","),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("d/y", b"1", 0o644),
            E::File("x", b"2", 0o644),
        ],
    );
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidManifest, "{e}");
    assert!(e.detail.contains("both write"), "{e}");
}

#[test]
fn corrupted_data_fails_crc_on_extract() {
    let f = fx();
    let m = manifest_json("1.2.3", &module(&f.root, "a", "data", "data"));
    let payload = b"PAYLOAD-PAYLOAD-PAYLOAD-PAYLOAD!".repeat(4);
    {
        let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
        w.start_file("manifest.json", SimpleFileOptions::default())
            .unwrap();
        w.write_all(m.as_bytes()).unwrap();
        let o = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        w.start_file("data", o).unwrap();
        w.write_all(&payload).unwrap();
        w.finish().unwrap();
    }
    patch(&f.zip, b"PAYLOAD!", b"PAYLOAD?");
    let mut p = open(&f).unwrap();
    let pf = p.files[0].clone();
    let mut out = Vec::new();
    let e = OtaError::from(p.extract_to(&pf, &mut out).unwrap_err());
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
}

#[test]
fn space_is_checked_per_filesystem() {
    let f = fx();
    let pf = |size| PlannedFile {
        module: 0,
        entry: 0,
        dst: f.root.join("new/dir/file"),
        mode: 0o644,
        size,
    };
    check_space(&[pf(10)]).unwrap();
    let e = OtaError::from(check_space(&[pf(u64::MAX / 4), pf(u64::MAX / 4)]).unwrap_err());
    assert_eq!(e.code, ErrorCode::DiskFull, "{e}");
    assert_eq!(existing_ancestor(&f.root.join("new/dir/file")), f.root);
}

#[test]
fn modes_drop_special_bits() {
    assert_eq!(deploy_mode(Some(0o104755)), 0o755);
    // docs/API.md 9.6: setuid, setgid, sticky dropped, group and other write masked.
    assert_eq!(deploy_mode(Some(0o106777)), 0o755);
    assert_eq!(deploy_mode(Some(0o101666)), 0o644);
    assert_eq!(deploy_mode(Some(0o100770)), 0o750);
    assert_eq!(deploy_mode(Some(0o100000)), DEFAULT_MODE);
    assert_eq!(deploy_mode(None), DEFAULT_MODE);
    assert!(is_semver("0.10.200"));
    assert!(!is_semver("1.2.3.4"));
    assert_eq!(canonical_rel("./a//b/"), Some("a/b".into()));
    assert_eq!(canonical_rel("a/../b"), None);
}

/// A package of one module (`data/` to `<root>/data`) with two files, its manifest carrying
/// `extra` top-level JSON (e.g. a sha256 map), and `sig` as manifest.sig.
/// Makes `manifest.sig` from the manifest's bytes.
type Signer<'a> = &'a dyn Fn(&[u8]) -> String;

fn signed_fx(f: &Fx, extra: &str, sig: Option<Signer>, b_data: &[u8]) {
    let m = format!(
        r#"{{"version": "1.2.3", "modules": [{}]{extra}}}"#,
        module(&f.root, "data", "data", "data")
    );
    let mut entries = vec![
        E::File("data/a", b"file a", 0o644),
        E::File("data/b", b_data, 0o755),
        E::File("manifest.json", m.as_bytes(), 0o644),
    ];
    let s = sig.map(|s| s(m.as_bytes()));
    if let Some(s) = &s {
        entries.push(E::File("manifest.sig", s.as_bytes(), 0o644));
    }
    build_zip(&f.zip, &entries);
}

fn sha_hex(data: &[u8]) -> String {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(data);
    h.finalize().to_hex()
}

fn full_map() -> String {
    format!(
        r#", "sha256": {{"data/a": "{}", "data/b": "{}"}}"#,
        sha_hex(b"file a"),
        sha_hex(b"file b")
    )
}

fn open_with(f: &Fx, keys: &[PublicKey], require: bool) -> Result<Package, OtaError> {
    let signatures = Signatures {
        trusted_keys: keys,
        require_signature: require,
    };
    open_package(&f.zip, "1.2.3", std::slice::from_ref(&f.root), signatures).map_err(OtaError::from)
}

/// Extract every planned file; the first error.
fn extract_all(p: &mut Package) -> Result<(), OtaError> {
    for f in p.files.clone() {
        p.extract_to(&f, &mut std::io::sink())?;
    }
    Ok(())
}

#[test]
fn contract_8_6_signed_package_opens_and_every_entry_is_hashed() {
    let f = fx();
    let key = SigningKey::generate().unwrap().0;
    let sign = |m: &[u8]| key.sign_manifest(m);
    signed_fx(&f, &full_map(), Some(&sign), b"file b");
    let mut p = open_with(&f, &[key.public_key()], true).unwrap();
    assert_eq!(p.signed_by, Some(key.public_key()));
    extract_all(&mut p).unwrap();

    // The same bytes in a tampered entry: the signature still verifies, extraction fails
    // after the last byte, naming the entry.
    signed_fx(&f, &full_map(), Some(&sign), b"evil b");
    let mut p = open_with(&f, &[key.public_key()], true).unwrap();
    let e = extract_all(&mut p).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(
        e.detail.contains("data/b") && e.detail.contains("sha256"),
        "{e}"
    );

    // Signed, but the map lacks a deployed entry.
    let partial = format!(r#", "sha256": {{"data/a": "{}"}}"#, sha_hex(b"file a"));
    signed_fx(&f, &partial, Some(&sign), b"file b");
    let e = open_with(&f, &[key.public_key()], false).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(
        e.detail.contains("data/b") && e.detail.contains("no sha256"),
        "{e}"
    );
    // Unsigned (no keys), the same partial map is fine: only named entries are checked.
    let mut p = open_with(&f, &[], false).unwrap();
    assert_eq!(p.signed_by, None);
    extract_all(&mut p).unwrap();
}

#[test]
fn contract_8_6_without_keys_the_signature_is_ignored_but_a_map_is_checked() {
    let f = fx();
    let junk = |_: &[u8]| "not a signature".to_string();
    signed_fx(&f, "", Some(&junk), b"file b");
    let mut p = open_with(&f, &[], false).unwrap();
    extract_all(&mut p).unwrap();
    // With a key, the same junk is refused even when signatures are optional.
    let key = SigningKey::generate().unwrap().0;
    let e = open_with(&f, &[key.public_key()], false).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");

    // No keys, a map that does not match: refused at extraction.
    let wrong = full_map().replace(&sha_hex(b"file b"), &sha_hex(b"other"));
    signed_fx(&f, &wrong, None, b"file b");
    let mut p = open_with(&f, &[], false).unwrap();
    assert_eq!(
        extract_all(&mut p).unwrap_err().code,
        ErrorCode::InvalidPackage
    );
}

#[test]
fn malformed_sha256_maps_are_invalid_package() {
    let f = fx();
    let a = sha_hex(b"file a");
    let cases = [
        (
            format!(r#", "sha256": {{"data/a": "{}"}}"#, a.to_uppercase()),
            "lowercase",
        ),
        (r#", "sha256": {"data/a": "abc"}"#.to_string(), "lowercase"),
        (format!(r#", "sha256": {{"data/zz": "{a}"}}"#), "not a file"),
        (format!(r#", "sha256": {{"data": "{a}"}}"#), "not a file"),
        (
            format!(r#", "sha256": {{"data/a": "{a}", "./data/a": "{a}"}}"#),
            "twice",
        ),
    ];
    for (map, needle) in cases {
        signed_fx(&f, &map, None, b"file b");
        let e = open_with(&f, &[], false).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPackage, "{map}: {e}");
        assert!(e.detail.contains(needle), "{needle}: {e}");
    }
    signed_fx(&f, r#", "sha256": ["x"]"#, None, b"file b");
    assert_eq!(
        open_with(&f, &[], false).unwrap_err().code,
        ErrorCode::InvalidManifest
    );
}

fn small_zip(f: &Fx) {
    let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("x", b"x", 0o644),
        ],
    );
}

fn cd_check(f: &Fx) -> Result<CentralDirectory, OtaError> {
    let zip = Window::whole(File::open(&f.zip).unwrap()).unwrap();
    archive::check_central_directory(&zip).map_err(OtaError::from)
}

#[test]
fn contract_8_3_central_directory_is_checked_from_its_end_record() {
    let f = fx();
    small_zip(&f);
    let cd = cd_check(&f).unwrap();
    assert_eq!(cd.entries, 2);
    let len = std::fs::metadata(&f.zip).unwrap().len();
    assert_eq!(cd.offset + cd.size, len - 22);
    open(&f).unwrap();

    // A directory size above the cap, written into the end record.
    let mut b = std::fs::read(&f.zip).unwrap();
    let eocd = b.len() - 22;
    b[eocd + 12..eocd + 16].copy_from_slice(&(9u32 * 1024 * 1024).to_le_bytes());
    std::fs::write(&f.zip, &b).unwrap();
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(
        e.detail.contains("central directory of 9437184 bytes"),
        "{e}"
    );

    // Data before the archive: the central directory no longer ends at its record.
    small_zip(&f);
    let mut b = b"junk".to_vec();
    b.extend(std::fs::read(&f.zip).unwrap());
    std::fs::write(&f.zip, &b).unwrap();
    assert!(err(&f).detail.contains("prepended"), "{}", err(&f));

    // A second end record hidden in the comment.
    let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
    let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
    w.start_file("manifest.json", SimpleFileOptions::default())
        .unwrap();
    w.write_all(m.as_bytes()).unwrap();
    // (A candidate the zip crate would try first: its comment ends before the file does.)
    let mut fake = b"PK\x05\x06".to_vec();
    fake.extend([0u8; 18]);
    fake.extend(b"tail");
    w.set_raw_comment(fake.into()).unwrap();
    w.finish().unwrap();
    assert!(err(&f).detail.contains("ambiguous"), "{}", err(&f));

    // A plain comment is fine; a truncated file is not.
    let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
    w.start_file("manifest.json", SimpleFileOptions::default())
        .unwrap();
    w.write_all(m.as_bytes()).unwrap();
    w.set_comment("built by the pipeline").unwrap();
    w.finish().unwrap();
    assert_eq!(cd_check(&f).unwrap().entries, 1);
    let b = std::fs::read(&f.zip).unwrap();
    std::fs::write(&f.zip, &b[..b.len() - 5]).unwrap();
    assert_eq!(err(&f).code, ErrorCode::InvalidPackage);
    std::fs::write(&f.zip, b"PK").unwrap();
    assert!(err(&f).detail.contains("not a ZIP"), "{}", err(&f));
}

/// At `f.zip`: version 1.2.3, one module `app` whose `app/bin` holds `binary`.
fn one_module_zip(f: &Fx) {
    let m = manifest_json("1.2.3", &module(&f.root, "app", "app", "app"));
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("app/bin", b"binary", 0o755),
        ],
    );
}

/// `zip_path` wrapped in a SWU envelope at `<zip_path>.swu` claiming `version`.
fn envelope_of(zip_path: &Path, version: &str) -> PathBuf {
    let out = zip_path.with_extension("swu");
    let meta = crate::swu::EnvelopeMeta {
        version: version.into(),
        ..Default::default()
    };
    crate::swu::write_envelope(&out, zip_path, &meta).unwrap();
    out
}

/// docs/API.md 9.3: an envelope is told by its first bytes and its package is read in place,
/// every file planned and extracted as from the plain ZIP.
#[test]
fn api_9_3_the_package_inside_an_envelope_opens_and_extracts() {
    let f = fx();
    one_module_zip(&f);
    // Named like a ZIP: the name decides nothing.
    let swu = envelope_of(&f.zip, "1.2.3");
    let disguised = f.zip.with_file_name("disguised.zip");
    std::fs::rename(&swu, &disguised).unwrap();
    let mut pkg = open_package(
        &disguised,
        "1.2.3",
        std::slice::from_ref(&f.root),
        Signatures::default(),
    )
    .unwrap();
    let env = pkg.envelope.clone().expect("read as an envelope");
    assert_eq!(env.filename, "p.zip");
    assert_eq!(pkg.files.len(), 1);
    let mut out = Vec::new();
    pkg.extract_to(&pkg.files[0].clone(), &mut out).unwrap();
    assert_eq!(out, b"binary");
    assert!(
        open(&f).unwrap().envelope.is_none(),
        "a plain ZIP is no envelope"
    );
}

/// docs/API.md 9.3: `software.version` must be the inner manifest's version.
#[test]
fn api_9_3_envelope_version_must_be_the_manifests() {
    let f = fx();
    one_module_zip(&f);
    let swu = envelope_of(&f.zip, "1.2.4");
    let e = OtaError::from(
        Package::open(
            &swu,
            None,
            &PackagePolicy {
                allowed_roots: None,
                signatures: Signatures::default(),
            },
        )
        .unwrap_err(),
    );
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(
        e.detail.contains("1.2.4") && e.detail.contains("1.2.3"),
        "names both versions: {e}"
    );
}

/// docs/API.md 8.3 and 9.3: the ZIP rules apply to the image as to a file, with the image's
/// own offsets: data prepended to the ZIP inside the envelope is still "not a plain ZIP".
#[test]
fn api_9_3_zip_rules_apply_inside_the_envelope() {
    let f = fx();
    one_module_zip(&f);
    let mut bytes = b"junk".to_vec();
    bytes.extend(std::fs::read(&f.zip).unwrap());
    std::fs::write(&f.zip, bytes).unwrap();
    let swu = envelope_of(&f.zip, "1.2.3");
    let policy = PackagePolicy {
        allowed_roots: None,
        signatures: Signatures::default(),
    };
    let e = OtaError::from(Package::open(&swu, None, &policy).unwrap_err());
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(e.detail.contains("not a plain ZIP"), "{e}");
}
