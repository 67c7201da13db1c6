//! Every descendant of a step (a `post_cmd`, a `health_cmd` run) ends with the step, including those that left its process group or session (`setsid`, a double fork).
//!
//! A step's processes are found in `/proc` (docs/ARCHITECTURE.md, "Containing steps"):
//!
//! - the tree under the step's first process, by parent pid;
//! - every process seen in that tree earlier: while the step runs its tree is walked every
//!   [`TRACK_PERIOD`], so a process whose parent exits later is still known;
//! - every process whose environment holds the step's marker ([`STEP_VAR`]`=<unique id>`): a
//!   descendant whose parent exited before it was seen (it was reparented to init) still
//!   carries it. Only processes started after the step's first process are read;
//! - the step's process group (what is left of it), and the trees under all of the above.
//!
//! No cgroup is needed (printers run cgroup v1, hybrid or v2 hierarchies, and a container may
//! not delegate one), and the updater never becomes a subreaper, so no orphan is ever its
//! child: it reaps only the processes it started, and detached starts stay untouched.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The variable that marks every process of one step (docs/API.md 9.6).
pub const STEP_VAR: &str = "TOPE_STEP_ID";
/// How often a running step's process tree is walked.
const TRACK_PERIOD: Duration = Duration::from_millis(250);
/// An environment larger than this is not read further (the marker is looked for in the part
/// read; the updater puts it among the first variables).
const ENVIRON_MAX: u64 = 1 << 20;

/// One line of `/proc/<pid>/stat`, the fields used here.
#[derive(Debug, Clone, Copy)]
struct Stat {
    pid: i32,
    ppid: i32,
    pgid: i32,
    /// Clock ticks after boot: with the pid, names the process (a reused pid has another).
    start: u64,
    zombie: bool,
}

/// Parse `/proc/<pid>/stat` (the name in parentheses may hold anything, `)` included).
fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        pid,
        zombie: matches!(*f.first()?, "Z" | "X"),
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Every process in `/proc` (those that vanish while reading are left out).
fn table() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        read_stat(pid)
    })
    .collect()
}

/// Whether `pid`'s environment holds exactly the entry `entry` (`VAR=value`).
fn environ_has(pid: i32, entry: &[u8]) -> bool {
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut buf = Vec::new();
    if f.take(ENVIRON_MAX).read_to_end(&mut buf).is_err() {
        return false;
    }
    buf.split(|b| *b == 0).any(|e| e == entry)
}

/// A marker no other step of any updater run takes: the updater's pid, its start and a count.
pub fn new_marker() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{boot:x}-{n}", std::process::id())
}

/// The processes of one running step (see the module documentation).
pub struct Step {
    root: i32,
    /// `None` when the first process was gone before it could be read (then only its group,
    /// the marker and nothing by pid are used).
    root_start: Option<u64>,
    entry: Vec<u8>,
    known: HashSet<(i32, u64)>,
    tracked: Instant,
}

impl Step {
    /// The step whose first process is `root` (a process group leader), its environment
    /// holding [`STEP_VAR`]`=marker`.
    pub fn begin(root: i32, marker: &str) -> Step {
        let root_start = read_stat(root).map(|s| s.start);
        Step {
            root,
            root_start,
            entry: format!("{STEP_VAR}={marker}").into_bytes(),
            known: HashSet::new(),
            tracked: Instant::now(),
        }
    }

    /// While the step runs: remember its tree, at most every [`TRACK_PERIOD`].
    pub fn track(&mut self) {
        if self.tracked.elapsed() < TRACK_PERIOD {
            return;
        }
        self.tracked = Instant::now();
        // The known ones still there are among those found: the set never outgrows the step.
        let found = self.members(&table(), false);
        self.known = found.iter().map(|s| (s.pid, s.start)).collect();
    }

    /// The step's processes in `procs` (zombies included); `environ`: also look for the marker.
    fn members(&self, procs: &[Stat], environ: bool) -> Vec<Stat> {
        let me = std::process::id() as i32;
        let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
        for (i, p) in procs.iter().enumerate() {
            children.entry(p.ppid).or_default().push(i);
        }
        let is_root = |p: &Stat| p.pid == self.root && Some(p.start) == self.root_start;
        // The group id is the step's as long as no other process took the root's pid (the
        // kernel gives a pid out again only once no process uses it as a pid or group id).
        let group_ours = !procs.iter().any(|p| p.pid == self.root && !is_root(p));
        let started_since = |p: &Stat| self.root_start.is_some_and(|s| p.start >= s);
        let mut queue: Vec<usize> = procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.pid != me && p.pid != 1)
            .filter(|(_, p)| {
                is_root(p)
                    || (group_ours && p.pgid == self.root)
                    || self.known.contains(&(p.pid, p.start))
                    || (environ && !p.zombie && started_since(p) && environ_has(p.pid, &self.entry))
            })
            .map(|(i, _)| i)
            .collect();
        let mut seen: HashSet<usize> = queue.iter().copied().collect();
        while let Some(i) = queue.pop() {
            for &c in children
                .get(&procs[i].pid)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                if procs[c].pid != me && seen.insert(c) {
                    queue.push(c);
                }
            }
        }
        seen.into_iter().map(|i| procs[i]).collect()
    }

    /// The step's processes still running (zombies are over: their parent reaps them).
    fn living(&self) -> Vec<Stat> {
        let mut v: Vec<Stat> = self
            .members(&table(), true)
            .into_iter()
            .filter(|p| !p.zombie)
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// End the step: reap `child` (its first process; `reaped`: already done) and stop every
    /// process of the step: SIGTERM, up to `grace` for them to end, SIGKILL, up to `confirm`.
    /// Returns whether none is left. `what` names the step in the log.
    pub fn end(
        &mut self,
        child: &mut Child,
        mut reaped: bool,
        what: &str,
        grace: Duration,
        confirm: Duration,
        poll: Duration,
    ) -> bool {
        let mut reap = |reaped: &mut bool| {
            if !*reaped {
                // An error means there is nothing left to reap.
                *reaped = !matches!(child.try_wait(), Ok(None));
            }
        };
        let group = Pid::from_raw(self.root);
        let mut left = self.living();
        if reaped && left.is_empty() {
            return true;
        }
        if reaped {
            let pids: Vec<i32> = left.iter().map(|p| p.pid).collect();
            tracing::warn!("{what} left processes behind ({pids:?}): stopping them");
        }
        for (sig, wait) in [(Signal::TERM, grace), (Signal::KILL, confirm)] {
            let mut signalled: HashSet<(i32, u64)> = HashSet::new();
            // The group id is the step's while its first process is not reaped or a member
            // of the group is left.
            if !reaped || left.iter().any(|p| p.pgid == self.root) {
                if let Some(g) = group {
                    let _ = rustix::process::kill_process_group(g, sig);
                }
            }
            let until = Instant::now() + wait;
            loop {
                for p in &left {
                    // A process found since the last round gets the signal too; SIGKILL is
                    // repeated (harmless) for one that was stopped or is being traced.
                    if signalled.insert((p.pid, p.start)) || sig == Signal::KILL {
                        if let Some(pid) = Pid::from_raw(p.pid) {
                            let _ = rustix::process::kill_process(pid, sig);
                        }
                    }
                }
                std::thread::sleep(poll);
                reap(&mut reaped);
                left = self.living();
                if reaped && left.is_empty() {
                    return true;
                }
                if Instant::now() >= until {
                    break;
                }
            }
        }
        let pids: Vec<i32> = left.iter().map(|p| p.pid).collect();
        tracing::error!("processes of {what} survived SIGKILL: {pids:?}");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1 2";
        let s = parse_stat(42, line).unwrap();
        assert_eq!((s.ppid, s.pgid, s.start, s.zombie), (7, 42, 12345, false));
        let z = "9 (x) Z 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert!(parse_stat(9, z).unwrap().zombie);
        assert!(parse_stat(1, "1 (init) S 0").is_none());
        assert!(parse_stat(1, "no parenthesis").is_none());
    }

    #[test]
    fn api_9_6_a_descendant_without_the_marker_seen_in_the_tree_is_ended_too() {
        use super::super::tests::named_sleep;
        use std::sync::atomic::AtomicBool;
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        // The escapee drops the marker and leaves the session; its parent lives long enough
        // for the tree to be looked at, then exits, so at the end only that look knows it.
        let inner = format!(
            "env -u {STEP_VAR} setsid {} 300 >/dev/null 2>&1 & sleep 0.8",
            path.display()
        );
        let argv: Vec<String> = ["sh", "-c", &format!("sh -c '{inner}'; sleep 0.1")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        super::super::run_to_completion(
            &argv,
            &super::super::ChildEnv::tool(),
            Duration::from_secs(10),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert!(super::super::scan(&name).unwrap().is_empty());
    }

    #[test]
    fn markers_are_unique() {
        assert_ne!(new_marker(), new_marker());
    }
}
