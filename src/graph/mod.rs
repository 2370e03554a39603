//! Who holds the memory: the pure graph algorithms behind owners, retained
//! sizes, unreachable cycles and retainer chains.
//!
//! A layer below both of its users: the recorder (`record::heapgraph`
//! runs it on a scan inside the profiled process) and the analysis (which
//! re-exports it as `analysis::graph`). It depends only on std and
//! [`format::Amount`](crate::format::Amount), never on `record` or
//! `analysis`, and is compiled without the `cli` feature.
//!
//! The recorder's graph snapshot scans the live heap conservatively and
//! hands over a [`HeapGraph`] (one node per live block, one edge per pointer
//! found, the roots that point into the heap). [`Retention::compute`] then
//! derives, in one pass over that graph:
//!
//! - **reachability** from the roots;
//! - **unreachable cycles**: strongly connected groups of blocks no root
//!   reaches, the analogue of Python garbage only the cyclic GC frees;
//! - the **dominator tree** (semi-NCA) over the heap graph extended with a
//!   super-root and a synthetic root per unreachable entry cycle, so leaked
//!   memory has dominators too;
//! - **retained sizes** per block, per label and per cycle;
//! - each block's **owner** (nearest labelled holder, with the fallback rules
//!   spelled out in [`retention`](self::retention)'s docs) or, when it has
//!   none, its top-most holder;
//! - **shortest retainer chains** and the pointer each block is referred
//!   via (objgraph's back-reference chains, guppy's byvia);
//! - the bounded [`subgraph`](Retention::subgraph) a profile stores.
//!
//! This module runs inside the profiled process after the scan, so it uses
//! only std, never recurses (heap graphs hold chains of millions of blocks)
//! and keeps per-node state in flat `u32` arrays: no per-node `Vec` or map.
//! It knows nothing of addresses, stacks or the profile format beyond
//! [`Amount`](crate::format::Amount); turning its answers into
//! [`format::Graph`](crate::format::Graph) is the caller's job.
//!
//! ```
//! use leakprof::graph::{Attribution, HeapGraphBuilder, LabelId, Retention, RootKind};
//!
//! let mut b = HeapGraphBuilder::new();
//! let slot = b.add_node(16, Some(LabelId(0))); // a labelled "result slot"
//! let payload = b.add_node(1 << 20, None);
//! b.add_edge(slot, payload, 8);
//! b.add_root(slot, RootKind::Static, None);
//! let retention = Retention::compute(&b.build().unwrap());
//! assert_eq!(retention.attribution(payload), Attribution::Owned(slot));
//! assert_eq!(retention.retained(slot).bytes, 16 + (1 << 20));
//! ```

mod components;
mod dominators;
mod heap;
mod node_set;
pub mod retention;
mod subgraph;

#[cfg(test)]
mod tests;

pub use heap::{
    GraphError, HeapGraph, HeapGraphBuilder, LabelId, NodeId, Root, RootKind, MAX_NODES,
    OFFSET_UNKNOWN,
};
pub use retention::{
    Attribution, CycleId, CycleSummary, Dominator, LabelSummary, Retainer, Retention,
};
pub use subgraph::{defaults, SubgraphOptions};
