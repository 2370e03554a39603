#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

#[inline(never)]
fn leak_some(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 1000]).collect()
}

fn main() {
    let rec = leakprof::Recorder::start(leakprof::Options::default()).unwrap();
    let kept = leakprof::with_tag(leakprof::Tag::task(7).retry(2), || leak_some(10));
    let p = rec.snapshot();
    println!(
        "live {:?} alloc {:?} peak {:?} frames {} stacks {} tags {}",
        p.totals.live,
        p.totals.allocated,
        p.totals.peak,
        p.frames.len(),
        p.stacks.len(),
        p.tags.len()
    );
    for g in &p.live {
        let st = &p.stacks[g.stack as usize];
        let names: Vec<_> = st
            .frames
            .iter()
            .take(4)
            .map(|&f| p.frames[f as usize].function.clone())
            .collect();
        println!(
            "  {:>8} B {:>3} blk tag {:?} {:?}",
            g.bytes, g.blocks, p.tags[g.tag as usize].task, names
        );
    }
    drop(kept);
    let p2 = rec.stop();
    println!("after drop live {:?}", p2.totals.live);
    p2.save("/tmp/smoke.json").unwrap();
}
