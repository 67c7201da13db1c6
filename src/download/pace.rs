//! When a download makes its position durable while it streams (docs/API.md 9.7), as a pure
//! decision over the time given: the first 5 % step after the transfer starts or resumes at
//! once, so a power cut soon after it never sends it back to where it began; after that at
//! most once every [`CHECKPOINT_EVERY`], once a new 5 % step or [`CHECKPOINT_MIN_BYTES`]
//! arrived since the last checkpoint. So a power cut loses at most about 2 s of download (on a
//! link slower than 512 KiB/s, the time 1 MiB or a 5 % step takes).
//!
//! Each checkpoint is an `fdatasync` of the package and `state.json` written, fsynced and
//! renamed with its directory fsynced. One at every 5 % step, as before, made a 20 MiB package
//! at 1 MiB/s checkpoint every second, which cost more CPU than everything else the updater
//! does for a download besides TLS and MD5. The synchronous checkpoints (end of an attempt,
//! SIGTERM, before a retry) are made whatever the pace, and reported to it.

use std::time::{Duration, Instant};

/// The shortest time between two checkpoints after the first.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// Bytes that make a checkpoint due without a new 5 % step (after [`CHECKPOINT_EVERY`]).
pub(crate) const CHECKPOINT_MIN_BYTES: u64 = 1 << 20;

/// The last checkpoint of one transfer, and whether the first 5 % step is still ahead.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointPace {
    step: u8,
    bytes: u64,
    at: Instant,
    first: bool,
}

impl CheckpointPace {
    /// A transfer that starts (or resumes) at `bytes`, at the 5 % step `step`.
    pub(crate) fn new(step: u8, bytes: u64, now: Instant) -> CheckpointPace {
        CheckpointPace {
            step,
            bytes,
            at: now,
            first: true,
        }
    }

    /// `bytes` arrived (the 5 % step of the progress is `step`): whether a checkpoint is due
    /// now. When it is, it counts as made.
    pub(crate) fn due(&mut self, step: u8, bytes: u64, now: Instant) -> bool {
        let new_step = step != self.step;
        let due = if self.first {
            new_step
        } else {
            now.saturating_duration_since(self.at) >= CHECKPOINT_EVERY
                && (new_step || bytes.saturating_sub(self.bytes) >= CHECKPOINT_MIN_BYTES)
        };
        if due {
            self.made(step, bytes, now);
        }
        due
    }

    /// A checkpoint of `bytes` was made (a synchronous one too: the end of an attempt, a
    /// restart from byte 0).
    pub(crate) fn made(&mut self, step: u8, bytes: u64, now: Instant) {
        self.step = step;
        self.bytes = bytes;
        self.at = now;
        self.first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// docs/API.md 9.7: 20 MiB at 1 MiB/s (a 5 % step every second) makes its first
    /// checkpoint at the first step, then one every 2 s: 10, not 20.
    #[test]
    fn api_9_7_one_checkpoint_every_2_s_after_the_first_step() {
        let t0 = Instant::now();
        let mut pace = CheckpointPace::new(0, 0, t0);
        let mut made = Vec::new();
        // Every 100 ms, 100 KiB more.
        for tick in 1..=200u64 {
            let bytes = tick * MIB / 10;
            let step = (bytes * 100 / (20 * MIB) / 5 * 5) as u8;
            if pace.due(step, bytes, t0 + Duration::from_millis(100 * tick)) {
                made.push(tick);
            }
        }
        assert_eq!(
            made.first(),
            Some(&10),
            "the first step (1 MiB, 1 s) at once: {made:?}"
        );
        assert_eq!(made.len(), 10, "{made:?}");
        for w in made.windows(2) {
            assert!(w[1] - w[0] >= 20, "2 s apart at least: {made:?}");
        }
    }

    /// Without a new step, 1 MiB and 2 s are both needed; a new step alone waits for the 2 s.
    #[test]
    fn bytes_and_time_between_steps() {
        let t0 = Instant::now();
        let mut pace = CheckpointPace::new(10, 0, t0);
        assert!(
            pace.due(15, 1000, t0 + Duration::from_millis(10)),
            "first step"
        );
        let t1 = t0 + Duration::from_millis(10);
        assert!(
            !pace.due(20, 2000, t1 + Duration::from_millis(1999)),
            "a step within 2 s"
        );
        assert!(
            !pace.due(15, 1000 + MIB - 1, t1 + Duration::from_secs(5)),
            "< 1 MiB, no step"
        );
        assert!(
            pace.due(15, 1000 + MIB, t1 + Duration::from_secs(5)),
            "1 MiB after 2 s"
        );
        let t2 = t1 + Duration::from_secs(5);
        assert!(
            pace.due(20, 1000 + MIB + 1, t2 + Duration::from_secs(2)),
            "a step after 2 s"
        );
    }

    /// A synchronous checkpoint (before a retry, after a restart from 0) counts: the next one
    /// waits 2 s after it, and the first-step rule is spent.
    #[test]
    fn a_synchronous_checkpoint_restarts_the_clock() {
        let t0 = Instant::now();
        let mut pace = CheckpointPace::new(0, 0, t0);
        pace.made(0, 0, t0 + Duration::from_secs(1));
        assert!(!pace.due(5, MIB, t0 + Duration::from_millis(2500)));
        assert!(pace.due(5, MIB, t0 + Duration::from_secs(3)));
    }
}
