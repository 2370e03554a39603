//! Leak analysis beyond the partition table: memory that outlived the task
//! (or retry) that allocated it, and growth per retry and per task.
//!
//! A tag records when code first and last ran under it and whether it was
//! still running at snapshot time. A block whose tag had stopped running
//! before the snapshot outlived the work that made it: that is MRQ's
//! per-job "leaked types" report, grouped here by site and type. Tags that
//! never recorded a time are left out, not guessed about.
//!
//! Some of that memory is not the task's: a runtime or library allocates
//! for itself while the task runs (tokio's per-worker `Defer` buffer, a
//! library's lazily filled cache) and keeps it from its own statics,
//! thread-locals or worker frames. With a heap graph, a block is *kept by
//! the runtime* when all of these hold:
//!
//! - no labelled owner holds it (a registered owner, or a tag label),
//! - what refers to it is a root: a static, a thread-local or a thread's
//!   stack (`root: static …`, `root: tls`, `root: stack`; not a
//!   registered container), and
//! - that root is not the program's own crate's: a named static by its
//!   path (`tokio::runtime::context::CONTEXT` is tokio's), a thread-local,
//!   a stack or an unnamed static by the crate of the block's allocation
//!   site (tokio's `Defer` buffer, made in
//!   `tokio::runtime::scheduler::defer::Defer::defer` and held by the
//!   worker's scheduler context on its stack, is tokio's).
//!
//! In a Python profile, a block the interpreter keeps for itself (on one
//! of its free lists, or a name its type cache holds: `root: interpreter
//! …`, see `record::python::objects`) is kept by the runtime as well: the
//! task freed it, or only named an attribute. So is one a local of
//! leakprof's own running code holds while it writes the profile
//! (`format::PYTHON_OWN_FRAMES_ROOT`): the interpreter may have reused a
//! block the task freed onto a free list, which keeps the task's tag.
//!
//! Such blocks are listed apart and left out of the task-scoped figures.
//! A block deeper under a library's root (a map entry's buffer) is
//! referred to by its holder, not by the root, and stays the task's; so
//! does one the program's own code allocated, wherever it is kept.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::model::Model;
use super::partition::percent;
use super::{signed_change, Accumulate};
use crate::format::{events, Amount, LiveGroup, Profile, TagInfo, TaskInfo};

/// True when code stopped running under this tag before the snapshot:
/// the tag belongs to a task or retry and recorded when it last ran.
pub fn tag_has_ended(tag: &TagInfo, snapshot_ns: u64) -> bool {
    (tag.task.is_some() || tag.retry.is_some())
        && !tag.active
        && tag.last_ns.is_some_and(|t| t <= snapshot_ns)
}

/// The memory of one (site, type) cell and the tasks that left it.
type LeakCell = (Amount, HashSet<Option<u64>>);

/// One (site, type) row of the task-scoped leak report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeakRow {
    pub index: usize,
    pub site: String,
    pub type_name: String,
    pub count: u64,
    pub size: u64,
    pub size_pct: f64,
    /// Distinct tasks (untagged retries count as one) that left such blocks.
    pub tasks: usize,
}

/// Memory still alive after the task or retry that allocated it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskScopedLeaks {
    pub total: Amount,
    pub rows: Vec<LeakRow>,
    /// The same memory per task id, ascending.
    pub per_task: Vec<TaskLeak>,
    /// Memory of ended tasks that a runtime or library keeps from its own
    /// statics, thread-locals or frames (see the module doc): not in
    /// `total`, `rows` or `per_task`.
    pub kept_by_runtime: Amount,
    /// The same by root, site and type, largest first.
    pub runtime_rows: Vec<RuntimeRow>,
}

/// One (root, site, type) row of the memory kept by a runtime or library.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuntimeRow {
    /// The root that refers to the blocks.
    pub root: String,
    pub site: String,
    pub type_name: String,
    pub count: u64,
    pub size: u64,
    /// Distinct tasks whose tags the blocks carry.
    pub tasks: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskLeak {
    pub task: Option<u64>,
    pub name: Option<String>,
    pub leaked: Amount,
}

impl TaskScopedLeaks {
    pub fn of(model: &Model<'_>) -> TaskScopedLeaks {
        let p = model.profile;
        let ended: Vec<bool> = p
            .tags
            .iter()
            .map(|t| tag_has_ended(t, p.meta.snapshot_ns))
            .collect();
        let leaked = p.live.iter().filter(|g| ended[g.tag as usize]);
        let own = own_crate(&p.meta.program);
        let mut by_row: HashMap<(&str, &str), LeakCell> = HashMap::new();
        let mut by_task: BTreeMap<Option<u64>, Amount> = BTreeMap::new();
        let mut by_runtime: HashMap<(&str, &str, &str), LeakCell> = HashMap::new();
        let mut total = Amount::default();
        let mut kept_by_runtime = Amount::default();
        for g in leaked {
            let a = amount(g);
            let task = p.tags[g.tag as usize].task;
            if let Some(root) = runtime_root(model, g, &own) {
                let entry = by_runtime
                    .entry((root, model.site(g), model.type_name(g)))
                    .or_default();
                entry.0.accumulate(a);
                entry.1.insert(task);
                kept_by_runtime.accumulate(a);
                continue;
            }
            let entry = by_row
                .entry((model.site(g), model.type_name(g)))
                .or_default();
            entry.0.accumulate(a);
            entry.1.insert(task);
            by_task.entry(task).or_default().accumulate(a);
            total.accumulate(a);
        }
        let mut rows: Vec<((&str, &str), LeakCell)> = by_row.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.bytes.cmp(&a.1 .0.bytes).then(a.0.cmp(&b.0)));
        let rows = rows
            .into_iter()
            .enumerate()
            .map(|(index, ((site, ty), (a, tasks)))| LeakRow {
                index,
                site: site.to_string(),
                type_name: ty.to_string(),
                count: a.blocks,
                size: a.bytes,
                size_pct: percent(a.bytes, total.bytes),
                tasks: tasks.len(),
            })
            .collect();
        let names = task_names(p);
        let per_task = by_task
            .into_iter()
            .map(|(task, leaked)| TaskLeak {
                task,
                name: task.and_then(|t| names.get(&t).cloned()),
                leaked,
            })
            .collect();
        let mut runtime_rows: Vec<RuntimeRow> = by_runtime
            .into_iter()
            .map(|((root, site, ty), (a, tasks))| RuntimeRow {
                root: root.to_string(),
                site: site.to_string(),
                type_name: ty.to_string(),
                count: a.blocks,
                size: a.bytes,
                tasks: tasks.len(),
            })
            .collect();
        runtime_rows.sort_by(|a, b| {
            b.size.cmp(&a.size).then_with(|| {
                (&a.root, &a.site, &a.type_name).cmp(&(&b.root, &b.site, &b.type_name))
            })
        });
        TaskScopedLeaks {
            total,
            rows,
            per_task,
            kept_by_runtime,
            runtime_rows,
        }
    }
}

/// The program's own crate, from its executable's name (`apalis-worker`
/// is the crate `apalis_worker`; cargo's test binaries end in
/// `-<16 hex digits>`, which is dropped).
fn own_crate(program: &str) -> String {
    let file = program.rsplit('/').next().unwrap_or(program);
    let file = match file.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => file,
    };
    file.replace('-', "_")
}

/// The crate a path names (`tokio` of `<tokio::runtime::Defer>::defer`);
/// `None` for a name with no path (a C symbol, "unknown").
fn crate_of(path: &str) -> Option<&str> {
    let path = path.trim_start_matches(['<', '&', '*', ' ']);
    let path = path.strip_prefix("mut ").unwrap_or(path);
    path.split_once("::").map(|(krate, _)| krate)
}

/// The static or thread-local root of a runtime or library that keeps
/// this group's blocks, if it is one (the rule is in the module doc).
fn runtime_root<'m>(model: &'m Model<'_>, g: &LiveGroup, own: &str) -> Option<&'m str> {
    let graph = model.profile.graph.as_ref()?;
    let labelled = g
        .owner
        .and_then(|o| graph.owners.get(o as usize))
        .is_some_and(|o| o.kind == "labelled");
    if labelled || model.profile.tags[g.tag as usize].label.is_some() {
        return None;
    }
    let root = graph.vias.get(g.via? as usize)?.holder.as_str();
    // A Python interpreter's free lists and type cache, and what
    // leakprof's own running code holds while it writes the profile (see
    // `record::python::objects`): memory no task keeps.
    let python_kept = ["interpreter ", crate::format::PYTHON_OWN_FRAMES_ROOT];
    if root
        .strip_prefix("root: ")
        .is_some_and(|r| python_kept.iter().any(|p| r.starts_with(p)))
    {
        return Some(root);
    }
    let named = match root.strip_prefix("root: static") {
        Some(rest) => rest.trim_start().split_once('!').map(|(_, symbol)| symbol),
        None if root == "root: tls" || root == "root: stack" => None,
        None => return None,
    };
    let holder_crate = match named {
        // A named static with no path (a C library's) is not the program's.
        Some(symbol) => crate_of(symbol).unwrap_or(""),
        None => crate_of(model.function_of(g))?,
    };
    (holder_crate != own).then_some(root)
}

/// Display name of each described task: its name, else its actor.
fn task_names(p: &Profile) -> HashMap<u64, String> {
    p.tasks
        .iter()
        .filter_map(|t| Some((t.task, t.name.clone().or_else(|| t.actor.clone())?)))
        .collect()
}

fn amount(g: &LiveGroup) -> Amount {
    Amount {
        bytes: g.bytes,
        blocks: g.blocks,
    }
}

/// Memory of one retry number across all tasks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryGrowth {
    pub retry: u32,
    /// Live at snapshot from blocks allocated during this retry.
    pub surviving: Amount,
    /// Everything allocated during this retry.
    pub allocated: Amount,
    /// Live bytes of the whole process at this retry's last `after failure`
    /// point, and the change since the previous retry's.
    pub live_after_failure_bytes: Option<u64>,
    pub growth_bytes: Option<i64>,
}

/// Per-retry growth, ascending by retry.
pub fn per_retry(profile: &Profile) -> Vec<RetryGrowth> {
    let mut by_retry: BTreeMap<u32, (Amount, Amount)> = BTreeMap::new();
    for t in &profile.tags {
        if let Some(r) = t.retry {
            let e = by_retry.entry(r).or_default();
            e.0.accumulate(t.live);
            e.1.accumulate(t.allocated);
        }
    }
    let mut after_failure: BTreeMap<u32, u64> = BTreeMap::new();
    for p in &profile.timeline {
        if let (Some(events::AFTER_FAILURE), Some(r)) = (p.event.as_deref(), p.retry) {
            after_failure.insert(r, p.live_bytes);
            by_retry.entry(r).or_default();
        }
    }
    let mut previous: Option<u64> = None;
    by_retry
        .into_iter()
        .map(|(retry, (surviving, allocated))| {
            let live = after_failure.get(&retry).copied();
            let growth = match (live, previous) {
                (Some(now), Some(before)) => Some(signed_change(before, now)),
                _ => None,
            };
            if live.is_some() {
                previous = live;
            }
            RetryGrowth {
                retry,
                surviving,
                allocated,
                live_after_failure_bytes: live,
                growth_bytes: growth,
            }
        })
        .collect()
}

/// Memory of one task across its retries.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskGrowth {
    pub task: u64,
    pub name: Option<String>,
    pub retries: u32,
    pub outcome: Option<String>,
    /// Live at snapshot from blocks this task allocated.
    pub surviving: Amount,
    pub allocated: Amount,
    /// Surviving bytes divided by attempts (retries + 1).
    pub surviving_per_attempt_bytes: u64,
}

/// Per-task growth, ascending by task id.
pub fn per_task(profile: &Profile) -> Vec<TaskGrowth> {
    let mut by_task: BTreeMap<u64, (Amount, Amount, u32)> = BTreeMap::new();
    for t in &profile.tags {
        if let Some(task) = t.task {
            let e = by_task.entry(task).or_default();
            e.0.accumulate(t.live);
            e.1.accumulate(t.allocated);
            e.2 = e.2.max(t.retry.unwrap_or(0));
        }
    }
    for info in &profile.tasks {
        let e = by_task.entry(info.task).or_default();
        e.2 = e.2.max(info.retries);
    }
    let infos: HashMap<u64, &TaskInfo> = profile.tasks.iter().map(|t| (t.task, t)).collect();
    by_task
        .into_iter()
        .map(|(task, (surviving, allocated, retries))| {
            let info = infos.get(&task);
            TaskGrowth {
                task,
                name: info.and_then(|i| i.name.clone().or_else(|| i.actor.clone())),
                retries,
                outcome: info.and_then(|i| i.outcome.clone()),
                surviving,
                allocated,
                surviving_per_attempt_bytes: surviving.bytes / (retries as u64 + 1),
            }
        })
        .collect()
}
