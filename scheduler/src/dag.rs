//! The graph of the peers of one task: an edge `parent -> child` means the child downloads
//! from the parent. Each edge carries a value (the load reserved on the parent's host), handed
//! back when the edge goes so the caller can undo it.
//!
//! Unlike Dragonfly's, the graph may have cycles: two peers downloading at the same time can
//! be each other's parents and trade the pieces each got elsewhere (a child only asks a parent
//! for pieces the parent announced, so a cycle cannot make anyone wait for nothing). An
//! acyclic graph leaves the last peer of every topological order with nobody to upload to,
//! and the peers that start together with little to give each other. A peer is never its own
//! parent, and an edge exists at most once.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rand::Rng;

use crate::resource::PeerId;

/// A refused DAG operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// The vertex does not exist.
    #[error("vertex {0} not found")]
    VertexNotFound(PeerId),
    /// A vertex with this ID exists already.
    #[error("vertex {0} already exists")]
    VertexExists(PeerId),
    /// The edge exists already.
    #[error("edge {from} -> {to} already exists")]
    EdgeExists {
        /// Parent.
        from: PeerId,
        /// Child.
        to: PeerId,
    },
    /// The edge does not exist.
    #[error("edge {from} -> {to} not found")]
    EdgeNotFound {
        /// Parent.
        from: PeerId,
        /// Child.
        to: PeerId,
    },
    /// A peer cannot be its own parent.
    #[error("edge {0} -> {0} would be a self loop")]
    SelfLoop(PeerId),
}

#[derive(Debug, Clone)]
struct Vertex<E> {
    /// Position in `Dag::order`.
    slot: usize,
    parents: BTreeMap<PeerId, E>,
    children: BTreeSet<PeerId>,
}

/// Edges removed from a vertex, with their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedEdges<E> {
    /// `(parent, value)` of each edge that entered the vertex.
    pub in_edges: Vec<(PeerId, E)>,
    /// `(child, value)` of each edge that left the vertex.
    pub out_edges: Vec<(PeerId, E)>,
}

/// The DAG. Vertices are also kept in a vector so that a random sample costs O(sample).
#[derive(Debug, Clone)]
pub struct Dag<E> {
    vertices: BTreeMap<PeerId, Vertex<E>>,
    order: Vec<PeerId>,
    edge_count: usize,
}

impl<E> Default for Dag<E> {
    fn default() -> Self {
        Dag {
            vertices: BTreeMap::new(),
            order: Vec::new(),
            edge_count: 0,
        }
    }
}

impl<E: Clone> Dag<E> {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of vertices.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the graph has no vertex.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.edge_count
    }

    /// Whether the vertex exists.
    pub fn contains(&self, id: &PeerId) -> bool {
        self.vertices.contains_key(id)
    }

    /// Vertex IDs in insertion order (disturbed by deletions, which swap the last one in).
    pub fn vertices(&self) -> impl Iterator<Item = &PeerId> {
        self.order.iter()
    }

    /// Adds a vertex with no edges.
    pub fn add_vertex(&mut self, id: PeerId) -> Result<(), DagError> {
        if self.vertices.contains_key(&id) {
            return Err(DagError::VertexExists(id));
        }
        self.vertices.insert(
            id.clone(),
            Vertex {
                slot: self.order.len(),
                parents: BTreeMap::new(),
                children: BTreeSet::new(),
            },
        );
        self.order.push(id);
        Ok(())
    }

    /// Removes a vertex and every edge touching it; returns those edges.
    pub fn delete_vertex(&mut self, id: &PeerId) -> Result<RemovedEdges<E>, DagError> {
        let in_edges = self.delete_in_edges(id)?;
        let out_edges = self.delete_out_edges(id)?;
        let vertex = self
            .vertices
            .remove(id)
            .ok_or_else(|| DagError::VertexNotFound(id.clone()))?;
        self.order.swap_remove(vertex.slot);
        if let Some(moved) = self.order.get(vertex.slot) {
            if let Some(v) = self.vertices.get_mut(moved) {
                v.slot = vertex.slot;
            }
        }
        Ok(RemovedEdges {
            in_edges,
            out_edges,
        })
    }

    /// Parents of a vertex with their edge values.
    pub fn parents(&self, id: &PeerId) -> Result<impl Iterator<Item = (&PeerId, &E)>, DagError> {
        Ok(self.vertex(id)?.parents.iter())
    }

    /// Children of a vertex.
    pub fn children(&self, id: &PeerId) -> Result<impl Iterator<Item = &PeerId>, DagError> {
        Ok(self.vertex(id)?.children.iter())
    }

    /// Number of parents.
    pub fn in_degree(&self, id: &PeerId) -> Result<usize, DagError> {
        Ok(self.vertex(id)?.parents.len())
    }

    /// Number of children.
    pub fn out_degree(&self, id: &PeerId) -> Result<usize, DagError> {
        Ok(self.vertex(id)?.children.len())
    }

    /// The value of edge `from -> to`, if it exists.
    pub fn edge(&self, from: &PeerId, to: &PeerId) -> Option<&E> {
        self.vertices.get(to)?.parents.get(from)
    }

    /// Why edge `from -> to` cannot be added, or `Ok` if it can.
    pub fn check_edge(&self, from: &PeerId, to: &PeerId) -> Result<(), DagError> {
        if from == to {
            return Err(DagError::SelfLoop(from.clone()));
        }
        let parent = self.vertex(from)?;
        let child = self.vertex(to)?;
        let _ = parent;
        if child.parents.contains_key(from) {
            return Err(DagError::EdgeExists {
                from: from.clone(),
                to: to.clone(),
            });
        }
        Ok(())
    }

    /// Whether edge `from -> to` can be added (both exist, no duplicate, no self loop).
    pub fn can_add_edge(&self, from: &PeerId, to: &PeerId) -> bool {
        self.check_edge(from, to).is_ok()
    }

    /// Adds edge `from -> to` carrying `value`, after [`Dag::check_edge`].
    pub fn add_edge(&mut self, from: &PeerId, to: &PeerId, value: E) -> Result<(), DagError> {
        self.check_edge(from, to)?;
        if let Some(child) = self.vertices.get_mut(to) {
            child.parents.insert(from.clone(), value);
        }
        if let Some(parent) = self.vertices.get_mut(from) {
            parent.children.insert(to.clone());
        }
        self.edge_count += 1;
        Ok(())
    }

    /// Adds edges from each of `parents` into `to`, skipping a parent that is unknown, is `to`,
    /// or is already a parent. Returns the parents added.
    pub fn add_edges(
        &mut self,
        parents: Vec<(PeerId, E)>,
        to: &PeerId,
    ) -> Result<Vec<PeerId>, DagError> {
        self.vertex(to)?;
        let accepted: Vec<(PeerId, E)> = parents
            .into_iter()
            .filter(|(from, _)| {
                from != to && self.vertices.contains_key(from) && self.edge(from, to).is_none()
            })
            .collect();
        let mut added = Vec::with_capacity(accepted.len());
        for (from, value) in accepted {
            // A parent listed twice is added once.
            if self.edge(&from, to).is_some() {
                continue;
            }
            if let Some(child) = self.vertices.get_mut(to) {
                child.parents.insert(from.clone(), value);
            }
            if let Some(parent) = self.vertices.get_mut(&from) {
                parent.children.insert(to.clone());
            }
            self.edge_count += 1;
            added.push(from);
        }
        Ok(added)
    }

    /// `id` and every vertex reachable from it.
    pub fn descendants(&self, id: &PeerId) -> Result<HashSet<&PeerId>, DagError> {
        let (start, _) = self
            .vertices
            .get_key_value(id)
            .ok_or_else(|| DagError::VertexNotFound(id.clone()))?;
        let mut seen = HashSet::from([start]);
        let mut stack = vec![start];
        while let Some(v) = stack.pop() {
            if let Some(vertex) = self.vertices.get(v) {
                for c in &vertex.children {
                    if seen.insert(c) {
                        stack.push(c);
                    }
                }
            }
        }
        Ok(seen)
    }

    /// Removes edge `from -> to` and returns its value.
    pub fn delete_edge(&mut self, from: &PeerId, to: &PeerId) -> Result<E, DagError> {
        let value = self
            .vertices
            .get_mut(to)
            .and_then(|child| child.parents.remove(from))
            .ok_or_else(|| DagError::EdgeNotFound {
                from: from.clone(),
                to: to.clone(),
            })?;
        if let Some(parent) = self.vertices.get_mut(from) {
            parent.children.remove(to);
        }
        self.edge_count -= 1;
        Ok(value)
    }

    /// Removes every edge entering `id`; returns `(parent, value)` of each.
    pub fn delete_in_edges(&mut self, id: &PeerId) -> Result<Vec<(PeerId, E)>, DagError> {
        let parents = std::mem::take(
            &mut self
                .vertices
                .get_mut(id)
                .ok_or_else(|| DagError::VertexNotFound(id.clone()))?
                .parents,
        );
        for parent in parents.keys() {
            if let Some(p) = self.vertices.get_mut(parent) {
                p.children.remove(id);
            }
        }
        self.edge_count -= parents.len();
        Ok(parents.into_iter().collect())
    }

    /// Removes every edge leaving `id`; returns `(child, value)` of each.
    pub fn delete_out_edges(&mut self, id: &PeerId) -> Result<Vec<(PeerId, E)>, DagError> {
        let children = std::mem::take(
            &mut self
                .vertices
                .get_mut(id)
                .ok_or_else(|| DagError::VertexNotFound(id.clone()))?
                .children,
        );
        let mut removed = Vec::with_capacity(children.len());
        for child in children {
            if let Some(value) = self
                .vertices
                .get_mut(&child)
                .and_then(|c| c.parents.remove(id))
            {
                removed.push((child, value));
            }
        }
        self.edge_count -= removed.len();
        Ok(removed)
    }

    /// Up to `n` distinct vertices chosen uniformly at random.
    pub fn random_vertices<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Vec<&PeerId> {
        let amount = n.min(self.order.len());
        rand::seq::index::sample(rng, self.order.len(), amount)
            .into_iter()
            .filter_map(|i| self.order.get(i))
            .collect()
    }

    fn vertex(&self, id: &PeerId) -> Result<&Vertex<E>, DagError> {
        self.vertices
            .get(id)
            .ok_or_else(|| DagError::VertexNotFound(id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn id(s: &str) -> PeerId {
        PeerId::from(s)
    }

    fn dag(vertices: &[&str]) -> Dag<u32> {
        let mut d = Dag::new();
        for v in vertices {
            d.add_vertex(id(v)).unwrap();
        }
        d
    }

    #[test]
    fn vertices_and_duplicates() {
        let mut d = dag(&["a", "b"]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.add_vertex(id("a")), Err(DagError::VertexExists(id("a"))));
        assert!(d.contains(&id("b")));
        assert_eq!(
            d.in_degree(&id("zz")),
            Err(DagError::VertexNotFound(id("zz")))
        );
    }

    #[test]
    fn edges_degrees_and_values() {
        let mut d = dag(&["a", "b", "c"]);
        d.add_edge(&id("a"), &id("b"), 1).unwrap();
        d.add_edge(&id("a"), &id("c"), 2).unwrap();
        d.add_edge(&id("b"), &id("c"), 3).unwrap();
        assert_eq!(d.out_degree(&id("a")).unwrap(), 2);
        assert_eq!(d.in_degree(&id("c")).unwrap(), 2);
        assert_eq!(d.in_degree(&id("a")).unwrap(), 0);
        assert_eq!(d.edge(&id("b"), &id("c")), Some(&3));
        assert_eq!(d.edge_count(), 3);
        assert_eq!(
            d.add_edge(&id("a"), &id("b"), 9),
            Err(DagError::EdgeExists {
                from: id("a"),
                to: id("b")
            })
        );
        assert_eq!(
            d.add_edge(&id("a"), &id("a"), 9),
            Err(DagError::SelfLoop(id("a")))
        );
        assert_eq!(
            d.add_edge(&id("a"), &id("x"), 9),
            Err(DagError::VertexNotFound(id("x")))
        );
        assert_eq!(d.delete_edge(&id("a"), &id("c")), Ok(2));
        assert_eq!(
            d.delete_edge(&id("a"), &id("c")),
            Err(DagError::EdgeNotFound {
                from: id("a"),
                to: id("c")
            })
        );
        assert_eq!(d.edge_count(), 2);
    }

    #[test]
    fn peers_may_be_each_others_parents_but_not_their_own() {
        let mut d = dag(&["a", "b", "c"]);
        d.add_edge(&id("a"), &id("b"), 0).unwrap();
        d.add_edge(&id("b"), &id("c"), 0).unwrap();
        // b and a trade pieces; c closes a ring.
        d.add_edge(&id("b"), &id("a"), 0).unwrap();
        d.add_edge(&id("c"), &id("a"), 0).unwrap();
        assert_eq!(d.edge_count(), 4);
        assert_eq!(
            d.add_edge(&id("a"), &id("a"), 0),
            Err(DagError::SelfLoop(id("a")))
        );
        assert_eq!(
            d.add_edge(&id("a"), &id("b"), 0),
            Err(DagError::EdgeExists {
                from: id("a"),
                to: id("b")
            })
        );
        let desc = d.descendants(&id("a")).unwrap();
        assert_eq!(desc.len(), 3, "a ring reaches everyone once");
    }

    #[test]
    fn add_edges_skips_duplicates_self_and_unknowns() {
        let mut d = dag(&["a", "b", "c", "x", "y"]);
        d.add_edge(&id("x"), &id("a"), 0).unwrap();
        d.add_edge(&id("a"), &id("b"), 0).unwrap();
        d.add_edge(&id("b"), &id("c"), 0).unwrap();
        // Parents for a: y, c and b are fine (b and c descend from a: they trade), x is
        // already a parent, a is a.
        let added = d
            .add_edges(
                vec![
                    (id("y"), 1),
                    (id("c"), 2),
                    (id("b"), 3),
                    (id("x"), 4),
                    (id("a"), 5),
                    (id("nope"), 6),
                ],
                &id("a"),
            )
            .unwrap();
        assert_eq!(added, vec![id("y"), id("c"), id("b")]);
        assert_eq!(d.edge(&id("y"), &id("a")), Some(&1));
        assert_eq!(d.edge(&id("b"), &id("a")), Some(&3));
        assert_eq!(d.edge(&id("x"), &id("a")), Some(&0), "existing value kept");
        assert_eq!(d.edge_count(), 6);
        assert!(d.add_edges(vec![], &id("nope")).is_err());
        let desc = d.descendants(&id("a")).unwrap();
        assert_eq!(desc.len(), 3);
        assert!(desc.contains(&id("c")) && !desc.contains(&id("y")));
    }

    #[test]
    fn delete_in_and_out_edges_return_values() {
        let mut d = dag(&["p1", "p2", "x", "c1"]);
        d.add_edge(&id("p1"), &id("x"), 10).unwrap();
        d.add_edge(&id("p2"), &id("x"), 20).unwrap();
        d.add_edge(&id("x"), &id("c1"), 30).unwrap();
        let ins = d.delete_in_edges(&id("x")).unwrap();
        assert_eq!(ins, vec![(id("p1"), 10), (id("p2"), 20)]);
        assert_eq!(d.out_degree(&id("p1")).unwrap(), 0);
        let outs = d.delete_out_edges(&id("x")).unwrap();
        assert_eq!(outs, vec![(id("c1"), 30)]);
        assert_eq!(d.in_degree(&id("c1")).unwrap(), 0);
        assert_eq!(d.edge_count(), 0);
    }

    #[test]
    fn delete_vertex_removes_edges_and_keeps_sampling_consistent() {
        let mut d = dag(&["a", "b", "c", "d"]);
        d.add_edge(&id("a"), &id("b"), 1).unwrap();
        d.add_edge(&id("b"), &id("c"), 2).unwrap();
        let removed = d.delete_vertex(&id("b")).unwrap();
        assert_eq!(removed.in_edges, vec![(id("a"), 1)]);
        assert_eq!(removed.out_edges, vec![(id("c"), 2)]);
        assert_eq!(d.len(), 3);
        assert_eq!(d.out_degree(&id("a")).unwrap(), 0);
        assert_eq!(d.in_degree(&id("c")).unwrap(), 0);
        assert!(d.delete_vertex(&id("b")).is_err());
        // The swapped-in vertex can still be deleted (its slot was fixed up).
        d.delete_vertex(&id("d")).unwrap();
        d.delete_vertex(&id("a")).unwrap();
        let left: Vec<_> = d.vertices().cloned().collect();
        assert_eq!(left, vec![id("c")]);
    }

    #[test]
    fn random_vertices_are_distinct_and_bounded() {
        let names: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let d = dag(&refs);
        let mut rng = StdRng::seed_from_u64(7);
        let sample = d.random_vertices(15, &mut rng);
        assert_eq!(sample.len(), 15);
        let distinct: BTreeSet<_> = sample.iter().collect();
        assert_eq!(distinct.len(), 15);
        assert_eq!(d.random_vertices(500, &mut rng).len(), 50);
        assert!(Dag::<u32>::new().random_vertices(3, &mut rng).is_empty());
    }
}
