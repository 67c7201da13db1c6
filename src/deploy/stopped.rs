//! How a stopped process ran, as the install journal keeps it (docs/API.md 9.6): its argv and
//! environment as raw bytes, its working directory, user, group and supplementary groups.
//!
//! JSON holds text only, so a byte string is written as a JSON string when it is UTF-8 (the
//! form journals of earlier versions used for argv and cwd, which therefore still read) and as
//! `{"b64": "<base64>"}` otherwise.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A process the installation stopped, as it ran, to start it again on a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    /// Index into `modules`.
    pub module: usize,
    #[serde(with = "raw_list")]
    pub argv: Vec<OsString>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "raw_path")]
    pub cwd: Option<PathBuf>,
    /// Real user and group ids and supplementary groups; absent in journals of earlier
    /// versions (then the process starts with the updater's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<u32>>,
    /// `NAME=value` entries; absent in journals of earlier versions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "raw_opt_list"
    )]
    pub env: Option<Vec<OsString>>,
    /// Its `comm`: tells a script the kernel ran through its `#!` line from one started as
    /// `<interpreter> <script>`, so that it starts again the same way.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "raw_opt")]
    pub comm: Option<OsString>,
}

/// One byte string in JSON (see the module documentation).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Raw {
    Text(String),
    Bytes { b64: String },
}

impl Raw {
    fn from_bytes(b: &[u8]) -> Raw {
        match std::str::from_utf8(b) {
            Ok(s) => Raw::Text(s.to_string()),
            Err(_) => Raw::Bytes {
                b64: base64::engine::general_purpose::STANDARD.encode(b),
            },
        }
    }

    fn into_bytes<E: serde::de::Error>(self) -> Result<Vec<u8>, E> {
        match self {
            Raw::Text(s) => Ok(s.into_bytes()),
            Raw::Bytes { b64 } => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| E::custom(format!("invalid base64 in the journal: {e}"))),
        }
    }
}

fn to_raw(list: &[OsString]) -> Vec<Raw> {
    list.iter().map(|a| Raw::from_bytes(a.as_bytes())).collect()
}

fn from_raw<E: serde::de::Error>(list: Vec<Raw>) -> Result<Vec<OsString>, E> {
    list.into_iter()
        .map(|r| r.into_bytes().map(OsString::from_vec))
        .collect()
}

mod raw_list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[OsString], s: S) -> Result<S::Ok, S::Error> {
        to_raw(v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
        from_raw(Vec::<Raw>::deserialize(d)?)
    }
}

mod raw_opt_list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Vec<OsString>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(to_raw).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<OsString>>, D::Error> {
        Option::<Vec<Raw>>::deserialize(d)?
            .map(from_raw)
            .transpose()
    }
}

mod raw_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<OsString>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|b| Raw::from_bytes(b.as_bytes()))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OsString>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|r| r.into_bytes().map(OsString::from_vec))
            .transpose()
    }
}

mod raw_path {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|p| Raw::from_bytes(p.as_os_str().as_bytes()))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|r| r.into_bytes().map(|b| PathBuf::from(OsString::from_vec(b))))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_api_9_6_raw_bytes_survive_the_journal() {
        let s = Stopped {
            module: 0,
            argv: vec![
                "/opt/tope/app".into(),
                OsString::from_vec(b"--name=\xff\xfe".to_vec()),
            ],
            cwd: Some(PathBuf::from(OsString::from_vec(
                b"/opt/\xe9t\xe9".to_vec(),
            ))),
            uid: Some(65534),
            gid: Some(65534),
            groups: Some(vec![20, 27]),
            env: Some(vec![
                "PRINTER_PORT=/dev/ttyS1".into(),
                OsString::from_vec(b"X=\x80".to_vec()),
            ]),
            comm: Some(OsString::from_vec(b"app\xff".to_vec())),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""/opt/tope/app""#), "{json}");
        assert!(json.contains(r#"{"b64":"#), "{json}");
        assert_eq!(serde_json::from_str::<Stopped>(&json).unwrap(), s);
    }

    #[test]
    fn docs_api_9_6_a_record_of_an_earlier_version_still_reads() {
        let old = r#"{"module":1,"argv":["/opt/tope/app","--port","80"],"cwd":"/var"}"#;
        let s: Stopped = serde_json::from_str(old).unwrap();
        assert_eq!(
            s.argv,
            ["/opt/tope/app", "--port", "80"].map(OsString::from)
        );
        assert_eq!(s.cwd, Some(PathBuf::from("/var")));
        assert_eq!(
            (s.uid, s.gid, &s.groups, &s.env),
            (None, None, &None, &None)
        );
        let bad = r#"{"module":1,"argv":[{"b64":"%%"}]}"#;
        assert!(serde_json::from_str::<Stopped>(bad).is_err());
    }
}
