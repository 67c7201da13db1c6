//! The SWU envelope against the real tools (docs/API.md 9.3): SWUpdate's own parser reads
//! what `swu::write_envelope` writes (Debian's `swupdate`, in check mode), GNU cpio lists and
//! extracts it byte for byte, and envelopes GNU cpio makes (`-H newc`, `-H crc`) from a
//! `sw-description` in each libconfig style are read by `swu::open`.
//!
//! A missing tool makes a test fail when `CI` is set; otherwise it is skipped with a message
//! (`scripts/test.sh` installs `swupdate` and `cpio`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cpio::meta;
use common::package::{build_package, manifest, Entry};
use serde_json::json;
use sha2::{Digest, Sha256};
use tope_updater::swu::{self, Format};

/// Whether `tool` can be run; without it, fail under CI and skip otherwise.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (CI is set): install it (scripts/test.sh does)"
        );
        eprintln!("skipped: {tool} is not installed (scripts/test.sh installs it)");
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn package_bytes() -> Vec<u8> {
    let m = manifest(
        "1.2.3",
        vec![json!({"name": "app", "src": "app", "dst": "/opt/tope/app"})],
    );
    build_package(
        &m,
        &[Entry::file("app/bin", b"#!/bin/sh\necho hi\n", 0o755)],
    )
}

fn sha_hex(data: &[u8]) -> String {
    swu::hex(&Sha256::digest(data))
}

/// A self-signed certificate and its key: Debian's swupdate is built to accept only signed
/// `sw-description`s (CMS), so the check below needs `sw-description.sig`.
fn signer(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let out = run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tope",
        ])
        .args(["-addext", "extendedKeyUsage=emailProtection", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, cert)
}

fn sign(dir: &Path, desc: &Path, key: &Path, cert: &Path) -> Vec<u8> {
    let sig = dir.join("sig.der");
    let out = run(Command::new("openssl")
        .args([
            "cms",
            "-sign",
            "-outform",
            "DER",
            "-nosmimecap",
            "-binary",
            "-in",
        ])
        .arg(desc)
        .arg("-out")
        .arg(&sig)
        .arg("-signer")
        .arg(cert)
        .arg("-inkey")
        .arg(key));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(sig).unwrap()
}

/// The first member of a cpio archive: where its data starts, its length, where it ends.
fn first_member(bytes: &[u8]) -> (usize, usize, usize) {
    let field = |i: usize| {
        let s = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
        usize::from_str_radix(s, 16).unwrap()
    };
    let data = (110 + field(11)).div_ceil(4) * 4;
    (data, field(6), (data + field(6)).div_ceil(4) * 4)
}

/// The writer's envelope with `sw-description.sig` inserted after `sw-description`: every
/// byte of the writer's own members is kept as it wrote them.
fn signed_copy(dir: &Path, envelope: &Path, key: &Path, cert: &Path) -> PathBuf {
    let bytes = fs::read(envelope).unwrap();
    let (data, len, end) = first_member(&bytes);
    let desc = dir.join("desc.txt");
    fs::write(&desc, &bytes[data..data + len]).unwrap();
    let sig = common::cpio::member(
        "070702",
        "sw-description.sig",
        &sign(dir, &desc, key, cert),
        0o100644,
    );
    let mut out = bytes[..end].to_vec();
    out.extend_from_slice(&sig);
    out.extend_from_slice(&bytes[end..]);
    let path = dir.join("signed.swu");
    fs::write(&path, out).unwrap();
    let before = swu::open(envelope).unwrap();
    let after = swu::open(&path).unwrap();
    assert_eq!(after.offset, before.offset + sig.len() as u64);
    assert_eq!((after.version, after.len), (before.version, before.len));
    path
}

/// One SWUpdate at a time in this test binary.
static SWUPDATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs of SWUpdate that end without a verdict on the image: neither the signature's
/// "Verified OK" nor an `[ERROR]` line. Debian's SWUpdate in check mode does that now and then
/// (about one run in eighty here, alone and serialized): it exits 1 right after printing its
/// hardware revision, the rest of its log lost. Such a run says nothing about the envelope and is
/// made again, at most this many times in all; any verdict is final.
const SWUPDATE_RUNS: usize = 3;

/// `swupdate -c` (check the image and exit), in a temporary directory and with sockets of its
/// own for each run. Never a directory an earlier run used: SWUpdate's helper processes can
/// outlive its main process and clean their temporary directory up after it, which removed the
/// files of the next run ("sw-description.sig cannot be opened").
fn swupdate_check(dir: &Path, image: &Path, cert: &Path, extra: &[&str]) -> String {
    let _one = SWUPDATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut runs = Vec::new();
    for _ in 0..SWUPDATE_RUNS {
        // Kept until the test's directory goes: a helper process of this run may still be
        // cleaning it up.
        let tmp = tempfile::Builder::new()
            .prefix("swupdate-tmp")
            .tempdir_in(dir)
            .unwrap()
            .keep();
        let out = run(Command::new("swupdate")
            .env("TMPDIR", &tmp)
            .current_dir(dir)
            .arg("-c")
            .arg("-v")
            .arg("-i")
            .arg(image)
            .arg("-k")
            .arg(cert)
            .args(extra));
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !log.contains("syntax error"),
            "swupdate could not parse sw-description:\n{log}"
        );
        let verified = log.contains("Verified OK");
        runs.push(format!("({}):\n{log}", out.status));
        if verified || log.contains("[ERROR]") {
            assert!(
                verified,
                "the signature was not checked {}",
                runs.join("\n--- again ")
            );
            return log;
        }
    }
    panic!(
        "swupdate ended {SWUPDATE_RUNS} times without a verdict on the image {}",
        runs.join("\n--- again ")
    )
}

#[test]
fn swupdate_parses_the_writers_envelope_docs_api_9_3() {
    if !(have("swupdate") && have("openssl")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, cert) = signer(d);
    let zip = d.join("pkg.zip");
    fs::write(&zip, package_bytes()).unwrap();

    // Top-level form.
    let out = d.join("printer.swu");
    swu::write_envelope(&out, &zip, &meta(None, &["1.0"])).unwrap();
    let signed = signed_copy(d, &out, &key, &cert);
    let log = swupdate_check(d, &signed, &cert, &[]);
    for line in [
        "Version 1.2.3",
        "Accepted Hw Revision : 1.0",
        "Found Image: printer.zip",
        "for handler tope-package",
        // SWUpdate has no handler of the updater's type: it refuses to install, having read
        // the whole description.
        "feature 'tope-package' required for 'printer.zip'",
    ] {
        assert!(log.contains(line), "no {line:?} in swupdate's log:\n{log}");
    }

    // Board form: SWUpdate finds the image in the section of the board it runs on only.
    let out = d.join("board.swu");
    swu::write_envelope(&out, &zip, &meta(Some("tope-mk4"), &["2.0"])).unwrap();
    let signed = signed_copy(d, &out, &key, &cert);
    let log = swupdate_check(d, &signed, &cert, &["-H", "tope-mk4:2.0"]);
    for line in [
        "Version 1.2.3",
        "Accepted Hw Revision : 2.0",
        "Found Image: board.zip",
    ] {
        assert!(log.contains(line), "no {line:?} in swupdate's log:\n{log}");
    }
    let log = swupdate_check(d, &signed, &cert, &["-H", "other-board:2.0"]);
    assert!(
        !log.contains("Found Image"),
        "another board's section was used:\n{log}"
    );
}

#[test]
fn gnu_cpio_lists_and_extracts_the_writers_envelope_docs_api_9_3() {
    if !have("cpio") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let zip_bytes = package_bytes();
    let zip = d.join("pkg.zip");
    fs::write(&zip, &zip_bytes).unwrap();
    let out = d.join("printer.swu");
    swu::write_envelope(&out, &zip, &meta(None, &["1.0"])).unwrap();

    let list = run(Command::new("cpio")
        .arg("-t")
        .stdin(fs::File::open(&out).unwrap()));
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "sw-description\nprinter.zip\n"
    );

    let x = d.join("x");
    fs::create_dir(&x).unwrap();
    let ex = run(Command::new("cpio")
        .args(["-i", "--no-absolute-filenames"])
        .current_dir(&x)
        .stdin(fs::File::open(&out).unwrap()));
    let stderr = String::from_utf8_lossy(&ex.stderr);
    // GNU cpio checks the crc format's checksums as it extracts.
    assert!(
        ex.status.success() && !stderr.contains("checksum"),
        "{stderr}"
    );
    assert_eq!(
        fs::read(x.join("printer.zip")).unwrap(),
        zip_bytes,
        "byte-identical ZIP"
    );
    let text = fs::read_to_string(x.join("sw-description")).unwrap();
    assert!(text.contains(&sha_hex(&zip_bytes)), "{text}");
}

/// `sw-description` in each libconfig style (`{sha}` stands for the image's sha256), the
/// board it names and the hardware compatibility it states.
const STYLES: &[(&str, &str, Option<&str>, &[&str])] = &[
    (
        "equals and semicolons",
        r#"software = { version = "1.2.3"; hardware-compatibility = [ "1.0" ];
images = ( { filename = "pkg.zip"; type = "tope-package"; sha256 = "{sha}"; } ); };
"#,
        None,
        &["1.0"],
    ),
    (
        "colons and commas",
        r#"software: { version: "1.2.3", hardware-compatibility: ["1.0", "1.1"],
images: ({ filename: "pkg.zip", type: "tope-package", sha256: "{sha}" }) }
"#,
        None,
        &["1.0", "1.1"],
    ),
    (
        "comments of the three kinds",
        r#"# an envelope for the printer
software =
{
    version = "1.2.3"; // the release
    hardware-compatibility = [ "1.0" ]; # the revisions
    /* the images:
       only one */
    images: (
        {
            filename = "pkg.zip"; # the package
            type = "tope-package";
            sha256 = "{sha}";
        }
    );
};
"#,
        None,
        &["1.0"],
    ),
    (
        "adjacent strings and escapes",
        r#"software = {
    version = "1." "2.3";
    hardware-compatibility = [ "1" ".0", "rev\x42" ];
    images: ( { filename = "pkg" ".zip"; type = "tope\x2dpackage";
                sha256 = "{sha}"; description = "a \"quoted\"\tword"; } );
};
"#,
        None,
        &["1.0", "revB"],
    ),
    (
        "board section",
        r#"software = {
    version = "1.2.3";
    hardware-compatibility = [ "0.9" ];
    tope-mk4 = {
        hardware-compatibility = [ "2.0" ];
        images: ( { filename = "pkg.zip"; type = "tope-package"; sha256 = "{sha}"; } );
    };
};
"#,
        Some("tope-mk4"),
        &["2.0"],
    ),
    (
        "other settings beside the image",
        r#"software = { version = "1.2.3"; description = "printer firmware"; reboot = false;
hardware-compatibility = [ "1.0" ];
images: ( { filename = "pkg.zip"; type = "tope-package"; sha256 = "{sha}";
            installed-directly = true; size = 0x10; ratio = 1.5; } ); };
"#,
        None,
        &["1.0"],
    ),
];

#[test]
fn gnu_cpio_envelopes_in_every_libconfig_style_are_read_docs_api_9_3() {
    if !have("cpio") {
        return;
    }
    // SWUpdate checks each style too, when it is installed (the same rule for CI).
    let swupdate = have("swupdate") && have("openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = swupdate.then(|| signer(d));
    let zip_bytes = package_bytes();
    fs::write(d.join("pkg.zip"), &zip_bytes).unwrap();
    for (style, text, board, hw) in STYLES {
        let text = text.replace("{sha}", &sha_hex(&zip_bytes));
        fs::write(d.join("sw-description"), &text).unwrap();
        let mut members = "sw-description\n".to_owned();
        if let Some((key, cert)) = &signer {
            let sig = sign(d, &d.join("sw-description"), key, cert);
            fs::write(d.join("sw-description.sig"), sig).unwrap();
            members.push_str("sw-description.sig\n");
        }
        members.push_str("pkg.zip\n");
        for (format, expected) in [("newc", Format::Newc), ("crc", Format::Crc)] {
            let out = d.join(format!("{format}.swu"));
            let mut child = Command::new("cpio")
                .args(["-o", "--quiet", "-H", format])
                .current_dir(d)
                .stdin(Stdio::piped())
                .stdout(fs::File::create(&out).unwrap())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), members.as_bytes())
                .unwrap();
            assert!(
                child.wait().unwrap().success(),
                "{style}: cpio -o -H {format}"
            );

            let env = swu::open(&out).unwrap_or_else(|e| panic!("{style} ({format}): {e}"));
            env.verify_sha256(&out)
                .unwrap_or_else(|e| panic!("{style} ({format}): {e}"));
            assert_eq!(env.format, expected, "{style}");
            assert_eq!(env.version, "1.2.3", "{style}");
            assert_eq!(env.filename, "pkg.zip", "{style}");
            assert_eq!(env.board.as_deref(), *board, "{style}");
            assert_eq!(env.hardware_compatibility, *hw, "{style}");
            let window = env.window(fs::File::open(&out).unwrap()).unwrap();
            let mut archive = zip::ZipArchive::new(window).unwrap();
            assert!(archive.by_name("manifest.json").is_ok(), "{style}");

            if let (Some((_, cert)), "newc") = (&signer, format) {
                // This SWUpdate requires a hardware-compatibility; the board's name selects
                // its section.
                let hw_arg = format!("{}:{}", board.unwrap_or("printer"), hw[0]);
                let log = swupdate_check(d, &out, cert, &["-H", &hw_arg]);
                assert!(
                    log.contains("Found Image: pkg.zip") && log.contains("Version 1.2.3"),
                    "{style}: swupdate did not read it the same:\n{log}"
                );
            }
        }
    }
}
