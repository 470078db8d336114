//! Node agent library.
