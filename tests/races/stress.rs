//! Graph snapshots against a busy process: 16 threads that allocate,
//! reallocate, sleep in system calls, and start and exit.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use leakprof::format::Profile;
use leakprof::GraphOptions;

use super::{groups_from, start, stop_stats};

/// Snapshots taken (`LEAKPROF_STRESS_SNAPSHOTS` overrides, for a quick run).
const SNAPSHOTS: usize = 10_000;
/// Every this many snapshots the workers pause and the totals are checked
/// against the groups.
const QUIET_EVERY: usize = 1_000;
/// Time allowed for all of it: issue 9's bound. It tells a hang or a
/// quadratic slowdown from a slow machine; the run prints what it took
/// (each snapshot's time and pause), which is the figure to watch.
const BOUND: Duration = Duration::from_secs(120);

const WORKER_FUNCTIONS: &[&str] = &["churn_piece", "grow_text", "short_lived_piece"];

/// Pauses all workers at a barrier when asked.
struct Quiet {
    asked: AtomicBool,
    arrive: Barrier,
    leave: Barrier,
}

impl Quiet {
    fn maybe_pause(&self) {
        if self.asked.load(Ordering::Acquire) {
            self.arrive.wait();
            self.leave.wait();
        }
    }
}

#[inline(never)]
fn churn_piece(size: usize) -> Box<[u8]> {
    black_box(vec![3u8; size].into_boxed_slice())
}

#[inline(never)]
fn grow_text(s: &mut String, i: usize) {
    s.push_str(if i % 2 == 0 { "leakprof " } else { "stress " });
    if s.len() > 300_000 {
        s.clear();
        s.shrink_to(64);
    }
}

#[inline(never)]
fn short_lived_piece() -> Vec<u64> {
    black_box((0..256).collect())
}

fn churner(seed: usize, stop: &AtomicBool, quiet: &Quiet) {
    let mut window: Vec<Box<[u8]>> = Vec::new();
    let mut numbers: Vec<u64> = Vec::new();
    let mut x = seed as u64 | 1;
    while !stop.load(Ordering::Relaxed) {
        quiet.maybe_pause();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            window.push(churn_piece(16 + (x % 3000) as usize));
            if window.len() > 200 {
                window.swap_remove((x >> 32) as usize % window.len());
            }
            numbers.push(x);
            if numbers.len() > 50_000 {
                numbers.truncate(10);
                numbers.shrink_to_fit();
            }
        }
        // Bursts, not a busy loop: two cores are shared by 17 threads and
        // the scanner must get its turn.
        std::thread::sleep(Duration::from_micros(200));
    }
    black_box((&window, &numbers));
}

fn texter(stop: &AtomicBool, quiet: &Quiet) {
    let mut s = String::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        quiet.maybe_pause();
        for _ in 0..256 {
            grow_text(&mut s, i);
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    black_box(&s);
}

fn sleeper(kind: usize, stop: &AtomicBool, quiet: &Quiet) {
    let held = churn_piece(128);
    while !stop.load(Ordering::Relaxed) {
        quiet.maybe_pause();
        match kind % 3 {
            0 => std::thread::sleep(Duration::from_micros(500)),
            // SAFETY: no descriptors; EINTR is fine, the loop goes on.
            1 => unsafe {
                libc::poll(std::ptr::null_mut(), 0, 1);
            },
            _ => {
                let m = std::sync::Mutex::new(());
                let cv = std::sync::Condvar::new();
                let g = m.lock().unwrap();
                let _ = cv.wait_timeout(g, Duration::from_micros(700)).unwrap();
            }
        }
    }
    black_box(&held);
}

fn spawner(stop: &AtomicBool, quiet: &Quiet, spawned: &AtomicUsize) {
    while !stop.load(Ordering::Relaxed) {
        quiet.maybe_pause();
        let child = std::thread::spawn(|| {
            let v = short_lived_piece();
            let w = short_lived_piece();
            v.iter().zip(&w).map(|(a, b)| a ^ b).sum::<u64>()
        });
        black_box(child.join().expect("short-lived thread"));
        spawned.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Checks one snapshot; `quiet` when no worker runs.
fn check(p: &Profile, quiet: bool, n: usize) {
    let g = p.graph.as_ref().expect("graph");
    let stop = stop_stats(p);
    assert_eq!(
        stop.missed, 0,
        "snapshot {n}: a thread did not stop: {stop:?}"
    );
    let (blocks, bytes) = p
        .live
        .iter()
        .fold((0, 0), |(n, b), l| (n + l.blocks, b + l.bytes));
    assert_eq!(
        (blocks, bytes),
        (g.scanned.blocks, g.scanned.bytes),
        "snapshot {n}: graph nodes are the live blocks"
    );
    for f in WORKER_FUNCTIONS {
        let lost: Vec<_> = groups_from(p, f)
            .into_iter()
            .filter(|g| g.unreachable)
            .collect();
        assert!(
            lost.is_empty(),
            "snapshot {n}: blocks of {f} that live threads hold were reported unreachable: {lost:?}"
        );
    }
    if quiet {
        assert_eq!(
            (blocks, bytes),
            (p.totals.live.blocks, p.totals.live.bytes),
            "snapshot {n}: quiet, so the groups sum to the live total"
        );
    }
}

pub fn snapshots_under_churn_keep_their_invariants() {
    let total: usize = std::env::var("LEAKPROF_STRESS_SNAPSHOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SNAPSHOTS);
    let rec = start();
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicUsize::new(0));
    let workers = 16;
    let quiet = Arc::new(Quiet {
        asked: AtomicBool::new(false),
        arrive: Barrier::new(workers + 1),
        leave: Barrier::new(workers + 1),
    });
    let mut joins = Vec::new();
    for w in 0..workers {
        let (stop, quiet, spawned) = (stop.clone(), quiet.clone(), spawned.clone());
        joins.push(std::thread::spawn(move || match w {
            0..=5 => churner(w * 7919 + 1, &stop, &quiet),
            6 | 7 => texter(&stop, &quiet),
            8..=11 => sleeper(w, &stop, &quiet),
            _ => spawner(&stop, &quiet, &spawned),
        }));
    }
    let options = GraphOptions::default();
    let t0 = Instant::now();
    let mut rounds_over_one = 0;
    let mut pause_ns = 0u64;
    for n in 1..=total {
        let quiet_now = n % QUIET_EVERY == 0 || n == total;
        if quiet_now {
            quiet.asked.store(true, Ordering::Release);
            quiet.arrive.wait();
        }
        let p = rec.snapshot_with_graph(&options).expect("graph");
        check(&p, quiet_now, n);
        rounds_over_one += (stop_stats(&p).rounds > 1) as usize;
        pause_ns += p.graph.as_ref().map_or(0, |g| g.pause_ns);
        if quiet_now {
            quiet.asked.store(false, Ordering::Release);
            quiet.leave.wait();
        }
        assert!(
            t0.elapsed() < BOUND,
            "{n} snapshots took {:?}",
            t0.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for j in joins {
        j.join().expect("worker");
    }
    let took = t0.elapsed();
    let spawned = spawned.load(Ordering::Relaxed);
    let per = |ns: f64| ns / 1e6 / total as f64;
    println!(
        "{total} graph snapshots in {took:.1?} ({:.2} ms each, of which {:.2} ms paused); \
         {spawned} short-lived threads; {rounds_over_one} snapshots stopped threads created \
         while stopping",
        per(took.as_nanos() as f64),
        per(pause_ns as f64),
    );
    assert!(spawned > 0, "threads started and exited during the run");
}
