//! Update packages as the demo and the tests need them: a ZIP of chosen entries (hostile ones
//! too: symlinks, odd names, duplicates), built in memory, or streamed to a file when it is too
//! large for memory. `tope-updater pack` is the package author's tool (a directory in, a signed
//! package out); this is the maker of arbitrary ZIPs, checked by the updater's reader.

use std::io::{self, Cursor, Seek, Write};

use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Files above this size are stored, smaller ones deflated (as a package author's tool would).
pub const STORE_ABOVE: usize = 256 * 1024;

/// One ZIP entry.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A regular file with its unix mode.
    File {
        name: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// A directory entry (mode 0755; the writer adds the trailing `/`).
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

/// A ZIP written entry by entry to any seekable output (a `Vec` or a file).
pub struct PackageWriter<W: Write + Seek> {
    zip: ZipWriter<W>,
}

impl<W: Write + Seek> PackageWriter<W> {
    pub fn new(out: W) -> PackageWriter<W> {
        PackageWriter {
            zip: ZipWriter::new(out),
        }
    }

    /// Adds one entry; files over [`STORE_ABOVE`] bytes are stored, others deflated.
    pub fn add(&mut self, entry: &Entry) -> io::Result<()> {
        match entry {
            Entry::File { name, data, mode } => {
                self.start_file(name, *mode, data.len() > STORE_ABOVE, false)?;
                self.zip.write_all(data)
            }
            Entry::Dir { name } => {
                let opts = SimpleFileOptions::default().unix_permissions(0o755);
                Ok(self.zip.add_directory(name.as_str(), opts)?)
            }
            Entry::Symlink { name, target } => Ok(self.zip.add_symlink(
                name.as_str(),
                target.as_str(),
                SimpleFileOptions::default(),
            )?),
        }
    }

    /// Starts a file whose content follows through [`Write`]: `stored` or deflated, `large`
    /// (ZIP64) when it may reach 4 GiB.
    pub fn start_file(
        &mut self,
        name: &str,
        mode: u32,
        stored: bool,
        large: bool,
    ) -> io::Result<()> {
        let method = if stored {
            CompressionMethod::Stored
        } else {
            CompressionMethod::Deflated
        };
        let opts = SimpleFileOptions::default()
            .compression_method(method)
            .unix_permissions(mode)
            .large_file(large);
        Ok(self.zip.start_file(name, opts)?)
    }

    /// Writes the central directory; gives the output back.
    pub fn finish(self) -> io::Result<W> {
        Ok(self.zip.finish()?)
    }
}

impl<W: Write + Seek> Write for PackageWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.zip.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.zip.flush()
    }
}

/// A ZIP holding exactly `entries`, in order.
pub fn build_zip(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut w = PackageWriter::new(Cursor::new(Vec::new()));
    for e in entries {
        w.add(e)?;
    }
    Ok(w.finish()?.into_inner())
}

/// `{"version": .., "modules": [..]}`.
pub fn manifest(version: &str, modules: Vec<Value>) -> Value {
    json!({"version": version, "modules": modules})
}

/// A package: `manifest.json` (pretty-printed, 0644) first, then `entries`.
pub fn build_package(manifest: &Value, entries: &[Entry]) -> io::Result<Vec<u8>> {
    let text = serde_json::to_vec_pretty(manifest)?;
    let mut all = vec![Entry::file("manifest.json", &text, 0o644)];
    all.extend_from_slice(entries);
    build_zip(&all)
}

/// Deterministic incompressible bytes (xorshift64), produced chunk by chunk, so that a ZIP
/// does not shrink them and a package of any size needs no memory.
#[derive(Debug, Clone)]
pub struct Noise {
    x: u64,
}

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise {
            x: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            let bytes = self.x.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

/// `len` bytes of [`Noise`] from `seed`.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Noise::new(seed).fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn entries_keep_order_modes_and_methods() {
        let big = pseudo_random_bytes(STORE_ABOVE + 1, 1);
        let zip = build_package(
            &manifest("1.2.3", vec![json!({"name": "m"})]),
            &[
                Entry::dir("modules/"),
                Entry::file("modules/run", b"#!/bin/sh\n", 0o755),
                Entry::file("modules/big", &big, 0o644),
                Entry::symlink("modules/link", "run"),
            ],
        )
        .unwrap();
        let mut a = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
        let names: Vec<String> = (0..a.len())
            .map(|i| a.by_index(i).unwrap().name().unwrap().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "manifest.json",
                "modules/",
                "modules/run",
                "modules/big",
                "modules/link"
            ]
        );
        let mut m = String::new();
        a.by_name("manifest.json")
            .unwrap()
            .read_to_string(&mut m)
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&m).unwrap()["version"],
            "1.2.3"
        );
        let run = a.by_name("modules/run").unwrap();
        assert_eq!(run.unix_mode().map(|m| m & 0o777), Some(0o755));
        assert_eq!(run.compression(), CompressionMethod::Deflated);
        drop(run);
        let mut f = a.by_name("modules/big").unwrap();
        assert_eq!(f.compression(), CompressionMethod::Stored);
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, big);
        drop(f);
        assert!(a.by_name("modules/link").unwrap().is_symlink());
    }

    #[test]
    fn noise_is_deterministic_and_chunking_does_not_change_it() {
        let whole = pseudo_random_bytes(1000, 42);
        assert_eq!(whole, pseudo_random_bytes(1000, 42));
        assert_ne!(whole, pseudo_random_bytes(1000, 43));
        let mut n = Noise::new(42);
        let mut parts = vec![0u8; 1000];
        let (a, b) = parts.split_at_mut(504);
        n.fill(a);
        n.fill(b);
        assert_eq!(parts, whole);
    }
}
