//! docs/API.md section 8.4, the health-checked commit, against the real daemon and real
//! processes: a new version that does not come up healthy is undone, and the processes that ran
//! before are started again exactly as they ran.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::stage_of;
use common::procs::{self, KillOnDrop, Spawned};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "8.4.0";

/// A printer with one program, `<root>/svc/<name>` (a `sleep` carrying a marker), running as
/// `<program> 1000 7`, and a daemon with `settle_s`.
struct Rig {
    d: Daemon,
    _api: FakeDeviceApi,
    nginx: Nginx,
    _kill: KillOnDrop,
    _old: Spawned,
    ws: Workspace,
    name: String,
    prog: PathBuf,
}

impl Rig {
    fn new(settle_s: u64) -> Option<Rig> {
        let ws = Workspace::new();
        let nginx = ws.nginx()?;
        let api = FakeDeviceApi::start();
        let name = unique_name("hlth");
        let kill = KillOnDrop::names(&[&name]);
        let prog = ws.root().join("svc").join(&name);
        write_file(&prog, &sleep_binary_with_marker("old"), 0o755);
        let old = Spawned::spawn(Command::new(&prog).args(["1000", "7"]));
        procs::wait_for_named(&name, Duration::from_secs(5));
        let d = Daemon::start(
            &ws,
            &api,
            DaemonOptions {
                stop_timeout_s: 2,
                extra_toml: format!("settle_s = {settle_s}\n"),
                ..DaemonOptions::default()
            },
        );
        Some(Rig {
            d,
            _api: api,
            nginx,
            _kill: kill,
            _old: old,
            ws,
            name,
            prog,
        })
    }

    /// The package: the new program (marker `new`) with these extra module fields.
    fn package(&self, extra: Value) -> Vec<u8> {
        let mut module = json!({"name": "svc", "src": "svc", "dst": self.prog.display().to_string(),
                                "process_name": self.name});
        if let (Some(m), Some(e)) = (module.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        build_package(
            &manifest(VERSION, vec![module]),
            &[Entry::file("svc", &sleep_binary_with_marker("new"), 0o755)],
        )
    }

    fn install(&self, package: &[u8]) -> Value {
        self.d
            .install_package(&self.nginx, "h.zip", VERSION, package)
    }

    /// The one process of the module: its pid, argv and the marker of the program it runs.
    fn running(&self) -> (i32, Vec<String>, bool) {
        let pids = procs::wait_for_named(&self.name, Duration::from_secs(10));
        assert_eq!(
            pids.len(),
            1,
            "one {} process expected: {pids:?}",
            self.name
        );
        let exe = std::fs::read(format!("/proc/{}/exe", pids[0])).unwrap_or_default();
        let old = exe.ends_with(b"\nTOPE-MARKER:old\n");
        (pids[0], procs::cmdline_of(pids[0]), old)
    }
}

fn error_of(p: &Value) -> String {
    p["data"]["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn contract_8_4_a_new_process_that_crashes_after_1_s_rolls_back_and_the_old_one_runs_with_its_argv()
{
    let Some(rig) = Rig::new(2) else { return };
    let prog = rig.prog.display().to_string();
    // The new version's process lives one second.
    let p = rig.install(&rig.package(json!({"start_cmd": [prog, "1"]})));
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = error_of(&p);
    assert!(
        err.starts_with("DEPLOYMENT_FAILED: health check of svc failed: "),
        "{p}"
    );
    assert!(has_marker(&rig.prog, "old"), "the old program is back");
    let (_, argv, old) = rig.running();
    assert!(old, "the running process runs the old program");
    assert_eq!(argv, [prog.as_str(), "1000", "7"]);
}

#[test]
fn contract_8_4_health_cmd_fails_without_the_marker_and_passes_with_it() {
    let Some(rig) = Rig::new(0) else { return };
    let marker = rig.ws.path().join("healthy");
    let ran = rig.ws.path().join("ran");
    let prog = rig.prog.display().to_string();
    let health = format!(
        "echo $(date +%s%N) >> {}; test -e {}",
        ran.display(),
        marker.display()
    );
    let package = rig.package(json!({
        "start_cmd": [prog, "1000", "9"],
        "health_cmd": ["sh", "-c", health],
        "health_timeout_s": 2,
    }));
    // Without the marker: failed after about health_timeout_s, rolled back.
    let p = rig.install(&package);
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(
        error_of(&p).starts_with("DEPLOYMENT_FAILED: health check of svc failed: health_cmd"),
        "{p}"
    );
    assert!(has_marker(&rig.prog, "old"));
    let (_, argv, old) = rig.running();
    assert!(old && argv.last().map(String::as_str) == Some("7"));
    let runs = std::fs::read_to_string(&ran).unwrap().lines().count();
    assert!(
        runs >= 2,
        "health_cmd is retried every second: {runs} run(s)"
    );

    // With the marker: success, and only after the health command ran.
    std::fs::remove_file(&ran).unwrap();
    std::fs::write(&marker, "").unwrap();
    let p = rig.install(&package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", rig.d.output());
    assert!(
        ran.exists(),
        "success came without running the health command"
    );
    assert!(has_marker(&rig.prog, "new"));
    let (_, argv, old) = rig.running();
    assert!(!old && argv.last().map(String::as_str) == Some("9"));
}

#[test]
fn contract_8_4_a_start_cmd_that_cannot_start_leaves_the_old_process_running() {
    let Some(rig) = Rig::new(0) else { return };
    let missing = rig.ws.path().join("no-such-program");
    let p = rig.install(&rig.package(json!({"start_cmd": [missing.display().to_string()]})));
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(error_of(&p).starts_with("DEPLOYMENT_FAILED: "), "{p}");
    assert!(error_of(&p).contains("no-such-program"), "{p}");
    assert!(has_marker(&rig.prog, "old"));
    let (_, argv, old) = rig.running();
    assert!(old, "the old program runs again");
    assert_eq!(argv.last().map(String::as_str), Some("7"));
}

#[test]
fn contract_8_4_rebooting_lasts_the_whole_health_phase_and_says_what_is_checked() {
    let Some(rig) = Rig::new(2) else { return };
    let prog = rig.prog.display().to_string();
    let package = rig.package(json!({"start_cmd": [prog, "1000"]}));
    rig.d
        .download_package(&rig.nginx, "h.zip", VERSION, &package);
    let t = Instant::now();
    rig.d.post_update(VERSION);
    let checking = rig
        .d
        .wait_for("the health phase", Duration::from_secs(30), |p| {
            stage_of(p) == "rebooting"
                && p["data"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("svc"))
        });
    assert_eq!(checking["data"]["progress"], 100, "{checking}");
    let p = rig.d.wait_outcome();
    assert_eq!(stage_of(&p), "success", "{p}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "success came before settle_s had passed"
    );
    let (_, _, old) = rig.running();
    assert!(!old);
}
