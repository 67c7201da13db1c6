//! Builds OTA packages (ZIP with `manifest.json` at the root), including hostile ones.

use std::io::{Cursor, Write};

use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

#[derive(Debug, Clone)]
pub enum Entry {
    /// A regular file with its unix mode.
    File {
        name: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// A directory entry (name ending in `/` is added by the writer).
    Dir { name: String },
    /// A symbolic link entry.
    Symlink { name: String, target: String },
}

impl Entry {
    pub fn file(name: &str, data: &[u8], mode: u32) -> Entry {
        Entry::File {
            name: name.to_string(),
            data: data.to_vec(),
            mode,
        }
    }

    pub fn dir(name: &str) -> Entry {
        Entry::Dir {
            name: name.to_string(),
        }
    }

    pub fn symlink(name: &str, target: &str) -> Entry {
        Entry::Symlink {
            name: name.to_string(),
            target: target.to_string(),
        }
    }
}

/// A ZIP holding exactly `entries`, in order. Large files are stored, small ones deflated.
pub fn build_zip(entries: &[Entry]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for e in entries {
        match e {
            Entry::File { name, data, mode } => {
                let method = if data.len() > 256 * 1024 {
                    CompressionMethod::Stored
                } else {
                    CompressionMethod::Deflated
                };
                let opts = SimpleFileOptions::default()
                    .compression_method(method)
                    .unix_permissions(*mode);
                w.start_file(name.as_str(), opts).expect("start_file");
                w.write_all(data).expect("write zip entry");
            }
            Entry::Dir { name } => {
                let opts = SimpleFileOptions::default().unix_permissions(0o755);
                w.add_directory(name.as_str(), opts).expect("add_directory");
            }
            Entry::Symlink { name, target } => {
                let opts = SimpleFileOptions::default();
                w.add_symlink(name.as_str(), target.as_str(), opts)
                    .expect("add_symlink");
            }
        }
    }
    w.finish().expect("finish zip").into_inner()
}

/// `{"version": .., "modules": [..]}`.
pub fn manifest(version: &str, modules: Vec<Value>) -> Value {
    json!({"version": version, "modules": modules})
}

/// A package: `manifest.json` first, then `entries`.
pub fn build_package(manifest: &Value, entries: &[Entry]) -> Vec<u8> {
    let mut all = vec![Entry::file(
        "manifest.json",
        serde_json::to_string_pretty(manifest).unwrap().as_bytes(),
        0o644,
    )];
    all.extend_from_slice(entries);
    build_zip(&all)
}
