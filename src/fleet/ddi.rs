//! The messages of hawkBit's Direct Device Integration API (docs/API.md 9.1), as the updater
//! reads and writes them.
//!
//! Reading is tolerant of what it does not use (unknown fields, hawkBit's `actionHistory`,
//! chunk `metadata`, extra links) and strict on what it does: a poll interval that is not
//! `HH:MM:SS`, a link that is not an http(s) URL, an action id or artifact file name that could
//! not stand in a URL path or a file name, a hash that is not hex of its algorithm's length, a
//! deployment with other than one chunk holding one artifact: each is a [`DdiError`] naming the
//! field. Bodies over [`MAX_BODY`] are refused before they are parsed.
//!
//! Writing produces exactly the bodies hawkBit documents: the feedback of an action and the
//! `configData` merge of the device's attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The largest body the updater accepts from a fleet server (docs/API.md 9.1): 1 MiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// The shortest poll interval the updater accepts from a server (docs/API.md 9.1).
pub const MIN_POLL: Duration = Duration::from_secs(1);

/// The longest poll interval the updater accepts from a server (docs/API.md 9.1).
pub const MAX_POLL: Duration = Duration::from_secs(24 * 3600);

/// What is wrong with a message from the server. The text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DdiError {
    #[error("DDI {what}: body of {len} bytes is over the limit of {MAX_BODY} bytes")]
    TooLarge { what: &'static str, len: usize },
    #[error("DDI {what}: malformed JSON: {detail}")]
    Json { what: &'static str, detail: String },
    #[error("DDI deploymentBase: the server offers no deployment (null body)")]
    NoDeployment,
    #[error("DDI {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
}

fn invalid(field: &'static str, detail: impl Into<String>) -> DdiError {
    DdiError::Invalid {
        field,
        detail: detail.into(),
    }
}

fn parse_json<'a, T: Deserialize<'a>>(what: &'static str, body: &'a [u8]) -> Result<T, DdiError> {
    if body.len() > MAX_BODY {
        return Err(DdiError::TooLarge {
            what,
            len: body.len(),
        });
    }
    serde_json::from_slice(body).map_err(|e| DdiError::Json {
        what,
        detail: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Links and ids

/// A link of the server (`{"href": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub href: String,
}

impl Link {
    /// The link as a URL: absolute, `http` or `https`, with a host. Whether plain `http` is
    /// allowed is the caller's rule (`allow_http`), as for package URLs.
    pub fn url(&self, field: &'static str) -> Result<reqwest::Url, DdiError> {
        let url = reqwest::Url::parse(&self.href)
            .map_err(|e| invalid(field, format!("href is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(invalid(
                field,
                format!("href has scheme '{}', not http(s)", url.scheme()),
            ));
        }
        Ok(url)
    }
}

/// An action id: hawkBit sends a string of digits (older servers a number); goosebit's plugin
/// actions are `-1`. It is put into feedback URLs, so only `[A-Za-z0-9._-]`, 1 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ActionId(String);

impl ActionId {
    pub fn new(id: &str) -> Result<ActionId, DdiError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && id != "."
            && id != "..";
        if ok {
            Ok(ActionId(id.to_string()))
        } else {
            Err(invalid(
                "id",
                format!("action id {id:?} is not 1-64 of [A-Za-z0-9._-]"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ActionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ActionId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Number(n) => n.to_string(),
        };
        ActionId::new(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// The controller base: GET {url}/{tenant}/controller/v1/{controller_id}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ControllerBase {
    #[serde(default)]
    pub config: Option<ControllerConfig>,
    #[serde(rename = "_links", default)]
    pub links: ControllerLinks,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ControllerConfig {
    #[serde(default)]
    pub polling: Option<Polling>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Polling {
    /// `HH:MM:SS`.
    pub sleep: String,
}

/// The links of a poll answer the updater follows; others (`installedBase`, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ControllerLinks {
    #[serde(rename = "deploymentBase", default)]
    pub deployment_base: Option<Link>,
    #[serde(rename = "configData", default)]
    pub config_data: Option<Link>,
    #[serde(rename = "cancelAction", default)]
    pub cancel_action: Option<Link>,
}

impl ControllerBase {
    pub fn parse(body: &[u8]) -> Result<ControllerBase, DdiError> {
        parse_json("controller base", body)
    }

    /// The interval the server asks for, bounded to [`MIN_POLL`] .. [`MAX_POLL`]; `None` when it
    /// states none (the configured `poll_interval_s` stays in force).
    pub fn poll_interval(&self) -> Result<Option<Duration>, DdiError> {
        match self.config.as_ref().and_then(|c| c.polling.as_ref()) {
            Some(p) => parse_sleep(&p.sleep).map(Some),
            None => Ok(None),
        }
    }
}

/// Parses hawkBit's `HH:MM:SS` (hours of one or more digits, minutes and seconds of two, each
/// below 60) and bounds it to [`MIN_POLL`] .. [`MAX_POLL`] (docs/API.md 9.1): `00:00:00` is
/// 1 s, `48:00:00` is 24 h. Anything else is an error.
pub fn parse_sleep(text: &str) -> Result<Duration, DdiError> {
    let bad = || invalid("config.polling.sleep", format!("{text:?} is not HH:MM:SS"));
    let mut parts = text.split(':');
    let (Some(h), Some(m), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let digits = |p: &str, lens: std::ops::RangeInclusive<usize>| {
        (lens.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u64>().ok())
            .flatten()
    };
    let (Some(h), Some(m), Some(s)) = (digits(h, 1..=9), digits(m, 2..=2), digits(s, 2..=2)) else {
        return Err(bad());
    };
    if m >= 60 || s >= 60 {
        return Err(bad());
    }
    let secs = h * 3600 + m * 60 + s;
    Ok(Duration::from_secs(secs).clamp(MIN_POLL, MAX_POLL))
}

// ---------------------------------------------------------------------------------------------
// The deployment base: GET .../deploymentBase/{actionId}

/// The action the server offers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeploymentBase {
    pub id: ActionId,
    pub deployment: Deployment,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Deployment {
    pub download: Handling,
    pub update: Handling,
    #[serde(rename = "maintenanceWindow", default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    #[serde(default)]
    pub chunks: Vec<Chunk>,
}

/// How the server wants the download or the update handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    /// Not now (docs/API.md 9.1: downloaded, then waits for a later offer).
    Skip,
    /// The device may decide when.
    Attempt,
    /// At once.
    Forced,
}

/// hawkBit's maintenance window: the update may be installed only while it is `available`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceWindow {
    Available,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub part: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Artifact {
    pub filename: String,
    #[serde(default)]
    pub hashes: Hashes,
    pub size: u64,
    #[serde(rename = "_links", default)]
    pub links: ArtifactLinks,
}

/// The digests the server states for an artifact (any of them may be missing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Hashes {
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub sha1: Option<String>,
    #[serde(default)]
    pub md5: Option<String>,
}

/// The algorithms of [`Hashes`], strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha256,
    Sha1,
    Md5,
}

impl HashAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Md5 => "md5",
        }
    }

    /// Length of a digest in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 64,
            HashAlgorithm::Sha1 => 40,
            HashAlgorithm::Md5 => 32,
        }
    }
}

/// The digest an artifact is checked against: algorithm and lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArtifactHash {
    pub algorithm: HashAlgorithm,
    pub hex: String,
}

impl ArtifactHash {
    /// The digest as the download path checks it (`crate::checksum`).
    pub fn checksum(&self) -> Result<crate::checksum::Checksum, DdiError> {
        use crate::checksum::{Algorithm, Checksum};
        let algorithm = match self.algorithm {
            HashAlgorithm::Sha256 => Algorithm::Sha256,
            HashAlgorithm::Sha1 => Algorithm::Sha1,
            HashAlgorithm::Md5 => Algorithm::Md5,
        };
        Checksum::from_hex(algorithm, &self.hex).ok_or_else(|| {
            invalid(
                "hashes",
                format!("{} is not hex of its length", self.algorithm.name()),
            )
        })
    }
}

impl Hashes {
    /// The strongest digest stated (docs/API.md 9.1: sha256, then sha1, then md5), normalised
    /// to lowercase. A stated digest that is not hex of its length is an error, never a reason
    /// to fall back to a weaker one; an artifact without any digest is an error too.
    pub fn strongest(&self) -> Result<ArtifactHash, DdiError> {
        let stated = [
            (HashAlgorithm::Sha256, &self.sha256),
            (HashAlgorithm::Sha1, &self.sha1),
            (HashAlgorithm::Md5, &self.md5),
        ];
        for (algorithm, value) in stated {
            let Some(value) = value else { continue };
            let ok =
                value.len() == algorithm.hex_len() && value.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(invalid(
                    "artifact hashes",
                    format!(
                        "{} {value:?} is not {} hex characters",
                        algorithm.name(),
                        algorithm.hex_len()
                    ),
                ));
            }
            return Ok(ArtifactHash {
                algorithm,
                hex: value.to_ascii_lowercase(),
            });
        }
        Err(invalid(
            "artifact hashes",
            "none of sha256, sha1, md5 is stated",
        ))
    }
}

/// The download links of an artifact: `download` (hawkBit: https), `download-http` (plain).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ArtifactLinks {
    #[serde(default)]
    pub download: Option<Link>,
    #[serde(rename = "download-http", default)]
    pub download_http: Option<Link>,
}

impl Artifact {
    /// The URL to fetch the artifact from: the first of `download`, `download-http` that is
    /// `https`, or `http` when `allow_http` (docs/API.md 9.1: links obey `allow_http` like
    /// package URLs). A link that is not a URL is an error, not skipped.
    pub fn download_url(&self, allow_http: bool) -> Result<reqwest::Url, DdiError> {
        let candidates = [
            ("artifact _links.download", &self.links.download),
            ("artifact _links.download-http", &self.links.download_http),
        ];
        let mut refused = Vec::new();
        for (field, link) in candidates {
            let Some(link) = link else { continue };
            let url = link.url(field)?;
            if url.scheme() == "https" || allow_http {
                return Ok(url);
            }
            refused.push(field);
        }
        if refused.is_empty() {
            Err(invalid("artifact _links", "no download link"))
        } else {
            Err(invalid(
                "artifact _links",
                format!(
                    "only plain http links ({}) and allow_http is false",
                    refused.join(", ")
                ),
            ))
        }
    }
}

impl DeploymentBase {
    /// Parses the answer; goosebit answers `null` when it has nothing to offer
    /// ([`DdiError::NoDeployment`]).
    pub fn parse(body: &[u8]) -> Result<DeploymentBase, DdiError> {
        let value: Option<DeploymentBase> = parse_json("deploymentBase", body)?;
        value.ok_or(DdiError::NoDeployment)
    }

    /// The one artifact of the action (docs/API.md 9.1: one chunk, one artifact), with a size
    /// of at least 1 byte and a file name that is a plain file name (no `/`, `\`, NUL, not `.`
    /// or `..`, at most 255 bytes), as `package_name` must be.
    pub fn the_artifact(&self) -> Result<&Artifact, DdiError> {
        let chunks = &self.deployment.chunks;
        let [chunk] = chunks.as_slice() else {
            return Err(invalid(
                "deployment.chunks",
                format!("{} chunks, the updater installs exactly one", chunks.len()),
            ));
        };
        let [artifact] = chunk.artifacts.as_slice() else {
            return Err(invalid(
                "deployment.chunks[0].artifacts",
                format!(
                    "{} artifacts, the updater installs exactly one",
                    chunk.artifacts.len()
                ),
            ));
        };
        let name = &artifact.filename;
        if name.is_empty()
            || name.len() > 255
            || name == "."
            || name == ".."
            || name.contains(['/', '\\', '\0'])
        {
            return Err(invalid(
                "artifact filename",
                format!("{name:?} is not a plain file name"),
            ));
        }
        if artifact.size == 0 {
            return Err(invalid("artifact size", "0 bytes"));
        }
        Ok(artifact)
    }
}

// ---------------------------------------------------------------------------------------------
// The cancel action: GET .../cancelAction/{actionId}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CancelAction {
    pub id: ActionId,
    #[serde(rename = "cancelAction")]
    pub cancel_action: CancelActionBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CancelActionBody {
    /// The action to stop.
    #[serde(rename = "stopId")]
    pub stop_id: ActionId,
}

impl CancelAction {
    pub fn parse(body: &[u8]) -> Result<CancelAction, DdiError> {
        parse_json("cancelAction", body)
    }
}

// ---------------------------------------------------------------------------------------------
// Feedback: POST .../deploymentBase/{actionId}/feedback and .../cancelAction/{id}/feedback

/// The body of a feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ActionId>,
    pub status: FeedbackStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackStatus {
    pub execution: Execution,
    pub result: FeedbackResult,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackResult {
    pub finished: Finished,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Steps done of steps in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub cnt: u64,
    pub of: u64,
}

/// `status.execution`: where the action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    Closed,
    Proceeding,
    Canceled,
    Scheduled,
    Rejected,
    Resumed,
    Downloaded,
    Download,
}

/// `status.result.finished`: the outcome (`none` while it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    Success,
    Failure,
    None,
}

impl Feedback {
    fn new(id: &ActionId, execution: Execution, finished: Finished) -> Feedback {
        Feedback {
            id: Some(id.clone()),
            status: FeedbackStatus {
                execution,
                result: FeedbackResult {
                    finished,
                    progress: None,
                },
                details: Vec::new(),
            },
        }
    }

    /// `proceeding` with `cnt` of `of` steps done.
    pub fn proceeding(id: &ActionId, cnt: u64, of: u64, details: Vec<String>) -> Feedback {
        let mut f = Feedback::new(id, Execution::Proceeding, Finished::None);
        f.status.result.progress = Some(Progress { cnt, of });
        f.status.details = details;
        f
    }

    /// `closed` / `success`.
    pub fn success(id: &ActionId, details: Vec<String>) -> Feedback {
        let mut f = Feedback::new(id, Execution::Closed, Finished::Success);
        f.status.details = details;
        f
    }

    /// `closed` / `failure` with the outcome's `"<CODE>: <detail>"` as the first detail.
    pub fn failure(id: &ActionId, error: &str, mut details: Vec<String>) -> Feedback {
        let mut f = Feedback::new(id, Execution::Closed, Finished::Failure);
        details.insert(0, error.to_string());
        f.status.details = details;
        f
    }

    /// The answer to a cancel request that cannot be honoured (the action is installing).
    pub fn rejected(id: &ActionId, why: &str) -> Feedback {
        let mut f = Feedback::new(id, Execution::Rejected, Finished::None);
        f.status.details = vec![why.to_string()];
        f
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain structs of strings, numbers and unit enums: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// configData: PUT .../configData

/// `mode` of a configData update; the updater always merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigDataMode {
    Merge,
    Replace,
    Remove,
}

/// The device's attributes as sent to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigData {
    pub mode: ConfigDataMode,
    pub data: BTreeMap<String, String>,
}

impl ConfigData {
    /// docs/API.md 9.1: the configured `attributes`, then `sw_version` (the version of the
    /// last successful installation, `"0.0.0"` before any) and `updater_version`, which win
    /// over attributes of the same name.
    pub fn merge(
        attributes: &BTreeMap<String, String>,
        sw_version: &str,
        updater_version: &str,
    ) -> ConfigData {
        let mut data = attributes.clone();
        data.insert("sw_version".to_string(), sw_version.to_string());
        data.insert("updater_version".to_string(), updater_version.to_string());
        ConfigData {
            mode: ConfigDataMode::Merge,
            data,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A map of strings: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "ddi_tests.rs"]
mod tests;
