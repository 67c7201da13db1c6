//! `manifest.json`: its types, parsing (unknown keys named, with the key probably meant), every
//! rule of docs/API.md sections 4, 8.4 and 8.8 that needs no ZIP, and the version order used by
//! the downgrade policy.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::archive::canonical_rel;
use super::error::PackageError;
use crate::paths::normalize_abs;

/// Default of a module's `health_timeout_s` (docs/API.md section 8.4).
pub const DEFAULT_HEALTH_TIMEOUT_S: u64 = 30;
/// Largest `health_timeout_s` accepted: a day. Anything longer is a typo that would keep an
/// installation (and the printer's processes) waiting.
pub const MAX_HEALTH_TIMEOUT_S: u64 = 86_400;
/// The program a string `post_cmds` entry runs under: `/bin/sh -c <string>`.
pub const SHELL: &str = "/bin/sh";

/// Top-level keys of the manifest.
const MANIFEST_KEYS: &[&str] = &["version", "modules", "sha256"];
/// Keys of a module.
const MODULE_KEYS: &[&str] = &[
    "name",
    "src",
    "dst",
    "process_name",
    "restart_order",
    "service",
    "start_cmd",
    "post_cmds",
    "health_cmd",
    "health_timeout_s",
];

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: String,
    pub modules: Vec<Module>,
    /// SHA-256 (64 lowercase hex) of ZIP entries by entry name. Required to cover every
    /// deployed file when the manifest is signed (docs/API.md section 8.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<BTreeMap<String, String>>,
}

/// One module of the manifest: what to deploy where, and how to stop and start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub name: String,
    /// A file or directory inside the ZIP.
    pub src: String,
    /// Absolute destination on the device; for a directory `src`, the directory it maps to.
    pub dst: PathBuf,
    #[serde(default)]
    pub process_name: Option<String>,
    #[serde(default)]
    pub restart_order: Option<i64>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub start_cmd: Option<Vec<String>>,
    /// Run after deployment; use [`Module::post_argvs`] to run them.
    #[serde(default)]
    pub post_cmds: Vec<PostCmd>,
    /// Run after the module started until it exits 0 (section 8.4).
    #[serde(default)]
    pub health_cmd: Option<Vec<String>>,
    /// How long `health_cmd` may take to succeed, in seconds (>= 1).
    #[serde(default = "default_health_timeout_s")]
    pub health_timeout_s: u64,
}

fn default_health_timeout_s() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_S
}

impl Module {
    /// The argv of every post command, in order, whatever form the manifest used.
    pub fn post_argvs(&self) -> Vec<Vec<String>> {
        self.post_cmds.iter().map(PostCmd::argv).collect()
    }

    /// `health_timeout_s` as a duration.
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout_s)
    }
}

/// One `post_cmds` entry, in either of the two forms packages use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCmd {
    /// `["program", "arg", ...]`: run as it is (the recommended form).
    Argv(Vec<String>),
    /// `"cmd | other && more"`: the Python updater's form, run as `/bin/sh -c <string>`.
    Shell(String),
}

impl PostCmd {
    /// What to execute: the list itself, or `["/bin/sh", "-c", <string>]`.
    pub fn argv(&self) -> Vec<String> {
        match self {
            PostCmd::Argv(a) => a.clone(),
            PostCmd::Shell(s) => vec![SHELL.to_string(), "-c".to_string(), s.clone()],
        }
    }
}

impl Serialize for PostCmd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PostCmd::Argv(a) => a.serialize(s),
            PostCmd::Shell(c) => c.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PostCmd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PostCmd;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an argv list of strings or a shell command string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PostCmd, E> {
                Ok(PostCmd::Shell(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PostCmd, A::Error> {
                let mut argv = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    argv.push(a);
                }
                Ok(PostCmd::Argv(argv))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parse `manifest.json`. A syntax or type error, or an unknown key, is `INVALID_MANIFEST`; an
/// unknown key is named, with the known key it is closest to when there is one (`dest` ->
/// `dst`): a misspelt `process_name` must never let a file be replaced under a running process.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, PackageError> {
    let bad = |source| PackageError::ManifestSyntax { source };
    let value: Value = serde_json::from_slice(bytes).map_err(bad)?;
    check_keys(&value)?;
    // From the bytes again (not the Value) so that type errors carry their line and column.
    serde_json::from_slice(bytes).map_err(bad)
}

/// Refuse unknown keys at the top level and in every module.
fn check_keys(value: &Value) -> Result<(), PackageError> {
    let Some(top) = value.as_object() else {
        return Ok(()); // the typed parse says what is wrong
    };
    for key in top.keys() {
        if !MANIFEST_KEYS.contains(&key.as_str()) {
            return Err(unknown_key(key, "at the top level", MANIFEST_KEYS));
        }
    }
    let Some(modules) = top.get("modules").and_then(Value::as_array) else {
        return Ok(());
    };
    for (i, m) in modules.iter().enumerate() {
        let Some(m) = m.as_object() else { continue };
        for key in m.keys() {
            if !MODULE_KEYS.contains(&key.as_str()) {
                let which = match m.get("name").and_then(Value::as_str) {
                    Some(n) => format!("in module {n}"),
                    None => format!("in module #{}", i + 1),
                };
                return Err(unknown_key(key, &which, MODULE_KEYS));
            }
        }
    }
    Ok(())
}

fn unknown_key(key: &str, place: &str, known: &'static [&'static str]) -> PackageError {
    PackageError::UnknownKey {
        key: key.to_string(),
        place: place.to_string(),
        hint: suggest(key, known),
        known,
    }
}

/// The known key `key` is probably a misspelling of: the closest one (case ignored, a swap of
/// two letters counting as one edit) within two edits, or within a third of its length.
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::osa_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2 || *d * 3 <= k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `^\d+\.\d+\.\d+$`.
pub fn is_semver(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Order two `x.y.z` versions numerically (any number of digits, leading zeros ignored);
/// `None` when either is not of that form.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    if !is_semver(a) || !is_semver(b) {
        return None;
    }
    let key = |p: &str| {
        let p = p.trim_start_matches('0');
        (p.len(), p.to_string())
    };
    let ka = a.split('.').map(key);
    let kb = b.split('.').map(key);
    Some(ka.cmp(kb))
}

/// The downgrade policy (config `allow_downgrade`): with `allow = false`, a package older than
/// the installed version is `INVALID_PACKAGE`. The same version (a reinstall) and an unknown or
/// unreadable installed version are accepted.
pub fn check_downgrade(
    installed: Option<&str>,
    new: &str,
    allow: bool,
) -> Result<(), PackageError> {
    let Some(installed) = installed else {
        return Ok(());
    };
    if !allow && compare_versions(new, installed) == Some(Ordering::Less) {
        return Err(PackageError::Downgrade {
            installed: installed.to_string(),
            new: new.to_string(),
        });
    }
    Ok(())
}

fn check_argv(module: &str, field: &str, argv: &[String]) -> Result<(), PackageError> {
    match argv.first() {
        None => Err(PackageError::field(module, field, "must not be empty")),
        Some(a0) if a0.is_empty() => Err(PackageError::field(
            module,
            format!("{field}[0]"),
            "(the program) must not be empty",
        )),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => {
            Err(PackageError::field(module, field, "contains a NUL byte"))
        }
        Some(_) => Ok(()),
    }
}

fn check_post_cmd(module: &str, k: usize, cmd: &PostCmd) -> Result<(), PackageError> {
    let field = format!("post_cmds[{k}]");
    match cmd {
        PostCmd::Argv(argv) => check_argv(module, &field, argv),
        PostCmd::Shell(s) if s.trim().is_empty() => Err(PackageError::field(
            module,
            field,
            "must not be an empty command",
        )),
        PostCmd::Shell(s) if s.contains('\0') => {
            Err(PackageError::field(module, field, "contains a NUL byte"))
        }
        PostCmd::Shell(_) => Ok(()),
    }
}

/// Check every rule of docs/API.md sections 4, 8.4 and 8.8 that needs no ZIP. Each error names
/// the module and the field. `expected_version`: the version asked for in `/download` (`None`
/// for the package author's tools). `allowed_roots`: `None` applies no root rule (`pack` and
/// `verify` without a config). Besides the contract's rules: no NUL in any string,
/// `process_name` without `/`, and a `service` may not start with `-` (it would be read as a
/// systemctl option).
pub fn validate_manifest(
    m: &Manifest,
    expected_version: Option<&str>,
    allowed_roots: Option<&[PathBuf]>,
) -> Result<(), PackageError> {
    if !is_semver(&m.version) {
        return Err(PackageError::BadVersion {
            version: m.version.clone(),
        });
    }
    if let Some(expected) = expected_version {
        if m.version != expected {
            return Err(PackageError::VersionMismatch {
                expected: expected.to_string(),
                found: m.version.clone(),
            });
        }
    }
    if m.modules.is_empty() {
        return Err(PackageError::NoModules);
    }
    let roots: Option<Vec<PathBuf>> =
        allowed_roots.map(|rs| rs.iter().filter_map(|r| normalize_abs(r)).collect());
    let mut names = HashSet::new();
    let mut dsts: HashMap<PathBuf, &str> = HashMap::new();
    for (i, md) in m.modules.iter().enumerate() {
        let number = format!("#{}", i + 1);
        if md.name.is_empty() {
            return Err(PackageError::field(number, "name", "must not be empty"));
        }
        let name = md.name.as_str();
        if name.contains('\0') {
            return Err(PackageError::field(number, "name", "contains a NUL byte"));
        }
        let bad = |field: &str, why: String| Err(PackageError::field(name, field, why));
        if !names.insert(name) {
            return bad("name", "is used by two modules".into());
        }
        let src = &md.src;
        if src.is_empty() {
            return bad("src", "must not be empty".into());
        }
        if src.starts_with('/') {
            return bad("src", format!("`{src}` must be relative (no leading /)"));
        }
        if src.split('/').any(|c| c == "..") {
            return bad("src", format!("`{src}` must not contain `..`"));
        }
        if canonical_rel(src).is_none() {
            return bad("src", format!("`{src}` is not a path inside the package"));
        }
        let dst_s = md.dst.to_string_lossy();
        if dst_s.contains('\0') {
            return bad("dst", "contains a NUL byte".into());
        }
        if !md.dst.is_absolute() {
            return bad("dst", format!("`{dst_s}` must be absolute"));
        }
        let Some(dst) = normalize_abs(&md.dst) else {
            return bad("dst", format!("`{dst_s}` must not contain `..`"));
        };
        if let Some(roots) = &roots {
            if !roots.iter().any(|r| dst.starts_with(r)) {
                return Err(PackageError::DstOutsideRoots {
                    module: name.to_string(),
                    dst: dst_s.into_owned(),
                    roots: roots.clone(),
                });
            }
            if roots.iter().any(|r| &dst == r) {
                return bad(
                    "dst",
                    format!("`{dst_s}` is an allowed root itself, not a path inside it"),
                );
            }
        } else if dst == std::path::Path::new("/") {
            return bad("dst", format!("`{dst_s}` is the root directory"));
        }
        if let Some(other) = dsts.insert(dst, name) {
            return bad(
                "dst",
                format!("`{dst_s}` is also the dst of module {other}"),
            );
        }
        if let Some(p) = &md.process_name {
            if p.is_empty() || p.contains('/') || p.contains('\0') {
                return bad(
                    "process_name",
                    format!("`{p}` must be a non-empty name without `/`"),
                );
            }
        }
        if let Some(s) = &md.service {
            if s.is_empty() || s.starts_with('-') || s.contains('\0') {
                return bad("service", format!("`{s}` must be a non-empty unit name"));
            }
        }
        if let Some(c) = &md.start_cmd {
            check_argv(name, "start_cmd", c)?;
        }
        for (k, c) in md.post_cmds.iter().enumerate() {
            check_post_cmd(name, k, c)?;
        }
        if let Some(c) = &md.health_cmd {
            check_argv(name, "health_cmd", c)?;
        }
        if !(1..=MAX_HEALTH_TIMEOUT_S).contains(&md.health_timeout_s) {
            return bad(
                "health_timeout_s",
                format!(
                    "{} must be between 1 and {MAX_HEALTH_TIMEOUT_S}",
                    md.health_timeout_s
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorCode, OtaError};

    pub(crate) fn valid() -> Manifest {
        Manifest {
            version: "1.2.3".into(),
            modules: vec![Module {
                name: "api".into(),
                src: "a".into(),
                dst: "/opt/tope/api".into(),
                process_name: Some("api".into()),
                restart_order: Some(1),
                service: None,
                start_cmd: Some(vec!["/opt/tope/api".into()]),
                post_cmds: vec![PostCmd::Argv(vec!["true".into()])],
                health_cmd: None,
                health_timeout_s: DEFAULT_HEALTH_TIMEOUT_S,
            }],
            sha256: None,
        }
    }

    #[test]
    fn validate_manifest_rules_name_module_and_field() {
        let roots = [PathBuf::from("/opt/tope")];
        validate_manifest(&valid(), Some("1.2.3"), Some(&roots)).unwrap();
        type Edit = fn(&mut Manifest);
        let cases: Vec<(Edit, &str)> = vec![
            (|m| m.version = "1.2".into(), "version"),
            (|m| m.version = "1.2.x".into(), "version"),
            (|m| m.version = "01.2.3 ".into(), "version"),
            (|m| m.modules.clear(), "at least one"),
            (|m| m.modules[0].name.clear(), "name"),
            (|m| m.modules[0].src.clear(), "module api: src"),
            (|m| m.modules[0].src = "/a".into(), "module api: src"),
            (|m| m.modules[0].src = "a/../../b".into(), "module api: src"),
            (
                |m| m.modules[0].dst = "opt/tope/x".into(),
                "module api: dst",
            ),
            (
                |m| m.modules[0].dst = "/opt/tope/../x".into(),
                "module api: dst",
            ),
            (|m| m.modules[0].dst = "/opt/tope".into(), "module api: dst"),
            (
                |m| m.modules[0].dst = "/opt/tope/.".into(),
                "module api: dst",
            ),
            (
                |m| m.modules[0].dst = "/opt/topeX/a".into(),
                "module api: dst",
            ),
            (
                |m| m.modules[0].start_cmd = Some(vec![]),
                "module api: start_cmd",
            ),
            (
                |m| m.modules[0].start_cmd = Some(vec!["".into()]),
                "module api: start_cmd",
            ),
            (
                |m| m.modules[0].post_cmds = vec![PostCmd::Argv(vec![])],
                "module api: post_cmds[0]",
            ),
            (
                |m| m.modules[0].post_cmds.push(PostCmd::Shell("  ".into())),
                "module api: post_cmds[1]",
            ),
            (
                |m| m.modules[0].post_cmds = vec![PostCmd::Shell("a\0b".into())],
                "module api: post_cmds[0]",
            ),
            (
                |m| m.modules[0].health_cmd = Some(vec![]),
                "module api: health_cmd",
            ),
            (
                |m| m.modules[0].health_timeout_s = 0,
                "module api: health_timeout_s",
            ),
            (
                |m| m.modules[0].health_timeout_s = MAX_HEALTH_TIMEOUT_S + 1,
                "module api: health_timeout_s",
            ),
            (
                |m| m.modules[0].process_name = Some("".into()),
                "module api: process_name",
            ),
            (
                |m| m.modules[0].process_name = Some("a/b".into()),
                "module api: process_name",
            ),
            (
                |m| m.modules[0].service = Some("".into()),
                "module api: service",
            ),
            (
                |m| m.modules[0].service = Some("--force".into()),
                "module api: service",
            ),
            (
                |m| {
                    let mut b = m.modules[0].clone();
                    b.name = "b".into();
                    b.dst = "/opt/tope/./api".into();
                    m.modules.push(b);
                },
                "module b: dst",
            ),
        ];
        for (edit, needle) in cases {
            let mut m = valid();
            edit(&mut m);
            let e = validate_manifest(&m, Some(&m.version.clone()), Some(&roots))
                .map_err(OtaError::from)
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidManifest);
            assert!(e.detail.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn without_roots_or_version_only_the_roots_and_version_rules_are_skipped() {
        let mut m = valid();
        m.modules[0].dst = "/srv/elsewhere/api".into();
        validate_manifest(&m, None, None).unwrap();
        let e = validate_manifest(&m, None, Some(&[PathBuf::from("/opt/tope")]))
            .map_err(OtaError::from)
            .unwrap_err();
        assert!(e.detail.contains("outside the allowed roots"), "{e}");
        let e = validate_manifest(&m, Some("9.9.9"), None)
            .map_err(OtaError::from)
            .unwrap_err();
        assert!(e.detail.contains("differs"), "{e}");
        m.modules[0].dst = "/".into();
        let e = validate_manifest(&m, None, None)
            .map_err(OtaError::from)
            .unwrap_err();
        assert!(e.detail.contains("module api: dst"), "{e}");
        m.modules[0].dst = "relative".into();
        assert!(validate_manifest(&m, None, None).is_err());
    }

    #[test]
    fn parse_manifest_defaults_and_unknown_keys() {
        let m = parse_manifest(
            br#"{"version":"1.0.0","modules":[{"name":"a","src":"a","dst":"/opt/tope/a"}]}"#,
        )
        .unwrap();
        assert!(m.modules[0].post_cmds.is_empty());
        assert_eq!(m.modules[0].restart_order, None);
        assert_eq!(m.modules[0].health_cmd, None);
        assert_eq!(m.modules[0].health_timeout_s, 30);
        assert_eq!(m.modules[0].health_timeout(), Duration::from_secs(30));
        assert_eq!(m.sha256, None);
        let e = parse_manifest(br#"{"version":"1.0.0","modules":[],"extra":1}"#)
            .map_err(OtaError::from)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        assert!(e.detail.contains("`extra`"), "{e}");
        let e = parse_manifest(b"{not json")
            .map_err(OtaError::from)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        let e = parse_manifest(
            br#"{"version":"1.0.0","modules":[{"name":"a","src":"a","dst":"/x","health_timeout_s":-1}]}"#,
        )
        .map_err(OtaError::from)
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        // Round trip through the journal's serialisation, both post_cmds forms included.
        let mut v = valid();
        v.modules[0]
            .post_cmds
            .push(PostCmd::Shell("a | b && c".into()));
        v.modules[0].health_cmd = Some(vec!["/bin/check".into()]);
        v.sha256 = Some(BTreeMap::from([("a".to_string(), "00".repeat(32))]));
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn contract_8_8_unknown_keys_are_named_with_the_likely_intended_key() {
        let cases: [(&str, &str, Option<&str>); 6] = [
            (r#""dest": "/opt/tope/a""#, "dest", Some("dst")),
            (r#""proces_name": "a""#, "proces_name", Some("process_name")),
            (
                r#""Restart_Order": 1"#,
                "Restart_Order",
                Some("restart_order"),
            ),
            (
                r#""prcoess_name": "a""#,
                "prcoess_name",
                Some("process_name"),
            ),
            (r#""healthcmd": ["x"]"#, "healthcmd", Some("health_cmd")),
            (r#""colour": "blue""#, "colour", None),
        ];
        for (extra, key, hint) in cases {
            let text = format!(
                r#"{{"version":"1.0.0","modules":[{{"name":"web","src":"a","dst":"/opt/tope/a",{extra}}}]}}"#
            );
            let e = parse_manifest(text.as_bytes())
                .map_err(OtaError::from)
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidManifest, "{e}");
            assert!(
                e.detail
                    .contains(&format!("unknown key `{key}` in module web")),
                "{e}"
            );
            match hint {
                Some(h) => assert!(e.detail.contains(&format!("did you mean `{h}`?")), "{e}"),
                None => assert!(!e.detail.contains("did you mean"), "{e}"),
            }
        }
        let e = parse_manifest(br#"{"versoin":"1.0.0","modules":[]}"#)
            .map_err(OtaError::from)
            .unwrap_err();
        assert!(
            e.detail
                .contains("unknown key `versoin` at the top level (did you mean `version`?)"),
            "{e}"
        );
        let e = parse_manifest(br#"{"version":"1.0.0","modules":[{"src":"a","dts":"/x"}]}"#)
            .map_err(OtaError::from)
            .unwrap_err();
        assert!(e.detail.contains("`dts` in module #1"), "{e}");
    }

    #[test]
    fn contract_8_8_post_cmds_accept_argv_lists_and_shell_strings() {
        let m = parse_manifest(
            br#"{"version":"1.0.0","modules":[{"name":"a","src":"a","dst":"/opt/tope/a",
                "post_cmds": [["/bin/true", "x y"], "echo hi | tr a-z A-Z && touch /tmp/x"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            m.modules[0].post_argvs(),
            vec![
                vec!["/bin/true".to_string(), "x y".to_string()],
                vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    "echo hi | tr a-z A-Z && touch /tmp/x".to_string()
                ],
            ]
        );
        for bad in [r#"[1]"#, r#"[[1]]"#, r#"[{"cmd": "x"}]"#, r#""x""#] {
            let text = format!(
                r#"{{"version":"1.0.0","modules":[{{"name":"a","src":"a","dst":"/x","post_cmds":{bad}}}]}}"#
            );
            let e = parse_manifest(text.as_bytes())
                .map_err(OtaError::from)
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidManifest, "{bad}: {e}");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        use Ordering::*;
        assert_eq!(compare_versions("1.10.0", "1.9.9"), Some(Greater));
        assert_eq!(compare_versions("1.2.3", "1.2.3"), Some(Equal));
        assert_eq!(compare_versions("01.2.3", "1.2.3"), Some(Equal));
        assert_eq!(compare_versions("0.0.0", "0.0.1"), Some(Less));
        assert_eq!(
            compare_versions("99999999999999999999999.0.0", "99999999999999999999998.9.9"),
            Some(Greater)
        );
        assert_eq!(compare_versions("1.2", "1.2.3"), None);
    }

    #[test]
    fn downgrade_is_refused_only_when_not_allowed() {
        check_downgrade(Some("2.0.0"), "1.9.9", true).unwrap();
        check_downgrade(None, "1.0.0", false).unwrap();
        check_downgrade(Some("1.2.3"), "1.2.3", false).unwrap();
        check_downgrade(Some("1.2.3"), "1.10.0", false).unwrap();
        check_downgrade(Some("not a version"), "1.0.0", false).unwrap();
        let e = check_downgrade(Some("1.10.0"), "1.9.0", false)
            .map_err(OtaError::from)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPackage);
        assert_eq!(
            e.to_string(),
            "INVALID_PACKAGE: downgrade from 1.10.0 to 1.9.0 refused (allow_downgrade = false)"
        );
    }

    /// The lists of known keys (used to name a misspelt key) are the structs' own fields:
    /// a field added to `Module` or `Manifest` without its key listed would be refused as
    /// unknown, and a listed key without a field would be let through by the list.
    #[test]
    fn key_lists_are_the_fields_of_the_structs() {
        fn keys(v: serde_json::Value) -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        }
        fn sorted(list: &[&str]) -> Vec<String> {
            let mut k: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            k.sort();
            k
        }
        let module = Module {
            name: "m".into(),
            src: "m".into(),
            dst: "/opt/tope/m".into(),
            process_name: Some("m".into()),
            restart_order: Some(1),
            service: Some("m.service".into()),
            start_cmd: Some(vec!["/opt/tope/m".into()]),
            post_cmds: vec![PostCmd::Shell("true".into())],
            health_cmd: Some(vec!["true".into()]),
            health_timeout_s: 5,
        };
        assert_eq!(
            keys(serde_json::to_value(&module).unwrap()),
            sorted(MODULE_KEYS)
        );
        let manifest = Manifest {
            version: "1.0.0".into(),
            modules: vec![module],
            sha256: Some(BTreeMap::new()),
        };
        assert_eq!(
            keys(serde_json::to_value(&manifest).unwrap()),
            sorted(MANIFEST_KEYS)
        );
    }
}
