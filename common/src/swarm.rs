//! Which piece a child asks which parent for, when it downloads a task from several parents
//! at once (sans-IO: dfdaemon drives it with real transfers, the scheduler's swarm simulation
//! with simulated ones).
//!
//! The policy keeps every parent's uplink busy and makes the children of a swarm hold
//! different pieces, so that they have something to give each other:
//!
//! - **Slots per parent.** At most [`Swarm::per_parent`] requests are in flight to one parent.
//!   A parent whose uplink is saturated answers slowly, so its slots stay taken and the child
//!   asks the others: the load follows each parent's measured pace, not a guess of it.
//! - **Rarest first.** A free slot of a parent is used for the piece, among those the parent
//!   holds and the child misses, that the fewest of the child's parents hold (ties broken at
//!   random). Children that start together therefore fetch different pieces from the seed
//!   peer and then trade them, instead of all asking for piece 0, then piece 1, ...
//! - **Readers first.** A piece a local reader waits for is taken before anything else, from
//!   its least loaded holder.
//! - **Least loaded parent first.** Slots are filled parent by parent, the parent with the
//!   fewest requests in flight first (then the one asked least so far), so a seed peer with
//!   spare upload keeps serving and no parent is left out by chance.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// A seed peer still fetching a task from the origin receives its pieces in order, at about the
/// rate its children can take them, so at any moment the newest pieces are held by the seed
/// alone and every child asks the seed for them: the seed's uplink would carry each piece
/// several times. So, as BitTorrent's super-seeding does, the seed announces each new piece
/// to one child at once (its subscribers take turns: piece `n` goes to subscriber
/// `n % count`, in order of arrival) and to the others once that first transfer is over, by
/// which time the first child has it and announces it to its own children (or after
/// [`offer_hold`], if it never finishes). Whether subscriber `index` of `count` is offered
/// piece `piece` at once.
pub fn offered_first(piece: u32, index: usize, count: usize) -> bool {
    count == 0 || piece as usize % count == index
}

/// How long a seed peer holds a new piece back from its other children ([`offered_first`])
/// when the piece's first transfer does not finish (the first child died or is slow to ask):
/// four times the time the piece takes to reach a child when the seed's uplink
/// (`upload_bytes_per_sec`, 0: unknown) is shared by its `children`, within 0.5 s and 10 s;
/// 1 s when the uplink is unknown.
pub fn offer_hold(piece_length: u64, upload_bytes_per_sec: u64, children: usize) -> Duration {
    if upload_bytes_per_sec == 0 {
        return Duration::from_secs(1);
    }
    let secs = 4.0 * piece_length as f64 * children.max(1) as f64 / upload_bytes_per_sec as f64;
    Duration::from_secs_f64(secs.clamp(0.5, 10.0))
}

/// What a child knows of one parent.
#[derive(Debug, Clone, Default)]
struct ParentState {
    /// Requests in flight to it.
    in_flight: usize,
    /// It failed or sent a bad piece: not asked again.
    failed: bool,
    /// It announces nothing more.
    ended: bool,
    /// Pieces fetched from it.
    fetched: u64,
}

/// The child's view of its parents and the pieces each holds.
#[derive(Debug, Clone, Default)]
pub struct Swarm {
    parents: Vec<ParentState>,
    /// Piece number -> parents that announced it.
    holders: HashMap<u32, Vec<usize>>,
    /// Piece number -> the parent it is being fetched from.
    in_flight: HashMap<u32, usize>,
    /// Requests in flight to one parent, at most, except for pieces readers wait for (0:
    /// derived from the total, see
    /// [`Swarm::per_parent`]).
    per_parent_limit: usize,
}

/// The next step of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Fetch `piece` from parent `parent`.
    Fetch { piece: u32, parent: usize },
    /// Nothing to ask now: pick again when a parent announces a piece, a request ends, or a
    /// parent joins.
    Wait,
    /// Nothing more can come from the parents: every missing piece is stored, or no live
    /// parent can announce anything more and nothing is in flight.
    Done,
}

impl Swarm {
    pub fn new() -> Swarm {
        Swarm::default()
    }

    /// At most `n` requests in flight to one parent (0: derived from the total).
    pub fn with_per_parent_limit(mut self, n: usize) -> Swarm {
        self.per_parent_limit = n;
        self
    }

    /// Adds a parent; its index.
    pub fn add_parent(&mut self) -> usize {
        self.parents.push(ParentState::default());
        self.parents.len() - 1
    }

    /// How many parents were added.
    pub fn parent_count(&self) -> usize {
        self.parents.len()
    }

    /// Parent `parent` holds piece `piece`.
    pub fn announce(&mut self, parent: usize, piece: u32) {
        if parent >= self.parents.len() {
            return;
        }
        let h = self.holders.entry(piece).or_default();
        if !h.contains(&parent) {
            h.push(parent);
        }
    }

    /// Parent `parent` announces nothing more (it may still serve what it announced).
    pub fn end(&mut self, parent: usize) {
        if let Some(p) = self.parents.get_mut(parent) {
            p.ended = true;
        }
    }

    /// Parent `parent` failed: it is not asked again. True the first time.
    pub fn fail(&mut self, parent: usize) -> bool {
        match self.parents.get_mut(parent) {
            Some(p) if !p.failed => {
                p.failed = true;
                true
            }
            _ => false,
        }
    }

    /// Whether parent `parent` is usable.
    pub fn live(&self, parent: usize) -> bool {
        self.parents.get(parent).is_some_and(|p| !p.failed)
    }

    /// Whether parent `parent` announces nothing more.
    pub fn ended(&self, parent: usize) -> bool {
        self.parents.get(parent).is_none_or(|p| p.ended)
    }

    /// Live parents that announced piece `piece`.
    pub fn holders(&self, piece: u32) -> Vec<usize> {
        self.holders
            .get(&piece)
            .map(|h| h.iter().copied().filter(|p| self.live(*p)).collect())
            .unwrap_or_default()
    }

    /// Requests in flight to parent `parent`.
    pub fn in_flight_to(&self, parent: usize) -> usize {
        self.parents.get(parent).map_or(0, |p| p.in_flight)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether piece `piece` is being fetched.
    pub fn is_in_flight(&self, piece: u32) -> bool {
        self.in_flight.contains_key(&piece)
    }

    /// Requests in flight to one parent, at most, with `total` in flight at most: the set
    /// limit, else enough that the live parents holding pieces can take `total` together
    /// (two at least, so each keeps one request queued behind the one it serves).
    pub fn per_parent(&self, total: usize) -> usize {
        if self.per_parent_limit > 0 {
            return self.per_parent_limit;
        }
        let serving = (0..self.parents.len())
            .filter(|p| self.live(*p) && self.holders.values().any(|h| h.contains(p)))
            .count()
            .max(1);
        total.div_ceil(serving).max(2)
    }

    /// The next request, with `total` requests in flight at most. `missing` holds the pieces
    /// the child has not stored; `wanted` picks, among candidates, a piece a reader waits
    /// for (if any); `random` breaks ties.
    pub fn pick(
        &mut self,
        missing: &BTreeSet<u32>,
        wanted: impl FnOnce(&BTreeSet<u32>) -> Option<u32>,
        total: usize,
        random: u64,
    ) -> Pick {
        let open: BTreeSet<u32> = missing
            .iter()
            .copied()
            .filter(|n| !self.in_flight.contains_key(n))
            .collect();
        if open.is_empty() {
            return if self.in_flight.is_empty() {
                Pick::Done
            } else {
                Pick::Wait
            };
        }
        let nothing_more = (0..self.parents.len()).all(|p| !self.live(p) || self.ended(p));
        let held = |n: &u32| {
            self.holders
                .get(n)
                .is_some_and(|h| h.iter().any(|p| self.live(*p)))
        };
        if nothing_more && self.in_flight.is_empty() && !open.iter().any(held) {
            return Pick::Done;
        }
        if self.in_flight.len() >= total.max(1) {
            return Pick::Wait;
        }
        let per_parent = self.per_parent(total);
        let free = |s: &Swarm, p: usize| s.live(p) && s.parents[p].in_flight < per_parent;
        // A reader's piece first, from its least loaded holder (past its slots: a reader
        // waits for this piece).
        let candidates: BTreeSet<u32> = open.iter().copied().filter(held).collect();
        if let Some(n) = wanted(&candidates) {
            let holders = self.holders(n);
            if let Some(p) = least_loaded(self, &holders, random, |p| self.live(p)) {
                return self.take(n, p);
            }
        }
        // Then parent by parent, least loaded first: its rarest piece.
        let mut order: Vec<usize> = (0..self.parents.len()).filter(|p| free(self, *p)).collect();
        order.sort_by_key(|p| {
            let s = &self.parents[*p];
            (s.in_flight, s.fetched, tie(random, *p as u64))
        });
        for p in order {
            let mut best: Option<(usize, u64, u32)> = None;
            for n in &open {
                let Some(h) = self.holders.get(n) else {
                    continue;
                };
                if !h.contains(&p) {
                    continue;
                }
                let rarity = h.iter().filter(|q| self.live(**q)).count();
                let key = (rarity, tie(random, u64::from(*n)), *n);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
            if let Some((_, _, n)) = best {
                return self.take(n, p);
            }
        }
        Pick::Wait
    }

    fn take(&mut self, piece: u32, parent: usize) -> Pick {
        self.in_flight.insert(piece, parent);
        self.parents[parent].in_flight += 1;
        Pick::Fetch { piece, parent }
    }

    /// The request for `piece` ended; `ok`: the piece is stored. A failed request fails its
    /// parent.
    pub fn finish(&mut self, piece: u32, ok: bool) -> Option<usize> {
        let parent = self.in_flight.remove(&piece)?;
        let p = &mut self.parents[parent];
        p.in_flight = p.in_flight.saturating_sub(1);
        if ok {
            p.fetched += 1;
        } else {
            p.failed = true;
        }
        Some(parent)
    }
}

/// A pseudo-random order of `x` for tie-breaking, fixed by `random` (splitmix64).
fn tie(random: u64, x: u64) -> u64 {
    let mut z = random ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Of `parents` passing `ok`, the one with the fewest requests in flight (ties at random).
fn least_loaded(
    s: &Swarm,
    parents: &[usize],
    random: u64,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    parents
        .iter()
        .copied()
        .filter(|p| ok(*p))
        .min_by_key(|p| (s.parents[*p].in_flight, tie(random, *p as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(r: std::ops::Range<u32>) -> BTreeSet<u32> {
        r.collect()
    }

    #[test]
    fn the_rarest_piece_a_parent_holds_comes_first() {
        let mut s = Swarm::new();
        let (a, b) = (s.add_parent(), s.add_parent());
        for n in 0..4 {
            s.announce(a, n);
        }
        // b holds 0 and 1 too: 2 and 3 are rarer, and only a has them.
        s.announce(b, 0);
        s.announce(b, 1);
        let m = missing(0..4);
        let mut got = Vec::new();
        for r in 0..2 {
            match s.pick(&m, |_| None, 8, r) {
                Pick::Fetch { piece, parent } => got.push((piece, parent)),
                other => panic!("{other:?}"),
            }
        }
        got.sort();
        // One request to each parent (both idle); a's is one of its rare pieces.
        assert!(got.iter().any(|(n, p)| *p == a && *n >= 2), "{got:?}");
        assert!(got.iter().any(|(n, p)| *p == b && *n <= 1), "{got:?}");
    }

    #[test]
    fn children_with_different_seeds_start_on_different_pieces() {
        let firsts: BTreeSet<u32> = (0..16u64)
            .map(|r| {
                let mut s = Swarm::new();
                let seed = s.add_parent();
                for n in 0..64 {
                    s.announce(seed, n);
                }
                match s.pick(&missing(0..64), |_| None, 8, r.wrapping_mul(7919)) {
                    Pick::Fetch { piece, .. } => piece,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert!(firsts.len() >= 8, "children all start alike: {firsts:?}");
    }

    #[test]
    fn slots_per_parent_spread_requests_over_parents() {
        let mut s = Swarm::new();
        let parents: Vec<usize> = (0..4).map(|_| s.add_parent()).collect();
        for p in &parents {
            for n in 0..32 {
                s.announce(*p, n);
            }
        }
        assert_eq!(s.per_parent(8), 2);
        let m = missing(0..32);
        for r in 0..8 {
            assert!(matches!(s.pick(&m, |_| None, 8, r), Pick::Fetch { .. }));
        }
        for p in &parents {
            assert_eq!(s.in_flight_to(*p), 2);
        }
        // Eight in flight: the total is reached.
        assert_eq!(s.pick(&m, |_| None, 8, 9), Pick::Wait);
        // A slow parent keeps its slots; the others take the freed ones.
        let done: Vec<u32> = s
            .in_flight
            .iter()
            .filter(|(_, p)| **p != parents[0])
            .map(|(n, _)| *n)
            .collect();
        for n in &done {
            assert!(s.finish(*n, true).is_some());
        }
        let left: BTreeSet<u32> = m.iter().copied().filter(|n| !done.contains(n)).collect();
        for r in 0..6 {
            match s.pick(&left, |_| None, 8, 100 + r) {
                Pick::Fetch { parent, .. } => assert_ne!(parent, parents[0]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn parents_equally_loaded_are_asked_in_turn() {
        let mut s = Swarm::new().with_per_parent_limit(1);
        let (a, b) = (s.add_parent(), s.add_parent());
        for n in 0..8 {
            s.announce(a, n);
            s.announce(b, n);
        }
        let mut by_parent = [0, 0];
        let mut m = missing(0..8);
        for r in 0..8 {
            let Pick::Fetch { piece, parent } = s.pick(&m, |_| None, 1, r) else {
                panic!("nothing picked");
            };
            by_parent[parent] += 1;
            s.finish(piece, true);
            m.remove(&piece);
        }
        assert_eq!(by_parent, [4, 4]);
    }

    #[test]
    fn a_seed_offers_each_new_piece_to_one_child_first() {
        let firsts: Vec<usize> = (0..6u32)
            .map(|n| (0..3).filter(|i| offered_first(n, *i, 3)).count())
            .collect();
        assert_eq!(firsts, vec![1; 6], "exactly one subscriber per piece");
        assert!(offered_first(5, 0, 1) && offered_first(5, 0, 0));
        assert_eq!(offer_hold(4 << 20, 0, 3), Duration::from_secs(1));
        // 4 MiB at 250 Mbit/s: 134 ms to send alone, 403 ms shared by three children, held
        // at most 1.61 s; bounded both ways.
        let h = offer_hold(4 << 20, 31_250_000, 3);
        assert!(
            h > Duration::from_millis(1600) && h < Duration::from_millis(1620),
            "{h:?}"
        );
        assert_eq!(offer_hold(1, 1 << 30, 1), Duration::from_millis(500));
        assert_eq!(offer_hold(1 << 30, 1, 1), Duration::from_secs(10));
    }

    #[test]
    fn a_single_parent_gets_every_slot() {
        let mut s = Swarm::new();
        let p = s.add_parent();
        for n in 0..16 {
            s.announce(p, n);
        }
        let m = missing(0..16);
        for r in 0..8 {
            assert!(matches!(s.pick(&m, |_| None, 8, r), Pick::Fetch { .. }));
        }
        assert_eq!(s.in_flight_to(p), 8);
    }

    #[test]
    fn a_readers_piece_goes_first() {
        let mut s = Swarm::new();
        let (a, b) = (s.add_parent(), s.add_parent());
        s.announce(a, 5);
        s.announce(b, 0);
        s.announce(a, 0);
        let pick = s.pick(&missing(0..6), |c| c.contains(&5).then_some(5), 8, 0);
        assert_eq!(
            pick,
            Pick::Fetch {
                piece: 5,
                parent: a
            }
        );
    }

    #[test]
    fn failed_parents_are_skipped_and_nothing_left_is_done() {
        let mut s = Swarm::new();
        let (a, b) = (s.add_parent(), s.add_parent());
        s.announce(a, 0);
        s.announce(b, 0);
        assert!(s.fail(a));
        assert!(!s.fail(a));
        assert_eq!(
            s.pick(&missing(0..1), |_| None, 8, 0),
            Pick::Fetch {
                piece: 0,
                parent: b
            }
        );
        // The fetch fails: b is dropped too, and with nothing in flight that is the end.
        assert_eq!(s.finish(0, false), Some(b));
        assert_eq!(s.pick(&missing(0..1), |_| None, 8, 0), Pick::Done);
    }

    #[test]
    fn waiting_for_announcements_until_every_stream_ended() {
        let mut s = Swarm::new();
        let a = s.add_parent();
        assert_eq!(s.pick(&missing(0..2), |_| None, 8, 0), Pick::Wait);
        s.end(a);
        assert_eq!(s.pick(&missing(0..2), |_| None, 8, 0), Pick::Done);
        assert_eq!(s.pick(&BTreeSet::new(), |_| None, 8, 0), Pick::Done);
    }
}
