//! Analysis: turns a loaded [`Profile`](crate::format::Profile) into the
//! model every renderer reads.

pub mod graph;
