//! docs/API.md 9.6 (CONTRACT.md 9.6) against the real daemon and real processes: a process
//! stopped for an installation comes back, after a rollback, exactly as it ran (argv bytes,
//! working directory, user, group, groups, environment), also after a power cut; a script run
//! by an interpreter is its script's process; a long `process_name` matches only whole; a
//! supervisor's respawn never runs old code over new files; a daemonizing `start_cmd` is a
//! start; a command line the journal cannot hold refuses the installation before anything
//! stops.

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::daemon::stage_of;
use common::procs::{self, looping_script, looping_script_text, KillOnDrop, Spawned};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "9.6.0";

/// A daemon stopping processes within `stop_timeout_s`, checking health `settle_s` after the
/// starts.
fn options(stop_timeout_s: u64, settle_s: u64) -> DaemonOptions {
    DaemonOptions {
        stop_timeout_s,
        extra_toml: format!("settle_s = {settle_s}\n"),
        ..DaemonOptions::default()
    }
}

/// A package of one module `svc` replacing `dst` with `content`, its process `name` started
/// again by running `dst`; `extra` adds manifest keys to the module.
fn svc_package(dst: &Path, name: &str, content: &[u8], extra: Value) -> Vec<u8> {
    let dst = dst.display().to_string();
    let mut m = json!({"name": "svc", "src": "svc", "dst": dst, "process_name": name,
                       "start_cmd": [dst]});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    build_package(
        &manifest(VERSION, vec![m]),
        &[Entry::file("svc", content, 0o755)],
    )
}

/// A script that, run without arguments, starts itself again with `run` in the background
/// (the program, looping), lives a moment (long enough to be the process found) and exits
/// with `exit`: a start command that daemonizes.
fn daemonizing_script(marker: &str, exit: u8) -> String {
    format!(
        "#!/bin/sh\n# {marker}\nif [ \"$1\" = run ]; then while :; do sleep 1; done; fi\n\
         \"$0\" run </dev/null >/dev/null 2>&1 &\nsleep 1\nexit {exit}\n"
    )
}

fn error_of(p: &Value) -> String {
    p["data"]["error"].as_str().unwrap_or_default().to_string()
}

/// A copy of `/bin/sh` followed by a marker: a working shell, under the name of its file.
fn shell_binary_with_marker(marker: &str) -> Vec<u8> {
    let mut data = std::fs::read("/bin/sh").expect("read /bin/sh");
    data.extend_from_slice(format!("\nTOPE-MARKER:{marker}\n").as_bytes());
    data
}

/// Whether the program process `pid` runs ends with the marker.
fn runs_marker(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/exe"))
        .unwrap_or_default()
        .ends_with(format!("\nTOPE-MARKER:{marker}\n").as_bytes())
}

/// Every process (but zombies) whose command line holds `arg` as a whole argument, read from
/// /proc directly (not through the crate's matching, which is what is tested).
fn pids_with_arg(arg: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if procs::is_alive(pid) && cmdline.split(|&b| b == 0).any(|a| a == arg) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// The one process `f` lists, once it lists exactly one: a looping shell forks children that
/// show its name and command line until they execute `sleep`.
fn the_one(what: &str, f: impl Fn() -> Vec<i32>) -> i32 {
    wait_until(what, Duration::from_secs(20), || {
        let p = f();
        (p.len() == 1).then(|| p[0])
    })
}

/// The `Uid:`, `Gid:` and `Groups:` lines of a process.
fn creds_of(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (line("Uid:"), line("Gid:"), line("Groups:"))
}

/// The raw `/proc/<pid>/<file>`, split at NULs.
fn nul_list(pid: i32, file: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
    let body = data.strip_suffix(&[0]).unwrap_or(&data);
    body.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

/// A printer whose module `svc` runs `<root>/svc/<name>` (a shell carrying the marker `old`)
/// as uid/gid 65534 with groups 4 and 20, a non-UTF-8 argument, its own environment and
/// working directory.
struct AsItRan {
    ws: Workspace,
    nginx: Nginx,
    api: FakeDeviceApi,
    _kill: KillOnDrop,
    _old: Spawned,
    name: String,
    prog: PathBuf,
    cwd: PathBuf,
    argv: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
}

impl AsItRan {
    fn new() -> Option<AsItRan> {
        if !procs::require_tool("setpriv", "runs a process as another user") {
            return None;
        }
        let ws = Workspace::new();
        let nginx = ws.nginx()?;
        let api = FakeDeviceApi::start();
        // The process runs as nobody: every directory on its way must be open to it.
        std::fs::set_permissions(
            ws.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let name = unique_name("ran");
        let kill = KillOnDrop::names(&[&name]);
        let prog = ws.root().join("svc").join(&name);
        write_file(&prog, &shell_binary_with_marker("old"), 0o755);
        let cwd = ws.path().join("run dir");
        std::fs::create_dir_all(&cwd).unwrap();
        let argv: Vec<Vec<u8>> = vec![
            prog.as_os_str().as_bytes().to_vec(),
            b"-c".to_vec(),
            b"while :; do sleep 1; done".to_vec(),
            b"port=\xff\xfe-not-utf8".to_vec(),
            b"".to_vec(),
            b"last arg".to_vec(),
        ];
        let env: Vec<Vec<u8>> = vec![
            b"PRINTER_PORT=/dev/ttyS9".to_vec(),
            b"LANG=C".to_vec(),
            b"BYTES=\x80\x81".to_vec(),
        ];
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--groups=4,20",
            "--",
            "env",
            "-i",
        ])
        .args(env.iter().map(|e| OsString::from_vec(e.clone())))
        .args(argv.iter().map(|a| OsString::from_vec(a.clone())))
        .current_dir(&cwd);
        let old = Spawned::spawn(&mut cmd);
        let pids = procs::wait_for_named(&name, Duration::from_secs(5));
        let rig = AsItRan {
            ws,
            nginx,
            api,
            _kill: kill,
            _old: old,
            name,
            prog,
            cwd,
            argv,
            env,
        };
        // The old process is as described, or the test proves nothing.
        rig.assert_runs_as_it_ran(pids[0], "old");
        Some(rig)
    }

    /// A package whose new program starts, but whose health check never passes.
    fn unhealthy_package(&self, health_timeout_s: u64) -> Vec<u8> {
        let prog = self.prog.display().to_string();
        svc_package(
            &self.prog,
            &self.name,
            &shell_binary_with_marker("new"),
            json!({"start_cmd": [prog, "-c", "while :; do sleep 1; done"],
                   "health_cmd": ["false"], "health_timeout_s": health_timeout_s}),
        )
    }

    fn assert_runs_as_it_ran(&self, pid: i32, marker: &str) {
        assert!(
            runs_marker(pid, marker),
            "pid {pid} runs the {marker} program"
        );
        assert_eq!(
            nul_list(pid, "cmdline"),
            self.argv,
            "argv bytes of pid {pid}"
        );
        // The same entries (a child's environment is built from a sorted map).
        let mut env = nul_list(pid, "environ");
        env.sort();
        let mut expected = self.env.clone();
        expected.sort();
        assert_eq!(env, expected, "environment of pid {pid}");
        let (uid, gid, groups) = creds_of(pid);
        assert!(uid.starts_with("65534\t65534"), "Uid: {uid}");
        assert!(gid.starts_with("65534\t65534"), "Gid: {gid}");
        assert_eq!(groups, "4 20", "Groups");
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
            Some(self.cwd.clone()),
            "working directory"
        );
    }

    /// After the rollback: exactly one process of the module, the old program, as it ran.
    fn assert_restored(&self, d: &dyn Fn() -> String) {
        let pid = the_one("one process of the module", || {
            procs::pids_named(&self.name)
        });
        assert!(
            runs_marker(pid, "old"),
            "pid {pid} runs the old program\n{}",
            d()
        );
        assert!(has_marker(&self.prog, "old"), "the old program is back");
        self.assert_runs_as_it_ran(pid, "old");
    }
}

/// docs/API.md 9.6, first rule: a failed health check rolls back, and the stopped process comes
/// back with its uid, gid, groups, environment, argv bytes and working directory.
#[test]
fn docs_api_9_6_rollback_restarts_the_old_process_exactly_as_it_ran() {
    let Some(rig) = AsItRan::new() else { return };
    let d = Daemon::start(&rig.ws, &rig.api, options(2, 0));
    let p = d.install_package(&rig.nginx, "r.zip", VERSION, &rig.unhealthy_package(1));
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(
        error_of(&p).starts_with("DEPLOYMENT_FAILED: health check of svc failed"),
        "{p}"
    );
    rig.assert_restored(&|| d.output());
}

/// docs/API.md 9.6 with 6: the same after a power cut during the health phase (the journal
/// keeps how the process ran; the next start rolls back and starts it as it ran).
#[test]
fn docs_api_9_6_after_a_power_cut_in_the_health_phase_the_old_process_returns_as_it_ran() {
    let Some(rig) = AsItRan::new() else { return };
    let mut d = Daemon::start(&rig.ws, &rig.api, options(2, 60));
    d.download_package(&rig.nginx, "r.zip", VERSION, &rig.unhealthy_package(60));
    d.post_update(VERSION);
    d.wait_for("the health phase", Duration::from_secs(30), |p| {
        stage_of(p) == "rebooting"
    });
    // The new program runs; the old one is stopped.
    wait_until("the new process", Duration::from_secs(10), || {
        procs::pids_named(&rig.name)
            .into_iter()
            .find(|&p| runs_marker(p, "new"))
    });
    d.sigkill();
    d.restart();
    let p = d.wait_for("the rollback's outcome", Duration::from_secs(30), |p| {
        stage_of(p) == "failed"
    });
    assert!(error_of(&p).starts_with("DEPLOYMENT_FAILED"), "{p}");
    rig.assert_restored(&|| d.output());
}

/// docs/API.md 9.6, interpreters: `/bin/sh <root>/svc/<name>` is the process of
/// `process_name` `<name>`: stopped, restarted by a rollback as it ran, found again, and the
/// next update does not start a second copy.
#[test]
fn docs_api_9_6_a_script_run_by_an_interpreter_is_found_again_and_never_doubled() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("scr");
    let _kill = KillOnDrop::names(&[&name]);
    let dir = ws.root().join("svc");
    std::fs::create_dir_all(&dir).unwrap();
    let script = looping_script(&dir, &name, "old-script", false, None);
    let script_arg = script.as_os_str().as_bytes().to_vec();
    let _old = Spawned::spawn(Command::new("/bin/sh").arg(&script));
    wait_until("the old script", Duration::from_secs(5), || {
        (pids_with_arg(&script_arg).len() == 1).then_some(())
    });
    let copies = || pids_with_arg(&script_arg);
    let package = |health: bool| {
        let extra = if health {
            json!({"health_cmd": ["false"], "health_timeout_s": 1})
        } else {
            json!({})
        };
        let text = looping_script_text("new-script", false, None);
        svc_package(&script, &name, &text, extra)
    };
    let d = Daemon::start(&ws, &api, options(2, 0));
    let p = d.install_package(&nginx, "s1.zip", VERSION, &package(true));
    assert_eq!(stage_of(&p), "failed", "{p}");
    // Restarted as it ran: through the interpreter, once.
    let pid = wait_until("the old script again", Duration::from_secs(10), || {
        let c = copies();
        (c.len() == 1).then(|| c[0])
    });
    assert_eq!(
        procs::cmdline_of(pid),
        ["/bin/sh", script.to_str().unwrap()],
        "{}",
        d.output()
    );
    assert_eq!(
        the_one("the script found by its name", || procs::pids_named(&name)),
        pid,
        "found again by its name"
    );
    // The next update stops it and starts the new script: one copy, never two.
    let p = d.install_package(&nginx, "s2.zip", VERSION, &package(false));
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    assert!(!procs::is_alive(pid), "the old script was stopped");
    let now = the_one("one copy of the script", copies);
    assert_ne!(now, pid);
    assert!(contains(&script, "new-script"));
}

/// docs/API.md 9.6, interpreters: a script the kernel ran through its `#!` line (its `comm` is
/// its name) comes back from a rollback the same way, with the same argv and `comm`, not as
/// `sh` running it.
#[test]
fn docs_api_9_6_a_shebang_script_comes_back_under_its_own_name() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("she");
    let _kill = KillOnDrop::names(&[&name]);
    let dir = ws.root().join("svc");
    std::fs::create_dir_all(&dir).unwrap();
    let script = looping_script(&dir, &name, "old-shebang", false, None);
    let _old = Spawned::spawn(Command::new(&script).arg("--port=7"));
    let old = procs::wait_for_named(&name, Duration::from_secs(5));
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm(old[0]).trim_end(), name);
    let argv = procs::cmdline_of(old[0]);
    let package = svc_package(
        &script,
        &name,
        &looping_script_text("new-shebang", false, None),
        json!({"health_cmd": ["false"], "health_timeout_s": 1}),
    );
    let d = Daemon::start(&ws, &api, options(2, 0));
    let p = d.install_package(&nginx, "sb.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "failed", "{p}");
    let pid = the_one("one process of the module", || procs::pids_named(&name));
    assert!(!old.contains(&pid), "{}", d.output());
    assert_eq!(comm(pid).trim_end(), name, "{}", d.output());
    assert_eq!(procs::cmdline_of(pid), argv);
    assert!(contains(&script, "old-shebang"));
}

fn contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|d| String::from_utf8_lossy(&d).contains(needle))
        .unwrap_or(false)
}

/// 15 bytes, unique to this test process and call: the part of a name the kernel keeps.
fn unique_prefix_15() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let s = format!("tl{:08x}{:05x}", std::process::id(), n & 0xfffff);
    assert_eq!(s.len(), 15);
    s
}

/// docs/API.md 9.6, long names: with a 21-byte `process_name`, a process sharing its first 15
/// bytes (the same `comm`) is never signalled; the module's own is stopped and replaced.
#[test]
fn docs_api_9_6_a_long_process_name_never_signals_a_process_sharing_its_first_15_bytes() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let prefix = unique_prefix_15();
    let agent = format!("{prefix}-agent");
    let monitor = format!("{prefix}-monitor");
    assert!(agent.len() >= 20);
    let _kill = KillOnDrop::names(&[&agent, &monitor]);
    let agent_dst = ws.root().join("agent").join(&agent);
    write_file(&agent_dst, &sleep_binary_with_marker("old"), 0o755);
    let monitor_prog = ws.bin_dir().join(&monitor);
    write_file(&monitor_prog, &sleep_binary_with_marker("monitor"), 0o755);
    let old = Spawned::spawn(Command::new(&agent_dst).arg("1000"));
    let unrelated = Spawned::spawn(Command::new(&monitor_prog).arg("1000"));
    // Same comm: only the names tell them apart.
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    wait_until("both running", Duration::from_secs(5), || {
        (procs::is_alive(old.pid) && procs::is_alive(unrelated.pid)).then_some(())
    });
    assert_eq!(comm(old.pid), comm(unrelated.pid));
    let dst = agent_dst.display().to_string();
    let package = build_package(
        &manifest(
            VERSION,
            vec![json!({"name": "agent", "src": "agent", "dst": dst,
                        "process_name": agent, "start_cmd": [dst, "1000"]})],
        ),
        &[Entry::file(
            "agent",
            &sleep_binary_with_marker("new"),
            0o755,
        )],
    );
    let d = Daemon::start(&ws, &api, options(2, 1));
    let p = d.install_package(&nginx, "l.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    assert!(
        old.has_exited() || !procs::is_alive(old.pid),
        "the agent was stopped"
    );
    // sleep dies of SIGTERM or SIGKILL: alive with its pid means never signalled.
    assert!(
        procs::is_alive(unrelated.pid) && !unrelated.has_exited(),
        "the unrelated {monitor} was signalled\n{}",
        d.output()
    );
    let agents = procs::pids_named(&agent);
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert!(runs_marker(agents[0], "new"));
}

/// docs/API.md 9.6, respawns: a shell loop starts the old program again as soon as it is
/// stopped; the respawned one is stopped too, and `success` is never reported while a process
/// of the module runs the old executable.
#[test]
fn docs_api_9_6_a_supervisor_respawn_never_leaves_old_code_running_after_success() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("spv");
    let _kill = KillOnDrop::names(&[&name]);
    let prog = ws.root().join("svc").join(&name);
    write_file(&prog, &sleep_binary_with_marker("old"), 0o755);
    let starts = ws.path().join("starts");
    let loop_text = format!(
        "while :; do echo start >> '{}'; '{}' 1000; done",
        starts.display(),
        prog.display()
    );
    let _supervisor = Spawned::spawn(Command::new("/bin/sh").args(["-c", &loop_text]));
    procs::wait_for_named(&name, Duration::from_secs(5));
    let dst = prog.display().to_string();
    let package = build_package(
        &manifest(
            VERSION,
            vec![json!({"name": "svc", "src": "svc", "dst": dst, "process_name": name})],
        ),
        &[Entry::file("svc", &sleep_binary_with_marker("new"), 0o755)],
    );
    let d = Daemon::start(&ws, &api, options(2, 0));
    d.download_package(&nginx, "v.zip", VERSION, &package);
    d.post_update(VERSION);
    // Watch every process of the module from the update to the outcome: any that runs the
    // old program must be gone before `success` shows.
    let mut old_seen_last = None;
    let outcome = wait_until("the outcome", Duration::from_secs(60), || {
        let p = d.progress();
        let stage = stage_of(&p);
        let olds: Vec<i32> = procs::pids_named(&name)
            .into_iter()
            .filter(|&pid| runs_marker(pid, "old"))
            .collect();
        if !olds.is_empty() {
            old_seen_last = Some(olds);
        }
        matches!(stage.as_str(), "success" | "failed").then_some(p)
    });
    assert_eq!(stage_of(&outcome), "success", "{outcome}\n{}", d.output());
    let now: Vec<i32> = procs::wait_for_named(&name, Duration::from_secs(10));
    for pid in &now {
        assert!(
            runs_marker(*pid, "new") || !procs::is_alive(*pid),
            "pid {pid} runs the old program after success (last old: {old_seen_last:?})\n{}",
            d.output()
        );
    }
    let respawns = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert!(
        respawns >= 3,
        "the supervisor restarted it {respawns} times"
    );
}

/// docs/API.md 9.6, daemonizing starts: the `start_cmd`'s first process forks the named
/// process and exits 0; the installation succeeds and the forked process runs the new script.
#[test]
fn docs_api_9_6_a_start_cmd_that_daemonizes_is_a_successful_start() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("dmn");
    let _kill = KillOnDrop::names(&[&name]);
    let dir = ws.root().join("svc");
    std::fs::create_dir_all(&dir).unwrap();
    let script = looping_script(&dir, &name, "old-d", false, None);
    let _old = Spawned::spawn(&mut Command::new(&script));
    procs::wait_for_named(&name, Duration::from_secs(5));
    let text = daemonizing_script("new-d", 0);
    let package = svc_package(&script, &name, text.as_bytes(), json!({}));
    let d = Daemon::start(&ws, &api, options(5, 3));
    let p = d.install_package(&nginx, "d.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let pid = the_one("one process of the module", || procs::pids_named(&name));
    assert_eq!(
        procs::cmdline_of(pid).last().map(String::as_str),
        Some("run")
    );
}

/// A fake `systemd-run` and `systemctl` in `dir`, for what cannot run here (systemd as PID 1):
/// the unit's command runs in a session of its own, its exit status kept in
/// `<dir>/<unit>.ready.status`; `systemctl is-active <unit>` answers as for a unit with
/// `RemainAfterExit=yes`: active while the first process runs and after it exited 0, failed
/// after any other end. `systemd-run`'s arguments are recorded in `<dir>/systemd-run.log`.
fn fake_systemd(dir: &Path) -> (PathBuf, PathBuf) {
    let run = dir.join("fake-systemd-run");
    let ctl = dir.join("fake-systemctl");
    let d = dir.display();
    // Returns only once the unit's shell has left the caller's process group and session (as
    // systemd's own would): the caller empties its group when it returns.
    write_file(
        &run,
        format!(
            "#!/bin/sh\nunit=\nfor a in \"$@\"; do echo \"$a\" >> '{d}/systemd-run.log'; \
             case \"$a\" in --unit=*) unit=\"${{a#--unit=}}\";; esac; done\n\
             while [ \"$1\" != -- ]; do shift; done; shift\n\
             ready=\"{d}/$unit.ready\"\n\
             setsid sh -c 'echo > \"$0\"; \"$@\"; echo $? > \"$0.status\"' \"$ready\" \"$@\" \
             </dev/null >/dev/null 2>&1 &\n\
             while [ ! -e \"$ready\" ]; do sleep 0.05; done\nexit 0\n"
        )
        .as_bytes(),
        0o755,
    );
    write_file(
        &ctl,
        format!(
            "#!/bin/sh\n[ \"$1\" = is-active ] || exit 0\nf='{d}/'\"$2\".ready.status\n\
             [ -e \"$f\" ] || {{ echo active; exit 0; }}\n\
             [ \"$(cat \"$f\")\" = 0 ] && {{ echo active; exit 0; }}\necho failed; exit 3\n"
        )
        .as_bytes(),
        0o755,
    );
    (run, ctl)
}

/// docs/API.md 9.6, daemonizing starts under systemd: the start_cmd runs in a transient unit
/// that stays active after its first process exits 0 (`RemainAfterExit=yes`), so the program
/// it left behind keeps running and the start is a success; a first process that fails is not.
#[test]
fn docs_api_9_6_a_start_cmd_that_daemonizes_under_systemd_is_a_successful_start() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let (run, ctl) = fake_systemd(&ws.bin_dir());
    let name = unique_name("dms");
    let _kill = KillOnDrop::names(&[&name]);
    let dir = ws.root().join("svc");
    std::fs::create_dir_all(&dir).unwrap();
    let script = looping_script(&dir, &name, "old-s", false, None);
    let _old = Spawned::spawn(&mut Command::new(&script));
    procs::wait_for_named(&name, Duration::from_secs(5));
    let package = |exit: u8| {
        let text = daemonizing_script("new-s", exit);
        svc_package(&script, &name, text.as_bytes(), json!({}))
    };
    let (config, port) = common::daemon::write_config(&ws, &api, &options(5, 3));
    let env = [
        ("TOPE_SYSTEMD_RUN", run.as_os_str()),
        ("TOPE_SYSTEMCTL", ctl.as_os_str()),
    ];
    let d = procs::WrappedDaemon::start(&[], &env, &config, port, &ws.work_dir(), ws.path(), "sd");
    let good = package(0);
    let p = d.install(&nginx.put("good.zip", &good), VERSION, &good);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let log = std::fs::read_to_string(ws.bin_dir().join("systemd-run.log")).unwrap();
    assert!(
        log.lines().any(|l| l == "--property=RemainAfterExit=yes"),
        "{log}"
    );
    let pid = the_one("one process of the module", || procs::pids_named(&name));
    assert_eq!(
        procs::cmdline_of(pid).last().map(String::as_str),
        Some("run")
    );
    // The same daemonizing program whose first process exits 1: the unit failed, so the
    // process it left is not taken for a healthy start.
    let bad = package(1);
    let p = d.install(&nginx.put("bad.zip", &bad), VERSION, &bad);
    assert_eq!(stage_of(&p), "failed", "{p}\n{}", d.output());
    let error = p["data"]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.starts_with("DEPLOYMENT_FAILED: health check of svc failed: process"),
        "{error}"
    );
}

/// docs/API.md 9.6, long command lines: a process whose command line (1.1 MB, more than the
/// 1 MiB the updater reads back) the journal cannot hold refuses the installation before
/// anything is stopped, naming the command line.
#[test]
fn docs_api_9_6_a_1_mb_command_line_refuses_the_install_before_anything_stops() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("big");
    let _kill = KillOnDrop::names(&[&name]);
    let prog = ws.root().join("svc").join(&name);
    write_file(&prog, &sleep_binary_with_marker("old"), 0o755);
    // sleep adds its arguments: 1000 s plus eleven zeros of 100 000 bytes each.
    let zero = format!("0.{}", "0".repeat(99_998));
    let mut cmd = Command::new(&prog);
    cmd.arg("1000");
    for _ in 0..11 {
        cmd.arg(&zero);
    }
    let old = Spawned::spawn(&mut cmd);
    procs::wait_for_named(&name, Duration::from_secs(5));
    let dst = prog.display().to_string();
    let package = build_package(
        &manifest(
            VERSION,
            vec![json!({"name": "svc", "src": "svc", "dst": dst,
                        "process_name": name, "start_cmd": [dst, "1000"]})],
        ),
        &[Entry::file("svc", &sleep_binary_with_marker("new"), 0o755)],
    );
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.install_package(&nginx, "b.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = error_of(&p);
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{err}");
    assert!(err.contains("command line"), "{err}");
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("nothing was stopped"), "{err}");
    assert!(!err.contains("files"), "{err}");
    assert!(
        err.len() < 1000,
        "the error is not the command line itself: {} bytes",
        err.len()
    );
    assert!(
        procs::is_alive(old.pid) && !old.has_exited(),
        "the process was stopped\n{}",
        d.output()
    );
    assert!(has_marker(&prog, "old"));
    let (_, st) = d.get_json("/progress");
    assert_eq!(stage_of(&st), "failed");
    assert!(!ws.work_dir().join("backups/journal.json").exists());
}
