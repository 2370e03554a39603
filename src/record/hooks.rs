//! The allocation path: what every `alloc`, `dealloc` and `realloc` does
//! while recording, and the process-wide recorder state it touches.
//!
//! Rules that must stay true here:
//! - nothing allocates through the global allocator (tables and counters
//!   live in `mmap`ed memory; slow paths that must allocate set the
//!   re-entrancy guard first, so those allocations pass through untracked);
//! - nothing panics (no indexing that can fail, no unwrap);
//! - the only locks taken are one live-table shard lock at a time, never
//!   while holding any other recorder lock, and nothing waits for I/O;
//! - a free removes its block from the live table before the memory is
//!   handed back to the inner allocator.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::live::{Block, LiveTable};
use super::race::{self, RacePoint};
use super::stacks::{self, Captured, StackTable};
use super::sys;
use super::tags::{TagTable, UNTAGGED};
use super::threads::{FlightPhase, InFlight, Registry, ThreadState};

/// `STATE` values. `UNSEEN` until the allocator is first used, so
/// `Recorder::start` can tell whether `LeakAlloc` is installed.
pub(crate) const UNSEEN: u8 = 0;
pub(crate) const IDLE: u8 = 1;
pub(crate) const RECORDING: u8 = 2;

/// The one atomic every allocation reads.
pub(crate) static STATE: AtomicU8 = AtomicU8::new(UNSEEN);

pub(crate) static LIVE: LiveTable = LiveTable::new();
pub(crate) static STACKS: StackTable = StackTable::new();
pub(crate) static TAGS: TagTable = TagTable::new();
pub(crate) static THREADS: Registry = Registry::new();

/// Recording configuration, written by `Recorder::start` before `STATE`
/// becomes `RECORDING`.
pub(crate) struct Config {
    pub(crate) max_frames: AtomicU32,
    /// 0 in full mode; the mean sampling interval in bytes otherwise.
    pub(crate) sample_mean: AtomicU64,
    /// Block counters count in units of 1/`block_unit` block (1 in full
    /// mode; 1024 in sampled mode, where a sample stands for a fractional
    /// number of blocks).
    pub(crate) block_unit: AtomicU64,
    pub(crate) seed: AtomicU64,
    /// New blocks up to this size (and the grown tail of reallocated ones)
    /// are zeroed, so a heap-graph scan never mistakes a stale pointer left
    /// in recycled memory for a reference. 0 turns it off.
    pub(crate) zero_fill_max: AtomicU64,
}

pub(crate) static CONFIG: Config = Config {
    max_frames: AtomicU32::new(64),
    sample_mean: AtomicU64::new(0),
    block_unit: AtomicU64::new(1),
    seed: AtomicU64::new(0),
    zero_fill_max: AtomicU64::new(0),
};

/// Reads the allocating code's stack into a `Captured` (at most `max`
/// frames, sealed). Must obey the allocation path's rules.
pub(crate) type StackSource = fn(max: usize, out: &mut Captured);

/// The stack source when it is not the native frame-pointer walk: set once
/// by `record::python` in a Python process, whose allocations are the
/// interpreter's, with Python stacks. 0: the native walk.
static STACK_SOURCE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes every allocation take its stack from `source` (before recording
/// starts).
pub(crate) fn set_stack_source(source: StackSource) {
    STACK_SOURCE.store(source as usize, Ordering::Release);
}

#[inline(always)]
fn stack_source() -> Option<StackSource> {
    match STACK_SOURCE.load(Ordering::Acquire) {
        0 => None,
        // SAFETY: the only non-zero value ever stored is a `StackSource`
        // function pointer (`set_stack_source`), and function pointers are
        // never null.
        f => Some(unsafe { std::mem::transmute::<usize, StackSource>(f) }),
    }
}

/// Zeroes `len` bytes at `addr` of a fresh (or freshly grown) block when
/// `block_size` is within the zero-fill limit. Inlined into the allocator.
///
/// # Safety
/// `[addr, addr + len)` must be memory the caller just obtained from the
/// inner allocator and has not handed out yet.
#[inline(always)]
pub(crate) unsafe fn zero_fill(addr: *mut u8, len: usize, block_size: usize) {
    if block_size as u64 <= CONFIG.zero_fill_max.load(Ordering::Relaxed) && len > 0 {
        // SAFETY: forwarded from the caller.
        unsafe { std::ptr::write_bytes(addr, 0, len) };
    }
}

/// Blocks passed through untracked (table memory refused, or no thread
/// state available).
pub(crate) static UNTRACKED_ALLOCS: AtomicU64 = AtomicU64::new(0);
pub(crate) static UNTRACKED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Threads fold their net live change into these every [`FLUSH_BYTES`], so
/// the global live amount (and with it the peak) is known to within
/// `threads x FLUSH_BYTES` without every allocation writing one cache line.
pub(crate) const FLUSH_BYTES: i64 = 256 << 10;
pub(crate) static APPROX_LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
pub(crate) static APPROX_LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);
pub(crate) static PEAK_BYTES: AtomicI64 = AtomicI64::new(0);
pub(crate) static PEAK_BLOCKS: AtomicI64 = AtomicI64::new(0);
/// Time of the last peak rise, ns since recording started (coarse).
pub(crate) static PEAK_NS: AtomicU64 = AtomicU64::new(0);

/// A coarse clock for block birth times, ns since recording started:
/// advanced at every tag switch, timeline tick, mark and snapshot (reading
/// it costs an allocation one load; reading the real clock would cost
/// ~20 ns).
pub(crate) static COARSE_NS: AtomicU64 = AtomicU64::new(0);

/// Reads the clock and advances the coarse clock.
pub(crate) fn now_ns() -> u64 {
    let now = super::elapsed_ns();
    COARSE_NS.fetch_max(now, Ordering::Relaxed);
    now
}

/// The peak generation: bumped (O(1)) each time the global live amount
/// reaches a new peak. Each per-stack counter, at its first change in a
/// new generation, keeps the value it had when the generation began
/// (`StackCounters::catch_up`), so a snapshot reads every stack's live
/// amount at the last peak (DHAT's at-t-gmax) without anything walking all
/// stacks on the allocation path. Starts at 1 (a counter's 0 never
/// matches).
pub(crate) static PEAK_GEN: AtomicU64 = AtomicU64::new(1);

/// The tag most recently entered by any thread (for the timeline's
/// "current task" column).
pub(crate) static LAST_TAG: AtomicU32 = AtomicU32::new(UNTAGGED);

/// Sampled mode: a counting filter over addresses of sampled blocks, so a
/// free of an unsampled block (nearly all of them) skips the live table.
/// 255 is sticky (never decremented).
static SAMPLED: [AtomicU8; 1 << 16] = [const { AtomicU8::new(0) }; 1 << 16];

/// Per-thread recorder state. `const`-initialised and without a destructor,
/// so it is usable at any point of a thread's life, teardown included.
pub(crate) struct Local {
    /// Set while leakprof's own code runs on this thread: allocations pass
    /// through unrecorded.
    pub(crate) guard: Cell<bool>,
    /// Set while this thread holds live-table locks (snapshot, heap scan):
    /// its frees must not take them again.
    pub(crate) holds_locks: Cell<bool>,
    /// Current tag id.
    pub(crate) tag: Cell<u32>,
    state: Cell<*const ThreadState>,
    /// The thread's storage was torn down: use the orphan slot.
    dead: Cell<bool>,
    /// Sampled mode: bytes until the next sample, and the generator.
    countdown: Cell<i64>,
    rng: Cell<u64>,
}

thread_local! {
    pub(crate) static LOCAL: Local = const {
        Local {
            guard: Cell::new(false),
            holds_locks: Cell::new(false),
            tag: Cell::new(UNTAGGED),
            state: Cell::new(std::ptr::null()),
            dead: Cell::new(false),
            countdown: Cell::new(0),
            rng: Cell::new(0),
        }
    };
}

/// Gives the thread's slot back when its thread-local storage is torn
/// down. Touched once at registration, which registers the destructor.
struct Retire;

impl Drop for Retire {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|l| {
            let was = l.guard.replace(true);
            let ts = l.state.replace(std::ptr::null());
            l.dead.set(true);
            if !ts.is_null() {
                // SAFETY: non-null states point into the registry mapping,
                // which is never unmapped.
                let ts = unsafe { &*ts };
                flush_tag(ts);
                flush_global(ts);
                THREADS.retire(ts);
            }
            l.guard.set(was);
        });
    }
}

thread_local! {
    static RETIRE: Retire = const { Retire };
}

/// Runs `f` with the re-entrancy guard set: allocations it makes are not
/// recorded. Restores the previous state even if `f` unwinds.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = LOCAL.try_with(|l| l.guard.set(self.0));
        }
    }
    let was = LOCAL.try_with(|l| l.guard.replace(true)).unwrap_or(true);
    let _restore = Restore(was);
    f()
}

#[inline]
pub(crate) fn recording() -> bool {
    STATE.load(Ordering::Relaxed) == RECORDING
}

/// Marks the allocator as installed (first call only).
#[cold]
pub(crate) fn note_installed() {
    let _ = STATE.compare_exchange(UNSEEN, IDLE, Ordering::Relaxed, Ordering::Relaxed);
}

/// The calling thread's state, registering it on first use.
#[inline]
fn thread_state(l: &Local) -> Option<&'static ThreadState> {
    let p = l.state.get();
    if !p.is_null() {
        // SAFETY: states live in the never-unmapped registry mapping.
        return Some(unsafe { &*p });
    }
    register(l)
}

#[cold]
fn register(l: &Local) -> Option<&'static ThreadState> {
    if l.dead.get() {
        return THREADS.orphan();
    }
    let ts = match THREADS.claim() {
        Some(ts) => {
            ts.tid.store(sys::gettid(), Ordering::Relaxed);
            // SAFETY: pthread_self has no preconditions.
            ts.pthread
                .store(unsafe { libc::pthread_self() } as u64, Ordering::Relaxed);
            // May allocate: the caller holds the guard.
            ts.stack_end
                .store(sys::current_stack_end(), Ordering::Relaxed);
            ts.tag_id.store(l.tag.get(), Ordering::Relaxed);
            ts
        }
        None => THREADS.orphan()?,
    };
    l.state.set(ts);
    // Registers the teardown hook (may allocate; guard is held).
    let _ = RETIRE.try_with(|_| ());
    Some(ts)
}

/// The calling thread's in-flight record (see `ThreadState::flight`), for
/// the stop-signal handler: async-signal-safe (reads the thread-local
/// pointer; never registers the thread). None for threads without a state
/// of their own.
pub(crate) fn current_flight() -> Option<&'static InFlight> {
    LOCAL
        .try_with(|l| {
            let p = l.state.get();
            // SAFETY: non-null states live in the never-unmapped registry.
            (!p.is_null())
                .then(|| unsafe { &*p })
                .filter(|ts| !THREADS.is_orphan(ts))
                .map(|ts| &ts.flight)
        })
        .ok()
        .flatten()
}

/// Sampled mode's fast path, inlined into `LeakAlloc::alloc`: true when
/// this allocation falls between two sample points and needs no recording
/// at all (one thread-local subtraction).
#[inline(always)]
pub(crate) fn skip_unsampled(size: usize) -> bool {
    if CONFIG.sample_mean.load(Ordering::Relaxed) == 0 {
        return false;
    }
    LOCAL
        .try_with(|l| {
            let left = l.countdown.get() - size as i64;
            // countdown == 0 means "not drawn yet": leave it to the slow path.
            if left > 0 {
                l.countdown.set(left);
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
}

/// Inlined into `LeakAlloc::dealloc`: false when the block at `addr`
/// cannot be in the live table (sampled mode, unsampled block), so the
/// free needs no recording.
#[inline(always)]
pub(crate) fn may_be_recorded(addr: usize) -> bool {
    CONFIG.sample_mean.load(Ordering::Relaxed) == 0
        || SAMPLED[filter_index(addr)].load(Ordering::Relaxed) != 0
}

/// Recorded after the inner allocator returned `addr`.
#[inline(never)]
pub(crate) fn on_alloc(addr: usize, size: usize) {
    let tracked = LOCAL.try_with(|l| {
        if l.guard.get() {
            return true;
        }
        l.guard.set(true);
        let ok = record_alloc(l, addr, size);
        l.guard.set(false);
        ok
    });
    if tracked != Ok(true) {
        note_untracked(size);
    }
}

/// Returns false when the block could not be recorded.
#[inline(always)]
fn record_alloc(l: &Local, addr: usize, size: usize) -> bool {
    let Some(ts) = thread_state(l) else {
        return false;
    };
    // The slot's cache line loads while the stack is captured.
    LIVE.prefetch(addr, Some(size));
    match prepare(l, ts, size) {
        Some(p) => commit(
            ts,
            &p,
            Block::new(addr, size, p.stack, p.tag, p.birth_ms),
            None,
        ),
        None => true,
    }
}

/// What a new block will be recorded as: decided (sampling) and captured
/// (stack) before it is recorded, so a `realloc` can do it before calling
/// the inner allocator.
#[derive(Clone, Copy)]
struct Pending {
    stack: u32,
    tag: u32,
    birth_ms: u32,
    w_bytes: u64,
    w_blocks: u64,
}

/// The sampling decision and the stack of an allocation of `size` bytes
/// on this thread; `None` when sampling passes it by.
#[inline(always)]
fn prepare(l: &Local, ts: &ThreadState, size: usize) -> Option<Pending> {
    let mean = CONFIG.sample_mean.load(Ordering::Relaxed);
    let (w_bytes, w_blocks) = if mean == 0 {
        (size as u64, 1)
    } else {
        let mut countdown = l.countdown.get();
        if countdown == 0 {
            // First sampled-mode allocation on this thread: draw the first
            // gap, so the first allocation is not always sampled.
            countdown = next_gap(l, mean);
        }
        let left = countdown - size as i64;
        if left > 0 {
            l.countdown.set(left);
            return None;
        }
        l.countdown.set(next_gap(l, mean));
        sample_weight(size, mean)
    };
    let mut captured = Captured::new();
    let max = CONFIG.max_frames.load(Ordering::Relaxed) as usize;
    match stack_source() {
        None => stacks::capture(max, ts.stack_end.load(Ordering::Relaxed), &mut captured),
        Some(source) => source(max, &mut captured),
    }
    Some(Pending {
        stack: STACKS.intern_captured(&captured),
        tag: l.tag.get(),
        birth_ms: (COARSE_NS.load(Ordering::Relaxed) / 1_000_000) as u32,
        w_bytes,
        w_blocks,
    })
}

/// Enters a prepared block in the live table (ending `flight` in the same
/// step when given) and accounts for it. False if the table refused it.
#[inline(always)]
fn commit(ts: &ThreadState, p: &Pending, block: Block, flight: Option<&InFlight>) -> bool {
    let inserted = match flight {
        Some(f) => LIVE.insert_landing(block, f),
        None => LIVE.insert(block),
    };
    if !inserted {
        return false;
    }
    note_sampled(block.addr);
    account(ts, &block, p.w_bytes as i64, p.w_blocks as i64);
    true
}

/// Sampled mode: counts a recorded block in the address filter.
#[inline(always)]
fn note_sampled(addr: usize) {
    if CONFIG.sample_mean.load(Ordering::Relaxed) != 0 {
        let f = &SAMPLED[filter_index(addr)];
        if f.load(Ordering::Relaxed) != u8::MAX {
            f.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Recorded before the inner allocator gets `addr` back.
#[inline(never)]
pub(crate) fn on_free(addr: usize) {
    // The block's slot loads while the shard lock is taken (a prefetch is
    // not held back by the lock's barrier; the lookup after it would be).
    LIVE.prefetch(addr, None);
    let _ = LOCAL.try_with(|l| {
        if l.holds_locks.get() {
            // Only leakprof's own scratch memory is freed while it holds the
            // live table's locks, and that memory is never recorded.
            return;
        }
        let was = l.guard.replace(true);
        if let Some(block) = detach(addr, None) {
            settle_free(l, &block);
        }
        l.guard.set(was);
    });
}

/// Takes a block out of the live table (a free, or the old half of a
/// realloc, which keeps it in its thread's `flight`) without accounting
/// for it yet.
#[inline(always)]
fn detach(addr: usize, flight: Option<&InFlight>) -> Option<Block> {
    let sampled = CONFIG.sample_mean.load(Ordering::Relaxed) != 0;
    let f = &SAMPLED[filter_index(addr)];
    let n = f.load(Ordering::Relaxed);
    if sampled && n == 0 {
        return None;
    }
    let block = match flight {
        Some(flight) => LIVE.remove_into_flight(addr, flight),
        None => LIVE.remove(addr),
    }?;
    if sampled && n != u8::MAX {
        f.fetch_sub(1, Ordering::Relaxed);
    }
    Some(block)
}

/// A `realloc` while recording. `inner` is the inner allocator's realloc
/// of the block at `addr` (`old_size` bytes) to `new_size` bytes.
///
/// The old block never disappears from view: it moves from the live table
/// into this thread's in-flight record (`ThreadState::flight`) and stays
/// there, through the inner allocator's call, until its successor is in
/// the table, so snapshots and heap-graph scans see every block exactly
/// once. The successor's stack is captured *before* the inner call, so the
/// record is complete wherever the world stops; a stop that arrives while
/// the inner allocator runs (phase `Inner`, when the old block may be half
/// freed) is deferred to the moment it returns (`stop::resume_deferred`).
/// If the inner realloc fails, the old block goes back untouched.
#[inline(never)]
pub(crate) fn realloc<F: FnOnce() -> *mut u8>(
    addr: usize,
    old_size: usize,
    new_size: usize,
    inner: F,
) -> *mut u8 {
    let mut inner = Some(inner);
    let done = LOCAL.try_with(|l| {
        let f = inner.take()?;
        Some(realloc_on(l, addr, old_size, new_size, f))
    });
    match (done, inner.take()) {
        (Ok(Some(q)), _) => q,
        (_, Some(f)) => f(),
        (_, None) => std::ptr::null_mut(),
    }
}

fn realloc_on(
    l: &Local,
    addr: usize,
    old_size: usize,
    new_size: usize,
    inner: impl FnOnce() -> *mut u8,
) -> *mut u8 {
    if l.holds_locks.get() {
        // leakprof's own scratch memory while it holds the live table's
        // locks: never recorded.
        return inner();
    }
    let was = l.guard.replace(true);
    let own_state = match was {
        false => thread_state(l).filter(|ts| !THREADS.is_orphan(ts)),
        true => None,
    };
    let q = match own_state {
        Some(ts) => realloc_in_flight(l, ts, addr, old_size, new_size, inner),
        None => realloc_without_flight(l, was, addr, old_size, new_size, inner),
    };
    l.guard.set(was);
    q
}

/// A thread with a state of its own: the old block is never out of view.
fn realloc_in_flight(
    l: &Local,
    ts: &ThreadState,
    addr: usize,
    old_size: usize,
    new_size: usize,
    inner: impl FnOnce() -> *mut u8,
) -> *mut u8 {
    let pending = prepare(l, ts, new_size);
    let flight = &ts.flight;
    let old = detach(addr, Some(flight));
    let flying = old.is_some().then_some(flight);
    race::hit(RacePoint::ReallocDetached);
    if let Some(f) = flying {
        f.set_phase(FlightPhase::Inner);
    }
    race::hit(RacePoint::ReallocInner);
    let q = inner();
    if q.is_null() {
        if let Some(b) = old {
            restore(b, flying);
        }
        return q;
    }
    zero_grown_tail(q, old_size, new_size);
    let new = pending.map(|p| Block::new(q as usize, new_size, p.stack, p.tag, p.birth_ms));
    if let Some(f) = flying {
        match &new {
            Some(b) => f.moved(b),
            None => f.set_phase(FlightPhase::Idle), // sampled out
        }
        super::stop::resume_deferred();
    }
    race::hit(RacePoint::ReallocMoved);
    if let Some(b) = old {
        settle_free(l, &b);
    }
    if let (Some(p), Some(b)) = (pending, new) {
        if !commit(ts, &p, b, flying) {
            note_untracked(new_size);
        }
    }
    q
}

/// leakprof's own code (the guard was set) and threads without a state of
/// their own (the shared orphan slot, rare): the old block leaves the table
/// before the inner call and the new one enters it after, with no in-flight
/// record, so a stop in between does not see it.
fn realloc_without_flight(
    l: &Local,
    guarded: bool,
    addr: usize,
    old_size: usize,
    new_size: usize,
    inner: impl FnOnce() -> *mut u8,
) -> *mut u8 {
    let old = detach(addr, None);
    let q = inner();
    if q.is_null() {
        if let Some(b) = old {
            restore(b, None);
        }
        return q;
    }
    zero_grown_tail(q, old_size, new_size);
    if let Some(b) = old {
        settle_free(l, &b);
    }
    if !guarded && !record_alloc(l, q as usize, new_size) {
        note_untracked(new_size);
    }
    q
}

#[inline(always)]
fn zero_grown_tail(q: *mut u8, old_size: usize, new_size: usize) {
    if new_size > old_size {
        // SAFETY: the grown tail of a block the inner allocator just
        // returned is fresh memory not handed out yet.
        unsafe { zero_fill(q.add(old_size), new_size - old_size, new_size) };
    }
}

#[cold]
fn note_untracked(size: usize) {
    UNTRACKED_ALLOCS.fetch_add(1, Ordering::Relaxed);
    UNTRACKED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
}

/// Puts back a block detached by a realloc that failed.
fn restore(block: Block, flight: Option<&InFlight>) {
    let inserted = match flight {
        Some(f) => LIVE.insert_landing(block, f),
        None => LIVE.insert(block),
    };
    if inserted {
        note_sampled(block.addr);
    }
}

/// Accounts for a detached block as freed by the calling thread.
pub(crate) fn settle_free(l: &Local, block: &Block) {
    let (b, n) = weight_of(block.size);
    match thread_state(l) {
        Some(ts) => account(ts, block, -(b as i64), -(n as i64)),
        None => {
            if let Some(e) = TAGS.entry(block.tag) {
                e.add_live(-(b as i64), -(n as i64));
            }
        }
    }
}

/// Applies a signed live change (positive: allocation) to every counter:
/// thread totals, the thread's per-stack counters, the tag, and the
/// pending global delta.
#[inline(always)]
fn account(ts: &ThreadState, block: &Block, bytes: i64, blocks: i64) {
    let shared = THREADS.is_orphan(ts);
    if bytes < 0 {
        flush_if_at_peak(ts);
    }
    let stack = ts.stack_counters(block.stack);
    if let Some(s) = stack {
        s.catch_up(PEAK_GEN.load(Ordering::Relaxed));
    }
    if bytes >= 0 {
        ts.alloc_bytes.add(bytes as u64, shared);
        ts.alloc_blocks.add(blocks as u64, shared);
        if let Some(s) = stack {
            s.alloc_bytes.add(bytes as u64, shared);
            s.alloc_blocks.add(blocks as u64, shared);
        }
    } else {
        ts.free_bytes.add(bytes.unsigned_abs(), shared);
        ts.free_blocks.add(blocks.unsigned_abs(), shared);
        if let Some(s) = stack {
            s.free_bytes.add(bytes.unsigned_abs(), shared);
            s.free_blocks.add(blocks.unsigned_abs(), shared);
        }
    }
    if !shared && ts.tag_id.load(Ordering::Relaxed) == block.tag {
        let pending = ts.tag_live_bytes.add(bytes, false);
        ts.tag_live_blocks.add(blocks, false);
        if bytes > 0 {
            ts.tag_alloc_bytes.add(bytes as u64, false);
            ts.tag_alloc_blocks.add(blocks as u64, false);
        }
        if !(-FLUSH_BYTES..=FLUSH_BYTES).contains(&pending) {
            flush_tag(ts);
        }
    } else if let Some(e) = TAGS.entry(block.tag) {
        e.add_live(bytes, blocks);
        if bytes > 0 {
            e.alloc_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            e.alloc_blocks.fetch_add(blocks as u64, Ordering::Relaxed);
        }
    }
    let pending = ts.pending_bytes.add(bytes, shared);
    ts.pending_blocks.add(blocks, shared);
    if !(-FLUSH_BYTES..=FLUSH_BYTES).contains(&pending) {
        flush_global(ts);
    }
}

/// Folds a thread's pending tag deltas into its tag's entry.
pub(crate) fn flush_tag(ts: &ThreadState) {
    let id = ts.tag_id.load(Ordering::Relaxed);
    let bytes = ts.tag_live_bytes.take();
    let blocks = ts.tag_live_blocks.take();
    let ab = ts.tag_alloc_bytes.get();
    let an = ts.tag_alloc_blocks.get();
    ts.tag_alloc_bytes.reset();
    ts.tag_alloc_blocks.reset();
    if let Some(e) = TAGS.entry(id) {
        if bytes != 0 || blocks != 0 {
            e.add_live(bytes, blocks);
        }
        if ab != 0 {
            e.alloc_bytes.fetch_add(ab, Ordering::Relaxed);
            e.alloc_blocks.fetch_add(an, Ordering::Relaxed);
        }
    }
}

/// A free is about to lower the live amount: if this thread's pending
/// growth would make a new global peak, fold it in first, so the peak (and
/// the per-stack amounts at it) is taken at its top, not up to
/// [`FLUSH_BYTES`] before it. Costs two loads of rarely written words.
#[inline(always)]
fn flush_if_at_peak(ts: &ThreadState) {
    let pending = ts.pending_bytes.get();
    if pending > 0
        && APPROX_LIVE_BYTES.load(Ordering::Relaxed) + pending > PEAK_BYTES.load(Ordering::Relaxed)
    {
        flush_global(ts);
    }
}

/// Folds a thread's pending live delta into the global approximate live
/// amount, raising the peak (and starting a new peak generation) when it
/// is exceeded.
pub(crate) fn flush_global(ts: &ThreadState) {
    let b = ts.pending_bytes.take();
    let n = ts.pending_blocks.take();
    let live = APPROX_LIVE_BYTES.fetch_add(b, Ordering::Relaxed) + b;
    let blocks = APPROX_LIVE_BLOCKS.fetch_add(n, Ordering::Relaxed) + n;
    if blocks > PEAK_BLOCKS.load(Ordering::Relaxed) {
        PEAK_BLOCKS.fetch_max(blocks, Ordering::Relaxed);
    }
    if live > PEAK_BYTES.load(Ordering::Relaxed)
        && PEAK_BYTES.fetch_max(live, Ordering::Relaxed) < live
    {
        PEAK_NS.store(COARSE_NS.load(Ordering::Relaxed), Ordering::Relaxed);
        PEAK_GEN.fetch_add(1, Ordering::Relaxed);
    }
}

#[inline]
fn filter_index(addr: usize) -> usize {
    ((addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as usize
}

/// Draws the next sampling gap: exponential with the given mean, so sample
/// points form a Poisson process over allocated bytes.
fn next_gap(l: &Local, mean: u64) -> i64 {
    let mut x = l.rng.get();
    if x == 0 {
        // A fixed seed makes runs reproducible: each thread takes the next
        // stream of the seed in the order threads first sample.
        let seed = match CONFIG.seed.load(Ordering::Relaxed) {
            0 => sys::now_ns(),
            s => s,
        };
        let stream = RNG_STREAMS.fetch_add(1, Ordering::Relaxed);
        x = splitmix64(seed.wrapping_add(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))) | 1;
    }
    // xorshift64*
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    l.rng.set(x);
    let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let u = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (-(u.ln()) * mean as f64).max(1.0) as i64
}

pub(crate) static RNG_STREAMS: AtomicU64 = AtomicU64::new(0);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The unbiased weight of a sampled block of `size` bytes: it stands for
/// `1 / p` blocks and `size / p` bytes, `p = 1 - exp(-size / mean)` being
/// the chance that a Poisson sample point fell inside it.
#[inline]
pub(crate) fn sample_weight(size: usize, mean: u64) -> (u64, u64) {
    let p = -(-(size.max(1) as f64) / mean as f64).exp_m1();
    let unit = CONFIG.block_unit.load(Ordering::Relaxed) as f64;
    ((size as f64 / p).round() as u64, (unit / p).round() as u64)
}

/// Counter weights of a recorded block (its size and one block in full
/// mode).
#[inline]
pub(crate) fn weight_of(size: usize) -> (u64, u64) {
    let mean = CONFIG.sample_mean.load(Ordering::Relaxed);
    if mean == 0 {
        (size as u64, 1)
    } else {
        sample_weight(size, mean)
    }
}

/// Switches the calling thread to tag `id`, returning the previous tag id.
/// Flushes the thread's pending tag counters to the previous tag.
pub(crate) fn enter_tag(id: u32) -> u32 {
    enter_tag_checked(id, None).unwrap_or(UNTAGGED)
}

/// [`enter_tag`], if tag `id`'s entry still holds `generation` of it
/// (see [`TagEntry::claim`](super::tags::TagEntry::claim)); `None` when
/// it was folded meanwhile: nothing changed, intern the tag again.
pub(crate) fn enter_tag_checked(id: u32, generation: Option<u32>) -> Option<u32> {
    LOCAL
        .try_with(|l| {
            if recording() {
                let was = l.guard.replace(true);
                let claimed = TAGS.entry(id).map_or(true, |e| e.claim(generation));
                if !claimed {
                    l.guard.set(was);
                    return None;
                }
                let prev = l.tag.replace(id);
                if let Some(ts) = thread_state(l) {
                    if !THREADS.is_orphan(ts) {
                        flush_tag(ts);
                        ts.tag_id.store(id, Ordering::Relaxed);
                    }
                }
                if let Some(e) = TAGS.entry(id) {
                    e.enter(now_ns());
                }
                LAST_TAG.store(id, Ordering::Relaxed);
                l.guard.set(was);
                return Some(prev);
            }
            Some(l.tag.replace(id))
        })
        .unwrap_or(Some(UNTAGGED))
}

/// Leaves tag `id` (entered by [`enter_tag`]) and returns to `prev`.
pub(crate) fn exit_tag(id: u32, prev: u32) {
    let _ = LOCAL.try_with(|l| {
        l.tag.set(prev);
        if recording() {
            let was = l.guard.replace(true);
            if let Some(ts) = thread_state(l) {
                if !THREADS.is_orphan(ts) {
                    flush_tag(ts);
                    ts.tag_id.store(prev, Ordering::Relaxed);
                }
            }
            if let Some(e) = TAGS.entry(id) {
                e.exit(now_ns());
            }
            if id != UNTAGGED && LAST_TAG.load(Ordering::Relaxed) == id {
                LAST_TAG.store(prev, Ordering::Relaxed);
            }
            l.guard.set(was);
        }
    });
}

/// The calling thread's current tag id.
pub(crate) fn current_tag_id() -> u32 {
    LOCAL.try_with(|l| l.tag.get()).unwrap_or(UNTAGGED)
}

/// Live amount right now, summed over threads: exact in full mode (every
/// thread's allocations minus frees of recorded blocks).
pub(crate) fn live_now() -> (u64, u64) {
    let unit = CONFIG.block_unit.load(Ordering::Relaxed).max(1);
    let (mut ab, mut an, mut fb, mut fn_) = (0u64, 0u64, 0u64, 0u64);
    for ts in THREADS.each() {
        ab = ab.wrapping_add(ts.alloc_bytes.get());
        an = an.wrapping_add(ts.alloc_blocks.get());
        fb = fb.wrapping_add(ts.free_bytes.get());
        fn_ = fn_.wrapping_add(ts.free_blocks.get());
    }
    (ab.saturating_sub(fb), an.saturating_sub(fn_) / unit)
}

/// Reserves the tables. Idempotent.
pub(crate) fn init_tables() -> bool {
    STACKS.init() && TAGS.init() && THREADS.init()
}

/// Clears every counter and the live table for a fresh recording.
pub(crate) fn reset_counters() {
    LIVE.clear();
    for ts in THREADS.each() {
        ts.reset();
    }
    TAGS.reset();
    PEAK_GEN.fetch_add(1, Ordering::Relaxed);
    for a in [
        &APPROX_LIVE_BYTES,
        &APPROX_LIVE_BLOCKS,
        &PEAK_BYTES,
        &PEAK_BLOCKS,
    ] {
        a.store(0, Ordering::Relaxed);
    }
    UNTRACKED_ALLOCS.store(0, Ordering::Relaxed);
    UNTRACKED_BYTES.store(0, Ordering::Relaxed);
    for f in &SAMPLED {
        f.store(0, Ordering::Relaxed);
    }
}
