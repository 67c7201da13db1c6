//! Processes the tests start (programs the updater must stop and restart), found by their
//! unique `comm` in /proc and always killed by pid at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

/// Process state letter from /proc/<pid>/stat (`None` when it is gone).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Living processes whose `comm` is exactly `name`.
pub fn pids_named(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end_matches('\n') == name && is_alive(pid) {
            out.push(pid);
        }
    }
    out.sort();
    out
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
            for pid in pids_named(n) {
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
/// `marker` is appended to that file when the script starts.
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
    if ignore_term {
        t.push_str("trap '' TERM\n");
    }
    if let Some(log) = start_log {
        t.push_str(&format!("echo '{marker}' >> '{}'\n", log.display()));
    }
    t.push_str("while :; do sleep 1; done\n");
    t.into_bytes()
}
