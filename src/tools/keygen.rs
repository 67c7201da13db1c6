//! `tope-updater keygen --out FILE`: a new Ed25519 signing key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::error::{Doing, ToolError};
use crate::package::SigningKey;

/// Write a new private key to `out` (PKCS#8 PEM, mode 0600, never over an existing file) and
/// return its public key as `trusted_keys` takes it.
pub fn run(out: &Path) -> Result<String, ToolError> {
    let (key, pem_text) = SigningKey::generate().map_err(ToolError::Key)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ToolError::KeyExists {
                path: out.to_path_buf(),
            },
            _ => ToolError::file(Doing::Creating, out, e),
        })?;
    let written = f.write_all(pem_text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(out);
        return Err(ToolError::file(Doing::WritingKey, out, e));
    }
    Ok(key.public_key().to_base64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn contract_8_7_keygen_writes_a_0600_key_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pem");
        let public = run(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let key = SigningKey::from_pem(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(key.public_key().to_base64(), public);
        let before = std::fs::read(&p).unwrap();
        let e = run(&p).unwrap_err();
        assert!(matches!(e, ToolError::KeyExists { .. }), "{e:?}");
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }
}
