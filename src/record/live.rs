//! The live table: every recorded block that is still allocated, keyed by
//! address.
//!
//! It is exact. A free removes its block *before* the memory goes back to
//! the inner allocator and nothing is buffered, so the heap scan may read
//! any block the table lists. It is split into [`SHARDS`] shards by address
//! region (see [`shard_of`]), each an open-addressing table (linear probing, backward-shift
//! deletion, no tombstones) behind its own [`RawLock`]: there is no global
//! lock, and two threads contend only when their addresses hash to the same
//! shard at the same moment.
//!
//! Memory comes from `mmap`. A shard grows by 1.5x at 3/4 load, so a table
//! never holds less than one entry per 64 bytes of slots (32-byte entries at
//! load >= 1/2) once past its initial size. If the kernel refuses memory the
//! insert fails and the caller counts the block as dropped.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::sys::{self, RawLock};
use super::threads::{FlightPhase, InFlight};

/// Number of shards; a power of two.
pub(crate) const SHARDS: usize = 256;

/// Slots a shard gets on first use: one page, the least a mapping takes
/// (256 shards x 128 slots x 32 bytes = 1 MiB, of which only the lines in
/// use are in cache). Fewer slots only made more growths, each a mapping,
/// a rehash and an unmapping.
const INITIAL_SLOTS: usize = 4096 / std::mem::size_of::<Block>();

/// One live block. `addr == 0` marks an empty slot (no allocator returns a
/// null block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Block {
    pub addr: usize,
    pub size: usize,
    pub stack: u32,
    pub tag: u32,
    /// Coarse ms since recording started ([`super::hooks::COARSE_NS`]).
    pub birth_ms: u32,
    /// Low 32 bits of the address hash (set by the table): deletion
    /// re-homes neighbours without rehashing them.
    hash: u32,
}

/// A [`Block`] in four atomic words: readable by another thread while its
/// one writer may be changing it (see `threads::InFlight`).
#[derive(Default)]
pub(crate) struct PackedBlock([AtomicU64; 4]);

impl PackedBlock {
    pub(crate) const fn new() -> PackedBlock {
        PackedBlock([const { AtomicU64::new(0) }; 4])
    }

    #[inline]
    pub(crate) fn store(&self, b: &Block) {
        let w = &self.0;
        w[0].store(b.addr as u64, Ordering::Relaxed);
        w[1].store(b.size as u64, Ordering::Relaxed);
        w[2].store(b.stack as u64 | (b.tag as u64) << 32, Ordering::Relaxed);
        w[3].store(b.birth_ms as u64 | (b.hash as u64) << 32, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn load(&self) -> Block {
        let w = &self.0;
        let (st, bh) = (w[2].load(Ordering::Relaxed), w[3].load(Ordering::Relaxed));
        Block {
            addr: w[0].load(Ordering::Relaxed) as usize,
            size: w[1].load(Ordering::Relaxed) as usize,
            stack: st as u32,
            tag: (st >> 32) as u32,
            birth_ms: bh as u32,
            hash: (bh >> 32) as u32,
        }
    }
}

impl Block {
    pub(crate) fn new(addr: usize, size: usize, stack: u32, tag: u32, birth_ms: u32) -> Block {
        Block {
            addr,
            size,
            stack,
            tag,
            birth_ms,
            hash: 0,
        }
    }
}

#[repr(C, align(64))]
struct Shard {
    lock: RawLock,
    /// The fields below are only touched with `lock` held.
    inner: UnsafeCell<ShardTable>,
    /// Copies of `inner`'s slots and capacity, written under `lock` when the
    /// table moves and read without it by [`LiveTable::prefetch`]: a stale
    /// pair only makes a prefetch miss.
    hint_slots: AtomicPtr<Block>,
    hint_cap: AtomicUsize,
}

struct ShardTable {
    slots: *mut Block,
    cap: usize,
    len: usize,
}

pub(crate) struct LiveTable {
    shards: [Shard; SHARDS],
    /// Bytes of slot memory mapped, for the recorder's own accounting.
    mapped_bytes: AtomicUsize,
}

// SAFETY: every access to a shard's table happens with its lock held.
unsafe impl Sync for LiveTable {}

#[inline]
fn mix(addr: usize) -> u64 {
    // murmur3's 64-bit finaliser: cheap and spreads aligned addresses.
    let mut x = addr as u64;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The shard of an address: chosen by its 64 KiB region, not by the full
/// address, so a thread whose allocator arena lives in its own regions
/// (glibc gives each thread an arena) mostly touches shards no other thread
/// touches, and shard cache lines do not bounce between cores.
#[inline]
fn shard_of(addr: usize) -> usize {
    (mix(addr >> 16) >> 56) as usize & (SHARDS - 1)
}

/// Hints the CPU to load `p`'s cache line. Never faults, whatever `p`.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it reads nothing architecturally and
    // does not fault on any address, mapped or not.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Home slot: the low 32 hash bits scaled onto `cap` (no power-of-two
/// capacity needed, so growth can be 1.5x).
#[inline]
fn home(h32: u32, cap: usize) -> usize {
    ((h32 as u64 * cap as u64) >> 32) as usize
}

impl Shard {
    /// Inserts into the table and keeps the prefetch hints current.
    ///
    /// # Safety
    /// `lock` is held.
    #[inline]
    unsafe fn insert(&self, block: Block, mapped: &AtomicUsize) -> bool {
        // SAFETY: the caller holds the lock, which guards `inner`.
        let table = unsafe { &mut *self.inner.get() };
        let before = table.slots;
        let ok = table.insert(block, mapped);
        if table.slots != before {
            self.hint_slots.store(table.slots, Ordering::Relaxed);
            self.hint_cap.store(table.cap, Ordering::Relaxed);
        }
        ok
    }
}

impl ShardTable {
    /// # Safety
    /// `i < self.cap` and `slots` is mapped.
    #[inline]
    unsafe fn slot(&self, i: usize) -> *mut Block {
        // SAFETY: the caller guarantees i is in bounds of the mapping.
        unsafe { self.slots.add(i) }
    }

    fn insert(&mut self, mut block: Block, mapped: &AtomicUsize) -> bool {
        if (self.len + 1) * 4 > self.cap * 3 && !self.grow(mapped) {
            return false;
        }
        block.hash = mix(block.addr) as u32;
        let mut i = home(block.hash, self.cap);
        loop {
            // SAFETY: i < cap is kept by the wrap-around below.
            let s = unsafe { &mut *self.slot(i) };
            if s.addr == 0 {
                *s = block;
                self.len += 1;
                return true;
            }
            if s.addr == block.addr {
                // A stale entry: its free happened while recording was off.
                *s = block;
                return true;
            }
            i += 1;
            if i == self.cap {
                i = 0;
            }
        }
    }

    fn find(&self, addr: usize) -> Option<usize> {
        if self.cap == 0 {
            return None;
        }
        let mut i = home(mix(addr) as u32, self.cap);
        loop {
            // SAFETY: i < cap.
            let a = unsafe { (*self.slot(i)).addr };
            if a == addr {
                return Some(i);
            }
            if a == 0 {
                return None;
            }
            i += 1;
            if i == self.cap {
                i = 0;
            }
        }
    }

    fn remove(&mut self, addr: usize) -> Option<Block> {
        let mut i = self.find(addr)?;
        // SAFETY: `find` returned an index < cap.
        let removed = unsafe { *self.slot(i) };
        // Backward-shift deletion: pull later entries of the probe run into
        // the hole unless that would move them before their home slot.
        let mut j = i;
        loop {
            j += 1;
            if j == self.cap {
                j = 0;
            }
            // SAFETY: j < cap.
            let candidate = unsafe { *self.slot(j) };
            if candidate.addr == 0 {
                break;
            }
            let k = home(candidate.hash, self.cap);
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if stays {
                continue;
            }
            // SAFETY: i, j < cap.
            unsafe { *self.slot(i) = candidate };
            i = j;
        }
        // SAFETY: i < cap.
        unsafe { *self.slot(i) = Block::default() };
        self.len -= 1;
        Some(removed)
    }

    #[cold]
    fn grow(&mut self, mapped: &AtomicUsize) -> bool {
        let new_cap = if self.cap == 0 {
            INITIAL_SLOTS
        } else {
            self.cap + self.cap / 2
        };
        let bytes = new_cap * std::mem::size_of::<Block>();
        let fresh = sys::map_populated(bytes).cast::<Block>();
        if fresh.is_null() {
            return false;
        }
        let old = std::mem::replace(
            self,
            ShardTable {
                slots: fresh,
                cap: new_cap,
                len: 0,
            },
        );
        for i in 0..old.cap {
            // SAFETY: i < old.cap, old mapping still valid.
            let b = unsafe { *old.slot(i) };
            if b.addr != 0 {
                let mut j = home(b.hash, new_cap);
                // SAFETY: j < new_cap; the new table has room (load < 1/2).
                unsafe {
                    while (*self.slot(j)).addr != 0 {
                        j += 1;
                        if j == new_cap {
                            j = 0;
                        }
                    }
                    *self.slot(j) = b;
                }
                self.len += 1;
            }
        }
        let old_bytes = old.cap * std::mem::size_of::<Block>();
        // SAFETY: the old slots came from `map` with this size and are no
        // longer referenced.
        unsafe { sys::unmap(old.slots.cast(), old_bytes) };
        mapped.fetch_add(bytes, Ordering::Relaxed);
        mapped.fetch_sub(old_bytes, Ordering::Relaxed);
        true
    }
}

impl LiveTable {
    pub(crate) const fn new() -> LiveTable {
        LiveTable {
            shards: [const {
                Shard {
                    lock: RawLock::new(),
                    inner: UnsafeCell::new(ShardTable {
                        slots: std::ptr::null_mut(),
                        cap: 0,
                        len: 0,
                    }),
                    hint_slots: AtomicPtr::new(std::ptr::null_mut()),
                    hint_cap: AtomicUsize::new(0),
                }
            }; SHARDS],
            mapped_bytes: AtomicUsize::new(0),
        }
    }

    /// Starts loading the home slot of `addr`: of a block about to be
    /// inserted, so the insert, made after the stack is captured, does not
    /// wait on memory for it (with many live blocks that slot is a cache
    /// miss), or of one about to be removed. Takes no lock, never faults.
    #[inline(always)]
    pub(crate) fn prefetch(&self, addr: usize) {
        let shard = &self.shards[shard_of(addr)];
        let slots = shard.hint_slots.load(Ordering::Relaxed);
        let cap = shard.hint_cap.load(Ordering::Relaxed);
        if !slots.is_null() {
            // A pair read across a growth may point past the old mapping:
            // hence `wrapping_add`, and a prefetch, which never faults.
            prefetch(slots.wrapping_add(home(mix(addr) as u32, cap)));
        }
    }

    /// Records a block. Returns false if the table could not grow (the
    /// caller counts the block as untracked).
    #[inline]
    pub(crate) fn insert(&self, block: Block) -> bool {
        let shard = &self.shards[shard_of(block.addr)];
        shard.lock.lock();
        // SAFETY: the shard lock is held.
        let ok = unsafe { shard.insert(block, &self.mapped_bytes) };
        shard.lock.unlock();
        ok
    }

    /// Removes and returns the block at `addr`, if it is recorded.
    #[inline]
    pub(crate) fn remove(&self, addr: usize) -> Option<Block> {
        let shard = &self.shards[shard_of(addr)];
        shard.lock.lock();
        // SAFETY: the shard lock is held.
        let b = unsafe { (*shard.inner.get()).remove(addr) };
        shard.lock.unlock();
        b
    }

    /// Moves the block at `addr` out of the table into `flight`, in one
    /// step under its shard lock: a reader holding every shard lock sees it
    /// in exactly one of the two places.
    #[inline]
    pub(crate) fn remove_into_flight(&self, addr: usize, flight: &InFlight) -> Option<Block> {
        let shard = &self.shards[shard_of(addr)];
        shard.lock.lock();
        // SAFETY: the shard lock is held.
        let b = unsafe { (*shard.inner.get()).remove(addr) };
        if let Some(b) = &b {
            flight.detached(b);
        }
        shard.lock.unlock();
        b
    }

    /// Records `block` and ends `flight`, in one step under the block's
    /// shard lock. Returns false if the table could not grow (the flight
    /// ends all the same).
    #[inline]
    pub(crate) fn insert_landing(&self, block: Block, flight: &InFlight) -> bool {
        let shard = &self.shards[shard_of(block.addr)];
        shard.lock.lock();
        // SAFETY: the shard lock is held.
        let ok = unsafe { shard.insert(block, &self.mapped_bytes) };
        flight.set_phase(FlightPhase::Idle);
        shard.lock.unlock();
        ok
    }

    /// Copies every live block into `out` with every shard lock held, so
    /// the copy is one moment of the table; `flights` adds the blocks that
    /// reallocs hold outside it at that moment (each block is then counted
    /// exactly once). Allocation and free on other threads wait for the
    /// copy (no thread is stopped). `out` is grown *outside* the locks.
    pub(crate) fn copy_into<'a, I>(&self, out: &mut Vec<Block>, flights: impl Fn() -> I)
    where
        I: Iterator<Item = &'a InFlight>,
    {
        loop {
            // SAFETY: racy reads of `len` are only a size hint.
            let hint: usize = self
                .shards
                .iter()
                .map(|s| unsafe { (*s.inner.get()).len })
                .sum();
            let flying = flights().count();
            out.clear();
            out.reserve(hint + hint / 8 + flying + 64);
            self.lock_all();
            // SAFETY: every shard lock is held.
            let len: usize = self
                .shards
                .iter()
                .map(|s| unsafe { (*s.inner.get()).len })
                .sum();
            if out.capacity() < len + flights().count() {
                self.unlock_all();
                continue;
            }
            // SAFETY: every shard lock is held; capacity was checked, so
            // the pushes below never reallocate.
            unsafe { self.for_each_locked(|b| out.push(*b)) };
            for f in flights() {
                if let Some(b) = f.counted() {
                    out.push(b);
                }
            }
            self.unlock_all();
            return;
        }
    }

    /// Forgets every block (at recording start).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.lock.lock();
            // SAFETY: the shard lock is held.
            let t = unsafe { &mut *shard.inner.get() };
            if t.cap != 0 {
                // SAFETY: slots is a mapping of `cap` blocks.
                unsafe { std::ptr::write_bytes(t.slots, 0, t.cap) };
            }
            t.len = 0;
            shard.lock.unlock();
        }
    }

    /// Takes every shard lock, in order: allocation and free on other
    /// threads wait until [`LiveTable::unlock_all`]. Used around `fork` and
    /// by the heap-graph scan.
    pub(crate) fn lock_all(&self) {
        for shard in &self.shards {
            shard.lock.lock();
        }
    }

    pub(crate) fn unlock_all(&self) {
        for shard in &self.shards {
            shard.lock.unlock();
        }
    }

    /// # Safety
    /// Only in a forked child, with no other thread running.
    pub(crate) unsafe fn force_unlock_all(&self) {
        for shard in &self.shards {
            // SAFETY: forwarded from the caller.
            unsafe { shard.lock.force_unlock() };
        }
    }

    /// Visits every block while the caller holds every lock
    /// ([`LiveTable::lock_all`]).
    ///
    /// # Safety
    /// The caller must hold every shard lock for the whole call.
    pub(crate) unsafe fn for_each_locked(&self, mut f: impl FnMut(&Block)) {
        for shard in &self.shards {
            // SAFETY: the caller holds this shard's lock.
            let t = unsafe { &*shard.inner.get() };
            for i in 0..t.cap {
                // SAFETY: i < cap.
                let b = unsafe { &*t.slot(i) };
                if b.addr != 0 {
                    f(b);
                }
            }
        }
    }

    pub(crate) fn mapped_bytes(&self) -> usize {
        self.mapped_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(addr: usize, size: usize) -> Block {
        Block::new(addr, size, 1, 0, 0)
    }

    #[test]
    fn insert_find_remove_many_with_collisions() {
        let table = Box::new(LiveTable::new());
        // Addresses that are 16-aligned and clustered, as allocators return.
        let addrs: Vec<usize> = (1..20_000).map(|i| 0x5555_0000_0000 + i * 16).collect();
        for &a in &addrs {
            assert!(table.insert(block(a, a % 1000)));
        }
        let mut all = Vec::new();
        table.copy_into(&mut all, std::iter::empty);
        assert_eq!(all.len(), addrs.len());
        // Remove every other one, then check all lookups.
        for &a in addrs.iter().step_by(2) {
            assert_eq!(table.remove(a).map(|b| b.size), Some(a % 1000));
        }
        for (i, &a) in addrs.iter().enumerate() {
            let found = table.remove(a);
            if i % 2 == 0 {
                assert_eq!(found, None, "removed twice: {a:#x}");
            } else {
                assert_eq!(found.map(|b| b.addr), Some(a));
            }
        }
        let mut rest = Vec::new();
        table.copy_into(&mut rest, std::iter::empty);
        assert!(rest.is_empty());
    }

    #[test]
    fn reinserting_an_address_replaces_the_stale_entry() {
        let table = Box::new(LiveTable::new());
        assert!(table.insert(block(0x1000, 1)));
        assert!(table.insert(block(0x1000, 2)));
        assert_eq!(table.remove(0x1000).map(|b| b.size), Some(2));
        assert_eq!(table.remove(0x1000), None);
    }
}
