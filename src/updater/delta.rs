//! The updater's side of a delta download (docs/API.md 9.5): a package assembled by one is
//! verified by its signature and per-entry sha256, and its recorded sha256 stands in for
//! `package_md5` when it is checked again.

use time::OffsetDateTime;

use super::{Discard, Updater};
use crate::error;
use crate::fsutil;
use crate::lifecycle::PackageSpec;

impl Updater {
    /// A delta download assembled the package (docs/API.md 9.5): its signature and every
    /// entry's signed sha256 were checked; `package_md5` cannot be.
    pub(super) fn finish_delta(&self, spec: &PackageSpec) {
        if let Err(e) = self.advance(|l| l.begin_verify()) {
            return self.fail(e, Discard::Nothing);
        }
        tracing::info!(
            "{} verified by its signature and per-entry sha256 (delta download; package_md5 \
             not checked)",
            spec.package_name
        );
        if let Err(e) = self.advance(|l| l.verified(OffsetDateTime::now_utc())) {
            self.fail(e, Discard::Nothing);
        }
    }

    /// The package came from a delta download: its recorded sha256 stands in for the MD5
    /// (`Some(true)`: unchanged); `None`: not a delta package.
    pub(super) fn delta_package_intact(&self, spec: &PackageSpec) -> Option<bool> {
        let path = self.package_path(&spec.package_name);
        match crate::delta::check_assembled(&self.inner.cfg.work(), spec, &path)? {
            Ok(()) => Some(true),
            Err(why) => {
                tracing::error!("{why}");
                let _ = fsutil::remove_durable(&path);
                crate::delta::forget(&self.inner.cfg.work());
                self.fail(
                    error::md5_mismatch(format!(
                        "{why}; the file was deleted (delta download: its sha256 stands in for \
                         package_md5)"
                    )),
                    Discard::File,
                );
                Some(false)
            }
        }
    }
}
