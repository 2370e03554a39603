//! The memory timeline: a sampler thread records RSS, live bytes and blocks
//! and the current task every period; `mark` adds event points from any
//! thread. Points go into the profile and, through the renderers, into
//! `memory.csv`.
//!
//! The sampler thread runs with the re-entrancy guard set for its whole
//! life, so its own allocations are never recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::hooks::{self, LAST_TAG, TAGS};
use super::sys::{self, LockCell, RawLock};
use crate::format::TimelinePoint;

/// The newest points kept at full resolution. When the buffer holds twice
/// as many, the older points are decimated, so it never holds more than
/// `2 * RECENT_POINTS` (about 2.5 MiB) however long the program runs: old
/// history loses resolution progressively, as in a round-robin database.
const RECENT_POINTS: usize = 16_384;
/// Older points are decimated in buckets of this many consecutive points,
/// each keeping its lowest and highest live-bytes and RSS points (in time
/// order), so a sawtooth stays visible at any age.
const BUCKET: usize = 8;

pub(crate) struct Buffer {
    pub(crate) points: Vec<TimelinePoint>,
    /// Points merged away by decimation.
    pub(crate) decimated: u64,
}

static TIMELINE: LockCell<Buffer> = LockCell::new(Buffer {
    points: Vec::new(),
    decimated: 0,
});

struct Sampler {
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    pid: u32,
}

static SAMPLER: LockCell<Option<Sampler>> = LockCell::new(None);

pub(crate) fn timeline_lock() -> &'static RawLock {
    TIMELINE.raw()
}

pub(crate) fn sampler_lock() -> &'static RawLock {
    SAMPLER.raw()
}

/// Empties the timeline (at recording start).
pub(crate) fn clear() {
    let mut t = TIMELINE.lock();
    t.points.clear();
    t.decimated = 0;
}

/// A copy of the points and the count of points decimated away.
pub(crate) fn copy() -> (Vec<TimelinePoint>, u64) {
    let t = TIMELINE.lock();
    (t.points.clone(), t.decimated)
}

/// Bytes the timeline uses (its buffer and its points' event texts).
pub(crate) fn memory_bytes() -> u64 {
    let t = TIMELINE.lock();
    let events: usize = t
        .points
        .iter()
        .filter_map(|p| p.event.as_ref().map(String::capacity))
        .sum();
    (t.points.capacity() * std::mem::size_of::<TimelinePoint>() + events) as u64
}

/// How long a live reading may take before it is read again: longer means
/// the thread was preempted mid-reading.
const MAX_READING_NS: u64 = 200_000;

/// Live bytes and blocks, with a time no earlier than the reading and at
/// most `MAX_READING_NS` after it (unless every try was preempted). A thread
/// preempted between reading and timestamp would otherwise date an old
/// reading late, after a free it does not show.
fn live_reading() -> (u64, u64, u64) {
    let mut tries = 0;
    loop {
        let start = hooks::now_ns();
        let (bytes, blocks) = hooks::live_now();
        let end = hooks::now_ns();
        tries += 1;
        if end.saturating_sub(start) <= MAX_READING_NS || tries == 4 {
            return (end, bytes, blocks);
        }
    }
}

fn point(tag_id: u32, event: Option<&str>) -> TimelinePoint {
    let (t_ns, live_bytes, live_blocks) = live_reading();
    let tag = TAGS.get(tag_id);
    TimelinePoint {
        t_ns,
        rss_bytes: sys::rss_bytes(),
        live_bytes,
        live_blocks,
        task: tag.and_then(|t| t.task_id()),
        retry: tag.and_then(|t| t.retry_number()),
        event: event.map(str::to_string),
    }
}

fn push(p: TimelinePoint) {
    let mut t = TIMELINE.lock();
    make_room(&mut t);
    t.points.push(p);
}

/// Decimates the older points when the buffer is full.
fn make_room(t: &mut Buffer) {
    if t.points.len() >= 2 * RECENT_POINTS {
        let before = t.points.len();
        decimate(&mut t.points, before - RECENT_POINTS);
        t.decimated += (before - t.points.len()) as u64;
    }
}

/// Decimates `points[..older]` in place: each bucket of [`BUCKET`] points
/// keeps its lowest and highest live-bytes and RSS points, in time order.
fn decimate(points: &mut Vec<TimelinePoint>, older: usize) {
    let mut keep = vec![false; older];
    for (b, bucket) in points[..older].chunks(BUCKET).enumerate() {
        let at = b * BUCKET;
        let pick = |key: fn(&TimelinePoint) -> u64, max: bool| {
            let it = bucket.iter().enumerate();
            let found = if max {
                it.max_by_key(|(_, p)| key(p))
            } else {
                it.min_by_key(|(_, p)| key(p))
            };
            found.map_or(0, |(i, _)| i)
        };
        for i in [
            pick(|p| p.live_bytes, false),
            pick(|p| p.live_bytes, true),
            pick(|p| p.rss_bytes, false),
            pick(|p| p.rss_bytes, true),
        ] {
            keep[at + i] = true;
        }
    }
    let mut i = 0;
    points.retain(|_| {
        let kept = i >= older || keep[i];
        i += 1;
        kept
    });
}

/// Records an event point with the calling thread's tag. Caller holds the
/// guard.
pub(crate) fn mark(event: &str) {
    push(point(hooks::current_tag_id(), Some(event)));
}

/// A marked point taken now, to be pushed later with [`push_point`] (or
/// dropped): the start of a window whose end decides whether it is kept.
pub(crate) fn point_now(event: &str) -> TimelinePoint {
    point(hooks::current_tag_id(), Some(event))
}

/// Pushes `p` in time order: a point taken before others were pushed
/// goes before them.
pub(crate) fn push_point(p: TimelinePoint) {
    let mut t = TIMELINE.lock();
    make_room(&mut t);
    let at = t.points.partition_point(|q| q.t_ns <= p.t_ns);
    t.points.insert(at, p);
}

/// Starts the sampler thread. Caller holds the guard.
pub(crate) fn start_sampler(period: Duration) -> std::io::Result<()> {
    clear();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Unnamed for std: a std thread name is copied onto the heap by the
    // new thread before this closure can set the guard, and would be
    // recorded as the program's memory. The kernel name is set instead.
    let handle = std::thread::Builder::new().spawn(move || {
        let _ = hooks::LOCAL.try_with(|l| l.guard.set(true));
        // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16
        // bytes names the calling thread.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"leakprof-tline".as_ptr()) };
        while !flag.load(Ordering::Acquire) {
            let tag = LAST_TAG.load(Ordering::Relaxed);
            let active = TAGS
                .entry(tag)
                .is_some_and(|e| e.active.load(Ordering::Relaxed) > 0);
            push(point(if active { tag } else { 0 }, None));
            std::thread::park_timeout(period);
        }
    })?;
    *SAMPLER.lock() = Some(Sampler {
        handle,
        stop,
        pid: std::process::id(),
    });
    Ok(())
}

/// Stops and joins the sampler thread (in the process that started it).
pub(crate) fn stop_sampler() {
    let sampler = SAMPLER.lock().take();
    if let Some(s) = sampler {
        if s.pid == std::process::id() {
            s.stop.store(true, Ordering::Release);
            s.handle.thread().unpark();
            let _ = s.handle.join();
        } else {
            // A forked child: the thread lives in the parent only.
            std::mem::forget(s);
        }
    }
}

/// In a forked child the sampler thread does not exist; forget its handle
/// without joining or dropping it.
pub(crate) fn forget_sampler_in_child() {
    if let Some(s) = SAMPLER.lock().take() {
        std::mem::forget(s);
    }
}
