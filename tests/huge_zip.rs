//! docs/API.md section 8.3: a ZIP whose central directory is huge (hundreds of thousands of
//! entries, or 100 MB of names) is refused before it is held in memory. Measured on the real
//! daemon: its peak resident memory (`VmHWM`) does not grow while it refuses them.

mod common;
mod pkgkit;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use common::bench::proc_status_kib;
use common::daemon::stage_of;
use common::*;
use serde_json::json;

const VERSION: &str = "1.0.0";

/// Writes a valid ZIP of stored entries, streaming: `manifest.json` (naming the first entry),
/// then `count` empty files whose names `name(i)` gives. With `zip64`, the zip64 end records
/// are written (they are anyway above 65535 entries).
fn write_zip(path: &Path, root: &Path, count: usize, name: impl Fn(usize) -> Vec<u8>, zip64: bool) {
    let manifest = serde_json::to_vec(&manifest(
        VERSION,
        vec![
            json!({"name": "m", "src": String::from_utf8(name(0)).unwrap(),
                    "dst": root.join("m").display().to_string()}),
        ],
    ))
    .unwrap();
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut pos: u64 = 0;
    // Per entry: local header offset, CRC32, size (names are made again from the index).
    let mut cd: Vec<(u64, u32, u32)> = Vec::with_capacity(count + 1);
    let entry_name = |i: usize| {
        if i == 0 {
            b"manifest.json".to_vec()
        } else {
            name(i - 1)
        }
    };
    for i in 0..=count {
        let n = entry_name(i);
        let data: &[u8] = if i == 0 { &manifest } else { b"" };
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let mut h = Vec::with_capacity(30);
        h.extend(0x0403_4b50u32.to_le_bytes());
        h.extend(20u16.to_le_bytes()); // version needed
        h.extend(0u16.to_le_bytes()); // flags
        h.extend(0u16.to_le_bytes()); // stored
        h.extend(0u16.to_le_bytes()); // time
        h.extend(0x21u16.to_le_bytes()); // 1980-01-01
        h.extend(crc.sum().to_le_bytes());
        h.extend((data.len() as u32).to_le_bytes());
        h.extend((data.len() as u32).to_le_bytes());
        h.extend((n.len() as u16).to_le_bytes());
        h.extend(0u16.to_le_bytes());
        w.write_all(&h).unwrap();
        w.write_all(&n).unwrap();
        w.write_all(data).unwrap();
        cd.push((pos, crc.sum(), data.len() as u32));
        pos += (h.len() + n.len() + data.len()) as u64;
    }
    let cd_start = pos;
    for (i, (offset, crc, size)) in cd.iter().enumerate() {
        let n = entry_name(i);
        let mut h = Vec::with_capacity(46);
        h.extend(0x0201_4b50u32.to_le_bytes());
        h.extend((3u16 << 8 | 20).to_le_bytes()); // made by unix
        h.extend(20u16.to_le_bytes());
        h.extend([0u8; 4]); // flags, stored
        h.extend(0u16.to_le_bytes());
        h.extend(0x21u16.to_le_bytes());
        h.extend(crc.to_le_bytes());
        h.extend(size.to_le_bytes());
        h.extend(size.to_le_bytes());
        h.extend((n.len() as u16).to_le_bytes());
        h.extend([0u8; 8]); // extra, comment, disk, internal attributes
        h.extend((0o100644u32 << 16).to_le_bytes());
        h.extend((*offset as u32).to_le_bytes());
        w.write_all(&h).unwrap();
        w.write_all(&n).unwrap();
        pos += (h.len() + n.len()) as u64;
    }
    let (entries, cd_size) = ((count + 1) as u64, pos - cd_start);
    let zip64 = zip64 || entries > 0xFFFF;
    if zip64 {
        let mut r = Vec::new();
        r.extend(0x0606_4b50u32.to_le_bytes());
        r.extend(44u64.to_le_bytes());
        r.extend(45u16.to_le_bytes());
        r.extend(45u16.to_le_bytes());
        r.extend([0u8; 8]); // disks
        r.extend(entries.to_le_bytes());
        r.extend(entries.to_le_bytes());
        r.extend(cd_size.to_le_bytes());
        r.extend(cd_start.to_le_bytes());
        r.extend(0x0706_4b50u32.to_le_bytes()); // locator
        r.extend(0u32.to_le_bytes());
        r.extend(pos.to_le_bytes());
        r.extend(1u32.to_le_bytes());
        w.write_all(&r).unwrap();
    }
    let mut e = Vec::new();
    e.extend(0x0605_4b50u32.to_le_bytes());
    e.extend([0u8; 4]);
    let n16 = if zip64 { 0xFFFF } else { entries as u16 };
    e.extend(n16.to_le_bytes());
    e.extend(n16.to_le_bytes());
    e.extend((if zip64 { u32::MAX } else { cd_size as u32 }).to_le_bytes());
    e.extend((if zip64 { u32::MAX } else { cd_start as u32 }).to_le_bytes());
    e.extend(0u16.to_le_bytes());
    w.write_all(&e).unwrap();
    w.into_inner().unwrap().sync_all().unwrap();
}

fn short_name(i: usize) -> Vec<u8> {
    format!("f/{i:07}").into_bytes()
}

/// About 64 KB per name: 1600 of them are 100 MB of central directory.
fn long_name(i: usize) -> Vec<u8> {
    let mut n = format!("d/{i:05}-").into_bytes();
    n.resize(64_000, b'n');
    n
}

/// The generator writes ZIPs that `verify` (the daemon's checks) accepts when small, in both
/// end-record forms, so the refusals below are for their size alone.
#[test]
fn small_zips_of_the_generator_are_valid_packages() {
    let d = tempfile::tempdir().unwrap();
    for zip64 in [false, true] {
        let p = d.path().join(format!("small-{zip64}.zip"));
        write_zip(&p, Path::new("/opt/tope"), 5, short_name, zip64);
        let r = pkgkit::verify(&p, &[]);
        assert!(r.ok, "zip64 {zip64}: {r:?}");
        assert!(r.stdout.contains("1 file(s)"), "{r:?}");
        let p = d.path().join(format!("long-{zip64}.zip"));
        write_zip(&p, Path::new("/opt/tope"), 3, long_name, zip64);
        assert!(pkgkit::verify(&p, &[]).ok);
    }
}

#[test]
fn contract_8_3_huge_central_directories_are_refused_with_flat_memory() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    type Case = (&'static str, usize, fn(usize) -> Vec<u8>, &'static str);
    let cases: [Case; 2] = [
        (
            "entries.zip",
            300_000,
            short_name,
            "300001 entries, more than the 65536",
        ),
        ("names.zip", 1600, long_name, "central directory of"),
    ];
    for (name, count, names, needle) in cases {
        let path = nginx.www(name);
        write_zip(&path, &ws.root(), count, names, false);
        let size = std::fs::metadata(&path).unwrap().len();
        let md5 = common::bench::md5_file_streaming(&path);
        d.post_download(&json!({"version": VERSION, "package_url": nginx.url(name),
            "package_name": name, "package_size": size, "package_md5": md5}));
        d.wait_stage("toInstall", Duration::from_secs(120));
        let before = proc_status_kib(d.pid(), "VmHWM").expect("VmHWM");
        d.post_update(VERSION);
        let p = d.wait_outcome();
        let after = proc_status_kib(d.pid(), "VmHWM").expect("VmHWM");
        assert_eq!(stage_of(&p), "failed", "{p}");
        let err = p["data"]["error"].as_str().unwrap_or("");
        assert!(
            err.starts_with("INVALID_PACKAGE: ") && err.contains(needle),
            "{p}"
        );
        println!(
            "{name}: {count} entries, {} MB file, daemon VmHWM {before} kB before /update, \
             {after} kB after the refusal",
            size / 1_000_000
        );
        // Loading either central directory would take tens of MB (100 MB of names alone).
        assert!(
            after <= before + 4 * 1024,
            "{name}: peak memory grew from {before} kB to {after} kB"
        );
        std::fs::remove_file(&path).unwrap();
    }
    assert!(!ws.root().join("m").exists());
}
