//! The sans-IO core of range reads: which bytes of a task are stored outside
//! its committed pieces, which are being fetched, and what a read must fetch
//! (a whole piece from a parent that holds it, else only the missing bytes
//! from the origin), with retry decisions. No clock, no I/O: the caller passes
//! in what the store and the parents hold, and performs the fetches.

use common::piece::piece_range;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Disjoint half-open byte ranges; adjacent ones are merged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Adds `start..end`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        // Ranges are disjoint and sorted, so their ends are sorted too: walking
        // back from the last one starting at or before `end`, stop at the first
        // that ends before `start`.
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, re)| **re >= start)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in touching {
            self.0.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        self.0.insert(s, e);
    }

    /// Removes `start..end`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, re)| **re > start)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in hit {
            self.0.remove(&a);
            if a < start {
                self.0.insert(a, start);
            }
            if b > end {
                self.0.insert(end, b);
            }
        }
    }

    /// The parts of `start..end` not covered, in order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let mut pos = start;
        let from = self
            .0
            .range(..=start)
            .next_back()
            .map(|(a, _)| *a)
            .unwrap_or(start);
        for (&a, &b) in self.0.range(from..end) {
            if b <= pos {
                continue;
            }
            if a > pos {
                out.push((pos, a));
            }
            pos = b;
            if pos >= end {
                break;
            }
        }
        if pos < end {
            out.push((pos, end));
        }
        out
    }

    /// Whether every byte of `start..end` is covered.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.gaps(start, end).is_empty()
    }

    /// Whether some byte of `start..end` is covered.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < end && self.gaps(start, end) != [(start, end)]
    }

    /// Bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }
}

/// One fetch a read needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// The whole piece, from parent number `parent` (as the caller numbers them).
    Piece { number: u32, parent: usize },
    /// Bytes `start..end` from the origin.
    Range { start: u64, end: u64 },
}

/// What a read must do before its bytes can be read from the content file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Fetches this reader performs (each reported back with
    /// [`Planner::range_done`] or [`Planner::piece_done`]).
    pub fetches: Vec<Fetch>,
    /// Some bytes are being fetched by another reader: wait for a change and plan again.
    pub wait: bool,
}

impl Plan {
    /// Every byte is stored: read it.
    pub fn ready(&self) -> bool {
        self.fetches.is_empty() && !self.wait
    }
}

/// Range-read state of one task.
#[derive(Debug)]
pub struct Planner {
    content_length: u64,
    piece_length: u64,
    /// Largest origin range of one fetch.
    max_range: u64,
    /// Bytes stored that belong to pieces not committed yet.
    partial: Ranges,
    pieces_in_flight: BTreeSet<u32>,
    ranges_in_flight: Ranges,
}

impl Planner {
    pub fn new(content_length: u64, piece_length: u64, max_range: u64) -> Planner {
        Planner {
            content_length,
            piece_length: piece_length.max(1),
            max_range: max_range.max(1),
            partial: Ranges::default(),
            pieces_in_flight: BTreeSet::new(),
            ranges_in_flight: Ranges::default(),
        }
    }

    /// Numbers of the pieces holding bytes `start..end` (empty when the range is).
    pub fn pieces(&self, start: u64, end: u64) -> std::ops::Range<u32> {
        let end = end.min(self.content_length);
        if start >= end {
            return 0..0;
        }
        let first = (start / self.piece_length) as u32;
        let last = ((end - 1) / self.piece_length) as u32;
        first..last + 1
    }

    fn piece_bounds(&self, number: u32) -> (u64, u64) {
        let (off, len) = piece_range(number, self.content_length, self.piece_length);
        (off, off + len)
    }

    /// Pieces holding bytes of `start..end` that are neither committed
    /// (`stored`) nor fully present as partial bytes.
    pub fn needed(&self, start: u64, end: u64, stored: impl Fn(u32) -> bool) -> Vec<u32> {
        self.pieces(start, end)
            .filter(|n| !stored(*n))
            .filter(|n| {
                let (ps, pe) = self.piece_bounds(*n);
                !self.partial.covers(start.max(ps), end.min(pe))
            })
            .collect()
    }

    /// What a read of `start..end` needs. `stored(n)`: piece `n` is committed
    /// in the store. `holder(n)`: a parent to fetch piece `n` from, if one
    /// holds it. With `fresh`, parents are not asked (the bytes they gave
    /// failed a check) and only the origin is.
    ///
    /// A piece some parent holds is fetched whole (it is then shared with
    /// other peers at once); otherwise only the missing bytes are fetched from
    /// the origin, adjacent gaps of neighbouring pieces joined into one range
    /// of at most `max_range` bytes. Bytes another reader is fetching are
    /// waited for, never fetched twice.
    pub fn plan(
        &mut self,
        start: u64,
        end: u64,
        stored: impl Fn(u32) -> bool,
        mut holder: impl FnMut(u32) -> Option<usize>,
        fresh: bool,
    ) -> Plan {
        let mut plan = Plan::default();
        let end = end.min(self.content_length);
        let mut origin: Vec<(u64, u64)> = Vec::new();
        for n in self.pieces(start, end) {
            if stored(n) {
                continue;
            }
            let (ps, pe) = self.piece_bounds(n);
            let (s, e) = (start.max(ps), end.min(pe));
            let gaps = self.partial.gaps(s, e);
            if gaps.is_empty() {
                continue;
            }
            if self.pieces_in_flight.contains(&n) {
                plan.wait = true;
                continue;
            }
            // Not while origin bytes of the piece are in flight: the piece's
            // transfer would write over them.
            if !fresh && !self.ranges_in_flight.overlaps(ps, pe) {
                if let Some(parent) = holder(n) {
                    self.pieces_in_flight.insert(n);
                    plan.fetches.push(Fetch::Piece { number: n, parent });
                    continue;
                }
            }
            for (gs, ge) in gaps {
                if self.ranges_in_flight.overlaps(gs, ge) {
                    plan.wait = true;
                }
                origin.extend(self.ranges_in_flight.gaps(gs, ge));
            }
        }
        let mut joined: Vec<(u64, u64)> = Vec::new();
        for (s, e) in origin {
            match joined.last_mut() {
                Some(last) if last.1 == s && e - last.0 <= self.max_range => last.1 = e,
                _ => joined.push((s, e)),
            }
        }
        for (s, e) in joined {
            // A single gap larger than `max_range` is cut into several fetches.
            let mut pos = s;
            while pos < e {
                let to = e.min(pos + self.max_range);
                self.ranges_in_flight.insert(pos, to);
                plan.fetches.push(Fetch::Range {
                    start: pos,
                    end: to,
                });
                pos = to;
            }
        }
        plan
    }

    /// An origin fetch of `start..end` ended. On success its bytes count as
    /// stored; returns the pieces now entirely present, to be committed (then
    /// reported with [`Planner::committed`]).
    pub fn range_done(&mut self, start: u64, end: u64, ok: bool) -> Vec<u32> {
        self.ranges_in_flight.remove(start, end);
        if !ok {
            return Vec::new();
        }
        self.partial.insert(start, end);
        self.pieces(start, end)
            .filter(|n| {
                let (ps, pe) = self.piece_bounds(*n);
                self.partial.covers(ps, pe) && !self.pieces_in_flight.contains(n)
            })
            .collect()
    }

    /// A whole-piece fetch ended (committed by the fetch itself on success).
    pub fn piece_done(&mut self, number: u32) {
        self.pieces_in_flight.remove(&number);
    }

    /// Piece `number` is committed: its bytes are tracked by the store now.
    pub fn committed(&mut self, number: u32) {
        let (ps, pe) = self.piece_bounds(number);
        self.partial.remove(ps, pe);
    }

    /// A committed piece was dropped from the store but its bytes are still in
    /// the content file (all but those about to be forgotten).
    pub fn uncommitted(&mut self, number: u32) {
        let (ps, pe) = self.piece_bounds(number);
        self.partial.insert(ps, pe);
    }

    /// Bytes `start..end` failed a check: they no longer count as stored.
    pub fn forget(&mut self, start: u64, end: u64) {
        self.partial.remove(start, end);
    }

    /// Bytes stored outside committed pieces, to hand to the next planner of the same task.
    pub fn partial(&self) -> &Ranges {
        &self.partial
    }

    /// Starts from the partial bytes a previous planner of the same task knew.
    pub fn with_partial(mut self, partial: Ranges) -> Planner {
        self.partial = partial;
        self
    }

    /// Bytes stored outside committed pieces.
    pub fn partial_bytes(&self) -> u64 {
        self.partial.total()
    }
}

/// Whether a failed fetch is tried again, and after how long: retryable
/// failures back off 100 ms, 200 ms, 400 ms, ... (at most 6.4 s) for
/// `max_retries` attempts (`attempt` counts from 1).
pub fn retry_after(attempt: u32, max_retries: u32, retryable: bool) -> Option<Duration> {
    (retryable && attempt <= max_retries)
        .then(|| Duration::from_millis(100u64 << attempt.saturating_sub(1).min(6)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ranges_merge_split_and_report_gaps() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 25); // adjacent: merged
        assert_eq!(r.gaps(0, 50), vec![(0, 10), (25, 30), (40, 50)]);
        r.remove(12, 14);
        assert_eq!(r.gaps(10, 25), vec![(12, 14)]);
        assert!(r.overlaps(13, 31));
        assert!(!r.overlaps(25, 30));
        assert!(r.covers(30, 40));
        assert_eq!(r.total(), 2 + 11 + 10);
        r.insert(0, 100);
        assert_eq!(r.gaps(0, 100), vec![]);
        assert_eq!(r.total(), 100);
    }

    proptest! {
        #[test]
        fn ranges_agree_with_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..40), 0..40)) {
            let mut r = Ranges::default();
            let mut bits = [false; 240];
            for (add, s, l) in ops {
                if add { r.insert(s, s + l) } else { r.remove(s, s + l) }
                for b in &mut bits[s as usize..(s + l) as usize] { *b = add; }
            }
            let mut gaps = Vec::new();
            let mut i = 0;
            while i < bits.len() {
                if !bits[i] {
                    let j = (i..bits.len()).find(|j| bits[*j]).unwrap_or(bits.len());
                    gaps.push((i as u64, j as u64));
                    i = j;
                } else { i += 1; }
            }
            prop_assert_eq!(r.gaps(0, 240), gaps);
            prop_assert_eq!(r.total(), bits.iter().filter(|b| **b).count() as u64);
        }
    }

    #[test]
    fn a_read_fetches_only_its_bytes_from_the_origin() {
        let mut p = Planner::new(10 * MIB, 4 * MIB, 16 * MIB);
        let plan = p.plan(MIB, 2 * MIB, |_| false, |_| None, false);
        assert_eq!(
            plan.fetches,
            vec![Fetch::Range {
                start: MIB,
                end: 2 * MIB
            }]
        );
        // A second reader of overlapping bytes waits for them and fetches only the rest.
        let plan = p.plan(MIB + 10, 3 * MIB, |_| false, |_| None, false);
        assert!(plan.wait);
        assert_eq!(
            plan.fetches,
            vec![Fetch::Range {
                start: 2 * MIB,
                end: 3 * MIB
            }]
        );
        assert_eq!(p.range_done(MIB, 2 * MIB, true), Vec::<u32>::new());
        assert_eq!(p.range_done(2 * MIB, 3 * MIB, true), Vec::<u32>::new());
        assert!(p.plan(MIB, 3 * MIB, |_| false, |_| None, false).ready());
        assert_eq!(p.partial_bytes(), 2 * MIB);
    }

    #[test]
    fn gaps_across_pieces_join_and_a_covered_piece_is_to_commit() {
        let mut p = Planner::new(10 * MIB, 4 * MIB, 16 * MIB);
        let plan = p.plan(3 * MIB, 5 * MIB, |_| false, |_| None, false);
        assert_eq!(
            plan.fetches,
            vec![Fetch::Range {
                start: 3 * MIB,
                end: 5 * MIB
            }]
        );
        assert_eq!(p.range_done(3 * MIB, 5 * MIB, true), Vec::<u32>::new());
        let plan = p.plan(0, 4 * MIB, |_| false, |_| None, false);
        assert_eq!(
            plan.fetches,
            vec![Fetch::Range {
                start: 0,
                end: 3 * MIB
            }]
        );
        assert_eq!(p.range_done(0, 3 * MIB, true), vec![0]);
        p.committed(0);
        assert_eq!(p.partial_bytes(), MIB);
        // The last piece is short (2 MiB): covering it commits it.
        let plan = p.plan(8 * MIB, 10 * MIB, |n| n == 0, |_| None, false);
        assert_eq!(p.range_done(8 * MIB, 10 * MIB, true), vec![2]);
        assert_eq!(plan.fetches.len(), 1);
    }

    #[test]
    fn a_piece_a_parent_holds_is_fetched_whole_unless_fresh() {
        let mut p = Planner::new(10 * MIB, 4 * MIB, 16 * MIB);
        let plan = p.plan(MIB, 5 * MIB, |_| false, |n| (n == 1).then_some(7), false);
        assert_eq!(
            plan.fetches,
            vec![
                Fetch::Piece {
                    number: 1,
                    parent: 7
                },
                Fetch::Range {
                    start: MIB,
                    end: 4 * MIB
                }
            ]
        );
        // Another reader of piece 1 waits for the piece in flight.
        let again = p.plan(4 * MIB, 4 * MIB + 1, |_| false, |_| Some(7), false);
        assert_eq!(
            again,
            Plan {
                fetches: vec![],
                wait: true
            }
        );
        p.piece_done(1);
        // Fresh: the parent is not asked.
        let fresh = p.plan(4 * MIB, 4 * MIB + 1, |_| false, |_| Some(7), true);
        assert_eq!(
            fresh.fetches,
            vec![Fetch::Range {
                start: 4 * MIB,
                end: 4 * MIB + 1
            }]
        );
    }

    #[test]
    fn large_gaps_are_cut_at_max_range_and_reads_past_the_end_are_clipped() {
        let mut p = Planner::new(10 * MIB, 4 * MIB, 3 * MIB);
        let plan = p.plan(0, 20 * MIB, |n| n == 1, |_| None, false);
        assert_eq!(
            plan.fetches,
            vec![
                Fetch::Range {
                    start: 0,
                    end: 3 * MIB
                },
                Fetch::Range {
                    start: 3 * MIB,
                    end: 4 * MIB
                },
                Fetch::Range {
                    start: 8 * MIB,
                    end: 10 * MIB
                },
            ]
        );
        assert!(Planner::new(0, 4 * MIB, MIB)
            .plan(0, 10, |_| false, |_| None, false)
            .ready());
    }

    #[test]
    fn forgotten_bytes_are_fetched_again_and_uncommitted_pieces_keep_the_rest() {
        let mut p = Planner::new(8 * MIB, 4 * MIB, 16 * MIB);
        p.uncommitted(0);
        p.forget(MIB, MIB + 100);
        let plan = p.plan(0, 4 * MIB, |_| false, |_| None, true);
        assert_eq!(
            plan.fetches,
            vec![Fetch::Range {
                start: MIB,
                end: MIB + 100
            }]
        );
        assert_eq!(p.range_done(MIB, MIB + 100, true), vec![0]);
        // A failed fetch leaves the bytes missing for the next reader.
        let plan = p.plan(4 * MIB, 5 * MIB, |_| false, |_| None, false);
        assert_eq!(plan.fetches.len(), 1);
        assert_eq!(p.range_done(4 * MIB, 5 * MIB, false), Vec::<u32>::new());
        assert_eq!(p.plan(4 * MIB, 5 * MIB, |_| false, |_| None, false), plan);
    }

    #[test]
    fn retries_back_off_and_stop() {
        assert_eq!(retry_after(1, 3, true), Some(Duration::from_millis(100)));
        assert_eq!(retry_after(3, 3, true), Some(Duration::from_millis(400)));
        assert_eq!(retry_after(4, 3, true), None);
        assert_eq!(retry_after(1, 3, false), None);
        assert_eq!(retry_after(20, 30, true), Some(Duration::from_millis(6400)));
    }
}
