//! Who keeps each block alive: reachability, unreachable cycles, dominators,
//! retained sizes, owners and shortest retainer paths, computed in one go
//! by [`Retention::compute`].
//!
//! # The flow graph
//!
//! Dominators need a single entry, so the heap graph is extended with
//! virtual vertices numbered after the real nodes:
//!
//! - the **super-root** (vertex `n`), with an edge to every block a root
//!   refers to, and to every *unreferenced* unreachable block (an
//!   unreachable block that is not on a cycle and that no other unreachable
//!   block points to: a forgotten `Box::leak`, say);
//! - one **synthetic root** per unreachable cycle (vertex `n + 1 + cycle`),
//!   with an edge to every member of the cycle. The super-root has an edge
//!   to the synthetic root only when the cycle is an *entry* cycle, that is
//!   no unreachable block outside it points into it. A cycle held by other
//!   leaked memory is dominated through that memory instead.
//!
//! Pointers from unreachable blocks into reachable ones are left out of the
//! flow graph: leaked memory keeps nothing alive that the roots do not, so
//! it must not change the dominators or retained sizes of reachable memory.
//!
//! Every block is reachable in this flow graph: reachable blocks through
//! their roots; unreachable ones from the source components of the
//! unreachable subgraph, which are exactly the entry cycles and the
//! unreferenced blocks. So every block has a dominator, a retained size and
//! an attribution, leaked memory included.
//!
//! # Owners
//!
//! A block's **owner** is found by these rules, in order:
//!
//! 1. a labelled block owns itself;
//! 2. otherwise, if its immediate dominator is a block, it has the same
//!    attribution as that block (so the owner is the nearest labelled block
//!    on its dominator-tree path, if that path holds one);
//! 3. otherwise its immediate dominator is the super-root or a cycle's
//!    synthetic root: no single block dominates it (it is held by a root
//!    directly, by two roots, by two members of a cycle, ...). Then the
//!    owner is the nearest labelled block on its shortest retainer path
//!    (the BFS parent chain of [`Retention::retainer_chain`], from the block
//!    towards its root or cycle). Among equally short paths the one BFS
//!    finds first wins, deterministically: roots in the order listed, each
//!    block's pointers in ascending target order; leaked blocks start from
//!    entry-cycle members and unreferenced blocks in ascending node order;
//! 4. if that path holds no labelled block either, the block is unowned and
//!    its **top-most holder** is the block itself. Blocks below it in the
//!    dominator tree inherit that by rule 2, so an unowned block's holder is
//!    the highest block on its dominator path below the super-root or
//!    synthetic root.
//!
//! # Memory
//!
//! Kept: 28 bytes per node (BFS parent and offset, attribution, immediate
//! dominator, retained bytes and blocks) plus a bit for reachability and 8
//! bytes per cycle member. The peak while computing is about 36 bytes per
//! node plus 4 per edge on top of the graph, reached in the dominator pass
//! (its predecessor lists and link forest); every temporary is freed before
//! `compute` returns.
//!
//! # Cost
//!
//! Two BFS passes, Tarjan over the leaked blocks, the dominator pass and a
//! few linear sweeps: O((V + E) log V) at worst, dominated in practice by
//! cache misses of the DFS and semidominator passes on large graphs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::format::Amount;

use super::components::unreachable_components;
use super::dominators::{semi_nca, Dominators, Flowgraph};
use super::heap::{HeapGraph, LabelId, NodeId, NONE};
use super::node_set::NodeSet;

/// Index of an unreachable cycle in [`Retention::cycles`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CycleId(pub u32);

/// The immediate dominator of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dominator {
    /// Every path to the block goes through this block.
    Node(NodeId),
    /// No single block or cycle dominates it: a root refers to it directly,
    /// paths from several roots reach it, it is an unreferenced leaked
    /// block, or leaked memory from several entries reaches it.
    Roots,
    /// The block is a member of this entry cycle, or is reachable only from
    /// this cycle but from several of its members.
    Cycle(CycleId),
}

/// Where a block's memory is accounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// Held by this labelled block (possibly the block itself).
    Owned(NodeId),
    /// No labelled holder: group it by this top-most holder's allocation site.
    Unowned { holder: NodeId },
}

/// How a block is first reached on its shortest retainer path: the hop
/// before it (guppy's "referred via").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retainer {
    /// Referred to directly by `graph.roots()[index]`.
    Root(u32),
    /// Referred to by `holder`, through the pointer at byte `offset` inside
    /// it ([`OFFSET_UNKNOWN`](super::OFFSET_UNKNOWN) beyond 4 GiB).
    Pointer { holder: NodeId, offset: u32 },
    /// A member of this unreachable entry cycle: the chain starts here.
    Cycle(CycleId),
    /// An unreachable block nothing points to: the chain starts here.
    Unreferenced,
}

/// An unreachable strongly connected group of blocks: a true leak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleSummary {
    pub id: CycleId,
    /// The members themselves.
    pub members: Amount,
    /// For an entry cycle, everything that only the cycle keeps alive,
    /// members included (the retained size of its synthetic root). For a
    /// cycle that other leaked memory points into, the sum of the retained
    /// sizes of its members that are not dominated by another member: a
    /// lower bound, since memory the members hold jointly is dominated by
    /// the leaked holder.
    pub retained: Amount,
    /// True when no unreachable block outside the cycle points into it, so
    /// it has a synthetic root of its own.
    pub entry: bool,
}

/// Totals for one owner label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelSummary {
    pub label: LabelId,
    /// Labelled blocks not dominated by another block with the same label
    /// (the blocks of one labelled object count once).
    pub objects: u64,
    /// Sum of those blocks' retained sizes: memory dominated by objects of
    /// this label, including memory inside them owned by a nested,
    /// different label. Never counts a block twice for one label.
    pub retained: Amount,
    /// Memory whose [`Attribution`] is a block of this label. These
    /// partition the owned memory: each block is owned by exactly one label
    /// or none.
    pub owned: Amount,
}

/// Top bit of an attribution entry: set for `Unowned { holder }`.
const UNOWNED: u32 = 1 << 31;

/// The analysis of one heap graph. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Retention {
    nodes: u32,
    reachable: NodeSet,
    /// BFS parent per node; `NONE` at the start of a chain.
    parent: Vec<u32>,
    /// Offset of the pointer inside the BFS parent; at the start of a chain,
    /// the root index (reachable), the cycle id (entry cycle member) or
    /// `NONE` (unreferenced).
    parent_offset: Vec<u32>,
    /// Encoded [`Attribution`] per node.
    attribution: Vec<u32>,
    /// Immediate dominator per vertex (virtual vertices included); `NONE`
    /// for the synthetic roots of non-entry cycles.
    idom: Vec<u32>,
    retained_bytes: Vec<u64>,
    retained_blocks: Vec<u32>,
    cycles: Vec<CycleSummary>,
    /// Members of cycle `c`: `cycle_members[cycle_row[c]..cycle_row[c + 1]]`,
    /// ascending.
    cycle_row: Vec<u32>,
    cycle_members: Vec<NodeId>,
    /// `(node, cycle)` for every cycle member, sorted by node.
    member_index: Vec<(NodeId, u32)>,
    labels: Vec<LabelSummary>,
}

impl Retention {
    /// Runs every pass over `graph`. Linear in nodes and edges except the
    /// dominator pass (near-linear in practice); see the module docs for
    /// memory. Each step frees what the next ones do not need.
    pub fn compute(graph: &HeapGraph) -> Retention {
        let n = graph.node_count();
        let sizes = graph.sizes();
        let labels = graph.raw_labels();

        let mut paths = Paths::from_roots(graph);
        let reachable = paths.visited.clone();
        let leaked = Leaked::find(graph, &reachable, paths.order.len(), sizes);
        paths.extend_into(graph, &leaked);
        debug_assert_eq!(
            paths.order.len(),
            n,
            "every block is reached from a root or an entry"
        );
        let mut attribution = nearest_labelled_on_path(&paths, labels);
        let Paths {
            parent,
            parent_offset,
            rooted,
            ..
        } = paths;

        let vertex_count = n + 1 + leaked.cycles.len();
        let doms = dominators(graph, &leaked, rooted, &reachable);
        let Leaked {
            cycles,
            cycle_row,
            cycle_members,
            member_index,
            unreferenced,
        } = leaked;
        drop(unreferenced);
        let (retained_bytes, retained_blocks) = retained_sizes(&doms, sizes, vertex_count);
        attribute(&doms, labels, &mut attribution);
        let idom = doms.idom_by_vertex(vertex_count);
        drop(doms);
        let label_summaries = summarize_labels(
            labels,
            sizes,
            &attribution,
            &idom,
            n as u32,
            &retained_bytes,
            &retained_blocks,
        );

        let mut retention = Retention {
            nodes: n as u32,
            reachable,
            parent,
            parent_offset,
            attribution,
            idom,
            retained_bytes,
            retained_blocks,
            cycles,
            cycle_row,
            cycle_members,
            member_index,
            labels: label_summaries,
        };
        retention.fill_cycle_retained();
        retention
    }

    fn fill_cycle_retained(&mut self) {
        let n = self.nodes;
        for c in 0..self.cycles.len() {
            let retained = if self.cycles[c].entry {
                self.vertex_retained(n + 1 + c as u32)
            } else {
                let mut sum = Amount::default();
                for &m in self.cycle_members(CycleId(c as u32)) {
                    let d = self.idom[m as usize];
                    if d >= n || self.cycle_of(d) != Some(CycleId(c as u32)) {
                        sum.add(self.vertex_retained(m));
                    }
                }
                sum
            };
            self.cycles[c].retained = retained;
        }
    }

    fn vertex_retained(&self, v: u32) -> Amount {
        Amount {
            bytes: self.retained_bytes[v as usize],
            blocks: self.retained_blocks[v as usize] as u64,
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes as usize
    }

    /// True when a path from a root reaches the block.
    pub fn is_reachable(&self, node: NodeId) -> bool {
        self.reachable.contains(node)
    }

    pub fn immediate_dominator(&self, node: NodeId) -> Dominator {
        let d = self.idom[node as usize];
        if d < self.nodes {
            Dominator::Node(d)
        } else if d == self.nodes {
            Dominator::Roots
        } else {
            Dominator::Cycle(CycleId(d - self.nodes - 1))
        }
    }

    /// The block's dominator path: the block first, then its dominators,
    /// ending at its top-most holder; and what dominates that holder.
    pub fn dominator_path(&self, node: NodeId) -> (Vec<NodeId>, Dominator) {
        let mut path = vec![node];
        let mut v = node;
        loop {
            match self.immediate_dominator(v) {
                Dominator::Node(d) => {
                    path.push(d);
                    v = d;
                }
                top => return (path, top),
            }
        }
    }

    /// Memory the block dominates (would be freed with it), itself included.
    pub fn retained(&self, node: NodeId) -> Amount {
        self.vertex_retained(node)
    }

    pub fn attribution(&self, node: NodeId) -> Attribution {
        let a = self.attribution[node as usize];
        if a & UNOWNED == 0 {
            Attribution::Owned(a)
        } else {
            Attribution::Unowned {
                holder: a & !UNOWNED,
            }
        }
    }

    /// The labelled block that owns this one, if any.
    pub fn owner(&self, node: NodeId) -> Option<NodeId> {
        match self.attribution(node) {
            Attribution::Owned(o) => Some(o),
            Attribution::Unowned { .. } => None,
        }
    }

    /// The hop before this block on its shortest retainer path (byvia).
    pub fn retainer(&self, node: NodeId) -> Retainer {
        let p = self.parent[node as usize];
        let off = self.parent_offset[node as usize];
        if p != NONE {
            Retainer::Pointer {
                holder: p,
                offset: off,
            }
        } else if self.is_reachable(node) {
            Retainer::Root(off)
        } else if off != NONE {
            Retainer::Cycle(CycleId(off))
        } else {
            Retainer::Unreferenced
        }
    }

    /// The shortest retainer chain to `node`, starting block first and
    /// `node` last. `retainer(chain[0])` says where it starts (a root, an
    /// entry cycle, or nothing); for `i > 0`, `retainer(chain[i])` is the
    /// pointer from `chain[i - 1]`. For reachable blocks the chain is a
    /// shortest path from any root; for leaked ones, from any entry cycle
    /// member or unreferenced block.
    pub fn retainer_chain(&self, node: NodeId) -> Vec<NodeId> {
        let mut chain = vec![node];
        let mut v = node;
        while self.parent[v as usize] != NONE {
            v = self.parent[v as usize];
            chain.push(v);
        }
        chain.reverse();
        chain
    }

    /// Unreachable cycles, indexed by [`CycleId`], in the order Tarjan's
    /// algorithm completed them (cycles a cycle points to come first).
    pub fn cycles(&self) -> &[CycleSummary] {
        &self.cycles
    }

    /// Members of a cycle, ascending.
    pub fn cycle_members(&self, cycle: CycleId) -> &[NodeId] {
        let c = cycle.0 as usize;
        &self.cycle_members[self.cycle_row[c] as usize..self.cycle_row[c + 1] as usize]
    }

    /// The unreachable cycle the block is a member of.
    pub fn cycle_of(&self, node: NodeId) -> Option<CycleId> {
        self.member_index
            .binary_search_by_key(&node, |&(m, _)| m)
            .ok()
            .map(|i| CycleId(self.member_index[i].1))
    }

    /// Per-label totals for every label that some block carries, by label.
    pub fn labels(&self) -> &[LabelSummary] {
        &self.labels
    }

    /// The `count` blocks with the largest retained size, largest first
    /// (ties: lower node id first).
    pub fn largest(&self, count: usize) -> Vec<NodeId> {
        if count == 0 {
            return Vec::new();
        }
        // A min-heap of the best `count` so far, keyed so that the weakest
        // entry (fewest bytes, then highest id) is on top.
        let mut heap: BinaryHeap<Reverse<(u64, Reverse<NodeId>)>> =
            BinaryHeap::with_capacity(count + 1);
        for v in 0..self.nodes {
            let key = (self.retained_bytes[v as usize], Reverse(v));
            if heap.len() < count {
                heap.push(Reverse(key));
            } else if heap.peek().is_some_and(|weakest| key > weakest.0) {
                heap.pop();
                heap.push(Reverse(key));
            }
        }
        let mut out: Vec<(u64, Reverse<NodeId>)> = heap.into_iter().map(|Reverse(k)| k).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.into_iter().map(|(_, Reverse(v))| v).collect()
    }

    /// Heap memory held by this analysis, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.reachable.memory_bytes()
            + (self.parent.capacity()
                + self.parent_offset.capacity()
                + self.attribution.capacity()
                + self.idom.capacity()
                + self.retained_blocks.capacity()
                + self.cycle_row.capacity()
                + self.cycle_members.capacity())
                * 4
            + self.retained_bytes.capacity() * 8
            + self.member_index.capacity() * 8
            + self.cycles.capacity() * std::mem::size_of::<CycleSummary>()
            + self.labels.capacity() * std::mem::size_of::<LabelSummary>()
    }

    pub(crate) fn bfs_parent(&self, node: NodeId) -> Option<NodeId> {
        match self.parent[node as usize] {
            NONE => None,
            p => Some(p),
        }
    }
}

/// Shortest retainer paths: a breadth-first search from the roots, then
/// (see [`Paths::extend_into`]) from the starts of leaked memory.
struct Paths {
    visited: NodeSet,
    /// BFS parent per node; `NONE` at the start of a chain.
    parent: Vec<u32>,
    /// As `Retention::parent_offset`.
    parent_offset: Vec<u32>,
    /// Every visited node, in visiting order (parents first).
    order: Vec<NodeId>,
    /// How many distinct blocks the roots refer to (the first `rooted`
    /// entries of `order`).
    rooted: usize,
}

impl Paths {
    fn from_roots(graph: &HeapGraph) -> Paths {
        let n = graph.node_count();
        let mut paths = Paths {
            visited: NodeSet::new(n),
            parent: vec![NONE; n],
            parent_offset: vec![NONE; n],
            order: Vec::with_capacity(n),
            rooted: 0,
        };
        for (i, root) in graph.roots().iter().enumerate() {
            if paths.visited.insert(root.node) {
                paths.parent_offset[root.node as usize] = i as u32;
                paths.order.push(root.node);
            }
        }
        paths.rooted = paths.order.len();
        paths.breadth_first(graph, 0);
        paths
    }

    /// Chains into leaked memory start at entry cycles' members (their
    /// `parent_offset` is the cycle id) and at unreferenced blocks, in
    /// ascending node order; the search continues from them.
    fn extend_into(&mut self, graph: &HeapGraph, leaked: &Leaked) {
        let head = self.order.len();
        let mut members = leaked
            .member_index
            .iter()
            .filter(|&&(_, c)| leaked.cycles[c as usize].entry)
            .peekable();
        let mut unreferenced = leaked.unreferenced.iter().copied().peekable();
        loop {
            let (node, offset) = match (members.peek().copied(), unreferenced.peek().copied()) {
                (Some(&(m, c)), u) if u.map_or(true, |u| m < u) => {
                    members.next();
                    (m, c)
                }
                (_, Some(u)) => {
                    unreferenced.next();
                    (u, NONE)
                }
                _ => break,
            };
            self.visited.insert(node);
            self.parent_offset[node as usize] = offset;
            self.order.push(node);
        }
        self.breadth_first(graph, head);
    }

    fn breadth_first(&mut self, graph: &HeapGraph, head: usize) {
        breadth_first(
            graph,
            &mut self.visited,
            &mut self.parent,
            &mut self.parent_offset,
            &mut self.order,
            head,
        );
    }
}

/// The memory no root reaches: unreachable cycles (strongly connected
/// groups, a self-loop included) and unreferenced blocks.
struct Leaked {
    cycles: Vec<CycleSummary>,
    /// As `Retention::cycle_row`.
    cycle_row: Vec<u32>,
    cycle_members: Vec<NodeId>,
    /// `(node, cycle)` for every cycle member, sorted by node.
    member_index: Vec<(NodeId, u32)>,
    /// Unreachable blocks on no cycle that no unreachable block points
    /// to, ascending.
    unreferenced: Vec<NodeId>,
}

impl Leaked {
    /// `reachable_count`: how many blocks the roots reach.
    fn find(
        graph: &HeapGraph,
        reachable: &NodeSet,
        reachable_count: usize,
        sizes: &[u64],
    ) -> Leaked {
        let mut leaked = Leaked {
            cycles: Vec::new(),
            cycle_row: vec![0],
            cycle_members: Vec::new(),
            member_index: Vec::new(),
            unreferenced: Vec::new(),
        };
        let n = graph.node_count();
        if reachable_count == n {
            return leaked;
        }
        let components = unreachable_components(graph, reachable);
        let comp = &components.of_node;
        let count = components.count as usize;
        let unreachable = || (0..n as NodeId).filter(|&u| !reachable.contains(u));

        let shapes = ComponentShapes::of(graph, reachable, comp, count);

        // A cycle per component of two or more blocks, or with a self-loop.
        let mut cycle_of_comp = vec![NONE; count];
        for (k, cycle) in cycle_of_comp.iter_mut().enumerate() {
            if shapes.size[k] > 1 || shapes.self_loop.contains(k as u32) {
                *cycle = leaked.cycles.len() as u32;
                leaked.cycles.push(CycleSummary {
                    id: CycleId(leaked.cycles.len() as u32),
                    members: Amount::default(),
                    retained: Amount::default(),
                    entry: !shapes.entered.contains(k as u32),
                });
                leaked.cycle_row.push(shapes.size[k]);
            }
        }
        let cycles = leaked.cycles.len();
        for c in 0..cycles {
            leaked.cycle_row[c + 1] += leaked.cycle_row[c];
        }

        // Members (by cycle, ascending) and unreferenced blocks.
        leaked.cycle_members = vec![0; leaked.cycle_row[cycles] as usize];
        let mut fill: Vec<u32> = leaked.cycle_row[..cycles].to_vec();
        for u in unreachable() {
            let k = comp[u as usize] as usize;
            let c = cycle_of_comp[k];
            if c != NONE {
                leaked.cycle_members[fill[c as usize] as usize] = u;
                fill[c as usize] += 1;
                leaked.member_index.push((u, c));
                leaked.cycles[c as usize].members.add(Amount {
                    bytes: sizes[u as usize],
                    blocks: 1,
                });
            } else if !shapes.entered.contains(k as u32) {
                leaked.unreferenced.push(u);
            }
        }
        leaked
    }

    fn members(&self, c: usize) -> &[NodeId] {
        &self.cycle_members[self.cycle_row[c] as usize..self.cycle_row[c + 1] as usize]
    }
}

/// What decides whether an unreachable component is a cycle, and whether
/// it is an entry: its size, a self-loop, a pointer into it from another
/// unreachable component.
struct ComponentShapes {
    size: Vec<u32>,
    self_loop: NodeSet,
    entered: NodeSet,
}

impl ComponentShapes {
    fn of(graph: &HeapGraph, reachable: &NodeSet, comp: &[u32], count: usize) -> ComponentShapes {
        let mut shapes = ComponentShapes {
            size: vec![0u32; count],
            self_loop: NodeSet::new(count),
            entered: NodeSet::new(count),
        };
        for u in (0..graph.node_count() as NodeId).filter(|&u| !reachable.contains(u)) {
            let cu = comp[u as usize];
            shapes.size[cu as usize] += 1;
            for &w in graph.targets(u) {
                let cw = comp[w as usize];
                if cw == NONE {
                    continue; // a pointer back into reachable memory
                }
                if cw != cu {
                    shapes.entered.insert(cw);
                } else if w == u {
                    shapes.self_loop.insert(cu);
                }
            }
        }
        shapes
    }
}

/// Rule 3's fallback, computed ahead: the nearest labelled block on each
/// block's BFS path (`NONE` if none). BFS order visits parents first. The
/// result is the start of the attribution array, which [`attribute`]
/// overwrites where the dominators decide.
fn nearest_labelled_on_path(paths: &Paths, labels: &[u32]) -> Vec<u32> {
    let mut nearest = vec![NONE; paths.parent.len()];
    for &v in &paths.order {
        let v = v as usize;
        nearest[v] = if labels[v] != NONE {
            v as u32
        } else if paths.parent[v] != NONE {
            nearest[paths.parent[v] as usize]
        } else {
            NONE
        };
    }
    nearest
}

/// Dominators over the flow graph of the module docs: the heap graph plus
/// the super-root (vertex `n`: edges to the rooted blocks, the unreferenced
/// blocks and the entry cycles' synthetic roots) and one synthetic root
/// per cycle (vertex `n + 1 + c`: edges to its members, entry cycles only).
fn dominators(
    graph: &HeapGraph,
    leaked: &Leaked,
    rooted: usize,
    reachable: &NodeSet,
) -> Dominators {
    let n = graph.node_count();
    let super_root = n as u32;
    let cycles = &leaked.cycles;
    let mut virt_row: Vec<u32> = Vec::with_capacity(cycles.len() + 2);
    let mut virt_targets: Vec<u32> = Vec::new();
    virt_row.push(0);
    let mut seen = NodeSet::new(n);
    for r in graph.roots() {
        if seen.insert(r.node) {
            virt_targets.push(r.node);
        }
    }
    drop(seen);
    debug_assert_eq!(virt_targets.len(), rooted);
    virt_targets.extend(&leaked.unreferenced);
    virt_targets.extend(
        (0..cycles.len())
            .filter(|&c| cycles[c].entry)
            .map(|c| super_root + 1 + c as u32),
    );
    virt_row.push(virt_targets.len() as u32);
    for (c, cycle) in cycles.iter().enumerate() {
        if cycle.entry {
            virt_targets.extend(leaked.members(c));
        }
        virt_row.push(virt_targets.len() as u32);
    }
    let doms = semi_nca(&Flowgraph {
        real_row: graph.row_start(),
        real_targets: graph.all_targets(),
        virt_row: &virt_row,
        virt_targets: &virt_targets,
        root: super_root,
        live: Some(reachable),
    });
    debug_assert_eq!(
        doms.preorder.len(),
        n + 1 + cycles.len() - cycles.iter().filter(|c| !c.entry).count()
    );
    doms
}

/// Retained bytes and blocks per vertex: children come after their idom
/// in preorder, so a reverse sweep adds every subtree into its parent.
/// Summed straight into the kept per-vertex arrays, to keep the peak low.
fn retained_sizes(doms: &Dominators, sizes: &[u64], vertex_count: usize) -> (Vec<u64>, Vec<u32>) {
    let n = sizes.len();
    let mut bytes: Vec<u64> = (0..vertex_count)
        .map(|v| if v < n { sizes[v] } else { 0 })
        .collect();
    let mut blocks: Vec<u32> = (0..vertex_count).map(|v| (v < n) as u32).collect();
    for i in (1..doms.preorder.len()).rev() {
        let v = doms.preorder[i] as usize;
        let d = doms.preorder[doms.idom[i] as usize] as usize;
        bytes[d] += bytes[v];
        blocks[d] += blocks[v];
    }
    (bytes, blocks)
}

/// Attribution by rules 1 to 4 (module docs), in preorder so a block's
/// idom is final before the block; `attribution` holds rule 3's fallback
/// on entry.
fn attribute(doms: &Dominators, labels: &[u32], attribution: &mut [u32]) {
    let n = labels.len();
    for i in 1..doms.preorder.len() {
        let v = doms.preorder[i] as usize;
        if v >= n {
            continue;
        }
        if labels[v] != NONE {
            attribution[v] = v as u32;
            continue;
        }
        let d = doms.preorder[doms.idom[i] as usize] as usize;
        if d < n {
            attribution[v] = attribution[d];
        } else if attribution[v] == NONE {
            attribution[v] = UNOWNED | v as u32;
        }
    }
}

/// Breadth-first search continuing from `order[head..]`, which holds the
/// already-visited sources; appends every newly reached block to `order`.
fn breadth_first(
    graph: &HeapGraph,
    visited: &mut NodeSet,
    parent: &mut [u32],
    parent_offset: &mut [u32],
    order: &mut Vec<NodeId>,
    mut head: usize,
) {
    let row_start = graph.row_start();
    let targets = graph.all_targets();
    let offsets = graph.all_offsets();
    while head < order.len() {
        let v = order[head];
        head += 1;
        for e in row_start[v as usize] as usize..row_start[v as usize + 1] as usize {
            let w = targets[e];
            if visited.insert(w) {
                parent[w as usize] = v;
                parent_offset[w as usize] = offsets[e];
                order.push(w);
            }
        }
    }
}

/// Per-label objects, retained and owned totals. "Objects" are labelled
/// blocks with no same-label block above them in the dominator tree, found
/// by one iterative walk of the tree that counts, per label, how many blocks
/// of that label are on the current path.
fn summarize_labels(
    labels: &[u32],
    sizes: &[u64],
    attribution: &[u32],
    idom: &[u32],
    super_root: u32,
    retained_bytes: &[u64],
    retained_blocks: &[u32],
) -> Vec<LabelSummary> {
    let n = labels.len();
    let Some(max_label) = labels.iter().copied().filter(|&l| l != NONE).max() else {
        return Vec::new();
    };
    let label_count = max_label as usize + 1;
    let mut summaries: Vec<LabelSummary> = (0..label_count as u32)
        .map(|l| LabelSummary {
            label: LabelId(l),
            objects: 0,
            retained: Amount::default(),
            owned: Amount::default(),
        })
        .collect();

    for (v, &a) in attribution.iter().enumerate() {
        if a & UNOWNED == 0 {
            summaries[labels[a as usize] as usize].owned.add(Amount {
                bytes: sizes[v],
                blocks: 1,
            });
        }
    }

    // Children of each vertex in the dominator tree (CSR by vertex id):
    // count, turn counts into bucket ends, fill each bucket from its end.
    let total = idom.len();
    let is_child = |v: usize| v as u32 != super_root && idom[v] != NONE;
    let mut child_start = vec![0u32; total + 1];
    for v in (0..total).filter(|&v| is_child(v)) {
        child_start[idom[v] as usize] += 1;
    }
    let mut acc = 0u32;
    for slot in child_start.iter_mut() {
        acc += *slot;
        *slot = acc;
    }
    let mut children = vec![0u32; acc as usize];
    for v in (0..total).filter(|&v| is_child(v)) {
        let slot = &mut child_start[idom[v] as usize];
        *slot -= 1;
        children[*slot as usize] = v as u32;
    }

    let label_of = |v: u32| -> u32 {
        if (v as usize) < n {
            labels[v as usize]
        } else {
            NONE
        }
    };
    let mut on_path = vec![0u32; label_count];
    let mut stack: Vec<(u32, u32)> = vec![(super_root, child_start[super_root as usize])];
    while let Some(top) = stack.last_mut() {
        let (v, cursor) = *top;
        if cursor < child_start[v as usize + 1] {
            top.1 += 1;
            let child = children[cursor as usize];
            let l = label_of(child);
            if l != NONE {
                if on_path[l as usize] == 0 {
                    let s = &mut summaries[l as usize];
                    s.objects += 1;
                    s.retained.add(Amount {
                        bytes: retained_bytes[child as usize],
                        blocks: retained_blocks[child as usize] as u64,
                    });
                }
                on_path[l as usize] += 1;
            }
            stack.push((child, child_start[child as usize]));
        } else {
            stack.pop();
            let l = label_of(v);
            if l != NONE {
                on_path[l as usize] -= 1;
            }
        }
    }
    summaries.retain(|s| s.objects > 0);
    summaries
}
