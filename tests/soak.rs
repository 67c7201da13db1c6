//! docs/API.md section 6 under many power cuts (Mender's `Killed_in_<State>` tests): the real
//! daemon is SIGKILLed at random instants and at every persisted stage of an installation and
//! of a throttled download, and with torn `state.json` files; after each restart the
//! guarantees must hold.
//!
//! `SOAK_ITERATIONS` (default 3) sets the iterations per loop, `SOAK_SEED` the random seed
//! (printed by every loop, so a failure can be replayed). `scripts/soak.sh` runs the long
//! version.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::stage_of;
use common::procs::{self, KillOnDrop, Spawned};
use common::soak_rng::{soak_iterations, Rng};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "7.3.1";
const SETTLE: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ small helpers

/// Replaces `path` atomically with `data` (so a running program file is never written in
/// place) with mode `mode`.
fn put_file(path: &Path, data: &[u8], mode: u32) {
    let staging = path.with_file_name(format!(
        "{}.soak-reset",
        path.file_name().unwrap().to_string_lossy()
    ));
    write_file(&staging, data, mode);
    std::fs::rename(&staging, path).unwrap();
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The string `key` of the JSON file at `path`, or why there is none.
fn json_str_field(path: &Path, key: &str) -> String {
    match std::fs::read(path) {
        Err(_) => "absent".into(),
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v[key].as_str().map(str::to_string))
            .unwrap_or_else(|| "unreadable".into()),
    }
}

/// `stage` of state.json, or why there is none.
fn state_stage(ws: &Workspace) -> String {
    json_str_field(&ws.state_file(), "stage")
}

fn is_busy(stage: &str) -> bool {
    matches!(
        stage,
        "installing" | "rebooting" | "downloading" | "verifying"
    )
}

/// Counts of outcomes, printed as one summary line.
#[derive(Default)]
struct Tally(Vec<(String, usize)>);

impl Tally {
    fn add(&mut self, what: &str) {
        match self.0.iter_mut().find(|(k, _)| k == what) {
            Some((_, n)) => *n += 1,
            None => self.0.push((what.to_string(), 1)),
        }
    }

    fn get(&self, what: &str) -> usize {
        self.0
            .iter()
            .find(|(k, _)| k == what)
            .map_or(0, |(_, n)| *n)
    }

    fn line(&self) -> String {
        self.0
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ------------------------------------------------------------------ a) installation

/// One file of the package: where it goes, what is there before (None: nothing) and after.
struct Target {
    dst: PathBuf,
    old: Option<Vec<u8>>,
    new: Vec<u8>,
    mode: u32,
}

/// Three modules, 20 files (some of 300 KiB, so deploying takes measurable time), the old
/// versions in place, and a running program (module `svc`) with `process_name` and
/// `start_cmd`.
struct InstallRig {
    // Dropped in this order: the daemon first, then what it talks to, then the processes.
    d: Daemon,
    api: FakeDeviceApi,
    _nginx: Nginx,
    old_proc: Option<Spawned>,
    _kill: KillOnDrop,
    ws: Workspace,
    proc_name: String,
    svc_dst: PathBuf,
    targets: Vec<Target>,
    package: Vec<u8>,
    url: String,
}

/// Where a file stands after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    Old,
    New,
    Other,
}

/// What was on disk when the daemon was killed (the daemon is dead: nothing moves).
#[derive(Debug, Clone)]
struct KillSnapshot {
    state_stage: String,
    journal_phase: String,
    files_new: usize,
}

impl KillSnapshot {
    /// The step of the installation the kill interrupted, from what is on disk.
    fn step(&self) -> String {
        match (self.journal_phase.as_str(), self.state_stage.as_str()) {
            ("absent", "toInstall") => "before the install".into(),
            ("absent", "installing") => "installing, no journal yet".into(),
            ("absent", "rebooting") => "journal removed, outcome not persisted".into(),
            ("absent", "absent") => "after success".into(),
            ("absent", other) => format!("no journal, state.json {other}"),
            (phase, _) => format!("journal {phase}"),
        }
    }
}

impl InstallRig {
    fn new() -> Option<InstallRig> {
        let ws = Workspace::new();
        let nginx = ws.nginx()?;
        let api = FakeDeviceApi::start();
        let proc_name = unique_name("soak");
        let root = ws.root();

        let svc_dst = root.join("svc").join(&proc_name);
        let mut targets = vec![Target {
            dst: svc_dst.clone(),
            old: Some(sleep_binary_with_marker("soak-old")),
            new: sleep_binary_with_marker("soak-new"),
            mode: 0o755,
        }];
        let mut entries = vec![Entry::file(
            &format!("svc/{proc_name}"),
            &targets[0].new,
            0o755,
        )];
        // Module data: 12 blobs, every third one 300 KiB, plus a file that is new.
        for i in 0..12u64 {
            let len = if i % 3 == 0 {
                300 * 1024
            } else {
                24 * 1024 + 977 * i as usize
            };
            let new = pseudo_random_bytes(len, 1000 + i);
            let old = pseudo_random_bytes(len - 100 - i as usize, 2000 + i);
            entries.push(Entry::file(&format!("data/blob{i}.bin"), &new, 0o644));
            targets.push(Target {
                dst: root.join(format!("data/blob{i}.bin")),
                old: Some(old),
                new,
                mode: 0o644,
            });
        }
        let added = pseudo_random_bytes(40 * 1024, 3000);
        entries.push(Entry::file("data/extra/added.bin", &added, 0o644));
        targets.push(Target {
            dst: root.join("data/extra/added.bin"),
            old: None,
            new: added,
            mode: 0o644,
        });
        // Module conf: 6 small files.
        for i in 0..6 {
            let new = format!("{{\"conf\": {i}, \"version\": \"{VERSION}\"}}\n").into_bytes();
            let old =
                format!("{{\"conf\": {i}, \"version\": \"7.2.0\", \"old\": true}}\n").into_bytes();
            entries.push(Entry::file(&format!("conf/c{i}.json"), &new, 0o644));
            targets.push(Target {
                dst: root.join(format!("conf/c{i}.json")),
                old: Some(old),
                new,
                mode: 0o644,
            });
        }
        let m = manifest(
            VERSION,
            vec![
                json!({"name": "svc", "src": format!("svc/{proc_name}"),
                       "dst": svc_dst.display().to_string(), "process_name": proc_name,
                       "start_cmd": [svc_dst.display().to_string(), "3600"],
                       "restart_order": 1}),
                json!({"name": "data", "src": "data",
                       "dst": root.join("data").display().to_string(), "restart_order": 2}),
                json!({"name": "conf", "src": "conf",
                       "dst": root.join("conf").display().to_string()}),
            ],
        );
        let package = build_package(&m, &entries);
        let url = nginx.put("pkg/soak.zip", &package);
        let d = Daemon::start(&ws, &api, DaemonOptions::default());
        let mut rig = InstallRig {
            d,
            api,
            _nginx: nginx,
            old_proc: None,
            _kill: KillOnDrop::names(&[&proc_name]),
            ws,
            proc_name,
            svc_dst,
            targets,
            package,
            url,
        };
        rig.reset();
        Some(rig)
    }

    fn journal(&self) -> PathBuf {
        self.ws.work_dir().join("backups/journal.json")
    }

    fn journal_phase(&self) -> String {
        json_str_field(&self.journal(), "phase")
    }

    fn file_state(&self, t: &Target) -> FileState {
        match (std::fs::read(&t.dst).ok(), &t.old) {
            (Some(c), _) if c == t.new => FileState::New,
            (Some(c), Some(old)) if c == *old => FileState::Old,
            (None, None) => FileState::Old,
            _ => FileState::Other,
        }
    }

    fn describe_files(&self) -> String {
        self.targets
            .iter()
            .map(|t| {
                let len = std::fs::metadata(&t.dst)
                    .map(|m| m.len().to_string())
                    .unwrap_or_else(|_| "absent".into());
                format!(
                    "  {}: {:?} ({len} bytes; new {}, old {:?})\n",
                    t.dst.display(),
                    self.file_state(t),
                    t.new.len(),
                    t.old.as_ref().map(Vec::len)
                )
            })
            .collect()
    }

    fn snapshot(&self) -> KillSnapshot {
        KillSnapshot {
            state_stage: state_stage(&self.ws),
            journal_phase: self.journal_phase(),
            files_new: self
                .targets
                .iter()
                .filter(|t| self.file_state(t) == FileState::New)
                .count(),
        }
    }

    /// Back to the old version with the old program running and the package verified
    /// (`toInstall`). The daemon is idle or settled: it touches none of this.
    fn reset(&mut self) {
        for pid in procs::pids_named(&self.proc_name) {
            procs::signal(pid, rustix::process::Signal::KILL);
        }
        self.old_proc = None;
        wait_until(
            "the module's processes to be gone",
            Duration::from_secs(10),
            || procs::pids_named(&self.proc_name).is_empty().then_some(()),
        );
        for t in &self.targets {
            match &t.old {
                Some(old) => put_file(&t.dst, old, t.mode),
                None => {
                    let _ = std::fs::remove_file(&t.dst);
                    if let Some(dir) = t.dst.parent() {
                        let _ = std::fs::remove_dir(dir);
                    }
                }
            }
        }
        self.old_proc = Some(Spawned::spawn(Command::new(&self.svc_dst).arg("3600")));
        procs::wait_for_named(&self.proc_name, Duration::from_secs(10));
        let body = download_body(VERSION, &self.url, "soak.zip", &self.package);
        let (status, v) = self.d.post_json("/download", &body);
        assert_eq!(status, 200, "/download: {v}");
        let st = v["data"]["status"].as_str().unwrap_or("");
        assert!(
            v["code"].as_i64() == Some(200) && (st == "downloading" || st == "toInstall"),
            "/download from stage {}: {v}",
            stage_of(&self.d.progress())
        );
        self.d.wait_stage("toInstall", Duration::from_secs(60));
    }

    /// The contents of the program each living process of the module runs.
    fn running_programs(&self) -> Vec<(i32, FileState)> {
        let svc = &self.targets[0];
        procs::pids_named(&self.proc_name)
            .into_iter()
            .filter_map(|pid| {
                let exe = std::fs::read(format!("/proc/{pid}/exe")).ok()?;
                let st = if exe == svc.new {
                    FileState::New
                } else if Some(&exe) == svc.old.as_ref() {
                    FileState::Old
                } else {
                    FileState::Other
                };
                Some((pid, st))
            })
            .collect()
    }

    /// Exactly one process of the module runs, and it runs the `want` version.
    fn wait_program(&self, want: FileState, context: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let running = self.running_programs();
            if running.len() == 1 && running[0].1 == want {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{context}: expected exactly one {} process running the {want:?} program, \
                     found {running:?}\n{}",
                    self.proc_name,
                    self.d.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restart after a kill and check docs/API.md section 6. Returns the settled stage.
    fn restart_and_check(&mut self, context: &str) -> String {
        let reports_before = self.api.reports().len();
        let outcome = self.ws.work_dir().join("tmp/outcome.json");
        let read_outcome = || read_json(&outcome);
        // The stage of an outcome device-api had already answered with 200 before the kill.
        let delivered_stage = read_outcome()
            .filter(|o| o["delivered"] == true)
            .and_then(|o| o["stage"].as_str().map(str::to_string));
        self.d.restart();
        let first = self.d.first_progress.clone().expect("first /progress");
        assert!(
            !matches!(stage_of(&first).as_str(), "installing" | "rebooting"),
            "{context}: the API answered about an unfinished installation: {first}"
        );
        let p = self
            .d
            .wait_for("a settled stage", SETTLE, |p| !is_busy(&stage_of(p)));
        let stage = stage_of(&p);
        let states: Vec<FileState> = self.targets.iter().map(|t| self.file_state(t)).collect();
        let all_old = states.iter().all(|s| *s == FileState::Old);
        let all_new = states.iter().all(|s| *s == FileState::New);
        assert!(
            all_old || all_new,
            "{context}: after the restart (stage {stage}) the files are a mix of old and new \
             or truncated:\n{}{}",
            self.describe_files(),
            self.d.output()
        );
        let leftovers: Vec<PathBuf> = files_below(&self.ws.root())
            .into_iter()
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.ends_with(".tmp") || name.starts_with(".tope-stage-")
            })
            .collect();
        assert!(
            leftovers.is_empty(),
            "{context}: staging files left: {leftovers:?}"
        );
        let backups = files_below(&self.ws.work_dir().join("backups"));
        assert!(
            backups.is_empty(),
            "{context}: stage {stage}, journal or backups left: {backups:?}"
        );
        match stage.as_str() {
            "success" => {
                assert!(all_new, "{context}: success with old files: {p}");
                self.wait_program(FileState::New, context);
            }
            "failed" => {
                let err = p["data"]["error"].as_str().unwrap_or("");
                assert!(
                    err.starts_with("DEPLOYMENT_FAILED"),
                    "{context}: failed with another error than DEPLOYMENT_FAILED: {p}"
                );
                assert!(
                    all_old,
                    "{context}: the daemon reports `{err}` but the new version is installed:\n{}{}",
                    self.describe_files(),
                    self.d.output()
                );
                self.wait_program(FileState::Old, context);
            }
            "toInstall" => {
                assert!(all_old, "{context}: toInstall with new files: {p}");
                self.wait_program(FileState::Old, context);
            }
            // state.json is deleted at success (docs/API.md section 5): a restart after the
            // outcome was persisted starts idle.
            "idle" => {
                assert!(all_new, "{context}: idle with old files: {p}");
                self.wait_program(FileState::New, context);
            }
            other => panic!("{context}: unexpected stage {other} after the restart: {p}"),
        }
        // The outcome of an installation cut by the kill reaches device-api (section 2):
        // answered with 200 before the kill (outcome.json says so), or reported after the
        // restart until it is.
        if matches!(stage.as_str(), "success" | "failed") {
            let delivered = || {
                read_outcome()
                    .is_some_and(|o| o["stage"] == stage.as_str() && o["delivered"] == true)
            };
            if delivered_stage.as_deref() != Some(stage.as_str()) {
                wait_until(
                    &format!("{context}: a `{stage}` report after the restart"),
                    Duration::from_secs(10),
                    || {
                        let bodies = self.api.bodies();
                        bodies[reports_before.min(bodies.len())..]
                            .iter()
                            .any(|b| b["stage"].as_str() == Some(stage.as_str()))
                            .then_some(())
                    },
                );
            }
            wait_until(
                &format!("{context}: outcome.json to record the `{stage}` as delivered"),
                Duration::from_secs(10),
                || delivered().then_some(()),
            );
        }
        stage
    }
}

/// When the steps of one uninterrupted installation were seen, from POST /update: the first
/// time the journal showed each phase (in the order of [`JOURNAL_PHASES`]), the health phase.
struct Timeline {
    phases: [Option<Duration>; 5],
    /// /progress says the modules are being checked (the health phase).
    checking: Option<Duration>,
    /// The journal gone again (the installation's cleanup).
    removed: Option<Duration>,
    /// /progress says success.
    end: Duration,
}

impl Timeline {
    /// Consecutive intervals between the steps that were seen, the last one reaching 10 %
    /// past the end.
    fn phases(&self) -> Vec<(Duration, Duration)> {
        let mut marks = vec![Duration::ZERO];
        let mut seen: Vec<Duration> = self
            .phases
            .iter()
            .chain([&self.checking, &self.removed])
            .flatten()
            .copied()
            .collect();
        seen.sort();
        for m in seen {
            if m > *marks.last().unwrap() {
                marks.push(m);
            }
        }
        let end = self
            .end
            .mul_f64(1.1)
            .max(*marks.last().unwrap() + Duration::from_millis(1));
        marks.push(end);
        marks.windows(2).map(|w| (w[0], w[1])).collect()
    }
}

impl InstallRig {
    /// One uninterrupted installation, watching the journal in a tight loop.
    fn timed_install(&mut self) -> Timeline {
        let t0 = Instant::now();
        self.d.post_update(VERSION);
        let mut t = Timeline {
            phases: [None; 5],
            checking: None,
            removed: None,
            end: Duration::ZERO,
        };
        let mut last_progress = Instant::now();
        loop {
            let now = t0.elapsed();
            let phase = self.journal_phase();
            if let Some(i) = JOURNAL_PHASES.iter().position(|p| *p == phase) {
                t.phases[i].get_or_insert(now);
            } else if phase == "absent" && t.phases.iter().any(Option::is_some) {
                t.removed.get_or_insert(now);
            }
            if last_progress.elapsed() >= Duration::from_millis(2) {
                last_progress = Instant::now();
                let p = self.d.progress();
                if is_checking(&p) {
                    t.checking.get_or_insert(now);
                }
                if !is_busy(&stage_of(&p)) {
                    assert_eq!(stage_of(&p), "success", "calibration install: {p}");
                    t.end = t0.elapsed();
                    return t;
                }
            }
            assert!(t0.elapsed() < SETTLE, "calibration install did not settle");
            std::thread::yield_now();
        }
    }
}

/// Outcome name for the tally.
fn outcome_name(stage: &str) -> &'static str {
    match stage {
        "success" => "completed",
        "failed" => "rolled back",
        "toInstall" => "not started",
        "idle" => "completed",
        _ => "other",
    }
}

/// Restart and check, counting the outcome; a violation is recorded (not raised) so that a
/// loop runs all its iterations and reports how often it happens.
fn restart_checked(
    rig: &mut InstallRig,
    context: &str,
    tally: &mut Tally,
    failures: &mut Vec<String>,
) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rig.restart_and_check(context)
    }));
    match result {
        Ok(stage) => {
            eprintln!("  {context} -> {stage}");
            tally.add(outcome_name(&stage));
        }
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            eprintln!("  {context} -> VIOLATION");
            failures.push(msg);
            tally.add("violations");
            // The next iteration starts from a settled daemon.
            rig.d
                .wait_for("a settled stage", SETTLE, |p| !is_busy(&stage_of(p)));
        }
    }
}

/// Fails with the first violation in full and the first line of every other one.
fn assert_no_violations(what: &str, failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    let others: Vec<&str> = failures[1..]
        .iter()
        .map(|f| f.lines().next().unwrap_or(""))
        .collect();
    panic!(
        "{} {what} broke docs/API.md section 6. First:\n{}\nOthers:\n{}",
        failures.len(),
        failures[0],
        others.join("\n")
    );
}

/// a) SIGKILL at a random instant of the installation (spread over its measured duration),
/// restart: every file entirely old or all entirely new, no `.tmp`, no journal, the matching
/// program running, the outcome reported.
#[test]
fn soak_install_killed_at_random_instants() {
    let Some(mut rig) = InstallRig::new() else {
        return;
    };
    let iterations = soak_iterations();
    let (mut rng, seed) = Rng::for_loop("install-random-kills");
    let started = Instant::now();

    // Calibrate: the timeline of two uninterrupted installations (the faster one; the first
    // runs on cold caches). The kill instants are drawn from its phases in equal shares, so
    // that a short phase (swapping, in a release build) is hit as often as a long one.
    let mut timeline: Option<Timeline> = None;
    for run in 0..2 {
        if run > 0 {
            rig.reset();
        }
        let t = rig.timed_install();
        rig.wait_program(FileState::New, "calibration install");
        if timeline.as_ref().is_none_or(|old| t.end < old.end) {
            timeline = Some(t);
        }
    }
    let timeline = timeline.expect("calibrated");
    let phases = timeline.phases();
    eprintln!(
        "soak install-random-kills: an uninterrupted install of {} files takes {} ms; phases \
         (ms) {:?}",
        rig.targets.len(),
        timeline.end.as_millis(),
        phases
            .iter()
            .map(|(a, b)| (a.as_millis(), b.as_millis()))
            .collect::<Vec<_>>()
    );

    let mut tally = Tally::default();
    let mut killed_in = Tally::default();
    let mut failures = Vec::new();
    for i in 0..iterations {
        rig.reset();
        let (from, to) = phases[rng.below(phases.len() as u64) as usize];
        let delay = from + (to - from).mul_f64(rng.unit());
        rig.d.post_update(VERSION);
        std::thread::sleep(delay);
        rig.d.sigkill();
        let snap = rig.snapshot();
        let context = format!(
            "seed {seed}, iteration {i}, kill {} ms after /update (state.json {}, journal {}, \
             {} files new)",
            delay.as_millis(),
            snap.state_stage,
            snap.journal_phase,
            snap.files_new
        );
        restart_checked(&mut rig, &context, &mut tally, &mut failures);
        killed_in.add(&snap.step());
    }
    eprintln!(
        "soak install-random-kills: {iterations} iterations, seed {seed}, {:.1} s: {}; \
         killed in: {}",
        started.elapsed().as_secs_f64(),
        tally.line(),
        killed_in.line()
    );
    assert_no_violations("random kill(s)", &failures);
}

/// The phases of the install journal, in order (src/deploy/journal.rs).
const JOURNAL_PHASES: [&str; 5] = ["staging", "staged", "stopping", "swapping", "committed"];

/// `/progress` says the health of the modules is being checked (docs/API.md section 8.4).
fn is_checking(p: &Value) -> bool {
    stage_of(p) == "rebooting"
        && p["data"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Checking"))
}

/// Where a deterministic kill lands.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// `/progress` shows this stage.
    Stage(&'static str),
    /// `/progress` shows the health phase (the settle window or the checks).
    Checking,
    /// `backups/journal.json` has this phase.
    Journal(&'static str),
    /// The first blob of module `data` is the new version (deployment half done).
    FirstBlobNew,
    /// The journal existed and is gone again (cleanup of a committed installation).
    JournalRemoved,
}

/// Every persisted step, in the order an installation passes them. `JournalRemoved` has a
/// test of its own (`soak_install_killed_between_cleanup_and_outcome`).
const KILL_POINTS: [KillPoint; 10] = [
    KillPoint::Stage("installing"),
    KillPoint::Journal("staging"),
    KillPoint::Journal("staged"),
    KillPoint::Journal("stopping"),
    KillPoint::Journal("swapping"),
    KillPoint::FirstBlobNew,
    KillPoint::Stage("rebooting"),
    KillPoint::Checking,
    KillPoint::Journal("committed"),
    KillPoint::Stage("success"),
];

impl InstallRig {
    /// Spins until `point` is reached and kills the daemon at once. `false` when the
    /// installation settled before the point was seen (nothing killed).
    fn kill_at(&mut self, point: KillPoint) -> bool {
        let deadline = Instant::now() + SETTLE;
        let mut journal_seen = false;
        let mut last_progress = Instant::now();
        let blob = &self.targets[1];
        loop {
            let hit = match point {
                KillPoint::Stage(s) => {
                    let st = stage_of(&self.d.progress());
                    if st != s && !is_busy(&st) {
                        return false;
                    }
                    st == s
                }
                KillPoint::Checking => {
                    let p = self.d.progress();
                    if !is_busy(&stage_of(&p)) {
                        return false;
                    }
                    is_checking(&p)
                }
                KillPoint::Journal(phase) => self.journal_phase() == phase,
                KillPoint::FirstBlobNew => std::fs::read(&blob.dst).is_ok_and(|c| c == blob.new),
                KillPoint::JournalRemoved => {
                    let exists = self.journal().exists();
                    let gone = journal_seen && !exists;
                    journal_seen |= exists;
                    gone
                }
            };
            if hit {
                self.d.sigkill();
                return true;
            }
            // The file watchers give up once the installation has settled without the point.
            if last_progress.elapsed() >= Duration::from_millis(20) {
                last_progress = Instant::now();
                if !is_busy(&stage_of(&self.d.progress())) {
                    return false;
                }
            }
            assert!(
                Instant::now() < deadline,
                "kill point {point:?} not reached within {SETTLE:?}"
            );
            std::thread::yield_now();
        }
    }
}

/// Runs `points` `rounds` times: reset, /update, kill at the point, restart, check. Violations
/// are collected (every point runs) and returned with the tally line.
fn run_kill_points(
    rig: &mut InstallRig,
    name: &str,
    points: &[KillPoint],
    rounds: usize,
) -> (Tally, Vec<String>) {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut missed = Vec::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        for &point in points {
            rig.reset();
            rig.d.post_update(VERSION);
            if !rig.kill_at(point) {
                missed.push(format!("{point:?}"));
                tally.add("missed");
                continue;
            }
            let snap = rig.snapshot();
            let context = format!(
                "round {round}, killed at {point:?} (state.json {}, journal {}, {} files new)",
                snap.state_stage, snap.journal_phase, snap.files_new
            );
            restart_checked(rig, &context, &mut tally, &mut failures);
        }
    }
    eprintln!(
        "soak {name}: {} kill points x {rounds} rounds, {:.1} s: {}{}",
        points.len(),
        started.elapsed().as_secs_f64(),
        tally.line(),
        if missed.is_empty() {
            String::new()
        } else {
            format!(" (missed, nothing killed: {})", missed.join(", "))
        }
    );
    (tally, failures)
}

/// a) Killed_in_<State>: SIGKILL right when each persisted step of the installation is
/// observed, restart, check section 6 (`success` after the restart means the installation had
/// completed before the kill).
#[test]
fn soak_install_killed_in_each_stage() {
    let Some(mut rig) = InstallRig::new() else {
        return;
    };
    let rounds = soak_iterations().div_ceil(10).max(1);
    let (tally, failures) = run_kill_points(&mut rig, "install-stage-kills", &KILL_POINTS, rounds);
    assert_no_violations("kill point(s)", &failures);
    assert!(
        tally.get("rolled back") > 0 && tally.get("completed") > 0,
        "the kill points must cover both a rollback and a completed install: {}",
        tally.line()
    );
}

/// a) Killed in the health phase (docs/API.md section 8.4): the new files are in place and
/// the new program runs, but nothing was committed, so the restart rolls everything back and
/// the old program runs again.
#[test]
fn contract_8_4_sigkill_during_the_health_phase_rolls_back() {
    let Some(mut rig) = InstallRig::new() else {
        return;
    };
    let rounds = soak_iterations().div_ceil(3).max(1);
    let (tally, failures) = run_kill_points(
        &mut rig,
        "install-health-kills",
        &[KillPoint::Checking],
        rounds,
    );
    assert_no_violations("kill(s) in the health phase", &failures);
    assert_eq!(
        tally.get("rolled back"),
        rounds,
        "every kill in the health phase rolls back: {}",
        tally.line()
    );
}

/// a) Killed_in_<State> at the last step: the installation is complete and its journal
/// removed, but its outcome is not persisted yet (state.json still says `rebooting`). After
/// the restart the daemon must not report a failure while the new version is installed and
/// running.
#[test]
fn soak_install_killed_between_cleanup_and_outcome() {
    let Some(mut rig) = InstallRig::new() else {
        return;
    };
    let rounds = soak_iterations().div_ceil(3).max(1);
    let (_, failures) = run_kill_points(
        &mut rig,
        "install-journal-removed-kills",
        &[KillPoint::JournalRemoved],
        rounds,
    );
    assert_no_violations("kill(s) after the journal was removed", &failures);
}

// ------------------------------------------------------------------ b) download

/// About 3 s at nginx's `/slow/` rate.
const DL_PAYLOAD: usize = 1536 * 1024;
const KILLS_PER_DOWNLOAD: usize = 3;

fn state_json(ws: &Workspace) -> Value {
    read_json(&ws.state_file()).unwrap_or(Value::Null)
}

/// b) SIGKILL at random byte positions of a throttled download, restart without a new
/// /download (it resumes by itself with Range from the persisted position), K times, then
/// let it finish: right MD5, consistent state.json, Range requests in nginx's log.
#[test]
fn soak_download_killed_at_random_bytes() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let iterations = soak_iterations();
    let (mut rng, seed) = Rng::for_loop("download-kills");
    let started = Instant::now();
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let mut tally = Tally::default();
    for it in 0..iterations {
        let name = format!("dl{it}.zip");
        let rel = format!("slow/{name}");
        let dst = ws.root().join("dl.bin").display().to_string();
        let m = manifest(
            VERSION,
            vec![json!({"name": "dl", "src": "dl.bin", "dst": dst})],
        );
        let payload = pseudo_random_bytes(DL_PAYLOAD, rng.next());
        let package = build_package(&m, &[Entry::file("dl.bin", &payload, 0o644)]);
        let size = package.len() as u64;
        let url = nginx.put(&rel, &package);
        d.post_download(&download_body(VERSION, &url, &name, &package));
        let mut fractions: Vec<f64> = (0..KILLS_PER_DOWNLOAD)
            .map(|_| 0.05 + 0.8 * rng.unit())
            .collect();
        fractions.sort_by(|a, b| a.total_cmp(b));
        let mut persisted_at_kills = Vec::new();
        let mut resumed_from = 0u64;
        for (k, f) in fractions.iter().enumerate() {
            // Past the random position, and past the resumed position by a few chunks, so
            // that every restart has sent its request before the next kill; never so near the
            // end that the download could finish before the kill lands.
            let target = ((size as f64 * f) as u64).max(resumed_from + 64 * 1024);
            if target > size * 9 / 10 {
                tally.add("kills skipped (too near the end)");
                break;
            }
            let context = format!("seed {seed}, download {it}, kill {k} at byte >= {target}");
            let p = d.wait_for(&context, Duration::from_secs(60), |p| {
                let done = p["data"]["bytes_downloaded"].as_u64().unwrap_or(0);
                stage_of(p) != "downloading" || done >= target
            });
            let done = p["data"]["bytes_downloaded"].as_u64().unwrap_or(0);
            if stage_of(&p) != "downloading" || done > size * 19 / 20 {
                tally.add("kills skipped (too near the end)");
                break;
            }
            d.sigkill();
            let st = state_json(&ws);
            let persisted = st["bytes_downloaded"].as_u64().unwrap_or(0);
            let on_disk = std::fs::metadata(ws.tmp_file(&name))
                .map(|m| m.len())
                .unwrap_or(0);
            assert_eq!(st["stage"], "downloading", "{context}: state.json {st}");
            assert!(
                persisted <= on_disk,
                "{context}: state.json claims {persisted} bytes, the file has {on_disk}"
            );
            persisted_at_kills.push(persisted);
            tally.add(if persisted > 0 {
                "kills resumed with Range"
            } else {
                "kills restarted from 0"
            });
            d.restart();
            let first = d.first_progress.clone().expect("first /progress");
            assert_eq!(
                stage_of(&first),
                "downloading",
                "{context}: the download must resume by itself after the restart: {first}"
            );
            resumed_from = persisted;
        }
        let p = d.wait_stage("toInstall", Duration::from_secs(60));
        let context = format!("seed {seed}, download {it}");
        assert_eq!(
            md5_file(&ws.tmp_file(&name)),
            md5_hex(&package),
            "{context}: {p}"
        );
        // /progress may show the new stage a moment before state.json is replaced.
        let st = wait_until(
            &format!("{context}: state.json in stage toInstall"),
            Duration::from_secs(10),
            || {
                let st = state_json(&ws);
                (st["stage"] == "toInstall").then_some(st)
            },
        );
        assert_eq!(st["package_name"], name.as_str(), "{context}: {st}");
        assert_eq!(st["package_size"].as_u64(), Some(size), "{context}: {st}");
        assert_eq!(
            st["bytes_downloaded"].as_u64(),
            Some(size),
            "{context}: {st}"
        );
        assert_eq!(
            st["package_md5"].as_str(),
            Some(md5_hex(&package).as_str()),
            "{context}: {st}"
        );
        assert!(st["verified_at"].is_string(), "{context}: {st}");

        // One request per run of the daemon: the first from 0, each later one from the
        // position persisted when the daemon was killed, validated with If-Range.
        let reqs = nginx.access_log(Some(&rel));
        assert_eq!(
            reqs.len(),
            persisted_at_kills.len() + 1,
            "{context}: one request per run expected: {reqs:?}"
        );
        assert!(reqs[0].range.is_none(), "{context}: {reqs:?}");
        for (r, persisted) in reqs[1..].iter().zip(&persisted_at_kills) {
            if *persisted == 0 {
                assert!(r.range.is_none(), "{context}: {r:?}");
                continue;
            }
            assert_eq!(
                r.range_start(),
                Some(*persisted),
                "{context}: the resume must start at the persisted byte: {reqs:?}"
            );
            assert!(r.if_range.is_some(), "{context}: no If-Range: {r:?}");
            assert_eq!(r.status, 206, "{context}: {r:?}");
        }
        assert!(
            persisted_at_kills.iter().all(|&b| b == 0) || reqs.iter().any(|r| r.range.is_some()),
            "{context}: no Range request at all: {reqs:?}"
        );
        tally.add("downloads verified");
        eprintln!(
            "  {context}: killed at persisted bytes {persisted_at_kills:?} of {size}, verified"
        );
    }
    eprintln!(
        "soak download-kills: {iterations} iterations x {KILLS_PER_DOWNLOAD} kills, seed \
         {seed}, {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        tally.line()
    );
}

// ------------------------------------------------------------------ c) torn state.json

/// c) A power cut in the middle of writing state.json: the file (or its `.tmp` sibling)
/// truncated at random lengths while the daemon is stopped. The daemon always starts and
/// answers /progress: from the intact file when there is one, else a fresh start.
#[test]
fn soak_torn_state_json_never_stops_the_daemon() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let iterations = soak_iterations() * 5;
    let (mut rng, seed) = Rng::for_loop("torn-state-json");
    let started = Instant::now();

    let dst = ws.root().join("torn/t.conf");
    let m = manifest(
        VERSION,
        vec![json!({"name": "t", "src": "t.conf", "dst": dst.display().to_string()})],
    );
    let package = build_package(&m, &[Entry::file("t.conf", b"new\n", 0o644)]);
    let state = |stage: &str| {
        let v = json!({
            "version": VERSION,
            "package_url": "https://127.0.0.1:9/torn.zip",
            "package_name": "torn.zip",
            "package_size": package.len(),
            "package_md5": md5_hex(&package),
            "bytes_downloaded": package.len(),
            "last_update": rfc3339_ago(5),
            "stage": stage,
            "verified_at": rfc3339_ago(5),
            "etag": "\"6650a1b2-1f00\"",
        });
        serde_json::to_vec_pretty(&v).unwrap()
    };
    let valid = state("toInstall");
    let tmp_path = ws.work_dir().join("tmp/state.json.tmp");

    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let mut tally = Tally::default();
    for i in 0..iterations {
        d.sigkill();
        write_file(&ws.tmp_file("torn.zip"), &package, 0o644);
        let _ = std::fs::remove_file(&tmp_path);
        // 0: state.json torn; 1: state.json intact, state.json.tmp torn; 2: both torn.
        let mode = rng.below(3);
        let cut = rng.below(valid.len() as u64 + 1) as usize;
        let tmp_cut = rng.below(valid.len() as u64 + 1) as usize;
        let main = if mode == 1 { &valid[..] } else { &valid[..cut] };
        write_file(&ws.state_file(), main, 0o644);
        if mode != 0 {
            write_file(&tmp_path, &state("downloading")[..tmp_cut], 0o644);
        }
        let loadable = serde_json::from_slice::<Value>(main).is_ok();
        let context = format!(
            "seed {seed}, iteration {i}: state.json {} of {} bytes{}",
            main.len(),
            valid.len(),
            if mode != 0 {
                format!(", state.json.tmp {tmp_cut} bytes")
            } else {
                String::new()
            }
        );
        d.restart();
        let first = d.first_progress.clone().expect("first /progress");
        let p = d.progress();
        let stage = stage_of(&p);
        assert!(
            p["data"].is_object() && p["code"].as_i64() == Some(200),
            "{context}: {p}"
        );
        let expected = if loadable { "toInstall" } else { "idle" };
        assert_eq!(stage, expected, "{context}: first answer {first}, now {p}");
        tally.add(if loadable { "loaded" } else { "fresh start" });
    }
    eprintln!(
        "soak torn-state-json: {iterations} restarts, seed {seed}, {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        tally.line()
    );
}
