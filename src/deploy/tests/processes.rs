//! The installation's processes against real processes and a recording `systemctl`: staging
//! before the stop, stop and restart order, the start sequence and the health checks.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::process::tests::{fake_systemctl, named_sleep, wait_found};
use crate::process::SYSTEMCTL_OVERRIDE;

#[test]
fn files_are_staged_before_any_process_is_stopped() {
    let f = Fx::new();
    let (name, path) = named_sleep(f.d.path());
    let mut old = std::process::Command::new(&path)
        .arg("100")
        .spawn()
        .unwrap();
    assert_eq!(wait_found(&name, 1).len(), 1);
    f.put("svc/x", "old-x", 0o644);
    f.one_module(&format!(r#", "process_name": "{name}""#));
    let root = f.root.clone();
    let mut seen = None;
    f.install_at(Duration::from_secs(1), &mut Vec::new(), None, |e| {
        if matches!(e, InstallEvent::Stopping { .. }) {
            seen = Some((
                f.staged("svc", 0, "x"),
                fs::read_to_string(root.join("svc/x")).ok(),
            ));
        }
    })
    .unwrap();
    assert_eq!(seen, Some((Some("new-x".into()), Some("old-x".into()))));
    let _ = old.wait();
    assert_eq!(f.read("svc/x").as_deref(), Some("new-x"));
}

#[test]
fn sigterm_ignoring_process_is_killed_then_restarted() {
    let f = Fx::new();
    let (name, path) = named_sleep(f.d.path());
    let script = format!("trap '' TERM; exec {} 100", path.display());
    let mut old = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .spawn()
        .unwrap();
    assert_eq!(wait_found(&name, 1).len(), 1);
    f.one_module(&format!(
        r#", "process_name": "{name}", "restart_order": 1, "start_cmd": ["{}", "100"]"#,
        path.display()
    ));
    let mut ev = Vec::new();
    let t = Instant::now();
    let r = f.install(Duration::from_secs(1), &mut ev, None).unwrap();
    assert_eq!(r, InstallOutcome::Done);
    assert!(t.elapsed() >= Duration::from_secs(1));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(old.wait().unwrap().signal(), Some(9));
    let now = wait_found(&name, 1);
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].pid as u32, old.id());
    assert_eq!(
        ev,
        vec![
            r#"Deploying { module: "svc", index: 1, total: 1 }"#.to_string(),
            r#"Stopping { module: "svc" }"#.into(),
            r#"Restarting { module: "svc" }"#.into(),
            r#"Checking { modules: "svc" }"#.into(),
        ]
    );
    crate::process::stop_by_name(&name, Duration::from_secs(5)).unwrap();
    assert!(f.clean());
}

fn service_package(f: &Fx) -> PathBuf {
    f.put("a/f", "old-a", 0o644);
    let m = manifest_json(
        "1.2.3",
        &[
            f.module(
                "a",
                "a",
                "a/f",
                r#", "service": "a.service", "restart_order": 2"#,
            ),
            f.module(
                "b",
                "b",
                "b/f",
                r#", "service": "b.service", "restart_order": 1"#,
            ),
            f.module("c", "c", "c/f", r#", "service": "c.service""#),
        ]
        .join(","),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("a", b"new-a", 0o644),
            E::File("b", b"new-b", 0o644),
            E::File("c", b"new-c", 0o644),
        ],
    );
    f.d.path().join("log")
}

/// Install `f` with a recording `systemctl` that fails the call `fail_on` ("none": none).
fn install_with_systemctl(f: &Fx, fail_on: &str) -> Result<InstallOutcome, OtaError> {
    let fake = fake_systemctl(f.d.path(), fail_on);
    SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
    let r = f.install(Duration::from_secs(1), &mut Vec::new(), None);
    SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = None);
    r
}

const STOP_ABC: &str = "stop c.service\nstop a.service\nstop b.service\n";
const START_BAC: &str = "start b.service\nstart a.service\nstart c.service\n";

#[test]
fn services_stop_in_reverse_start_in_restart_order_and_are_checked() {
    let f = Fx::new();
    let log = service_package(&f);
    let r = install_with_systemctl(&f, "none");
    assert_eq!(r.unwrap(), InstallOutcome::Done);
    assert_eq!(
        fs::read_to_string(log).unwrap(),
        format!(
            "{STOP_ABC}{START_BAC}is-active b.service\nis-active a.service\nis-active c.service\n"
        )
    );
    assert_eq!(f.read("a/f").as_deref(), Some("new-a"));
    assert!(f.clean());
}

#[test]
fn contract_8_4_inactive_service_rolls_back() {
    let f = Fx::new();
    let log = service_package(&f);
    let e = install_with_systemctl(&f, "is-active a.service").unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(
        e.detail
            .starts_with("health check of a failed: service a.service is not active"),
        "{e}"
    );
    assert_eq!(f.read("a/f").as_deref(), Some("old-a"));
    assert!(!f.root.join("b").exists());
    let log = fs::read_to_string(log).unwrap();
    assert!(log.ends_with(&format!("{STOP_ABC}{START_BAC}")), "{log}");
    assert!(f.clean());
}

#[test]
fn stop_failure_is_kill_failed_and_deploys_nothing() {
    let f = Fx::new();
    let log = service_package(&f);
    let e = install_with_systemctl(&f, "stop b.service").unwrap_err();
    assert_eq!(e.code, ErrorCode::ProcessKillFailed, "{e}");
    assert!(e.detail.contains("module b"), "{e}");
    assert!(e.detail.contains("nothing was deployed"), "{e}");
    assert_eq!(
        fs::read_to_string(log).unwrap(),
        format!("{STOP_ABC}{START_BAC}")
    );
    assert_eq!(f.read("a/f").as_deref(), Some("old-a"));
    assert!(!f.root.join("b").exists());
    assert!(no_tmp_files(&f.root));
    assert!(f.clean());
}

#[test]
fn failed_start_rolls_back_and_restarts_old() {
    let f = Fx::new();
    let log = service_package(&f);
    let e = install_with_systemctl(&f, "start a.service").unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(e.detail.contains("module a"), "{e}");
    assert_eq!(f.read("a/f").as_deref(), Some("old-a"));
    assert!(!f.root.join("b").exists());
    assert!(!f.root.join("c").exists());
    let log = fs::read_to_string(log).unwrap();
    assert!(log.ends_with(&format!("{STOP_ABC}{START_BAC}")), "{log}");
    assert!(f.clean());
}

/// A process named like `path`'s file, running `path <args>`; waits until it is found.
fn run_named(path: &Path, name: &str, args: &[&str]) -> std::process::Child {
    let c = std::process::Command::new(path).args(args).spawn().unwrap();
    assert_eq!(wait_found(name, 1).len(), 1);
    c
}

fn argv_of(name: &str) -> Vec<String> {
    let p = wait_found(name, 1);
    assert_eq!(p.len(), 1, "one {name} running");
    crate::process::describe(&p[0])
        .unwrap()
        .0
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn contract_8_4_new_process_that_crashes_rolls_back_and_the_old_one_runs_again_as_it_ran() {
    let mut f = Fx::new();
    f.settle = Duration::from_secs(2);
    let (name, path) = named_sleep(f.d.path());
    let mut old = run_named(&path, &name, &["1000", "7"]);
    f.put("svc/x", "old-x", 0o644);
    // The new version's process lives one second.
    f.one_module(&format!(
        r#", "process_name": "{name}", "start_cmd": ["{}", "1"]"#,
        path.display()
    ));
    let e = f
        .install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap_err();
    let _ = old.wait();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(
        e.detail.starts_with("health check of svc failed: process"),
        "{e}"
    );
    assert!(e.detail.contains("no longer running"), "{e}");
    assert_eq!(f.read("svc/x").as_deref(), Some("old-x"));
    assert_eq!(
        argv_of(&name),
        vec![path.display().to_string(), "1000".into(), "7".into()]
    );
    crate::process::stop_by_name(&name, Duration::from_secs(5)).unwrap();
    assert!(f.clean());
}

#[test]
fn contract_8_4_nonexistent_start_cmd_leaves_the_old_process_running() {
    let f = Fx::new();
    let (name, path) = named_sleep(f.d.path());
    let mut old = run_named(&path, &name, &["1000"]);
    f.put("svc/x", "old-x", 0o644);
    f.one_module(&format!(
        r#", "process_name": "{name}", "start_cmd": ["{}/no-such-program"]"#,
        f.d.path().display()
    ));
    let e = f
        .install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap_err();
    let _ = old.wait();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(e.detail.contains("no-such-program"), "{e}");
    assert_eq!(
        argv_of(&name),
        vec![path.display().to_string(), "1000".into()]
    );
    assert_eq!(f.read("svc/x").as_deref(), Some("old-x"));
    crate::process::stop_by_name(&name, Duration::from_secs(5)).unwrap();
}

#[test]
fn contract_8_4_health_cmd_decides_the_commit() {
    // Fails without the marker: rolled back after health_timeout_s.
    let f = Fx::new();
    let marker = f.d.path().join("healthy");
    let runs = f.d.path().join("runs");
    f.put("svc/x", "old-x", 0o644);
    let extra = format!(
        r#", "health_cmd": ["sh", "-c", "echo run >> {}; test -e {}"], "health_timeout_s": 2"#,
        runs.display(),
        marker.display()
    );
    f.one_module(&extra);
    let t = Instant::now();
    let e = f
        .install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap_err();
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(
        e.detail
            .starts_with("health check of svc failed: health_cmd did not succeed within 2 s"),
        "{e}"
    );
    assert_eq!(f.read("svc/x").as_deref(), Some("old-x"));
    let tries = fs::read_to_string(&runs).unwrap().lines().count();
    assert!((2..=3).contains(&tries), "run every second: {tries} runs");
    // Succeeds once the marker appears, and only after the command ran.
    fs::remove_file(&runs).unwrap();
    fs::write(&marker, "").unwrap();
    f.install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap();
    assert_eq!(fs::read_to_string(&runs).unwrap(), "run\n");
    assert_eq!(f.read("svc/x").as_deref(), Some("new-x"));
}

#[test]
fn contract_8_4_each_start_completes_before_the_next() {
    let f = Fx::new();
    let (first, first_path) = named_sleep(f.d.path());
    let seen = f.d.path().join("seen");
    // `first` appears only after half a second; `second` looks for it when it starts.
    let m = manifest_json(
        "1.2.3",
        &[
            f.module(
                "first",
                "a",
                "a",
                &format!(
                    r#", "process_name": "{first}", "restart_order": 1, "start_cmd": ["sh", "-c", "sleep 0.5; exec {} 100"]"#,
                    first_path.display()
                ),
            ),
            f.module(
                "second",
                "b",
                "b",
                &format!(
                    r#", "restart_order": 2, "start_cmd": ["sh", "-c", "grep -lx {first} /proc/[0-9]*/comm > {0}.part 2>/dev/null; mv {0}.part {0}"]"#,
                    seen.display()
                ),
            ),
        ]
        .join(","),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("a", b"a", 0o644),
            E::File("b", b"b", 0o644),
        ],
    );
    f.install(Duration::from_secs(5), &mut Vec::new(), None)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = fs::read_to_string(&seen).unwrap();
    assert!(
        !seen.trim().is_empty(),
        "the second module started before the first one ran"
    );
    crate::process::stop_by_name(&first, Duration::from_secs(5)).unwrap();
}

/// Section 8.1: a `systemctl` still running when the updater is told to stop (here a
/// `systemctl stop` that never returns) is stopped with its process group at once, and the
/// installation ends as interrupted, leaving the journal; the next start's recovery rolls back
/// and starts the services again.
#[test]
fn contract_8_1_sigterm_stops_a_hanging_systemctl_and_the_next_start_rolls_back() {
    let f = Fx::new();
    let log = service_package(&f);
    let pid_file = f.d.path().join("hang.pid");
    let fake = f.d.path().join("hanging-systemctl");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> '{log}'\n\
             if [ \"$1 $2\" = 'stop b.service' ]; then echo $$ > '{pid}'; exec sleep 3600; fi\n\
             exit 0\n",
            log = log.display(),
            pid = pid_file.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));

    let started = std::time::Instant::now();
    let (r, hung) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let pid = loop {
                if let Some(pid) = fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    break pid;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "systemctl stop never ran"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            // The updater's SIGTERM handler sets this flag.
            f.cancel.store(true, Ordering::SeqCst);
            pid
        });
        let r = f.install(Duration::from_secs(1), &mut Vec::new(), None);
        (r, watcher.join().unwrap())
    });
    SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = None);
    assert_eq!(r.unwrap(), InstallOutcome::Interrupted);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hanging systemctl was waited for: {:?}",
        started.elapsed()
    );
    let gone = rustix::process::Pid::from_raw(hung)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_err());
    assert!(gone, "the hanging systemctl (pid {hung}) is still there");
    assert!(
        !f.clean(),
        "the journal is left for the next start's recovery"
    );
    assert_eq!(f.journal().phase, Phase::Stopping);
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "stop c.service\nstop a.service\nstop b.service\n",
        "nothing was started while shutting down"
    );

    let fake = fake_systemctl(f.d.path(), "none");
    SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
    let rec = recover(&f.backups, &[], Duration::from_secs(1));
    SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = None);
    assert!(matches!(rec, Ok(Recovery::RolledBack { .. })), "{rec:?}");
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.ends_with(&format!("{STOP_ABC}{START_BAC}")), "{log}");
    assert_eq!(f.read("a/f").as_deref(), Some("old-a"));
    assert!(f.clean());
}

/// docs/API.md 6: SIGTERM while the processes are being stopped ends the installation at the
/// safe point after the stop: no file is backed up or replaced, the journal says `stopping`,
/// and the next start puts things back and starts the old process again as it ran.
#[test]
fn docs_api_6_sigterm_during_the_stop_ends_before_any_file_is_replaced() {
    let f = Fx::new();
    let (name, path) = named_sleep(f.d.path());
    let mut old = run_named(&path, &name, &["1000", "6"]);
    f.put("svc/x", "old-x", 0o644);
    f.one_module(&format!(
        r#", "process_name": "{name}", "start_cmd": ["{}", "1000"]"#,
        path.display()
    ));
    let mut ev = Vec::new();
    let r = f
        .install(Duration::from_secs(1), &mut ev, Some("Stopping"))
        .unwrap();
    let _ = old.wait();
    assert_eq!(r, InstallOutcome::Interrupted);
    assert_eq!(
        ev.last().map(String::as_str),
        Some(r#"Stopping { module: "svc" }"#)
    );
    assert_eq!(f.journal().phase, Phase::Stopping);
    assert_eq!(f.read("svc/x").as_deref(), Some("old-x"));
    assert_eq!(f.staged("svc", 0, "x").as_deref(), Some("new-x"));
    assert!(!f.backups.join(FILES_DIR).exists(), "nothing backed up");
    assert!(
        wait_found(&name, 0).is_empty(),
        "stopped, not started again"
    );
    assert_eq!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::RolledBack {
            version: "1.2.3".into()
        }
    );
    assert_eq!(
        argv_of(&name),
        vec![path.display().to_string(), "1000".into(), "6".into()]
    );
    assert_eq!(f.read("svc/x").as_deref(), Some("old-x"));
    assert!(no_tmp_files(&f.root));
    assert!(f.clean());
    crate::process::stop_by_name(&name, Duration::from_secs(5)).unwrap();
}
