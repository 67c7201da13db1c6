//! The crash-loop guard of start-up recovery (`./tmp/recovery.json`).
//!
//! Start-up recovery (rolling back or finishing an interrupted installation, then reading the
//! state files) runs before the API answers. If it fails, crashes, or hangs until systemd kills
//! the daemon, every restart would try again, and a printer would loop with no API at all. So
//! each start counts its attempt durably *before* trying, and a recovery that completes resets
//! the count. When [`MAX_ATTEMPTS`] attempts in a row did not complete, recovery is not tried
//! again: the journal stays as it is for inspection, and the API serves `failed`
//! `INTERNAL_ERROR: ...` saying what to do ([`given_up_error`]). An operator clears the guard
//! by deleting `recovery.json` (after fixing the cause) and restarting the daemon.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{self, OtaError};
use crate::lifecycle;
use crate::workdir::{OwnFile, OwnFileError};

/// Attempts in a row after which recovery is given up.
pub const MAX_ATTEMPTS: u32 = 3;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// Start-up recoveries begun since the last one that completed.
    pub attempts: u32,
    /// ISO 8601 time the last one began.
    pub last_attempt_at: String,
    /// Why the last one failed, when it failed with an error (a crash or a kill leaves none).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// What to do at start, given the counter found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Try recovery; this is attempt number `attempt` (1-based).
    Try { attempt: u32 },
    /// [`MAX_ATTEMPTS`] attempts in a row did not complete: do not try again.
    GivenUp {
        attempts: u32,
        last_error: Option<String>,
    },
}

/// The decision, from the counter on disk (`None`: no file, or an unusable one).
pub fn gate(found: Option<&Attempts>) -> Gate {
    match found {
        Some(a) if a.attempts >= MAX_ATTEMPTS => Gate::GivenUp {
            attempts: a.attempts,
            last_error: a.last_error.clone(),
        },
        Some(a) => Gate::Try {
            attempt: a.attempts + 1,
        },
        None => Gate::Try { attempt: 1 },
    }
}

/// The error the API serves once recovery is given up, telling an operator what to do.
pub fn given_up_error(
    attempts: u32,
    last_error: Option<&str>,
    journal: &Path,
    counter: &Path,
) -> OtaError {
    let last = match last_error {
        Some(e) => format!("the last one failed with: {e}"),
        None => "the last one crashed or was killed before it completed".into(),
    };
    error::internal(format!(
        "start-up recovery of an interrupted installation did not complete {attempts} times in \
         a row ({last}); it is not tried again and updates are refused. The installation \
         journal is kept in {} for inspection. To retry: fix the cause, delete {} and restart \
         tope-updater",
        journal.display(),
        counter.display()
    ))
}

/// The counter, for start-up: an unusable file is set aside with a warning and counts as none.
pub fn load(file: &OwnFile) -> Option<Attempts> {
    file.load(parse)
}

fn parse(bytes: &[u8]) -> Result<Attempts, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The counter, read without touching anything (for `status`).
pub fn peek(file: &OwnFile) -> Result<Option<Attempts>, OwnFileError<serde_json::Error>> {
    file.peek(parse)
}

/// Count attempt number `attempt` durably, before trying it; returns what was written.
pub fn begin_attempt(file: &OwnFile, attempt: u32, now: OffsetDateTime) -> io::Result<Attempts> {
    let a = Attempts {
        attempts: attempt,
        last_attempt_at: lifecycle::iso8601(now),
        last_error: None,
    };
    file.save_json(&a).map(|()| a)
}

/// Attempt `a.attempts` failed with `err`: keep the reason for the next start.
pub fn record_failure(file: &OwnFile, a: &Attempts, err: &OtaError) -> io::Result<()> {
    file.save_json(&Attempts {
        last_error: Some(err.to_string()),
        ..a.clone()
    })
}

/// Recovery completed: the count starts again from zero.
pub fn reset(file: &OwnFile) -> io::Result<()> {
    file.remove()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn counted(n: u32, err: Option<&str>) -> Attempts {
        Attempts {
            attempts: n,
            last_attempt_at: "2026-11-25T10:00:00Z".into(),
            last_error: err.map(str::to_string),
        }
    }

    #[test]
    fn crash_loop_guard_gives_up_after_three_attempts_in_a_row() {
        assert_eq!(gate(None), Gate::Try { attempt: 1 });
        assert_eq!(gate(Some(&counted(1, None))), Gate::Try { attempt: 2 });
        assert_eq!(gate(Some(&counted(2, Some("x")))), Gate::Try { attempt: 3 });
        assert_eq!(
            gate(Some(&counted(3, Some("DEPLOYMENT_FAILED: x")))),
            Gate::GivenUp {
                attempts: 3,
                last_error: Some("DEPLOYMENT_FAILED: x".into())
            }
        );
        assert!(matches!(
            gate(Some(&counted(7, None))),
            Gate::GivenUp { attempts: 7, .. }
        ));
    }

    #[test]
    fn crash_loop_guard_counts_durably_and_resets() {
        let d = tempfile::tempdir().unwrap();
        let f = OwnFile::new(d.path().join("recovery.json"));
        let now = OffsetDateTime::now_utc();
        for n in 1..=MAX_ATTEMPTS {
            let Gate::Try { attempt } = gate(load(&f).as_ref()) else {
                panic!("given up before attempt {n}")
            };
            assert_eq!(attempt, n);
            begin_attempt(&f, attempt, now).unwrap();
        }
        let a = load(&f).unwrap();
        record_failure(&f, &a, &error::deployment_failed("backup missing")).unwrap();
        assert_eq!(
            gate(load(&f).as_ref()),
            Gate::GivenUp {
                attempts: 3,
                last_error: Some("DEPLOYMENT_FAILED: backup missing".into())
            }
        );
        assert_eq!(peek(&f).unwrap().unwrap().attempts, 3);
        reset(&f).unwrap();
        assert_eq!(gate(load(&f).as_ref()), Gate::Try { attempt: 1 });
        assert_eq!(peek(&f).unwrap(), None);
    }

    #[test]
    fn an_unusable_counter_is_set_aside_and_counts_as_none() {
        let d = tempfile::tempdir().unwrap();
        let f = OwnFile::new(d.path().join("recovery.json"));
        let p = f.path().to_path_buf();
        std::fs::write(&p, b"{\"attempts\": ").unwrap();
        let e = peek(&f).unwrap_err();
        assert!(matches!(e.kind, crate::workdir::Unusable::Parse(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("{}: EOF while parsing", p.display())),
            "{e}"
        );
        assert_eq!(load(&f), None);
        assert!(d.path().join("recovery.json.unusable").exists());
    }

    #[test]
    fn the_given_up_error_says_what_to_do() {
        let e = given_up_error(
            3,
            Some("DEPLOYMENT_FAILED: rollback incomplete"),
            Path::new("/w/backups/journal.json"),
            Path::new("/w/tmp/recovery.json"),
        );
        assert_eq!(e.code, ErrorCode::InternalError);
        let text = e.to_string();
        for part in [
            "INTERNAL_ERROR: ",
            "3 times in a row",
            "DEPLOYMENT_FAILED: rollback incomplete",
            "/w/backups/journal.json",
            "delete /w/tmp/recovery.json and restart",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let e = given_up_error(3, None, Path::new("j"), Path::new("r"));
        assert!(e.detail.contains("crashed or was killed"), "{e}");
    }
}
