//! The heap graph as the scanner hands it over: one node per live block, one
//! edge per pointer found inside a block, and the roots.
//!
//! Edges are stored in CSR form (`row_start`, `targets`, `offsets`): the
//! outgoing edges of node `v` are `targets[row_start[v]..row_start[v + 1]]`,
//! sorted by target, one edge per (source, target) pair, carrying the lowest
//! byte offset at which the source holds a pointer to the target.
//!
//! The builder accepts edges in any order. When they arrive grouped by source
//! in ascending node order (what a scan that walks the live table produces)
//! building costs one pass and no extra memory; otherwise the edges are sorted
//! in place by an O(E) bucket permutation, so building never needs more than
//! the edge list itself plus one `u32` per node.

use std::fmt;
use std::ops::Range;

/// Index of a live block in a [`HeapGraph`]: `0..graph.node_count()`.
pub type NodeId = u32;

/// An owner label, opaque to the graph algorithms (the recorder maps it to a
/// tag: label text, type name, task). Labels are compared for equality only;
/// keep them dense, since per-label results are indexed by the label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelId(pub u32);

/// What kind of root refers to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RootKind {
    /// A word on a thread's stack or in its saved registers.
    Stack,
    /// Static data of the program or one of its libraries.
    Static,
    /// A thread-local storage segment.
    Tls,
    /// A container registered with the owner API, under this label.
    Registered(LabelId),
}

/// One root reference: a word outside the heap that points into `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    pub node: NodeId,
    pub kind: RootKind,
    /// Where the word is (stack offset, static address, slot of the
    /// registered container), when the scanner knows it.
    pub offset: Option<u64>,
}

/// Stored in place of a pointer's byte offset inside its source block when
/// the offset does not fit in 32 bits (a pointer 4 GiB or more into a block).
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Most nodes a graph may have. Node ids must leave room for one synthetic
/// vertex per node plus the super-root below `u32::MAX`, and the top bit of a
/// node id is used to encode attributions (see `retention.rs`).
pub const MAX_NODES: usize = (1 << 31) - 2;

/// Sentinel for "no node" in the `u32` arrays of this module tree.
pub(crate) const NONE: u32 = u32::MAX;

/// Why a graph could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphError {
    /// More than [`MAX_NODES`] nodes were added.
    TooManyNodes { nodes: usize },
    /// Edges, roots and one synthetic edge per node must fit in `u32` indices.
    TooManyEdges { edges: usize, roots: usize },
    /// An edge or root names a node that was never added.
    NodeOutOfRange { node: NodeId, nodes: usize },
    /// `LabelId(u32::MAX)` is reserved.
    ReservedLabel { node: NodeId },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::TooManyNodes { nodes } => {
                write!(f, "heap graph has {nodes} nodes, more than the {MAX_NODES} supported")
            }
            GraphError::TooManyEdges { edges, roots } => write!(
                f,
                "heap graph has {edges} edges and {roots} roots, more than 32-bit indices can address"
            ),
            GraphError::NodeOutOfRange { node, nodes } => {
                write!(f, "heap graph refers to node {node} but has only {nodes} nodes")
            }
            GraphError::ReservedLabel { node } => {
                write!(f, "node {node} carries the reserved label id {}", u32::MAX)
            }
        }
    }
}

impl std::error::Error for GraphError {}

/// A conservative heap graph: live blocks, the pointers between them, and
/// the roots that point into them. Immutable once built.
#[derive(Clone, Debug)]
pub struct HeapGraph {
    sizes: Vec<u64>,
    /// Label per node, `NONE` when unlabelled.
    labels: Vec<u32>,
    row_start: Vec<u32>,
    targets: Vec<u32>,
    offsets: Vec<u32>,
    roots: Vec<Root>,
}

impl HeapGraph {
    pub fn node_count(&self) -> usize {
        self.sizes.len()
    }

    pub fn edge_count(&self) -> usize {
        self.targets.len()
    }

    /// Size of a block in bytes (or whatever unit the caller uses).
    pub fn size(&self, node: NodeId) -> u64 {
        self.sizes[node as usize]
    }

    pub fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    pub fn label(&self, node: NodeId) -> Option<LabelId> {
        match self.labels[node as usize] {
            NONE => None,
            l => Some(LabelId(l)),
        }
    }

    /// Blocks `node` points to, ascending, each once.
    pub fn targets(&self, node: NodeId) -> &[NodeId] {
        &self.targets[self.row(node)]
    }

    /// `(target, byte offset of the pointer inside node)` for every edge out
    /// of `node`; the offset is the lowest one if `node` points to the same
    /// target several times.
    pub fn edges(&self, node: NodeId) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        let row = self.row(node);
        self.targets[row.clone()]
            .iter()
            .copied()
            .zip(self.offsets[row].iter().copied())
    }

    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    /// Heap memory held by this graph, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.sizes.capacity() * 8
            + (self.labels.capacity()
                + self.row_start.capacity()
                + self.targets.capacity()
                + self.offsets.capacity())
                * 4
            + self.roots.capacity() * std::mem::size_of::<Root>()
    }

    pub(crate) fn row(&self, node: NodeId) -> Range<usize> {
        self.row_start[node as usize] as usize..self.row_start[node as usize + 1] as usize
    }

    pub(crate) fn row_start(&self) -> &[u32] {
        &self.row_start
    }

    pub(crate) fn all_targets(&self) -> &[u32] {
        &self.targets
    }

    pub(crate) fn all_offsets(&self) -> &[u32] {
        &self.offsets
    }

    pub(crate) fn raw_labels(&self) -> &[u32] {
        &self.labels
    }
}

/// Collects nodes, edges and roots in any order, then builds a [`HeapGraph`].
///
/// Adding never fails; [`build`](Self::build) reports the first invalid input.
#[derive(Clone, Debug, Default)]
pub struct HeapGraphBuilder {
    sizes: Vec<u64>,
    labels: Vec<u32>,
    sources: Vec<u32>,
    targets: Vec<u32>,
    offsets: Vec<u32>,
    /// Still true while every edge so far came in ascending source order.
    grouped: bool,
    roots: Vec<Root>,
    error: Option<GraphError>,
}

impl HeapGraphBuilder {
    pub fn new() -> Self {
        Self::with_capacity(0, 0)
    }

    pub fn with_capacity(nodes: usize, edges: usize) -> Self {
        HeapGraphBuilder {
            sizes: Vec::with_capacity(nodes),
            labels: Vec::with_capacity(nodes),
            sources: Vec::with_capacity(edges),
            targets: Vec::with_capacity(edges),
            offsets: Vec::with_capacity(edges),
            grouped: true,
            roots: Vec::new(),
            error: None,
        }
    }

    /// Adds a block of `size` bytes; nodes are numbered in the order added.
    pub fn add_node(&mut self, size: u64, label: Option<LabelId>) -> NodeId {
        let id = self.sizes.len();
        let label = match label {
            Some(LabelId(NONE)) => {
                self.fail(GraphError::ReservedLabel { node: id as u32 });
                NONE
            }
            Some(LabelId(l)) => l,
            None => NONE,
        };
        self.sizes.push(size);
        self.labels.push(label);
        if id >= MAX_NODES {
            self.fail(GraphError::TooManyNodes { nodes: id + 1 });
        }
        id as NodeId
    }

    /// Records that `from` holds a pointer to `to` at byte `offset` inside
    /// `from`. Duplicates are merged at build time.
    pub fn add_edge(&mut self, from: NodeId, to: NodeId, offset: u64) {
        if let Some(&last) = self.sources.last() {
            self.grouped &= last <= from;
        }
        self.sources.push(from);
        self.targets.push(to);
        self.offsets
            .push(u32::try_from(offset).unwrap_or(OFFSET_UNKNOWN));
    }

    /// Records that a root refers to `node`.
    pub fn add_root(&mut self, node: NodeId, kind: RootKind, offset: Option<u64>) {
        self.roots.push(Root { node, kind, offset });
    }

    pub fn node_count(&self) -> usize {
        self.sizes.len()
    }

    fn fail(&mut self, error: GraphError) {
        self.error.get_or_insert(error);
    }

    /// Validates the input and lays the edges out in CSR form.
    pub fn build(mut self) -> Result<HeapGraph, GraphError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let n = self.sizes.len();
        // Every index the analysis builds (edges plus synthetic edges from
        // the super-root and cycle roots, at most one per node plus roots)
        // must fit in a u32.
        let budget = (u32::MAX - 1) as usize;
        if self.sources.len() >= budget || self.sources.len() + self.roots.len() + 2 * n >= budget {
            return Err(GraphError::TooManyEdges {
                edges: self.sources.len(),
                roots: self.roots.len(),
            });
        }
        for &node in self
            .roots
            .iter()
            .map(|r| &r.node)
            .chain(&self.sources)
            .chain(&self.targets)
        {
            if node as usize >= n {
                return Err(GraphError::NodeOutOfRange { node, nodes: n });
            }
        }

        let mut row_start = vec![0u32; n + 1];
        for &s in &self.sources {
            row_start[s as usize + 1] += 1;
        }
        for v in 0..n {
            row_start[v + 1] += row_start[v];
        }
        if !self.grouped {
            group_by_source(
                &row_start,
                &mut self.sources,
                &mut self.targets,
                &mut self.offsets,
            );
        }
        drop(std::mem::take(&mut self.sources));
        let (mut targets, mut offsets) = (self.targets, self.offsets);
        dedup_rows(&mut row_start, &mut targets, &mut offsets);

        Ok(HeapGraph {
            sizes: self.sizes,
            labels: self.labels,
            row_start,
            targets,
            offsets,
            roots: self.roots,
        })
    }
}

/// Permutes the three parallel edge arrays in place so that edges are grouped
/// by source in ascending order (American flag sort: every swap puts one edge
/// into its final bucket, so this is O(E) with one cursor per node).
fn group_by_source(
    row_start: &[u32],
    sources: &mut [u32],
    targets: &mut [u32],
    offsets: &mut [u32],
) {
    let n = row_start.len() - 1;
    let mut next: Vec<u32> = row_start[..n].to_vec();
    for bucket in 0..n {
        let end = row_start[bucket + 1];
        while next[bucket] < end {
            let i = next[bucket] as usize;
            let s = sources[i] as usize;
            if s == bucket {
                next[bucket] += 1;
                continue;
            }
            let j = next[s] as usize;
            next[s] += 1;
            sources.swap(i, j);
            targets.swap(i, j);
            offsets.swap(i, j);
        }
    }
}

/// Sorts every row by target and keeps one edge per target (the one with
/// the lowest offset), compacting the arrays in place.
fn dedup_rows(row_start: &mut [u32], targets: &mut Vec<u32>, offsets: &mut Vec<u32>) {
    let n = row_start.len() - 1;
    let mut scratch: Vec<u64> = Vec::new();
    let mut write = 0usize;
    let mut read_start = 0usize;
    for v in 0..n {
        let read_end = row_start[v + 1] as usize;
        row_start[v] = write as u32;
        let len = read_end - read_start;
        if len == 1 {
            targets[write] = targets[read_start];
            offsets[write] = offsets[read_start];
            write += 1;
        } else if len > 1 {
            scratch.clear();
            scratch.extend(
                (read_start..read_end).map(|i| (targets[i] as u64) << 32 | offsets[i] as u64),
            );
            scratch.sort_unstable();
            let mut last = NONE as u64 + 1; // no target equals this
            for &packed in &scratch {
                let target = packed >> 32;
                if target != last {
                    targets[write] = target as u32;
                    offsets[write] = packed as u32;
                    write += 1;
                    last = target;
                }
            }
        }
        read_start = read_end;
    }
    row_start[n] = write as u32;
    let removed = targets.len() - write;
    targets.truncate(write);
    offsets.truncate(write);
    if removed > write / 8 {
        targets.shrink_to_fit();
        offsets.shrink_to_fit();
    }
}
