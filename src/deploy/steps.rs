//! The steps of an installation once its checks have passed, as data ([`Step`], the list
//! [`Step::INSTALL`]), and what each does on the printer ([`Installation`]). The driver that
//! runs a list of steps, journals them, stops at a safe point and rolls back is `driver`.

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::{self, OtaError};
use crate::handover;
use crate::package::{Module, Package};
use crate::process;

use super::apply::{self, Flow, Roots};
use super::check::Survey;
use super::driver::Run;
use super::error::Cause;
use super::health::{self, HealthCmd};
use super::journal::{Journal, Phase};
use super::plan::{self, Group};
use super::procs::{self, Started};
use super::stale;
use super::{InstallEvent, InstallOptions};

/// Time limit of each post command.
const POST_CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// A step of an installation after the checks. Each names the journal phase that must be on
/// disk before it begins ([`Step::phase`]); the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every new file written under a staging name beside its destination, then flushed.
    Stage,
    /// docs/API.md 9.4, a self-update: the staged new updater binary run once with
    /// `--version` (does it run here at all), before anything is stopped.
    Probe,
    /// How the modules' processes run, recorded in the journal to start them again.
    Record,
    /// The modules' processes stopped (services with `systemctl`, the others by signal).
    Stop,
    /// Every existing destination hard-linked (or copied) into the backups, flushed.
    Backup,
    /// A supervisor's respawns stopped, every staging file renamed over its destination, then
    /// whatever still runs the old program stopped.
    Swap,
    /// The modules' `post_cmds`, in start order.
    PostCmds,
    /// The modules started again in `restart_order`, each start complete before the next.
    Start,
    /// docs/API.md 9.4, a self-update: the new updater binary started with the API's socket,
    /// watched until it has answered `/progress` and kept running for `settle_s`.
    HandOver,
    /// The health checks after `settle_s`, and no module process older than the swap.
    Health,
    /// The journal says `committed`: the installation stands.
    Commit,
}

impl Step {
    /// An installation, in order.
    pub const INSTALL: [Step; 11] = [
        Step::Stage,
        Step::Probe,
        Step::Record,
        Step::Stop,
        Step::Backup,
        Step::Swap,
        Step::PostCmds,
        Step::Start,
        Step::HandOver,
        Step::Health,
        Step::Commit,
    ];

    /// The journal phase written before the step begins; `None`: the phase of the step before
    /// still describes what may have to be undone.
    pub fn phase(self) -> Option<Phase> {
        match self {
            Step::Stage => Some(Phase::Staging),
            Step::Record => Some(Phase::Staged),
            Step::Stop => Some(Phase::Stopping),
            Step::Swap => Some(Phase::Swapping),
            Step::Commit => Some(Phase::Committed),
            Step::Probe
            | Step::Backup
            | Step::PostCmds
            | Step::Start
            | Step::HandOver
            | Step::Health => None,
        }
    }

    /// Whether the step ends what it started when the updater stops (SIGTERM): a `systemctl`,
    /// a post command, a start. Its failure while the updater stops is the stop's doing, and
    /// the installation is interrupted, not failed.
    pub fn ends_its_children_on_cancel(self) -> bool {
        matches!(self, Step::Stop | Step::PostCmds | Step::Start)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Stage => "stage",
            Step::Probe => "probe the new updater",
            Step::Record => "record the processes",
            Step::Stop => "stop",
            Step::Backup => "back up",
            Step::Swap => "swap",
            Step::PostCmds => "post commands",
            Step::Start => "start",
            Step::HandOver => "hand over to the new updater",
            Step::Health => "health",
            Step::Commit => "commit",
        })
    }
}

/// A module's health command, as the manifest gives it, run with the module's name and the
/// `version` being installed in its environment.
fn health_cmd(m: &Module, version: &str) -> Option<HealthCmd> {
    m.health_cmd.as_ref().map(|argv| HealthCmd {
        argv: argv.clone(),
        timeout: Duration::from_secs(m.health_timeout_s),
        env: process::ChildEnv::module(&m.name, version),
    })
}

/// Where the new file of `dst` is staged (destinations are numbered in the order of the
/// journal's directories, then their files).
fn staged_path(j: &Journal, dst: &std::path::Path) -> Option<std::path::PathBuf> {
    let name = dst.file_name()?.to_str()?;
    let parent = std::fs::canonicalize(dst.parent()?).ok()?;
    let mut n = 0;
    for d in &j.dirs {
        let dir = d.root.join(&d.rel);
        for f in &d.files {
            if f == name && std::fs::canonicalize(&dir).ok().as_deref() == Some(parent.as_path()) {
                return Some(dir.join(j.staging_name(n, f)));
            }
            n += 1;
        }
    }
    None
}

/// An installation on the printer: the checked package and its plan, and what the steps
/// learn on the way (the roots opened for the swap, the swap's time, the processes started).
pub struct Installation {
    pkg: Package,
    groups: Vec<Group>,
    survey: Survey,
    health: Vec<Option<HealthCmd>>,
    /// Module indices in start order.
    order: Vec<usize>,
    /// Opened by the backup, used by the swap, closed after it.
    roots: Roots,
    /// The tick of the swap, once done ([`stale::swap_done`]).
    swap_tick: u64,
    started: Vec<Started>,
    /// When processes began to be stopped.
    down: Option<Instant>,
    /// docs/API.md 9.4: the module whose `dst` is the running updater's executable.
    self_module: Option<usize>,
    /// The new updater binary of a self-update, once started.
    new_updater: Option<handover::NewUpdater>,
}

impl Installation {
    /// The installation of `pkg` by the plan `groups` and `survey` made, journalled as `j`.
    pub fn new(pkg: Package, groups: Vec<Group>, survey: Survey, j: &Journal) -> Installation {
        let health = pkg
            .manifest
            .modules
            .iter()
            .map(|m| health_cmd(m, &j.version))
            .collect();
        Installation {
            pkg,
            groups,
            survey,
            health,
            order: plan::start_order(&j.modules),
            roots: Roots::default(),
            swap_tick: 0,
            started: Vec::new(),
            down: None,
            self_module: None,
            new_updater: None,
        }
        .with_self_module()
    }

    /// Find the self-update module (docs/API.md 9.4), before anything is swapped: the module
    /// whose `dst` is the file the running updater was started from.
    fn with_self_module(mut self) -> Installation {
        self.self_module = self
            .pkg
            .manifest
            .modules
            .iter()
            .position(|m| handover::is_own_exe(&m.dst));
        if let Some(i) = self.self_module {
            tracing::info!(
                "module {} updates the updater itself ({})",
                self.pkg.manifest.modules[i].name,
                self.pkg.manifest.modules[i].dst.display()
            );
        }
        self
    }

    /// The new updater binary of a committed self-update.
    pub fn take_new_updater(&mut self) -> Option<handover::NewUpdater> {
        self.new_updater.take()
    }

    /// docs/API.md 9.4: run the staged new updater binary once (`--version`) before anything
    /// is stopped; one that cannot run here is refused while the printer still runs as it was.
    fn probe(&self, j: &Journal) -> Result<Flow, Cause> {
        let Some(i) = self.self_module else {
            return Ok(Flow::Done);
        };
        let dst = &self.pkg.manifest.modules[i].dst;
        let failed = |why: &dyn std::fmt::Display| {
            tracing::error!("self-update: the new binary does not run here: {why}");
            Cause::from(error::deployment_failed(format!(
                "self-update: the new binary does not run here: {why}"
            )))
        };
        let staged = staged_path(j, dst)
            .ok_or_else(|| failed(&format_args!("no staged file for {}", dst.display())))?;
        handover::probe(&staged).map_err(|e| failed(&e))?;
        Ok(Flow::Done)
    }

    /// docs/API.md 9.4: start the new updater binary (now at the module's `dst`) with the
    /// API's socket, and watch it through the module's `health_timeout_s` and `settle_s`.
    fn hand_over(&mut self, opts: &InstallOptions) -> Result<Flow, Cause> {
        let Some(i) = self.self_module else {
            return Ok(Flow::Done);
        };
        let m = &self.pkg.manifest.modules[i];
        let failed = |why: handover::HandOverError| {
            tracing::error!("self-update: {why}; taking back");
            Cause::from(error::deployment_failed(format!("self-update: {why}")))
        };
        let mut new = handover::NewUpdater::start(&m.dst).map_err(failed)?;
        match new.watch(opts.listen, m.health_timeout(), opts.settle, opts.cancel) {
            Ok(true) => {
                self.new_updater = Some(new);
                Ok(Flow::Done)
            }
            Ok(false) => {
                new.abort();
                Ok(Flow::Cancelled)
            }
            Err(why) => {
                new.abort();
                Err(failed(why))
            }
        }
    }

    fn post_cmds(&self, j: &Journal, opts: &InstallOptions) -> Result<Flow, Cause> {
        for &i in &self.order {
            let m = &self.pkg.manifest.modules[i];
            let env = process::ChildEnv::module(&m.name, &j.version);
            for cmd in m.post_argvs() {
                process::run_to_completion(&cmd, &env, POST_CMD_TIMEOUT, opts.cancel)
                    .map_err(|e| error::deployment_failed(format!("module {}: {e}", m.name)))?;
                if opts.cancelled() {
                    return Ok(Flow::Cancelled);
                }
            }
        }
        Ok(Flow::Done)
    }
}

impl Run for Installation {
    fn run(
        &mut self,
        step: Step,
        j: &mut Journal,
        opts: &InstallOptions,
        on_event: &mut dyn FnMut(InstallEvent),
    ) -> Result<Flow, Cause> {
        let order = &self.order;
        match step {
            Step::Stage => {
                let t = Instant::now();
                let flow = apply::stage(
                    &mut self.pkg,
                    j,
                    &self.groups,
                    &self.survey,
                    opts.cancel,
                    on_event,
                )?;
                if flow == Flow::Done {
                    tracing::info!(
                        "{} files staged in {} ms",
                        j.target_count(),
                        t.elapsed().as_millis()
                    );
                }
                Ok(flow)
            }
            Step::Record => {
                self.down = Some(Instant::now());
                procs::record(j, order)?;
                Ok(Flow::Done)
            }
            Step::Stop => {
                procs::stop_all(j, order, opts.stop_timeout, opts.cancel, on_event).map_err(
                    |e| OtaError::new(e.code, format!("{}; nothing was deployed", e.detail)),
                )?;
                Ok(Flow::Done)
            }
            Step::Backup => {
                apply::backup(j, &mut self.roots, opts.backups_dir)?;
                Ok(Flow::Done)
            }
            Step::Swap => {
                // docs/API.md 9.6: a supervisor may have started a module's program again.
                stale::stop_respawned(&j.modules, order, opts.stop_timeout)?;
                let swapped = apply::swap(j, &mut self.roots);
                self.roots = Roots::default();
                swapped?;
                // Anything of the modules started until now may run the old program.
                self.swap_tick = stale::swap_done();
                stale::stop_stale(&j.modules, order, self.swap_tick, opts.stop_timeout)?;
                Ok(Flow::Done)
            }
            Step::PostCmds => self.post_cmds(j, opts),
            Step::Start => {
                self.started = procs::start_new(
                    &j.modules,
                    order,
                    &j.version,
                    opts.stop_timeout,
                    opts.cancel,
                    on_event,
                )?;
                if let Some(down) = self.down {
                    tracing::info!("processes were down for {} ms", down.elapsed().as_millis());
                }
                Ok(Flow::Done)
            }
            Step::Probe => self.probe(j),
            Step::HandOver => self.hand_over(opts),
            Step::Health => {
                let flow = health::check_all(
                    &j.modules,
                    order,
                    &self.started,
                    &self.health,
                    opts.settle,
                    opts.cancel,
                    on_event,
                )?;
                if flow == Flow::Done {
                    // docs/API.md 9.6: never `success` over a process running the old program.
                    stale::check_none_stale(&j.modules, order, self.swap_tick)?;
                }
                Ok(flow)
            }
            // The driver has written `committed`; the caller records the outcome, then
            // calls `finish`.
            Step::Commit => Ok(Flow::Done),
        }
    }

    /// A new updater binary is taken back (killed; the old one accepts again) before the
    /// files, the old executable among them, are restored.
    fn rollback(
        &mut self,
        j: &Journal,
        opts: &InstallOptions,
        on_event: &mut dyn FnMut(InstallEvent),
    ) -> Result<(), super::error::RollbackIncomplete> {
        if let Some(new) = self.new_updater.take() {
            new.abort();
        }
        super::rollback::rollback(j, opts.backups_dir, opts.stop_timeout, on_event)
    }
}
