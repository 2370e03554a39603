//! Snapshots: the recorder's tables turned into a [`Profile`].
//!
//! Runs off the allocation path, with the re-entrancy guard set (its own
//! allocations are not recorded). It never stops other threads: each live
//! table shard is locked only while it is copied.

use std::collections::{BTreeMap, VecDeque};

use super::fxhash::FxHashMap;
use std::sync::atomic::Ordering;

use super::heapgraph::{self, GraphOptions};
use super::hooks::{self, CONFIG, LIVE, PEAK_GEN, STACKS, TAGS, THREADS};
use super::live::Block;
use super::scan::{self, ScanError, ScanResult};
use super::sys::{self, LockCell, RawLock};
use super::tags::{Finished, FoldedTag, TaskSpan};
use super::{symbols, timeline, Options, TaskDescription};
use crate::format::{
    compact, Amount, Dropped, Folded, LiveGroup, Meta, Mode, Profile, RecordOptions,
    RecorderMemory, StackStats, TagInfo, TaskInfo, Totals, FORMAT_NAME, VERSION_V1, VERSION_V2,
};

/// Facts about the current recording that are not on the allocation path.
struct Session {
    start_unix_ms: u64,
    /// RSS just before recording started (0: not read).
    rss_at_start: u64,
    options: Option<Options>,
    attributes: BTreeMap<String, String>,
    tasks: BTreeMap<u64, TaskRecord>,
    tasks_dropped: u64,
    /// Finished tasks whose tags were folded, oldest first; past
    /// [`KEEP_FINISHED`] the oldest records are folded too.
    finished: VecDeque<u64>,
    /// Tags of finished tasks folded out of the tag table, newest last;
    /// past [`KEEP_FINISHED_TAGS`] the oldest are summed.
    finished_tags: VecDeque<FoldedTag>,
    /// Finished tasks summed away, by outcome.
    folded: BTreeMap<String, u64>,
    /// Their retries (each folded task's highest retry number, summed).
    folded_retries: u64,
    /// Finished tags summed away, and what they allocated.
    folded_tags: u64,
    folded_allocated: Amount,
}

/// A task's record: what the program described, and, once its tags were
/// folded (see `finish_task`), its highest retry number.
#[derive(Clone, Default)]
struct TaskRecord {
    description: TaskDescription,
    finished: Option<TaskSpan>,
}

/// Finished tasks whose records stay listed; older ones are summed.
const KEEP_FINISHED: usize = 10_000;
/// Finished tags whose figures stay listed; older ones are summed.
const KEEP_FINISHED_TAGS: usize = 20_000;

static SESSION: LockCell<Session> = LockCell::new(Session {
    start_unix_ms: 0,
    rss_at_start: 0,
    options: None,
    attributes: BTreeMap::new(),
    tasks: BTreeMap::new(),
    tasks_dropped: 0,
    finished: VecDeque::new(),
    finished_tags: VecDeque::new(),
    folded: BTreeMap::new(),
    folded_retries: 0,
    folded_tags: 0,
    folded_allocated: Amount {
        bytes: 0,
        blocks: 0,
    },
});

pub(crate) fn session_lock() -> &'static RawLock {
    SESSION.raw()
}

pub(crate) fn begin_session(options: &Options, rss_at_start: u64) {
    let mut s = SESSION.lock();
    s.start_unix_ms = sys::unix_ms();
    s.rss_at_start = rss_at_start;
    s.options = Some(options.clone());
    s.attributes.clear();
    s.tasks.clear();
    s.tasks_dropped = 0;
    s.finished.clear();
    s.finished_tags.clear();
    s.folded.clear();
    s.folded_retries = 0;
    s.folded_tags = 0;
    s.folded_allocated = Amount::default();
    drop(s);
    timeline::clear();
}

pub(crate) fn set_attribute(key: &str, value: &str) {
    SESSION
        .lock()
        .attributes
        .insert(key.to_string(), value.to_string());
}

/// Tasks the task table keeps; descriptions of further tasks are counted
/// as dropped (a worker that runs for months must not grow without bound).
const MAX_TASKS: usize = 100_000;

/// Caller holds the guard: the strings are copied into recorder-owned
/// (untracked) memory and the caller's (recorded) ones are freed, so the
/// task table never shows up as the program's own surviving memory.
pub(crate) fn describe_task(task: u64, d: TaskDescription) {
    let mut s = SESSION.lock();
    if !s.tasks.contains_key(&task) && s.tasks.len() >= MAX_TASKS {
        s.tasks_dropped += 1;
        return;
    }
    let e = &mut s.tasks.entry(task).or_default().description;
    let own = |v: Option<String>| v.map(|x| x.as_str().to_owned());
    for (slot, v) in [
        (&mut e.name, d.name),
        (&mut e.external_id, d.external_id),
        (&mut e.actor, d.actor),
        (&mut e.queue, d.queue),
        (&mut e.outcome, d.outcome),
    ] {
        if v.is_some() {
            *slot = own(v);
        }
    }
}

/// What finishing a task folded: the tags' figures stay listed among the
/// newest [`KEEP_FINISHED_TAGS`]; each task all of whose tags were folded
/// keeps its record (with what its tags said) among the newest
/// [`KEEP_FINISHED`] finished tasks. Older ones are summed.
pub(crate) fn note_finished(done: Finished) {
    let mut s = SESSION.lock();
    for t in done.tags {
        s.finished_tags.push_back(t);
    }
    while s.finished_tags.len() > KEEP_FINISHED_TAGS {
        let Some(old) = s.finished_tags.pop_front() else {
            break;
        };
        s.sum_tag(&old);
    }
    for (task, span) in done.tasks {
        s.tasks.entry(task).or_default().finished = Some(span);
        s.finished.push_back(task);
    }
    while s.finished.len() > KEEP_FINISHED {
        let Some(old) = s.finished.pop_front() else {
            break;
        };
        s.sum_task(old);
    }
}

/// What idle folding folded (tags of tasks idle for a while, see
/// `tags`): summed at once. They are the oldest idle tasks, which a
/// profile sums anyway (`compact`), and listing them would only swell it.
pub(crate) fn note_idle_folded(done: Finished) {
    let mut s = SESSION.lock();
    for t in &done.tags {
        s.sum_tag(t);
    }
    for (task, span) in done.tasks {
        s.tasks.entry(task).or_default().finished = Some(span);
        s.sum_task(task);
    }
}

impl Session {
    fn sum_tag(&mut self, tag: &FoldedTag) {
        self.folded_tags += 1;
        self.folded_allocated.add(Amount {
            bytes: tag.alloc_bytes,
            blocks: tag.alloc_blocks,
        });
    }

    /// Sums a finished task's record away.
    fn sum_task(&mut self, task: u64) {
        let Some(record) = self.tasks.remove(&task) else {
            return;
        };
        self.folded_retries += record.finished.map_or(0, |f| f.retries) as u64;
        let outcome = record.description.outcome.unwrap_or_default();
        *self.folded.entry(outcome).or_default() += 1;
    }
}

/// Bytes the session uses (task records and attributes), estimated.
fn session_bytes(s: &Session) -> u64 {
    let text = |v: &Option<String>| v.as_ref().map_or(0, String::capacity);
    let tasks: usize = s
        .tasks
        .values()
        .map(|r| &r.description)
        .map(|d| {
            64 + text(&d.name)
                + text(&d.external_id)
                + text(&d.actor)
                + text(&d.queue)
                + text(&d.outcome)
        })
        .sum();
    let attributes: usize = s
        .attributes
        .iter()
        .map(|(k, v)| 64 + k.capacity() + v.capacity())
        .sum();
    let finished =
        s.finished.capacity() * 8 + s.finished_tags.capacity() * std::mem::size_of::<FoldedTag>();
    (tasks + attributes + s.folded.len() * 64 + finished) as u64
}

/// The recorder's own memory, table by table.
fn recorder_memory(session: u64) -> RecorderMemory {
    let mut m = RecorderMemory {
        live_table: LIVE.mapped_bytes() as u64,
        stacks: STACKS.memory_bytes(),
        tags: TAGS.memory_bytes(),
        threads: THREADS.memory_bytes(),
        timeline: timeline::memory_bytes(),
        session,
        total: 0,
    };
    m.total = m.live_table + m.stacks + m.tags + m.threads + m.timeline + m.session;
    m
}

/// Takes a profile of the current recording.
pub(crate) fn take() -> Profile {
    hooks::guarded(|| build(None, &GraphOptions::default()))
}

/// Takes a profile with a heap graph (version 2): a stop-the-world scan,
/// then owners, cycles and retainer chains.
pub(crate) fn take_with_graph(
    options: &GraphOptions,
    own: scan::OwnThread,
) -> Result<Profile, ScanError> {
    hooks::guarded(|| {
        let scan = scan::scan(own, options.stop_config(), options.exact)?;
        Ok(build(Some(scan), options))
    })
}

/// A profile whose graph is `scan`, made by a walk of its own (the Python
/// object graph) rather than by stopping the world.
pub(crate) fn take_with_scan(scan: ScanResult) -> Profile {
    hooks::guarded(|| build(Some(scan), &GraphOptions::default()))
}

fn build(scan: Option<ScanResult>, graph_options: &GraphOptions) -> Profile {
    let snapshot_ns = hooks::now_ns();
    // Live blocks: the scan's copy when there is one, so groups and graph
    // agree.
    let mut copied = Vec::new();
    let blocks: &[Block] = match &scan {
        Some(s) => s.blocks.as_slice(),
        None => {
            LIVE.copy_into(&mut copied, || THREADS.each().map(|t| &t.flight));
            &copied
        }
    };
    let n_stacks = STACKS.id_limit() as usize;
    let n_tags = TAGS.id_limit() as usize;
    let mut live = LiveSums::of(blocks, n_stacks, n_tags);
    let counted = Counted::collect(n_stacks);
    let session = SessionFacts::take();
    let tags = tag_table(n_tags, &live.by_tag, unit(), &session.finished_tags);
    let folded = folded_summary(&session);
    let tasks = task_table(&tags, n_tags, session.described);
    let sym = symbols::symbolize(n_stacks as u32);
    let (live_groups, graph) = match &scan {
        Some(scan) => graph_groups(scan, &sym, graph_options),
        None => (plain_groups(std::mem::take(&mut live.groups)), None),
    };
    let stack_stats = stack_stats(&live, &counted);
    let (timeline, timeline_decimated) = timeline::copy();
    let truncated_stacks = sym.stacks.iter().filter(|s| s.truncated).count() as u64;
    drop(copied);
    let mut profile = Profile {
        format: FORMAT_NAME.to_string(),
        version: if graph.is_some() {
            VERSION_V2
        } else {
            VERSION_V1
        },
        meta: Meta {
            rss_at_start_bytes: (session.rss_at_start > 0).then_some(session.rss_at_start),
            ..meta(
                snapshot_ns,
                session.start_unix_ms,
                &session.options,
                session.attributes,
            )
        },
        modules: sym.modules,
        frames: sym.frames,
        stacks: sym.stacks,
        tags,
        live: live_groups,
        stack_stats,
        tasks,
        folded,
        totals: totals(&live, &counted, snapshot_ns),
        timeline,
        dropped: Dropped {
            untracked_allocs: hooks::UNTRACKED_ALLOCS.load(Ordering::Relaxed),
            untracked_bytes: hooks::UNTRACKED_BYTES.load(Ordering::Relaxed),
            stacks_overflowed: STACKS.overflowed.load(Ordering::Relaxed),
            truncated_stacks,
            timeline_points: 0,
            tags_overflowed: TAGS.overflowed.load(Ordering::Relaxed),
            tasks: session.tasks_dropped,
            timeline_decimated,
        },
        graph,
        recorder: Some(recorder_memory(session.bytes)),
    };
    // Tasks that hold nothing and are not running, beyond the newest, are
    // summed (tags of finished tasks, past `n_tags`, are already bounded).
    compact::fold_idle_tasks(&mut profile, n_tags as u32, compact::KEEP_IDLE_TASKS);
    profile
}

/// Block counters count in units of 1/`unit` block (see `Config`).
fn unit() -> u64 {
    CONFIG.block_unit.load(Ordering::Relaxed).max(1)
}

/// An amount in counter units, in blocks.
fn in_blocks(a: Amount) -> Amount {
    let unit = unit();
    Amount {
        bytes: a.bytes,
        blocks: (a.blocks + unit / 2) / unit,
    }
}

/// Live blocks summed by stack, by tag and by (stack, tag).
struct LiveSums {
    by_stack: Vec<Amount>,
    by_tag: Vec<Amount>,
    groups: FxHashMap<(u32, u32), Amount>,
    total: Amount,
}

impl LiveSums {
    fn of(blocks: &[Block], n_stacks: usize, n_tags: usize) -> LiveSums {
        let mut sums = LiveSums {
            by_stack: vec![Amount::default(); n_stacks],
            by_tag: vec![Amount::default(); n_tags],
            groups: FxHashMap::default(),
            total: Amount::default(),
        };
        for b in blocks {
            let (bytes, units) = hooks::weight_of(b.size);
            let a = Amount {
                bytes,
                blocks: units,
            };
            if let Some(s) = sums.by_stack.get_mut(b.stack as usize) {
                s.add(a);
            }
            if let Some(t) = sums.by_tag.get_mut(b.tag as usize) {
                t.add(a);
            }
            sums.groups.entry((b.stack, b.tag)).or_default().add(a);
        }
        sums.total = sums.by_stack.iter().fold(Amount::default(), |mut acc, a| {
            acc.add(*a);
            acc
        });
        sums
    }
}

/// What the per-thread counters say: allocated totals (overall and per
/// stack) and each stack's live amount at the last peak.
struct Counted {
    allocated: Amount,
    by_stack: Vec<Amount>,
    at_peak: Vec<Amount>,
}

impl Counted {
    fn collect(n_stacks: usize) -> Counted {
        let generation = PEAK_GEN.load(Ordering::Relaxed);
        let mut c = Counted {
            allocated: Amount::default(),
            by_stack: vec![Amount::default(); n_stacks],
            at_peak: vec![Amount::default(); n_stacks],
        };
        for ts in THREADS.each() {
            c.allocated.bytes += ts.alloc_bytes.get();
            c.allocated.blocks += ts.alloc_blocks.get();
            for id in 0..n_stacks {
                if let Some(s) = ts.peek_stack(id as u32) {
                    c.by_stack[id].bytes += s.alloc_bytes.get();
                    c.by_stack[id].blocks += s.alloc_blocks.get();
                    let (bytes, blocks) = s.live_at(generation);
                    let p = &mut c.at_peak[id];
                    p.bytes = p.bytes.wrapping_add(bytes);
                    p.blocks = p.blocks.wrapping_add(blocks);
                }
            }
        }
        c
    }
}

/// The session's facts, copied out from under its lock.
struct SessionFacts {
    options: Options,
    attributes: BTreeMap<String, String>,
    described: BTreeMap<u64, TaskRecord>,
    tasks_dropped: u64,
    start_unix_ms: u64,
    rss_at_start: u64,
    finished_tags: Vec<FoldedTag>,
    folded: BTreeMap<String, u64>,
    folded_retries: u64,
    folded_tags: u64,
    folded_allocated: Amount,
    bytes: u64,
}

impl SessionFacts {
    fn take() -> SessionFacts {
        let s = SESSION.lock();
        SessionFacts {
            options: s.options.clone().unwrap_or_default(),
            attributes: s.attributes.clone(),
            described: s.tasks.clone(),
            tasks_dropped: s.tasks_dropped,
            start_unix_ms: s.start_unix_ms,
            rss_at_start: s.rss_at_start,
            finished_tags: s.finished_tags.iter().copied().collect(),
            folded: s.folded.clone(),
            folded_retries: s.folded_retries,
            folded_tags: s.folded_tags,
            folded_allocated: s.folded_allocated,
            bytes: session_bytes(&s),
        }
    }
}

/// Live groups by owner, via and reachability, and the graph section.
fn graph_groups(
    scan: &ScanResult,
    sym: &symbols::Symbolized,
    options: &GraphOptions,
) -> (Vec<LiveGroup>, Option<crate::format::Graph>) {
    let tag_of = |id: u32| TAGS.get(id).unwrap_or_default();
    let names = heapgraph::Names {
        stacks: &sym.stacks,
        frames: &sym.frames,
        tag: &tag_of,
    };
    let converted = heapgraph::convert(scan, &names, options, hooks::weight_of);
    (sorted(converted.live), Some(converted.graph))
}

/// Live groups by (stack, tag).
fn plain_groups(groups: FxHashMap<(u32, u32), Amount>) -> Vec<LiveGroup> {
    let live = groups
        .into_iter()
        .map(|((stack, tag), a)| {
            let a = in_blocks(a);
            LiveGroup {
                stack,
                tag,
                blocks: a.blocks,
                bytes: a.bytes,
                ..LiveGroup::default()
            }
        })
        .collect();
    sorted(live)
}

/// Largest first, then by stack and tag.
fn sorted(mut live: Vec<LiveGroup>) -> Vec<LiveGroup> {
    live.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(a.stack.cmp(&b.stack))
            .then(a.tag.cmp(&b.tag))
    });
    live
}

/// Per-stack allocated, at-peak and live amounts. At the peak means the
/// last peak generation's amounts, unless now is at least as high.
fn stack_stats(live: &LiveSums, counted: &Counted) -> Vec<StackStats> {
    let at_peak_now = live.total.bytes as i64 >= hooks::PEAK_BYTES.load(Ordering::Relaxed);
    (0..live.by_stack.len())
        .filter(|&id| counted.by_stack[id].blocks > 0 || live.by_stack[id].blocks > 0)
        .map(|id| StackStats {
            stack: id as u32,
            allocated: in_blocks(counted.by_stack[id]),
            at_peak: in_blocks(if at_peak_now {
                live.by_stack[id]
            } else {
                counted.at_peak[id]
            }),
            live: in_blocks(live.by_stack[id]),
        })
        .collect()
}

fn meta(
    snapshot_ns: u64,
    start_unix_ms: u64,
    options: &Options,
    attributes: BTreeMap<String, String>,
) -> Meta {
    let mean = CONFIG.sample_mean.load(Ordering::Relaxed);
    Meta {
        program: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        args: std::env::args().collect(),
        pid: std::process::id(),
        start_unix_ms,
        snapshot_ns,
        rss_at_start_bytes: None,
        leakprof_version: env!("CARGO_PKG_VERSION").to_string(),
        options: RecordOptions {
            mode: if mean == 0 { Mode::Full } else { Mode::Sampled },
            sample_mean_bytes: (mean != 0).then_some(mean),
            max_frames: CONFIG.max_frames.load(Ordering::Relaxed),
            timeline_interval_ms: options.timeline_interval.map(|d| d.as_millis() as u64),
        },
        attributes,
    }
}

fn totals(live: &LiveSums, counted: &Counted, snapshot_ns: u64) -> Totals {
    let total = live.total;
    let peak_bytes = (hooks::PEAK_BYTES.load(Ordering::Relaxed).max(0) as u64).max(total.bytes);
    let peak_blocks = (hooks::PEAK_BLOCKS.load(Ordering::Relaxed).max(0) as u64).max(total.blocks);
    let peak_ns = if peak_bytes == total.bytes {
        snapshot_ns
    } else {
        hooks::PEAK_NS.load(Ordering::Relaxed)
    };
    let threads = THREADS.active_count() as u64;
    Totals {
        live: in_blocks(total),
        peak: in_blocks(Amount {
            bytes: peak_bytes,
            blocks: peak_blocks,
        }),
        peak_error_bytes: threads.saturating_sub(1) * hooks::FLUSH_BYTES as u64,
        peak_ns,
        allocated: in_blocks(counted.allocated),
        rss_bytes: sys::rss_bytes(),
    }
}

/// What finished tasks and tags summed away add up to, if any were.
fn folded_summary(s: &SessionFacts) -> Option<Folded> {
    let tasks: u64 = s.folded.values().sum();
    (s.folded_tags > 0 || tasks > 0).then(|| Folded {
        tasks,
        tags: s.folded_tags,
        retries: s.folded_retries,
        allocated: in_blocks(s.folded_allocated),
        outcomes: s.folded.clone(),
    })
}

/// The tags in the table (index = id), then the listed tags of finished
/// tasks (folded out of the table; no live memory refers to them).
fn tag_table(
    n_tags: usize,
    tag_live: &[Amount],
    unit: u64,
    finished: &[FoldedTag],
) -> Vec<TagInfo> {
    // Allocations not yet flushed from threads' pending tag counters.
    let mut pending: FxHashMap<u32, Amount> = FxHashMap::default();
    for ts in THREADS.each() {
        let a = Amount {
            bytes: ts.tag_alloc_bytes.get(),
            blocks: ts.tag_alloc_blocks.get(),
        };
        if a.blocks > 0 {
            pending
                .entry(ts.tag_id.load(Ordering::Relaxed))
                .or_default()
                .add(a);
        }
    }
    let per_unit = |v: u64| (v + unit / 2) / unit;
    (0..n_tags)
        .map(|id| {
            let tag = TAGS.get(id as u32).unwrap_or_default();
            let live = tag_live.get(id).copied().unwrap_or_default();
            let mut info = TagInfo {
                id: id as u32,
                task: tag.task_id(),
                retry: tag.retry_number(),
                label: tag.label_name().map(str::to_string),
                type_name: tag.type_name_str().map(str::to_string),
                live: Amount {
                    bytes: live.bytes,
                    blocks: per_unit(live.blocks),
                },
                ..TagInfo::default()
            };
            if let Some(e) = TAGS.entry(id as u32) {
                let nonzero = |v: u64| (v != 0).then_some(v);
                info.first_ns = nonzero(e.first_ns.load(Ordering::Relaxed));
                info.last_ns = nonzero(e.last_ns.load(Ordering::Relaxed));
                info.active = e.active.load(Ordering::Relaxed) > 0;
                let p = pending.get(&(id as u32)).copied().unwrap_or_default();
                info.allocated = Amount {
                    bytes: e.alloc_bytes.load(Ordering::Relaxed) + p.bytes,
                    blocks: per_unit(e.alloc_blocks.load(Ordering::Relaxed) + p.blocks),
                };
                info.peak = Amount {
                    bytes: (e.peak_bytes.load(Ordering::Relaxed).max(0) as u64).max(live.bytes),
                    blocks: per_unit(
                        (e.peak_blocks.load(Ordering::Relaxed).max(0) as u64).max(live.blocks),
                    ),
                };
            }
            info
        })
        .chain(finished.iter().enumerate().map(|(k, f)| TagInfo {
            id: (n_tags + k) as u32,
            task: f.tag.task_id(),
            retry: f.tag.retry_number(),
            label: f.tag.label_name().map(str::to_string),
            type_name: f.tag.type_name_str().map(str::to_string),
            allocated: Amount {
                bytes: f.alloc_bytes,
                blocks: per_unit(f.alloc_blocks),
            },
            peak: Amount {
                bytes: f.peak_bytes.max(0) as u64,
                blocks: per_unit(f.peak_blocks.max(0) as u64),
            },
            first_ns: (f.first_ns != 0).then_some(f.first_ns),
            last_ns: (f.last_ns != 0).then_some(f.last_ns),
            ..TagInfo::default()
        }))
        .collect()
}

/// Tasks: those described through the API (or finished), plus every task
/// seen in a tag of the table (the first `in_table` tags; the listed tags
/// of finished tasks only add to tasks still listed), with retries and
/// first/last times gathered from its tags.
fn task_table(
    tags: &[TagInfo],
    in_table: usize,
    described: BTreeMap<u64, TaskRecord>,
) -> Vec<TaskInfo> {
    let mut tasks: BTreeMap<u64, TaskInfo> = described
        .into_iter()
        .map(|(task, r)| {
            let d = r.description;
            let info = TaskInfo {
                task,
                name: d.name,
                external_id: d.external_id,
                actor: d.actor,
                queue: d.queue,
                outcome: d.outcome,
                retries: r.finished.map_or(0, |f| f.retries),
                first_ns: r.finished.map(|f| f.first_ns).filter(|&t| t != 0),
                last_ns: r.finished.map(|f| f.last_ns).filter(|&t| t != 0),
            };
            (task, info)
        })
        .collect();
    for (k, t) in tags.iter().enumerate() {
        let Some(task) = t.task else { continue };
        let e = match tasks.entry(task) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) if k < in_table => v.insert(TaskInfo {
                task,
                ..TaskInfo::default()
            }),
            std::collections::btree_map::Entry::Vacant(_) => continue,
        };
        e.retries = e.retries.max(t.retry.unwrap_or(0));
        if let Some(f) = t.first_ns {
            e.first_ns = Some(e.first_ns.map_or(f, |x| x.min(f)));
        }
        if let Some(l) = t.last_ns {
            e.last_ns = Some(e.last_ns.map_or(l, |x| x.max(l)));
        }
    }
    tasks.into_values().collect()
}
