//! systemd's notification socket as the tests play it (docs/API.md 9.4 and the shipped
//! unit's `Type=notify`): the unix datagram socket named in `NOTIFY_SOCKET`, every datagram
//! kept in arrival order.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wait_until;

/// One notification datagram and when it arrived.
#[derive(Debug, Clone)]
pub struct Note {
    pub at: Instant,
    pub text: String,
}

/// The test's side of NOTIFY_SOCKET: every datagram, in arrival order.
pub struct NotifySocket {
    pub path: PathBuf,
    notes: Arc<Mutex<Vec<Note>>>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink = notes.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push(Note {
                    at: Instant::now(),
                    text,
                });
            }
        });
        NotifySocket { path, notes }
    }

    /// Every `KEY=value` assignment received so far, with its arrival time.
    pub fn assignments(&self) -> Vec<(Instant, String)> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .flat_map(|n| {
                n.text
                    .lines()
                    .map(|l| (n.at, l.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn count(&self, line: &str, since: Instant) -> usize {
        self.assignments()
            .iter()
            .filter(|(at, l)| l == line && *at >= since)
            .count()
    }

    pub fn statuses(&self) -> Vec<String> {
        self.assignments()
            .into_iter()
            .filter_map(|(_, l)| l.strip_prefix("STATUS=").map(str::to_string))
            .collect()
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        wait_until(what, timeout, || {
            self.assignments()
                .into_iter()
                .map(|(_, l)| l)
                .find(|l| f(l))
        })
    }
}
