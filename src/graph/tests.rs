//! Hand-built graphs with known answers, a brute-force oracle for random
//! graphs, a deep-chain test, and the timing benches (ignored by default).

use super::*;
use crate::format::Amount;

mod oracle;

const L_ERROR: LabelId = LabelId(0);
const L_FUTURE: LabelId = LabelId(1);
const L_SLOT: LabelId = LabelId(2);

fn amount(bytes: u64, blocks: u64) -> Amount {
    Amount { bytes, blocks }
}

fn label_summary(r: &Retention, label: LabelId) -> LabelSummary {
    *r.labels()
        .iter()
        .find(|s| s.label == label)
        .expect("label has a summary")
}

/// A small DSL: nodes named by index, all edges at offset 8 * position.
fn graph(
    sizes: &[u64],
    labels: &[Option<LabelId>],
    edges: &[(u32, u32)],
    roots: &[u32],
) -> HeapGraph {
    let mut b = HeapGraphBuilder::new();
    for (i, &s) in sizes.iter().enumerate() {
        b.add_node(s, labels.get(i).copied().flatten());
    }
    for (k, &(from, to)) in edges.iter().enumerate() {
        b.add_edge(from, to, 8 * k as u64);
    }
    for &r in roots {
        b.add_root(r, RootKind::Stack, None);
    }
    b.build().expect("valid graph")
}

#[test]
fn chain_is_dominated_link_by_link() {
    // root -> 0 -> 1 -> 2
    let g = graph(&[10, 20, 30], &[], &[(0, 1), (1, 2)], &[0]);
    let r = Retention::compute(&g);
    assert_eq!(r.immediate_dominator(0), Dominator::Roots);
    assert_eq!(r.immediate_dominator(1), Dominator::Node(0));
    assert_eq!(r.immediate_dominator(2), Dominator::Node(1));
    assert_eq!(r.retained(0), amount(60, 3));
    assert_eq!(r.retained(1), amount(50, 2));
    assert_eq!(r.retained(2), amount(30, 1));
    assert_eq!(r.retainer_chain(2), vec![0, 1, 2]);
    assert_eq!(r.retainer(0), Retainer::Root(0));
    assert_eq!(
        r.retainer(2),
        Retainer::Pointer {
            holder: 1,
            offset: 8
        }
    );
    assert_eq!(r.dominator_path(2), (vec![2, 1, 0], Dominator::Roots));
    // No labels anywhere: everything is grouped by the top-most holder.
    for v in 0..3 {
        assert_eq!(r.attribution(v), Attribution::Unowned { holder: 0 });
        assert!(r.is_reachable(v));
    }
    assert!(r.cycles().is_empty());
}

#[test]
fn diamond_is_dominated_by_the_fork_not_a_branch() {
    // root -> fork -> {left, right} -> join
    let (fork, left, right, join) = (0, 1, 2, 3);
    let g = graph(
        &[1, 2, 4, 8],
        &[],
        &[(fork, left), (fork, right), (left, join), (right, join)],
        &[fork],
    );
    let r = Retention::compute(&g);
    assert_eq!(r.immediate_dominator(join), Dominator::Node(fork));
    assert_eq!(r.immediate_dominator(left), Dominator::Node(fork));
    assert_eq!(
        r.retained(left),
        amount(2, 1),
        "a branch does not retain the join"
    );
    assert_eq!(r.retained(fork), amount(15, 4));
    // The shortest chain goes through the first branch found.
    assert_eq!(r.retainer_chain(join), vec![fork, left, join]);
}

#[test]
fn node_held_by_two_roots_falls_back_to_its_retainer_path() {
    // root -> error(labelled) -> shared -> payload
    // root -> slot(labelled)  -> shared
    let (error, slot, shared, payload) = (0, 1, 2, 3);
    let labels = [Some(L_ERROR), Some(L_SLOT), None, None];
    let edges = [(error, shared), (slot, shared), (shared, payload)];
    let g = graph(&[10, 10, 5, 100], &labels, &edges, &[error, slot]);
    let r = Retention::compute(&g);
    assert_eq!(r.immediate_dominator(shared), Dominator::Roots);
    assert_eq!(r.immediate_dominator(payload), Dominator::Node(shared));
    // No block dominates `shared`; its shortest retainer path runs through
    // the error value (first root), so the error value owns it and, through
    // the dominator tree, the payload.
    assert_eq!(r.retainer_chain(payload), vec![error, shared, payload]);
    assert_eq!(r.attribution(shared), Attribution::Owned(error));
    assert_eq!(r.attribution(payload), Attribution::Owned(error));
    // Retained: neither labelled object dominates the shared memory.
    assert_eq!(label_summary(&r, L_ERROR).retained, amount(10, 1));
    assert_eq!(label_summary(&r, L_ERROR).owned, amount(115, 3));
    assert_eq!(label_summary(&r, L_SLOT).owned, amount(10, 1));

    // With the roots listed the other way round, the slot's path is found
    // first: the tie-break is the root order, deterministically.
    let g = graph(&[10, 10, 5, 100], &labels, &edges, &[slot, error]);
    let r = Retention::compute(&g);
    assert_eq!(r.attribution(payload), Attribution::Owned(slot));

    // Without labels, the shared block is the payload's top-most holder.
    let g = graph(&[10, 10, 5, 100], &[], &edges, &[error, slot]);
    let r = Retention::compute(&g);
    assert_eq!(
        r.attribution(payload),
        Attribution::Unowned { holder: shared }
    );
    assert_eq!(r.attribution(error), Attribution::Unowned { holder: error });
}

#[test]
fn labelled_object_owns_and_retains_its_payload() {
    // root -> holder -> error value (labelled) -> message -> payload
    let (holder, error, message, payload) = (0, 1, 2, 3);
    let labels = [None, Some(L_ERROR), None, None];
    let g = graph(
        &[8, 32, 24, 1 << 20],
        &labels,
        &[(holder, error), (error, message), (message, payload)],
        &[holder],
    );
    let r = Retention::compute(&g);
    assert_eq!(r.attribution(payload), Attribution::Owned(error));
    assert_eq!(r.attribution(message), Attribution::Owned(error));
    assert_eq!(r.attribution(holder), Attribution::Unowned { holder });
    let s = label_summary(&r, L_ERROR);
    assert_eq!(s.objects, 1);
    assert_eq!(s.retained, amount(32 + 24 + (1 << 20), 3));
    assert_eq!(s.owned, s.retained);
    assert_eq!(r.labels().len(), 1);
}

/// The seed's bug: the original executor leaves `FutureState <-> TaskError`
/// behind, unreachable, with the payload hanging off the error.
#[test]
fn unreachable_future_error_cycle_holds_the_payload() {
    let (worker, future, error, payload, other) = (0, 1, 2, 3, 4);
    let labels = [None, None, Some(L_ERROR), None, None];
    let edges = [
        (worker, other),
        (future, error),
        (error, future),
        (error, payload),
        (error, other),
    ];
    let g = graph(&[64, 40, 48, 128, 16], &labels, &edges, &[worker]);
    let r = Retention::compute(&g);

    assert!(r.is_reachable(worker) && r.is_reachable(other));
    for v in [future, error, payload] {
        assert!(!r.is_reachable(v));
    }
    assert_eq!(r.cycles().len(), 1);
    let cycle = r.cycles()[0];
    assert_eq!(r.cycle_members(cycle.id), &[future, error]);
    assert!(cycle.entry);
    assert_eq!(cycle.members, amount(40 + 48, 2));
    assert_eq!(
        cycle.retained,
        amount(40 + 48 + 128, 3),
        "members plus payload, not the reachable block"
    );
    assert_eq!(r.cycle_of(error), Some(cycle.id));
    assert_eq!(r.cycle_of(payload), None);

    assert_eq!(r.immediate_dominator(future), Dominator::Cycle(cycle.id));
    assert_eq!(r.immediate_dominator(error), Dominator::Cycle(cycle.id));
    assert_eq!(r.immediate_dominator(payload), Dominator::Node(error));
    assert_eq!(r.attribution(payload), Attribution::Owned(error));
    assert_eq!(
        r.attribution(future),
        Attribution::Unowned { holder: future }
    );
    // "unreachable cycle #0 -> TaskError (+0x18) -> payload"
    assert_eq!(r.retainer_chain(payload), vec![error, payload]);
    assert_eq!(r.retainer(error), Retainer::Cycle(cycle.id));
    assert_eq!(
        r.retainer(payload),
        Retainer::Pointer {
            holder: error,
            offset: 24
        }
    );
    // The reachable block the error points to stays with the worker: a
    // pointer from leaked memory does not keep anything alive.
    assert_eq!(r.immediate_dominator(other), Dominator::Node(worker));
    assert_eq!(r.retained(worker), amount(80, 2));
}

#[test]
fn payload_held_by_two_cycle_members_falls_back_to_the_chain() {
    // error(0, labelled) <-> future(1); both point to the payload.
    let labels = [Some(L_ERROR), Some(L_FUTURE), None];
    let g = graph(
        &[10, 10, 128],
        &labels,
        &[(0, 1), (1, 0), (0, 2), (1, 2)],
        &[],
    );
    let r = Retention::compute(&g);
    let c = r.cycles()[0].id;
    assert_eq!(r.immediate_dominator(2), Dominator::Cycle(c));
    assert_eq!(
        r.retainer_chain(2),
        vec![0, 2],
        "members start the BFS in id order"
    );
    assert_eq!(r.attribution(2), Attribution::Owned(0));
    assert_eq!(r.cycles()[0].retained, amount(148, 3));
    assert_eq!(label_summary(&r, L_ERROR).retained, amount(10, 1));
}

#[test]
fn nested_labels_inner_wins_and_outer_counts_once() {
    // root -> outer(A) -> inner(B) -> p ; outer -> q
    let (outer, inner, p, q) = (0, 1, 2, 3);
    let labels = [Some(L_SLOT), Some(L_ERROR), None, None];
    let g = graph(
        &[1, 2, 100, 1000],
        &labels,
        &[(outer, inner), (inner, p), (outer, q)],
        &[outer],
    );
    let r = Retention::compute(&g);
    assert_eq!(r.attribution(p), Attribution::Owned(inner));
    assert_eq!(r.attribution(q), Attribution::Owned(outer));
    let slot = label_summary(&r, L_SLOT);
    let error = label_summary(&r, L_ERROR);
    assert_eq!(
        slot.retained,
        amount(1103, 4),
        "outer retains the inner object"
    );
    assert_eq!(slot.owned, amount(1001, 2));
    assert_eq!(error.retained, amount(102, 2));
    assert_eq!(error.owned, amount(102, 2));

    // Same label nested three deep (one object of several blocks, plus a
    // second object): each block counted once.
    // root -> a1 -> a2 -> a3 -> p ; root -> b1 -> p2
    let labels = [
        Some(L_ERROR),
        Some(L_ERROR),
        Some(L_ERROR),
        None,
        Some(L_ERROR),
        None,
    ];
    let edges = [(0, 1), (1, 2), (2, 3), (4, 5)];
    let g = graph(&[1, 2, 4, 8, 16, 32], &labels, &edges, &[0, 4]);
    let r = Retention::compute(&g);
    let s = label_summary(&r, L_ERROR);
    assert_eq!(s.objects, 2);
    assert_eq!(s.retained, amount(63, 6));
    assert_eq!(s.owned, amount(63, 6));
    assert_eq!(
        r.attribution(3),
        Attribution::Owned(2),
        "the nearest labelled block owns"
    );
}

#[test]
fn self_loops() {
    // A leaked block pointing to itself is a cycle of one; a reachable one
    // is not reported.
    let g = graph(&[7, 5, 3, 2], &[], &[(0, 0), (0, 1), (2, 2), (2, 3)], &[2]);
    let r = Retention::compute(&g);
    assert_eq!(r.cycles().len(), 1);
    let c = r.cycles()[0];
    assert_eq!(r.cycle_members(c.id), &[0]);
    assert_eq!(c.retained, amount(12, 2));
    assert_eq!(r.immediate_dominator(1), Dominator::Node(0));
    assert_eq!(r.immediate_dominator(0), Dominator::Cycle(c.id));
    assert_eq!(r.immediate_dominator(3), Dominator::Node(2));
}

#[test]
fn unreferenced_leak_and_a_cycle_it_holds() {
    // leaked(0) -> c1(1) <-> c2(2); c1 -> p(3); c2 -> p
    let g = graph(
        &[1, 10, 20, 100],
        &[],
        &[(0, 1), (1, 2), (2, 1), (1, 3), (2, 3)],
        &[],
    );
    let r = Retention::compute(&g);
    assert_eq!(r.retainer(0), Retainer::Unreferenced);
    assert_eq!(r.immediate_dominator(0), Dominator::Roots);
    assert_eq!(
        r.immediate_dominator(3),
        Dominator::Node(1),
        "c2 is only reached through c1"
    );
    assert_eq!(r.retained(0), amount(131, 4));
    let c = r.cycles()[0];
    assert!(!c.entry, "the leaked block holds the cycle");
    assert_eq!(c.retained, amount(130, 3));
    assert_eq!(r.attribution(3), Attribution::Unowned { holder: 0 });
    assert_eq!(r.retainer_chain(3), vec![0, 1, 3]);
}

#[test]
fn builder_sorts_merges_and_validates() {
    let mut b = HeapGraphBuilder::new();
    for _ in 0..4 {
        b.add_node(1, None);
    }
    b.add_edge(3, 0, 40);
    b.add_edge(1, 2, 16);
    b.add_edge(1, 2, 8);
    b.add_edge(0, 3, 0);
    b.add_edge(1, 0, 1 << 40);
    b.add_edge(3, 0, 24);
    let g = b.build().unwrap();
    assert_eq!(g.edge_count(), 4);
    assert_eq!(g.edges(0).collect::<Vec<_>>(), vec![(3, 0)]);
    assert_eq!(
        g.edges(1).collect::<Vec<_>>(),
        vec![(0, OFFSET_UNKNOWN), (2, 8)]
    );
    assert_eq!(g.edges(2).count(), 0);
    assert_eq!(g.edges(3).collect::<Vec<_>>(), vec![(0, 24)]);

    let mut b = HeapGraphBuilder::new();
    b.add_node(1, None);
    b.add_edge(0, 1, 0);
    assert_eq!(
        b.build().unwrap_err(),
        GraphError::NodeOutOfRange { node: 1, nodes: 1 }
    );
    let mut b = HeapGraphBuilder::new();
    b.add_node(1, None);
    b.add_root(5, RootKind::Tls, None);
    assert!(matches!(
        b.build(),
        Err(GraphError::NodeOutOfRange { node: 5, .. })
    ));
    let mut b = HeapGraphBuilder::new();
    b.add_node(1, Some(LabelId(u32::MAX)));
    assert_eq!(
        b.build().unwrap_err(),
        GraphError::ReservedLabel { node: 0 }
    );
}

#[test]
fn empty_graph() {
    let r = Retention::compute(&HeapGraphBuilder::new().build().unwrap());
    assert_eq!(r.node_count(), 0);
    assert!(r.labels().is_empty() && r.cycles().is_empty());
    assert!(r.subgraph(&SubgraphOptions::default(), &[]).is_empty());
}

/// The example flow graph of Lengauer and Tarjan's 1979 paper, with the
/// immediate dominators it lists.
#[test]
fn lengauer_tarjan_paper_example() {
    let names = "RABCDEFGHIJKL";
    let id = |c: char| names.find(c).unwrap() as u32;
    let edges: Vec<(u32, u32)> = [
        "RA", "RB", "RC", "AD", "BA", "BD", "BE", "CF", "CG", "DL", "EH", "FI", "GI", "GJ", "HE",
        "HK", "IK", "JI", "KI", "KR", "LH",
    ]
    .iter()
    .map(|e| {
        let mut c = e.chars();
        (id(c.next().unwrap()), id(c.next().unwrap()))
    })
    .collect();
    let g = graph(&[1; 13], &[], &edges, &[0]);
    let r = Retention::compute(&g);
    let expected = [
        ('A', 'R'),
        ('B', 'R'),
        ('C', 'R'),
        ('D', 'R'),
        ('E', 'R'),
        ('F', 'C'),
        ('G', 'C'),
        ('H', 'R'),
        ('I', 'R'),
        ('J', 'G'),
        ('K', 'R'),
        ('L', 'D'),
    ];
    for (v, d) in expected {
        assert_eq!(
            r.immediate_dominator(id(v)),
            Dominator::Node(id(d)),
            "idom({v})"
        );
    }
    oracle::check(&g, &r);
}

#[test]
fn random_graphs_agree_with_the_brute_force_oracle() {
    let mut rng = oracle::Rng(0x5eed);
    for case in 0..300 {
        let n = match case % 10 {
            0 => 2000,
            1..=3 => 1 + rng.below(400) as usize,
            _ => 1 + rng.below(40) as usize,
        };
        let g = oracle::random_graph(&mut rng, n);
        let r = Retention::compute(&g);
        oracle::check(&g, &r);
    }
}

#[test]
fn subgraph_keeps_chains_and_dominator_paths() {
    let mut rng = oracle::Rng(99);
    for _ in 0..30 {
        let g = oracle::random_graph(&mut rng, 300);
        let r = Retention::compute(&g);
        let extra = [rng.below(300) as u32];
        let opts = SubgraphOptions::new(10, 3);
        let kept = r.subgraph(&opts, &extra);
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        let has = |v: u32| kept.binary_search(&v).is_ok();
        let largest = r.largest(10);
        assert_eq!(largest.len(), 10);
        for w in largest.windows(2) {
            assert!(r.retained(w[0]).bytes >= r.retained(w[1]).bytes);
        }
        let min_kept = r.retained(*largest.last().unwrap()).bytes;
        assert!((0..300).all(|v| largest.contains(&v) || r.retained(v).bytes <= min_kept));
        for &v in largest.iter().chain(&extra) {
            assert!(r.retainer_chain(v).iter().all(|&u| has(u)));
            assert!(r.dominator_path(v).0.iter().all(|&u| has(u)));
        }
        for &v in &kept {
            if let Some(c) = r.cycle_of(v) {
                let members = r.cycle_members(c);
                assert!(members[..members.len().min(3)].iter().all(|&m| has(m)));
            }
        }
    }
}

/// A chain of 5,000,000 blocks from one root, and a leaked ring of 1,000,000
/// (one strongly connected component as deep as it is long): every pass
/// must be iterative.
#[test]
fn deep_chains_do_not_overflow_the_stack() {
    const CHAIN: u32 = 5_000_000;
    const RING: u32 = 1_000_000;
    let mut b = HeapGraphBuilder::with_capacity((CHAIN + RING) as usize, (CHAIN + RING) as usize);
    for _ in 0..CHAIN + RING {
        b.add_node(1, None);
    }
    for v in 0..CHAIN - 1 {
        b.add_edge(v, v + 1, 0);
    }
    for i in 0..RING {
        b.add_edge(CHAIN + i, CHAIN + (i + 1) % RING, 0);
    }
    b.add_root(0, RootKind::Stack, None);
    let r = Retention::compute(&b.build().unwrap());
    assert_eq!(r.retained(0), amount(CHAIN as u64, CHAIN as u64));
    assert_eq!(r.immediate_dominator(CHAIN - 1), Dominator::Node(CHAIN - 2));
    assert_eq!(r.retainer_chain(CHAIN - 1).len(), CHAIN as usize);
    assert_eq!(r.cycles().len(), 1);
    assert_eq!(r.cycles()[0].retained, amount(RING as u64, RING as u64));
    // Every member of an entry cycle hangs off the cycle's synthetic root.
    assert_eq!(
        r.immediate_dominator(CHAIN + 5),
        Dominator::Cycle(r.cycles()[0].id)
    );
}

/// Timing of the whole analysis on random graphs, uniform and heap-shaped.
/// Run with
/// `cargo test --release --no-default-features --lib graph::tests::bench -- --ignored --nocapture`;
/// `LEAKPROF_BENCH_NODES=10000000` for the 10M figures, and
/// `MALLOC_MMAP_THRESHOLD_=131072` for a meaningful peak-memory figure.
#[test]
#[ignore = "timing bench: run in release"]
fn bench_retention() {
    let nodes: usize = std::env::var("LEAKPROF_BENCH_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    if std::env::var_os("LEAKPROF_BENCH_HEAP_ONLY").is_none() {
        oracle::bench(nodes, oracle::Shape::Uniform);
    }
    oracle::bench(nodes, oracle::Shape::HeapLike);
}
