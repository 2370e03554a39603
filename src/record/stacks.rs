//! Stack capture and the stack table.
//!
//! Capture walks frame pointers: each frame stores the caller's frame
//! pointer and the return address next to it. The walk is bounded by the
//! current stack pointer below and the thread's stack end above, and stops
//! at a frame pointer that does not increase or is misaligned, so it only
//! ever reads the calling thread's own stack.
//!
//! Unique stacks are interned once into a lock-free table and referred to by
//! a `u32` stack id; the per-allocation cost is a hash and a comparison
//! against the stored frames. Ids are dense, start at 1 and stay valid for
//! the life of the process (0 is the "unknown" stack used when the table is
//! full). All memory is reserved with `mmap` up front and touched on demand.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::intern::{self, Slot};
use super::sys;

/// Largest depth a caller may configure.
pub(crate) const MAX_DEPTH: usize = 256;

/// Stack id of the "unknown" stack: the table was full or the walk found
/// nothing.
pub(crate) const UNKNOWN_STACK: u32 = 0;

/// Stack ids handed out at most (the interning table takes more).
const MAX_STACKS: usize = 1 << 21;
const _: () = assert!(MAX_STACKS <= intern::Table::max_entries());
/// Words reserved for frames of all stacks together.
const FRAME_WORDS: usize = 1 << 26;

#[repr(C)]
struct Record {
    offset: AtomicU64,
    len: AtomicU32,
    /// bit 0: published; bit 1: truncated at the depth limit.
    flags: AtomicU32,
}

const PUBLISHED: u32 = 1;
const TRUNCATED: u32 = 2;

pub(crate) struct StackTable {
    index: intern::Table,
    records: AtomicPtr<Record>,
    frames: AtomicPtr<u64>,
    next_id: AtomicU32,
    frames_used: AtomicUsize,
    /// Allocations that could not get a stack id.
    pub(crate) overflowed: AtomicU64,
}

/// A captured stack: return addresses, innermost first. Only the first
/// `len` frames are initialised (the buffer is not zeroed: 2 KiB of
/// memset per allocation would cost more than the walk).
pub(crate) struct Captured {
    frames: [std::mem::MaybeUninit<usize>; MAX_DEPTH],
    len: usize,
    pub(crate) truncated: bool,
    pub(crate) hash: u64,
    /// The stack's id once a stack source interned it itself (the Python
    /// source does, to pin new stacks' code objects); `u32::MAX` before.
    interned: u32,
}

impl Captured {
    #[inline(always)]
    pub(crate) fn new() -> Captured {
        Captured {
            // SAFETY: an array of MaybeUninit needs no initialisation (the
            // idiom from MaybeUninit's docs; `[uninit(); N]` made LLVM
            // emit a 2 KiB memset here).
            frames: unsafe { std::mem::MaybeUninit::uninit().assume_init() },
            len: 0,
            truncated: false,
            hash: 0,
            interned: u32::MAX,
        }
    }

    /// The captured frames.
    pub(crate) fn frames(&self) -> &[usize] {
        let len = self.len.min(MAX_DEPTH);
        // SAFETY: `capture` or `push` initialised frames[..len] before
        // setting len.
        unsafe { std::slice::from_raw_parts(self.frames.as_ptr().cast::<usize>(), len) }
    }

    /// Starts filling this stack from another stack source (the Python
    /// interpreter's frame records, `record::python`), at most `max`
    /// frames, innermost first.
    #[inline(always)]
    pub(crate) fn filler(&mut self, max: usize) -> Filler<'_> {
        self.truncated = false;
        Filler {
            out: self,
            n: 0,
            max: max.min(MAX_DEPTH),
            hash: StackHash::new(),
        }
    }
}

/// A stack being filled by another stack source: hashes each frame as it
/// comes (the multiplies overlap the source's dependent loads) and keeps
/// the count in a register, where a count in the `Captured` would chain
/// each frame's store to the next through memory.
pub(crate) struct Filler<'a> {
    out: &'a mut Captured,
    n: usize,
    max: usize,
    hash: StackHash,
}

impl Filler<'_> {
    /// Appends a frame; false, and the stack marked truncated, once the
    /// stack is full.
    #[inline(always)]
    pub(crate) fn push(&mut self, frame: usize) -> bool {
        let Some(slot) = self
            .out
            .frames
            .get_mut(self.n)
            .filter(|_| self.n < self.max)
        else {
            self.out.truncated = true;
            return false;
        };
        *slot = std::mem::MaybeUninit::new(frame);
        self.hash.eat(frame);
        self.n += 1;
        true
    }

    /// Ends the stack: its length and hash.
    #[inline(always)]
    pub(crate) fn finish(self) {
        self.out.len = self.n;
        self.out.hash = self.hash.finish(self.n, self.out.truncated);
    }
}

/// Walks the calling thread's frame-pointer chain, hashing as it goes (the
/// hash's multiplies overlap the walk's dependent loads).
///
/// `stack_end` is the thread's highest stack address (0 if unknown: then
/// only frames within 8 MiB above the stack pointer are read).
#[inline(always)]
pub(crate) fn capture(max: usize, stack_end: usize, out: &mut Captured) {
    let (mut fp, sp) = registers();
    let end = if stack_end > sp {
        stack_end
    } else {
        sp.saturating_add(8 << 20)
    };
    let max = max.min(MAX_DEPTH);
    let mut n = 0;
    let mut hash = StackHash::new();
    out.truncated = false;
    while fp >= sp && fp <= end - 16 && fp % std::mem::align_of::<usize>() == 0 {
        if n == max {
            out.truncated = true;
            break;
        }
        // SAFETY: fp lies within [sp, end - 16] of this thread's own stack,
        // which is mapped and readable; the two words read are the saved
        // frame pointer and return address of a frame-pointer frame.
        let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        if ret == 0 {
            break;
        }
        out.frames[n] = std::mem::MaybeUninit::new(ret);
        hash.eat(ret);
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    out.len = n;
    out.hash = hash.finish(n, out.truncated);
}

#[inline(always)]
fn registers() -> (usize, usize) {
    let fp: usize;
    let sp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads two registers; no memory access.
    unsafe {
        std::arch::asm!("mov {}, rbp", "mov {}, rsp", out(reg) fp, out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads two registers; no memory access.
    unsafe {
        std::arch::asm!("mov {}, x29", "mov {}, sp", out(reg) fp, out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        fp = 0;
        sp = 1;
    }
    (fp, sp)
}

/// A stack hash with four independent lanes, so its multiply chain does
/// not serialise a long walk. Each frame goes to the oldest lane, which
/// then becomes the newest: the lanes stay in registers (a lane chosen by
/// index kept them in memory, one store-to-load wait per frame).
struct StackHash {
    lanes: [u64; 4],
}

impl StackHash {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    #[inline(always)]
    fn new() -> StackHash {
        StackHash {
            lanes: [
                0x243f_6a88_85a3_08d3,
                0x1319_8a2e_0370_7344,
                0xa409_3822_299f_31d0,
                0x082e_fa98_ec4e_6c89,
            ],
        }
    }

    #[inline(always)]
    fn eat(&mut self, frame: usize) {
        let [a, b, c, d] = self.lanes;
        let a = (a ^ frame as u64).wrapping_mul(Self::K).rotate_left(31);
        self.lanes = [b, c, d, a];
    }

    #[inline(always)]
    fn finish(&self, len: usize, truncated: bool) -> u64 {
        let [a, b, c, d] = self.lanes;
        let mut h = a
            ^ b.rotate_left(16)
            ^ c.rotate_left(32)
            ^ d.rotate_left(48)
            ^ (len as u64)
            ^ ((truncated as u64) << 63);
        h ^= h >> 32;
        h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
        h ^= h >> 32;
        h | 1
    }
}

/// The hash of a whole stack (the frame-pointer walk and [`Filler`]
/// compute the same as they go).
#[cfg(test)]
fn hash_frames(frames: &[usize], truncated: bool) -> u64 {
    let mut h = StackHash::new();
    for &f in frames {
        h.eat(f);
    }
    h.finish(frames.len(), truncated)
}

impl StackTable {
    pub(crate) const fn new() -> StackTable {
        StackTable {
            index: intern::Table::new(),
            records: AtomicPtr::new(std::ptr::null_mut()),
            frames: AtomicPtr::new(std::ptr::null_mut()),
            next_id: AtomicU32::new(1),
            frames_used: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    /// Reserves the table's memory; idempotent. Called by `Recorder::start`
    /// before recording is switched on.
    pub(crate) fn init(&self) -> bool {
        if !self.frames.load(Ordering::Acquire).is_null() {
            return true;
        }
        let records = sys::map(MAX_STACKS * std::mem::size_of::<Record>());
        let frames = sys::map(FRAME_WORDS * 8);
        if records.is_null() || frames.is_null() || !self.index.init() {
            // SAFETY: each non-null region came from `map` with these sizes.
            unsafe {
                sys::unmap(records, MAX_STACKS * std::mem::size_of::<Record>());
                sys::unmap(frames, FRAME_WORDS * 8);
            }
            return false;
        }
        self.records.store(records.cast(), Ordering::Release);
        self.frames.store(frames.cast(), Ordering::Release);
        true
    }

    /// Bytes the table uses: records and frames handed out, and the
    /// interning table's slots ([`intern::Table::memory_bytes`]).
    pub(crate) fn memory_bytes(&self) -> u64 {
        let ids = self.id_limit() as u64;
        ids * std::mem::size_of::<Record>() as u64
            + self.frames_used.load(Ordering::Relaxed) as u64 * 8
            + self.index.memory_bytes()
    }

    /// Returns the id of a captured stack, interning it on first sight.
    #[inline]
    pub(crate) fn intern_captured(&self, c: &Captured) -> u32 {
        if c.interned != u32::MAX {
            return c.interned;
        }
        self.intern_hashed(c.frames(), c.truncated, c.hash)
    }

    /// Interns a captured stack and remembers its id in it, so the
    /// allocation path does not look it up twice. True when the stack was
    /// new to the table.
    pub(crate) fn intern_once(&self, c: &mut Captured) -> bool {
        let before = self.id_limit();
        c.interned = self.intern_captured(c);
        self.id_limit() != before
    }

    /// Returns the id of `frames`, interning it on first sight.
    #[cfg(test)]
    pub(crate) fn intern(&self, frames: &[usize], truncated: bool) -> u32 {
        self.intern_hashed(frames, truncated, hash_frames(frames, truncated))
    }

    #[inline]
    fn intern_hashed(&self, frames: &[usize], truncated: bool, h: u64) -> u32 {
        if self.frames.load(Ordering::Acquire).is_null() {
            return UNKNOWN_STACK;
        }
        let found = self.index.intern(
            h,
            |id| self.frames_equal(id, frames, truncated),
            |slot| self.publish(slot, frames, truncated),
        );
        found.unwrap_or_else(|| {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            UNKNOWN_STACK
        })
    }

    #[cold]
    fn publish(&self, slot: &Slot, frames: &[usize], truncated: bool) -> u32 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let offset = self.frames_used.fetch_add(frames.len(), Ordering::Relaxed);
        if id as usize >= MAX_STACKS || offset + frames.len() > FRAME_WORDS {
            // Leave the slot claimed but unpublished: readers skip it after
            // their bounded wait; mark it so they skip at once.
            slot.id.store(u32::MAX, Ordering::Release);
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return UNKNOWN_STACK;
        }
        let store = self.frames.load(Ordering::Acquire);
        // SAFETY: [offset, offset + len) was reserved for us alone by the
        // fetch_add above and lies within the FRAME_WORDS mapping.
        unsafe {
            for (k, &f) in frames.iter().enumerate() {
                *store.add(offset + k) = f as u64;
            }
        }
        // SAFETY: id < MAX_STACKS, inside the records mapping; only this
        // thread writes record `id`.
        let rec = unsafe { &*self.records.load(Ordering::Acquire).add(id as usize) };
        rec.offset.store(offset as u64, Ordering::Relaxed);
        rec.len.store(frames.len() as u32, Ordering::Relaxed);
        rec.flags.store(
            PUBLISHED | if truncated { TRUNCATED } else { 0 },
            Ordering::Release,
        );
        slot.id.store(id, Ordering::Release);
        id
    }

    fn frames_equal(&self, id: u32, frames: &[usize], truncated: bool) -> bool {
        match self.get(id) {
            Some((stored, t)) => {
                t == truncated
                    && stored.len() == frames.len()
                    && stored.iter().zip(frames).all(|(&a, &b)| a == b as u64)
            }
            None => false,
        }
    }

    /// The frames of a published stack and whether it was truncated.
    pub(crate) fn get(&self, id: u32) -> Option<(&[u64], bool)> {
        if id == UNKNOWN_STACK || id as usize >= MAX_STACKS {
            return None;
        }
        let records = self.records.load(Ordering::Acquire);
        if records.is_null() {
            return None;
        }
        // SAFETY: id < MAX_STACKS, inside the records mapping.
        let rec = unsafe { &*records.add(id as usize) };
        let flags = rec.flags.load(Ordering::Acquire);
        if flags & PUBLISHED == 0 {
            return None;
        }
        let offset = rec.offset.load(Ordering::Relaxed) as usize;
        let len = rec.len.load(Ordering::Relaxed) as usize;
        // SAFETY: a published record's range was written once by its
        // publisher before the Release store we synchronised with, and is
        // never written again.
        let slice = unsafe {
            std::slice::from_raw_parts(self.frames.load(Ordering::Acquire).add(offset), len)
        };
        Some((slice, flags & TRUNCATED != 0))
    }

    /// One past the highest id handed out.
    pub(crate) fn id_limit(&self) -> u32 {
        self.next_id.load(Ordering::Acquire).min(MAX_STACKS as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_stacks_share_an_id_and_different_ones_do_not() {
        let t = Box::new(StackTable::new());
        assert!(t.init());
        let a = t.intern(&[1, 2, 3], false);
        let b = t.intern(&[1, 2, 4], false);
        let c = t.intern(&[1, 2, 3], true);
        assert_ne!(a, UNKNOWN_STACK);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(t.intern(&[1, 2, 3], false), a);
        assert_eq!(t.get(a), Some((&[1u64, 2, 3][..], false)));
        assert_eq!(t.get(c).map(|(_, tr)| tr), Some(true));
    }

    #[test]
    fn concurrent_interning_agrees() {
        let t: &'static StackTable = Box::leak(Box::new(StackTable::new()));
        assert!(t.init());
        let ids: Vec<Vec<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..2000usize)
                            .map(|i| t.intern(&[i, i * 7, 99], false))
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for other in &ids[1..] {
            assert_eq!(&ids[0], other);
        }
    }

    #[test]
    fn capture_sees_this_function_chain() {
        #[inline(never)]
        fn inner(out: &mut Captured) {
            capture(64, sys::current_stack_end(), out);
        }
        let mut c = Captured::new();
        inner(&mut c);
        assert!(
            c.frames().len() >= 2,
            "frame-pointer walk found {} frames",
            c.frames().len()
        );
        let mut d = Captured::new();
        capture(1, sys::current_stack_end(), &mut d);
        assert_eq!(d.frames().len(), 1);
        assert_eq!(
            c.hash,
            hash_frames(c.frames(), c.truncated),
            "walk-time hash equals the slice hash"
        );
        assert!(d.truncated);
    }

    #[test]
    fn filled_stacks_hash_as_their_frames_and_stop_at_max() {
        let mut c = Captured::new();
        let mut fill = c.filler(3);
        assert!((1..=3).all(|f| fill.push(f)));
        assert!(!fill.push(4), "a fourth frame past max 3");
        fill.finish();
        assert_eq!(c.frames(), &[1, 2, 3]);
        assert!(c.truncated);
        assert_eq!(c.hash, hash_frames(&[1, 2, 3], true));
        let mut d = Captured::new();
        let mut fill = d.filler(3);
        assert!(fill.push(1) && fill.push(2));
        fill.finish();
        assert!(!d.truncated);
        assert_eq!(d.hash, hash_frames(&[1, 2], false));
        assert_ne!(c.hash, d.hash);
    }
}
