//! A brute-force oracle: reachability by plain BFS, strongly connected
//! components by pairwise reachability, dominators by the iterative
//! set-intersection dataflow (Dom(v) = {v} ∪ ⋂ Dom(pred)) over bitsets,
//! retained sizes by summing every block a vertex dominates. Quadratic, so
//! only for graphs of a few thousand nodes, and independent of every
//! algorithm it checks.

use super::super::dominators::{semi_nca, Flowgraph};
use super::super::*;
use crate::format::Amount;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// SplitMix64: small, seedable, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// Random graphs with the shapes that matter: sparse and dense, few or no
/// roots (lots of unreachable memory and cycles), local edges (long chains
/// and rings), duplicate edges, self-loops, edges in any order.
pub fn random_graph(rng: &mut Rng, n: usize) -> HeapGraph {
    let mut b = HeapGraphBuilder::new();
    for _ in 0..n {
        let label = (rng.below(5) == 0).then(|| LabelId(rng.below(3) as u32));
        b.add_node(1 + rng.below(100), label);
    }
    let degree_x2 = [1, 2, 3, 6][rng.below(4) as usize];
    let mut edges: Vec<(u32, u32, u64)> = (0..n * degree_x2 / 2)
        .map(|_| {
            let from = rng.below(n as u64) as u32;
            let to = if rng.below(3) == 0 {
                ((from as u64 + 2 * n as u64 + rng.below(5) - 2) % n as u64) as u32
            } else {
                rng.below(n as u64) as u32
            };
            (from, to, 8 * rng.below(16))
        })
        .collect();
    if rng.below(2) == 0 {
        edges.sort_unstable();
    }
    for (from, to, off) in edges {
        b.add_edge(from, to, off);
    }
    let kinds = [
        RootKind::Stack,
        RootKind::Static,
        RootKind::Tls,
        RootKind::Registered(LabelId(2)),
    ];
    for _ in 0..rng.below(5) {
        b.add_root(
            rng.below(n as u64) as u32,
            kinds[rng.below(4) as usize],
            Some(rng.below(100)),
        );
    }
    b.build().unwrap()
}

struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize, full: bool) -> Bits {
        Bits(vec![if full { !0 } else { 0 }; len.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn count(&self, len: usize) -> usize {
        (0..len).filter(|&i| self.get(i)).count()
    }
}

fn bfs(adj: &[Vec<u32>], sources: &[u32], allowed: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut dist = vec![u32::MAX; adj.len()];
    let mut queue = VecDeque::new();
    for &s in sources {
        if dist[s as usize] == u32::MAX {
            dist[s as usize] = 0;
            queue.push_back(s);
        }
    }
    while let Some(v) = queue.pop_front() {
        for &w in &adj[v as usize] {
            if allowed(w) && dist[w as usize] == u32::MAX {
                dist[w as usize] = dist[v as usize] + 1;
                queue.push_back(w);
            }
        }
    }
    dist
}

/// Checks every answer of `r` against the brute-force computation.
pub fn check(g: &HeapGraph, r: &Retention) {
    let n = g.node_count();
    let adj: Vec<Vec<u32>> = (0..n as u32).map(|v| g.targets(v).to_vec()).collect();
    let root_nodes: Vec<u32> = g.roots().iter().map(|r| r.node).collect();

    // Reachability.
    let dist_root = bfs(&adj, &root_nodes, |_| true);
    let reachable = |v: u32| dist_root[v as usize] != u32::MAX;
    for v in 0..n as u32 {
        assert_eq!(r.is_reachable(v), reachable(v), "reachability of {v}");
    }

    // Unreachable SCCs by pairwise reachability; a component is named by
    // its smallest member.
    let unreach: Vec<u32> = (0..n as u32).filter(|&v| !reachable(v)).collect();
    let reach_from: BTreeMap<u32, Vec<u32>> = unreach
        .iter()
        .map(|&u| (u, bfs(&adj, &[u], |w| !reachable(w))))
        .collect();
    let mut comp = vec![u32::MAX; n];
    for &u in &unreach {
        comp[u as usize] = *unreach
            .iter()
            .find(|&&v| {
                reach_from[&u][v as usize] != u32::MAX && reach_from[&v][u as usize] != u32::MAX
            })
            .unwrap();
    }
    let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &u in &unreach {
        members.entry(comp[u as usize]).or_default().push(u);
    }
    let entered = |c: u32| {
        unreach.iter().any(|&x| {
            comp[x as usize] != c && adj[x as usize].iter().any(|&y| comp[y as usize] == c)
        })
    };
    let cyclic = |c: u32| members[&c].len() > 1 || adj[c as usize].contains(&c);
    let expected_cycles: BTreeMap<u32, (Vec<u32>, bool)> = members
        .keys()
        .filter(|&&c| cyclic(c))
        .map(|&c| (c, (members[&c].clone(), !entered(c))))
        .collect();
    let got_cycles: BTreeMap<u32, (Vec<u32>, bool)> = r
        .cycles()
        .iter()
        .map(|c| {
            (
                r.cycle_members(c.id)[0],
                (r.cycle_members(c.id).to_vec(), c.entry),
            )
        })
        .collect();
    assert_eq!(got_cycles, expected_cycles, "unreachable cycles");
    for c in r.cycles() {
        for &m in r.cycle_members(c.id) {
            assert_eq!(r.cycle_of(m), Some(c.id));
        }
        let bytes: u64 = r.cycle_members(c.id).iter().map(|&m| g.size(m)).sum();
        assert_eq!(
            c.members,
            Amount {
                bytes,
                blocks: r.cycle_members(c.id).len() as u64
            }
        );
    }
    let unreferenced: Vec<u32> = members
        .keys()
        .copied()
        .filter(|&c| !cyclic(c) && !entered(c))
        .collect();
    let entry_cycles: Vec<u32> = expected_cycles
        .iter()
        .filter(|(_, (_, e))| *e)
        .map(|(&c, _)| c)
        .collect();

    // The flow graph, built independently.
    let super_root = n;
    let total = n + 1 + entry_cycles.len();
    // Pointers from leaked blocks back into reachable memory do not keep
    // that memory alive: they are not part of the flow graph.
    let mut fadj: Vec<Vec<u32>> = (0..n as u32)
        .map(|v| {
            adj[v as usize]
                .iter()
                .copied()
                .filter(|&w| reachable(v) || !reachable(w))
                .collect()
        })
        .collect();
    let mut virt: Vec<u32> = root_nodes.clone();
    virt.extend(&unreferenced);
    virt.extend((0..entry_cycles.len()).map(|j| (n + 1 + j) as u32));
    fadj.push(virt);
    for &c in &entry_cycles {
        fadj.push(members[&c].clone());
    }
    let mut preds: Vec<Vec<u32>> = vec![Vec::new(); total];
    for (v, out) in fadj.iter().enumerate() {
        for &w in out {
            preds[w as usize].push(v as u32);
        }
    }

    // Dominator sets by dataflow.
    let mut dom: Vec<Bits> = (0..total).map(|_| Bits::new(total, true)).collect();
    dom[super_root] = Bits::new(total, false);
    dom[super_root].set(super_root);
    let mut changed = true;
    while changed {
        changed = false;
        for v in (0..total).filter(|&v| v != super_root) {
            let mut next = Bits::new(total, true);
            for &p in &preds[v] {
                for (a, b) in next.0.iter_mut().zip(&dom[p as usize].0) {
                    *a &= b;
                }
            }
            next.set(v);
            if next.0 != dom[v].0 {
                dom[v] = next;
                changed = true;
            }
        }
    }
    let counts: Vec<usize> = dom.iter().map(|d| d.count(total)).collect();
    let idom = |v: usize| -> usize {
        (0..total)
            .find(|&d| d != v && dom[v].get(d) && counts[d] + 1 == counts[v])
            .expect("every vertex has an idom")
    };
    let as_dominator = |d: usize| -> Dominator {
        if d < n {
            Dominator::Node(d as u32)
        } else if d == super_root {
            Dominator::Roots
        } else {
            let first = entry_cycles[d - n - 1];
            Dominator::Cycle(r.cycle_of(first).unwrap())
        }
    };
    for v in 0..n {
        assert_eq!(
            r.immediate_dominator(v as u32),
            as_dominator(idom(v)),
            "idom of {v}"
        );
        let (mut bytes, mut blocks) = (0, 0);
        for w in (0..n).filter(|&w| dom[w].get(v)) {
            bytes += g.size(w as u32);
            blocks += 1;
        }
        assert_eq!(
            r.retained(v as u32),
            Amount { bytes, blocks },
            "retained by {v}"
        );
    }
    for (j, &c) in entry_cycles.iter().enumerate() {
        let s = n + 1 + j;
        let bytes: u64 = (0..n)
            .filter(|&w| dom[w].get(s))
            .map(|w| g.size(w as u32))
            .sum();
        assert_eq!(
            r.cycles()[r.cycle_of(c).unwrap().0 as usize].retained.bytes,
            bytes
        );
    }

    // Retainer chains: real edges, the stored offsets, shortest lengths.
    let mut sources: Vec<u32> = unreferenced.clone();
    for &c in &entry_cycles {
        sources.extend(&members[&c]);
    }
    let dist_leak = bfs(&adj, &sources, |w| !reachable(w));
    for v in 0..n as u32 {
        let chain = r.retainer_chain(v);
        assert_eq!(*chain.last().unwrap(), v);
        let expected_len = if reachable(v) {
            dist_root[v as usize]
        } else {
            dist_leak[v as usize]
        };
        assert_eq!(
            chain.len() - 1,
            expected_len as usize,
            "chain of {v} is shortest"
        );
        match r.retainer(chain[0]) {
            Retainer::Root(i) => {
                assert_eq!(
                    g.roots().iter().position(|root| root.node == chain[0]),
                    Some(i as usize)
                )
            }
            Retainer::Cycle(c) => {
                assert!(r.cycle_members(c).contains(&chain[0]) && r.cycles()[c.0 as usize].entry)
            }
            Retainer::Unreferenced => assert!(unreferenced.contains(&chain[0])),
            Retainer::Pointer { .. } => panic!("chain of {v} starts at a pointer"),
        }
        for w in chain.windows(2) {
            let offset = g
                .edges(w[0])
                .find(|&(t, _)| t == w[1])
                .expect("chain follows edges")
                .1;
            assert_eq!(
                r.retainer(w[1]),
                Retainer::Pointer {
                    holder: w[0],
                    offset
                }
            );
        }
    }

    // Attribution by the documented rules, applied naively.
    let label = |v: u32| g.label(v);
    let mut expected_attr: Vec<Option<Attribution>> = vec![None; n];
    fn attr_of(
        v: usize,
        memo: &mut Vec<Option<Attribution>>,
        idom: &dyn Fn(usize) -> usize,
        rule3: &dyn Fn(u32) -> Attribution,
        label: &dyn Fn(u32) -> Option<LabelId>,
        n: usize,
    ) -> Attribution {
        if let Some(a) = memo[v] {
            return a;
        }
        let a = if label(v as u32).is_some() {
            Attribution::Owned(v as u32)
        } else if idom(v) < n {
            attr_of(idom(v), memo, idom, rule3, label, n)
        } else {
            rule3(v as u32)
        };
        memo[v] = Some(a);
        a
    }
    let rule3 = |v: u32| {
        let chain = r.retainer_chain(v);
        match chain.iter().rev().find(|&&u| g.label(u).is_some()) {
            Some(&o) => Attribution::Owned(o),
            None => Attribution::Unowned { holder: v },
        }
    };
    for v in 0..n {
        let a = attr_of(v, &mut expected_attr, &idom, &rule3, &label, n);
        assert_eq!(r.attribution(v as u32), a, "attribution of {v}");
    }

    // Per-label totals.
    let mut expected_labels: BTreeMap<LabelId, LabelSummary> = BTreeMap::new();
    for v in 0..n {
        let Some(l) = label(v as u32) else { continue };
        let s = expected_labels.entry(l).or_insert(LabelSummary {
            label: l,
            objects: 0,
            retained: Amount::default(),
            owned: Amount::default(),
        });
        let mut d = idom(v);
        let mut nested = false;
        while d < n {
            nested |= label(d as u32) == Some(l);
            d = idom(d);
        }
        if !nested {
            s.objects += 1;
            s.retained.add(r.retained(v as u32));
        }
    }
    for (v, attr) in expected_attr.iter().enumerate() {
        if let Attribution::Owned(o) = attr.unwrap() {
            let s = expected_labels.get_mut(&label(o).unwrap()).unwrap();
            s.owned.add(Amount {
                bytes: g.size(v as u32),
                blocks: 1,
            });
        }
    }
    assert_eq!(
        r.labels(),
        expected_labels
            .values()
            .copied()
            .collect::<Vec<_>>()
            .as_slice()
    );
}

/// The shape of a bench graph.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// A random spanning tree plus 5 pointers per block to uniformly random
    /// blocks: no locality at all, the worst case for caches and for the
    /// dominator pass (every block has in-degree 6, DFS trees are deep).
    Uniform,
    /// Closer to a real heap: most blocks have one holder allocated shortly
    /// before them, a third have one more pointer to them, mostly from
    /// nearby blocks (average out-degree about 1.3).
    HeapLike,
}

/// Builds a random graph of `nodes` blocks of the given shape (5% of the
/// blocks leaked, with cycles among them; 1% labelled; 1001 roots) and
/// times building and analysing it.
pub fn bench(nodes: usize, shape: Shape) {
    let mut rng = Rng(7);
    let leaked_from = nodes - nodes / 20;
    let t = Instant::now();
    let mut edges: Vec<(u32, u32, u64)> = Vec::with_capacity(nodes * 2);
    for v in 0..nodes as u64 {
        let (lo, hi) = if v as usize >= leaked_from {
            (leaked_from as u64, nodes as u64)
        } else {
            (0, leaked_from as u64)
        };
        let span = hi - lo;
        let near = |rng: &mut Rng, window: u64| {
            lo + (v - lo + span - 1 - rng.below(window.min(span))) % span
        };
        match shape {
            Shape::Uniform => {
                if v > lo {
                    edges.push(((lo + rng.below(v - lo)) as u32, v as u32, 8 * rng.below(8)));
                }
                for _ in 0..5 {
                    edges.push((v as u32, (lo + rng.below(span)) as u32, 8 * rng.below(64)));
                }
            }
            Shape::HeapLike => {
                if v > lo {
                    let holder = if rng.below(10) == 0 {
                        lo + rng.below(v - lo)
                    } else {
                        v - 1 - rng.below(256.min(v - lo))
                    };
                    edges.push((holder as u32, v as u32, 8 * rng.below(8)));
                }
                if rng.below(3) == 0 {
                    let from = if rng.below(5) == 0 {
                        lo + rng.below(span)
                    } else {
                        near(&mut rng, 4096)
                    };
                    edges.push((from as u32, v as u32, 8 * rng.below(64)));
                }
            }
        }
    }
    let builder = |edges: &[(u32, u32, u64)], rng: &mut Rng| {
        let mut b = HeapGraphBuilder::with_capacity(nodes, edges.len());
        let mut labels = Rng(rng.0);
        for _ in 0..nodes {
            let label = (labels.below(100) == 0).then(|| LabelId(labels.below(16) as u32));
            b.add_node(16 + labels.below(512), label);
        }
        for &(from, to, off) in edges {
            b.add_edge(from, to, off);
        }
        b.add_root(0, RootKind::Stack, None);
        for _ in 0..1000 {
            b.add_root(rng.below(leaked_from as u64) as u32, RootKind::Static, None);
        }
        b
    };
    let b = builder(&edges, &mut Rng(1));
    let generated = t.elapsed();
    let t = Instant::now();
    drop(b.build().unwrap());
    let built_shuffled = t.elapsed();
    // What a scan produces: edges grouped by source block.
    edges.sort_unstable_by_key(|e| e.0);
    let b = builder(&edges, &mut Rng(1));
    drop(edges);
    let t = Instant::now();
    let g = b.build().unwrap();
    let built = t.elapsed();

    let n = g.node_count();
    let roots: Vec<u32> = {
        let mut seen = vec![false; n];
        g.roots()
            .iter()
            .map(|r| r.node)
            .filter(|&v| !std::mem::replace(&mut seen[v as usize], true))
            .collect()
    };
    let mut reached = 0;
    let dominators_only = best_of(3, || {
        let doms = semi_nca(&Flowgraph {
            real_row: g.row_start(),
            real_targets: g.all_targets(),
            virt_row: &[0, roots.len() as u32],
            virt_targets: &roots,
            root: n as u32,
            live: None,
        });
        reached = doms.preorder.len();
    });
    // Peak memory of one analysis beyond what is already resident (the
    // graph): reset the high-water mark, run once, read it back. Meaningful
    // only when freed arrays leave the process, so run the bench with
    // MALLOC_MMAP_THRESHOLD_=131072 (glibc otherwise keeps them resident).
    let status_kib = |key: &str| -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string();
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let resident = status_kib("VmRSS:");
    let r = Retention::compute(&g);
    let peak_extra = status_kib("VmHWM:").saturating_sub(resident) * 1024;
    drop(r);
    let mut r = None;
    let computed = best_of(3, || {
        r = None;
        r = Some(Retention::compute(&g));
    });
    let r = r.unwrap();
    let t = Instant::now();
    let kept = r.subgraph(&SubgraphOptions::default(), &[]);
    let selected = t.elapsed();

    println!(
        "{shape:?}: nodes {n}, edges {}, cycles {}, labels {}\n\
         generate {generated:.2?}; build: edges grouped by source {built:.2?}, in random order {built_shuffled:.2?}\n\
         semi-NCA alone over the {reached} root-reachable vertices: {dominators_only}\n\
         Retention::compute: {computed}\n\
         subgraph (1000 largest) {selected:.2?}: {} nodes\n\
         graph {:.1} MiB ({:.1} B per node), retention kept {:.1} MiB ({:.1} B per node), \
         peak while computing {:.1} MiB ({:.1} B per node) above the graph",
        g.edge_count(),
        r.cycles().len(),
        r.labels().len(),
        kept.len(),
        g.memory_bytes() as f64 / (1 << 20) as f64,
        g.memory_bytes() as f64 / n as f64,
        r.memory_bytes() as f64 / (1 << 20) as f64,
        r.memory_bytes() as f64 / n as f64,
        peak_extra as f64 / (1 << 20) as f64,
        peak_extra as f64 / n as f64,
    );
}

/// Runs `f` `runs` times; "wall W, cpu C" of the fastest run by wall time.
/// The thread's CPU time shows how much of the wall time other processes
/// on a shared machine took.
fn best_of(runs: usize, mut f: impl FnMut()) -> String {
    fn thread_cpu() -> std::time::Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    let mut best = None;
    for _ in 0..runs {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        f();
        let run = (wall.elapsed(), thread_cpu() - cpu);
        if best.map_or(true, |b: (std::time::Duration, std::time::Duration)| {
            run.0 < b.0
        }) {
            best = Some(run);
        }
    }
    let (wall, cpu) = best.unwrap();
    format!("wall {wall:.2?}, cpu {cpu:.2?} (best of {runs})")
}
