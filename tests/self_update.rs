//! docs/API.md 9.4, the updater updates itself: a module whose `dst` is the running updater's
//! own executable, against the real daemon started from a copy of the build's binary inside
//! the test's root, so that the module's `dst` is that copy.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{stage_of, write_config, BIN};
use common::notify::NotifySocket;
use common::soak_rng::{soak_iterations, Rng};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "9.4.0";

/// The build's binary with a marker appended: still the same working program, another file.
fn marked_binary(marker: &str) -> Vec<u8> {
    let mut data = std::fs::read(BIN).expect("read the build's binary");
    data.extend_from_slice(format!("\nTOPE-SELF-MARKER:{marker}\n").as_bytes());
    data
}

/// The process group of a daemon (started in one of its own): SIGKILLed when dropped, so a
/// new binary left running by a test never outlives it.
struct Group(i32);

impl Group {
    fn kill(&self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pids holding the API's listening socket on `port` (from `ss`).
fn listening_pids(port: u16) -> Vec<i32> {
    let out = std::process::Command::new("ss")
        .args(["-Htlnp", &format!("sport = :{port}")])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pids: Vec<i32> = text
        .split("pid=")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// A printer whose updater runs from `<root>/bin/tope-updater`, a copy of the build's binary
/// (marker `old`), with `settle_s`.
struct Rig {
    ws: Workspace,
    api: FakeDeviceApi,
    nginx: Nginx,
    d: Daemon,
    exe: PathBuf,
    port: u16,
    groups: Vec<Group>,
}

impl Rig {
    fn new(settle_s: u64) -> Option<Rig> {
        let ws = Workspace::new();
        let nginx = ws.nginx()?;
        let api = FakeDeviceApi::start();
        let exe = ws.root().join("bin/tope-updater");
        write_file(&exe, &marked_binary("old"), 0o755);
        let (config, port) = write_config(
            &ws,
            &api,
            &DaemonOptions {
                extra_toml: format!("settle_s = {settle_s}\n"),
                ..DaemonOptions::default()
            },
        );
        let d = Daemon::start_binary(&exe, &config, port, &ws.work_dir(), ws.path());
        let groups = vec![Group(d.pid())];
        Some(Rig {
            ws,
            api,
            nginx,
            d,
            exe,
            port,
            groups,
        })
    }

    /// A package replacing the updater's executable by `new` (and `extra` module fields).
    fn package(&self, new: &[u8], mode: u32, extra: Value) -> Vec<u8> {
        let mut module = json!({"name": "updater", "src": "tope-updater",
                                "dst": self.exe.display().to_string(), "health_timeout_s": 10});
        if let (Some(m), Some(e)) = (module.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        build_package(
            &manifest(VERSION, vec![module]),
            &[Entry::file("tope-updater", new, mode)],
        )
    }

    /// The one process serving the API, once only one holds its socket.
    fn server_pid(&self) -> i32 {
        wait_until(
            "one process serving the API",
            Duration::from_secs(20),
            || match listening_pids(self.port).as_slice() {
                [one] => Some(*one),
                _ => None,
            },
        )
    }

    /// SIGKILL of every process of the daemon's process groups (old and new binary), then a
    /// start of whatever binary is at the updater's path.
    fn power_cut_and_restart(&mut self) {
        for g in &self.groups {
            g.kill();
        }
        self.d.sigkill();
        wait_until("nothing listening", Duration::from_secs(10), || {
            listening_pids(self.port).is_empty().then_some(())
        });
        self.d.restart();
        self.groups.push(Group(self.d.pid()));
    }
}

fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/<pid>/exe")
}

fn has_marker(path: &Path, marker: &str) -> bool {
    let data = std::fs::read(path).expect("read the updater's path");
    data.ends_with(format!("\nTOPE-SELF-MARKER:{marker}\n").as_bytes())
}

/// docs/API.md 9.4: a good new binary takes the API over through the health phase, the
/// installation commits, the NEW binary reports `success`, and a second update still works.
#[test]
fn api_9_4_a_good_new_binary_takes_over_and_reports_success() {
    let Some(mut r) = Rig::new(2) else { return };
    let old_pid = r.d.pid();
    let pkg = r.package(&marked_binary("new"), 0o755, json!({}));
    r.d.download_package(&r.nginx, "self.zip", VERSION, &pkg);
    r.d.post_update(VERSION);
    // The handover: both binaries hold the socket while the new one serves.
    wait_until(
        "the new binary holds the socket",
        Duration::from_secs(30),
        || (listening_pids(r.port).len() == 2).then_some(()),
    );
    let p = r.d.wait_outcome();
    assert_eq!(stage_of(&p), "success", "{p}");
    // The old binary stops once it has handed over; the new one serves.
    let st =
        r.d.wait_exit(Duration::from_secs(20))
            .expect("the old binary exits");
    assert!(st.success(), "old binary: {st}");
    let pid = r.server_pid();
    assert_ne!(pid, old_pid);
    assert_eq!(
        exe_of(pid),
        r.exe,
        "the API is served by the file at the updater's path"
    );
    assert!(has_marker(&r.exe, "new"));
    r.api
        .wait_for_report("success", Duration::from_secs(10), |b| {
            b["stage"] == "success"
        });
    let p = r.d.progress();
    assert_eq!(stage_of(&p), "success", "{p}");
    assert_eq!(p["data"]["version"], VERSION, "{p}");
    // A second, ordinary update through the new binary.
    let app = r.ws.root().join("app/app");
    write_file(&app, b"app v1", 0o755);
    let pkg2 = build_package(
        &manifest(
            "9.4.1",
            vec![json!({"name": "app", "src": "app", "dst": app.display().to_string()})],
        ),
        &[Entry::file("app", b"app v2", 0o755)],
    );
    let p = r.d.install_package(&r.nginx, "second.zip", "9.4.1", &pkg2);
    assert_eq!(stage_of(&p), "success", "{p}");
    assert_eq!(std::fs::read(&app).unwrap(), b"app v2");
    assert_eq!(r.server_pid(), pid);
}

/// A minimal ELF header of another machine than this one (aarch64 on x86_64, x86_64
/// elsewhere): the kernel refuses to execute it (`ENOEXEC`).
fn foreign_elf() -> Vec<u8> {
    let machine: u16 = if cfg!(target_arch = "x86_64") {
        183
    } else {
        62
    };
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little endian
    h[6] = 1; // version
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h
}

/// docs/API.md 9.4: a new binary that cannot run here, exits, crashes after it took over, or
/// never answers `/progress` is taken back: the old bytes are at the path, the old binary
/// serves the API within `health_timeout_s` + 30 s, and the outcome is
/// `DEPLOYMENT_FAILED: self-update: <why>`.
#[test]
fn api_9_4_a_bad_new_binary_is_taken_back() {
    let Some(mut r) = Rig::new(4) else { return };
    let old_pid = r.d.pid();
    let old_bytes = std::fs::read(&r.exe).unwrap();
    // The real binary run by a script that kills it 2 s after it took over.
    let real = r.ws.bin_dir().join("tope-updater-real");
    write_file(&real, &marked_binary("crashing"), 0o755);
    // Runs here (`--version` answers, as the cheap probe before the swap asks), then the
    // real binary takes the API over and is killed 2 s later.
    let crashing = format!(
        "#!/bin/sh\ncase \"$1\" in --version) exec '{real}' --version;; esac\n\
         '{real}' \"$@\" &\npid=$!\nsleep 2\nkill -9 $pid\nwait $pid\nexit 1\n",
        real = real.display()
    );
    // Runs here, but never serves the API.
    let silent = b"#!/bin/sh\ncase \"$1\" in --version) exit 0;; esac\nexec sleep 60\n";
    let probe = "the new binary does not run here: ";
    let cases: Vec<(&str, Vec<u8>, u32, Vec<&str>)> = vec![
        (
            "exits 1",
            b"#!/bin/sh\nexit 1\n".to_vec(),
            0o755,
            vec![probe, "--version` exited"],
        ),
        (
            "foreign ELF",
            foreign_elf(),
            0o755,
            vec![probe, "cannot start", "Exec format error"],
        ),
        (
            "not executable",
            b"#!/bin/sh\nexit 0\n".to_vec(),
            0o644,
            vec![probe, "cannot start", "Permission denied"],
        ),
        (
            "crashes after 2 s",
            crashing.into_bytes(),
            0o755,
            vec!["the new updater", "exited"],
        ),
        (
            "never answers",
            silent.to_vec(),
            0o755,
            vec!["did not answer /progress within 3 s"],
        ),
    ];
    for (i, (what, new, mode, why)) in cases.into_iter().enumerate() {
        let pkg = r.package(&new, mode, json!({"health_timeout_s": 3}));
        r.d.download_package(&r.nginx, &format!("bad-{i}.zip"), VERSION, &pkg);
        let t = std::time::Instant::now();
        r.d.post_update(VERSION);
        let p = r.d.wait_outcome();
        assert_eq!(stage_of(&p), "failed", "{what}: {p}");
        let err = p["data"]["error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with("DEPLOYMENT_FAILED: self-update: ")
                && why.iter().all(|w| err.contains(w)),
            "{what}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3 + 30),
            "{what}: {:?}",
            t.elapsed()
        );
        assert_eq!(
            std::fs::read(&r.exe).unwrap(),
            old_bytes,
            "{what}: old bytes back"
        );
        assert_eq!(r.server_pid(), old_pid, "{what}: the old binary serves");
        assert!(
            r.d.wait_exit(Duration::ZERO).is_none(),
            "{what}: the old binary runs"
        );
        r.api.wait_for_report(what, Duration::from_secs(10), |b| {
            b["error"].as_str() == Some(err)
        });
    }
}

/// docs/API.md 9.4: a module naming the updater's own unit as its `service`, or a post command
/// that restarts or stops the updater, is refused with `INVALID_MANIFEST` before anything is
/// touched (no file replaced, no command run).
#[test]
fn api_9_4_own_unit_or_a_restart_of_the_updater_is_refused_before_anything_is_touched() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let dst = ws.root().join("app/app");
    write_file(&dst, b"app v1", 0o755);
    let marker = ws.path().join("post-ran");
    let cases: Vec<(&str, Value)> = vec![
        ("service", json!({"service": "tope-updater.service"})),
        ("service without suffix", json!({"service": "tope-updater"})),
        (
            "post command",
            json!({"post_cmds": [["systemctl", "restart", "tope-updater"]]}),
        ),
        (
            "shell post command",
            json!({"post_cmds": [format!("touch {}; systemctl stop tope-updater.service",
                                         marker.display())]}),
        ),
        (
            "start_cmd",
            json!({"start_cmd": ["killall", "tope-updater"]}),
        ),
    ];
    for (i, (what, extra)) in cases.into_iter().enumerate() {
        let mut module = json!({"name": "app", "src": "app", "dst": dst.display().to_string()});
        if let (Some(m), Some(e)) = (module.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let pkg = build_package(
            &manifest(VERSION, vec![module]),
            &[Entry::file("app", b"app v2", 0o755)],
        );
        let p = d.install_package(&nginx, &format!("own-{i}.zip"), VERSION, &pkg);
        assert_eq!(stage_of(&p), "failed", "{what}: {p}");
        let err = p["data"]["error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with("INVALID_MANIFEST: module app: ")
                && err.contains("the updater cannot stop or restart itself"),
            "{what}: {err}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), b"app v1", "{what}");
        assert!(!marker.exists(), "{what}: the post command ran");
    }
    // The refusal is reported like any failure, and the updater is still there to say so.
    wait_until("the last refusal reported", Duration::from_secs(10), || {
        api.bodies()
            .iter()
            .any(|r| r["stage"] == "failed")
            .then_some(())
    });
    assert_eq!(stage_of(&d.progress()), "failed");
}

/// The journal of the installation in progress, as text ("" when there is none).
fn journal_text(r: &Rig) -> String {
    std::fs::read_to_string(r.ws.work_dir().join("backups/journal.json")).unwrap_or_default()
}

/// After a power cut that left the old executable's installation uncommitted: the binary
/// at the path (the new one) started, rolled back, put the old one back and executed it; the
/// old binary serves and the outcome `failed` is shown and reported.
fn assert_rolled_back_and_served_by_old(r: &Rig, what: &str) {
    let p = r.d.first_progress.clone().expect("first /progress");
    assert_eq!(stage_of(&p), "failed", "{what}: {p}");
    let err = p["data"]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.starts_with("DEPLOYMENT_FAILED: ") && err.contains("rolled back"),
        "{what}: {err}"
    );
    assert!(
        has_marker(&r.exe, "old"),
        "{what}: the old binary is back at the path"
    );
    let pid = r.server_pid();
    assert_eq!(
        exe_of(pid),
        r.exe,
        "{what}: the process serving runs the file at the path"
    );
    assert!(
        !r.ws.work_dir().join("backups/journal.json").exists(),
        "{what}"
    );
    r.api.wait_for_report(what, Duration::from_secs(10), |b| {
        b["error"].as_str() == Some(err.as_str())
    });
    // The updater works: the next (ordinary) update installs.
    let app = r.ws.root().join("app/app");
    write_file(&app, b"app v1", 0o755);
    let pkg = build_package(
        &manifest(
            "9.4.2",
            vec![json!({"name": "app", "src": "app", "dst": app.display().to_string()})],
        ),
        &[Entry::file("app", b"app v2", 0o755)],
    );
    let p = r.d.install_package(&r.nginx, "after.zip", "9.4.2", &pkg);
    assert_eq!(stage_of(&p), "success", "{what}: {p}");
}

/// docs/API.md 9.4, power cut after the swap, before the new binary was started (a post
/// command of the module waits on a file): the path holds the new binary, the journal says
/// `swapping`. The new binary starts, rolls back (the health phase was never passed), and the
/// old binary it put back serves.
#[test]
fn api_9_4_power_cut_after_the_swap_rolls_back_to_the_old_binary() {
    let Some(mut r) = Rig::new(1) else { return };
    let reached = r.ws.path().join("post-reached");
    let go = r.ws.path().join("post-go");
    let post = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.1; done",
        reached.display(),
        go.display()
    );
    let pkg = r.package(&marked_binary("new"), 0o755, json!({"post_cmds": [post]}));
    r.d.download_package(&r.nginx, "cut-swap.zip", VERSION, &pkg);
    r.d.post_update(VERSION);
    wait_until("the post command runs", Duration::from_secs(60), || {
        reached.exists().then_some(())
    });
    assert!(has_marker(&r.exe, "new"), "the swap is done");
    assert!(journal_text(&r).contains("swapping"));
    r.power_cut_and_restart();
    write_file(&go, b"", 0o644);
    assert_rolled_back_and_served_by_old(&r, "cut after the swap");
}

/// docs/API.md 9.4, power cut while the new binary serves the API and the old one watches
/// it (both hold the socket; nothing committed): as after the swap, rolled back to the old
/// binary, which serves.
#[test]
fn api_9_4_power_cut_during_the_hand_over_rolls_back_to_the_old_binary() {
    let Some(mut r) = Rig::new(60) else { return };
    let pkg = r.package(&marked_binary("new"), 0o755, json!({}));
    r.d.download_package(&r.nginx, "cut-handover.zip", VERSION, &pkg);
    r.d.post_update(VERSION);
    wait_until(
        "the new binary holds the socket",
        Duration::from_secs(60),
        || (listening_pids(r.port).len() == 2).then_some(()),
    );
    let p = r.d.progress();
    assert_eq!(
        stage_of(&p),
        "rebooting",
        "the new binary shows the installation: {p}"
    );
    r.power_cut_and_restart();
    assert_rolled_back_and_served_by_old(&r, "cut during the hand-over");
}

/// docs/API.md 9.4, power cut right after the commit (the journal says `committed`; the
/// new binary may or may not have finished it): the new binary at the path starts and
/// reports `success`.
#[test]
fn api_9_4_power_cut_after_the_commit_reports_success_from_the_new_binary() {
    let Some(mut r) = Rig::new(1) else { return };
    let pkg = r.package(&marked_binary("new"), 0o755, json!({}));
    r.d.download_package(&r.nginx, "cut-commit.zip", VERSION, &pkg);
    r.d.post_update(VERSION);
    // The commit and the new binary's cleanup may follow each other within milliseconds:
    // the cut comes when the journal says `committed` (looked at every millisecond), or at
    // the latest once it is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut swapped = false;
    let at = loop {
        let j = journal_text(&r);
        swapped |= j.contains("swapping");
        if j.contains("committed") {
            break "committed";
        }
        if swapped && j.is_empty() {
            break "cleaned up";
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no commit within 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!("power cut with the journal {at}");
    r.power_cut_and_restart();
    let p = r.d.first_progress.clone().expect("first /progress");
    assert_eq!(stage_of(&p), "success", "{p}");
    assert_eq!(p["data"]["version"], VERSION, "{p}");
    assert!(has_marker(&r.exe, "new"));
    assert_eq!(exe_of(r.server_pid()), r.exe);
    r.api
        .wait_for_report("success", Duration::from_secs(10), |b| {
            b["stage"] == "success"
        });
}

/// docs/API.md 9.4 under the shipped unit (`Type=notify`, `NotifyAccess=main`,
/// `WatchdogSec=`), the test playing systemd's notification socket: the old binary is ready
/// and feeds the watchdog; at the commit it names the new binary as the main process
/// (`MAINPID=`), which then says `READY=1` and feeds the watchdog once the old one is gone.
#[test]
fn api_9_4_systemd_main_pid_and_watchdog_pass_to_the_new_binary() {
    let Some(mut r) = Rig::new(2) else { return };
    let notify = NotifySocket::bind(r.ws.path());
    r.d.sigterm_and_wait(Duration::from_secs(30));
    let socket = format!("NOTIFY_SOCKET={}", notify.path.display());
    // As systemd starts the unit; `env` executes the binary (same pid).
    r.d.restart_under(&[
        "env",
        "-u",
        "WATCHDOG_PID",
        &socket,
        "WATCHDOG_USEC=2000000",
    ]);
    r.groups.push(Group(r.d.pid()));
    notify.wait_for("READY=1 of the old binary", Duration::from_secs(10), |l| {
        l == "READY=1"
    });
    let pkg = r.package(&marked_binary("new"), 0o755, json!({}));
    let p = r.d.install_package(&r.nginx, "notify.zip", VERSION, &pkg);
    assert_eq!(stage_of(&p), "success", "{p}");
    r.d.wait_exit(Duration::from_secs(20))
        .expect("the old binary exits");
    let gone = std::time::Instant::now();
    let pid = r.server_pid();
    let main = notify.wait_for("MAINPID=", Duration::from_secs(10), |l| {
        l.starts_with("MAINPID=")
    });
    assert_eq!(
        main,
        format!("MAINPID={pid}"),
        "the new binary is the main process"
    );
    let handed = notify
        .assignments()
        .into_iter()
        .find(|(_, l)| l.starts_with("MAINPID="))
        .map(|(at, _)| at)
        .expect("MAINPID= received");
    wait_until("READY=1 of the new binary", Duration::from_secs(10), || {
        (notify.count("READY=1", handed) >= 1).then_some(())
    });
    wait_until(
        "the watchdog fed after the old binary exited",
        Duration::from_secs(10),
        || (notify.count("WATCHDOG=1", gone) >= 2).then_some(()),
    );
}

/// docs/API.md 9.4: the old binary dies alone during the hand-over (no supervisor, nothing
/// committed): the new binary sees its pipe close, rolls the installation back, and executes
/// the old binary it put back at the path, which serves and reports `failed`.
#[test]
fn api_9_4_the_old_binary_dying_during_the_hand_over_is_recovered_by_the_new_one() {
    let Some(mut r) = Rig::new(60) else { return };
    let pkg = r.package(&marked_binary("new"), 0o755, json!({}));
    r.d.download_package(&r.nginx, "old-dies.zip", VERSION, &pkg);
    r.d.post_update(VERSION);
    wait_until(
        "the new binary holds the socket",
        Duration::from_secs(60),
        || (listening_pids(r.port).len() == 2).then_some(()),
    );
    r.d.sigkill();
    let p = r.d.wait_for("failed", Duration::from_secs(60), |p| {
        stage_of(p) == "failed"
    });
    let err = p["data"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{err}");
    assert!(
        has_marker(&r.exe, "old"),
        "the old binary is back at the path"
    );
    assert_eq!(
        exe_of(r.server_pid()),
        r.exe,
        "the binary at the path serves"
    );
    r.api
        .wait_for_report("failed", Duration::from_secs(10), |b| {
            b["error"].as_str() == Some(err.as_str())
        });
}

/// docs/API.md 9.4 under power cuts at random instants of a self-update (`SOAK_ITERATIONS`,
/// default 3; `scripts/soak.sh` runs more): the processes of both binaries are SIGKILLed
/// between `/update` and a little after the usual end, then whatever binary is at the path is
/// started. Each time the path holds a whole binary (the old or the new bytes, never a
/// mix), the process serving the API runs that file, the outcome agrees with it (`success`
/// with the new binary, `failed` with the old) and reaches device-api.
#[test]
fn soak_self_update_killed_at_random_instants() {
    let iterations = soak_iterations();
    let (mut rng, seed) = Rng::for_loop("self-update-kills");
    let new_bytes = marked_binary("new");
    let old_bytes = marked_binary("old");
    let mut phases: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut successes, mut failures) = (0, 0);
    let mut span = Duration::from_secs(5);
    for i in 0..iterations {
        let Some(mut r) = Rig::new(1) else { return };
        let pkg = r.package(&new_bytes, 0o755, json!({}));
        r.d.download_package(&r.nginx, "soak.zip", VERSION, &pkg);
        // One cut in five before the journal exists (the package checked again, nothing
        // touched); the others at a random instant of the installation's span after it.
        let early = rng.below(5) == 0;
        let delay = span.mul_f64(rng.unit());
        r.d.post_update(VERSION);
        if !early {
            wait_until("the journal", Duration::from_secs(60), || {
                (!journal_text(&r).is_empty()).then_some(())
            });
        }
        std::thread::sleep(delay);
        let mut phase = match journal_text(&r) {
            j if j.is_empty() => "no journal (not yet, or removed)".to_string(),
            j => ["staging", "staged", "stopping", "swapping", "committed"]
                .into_iter()
                .find(|p| j.contains(&format!("\"{p}\"")))
                .unwrap_or("unreadable")
                .to_string(),
        };
        if listening_pids(r.port).len() == 2 {
            phase = format!("{phase}, hand-over");
        }
        let what = format!("iteration {i} (seed {seed}): killed after {delay:?} in {phase}");
        r.power_cut_and_restart();
        *phases.entry(phase).or_default() += 1;
        let data = std::fs::read(&r.exe).expect("a file at the updater's path");
        let is_new = data == new_bytes;
        assert!(is_new || data == old_bytes, "{what}: a mix at the path");
        let pid = r.server_pid();
        assert_eq!(exe_of(pid), r.exe, "{what}: the file at the path serves");
        let p = r.d.wait_for("an outcome", Duration::from_secs(60), |p| {
            matches!(stage_of(p).as_str(), "success" | "failed")
        });
        let want = if is_new { "success" } else { "failed" };
        assert_eq!(stage_of(&p), want, "{what}: {p}");
        if is_new {
            successes += 1;
        } else {
            failures += 1;
        }
        r.api
            .wait_for_report(&what, Duration::from_secs(10), |b| b["stage"] == want);
        // Kill points beyond the end of the update teach nothing: aim at the update's span.
        if is_new && !early && delay < span {
            span = span.mul_f64(0.9).max(Duration::from_secs(2));
        }
    }
    eprintln!(
        "soak self-update: {iterations} power cuts (seed {seed}): {successes} ended in success, \
         {failures} rolled back; phases at the cut: {phases:?}"
    );
}
