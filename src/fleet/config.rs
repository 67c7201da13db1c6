//! The `[fleet]` table (docs/API.md 7 and 9.1): absent, fleet mode is off and nothing changes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The table as an operator writes it; every key optional but `url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<Vec<String>>,
}

/// A token: shown as `"***"` by `Debug` and by `check-config`, sent only in its header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// How the device authenticates to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `Authorization: TargetToken <t>`.
    Target(Secret),
    /// `Authorization: GatewayToken <t>`.
    Gateway(Secret),
}

impl Auth {
    /// The `Authorization` header value, if any.
    pub fn header(&self) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::Target(t) => Some(format!("TargetToken {}", t.expose())),
            Auth::Gateway(t) => Some(format!("GatewayToken {}", t.expose())),
        }
    }
}

/// The validated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The server's base, without a trailing slash.
    pub url: String,
    pub tenant: String,
    pub controller_id: String,
    pub auth: Auth,
    /// Used until the server states its own `config.polling.sleep`.
    pub poll_interval: Duration,
    pub attributes: BTreeMap<String, String>,
    /// Asked before anything is stopped; non-zero exit: the printer is busy.
    pub ready_cmd: Option<Vec<String>>,
}

/// `poll_interval_s` bounds: the same as the server's `sleep` (docs/API.md 9.1).
pub const POLL_INTERVAL_S_MAX: u64 = 24 * 3600;

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A path segment of the controller URL: 1 to 64 of `[A-Za-z0-9._-]` (tenant, controller id).
fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The host name, the default `controller_id`.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

impl FleetConfig {
    /// Validate the table; `allow_http` is the top-level key that `url` obeys.
    pub fn from_table(t: FleetTable, allow_http: bool) -> Result<FleetConfig, ConfigError> {
        let url = t
            .url
            .ok_or_else(|| invalid("fleet.url", "is required in a [fleet] table"))?;
        let url = url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url).map_err(|_| {
            invalid(
                "fleet.url",
                format!("`{}` is not a URL", crate::net::redact_url(&url)),
            )
        })?;
        match parsed.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => {
                return Err(invalid(
                    "fleet.url",
                    "must be https:// (plain http:// needs allow_http = true)",
                ))
            }
            _ => return Err(invalid("fleet.url", "must be an http(s) URL")),
        }
        if !parsed.has_host() || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                "fleet.url",
                "must name a host and carry no query string or fragment",
            ));
        }
        let tenant = t.tenant.unwrap_or_else(|| "DEFAULT".to_string());
        if !segment_ok(&tenant) {
            return Err(invalid(
                "fleet.tenant",
                "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let controller_id = match t.controller_id {
            Some(c) => c,
            None => host_name().ok_or_else(|| {
                invalid(
                    "fleet.controller_id",
                    "is not set and the host name cannot be read",
                )
            })?,
        };
        if !segment_ok(&controller_id) {
            return Err(invalid(
                "fleet.controller_id",
                "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let token_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        let auth = match (t.target_token, t.gateway_token) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "fleet.gateway_token",
                    "set either target_token or gateway_token, not both",
                ))
            }
            (Some(tok), None) if token_ok(&tok) => Auth::Target(Secret(tok)),
            (None, Some(tok)) if token_ok(&tok) => Auth::Gateway(Secret(tok)),
            (Some(_), None) => {
                return Err(invalid(
                    "fleet.target_token",
                    "must be printable ASCII without spaces",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "fleet.gateway_token",
                    "must be printable ASCII without spaces",
                ))
            }
            (None, None) => Auth::None,
        };
        let poll_s = t.poll_interval_s.unwrap_or(60);
        if !(1..=POLL_INTERVAL_S_MAX).contains(&poll_s) {
            return Err(invalid(
                "fleet.poll_interval_s",
                format!("must be between 1 and {POLL_INTERVAL_S_MAX}"),
            ));
        }
        let attributes = t.attributes.unwrap_or_default();
        if attributes.keys().any(|k| k.is_empty() || k.len() > 128) {
            return Err(invalid(
                "fleet.attributes",
                "names must be 1 to 128 characters",
            ));
        }
        if let Some(cmd) = &t.ready_cmd {
            if cmd.first().is_none_or(|p| p.is_empty()) {
                return Err(invalid(
                    "fleet.ready_cmd",
                    "must be a non-empty argv list (program first)",
                ));
            }
        }
        Ok(FleetConfig {
            url,
            tenant,
            controller_id,
            auth,
            poll_interval: Duration::from_secs(poll_s),
            attributes,
            ready_cmd: t.ready_cmd,
        })
    }

    /// `GET` here polls: `{url}/{tenant}/controller/v1/{controller_id}`.
    pub fn controller_url(&self) -> String {
        format!(
            "{}/{}/controller/v1/{}",
            self.url, self.tenant, self.controller_id
        )
    }

    /// The `Authorization` header for `url` when it is on the server's own origin (an artifact
    /// link of the server), `None` for any other URL or without a token.
    pub fn authorization_for(&self, url: &str) -> Option<String> {
        let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
        let same = origin(url).is_some() && origin(url) == origin(&self.url);
        same.then(|| self.auth.header()).flatten()
    }

    /// The table as `check-config` prints it: tokens as `"***"`.
    pub fn to_table(&self) -> FleetTable {
        let hidden = || Some("***".to_string());
        FleetTable {
            url: Some(crate::net::redact_url(&self.url)),
            tenant: Some(self.tenant.clone()),
            controller_id: Some(self.controller_id.clone()),
            target_token: matches!(self.auth, Auth::Target(_)).then(hidden).flatten(),
            gateway_token: matches!(self.auth, Auth::Gateway(_)).then(hidden).flatten(),
            poll_interval_s: Some(self.poll_interval.as_secs()),
            attributes: Some(self.attributes.clone()),
            ready_cmd: self.ready_cmd.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml_text: &str) -> FleetTable {
        toml::from_str(toml_text).unwrap()
    }

    /// docs/API.md 7 and 9.1: defaults, tokens hidden, `url` obeys `allow_http`.
    #[test]
    fn api_9_1_fleet_table_defaults_and_rules() {
        let c = FleetConfig::from_table(
            table("url = \"https://fleet.example.com/\"\ncontroller_id = \"p1\"\n"),
            false,
        )
        .unwrap();
        assert_eq!(c.url, "https://fleet.example.com");
        assert_eq!(c.tenant, "DEFAULT");
        assert_eq!(c.poll_interval, Duration::from_secs(60));
        assert_eq!(c.auth, Auth::None);
        assert_eq!(
            c.controller_url(),
            "https://fleet.example.com/DEFAULT/controller/v1/p1"
        );
        let c = FleetConfig::from_table(
            table("url = \"http://h:1\"\ntarget_token = \"s3cret\"\ncontroller_id = \"p\"\n"),
            true,
        )
        .unwrap();
        assert_eq!(c.auth.header().as_deref(), Some("TargetToken s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let shown = toml::to_string(&c.to_table()).unwrap();
        assert!(
            !shown.contains("s3cret") && shown.contains("***"),
            "{shown}"
        );
        // The token goes only to the server's own origin (its artifact links), never elsewhere.
        assert_eq!(
            c.authorization_for(
                "http://h:1/DEFAULT/controller/v1/p/softwaremodules/1/artifacts/a.swu"
            )
            .as_deref(),
            Some("TargetToken s3cret")
        );
        assert_eq!(c.authorization_for("http://h:2/a.swu"), None);
        assert_eq!(c.authorization_for("http://cdn.example.com/a.swu"), None);
        assert_eq!(c.authorization_for("not a url"), None);
        // The host name when no controller_id is set.
        let c = FleetConfig::from_table(table("url = \"https://h\"\n"), false).unwrap();
        assert!(!c.controller_id.is_empty());

        let bad = [
            ("url = \"http://h\"", "fleet.url"),
            ("url = \"ftp://h\"", "fleet.url"),
            ("url = \"https://h/?t=1\"", "fleet.url"),
            ("tenant = \"a/b\"\nurl = \"https://h\"", "fleet.tenant"),
            (
                "controller_id = \"../x\"\nurl = \"https://h\"",
                "fleet.controller_id",
            ),
            (
                "poll_interval_s = 0\nurl = \"https://h\"",
                "fleet.poll_interval_s",
            ),
            (
                "target_token = \"a\"\ngateway_token = \"b\"\nurl = \"https://h\"",
                "fleet.gateway_token",
            ),
            (
                "target_token = \"a b\"\nurl = \"https://h\"",
                "fleet.target_token",
            ),
            ("ready_cmd = []\nurl = \"https://h\"", "fleet.ready_cmd"),
            ("tenant = \"x\"", "fleet.url"),
        ];
        for (text, key) in bad {
            match FleetConfig::from_table(table(text), false) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
