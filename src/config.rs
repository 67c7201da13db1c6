//! Configuration: docs/API.md section 7. Every key optional, unknown keys refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::package::{PublicKey, Signatures};
use crate::paths::normalize_abs;
use crate::server::ServerTimeouts;

/// The daemon's configuration, after defaults and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// Base URL of device-api, without a trailing slash.
    pub device_api_url: String,
    pub work_dir: PathBuf,
    /// Normalised absolute directories a manifest `dst` must lie inside.
    pub allowed_roots: Vec<PathBuf>,
    pub allow_http: bool,
    pub ca_file: Option<PathBuf>,
    pub ota_gui_path: PathBuf,
    pub stop_timeout_s: u64,
    pub trust_window_hours: u64,
    pub max_package_size: u64,
    /// 0 means no cap.
    pub max_download_bytes_per_s: u64,
    pub log_level: tracing::Level,
    /// Seconds between the last module start and the health checks (section 8.4).
    pub settle_s: u64,
    /// Ed25519 keys a package's `manifest.sig` is verified with (section 8.6).
    pub trusted_keys: Vec<PublicKey>,
    /// Refuse packages without a signature verified by one of `trusted_keys`.
    pub require_signature: bool,
    /// Accept a package older than the installed version (device-api's rollbacks).
    pub allow_downgrade: bool,
    /// Fetch only the changed entries of a signed package (docs/API.md 9.5).
    pub delta_downloads: bool,
    /// The API's connection timeouts, the `[server]` table (docs/API.md 7 and 8.2).
    pub server: ServerTimeouts,
    /// The `[fleet]` table (docs/API.md 9.1); `None`: fleet mode off.
    pub fleet: Option<crate::fleet::config::FleetConfig>,
}

/// The file as written by an operator; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    device_api_url: Option<String>,
    work_dir: Option<PathBuf>,
    allowed_roots: Option<Vec<PathBuf>>,
    allow_http: Option<bool>,
    ca_file: Option<PathBuf>,
    ota_gui_path: Option<PathBuf>,
    stop_timeout_s: Option<u64>,
    trust_window_hours: Option<u64>,
    max_package_size: Option<u64>,
    max_download_bytes_per_s: Option<u64>,
    log_level: Option<String>,
    settle_s: Option<u64>,
    trusted_keys: Option<Vec<String>>,
    require_signature: Option<bool>,
    allow_downgrade: Option<bool>,
    delta_downloads: Option<bool>,
    server: Option<ServerTable>,
    fleet: Option<crate::fleet::config::FleetTable>,
}

/// The `[server]` table as a configuration file holds it: the API's connection timeouts in
/// milliseconds (docs/API.md 7), each optional. Read by the daemon; written by `check-config`
/// and by the kit that starts daemons for the demo and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
}

impl From<ServerTimeouts> for ServerTable {
    /// Every timeout, in milliseconds.
    fn from(t: ServerTimeouts) -> ServerTable {
        let ms = |d: std::time::Duration| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ServerTable {
            head_timeout_ms: ms(t.head),
            idle_timeout_ms: ms(t.idle),
            request_timeout_ms: ms(t.request),
        }
    }
}

/// Bounds of the `[server]` timeouts, in milliseconds: never so short that a real client on a
/// loaded printer is cut off, never so long that idle connections pile up for hours.
pub const SERVER_TIMEOUT_MS_MIN: u64 = 100;
/// Upper bound of `head_timeout_ms` and `request_timeout_ms` (10 minutes).
pub const HEAD_REQUEST_TIMEOUT_MS_MAX: u64 = 600_000;
/// Upper bound of `idle_timeout_ms` (1 hour).
pub const IDLE_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// One `[server]` timeout: its default when absent, else within `min..=max`.
fn timeout_ms(
    key: &'static str,
    value: Option<u64>,
    default: std::time::Duration,
    max: u64,
) -> Result<std::time::Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(ms) if (SERVER_TIMEOUT_MS_MIN..=max).contains(&ms) => {
            Ok(std::time::Duration::from_millis(ms))
        }
        Some(_) => Err(invalid(
            key,
            format!("must be between {SERVER_TIMEOUT_MS_MIN} and {max} (milliseconds)"),
        )),
    }
}

fn server_timeouts(raw: Option<ServerTable>) -> Result<ServerTimeouts, ConfigError> {
    let raw = raw.unwrap_or_default();
    let d = ServerTimeouts::default();
    Ok(ServerTimeouts {
        head: timeout_ms(
            "server.head_timeout_ms",
            raw.head_timeout_ms,
            d.head,
            HEAD_REQUEST_TIMEOUT_MS_MAX,
        )?,
        idle: timeout_ms(
            "server.idle_timeout_ms",
            raw.idle_timeout_ms,
            d.idle,
            IDLE_TIMEOUT_MS_MAX,
        )?,
        request: timeout_ms(
            "server.request_timeout_ms",
            raw.request_timeout_ms,
            d.request,
            HEAD_REQUEST_TIMEOUT_MS_MAX,
        )?,
    })
}

/// A configuration problem; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Largest configuration file read (docs/API.md 9.6): far above any real one.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// 1-based line and column (in characters) of byte `offset` in `bytes`.
fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

/// A TOML error as "line L, column C: <what>", without the excerpt of the file that the
/// parser's own display quotes. The parser's message names what it expected and, for a key
/// the configuration does not have, the key (never a value).
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return what;
    };
    let (line, column) = line_column(text.as_bytes(), span.start);
    // The key of a bad value, when its line is a plain `key = value`: a bare key is a name
    // (letters, digits, `_`, `-`), never a secret's value.
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.len() <= 64
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    match key {
        Some(k) => format!("line {line}, column {column}: `{k}`: {what}"),
        None => format!("line {line}, column {column}: {what}"),
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:12315";
pub const DEFAULT_DEVICE_API_URL: &str = "http://127.0.0.1:9080";

impl Config {
    /// Defaults, with `work_dir` the process's working directory.
    pub fn defaults() -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::default())
    }

    /// Load from an optional TOML file; a missing `--config` means all defaults.
    ///
    /// The file is read only when it is a regular file (a symlink to one is followed) of at
    /// most [`MAX_CONFIG_BYTES`]: a FIFO, a device or a huge file is refused at once, and a
    /// file that does not parse is reported by line and column only, never by its content
    /// (a `--config` pointed at `/etc/shadow` must not print its first line; docs/API.md 9.6).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(p) = path else {
            return Config::defaults();
        };
        let read_err = |why: String| ConfigError::Read {
            path: p.to_path_buf(),
            source: std::io::Error::other(why),
        };
        let bytes = match crate::fsutil::read_operator_file(p, MAX_CONFIG_BYTES) {
            crate::fsutil::ReadBack::Data(b) => b,
            crate::fsutil::ReadBack::Missing => {
                return Err(ConfigError::Read {
                    path: p.to_path_buf(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            }
            crate::fsutil::ReadBack::Refused(why) => return Err(read_err(why)),
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            let (line, column) = line_column(e.as_bytes(), e.utf8_error().valid_up_to());
            read_err(format!("line {line}, column {column}: not UTF-8 text"))
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: p.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: parse_message(text, &e),
        })?;
        Config::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen_s = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| invalid("listen", format!("`{listen_s}` is not an IP:port address")))?;

        let device_api_url = raw
            .device_api_url
            .unwrap_or_else(|| DEFAULT_DEVICE_API_URL.to_string());
        let device_api_url = device_api_url.trim_end_matches('/').to_string();
        if !(device_api_url.starts_with("http://") || device_api_url.starts_with("https://"))
            || device_api_url.len() <= "https://".len()
        {
            return Err(invalid(
                "device_api_url",
                format!("`{device_api_url}` is not an http(s) URL"),
            ));
        }

        let cwd = std::env::current_dir().map_err(|e| {
            invalid(
                "work_dir",
                format!("cannot read the working directory: {e}"),
            )
        })?;
        let work_dir = match raw.work_dir {
            None => cwd,
            Some(p) if p.as_os_str().is_empty() => {
                return Err(invalid("work_dir", "must not be empty"))
            }
            Some(p) if p.is_absolute() => p,
            Some(p) => cwd.join(p),
        };

        let roots = raw
            .allowed_roots
            .unwrap_or_else(|| vec![PathBuf::from("/opt/tope")]);
        if roots.is_empty() {
            return Err(invalid("allowed_roots", "needs at least one directory"));
        }
        let mut allowed_roots = Vec::with_capacity(roots.len());
        for r in roots {
            let n = normalize_abs(&r).ok_or_else(|| {
                invalid(
                    "allowed_roots",
                    format!("`{}` must be an absolute path without `..`", r.display()),
                )
            })?;
            if n == Path::new("/") {
                return Err(invalid(
                    "allowed_roots",
                    "`/` would let a package overwrite any file of the system",
                ));
            }
            allowed_roots.push(n);
        }

        let stop_timeout_s = raw.stop_timeout_s.unwrap_or(10);
        if stop_timeout_s == 0 || stop_timeout_s > 3600 {
            return Err(invalid("stop_timeout_s", "must be between 1 and 3600"));
        }
        let trust_window_hours = raw.trust_window_hours.unwrap_or(24);
        if trust_window_hours == 0 {
            return Err(invalid("trust_window_hours", "must be at least 1"));
        }
        let max_package_size = raw.max_package_size.unwrap_or(4_294_967_296);
        if max_package_size == 0 {
            return Err(invalid("max_package_size", "must be at least 1"));
        }
        let log_level = match raw.log_level.as_deref().unwrap_or("info") {
            s if s.eq_ignore_ascii_case("debug") => tracing::Level::DEBUG,
            s if s.eq_ignore_ascii_case("info") => tracing::Level::INFO,
            s if s.eq_ignore_ascii_case("warn") || s.eq_ignore_ascii_case("warning") => {
                tracing::Level::WARN
            }
            s if s.eq_ignore_ascii_case("error") => tracing::Level::ERROR,
            other => {
                return Err(invalid(
                    "log_level",
                    format!("`{other}` is not one of debug, info, warn, error"),
                ))
            }
        };
        let settle_s = raw.settle_s.unwrap_or(3);
        if settle_s > 3600 {
            return Err(invalid("settle_s", "must be between 0 and 3600"));
        }
        let mut trusted_keys = Vec::new();
        for k in raw.trusted_keys.unwrap_or_default() {
            let key = PublicKey::from_base64(&k).ok_or_else(|| {
                invalid(
                    "trusted_keys",
                    format!("`{k}` is not the base64 of a 32-byte Ed25519 public key"),
                )
            })?;
            trusted_keys.push(key);
        }
        let require_signature = raw.require_signature.unwrap_or(false);
        if require_signature && trusted_keys.is_empty() {
            return Err(invalid(
                "require_signature",
                "is true but trusted_keys is empty: no package could be installed",
            ));
        }
        let server = server_timeouts(raw.server)?;
        let allow_http = raw.allow_http.unwrap_or(false);
        let fleet = raw
            .fleet
            .map(|t| crate::fleet::config::FleetConfig::from_table(t, allow_http))
            .transpose()?;
        if let Some(ca) = &raw.ca_file {
            if ca.as_os_str().is_empty() {
                return Err(invalid("ca_file", "must not be empty"));
            }
        }

        Ok(Config {
            listen,
            device_api_url,
            work_dir,
            allowed_roots,
            allow_http,
            ca_file: raw.ca_file,
            ota_gui_path: raw
                .ota_gui_path
                .unwrap_or_else(|| PathBuf::from("/opt/tope/ota-gui")),
            stop_timeout_s,
            trust_window_hours,
            max_package_size,
            max_download_bytes_per_s: raw.max_download_bytes_per_s.unwrap_or(0),
            log_level,
            settle_s,
            trusted_keys,
            require_signature,
            allow_downgrade: raw.allow_downgrade.unwrap_or(true),
            delta_downloads: raw.delta_downloads.unwrap_or(true),
            server,
            fleet,
        })
    }

    /// Which signatures a package must carry: `trusted_keys` and `require_signature`.
    pub fn signatures(&self) -> Signatures<'_> {
        Signatures {
            trusted_keys: &self.trusted_keys,
            require_signature: self.require_signature,
        }
    }

    /// The work dir and every file the updater keeps in it.
    pub fn work(&self) -> crate::workdir::WorkDir {
        crate::workdir::WorkDir::new(&self.work_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_section7_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:12315");
        assert_eq!(c.device_api_url, "http://127.0.0.1:9080");
        assert_eq!(c.work_dir, std::env::current_dir().unwrap());
        assert_eq!(c.allowed_roots, vec![PathBuf::from("/opt/tope")]);
        assert!(!c.allow_http);
        assert_eq!(c.ca_file, None);
        assert_eq!(c.ota_gui_path, PathBuf::from("/opt/tope/ota-gui"));
        assert_eq!(c.stop_timeout_s, 10);
        assert_eq!(c.trust_window_hours, 24);
        assert_eq!(c.max_package_size, 4_294_967_296);
        assert_eq!(c.max_download_bytes_per_s, 0);
        assert_eq!(c.log_level, tracing::Level::INFO);
        assert_eq!(c.settle_s, 3);
        assert!(c.trusted_keys.is_empty());
        assert!(!c.require_signature);
        assert!(c.allow_downgrade);
        // docs/API.md 9.5: delta downloads are on unless turned off.
        assert!(c.delta_downloads);
        assert_eq!(c.server, ServerTimeouts::default());
    }

    #[test]
    fn contract_section7_every_key_is_read() {
        let c = Config::from_toml(
            r#"
listen = "127.0.0.1:2000"
device_api_url = "http://127.0.0.1:9999/"
work_dir = "/var/lib/tope-updater"
allowed_roots = ["/opt/tope", "/srv/./x"]
allow_http = true
ca_file = "/etc/ca.pem"
ota_gui_path = "/bin/gui"
stop_timeout_s = 3
trust_window_hours = 2
max_package_size = 1000
max_download_bytes_per_s = 500
log_level = "debug"
settle_s = 0
trusted_keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]
require_signature = true
allow_downgrade = false
delta_downloads = false

[server]
head_timeout_ms = 1500
idle_timeout_ms = 4000
request_timeout_ms = 2500
"#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.device_api_url, "http://127.0.0.1:9999");
        assert_eq!(c.work_dir, PathBuf::from("/var/lib/tope-updater"));
        assert_eq!(
            c.allowed_roots,
            vec![PathBuf::from("/opt/tope"), PathBuf::from("/srv/x")]
        );
        assert!(c.allow_http);
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.ota_gui_path, PathBuf::from("/bin/gui"));
        assert_eq!(c.stop_timeout_s, 3);
        assert_eq!(c.trust_window_hours, 2);
        assert_eq!(c.max_package_size, 1000);
        assert_eq!(c.max_download_bytes_per_s, 500);
        assert_eq!(c.log_level, tracing::Level::DEBUG);
        assert_eq!(c.settle_s, 0);
        let key: Vec<u8> = (0..32).collect();
        assert_eq!(c.trusted_keys.len(), 1);
        assert_eq!(c.trusted_keys[0].to_base64(), base64_of(&key));
        assert!(c.require_signature);
        assert!(!c.allow_downgrade);
        assert!(!c.delta_downloads);
        assert_eq!(
            c.server,
            ServerTimeouts {
                head: std::time::Duration::from_millis(1500),
                idle: std::time::Duration::from_millis(4000),
                request: std::time::Duration::from_millis(2500),
            }
        );
    }

    /// docs/API.md 7 and 8.2: the `[server]` timeouts default to 10 s, 60 s and 10 s, one
    /// may be given alone, and each is refused outside its bounds naming the key.
    #[test]
    fn contract_8_2_server_timeouts_defaults_partial_and_bounds() {
        let c = Config::from_toml("[server]\nidle_timeout_ms = 250\n").unwrap();
        assert_eq!(c.server.idle, std::time::Duration::from_millis(250));
        assert_eq!(c.server.head, std::time::Duration::from_secs(10));
        assert_eq!(c.server.request, std::time::Duration::from_secs(10));
        assert_eq!(
            Config::from_toml("[server]\n").unwrap().server,
            ServerTimeouts::default()
        );
        for (toml, key) in [
            ("head_timeout_ms = 99", "server.head_timeout_ms"),
            ("head_timeout_ms = 600001", "server.head_timeout_ms"),
            ("idle_timeout_ms = 0", "server.idle_timeout_ms"),
            ("idle_timeout_ms = 3600001", "server.idle_timeout_ms"),
            ("request_timeout_ms = 50", "server.request_timeout_ms"),
            ("request_timeout_ms = 600001", "server.request_timeout_ms"),
        ] {
            let e = Config::from_toml(&format!("[server]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("between"), "{toml}: {e}");
        }
        for ok in [
            "head_timeout_ms = 100",
            "head_timeout_ms = 600000",
            "idle_timeout_ms = 3600000",
        ] {
            let c = Config::from_toml(&format!("[server]\n{ok}\n"));
            assert!(c.is_ok(), "{ok}");
        }
        let e = Config::from_toml("[server]\nheader_timeout_ms = 5000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("header_timeout_ms"), "{e}");
        let e = Config::from_toml("[server]\nhead_timeout_ms = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("head_timeout_ms"), "{e}");
    }

    fn base64_of(b: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn contract_8_6_bad_key_and_signature_without_keys_are_config_errors() {
        let e = Config::from_toml("trusted_keys = [\"AAAA\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_keys") && e.contains("`AAAA`"), "{e}");
        let e = Config::from_toml("require_signature = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("require_signature"), "{e}");
        let e = Config::from_toml("trusted_keys = \"AAAA\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_keys"), "{e}");
    }

    /// docs/API.md 9.6: a parse error shows a line and a column (and the key of a bad
    /// value), never the text of the line.
    #[test]
    fn contract_9_6_parse_errors_do_not_echo_the_file() {
        let e = Config::from_toml("# a comment\nroot:$6$Secretsalt$hash:19000:0:::\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, column"), "{e}");
        assert!(!e.contains("Secretsalt") && !e.contains("19000"), "{e}");
        let e = Config::from_toml("settle_s = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1, column 12: `settle_s`"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("lisen = \"x\"").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("listen = \"nowhere\"", "listen"),
            ("device_api_url = \"ftp://x\"", "device_api_url"),
            ("allowed_roots = [\"relative\"]", "allowed_roots"),
            ("allowed_roots = [\"/opt/../etc\"]", "allowed_roots"),
            ("allowed_roots = [\"/\"]", "allowed_roots"),
            ("allowed_roots = []", "allowed_roots"),
            ("stop_timeout_s = 0", "stop_timeout_s"),
            ("log_level = \"loud\"", "log_level"),
            ("stop_timeout_s = \"ten\"", "stop_timeout_s"),
            ("max_package_size = 0", "max_package_size"),
            ("settle_s = -1", "settle_s"),
            ("settle_s = 3601", "settle_s"),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
