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
//!
//! **Region pages** (on in Python processes, [`LiveTable::use_region_pages`]).
//! A hash table puts each block in a random slot, so every insert and
//! remove is a cache miss once the table outgrows the cache, while an
//! interpreter's small objects come from size-class pools in address order.
//! With region pages on, a block of at most [`PAGED_MAX`] bytes at a 16-byte
//! aligned address goes instead to its 64 KiB region's page: one 16-byte
//! slot per 16 bytes of the region, at the block's offset, so blocks made
//! (and freed) in address order touch their slots in order too, and no slot
//! is ever probed. A region's page belongs to the region's shard (the shard
//! is chosen by region) and is guarded by its lock. Pages are found through
//! a two-level directory by region number and are never unmapped, so a
//! lock-free prefetch may read the directory. A free looks in the region's
//! page first and in the hash table when the slot there is empty.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

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

/// Region pages take blocks of at most this many bytes: pymalloc's
/// largest size class, whose blocks pools hand out in address order.
/// Bigger ones are fewer, and a page would spend more slot memory on them
/// than a hash slot takes.
pub(crate) const PAGED_MAX: usize = 512;
/// A page has a slot per this many bytes of its region (the alignment of
/// every allocator a Python process uses).
const GRAIN: usize = 16;
/// A region is what `shard_of` shards by: 64 KiB.
const REGION_BITS: u32 = 16;
const PAGE_SLOTS: usize = (1 << REGION_BITS) / GRAIN;
/// Region pages cover addresses below this (all of user space on x86-64 and
/// aarch64 with 48-bit addresses); blocks above go to the hash table.
const PAGED_LIMIT: usize = 1 << 47;
/// Directory levels: the top one by address bits 46..32, each mid one by
/// bits 31..16 (the region within 4 GiB).
const TOP_LEN: usize = PAGED_LIMIT >> 32;
const MID_LEN: usize = 1 << (32 - REGION_BITS);

/// A block in a region page; `size == 0` marks an empty slot (recorded
/// blocks are never empty: Python's allocators and Rust's count 0 as 1).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct PagedBlock {
    size: u32,
    stack: u32,
    tag: u32,
    birth_ms: u32,
}

/// One region's page: mapped on the region's first small block, never
/// unmapped, touched a memory page at a time as the region fills.
#[repr(C)]
struct RegionPage {
    /// The next page of the same shard (the shard's list, for whole-table
    /// walks).
    next: *mut RegionPage,
    /// The region's first address.
    base: usize,
    /// Occupied slots.
    len: usize,
    /// Memory pages of this page written so far, a bit each (for the
    /// recorder's accounting: the rest is mapped but not in memory).
    touched: u64,
    slots: [PagedBlock; PAGE_SLOTS],
}

/// Memory pages, for counting what sparse mappings (region pages, directory
/// levels) really take.
const MEMORY_PAGE: usize = 4096;

impl RegionPage {
    #[inline]
    fn index(addr: usize) -> usize {
        (addr >> GRAIN.trailing_zeros()) & (PAGE_SLOTS - 1)
    }

    /// Byte offset of slot `i` in the page.
    #[inline(always)]
    fn offset(i: usize) -> usize {
        std::mem::offset_of!(RegionPage, slots) + i * std::mem::size_of::<PagedBlock>()
    }

    /// The `touched` bit of slot `i`'s memory page.
    #[inline(always)]
    fn memory_page_bit(i: usize) -> u64 {
        1 << (Self::offset(i) / MEMORY_PAGE)
    }

    /// Whether slot `i`'s memory page was ever written (an untouched one
    /// holds only empty slots, and reading it would map it).
    #[inline(always)]
    fn wrote(&self, i: usize) -> bool {
        self.touched & Self::memory_page_bit(i) != 0
    }

    fn block(&self, i: usize, b: &PagedBlock) -> Block {
        Block {
            addr: self.base + i * GRAIN,
            size: b.size as usize,
            stack: b.stack,
            tag: b.tag,
            birth_ms: b.birth_ms,
            hash: 0,
        }
    }
}

/// Region number -> page, in two levels of mid arrays mapped on first use
/// and published with a compare-and-swap (regions of different shards
/// share a mid array). A page pointer is written once, by the holder of
/// its region's shard lock.
struct Directory {
    /// `TOP_LEN` pointers to mid arrays of `MID_LEN` page pointers.
    top: AtomicPtr<AtomicPtr<AtomicPtr<RegionPage>>>,
}

impl Directory {
    const fn new() -> Directory {
        Directory {
            top: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The page of `addr`'s region, or null. Takes no lock: levels and
    /// pages, once published, stay mapped.
    #[inline(always)]
    fn find(&self, addr: usize) -> *mut RegionPage {
        let top = self.top.load(Ordering::Acquire);
        if top.is_null() || addr >= PAGED_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: `top` maps TOP_LEN entries and `addr >> 32 < TOP_LEN`.
        let mid = unsafe { &*top.add(addr >> 32) }.load(Ordering::Acquire);
        if mid.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: `mid` maps MID_LEN entries; the index is masked to them.
        unsafe { &*mid.add((addr >> REGION_BITS) & (MID_LEN - 1)) }.load(Ordering::Acquire)
    }

    /// The directory entry of `addr`'s region (below `PAGED_LIMIT`),
    /// mapping the levels on the way; None if the kernel refuses memory.
    fn entry(&self, addr: usize, mapped: &AtomicUsize) -> Option<&AtomicPtr<RegionPage>> {
        let top = level(&self.top, TOP_LEN, None)?;
        // SAFETY: `top` maps TOP_LEN entries and `addr >> 32 < TOP_LEN`.
        let mid = level(unsafe { &*top.add(addr >> 32) }, MID_LEN, Some(mapped))?;
        // SAFETY: `mid` maps MID_LEN entries; the index is masked to them.
        Some(unsafe { &*mid.add((addr >> REGION_BITS) & (MID_LEN - 1)) })
    }
}

/// `MEMORY_PAGE` if no entry of the memory page holding `entry` (in a
/// directory level) has been written yet, else 0: read before `entry` is
/// written, so of two threads writing entries of one page at once at least
/// one counts it (both may). Reads only that page, which the write is
/// about to touch anyway.
#[cold]
fn first_write<T>(entry: &AtomicPtr<T>) -> usize {
    let words = MEMORY_PAGE / std::mem::size_of::<AtomicPtr<T>>();
    let start = (entry as *const AtomicPtr<T> as usize) & !(MEMORY_PAGE - 1);
    let page = start as *const AtomicPtr<T>;
    // SAFETY: level arrays are page-aligned mappings of whole pages (mmap),
    // so the page holding `entry` is mapped, and holds `words` pointers.
    let written = (0..words).any(|i| !unsafe { &*page.add(i) }.load(Ordering::Relaxed).is_null());
    if written {
        0
    } else {
        MEMORY_PAGE
    }
}

/// The array `slot` points to, mapped (`len` zeroed pointers) and
/// published on first use. Two threads may race here (their regions'
/// shards differ): the loser unmaps its copy and takes the winner's.
/// `mapped`: count the memory page `slot` is in when this is the first
/// write to it (`slot` is an entry of a level array; the top pointer is
/// not).
#[cold]
fn level<T>(
    slot: &AtomicPtr<AtomicPtr<T>>,
    len: usize,
    mapped: Option<&AtomicUsize>,
) -> Option<*mut AtomicPtr<T>> {
    let p = slot.load(Ordering::Acquire);
    if !p.is_null() {
        return Some(p);
    }
    let bytes = len * std::mem::size_of::<AtomicPtr<T>>();
    let fresh = sys::map(bytes).cast::<AtomicPtr<T>>();
    if fresh.is_null() {
        return None;
    }
    let first = mapped.map_or(0, |_| first_write(slot));
    match slot.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            if let Some(m) = mapped {
                m.fetch_add(first, Ordering::Relaxed);
            }
            Some(fresh)
        }
        Err(winner) => {
            // SAFETY: `fresh` came from `map` with this size and was never
            // published.
            unsafe { sys::unmap(fresh.cast(), bytes) };
            Some(winner)
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
    /// The region pages of this shard's regions, linked by `next`.
    pages: *mut RegionPage,
    /// Blocks in those pages.
    paged: usize,
}

pub(crate) struct LiveTable {
    shards: [Shard; SHARDS],
    /// Bytes of memory in use, for the recorder's own accounting: hash
    /// slots (all touched) and the memory pages written in the directory
    /// and in region pages.
    mapped_bytes: AtomicUsize,
    /// New small blocks go to region pages (see the module doc).
    region_pages: AtomicBool,
    directory: Directory,
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
    /// Blocks recorded, in the hash table and in region pages.
    fn blocks(&self) -> usize {
        self.len + self.paged
    }

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
        let (old_slots, old_cap) = (self.slots, self.cap);
        (self.slots, self.cap, self.len) = (fresh, new_cap, 0);
        for i in 0..old_cap {
            // SAFETY: i < old_cap, old mapping still valid.
            let b = unsafe { *old_slots.add(i) };
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
        let old_bytes = old_cap * std::mem::size_of::<Block>();
        // SAFETY: the old slots came from `map` with this size and are no
        // longer referenced.
        unsafe { sys::unmap(old_slots.cast(), old_bytes) };
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
                        pages: std::ptr::null_mut(),
                        paged: 0,
                    }),
                    hint_slots: AtomicPtr::new(std::ptr::null_mut()),
                    hint_cap: AtomicUsize::new(0),
                }
            }; SHARDS],
            mapped_bytes: AtomicUsize::new(0),
            region_pages: AtomicBool::new(false),
            directory: Directory::new(),
        }
    }

    /// Sends new small blocks to region pages from now on (see the module
    /// doc); for good, since frees look in pages only while this is on.
    /// Blocks already recorded stay where they are. Until it is called,
    /// the table is the hash table alone and its operations test nothing
    /// else but this switch.
    pub(crate) fn use_region_pages(&self) {
        self.region_pages.store(true, Ordering::Relaxed);
    }

    #[inline(always)]
    fn region_pages_on(&self) -> bool {
        self.region_pages.load(Ordering::Relaxed)
    }

    /// Whether a new block of `size` bytes at `addr` goes to a region page.
    #[inline(always)]
    fn paged(&self, addr: usize, size: usize) -> bool {
        self.region_pages_on() && size <= PAGED_MAX && addr % GRAIN == 0 && addr < PAGED_LIMIT
    }

    /// Records `block` in the shard whose lock the caller holds: in its
    /// region's page when it is a small block and region pages are on (the
    /// hash table takes it if no page can be mapped), else in the hash
    /// table. Inlined, with the pages' part out of line, so the hash
    /// table's path stays what it is without pages.
    ///
    /// # Safety
    /// `shard` is `block.addr`'s shard and its lock is held.
    #[inline(always)]
    unsafe fn insert_locked(&self, shard: &Shard, block: Block) -> bool {
        // SAFETY: forwarded from the caller (both calls).
        if self.paged(block.addr, block.size) && unsafe { self.insert_paged(shard, &block) } {
            return true;
        }
        // SAFETY: forwarded from the caller.
        unsafe { shard.insert(block, &self.mapped_bytes) }
    }

    /// Records a small block in its region's page; false if no page could
    /// be mapped.
    ///
    /// # Safety
    /// As for [`LiveTable::insert_locked`].
    #[inline(never)]
    unsafe fn insert_paged(&self, shard: &Shard, block: &Block) -> bool {
        // SAFETY: the caller holds the lock, which guards `inner`.
        let table = unsafe { &mut *shard.inner.get() };
        let page = self.page_for(table, block.addr);
        if page.is_null() {
            return false;
        }
        // SAFETY: pages stay mapped; the caller holds the lock of the
        // block's shard, which guards its region's page.
        let page = unsafe { &mut *page };
        let i = RegionPage::index(block.addr);
        // The slot of a memory page never written is empty, and reading it
        // first would fault in the zero page, then fault again to write.
        let fresh = !page.wrote(i);
        if fresh {
            page.touched |= RegionPage::memory_page_bit(i);
            self.mapped_bytes.fetch_add(MEMORY_PAGE, Ordering::Relaxed);
        }
        let slot = &mut page.slots[i];
        if fresh || slot.size == 0 {
            page.len += 1;
            table.paged += 1;
        }
        // A taken slot holds a stale entry, as in the hash table.
        *slot = PagedBlock {
            size: block.size as u32,
            stack: block.stack,
            tag: block.tag,
            birth_ms: block.birth_ms,
        };
        true
    }

    /// Removes the block at `addr` from the shard whose lock the caller
    /// holds: from its region's page if it is there, else from the hash
    /// table.
    ///
    /// # Safety
    /// `shard` is `addr`'s shard and its lock is held.
    #[inline(always)]
    unsafe fn remove_locked(&self, shard: &Shard, addr: usize) -> Option<Block> {
        if self.region_pages_on() && addr % GRAIN == 0 {
            // SAFETY: forwarded from the caller.
            if let Some(b) = unsafe { self.remove_paged(shard, addr) } {
                return Some(b);
            }
        }
        // SAFETY: the caller holds the lock, which guards `inner`.
        unsafe { (*shard.inner.get()).remove(addr) }
    }

    /// Removes the block at `addr` from its region's page, if it is there.
    ///
    /// # Safety
    /// As for [`LiveTable::remove_locked`].
    #[inline(never)]
    unsafe fn remove_paged(&self, shard: &Shard, addr: usize) -> Option<Block> {
        let page = self.directory.find(addr);
        if page.is_null() {
            return None;
        }
        // SAFETY: pages stay mapped; this one is of `addr`'s region, so the
        // held lock guards it, and the lock guards `inner`.
        let (page, table) = unsafe { (&mut *page, &mut *shard.inner.get()) };
        let i = RegionPage::index(addr);
        // A memory page never written holds no block; reading it would
        // fault in the zero page (freed blocks from the malloc heap, whose
        // regions hold small blocks elsewhere, land here often).
        if !page.wrote(i) {
            return None;
        }
        let slot = page.slots[i];
        if slot.size == 0 {
            return None;
        }
        page.slots[i] = PagedBlock::default();
        page.len -= 1;
        table.paged -= 1;
        Some(page.block(i, &slot))
    }

    /// The page of `addr`'s region, mapped and linked into its shard's
    /// list (`table`) on first use; null if the kernel refuses memory.
    #[inline(always)]
    fn page_for(&self, table: &mut ShardTable, addr: usize) -> *mut RegionPage {
        let page = self.directory.find(addr);
        if page.is_null() {
            return self.map_page(table, addr);
        }
        page
    }

    #[cold]
    #[inline(never)]
    fn map_page(&self, table: &mut ShardTable, addr: usize) -> *mut RegionPage {
        let Some(entry) = self.directory.entry(addr, &self.mapped_bytes) else {
            return std::ptr::null_mut();
        };
        let bytes = std::mem::size_of::<RegionPage>();
        let page = sys::map(bytes).cast::<RegionPage>();
        if page.is_null() {
            return page;
        }
        // SAFETY: a fresh zeroed mapping the size of a page, which is all
        // integers and pointers (zero is a valid empty page), not yet
        // published.
        unsafe {
            (*page).base = addr & !((1 << REGION_BITS) - 1);
            (*page).next = table.pages;
            (*page).touched = 1;
        }
        table.pages = page;
        self.mapped_bytes.fetch_add(MEMORY_PAGE, Ordering::Relaxed);
        self.mapped_bytes
            .fetch_add(first_write(entry), Ordering::Relaxed);
        // Only the holder of this region's shard lock writes this entry.
        entry.store(page, Ordering::Release);
        page
    }

    /// Starts loading the slot of a block about to be inserted (`size`
    /// given) or removed (`None`), so the insert, made after the stack is
    /// captured, or the lookup after the lock does not wait on memory for
    /// it: with many live blocks a hash slot is a cache miss. Takes no
    /// lock, never faults.
    #[inline(always)]
    pub(crate) fn prefetch(&self, addr: usize, size: Option<usize>) {
        if self.region_pages_on() && size.map_or(addr % GRAIN == 0, |size| self.paged(addr, size)) {
            let page = self.directory.find(addr);
            if !page.is_null() {
                // In bounds of a mapped page; a prefetch never faults anyway.
                prefetch(
                    page.cast::<u8>()
                        .wrapping_add(RegionPage::offset(RegionPage::index(addr))),
                );
                return;
            }
            if size.is_some() {
                return; // the region's first block: its page is not mapped
            }
        }
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
        // SAFETY: the block's shard lock is held.
        let ok = unsafe { self.insert_locked(shard, block) };
        shard.lock.unlock();
        ok
    }

    /// Removes and returns the block at `addr`, if it is recorded.
    #[inline]
    pub(crate) fn remove(&self, addr: usize) -> Option<Block> {
        let shard = &self.shards[shard_of(addr)];
        shard.lock.lock();
        // SAFETY: the address's shard lock is held.
        let b = unsafe { self.remove_locked(shard, addr) };
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
        // SAFETY: the address's shard lock is held.
        let b = unsafe { self.remove_locked(shard, addr) };
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
        // SAFETY: the block's shard lock is held.
        let ok = unsafe { self.insert_locked(shard, block) };
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
                .map(|s| unsafe { (*s.inner.get()).blocks() })
                .sum();
            let flying = flights().count();
            out.clear();
            out.reserve(hint + hint / 8 + flying + 64);
            self.lock_all();
            // SAFETY: every shard lock is held.
            let len: usize = self
                .shards
                .iter()
                .map(|s| unsafe { (*s.inner.get()).blocks() })
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
            let mut page = t.pages;
            while !page.is_null() {
                // SAFETY: pages in a shard's list stay mapped; the lock
                // guards them.
                let p = unsafe { &mut *page };
                if p.len != 0 {
                    // Zeroing an untouched memory page would bring it in.
                    for i in 0..PAGE_SLOTS {
                        if p.wrote(i) {
                            p.slots[i] = PagedBlock::default();
                        }
                    }
                    p.len = 0;
                }
                page = p.next;
            }
            t.paged = 0;
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
            let mut page = t.pages;
            while !page.is_null() {
                // SAFETY: pages in a shard's list stay mapped; the caller
                // holds the lock that guards them.
                let p = unsafe { &*page };
                if p.len != 0 {
                    for (i, slot) in p.slots.iter().enumerate() {
                        if p.wrote(i) && slot.size != 0 {
                            f(&p.block(i, slot));
                        }
                    }
                }
                page = p.next;
            }
        }
    }

    /// Bytes of memory the table uses: its hash slots, and the memory
    /// pages of the directory and of region pages that entries were
    /// written to (both are mapped far larger and touched as regions
    /// fill).
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

    /// Every block the table lists, by address.
    fn listed(table: &LiveTable) -> Vec<Block> {
        let mut all = Vec::new();
        table.copy_into(&mut all, std::iter::empty);
        all.sort_by_key(|b| b.addr);
        all
    }

    #[test]
    fn region_pages_hold_small_aligned_blocks_and_the_hash_table_the_rest() {
        let table = Box::new(LiveTable::new());
        table.use_region_pages();
        let base = 0x7f00_1234_0000usize;
        // Small blocks in address order, as pools hand them out, across a
        // region boundary; a large block and an unaligned one in the same
        // region; a block past the directory's reach.
        let small: Vec<usize> = (0..5000).map(|i| base + 0xf000 + i * 48).collect();
        for (i, &a) in small.iter().enumerate() {
            assert!(table.insert(Block::new(a, 48, 7, i as u32, 3)));
        }
        let large = base + 0x8000;
        let unaligned = base + 0x9008;
        let high = PAGED_LIMIT + 0x40;
        for (a, size) in [(large, 4096), (unaligned, 24), (high, 32)] {
            assert!(table.insert(Block::new(a, size, 9, 0, 0)));
        }
        // SAFETY (the reads below): no other thread uses this table.
        let shard = |a: usize| unsafe { &*table.shards[shard_of(a)].inner.get() };
        let paged: usize = table
            .shards
            .iter()
            .map(|s| unsafe { (*s.inner.get()).paged })
            .sum();
        let hashed: usize = table
            .shards
            .iter()
            .map(|s| unsafe { (*s.inner.get()).len })
            .sum();
        assert_eq!(
            (paged, hashed),
            (5000, 3),
            "small blocks in pages, the rest hashed"
        );
        assert!(!table.directory.find(small[0]).is_null());
        assert!(!table.directory.find(small[4999]).is_null());
        assert!(shard(large).find(large).is_some());

        let all = listed(&table);
        assert_eq!(all.len(), 5003);
        let first = all.iter().find(|b| b.addr == small[0]).copied();
        assert_eq!(first, Some(Block::new(small[0], 48, 7, 0, 3)));

        // A free finds its block wherever it is, once.
        assert_eq!(table.remove(large).map(|b| b.size), Some(4096));
        assert_eq!(table.remove(large), None);
        assert_eq!(table.remove(unaligned).map(|b| b.size), Some(24));
        assert_eq!(table.remove(high).map(|b| b.size), Some(32));
        for (i, &a) in small.iter().enumerate().step_by(2) {
            let b = table.remove(a).expect("a paged block is found");
            assert_eq!((b.addr, b.size, b.tag), (a, 48, i as u32));
            assert_eq!(table.remove(a), None, "removed twice: {a:#x}");
        }
        // An address no block starts at, inside a paged region.
        assert_eq!(table.remove(small[1] + 16), None);
        let rest = listed(&table);
        assert_eq!(rest.len(), 2500);
        assert!(rest.iter().all(|b| (b.addr - small[0]) % 96 == 48));

        // Reinsertion replaces, and clearing empties the pages.
        assert!(table.insert(Block::new(small[1], 64, 8, 0, 0)));
        assert_eq!(listed(&table).len(), 2500);
        assert_eq!(table.remove(small[1]).map(|b| b.size), Some(64));
        table.clear();
        assert!(listed(&table).is_empty());
        assert_eq!(table.remove(small[3]), None);
    }

    #[test]
    fn region_pages_count_the_memory_they_touch_not_what_they_map() {
        let table = Box::new(LiveTable::new());
        table.use_region_pages();
        assert_eq!(table.mapped_bytes(), 0);
        let a = 0x7f00_9abc_0000usize;
        assert!(table.insert(Block::new(a, 32, 1, 0, 0)));
        // The page's first memory page (header and this slot), and one
        // page each of the directory's two levels: not the 64 KiB page nor
        // the 768 KiB of levels mapped.
        assert_eq!(table.mapped_bytes(), 3 * 4096);
        // Filling the region touches the whole page.
        for i in 1..PAGE_SLOTS {
            assert!(table.insert(Block::new(a + i * GRAIN, 16, 1, 0, 0)));
        }
        let full = table.mapped_bytes();
        let page = std::mem::size_of::<RegionPage>().div_ceil(4096) * 4096;
        assert_eq!(full, page + 2 * 4096);
    }

    /// Whether the memory page holding `addr` is resident (`mincore`).
    fn resident(addr: usize) -> bool {
        let page = addr & !4095;
        let mut v = 0u8;
        // SAFETY: `page` is page-aligned and one page of it is queried;
        // `v` receives one byte.
        let r = unsafe { libc::mincore(page as *mut libc::c_void, 4096, &mut v) };
        assert_eq!(r, 0, "mincore");
        v & 1 != 0
    }

    #[test]
    fn looking_up_an_unwritten_memory_page_leaves_it_unmapped() {
        let table = Box::new(LiveTable::new());
        table.use_region_pages();
        let a = 0x7f00_4321_0000usize;
        assert!(table.insert(Block::new(a, 32, 1, 0, 0)));
        let page = table.directory.find(a) as usize;
        // A block at half the region has its slot half a page further.
        let far = a + PAGE_SLOTS / 2 * GRAIN;
        let slot = page + RegionPage::offset(RegionPage::index(far));
        assert!(
            !resident(slot),
            "the far slot's memory page starts unmapped"
        );
        // A free of an address not recorded there (a block hashed, or
        // never recorded) must not bring the page in.
        assert_eq!(table.remove(far), None);
        assert!(!resident(slot), "a lookup mapped an unwritten page");
        assert_eq!(table.mapped_bytes(), 3 * 4096);
        // The first insert there writes it, once, and finds it empty.
        assert!(table.insert(Block::new(far, 48, 1, 0, 0)));
        assert!(resident(slot));
        assert_eq!(table.mapped_bytes(), 4 * 4096);
        assert_eq!(table.remove(far).map(|b| b.size), Some(48));
        assert_eq!(table.remove(a).map(|b| b.size), Some(32));
        assert!(listed(&table).is_empty());
    }

    #[test]
    fn blocks_recorded_before_region_pages_are_still_found() {
        let table = Box::new(LiveTable::new());
        let a = 0x7f00_5678_0010usize;
        assert!(table.insert(Block::new(a, 32, 1, 0, 0)));
        table.use_region_pages();
        // A neighbour maps the region's page; the older block stays hashed.
        assert!(table.insert(Block::new(a + 32, 32, 1, 0, 0)));
        assert!(!table.directory.find(a).is_null());
        assert_eq!(table.remove(a).map(|b| b.addr), Some(a));
        assert_eq!(table.remove(a + 32).map(|b| b.addr), Some(a + 32));
        assert!(listed(&table).is_empty());
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
