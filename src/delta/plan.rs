//! Pure planning of a delta download (docs/API.md 9.5): the byte span of every ZIP entry and
//! the few requests that cover the entries to fetch.

use serde::{Deserialize, Serialize};

/// Bytes `[start, end)` of the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
    pub fn contains(&self, other: &Span) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

/// Two entries to fetch closer than this are fetched by one request (the bytes between them
/// cost less than another request's round trip).
pub const COALESCE_GAP: u64 = 16 * 1024;

/// Each entry's bytes: from its local header to the next entry's local header, the last one to
/// the central directory (so a data descriptor is included). `starts` are `(index, local header
/// offset)`; `None` when two entries start at the same offset or one starts at or beyond the
/// central directory (the full download then applies every rule).
pub fn entry_spans(starts: &[(usize, u64)], cd_offset: u64) -> Option<Vec<(usize, Span)>> {
    let mut sorted = starts.to_vec();
    sorted.sort_by_key(|&(_, s)| s);
    let mut out = Vec::with_capacity(sorted.len());
    for (i, &(index, start)) in sorted.iter().enumerate() {
        let end = sorted.get(i + 1).map_or(cd_offset, |&(_, next)| next);
        if end <= start {
            return None;
        }
        out.push((index, Span { start, end }));
    }
    Some(out)
}

/// The spans sorted and merged where they touch or lie within `gap` bytes of each other.
pub fn coalesce(mut spans: Vec<Span>, gap: u64) -> Vec<Span> {
    spans.sort_by_key(|s| s.start);
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(s.end);
            }
            _ => out.push(s),
        }
    }
    out
}

/// A set of spans answering "does one of them contain this span?" in O(log n).
pub struct Cover {
    starts: Vec<u64>,
    /// The largest end among the spans up to each index (sorted by start).
    max_end: Vec<u64>,
}

impl Cover {
    pub fn new(spans: impl IntoIterator<Item = Span>) -> Cover {
        let mut sorted: Vec<Span> = spans.into_iter().collect();
        sorted.sort_by_key(|s| s.start);
        let mut max_end = Vec::with_capacity(sorted.len());
        let mut m = 0;
        for s in &sorted {
            m = m.max(s.end);
            max_end.push(m);
        }
        Cover {
            starts: sorted.iter().map(|s| s.start).collect(),
            max_end,
        }
    }

    /// Whether one span contains `s` whole: among the spans starting at or before it, the one
    /// reaching furthest must reach its end.
    pub fn contains(&self, s: &Span) -> bool {
        let n = self.starts.partition_point(|&start| start <= s.start);
        n > 0 && self.max_end[n - 1] >= s.end
    }
}

/// `done * size / total`: the share of the bytes that must cross the network, expressed in the
/// package's bytes, so `/progress` goes from 0 to 100 over a delta as over a full download.
pub fn scaled(done: u64, total: u64, size: u64) -> u64 {
    if total == 0 {
        return size;
    }
    (u128::from(done.min(total)) * u128::from(size) / u128::from(total)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start: u64, end: u64) -> Span {
        Span { start, end }
    }

    #[test]
    fn every_entry_runs_to_the_next_header_or_the_directory() {
        let spans = entry_spans(&[(2, 50), (0, 0), (1, 10)], 90).unwrap();
        assert_eq!(spans, vec![(0, s(0, 10)), (1, s(10, 50)), (2, s(50, 90))]);
        assert_eq!(entry_spans(&[(0, 0), (1, 0)], 90), None);
        assert_eq!(entry_spans(&[(0, 0), (1, 90)], 90), None);
    }

    /// docs/API.md 9.5: nearby ranges become few requests.
    #[test]
    fn nearby_spans_are_merged_far_ones_are_not() {
        let merged = coalesce(vec![s(100, 200), s(0, 10), s(10, 20), s(250, 300)], 50);
        assert_eq!(merged, vec![s(0, 20), s(100, 300)]);
        assert_eq!(coalesce(vec![s(0, 10), s(100, 110)], 50).len(), 2);
    }

    #[test]
    fn a_cover_finds_the_span_holding_an_entry() {
        let c = Cover::new(vec![s(100, 200), s(0, 50), s(120, 130)]);
        assert!(c.contains(&s(0, 50)) && c.contains(&s(10, 20)) && c.contains(&s(150, 200)));
        assert!(!c.contains(&s(40, 60)) && !c.contains(&s(60, 70)) && !c.contains(&s(190, 210)));
        assert!(!Cover::new(Vec::new()).contains(&s(0, 1)));
    }

    #[test]
    fn progress_is_scaled_to_the_package() {
        assert_eq!(scaled(0, 50, 1000), 0);
        assert_eq!(scaled(25, 50, 1000), 500);
        assert_eq!(scaled(50, 50, 1000), 1000);
        assert_eq!(scaled(u64::MAX, u64::MAX, u64::MAX), u64::MAX);
    }
}
