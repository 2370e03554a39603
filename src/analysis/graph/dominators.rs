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
//! Time is O(E log V) for the first pass and O(V * depth-climbed) for the
//! second, which is linear on heap-shaped graphs; memory is 6 `u32` per
//! vertex plus one per edge, all freed on return except the result.

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

    // Preorder numbering by an iterative DFS; the stack holds (vertex, next
    // edge cursor), so it never exceeds the depth of the DFS tree.
    let mut pre = vec![NONE; total];
    let mut preorder: Vec<u32> = Vec::with_capacity(total);
    let mut parent: Vec<u32> = Vec::with_capacity(total);
    let mut stack: Vec<(u32, u32)> = Vec::new();
    pre[g.root as usize] = 0;
    preorder.push(g.root);
    parent.push(0);
    stack.push((g.root, g.span(g.root).0));
    while let Some(top) = stack.last_mut() {
        let (v, cursor) = *top;
        if cursor < g.span(v).1 {
            top.1 += 1;
            let w = g.target(v, cursor);
            if pre[w as usize] == NONE && !g.is_cut(v, w) {
                pre[w as usize] = preorder.len() as u32;
                parent.push(pre[v as usize]);
                preorder.push(w);
                stack.push((w, g.span(w).0));
            }
        } else {
            stack.pop();
        }
    }
    drop(stack);
    let m = preorder.len();

    // Predecessors in preorder numbering, bucketed by target: count, turn
    // the counts into bucket ends, then fill each bucket from its end.
    let mut pred_start = vec![0u32; m + 1];
    for &v in &preorder {
        for w in g.successors(v) {
            pred_start[pre[w as usize] as usize] += 1;
        }
    }
    let mut acc = 0u32;
    for slot in pred_start.iter_mut() {
        acc += *slot;
        *slot = acc;
    }
    let mut preds = vec![0u32; acc as usize];
    for (i, &v) in preorder.iter().enumerate() {
        for w in g.successors(v) {
            let bucket = &mut pred_start[pre[w as usize] as usize];
            *bucket -= 1;
            preds[*bucket as usize] = i as u32;
        }
    }
    pred_start[m] = acc;
    drop(pre);

    // Pass 1: semidominators. `best[v]` is the smallest semidominator on the
    // compressed forest path from v up to (not including) its forest root.
    let mut semi: Vec<u32> = (0..m as u32).collect();
    let mut best = semi.clone();
    let mut ancestor = parent.clone();
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
                eval(v, w, &mut ancestor, &mut best, &mut path)
            };
            s = s.min(candidate);
        }
        semi[w as usize] = s;
        best[w as usize] = s;
    }
    drop((best, ancestor, preds, pred_start, path));

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
fn eval(v: u32, w: u32, ancestor: &mut [u32], best: &mut [u32], path: &mut Vec<u32>) -> u32 {
    // Collect the vertices whose ancestor is itself linked: their pointers
    // can be shortened to the forest root.
    let mut u = v;
    while ancestor[u as usize] > w {
        path.push(u);
        u = ancestor[u as usize];
    }
    // `u` is the last linked vertex; its ancestor is the root. Top-down,
    // each vertex takes its (already compressed) ancestor's best and jumps
    // to that ancestor's ancestor, which is the root.
    while let Some(x) = path.pop() {
        let a = ancestor[x as usize] as usize;
        if best[a] < best[x as usize] {
            best[x as usize] = best[a];
        }
        ancestor[x as usize] = ancestor[a];
    }
    best[v as usize]
}
