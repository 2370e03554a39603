//! The heap-graph benchmark's workload (run by `tools/bench-scan`).
//!
//! `scan-bench objects N SIZE [exact|conservative]`: N objects of SIZE
//! bytes (`Box<[u64]>`), each pointing at another (a random graph), filled
//! otherwise with data: by type, every word is an address-wide integer, a
//! candidate pointer (the exact trace's worst case).
//! `scan-bench records N 1024 [exact|conservative]`: N 1 KiB structs
//! (`Record`: a pointer to an earlier record, an id, and pointer-free
//! measurements), each pointing at another: by type, two words of each
//! are read.
//! `scan-bench flat N SIZE [exact|conservative]`: N pointer-free blocks of
//! SIZE bytes (`Box<[u8]>`: by type, never read).
//!
//! Builds the heap under the recorder, takes one graph snapshot (the
//! conservative scan unless `exact`) and prints one JSON line: live bytes
//! and blocks, the stop-the-world pause, the whole snapshot's time, the
//! time the exact trace spent loading types before the pause, edges found,
//! RSS.

use std::hint::black_box;
use std::time::Instant;

/// A 1 KiB object with one pointer: the exact trace reads its pointer
/// and its address-wide id, never its measurements.
#[allow(dead_code)] // held for the scan, never read
struct Record {
    peer: Option<*const Record>,
    id: u64,
    weights: [f64; 64],
    samples: [u32; 124],
}

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("objects");
    let n: usize = args
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let size: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1024);
    let exact = args.get(4).map(String::as_str) == Some("exact");
    let rec = leakprof::Recorder::start(leakprof::Options::default().timeline_interval_ms(0))
        .expect("recorder");
    let words = size / 8;
    let mut objects: Vec<Box<[u64]>> = Vec::with_capacity(n);
    let mut flat: Vec<Box<[u8]>> = Vec::new();
    let mut records: Vec<Box<Record>> = Vec::new();
    if mode == "records" {
        records = Vec::with_capacity(n);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let peer = (i > 0).then(|| &*records[(x % i as u64) as usize] as *const Record);
            records.push(Box::new(Record {
                peer,
                id: i as u64,
                weights: [i as f64; 64],
                samples: [i as u32; 124],
            }));
        }
    }
    if mode == "flat" {
        flat = (0..n)
            .map(|i| vec![0x5a ^ i as u8; size].into_boxed_slice())
            .collect();
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (0..n).filter(|_| mode == "objects") {
        let mut o = vec![0x5a5a_5a5a_5a5a_5a5au64 ^ i as u64; words].into_boxed_slice();
        if mode == "objects" && i > 0 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Point at an earlier object: every object is reachable from
            // the Vec, and the graph has ~2 edges per object.
            o[0] = objects[(x % i as u64) as usize].as_ptr() as u64;
        }
        objects.push(o);
    }
    let t0 = Instant::now();
    let options = if exact {
        leakprof::GraphOptions::default()
    } else {
        leakprof::GraphOptions::default().conservative()
    };
    let p = rec.snapshot_with_graph(&options).expect("graph");
    let total = t0.elapsed().as_secs_f64();
    let g = p.graph.as_ref().unwrap();
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    println!(
        "{{\"mode\":\"{mode}\",\"exact\":{exact},\"objects\":{n},\"size\":{size},\"scanned_bytes\":{},\"scanned_blocks\":{},\"edges\":{},\"pause_s\":{:.4},\"snapshot_s\":{total:.4},\"prepare_s\":{:.4},\"exact_blocks\":{},\"peak_rss_bytes\":{rss},\"unreachable_bytes\":{}}}",
        g.scanned.bytes,
        g.scanned.blocks,
        g.edges,
        g.pause_ns as f64 / 1e9,
        g.coverage.as_ref().map_or(0.0, |c| c.prepare_ns as f64 / 1e9),
        g.coverage.as_ref().map_or(0, |c| c.exact.blocks),
        p.live.iter().filter(|l| l.unreachable).map(|l| l.bytes).sum::<u64>()
    );
    black_box(&objects);
    black_box(&flat);
    black_box(&records);
}
