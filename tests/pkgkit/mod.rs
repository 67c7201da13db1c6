//! The package author's side of the tests: run `keygen`, `pack` and `verify` as a person
//! would (the real binary), lay out package directories, and take packages apart and put
//! them back together (to tamper with them).
#![allow(dead_code)]

use std::io::{Cursor, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common::daemon::BIN;
use crate::common::{build_zip, write_file, Entry};

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tope-updater <args>` to completion.
pub fn tool<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out: Output = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tope-updater");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `keygen --out <dir>/<name>`: the key file and the public key it printed.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let r = tool(&["keygen".as_ref(), "--out".as_ref(), path.as_os_str()]);
    assert!(r.ok, "keygen failed: {r:?}");
    let public = r.stdout.trim().to_string();
    assert_eq!(r.stdout.lines().count(), 1, "keygen prints one line: {r:?}");
    (path, public)
}

/// `pack <dir> --out <out> [--key <key>]`, asserting success; the JSON line it printed.
pub fn pack(dir: &Path, out: &Path, key: Option<&Path>) -> Value {
    let r = pack_run(dir, out, key, None);
    assert!(r.ok, "pack failed: {r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "pack prints exactly one line: {r:?}");
    serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("pack's line is not JSON ({e}): {r:?}"))
}

/// `pack` as it ran, whatever the outcome.
pub fn pack_run(dir: &Path, out: &Path, key: Option<&Path>, config: Option<&Path>) -> Run {
    let mut args: Vec<std::ffi::OsString> =
        vec!["pack".into(), dir.into(), "--out".into(), out.into()];
    if let Some(k) = key {
        args.extend(["--key".into(), k.into()]);
    }
    if let Some(c) = config {
        args.extend(["--config".into(), c.into()]);
    }
    tool(&args)
}

/// `verify <file> [--key K]...`.
pub fn verify(file: &Path, keys: &[&str]) -> Run {
    let mut args: Vec<std::ffi::OsString> = vec!["verify".into(), file.into()];
    for k in keys {
        args.extend(["--key".into(), (*k).into()]);
    }
    tool(&args)
}

/// Writes `manifest` and `files` (name, data, mode) under `dir`.
pub fn package_dir(dir: &Path, manifest: &Value, files: &[(&str, &[u8], u32)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(manifest).unwrap(),
    )
    .unwrap();
    for (name, data, mode) in files {
        write_file(&dir.join(name), data, *mode);
    }
}

/// Every entry of a ZIP: name, data and unix mode (permission bits), in order.
pub fn entries(zip_bytes: &[u8]) -> Vec<(String, Vec<u8>, u32)> {
    let mut a = zip::ZipArchive::new(Cursor::new(zip_bytes)).expect("a readable ZIP");
    (0..a.len())
        .map(|i| {
            let mut f = a.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            let mode = f.unix_mode().unwrap_or(0o644) & 0o7777;
            (f.name().unwrap().into_owned(), data, mode)
        })
        .collect()
}

/// A ZIP of these entries (files only).
pub fn rebuild(entries: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let list: Vec<Entry> = entries
        .iter()
        .map(|(n, d, m)| Entry::file(n, d, *m))
        .collect();
    build_zip(&list)
}

/// The `/download` body for a package `pack` described, served at `url`.
pub fn download_body(packed: &Value, url: &str) -> Value {
    let mut body = packed.clone();
    body["package_url"] = Value::String(url.to_string());
    body
}

/// The unix permission bits of a file.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}
