//! Control plane: clusters, users, tokens, preheat jobs, Harbor Open API.
//!
//! Filled by the manager issue; nothing is implemented yet.
