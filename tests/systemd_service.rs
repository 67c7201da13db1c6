//! Running under systemd, as the real daemon sees it: the notification socket (READY=1,
//! STATUS= lines, WATCHDOG=1 fed only while /progress answers, STOPPING=1) and journald
//! priorities on stderr. The test plays systemd: it owns the unix datagram socket named in
//! NOTIFY_SOCKET and sets WATCHDOG_USEC / JOURNAL_STREAM the way systemd does.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{config_text, serve_command, BIN};
use common::notify::NotifySocket;
use common::*;

/// Two seconds: the daemon probes itself every 500 ms.
const WATCHDOG_USEC: &str = "2000000";

/// Spawns the real daemon the way systemd would start the unit: NOTIFY_SOCKET, and
/// WATCHDOG_USEC when `watchdog` is set.
fn spawn_notified(ws: &Workspace, config: &Path, notify: &NotifySocket, watchdog: bool) -> Child {
    let mut cmd = Command::new(BIN);
    serve_command(&mut cmd, config, ws.path(), "daemon-1");
    cmd.env("NOTIFY_SOCKET", &notify.path);
    if watchdog {
        cmd.env("WATCHDOG_USEC", WATCHDOG_USEC);
    } else {
        cmd.env_remove("WATCHDOG_USEC");
    }
    cmd.env_remove("WATCHDOG_PID").env_remove("JOURNAL_STREAM");
    cmd.spawn().expect("spawn tope-updater")
}

fn sigterm_and_wait(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    common::procs::signal(child.id() as i32, rustix::process::Signal::TERM);
    wait_until("the daemon to exit after SIGTERM", timeout, || {
        child.try_wait().unwrap()
    })
}

struct KillChild(Child);

impl Drop for KillChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon_output(ws: &Workspace) -> String {
    let err = std::fs::read_to_string(ws.path().join("daemon-1.stderr")).unwrap_or_default();
    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap_or_default();
    format!("--- stderr ---\n{err}\n--- updater.log ---\n{log}")
}

/// READY=1 once the API answers, STATUS= lines that follow the update ("Downloading 47%"),
/// WATCHDOG=1 every probe period while /progress answers, then STOPPING=1 and exit 0 on
/// SIGTERM with no watchdog ping after it.
#[test]
fn systemd_notify_ready_status_lines_and_watchdog() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let port = free_port();
    let config = ws.path().join("updater.toml");
    std::fs::write(
        &config,
        config_text(&ws, &api, port, &DaemonOptions::default()),
    )
    .unwrap();
    let notify = NotifySocket::bind(ws.path());
    let mut child = KillChild(spawn_notified(&ws, &config, &notify, true));

    notify.wait_for("READY=1", Duration::from_secs(30), |l| l == "READY=1");
    let idle = notify.wait_for("an idle STATUS", Duration::from_secs(10), |l| {
        l.starts_with("STATUS=")
    });
    assert_eq!(idle, "STATUS=Idle, waiting for an update");

    let since = Instant::now();
    wait_until("3 watchdog pings", Duration::from_secs(10), || {
        (notify.count("WATCHDOG=1", since) >= 3).then_some(())
    });

    // A download throttled by nginx: the status shows its percentage.
    // Its post command records the environment programs started by the updater get.
    let dst = ws.root().join("data.bin").display().to_string();
    let env_file = ws.path().join("post-cmd.env");
    let m = manifest(
        "2.0.0",
        vec![
            serde_json::json!({"name": "data", "src": "data.bin", "dst": dst,
            "post_cmds": [["sh", "-c", format!("env > '{}'", env_file.display())]]}),
        ],
    );
    let package = build_package(
        &m,
        &[Entry::file(
            "data.bin",
            &pseudo_random_bytes(3 * 1024 * 1024, 5),
            0o644,
        )],
    );
    let url = nginx.put("slow/pkg.zip", &package);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let r = common::http::request(
        addr,
        "POST",
        "/api/v1.0/download",
        Some("application/json"),
        download_body("2.0.0", &url, "pkg.zip", &package)
            .to_string()
            .as_bytes(),
    )
    .expect("POST /download");
    assert_eq!(r.json()["code"], 200, "{}", r.text());
    let downloading = notify.wait_for(
        "a Downloading N% status with 0 < N < 100",
        Duration::from_secs(30),
        |l| {
            l.strip_prefix("STATUS=Downloading ")
                .and_then(|rest| rest.split('%').next())
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > 0 && n < 100)
        },
    );
    assert!(downloading.ends_with("% (version 2.0.0)"), "{downloading}");
    notify.wait_for(
        "the ready-to-install status",
        Duration::from_secs(60),
        |l| l == "STATUS=Downloaded (version 2.0.0), ready to install",
    );
    // Pings went on during the download.
    assert!(
        notify.count("WATCHDOG=1", since) >= 6,
        "{:?}",
        notify.assignments()
    );

    // The installation's post command is not the service: no notification socket, no watchdog.
    let r = common::http::request(
        addr,
        "POST",
        "/api/v1.0/update",
        Some("application/json"),
        br#"{"version":"2.0.0"}"#,
    )
    .expect("POST /update");
    assert_eq!(r.json()["code"], 200, "{}", r.text());
    notify.wait_for("the updated status", Duration::from_secs(60), |l| {
        l == "STATUS=Updated (version 2.0.0)"
    });
    let env = std::fs::read_to_string(&env_file).expect("the post command ran");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var} reached the post command: {env}"
        );
    }

    let status = sigterm_and_wait(&mut child.0, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", daemon_output(&ws));
    let all = notify.assignments();
    let stopping = all
        .iter()
        .find(|(_, l)| l == "STOPPING=1")
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("no STOPPING=1: {all:?}"));
    assert!(
        !all.iter()
            .any(|(at, l)| l == "WATCHDOG=1" && *at > stopping),
        "a watchdog ping after STOPPING=1: {all:?}"
    );
    let statuses = notify.statuses();
    assert!(statuses.iter().all(|s| !s.contains('\n')), "{statuses:?}");
}

/// Without WATCHDOG_USEC (no WatchdogSec= in the unit) no WATCHDOG=1 is ever sent, while the
/// status lines still are.
#[test]
fn systemd_no_watchdog_ping_unless_asked() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let port = free_port();
    let config = ws.path().join("updater.toml");
    std::fs::write(
        &config,
        config_text(&ws, &api, port, &DaemonOptions::default()),
    )
    .unwrap();
    let notify = NotifySocket::bind(ws.path());
    let mut child = KillChild(spawn_notified(&ws, &config, &notify, false));
    notify.wait_for("READY=1", Duration::from_secs(30), |l| l == "READY=1");
    notify.wait_for("a STATUS line", Duration::from_secs(10), |l| {
        l.starts_with("STATUS=Idle")
    });
    // Two status periods (2 s each) with the API answering throughout.
    let since = Instant::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while since.elapsed() < Duration::from_secs(4) {
        let r = common::http::request(addr, "GET", "/api/v1.0/progress", None, b"");
        assert!(r.is_ok_and(|r| r.status == 200));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        notify.count("WATCHDOG=1", since - Duration::from_secs(60)),
        0
    );
    assert_eq!(
        sigterm_and_wait(&mut child.0, Duration::from_secs(30)).code(),
        Some(0)
    );
}

/// Root, `unshare` and `nsenter` (util-linux) and `ip` (iproute2) are needed to take the
/// API away from outside the daemon. Under CI their absence is a failure.
fn netns_tools() -> bool {
    let have = |p: &str| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(p).exists())
    };
    let root = rustix::process::geteuid().is_root();
    let ok = root && have("unshare") && have("nsenter") && have("ip");
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI must run as root with unshare, nsenter (util-linux) and ip (iproute2)");
        }
        eprintln!("skipping: needs root, unshare, nsenter and ip");
    }
    ok
}

fn ip_in_netns(pid: u32, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-n")
        .arg("ip")
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter -n ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A wedged API stops the watchdog: the daemon runs in a network namespace of its own, whose
/// loopback the test then takes down, so /progress stops answering while the process lives
/// on. The pings must stop (and the status say why) and come back once loopback is back.
#[test]
fn systemd_watchdog_stops_while_the_api_does_not_answer() {
    if !netns_tools() {
        return;
    }
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let config = ws.path().join("updater.toml");
    // In its own namespace any port is free; device-api is unreachable there, which only
    // delays callbacks.
    std::fs::write(
        &config,
        config_text(&ws, &api, 12315, &DaemonOptions::default()),
    )
    .unwrap();
    let notify = NotifySocket::bind(ws.path());
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-n",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$0\" \"$@\"",
    ])
    .arg(BIN);
    serve_command(&mut cmd, &config, ws.path(), "daemon-1");
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null());
    let mut child = KillChild(cmd.spawn().expect("spawn unshare"));
    let pid = child.0.id();

    notify.wait_for("READY=1", Duration::from_secs(30), |l| l == "READY=1");
    let since = Instant::now();
    wait_until("3 watchdog pings", Duration::from_secs(10), || {
        (notify.count("WATCHDOG=1", since) >= 3).then_some(())
    });

    ip_in_netns(pid, &["link", "set", "lo", "down"]);
    let down_at = Instant::now();
    notify.wait_for(
        "a status saying the API does not answer",
        Duration::from_secs(10),
        |l| l.starts_with("STATUS=API not answering"),
    );
    // Let a probe already under way finish, then watch two whole watchdog intervals.
    std::thread::sleep(Duration::from_secs(1));
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let pings = notify.count("WATCHDOG=1", quiet_from);
    assert_eq!(
        pings,
        0,
        "{pings} watchdog pings while /progress could not answer (loopback down for {:?}): {:?}",
        down_at.elapsed(),
        notify.assignments()
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the daemon must live on"
    );

    ip_in_netns(pid, &["link", "set", "lo", "up"]);
    let back = Instant::now();
    wait_until(
        "pings again once /progress answers",
        Duration::from_secs(10),
        || (notify.count("WATCHDOG=1", back) >= 2).then_some(()),
    );
    notify.wait_for("the idle status again", Duration::from_secs(10), |l| {
        l == "STATUS=Idle, waiting for an update"
    });
    let status = sigterm_and_wait(&mut child.0, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", daemon_output(&ws));
}

/// Runs the daemon with JOURNAL_STREAM set as systemd sets it for a service logging to the
/// journal: the device and inode of its stderr (here the file the test gave it).
fn run_with_journal_stream(ws: &Workspace, config: &Path, matching: bool) -> Child {
    let stderr_path = ws.path().join("daemon-1.stderr");
    let mut cmd = Command::new(BIN);
    serve_command(&mut cmd, config, ws.path(), "daemon-1");
    let meta = std::fs::metadata(&stderr_path).unwrap();
    let ino = if matching { meta.ino() } else { meta.ino() + 1 };
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), ino))
        .env_remove("NOTIFY_SOCKET");
    cmd.spawn().expect("spawn tope-updater")
}

/// Journald priorities: with stderr the journal, every stderr line of the daemon starts with
/// `<N>` by level (`<6>` info, `<3>` error) while updater.log keeps its plain format; with
/// JOURNAL_STREAM naming another file, stderr is not prefixed.
#[test]
fn journald_priority_prefixes_on_stderr_only() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let port = free_port();
    let config = ws.path().join("updater.toml");
    std::fs::write(
        &config,
        config_text(&ws, &api, port, &DaemonOptions::default()),
    )
    .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let answers = || {
        common::http::request(addr, "GET", "/api/v1.0/progress", None, b"")
            .is_ok_and(|r| r.status == 200)
    };

    // A daemon that starts: info lines.
    let mut child = KillChild(run_with_journal_stream(&ws, &config, true));
    wait_until("/progress", Duration::from_secs(30), || {
        answers().then_some(())
    });
    assert_eq!(
        sigterm_and_wait(&mut child.0, Duration::from_secs(30)).code(),
        Some(0)
    );
    let stderr = std::fs::read_to_string(ws.path().join("daemon-1.stderr")).unwrap();
    let ready = stderr
        .lines()
        .find(|l| l.contains("API ready"))
        .unwrap_or_else(|| panic!("no `API ready` line on stderr:\n{stderr}"));
    assert!(ready.starts_with("<6>"), "{ready}");
    assert!(
        stderr.lines().all(|l| l.starts_with('<')),
        "every line carries a priority:\n{stderr}"
    );
    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap();
    assert!(log.contains("API ready"), "{log}");
    assert!(
        !log.contains("<6>"),
        "the file log is never prefixed:\n{log}"
    );

    // Its port taken: the error is logged at priority 3.
    let taken = std::net::TcpListener::bind(addr).expect("take the port");
    let mut child = KillChild(run_with_journal_stream(&ws, &config, true));
    let status = wait_until("exit on a taken port", Duration::from_secs(30), || {
        child.0.try_wait().unwrap()
    });
    assert!(!status.success());
    let stderr = std::fs::read_to_string(ws.path().join("daemon-1.stderr")).unwrap();
    let error = stderr
        .lines()
        .find(|l| l.contains("cannot listen") && l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.starts_with("<3>"), "{error}");
    assert!(
        stderr.lines().all(|l| l.starts_with('<')),
        "every line carries a priority, the one printed without logging too:\n{stderr}"
    );
    drop(taken);

    // A configuration error, found before logging is set up: priority 3 as well.
    let bad = ws.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"not an address\"\n").unwrap();
    let mut child = KillChild(run_with_journal_stream(&ws, &bad, true));
    let status = wait_until(
        "exit on a bad configuration",
        Duration::from_secs(30),
        || child.0.try_wait().unwrap(),
    );
    assert_eq!(status.code(), Some(2));
    let stderr = std::fs::read_to_string(ws.path().join("daemon-1.stderr")).unwrap();
    assert!(
        stderr.starts_with("<3>tope-updater: ") && stderr.contains("listen"),
        "{stderr}"
    );

    // JOURNAL_STREAM left over from a parent, naming another file: no prefixes.
    let mut child = KillChild(run_with_journal_stream(&ws, &config, false));
    wait_until("/progress", Duration::from_secs(30), || {
        answers().then_some(())
    });
    assert_eq!(
        sigterm_and_wait(&mut child.0, Duration::from_secs(30)).code(),
        Some(0)
    );
    let stderr = std::fs::read_to_string(ws.path().join("daemon-1.stderr")).unwrap();
    assert!(stderr.contains("API ready"), "{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with('<')),
        "prefixes although stderr is not the journal:\n{stderr}"
    );
}
