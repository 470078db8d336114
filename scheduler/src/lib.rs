//! Dragonfly v2 scheduler: hosts, tasks, peers, parent selection, seed-peer triggering.
//!
//! Filled by the P2P issue; nothing is implemented yet.
