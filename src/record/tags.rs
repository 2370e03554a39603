//! Tags: what the program was doing when memory was allocated.
//!
//! A [`Tag`] names a task, its retry number, and optionally an owner label
//! and type. The current tag is a thread-local tag id, set by
//! [`with_tag`](super::with_tag) and by [`Tagged`](super::Tagged) futures on
//! every poll. Tags are interned into a lock-free table (like stacks) whose
//! entries also carry per-tag counters and the first and last time code ran
//! under the tag. Interning happens when a tag is entered, never on the
//! allocation path.

use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::intern::{self, Slot};
use super::sys;

/// What the program is doing: a task, its retry number, and optionally an
/// owner label ("error value", "result slot", ...) and a type name.
///
/// ```
/// use leakprof::Tag;
/// let tag = Tag::task(7).retry(2);
/// assert_eq!(tag.task_id(), Some(7));
/// assert_eq!(tag.retry_number(), Some(2));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tag {
    task: Option<u64>,
    retry: Option<u32>,
    label: Option<&'static str>,
    type_name: Option<&'static str>,
}

impl Tag {
    /// The untagged tag.
    pub const NONE: Tag = Tag {
        task: None,
        retry: None,
        label: None,
        type_name: None,
    };

    /// A task, by a numeric id of the program's choosing.
    pub const fn task(id: u64) -> Tag {
        Tag {
            task: Some(id),
            retry: None,
            label: None,
            type_name: None,
        }
    }

    /// The same tag with a retry number (0 = first attempt).
    pub const fn retry(self, retry: u32) -> Tag {
        Tag {
            retry: Some(retry),
            ..self
        }
    }

    /// The same tag with a label: an owner scope or any static name.
    pub const fn label(self, label: &'static str) -> Tag {
        Tag {
            label: Some(label),
            ..self
        }
    }

    /// The same tag with a type name (e.g. `std::any::type_name::<T>()`).
    pub const fn type_name(self, type_name: &'static str) -> Tag {
        Tag {
            type_name: Some(type_name),
            ..self
        }
    }

    pub const fn task_id(&self) -> Option<u64> {
        self.task
    }

    pub const fn retry_number(&self) -> Option<u32> {
        self.retry
    }

    pub const fn label_name(&self) -> Option<&'static str> {
        self.label
    }

    pub const fn type_name_str(&self) -> Option<&'static str> {
        self.type_name
    }

    fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| h = (h ^ x).wrapping_mul(0x100_0000_01b3).rotate_left(23);
        eat(self.task.map_or(u64::MAX, |t| t));
        eat(self.retry.map_or(u64::MAX, |r| r as u64));
        for s in [self.label, self.type_name] {
            match s {
                None => eat(u64::MAX - 1),
                Some(s) => {
                    eat(s.len() as u64);
                    for chunk in s.as_bytes().chunks(8) {
                        let mut w = [0u8; 8];
                        w[..chunk.len()].copy_from_slice(chunk);
                        eat(u64::from_le_bytes(w));
                    }
                }
            }
        }
        h ^= h >> 31;
        h | 1
    }
}

/// Tag id of the untagged tag.
pub(crate) const UNTAGGED: u32 = 0;

const SLOTS: usize = 1 << 21;
const MAX_TAGS: usize = SLOTS / 2;

/// One interned tag with its counters. Counters are written by the threads
/// that run under the tag (which flush their per-thread pending deltas
/// here) and by frees of its blocks on other threads.
#[repr(C, align(64))]
pub(crate) struct TagEntry {
    task: AtomicU64,
    retry: AtomicU32,
    /// bit 0 published, bit 1 has task, bit 2 has retry.
    flags: AtomicU32,
    label: AtomicPtr<u8>,
    label_len: AtomicU64,
    type_name: AtomicPtr<u8>,
    type_len: AtomicU64,
    pub(crate) first_ns: AtomicU64,
    pub(crate) last_ns: AtomicU64,
    pub(crate) active: AtomicU32,
    pub(crate) live_bytes: AtomicI64,
    pub(crate) live_blocks: AtomicI64,
    pub(crate) alloc_bytes: AtomicU64,
    pub(crate) alloc_blocks: AtomicU64,
    pub(crate) peak_bytes: AtomicI64,
    pub(crate) peak_blocks: AtomicI64,
}

const PUBLISHED: u32 = 1;
const HAS_TASK: u32 = 2;
const HAS_RETRY: u32 = 4;

pub(crate) struct TagTable {
    slots: AtomicPtr<Slot>,
    entries: AtomicPtr<TagEntry>,
    next_id: AtomicU32,
    /// Tags that could not be interned (table full) and ran untagged.
    pub(crate) overflowed: AtomicU64,
}

impl TagTable {
    pub(crate) const fn new() -> TagTable {
        TagTable {
            slots: AtomicPtr::new(std::ptr::null_mut()),
            entries: AtomicPtr::new(std::ptr::null_mut()),
            next_id: AtomicU32::new(1),
            overflowed: AtomicU64::new(0),
        }
    }

    pub(crate) fn init(&self) -> bool {
        if !self.slots.load(Ordering::Acquire).is_null() {
            return true;
        }
        let slots = sys::map(SLOTS * std::mem::size_of::<Slot>());
        let entries = sys::map(MAX_TAGS * std::mem::size_of::<TagEntry>());
        if slots.is_null() || entries.is_null() {
            // SAFETY: each non-null region came from `map` with these sizes.
            unsafe {
                sys::unmap(slots, SLOTS * std::mem::size_of::<Slot>());
                sys::unmap(entries, MAX_TAGS * std::mem::size_of::<TagEntry>());
            }
            return false;
        }
        // Entry 0 is the untagged tag, published from the start.
        // SAFETY: entries is a fresh zeroed mapping of MAX_TAGS entries.
        unsafe {
            (*entries.cast::<TagEntry>())
                .flags
                .store(PUBLISHED, Ordering::Release)
        };
        self.entries.store(entries.cast(), Ordering::Release);
        self.slots.store(slots.cast(), Ordering::Release);
        true
    }

    /// The entry of a tag id, if it exists.
    #[inline]
    pub(crate) fn entry(&self, id: u32) -> Option<&TagEntry> {
        let entries = self.entries.load(Ordering::Acquire);
        if entries.is_null() || id as usize >= MAX_TAGS {
            return None;
        }
        // SAFETY: id < MAX_TAGS, inside the mapping; entries are only ever
        // accessed through atomics.
        Some(unsafe { &*entries.add(id as usize) })
    }

    /// Interns a tag and returns its id ([`UNTAGGED`] for `Tag::NONE` or when
    /// the table is full).
    pub(crate) fn intern(&self, tag: &Tag) -> u32 {
        if *tag == Tag::NONE {
            return UNTAGGED;
        }
        let slots = self.slots.load(Ordering::Acquire);
        if slots.is_null() {
            return UNTAGGED;
        }
        let h = tag.hash();
        // SAFETY: `slots` maps SLOTS slots for the life of the process.
        let found = unsafe {
            intern::probe(
                slots,
                SLOTS - 1,
                h,
                |id| self.get(id).as_ref() == Some(tag),
                |slot| self.publish(slot, tag),
            )
        };
        found.unwrap_or_else(|| {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            UNTAGGED
        })
    }

    fn publish(&self, slot: &Slot, tag: &Tag) -> u32 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Some(e) = self.entry(id) else {
            slot.id.store(u32::MAX, Ordering::Release);
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return UNTAGGED;
        };
        let mut flags = PUBLISHED;
        if let Some(t) = tag.task {
            e.task.store(t, Ordering::Relaxed);
            flags |= HAS_TASK;
        }
        if let Some(r) = tag.retry {
            e.retry.store(r, Ordering::Relaxed);
            flags |= HAS_RETRY;
        }
        if let Some(l) = tag.label {
            e.label.store(l.as_ptr() as *mut u8, Ordering::Relaxed);
            e.label_len.store(l.len() as u64, Ordering::Relaxed);
        }
        if let Some(t) = tag.type_name {
            e.type_name.store(t.as_ptr() as *mut u8, Ordering::Relaxed);
            e.type_len.store(t.len() as u64, Ordering::Relaxed);
        }
        e.flags.store(flags, Ordering::Release);
        slot.id.store(id, Ordering::Release);
        id
    }

    /// The tag with this id, if published.
    pub(crate) fn get(&self, id: u32) -> Option<Tag> {
        let e = self.entry(id)?;
        let flags = e.flags.load(Ordering::Acquire);
        if flags & PUBLISHED == 0 {
            return None;
        }
        let text = |p: &AtomicPtr<u8>, n: &AtomicU64| -> Option<&'static str> {
            let p = p.load(Ordering::Relaxed);
            if p.is_null() {
                return None;
            }
            // SAFETY: p and n were stored from a `&'static str` by `publish`
            // before the Release store of `flags` we synchronised with.
            let bytes =
                unsafe { std::slice::from_raw_parts(p, n.load(Ordering::Relaxed) as usize) };
            std::str::from_utf8(bytes).ok()
        };
        Some(Tag {
            task: (flags & HAS_TASK != 0).then(|| e.task.load(Ordering::Relaxed)),
            retry: (flags & HAS_RETRY != 0).then(|| e.retry.load(Ordering::Relaxed)),
            label: text(&e.label, &e.label_len),
            type_name: text(&e.type_name, &e.type_len),
        })
    }

    /// One past the highest id handed out.
    pub(crate) fn id_limit(&self) -> u32 {
        self.next_id.load(Ordering::Acquire).min(MAX_TAGS as u32)
    }
}

impl TagEntry {
    /// Adds a live-amount delta and raises the recorded peak.
    #[inline]
    pub(crate) fn add_live(&self, bytes: i64, blocks: i64) {
        let b = self.live_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let n = self.live_blocks.fetch_add(blocks, Ordering::Relaxed) + blocks;
        if b > self.peak_bytes.load(Ordering::Relaxed) {
            self.peak_bytes.fetch_max(b, Ordering::Relaxed);
        }
        if n > self.peak_blocks.load(Ordering::Relaxed) {
            self.peak_blocks.fetch_max(n, Ordering::Relaxed);
        }
    }

    /// Marks code starting to run under this tag.
    pub(crate) fn enter(&self, now: u64) {
        if self.first_ns.load(Ordering::Relaxed) == 0 {
            let _ =
                self.first_ns
                    .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
        }
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks code stopping running under this tag.
    pub(crate) fn exit(&self, now: u64) {
        self.last_ns.fetch_max(now.max(1), Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn reset(&self) {
        for a in [
            &self.live_bytes,
            &self.live_blocks,
            &self.peak_bytes,
            &self.peak_blocks,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        for a in [
            &self.alloc_bytes,
            &self.alloc_blocks,
            &self.first_ns,
            &self.last_ns,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_intern_by_value() {
        let t = Box::new(TagTable::new());
        assert!(t.init());
        let a = t.intern(&Tag::task(7).retry(2));
        let b = t.intern(&Tag::task(7).retry(3));
        let owned = String::from("error value");
        let label: &'static str = Box::leak(owned.into_boxed_str());
        let c = t.intern(&Tag::task(7).retry(2).label("error value"));
        let d = t.intern(&Tag::task(7).retry(2).label(label));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(c, d, "labels compare by content, not address");
        assert_eq!(t.intern(&Tag::task(7).retry(2)), a);
        assert_eq!(t.get(a), Some(Tag::task(7).retry(2)));
        assert_eq!(t.intern(&Tag::NONE), UNTAGGED);
    }
}
