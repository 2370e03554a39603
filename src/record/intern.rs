//! The lock-free interning probe shared by the stack and tag tables.
//!
//! A table is an `mmap`ed array of [`Slot`]s: open addressing on a 64-bit
//! hash (never 0). A thread that finds an empty slot claims it with one
//! CAS on the hash, writes its record elsewhere, then publishes the record's
//! id in the slot. Readers that meet the same hash wait (bounded) for the
//! id, then compare the record. Nothing blocks unboundedly: a publisher
//! that vanished mid-insert (in a forked child) only costs a duplicate id.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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

/// Finds the id interned for `h` (confirmed by `matches`), or claims a free
/// slot and interns with `publish`. `None` when the table is full.
///
/// # Safety
/// `slots` must point to `mask + 1` slots (a power of two) that live as
/// long as the process.
pub(crate) unsafe fn probe(
    slots: *const Slot,
    mask: usize,
    h: u64,
    matches: impl Fn(u32) -> bool,
    publish: impl FnOnce(&Slot) -> u32,
) -> Option<u32> {
    let mut i = h as usize & mask;
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

/// Waits (spin, then yield) for a slot's id to be published. After the
/// bound the slot is abandoned (marked so later readers skip it at once; a
/// late publish still overwrites the mark).
pub(crate) fn wait_for_id(id: &AtomicU32) -> Option<u32> {
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
