//! Why a command for people (`keygen`, `pack`, `verify`, `install`, `demo`) stopped: one
//! variant per kind of failure, holding its facts (the path, the module, the sizes) and its
//! source error. The text each prints is the command's message on stderr, exactly as the
//! integration tests and operators read it.

use std::path::PathBuf;

use crate::apiclient::ClientError;
use crate::config::ConfigError;
use crate::error::OtaError;
#[cfg(feature = "demo")]
use crate::kit as crate_kit;

/// What a file operation was doing when it failed (the first words of the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    Opening,
    Creating,
    Reading,
    Writing,
    /// Writing a whole file at once (`cannot write <path>`).
    WritingKey,
    Compressing,
    SyncingDirOf,
    Removing,
}

impl std::fmt::Display for Doing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Doing::Opening => "cannot open",
            Doing::Creating => "cannot create",
            Doing::Reading => "reading",
            Doing::Writing => "writing",
            Doing::WritingKey => "cannot write",
            Doing::Compressing => "compressing",
            Doing::SyncingDirOf => "cannot sync the directory of",
            Doing::Removing => "cannot remove",
        })
    }
}

/// A command's failure; its `Display` is the message printed after `tope-updater <command>: `.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The file given with `--config`.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A file operation on `path`.
    #[error("{doing} {}: {source}", path.display())]
    File {
        doing: Doing,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that is not there.
    #[error("cannot open {}: no such file", path.display())]
    Missing { path: PathBuf },
    /// A file read only when it is a regular file of bounded size, refused (docs/API.md 9.6).
    #[error("{}: {why}", path.display())]
    Refused { path: PathBuf, why: String },
    /// A file `install` reads, and what is wrong with it: `why` reads on from the path.
    #[error("{} {why}", path.display())]
    About { path: PathBuf, why: String },
    /// A package given to `install` that is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// A file that should hold the JSON line `pack` prints.
    #[error("{}: not the JSON line `pack` prints (line {line}, column {column})", path.display())]
    NotPackLine {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// No daemon answers on its API address.
    #[error(
        "no updater answers on {addr} ({source}); is it running? (systemctl status tope-updater)"
    )]
    NoDaemon {
        addr: std::net::SocketAddr,
        source: ClientError,
    },
    /// A file or directory that could not be looked at or listed.
    #[error("{}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A module's `src` that cannot be looked at.
    #[error("module {module}: src {}: {source}", path.display())]
    ModuleSrc {
        module: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A ZIP being written to `path`.
    #[error("writing {}: {source}", path.display())]
    Zip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
    /// A rename that would put the result in place.
    #[error("cannot rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    /// No free temporary name beside the output after several tries.
    #[error("cannot create a temporary file in {}: {last}", dir.display())]
    NoTempName { dir: PathBuf, last: std::io::Error },
    #[error("the system's random generator failed")]
    Random,
    /// A file named on the command line whose content is not what it must be.
    #[error("{}: {why}", path.display())]
    BadFile { path: PathBuf, why: String },
    /// A command-line value that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// The package's own checks (the daemon's rules).
    #[error("{0}")]
    Package(#[from] OtaError),
    /// The SWU envelope `pack --out FILE.swu` writes around the package (docs/API.md 9.3).
    #[error("{0}")]
    Envelope(crate::swu::SwuError),
    /// The package just built fails the daemon's own checks.
    #[error("the package built is refused: {0}")]
    Built(OtaError),
    /// A package on disk, checked by the daemon's rules.
    #[error("{}: {source}", path.display())]
    PackageAt { path: PathBuf, source: OtaError },
    /// What DIR holds for `pack` breaks a packaging rule (a link, a special file, a name).
    #[error("{0}")]
    Content(String),
    /// A file changed size while it was read.
    #[error("{} changed while it was packed ({before} bytes, then {after})", path.display())]
    Changed {
        path: PathBuf,
        before: u64,
        after: u64,
    },
    /// `manifest.json` as JSON text.
    #[error("{name}: {source}")]
    ManifestJson {
        name: &'static str,
        source: serde_json::Error,
    },
    /// `keygen` never writes over an existing file.
    #[error("{} already exists; refusing to overwrite a key (remove it first)", path.display())]
    KeyExists { path: PathBuf },
    /// A signing key could not be made.
    #[error("{0}")]
    Key(#[from] crate::package::KeyError),
    /// The private key given to `pack --key` cannot be used.
    #[error("--key {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        source: crate::package::KeyError,
    },
    /// Printing a result.
    #[error("cannot print the result: {0}")]
    Print(serde_json::Error),
    /// The daemon's API did not answer usefully.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// Something the command needs from the system (a runtime, a signal handler, a port).
    #[error("{what}: {source}")]
    System {
        what: &'static str,
        source: std::io::Error,
    },
    /// The daemon the demo started (its configuration, its start, its first answer).
    #[cfg(feature = "demo")]
    #[error("{0}")]
    Daemon(#[from] crate_kit::DaemonError),
    /// A step of the demo, and why it failed.
    #[error("{what}: {source}")]
    Step {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Ctrl-C at the terminal.
    #[error("interrupted (Ctrl-C)")]
    Interrupted,
    /// A download or an installation ended in a stage other than the one awaited.
    #[error(
        "{what} ended in stage {stage} ({message}): {}",
        error.as_deref().unwrap_or("no error given")
    )]
    Ended {
        what: &'static str,
        stage: String,
        message: String,
        error: Option<String>,
    },
    /// The daemon refused a request: the envelope's `msg` (`<CODE>: <detail>`), or the whole
    /// answer when it has none.
    #[error("{0}")]
    RequestRefused(String),
    /// The update ended `failed`: its `<CODE>: <detail>`.
    #[error("{0}")]
    UpdateFailed(String),
    /// The updater went back to `idle` while the update was followed.
    #[error("the updater is idle: the update is no longer running")]
    NoLongerRunning,
    /// Hashing a package was stopped before it completed.
    #[error("interrupted")]
    HashInterrupted,
    /// A request of the demo refused by the daemon, with the whole answer.
    #[error("{endpoint} was refused: {answer}")]
    EndpointRefused {
        endpoint: &'static str,
        answer: serde_json::Value,
    },
    /// The daemon the demo started exited while it was followed.
    #[error("the daemon exited ({0})")]
    DaemonExited(std::process::ExitStatus),
    /// No stage of `until` came within the time.
    #[error("no {until} within {} s", within.as_secs())]
    StageTimeout {
        until: String,
        within: std::time::Duration,
    },
    /// The updated program the demo deploys is not running after the update.
    #[error("printerd {version} is not running after the update (start_cmd)")]
    NotRestarted { version: &'static str },
    /// The daemon the demo started did not stop on SIGTERM.
    #[error("the daemon did not exit within {} s of SIGTERM", within.as_secs())]
    NoExitOnSigterm { within: std::time::Duration },
}

/// The package checks' typed error, printed as the daemon reports it (`"<CODE>: <detail>"`).
impl From<crate::package::PackageError> for ToolError {
    fn from(e: crate::package::PackageError) -> ToolError {
        ToolError::Package(OtaError::from(e))
    }
}

impl ToolError {
    pub(crate) fn file(doing: Doing, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ToolError::File {
            doing,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn inspect(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ToolError::Inspect {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages the commands print (tests/package_tools.rs and tests/operator_cli.rs read
    /// them) keep their words.
    #[test]
    fn messages_keep_their_text() {
        let enoent = || std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(
            ToolError::file(Doing::Opening, "/x", enoent()).to_string(),
            format!("cannot open /x: {}", enoent())
        );
        assert_eq!(
            ToolError::Missing {
                path: "/k.pem".into()
            }
            .to_string(),
            "cannot open /k.pem: no such file"
        );
        assert_eq!(
            ToolError::Changed {
                path: "/d/f".into(),
                before: 3,
                after: 5
            }
            .to_string(),
            "/d/f changed while it was packed (3 bytes, then 5)"
        );
        assert_eq!(
            ToolError::file(Doing::SyncingDirOf, "/o/p.zip", enoent()).to_string(),
            format!("cannot sync the directory of /o/p.zip: {}", enoent())
        );
        let e = ToolError::file(Doing::Reading, "/f", enoent());
        assert!(std::error::Error::source(&e).is_some());
    }
}
