//! `tmp/fleet.json`: the fleet server's action the updater is carrying out, and its final
//! feedback until the server answered it with HTTP 2xx (docs/API.md 9.1). Written through the
//! work dir's [`OwnFile`] (atomic and durable) before anything it describes happens, so a
//! SIGKILL or a power cut at any point leaves a file that says what to do next.

use serde::{Deserialize, Serialize};

use crate::workdir::OwnFile;

use super::ddi::ActionId;

/// How far the action got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Downloaded (or downloading) through the updater; not installing yet.
    Downloading,
    /// The updater's installation was started.
    Installing,
}

/// The final feedback of an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Final {
    /// `true`: `closed`/`success`; `false`: `closed`/`failure` with `error` first.
    pub success: bool,
    /// `"<CODE>: <detail>"` of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// More detail lines (the outcome's message).
    #[serde(default)]
    pub details: Vec<String>,
    /// The server answered the final feedback with HTTP 2xx.
    pub sent: bool,
}

/// The content of `tmp/fleet.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetAction {
    pub id: ActionId,
    /// The chunk's version: what the updater downloads and installs.
    pub version: String,
    /// The artifact's file name (the package's name in `./tmp/`).
    pub package_name: String,
    pub phase: Phase,
    /// Downloaded, then installed only at a later offer (`update` handling `skip`, or the
    /// maintenance window `unavailable`).
    #[serde(default)]
    pub hold: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Final>,
}

impl FleetAction {
    /// The action is over for the updater and the server has its final feedback.
    pub fn settled(&self) -> bool {
        self.outcome.as_ref().is_some_and(|f| f.sent)
    }
}

/// Read the file; a file that is refused or does not parse is set aside (logged) and counts as
/// none, never stopping the daemon.
pub fn load(file: &OwnFile) -> Option<FleetAction> {
    file.load(|bytes| serde_json::from_slice::<FleetAction>(bytes))
}

/// Write the file atomically and durably.
pub fn save(file: &OwnFile, action: &FleetAction) -> std::io::Result<()> {
    file.save_json(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/API.md 9.1: the action and its unsent outcome are read back as written; a
    /// damaged file is set aside and counts as none.
    #[test]
    fn api_9_1_fleet_file_round_trips_and_a_damaged_one_is_none() {
        let d = tempfile::tempdir().unwrap();
        let file = OwnFile::new(d.path().join("fleet.json"));
        assert_eq!(load(&file), None);
        let a = FleetAction {
            id: ActionId::new("17").unwrap(),
            version: "1.2.3".into(),
            package_name: "tope-1.2.3.swu".into(),
            phase: Phase::Installing,
            hold: false,
            outcome: Some(Final {
                success: false,
                error: Some("DEPLOYMENT_FAILED: health".into()),
                details: vec![],
                sent: false,
            }),
        };
        save(&file, &a).unwrap();
        assert_eq!(load(&file), Some(a.clone()));
        assert!(!a.settled());
        std::fs::write(file.path(), b"{\"id\": \"../x\"").unwrap();
        assert_eq!(load(&file), None);
    }
}
