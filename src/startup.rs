//! The start-up decision as a pure function: what was found on disk (the recovery result of
//! the install journal, `state.json`, the last outcome, the package file's length, the
//! crash-loop guard's counter) in, what the daemon shows and does out. `Updater::recover`
//! gathers the facts, calls [`decide`] and carries the [`Plan`] out.
//!
//! | found | shown | then |
//! |---|---|---|
//! | guard gave recovery up (now or before) | `failed` INTERNAL_ERROR, updates refused | nothing; `./tmp` untouched |
//! | recovery failed (attempt < 3) | `failed` with its error | outcome recorded |
//! | journal rolled back | `failed` DEPLOYMENT_FAILED | outcome recorded |
//! | journal committed | `success` | outcome recorded (or kept when already written) |
//! | state `downloading` | `downloading` | the download resumes |
//! | state `verifying` | `verifying` (file complete) or `downloading` | verify or resume |
//! | state `toInstall` | `toInstall`, `verifying` (no `verified_at`) or `idle` (file gone) | |
//! | state `installing`/`rebooting`, no journal | `failed` DEPLOYMENT_FAILED, or `success` when the outcome already says so | |
//! | state `failed` | `failed` with its error | outcome kept when it says the same, else recorded |
//! | no state | the last outcome, else `idle` | outcome kept |
//!
//! Every start but a given-up one removes from `./tmp/` whatever no state refers to
//! ([`strays`]); every completed recovery resets the guard.

use std::path::Path;

use crate::deploy::Recovery;
use crate::error::{self, OtaError};
use crate::guard;
use crate::lifecycle::{self, Lifecycle, PackageSpec, Stage, Validator};
use crate::outcome::Outcome;
use crate::state::PersistedState;
use crate::workdir::OWN_TMP_FILES;

/// What start-up recovery of the install journal gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// Not tried: the crash-loop guard counted `attempts` that did not complete.
    NotTried {
        attempts: u32,
        last_error: Option<String>,
    },
    /// Attempt number `attempt` completed with this result.
    Done(Recovery),
    /// Attempt number `attempt` failed with `error` (files could not be restored).
    Failed { error: OtaError, attempt: u32 },
}

/// Everything start-up found on disk.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    pub recovered: Recovered,
    /// `state.json`, when usable.
    pub state: Option<&'a PersistedState>,
    /// `outcome.json`, when usable.
    pub outcome: Option<&'a Outcome>,
    /// Length of `./tmp/<package_name>` of the state, if that file exists.
    pub package_len: Option<u64>,
    /// The journal and the guard's counter, named in the message of a given-up recovery.
    pub journal: &'a Path,
    pub counter: &'a Path,
}

/// What to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// Resume the download of this package at this byte, under this validator.
    Download(PackageSpec, u64, Validator),
    /// Hash the complete file of this package.
    Verify(PackageSpec),
}

/// What to do with the outcome file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeStep {
    /// Nothing shown is an outcome (or the guard gave up: nothing is written).
    None,
    /// The outcome on disk is what is shown: keep it (and its `delivered` flag).
    Keep,
    /// Record the shown outcome as a new one (not delivered yet).
    Record,
}

/// What to do with the crash-loop guard's counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardStep {
    /// Recovery completed: the count starts again.
    Reset,
    /// This attempt failed with this error: keep the count, remember why.
    Failed(OtaError),
    /// Recovery was given up: leave everything as it is.
    Untouched,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What `/progress` shows from its first answer.
    pub life: Lifecycle,
    pub next: Next,
    pub outcome: OutcomeStep,
    pub guard: GuardStep,
    /// Write the state file and remove what no state refers to from `./tmp/` (keeping
    /// `keep_package`); false when recovery is given up: everything stays for inspection.
    pub touch_tmp: bool,
    pub keep_package: Option<String>,
    /// Report the shown stage to device-api at once (everything but an idle start).
    pub report: bool,
}

/// The decision (see the table of the module documentation).
pub fn decide(f: &Found) -> Plan {
    let mut plan = match &f.recovered {
        Recovered::NotTried {
            attempts,
            last_error,
        } => given_up(f, *attempts, last_error.as_deref()),
        Recovered::Failed { error, attempt } if *attempt >= guard::MAX_ATTEMPTS => {
            let mut p = given_up(f, *attempt, Some(&error.to_string()));
            p.guard = GuardStep::Failed(error.clone());
            p
        }
        Recovered::Failed { error, .. } => {
            let mut p = from_state(f, Some(error.clone()));
            p.guard = GuardStep::Failed(error.clone());
            p
        }
        Recovered::Done(Recovery::RolledBack { version }) => {
            let err = error::deployment_failed(format!(
                "installation of {version} was interrupted (restart or power loss) and has \
                 been rolled back"
            ));
            if has_state(f) {
                from_state(f, Some(err))
            } else {
                let life = Lifecycle::restored_failed(err, None, Some(version), 0);
                plan(life, Next::Nothing, OutcomeStep::Record, None)
            }
        }
        Recovered::Done(Recovery::Completed { version }) => {
            // Start-up records this success before recovery removes the committed journal.
            let life = Lifecycle::restored_success(version);
            let written = f.outcome.is_some_and(|o| o.describes(&life));
            plan(life, Next::Nothing, record_or_keep(written), None)
        }
        Recovered::Done(Recovery::Nothing) => from_state(f, None),
    };
    plan.report = plan.life.stage() != Stage::Idle;
    plan
}

fn plan(life: Lifecycle, next: Next, outcome: OutcomeStep, keep: Option<String>) -> Plan {
    Plan {
        life,
        next,
        outcome,
        guard: GuardStep::Reset,
        touch_tmp: true,
        keep_package: keep,
        report: false,
    }
}

fn record_or_keep(kept: bool) -> OutcomeStep {
    if kept {
        OutcomeStep::Keep
    } else {
        OutcomeStep::Record
    }
}

fn given_up(f: &Found, attempts: u32, last_error: Option<&str>) -> Plan {
    let err = guard::given_up_error(attempts, last_error, f.journal, f.counter);
    Plan {
        life: Lifecycle::restored_blocked(err),
        next: Next::Nothing,
        outcome: OutcomeStep::None,
        guard: GuardStep::Untouched,
        touch_tmp: false,
        keep_package: None,
        report: true,
    }
}

fn has_state(f: &Found) -> bool {
    f.state.is_some_and(|s| s.stage() != Some(Stage::Idle))
}

/// The shown state from `state.json` (and the outcome), no journal involved; `failure`
/// (a rollback or a failed recovery) overrides the state's stage.
fn from_state(f: &Found, failure: Option<OtaError>) -> Plan {
    let Some(st) = f.state.filter(|_| has_state(f)) else {
        return match failure {
            Some(err) => {
                let life = Lifecycle::restored_failed(err, None, None, 0);
                plan(life, Next::Nothing, OutcomeStep::Record, None)
            }
            None => from_outcome(f.outcome),
        };
    };
    let spec = st.spec();
    let keep = Some(spec.package_name.clone());
    let bytes = st.bytes_downloaded;
    let validator = st.validator();
    let complete = f.package_len == Some(spec.package_size);
    let partial = Some((spec.clone(), bytes, validator.clone()));
    if let Some(err) = failure {
        let life = Lifecycle::restored_failed(err, partial, None, 0);
        return plan(life, Next::Nothing, OutcomeStep::Record, keep);
    }
    match st.stage().unwrap_or(Stage::Idle) {
        Stage::Downloading => {
            let next = Next::Download(spec.clone(), bytes, validator.clone());
            let life = Lifecycle::restored_download(spec, bytes, validator);
            plan(life, next, OutcomeStep::None, keep)
        }
        Stage::Verifying if complete => {
            let life = Lifecycle::restored_verify(spec.clone(), validator);
            plan(life, Next::Verify(spec), OutcomeStep::None, keep)
        }
        Stage::Verifying => {
            let next = Next::Download(spec.clone(), bytes, validator.clone());
            let life = Lifecycle::restored_download(spec, bytes, validator);
            plan(life, next, OutcomeStep::None, keep)
        }
        Stage::ToInstall if !complete => {
            plan(Lifecycle::new(), Next::Nothing, OutcomeStep::None, None)
        }
        Stage::ToInstall => {
            let verified = st.verified_at.as_deref().and_then(lifecycle::parse_iso8601);
            match verified {
                Some(at) => {
                    let life = Lifecycle::restored_to_install(spec, validator, at);
                    plan(life, Next::Nothing, OutcomeStep::None, keep)
                }
                None => {
                    let life = Lifecycle::restored_verify(spec.clone(), validator);
                    plan(life, Next::Verify(spec), OutcomeStep::None, keep)
                }
            }
        }
        Stage::Installing | Stage::Rebooting => {
            // The outcome is written before state.json is deleted: a success recorded for
            // this very installation (not an earlier one of the same package) means it
            // completed.
            let done = f.outcome.filter(|o| {
                o.stage == Stage::Success && o.install_id.is_some() && o.install_id == st.install_id
            });
            match done {
                Some(o) => plan(
                    Lifecycle::restored_success(&o.version),
                    Next::Nothing,
                    OutcomeStep::Keep,
                    None,
                ),
                None => {
                    let err = error::deployment_failed(
                        "installation was interrupted (restart or power loss) before any file \
                         was changed",
                    );
                    let life = Lifecycle::restored_failed(err, partial, None, 0);
                    plan(life, Next::Nothing, OutcomeStep::Record, keep)
                }
            }
        }
        Stage::Failed => {
            let err = st
                .error
                .as_deref()
                .map(OtaError::parse)
                .unwrap_or_else(|| error::internal("failed before the restart"));
            let life = Lifecycle::restored_failed(err.clone(), partial.clone(), None, 0);
            match f.outcome.filter(|o| o.describes(&life)) {
                Some(o) => {
                    let life = Lifecycle::restored_failed(err, partial, None, o.progress);
                    plan(life, Next::Nothing, OutcomeStep::Keep, keep)
                }
                None => plan(life, Next::Nothing, OutcomeStep::Record, keep),
            }
        }
        Stage::Success => {
            let life = Lifecycle::restored_success(&spec.version);
            let same = f.outcome.is_some_and(|o| o.describes(&life));
            plan(life, Next::Nothing, record_or_keep(same), None)
        }
        Stage::Idle => from_outcome(f.outcome),
    }
}

/// No state: the last outcome, shown until the next accepted `/download`, else `idle`.
fn from_outcome(outcome: Option<&Outcome>) -> Plan {
    match outcome {
        Some(o) if o.stage == Stage::Success => plan(
            Lifecycle::restored_success(&o.version),
            Next::Nothing,
            OutcomeStep::Keep,
            None,
        ),
        Some(o) => {
            let err = o
                .error
                .as_deref()
                .map(OtaError::parse)
                .unwrap_or_else(|| error::internal("failed"));
            let version = (!o.version.is_empty()).then_some(o.version.as_str());
            let life = Lifecycle::restored_failed(err, None, version, o.progress);
            plan(life, Next::Nothing, OutcomeStep::Keep, None)
        }
        None => plan(Lifecycle::new(), Next::Nothing, OutcomeStep::None, None),
    }
}

/// The entries of `./tmp/` to remove at start: everything but the updater's own files, the
/// files set aside as `*.unusable`, and the package file a state refers to. Stray temporaries
/// (`*.tmp`) and packages left behind by a power cut go.
pub fn strays<'a>(names: &'a [String], keep_package: Option<&str>) -> Vec<&'a str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|n| is_stray(n, keep_package))
        .collect()
}

/// Whether the entry `name` of `./tmp/` is to be removed at start (see [`strays`]).
pub fn is_stray(name: &str, keep_package: Option<&str>) -> bool {
    // A delta download's plan and part file (docs/API.md 9.5) live as long as its package.
    if name == crate::workdir::DELTA_FILE || name == crate::workdir::DELTA_PART {
        return keep_package.is_none();
    }
    !OWN_TMP_FILES.contains(&name) && !name.ends_with(".unusable") && Some(name) != keep_package
}

#[cfg(test)]
mod tests;
