#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();
use std::sync::{Arc, Mutex};
struct Node {
    other: Mutex<Option<Arc<Node>>>,
    data: Vec<u8>,
}
fn main() {
    let rec =
        leakprof::Recorder::start(leakprof::Options::default().timeline_interval_ms(0)).unwrap();
    // a leaked 2-cycle holding 1 MiB
    std::thread::spawn(|| {
        leakprof::with_tag(leakprof::Tag::task(1), || {
            let a = leakprof::owner::scope("error value", || {
                Arc::new(Node {
                    other: Mutex::new(None),
                    data: vec![1; 1 << 20],
                })
            });
            let b = Arc::new(Node {
                other: Mutex::new(Some(a.clone())),
                data: vec![],
            });
            *a.other.lock().unwrap() = Some(b);
        })
    })
    .join()
    .unwrap();
    // a reachable labelled cache
    let cache: Vec<Vec<u8>> =
        leakprof::owner::scope("cache", || (0..4).map(|_| vec![2u8; 4096]).collect());
    let t = std::time::Instant::now();
    let p = rec
        .snapshot_with_graph(&leakprof::GraphOptions::default())
        .unwrap();
    println!("graph in {:?}", t.elapsed());
    let g = p.graph.as_ref().unwrap();
    println!(
        "scanned {:?} edges {} pause {} us threads {}",
        g.scanned,
        g.edges,
        g.pause_ns / 1000,
        g.thread_roots
    );
    for o in &g.owners {
        println!(
            "owner {:30} {:?} objects {} retained {:?}",
            o.name, o.kind, o.objects, o.retained
        );
    }
    for c in &g.cycles {
        println!(
            "cycle {} members {:?} retained {:?} nodes {:?}",
            c.id, c.members, c.retained, c.nodes
        );
    }
    for n in g.nodes.iter().filter(|n| n.size >= 1 << 20) {
        println!(
            "node {:#x} size {} root {:?} parent {:?} unreachable {}",
            n.address, n.size, n.root, n.parent, n.unreachable
        );
        let mut cur = n.parent;
        while let Some(i) = cur {
            let m = &g.nodes[i as usize];
            println!(
                "   <- {:#x} size {} root {:?} tag {}",
                m.address, m.size, m.root, m.tag
            );
            cur = m.parent;
        }
    }
    let unreachable: u64 = p
        .live
        .iter()
        .filter(|g| g.unreachable)
        .map(|g| g.bytes)
        .sum();
    println!("unreachable bytes {unreachable}");
    drop(cache);
}
