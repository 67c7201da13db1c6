//! The one driver of an installation's steps (plan, check, then execute, as RAUC does; a
//! transaction that is either committed or undone, as rustup's): for each step of the list, in
//! order,
//!
//! 1. a **safe point**: when the updater is stopping (SIGTERM), the installation stops here
//!    with [`InstallOutcome::Interrupted`]; the journal on disk describes everything done so
//!    far, and [`super::recover`] rolls it back at the next start;
//! 2. the journal **phase** the step needs ([`Step::phase`]) is written, when it differs from
//!    the one on disk;
//! 3. the step **runs** ([`Run::run`]). It may stop early on SIGTERM itself (`Flow::Cancelled`,
//!    at a point as safe); a failure of a step that ends its children on SIGTERM
//!    ([`Step::ends_its_children_on_cancel`]) while the updater stops is an interruption too.
//!
//! Any other failure, of a step or of a journal write, is handled here once: logged, announced
//! (`RollingBack`), rolled back once ([`Run::rollback`]), and returned as a [`DeployError`]
//! naming the step, the cause and how the rollback went.

use super::apply::Flow;
use super::error::{contract_code, Cause, DeployError, Rollback, RollbackIncomplete};
use super::journal::{self, Journal};
use super::rollback;
use super::steps::Step;
use super::{InstallEvent, InstallOptions, InstallOutcome};

/// What the driver runs: the body of each step, and the rollback.
pub trait Run {
    /// Run `step` (its journal phase is on disk).
    fn run(
        &mut self,
        step: Step,
        j: &mut Journal,
        opts: &InstallOptions,
        on_event: &mut dyn FnMut(InstallEvent),
    ) -> Result<Flow, Cause>;

    /// Undo what the journal `j` describes (`rollback`).
    fn rollback(
        &mut self,
        j: &Journal,
        opts: &InstallOptions,
        on_event: &mut dyn FnMut(InstallEvent),
    ) -> Result<(), RollbackIncomplete> {
        rollback::rollback(j, opts.backups_dir, opts.stop_timeout, on_event)
    }
}

/// Run `steps` in order (see the module documentation). `j` is on disk already, at the phase
/// of the first step or before it.
pub fn drive(
    steps: &[Step],
    run: &mut dyn Run,
    j: &mut Journal,
    opts: &InstallOptions,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<InstallOutcome, DeployError> {
    for &step in steps {
        if opts.cancelled() {
            return Ok(interrupted(j, step));
        }
        if let Some(phase) = step.phase().filter(|&p| p != j.phase) {
            let before = j.phase;
            j.phase = phase;
            if let Err(e) = journal::write(opts.backups_dir, j) {
                // The journal on disk still says `before` (written all or nothing).
                j.phase = before;
                return Err(fail(step, e.into(), j, run, opts, on_event));
            }
        }
        match run.run(step, j, opts, on_event) {
            Ok(Flow::Done) => {}
            Ok(Flow::Cancelled) => return Ok(interrupted(j, step)),
            Err(_) if step.ends_its_children_on_cancel() && opts.cancelled() => {
                return Ok(interrupted(j, step))
            }
            Err(cause) => return Err(fail(step, cause, j, run, opts, on_event)),
        }
    }
    Ok(InstallOutcome::Done)
}

fn interrupted(j: &Journal, step: Step) -> InstallOutcome {
    tracing::warn!(
        "installation of {} interrupted by shutdown at step {step} (journal phase {:?})",
        j.version,
        j.phase
    );
    InstallOutcome::Interrupted
}

/// Roll back once after `cause`, and make the error.
fn fail(
    step: Step,
    cause: Cause,
    j: &Journal,
    run: &mut dyn Run,
    opts: &InstallOptions,
    on_event: &mut dyn FnMut(InstallEvent),
) -> DeployError {
    tracing::error!(
        "installation of {} failed at step {step}: {}: {cause}",
        j.version,
        contract_code(step, cause.code())
    );
    on_event(InstallEvent::RollingBack {
        reason: &cause.to_string(),
    });
    let rollback = match run.rollback(j, opts, on_event) {
        Ok(()) => Rollback::Done,
        Err(e) => Rollback::Incomplete(e),
    };
    DeployError {
        step,
        cause,
        rollback,
    }
}
