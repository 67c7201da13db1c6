//! docs/API.md 9.4: the ordinary upgrade of a printer, made by the REAL 0.1.0 binary: a package
//! whose module replaces the updater's own executable (`<root>/usr/bin/tope-updater`) with this
//! release's binary, plus ordinary files, cut by a power loss (SIGKILL of 0.1.0 and of
//! everything it started) in each phase of 0.1.0's journal. Then the "reboot" starts whatever
//! binary is at the path, with the same config and work dir, and the printer must end with a
//! working updater: 0.1.0 again (the installation rolled back, by 0.1.0 itself or by this
//! release, which then executes the 0.1.0 binary it put back) or this release (0.1.0 had
//! committed); and a second attempt of the same upgrade succeeds.
//!
//! The 0.1.0 binary is built once per machine by `scripts/make-v0.1.0-fixtures.sh --bin`, which
//! `scripts/test.sh` runs and exports as `TOPE_V010_BIN`. Without it the tests fail under `CI`
//! and are skipped otherwise.
//!
//! Each phase is reached by a condition, as `scripts/make-v0.1.0-fixtures.sh` does:
//! - `prepared`: the old process of module `app` ignores SIGTERM and `stop_timeout_s` is 60:
//!   0.1.0 waits for it once its journal says `prepared`;
//! - `deploying`: a post command of module `web` writes its pid and sleeps: every file is
//!   deployed (the updater's binary too) when the pid file appears;
//! - `committed`: 0.1.0 runs under strace, which kills it (SIGKILL injected) when it enters the
//!   unlink of its committed journal.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::{serve_command, stage_of, BIN};
use common::procs::{exe_of, is_alive, pids_named, signal, KillOnDrop, WrappedDaemon};
use common::*;
use rustix::process::Signal;
use serde_json::{json, Value};

/// How long the reboot may take until something answers `/progress` (recovery included).
const BOOT_BOUND: Duration = Duration::from_secs(30);

/// The 0.1.0 binary (`TOPE_V010_BIN`), or `None` after saying why the test is skipped.
fn v010_bin() -> Option<PathBuf> {
    match std::env::var_os("TOPE_V010_BIN") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "TOPE_V010_BIN={} is not a file", p.display());
            Some(p)
        }
        None if std::env::var_os("CI").is_some() => panic!(
            "TOPE_V010_BIN is not set: CI must build release 0.1.0 \
             (scripts/make-v0.1.0-fixtures.sh --bin, run by scripts/test.sh)"
        ),
        None => {
            eprintln!(
                "skipping: TOPE_V010_BIN is not set (build release 0.1.0 once with \
                 scripts/make-v0.1.0-fixtures.sh --bin, or run scripts/test.sh)"
            );
            None
        }
    }
}

/// `<bin> --version`, its standard output.
fn version_of(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", bin.display()));
    assert!(out.status.success(), "{} --version: {out:?}", bin.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Which updater a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Old,
    New,
}

/// A printer running 0.1.0 from `<root>/usr/bin/tope-updater`, module `app` (a process whose
/// script ignores SIGTERM while `<root>/ignore-term` exists) and module `web` (a file).
struct Printer {
    ws: Workspace,
    api: FakeDeviceApi,
    _nginx: Nginx,
    app: String,
    old_bin: Vec<u8>,
    new_bin: Vec<u8>,
    package: Vec<u8>,
    url: String,
    config: PathBuf,
    port: u16,
    _kill: KillOnDrop,
}

impl Printer {
    fn new(v010: &Path, stop_timeout_s: u64) -> Option<Printer> {
        let ws = Workspace::new();
        let nginx = ws.nginx()?;
        let app = unique_name("lgs");
        let root = ws.path().join("printer");
        let old_bin = std::fs::read(v010).expect("read the 0.1.0 binary");
        let new_bin = std::fs::read(BIN).expect("read this release's binary");
        assert_ne!(old_bin, new_bin);
        write_file(&root.join("usr/bin/tope-updater"), &old_bin, 0o755);
        let flag = root.join("ignore-term");
        let script = |v: &str| {
            format!(
                "#!/bin/sh\n# app {v}\nif [ -e {} ]; then trap '' TERM; fi\n\
                 while :; do sleep 1; done\n",
                flag.display()
            )
        };
        let app_path = root.join("opt/app").join(&app);
        write_file(&app_path, script("1.0.0").as_bytes(), 0o755);
        write_file(&root.join("opt/web/index.html"), b"<p>1.0.0</p>\n", 0o644);

        let hold = format!(
            "if [ -e {r}/hold ]; then echo $$ > {r}/post.pid; exec sleep 600; fi",
            r = root.display()
        );
        let manifest = json!({"version": "1.0.1", "modules": [
            {"name": "updater", "src": "updater/tope-updater",
             "dst": root.join("usr/bin/tope-updater")},
            {"name": "app", "src": format!("app/{app}"), "dst": app_path,
             "process_name": app, "restart_order": 1, "start_cmd": [app_path]},
            {"name": "web", "src": "web/index.html", "dst": root.join("opt/web/index.html"),
             "restart_order": 2, "post_cmds": [["/bin/sh", "-c", hold]]},
        ]});
        let package = build_package(
            &manifest,
            &[
                Entry::file("updater/tope-updater", &new_bin, 0o755),
                Entry::file(&format!("app/{app}"), script("1.0.1").as_bytes(), 0o755),
                Entry::file("web/index.html", b"<p>1.0.1</p>\n", 0o644),
            ],
        );
        let url = nginx.put("legacy-1.0.1.zip", &package);

        // 0.1.0's config keys (`git show v0.1.0:src/config.rs`, unknown keys refused), which
        // this release reads too.
        let api = FakeDeviceApi::start();
        let port = free_port();
        let config = ws.path().join("updater.toml");
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\ndevice_api_url = \"{}\"\nwork_dir = \"{}\"\n\
             allowed_roots = [\"{}\", \"{}\"]\nca_file = \"{}\"\nota_gui_path = \"{}\"\n\
             stop_timeout_s = {stop_timeout_s}\n",
            api.url(),
            ws.work_dir().display(),
            root.join("usr/bin").display(),
            root.join("opt").display(),
            ws.ca_file().display(),
            ws.path().join("no-ota-gui").display(),
        );
        std::fs::write(&config, text).unwrap();
        Some(Printer {
            _kill: KillOnDrop::names(&[&app]).pid_file(&root.join("post.pid")),
            ws,
            api,
            _nginx: nginx,
            app,
            old_bin,
            new_bin,
            package,
            url,
            config,
            port,
        })
    }

    fn root(&self) -> PathBuf {
        self.ws.path().join("printer")
    }

    fn path(&self) -> PathBuf {
        self.root().join("usr/bin/tope-updater")
    }

    fn journal(&self) -> PathBuf {
        self.ws.work_dir().join("backups/journal.json")
    }

    fn journal_phase(&self) -> Option<String> {
        let j: Value = serde_json::from_slice(&std::fs::read(self.journal()).ok()?).ok()?;
        j["phase"].as_str().map(str::to_string)
    }

    /// Starts `wrapper` (possibly empty) then the binary at the path, `serve --config`; returns
    /// once `/progress` answers (within [`BOOT_BOUND`]).
    fn start(&self, wrapper: &[&str], stem: &str) -> WrappedDaemon {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(self.path());
                c
            }
            None => Command::new(self.path()),
        };
        serve_command(&mut cmd, &self.config, self.ws.path(), stem);
        let child = cmd.spawn().expect("start the updater at the path");
        let t = std::time::Instant::now();
        let d =
            WrappedDaemon::wait_ready(child, self.port, &self.ws.work_dir(), self.ws.path(), stem);
        assert!(
            t.elapsed() <= BOOT_BOUND,
            "/progress after {:?}",
            t.elapsed()
        );
        d
    }

    /// Which whole binary the path holds; anything else fails.
    fn at_path(&self) -> Which {
        let data = std::fs::read(self.path()).expect("the path holds a file");
        if data == self.old_bin {
            Which::Old
        } else if data == self.new_bin {
            Which::New
        } else {
            panic!(
                "{} holds neither 0.1.0 nor this release ({} bytes)",
                self.path().display(),
                data.len()
            )
        }
    }

    /// Which binary process `pid` runs (its executable's bytes).
    fn running(&self, pid: i32) -> Which {
        let data = std::fs::read(format!("/proc/{pid}/exe")).expect("read /proc/<pid>/exe");
        if data == self.old_bin {
            Which::Old
        } else if data == self.new_bin {
            Which::New
        } else {
            panic!("process {pid} runs neither 0.1.0 nor this release")
        }
    }

    /// The module files (app script, web page): all of 1.0.0 or all of 1.0.1.
    fn files_version(&self) -> &'static str {
        let app = std::fs::read_to_string(self.root().join("opt/app").join(&self.app)).unwrap();
        let web = std::fs::read_to_string(self.root().join("opt/web/index.html")).unwrap();
        match (app.contains("# app 1.0.1"), web.contains("1.0.1")) {
            (false, false) => "1.0.0",
            (true, true) => "1.0.1",
            _ => panic!("the files are mixed:\napp: {app}\nweb: {web}"),
        }
    }

    /// The power cut: 0.1.0 (with strace, in its process group) and every process it started
    /// (the module's process, the post command) die at once.
    fn power_cut(&self, d: WrappedDaemon) {
        drop(d);
        for pid in pids_named(&self.app) {
            signal(pid, Signal::KILL);
        }
        if let Some(pid) = std::fs::read_to_string(self.root().join("post.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            signal(pid, Signal::KILL);
        }
        wait_until(
            "the printer's processes gone",
            Duration::from_secs(10),
            || pids_named(&self.app).is_empty().then_some(()),
        );
    }

    /// `/download` then `/update` of the package, as device-api asks 0.1.0.
    fn ask_update(&self, d: &WrappedDaemon) {
        let body = download_body("1.0.1", &self.url, "legacy-1.0.1.zip", &self.package);
        let (code, answer) = d.post_json("/download", &body);
        assert_eq!(code, 200, "/download: {answer}");
        d.wait_for("toInstall", Duration::from_secs(60), |p| {
            stage_of(p) == "toInstall"
        });
        let (code, answer) = d.post_json("/update", &json!({ "version": "1.0.1" }));
        assert_eq!(code, 200, "/update: {answer}");
    }
}

/// The pid of the program strace (`tracer`) runs.
fn tracee_of(tracer: i32) -> i32 {
    wait_until("the traced updater", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// One case: 0.1.0 cut in `phase`, the reboot, its outcome, then the second attempt.
fn cut_and_reboot(phase: &str) {
    let Some(v010) = v010_bin() else { return };
    if phase == "committed" && !common::procs::require_tool("strace", "the cut at the commit") {
        return;
    }
    let stop = if phase == "prepared" { 60 } else { 5 };
    let Some(p) = Printer::new(&v010, stop) else {
        return;
    };
    let old_version = version_of(&v010);
    let new_version = version_of(Path::new(BIN));
    assert_ne!(old_version, new_version);

    // 0.1.0 runs, cut in `phase`.
    let wrapper: Vec<String> = match phase {
        "committed" => vec![
            "strace".into(),
            "-f".into(),
            "-qq".into(),
            "-o".into(),
            "/dev/null".into(),
            "-P".into(),
            p.journal().display().to_string(),
            "-e".into(),
            "trace=unlink,unlinkat".into(),
            "-e".into(),
            "inject=unlink,unlinkat:signal=SIGKILL".into(),
            "--".into(),
        ],
        _ => Vec::new(),
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    // The old process of module `app` (prepared), reaped after the power cut.
    let mut old_app = None;
    match phase {
        "prepared" => {
            write_file(&p.root().join("ignore-term"), b"", 0o644);
            let app = p.root().join("opt/app").join(&p.app);
            let mut cmd = Command::new(app);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            old_app = Some(cmd.spawn().expect("start the old app"));
            wait_until("the old app", Duration::from_secs(10), || {
                (!pids_named(&p.app).is_empty()).then_some(())
            });
        }
        "deploying" => write_file(&p.root().join("hold"), b"", 0o644),
        _ => {}
    }
    let d = p.start(&wrapper, "v010");
    let tracee = (phase == "committed").then(|| tracee_of(d.child.id() as i32));
    assert_eq!(p.running(tracee.unwrap_or(d.child.id() as i32)), Which::Old);
    p.ask_update(&d);
    match phase {
        "prepared" => {
            wait_until("journal phase prepared", Duration::from_secs(60), || {
                (p.journal_phase().as_deref() == Some("prepared")).then_some(())
            });
        }
        "deploying" => {
            wait_until("the post command", Duration::from_secs(60), || {
                std::fs::read_to_string(p.root().join("post.pid"))
                    .ok()
                    .filter(|s| s.ends_with('\n'))
            });
            assert_eq!(p.journal_phase().as_deref(), Some("deploying"));
        }
        _ => {
            let tracee = tracee.expect("the traced 0.1.0");
            wait_until(
                "0.1.0 killed at its cleanup",
                Duration::from_secs(60),
                || (!is_alive(tracee)).then_some(()),
            );
            assert_eq!(p.journal_phase().as_deref(), Some("committed"));
        }
    }
    p.power_cut(d);
    if let Some(mut c) = old_app.take() {
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(p.root().join("ignore-term"));
    let _ = std::fs::remove_file(p.root().join("hold"));

    // What 0.1.0 left at the path: a whole binary, the new one once files were deployed.
    let left = p.at_path();
    let expected_left = if phase == "prepared" {
        Which::Old
    } else {
        Which::New
    };
    assert_eq!(left, expected_left, "the binary 0.1.0 left at the path");

    // The reboot: whatever binary is at the path starts, and something serves /progress
    // within BOOT_BOUND (Printer::start).
    let d = p.start(&[], "boot");
    let pid = d.child.id() as i32;
    let first = d.progress();
    if phase == "committed" {
        // 0.1.0 had committed: this release finishes the cleanup and serves.
        assert_eq!(stage_of(&first), "success", "{first}");
        assert_eq!(p.at_path(), Which::New);
        assert_eq!(p.running(pid), Which::New);
        assert_eq!(p.files_version(), "1.0.1");
        assert!(!p.journal().exists());
        assert_eq!(exe_of(pid).as_deref(), Some(p.path().as_path()));
        assert_eq!(version_of(&p.path()), new_version);
        return;
    }
    // Rolled back (by 0.1.0 itself, or by this release, which then executed the 0.1.0 binary
    // it put back, same pid): 0.1.0 serves, the files are all old.
    assert_eq!(stage_of(&first), "failed", "{first}");
    let err = first["data"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("DEPLOYMENT_FAILED"), "{first}");
    assert_eq!(p.at_path(), Which::Old);
    assert_eq!(p.running(pid), Which::Old, "{}", d.output());
    assert_eq!(exe_of(pid).as_deref(), Some(p.path().as_path()));
    assert_eq!(p.files_version(), "1.0.0");
    assert!(!p.journal().exists());
    assert_eq!(version_of(&p.path()), old_version);
    p.api
        .wait_for_report("the failed outcome", Duration::from_secs(10), |b| {
            b["stage"] == "failed"
        });

    // The second attempt of the same upgrade, by the 0.1.0 that serves: success, then the
    // updater's restart (as its unit's restart would) runs this release from the path.
    let outcome = d.install(&p.url, "1.0.1", &p.package);
    assert_eq!(stage_of(&outcome), "success", "{outcome}\n{}", d.output());
    assert_eq!(p.at_path(), Which::New);
    assert_eq!(p.files_version(), "1.0.1");
    let mut d = d;
    signal(pid, Signal::TERM);
    let _ = d.child.wait();
    drop(d);
    let d = p.start(&[], "after");
    let pid = d.child.id() as i32;
    assert_eq!(p.running(pid), Which::New);
    assert_eq!(exe_of(pid).as_deref(), Some(p.path().as_path()));
    assert_eq!(version_of(&p.path()), new_version);
    // 0.1.0 deletes `state.json` after a success and records no outcome (docs/API.md 8.5 is
    // this release's): nothing tells this release of that success, so it starts idle.
    // Never the failure of the first attempt again (this release's `tmp/outcome.json`).
    let stage = stage_of(&d.progress());
    assert!(
        stage == "idle" || stage == "success",
        "{stage}\n{}",
        d.output()
    );
}

/// docs/API.md 9.4: 0.1.0 cut while stopping processes (journal `prepared`, no file changed):
/// the path still holds 0.1.0, which rolls back by its own rules and serves; the second attempt
/// then installs this release.
#[test]
fn docs_api_9_4_the_0_1_0_self_upgrade_cut_in_prepared_is_recovered_by_0_1_0() {
    cut_and_reboot("prepared");
}

/// docs/API.md 9.4: 0.1.0 cut with every file deployed, this release's binary at the path
/// (journal `deploying`): this release boots, rolls 0.1.0's journal back (0.1.0 back at the
/// path, old files), executes the 0.1.0 binary (same pid), which serves `failed`; the second
/// attempt then installs this release.
#[test]
fn docs_api_9_4_the_0_1_0_self_upgrade_cut_in_deploying_is_rolled_back_by_this_release() {
    cut_and_reboot("deploying");
}

/// docs/API.md 9.4: 0.1.0 cut at the cleanup after its commit (journal `committed`): this
/// release boots from the path, finishes the cleanup and serves `success`.
#[test]
fn docs_api_9_4_the_0_1_0_self_upgrade_cut_after_its_commit_is_finished_by_this_release() {
    cut_and_reboot("committed");
}
