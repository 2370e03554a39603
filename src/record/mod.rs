//! The recorder: runs inside the profiled process.
//!
//! [`LeakAlloc`] wraps the global allocator. While a [`Recorder`] runs, every
//! allocation is recorded in the live table ([`live`]) with its interned
//! stack ([`stacks`]), its tag ([`tags`]: task, retry, owner label) and a
//! birth time; every free removes it. Counters that every allocation touches
//! are per thread ([`threads`]). [`Recorder::snapshot`] turns the tables
//! into a [`Profile`](crate::format::Profile): aggregated by (stack, tag),
//! symbolized, with the timeline sampled by a background thread.
//!
//! Module map: `alloc` (the `GlobalAlloc` impl), `hooks` (the allocation
//! path and process-wide state), `live`, `stacks`, `tags`, `threads`, `sys`
//! (mmap, futex lock, clocks), `snapshot` and `symbols` (off the allocation
//! path), `timeline` (the sampler thread), `fork` (fork safety), `python`
//! (recording a Python 3.11 interpreter from inside it: its allocator
//! domains wrapped, Python stacks as the stack source).

mod alloc;
mod fork;
mod fxhash;
mod heapgraph;
pub(crate) mod hooks;
mod intern;
mod live;
mod mmapvec;
pub mod owner;
/// Recording a Python 3.11 interpreter from inside it (issue 11): the
/// `leakprof-python` library calls this. Not a stable API.
#[doc(hidden)]
pub mod python;
#[doc(hidden)]
pub mod race;
mod scan;
mod snapshot;
mod stacks;
mod stop;
mod symbols;
pub(crate) mod sys;
mod tags;
mod threads;
mod timeline;
mod trace;
/// The program's types from DWARF for an exact heap graph (issue 10).
/// Public for leakprof's own tests and tools; not a stable API.
pub mod types;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

pub use alloc::LeakAlloc;
pub use heapgraph::GraphOptions;
use tags::TagHandle;
pub use tags::{Tag, TagNumber};

use crate::format::Profile;

/// Default recorder settings, shared by the library and the CLI.
pub mod defaults {
    /// Frames kept per stack (deep enough for tokio's poll chains).
    pub const MAX_FRAMES: u32 = 64;
    /// Timeline sampling period.
    pub const TIMELINE_INTERVAL_MS: u64 = 100;
    /// Typical production sampling interval (as tcmalloc and jemalloc use).
    pub const SAMPLE_MEAN_BYTES: u64 = 512 * 1024;
    /// Largest new block zeroed in full mode (see `Options::zero_new_blocks`).
    pub const ZERO_NEW_BLOCKS: u64 = 16 * 1024;
}

/// How to record. Build with the methods; unknown future settings keep
/// their defaults.
///
/// ```
/// let opts = leakprof::Options::default().sample_mean_bytes(512 * 1024);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// `None`: record every allocation. `Some(n)`: Poisson sampling with a
    /// mean of one sample per `n` allocated bytes; figures are unbiased
    /// estimates.
    pub sample_mean_bytes: Option<u64>,
    /// Frames kept per stack, 1 to 256.
    pub max_frames: u32,
    /// Timeline sampling period; `None` turns the sampler thread off.
    pub timeline_interval: Option<Duration>,
    /// Seed for the sampling generator (0: from the clock).
    pub seed: u64,
    /// In full mode, new blocks up to this size (and the grown part of
    /// reallocated ones) are zeroed before the program gets them, so heap
    /// graphs do not mistake stale pointers left in recycled memory for
    /// references. 0 turns it off.
    pub zero_new_blocks: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sample_mean_bytes: None,
            max_frames: defaults::MAX_FRAMES,
            timeline_interval: Some(Duration::from_millis(defaults::TIMELINE_INTERVAL_MS)),
            seed: 0,
            zero_new_blocks: defaults::ZERO_NEW_BLOCKS,
        }
    }
}

impl Options {
    /// Samples allocations with a mean interval of `bytes` (0: record all).
    pub fn sample_mean_bytes(mut self, bytes: u64) -> Options {
        self.sample_mean_bytes = (bytes > 0).then_some(bytes);
        self
    }

    /// Frames kept per stack (clamped to 1..=256).
    pub fn max_frames(mut self, frames: u64) -> Options {
        self.max_frames = frames.clamp(1, stacks::MAX_DEPTH as u64) as u32;
        self
    }

    /// Timeline period in ms (0 turns the timeline sampler off).
    pub fn timeline_interval_ms(mut self, ms: u64) -> Options {
        self.timeline_interval = (ms > 0).then(|| Duration::from_millis(ms));
        self
    }

    /// Zeroes new blocks up to `bytes` (0 turns it off); see the field.
    pub fn zero_new_blocks(mut self, bytes: u64) -> Options {
        self.zero_new_blocks = bytes;
        self
    }

    /// Fixes the sampling generator's seed, for reproducible sampling.
    pub fn seed(mut self, seed: u64) -> Options {
        self.seed = seed;
        self
    }
}

/// Why a heap graph could not be taken (the reason, in one line).
#[derive(Debug, thiserror::Error)]
#[error("no heap graph: {0}")]
pub struct GraphUnavailable(pub String);

/// Why recording could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("leakprof::LeakAlloc is not the global allocator: add `#[global_allocator] static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();` to your program")]
    NotInstalled,
    #[error("a leakprof recorder is already running in this process")]
    AlreadyRunning,
    #[error("the kernel refused memory for the recorder's tables")]
    NoMemory,
    #[error("could not start the timeline thread: {0}")]
    Timeline(std::io::Error),
}

static RUNNING: AtomicBool = AtomicBool::new(false);
static START_NS: AtomicU64 = AtomicU64::new(0);

/// ns since recording started (monotonic).
pub(crate) fn elapsed_ns() -> u64 {
    sys::now_ns().saturating_sub(START_NS.load(Ordering::Relaxed))
}

/// A running recording. Dropping it stops recording; [`Recorder::stop`]
/// also returns a final profile.
#[derive(Debug)]
pub struct Recorder {
    stopped: bool,
}

impl Recorder {
    /// Starts recording every allocation of the process.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let recorder = leakprof::Recorder::start(leakprof::Options::default())?;
    /// // ... work ...
    /// recorder.snapshot().save("profile.json")?;
    /// # Ok(()) }
    /// ```
    pub fn start(options: Options) -> Result<Recorder, StartError> {
        hooks::guarded(|| {
            if hooks::STATE.load(Ordering::Relaxed) == hooks::UNSEEN {
                return Err(StartError::NotInstalled);
            }
            if RUNNING
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(StartError::AlreadyRunning);
            }
            // Before the recorder's own tables touch any page.
            let rss_at_start = sys::rss_bytes();
            if !hooks::init_tables() {
                RUNNING.store(false, Ordering::Release);
                return Err(StartError::NoMemory);
            }
            fork::install();
            let cfg = &hooks::CONFIG;
            cfg.max_frames.store(
                options.max_frames.clamp(1, stacks::MAX_DEPTH as u32),
                Ordering::Relaxed,
            );
            let mean = options.sample_mean_bytes.unwrap_or(0);
            cfg.sample_mean.store(mean, Ordering::Relaxed);
            cfg.block_unit
                .store(if mean == 0 { 1 } else { 1024 }, Ordering::Relaxed);
            cfg.seed.store(options.seed, Ordering::Relaxed);
            // Sampled mode builds no graph, so it needs no zeroing.
            cfg.zero_fill_max.store(
                if mean == 0 {
                    options.zero_new_blocks
                } else {
                    0
                },
                Ordering::Relaxed,
            );
            hooks::reset_counters();
            START_NS.store(sys::now_ns(), Ordering::Relaxed);
            snapshot::begin_session(&options, rss_at_start);
            hooks::STATE.store(hooks::RECORDING, Ordering::Release);
            if let Some(period) = options.timeline_interval {
                if let Err(e) = timeline::start_sampler(period) {
                    hooks::STATE.store(hooks::IDLE, Ordering::Release);
                    RUNNING.store(false, Ordering::Release);
                    return Err(StartError::Timeline(e));
                }
            }
            Ok(Recorder { stopped: false })
        })
    }

    /// A profile of everything live now. Infallible, callable from any
    /// thread at any time; it never stops the other threads (each live
    /// table shard is locked only while it is copied).
    pub fn snapshot(&self) -> Profile {
        snapshot::take()
    }

    /// A profile with a heap graph (format version 2): who holds the
    /// memory. This is leakprof's one stop-the-world pause: every other
    /// thread is stopped with a signal and allocation waits while the live
    /// heap is scanned for pointers. How long depends on the heap's shape:
    /// docs/BENCHMARKS.md ("Heap graph") measures a pause of 0.50 s per GiB
    /// of live heap made of 1 KiB objects with the conservative scan, about
    /// 1.3x that when blocks are read by their types (the default; the
    /// types load once, before the first pause), and far less for large
    /// pointer-free blocks; the analysis after the pause runs with the
    /// world going. Unavailable in sampling mode, where most blocks are
    /// not recorded.
    ///
    /// The calling thread's stack is a root too, read conservatively: a
    /// stale pointer left in one of its live frames keeps its target
    /// "reachable". Call it from a thread that does not itself handle the
    /// objects under study (a monitoring thread, the main loop) for the
    /// sharpest answer; `leakprof run` does.
    #[inline(never)]
    pub fn snapshot_with_graph(&self, options: &GraphOptions) -> Result<Profile, GraphUnavailable> {
        // This thread's stack is scanned from the caller's frame up (plus the
        // registers it saved on entry here): leakprof's own frames below
        // it reuse stack memory the caller's earlier calls left stale.
        let mut registers = [0usize; 8];
        scan::spill_registers(&mut registers);
        let own = scan::OwnThread {
            stack_from: scan::frame_pointer().saturating_sub(scan::SAVED_REGISTERS_BELOW_FP),
            registers,
        };
        snapshot::take_with_graph(options, own).map_err(|e| GraphUnavailable(e.to_string()))
    }

    /// Stops the timeline sampler (allocations are still recorded), so the
    /// timeline ends where the program's work ended and not, say, during
    /// the final snapshot's symbolization.
    pub fn stop_timeline(&self) {
        hooks::guarded(timeline::stop_sampler);
    }

    /// Stops recording and returns the final profile.
    pub fn stop(mut self) -> Profile {
        let profile = snapshot::take();
        self.shutdown();
        profile
    }

    fn shutdown(&mut self) {
        if !self.stopped {
            self.stopped = true;
            timeline::stop_sampler();
            hooks::STATE.store(hooks::IDLE, Ordering::Release);
            hooks::CONFIG.zero_fill_max.store(0, Ordering::Relaxed);
            RUNNING.store(false, Ordering::Release);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        hooks::guarded(|| self.shutdown());
    }
}

/// True while a recorder runs.
pub fn is_recording() -> bool {
    hooks::recording()
}

/// Runs `f` under `tag`: allocations it makes (on this thread) carry the
/// tag. Nested calls replace the tag for their duration.
///
/// ```
/// let v = leakprof::with_tag(leakprof::Tag::task(7).retry(2), || vec![1u8; 16]);
/// # assert_eq!(v.len(), 16);
/// ```
pub fn with_tag<R>(tag: Tag, f: impl FnOnce() -> R) -> R {
    let _scope = TagScope::enter(&tag, &mut None);
    f()
}

/// Interns `tag`; the idle tags of tasks that interning folded are summed
/// in the session's folded figures.
pub(crate) fn intern_tag(tag: &Tag) -> TagHandle {
    hooks::guarded(|| {
        let mut folded = tags::Finished::default();
        let handle = hooks::TAGS.intern(tag, hooks::now_ns(), Some(&mut folded));
        if !folded.is_empty() {
            snapshot::note_idle_folded(folded);
        }
        handle
    })
}

/// Task `task` is finished: nothing runs under its tags any more (its
/// futures are done, its attempts settled). The recorder then *folds* each
/// of its tags whose memory is all freed: their figures are summed in the
/// profile's `folded` section and their entries reused, and the task's
/// record goes too. Tags still holding memory (the task's leaks) stay, and
/// are folded once it is freed. Without it, the recorder folds a task's
/// tags only once they have held nothing and not run for 250 ms (checked
/// as new tags are interned), so its memory stays bounded either way;
/// calling it folds them at once and keeps the task's record listed.
///
/// Calling it while code still runs under one of the task's tags would
/// attribute that code's allocations to whichever tag reuses the entry.
pub fn finish_task(task: impl TagNumber) {
    let task = task.to_u64();
    if hooks::recording() {
        hooks::guarded(|| snapshot::note_finished(hooks::TAGS.finish_task(task)));
    }
}

/// The calling thread's current tag; hand it to `spawn_blocking` or a new
/// thread to keep attributing work there.
pub fn current_tag() -> Tag {
    hooks::TAGS
        .get(hooks::current_tag_id())
        .unwrap_or(Tag::NONE)
}

/// Restores the previous tag on drop, unwinding included.
struct TagScope {
    id: u32,
    prev: u32,
}

/// Entering a tag gives up after this many of its entries were folded
/// under it (each fold needs the tag idle for `tags::IDLE_NS`), and runs
/// untagged.
const ENTER_TRIES: usize = 4;

impl TagScope {
    /// Enters `tag` by its cached `handle`, interning it (again) when
    /// there is none or its entry was folded since (idle tags of tasks
    /// are folded, see `tags`).
    fn enter(tag: &Tag, handle: &mut Option<TagHandle>) -> TagScope {
        for _ in 0..ENTER_TRIES {
            let h = *handle.get_or_insert_with(|| intern_tag(tag));
            match hooks::enter_tag_checked(h.id, Some(h.generation)) {
                Some(prev) => return TagScope { id: h.id, prev },
                None => *handle = None,
            }
        }
        TagScope {
            id: tags::UNTAGGED,
            prev: hooks::enter_tag(tags::UNTAGGED),
        }
    }
}

impl Drop for TagScope {
    fn drop(&mut self) {
        hooks::exit_tag(self.id, self.prev);
    }
}

/// A future that runs under a tag on every poll, whichever thread polls
/// it, and restores the poller's previous tag after each poll.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Tagged<F> {
    inner: F,
    tag: Tag,
    handle: Option<TagHandle>,
}

impl<F> Tagged<F> {
    pub fn new(inner: F, tag: Tag) -> Tagged<F> {
        Tagged {
            inner,
            tag,
            handle: None,
        }
    }

    pub fn tag(&self) -> Tag {
        self.tag
    }
}

impl<F: Future> Future for Tagged<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self` and `Tagged` has no Drop impl that could move it; the other
        // fields are plain data we may mutate.
        let this = unsafe { self.get_unchecked_mut() };
        let _scope = TagScope::enter(&this.tag, &mut this.handle);
        // SAFETY: see above; `inner` stays pinned in place.
        unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx)
    }
}

/// Runs `call` under `tag` and returns the future it makes, tagged for
/// every poll: the tag is interned once for both (a tower layer's `call`).
#[cfg(feature = "tower")]
pub(crate) fn call_tagged<F: Future>(tag: Tag, call: impl FnOnce() -> F) -> Tagged<F> {
    let mut handle = None;
    let inner = {
        let _scope = TagScope::enter(&tag, &mut handle);
        call()
    };
    Tagged { inner, tag, handle }
}

/// `.tagged(tag)` on any future.
pub trait FutureExt: Future + Sized {
    fn tagged(self, tag: Tag) -> Tagged<Self> {
        Tagged::new(self, tag)
    }
}

impl<F: Future> FutureExt for F {}

/// Live amount right now (bytes, blocks): exact in full mode. Cheap enough
/// for progress bars; 0 when not recording.
pub fn live() -> (u64, u64) {
    if !hooks::recording() {
        return (0, 0);
    }
    hooks::live_now()
}

/// How many times the global live amount reached a new peak since
/// recording started (the peak generation; for benchmarks that time the
/// allocations which raised it).
#[doc(hidden)]
pub fn peak_generation() -> u64 {
    hooks::PEAK_GEN.load(Ordering::Relaxed)
}

/// Bytes of memory the recorder has mapped for its live table (the part of
/// its metadata that grows with the number of live allocations; stack,
/// tag and per-thread tables are reserved up front and touched on demand).
pub fn live_table_bytes() -> u64 {
    hooks::LIVE.mapped_bytes() as u64
}

/// Adds a marked point to the timeline (e.g. "after failure"), with the
/// calling thread's current task and retry. No-op when not recording.
pub fn mark(event: &str) {
    if hooks::recording() {
        hooks::guarded(|| timeline::mark(event));
    }
}

/// Attaches a `key = value` fact to the profile's metadata.
pub fn set_attribute(key: &str, value: &str) {
    hooks::guarded(|| snapshot::set_attribute(key, value));
}

/// Describes a task for the profile's task table (name, message id, actor,
/// queue, outcome). Fields left `None` keep earlier values.
pub fn describe_task(task: impl TagNumber, description: TaskDescription) {
    let task = task.to_u64();
    hooks::guarded(|| snapshot::describe_task(task, description));
}

/// What [`describe_task`] records about a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskDescription {
    pub name: Option<String>,
    pub external_id: Option<String>,
    pub actor: Option<String>,
    pub queue: Option<String>,
    pub outcome: Option<String>,
}

impl TaskDescription {
    pub fn new() -> TaskDescription {
        TaskDescription::default()
    }
    pub fn name(mut self, v: impl Into<String>) -> Self {
        self.name = Some(v.into());
        self
    }
    pub fn external_id(mut self, v: impl Into<String>) -> Self {
        self.external_id = Some(v.into());
        self
    }
    pub fn actor(mut self, v: impl Into<String>) -> Self {
        self.actor = Some(v.into());
        self
    }
    pub fn queue(mut self, v: impl Into<String>) -> Self {
        self.queue = Some(v.into());
        self
    }
    pub fn outcome(mut self, v: impl Into<String>) -> Self {
        self.outcome = Some(v.into());
        self
    }
}
