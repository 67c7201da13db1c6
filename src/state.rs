//! `./tmp/state.json`: what survives a restart. Field names are the Python updater's, so an
//! existing file is understood; extra fields (`etag`, `last_modified`, `error`) are added.
//! Written atomically (`fsutil::write_atomic`); a missing, empty, half-written or otherwise
//! unreadable file means a fresh start, never a crash.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checksum::{Algorithm, Checksum};
use crate::fsutil::ReadBack;
use crate::lifecycle::{self, Lifecycle, PackageSpec, Stage, Validator};
use crate::workdir::OwnFile;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: String,
    pub package_url: String,
    pub package_name: String,
    pub package_size: u64,
    /// The announced MD5: lowercase hex on disk (the Python updater's field); either case is
    /// read. Absent for a fleet artifact checked with another hash (docs/API.md 9.1), which
    /// `package_checksum` then holds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::checksum::md5_hex_opt"
    )]
    pub package_md5: Option<Checksum>,
    /// `"<algorithm>:<hex>"` of a package checked with a hash other than MD5 (`sha1`, `sha256`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::checksum::tagged_opt"
    )]
    pub package_checksum: Option<Checksum>,
    pub bytes_downloaded: u64,
    /// ISO 8601 time of this write.
    pub last_update: String,
    pub stage: String,
    /// ISO 8601 time the MD5 was verified, `null` before.
    pub verified_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The error of a `failed` stage, `"<CODE>: <detail>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The id of the installation (from `installing` on), also kept in its outcome: tells it
    /// from an earlier installation of the same package after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<u64>,
}

/// Why a file on disk was not used.
#[derive(Debug, PartialEq)]
pub enum LoadOutcome {
    Missing,
    Loaded(Box<PersistedState>),
    /// Unreadable, empty, not JSON or missing fields: start fresh (the reason is logged).
    Unusable(String),
}

impl PersistedState {
    /// What to persist for the lifecycle now; `None` when there is nothing to keep
    /// (idle, or success: the contract deletes the file after a successful update).
    pub fn from_lifecycle(l: &Lifecycle) -> Option<PersistedState> {
        let p = l.package()?;
        if matches!(l.stage(), Stage::Idle | Stage::Success) {
            return None;
        }
        Some(PersistedState {
            version: p.version.clone(),
            package_url: p.package_url.clone(),
            package_name: p.package_name.clone(),
            package_size: p.package_size,
            package_md5: p.package_md5.split_md5().0,
            package_checksum: p.package_md5.split_md5().1,
            bytes_downloaded: l.persisted_bytes(),
            last_update: lifecycle::iso8601(time::OffsetDateTime::now_utc()),
            stage: l.stage().as_str().to_string(),
            verified_at: l.verified_at().map(lifecycle::iso8601),
            etag: l.validator().etag.clone(),
            last_modified: l.validator().last_modified.clone(),
            error: l.error().map(|e| e.to_string()),
            install_id: l.install_id(),
        })
    }

    pub fn spec(&self) -> PackageSpec {
        PackageSpec {
            version: self.version.clone(),
            package_url: self.package_url.clone(),
            package_name: self.package_name.clone(),
            package_size: self.package_size,
            package_md5: self.checksum(),
        }
    }

    /// The package's checksum: the MD5, or the other hash of a fleet artifact.
    pub fn checksum(&self) -> Checksum {
        match (&self.package_checksum, &self.package_md5) {
            (Some(c), _) | (None, Some(c)) => c.clone(),
            // `parse` never makes a state without one.
            (None, None) => Checksum {
                algorithm: Algorithm::Md5,
                digest: Vec::new(),
            },
        }
    }

    pub fn stage(&self) -> Option<Stage> {
        Stage::parse(&self.stage)
    }

    pub fn validator(&self) -> Validator {
        Validator {
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
        }
    }
}

/// Read the state file. Never fails and never blocks: it is read only when it is a regular
/// file of at most [`crate::fsutil::MAX_READ_BACK`] bytes (docs/API.md 8.3). Anything else (a FIFO, a
/// directory, a symlink, a huge file), and a file that cannot be read or parsed, is reported
/// unusable; start-up recovery sets it aside.
pub fn load(file: &OwnFile) -> LoadOutcome {
    match file.read() {
        ReadBack::Missing => LoadOutcome::Missing,
        ReadBack::Data(bytes) => parse(&bytes),
        ReadBack::Refused(why) => LoadOutcome::Unusable(why),
    }
}

/// Parse leniently where the Python updater may have differed (numbers written as floats,
/// `verified_at` as a number or missing), strictly where a wrong value would be dangerous.
pub fn parse(bytes: &[u8]) -> LoadOutcome {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return LoadOutcome::Unusable("empty file".into());
    }
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return LoadOutcome::Unusable(format!("not JSON: {e}")),
    };
    let Some(o) = v.as_object() else {
        return LoadOutcome::Unusable("not a JSON object".into());
    };
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let num = |k: &str| {
        o.get(k).and_then(|v| {
            v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            })
        })
    };
    let mut missing = Vec::new();
    macro_rules! req {
        ($e:expr, $k:literal) => {
            match $e {
                Some(x) => x,
                None => {
                    missing.push($k);
                    Default::default()
                }
            }
        };
    }
    let version = req!(text("version"), "version");
    let package_url = req!(text("package_url"), "package_url");
    let package_name = req!(text("package_name"), "package_name");
    let package_size = req!(num("package_size"), "package_size");
    // A fleet artifact's other hash stands in for the MD5 (docs/API.md 9.1).
    let tagged = text("package_checksum");
    let md5 = match tagged {
        Some(_) => text("package_md5").unwrap_or_default(),
        None => req!(text("package_md5"), "package_md5"),
    };
    let stage = req!(text("stage"), "stage");
    if !missing.is_empty() {
        return LoadOutcome::Unusable(format!(
            "missing or mistyped fields: {}",
            missing.join(", ")
        ));
    }
    // A package that can never be verified is not worth resuming.
    let (package_md5, package_checksum) = match tagged {
        Some(t) => match Checksum::from_tagged(&t) {
            Some(c) => (None, Some(c)),
            None => {
                return LoadOutcome::Unusable(
                    "package_checksum is not <algorithm>:<hex> of a known algorithm".into(),
                )
            }
        },
        None => match Checksum::from_hex(Algorithm::Md5, &md5) {
            Some(c) => (Some(c), None),
            None => return LoadOutcome::Unusable("package_md5 is not 32 hex characters".into()),
        },
    };
    let st = PersistedState {
        version,
        package_url,
        package_name,
        package_size,
        package_md5,
        package_checksum,
        bytes_downloaded: num("bytes_downloaded").unwrap_or(0),
        last_update: text("last_update").unwrap_or_default(),
        stage,
        verified_at: text("verified_at"),
        etag: text("etag"),
        last_modified: text("last_modified"),
        error: text("error"),
        install_id: o.get("install_id").and_then(Value::as_u64),
    };
    if st.stage().is_none() {
        return LoadOutcome::Unusable(format!("unknown stage `{}`", st.stage));
    }
    if st.package_size == 0 || st.bytes_downloaded > st.package_size {
        return LoadOutcome::Unusable(format!(
            "bytes_downloaded {} does not fit package_size {}",
            st.bytes_downloaded, st.package_size
        ));
    }
    if !usable_package_name(&st.package_name) {
        return LoadOutcome::Unusable(format!("unsafe package_name `{}`", st.package_name));
    }
    LoadOutcome::Loaded(Box::new(st))
}

/// A plain file name: no `/`, no `\`, not `.`/`..`, no NUL, 1 to 255 bytes (docs/API.md 1).
pub fn valid_package_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && n != "." && n != ".." && !n.contains(['/', '\\', '\0'])
}

/// A name `/download` accepts as `package_name`: a plain file name that is not one of the
/// updater's own in `./tmp/` (docs/API.md 1 and 8.3).
pub fn usable_package_name(n: &str) -> bool {
    valid_package_name(n) && !crate::workdir::is_own_tmp_name(n)
}

/// Persist (atomically) or delete the state file to match the lifecycle.
pub fn save(file: &OwnFile, l: &Lifecycle) -> std::io::Result<()> {
    match PersistedState::from_lifecycle(l) {
        Some(st) => file.save_json(&st),
        None => file.remove(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static str {
        r#"{"version":"1.2.3","package_url":"https://x/p.zip","package_name":"p.zip",
            "package_size":1000,"package_md5":"0123456789ABCDEF0123456789abcdef",
            "bytes_downloaded":400,"last_update":"2026-11-25T10:00:00.5","stage":"downloading",
            "verified_at":null}"#
    }

    #[test]
    fn contract_5_python_state_file_is_understood() {
        match parse(sample().as_bytes()) {
            LoadOutcome::Loaded(st) => {
                assert_eq!(st.bytes_downloaded, 400);
                assert_eq!(st.stage(), Some(Stage::Downloading));
                assert_eq!(
                    st.spec().package_md5.to_hex(),
                    "0123456789abcdef0123456789abcdef"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// docs/API.md 5 and 9.1: a fleet artifact checked with SHA-1 leaves `package_md5` out and
    /// keeps `package_checksum` `"sha1:<hex>"`; such a file loads back to the same package.
    #[test]
    fn api_9_1_state_of_a_sha1_artifact_round_trips_without_md5() {
        let text = sample().replace(
            r#""package_md5":"0123456789ABCDEF0123456789abcdef""#,
            r#""package_checksum":"sha1:a9993e364706816aba3e25717850c26c9cd0d89d""#,
        );
        let LoadOutcome::Loaded(st) = parse(text.as_bytes()) else {
            panic!("{text}")
        };
        assert_eq!(st.package_md5, None);
        let c = st.spec().package_md5;
        assert_eq!(c.algorithm, Algorithm::Sha1);
        let written = serde_json::to_value(&*st).unwrap();
        assert!(written.get("package_md5").is_none(), "{written}");
        assert_eq!(
            written["package_checksum"],
            "sha1:a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let bad = sample().replace(
            r#""package_md5":"0123456789ABCDEF0123456789abcdef""#,
            r#""package_checksum":"sha1:0123""#,
        );
        assert!(matches!(parse(bad.as_bytes()), LoadOutcome::Unusable(_)));
    }

    /// docs/API.md 5: state files written by 0.1.0 (the fixtures are its exact output, with
    /// `package_md5` a hex string) load, and are written back byte for byte as they were.
    #[test]
    fn api_5_state_files_of_0_1_0_load_and_keep_their_format() {
        let fixtures: [(&[u8], &str, Stage); 2] = [
            (
                include_bytes!("../tests/fixtures/state-0.1.0-to-install.json"),
                "9e107d9d372bb6826bd81d3542a419d6",
                Stage::ToInstall,
            ),
            (
                include_bytes!("../tests/fixtures/state-0.1.0-failed.json"),
                "d41d8cd98f00b204e9800998ecf8427e",
                Stage::Failed,
            ),
        ];
        for (bytes, md5, stage) in fixtures {
            let LoadOutcome::Loaded(st) = parse(bytes) else {
                panic!("{}", String::from_utf8_lossy(bytes))
            };
            assert_eq!(st.stage(), Some(stage));
            let expected = Checksum::from_hex(Algorithm::Md5, md5).unwrap();
            assert_eq!(st.package_md5, Some(expected.clone()));
            assert_eq!(st.spec().package_md5, expected);
            assert_eq!(serde_json::to_vec_pretty(&st).unwrap(), bytes);
        }
    }

    /// A `package_md5` that is not 32 hex characters can never verify a download: such a
    /// state is set aside like any unusable one, rather than resumed.
    #[test]
    fn a_state_whose_md5_is_not_hex_is_unusable() {
        for md5 in [
            "x",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdeg",
        ] {
            let text = sample().replace("0123456789ABCDEF0123456789abcdef", md5);
            assert_eq!(
                parse(text.as_bytes()),
                LoadOutcome::Unusable("package_md5 is not 32 hex characters".into()),
                "{md5}"
            );
        }
    }

    #[test]
    fn contract_6_corrupt_state_is_a_fresh_start() {
        for bad in [
            &b""[..],
            b"   \n",
            b"\x00\xff garbage",
            b"{\"version\":\"1.2.3\",\"package_u",
            b"[]",
            b"{\"version\":\"1.2.3\"}",
            br#"{"version":"1","package_url":"u","package_name":"../etc","package_size":5,"package_md5":"x","stage":"idle"}"#,
            br#"{"version":"1","package_url":"u","package_name":"a","package_size":5,"bytes_downloaded":9,"package_md5":"x","stage":"idle"}"#,
            br#"{"version":"1","package_url":"u","package_name":"a","package_size":5,"package_md5":"x","stage":"dancing"}"#,
        ] {
            assert!(matches!(parse(bad), LoadOutcome::Unusable(_)), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn contract_8_3_reserved_package_name_in_state_is_unusable() {
        for name in ["state.json", "outcome.json", "x.tmp", "state.json.unusable"] {
            let text = sample().replace("\"p.zip\"", &format!("\"{name}\""));
            assert!(
                matches!(parse(text.as_bytes()), LoadOutcome::Unusable(_)),
                "{name}"
            );
        }
    }

    #[test]
    fn contract_8_3_fifo_or_huge_state_is_unusable_without_blocking() {
        // Setting it aside is start-up recovery's part (tests/state_read_back.rs).
        let d = tempfile::tempdir().unwrap();
        let f = crate::workdir::WorkDir::new(d.path()).state();
        let p = f.path().to_path_buf();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        crate::fsutil::make_fifo(&p);
        // A FIFO without a writer would block a plain read forever.
        assert!(matches!(load(&f), LoadOutcome::Unusable(_)));
        std::fs::remove_file(&p).unwrap();
        // Valid JSON padded past the limit: still refused, never parsed.
        let mut big = sample().as_bytes().to_vec();
        big.resize(2 * 1024 * 1024, b' ');
        std::fs::write(&p, &big).unwrap();
        assert!(matches!(load(&f), LoadOutcome::Unusable(_)));
        // A good file is read as before.
        std::fs::write(&p, sample()).unwrap();
        assert!(matches!(load(&f), LoadOutcome::Loaded(_)));
    }

    #[test]
    fn save_writes_contract_field_names_and_deletes_on_success() {
        let d = tempfile::tempdir().unwrap();
        let f = crate::workdir::OwnFile::new(d.path().join("state.json"));
        let p = f.path().to_path_buf();
        let LoadOutcome::Loaded(st) = parse(sample().as_bytes()) else {
            panic!()
        };
        let mut l = Lifecycle::restored_download(st.spec(), 400, Default::default());
        save(&f, &l).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        for k in [
            "version",
            "package_url",
            "package_name",
            "package_size",
            "package_md5",
            "bytes_downloaded",
            "last_update",
            "stage",
            "verified_at",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(
            load(&f),
            LoadOutcome::Loaded(Box::new(PersistedState {
                last_update: v["last_update"].as_str().unwrap().into(),
                ..PersistedState::from_lifecycle(&l).unwrap()
            }))
        );
        l.begin_verify().unwrap();
        l.verified(time::OffsetDateTime::now_utc()).unwrap();
        l.begin_install(7).unwrap();
        save(&f, &l).unwrap();
        match load(&f) {
            LoadOutcome::Loaded(st) => assert_eq!(st.install_id, Some(7), "the installation's id"),
            other => panic!("{other:?}"),
        }
        l.succeeded().unwrap();
        save(&f, &l).unwrap();
        assert!(!p.exists());
        assert_eq!(load(&f), LoadOutcome::Missing);
    }
}
