//! `tope-updater status [--config PATH] [--json]` (docs/API.md section 8.7): what the updater
//! is doing or last did, for people.
//!
//! Everything is read from the work dir (the state file, the last outcome, the history, the
//! install journal, the crash-loop guard's counter), with the daemon running or stopped; when
//! the daemon answers `/progress` on its `listen` address its live answer is shown too. Nothing
//! is ever written: files are read with [`crate::workdir::OwnFile::peek`] and an unusable one is only
//! reported.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::fsutil::ReadBack;
use crate::guard;
use crate::lifecycle::download_percent;
use crate::outcome::{self, Outcome};
use crate::state::{self, LoadOutcome, PersistedState};
use crate::workdir::{self, JournalSummary};

/// History entries shown.
const HISTORY_SHOWN: usize = 10;
/// How long to wait for the daemon's `/progress`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the daemon itself answers.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonView {
    pub listen: String,
    pub running: bool,
    /// The `data` of its `/progress` answer.
    pub progress: Option<Value>,
}

/// `state.json` as found, with the length of the package file it names.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    #[serde(flatten)]
    pub state: PersistedState,
    pub bytes_on_disk: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GuardView {
    /// Start-up recoveries in a row that did not complete.
    pub failed_attempts: u32,
    pub limit: u32,
    pub given_up: bool,
    pub last_error: Option<String>,
    /// What an operator does to retry, when given up.
    pub to_clear: Option<String>,
}

/// Everything `status` shows (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub work_dir: String,
    /// What the updater is doing or last did: from the daemon when it answers, else from the
    /// files.
    pub stage: String,
    pub version: Option<String>,
    pub progress: Option<u64>,
    pub message: String,
    pub error: Option<String>,
    /// `daemon` or `files`.
    pub source: &'static str,
    pub daemon: DaemonView,
    pub state: Option<StateView>,
    /// The last outcome and whether device-api received it (`delivered`).
    pub outcome: Option<Outcome>,
    /// An installation interrupted before it completed (`./backups/journal.json`): it is
    /// finished or rolled back at the next start.
    pub pending_installation: Option<JournalSummary>,
    pub crash_loop_guard: GuardView,
    /// The last outcomes, newest last.
    pub history: Vec<Outcome>,
    pub history_total: usize,
    /// Files that could not be read.
    pub problems: Vec<String>,
}

/// Run the command; the process exit code (0, or 2 for a configuration error).
pub fn run(config: Option<&Path>, json: bool) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::print_error(&e);
            return ExitCode::from(2);
        }
    };
    let daemon = query_daemon(cfg.listen);
    let view = collect(&cfg, daemon);
    if json {
        match serde_json::to_string_pretty(&view) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                crate::logging::print_error(&e);
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", render(&view));
    }
    ExitCode::SUCCESS
}

/// Read the work dir of `cfg` (never writing), with what the daemon answered.
pub fn collect(cfg: &Config, daemon: DaemonView) -> StatusView {
    let work = cfg.work();
    let mut problems = Vec::new();
    let mut note = |what: &Path, why: String| problems.push(format!("{}: {why}", what.display()));

    let state_file = work.state();
    let state_path = state_file.path();
    let state = match state_file.read() {
        ReadBack::Missing => None,
        ReadBack::Refused(why) => {
            note(state_path, why);
            None
        }
        ReadBack::Data(bytes) => match state::parse(&bytes) {
            LoadOutcome::Loaded(st) => {
                let on_disk = std::fs::symlink_metadata(work.package(&st.package_name))
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                Some(StateView {
                    state: *st,
                    bytes_on_disk: on_disk,
                })
            }
            LoadOutcome::Unusable(why) => {
                note(state_path, why);
                None
            }
            LoadOutcome::Missing => None,
        },
    };
    let outcome_file = work.outcome();
    let last = outcome::peek(&outcome_file).unwrap_or_else(|why| {
        note(&why.path, why.kind.to_string());
        None
    });
    let journal = work.journal();
    let journal_path = journal.path();
    let pending = workdir::peek_journal(&work).unwrap_or_else(|why| {
        note(&why.path, why.kind.to_string());
        Some(JournalSummary {
            version: None,
            phase: None,
        })
    });
    let counter = work.recovery();
    let counter_path = counter.path();
    let counted = guard::peek(&counter).unwrap_or_else(|why| {
        note(&why.path, why.kind.to_string());
        None
    });
    let all = outcome::history(&work.history());

    let failed_attempts = counted.as_ref().map_or(0, |a| a.attempts);
    let given_up = matches!(guard::gate(counted.as_ref()), guard::Gate::GivenUp { .. });
    let given_up_error = given_up.then(|| {
        guard::given_up_error(
            failed_attempts,
            counted.as_ref().and_then(|a| a.last_error.as_deref()),
            journal_path,
            counter_path,
        )
    });
    let guard_view = GuardView {
        failed_attempts,
        limit: guard::MAX_ATTEMPTS,
        given_up,
        last_error: counted.as_ref().and_then(|a| a.last_error.clone()),
        to_clear: given_up.then(|| {
            format!(
                "inspect {}, fix the cause, then delete {} and restart tope-updater \
                 (systemctl restart tope-updater)",
                journal_path.display(),
                counter_path.display()
            )
        }),
    };

    let mut view = StatusView {
        work_dir: cfg.work_dir.display().to_string(),
        stage: "idle".into(),
        version: None,
        progress: Some(0),
        message: "Idle".into(),
        error: None,
        source: "files",
        daemon,
        state,
        outcome: last,
        pending_installation: pending,
        crash_loop_guard: guard_view,
        history_total: all.len(),
        history: all[all.len().saturating_sub(HISTORY_SHOWN)..].to_vec(),
        problems,
    };
    summarize(&mut view, given_up_error.map(|e| e.to_string()));
    view
}

/// The top-level stage/version/progress/message/error: the daemon's live answer, else what
/// the files say (the crash-loop guard, the state file, the last outcome, in that order).
fn summarize(v: &mut StatusView, given_up: Option<String>) {
    if let Some(p) = v.daemon.progress.clone() {
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
        v.source = "daemon";
        v.stage = text("stage").unwrap_or_default();
        v.version = text("version");
        v.progress = p.get("progress").and_then(Value::as_u64);
        v.message = text("message").unwrap_or_default();
        v.error = text("error");
        return;
    }
    if let Some(err) = given_up {
        v.stage = "failed".into();
        v.progress = Some(0);
        v.message = format!("Update failed: {err}");
        v.error = Some(err);
        return;
    }
    if let Some(st) = v
        .state
        .as_ref()
        .map(|s| &s.state)
        .filter(|s| s.stage != "idle")
    {
        v.stage = st.stage.clone();
        v.version = Some(st.version.clone());
        v.progress = match st.stage.as_str() {
            "downloading" => Some(download_percent(st.bytes_downloaded, st.package_size).into()),
            "toInstall" => Some(100),
            _ => None,
        };
        v.message = match &st.error {
            Some(e) => format!("Update failed: {e}"),
            None => format!(
                "{} {} ({}), {} of {} bytes recorded",
                st.stage, st.version, st.package_name, st.bytes_downloaded, st.package_size
            ),
        };
        v.error = st.error.clone();
        return;
    }
    if let Some(o) = &v.outcome {
        v.stage = o.stage.as_str().into();
        v.version = (!o.version.is_empty()).then(|| o.version.clone());
        v.progress = Some(o.progress.into());
        v.message = o.message.clone();
        v.error = o.error.clone();
    }
}

/// The text for people.
pub fn render(v: &StatusView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "tope-updater status (work dir {})", v.work_dir);
    let daemon = if v.daemon.running {
        format!("running, answering on {}", v.daemon.listen)
    } else {
        format!("not answering on {} (stopped?)", v.daemon.listen)
    };
    let _ = writeln!(s, "Daemon:            {daemon}");
    let progress = v.progress.map(|p| format!(", {p}%")).unwrap_or_default();
    let version = v
        .version
        .as_deref()
        .map(|x| format!(" {x}"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "Now ({}):{:w$}{}{version}{progress}: {}",
        v.source,
        "",
        v.stage,
        v.message,
        w = 12usize.saturating_sub(v.source.len())
    );
    match &v.state {
        Some(st) => {
            let disk = st
                .bytes_on_disk
                .map_or("no package file".to_string(), |n| format!("{n} on disk"));
            let p = &st.state;
            let _ = writeln!(
                s,
                "State file:        {} {} ({}), {} of {} bytes recorded, {disk}; last written {}",
                p.stage,
                p.version,
                p.package_name,
                p.bytes_downloaded,
                p.package_size,
                p.last_update
            );
        }
        None => {
            let _ = writeln!(s, "State file:        none");
        }
    }
    match &v.outcome {
        Some(o) => {
            let _ = writeln!(s, "Last outcome:      {}", outcome_line(o));
        }
        None => {
            let _ = writeln!(s, "Last outcome:      none recorded");
        }
    }
    match &v.pending_installation {
        Some(j) => {
            let next = if v.crash_loop_guard.given_up {
                "kept for inspection: recovery is given up (see the crash-loop guard)"
            } else {
                "it is finished or rolled back at the next start"
            };
            let _ = writeln!(
                s,
                "Pending recovery:  installation of {} interrupted in phase {}; {next}",
                j.version.as_deref().unwrap_or("(unknown version)"),
                j.phase.as_deref().unwrap_or("(unknown)")
            );
        }
        None => {
            let _ = writeln!(s, "Pending recovery:  none");
        }
    }
    let g = &v.crash_loop_guard;
    if g.given_up {
        let _ = writeln!(
            s,
            "Crash-loop guard:  GIVEN UP after {} start-up recoveries that did not complete{}",
            g.failed_attempts,
            g.last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
        if let Some(c) = &g.to_clear {
            let _ = writeln!(s, "  To retry: {c}");
        }
    } else if g.failed_attempts > 0 {
        let _ = writeln!(
            s,
            "Crash-loop guard:  {} of {} start-up recoveries did not complete{}",
            g.failed_attempts,
            g.limit,
            g.last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
    } else {
        let _ = writeln!(s, "Crash-loop guard:  ok");
    }
    if v.history.is_empty() {
        let _ = writeln!(s, "History:           empty");
    } else {
        let _ = writeln!(
            s,
            "History (last {} of {}):",
            v.history.len(),
            v.history_total
        );
        for o in &v.history {
            let _ = writeln!(s, "  {}", outcome_line(o));
        }
    }
    for p in &v.problems {
        let _ = writeln!(s, "Problem:           {p}");
    }
    s
}

fn outcome_line(o: &Outcome) -> String {
    let version = if o.version.is_empty() {
        String::new()
    } else {
        format!(" {}", o.version)
    };
    let detail = o.error.as_deref().unwrap_or(&o.message);
    let delivered = if o.delivered {
        "device-api has it"
    } else {
        "not yet delivered to device-api"
    };
    format!("{} {}{version}: {detail} ({delivered})", o.at, o.stage)
}

/// Ask the daemon on `listen` for `/progress` (a loopback address when it listens on all),
/// through the crate's one `/progress` client (also the systemd health probe): at most
/// [`QUERY_TIMEOUT`] in all and a 64 KiB answer, so a hostile listener on the API port can
/// neither hang `status` nor fill its memory (docs/API.md 9.6).
fn query_daemon(listen: SocketAddr) -> DaemonView {
    let addr = crate::apiclient::probe_addr(listen);
    let progress = match crate::apiclient::probe(addr, QUERY_TIMEOUT) {
        crate::apiclient::Probe::Answer {
            body: Some(body), ..
        } => body.get("data").filter(|d| d.is_object()).cloned(),
        _ => None,
    };
    DaemonView {
        listen: listen.to_string(),
        running: progress.is_some(),
        progress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(work: &Path) -> Config {
        let mut c = Config::defaults().unwrap();
        c.work_dir = work.to_path_buf();
        c
    }

    fn stopped() -> DaemonView {
        DaemonView {
            listen: "127.0.0.1:1".into(),
            running: false,
            progress: None,
        }
    }

    #[test]
    fn contract_8_7_status_of_an_empty_work_dir_is_idle() {
        let d = tempfile::tempdir().unwrap();
        let v = collect(&cfg(d.path()), stopped());
        assert_eq!(v.stage, "idle");
        assert!(v.state.is_none() && v.outcome.is_none() && v.pending_installation.is_none());
        assert!(!v.crash_loop_guard.given_up);
        let text = render(&v);
        assert!(text.contains("not answering on 127.0.0.1:1"), "{text}");
        assert!(text.contains("Pending recovery:  none"), "{text}");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "status writes nothing"
        );
    }

    #[test]
    fn crash_loop_guard_given_up_is_what_status_shows_first() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path());
        std::fs::create_dir_all(c.work().tmp()).unwrap();
        std::fs::write(
            c.work().recovery().path(),
            br#"{"attempts": 3, "last_attempt_at": "2026-11-25T10:00:00Z", "last_error": "DEPLOYMENT_FAILED: x"}"#,
        )
        .unwrap();
        let v = collect(&c, stopped());
        assert!(v.crash_loop_guard.given_up);
        assert_eq!(v.stage, "failed");
        assert!(v.error.as_deref().unwrap().starts_with("INTERNAL_ERROR: "));
        let text = render(&v);
        assert!(text.contains("GIVEN UP after 3"), "{text}");
        assert!(text.contains("recovery.json and restart"), "{text}");
    }
}
