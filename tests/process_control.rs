//! docs/API.md section 4 process control (SIGTERM, wait stop_timeout_s, SIGKILL, confirm gone;
//! start_cmd; restart_order) and section 3 DEPLOYMENT_FAILED (rollback of every module).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon::stage_of;
use common::procs::{self, looping_script, looping_script_text, KillOnDrop, Spawned};
use common::*;
use serde_json::json;

const VERSION: &str = "5.0.0";

fn contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|d| String::from_utf8_lossy(&d).contains(needle))
        .unwrap_or(false)
}

/// Section 4: a process that exits on SIGTERM and one that ignores it (stopped by SIGKILL
/// after stop_timeout_s) are both gone before deployment; both are started again from the
/// new files with start_cmd; the update succeeds.
#[test]
fn contract_4_stop_with_sigterm_then_sigkill_and_restart() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let polite = unique_name("pol");
    let stubborn = unique_name("stb");
    let _kill = KillOnDrop::names(&[&polite, &stubborn]);

    let polite_dst = ws.root().join("polite").join(&polite);
    write_file(&polite_dst, &sleep_binary_with_marker("old-polite"), 0o755);
    let polite_proc = Spawned::spawn(Command::new(&polite_dst).arg("1000"));

    let stubborn_dir = ws.root().join("stubborn");
    std::fs::create_dir_all(&stubborn_dir).unwrap();
    let stubborn_dst = looping_script(&stubborn_dir, &stubborn, "old-stubborn", true, None);
    let stubborn_proc = Spawned::spawn(&mut Command::new(&stubborn_dst));
    procs::wait_for_named(&polite, Duration::from_secs(5));
    procs::wait_for_named(&stubborn, Duration::from_secs(5));

    let m = manifest(
        VERSION,
        vec![
            json!({"name": "polite", "src": "polite",
                   "dst": polite_dst.display().to_string(), "process_name": polite,
                   "start_cmd": [polite_dst.display().to_string(), "1000"],
                   "restart_order": 1}),
            json!({"name": "stubborn", "src": "stubborn",
                   "dst": stubborn_dst.display().to_string(), "process_name": stubborn,
                   "start_cmd": [stubborn_dst.display().to_string()],
                   "restart_order": 2}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("polite", &sleep_binary_with_marker("new-polite"), 0o755),
            Entry::file(
                "stubborn",
                &looping_script_text("new-stubborn", true, None),
                0o755,
            ),
        ],
    );
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            stop_timeout_s: 1,
            ..Default::default()
        },
    );
    let p = d.install_package(&nginx, "pkg.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}");

    assert!(
        polite_proc.has_exited(),
        "the SIGTERM-honouring process must be gone"
    );
    wait_until(
        "the reaping of the stubborn process",
        Duration::from_secs(2),
        || stubborn_proc.has_exited().then_some(()),
    );
    assert!(has_marker(&polite_dst, "new-polite"));
    assert!(contains(&stubborn_dst, "new-stubborn"));

    let new_polite = procs::wait_for_named(&polite, Duration::from_secs(10));
    assert_eq!(new_polite.len(), 1, "{new_polite:?}");
    assert_eq!(
        procs::exe_of(new_polite[0]).as_deref(),
        Some(polite_dst.as_path())
    );
    let new_stubborn = procs::wait_for_named(&stubborn, Duration::from_secs(10));
    assert_eq!(new_stubborn.len(), 1, "{new_stubborn:?}");
    assert!(
        procs::cmdline_of(new_stubborn[0])
            .iter()
            .any(|a| a == &stubborn_dst.display().to_string()),
        "the stubborn program must be started again by start_cmd"
    );
}

/// Section 4 restart_order: lower starts first, whatever the order in the manifest (with an
/// ota-gui that crashes at once, section 6).
#[test]
fn contract_4_restart_order_lower_starts_first() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let first = unique_name("fst");
    let second = unique_name("snd");
    let third = unique_name("thd");
    let _kill = KillOnDrop::names(&[&first, &second, &third]);
    let log = ws.path().join("start-order.log");

    let mut modules = Vec::new();
    let mut entries = Vec::new();
    let mut running = Vec::new();
    // Manifest order: third, first, second.
    for (name, order) in [(&third, 30), (&first, 10), (&second, 20)] {
        let dir = ws.root().join(format!("m{order}"));
        std::fs::create_dir_all(&dir).unwrap();
        let dst = looping_script(&dir, name, "old", false, None);
        running.push(Spawned::spawn(&mut Command::new(&dst)));
        // The start is written down before the program of its name exists, which is what the
        // updater waits for before starting the next module: the lines are in start order,
        // whatever the load (a line written by the program itself could come after the next
        // module's).
        let start = format!(
            "echo '{name}' >> '{}'; exec '{}'",
            log.display(),
            dst.display()
        );
        modules.push(json!({
            "name": name, "src": name, "dst": dst.display().to_string(),
            "process_name": name, "start_cmd": ["sh", "-c", start],
            "restart_order": order
        }));
        entries.push(Entry::file(
            name,
            &looping_script_text(name, false, None),
            0o755,
        ));
    }
    for n in [&first, &second, &third] {
        procs::wait_for_named(n, Duration::from_secs(5));
    }
    let package = build_package(&manifest(VERSION, modules), &entries);
    // Section 6: an ota-gui that crashes at once never affects the update.
    let gui = ws.bin_dir().join("ota-gui");
    let gui_ran = ws.path().join("gui-ran");
    write_file(
        &gui,
        format!("#!/bin/sh\ntouch '{}'\nkill -SEGV $$\n", gui_ran.display()).as_bytes(),
        0o755,
    );
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            ota_gui_path: Some(gui),
            ..Default::default()
        },
    );
    let p = d.install_package(&nginx, "pkg.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}");
    wait_until(
        "ota-gui to have been started",
        Duration::from_secs(5),
        || gui_ran.exists().then_some(()),
    );
    for n in [&first, &second, &third] {
        procs::wait_for_named(n, Duration::from_secs(10));
    }
    let started = wait_until("three start lines", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.lines().count() >= 3).then_some(t)
    });
    let order: Vec<&str> = started.lines().collect();
    assert_eq!(
        order,
        vec![first.as_str(), second.as_str(), third.as_str()],
        "start order must follow restart_order"
    );
}

/// Section 3 DEPLOYMENT_FAILED: a post command that fails rolls the whole install back:
/// every dst has its old content and mode, new files and directories are gone, and the old
/// program runs again (started by start_cmd).
#[test]
fn contract_3_deployment_failed_rolls_back_everything() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let prog = unique_name("rbk");
    let _kill = KillOnDrop::names(&[&prog]);

    let a_dst = ws.root().join("bin").join(&prog);
    write_file(&a_dst, &sleep_binary_with_marker("old-a"), 0o750);
    let old_proc = Spawned::spawn(Command::new(&a_dst).arg("1000"));
    procs::wait_for_named(&prog, Duration::from_secs(5));

    let b_dst = ws.root().join("etc");
    write_file(&b_dst.join("main.conf"), b"old main\n", 0o640);

    let m = manifest(
        VERSION,
        vec![
            json!({"name": "prog", "src": "prog", "dst": a_dst.display().to_string(),
                   "process_name": prog,
                   "start_cmd": [a_dst.display().to_string(), "1000"],
                   "restart_order": 1}),
            json!({"name": "etc", "src": "etc", "dst": b_dst.display().to_string(),
                   "post_cmds": [["true"], ["false"]],
                   "restart_order": 2}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("prog", &sleep_binary_with_marker("new-a"), 0o755),
            Entry::file("etc/main.conf", b"new main\n", 0o644),
            Entry::file("etc/extra.conf", b"new extra\n", 0o644),
            Entry::dir("etc/newdir/"),
            Entry::file("etc/newdir/x.conf", b"x\n", 0o644),
        ],
    );
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.install_package(&nginx, "pkg.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{p}");
    assert_eq!(p["code"].as_i64(), Some(500), "{p}");

    assert!(has_marker(&a_dst, "old-a"), "module A must be rolled back");
    assert_eq!(mode_of(&a_dst), 0o750, "module A mode must be restored");
    assert_eq!(
        std::fs::read(b_dst.join("main.conf")).unwrap(),
        b"old main\n"
    );
    assert_eq!(mode_of(&b_dst.join("main.conf")), 0o640);
    assert!(
        !b_dst.join("extra.conf").exists(),
        "a new file must be removed"
    );
    assert!(
        !b_dst.join("newdir").exists(),
        "a new directory must be removed"
    );

    assert!(
        old_proc.has_exited(),
        "the program was stopped for the install"
    );
    let again = procs::wait_for_named(&prog, Duration::from_secs(10));
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(procs::exe_of(again[0]).as_deref(), Some(a_dst.as_path()));

    api.wait_for_report(
        "the DEPLOYMENT_FAILED report",
        Duration::from_secs(5),
        |b| b["error"].as_str() == Some(err),
    );
}

/// Section 8.2: with the daemon's descriptors exhausted while it stops a process that ignores
/// SIGTERM, the process is still killed (SIGKILL after `stop_timeout_s`), or the result is
/// PROCESS_KILL_FAILED: never "stopped" while it lives. The descriptor limit is lowered under
/// the running daemon (prlimit on its pid) once it has started stopping the module, and
/// restored once the process is gone (or after the stop must have ended either way).
#[test]
fn contract_8_2_fds_exhausted_term_ignoring_process_killed_or_kill_failed() {
    use rustix::process::{getrlimit, prlimit, Pid, Resource, Rlimit};
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("emf");
    let _kill = KillOnDrop::names(&[&name]);
    let dir = ws.root().join("stubborn");
    std::fs::create_dir_all(&dir).unwrap();
    let log = ws.path().join("stubborn.log");
    let dst = looping_script(&dir, &name, "old-stubborn", true, Some(&log));
    let stubborn = Spawned::spawn(&mut Command::new(&dst));
    procs::wait_for_named(&name, Duration::from_secs(5));
    let m = manifest(
        VERSION,
        vec![json!({"name": "stubborn", "src": "stubborn",
                    "dst": dst.display().to_string(), "process_name": name,
                    "start_cmd": [dst.display().to_string()], "restart_order": 1})],
    );
    let package = build_package(
        &m,
        &[Entry::file(
            "stubborn",
            &looping_script_text("new-stubborn", true, None),
            0o755,
        )],
    );
    let stop_timeout = Duration::from_secs(4);
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            stop_timeout_s: stop_timeout.as_secs(),
            ..Default::default()
        },
    );
    d.download_package(&nginx, "pkg.zip", VERSION, &package);
    d.post_update(VERSION);
    d.wait_for("the stop of the module", Duration::from_secs(30), |p| {
        p["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Stopping"))
    });
    // The scan has run and SIGTERM was sent (ignored); now no descriptor is left.
    wait_until(
        "the SIGTERM to the old process",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("TERM old-stubborn"))
        },
    );
    let pid = Pid::from_raw(d.pid()).unwrap();
    let hard = getrlimit(Resource::Nofile).maximum;
    let exhausted = Rlimit {
        current: Some(3),
        maximum: hard,
    };
    let before = prlimit(Some(pid), Resource::Nofile, exhausted).unwrap();
    let lowered_at = std::time::Instant::now();
    // Within stop_timeout_s and the 5 s confirmation (and a margin), the process must be
    // gone, or the daemon must have given up on it.
    let killed = wait_until_or_none(stop_timeout + Duration::from_secs(8), || {
        stubborn.has_exited().then_some(())
    })
    .is_some();
    let restored = prlimit(Some(pid), Resource::Nofile, before).unwrap();
    assert_eq!(restored.current, Some(3));
    eprintln!(
        "descriptors exhausted for {:?}; process killed: {killed}",
        lowered_at.elapsed()
    );
    let p = d.wait_outcome();
    eprintln!("outcome: {}", p["data"]);
    let error = p["data"]["error"].as_str().unwrap_or("").to_string();
    if killed {
        // Killed by SIGKILL after stop_timeout_s: the installation went on (and may have
        // failed on the exhausted descriptors meanwhile, rolling back).
        assert!(stage_of(&p) == "success" || stage_of(&p) == "failed", "{p}");
    } else {
        assert!(
            error.starts_with("PROCESS_KILL_FAILED: "),
            "the process is alive, so the only acceptable outcome is PROCESS_KILL_FAILED: {p}"
        );
        assert!(contains(&dst, "old-stubborn"), "nothing may be deployed");
    }
    if stage_of(&p) == "success" {
        assert!(contains(&dst, "new-stubborn"));
    } else {
        assert!(contains(&dst, "old-stubborn"), "rolled back: {p}");
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
/// Section 8.2: PID 1 is never signalled, whatever its name. Inside a PID namespace of its
/// own (never against this machine's PID 1), PID 1 is a script with the name of the module's
/// process that logs every SIGTERM it gets; the daemon runs inside the namespace, started by
/// an intermediate shell (so PID 1 is not its parent, which it would skip anyway). The
/// installation must succeed without signalling it.
#[test]
fn contract_8_2_pid_1_is_never_signalled_in_a_pid_namespace() {
    if !procs::require_tool("unshare", "util-linux, for a PID namespace") {
        return;
    }
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("ini");
    let signals = ws.path().join("pid1-signals.log");
    let (config, port) = common::daemon::write_config(&ws, &api, &DaemonOptions::default());
    let init = ws.bin_dir().join(&name);
    write_file(
        &init,
        format!(
            "#!/bin/sh\n\
             trap 'echo TERM >> {signals}' TERM\n\
             trap 'echo HUP >> {signals}' HUP\n\
             /bin/sh -c '\"$0\" serve --config \"$1\" > {out}/ns.stdout 2> {out}/ns.stderr; :' \
             '{bin}' '{config}' &\n\
             while :; do sleep 1 & wait $!; done\n",
            signals = signals.display(),
            out = ws.path().display(),
            bin = common::daemon::BIN,
            config = config.display(),
        )
        .as_bytes(),
        0o755,
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(&init)
        .stdin(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("spawn unshare");
    let d = procs::WrappedDaemon::wait_ready(child, port, &ws.work_dir(), ws.path(), "ns");
    let dst = ws.root().join("svc").join(&name);
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "svc", "src": "svc", "dst": dst.display().to_string(),
                    "process_name": name}),
        ],
    );
    let package = build_package(&m, &[Entry::file("svc", b"new\n", 0o644)]);
    let url = nginx.put("pkg.zip", &package);
    let p = d.install(&url, VERSION, &package);
    let got = std::fs::read_to_string(&signals).unwrap_or_default();
    assert!(got.is_empty(), "PID 1 was signalled: {got:?}");
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    assert_eq!(std::fs::read(&dst).unwrap(), b"new\n");
}

/// Section 8.1: a long post command (and a child it put in the background) is killed with
/// its process group when the daemon gets SIGTERM: the daemon exits promptly (0), both pids
/// are gone, and the next start rolls the installation back.
#[test]
fn contract_8_1_post_cmd_group_killed_on_sigterm_next_start_rolls_back() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let sleeper = unique_name("pst");
    let sleep_bin = ws.sleep_copy(&sleeper);
    let leader_pid = ws.path().join("leader.pid");
    let bg_pid = ws.path().join("background.pid");
    let _kill = KillOnDrop::names(&[&sleeper])
        .pid_file(&leader_pid)
        .pid_file(&bg_pid);
    let dst = ws.root().join("conf").join("main.conf");
    write_file(&dst, b"old\n", 0o644);
    let script = format!(
        "echo $$ > '{}'; '{}' 300 & echo $! > '{}'; sleep 300",
        leader_pid.display(),
        sleep_bin.display(),
        bg_pid.display()
    );
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "conf", "src": "conf", "dst": ws.root().join("conf").display().to_string(),
                    "post_cmds": [["/bin/sh", "-c", script]]}),
        ],
    );
    let package = build_package(&m, &[Entry::file("conf/main.conf", b"new\n", 0o644)]);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &package);
    d.post_update(VERSION);
    let read_pid = |f: &Path| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    let (leader, background) = wait_until(
        "the post command and its background child",
        Duration::from_secs(30),
        || Some((read_pid(&leader_pid)?, read_pid(&bg_pid)?)),
    );
    assert!(procs::is_alive(leader) && procs::is_alive(background));
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        b"new\n",
        "deployed before post_cmds"
    );
    let t = std::time::Instant::now();
    let status = d.sigterm_and_wait(Duration::from_secs(15));
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(8),
        "the daemon took {took:?} to stop"
    );
    wait_until("both pids gone", Duration::from_secs(2), || {
        (!procs::is_alive(leader) && !procs::is_alive(background)).then_some(())
    });
    assert!(procs::pids_named(&sleeper).is_empty());
    d.restart();
    let p = d.first_progress.clone().unwrap();
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{p}");
    assert!(err.contains("rolled back"), "{p}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"old\n", "rolled back");
}

/// A fake `systemd-run` in `dir`: records its arguments, one per line, in `<dir>/systemd-run.log`,
/// and starts the command after `--` in a session of its own (out of the caller's process
/// group), returning once it has left the group, as systemd would.
fn fake_systemd_run(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("fake-systemd-run");
    let log = dir.join("systemd-run.log");
    let ready = dir.join("systemd-run.ready");
    write_file(
        &p,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\" >> '{log}'; done\n\
             while [ \"$1\" != -- ]; do shift; done; shift\nrm -f '{ready}'\n\
             setsid sh -c 'echo > \"$0\"; exec \"$@\"' '{ready}' \"$@\" </dev/null >/dev/null 2>&1 &\n\
             while [ ! -e '{ready}' ]; do sleep 0.05; done\nexit 0\n",
            log = log.display(),
            ready = ready.display()
        )
        .as_bytes(),
        0o755,
    );
    p
}

/// The parent pid of a process (field 4 of /proc/<pid>/stat).
/// Installs a program module with a start_cmd through a daemon started with `env`; returns
/// the daemon's pid and the parent pid of the program started again, seen while both run.
fn install_with_start_cmd(
    env: &[(&str, &std::ffi::OsStr)],
    ws: &Workspace,
    nginx: &Nginx,
) -> (i32, i32) {
    let api = FakeDeviceApi::start();
    let name = unique_name("sta");
    let _kill = KillOnDrop::names(&[&name]);
    let dst = ws.root().join("prog").join(&name);
    write_file(&dst, &sleep_binary_with_marker("old"), 0o755);
    let _old = Spawned::spawn(Command::new(&dst).arg("1000"));
    procs::wait_for_named(&name, Duration::from_secs(5));
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "prog", "src": "prog", "dst": dst.display().to_string(),
                    "process_name": name, "start_cmd": [dst.display().to_string(), "1000"],
                    "restart_order": 1}),
        ],
    );
    let package = build_package(
        &m,
        &[Entry::file("prog", &sleep_binary_with_marker("new"), 0o755)],
    );
    let (config, port) = common::daemon::write_config(ws, &api, &DaemonOptions::default());
    let d = procs::WrappedDaemon::start(&[], env, &config, port, &ws.work_dir(), ws.path(), "env");
    let url = nginx.put("pkg.zip", &package);
    let p = d.install(&url, VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let again = procs::wait_for_named(&name, Duration::from_secs(10));
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(procs::exe_of(again[0]).as_deref(), Some(dst.as_path()));
    let log = std::fs::read_to_string(ws.bin_dir().join("systemd-run.log")).unwrap_or_default();
    if !log.is_empty() {
        let args: Vec<&str> = log.lines().collect();
        assert!(
            args[0].starts_with(&format!("--unit=tope-{name}-")) && args[0].ends_with(".service"),
            "{args:?}"
        );
        let dst_s = dst.display().to_string();
        let version = format!("--setenv=TOPE_VERSION={VERSION}");
        // docs/API.md 9.6: the unit gets the documented environment, not the updater's.
        assert_eq!(
            &args[1..],
            &[
                "--working-directory=/",
                "--setenv=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--setenv=LANG=C",
                "--setenv=TOPE_MODULE=prog",
                version.as_str(),
                "--property=RemainAfterExit=yes",
                "--collect",
                "--quiet",
                "--no-ask-password",
                "--",
                dst_s.as_str(),
                "1000"
            ],
        );
    }
    let parent = tope_updater::process::scan(&name)
        .ok()
        .and_then(|found| found.into_iter().find(|p| p.id.pid == again[0]))
        .map(|p| p.ppid)
        .expect("the started program's parent");
    (d.child.id() as i32, parent)
}

/// When systemd runs, a start_cmd is started by `systemd-run` as a transient unit
/// (here a recording fake named by TOPE_SYSTEMD_RUN), so it lives outside the updater's
/// cgroup and is not the updater's child.
#[test]
fn start_cmd_runs_through_systemd_run_when_systemd_runs() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let fake = fake_systemd_run(&ws.bin_dir());
    let (daemon, parent) =
        install_with_start_cmd(&[("TOPE_SYSTEMD_RUN", fake.as_os_str())], &ws, &nginx);
    assert!(
        ws.bin_dir().join("systemd-run.log").exists(),
        "systemd-run was not used"
    );
    assert_ne!(parent, daemon, "started by systemd-run, not by the updater");
}

/// Without systemd (TOPE_SYSTEMD_RUN empty forces it; this machine runs no systemd
/// anyway) a start_cmd is a plain child of the updater.
#[test]
fn start_cmd_is_a_plain_child_without_systemd() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let (daemon, parent) =
        install_with_start_cmd(&[("TOPE_SYSTEMD_RUN", "".as_ref())], &ws, &nginx);
    assert_eq!(parent, daemon);
    assert!(!ws.bin_dir().join("systemd-run.log").exists());
}
