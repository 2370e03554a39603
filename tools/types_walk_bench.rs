//! What reading blocks by their type costs against reading every word,
//! outside any pause: a micro-benchmark of `types::walk` for the scan.
//!
//! `types-walk-bench [N] [RUNS]` builds N object-shaped blocks (an id, a
//! score, a 48-byte label, an owned child box, a vector of items) and N
//! flat 1 KiB byte blocks, then times, RUNS times interleaved (default 5):
//! the conservative reading (every aligned word, each one in the live
//! range looked up in the sorted block starts, as the scan does) and the
//! typed walk (only the words the type says may be pointers, each looked
//! up the same way). Prints one JSON line per heap with the medians.

use std::hint::black_box;
use std::time::Instant;

use leakprof::record::types::{walk, BlockType, TypeMaps};

#[allow(dead_code)]
struct Leaf {
    data: [u64; 8],
}

#[allow(dead_code)]
struct Obj {
    id: u64,
    score: f64,
    label: [u8; 48],
    child: Option<Box<Leaf>>,
    items: Vec<u64>,
}

/// The sorted starts of every block the benchmark made, and their sizes.
struct Blocks {
    starts: Vec<usize>,
    sizes: Vec<usize>,
    lo: usize,
    hi: usize,
}

impl Blocks {
    fn new(mut list: Vec<(usize, usize)>) -> Blocks {
        list.sort_unstable();
        let lo = list.first().map_or(0, |b| b.0);
        let hi = list.last().map_or(0, |b| b.0 + b.1);
        Blocks {
            starts: list.iter().map(|b| b.0).collect(),
            sizes: list.iter().map(|b| b.1).collect(),
            lo,
            hi,
        }
    }

    #[inline(always)]
    fn find(&self, addr: usize) -> bool {
        if addr < self.lo || addr >= self.hi {
            return false;
        }
        match self.starts.partition_point(|&s| s <= addr).checked_sub(1) {
            Some(i) => addr < self.starts[i] + self.sizes[i],
            None => false,
        }
    }
}

fn read(addr: usize) -> usize {
    // SAFETY: only aligned words of live blocks this program owns.
    unsafe { std::ptr::read_volatile(addr as *const usize) }
}

fn conservative(blocks: &Blocks, targets: &[(usize, usize)]) -> u64 {
    let mut edges = 0;
    for &(start, size) in targets {
        let mut p = start;
        while p + 8 <= start + size {
            edges += blocks.find(read(p)) as u64;
            p += 8;
        }
    }
    edges
}

fn typed(maps: &TypeMaps, bt: BlockType, blocks: &Blocks, targets: &[(usize, usize)]) -> u64 {
    let mut edges = 0;
    for &(start, size) in targets {
        walk(maps, start, size, bt, &read, &mut |p| {
            edges += blocks.find(p.target) as u64;
        });
    }
    edges
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(
    name: &str,
    runs: usize,
    bytes: usize,
    mut a: impl FnMut() -> u64,
    mut b: impl FnMut() -> u64,
) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let (mut ea, mut eb) = (0, 0);
    for _ in 0..runs {
        let t = Instant::now();
        ea = black_box(a());
        ta.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        eb = black_box(b());
        tb.push(t.elapsed().as_secs_f64());
    }
    let (ma, mb) = (median(ta), median(tb));
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{{\"heap\":\"{name}\",\"runs\":{runs},\"bytes\":{bytes},\"conservative_s_per_gib\":{:.4},\"typed_s_per_gib\":{:.4},\"typed_over_conservative\":{:.2},\"edges_conservative\":{ea},\"edges_typed\":{eb}}}",
        ma / gib,
        mb / gib,
        mb / ma
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let maps = TypeMaps::load();
    let (Some(obj), Some(flat)) = (
        maps.type_named("types_walk_bench::Obj"),
        maps.type_named("[u8; 1024]"),
    ) else {
        eprintln!("types-walk-bench: the benchmark's own types are not in its DWARF (build with debug info)");
        std::process::exit(2);
    };
    let objs: Vec<Box<Obj>> = (0..n as u64)
        .map(|i| {
            Box::new(Obj {
                id: i,
                score: i as f64 * 0.5,
                label: [i as u8; 48],
                child: (i % 2 == 0).then(|| Box::new(Leaf { data: [i; 8] })),
                items: vec![i; 4],
            })
        })
        .collect();
    let flats: Vec<Box<[u8; 1024]>> = (0..n).map(|i| Box::new([i as u8; 1024])).collect();
    let mut all: Vec<(usize, usize)> = Vec::new();
    let obj_blocks: Vec<(usize, usize)> = objs
        .iter()
        .map(|o| (&**o as *const Obj as usize, std::mem::size_of::<Obj>()))
        .collect();
    let flat_blocks: Vec<(usize, usize)> =
        flats.iter().map(|f| (f.as_ptr() as usize, 1024)).collect();
    all.extend(&obj_blocks);
    all.extend(&flat_blocks);
    for o in &objs {
        if let Some(c) = &o.child {
            all.push((&**c as *const Leaf as usize, std::mem::size_of::<Leaf>()));
        }
        all.push((o.items.as_ptr() as usize, o.items.capacity() * 8));
    }
    let blocks = Blocks::new(all);
    let obj_bytes = obj_blocks.len() * std::mem::size_of::<Obj>();
    measure(
        "objects",
        runs,
        obj_bytes,
        || conservative(&blocks, &obj_blocks),
        || typed(&maps, BlockType::one(obj), &blocks, &obj_blocks),
    );
    measure(
        "flat",
        runs,
        flat_blocks.len() * 1024,
        || conservative(&blocks, &flat_blocks),
        || typed(&maps, BlockType::one(flat), &blocks, &flat_blocks),
    );
}
