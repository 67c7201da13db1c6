//! The real daemon, started for the demo and for the integration tests: its configuration file
//! (written by the `toml` crate, so every path and URL is escaped by the implementation that
//! reads it back), the command line that runs it, and the wait until its `/progress` answers.
//! `demo` and `tests/common/daemon.rs` both start their daemons through here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::config::ServerTable;
use crate::server::ServerTimeouts;

/// The keys the kit sets in a daemon's configuration file; every other key takes its default
/// or comes from the extra TOML given to [`DaemonConfig::to_toml`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub work_dir: PathBuf,
    pub device_api_url: String,
    pub allowed_roots: Vec<PathBuf>,
    pub ota_gui_path: PathBuf,
    pub stop_timeout_s: u64,
    pub allow_http: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// The `[server]` table; `None` leaves the contract's timeouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerTable>,
}

/// Why a daemon could not be configured, started or seen answering.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot write the daemon's configuration as TOML: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error("the extra configuration is not TOML: {0}")]
    Extra(#[from] toml::de::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon exited ({0}) before answering /progress")]
    Exited(ExitStatus),
    #[error("the daemon did not answer /progress within {} s", .0.as_secs())]
    NotReady(Duration),
    #[error("cannot wait for the daemon: {0}")]
    Wait(std::io::Error),
}

impl DaemonConfig {
    /// A daemon on `listen` working in `work_dir`, reporting to `device_api_url`, deploying
    /// beneath `allowed_roots`; no ota-gui (`<work_dir>/no-ota-gui`), `stop_timeout_s` 2,
    /// `https://` only, no CA file, the default log level and server timeouts.
    pub fn new(
        listen: SocketAddr,
        work_dir: &Path,
        device_api_url: &str,
        allowed_roots: Vec<PathBuf>,
    ) -> DaemonConfig {
        DaemonConfig {
            listen,
            work_dir: work_dir.to_path_buf(),
            device_api_url: device_api_url.to_string(),
            allowed_roots,
            ota_gui_path: work_dir.join("no-ota-gui"),
            stop_timeout_s: 2,
            allow_http: false,
            ca_file: None,
            log_level: None,
            server: None,
        }
    }

    /// The given API timeouts, written as `[server]`.
    pub fn with_server_timeouts(mut self, t: ServerTimeouts) -> DaemonConfig {
        self.server = Some(ServerTable::from(t));
        self
    }

    /// The configuration file: these keys and those of `extra` (TOML text; a key it repeats
    /// wins, and a table it repeats is merged key by key). The keys outside a table come first,
    /// so more top-level keys may be appended to the text only when no table was written.
    pub fn to_toml(&self, extra: &str) -> Result<String, DaemonError> {
        let mut table = toml::Table::try_from(self)?;
        merge(&mut table, toml::from_str::<toml::Table>(extra)?);
        Ok(toml::to_string(&table)?)
    }

    /// Write [`Self::to_toml`] to `path`.
    pub fn write(&self, extra: &str, path: &Path) -> Result<(), DaemonError> {
        std::fs::write(path, self.to_toml(extra)?).map_err(|source| DaemonError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `from`'s keys into `into`: values replaced, tables merged.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Proxy variables a daemon of the kit never inherits: everything it talks to is on loopback.
const PROXY_VARIABLES: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

/// Appends `serve --config <config>` to `cmd` (the daemon binary itself, or a program that
/// runs the binary named as its last argument, such as strace), run from `cwd` with stdin
/// closed, stdout and stderr into the files given, without proxy variables, in a process group
/// of its own (a Ctrl-C at a terminal reaches the caller, which stops the daemon itself).
pub fn serve_command<'a>(
    cmd: &'a mut Command,
    config: &Path,
    cwd: &Path,
    stdout: std::fs::File,
    stderr: std::fs::File,
) -> &'a mut Command {
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for v in PROXY_VARIABLES {
        cmd.env_remove(v);
    }
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    cmd
}

/// Ask `/progress` on `addr` every 20 ms until it answers HTTP 200 with JSON (returned: the
/// first envelope), the daemon `child` exits, or `timeout` passes.
pub fn wait_ready(
    addr: SocketAddr,
    child: &mut Child,
    timeout: Duration,
) -> Result<Value, DaemonError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, Some(envelope))) =
            crate::apiclient::fetch_progress(addr, Duration::from_secs(2))
        {
            return Ok(envelope);
        }
        if let Some(status) = child.try_wait().map_err(DaemonError::Wait)? {
            return Err(DaemonError::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(DaemonError::NotReady(timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn sample() -> DaemonConfig {
        DaemonConfig::new(
            "127.0.0.1:4321".parse().unwrap(),
            Path::new("/tmp/odd \"work\"\\dir"),
            "http://127.0.0.1:9",
            vec![PathBuf::from("/tmp/root/opt/tope")],
        )
    }

    /// The file the kit writes is read by the daemon's own loader to the values given, with
    /// quotes and backslashes in paths, extra keys, and a `[server]` table (docs/API.md 7).
    #[test]
    fn written_config_is_read_back_by_the_daemon() {
        let mut c = sample().with_server_timeouts(ServerTimeouts {
            head: Duration::from_millis(300),
            idle: Duration::from_millis(800),
            request: Duration::from_millis(400),
        });
        c.ca_file = Some(PathBuf::from("/tmp/ca.pem"));
        c.log_level = Some("debug".into());
        let text = c
            .to_toml("settle_s = 0\nstop_timeout_s = 5\n[server]\nidle_timeout_ms = 900\n")
            .unwrap();
        let cfg = Config::from_toml(&text).unwrap();
        assert_eq!(cfg.listen, c.listen);
        assert_eq!(cfg.work_dir, c.work_dir);
        assert_eq!(cfg.device_api_url, c.device_api_url);
        assert_eq!(cfg.allowed_roots, c.allowed_roots);
        assert_eq!(
            cfg.ota_gui_path,
            Path::new("/tmp/odd \"work\"\\dir/no-ota-gui")
        );
        assert_eq!(cfg.ca_file.as_deref(), Some(Path::new("/tmp/ca.pem")));
        assert_eq!(cfg.log_level, tracing::Level::DEBUG);
        assert_eq!(cfg.settle_s, 0);
        // A key of the extra text wins; a table is merged key by key.
        assert_eq!(cfg.stop_timeout_s, 5);
        assert_eq!(cfg.server.head, Duration::from_millis(300));
        assert_eq!(cfg.server.idle, Duration::from_millis(900));
        assert_eq!(cfg.server.request, Duration::from_millis(400));
    }

    /// Without a table, keys appended to the text are the document's own (tests append some).
    #[test]
    fn without_a_table_keys_may_be_appended() {
        let mut text = sample().to_toml("").unwrap();
        assert!(!text.starts_with('[') && !text.contains("\n["), "{text}");
        text.push_str("settle_s = 7\n");
        assert_eq!(Config::from_toml(&text).unwrap().settle_s, 7);
        assert!(matches!(
            sample().to_toml("not toml"),
            Err(DaemonError::Extra(_))
        ));
    }

    #[test]
    fn a_child_that_exits_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut child = Command::new("true").spawn().unwrap();
        let e = wait_ready(addr, &mut child, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, DaemonError::Exited(s) if s.success()), "{e:?}");
    }
}
