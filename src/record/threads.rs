//! Per-thread recorder state: counters that every allocation touches live
//! here, one set per thread, so no cache line is written by every thread.
//! Snapshots sum them.
//!
//! A thread claims a [`ThreadState`] slot from an `mmap`ed registry on its
//! first recorded allocation and gives it back when its thread-local storage
//! is torn down; a later thread may reuse the slot and keeps adding to its
//! counters (all counters are sums, so reuse is exact). Threads that
//! allocate after their teardown, or when the registry is full, share the
//! *orphan* slot 0, whose counters are updated with atomic read-modify-write.
//! Every other slot has a single writer, which updates with plain
//! load-and-store (no lock prefix) while readers load concurrently.

use std::sync::atomic::{
    AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

use super::live::{Block, PackedBlock};
use super::sys;

pub(crate) const MAX_THREADS: usize = 4096;

/// Stack ids per counter chunk, and chunks per directory: together they
/// cover every id the stack table can hand out.
const CHUNK: usize = 1024;
const DIR_LEN: usize = (1 << 21) / CHUNK;

const FREE: u32 = 0;
const ACTIVE: u32 = 1;
const RETIRED: u32 = 2;

/// A counter with one writer (or, in the orphan slot, many).
#[derive(Default)]
#[repr(transparent)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, v: u64, shared: bool) {
        if shared {
            self.0.fetch_add(v, Ordering::Relaxed);
        } else {
            self.0.store(
                self.0.load(Ordering::Relaxed).wrapping_add(v),
                Ordering::Relaxed,
            );
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Overwrites the value (single writer).
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// A signed single-writer counter (pending deltas).
#[derive(Default)]
#[repr(transparent)]
pub(crate) struct Delta(AtomicI64);

impl Delta {
    #[inline]
    pub(crate) fn add(&self, v: i64, shared: bool) -> i64 {
        if shared {
            self.0.fetch_add(v, Ordering::Relaxed) + v
        } else {
            let n = self.0.load(Ordering::Relaxed).wrapping_add(v);
            self.0.store(n, Ordering::Relaxed);
            n
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes the value, leaving zero.
    #[inline]
    pub(crate) fn take(&self) -> i64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

/// Per-stack counters of one thread.
#[derive(Default)]
#[repr(C)]
pub(crate) struct StackCounters {
    pub(crate) alloc_bytes: Counter,
    pub(crate) alloc_blocks: Counter,
    pub(crate) free_bytes: Counter,
    pub(crate) free_blocks: Counter,
    /// The live amount this counter had when peak generation `peak_gen`
    /// began (saved at its first change after that; see
    /// `hooks::PEAK_GEN`).
    pub(crate) peak_gen: Counter,
    pub(crate) peak_bytes: Counter,
    pub(crate) peak_blocks: Counter,
}

impl StackCounters {
    /// Live (bytes, blocks) now.
    #[inline]
    pub(crate) fn live(&self) -> (u64, u64) {
        (
            self.alloc_bytes.get().wrapping_sub(self.free_bytes.get()),
            self.alloc_blocks.get().wrapping_sub(self.free_blocks.get()),
        )
    }

    /// Live (bytes, blocks) when peak generation `generation` began.
    pub(crate) fn live_at(&self, generation: u64) -> (u64, u64) {
        if self.peak_gen.get() == generation {
            (self.peak_bytes.get(), self.peak_blocks.get())
        } else {
            self.live()
        }
    }

    /// Before the first change in peak generation `generation`: keeps the
    /// value it had when that generation began. O(1), on the allocation
    /// path (DHAT's deferred t-gmax, per counter).
    #[inline(always)]
    pub(crate) fn catch_up(&self, generation: u64) {
        if self.peak_gen.get() != generation {
            let (bytes, blocks) = self.live();
            self.peak_bytes.set(bytes);
            self.peak_blocks.set(blocks);
            self.peak_gen.set(generation);
        }
    }
}

#[repr(C, align(64))]
pub(crate) struct ThreadState {
    state: AtomicU32,
    pub(crate) tid: AtomicI32,
    pub(crate) pthread: AtomicU64,
    pub(crate) stack_end: AtomicUsize,
    /// Recorded allocations and frees (estimates in sampled mode; blocks in
    /// the recorder's block unit).
    pub(crate) alloc_bytes: Counter,
    pub(crate) alloc_blocks: Counter,
    pub(crate) free_bytes: Counter,
    pub(crate) free_blocks: Counter,
    /// Net live change not yet folded into the global approximate live
    /// amount (which tracks the peak).
    pub(crate) pending_bytes: Delta,
    pub(crate) pending_blocks: Delta,
    /// The tag this thread's pending tag deltas belong to.
    pub(crate) tag_id: AtomicU32,
    pub(crate) tag_live_bytes: Delta,
    pub(crate) tag_live_blocks: Delta,
    pub(crate) tag_alloc_bytes: Counter,
    pub(crate) tag_alloc_blocks: Counter,
    dir: AtomicPtr<AtomicPtr<StackCounters>>,
    /// The block a `realloc` on this thread holds outside the live table.
    pub(crate) flight: InFlight,
}

/// Where a `realloc` on this thread stands: the block it took out of the
/// live table stays visible here until its successor is in the table, so
/// a reader holding every shard lock (a snapshot, a heap-graph scan) sees
/// each block exactly once, in the table or here.
///
/// One writer (the owning thread); `phase` is stored last (Release) and
/// read first (Acquire). Moving a block between the table and here happens
/// under the block's shard lock: see `LiveTable::remove_into_flight` and
/// `LiveTable::insert_landing`.
#[derive(Default)]
pub(crate) struct InFlight {
    phase: AtomicU32,
    /// The block before the move (phases `Detached` and `Inner`).
    old: PackedBlock,
    /// The block after it (phase `Moved`): allocated and filled by the
    /// inner allocator, not yet in the table, while the program's pointers
    /// still hold `old`'s address.
    new: PackedBlock,
}

/// The phases of a realloc, see [`InFlight`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlightPhase {
    /// No block in flight.
    Idle = 0,
    /// The old block left the table; the inner allocator has not run.
    Detached = 1,
    /// Inside the inner allocator: the old block may already be freed or
    /// unmapped, the new one half-copied. A stop must wait (see `stop`).
    Inner = 2,
    /// The inner allocator returned; the new block is not in the table yet.
    Moved = 3,
}

impl InFlight {
    #[inline]
    pub(crate) fn phase(&self) -> FlightPhase {
        match self.phase.load(Ordering::Acquire) {
            1 => FlightPhase::Detached,
            2 => FlightPhase::Inner,
            3 => FlightPhase::Moved,
            _ => FlightPhase::Idle,
        }
    }

    #[inline]
    pub(crate) fn set_phase(&self, phase: FlightPhase) {
        self.phase.store(phase as u32, Ordering::Release);
    }

    /// Records the detached block (called under its shard lock).
    #[inline]
    pub(crate) fn detached(&self, old: &Block) {
        self.old.store(old);
        self.set_phase(FlightPhase::Detached);
    }

    /// Records the block the inner allocator returned.
    #[inline]
    pub(crate) fn moved(&self, new: &Block) {
        self.new.store(new);
        self.set_phase(FlightPhase::Moved);
    }

    pub(crate) fn old(&self) -> Block {
        self.old.load()
    }

    pub(crate) fn new_block(&self) -> Block {
        self.new.load()
    }

    /// The block to count for this thread right now, if any (the caller
    /// holds every shard lock, so the phase cannot leave or enter `Idle`).
    pub(crate) fn counted(&self) -> Option<Block> {
        match self.phase() {
            FlightPhase::Idle => None,
            FlightPhase::Detached | FlightPhase::Inner => Some(self.old()),
            FlightPhase::Moved => Some(self.new_block()),
        }
    }
}

impl ThreadState {
    /// The counters of `stack` for this thread, mapping a chunk on first use.
    /// `None` only if the kernel refuses memory.
    #[inline]
    pub(crate) fn stack_counters(&self, stack: u32) -> Option<&StackCounters> {
        let (d, k) = (stack as usize / CHUNK, stack as usize % CHUNK);
        if d >= DIR_LEN {
            return None;
        }
        let mut dir = self.dir.load(Ordering::Acquire);
        if dir.is_null() {
            dir = self.map_dir()?;
        }
        // SAFETY: d < DIR_LEN, inside the directory mapping.
        let slot = unsafe { &*dir.add(d) };
        let mut chunk = slot.load(Ordering::Acquire);
        if chunk.is_null() {
            chunk = map_chunk(slot)?;
        }
        // SAFETY: k < CHUNK, inside the chunk mapping; counters are atomics.
        Some(unsafe { &*chunk.add(k) })
    }

    /// Reads the counters of `stack` without mapping anything.
    pub(crate) fn peek_stack(&self, stack: u32) -> Option<&StackCounters> {
        let (d, k) = (stack as usize / CHUNK, stack as usize % CHUNK);
        let dir = self.dir.load(Ordering::Acquire);
        if dir.is_null() || d >= DIR_LEN {
            return None;
        }
        // SAFETY: d < DIR_LEN.
        let chunk = unsafe { (*dir.add(d)).load(Ordering::Acquire) };
        if chunk.is_null() {
            return None;
        }
        // SAFETY: k < CHUNK.
        Some(unsafe { &*chunk.add(k) })
    }

    #[cold]
    fn map_dir(&self) -> Option<*mut AtomicPtr<StackCounters>> {
        let bytes = DIR_LEN * std::mem::size_of::<AtomicPtr<StackCounters>>();
        Some(sys::map_once(&self.dir, bytes)).filter(|p| !p.is_null())
    }

    pub(crate) fn is_live(&self) -> bool {
        self.state.load(Ordering::Acquire) != FREE
    }

    /// Zeroes every counter (recording restart).
    pub(crate) fn reset(&self) {
        for c in [
            &self.alloc_bytes,
            &self.alloc_blocks,
            &self.free_bytes,
            &self.free_blocks,
        ] {
            c.reset();
        }
        for c in [&self.tag_alloc_bytes, &self.tag_alloc_blocks] {
            c.reset();
        }
        for d in [
            &self.pending_bytes,
            &self.pending_blocks,
            &self.tag_live_bytes,
            &self.tag_live_blocks,
        ] {
            d.take();
        }
        let dir = self.dir.load(Ordering::Acquire);
        if !dir.is_null() {
            for d in 0..DIR_LEN {
                // SAFETY: d < DIR_LEN.
                let chunk = unsafe { (*dir.add(d)).load(Ordering::Acquire) };
                if !chunk.is_null() {
                    // SAFETY: chunk maps CHUNK counters; zero is a valid value.
                    unsafe { std::ptr::write_bytes(chunk, 0, CHUNK) };
                }
            }
        }
    }
}

#[cold]
fn map_chunk(slot: &AtomicPtr<StackCounters>) -> Option<*mut StackCounters> {
    let bytes = CHUNK * std::mem::size_of::<StackCounters>();
    Some(sys::map_once(slot, bytes)).filter(|p| !p.is_null())
}

/// The registry of thread states.
pub(crate) struct Registry {
    slots: AtomicPtr<ThreadState>,
    /// One past the highest slot ever claimed.
    high_water: AtomicUsize,
}

impl Registry {
    pub(crate) const fn new() -> Registry {
        Registry {
            slots: AtomicPtr::new(std::ptr::null_mut()),
            high_water: AtomicUsize::new(1),
        }
    }

    pub(crate) fn init(&self) -> bool {
        if !self.slots.load(Ordering::Acquire).is_null() {
            return true;
        }
        let p = sys::map(MAX_THREADS * std::mem::size_of::<ThreadState>()).cast::<ThreadState>();
        if p.is_null() {
            return false;
        }
        // Slot 0, the orphan slot, is always active.
        // SAFETY: fresh zeroed mapping of MAX_THREADS states; all-zero is a
        // valid ThreadState (atomics and null pointers).
        unsafe { (*p).state.store(ACTIVE, Ordering::Release) };
        self.slots.store(p, Ordering::Release);
        true
    }

    /// The shared orphan slot.
    pub(crate) fn orphan(&self) -> Option<&ThreadState> {
        let p = self.slots.load(Ordering::Acquire);
        // SAFETY: slot 0 exists once the registry is mapped.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    pub(crate) fn is_orphan(&self, ts: &ThreadState) -> bool {
        std::ptr::eq(ts, self.slots.load(Ordering::Acquire))
    }

    /// Claims a free or retired slot for the calling thread.
    pub(crate) fn claim(&self) -> Option<&ThreadState> {
        let p = self.slots.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        for i in 1..MAX_THREADS {
            // SAFETY: i < MAX_THREADS, inside the mapping.
            let ts = unsafe { &*p.add(i) };
            let s = ts.state.load(Ordering::Relaxed);
            if s != ACTIVE
                && ts
                    .state
                    .compare_exchange(s, ACTIVE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.high_water.fetch_max(i + 1, Ordering::AcqRel);
                return Some(ts);
            }
        }
        None
    }

    /// Gives a slot back; its counters stay and keep counting for whoever
    /// claims it next.
    pub(crate) fn retire(&self, ts: &ThreadState) {
        if !self.is_orphan(ts) {
            ts.tid.store(0, Ordering::Relaxed);
            ts.state.store(RETIRED, Ordering::Release);
        }
    }

    /// Every slot that was ever claimed (active or retired), orphan included.
    pub(crate) fn each(&self) -> impl Iterator<Item = &ThreadState> {
        let p = self.slots.load(Ordering::Acquire);
        let n = if p.is_null() {
            0
        } else {
            self.high_water.load(Ordering::Acquire)
        };
        // SAFETY: i < high_water <= MAX_THREADS, inside the mapping.
        (0..n)
            .map(move |i| unsafe { &*p.add(i) })
            .filter(|ts| ts.is_live())
    }

    /// Bytes the registry uses: the states claimed and their per-stack
    /// counter chunks.
    pub(crate) fn memory_bytes(&self) -> u64 {
        let states = self.high_water.load(Ordering::Acquire) * std::mem::size_of::<ThreadState>();
        let chunk = CHUNK * std::mem::size_of::<StackCounters>();
        let dir = DIR_LEN * std::mem::size_of::<AtomicPtr<StackCounters>>();
        let mut bytes = states as u64;
        for ts in self.each() {
            let d = ts.dir.load(Ordering::Acquire);
            if d.is_null() {
                continue;
            }
            bytes += dir as u64;
            for k in 0..DIR_LEN {
                // SAFETY: k < DIR_LEN, inside the directory mapping.
                if !unsafe { (*d.add(k)).load(Ordering::Acquire) }.is_null() {
                    bytes += chunk as u64;
                }
            }
        }
        bytes
    }

    /// Threads currently holding a slot (for the peak error bound).
    pub(crate) fn active_count(&self) -> usize {
        self.each()
            .filter(|t| t.state.load(Ordering::Relaxed) == ACTIVE)
            .count()
    }
}
