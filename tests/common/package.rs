//! Builds OTA packages (ZIP with `manifest.json` at the root), including hostile ones, with the
//! kit's ZIP builder.

use serde_json::Value;

pub use tope_updater::kit::package::PackageWriter;
pub use tope_updater::kit::{manifest, Entry};

/// A ZIP holding exactly `entries`, in order. Large files are stored, small ones deflated.
pub fn build_zip(entries: &[Entry]) -> Vec<u8> {
    tope_updater::kit::build_zip(entries).expect("build the ZIP")
}

/// A package: `manifest.json` first, then `entries`.
pub fn build_package(manifest: &Value, entries: &[Entry]) -> Vec<u8> {
    tope_updater::kit::build_package(manifest, entries).expect("build the package")
}
