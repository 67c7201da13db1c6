//! The two bounds of docs/API.md 8.1 as plain values: how many failed attempts a download may
//! make without progress ([`RetryBudget`]), and when an attempt is stalled ([`StallWindow`]).
//! No I/O and no clock of their own: the caller passes the time in, so every rule is tested
//! without a network.

use std::time::{Duration, Instant};

/// Waits before the 2nd, 3rd and 4th attempt; after the 4th failed attempt in a row the
/// download fails.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Attempts in a row without progress before the download fails: the first and one per wait.
pub const ATTEMPTS: usize = BACKOFF.len() + 1;

/// How far an attempt must raise the best durable position to count as progress.
pub const PROGRESS_BYTES: u64 = 1 << 20;

/// The window of the stall rule: an attempt that receives fewer than [`STALL_MIN_BYTES`] in
/// any window of this length is abandoned.
pub const STALL_WINDOW: Duration = Duration::from_secs(60);

/// Bytes an attempt must receive in every [`STALL_WINDOW`].
pub const STALL_MIN_BYTES: u64 = 64 * 1024;

/// How often the stall rule is evaluated (its time resolution).
pub const STALL_TICK: Duration = Duration::from_secs(1);

/// The retry budget. It is reset only by an attempt that raised the highest durable byte
/// position reached so far by at least [`PROGRESS_BYTES`]; an attempt that started over from
/// byte 0 and got back to (or a little past) where an earlier one was makes no progress. So a
/// server that keeps cutting, ignores `Range` or lies in `Content-Range` uses the budget up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    /// The highest durable byte position reached so far.
    best: u64,
    /// Failed attempts since the last reset.
    failures: usize,
}

impl RetryBudget {
    /// A budget for a download whose durable position is `durable` bytes (a resume starts
    /// above 0: only bytes beyond it are progress).
    pub fn new(durable: u64) -> RetryBudget {
        RetryBudget {
            best: durable,
            failures: 0,
        }
    }

    /// An attempt failed with `durable` bytes on disk (fsynced): how long to wait before the
    /// next one, or `None` when the budget is spent and the download fails.
    pub fn after_failure(&mut self, durable: u64) -> Option<Duration> {
        if durable >= self.best.saturating_add(PROGRESS_BYTES) {
            self.failures = 0;
        }
        self.best = self.best.max(durable);
        let wait = BACKOFF.get(self.failures).copied();
        self.failures += 1;
        wait
    }

    /// Failed attempts in a row without progress (the count the budget is spent at is
    /// [`ATTEMPTS`]).
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// The highest durable position reached so far.
    pub fn best(&self) -> u64 {
        self.best
    }
}

/// Samples kept: one per tick, enough to look one whole window back.
const SAMPLES: usize = 64;

/// The stall rule of one attempt: fewer than [`STALL_MIN_BYTES`] received in any
/// [`STALL_WINDOW`] means stalled.
///
/// Cheap on the receive path: [`StallWindow::add`] is one addition per chunk. Once per
/// [`STALL_TICK`] the caller calls [`StallWindow::tick`] (also when nothing arrives), which
/// records `(time, total)` in a small ring and compares the total with the one recorded a
/// window earlier. A window is measured from the newest sample at least [`STALL_WINDOW`] old,
/// so it spans the window plus at most one tick: a link that keeps the rule is never called
/// stalled, one that breaks it is caught within a tick.
#[derive(Debug, Clone)]
pub struct StallWindow {
    window: Duration,
    min_bytes: u64,
    /// Bytes received by this attempt.
    total: u64,
    /// `(time, total at that time)`, oldest first from `head`; the attempt's start is the
    /// first sample.
    ring: [(Instant, u64); SAMPLES],
    head: usize,
    len: usize,
}

/// Why an attempt was found stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// Bytes received in the window.
    pub received: u64,
    /// The window's length.
    pub over: Duration,
}

impl StallWindow {
    /// The contract's rule for an attempt that starts at `start`.
    pub fn new(start: Instant) -> StallWindow {
        StallWindow::with_rule(start, STALL_WINDOW, STALL_MIN_BYTES)
    }

    pub fn with_rule(start: Instant, window: Duration, min_bytes: u64) -> StallWindow {
        StallWindow {
            window,
            min_bytes,
            total: 0,
            ring: [(start, 0); SAMPLES],
            head: 0,
            len: 1,
        }
    }

    /// `n` bytes arrived (every chunk: one addition).
    #[inline]
    pub fn add(&mut self, n: u64) {
        self.total += n;
    }

    /// Evaluate the rule at `now` (call it about once per [`STALL_TICK`]).
    pub fn tick(&mut self, now: Instant) -> Result<(), Stalled> {
        // The newest sample at least one window old is the window's start.
        let mut start: Option<(Instant, u64)> = None;
        let mut drop = 0;
        for i in 0..self.len {
            let s = self.ring[(self.head + i) % SAMPLES];
            if now.saturating_duration_since(s.0) >= self.window {
                start = Some(s);
                // Older samples than this one are no longer needed.
                drop = i;
            } else {
                break;
            }
        }
        self.head = (self.head + drop) % SAMPLES;
        self.len -= drop;
        let verdict = match start {
            Some((at, bytes)) if self.total - bytes < self.min_bytes => Err(Stalled {
                received: self.total - bytes,
                over: now.saturating_duration_since(at),
            }),
            _ => Ok(()),
        };
        if self.len == SAMPLES {
            // Ticks came faster than the ring holds a window: forget the oldest.
            self.head = (self.head + 1) % SAMPLES;
            self.len -= 1;
        }
        self.ring[(self.head + self.len) % SAMPLES] = (now, self.total);
        self.len += 1;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn spend(b: &mut RetryBudget, at: u64) -> Vec<Option<u64>> {
        (0..ATTEMPTS)
            .map(|_| b.after_failure(at).map(|d| d.as_secs()))
            .collect()
    }

    #[test]
    fn contract_8_1_four_attempts_then_spent() {
        let mut b = RetryBudget::new(0);
        assert_eq!(spend(&mut b, 0), [Some(1), Some(2), Some(4), None]);
        assert_eq!(b.failures(), ATTEMPTS);
    }

    #[test]
    fn contract_8_1_a_mebibyte_beyond_the_best_resets_the_budget() {
        let mut b = RetryBudget::new(0);
        assert_eq!(b.after_failure(0), Some(BACKOFF[0]));
        assert_eq!(b.after_failure(MIB / 2), Some(BACKOFF[1]));
        assert_eq!(b.after_failure(MIB / 2), Some(BACKOFF[2]));
        // 1 MiB beyond the best (MIB / 2): progress, the count starts again.
        assert_eq!(b.after_failure(MIB / 2 + MIB), Some(BACKOFF[0]));
        assert_eq!(b.best(), MIB / 2 + MIB);
        assert_eq!(b.failures(), 1);
    }

    #[test]
    fn contract_8_1_less_than_a_mebibyte_per_attempt_is_no_progress() {
        // A server that cuts every body after 512 KiB: the position grows, the budget is spent.
        let mut b = RetryBudget::new(0);
        let waits: Vec<_> = (1..=ATTEMPTS as u64)
            .map(|i| b.after_failure(i * MIB / 2))
            .collect();
        assert_eq!(
            waits,
            [Some(BACKOFF[0]), Some(BACKOFF[1]), Some(BACKOFF[2]), None]
        );
    }

    #[test]
    fn contract_8_1_restart_from_zero_is_never_progress() {
        // The first attempt got to 3 MiB (progress from 0); every later one started over from
        // byte 0 (200 to a Range) and was cut at the same place.
        let mut b = RetryBudget::new(0);
        assert_eq!(b.after_failure(3 * MIB), Some(BACKOFF[0]));
        assert_eq!(b.after_failure(0), Some(BACKOFF[1]));
        assert_eq!(b.after_failure(3 * MIB), Some(BACKOFF[2]));
        assert_eq!(b.after_failure(3 * MIB), None);
        assert_eq!(b.best(), 3 * MIB);
    }

    #[test]
    fn contract_8_1_a_resume_counts_only_bytes_beyond_its_start() {
        let mut b = RetryBudget::new(10 * MIB);
        assert_eq!(b.after_failure(10 * MIB + MIB - 1), Some(BACKOFF[0]));
        assert_eq!(b.after_failure(10 * MIB + 2 * MIB), Some(BACKOFF[0]));
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn contract_8_1_trickle_below_64_kib_a_minute_is_stalled() {
        let t0 = Instant::now();
        let mut w = StallWindow::new(t0);
        // A few bytes every 25 s (below the read timeout), ticks every second.
        for s in 1..=61 {
            if s % 25 == 0 {
                w.add(10);
            }
            let r = w.tick(secs(t0, s));
            if s < 60 {
                assert_eq!(r, Ok(()), "at {s} s");
            } else {
                let st = r.expect_err("stalled after a whole window");
                assert_eq!(st.received, 20);
                assert!(st.over >= STALL_WINDOW);
                return;
            }
        }
    }

    #[test]
    fn contract_8_1_steady_10_kib_per_second_is_never_stalled() {
        let t0 = Instant::now();
        let mut w = StallWindow::new(t0);
        for ms in (100..=600_000u64).step_by(100) {
            w.add(1024);
            if ms % 1000 == 0 {
                let now = t0 + Duration::from_millis(ms);
                assert_eq!(w.tick(now), Ok(()), "at {ms} ms");
            }
        }
    }

    #[test]
    fn contract_8_1_any_window_counts_not_only_the_first() {
        let t0 = Instant::now();
        let mut w = StallWindow::new(t0);
        // Fast for 2 minutes, then silence: stalled one window after the last byte.
        for s in 1..=120 {
            w.add(100 * 1024);
            assert_eq!(w.tick(secs(t0, s)), Ok(()));
        }
        for s in 121..=179 {
            assert_eq!(w.tick(secs(t0, s)), Ok(()), "at {s} s");
        }
        // The window that starts at the sample of second 120 (the last bytes) is empty.
        let st = w.tick(secs(t0, 180)).expect_err("stalled");
        assert_eq!(st.received, 0);
    }

    #[test]
    fn contract_8_1_bursts_that_keep_the_rule_are_not_stalled() {
        let t0 = Instant::now();
        let mut w = StallWindow::new(t0);
        // 64 KiB at once every 50 s: every 60 s window holds a burst.
        for s in 1..=600 {
            if s % 50 == 0 {
                w.add(STALL_MIN_BYTES);
            }
            assert_eq!(w.tick(secs(t0, s)), Ok(()), "at {s} s");
        }
    }

    #[test]
    fn late_or_missed_ticks_measure_the_real_window() {
        let t0 = Instant::now();
        let mut w = StallWindow::new(t0);
        // The receive path was blocked (disk): the first tick comes after 90 s, with 100 KiB
        // received since the start: over 90 s that keeps the rule.
        w.add(100 * 1024);
        assert_eq!(w.tick(secs(t0, 90)), Ok(()));
        // Nothing more: the next tick a window later finds the window empty.
        let st = w.tick(secs(t0, 150)).expect_err("stalled");
        assert_eq!(st.received, 0);
        assert_eq!(st.over, Duration::from_secs(60));
    }

    #[test]
    fn fast_ticks_never_overflow_the_ring() {
        let t0 = Instant::now();
        let mut w = StallWindow::new(t0);
        for ms in 1..=5_000u64 {
            w.add(1);
            assert_eq!(w.tick(t0 + Duration::from_millis(ms * 10)), Ok(()));
        }
    }
}
