//! The live connections of the API server: where each one is, which one to close to make
//! room, and the counts behind the periodic warning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Limits, WARN_EVERY};
use crate::sync::lock;

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being read or answered.
    Busy,
    /// Between requests, nothing received yet.
    Idle,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) phase: Phase,
    /// When the phase began.
    since: Instant,
    /// When the last request was answered (the accept time before that).
    last_done: Instant,
    /// Whether any request was answered on this connection.
    served: bool,
}

impl Timing {
    pub(super) fn deadline(&self, l: &Limits) -> Instant {
        self.since
            + match self.phase {
                Phase::Head => l.head,
                // The service's own timeout ends the request; this is a backstop.
                Phase::Busy => l.request + Duration::from_secs(1),
                Phase::Idle => l.idle,
            }
    }
}

/// One live connection, shared by its task, its I/O, its service and the registry.
pub(super) struct Conn {
    pub(super) id: u64,
    timing: Mutex<Timing>,
    /// Notified when the registry closes this connection to make room.
    pub(super) close: Notify,
}

impl Conn {
    pub(super) fn new(id: u64) -> Conn {
        let now = Instant::now();
        Conn {
            id,
            timing: Mutex::new(Timing {
                phase: Phase::Head,
                since: now,
                last_done: now,
                served: false,
            }),
            close: Notify::new(),
        }
    }

    pub(super) fn timing(&self) -> Timing {
        *lock(&self.timing)
    }

    /// Bytes arrived: on an idle connection they start the next request head.
    pub(super) fn on_bytes(&self) {
        let mut t = lock(&self.timing);
        if t.phase == Phase::Idle {
            t.phase = Phase::Head;
            t.since = Instant::now();
        }
    }

    pub(super) fn request_started(&self) {
        let mut t = lock(&self.timing);
        t.phase = Phase::Busy;
        t.since = Instant::now();
    }

    pub(super) fn request_done(&self) {
        let mut t = lock(&self.timing);
        let now = Instant::now();
        t.phase = Phase::Idle;
        t.since = now;
        t.last_done = now;
        t.served = true;
    }
}

/// The connection to close to make room, if any: no request in progress; those that never
/// completed a request before those that did; the oldest first.
fn pick_victim(conns: impl Iterator<Item = (u64, Timing)>) -> Option<u64> {
    conns
        .filter(|(_, t)| t.phase != Phase::Busy)
        .min_by_key(|(id, t)| (t.served, t.last_done, *id))
        .map(|(id, _)| id)
}

/// Counts shown in the periodic warning.
#[derive(Debug, Default)]
struct Pressure {
    evicted: u64,
    refused: u64,
    timed_out: u64,
    accept_errors: u64,
    last_accept_error: Option<String>,
    last_warning: Option<Instant>,
}

pub(super) enum Event {
    Evicted,
    Refused,
    TimedOut,
    AcceptError(String),
}

/// The live connections.
pub(super) struct Registry {
    pub(super) limits: Limits,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    pressure: Mutex<Pressure>,
}

impl Registry {
    pub(super) fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            conns: Mutex::new(HashMap::new()),
            pressure: Mutex::new(Pressure::default()),
        }
    }

    /// Register a new connection, closing another one at the cap. `false`: every connection
    /// is busy, the newcomer must be closed.
    pub(super) fn admit(&self, conn: Arc<Conn>) -> bool {
        let mut conns = lock(&self.conns);
        let event = if conns.len() < self.limits.max_connections {
            None
        } else if Self::evict_locked(&mut conns) {
            Some(Event::Evicted)
        } else {
            Some(Event::Refused)
        };
        let admitted = !matches!(event, Some(Event::Refused));
        if admitted {
            conns.insert(conn.id, conn);
        }
        drop(conns);
        if let Some(ev) = event {
            self.note(ev);
        }
        admitted
    }

    /// Close the connection [`pick_victim`] chooses; whether there was one.
    fn evict_locked(conns: &mut HashMap<u64, Arc<Conn>>) -> bool {
        let Some(id) = pick_victim(conns.iter().map(|(id, c)| (*id, c.timing()))) else {
            return false;
        };
        match conns.remove(&id) {
            Some(victim) => {
                victim.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Close the connection [`pick_victim`] chooses (descriptors ran out). Whether one was.
    pub(super) fn evict_one(&self) -> bool {
        let evicted = Self::evict_locked(&mut lock(&self.conns));
        if evicted {
            self.note(Event::Evicted);
        }
        evicted
    }

    pub(super) fn remove(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    pub(super) fn note(&self, ev: Event) {
        let mut p = lock(&self.pressure);
        match ev {
            Event::Evicted => p.evicted += 1,
            Event::Refused => p.refused += 1,
            Event::TimedOut => p.timed_out += 1,
            Event::AcceptError(e) => {
                p.accept_errors += 1;
                p.last_accept_error = Some(e);
            }
        }
        let due = p.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due {
            drop(p);
            self.warn_now();
        }
    }

    /// The periodic check: log what happened since the last warning, once it is old enough.
    pub(super) fn report_if_due(&self) {
        let due = lock(&self.pressure)
            .last_warning
            .is_some_and(|t| t.elapsed() >= WARN_EVERY);
        if due {
            self.warn_now();
        }
    }

    /// Log what happened since the last warning, if anything did.
    fn warn_now(&self) {
        let mut p = lock(&self.pressure);
        if p.evicted + p.refused + p.timed_out + p.accept_errors == 0 {
            return;
        }
        let open = lock(&self.conns).len();
        tracing::warn!(
            "API connections: {open} open (limit {}); since the last report {} closed to make \
             room, {} refused (all busy), {} closed for not sending a request within {} s or \
             idling {} s, {} accept errors{}",
            self.limits.max_connections,
            p.evicted,
            p.refused,
            p.timed_out,
            self.limits.head.as_secs(),
            self.limits.idle.as_secs(),
            p.accept_errors,
            p.last_accept_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
        *p = Pressure {
            last_warning: Some(Instant::now()),
            ..Pressure::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victim_is_the_oldest_connection_without_a_request_in_progress() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let timing = |phase, last_done, served| Timing {
            phase,
            since: last_done,
            last_done,
            served,
        };
        let conns = [
            (1, timing(Phase::Busy, at(0), false)),
            (2, timing(Phase::Idle, at(1), true)),
            (3, timing(Phase::Head, at(5), false)),
            (4, timing(Phase::Head, at(3), false)),
        ];
        // Never-served first, oldest first, busy never.
        assert_eq!(pick_victim(conns.iter().map(|(i, t)| (*i, *t))), Some(4));
        assert_eq!(
            pick_victim(conns[..3].iter().map(|(i, t)| (*i, *t))),
            Some(3)
        );
        assert_eq!(
            pick_victim(conns[..2].iter().map(|(i, t)| (*i, *t))),
            Some(2)
        );
        assert_eq!(pick_victim(conns[..1].iter().map(|(i, t)| (*i, *t))), None);
    }
}
