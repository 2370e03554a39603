//! Choosing the bounded part of the heap graph that a profile keeps, so that
//! `leakprof retainers` can print chains offline.

use super::heap::NodeId;
use super::node_set::NodeSet;
use super::retention::{CycleId, Retention};

/// Defaults shared by the library and the CLI flags that override them.
pub mod defaults {
    /// Largest retained objects whose chains a profile keeps.
    pub const LARGEST: usize = 1000;
    /// Members kept per unreachable cycle that a kept chain touches.
    pub const CYCLE_MEMBERS: usize = 64;
}

/// What [`Retention::subgraph`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubgraphOptions {
    /// Keep the chains of this many blocks with the largest retained size.
    pub largest: usize,
    /// For every unreachable cycle one of the kept blocks belongs to, also
    /// keep up to this many of its members (lowest ids first), with their
    /// chains, so the cycle can be printed.
    pub cycle_members: usize,
}

impl Default for SubgraphOptions {
    fn default() -> Self {
        SubgraphOptions {
            largest: defaults::LARGEST,
            cycle_members: defaults::CYCLE_MEMBERS,
        }
    }
}

impl SubgraphOptions {
    pub fn new(largest: usize, cycle_members: usize) -> Self {
        SubgraphOptions {
            largest,
            cycle_members,
        }
    }
}

impl Retention {
    /// The blocks to store so that the shortest retainer chain and the
    /// dominator path of every selected block can be printed: the
    /// `options.largest` largest retained blocks and `extra`, closed under
    /// "BFS parent of". Returned ascending.
    ///
    /// Closing under BFS parents is enough for dominator paths too: every
    /// dominator of a block lies on every path to it from the super-root,
    /// so in particular on its shortest retainer chain.
    pub fn subgraph(&self, options: &SubgraphOptions, extra: &[NodeId]) -> Vec<NodeId> {
        let mut chosen = NodeSet::new(self.node_count());
        let mut cycle_seen = NodeSet::new(self.cycles().len());
        let mut pending_cycles: Vec<CycleId> = Vec::new();
        let mut out: Vec<NodeId> = Vec::new();
        let mut add_chain = |start: NodeId, out: &mut Vec<NodeId>, pending: &mut Vec<CycleId>| {
            let mut v = start;
            while chosen.insert(v) {
                out.push(v);
                if let Some(c) = self.cycle_of(v) {
                    if cycle_seen.insert(c.0) {
                        pending.push(c);
                    }
                }
                match self.bfs_parent(v) {
                    Some(p) => v = p,
                    None => break,
                }
            }
        };
        for v in self
            .largest(options.largest)
            .into_iter()
            .chain(extra.iter().copied())
        {
            add_chain(v, &mut out, &mut pending_cycles);
        }
        while let Some(c) = pending_cycles.pop() {
            let members = self.cycle_members(c);
            for &m in &members[..members.len().min(options.cycle_members)] {
                add_chain(m, &mut out, &mut pending_cycles);
            }
        }
        out.sort_unstable();
        out
    }
}
