//! The stop-the-world handshake and `realloc`, raced deterministically.
//!
//! Each case holds one thread exactly where a race window opens (the
//! `race-points` feature, turned on for tests by the crate's dev-dependency
//! on itself: see `leakprof::record::race`), does the racing thing on
//! another thread, lets it go, and checks what the snapshot saw. One
//! process per case (`support/harness.rs`). The stress case
//! (`snapshots_under_churn_keep_their_invariants`) then runs graph
//! snapshots against threads that allocate, reallocate, sleep in system
//! calls, start and exit.

// The children of the reallocated buffer are heap blocks of their own on
// purpose: they are what must stay reachable through it.
#![allow(clippy::vec_box)]

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

#[path = "../support/harness.rs"]
mod harness;
mod side_effects;
mod stress;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::Case;
use leakprof::format::{LiveGroup, Profile, StopStats};
use leakprof::record::race::{self, RacePoint};
use leakprof::{GraphOptions, Options, Recorder};

const CASES: &[Case] = &[
    (
        "late_handler_returns_without_waiting_for_the_next_scan",
        late_handler_returns_without_waiting_for_the_next_scan,
    ),
    (
        "half_written_slot_is_never_read",
        half_written_slot_is_never_read,
    ),
    (
        "threads_created_while_stopping_are_stopped_and_scanned",
        threads_created_while_stopping_are_stopped_and_scanned,
    ),
    (
        "realloc_detached_block_is_seen_once_with_its_children",
        realloc_detached_block_is_seen_once_with_its_children,
    ),
    (
        "realloc_moved_block_keeps_its_old_address_for_its_holders",
        realloc_moved_block_keeps_its_old_address_for_its_holders,
    ),
    (
        "stop_inside_the_inner_realloc_is_deferred_until_it_returns",
        stop_inside_the_inner_realloc_is_deferred_until_it_returns,
    ),
    (
        "realloc_stuck_in_the_inner_allocator_is_read_from_its_old_copy",
        realloc_stuck_in_the_inner_allocator_is_read_from_its_old_copy,
    ),
    (
        "interrupted_system_calls_return_eintr_as_documented",
        side_effects::interrupted_system_calls_return_eintr_as_documented,
    ),
    (
        "thread_blocking_the_signal_is_counted_without_costing_the_timeout",
        side_effects::thread_blocking_the_signal_is_counted_without_costing_the_timeout,
    ),
    (
        "program_owning_the_signal_keeps_its_handler",
        side_effects::program_owning_the_signal_keeps_its_handler,
    ),
    (
        "snapshots_under_churn_keep_their_invariants",
        stress::snapshots_under_churn_keep_their_invariants,
    ),
];

fn main() -> std::process::ExitCode {
    harness::run(CASES)
}

/// How long a held thread may take to reach its race point. It gets there
/// in microseconds; the bound is generous so a loaded machine's scheduling
/// delays never fail a test, and only a thread that never arrives does.
const ARRIVAL: Duration = Duration::from_secs(10);

fn start() -> Recorder {
    Recorder::start(Options::default().timeline_interval_ms(0)).expect("recorder starts")
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn stop_stats(p: &Profile) -> StopStats {
    p.graph
        .as_ref()
        .and_then(|g| g.stop.clone())
        .expect("a graph with stop statistics")
}

fn stack_has(p: &Profile, stack: u32, function: &str) -> bool {
    p.stacks[stack as usize]
        .frames
        .iter()
        .any(|&f| p.frames[f as usize].function.contains(function))
}

/// Live groups whose stack mentions `function`.
fn groups_from<'p>(p: &'p Profile, function: &'p str) -> Vec<&'p LiveGroup> {
    p.live
        .iter()
        .filter(|g| stack_has(p, g.stack, function))
        .collect()
}

/// (blocks, bytes) of the groups whose stack mentions `function`.
fn live_from(p: &Profile, function: &str) -> (u64, u64) {
    groups_from(p, function)
        .iter()
        .fold((0, 0), |(n, b), g| (n + g.blocks, b + g.bytes))
}

/// A thread that spins (no allocation), counting; stopped by `stop`.
struct Spinner {
    tid: i32,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start() -> Spinner {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let join = {
            let (count, stop, tid) = (count.clone(), stop.clone(), tid.clone());
            std::thread::spawn(move || {
                tid.store(gettid(), Ordering::Release);
                while !stop.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                    std::hint::spin_loop();
                }
            })
        };
        while tid.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        Spinner {
            tid: tid.load(Ordering::Acquire),
            count,
            stop,
            join: Some(join),
        }
    }

    /// True if the thread counts on within `within`. It counts millions
    /// per second when it runs; callers give it seconds, so only a thread
    /// that is stuck (not one descheduled on a busy machine) fails.
    fn progresses(&self, within: Duration) -> bool {
        let before = self.count.load(Ordering::Relaxed);
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.count.load(Ordering::Relaxed) > before + 1000 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn quick_timeout() -> GraphOptions {
    GraphOptions::default().stop_timeout(Duration::from_millis(300))
}

/// Item 1: a handler whose signal is handled after the stop phase gave up
/// on it must return at once, not wait for the next scan's resume (the
/// old handler checked `active`, then loaded the epoch the resume had
/// already bumped, and waited for the epoch after it).
fn late_handler_returns_without_waiting_for_the_next_scan() {
    let rec = start();
    let spinner = Spinner::start();
    race::arm(RacePoint::HandlerBeforeClaim, Some(spinner.tid));
    let p = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    let stop = stop_stats(&p);
    assert!(
        race::wait_arrival(RacePoint::HandlerBeforeClaim, ARRIVAL),
        "the spinner's handler was held"
    );
    assert_eq!(stop.missed, 1, "the held thread did not stop: {stop:?}");
    race::release(RacePoint::HandlerBeforeClaim);
    assert!(
        spinner.progresses(Duration::from_secs(2)),
        "the late handler waited after its scan resumed"
    );
    // The next scan stops it as usual.
    let p = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    let stop = stop_stats(&p);
    assert_eq!(stop.missed, 0, "{stop:?}");
    assert!(spinner.progresses(Duration::from_secs(2)));
}

/// Item 1: a slot claimed but not yet stamped when the stop phase ends is
/// not read (the old scanner counted every slot handed out by the time it
/// finished, and read whatever it held), and a stale stamp never passes
/// for a later scan's.
fn half_written_slot_is_never_read() {
    let rec = start();
    let spinner = Spinner::start();
    race::arm(RacePoint::HandlerBeforeStamp, Some(spinner.tid));
    let p = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    let stop = stop_stats(&p);
    assert!(race::wait_arrival(RacePoint::HandlerBeforeStamp, ARRIVAL));
    assert_eq!(
        (stop.stopped, stop.missed),
        (0, 1),
        "a half-written slot counted as a stopped thread: {stop:?}"
    );
    race::release(RacePoint::HandlerBeforeStamp);
    assert!(spinner.progresses(Duration::from_secs(2)));
    let p = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    let stop = stop_stats(&p);
    assert_eq!((stop.stopped, stop.missed), (1, 0), "{stop:?}");
}

#[inline(never)]
fn newcomer_block() -> Box<[u64; 64]> {
    black_box(Box::new([0x5eed; 64]))
}

/// Item 2: a thread created while the world is stopping is stopped and its
/// stack scanned (before, it ran through the scan and what only it held
/// was reported unreachable).
fn threads_created_while_stopping_are_stopped_and_scanned() {
    let rec = start();
    // The driver creates the newcomer while the scanner is held between two
    // rounds. It blocks the stop signal, so the scan does not stop it, and
    // allocates nothing then (allocation waits for the scan): the newcomer
    // is a raw pthread, handed a block the driver made beforehand.
    let done = Arc::new(AtomicBool::new(false));
    let driver = {
        let done = done.clone();
        std::thread::spawn(move || {
            block_stop_signal();
            // Made here: no thread the scan reads holds its address.
            let held = Box::into_raw(newcomer_block()) as usize;
            let ready = AtomicBool::new(false);
            let arg = Newcomer {
                block: held,
                ready: &ready,
                done: &done,
            };
            assert!(race::wait_arrival(RacePoint::StopBeforeRelist, ARRIVAL));
            let mut thread: libc::pthread_t = 0;
            // SAFETY: `arg` outlives the thread (joined below); the entry
            // point has the pthread signature.
            let rc = unsafe {
                libc::pthread_create(
                    &mut thread,
                    std::ptr::null(),
                    newcomer_main,
                    &arg as *const Newcomer as *mut libc::c_void,
                )
            };
            assert_eq!(rc, 0);
            while !ready.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            race::release(RacePoint::StopBeforeRelist);
            while !arg.done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // SAFETY: joins the thread created above.
            unsafe { libc::pthread_join(thread, std::ptr::null_mut()) };
            // SAFETY: the block made above, now unreferenced.
            drop(unsafe { Box::from_raw(held as *mut [u64; 64]) });
        })
    };
    race::arm(RacePoint::StopBeforeRelist, None);
    let p = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    done.store(true, Ordering::Release);
    driver.join().expect("driver");
    let stop = stop_stats(&p);
    assert!(stop.rounds >= 2, "{stop:?}");
    assert_eq!(stop.stopped, 1, "the newcomer was stopped: {stop:?}");
    assert_eq!(stop.blocking_signal, 1, "the driver blocks it: {stop:?}");
    let groups = groups_from(&p, "newcomer_block");
    assert_eq!(groups.iter().map(|g| g.blocks).sum::<u64>(), 1);
    assert!(
        groups.iter().all(|g| !g.unreachable),
        "a block only the newcomer holds was reported unreachable"
    );
}

struct Newcomer<'a> {
    block: usize,
    ready: &'a AtomicBool,
    done: &'a AtomicBool,
}

extern "C" fn newcomer_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    unblock_stop_signal();
    // SAFETY: the driver passes a `Newcomer` that outlives this thread.
    let n = unsafe { &*(arg as *const Newcomer) };
    let block = black_box(n.block);
    n.ready.store(true, Ordering::Release);
    while !n.done.load(Ordering::Acquire) {
        black_box(block);
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: a valid timespec; EINTR only ends this nap early.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
    black_box(block) as *mut libc::c_void
}

fn block_stop_signal() {
    set_stop_signal_blocked(true);
}

fn unblock_stop_signal() {
    set_stop_signal_blocked(false);
}

fn set_stop_signal_blocked(blocked: bool) {
    // SAFETY: a sigset initialised by sigemptyset; pthread_sigmask changes
    // only the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPWR);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// A child of the reallocated buffer: reachable only through it.
#[inline(never)]
fn realloc_child(i: u64) -> Box<[u64; 32]> {
    black_box(Box::new([i; 32]))
}

#[inline(never)]
fn realloc_buffer() -> Vec<Box<[u64; 32]>> {
    black_box(Vec::with_capacity(4))
}

#[inline(never)]
fn grow_buffer(v: &mut Vec<Box<[u64; 32]>>) {
    v.reserve_exact(1 << 20);
    black_box(v);
}

/// Buffers counted: the first one or the grown one.
fn buffers(p: &Profile) -> u64 {
    live_from(p, "realloc_buffer").0 + live_from(p, "grow_buffer").0
}

struct Holder {
    v: Vec<Box<[u64; 32]>>,
}

/// A thread that fills a vector of children, then grows it (one realloc
/// that moves: from 4 to 1M slots, past glibc's mmap threshold) when told,
/// and keeps it until told to finish.
struct Reallocator {
    tid: i32,
    grow: Arc<AtomicBool>,
    grown: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    join: std::thread::JoinHandle<(usize, usize)>,
}

impl Reallocator {
    fn start() -> Reallocator {
        let tid = Arc::new(AtomicI32::new(0));
        let grow = Arc::new(AtomicBool::new(false));
        let grown = Arc::new(AtomicBool::new(false));
        let finish = Arc::new(AtomicBool::new(false));
        let join = {
            let (tid, grow, grown, finish) =
                (tid.clone(), grow.clone(), grown.clone(), finish.clone());
            std::thread::spawn(move || {
                // The vector lives in a labelled heap object, whose pointer
                // to the buffer is what keeps the buffer (and its children)
                // alive; the thread's stack holds the holder.
                let mut holder = leakprof::owner::scope("buffer holder", || {
                    Box::new(Holder {
                        v: realloc_buffer(),
                    })
                });
                let v = &mut holder.v;
                for i in 0..4 {
                    v.push(realloc_child(i));
                }
                // A neighbour, so the buffer cannot grow in place.
                let neighbour = black_box(vec![1u8; 64]);
                tid.store(gettid(), Ordering::Release);
                while !grow.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let before = v.as_ptr() as usize;
                grow_buffer(v);
                let after = v.as_ptr() as usize;
                grown.store(true, Ordering::Release);
                while !finish.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                black_box(&neighbour);
                assert_eq!(v.iter().map(|c| c[0]).sum::<u64>(), 6);
                (before, after)
            })
        };
        while tid.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        Reallocator {
            tid: tid.load(Ordering::Acquire),
            grow,
            grown,
            finish,
            join,
        }
    }

    fn wait_grown(&self) {
        let t0 = Instant::now();
        while !self.grown.load(Ordering::Acquire) {
            assert!(t0.elapsed() < ARRIVAL, "the realloc never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ends the thread; asserts the realloc moved the buffer.
    fn finish(self) {
        self.finish.store(true, Ordering::Release);
        let (before, after) = self.join.join().expect("reallocator");
        assert_ne!(
            before, after,
            "the buffer was grown in place: nothing moved"
        );
    }
}

/// The buffer (old or new) is counted exactly once; its four children are
/// all in the graph and reachable.
fn assert_buffer_once_and_children_reachable(plain: &Profile, graph: &Profile) {
    let n = buffers(plain);
    assert_eq!(n, 1, "the buffer in flight counted {n} times");
    assert_graph_sees_buffer_once(graph);
}

/// The graph has the buffer once, its children reachable, and both owned
/// by the buffer's holder.
fn assert_graph_sees_buffer_once(graph: &Profile) {
    let n = buffers(graph);
    assert_eq!(n, 1, "graph: the buffer in flight counted {n} times");
    let children = groups_from(graph, "realloc_child");
    assert_eq!(children.iter().map(|g| g.blocks).sum::<u64>(), 4);
    assert!(
        children.iter().all(|g| !g.unreachable),
        "children of the buffer in flight were reported unreachable"
    );
    // The holder's pointer (the old address) leads to the buffer in flight:
    // the buffer and its children are the holder's.
    for g in groups_from(graph, "grow_buffer")
        .into_iter()
        .chain(groups_from(graph, "realloc_buffer"))
        .chain(children)
    {
        assert_eq!(owner_name(graph, g), "buffer holder");
    }
}

fn owner_name<'p>(p: &'p Profile, g: &LiveGroup) -> &'p str {
    let graph = p.graph.as_ref().expect("graph");
    &graph.owners[g.owner.expect("owner") as usize].name
}

/// Item 3: the old block has left the live table and the inner realloc has
/// not run. Before, a plain snapshot missed it and a graph lost it and all
/// its out-edges.
fn realloc_detached_block_is_seen_once_with_its_children() {
    let rec = start();
    let r = Reallocator::start();
    race::arm(RacePoint::ReallocDetached, Some(r.tid));
    r.grow.store(true, Ordering::Release);
    assert!(race::wait_arrival(RacePoint::ReallocDetached, ARRIVAL));
    let plain = rec.snapshot();
    let graph = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    assert_eq!(stop_stats(&graph).in_flight, 1);
    assert_buffer_once_and_children_reachable(&plain, &graph);
    race::release(RacePoint::ReallocDetached);
    r.wait_grown();
    let after = rec.snapshot();
    assert_eq!(buffers(&after), 1);
    r.finish();
}

/// Item 3: the inner realloc returned a new block (contents copied, the
/// old one freed) that is not in the live table yet, while the program's
/// pointers still hold the old address.
fn realloc_moved_block_keeps_its_old_address_for_its_holders() {
    let rec = start();
    let r = Reallocator::start();
    race::arm(RacePoint::ReallocMoved, Some(r.tid));
    r.grow.store(true, Ordering::Release);
    assert!(race::wait_arrival(RacePoint::ReallocMoved, ARRIVAL));
    let plain = rec.snapshot();
    let graph = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    assert_eq!(stop_stats(&graph).in_flight, 1);
    assert_buffer_once_and_children_reachable(&plain, &graph);
    let moved = groups_from(&graph, "grow_buffer");
    assert_eq!(moved.len(), 1, "the node is the new block");
    assert!(
        moved.iter().all(|g| !g.unreachable && g.bytes >= 8 << 20),
        "the moved buffer is a node reachable through its old address"
    );
    race::release(RacePoint::ReallocMoved);
    r.wait_grown();
    r.finish();
}

/// A thread that is not stopped by scans (it blocks the signal) and lets
/// points go on cue.
fn releaser(steps: Vec<(RacePoint, Option<RacePoint>)>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        block_stop_signal();
        for (wait, then_release) in steps {
            assert!(race::wait_arrival(wait, ARRIVAL), "{wait:?} reached");
            race::release(wait);
            if let Some(p) = then_release {
                race::release(p);
            }
        }
    })
}

/// Item 3: a stop that lands inside the inner allocator (old block maybe
/// half freed, new one half copied) waits until the inner call returns,
/// then the thread stops with its block in phase `Moved`.
fn stop_inside_the_inner_realloc_is_deferred_until_it_returns() {
    let rec = start();
    let r = Reallocator::start();
    race::arm(RacePoint::ReallocInner, Some(r.tid));
    r.grow.store(true, Ordering::Release);
    assert!(race::wait_arrival(RacePoint::ReallocInner, ARRIVAL));
    // When the reallocating thread's handler has deferred, let both go.
    race::arm(RacePoint::HandlerDeferred, Some(r.tid));
    let helper = releaser(vec![(
        RacePoint::HandlerDeferred,
        Some(RacePoint::ReallocInner),
    )]);
    let t0 = Instant::now();
    let graph = rec
        .snapshot_with_graph(&GraphOptions::default().stop_timeout(Duration::from_secs(5)))
        .expect("graph");
    let took = t0.elapsed();
    helper.join().expect("releaser");
    let stop = stop_stats(&graph);
    assert_eq!(
        (stop.stopped, stop.stuck_in_realloc, stop.in_flight),
        (1, 0, 1),
        "{stop:?}"
    );
    // Released at once, the stop takes milliseconds; only a stop that
    // waited out the 5 s timeout takes longer than 4 s, so scheduling
    // noise cannot fail this.
    assert!(
        took < Duration::from_secs(4),
        "the deferred stop came late: {took:?}"
    );
    assert_graph_sees_buffer_once(&graph);
    r.wait_grown();
    r.finish();
}

/// Item 3: the inner allocator does not return before the stop phase ends
/// (in life: it waits for a lock a stopped thread holds). The block is
/// read from its old copy, fault-safely, and the thread is counted.
fn realloc_stuck_in_the_inner_allocator_is_read_from_its_old_copy() {
    let rec = start();
    let r = Reallocator::start();
    race::arm(RacePoint::ReallocInner, Some(r.tid));
    r.grow.store(true, Ordering::Release);
    assert!(race::wait_arrival(RacePoint::ReallocInner, ARRIVAL));
    let graph = rec.snapshot_with_graph(&quick_timeout()).expect("graph");
    let stop = stop_stats(&graph);
    assert_eq!(
        (stop.stuck_in_realloc, stop.missed, stop.in_flight),
        (1, 1, 1),
        "{stop:?}"
    );
    let children = groups_from(&graph, "realloc_child");
    assert_eq!(children.iter().map(|g| g.blocks).sum::<u64>(), 4);
    assert!(
        children.iter().all(|g| !g.unreachable),
        "the old copy's pointers were not read"
    );
    race::release(RacePoint::ReallocInner);
    r.wait_grown();
    r.finish();
}
