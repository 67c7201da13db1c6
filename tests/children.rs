//! docs/API.md 9.6 (and 8.1), against the real daemon and real processes: every process a
//! `post_cmd` or `health_cmd` started ends with its step, also one that left the step's process
//! group and session (`setsid`, a double fork), or when the daemon stops; the programs the
//! updater starts get the documented environment, never the daemon's own; and a `start_cmd`'s
//! process, meant to keep running, is left alone.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::stage_of;
use common::procs::{self, is_alive, KillOnDrop};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "9.6.2";

/// A package of one module `tool`: a config file, plus `extra` module fields.
fn tool_package(ws: &Workspace, extra: Value) -> Vec<u8> {
    let dst = ws.root().join("tool/tool.conf");
    write_file(&dst, b"old\n", 0o644);
    let mut module = json!({"name": "tool", "src": "tool.conf", "dst": dst.display().to_string()});
    if let (Some(m), Some(e)) = (module.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    build_package(
        &manifest(VERSION, vec![module]),
        &[Entry::file("tool.conf", b"new\n", 0o644)],
    )
}

/// Shell text that starts two copies of `prog` (a renamed `sleep`) out of the step's process
/// group and session, each first writing its pid to `pids`: one through `setsid` (its parent,
/// the shell, still there), one double-forked (its parent exits at once, so it is reparented
/// before anybody can see whose it was); then waits until both have written.
fn escapees(prog: &Path, pids: &Path) -> String {
    format!(
        "setsid sh -c 'echo $$ >> {pids}; exec {prog} 1000' & \
         (setsid sh -c 'echo $$ >> {pids}; exec {prog} 1001' >/dev/null 2>&1 &); \
         while [ $(cat {pids} 2>/dev/null | wc -l) -lt 2 ]; do sleep 0.05; done",
        prog = prog.display(),
        pids = pids.display()
    )
}

/// The pids written to `path`, one per line.
fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A renamed `sleep` (unique `comm`) and a guard that kills whatever runs under that name.
fn escapee_program(ws: &Workspace) -> (String, PathBuf, KillOnDrop) {
    let name = unique_name("esc");
    let prog = ws.sleep_copy(&name);
    let kill = KillOnDrop::names(&[&name]);
    (name, prog, kill)
}

#[test]
fn api_9_6_post_cmd_descendants_that_left_the_session_end_with_the_step() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let (name, prog, _kill) = escapee_program(&ws);
    let pids = ws.path().join("pids");
    let alive = ws.path().join("alive");
    let checked = ws.path().join("checked");
    // The second post command runs once the first step has ended: it writes down every
    // escapee still running (not a zombie).
    let check = format!(
        "for p in $(cat {pids}); do \
           s=$(sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' /proc/$p/status 2>/dev/null); \
           if [ -n \"$s\" ] && [ \"$s\" != Z ]; then echo $p >> {alive}; fi; \
         done; echo done > {checked}",
        pids = pids.display(),
        alive = alive.display(),
        checked = checked.display()
    );
    let package = tool_package(
        &ws,
        json!({"post_cmds": [["sh", "-c", format!("{}; exit 0", escapees(&prog, &pids))],
                             ["sh", "-c", check]]}),
    );
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.install_package(&nginx, "p.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let started = pids_in(&pids);
    assert_eq!(started.len(), 2, "both escapees started: {started:?}");
    assert!(checked.exists(), "the second post command ran");
    assert_eq!(
        std::fs::read_to_string(&alive).unwrap_or_default(),
        "",
        "escapees of the first post command still ran during the second (of {started:?})"
    );
    for pid in started {
        assert!(!is_alive(pid), "escapee {pid} outlived its post command");
    }
    assert!(procs::pids_named(&name).is_empty());
}

#[test]
fn api_9_6_health_cmd_descendants_that_left_the_session_end_with_the_step() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let (name, prog, _kill) = escapee_program(&ws);
    let pids = ws.path().join("pids");
    let package = tool_package(
        &ws,
        json!({"health_cmd": ["sh", "-c", format!("{}; exit 0", escapees(&prog, &pids))],
               "health_timeout_s": 20}),
    );
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: "settle_s = 0\n".into(),
            ..DaemonOptions::default()
        },
    );
    let p = d.install_package(&nginx, "h.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let started = pids_in(&pids);
    assert_eq!(started.len(), 2, "both escapees started: {started:?}");
    // `success` comes after the health step has ended, and with it its processes.
    for pid in &started {
        assert!(!is_alive(*pid), "escapee {pid} outlived its health command");
    }
    assert!(procs::pids_named(&name).is_empty());
}

#[test]
fn api_9_6_sigterm_ends_a_running_post_cmd_and_its_setsid_descendants() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let (name, prog, _kill) = escapee_program(&ws);
    let pids = ws.path().join("pids");
    let script = format!(
        "{}; echo $$ >> {pids}; exec {prog} 1002",
        escapees(&prog, &pids),
        pids = pids.display(),
        prog = prog.display()
    );
    let package = tool_package(&ws, json!({"post_cmds": [["sh", "-c", script]]}));
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "s.zip", VERSION, &package);
    d.post_update(VERSION);
    // The post command (now the third `prog`) and both escapees run.
    let running = wait_until(
        "the post command and its escapees",
        Duration::from_secs(30),
        || {
            let p = pids_in(&pids);
            (p.len() == 3 && procs::pids_named(&name).len() == 3).then_some(p)
        },
    );
    let status = d.sigterm_and_wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", d.output());
    for pid in running {
        assert!(
            !is_alive(pid),
            "process {pid} of the post command outlived the daemon"
        );
    }
    assert!(procs::pids_named(&name).is_empty());
}

/// The variables of an `env` dump, without those `sh` adds itself.
fn env_dump(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !matches!(*k, "PWD" | "OLDPWD" | "SHLVL" | "_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.sort();
    vars
}

#[test]
fn api_9_6_start_post_and_health_commands_get_the_documented_environment_only() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("env");
    let _kill = KillOnDrop::names(&[&name]);
    let dst = ws.root().join("envmod").join(&name);
    write_file(&dst, &sleep_binary_with_marker("old"), 0o755);
    let dump = |step: &str| ws.path().join(format!("{step}.env"));
    let m = manifest(
        VERSION,
        vec![json!({
            "name": "envmod", "src": "prog", "dst": dst.display().to_string(),
            "process_name": name,
            "start_cmd": ["sh", "-c", format!("env > {}; exec {} 1000", dump("start").display(), dst.display())],
            "post_cmds": [["sh", "-c", format!("env > {}", dump("post").display())]],
            "health_cmd": ["sh", "-c", format!("env > {}", dump("health").display())],
        })],
    );
    let package = build_package(
        &m,
        &[Entry::file("prog", &sleep_binary_with_marker("new"), 0o755)],
    );
    let secret = "TOPE_SECRET_TOKEN";
    let (config, port) = common::daemon::write_config(
        &ws,
        &api,
        &DaemonOptions {
            extra_toml: "settle_s = 0\n".into(),
            ..DaemonOptions::default()
        },
    );
    let d = procs::WrappedDaemon::start(
        &[],
        &[(secret, "s3cret-value".as_ref())],
        &config,
        port,
        &ws.work_dir(),
        ws.path(),
        "env",
    );
    let url = nginx.put("e.zip", &package);
    let p = d.install(&url, VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());

    let documented = |step_id: bool| {
        let mut v = vec![
            ("LANG".to_string(), "C".to_string()),
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("TOPE_MODULE".to_string(), "envmod".to_string()),
            ("TOPE_VERSION".to_string(), VERSION.to_string()),
        ];
        if step_id {
            v.push(("TOPE_STEP_ID".to_string(), String::new()));
        }
        v.sort();
        v
    };
    for (step, step_id) in [("start", false), ("post", true), ("health", true)] {
        let mut vars = env_dump(&dump(step));
        assert!(
            vars.iter().all(|(k, _)| k != secret),
            "the daemon's secret reached the {step} command: {vars:?}"
        );
        // A step's marker is unique: only its presence is compared.
        for (k, v) in vars.iter_mut() {
            if k == "TOPE_STEP_ID" {
                assert!(!v.is_empty(), "{step}: empty TOPE_STEP_ID");
                v.clear();
            }
        }
        assert_eq!(
            vars,
            documented(step_id),
            "the {step} command's environment"
        );
    }
}

#[test]
fn api_9_6_a_daemonizing_start_cmd_keeps_running_after_its_step_and_the_daemon() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("kpt");
    let _kill = KillOnDrop::names(&[&name]);
    let dst = ws.root().join("keep").join(&name);
    write_file(&dst, &sleep_binary_with_marker("old"), 0o755);
    // The start_cmd daemonizes: its first process exits 0, the named one runs in a session of
    // its own. A health command and a post command (steps) run around it.
    let m = manifest(
        VERSION,
        vec![json!({
            "name": "keep", "src": "prog", "dst": dst.display().to_string(),
            "process_name": name,
            "start_cmd": ["sh", "-c", format!("(setsid {} 1000 >/dev/null 2>&1 &)", dst.display())],
            "post_cmds": [["true"]],
            "health_cmd": ["true"],
        })],
    );
    let package = build_package(
        &m,
        &[Entry::file("prog", &sleep_binary_with_marker("new"), 0o755)],
    );
    let mut d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: "settle_s = 0\n".into(),
            ..DaemonOptions::default()
        },
    );
    let p = d.install_package(&nginx, "k.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let running = procs::pids_named(&name);
    assert_eq!(running.len(), 1, "the started process runs: {running:?}");
    assert!(has_marker(&dst, "new"));
    let status = d.sigterm_and_wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(
        is_alive(running[0]),
        "the start_cmd's process was ended with a step or with the daemon"
    );
    assert_eq!(procs::pids_named(&name), running);
}
