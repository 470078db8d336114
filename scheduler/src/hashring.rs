//! Consistent hashing of task IDs over seed peer hosts, so that every scheduler instance sends
//! a task to the same seed peer and adding or removing a seed peer moves few tasks.

use sha2::{Digest, Sha256};

use crate::resource::HostId;

/// Virtual nodes per host: enough for an even spread over a handful of seed peers.
pub const DEFAULT_VIRTUAL_NODES: u32 = 160;

/// A hash ring of hosts, each placed at several points (virtual nodes).
#[derive(Debug, Clone)]
pub struct HashRing {
    virtual_nodes: u32,
    /// `(point, host)`, sorted by point.
    points: Vec<(u64, HostId)>,
}

impl Default for HashRing {
    fn default() -> Self {
        HashRing::new(DEFAULT_VIRTUAL_NODES)
    }
}

impl HashRing {
    /// An empty ring placing each host at `virtual_nodes` points (at least 1).
    pub fn new(virtual_nodes: u32) -> HashRing {
        HashRing {
            virtual_nodes: virtual_nodes.max(1),
            points: Vec::new(),
        }
    }

    /// Adds a host; adding a host twice changes nothing.
    pub fn add(&mut self, host: &HostId) {
        if self.contains(host) {
            return;
        }
        for i in 0..self.virtual_nodes {
            self.points
                .push((hash(format!("{host}#{i}").as_bytes()), host.clone()));
        }
        self.points.sort_unstable();
    }

    /// Removes a host.
    pub fn remove(&mut self, host: &HostId) {
        self.points.retain(|(_, h)| h != host);
    }

    /// Whether the host is on the ring.
    pub fn contains(&self, host: &HostId) -> bool {
        self.points.iter().any(|(_, h)| h == host)
    }

    /// Number of hosts on the ring.
    pub fn len(&self) -> usize {
        self.points.len() / self.virtual_nodes as usize
    }

    /// Whether the ring has no host.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The host owning `key`: the first point at or after the key's hash, wrapping around.
    pub fn get(&self, key: &str) -> Option<&HostId> {
        let h = hash(key.as_bytes());
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points
            .get(i)
            .or_else(|| self.points.first())
            .map(|(_, host)| host)
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ring(n: usize) -> HashRing {
        let mut r = HashRing::default();
        for i in 0..n {
            r.add(&HostId::from(format!("10.0.0.{i}-seed{i}-seed")));
        }
        r
    }

    fn tasks() -> Vec<String> {
        (0..10_000).map(|i| format!("{:064x}", i * 7919)).collect()
    }

    #[test]
    fn empty_ring_has_no_owner() {
        assert_eq!(HashRing::default().get("t"), None);
        assert!(HashRing::default().is_empty());
    }

    #[test]
    fn same_key_same_host_and_duplicates_ignored() {
        let mut r = ring(3);
        let owner = r.get("abc").cloned();
        r.add(&HostId::from("10.0.0.1-seed1-seed"));
        assert_eq!(r.len(), 3);
        assert_eq!(r.get("abc").cloned(), owner);
    }

    #[test]
    fn spread_is_even_enough() {
        let r = ring(4);
        let mut count: BTreeMap<HostId, usize> = BTreeMap::new();
        for t in tasks() {
            *count.entry(r.get(&t).cloned().unwrap()).or_default() += 1;
        }
        assert_eq!(count.len(), 4);
        for (h, c) in count {
            assert!((1500..=3500).contains(&c), "{h}: {c} of 10000");
        }
    }

    #[test]
    fn removing_a_seed_moves_only_its_tasks() {
        let before = ring(5);
        let mut after = before.clone();
        let gone = HostId::from("10.0.0.2-seed2-seed");
        after.remove(&gone);
        assert_eq!(after.len(), 4);
        for t in tasks() {
            let b = before.get(&t).unwrap();
            if *b != gone {
                assert_eq!(after.get(&t), Some(b), "task {t} moved");
            }
        }
    }

    #[test]
    fn adding_a_seed_keeps_most_tasks() {
        let before = ring(5);
        let mut after = before.clone();
        let new = HostId::from("10.0.0.9-seed9-seed");
        after.add(&new);
        let mut kept = 0;
        for t in tasks() {
            let a = after.get(&t).unwrap();
            if a == before.get(&t).unwrap() {
                kept += 1;
            } else {
                assert_eq!(*a, new, "a task moved between old seeds");
            }
        }
        // Ideally 5/6 stay.
        assert!(kept >= 7_500, "only {kept} of 10000 kept their seed");
    }
}
