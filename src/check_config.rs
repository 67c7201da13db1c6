//! `tope-updater check-config [--config PATH]`: read the configuration exactly as the daemon
//! does (the same loader, the same `ca_file` check) and print the effective configuration,
//! every key with its value, defaults included, as TOML that the daemon reads back unchanged.
//! Exit 0, or 2 with the daemon's own message naming the bad key.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

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
    print!(
        "# tope-updater effective configuration ({source})\n{}",
        effective_toml(&cfg)
    );
    ExitCode::SUCCESS
}

/// A TOML string literal (a JSON string is one: same escapes).
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn path(p: &Path) -> String {
    quote(&p.display().to_string())
}

/// Every key of `cfg` as a TOML document the daemon reads back to the same configuration.
pub fn effective_toml(cfg: &Config) -> String {
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
    } = cfg;
    let keys: Vec<String> = trusted_keys.iter().map(|k| quote(&k.to_base64())).collect();
    let roots: Vec<String> = allowed_roots.iter().map(|r| path(r)).collect();
    let ca_file = match ca_file {
        Some(p) => path(p),
        None => String::new(),
    };
    let lines = [
        ("listen", quote(&listen.to_string())),
        ("device_api_url", quote(device_api_url)),
        ("work_dir", path(work_dir)),
        ("allowed_roots", format!("[{}]", roots.join(", "))),
        ("allow_http", allow_http.to_string()),
        ("ca_file", ca_file),
        ("ota_gui_path", path(ota_gui_path)),
        ("stop_timeout_s", stop_timeout_s.to_string()),
        ("trust_window_hours", trust_window_hours.to_string()),
        ("max_package_size", max_package_size.to_string()),
        (
            "max_download_bytes_per_s",
            max_download_bytes_per_s.to_string(),
        ),
        ("log_level", quote(&log_level.as_str().to_ascii_lowercase())),
        ("settle_s", settle_s.to_string()),
        ("trusted_keys", format!("[{}]", keys.join(", "))),
        ("require_signature", require_signature.to_string()),
        ("allow_downgrade", allow_downgrade.to_string()),
    ];
    let mut out = String::new();
    for (key, value) in lines {
        if value.is_empty() {
            out.push_str(&format!("# {key}: not set\n"));
        } else {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out
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
        let text = effective_toml(&cfg);
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
        let text = effective_toml(&cfg);
        assert!(text.contains("listen = \"127.0.0.1:12315\"\n"), "{text}");
        assert!(text.contains("allowed_roots = [\"/opt/tope\"]\n"), "{text}");
        assert!(text.contains("log_level = \"info\"\n"), "{text}");
        assert!(text.contains("# ca_file: not set"), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), cfg);
    }

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
"#,
        )
        .unwrap();
        let text = effective_toml(&cfg);
        assert_eq!(Config::from_toml(&text).unwrap(), cfg, "{text}");
        assert!(text.contains("log_level = \"warn\"\n"), "{text}");
        assert!(
            text.contains("\"/srv/printer\""),
            "normalised roots: {text}"
        );
    }
}
