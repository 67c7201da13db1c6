//! The driver of the steps (`driver::drive`) with scripted step bodies, a real journal on disk
//! and the real rollback: a failure in any step, or in the journal write a step needs, rolls
//! back once and yields the code of docs/API.md 3; SIGTERM at any safe point interrupts with the
//! journal left for `recover` (docs/API.md 6, 8.1).

use std::io;

use super::super::apply::Flow;
use super::super::driver::{drive, Run};
use super::super::error::{Cause, Rollback, RollbackIncomplete};
use super::super::plan;
use super::*;

/// What a scripted step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Done,
    /// Set the cancel flag (SIGTERM arrives while the step runs), then finish the step.
    CancelThenDone,
    /// Stop early on the cancel flag, as staging and the health phase do.
    Cancelled,
    /// Fail with a cause of this code.
    Fail(ErrorCode),
    /// Set the cancel flag, then fail (a child ended by the shutdown).
    CancelThenFail,
    /// Plant a directory where the journal's temporary goes: the next journal write fails.
    BreakJournal,
}

struct Script<'a> {
    acts: Vec<(Step, Act)>,
    cancel: &'a AtomicBool,
    backups: &'a Path,
    ran: Vec<Step>,
    rollbacks: usize,
}

impl Script<'_> {
    fn act(&self, step: Step) -> Act {
        self.acts
            .iter()
            .find(|(s, _)| *s == step)
            .map_or(Act::Done, |(_, a)| *a)
    }
}

fn cause(code: ErrorCode) -> Cause {
    match code {
        ErrorCode::DiskFull => Cause::io("writing x", io::Error::from_raw_os_error(28)),
        _ => Cause::from(OtaError::new(code, "scripted")),
    }
}

impl Run for Script<'_> {
    fn run(
        &mut self,
        step: Step,
        j: &mut Journal,
        _opts: &InstallOptions,
        _on_event: &mut dyn FnMut(InstallEvent),
    ) -> Result<Flow, Cause> {
        self.ran.push(step);
        if step == Step::Backup {
            // The backups of no files: their directory, as a real backup leaves it.
            fs::create_dir_all(self.backups.join(FILES_DIR)).unwrap();
        }
        // The driver wrote the phase the step needs before running it.
        if let Some(p) = step.phase() {
            assert_eq!(j.phase, p, "{step:?}");
            assert_eq!(on_disk(self.backups).map(|j| j.phase), Some(p), "{step:?}");
        }
        match self.act(step) {
            Act::Done => Ok(Flow::Done),
            Act::CancelThenDone => {
                self.cancel.store(true, Ordering::SeqCst);
                Ok(Flow::Done)
            }
            Act::Cancelled => {
                self.cancel.store(true, Ordering::SeqCst);
                Ok(Flow::Cancelled)
            }
            Act::Fail(code) => Err(cause(code)),
            Act::CancelThenFail => {
                self.cancel.store(true, Ordering::SeqCst);
                Err(cause(ErrorCode::DeploymentFailed))
            }
            Act::BreakJournal => {
                fs::create_dir(crate::fsutil::tmp_sibling(&self.backups.join(JOURNAL_NAME)))
                    .unwrap();
                Ok(Flow::Done)
            }
        }
    }

    fn rollback(
        &mut self,
        j: &Journal,
        opts: &InstallOptions,
        on_event: &mut dyn FnMut(InstallEvent),
    ) -> Result<(), RollbackIncomplete> {
        self.rollbacks += 1;
        rollback::rollback(j, opts.backups_dir, opts.stop_timeout, on_event)
    }
}

fn on_disk(backups: &Path) -> Option<Journal> {
    let bytes = fs::read(backups.join(JOURNAL_NAME)).ok()?;
    Some(journal::parse(&bytes).unwrap())
}

/// What one scripted run of the whole step list left.
struct Ran {
    result: Result<InstallOutcome, DeployError>,
    ran: Vec<Step>,
    rollbacks: usize,
    rolling_back: usize,
    /// The journal in memory after the run.
    phase: Phase,
    /// The journal on disk after the run.
    left: Option<Journal>,
}

/// Run [`Step::INSTALL`] with `acts`, from a journal written at `staging` as `install` writes
/// it.
fn run(acts: &[(Step, Act)]) -> Ran {
    let f = Fx::new();
    let roots = [f.root.clone()];
    let opts = f.options(&roots, Duration::from_secs(1));
    let mut j = plan::journal("1.2.3", "0123456789abcdef".into(), &[], &[], &roots);
    journal::write(&f.backups, &j).unwrap();
    let mut script = Script {
        acts: acts.to_vec(),
        cancel: &f.cancel,
        backups: &f.backups,
        ran: Vec::new(),
        rollbacks: 0,
    };
    let mut rolling_back = 0;
    let result = drive(&Step::INSTALL, &mut script, &mut j, &opts, &mut |e| {
        if matches!(e, InstallEvent::RollingBack { .. }) {
            rolling_back += 1;
        }
    });
    let _ = fs::remove_dir(crate::fsutil::tmp_sibling(&f.backups.join(JOURNAL_NAME)));
    Ran {
        result,
        ran: script.ran,
        rollbacks: script.rollbacks,
        rolling_back,
        phase: j.phase,
        left: on_disk(&f.backups),
    }
}

/// The steps up to and including `step`.
fn through(step: Step) -> Vec<Step> {
    let n = Step::INSTALL.iter().position(|s| *s == step).unwrap();
    Step::INSTALL[..=n].to_vec()
}

/// The phase on disk once the steps up to and including `step` have begun.
fn phase_through(step: Step) -> Phase {
    through(step).iter().rev().find_map(|s| s.phase()).unwrap()
}

#[test]
fn every_step_runs_once_in_order_and_the_journal_ends_committed() {
    let r = run(&[]);
    assert_eq!(r.result.unwrap(), InstallOutcome::Done);
    assert_eq!(r.ran, Step::INSTALL);
    assert_eq!((r.rollbacks, r.rolling_back), (0, 0));
    assert_eq!(r.left.unwrap().phase, Phase::Committed);
}

/// docs/API.md 3: a failure in any step rolls back once (the journal is gone afterwards), runs
/// no later step, and is reported with the code of the table: `DISK_FULL`,
/// `PROCESS_KILL_FAILED` and `INTERNAL_ERROR` keep theirs, `INVALID_PACKAGE` only while
/// staging, anything else is `DEPLOYMENT_FAILED`; the detail says it was rolled back.
#[test]
fn docs_api_3_a_failure_in_each_step_rolls_back_once_with_the_code_of_the_table() {
    use ErrorCode::*;
    for step in Step::INSTALL {
        for (cause, code) in [
            (DiskFull, DiskFull),
            (ProcessKillFailed, ProcessKillFailed),
            (InternalError, InternalError),
            (
                InvalidPackage,
                if step == Step::Stage {
                    InvalidPackage
                } else {
                    DeploymentFailed
                },
            ),
            (InvalidManifest, DeploymentFailed),
            (DeploymentFailed, DeploymentFailed),
        ] {
            let r = run(&[(step, Act::Fail(cause))]);
            let e = r.result.unwrap_err();
            assert_eq!(e.step, step);
            assert!(matches!(e.rollback, Rollback::Done), "{e}");
            assert_eq!(r.ran, through(step), "{step:?} {cause:?}");
            assert_eq!((r.rollbacks, r.rolling_back), (1, 1), "{step:?} {cause:?}");
            assert!(r.left.is_none(), "{step:?}: rolled back, journal removed");
            let e = OtaError::from(e);
            assert_eq!(e.code, code, "{step:?} {cause:?}: {e}");
            assert!(e.detail.ends_with("; rolled back"), "{e}");
        }
    }
}

/// docs/API.md 8.1: a journal write that fails (here before each step that needs a new phase)
/// is `INTERNAL_ERROR`, runs nothing more, and rolls back once what the phase on disk
/// describes.
#[test]
fn docs_api_8_1_a_failed_journal_write_is_internal_error_and_rolls_back_once() {
    for (i, step) in Step::INSTALL.into_iter().enumerate().skip(1) {
        let Some(phase) = step.phase() else { continue };
        let before = Step::INSTALL[i - 1];
        let r = run(&[(before, Act::BreakJournal)]);
        let e = r.result.unwrap_err();
        assert_eq!(e.step, step);
        assert_eq!(e.code(), ErrorCode::InternalError, "{e}");
        assert_eq!(r.ran, through(before), "{step:?}: the step did not run");
        assert_eq!(r.phase, phase_through(before), "{step:?} {phase:?}");
        assert_eq!((r.rollbacks, r.rolling_back), (1, 1), "{step:?}");
        assert!(e.to_string().contains("writing journal.json"), "{e}");
    }
}

/// docs/API.md 6, 8.1: SIGTERM during any step stops the installation at the safe point
/// before the next one: `Interrupted`, no rollback now, the journal left at the phase of what
/// was done (never `committed` before the commit), for `recover` at the next start.
#[test]
fn docs_api_6_a_cancel_at_each_safe_point_interrupts_with_the_journal_left() {
    for step in Step::INSTALL.into_iter().take(Step::INSTALL.len() - 1) {
        let r = run(&[(step, Act::CancelThenDone)]);
        assert_eq!(r.result.unwrap(), InstallOutcome::Interrupted, "{step:?}");
        assert_eq!(
            r.ran,
            through(step),
            "{step:?}: nothing after the safe point"
        );
        assert_eq!((r.rollbacks, r.rolling_back), (0, 0), "{step:?}");
        let left = r.left.expect("the journal is left for recover");
        assert_eq!(left.phase, phase_through(step), "{step:?}");
        assert_ne!(left.phase, Phase::Committed);
    }
    // A step that stops early on SIGTERM (staging, the health phase).
    for step in [Step::Stage, Step::Health] {
        let r = run(&[(step, Act::Cancelled)]);
        assert_eq!(r.result.unwrap(), InstallOutcome::Interrupted, "{step:?}");
        assert_eq!(r.ran, through(step));
        assert_eq!(r.rollbacks, 0);
        assert_eq!(r.left.unwrap().phase, phase_through(step));
    }
}

/// docs/API.md 8.1: a step that ends its children on SIGTERM (a `systemctl stop`, a post
/// command, a start) fails because of it: that is an interruption, not a failure; any other
/// step failing while the updater stops is still rolled back at once.
#[test]
fn docs_api_8_1_a_failure_caused_by_the_shutdown_is_an_interruption() {
    for step in Step::INSTALL {
        let r = run(&[(step, Act::CancelThenFail)]);
        if step.ends_its_children_on_cancel() {
            assert_eq!(r.result.unwrap(), InstallOutcome::Interrupted, "{step:?}");
            assert_eq!(r.rollbacks, 0, "{step:?}");
            assert_eq!(r.left.unwrap().phase, phase_through(step), "{step:?}");
        } else {
            assert!(r.result.is_err(), "{step:?}");
            assert_eq!(r.rollbacks, 1, "{step:?}");
            assert!(r.left.is_none(), "{step:?}");
        }
    }
    assert_eq!(
        Step::INSTALL
            .into_iter()
            .filter(|s| s.ends_its_children_on_cancel())
            .collect::<Vec<_>>(),
        [Step::Stop, Step::PostCmds, Step::Start]
    );
}

/// A rollback that cannot restore a file says so in the error, with the journal kept.
#[test]
fn an_incomplete_rollback_is_reported_as_such() {
    let f = Fx::new();
    f.put("svc/x", "old-x", 0o644);
    f.one_module(r#", "start_cmd": ["true"]"#);
    // Installed up to the start, then interrupted: the journal says `swapping`.
    f.install(Duration::from_secs(1), &mut Vec::new(), Some("Restarting"))
        .unwrap();
    let mut j = f.journal();
    assert_eq!(j.phase, Phase::Swapping);
    fs::remove_dir_all(f.backups.join(FILES_DIR)).unwrap();
    f.cancel.store(false, Ordering::SeqCst);
    let roots = [f.root.clone()];
    let opts = f.options(&roots, Duration::from_secs(1));
    let mut script = Script {
        acts: vec![(Step::Health, Act::Fail(ErrorCode::DeploymentFailed))],
        cancel: &f.cancel,
        backups: &f.backups,
        ran: Vec::new(),
        rollbacks: 0,
    };
    let steps = [Step::Health, Step::Commit];
    let e = drive(&steps, &mut script, &mut j, &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(e.rollback, Rollback::Incomplete(_)), "{e}");
    let e = OtaError::from(e);
    assert_eq!(e.code, ErrorCode::DeploymentFailed);
    assert!(
        e.detail.starts_with(
            "scripted; rollback incomplete, files not restored (retried at next start): "
        ),
        "{e}"
    );
    assert!(e.detail.contains("svc/x"), "{e}");
    assert!(
        f.backups.join(JOURNAL_NAME).exists(),
        "kept for the next start"
    );
}
