//! The lock-free interning table of the stack table.
//!
//! A table is a short series of `mmap`ed levels of [`Slot`]s, each twice
//! the size of the one before, open addressing on a 64-bit hash (never 0)
//! in each. Only the newest level takes new entries, and only until half
//! its slots are claimed: then it is sealed and the next one is mapped. A
//! lookup probes the levels oldest first, so a table stays as small as
//! the entries it holds (a 64 MiB table touched at random would be all in
//! memory after 16,000 entries), its first level stays in the caches, and
//! no entry ever moves.
//!
//! A thread that finds an empty slot in the open level reserves a place in
//! the level (one `fetch_add`), claims the slot with one CAS on the hash,
//! writes its record elsewhere, then publishes the record's id in the slot.
//! Readers that meet the same hash wait (bounded) for the id, then compare
//! the record. A thread refused a place (the level just filled) waits until
//! every granted place is settled, then probes the level again, so two
//! threads interning the same entry as a level seals agree on one id.
//! Nothing blocks unboundedly: a reserver or publisher that vanished
//! mid-insert (in a forked child) only costs a duplicate id.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::race::{self, RacePoint};
use super::sys;

/// One hash slot.
#[repr(C)]
pub(crate) struct Slot {
    pub(crate) hash: AtomicU64,
    /// 0 until published; `u32::MAX` for a slot given up on.
    pub(crate) id: AtomicU32,
    _pad: u32,
}

/// Spins, then yields, waiting for a racing insert to publish.
const PUBLISH_SPINS: u32 = 64;
const PUBLISH_YIELDS: u32 = 2000;

/// Level `k` has `1 << (FIRST_BITS + k)` slots (the first 1 MiB); the
/// last has 4 Mi slots (64 MiB), and all together take 4 Mi entries.
const FIRST_BITS: u32 = 16;
const LEVELS: usize = 7;

/// One level: its slots (null until the level is first needed), the places
/// granted in it, and how many of those are settled (their insert done).
#[repr(C, align(64))]
struct Level {
    slots: AtomicPtr<Slot>,
    granted: AtomicUsize,
    settled: AtomicUsize,
}

/// An interning table (see the module documentation).
pub(crate) struct Table {
    levels: [Level; LEVELS],
}

/// What probing one level found.
enum Probed {
    Found(u32),
    /// No entry for the hash: the probe ended at this empty slot.
    Empty(usize),
}

impl Table {
    pub(crate) const fn new() -> Table {
        Table {
            levels: [const {
                Level {
                    slots: AtomicPtr::new(std::ptr::null_mut()),
                    granted: AtomicUsize::new(0),
                    settled: AtomicUsize::new(0),
                }
            }; LEVELS],
        }
    }

    const fn len(k: usize) -> usize {
        1 << (FIRST_BITS + k as u32)
    }

    /// Entries level `k` takes before it is sealed: half its slots, so
    /// probe runs stay short.
    const fn capacity(k: usize) -> usize {
        Self::len(k) / 2
    }

    /// Entries all levels take together.
    pub(crate) const fn max_entries() -> usize {
        let mut total = 0;
        let mut k = 0;
        while k < LEVELS {
            total += Self::capacity(k);
            k += 1;
        }
        total
    }

    /// Maps the first level; idempotent. False if the kernel refuses it.
    pub(crate) fn init(&self) -> bool {
        !self.level(0).is_null()
    }

    /// Level `k`'s slots, mapped on first use (null if the kernel refuses).
    #[inline(always)]
    fn level(&self, k: usize) -> *const Slot {
        let slots = &self.levels[k].slots;
        let mapped = slots.load(Ordering::Acquire);
        if !mapped.is_null() {
            return mapped;
        }
        sys::map_once(slots, Self::len(k) * std::mem::size_of::<Slot>())
    }

    /// Finds the id interned for `h` (confirmed by `matches`), or interns
    /// it with `publish` in the open level. `None` when every level is full
    /// or a level cannot be mapped.
    pub(crate) fn intern(
        &self,
        h: u64,
        matches: impl Fn(u32) -> bool,
        publish: impl FnOnce(&Slot) -> u32,
    ) -> Option<u32> {
        for (k, level) in self.levels.iter().enumerate() {
            let slots = self.level(k);
            if slots.is_null() {
                return None;
            }
            let mask = Self::len(k) - 1;
            let capacity = Self::capacity(k);
            // Read before probing: a level seen sealed here holds every
            // entry it ever will, so a probe that misses is final.
            let sealed = level.settled.load(Ordering::Acquire) >= capacity;
            // SAFETY: level `k` maps `mask + 1` slots for the process's life.
            let empty = match unsafe { find(slots, mask, h, &matches) } {
                Probed::Found(id) => return Some(id),
                Probed::Empty(at) => at,
            };
            if sealed {
                continue;
            }
            if level.granted.fetch_add(1, Ordering::AcqRel) < capacity {
                race::hit(RacePoint::InternReserved);
                // SAFETY: as above; the place granted keeps the level under
                // half full, so an empty slot is left for the probe.
                let id = unsafe { probe(slots, mask, h, empty, &matches, publish) };
                level.settled.fetch_add(1, Ordering::Release);
                return id;
            }
            // The level filled under us: once every place granted in it is
            // settled, its entries are final; look again.
            race::hit(RacePoint::InternSealWait);
            await_seal(&level.settled, capacity);
            // SAFETY: as above.
            if let Probed::Found(id) = unsafe { find(slots, mask, h, &matches) } {
                return Some(id);
            }
        }
        None
    }

    /// Bytes the levels take in memory: the slots' pages, touched at
    /// random, so one page per entry until all of a level's are.
    pub(crate) fn memory_bytes(&self) -> u64 {
        (0..LEVELS)
            .filter(|&k| !self.levels[k].slots.load(Ordering::Acquire).is_null())
            .map(|k| {
                let entries = self.levels[k]
                    .granted
                    .load(Ordering::Relaxed)
                    .min(Self::capacity(k)) as u64;
                (entries * 4096).clamp(4096, (Self::len(k) * std::mem::size_of::<Slot>()) as u64)
            })
            .sum()
    }
}

/// Probes for `h` without claiming anything: its id, or the empty slot
/// where its probe run ends.
///
/// # Safety
/// `slots` must point to `mask + 1` slots (a power of two), fewer than
/// all of them claimed, that live as long as the process.
unsafe fn find(slots: *const Slot, mask: usize, h: u64, matches: &impl Fn(u32) -> bool) -> Probed {
    let mut i = h as usize & mask;
    loop {
        // SAFETY: i <= mask, inside the table (caller's contract).
        let slot = unsafe { &*slots.add(i) };
        match slot.hash.load(Ordering::Acquire) {
            0 => return Probed::Empty(i),
            cur if cur == h => {
                if let Some(id) = wait_for_id(&slot.id) {
                    if matches(id) {
                        return Probed::Found(id);
                    }
                }
            }
            _ => {}
        }
        i = (i + 1) & mask;
    }
}

/// From slot `start` on, finds the id interned for `h` or claims a free
/// slot and interns with `publish`. `None` when the table is full.
///
/// # Safety
/// `slots` must point to `mask + 1` slots (a power of two) that live as
/// long as the process.
unsafe fn probe(
    slots: *const Slot,
    mask: usize,
    h: u64,
    start: usize,
    matches: &impl Fn(u32) -> bool,
    publish: impl FnOnce(&Slot) -> u32,
) -> Option<u32> {
    let mut i = start;
    for _ in 0..=mask {
        // SAFETY: i <= mask, inside the table (caller's contract).
        let slot = unsafe { &*slots.add(i) };
        let cur = slot.hash.load(Ordering::Acquire);
        let same = if cur == 0 {
            match slot
                .hash
                .compare_exchange(0, h, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(publish(slot)),
                // Someone else claimed it: for the same hash, compare below.
                Err(now) => now == h,
            }
        } else {
            cur == h
        };
        if same {
            if let Some(id) = wait_for_id(&slot.id) {
                if matches(id) {
                    return Some(id);
                }
            }
        }
        i = (i + 1) & mask;
    }
    None
}

/// How long a thread refused a place waits for the level's granted places
/// to settle. Longer than a reserver preempted in its few instructions
/// takes (a bound counted in yields ran out on a busy machine, and each
/// time cost a duplicate id); it is only ever waited out in a forked child
/// whose reserver is gone, once per level.
const SEAL_WAIT_NS: u64 = 200_000_000;

/// Waits (spin, then yield) until `settled` reaches `capacity`. After
/// [`SEAL_WAIT_NS`] the level is sealed anyway (a reserver that vanished
/// in a forked child would never settle), so later lookups do not wait.
fn await_seal(settled: &AtomicUsize, capacity: usize) {
    let mut deadline = None;
    for i in 0.. {
        if settled.load(Ordering::Acquire) >= capacity {
            return;
        }
        if i < PUBLISH_SPINS {
            std::hint::spin_loop();
            continue;
        }
        let now = sys::now_ns();
        if now >= *deadline.get_or_insert(now + SEAL_WAIT_NS) {
            break;
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
    settled.fetch_max(capacity, Ordering::AcqRel);
}

/// Waits (spin, then yield) for a slot's id to be published. After the
/// bound the slot is abandoned (marked so later readers skip it at once; a
/// late publish still overwrites the mark).
fn wait_for_id(id: &AtomicU32) -> Option<u32> {
    for i in 0..PUBLISH_SPINS + PUBLISH_YIELDS {
        match id.load(Ordering::Acquire) {
            0 if i < PUBLISH_SPINS => std::hint::spin_loop(),
            // SAFETY: sched_yield has no preconditions.
            0 => unsafe {
                libc::sched_yield();
            },
            u32::MAX => return None,
            found => return Some(found),
        }
    }
    let _ = id.compare_exchange(0, u32::MAX, Ordering::AcqRel, Ordering::Acquire);
    match id.load(Ordering::Acquire) {
        0 | u32::MAX => None,
        found => Some(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys interned into a table, the id being the key's index in `keys`
    /// (published lock-free, so a publisher is never held up in a lock).
    struct Keys {
        table: Table,
        keys: Vec<AtomicU64>,
        next: AtomicU32,
    }

    impl Keys {
        fn new() -> &'static Keys {
            Box::leak(Box::new(Keys {
                table: Table::new(),
                keys: (0..1 << 18).map(|_| AtomicU64::new(0)).collect(),
                next: AtomicU32::new(1),
            }))
        }

        fn intern(&self, key: u64) -> Option<u32> {
            // A weak hash, so unrelated keys share probe runs.
            let h = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 8) | 1;
            self.table.intern(
                h,
                |id| self.keys[id as usize].load(Ordering::Acquire) == key,
                |slot| {
                    let id = self.next.fetch_add(1, Ordering::Relaxed);
                    self.keys[id as usize].store(key, Ordering::Release);
                    slot.id.store(id, Ordering::Release);
                    id
                },
            )
        }

        /// Ids handed out.
        fn ids(&self) -> usize {
            self.next.load(Ordering::Acquire) as usize - 1
        }

        fn mapped(&self) -> Vec<bool> {
            let levels = &self.table.levels;
            levels
                .iter()
                .map(|l| !l.slots.load(Ordering::Acquire).is_null())
                .collect()
        }
    }

    #[test]
    fn levels_open_one_after_another_and_keep_their_entries() {
        let t = Keys::new();
        assert!(t.table.init());
        let n = Table::capacity(0) + Table::capacity(1) + 10;
        let ids: Vec<u32> = (1..=n as u64).map(|k| t.intern(k).unwrap()).collect();
        assert_eq!(
            ids,
            (1..=n as u32).collect::<Vec<_>>(),
            "one new id per key, in order"
        );
        assert_eq!(t.mapped(), [true, true, true, false, false, false, false]);
        for (k, &id) in (1..=n as u64).zip(&ids) {
            assert_eq!(t.intern(k), Some(id), "key {k} found again");
        }
        assert_eq!(t.ids(), n, "no key interned twice");
        let mapped = (Table::len(0) + Table::len(1) + Table::len(2)) * std::mem::size_of::<Slot>();
        assert!(t.table.memory_bytes() <= mapped as u64);
        assert!(t.table.memory_bytes() > (Table::len(0) * std::mem::size_of::<Slot>()) as u64);
    }

    #[test]
    fn threads_interning_the_same_keys_across_a_seal_agree() {
        let t = Keys::new();
        assert!(t.table.init());
        let n = Table::capacity(0) as u64 + 5000;
        let ids: Vec<Vec<Option<u32>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u64)
                .map(|r| {
                    s.spawn(move || (1..=n).map(|k| t.intern((k + r * 997) % n + 1)).collect())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, mine) in ids.iter().enumerate() {
            for (k, id) in (1..=n).zip(mine) {
                assert_eq!(*id, t.intern((k + r as u64 * 997) % n + 1));
            }
        }
        assert_eq!(t.ids() as u64, n, "no key interned twice");
    }

    #[cfg(feature = "race-points")]
    mod races {
        use super::*;
        use crate::record::race;
        use std::time::Duration;

        fn tid() -> i32 {
            // SAFETY: gettid has no preconditions.
            unsafe { libc::syscall(libc::SYS_gettid) as i32 }
        }

        /// Race points are process-wide: these tests take turns.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

        /// Starts a thread interning `key`; returns once it is held at
        /// `point`.
        fn held_at<'scope>(
            s: &'scope std::thread::Scope<'scope, '_>,
            t: &'static Keys,
            point: RacePoint,
            key: u64,
        ) -> std::thread::ScopedJoinHandle<'scope, Option<u32>> {
            let thread = s.spawn(move || {
                race::arm(point, Some(tid()));
                t.intern(key)
            });
            assert!(
                race::wait_arrival(point, Duration::from_secs(10)),
                "a thread held at {point:?}"
            );
            thread
        }

        /// A table whose first level has one place left.
        fn nearly_full() -> &'static Keys {
            let t = Keys::new();
            assert!(t.table.init());
            for k in 1..Table::capacity(0) as u64 {
                t.intern(k).unwrap();
            }
            t
        }

        #[test]
        fn a_thread_refused_a_place_finds_the_entry_of_the_thread_granted_the_last() {
            let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
            let t = nearly_full();
            let key = 1 << 40;
            std::thread::scope(|s| {
                let granted = held_at(s, t, RacePoint::InternReserved, key);
                let refused = held_at(s, t, RacePoint::InternSealWait, key);
                // The level is full but not sealed; the granted thread has
                // not claimed its slot yet. Let it insert, then let the
                // refused one look again.
                race::release(RacePoint::InternReserved);
                let id = granted.join().unwrap();
                race::release(RacePoint::InternSealWait);
                assert_eq!(refused.join().unwrap(), id);
            });
            assert_eq!(t.ids(), Table::capacity(0), "one id for the key");
            assert!(!t.mapped()[1], "nothing went to the next level");
        }

        #[test]
        fn a_reserver_that_never_settles_delays_a_level_seal_only_once() {
            let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
            let t = nearly_full();
            std::thread::scope(|s| {
                let stuck = held_at(s, t, RacePoint::InternReserved, 1 << 40);
                // As a forked child whose reserver is gone: the first new
                // key waits out the bound, then the level counts as sealed.
                let first = t.intern(1 << 41).unwrap();
                let level = &t.table.levels[0];
                assert!(level.settled.load(Ordering::Acquire) >= Table::capacity(0));
                assert!(t.mapped()[1], "new keys go to the next level");
                let started = std::time::Instant::now();
                let second = t.intern(1 << 42).unwrap();
                assert!(
                    started.elapsed() < Duration::from_millis(50),
                    "no second wait"
                );
                assert_ne!(first, second);
                race::release(RacePoint::InternReserved);
                assert!(
                    stuck.join().unwrap().is_some(),
                    "the late reserver still inserts"
                );
            });
        }
    }
}
