//! The commands for package authors (docs/API.md section 8.7): `keygen` makes a signing key,
//! `pack` builds (and signs) a package, `verify` runs the daemon's own checks on one. Each
//! exits 0, or 1 with the reason on stderr. And for a person at the printer (9.2): `install`
//! has the running daemon install a package from a file or a URL.

pub mod error;
pub mod install;
pub mod keygen;
pub mod pack;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
pub use error::ToolError;

/// Print the outcome of command `name`: `ok` on stdout (when not empty) and exit 0, or the
/// reason on stderr and exit 1.
pub fn finish(name: &str, result: Result<String, ToolError>) -> ExitCode {
    match result {
        Ok(ok) => {
            if !ok.is_empty() {
                println!("{ok}");
            }
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("tope-updater {name}: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's configuration when `--config` was given (its `allowed_roots`, and for
/// `verify` its keys, then apply).
fn load_config(path: Option<&Path>) -> Result<Option<Config>, ToolError> {
    Ok(path.map(|p| Config::load(Some(p))).transpose()?)
}
