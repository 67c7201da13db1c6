//! Writing an envelope (docs/API.md 9.3): one pass over the ZIP for its sha256, its length
//! and the `crc` checksum, then `sw-description`, the ZIP streamed in 64 KiB blocks and the
//! trailer into a temporary file of the updater's own (created, never reused), fsynced and
//! renamed over the output. A failure leaves no temporary behind and the output untouched.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::cpio::{self, FILE_MODE};
use super::description::{self, valid_board};
use super::{hex, EnvelopeMeta, SwuError};

const BLOCK: usize = 64 * 1024;

fn write_err(what: &Path) -> impl Fn(std::io::Error) -> SwuError + '_ {
    move |source| SwuError::Write {
        what: what.display().to_string(),
        source,
    }
}

fn read_err(what: &Path) -> impl Fn(std::io::Error) -> SwuError + '_ {
    move |source| SwuError::Read {
        what: what.display().to_string(),
        source,
    }
}

/// The image's member name: the output's name with `.zip` for `.swu` (`printer-1.2.swu` ->
/// `printer-1.2.zip`), characters outside `[A-Za-z0-9._+-]` replaced by `_`.
fn image_name(out: &Path) -> String {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    let clean = clean.trim_start_matches('.');
    if clean.is_empty() {
        "package.zip".into()
    } else {
        format!("{clean}.zip")
    }
}

/// Whether the writer accepts `meta` (see docs/API.md 9.3), so a tool can refuse it before
/// building the package.
pub fn check_meta(meta: &EnvelopeMeta) -> Result<(), SwuError> {
    let printable = |s: &str| !s.is_empty() && !s.chars().any(char::is_control) && s.len() <= 256;
    if !printable(&meta.version) {
        return Err(SwuError::Meta(format!(
            "version {:?} must be 1 to 256 bytes without control characters",
            meta.version
        )));
    }
    if let Some(board) = &meta.board {
        if !valid_board(board) {
            return Err(SwuError::Meta(format!(
                "board {board:?} must match [A-Za-z][A-Za-z0-9_-]* (at most 128 bytes) and not be a name of software's own"
            )));
        }
    }
    if let Some(rev) = meta.hardware_compatibility.iter().find(|r| !printable(r)) {
        return Err(SwuError::Meta(format!(
            "hardware compatibility {rev:?} must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

/// sha256, length and byte sum of a file, in one pass.
fn digest(path: &Path) -> Result<([u8; 32], u64, u32), SwuError> {
    let mut f = File::open(path).map_err(read_err(path))?;
    let mut hasher = Sha256::new();
    let (mut len, mut sum) = (0u64, 0u32);
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = f.read(&mut buf).map_err(read_err(path))?;
        if n == 0 {
            return Ok((hasher.finalize().into(), len, sum));
        }
        hasher.update(&buf[..n]);
        sum = cpio::byte_sum(sum, &buf[..n]);
        len += n as u64;
    }
}

/// A temporary name next to `out` that nobody else uses: `.<name>.<pid>.<n>.swu-tmp`.
fn create_temp(out: &Path) -> Result<(PathBuf, File), SwuError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = None;
    for n in 0..100 {
        let tmp = dir.join(format!(".{name}.{}.{n}.swu-tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(write_err(&tmp)(e)),
        }
    }
    let e = last.unwrap_or_else(|| std::io::Error::other("no free temporary name"));
    Err(write_err(out)(e))
}

/// Write the envelope `out` around the package `zip`, as docs/API.md 9.3 describes it
/// (`crc` format; members `sw-description`, `<out's name>.zip`, `TRAILER!!!`; the archive
/// padded to 512 bytes as GNU cpio does). Atomic: `out` is replaced only when all is written
/// and synced.
pub fn write_envelope(out: &Path, zip: &Path, meta: &EnvelopeMeta) -> Result<(), SwuError> {
    write_envelope_for(out, zip, meta, out)
}

/// [`write_envelope`] with the image named after `named_after` instead of `out`: `pack`
/// writes the envelope to a temporary of its own, checks it, then renames it to the name the
/// image was named after.
pub fn write_envelope_for(
    out: &Path,
    zip: &Path,
    meta: &EnvelopeMeta,
    named_after: &Path,
) -> Result<(), SwuError> {
    check_meta(meta)?;
    let (sha, len, sum) = digest(zip)?;
    let size = u32::try_from(len).map_err(|_| SwuError::TooLarge {
        what: zip.display().to_string(),
        len,
    })?;
    let filename = image_name(named_after);
    let text = description::render(meta, &filename, &hex(&sha));
    let (tmp, file) = create_temp(out)?;
    let result = write_to(file, &tmp, zip, &text, &filename, size, sum).and_then(|()| {
        fs::rename(&tmp, out).map_err(write_err(out))?;
        crate::fsutil::fsync_parent(out).map_err(write_err(out))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_to(
    file: File,
    tmp: &Path,
    zip: &Path,
    text: &str,
    filename: &str,
    size: u32,
    sum: u32,
) -> Result<(), SwuError> {
    let werr = write_err(tmp);
    let mut w = BufWriter::with_capacity(BLOCK, file);
    let desc_len =
        u32::try_from(text.len()).map_err(|_| SwuError::Meta("sw-description too long".into()))?;
    let mut total = cpio::write_header(
        &mut w,
        1,
        "sw-description",
        FILE_MODE,
        desc_len,
        cpio::byte_sum(0, text.as_bytes()),
    )
    .map_err(&werr)?;
    w.write_all(text.as_bytes()).map_err(&werr)?;
    total += pad(&mut w, u64::from(desc_len)).map_err(&werr)? + u64::from(desc_len);
    total += cpio::write_header(&mut w, 2, filename, FILE_MODE, size, sum).map_err(&werr)?;

    // The ZIP again, streamed; it must be the file that was hashed.
    let mut src = File::open(zip).map_err(read_err(zip))?;
    let mut buf = vec![0u8; BLOCK];
    let (mut copied, mut again) = (0u64, 0u32);
    loop {
        let n = src.read(&mut buf).map_err(read_err(zip))?;
        if n == 0 {
            break;
        }
        copied += n as u64;
        if copied > u64::from(size) {
            break;
        }
        again = cpio::byte_sum(again, &buf[..n]);
        w.write_all(&buf[..n]).map_err(&werr)?;
    }
    if copied != u64::from(size) || again != sum {
        return Err(SwuError::Changed {
            what: zip.display().to_string(),
        });
    }
    total += pad(&mut w, copied).map_err(&werr)? + copied;
    total += cpio::write_header(&mut w, 0, cpio::TRAILER, 0, 0, 0).map_err(&werr)?;
    let block_pad = (512 - total % 512) % 512;
    w.write_all(&vec![0u8; block_pad as usize]).map_err(&werr)?;
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(&werr)
}

/// Zero bytes after a member's data up to a multiple of 4; returns how many.
fn pad<W: Write>(w: &mut W, data_len: u64) -> std::io::Result<u64> {
    let n = cpio::align4(data_len) - data_len;
    w.write_all(&[0u8; 4][..n as usize])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::image_name;
    use std::path::Path;

    #[test]
    fn image_member_is_named_after_the_envelope_docs_api_9_3() {
        assert_eq!(
            image_name(Path::new("/x/printer-1.2.swu")),
            "printer-1.2.zip"
        );
        assert_eq!(image_name(Path::new("a b/ü.swu")), "_.zip");
        assert_eq!(image_name(Path::new("...")), "package.zip");
        assert_eq!(image_name(Path::new("out")), "out.zip");
    }
}
