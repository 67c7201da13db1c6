//! `tope-updater check-config [--config PATH]`: read the configuration exactly as the daemon
//! does (the same loader, the same `ca_file` check) and print the effective configuration,
//! every key with its value, defaults included, as TOML that the daemon reads back unchanged.
//! Exit 0, or 2 with the daemon's own message naming the bad key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{Config, ServerTable};

/// Run the command; the exit code.
pub fn run(path: Option<&Path>) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::print_error(&e);
            return ExitCode::from(2);
        }
    };
    // The daemon refuses an unusable CA file at start (exit 2): so does the check.
    if let Err(e) = crate::net::tls_config(cfg.ca_file.as_deref()) {
        crate::logging::print_error(format_args!("config key `ca_file`: {e}"));
        return ExitCode::from(2);
    }
    let source = match path {
        Some(p) => format!("{}", p.display()),
        None => "no --config: every key at its default".to_string(),
    };
    match effective_toml(&cfg) {
        Ok(text) => {
            print!("# tope-updater effective configuration ({source})\n{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::logging::print_error(&e);
            ExitCode::from(2)
        }
    }
}

/// Every key of the configuration file, in the order docs/API.md 7 lists them; the tables
/// come last (TOML puts a table's keys after the document's own).
#[derive(Serialize)]
struct Effective {
    listen: String,
    device_api_url: String,
    work_dir: PathBuf,
    allowed_roots: Vec<PathBuf>,
    allow_http: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    ota_gui_path: PathBuf,
    stop_timeout_s: u64,
    trust_window_hours: u64,
    max_package_size: u64,
    max_download_bytes_per_s: u64,
    log_level: String,
    settle_s: u64,
    trusted_keys: Vec<String>,
    require_signature: bool,
    allow_downgrade: bool,
    delta_downloads: bool,
    server: ServerTable,
    /// docs/API.md 9.1: tokens are printed as `"***"`, never in clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<crate::fleet::config::FleetTable>,
}

/// Why the effective configuration cannot be written as TOML.
#[derive(Debug, thiserror::Error)]
pub enum EffectiveError {
    /// TOML strings are UTF-8: a path that is not cannot be written (or read back).
    #[error("config key `{key}`: the path {path:?} is not UTF-8 and cannot be written as TOML")]
    NotUtf8 { key: &'static str, path: PathBuf },
    #[error("cannot write the configuration as TOML: {0}")]
    Toml(#[from] toml::ser::Error),
}

fn utf8(key: &'static str, p: &Path) -> Result<PathBuf, EffectiveError> {
    match p.to_str() {
        Some(_) => Ok(p.to_path_buf()),
        None => Err(EffectiveError::NotUtf8 {
            key,
            path: p.to_path_buf(),
        }),
    }
}

/// Every key of `cfg` as a TOML document the daemon reads back to the same configuration,
/// written by the `toml` crate. Unset optional keys are named in a comment.
pub fn effective_toml(cfg: &Config) -> Result<String, EffectiveError> {
    // No `..`: a key added to Config does not compile until it is printed here too.
    let Config {
        listen,
        device_api_url,
        work_dir,
        allowed_roots,
        allow_http,
        ca_file,
        ota_gui_path,
        stop_timeout_s,
        trust_window_hours,
        max_package_size,
        max_download_bytes_per_s,
        log_level,
        settle_s,
        trusted_keys,
        require_signature,
        allow_downgrade,
        delta_downloads,
        server,
        fleet,
    } = cfg;
    let effective = Effective {
        listen: listen.to_string(),
        device_api_url: device_api_url.clone(),
        work_dir: utf8("work_dir", work_dir)?,
        allowed_roots: allowed_roots
            .iter()
            .map(|r| utf8("allowed_roots", r))
            .collect::<Result<_, _>>()?,
        allow_http: *allow_http,
        ca_file: ca_file.as_deref().map(|p| utf8("ca_file", p)).transpose()?,
        ota_gui_path: utf8("ota_gui_path", ota_gui_path)?,
        stop_timeout_s: *stop_timeout_s,
        trust_window_hours: *trust_window_hours,
        max_package_size: *max_package_size,
        max_download_bytes_per_s: *max_download_bytes_per_s,
        log_level: log_level.as_str().to_ascii_lowercase(),
        settle_s: *settle_s,
        trusted_keys: trusted_keys.iter().map(|k| k.to_base64()).collect(),
        require_signature: *require_signature,
        allow_downgrade: *allow_downgrade,
        delta_downloads: *delta_downloads,
        server: ServerTable::from(*server),
        fleet: fleet.as_ref().map(|f| f.to_table()),
    };
    let mut out = String::new();
    if ca_file.is_none() {
        out.push_str("# ca_file: not set\n");
    }
    if fleet.is_none() {
        out.push_str("# [fleet]: not set (fleet mode off)\n");
    }
    out.push_str(&toml::to_string(&effective)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_keys_are_printed_and_read_back_unchanged() {
        let key = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=";
        let cfg = Config::from_toml(&format!(
            "trusted_keys = [\"{key}\"]\nrequire_signature = true\nallow_downgrade = false\n"
        ))
        .unwrap();
        let text = effective_toml(&cfg).unwrap();
        assert!(
            text.contains(&format!("trusted_keys = [\"{key}\"]\n")),
            "{text}"
        );
        assert!(text.contains("require_signature = true\n"), "{text}");
        assert!(text.contains("allow_downgrade = false\n"), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), cfg);
    }

    #[test]
    fn defaults_are_printed_and_read_back_unchanged() {
        let cfg = Config::from_toml("").unwrap();
        let text = effective_toml(&cfg).unwrap();
        assert!(text.contains("listen = \"127.0.0.1:12315\"\n"), "{text}");
        assert!(text.contains("allowed_roots = [\"/opt/tope\"]\n"), "{text}");
        assert!(text.contains("log_level = \"info\"\n"), "{text}");
        assert!(text.contains("# ca_file: not set"), "{text}");
        assert!(
            text.contains(
                "[server]\nhead_timeout_ms = 10000\nidle_timeout_ms = 60000\nrequest_timeout_ms = 10000\n"
            ),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text).unwrap(), cfg);
    }

    /// A path TOML cannot hold (not UTF-8) is an error naming its key, never a lossy path
    /// that the daemon would read back as another directory.
    #[test]
    fn a_non_utf8_path_is_an_error_naming_its_key() {
        use std::os::unix::ffi::OsStrExt;
        let mut cfg = Config::from_toml("").unwrap();
        cfg.work_dir = PathBuf::from(std::ffi::OsStr::from_bytes(b"/var/lib/\xff"));
        let e = effective_toml(&cfg).unwrap_err();
        assert!(
            matches!(
                e,
                EffectiveError::NotUtf8 {
                    key: "work_dir",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("config key `work_dir`"), "{e}");
    }

    /// docs/API.md 8.7: `check-config` prints every key, written by the `toml` crate, and the
    /// daemon's loader reads the file back to the same configuration.
    #[test]
    fn every_key_set_round_trips() {
        let cfg = Config::from_toml(
            r#"
listen = "0.0.0.0:2000"
device_api_url = "https://device.local:9443/"
work_dir = "/var/lib/odd \"dir\"\\x"
allowed_roots = ["/opt/tope", "/srv/./printer"]
allow_http = true
ca_file = "/etc/tope-updater/ca.pem"
ota_gui_path = "/opt/tope/gui"
stop_timeout_s = 7
trust_window_hours = 3
max_package_size = 12345
max_download_bytes_per_s = 1000
log_level = "warning"
settle_s = 0
trusted_keys = ["O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik="]
require_signature = true
allow_downgrade = false
delta_downloads = false

[server]
head_timeout_ms = 300
idle_timeout_ms = 700
request_timeout_ms = 450

[fleet]
url = "http://fleet.local:8080"
tenant = "acme"
controller_id = "printer-7"
poll_interval_s = 30
ready_cmd = ["/opt/tope/bin/idle", "--quiet"]

[fleet.attributes]
hw_boardname = "tope-x1"
hw_revision = "rev2"
"#,
        )
        .unwrap();
        let text = effective_toml(&cfg).unwrap();
        // Read back by the daemon's own loader, from a file, as `serve --config` reads it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("effective.toml");
        std::fs::write(&file, &text).unwrap();
        assert_eq!(Config::load(Some(&file)).unwrap(), cfg, "{text}");
        assert!(text.contains("idle_timeout_ms = 700\n"), "{text}");
        assert!(!text.contains("not set"), "{text}");
        assert!(text.contains("log_level = \"warn\"\n"), "{text}");
        assert!(
            text.contains("\"/srv/printer\""),
            "normalised roots: {text}"
        );
    }

    /// docs/API.md 9.1: `check-config` prints the `[fleet]` table with its tokens as `"***"`,
    /// never in clear.
    #[test]
    fn api_9_1_fleet_tokens_are_never_printed() {
        let cfg = Config::from_toml(
            "allow_http = true\n[fleet]\nurl = \"http://f:1\"\ncontroller_id = \"p\"\n\
             target_token = \"tok-s3cret\"\n",
        )
        .unwrap();
        let text = effective_toml(&cfg).unwrap();
        assert!(!text.contains("tok-s3cret"), "{text}");
        assert!(text.contains("target_token = \"***\""), "{text}");
        assert!(!format!("{cfg:?}").contains("tok-s3cret"));
    }
}
