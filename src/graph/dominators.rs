//! Immediate dominators by semi-NCA (Georgiadis, Tarjan and Werneck,
//! "Finding dominators in practice", 2006), fully iterative.
//!
//! The flow graph is the heap graph plus virtual vertices `n..` (the
//! super-root and the synthetic roots of unreachable cycles) that have their
//! own small CSR. Vertices are renumbered in DFS preorder, predecessors are
//! laid out once in that numbering, and the two passes run over dense
//! `u32` arrays:
//!
//! 1. semidominators, in reverse preorder, with `eval` by iterative path
//!    compression over a forest whose "linked" test is `vertex > w` (vertices
//!    are linked in decreasing preorder, so no separate link array is kept);
//! 2. nearest common ancestors: `idom(w)` is the deepest ancestor of
//!    `parent(w)` in the partial dominator tree whose number is at most
//!    `semi(w)`, found by climbing from `parent(w)`.
//!
//! Time is O(E log V) for the first pass (simple path compression) and
//! O(V * depth climbed) for the second, near-linear on heap-shaped graphs.
//! On graphs larger than the cache the passes are bound by memory latency,
//! so the layout avoids random accesses where it can: a visited bitset for
//! the DFS, rows of the next vertices touched ahead, predecessor cursors
//! indexed by vertex id, and each vertex's link-forest pointer stored next to
//! its best semidominator. Memory: at most 6 `u32` per vertex plus one per
//! edge, all freed on return except the result (2 `u32` per vertex).

use super::heap::NONE;
use super::node_set::NodeSet;

/// The heap graph's edges plus the virtual vertices' edges.
pub(crate) struct Flowgraph<'a> {
    /// Real vertices are `0..real_row.len() - 1`.
    pub real_row: &'a [u32],
    pub real_targets: &'a [u32],
    /// Vertex `n + i` has the targets `virt_targets[virt_row[i]..virt_row[i + 1]]`.
    pub virt_row: &'a [u32],
    pub virt_targets: &'a [u32],
    pub root: u32,
    /// When set, an edge from a real vertex outside this set to one inside
    /// it is not part of the flow graph (pointers from leaked memory back
    /// into reachable memory keep nothing alive).
    pub live: Option<&'a NodeSet>,
}

impl Flowgraph<'_> {
    fn real_count(&self) -> u32 {
        (self.real_row.len() - 1) as u32
    }

    fn vertex_count(&self) -> usize {
        self.real_row.len() - 1 + self.virt_row.len() - 1
    }

    /// Range of `v`'s successors in its CSR, as absolute cursor values.
    fn span(&self, v: u32) -> (u32, u32) {
        let n = self.real_count();
        if v < n {
            (self.real_row[v as usize], self.real_row[v as usize + 1])
        } else {
            let i = (v - n) as usize;
            (self.virt_row[i], self.virt_row[i + 1])
        }
    }

    fn target(&self, v: u32, cursor: u32) -> u32 {
        if v < self.real_count() {
            self.real_targets[cursor as usize]
        } else {
            self.virt_targets[cursor as usize]
        }
    }

    /// True when the edge `v -> w` is cut (see `live`).
    fn is_cut(&self, v: u32, w: u32) -> bool {
        match self.live {
            Some(live) => v < self.real_count() && !live.contains(v) && live.contains(w),
            None => false,
        }
    }

    fn successors(&self, v: u32) -> impl Iterator<Item = u32> + '_ {
        let (a, b) = self.span(v);
        let targets = if v < self.real_count() {
            &self.real_targets[a as usize..b as usize]
        } else {
            &self.virt_targets[a as usize..b as usize]
        };
        // Only a leaked vertex can have cut edges: test liveness once.
        let leaked = v < self.real_count() && self.live.is_some_and(|live| !live.contains(v));
        targets
            .iter()
            .copied()
            .filter(move |&w| !(leaked && self.is_cut(v, w)))
    }
}

/// The dominator tree in DFS preorder.
pub(crate) struct Dominators {
    /// `preorder[i]` is the vertex numbered `i`; `preorder[0]` is the root.
    /// Vertices the root does not reach are absent.
    pub preorder: Vec<u32>,
    /// `idom[i]` is the preorder number of the immediate dominator of
    /// `preorder[i]`; always `< i` except `idom[0] == 0`.
    pub idom: Vec<u32>,
}

impl Dominators {
    /// Immediate dominator per vertex id (`NONE` for unreached vertices,
    /// the root for the root itself).
    pub(crate) fn idom_by_vertex(&self, vertex_count: usize) -> Vec<u32> {
        let mut out = vec![NONE; vertex_count];
        for (i, &v) in self.preorder.iter().enumerate() {
            out[v as usize] = self.preorder[self.idom[i] as usize];
        }
        out
    }
}

pub(crate) fn semi_nca(g: &Flowgraph<'_>) -> Dominators {
    let total = g.vertex_count();

    // Preorder numbering by an iterative DFS; the stack holds one frame per
    // vertex on the current DFS path, so it never exceeds the tree's depth.
    struct Frame {
        vertex: u32,
        cursor: u32,
        end: u32,
        /// A leaked vertex, whose edges into live memory are cut.
        leaked: bool,
    }
    let frame = |v: u32| {
        let (cursor, end) = g.span(v);
        let leaked = v < g.real_count() && g.live.is_some_and(|live| !live.contains(v));
        Frame {
            vertex: v,
            cursor,
            end,
            leaked,
        }
    };
    // `seen` is the visited test: a bit per vertex stays in cache where the
    // `pre` array would not, and the test runs once per edge.
    let mut seen = NodeSet::new(total);
    let mut pre = vec![NONE; total];
    let mut preorder: Vec<u32> = Vec::with_capacity(total);
    let mut parent: Vec<u32> = Vec::with_capacity(total);
    let mut stack: Vec<Frame> = Vec::new();
    seen.insert(g.root);
    pre[g.root as usize] = 0;
    preorder.push(g.root);
    parent.push(0);
    stack.push(frame(g.root));
    while let Some(top) = stack.last_mut() {
        if top.cursor == top.end {
            stack.pop();
            continue;
        }
        let (v, w) = (top.vertex, g.target(top.vertex, top.cursor));
        top.cursor += 1;
        if !(top.leaked && g.is_cut(v, w)) && seen.insert(w) {
            pre[w as usize] = preorder.len() as u32;
            parent.push(pre[v as usize]);
            preorder.push(w);
            let f = frame(w);
            // Touch the rows of w's unvisited successors now: the loads are
            // independent, so they overlap, and the DFS finds them cached.
            let mut touch = 0u32;
            for c in f.cursor..f.end {
                let x = g.target(w, c);
                if x < g.real_count() && !seen.contains(x) {
                    touch = touch.wrapping_add(g.real_row[x as usize]);
                }
            }
            std::hint::black_box(touch);
            stack.push(f);
        }
    }
    drop(stack);
    let m = preorder.len();

    // Predecessors in preorder numbering, bucketed by target in preorder.
    // `cursor` is indexed by vertex id, so the per-edge work touches one
    // random slot to count and two to fill: in-degrees, then bucket ends
    // laid out in preorder, then each bucket filled from its end. Edges are
    // read in vertex order, sequentially.
    let mut cursor = vec![0u32; total];
    for v in (0..total as u32).filter(|&v| seen.contains(v)) {
        for w in g.successors(v) {
            cursor[w as usize] += 1;
        }
    }
    drop(seen);
    let mut acc = 0u32;
    for &v in &preorder {
        acc += cursor[v as usize];
        cursor[v as usize] = acc;
    }
    let mut preds = vec![0u32; acc as usize];
    for v in (0..total as u32).filter(|&v| pre[v as usize] != NONE) {
        let pv = pre[v as usize];
        for w in g.successors(v) {
            let slot = &mut cursor[w as usize];
            *slot -= 1;
            preds[*slot as usize] = pv;
        }
    }
    let mut pred_start: Vec<u32> = preorder.iter().map(|&v| cursor[v as usize]).collect();
    pred_start.push(acc);
    drop((cursor, pre));

    // Pass 1: semidominators. `forest[v]` is (ancestor, best): v's pointer
    // in the path-compressed link forest, and the smallest semidominator on
    // the forest path from v up to (not including) its forest root. The two
    // live side by side because eval reads them together, and on a graph
    // larger than the cache every separate array costs a miss.
    let mut semi: Vec<u32> = (0..m as u32).collect();
    let mut forest: Vec<(u32, u32)> = parent.iter().copied().zip(0..m as u32).collect();
    let mut path: Vec<u32> = Vec::new();
    for w in (1..m as u32).rev() {
        let mut s = w;
        let span = pred_start[w as usize] as usize..pred_start[w as usize + 1] as usize;
        for &v in &preds[span] {
            // A predecessor numbered below w is not linked yet: it is its own
            // candidate (its semi is still its own number).
            let candidate = if v <= w {
                v
            } else {
                eval(v, w, &mut forest, &mut path)
            };
            s = s.min(candidate);
        }
        semi[w as usize] = s;
        forest[w as usize].1 = s;
    }
    drop((forest, preds, pred_start, path));

    // Pass 2: idom(w) = the nearest ancestor of parent(w) in the dominator
    // tree built so far whose number is at most semi(w). `parent` becomes
    // `idom` in place: entries below w are already final.
    let mut idom = parent;
    for w in 1..m {
        let s = semi[w];
        let mut d = idom[w];
        while d > s {
            d = idom[d as usize];
        }
        idom[w] = d;
    }
    Dominators { preorder, idom }
}

/// The smallest `best` value on the forest path from linked vertex `v`
/// (`v > w`) up to, not including, its forest root, compressing the path on
/// the way. Iterative form of the textbook recursive `compress`: a vertex is
/// linked when its number is above `w`, and its forest root is the first
/// vertex on the `ancestor` chain that is not.
fn eval(v: u32, w: u32, forest: &mut [(u32, u32)], path: &mut Vec<u32>) -> u32 {
    // Collect the vertices whose ancestor is itself linked: their pointers
    // can be shortened to the forest root.
    let mut u = v;
    loop {
        let ancestor = forest[u as usize].0;
        if ancestor <= w {
            break;
        }
        path.push(u);
        u = ancestor;
    }
    // `u` is the last linked vertex; its ancestor is the root. Top-down,
    // each vertex takes its (already compressed) ancestor's best and jumps
    // to that ancestor's ancestor, which is the root.
    while let Some(x) = path.pop() {
        let (up, up_best) = forest[forest[x as usize].0 as usize];
        let entry = &mut forest[x as usize];
        entry.0 = up;
        entry.1 = entry.1.min(up_best);
    }
    forest[v as usize].1
}
