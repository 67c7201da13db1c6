//! Processes the tests start (programs the updater must stop and restart), found by their
//! unique name with the crate's own scan (`tope_updater::process::scan`) and always killed
//! by pid at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

/// Process state letter from /proc/<pid>/stat (`None` when it is gone). One known pid, for
/// processes the tests started themselves; finding processes is `pids_named`'s job.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Living processes named `name` (their `comm`, or the file name of their `argv[0]`) whose
/// command line holds `arg` when given, by `tope_updater::process::scan`: neither zombies nor
/// the test process itself.
fn scan_pids(name: &str, arg: Option<&std::ffi::OsStr>) -> std::io::Result<Vec<i32>> {
    let mut out: Vec<i32> = tope_updater::process::scan(name)?
        .into_iter()
        .filter(|p| arg.is_none_or(|arg| p.argv.iter().any(|a| a == arg)))
        .map(|p| p.id.pid)
        .collect();
    out.sort();
    Ok(out)
}

/// Living processes named `name`.
pub fn pids_named(name: &str) -> Vec<i32> {
    scan_pids(name, None).unwrap_or_else(|e| panic!("scan /proc for {name}: {e}"))
}

/// Living processes named `name` whose command line holds `arg` (e.g. the config file that
/// tells one daemon from the others).
pub fn pids_named_with_arg(name: &str, arg: &std::ffi::OsStr) -> Vec<i32> {
    scan_pids(name, Some(arg)).unwrap_or_else(|e| panic!("scan /proc for {name}: {e}"))
}

/// The executable a process runs.
pub fn exe_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The command line of a process, split at NULs.
pub fn cmdline_of(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

pub fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = kill_process(p, sig);
    }
}

/// A child of the test process, reaped by a thread as soon as it exits (so that a process
/// the updater kills disappears from /proc, as it would under init).
pub struct Spawned {
    pub pid: i32,
    exited: Arc<AtomicBool>,
    reaper: Option<JoinHandle<()>>,
}

impl Spawned {
    pub fn spawn(cmd: &mut Command) -> Spawned {
        // Own process group: nothing aimed at the group can reach the test runner.
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // ETXTBSY: another test thread forked while this file was open for writing; the
        // copy of that descriptor lives only until that child's exec.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn {cmd:?}: {e}"),
            }
        };
        let pid = child.id() as i32;
        let exited = Arc::new(AtomicBool::new(false));
        let flag = exited.clone();
        let reaper = std::thread::spawn(move || {
            let _ = child.wait();
            flag.store(true, Ordering::SeqCst);
        });
        Spawned {
            pid,
            exited,
            reaper: Some(reaper),
        }
    }

    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.has_exited() {
            signal(self.pid, Signal::KILL);
        }
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
    }
}

/// Waits until a process with this `comm` runs and returns its pid(s).
pub fn wait_for_named(name: &str, timeout: Duration) -> Vec<i32> {
    super::wait_until(&format!("a process named {name}"), timeout, || {
        let p = pids_named(name);
        (!p.is_empty()).then_some(p)
    })
}

/// On drop, SIGKILLs every living process whose `comm` is one of these unique names
/// (processes the updater started from the test's programs), and the pids listed in the
/// given pid files.
#[derive(Default)]
pub struct KillOnDrop {
    pub names: Vec<String>,
    pub pid_files: Vec<PathBuf>,
}

impl KillOnDrop {
    pub fn names(names: &[&str]) -> KillOnDrop {
        KillOnDrop {
            names: names.iter().map(|s| s.to_string()).collect(),
            pid_files: Vec::new(),
        }
    }

    pub fn pid_file(mut self, p: &Path) -> KillOnDrop {
        self.pid_files.push(p.to_path_buf());
        self
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for n in &self.names {
            // Never a panic in a drop (it may run while a failed test unwinds).
            for pid in scan_pids(n, None).unwrap_or_default() {
                signal(pid, Signal::KILL);
            }
        }
        for f in &self.pid_files {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                if is_alive(pid) {
                    signal(pid, Signal::KILL);
                }
            }
        }
    }
}

/// A shell script named `name` in `dir` that loops forever (its `comm` is `name`).
/// `ignore_term`: it ignores SIGTERM (only SIGKILL stops it). `start_log`: a line with
/// `marker` is appended to that file when the script starts, and `TERM <marker>` at each
/// ignored SIGTERM.
pub fn looping_script(
    dir: &Path,
    name: &str,
    marker: &str,
    ignore_term: bool,
    start_log: Option<&Path>,
) -> PathBuf {
    let p = dir.join(name);
    super::write_file(
        &p,
        &looping_script_text(marker, ignore_term, start_log),
        0o755,
    );
    p
}

/// The text of `looping_script` (to put into a package).
pub fn looping_script_text(marker: &str, ignore_term: bool, start_log: Option<&Path>) -> Vec<u8> {
    let mut t = format!("#!/bin/sh\n# {marker}\n");
    match (ignore_term, start_log) {
        // Ignored, but written down: a test can await the SIGTERM.
        (true, Some(log)) => t.push_str(&format!(
            "trap \"echo 'TERM {marker}' >> '{}'\" TERM\n",
            log.display()
        )),
        (true, None) => t.push_str("trap '' TERM\n"),
        (false, _) => {}
    }
    if let Some(log) = start_log {
        t.push_str(&format!("echo '{marker}' >> '{}'\n", log.display()));
    }
    t.push_str("while :; do sleep 1; done\n");
    t.into_bytes()
}

/// The daemon started through a wrapper program (`prlimit ...`, `unshare ...`, a script)
/// and/or with extra environment variables, for what `Daemon` cannot do. Its whole process
/// group is SIGKILLed on drop.
pub struct WrappedDaemon {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub work_dir: PathBuf,
    out_dir: PathBuf,
    stem: String,
}

impl WrappedDaemon {
    /// `wrapper` (possibly empty) then the binary with `serve --config <config>`, or, with
    /// `direct = false`, only `wrapper` (a program that starts the daemon itself). Returns
    /// once GET /progress answers (30 s).
    pub fn start(
        wrapper: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        config: &Path,
        port: u16,
        work_dir: &Path,
        out_dir: &Path,
        stem: &str,
    ) -> WrappedDaemon {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(super::daemon::BIN);
                c
            }
            None => Command::new(super::daemon::BIN),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        super::daemon::serve_command(&mut cmd, config, out_dir, stem);
        let child = cmd.spawn().expect("spawn the wrapped daemon");
        Self::wait_ready(child, port, work_dir, out_dir, stem)
    }

    /// A daemon started by `cmd` (already set up: output, process group) some other way.
    pub fn wait_ready(
        child: std::process::Child,
        port: u16,
        work_dir: &Path,
        out_dir: &Path,
        stem: &str,
    ) -> WrappedDaemon {
        let mut d = WrappedDaemon {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            work_dir: work_dir.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            stem: stem.to_string(),
        };
        match tope_updater::kit::daemon::wait_ready(d.addr, &mut d.child, Duration::from_secs(30)) {
            Ok(_) => d,
            Err(e) => panic!("{e}:\n{}", d.output()),
        }
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<super::http::Response> {
        let full = format!("{}{path}", super::daemon::API);
        super::http::request(self.addr, method, &full, ct, body)
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .try_request(
                "POST",
                path,
                Some("application/json"),
                body.to_string().as_bytes(),
            )
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.output()));
        (r.status, r.json())
    }

    pub fn progress(&self) -> serde_json::Value {
        let r = self
            .try_request("GET", "/progress", None, b"")
            .unwrap_or_else(|e| panic!("GET /progress: {e}\n{}", self.output()));
        assert_eq!(r.status, 200);
        r.json()
    }

    /// Polls /progress every 50 ms until `cond` holds.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let p = self.progress();
            if cond(&p) {
                return p;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}; last /progress {p}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Downloads `package` from `url` as `version` (30 s to `toInstall`), then installs it;
    /// returns the final /progress (`success` or `failed`, 60 s).
    pub fn install(&self, url: &str, version: &str, package: &[u8]) -> serde_json::Value {
        let body = super::download_body(version, url, "pkg.zip", package);
        super::daemon::assert_ok_status(
            &self.post_json("/download", &body),
            "downloading",
            "/download",
        );
        self.wait_for("toInstall", Duration::from_secs(30), |p| {
            p["data"]["stage"] == "toInstall"
        });
        super::daemon::assert_ok_status(
            &self.post_json("/update", &serde_json::json!({ "version": version })),
            "installing",
            "/update",
        );
        self.wait_for("the outcome", Duration::from_secs(60), |p| {
            matches!(p["data"]["stage"].as_str(), Some("success" | "failed"))
        })
    }

    /// stdout, stderr and the tail of the updater log.
    pub fn output(&self) -> String {
        let mut s = String::new();
        for kind in ["stdout", "stderr"] {
            let p = self.out_dir.join(format!("{}.{kind}", self.stem));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            s.push_str(&format!(
                "--- {} {kind} ---\n{}\n",
                self.stem,
                super::nginx::tail(&text, 40)
            ));
        }
        let log =
            std::fs::read_to_string(self.work_dir.join("logs/updater.log")).unwrap_or_default();
        s.push_str(&format!(
            "--- logs/updater.log (tail) ---\n{}\n",
            super::nginx::tail(&log, 60)
        ));
        s
    }
}

impl Drop for WrappedDaemon {
    fn drop(&mut self) {
        if let Some(p) = Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(p, Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

/// Whether `program` can be run (found on PATH or a path that exists). Without it: a panic
/// under CI (the environment must provide it), else `false` after saying why.
pub fn require_tool(program: &str, why: &str) -> bool {
    let found = if program.contains('/') {
        Path::new(program).exists()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
    };
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{program} not found: CI must provide it ({why})");
        }
        eprintln!("skipping: {program} not found ({why})");
    }
    found
}

/// A `systemctl` for the daemon (through `TOPE_SYSTEMCTL`, set for the whole test binary: one
/// test per file) that records its calls and, while the file `hang` exists, never returns
/// from `hang_on` (`stop`, `start`): it writes its pid to `hang_pid` and sleeps.
pub struct HangingSystemctl {
    pub log: PathBuf,
    pub hang: PathBuf,
    pub hang_pid: PathBuf,
}

impl HangingSystemctl {
    pub fn install(ws: &super::Workspace, hang_on: &str) -> HangingSystemctl {
        let s = HangingSystemctl {
            log: ws.path().join("systemctl.log"),
            hang: ws.path().join("hang"),
            hang_pid: ws.path().join("hang.pid"),
        };
        let fake = ws.bin_dir().join("systemctl");
        super::write_file(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{log}'\n\
                 if [ \"$1\" = {hang_on} ] && [ -e '{hang}' ]; then echo $$ > '{pid}'; exec sleep 3600; fi\n\
                 exit 0\n",
                log = s.log.display(),
                hang = s.hang.display(),
                pid = s.hang_pid.display()
            )
            .as_bytes(),
            0o755,
        );
        std::env::set_var("TOPE_SYSTEMCTL", &fake);
        s
    }

    /// Every call so far, one per line.
    pub fn calls(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// From now on `hang_on` hangs.
    pub fn start_hanging(&self) {
        super::write_file(&self.hang, b"", 0o644);
    }

    pub fn stop_hanging(&self) {
        std::fs::remove_file(&self.hang).expect("remove the hang file");
    }

    /// The pid of the hanging call, once it runs.
    pub fn wait_hung(&self, what: &str) -> i32 {
        super::wait_until(what, Duration::from_secs(30), || {
            std::fs::read_to_string(&self.hang_pid)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|p| is_alive(*p))
        })
    }
}
