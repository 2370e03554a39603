//! Tags: what the program was doing when memory was allocated.
//!
//! A [`Tag`] names a task, its retry number, and optionally an owner label
//! and type. The current tag is a thread-local tag id, set by
//! [`with_tag`](super::with_tag) and by [`Tagged`](super::Tagged) futures on
//! every poll. Tags are interned into a table whose entries also carry
//! per-tag counters and the first and last time code ran under the tag.
//! Interning happens when a tag is entered, never on the allocation path:
//! it takes the table's index lock; reading an entry by id (the allocation
//! path, snapshots) takes none.
//!
//! The table stays bounded for workers that run millions of tasks: when a
//! task is finished ([`super::finish_task`]), each of its tags whose memory
//! is all freed is *folded*: its figures are handed to the session (which
//! lists the newest and sums the older ones) and its entry is reused. Tags
//! still holding memory (task-scoped leaks) stay until it is freed.
//!
//! A framework worker rarely calls `finish_task` (a tower layer cannot
//! tell an attempt that will be retried from the last one), so tags of
//! tasks are also folded *when idle*: each intern of a new tag checks a few
//! of the oldest tags of tasks, and folds those that nothing runs under,
//! that hold no memory and that last ran at least [`IDLE_NS`] ago. The
//! table then holds the tags that hold memory plus about [`IDLE_NS`] worth
//! of recent ones, however many tasks ran.
//!
//! Tags interned for the Python layer, which enters them by id alone
//! (from a context variable, at every step of an asyncio task), are never
//! folded when idle: only `finish_task` folds them.
//!
//! An entry may be folded and reused while a `Tagged` future still holds
//! its id, so entering a tag by a cached id is checked: the entry carries
//! a generation, bumped at every fold, and [`TagEntry::claim`] counts the
//! thread in only if the generation is still the one interned. A fold
//! takes the entry by swapping `active` from 0 to [`FOLDING`], so a thread
//! that enters during the fold sees the bit and interns again.

use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use std::collections::VecDeque;

use super::fxhash::FxHashMap;
use super::sys::{self, LockCell, RawLock};

/// What the program is doing: a task, its retry number, and optionally an
/// owner label ("error value", "result slot", ...) and a type name.
///
/// ```
/// use leakprof::Tag;
/// let tag = Tag::task(7).retry(2);
/// assert_eq!(tag.task_id(), Some(7));
/// assert_eq!(tag.retry_number(), Some(2));
/// // Frameworks' own integer types, as they come:
/// let attempt: usize = 3;
/// let job_id: u32 = 9;
/// assert_eq!(Tag::task(job_id).retry(attempt), Tag::task(9u64).retry(3u32));
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

    /// A task, by a numeric id of the program's choosing, in whichever
    /// integer type the program counts in (`u64`, `u32`, `usize`, ...).
    pub fn task(id: impl TagNumber) -> Tag {
        Tag {
            task: Some(id.to_u64()),
            retry: None,
            label: None,
            type_name: None,
        }
    }

    /// The same tag with a retry number (0 = first attempt), in whichever
    /// integer type the framework counts attempts in (apalis and tower
    /// count in `usize`). Numbers above `u32::MAX` are kept as `u32::MAX`.
    pub fn retry(self, retry: impl TagNumber) -> Tag {
        Tag {
            retry: Some(u32::try_from(retry.to_u64()).unwrap_or(u32::MAX)),
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
}

/// The integer types a task id or retry number may come in: frameworks
/// count in `usize`, `u64` or `u32`, and a literal (`Tag::task(7)`) is an
/// `i32`. Negative numbers are kept as 0.
pub trait TagNumber: Copy {
    fn to_u64(self) -> u64;
}

macro_rules! tag_number_unsigned {
    ($($t:ty),*) => {$(
        impl TagNumber for $t {
            fn to_u64(self) -> u64 {
                u64::try_from(self).unwrap_or(u64::MAX)
            }
        }
    )*};
}

macro_rules! tag_number_signed {
    ($($t:ty),*) => {$(
        impl TagNumber for $t {
            fn to_u64(self) -> u64 {
                u64::try_from(self).unwrap_or(0)
            }
        }
    )*};
}

tag_number_unsigned!(u8, u16, u32, u64, usize);
tag_number_signed!(i32, i64, isize);

/// A tag's 64-bit hash (Fx over its fields; labels by content).
fn hash_of(tag: &Tag) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = super::fxhash::FxHasher::default();
    tag.hash(&mut h);
    h.finish()
}

/// Tag id of the untagged tag.
pub(crate) const UNTAGGED: u32 = 0;

/// Tag entries reserved (address space only: pages are touched as ids
/// are handed out, and folding reuses them).
const MAX_TAGS: usize = 1 << 20;
/// Finished tags still holding memory are checked again this many at a
/// time, whenever a task finishes.
const SWEEP: usize = 8;
/// Tags of tasks idle this long, holding no memory, are folded without
/// `finish_task` (long enough for a future between two polls, a Python
/// task between interning its tag and entering it).
pub(crate) const IDLE_NS: u64 = 250_000_000;
/// Tags of tasks checked for idle folding at each intern of a new tag:
/// more than the one it adds, so the queue drains.
const IDLE_SWEEP: usize = 2;
/// `active`'s bit while a fold owns the entry.
const FOLDING: u32 = 1 << 31;

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
    /// The task's previous tag (a chain from `TagIndex::by_task`; written
    /// under the index lock).
    next_of_task: AtomicU32,
    /// Bumped at every fold (under the index lock), so a cached id of an
    /// earlier tag in this entry is refused ([`TagEntry::claim`]).
    generation: AtomicU32,
}

// Four cache lines would double the table: the generation fits the padding.
const _: () = assert!(std::mem::size_of::<TagEntry>() == 128);

const PUBLISHED: u32 = 1;
const HAS_TASK: u32 = 2;
const HAS_RETRY: u32 = 4;
/// Handed to `finish_task`'s sweep: idle folding leaves it alone.
const FINISHED: u32 = 8;

/// An interned tag: its id and the generation of its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TagHandle {
    pub(crate) id: u32,
    pub(crate) generation: u32,
}

impl TagHandle {
    pub(crate) const UNTAGGED: TagHandle = TagHandle {
        id: UNTAGGED,
        generation: 0,
    };
}

pub(crate) struct TagTable {
    entries: AtomicPtr<TagEntry>,
    index: LockCell<Option<TagIndex>>,
    /// One past the highest id ever handed out.
    next_id: AtomicU32,
    /// Tags that could not be interned (table full) and ran untagged.
    pub(crate) overflowed: AtomicU64,
}

/// A folded tag's figures, as its entry held them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoldedTag {
    pub(crate) tag: Tag,
    pub(crate) alloc_bytes: u64,
    pub(crate) alloc_blocks: u64,
    pub(crate) peak_bytes: i64,
    pub(crate) peak_blocks: i64,
    pub(crate) first_ns: u64,
    pub(crate) last_ns: u64,
}

/// What finishing a task (or idle folding) folded.
#[derive(Default)]
pub(crate) struct Finished {
    /// Tags folded (of this task, or earlier ones whose memory was freed).
    pub(crate) tags: Vec<FoldedTag>,
    /// Tasks all of whose tags are now folded, with what their tags said.
    pub(crate) tasks: Vec<(u64, TaskSpan)>,
}

impl Finished {
    pub(crate) fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.tasks.is_empty()
    }
}

/// What a finished task's tags said of it, gathered as they fold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskSpan {
    /// The highest retry number among its tags.
    pub(crate) retries: u32,
    /// When code first and last ran under its tags (0: never).
    pub(crate) first_ns: u64,
    pub(crate) last_ns: u64,
}

impl TaskSpan {
    /// What one folded tag says of its task.
    fn add_folded(&mut self, f: &FoldedTag) {
        self.retries = self.retries.max(f.tag.retry.unwrap_or(0));
        if f.first_ns != 0 && (self.first_ns == 0 || f.first_ns < self.first_ns) {
            self.first_ns = f.first_ns;
        }
        self.last_ns = self.last_ns.max(f.last_ns);
    }

    fn add(&mut self, tag: Option<Tag>, e: &TagEntry) {
        self.retries = self.retries.max(tag.and_then(|t| t.retry).unwrap_or(0));
        let first = e.first_ns.load(Ordering::Relaxed);
        if first != 0 && (self.first_ns == 0 || first < self.first_ns) {
            self.first_ns = first;
        }
        self.last_ns = self.last_ns.max(e.last_ns.load(Ordering::Relaxed));
    }
}

/// Tag to id, and what finishing a task needs. Behind the index lock.
/// About 30 bytes per tag besides its entry.
#[derive(Default)]
struct TagIndex {
    /// A tag's 64-bit hash to its id (confirmed against the entry).
    by_hash: FxHashMap<u64, u32>,
    /// Tags whose hash another tag had first (rare).
    collided: FxHashMap<Tag, u32>,
    /// Each task's most recent tag; the others are chained through
    /// `TagEntry::next_of_task`.
    by_task: FxHashMap<u64, u32>,
    /// Ids of folded tags, to reuse.
    free: Vec<u32>,
    /// Tags of finished tasks that still held memory when their task
    /// finished, checked again [`SWEEP`] at a time.
    finished: Vec<u32>,
    sweep_at: usize,
    /// Finished tasks with tags in `finished`: how many, and what their
    /// folded tags said so far.
    unfolded: FxHashMap<u64, (u32, TaskSpan)>,
    /// Tags of tasks not folded yet, oldest first, checked for idle
    /// folding [`IDLE_SWEEP`] at a time (stale handles are dropped).
    recent: VecDeque<TagHandle>,
}

impl TagTable {
    pub(crate) const fn new() -> TagTable {
        TagTable {
            entries: AtomicPtr::new(std::ptr::null_mut()),
            index: LockCell::new(None),
            next_id: AtomicU32::new(1),
            overflowed: AtomicU64::new(0),
        }
    }

    pub(crate) fn init(&self) -> bool {
        if !self.entries.load(Ordering::Acquire).is_null() {
            return true;
        }
        let entries = sys::map(MAX_TAGS * std::mem::size_of::<TagEntry>());
        if entries.is_null() {
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
        true
    }

    pub(crate) fn index_lock(&self) -> &RawLock {
        self.index.raw()
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

    /// Interns a tag and returns its handle ([`TagHandle::UNTAGGED`] for
    /// `Tag::NONE` or when the table is full). With `folded`, interning a
    /// new tag also folds a few idle tags of tasks (see the module doc),
    /// reported there, and the new tag may be folded when idle; without,
    /// the tag is never folded when idle (its users enter it by id alone,
    /// with no generation to check: the Python layer). `now` is the
    /// recorder's clock. Caller holds the re-entrancy guard.
    pub(crate) fn intern(&self, tag: &Tag, now: u64, folded: Option<&mut Finished>) -> TagHandle {
        if *tag == Tag::NONE || self.entries.load(Ordering::Acquire).is_null() {
            return TagHandle::UNTAGGED;
        }
        let mut index = self.index.lock();
        let index = index.get_or_insert_with(TagIndex::default);
        let h = hash_of(tag);
        let first = index.by_hash.get(&h).copied();
        let found = first
            .filter(|&id| self.get(id).as_ref() == Some(tag))
            .or_else(|| index.collided.get(tag).copied());
        if let Some(id) = found {
            return self.handle(id);
        }
        let foldable = folded.is_some();
        if let Some(folded) = folded {
            self.fold_idle(index, now, folded);
        }
        let id = index.free.pop().or_else(|| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            ((id as usize) < MAX_TAGS).then_some(id)
        });
        let Some(e) = id.and_then(|id| self.entry(id)) else {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return TagHandle::UNTAGGED;
        };
        let id = id.unwrap_or(UNTAGGED);
        e.publish(tag);
        match first {
            None => {
                index.by_hash.insert(h, id);
            }
            Some(_) => {
                index.collided.insert(*tag, id);
            }
        }
        let next = match tag.task {
            Some(task) => {
                if foldable {
                    index.recent.push_back(self.handle(id));
                }
                index.by_task.insert(task, id).unwrap_or(UNTAGGED)
            }
            None => UNTAGGED,
        };
        e.next_of_task.store(next, Ordering::Relaxed);
        self.handle(id)
    }

    /// The handle of tag `id` as its entry stands (under the index lock,
    /// where generations change).
    fn handle(&self, id: u32) -> TagHandle {
        TagHandle {
            id,
            generation: self
                .entry(id)
                .map_or(0, |e| e.generation.load(Ordering::Acquire)),
        }
    }

    /// Checks the [`IDLE_SWEEP`] oldest tags of tasks: folds those idle
    /// for [`IDLE_NS`] with no memory, requeues those still running or
    /// holding memory, drops those folded or finished meanwhile, and
    /// stops at one that ended too recently.
    fn fold_idle(&self, index: &mut TagIndex, now: u64, done: &mut Finished) {
        for _ in 0..IDLE_SWEEP.min(index.recent.len()) {
            let Some(h) = index.recent.pop_front() else {
                break;
            };
            let Some(e) = self.entry(h.id) else {
                continue;
            };
            let flags = e.flags.load(Ordering::Acquire);
            if e.generation.load(Ordering::Acquire) != h.generation
                || flags & PUBLISHED == 0
                || flags & FINISHED != 0
            {
                continue;
            }
            let last = e.last_ns.load(Ordering::Relaxed);
            let ended = e.active.load(Ordering::Acquire) == 0 && last != 0;
            if ended && now.saturating_sub(last) < IDLE_NS {
                // Ended recently; the tags behind it, interned later, are
                // mostly younger still.
                index.recent.push_front(h);
                break;
            }
            // Running, or holding memory: checked again later.
            let Some(f) = ended.then(|| self.fold(index, h.id)).flatten() else {
                index.recent.push_back(h);
                continue;
            };
            if let Some(task) = f.tag.task {
                if self.unlink(index, task, h.id) {
                    let mut span = TaskSpan::default();
                    span.add_folded(&f);
                    done.tasks.push((task, span));
                }
            }
            done.tags.push(f);
        }
    }

    /// Takes tag `id` out of its task's chain; true when the chain is now
    /// empty (the task has no tag left in the table).
    fn unlink(&self, index: &mut TagIndex, task: u64, id: u32) -> bool {
        let Some(&head) = index.by_task.get(&task) else {
            return false;
        };
        let after = |k: u32| {
            self.entry(k)
                .map_or(UNTAGGED, |e| e.next_of_task.load(Ordering::Relaxed))
        };
        if head == id {
            match after(id) {
                UNTAGGED => {
                    index.by_task.remove(&task);
                    return true;
                }
                next => {
                    index.by_task.insert(task, next);
                }
            }
            return false;
        }
        let mut prev = head;
        while let Some(e) = self.entry(prev) {
            let next = e.next_of_task.load(Ordering::Relaxed);
            if next == UNTAGGED {
                break;
            }
            if next == id {
                e.next_of_task.store(after(id), Ordering::Relaxed);
                break;
            }
            prev = next;
        }
        false
    }

    /// Task `task` is finished: no code runs under its tags again. Folds
    /// each of its tags whose memory is all freed; the others are checked
    /// again later, a few at each call. Returns what was folded: tags, and
    /// every task all of whose tags are now folded (this one, or earlier
    /// ones whose last tag just folded). Caller holds the re-entrancy guard.
    pub(crate) fn finish_task(&self, task: u64) -> Finished {
        let mut done = Finished::default();
        let mut index = self.index.lock();
        let Some(index) = index.as_mut() else {
            done.tasks.push((task, TaskSpan::default()));
            return done;
        };
        let mut next = index.by_task.remove(&task).unwrap_or(UNTAGGED);
        let (mut left, mut span) = (0, TaskSpan::default());
        while next != UNTAGGED {
            let id = next;
            let Some(e) = self.entry(id) else {
                break;
            };
            next = e.next_of_task.load(Ordering::Relaxed);
            span.add(self.get(id), e);
            match self.fold(index, id) {
                Some(f) => done.tags.push(f),
                None => {
                    e.flags.fetch_or(FINISHED, Ordering::AcqRel);
                    index.finished.push(id);
                    left += 1;
                }
            }
        }
        match left {
            0 => done.tasks.push((task, span)),
            n => {
                index.unfolded.insert(task, (n, span));
            }
        }
        self.sweep(index, &mut done);
        done
    }

    /// Folds a few of the finished tags that still held memory, whose
    /// memory may be freed by now.
    fn sweep(&self, index: &mut TagIndex, done: &mut Finished) {
        for _ in 0..SWEEP.min(index.finished.len()) {
            let at = index.sweep_at % index.finished.len();
            let id = index.finished[at];
            let Some(f) = self.fold(index, id) else {
                index.sweep_at = at + 1;
                continue;
            };
            index.finished.swap_remove(at);
            let of = f.tag.task;
            done.tags.push(f);
            if let Some(t) = of {
                let (n, span) = index.unfolded.entry(t).or_insert((1, TaskSpan::default()));
                *n -= 1;
                if *n == 0 {
                    let span = *span;
                    index.unfolded.remove(&t);
                    done.tasks.push((t, span));
                }
            }
        }
    }

    /// Folds tag `id` if nothing runs under it and nothing it allocated
    /// survives: returns its figures, and its entry is free for another
    /// tag (with the next generation).
    fn fold(&self, index: &mut TagIndex, id: u32) -> Option<FoldedTag> {
        let e = self.entry(id)?;
        // Owning the entry first: a thread entering from now on sees
        // FOLDING (or, after, the new generation) and interns again.
        if e.active
            .compare_exchange(0, FOLDING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let release = || e.active.fetch_sub(FOLDING, Ordering::Release);
        let Some(tag) = self.get(id).filter(|_| {
            e.live_bytes.load(Ordering::Acquire) == 0 && e.live_blocks.load(Ordering::Acquire) == 0
        }) else {
            release();
            return None;
        };
        let h = hash_of(&tag);
        if index.by_hash.get(&h) == Some(&id) {
            index.by_hash.remove(&h);
        } else {
            index.collided.remove(&tag);
        }
        let folded = FoldedTag {
            tag,
            alloc_bytes: e.alloc_bytes.load(Ordering::Relaxed),
            alloc_blocks: e.alloc_blocks.load(Ordering::Relaxed),
            peak_bytes: e.peak_bytes.load(Ordering::Relaxed),
            peak_blocks: e.peak_blocks.load(Ordering::Relaxed),
            first_ns: e.first_ns.load(Ordering::Relaxed),
            last_ns: e.last_ns.load(Ordering::Relaxed),
        };
        e.generation.fetch_add(1, Ordering::AcqRel);
        e.flags.store(0, Ordering::Release);
        e.reset();
        release();
        index.free.push(id);
        Some(folded)
    }

    /// Forgets every tag (recording restart): entries stay published (ids
    /// may be cached by `Tagged` futures) with zeroed counters.
    pub(crate) fn reset(&self) {
        for id in 0..self.id_limit() {
            if let Some(e) = self.entry(id) {
                e.reset();
            }
        }
    }

    /// Bytes the table uses: entries handed out and the index.
    pub(crate) fn memory_bytes(&self) -> u64 {
        let entries = self.id_limit() as u64 * std::mem::size_of::<TagEntry>() as u64;
        let index = self.index.lock().as_ref().map_or(0, |i| {
            let map = |cap: usize, entry: usize| cap * (entry + 1);
            (map(i.by_hash.capacity(), 16)
                + map(i.by_task.capacity(), 16)
                + map(i.collided.capacity(), std::mem::size_of::<(Tag, u32)>())
                + map(
                    i.unfolded.capacity(),
                    8 + std::mem::size_of::<(u32, TaskSpan)>(),
                )
                + (i.free.capacity() + i.finished.capacity()) * 4
                + i.recent.capacity() * std::mem::size_of::<TagHandle>()) as u64
        });
        entries + index
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
    /// Writes `tag` into this (free) entry and publishes it.
    fn publish(&self, tag: &Tag) {
        let mut flags = PUBLISHED;
        if let Some(t) = tag.task {
            self.task.store(t, Ordering::Relaxed);
            flags |= HAS_TASK;
        }
        if let Some(r) = tag.retry {
            self.retry.store(r, Ordering::Relaxed);
            flags |= HAS_RETRY;
        }
        let (label, label_len) = tag.label.map_or((std::ptr::null_mut(), 0), |l| {
            (l.as_ptr() as *mut u8, l.len() as u64)
        });
        self.label.store(label, Ordering::Relaxed);
        self.label_len.store(label_len, Ordering::Relaxed);
        let (t, t_len) = tag.type_name.map_or((std::ptr::null_mut(), 0), |t| {
            (t.as_ptr() as *mut u8, t.len() as u64)
        });
        self.type_name.store(t, Ordering::Relaxed);
        self.type_len.store(t_len, Ordering::Relaxed);
        self.flags.store(flags, Ordering::Release);
    }

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

    /// Counts a thread in as running under this entry's tag, if the entry
    /// still holds `generation` of it and no fold owns it; false (and
    /// nothing counted) otherwise: intern the tag again. `None` counts in
    /// unchecked (an id entered by the Python layer right after interning
    /// it, long before it could be idle).
    pub(crate) fn claim(&self, generation: Option<u32>) -> bool {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        let Some(generation) = generation else {
            return true;
        };
        if before & FOLDING != 0 || self.generation.load(Ordering::Acquire) != generation {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Marks code starting to run under this tag (after a [`claim`](Self::claim)).
    pub(crate) fn enter(&self, now: u64) {
        if self.first_ns.load(Ordering::Relaxed) == 0 {
            let _ =
                self.first_ns
                    .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Marks code stopping running under this tag.
    pub(crate) fn exit(&self, now: u64) {
        self.last_ns.fetch_max(now.max(1), Ordering::Relaxed);
        // Release: a fold that sees 0 also sees the flushed counters. A
        // thread that entered before recording started was never counted:
        // its exit must not wrap the count (into the FOLDING bit).
        let _ = self
            .active
            .fetch_update(Ordering::Release, Ordering::Relaxed, |a| {
                (a & !FOLDING > 0).then(|| a - 1)
            });
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

    /// Interns at time 0 (no tag is idle yet).
    fn intern(t: &TagTable, tag: &Tag) -> u32 {
        t.intern(tag, 0, Some(&mut Finished::default())).id
    }

    #[test]
    fn tags_intern_by_value() {
        let t = Box::new(TagTable::new());
        assert!(t.init());
        let a = intern(&t, &Tag::task(7).retry(2));
        let b = intern(&t, &Tag::task(7).retry(3));
        let owned = String::from("error value");
        let label: &'static str = Box::leak(owned.into_boxed_str());
        let c = intern(&t, &Tag::task(7).retry(2).label("error value"));
        let d = intern(&t, &Tag::task(7).retry(2).label(label));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(c, d, "labels compare by content, not address");
        assert_eq!(intern(&t, &Tag::task(7).retry(2)), a);
        assert_eq!(t.get(a), Some(Tag::task(7).retry(2)));
        assert_eq!(intern(&t, &Tag::NONE), UNTAGGED);
    }

    /// A job: interns its tag at `now`, runs under it for `run` ns
    /// (leaving `kept` bytes alive), and returns its handle.
    fn job(
        t: &TagTable,
        task: u64,
        now: u64,
        run: u64,
        kept: i64,
        out: &mut Finished,
    ) -> TagHandle {
        let h = t.intern(&Tag::task(task).retry(0u32), now, Some(out));
        let e = t.entry(h.id).unwrap();
        assert!(e.claim(Some(h.generation)));
        e.enter(now.max(1));
        if kept > 0 {
            e.add_live(kept, 1);
        }
        e.exit(now + run);
        h
    }

    /// Runs `jobs` jobs, one every 100 µs, every 1000th keeping 64
    /// bytes; returns the table's ids in use, its bytes, and how many tags
    /// and tasks were folded.
    fn run_jobs(jobs: u64) -> (u32, u64, usize, usize, Box<TagTable>) {
        let t = Box::new(TagTable::new());
        assert!(t.init());
        let mut folded = Finished::default();
        for k in 0..jobs {
            let kept = if k % 1000 == 0 { 64 } else { 0 };
            job(&t, k, k * 100_000, 50_000, kept, &mut folded);
        }
        let (tags, tasks) = (folded.tags.len(), folded.tasks.len());
        (t.id_limit(), t.memory_bytes(), tags, tasks, t)
    }

    #[test]
    fn idle_tags_of_tasks_fold_so_the_table_does_not_grow_with_jobs_run() {
        // One job per 100 µs: IDLE_NS holds 2,500 jobs' tags.
        let window = (IDLE_NS / 100_000) as u32;
        let (ids_small, bytes_small, ..) = run_jobs(30_000);
        let (ids, bytes, tags, tasks, t) = run_jobs(120_000);
        assert!(ids <= window + window / 5, "{ids} ids for 120,000 jobs");
        assert!(
            ids <= ids_small + 200,
            "{ids} ids vs {ids_small} for a quarter of the jobs"
        );
        // An entry and its index slots per tag of the window (the index's
        // maps keep their highest capacity): not per job run.
        let bound = u64::from(window) * 256;
        assert!(
            bytes_small <= bound && bytes <= bound,
            "{bytes_small}, {bytes} > {bound} bytes"
        );
        assert_eq!(tags, tasks, "each task had one tag");
        assert!(tags >= 120_000 - ids as usize, "{tags} folded");
        // The jobs that kept memory keep their tags.
        let kept: Vec<u64> = (0..ids)
            .filter_map(|id| t.get(id).and_then(|g| g.task_id()))
            .filter(|task| task % 1000 == 0)
            .collect();
        assert_eq!(kept.len(), 120, "{kept:?}");
    }

    #[test]
    fn a_tag_holding_memory_folds_once_it_is_freed() {
        let t = Box::new(TagTable::new());
        assert!(t.init());
        let mut out = Finished::default();
        let leaky = job(&t, 1, 0, 10, 64, &mut out);
        for k in 2..10 {
            job(&t, k, 2 * IDLE_NS + k, 10, 0, &mut out);
        }
        assert!(out.tags.iter().all(|f| f.tag.task != Some(1)));
        assert_eq!(t.get(leaky.id), Some(Tag::task(1).retry(0u32)));
        t.entry(leaky.id).unwrap().add_live(-64, -1);
        for k in 10..20 {
            job(&t, k, 4 * IDLE_NS + k, 10, 0, &mut out);
        }
        assert!(out.tasks.iter().any(|(task, _)| *task == 1));
        assert!(out
            .tags
            .iter()
            .any(|f| f.tag.task == Some(1) && f.alloc_bytes == 0));
    }

    #[test]
    fn a_cached_handle_cannot_enter_its_entry_once_another_tag_reuses_it() {
        let t = Box::new(TagTable::new());
        assert!(t.init());
        let mut out = Finished::default();
        let old = job(&t, 1, 0, 10, 0, &mut out);
        // Interning the next task well after folds the first, and reuses
        // its entry.
        let new = t.intern(&Tag::task(2), 2 * IDLE_NS, Some(&mut out));
        assert_eq!(new.id, old.id, "the folded entry is reused");
        assert_ne!(new.generation, old.generation);
        let e = t.entry(old.id).unwrap();
        assert!(!e.claim(Some(old.generation)), "a stale handle is refused");
        assert_eq!(e.active.load(Ordering::Relaxed), 0, "and counts nothing");
        assert!(e.claim(Some(new.generation)));
        // An exit never counted in (entered before recording) is ignored.
        e.exit(1);
        e.exit(1);
        assert_eq!(e.active.load(Ordering::Relaxed), 0);
        assert!(e.claim(Some(new.generation)));
        // Nothing folds a tag that code runs under.
        assert!(t.intern(&Tag::task(3), 9 * IDLE_NS, Some(&mut out)).id != new.id);
        assert_eq!(t.get(new.id), Some(Tag::task(2)));
    }
}
