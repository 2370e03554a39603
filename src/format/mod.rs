//! The profile file: the one contract between the recorder and everything
//! that reads its output.
//!
//! A profile is a versioned JSON document (see `docs/FORMAT.md`). The recorder
//! writes it, the analysis and renderers read it, and nothing else is shared
//! between the two sides. Its size grows with the number of distinct
//! (stack, tag) pairs, never with the number of allocations.
//!
//! This module owns the types, atomic saving and strict loading: a file of a
//! newer or unknown version, a file that is not a profile, or a corrupt or
//! truncated file is rejected with an error that names the file and what is
//! wrong.
//!
//! Compatibility (docs/FORMAT.md, "Versions and compatibility"): within a
//! version, writers only add optional fields (`#[serde(default)]`) and
//! readers ignore fields they do not know, so no type here denies unknown
//! fields. Anything an older reader of the same version would misread
//! (a field removed, renamed or made required, a changed meaning or unit,
//! a new enum value) takes a new version; every version stays readable.

pub mod compact;
pub mod frame_names;
mod load;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use load::{load, load_bytes, LoadError};

/// The value of the `format` key in every profile.
pub const FORMAT_NAME: &str = "leakprof-profile";

/// Version written by this build when the profile carries no heap graph.
pub const VERSION_V1: u32 = 1;

/// Version written when the optional heap-graph section is present.
pub const VERSION_V2: u32 = 2;

/// Versions this build can read: every version ever written, so a file
/// from an older writer always loads.
pub const SUPPORTED_VERSIONS: &[u32] = &[VERSION_V1, VERSION_V2];

/// A saved profile: everything the reporter knows about one process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// One of [`SUPPORTED_VERSIONS`].
    pub version: u32,
    pub meta: Meta,
    /// Loaded modules, so addresses can be re-symbolized offline.
    #[serde(default)]
    pub modules: Vec<Module>,
    /// Symbolized frames; a stack refers to them by index.
    pub frames: Vec<Frame>,
    /// Unique stacks; allocations refer to them by index (the stack id).
    pub stacks: Vec<Stack>,
    /// Tags seen while recording; index 0 is always the untagged tag.
    pub tags: Vec<TagInfo>,
    /// Surviving (live) memory, aggregated by (stack, tag[, owner]).
    pub live: Vec<LiveGroup>,
    /// Per-stack aggregates: total allocated, at the global peak, at snapshot.
    pub stack_stats: Vec<StackStats>,
    /// Tasks described through the API (message id, actor, queue, ...).
    #[serde(default)]
    pub tasks: Vec<TaskInfo>,
    /// Finished tasks folded away (nothing they allocated survived): their
    /// tags and task records are summed here instead of listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded: Option<Folded>,
    pub totals: Totals,
    /// Periodic samples and marked events, in time order.
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
    pub dropped: Dropped,
    /// The heap graph (version 2 only): owners, cycles and retainer chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<Graph>,
    /// The recorder's own memory at the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<RecorderMemory>,
}

/// Finished tasks whose tags were folded (see `leakprof::finish_task`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Folded {
    /// Tasks all of whose tags were folded (their task records too).
    pub tasks: u64,
    /// Tags folded (a task has one per attempt).
    pub tags: u64,
    /// The folded tasks' retries: each one's highest retry number, summed.
    #[serde(default)]
    pub retries: u64,
    /// What the folded tags allocated in all.
    pub allocated: Amount,
    /// Folded tasks by their last described outcome ("succeeded",
    /// "dead-lettered", ...; "" when none was described).
    #[serde(default)]
    pub outcomes: BTreeMap<String, u64>,
}

/// The recorder's own memory, by table (bytes in use, estimated from each
/// table's size; reserved but untouched address space is not counted).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecorderMemory {
    /// The live table's slots.
    pub live_table: u64,
    /// Interned stacks (entries, frames and hash slots in use).
    pub stacks: u64,
    /// Tag entries handed out and the tag index.
    pub tags: u64,
    /// Per-thread states and their per-stack counters.
    pub threads: u64,
    /// The timeline buffer.
    pub timeline: u64,
    /// Task records and attributes.
    pub session: u64,
    /// The sum.
    pub total: u64,
}

/// Facts about the recorded process and how it was recorded.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub pid: u32,
    /// Wall-clock time recording started, ms since the Unix epoch.
    pub start_unix_ms: u64,
    /// Time of this snapshot, ns since recording started.
    pub snapshot_ns: u64,
    /// The process's RSS just before recording started: memory the
    /// recorder never saw allocated (code, libraries, what was allocated
    /// before `Recorder::start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_at_start_bytes: Option<u64>,
    pub leakprof_version: String,
    pub options: RecordOptions,
    /// Free-form facts a program attaches (scenario, middleware, broker, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// How the recorder was configured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RecordOptions {
    /// `full`: every allocation recorded; `sampled`: Poisson sampling by bytes
    /// and every byte/block figure in the profile is an unbiased estimate.
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_mean_bytes: Option<u64>,
    pub max_frames: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_interval_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Full,
    Sampled,
}

/// A loaded object file (executable or shared library).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Module {
    pub path: String,
    /// GNU build-id, lowercase hex, when the module has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Load bias: runtime address minus link-time address.
    pub load_address: u64,
    /// Lowest and highest runtime address of its executable segments.
    pub start: u64,
    pub end: u64,
}

/// One symbolized frame. An instruction address whose code was inlined
/// yields several frames, innermost first, all with the same `address`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name, or `0x...` when unknown.
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Runtime instruction address (return address minus one).
    pub address: u64,
    /// Index into `modules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<u32>,
    /// True for a frame that was inlined into its caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

/// A unique call stack, allocation site first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stack {
    /// Indices into `frames`, innermost (allocation site) first.
    pub frames: Vec<u32>,
    /// True when the depth limit cut the walk short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A byte and block count pair.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Amount {
    pub bytes: u64,
    pub blocks: u64,
}

impl Amount {
    pub fn add(&mut self, other: Amount) {
        self.bytes += other.bytes;
        self.blocks += other.blocks;
    }
}

/// A tag: what the program was doing when memory was allocated.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TagInfo {
    /// Equal to this tag's index in `tags`; 0 is the untagged tag.
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// Owner scope or free-form label ("error value", "result slot", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Type name carried by an owner scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// First and last time code ran under this tag, ns since recording
    /// started (first and last poll of a tagged future).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ns: Option<u64>,
    /// True while code was running under this tag at snapshot time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub active: bool,
    /// Live at snapshot, allocated in total, and the largest live amount
    /// observed (sampled at global-peak updates, timeline ticks and snapshot).
    pub live: Amount,
    pub allocated: Amount,
    pub peak: Amount,
}

/// Surviving memory of one (stack, tag) pair, split further by owner when a
/// heap graph was taken.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LiveGroup {
    pub stack: u32,
    pub tag: u32,
    pub blocks: u64,
    pub bytes: u64,
    /// Index into `graph.owners` (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// Index into `graph.vias` (version 2): how the block is referred to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<u32>,
    /// Version 2: no path from any root reaches these blocks (a true leak).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreachable: bool,
    /// Index into `graph.types`: the blocks' own type, where the graph
    /// knows it per block (a Python object graph); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<u32>,
}

/// Per-stack aggregates (DHAT's total / at-t-gmax / at-t-end).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StackStats {
    pub stack: u32,
    /// Everything ever allocated from this stack while recording.
    pub allocated: Amount,
    /// Live from this stack at the (approximate) global peak.
    pub at_peak: Amount,
    /// Live from this stack at snapshot time.
    pub live: Amount,
}

/// A task described through the API; tags refer to it by `task`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskInfo {
    pub task: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An id from outside, such as a Dramatiq message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Highest retry number seen under this task's tags.
    #[serde(default)]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ns: Option<u64>,
    /// Free-form final state ("succeeded", "retrying", "dead-lettered", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// Whole-process aggregates.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Recorded memory alive at snapshot (memory allocated before recording
    /// started is not included).
    pub live: Amount,
    /// Largest live amount seen; may be below the true peak by at most
    /// `peak_error_bytes` (see docs/FORMAT.md).
    pub peak: Amount,
    pub peak_error_bytes: u64,
    /// Time of the peak, ns since recording started.
    #[serde(default)]
    pub peak_ns: u64,
    /// Everything allocated while recording.
    pub allocated: Amount,
    /// Resident set size of the process at snapshot time.
    #[serde(default)]
    pub rss_bytes: u64,
}

/// One point on the memory timeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// ns since recording started.
    pub t_ns: u64,
    pub rss_bytes: u64,
    pub live_bytes: u64,
    pub live_blocks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// `None` for a periodic sample; otherwise the marked event, such as
    /// "before allocation", "after allocation" or "after failure".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// What the recorder could not record, so readers know the profile's limits.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dropped {
    /// Allocations passed through untracked (metadata exhausted, table full).
    pub untracked_allocs: u64,
    pub untracked_bytes: u64,
    /// Allocations recorded with the overflow stack because the stack table
    /// was full.
    pub stacks_overflowed: u64,
    /// Stacks cut at the depth limit.
    pub truncated_stacks: u64,
    /// Timeline samples lost because the timeline buffer was full.
    #[serde(default)]
    pub timeline_points: u64,
    /// Tags that could not be interned (table full); their allocations
    /// were recorded untagged.
    #[serde(default)]
    pub tags_overflowed: u64,
    /// Task descriptions not kept because the task table was full.
    #[serde(default)]
    pub tasks: u64,
    /// Older timeline points merged away to bound the recorder's memory
    /// (each bucket of 8 keeps its lowest and highest live and RSS points).
    #[serde(default)]
    pub timeline_decimated: u64,
}

/// The heap graph of a version-2 profile: who holds the memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Graph {
    /// Blocks and bytes scanned, pointers found, and how long the world was
    /// stopped for the scan.
    pub scanned: Amount,
    pub edges: u64,
    pub pause_ns: u64,
    /// How other threads' stacks were captured ("signals" or "quiescent"),
    /// in words.
    pub thread_roots: String,
    /// How the world stood still for the scan (absent in older profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopStats>,
    /// Owners: labelled objects grouped by label, and site groups for memory
    /// with no labelled holder. `LiveGroup::owner` indexes this.
    pub owners: Vec<Owner>,
    /// Referring paths (`LiveGroup::via` indexes this).
    #[serde(default)]
    pub vias: Vec<Via>,
    /// Unreachable strongly connected groups: true leaks.
    #[serde(default)]
    pub cycles: Vec<Cycle>,
    /// Objects kept for offline retainer chains.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// How much of the heap was read by the program's types (absent in
    /// older profiles and for the conservative scan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// Set for a Python object graph: its unreachable blocks are cyclic
    /// garbage awaiting Python's collector (absent in older profiles and
    /// for Rust heaps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonGraph>,
    /// Block types by name, for `LiveGroup::object_type` (a Python object
    /// graph's; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
}

/// How a Python profile's graph names a root held by leakprof's own
/// running code (the profile writer's locals): the tool's memory at that
/// moment, which no task keeps.
pub const PYTHON_OWN_FRAMES_ROOT: &str = "leakprof's own running code: ";

/// How a Python object graph was taken: objects from the collector's own
/// lists and the references their types' traversal shows, reachability as
/// the collector decides it (reference counts minus the references found
/// inside the graph), taken with the collector paused so nothing is freed
/// meanwhile.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PythonGraph {
    /// Objects found: those the collector tracks plus every object they
    /// refer to.
    pub objects: u64,
    /// Of those, objects in a recorded block (the others are static or
    /// were allocated before recording started).
    pub recorded: u64,
    /// Objects referred to from outside the object graph (C code, a
    /// running frame, an object the collector does not track).
    pub externally_held: u64,
    /// Objects nothing outside the graph keeps alive: cyclic garbage,
    /// freed at the collector's next full collection.
    pub garbage: u64,
    /// Whether the collector was enabled in the program.
    pub gc_enabled: bool,
    /// How long the walk took, with the GIL held.
    pub walk_ns: u64,
    /// Recorded blocks the interpreter keeps for itself: on its free lists
    /// (freed by the program, kept for reuse) or held by its type cache
    /// (attribute names). Their holder is named "interpreter ...".
    #[serde(default)]
    pub interpreter_kept: Amount,
}

/// How the exact trace read the heap: blocks and bytes read by type, and
/// those read word by word (conservatively), with why.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    /// Read by type, every word typed (pointer-free blocks included:
    /// those are never read).
    pub exact: Amount,
    /// Of `exact`: blocks whose type holds no pointer.
    pub pointer_free: Amount,
    /// Read by type, some part of them as candidate words.
    pub partly: Amount,
    /// Read word by word, as the conservative scan reads every block.
    pub conservative: Amount,
    /// Why, for `partly` and `conservative` blocks (the first reason met
    /// in each block).
    #[serde(default)]
    pub fallbacks: Vec<FallbackCount>,
    /// Blocks typed by the field of the owner that points to them.
    pub declared_blocks: u64,
    /// Blocks typed by their allocation site (no typed owner reached them
    /// first).
    pub site_blocks: u64,
    /// Blocks whose owner's declared type differs from their site's.
    pub disagreements: u64,
    /// Blocks read again because an owner declared them after they were
    /// read by their site's type (or their declaring owner was read again
    /// with another type).
    pub rewalked: u64,
    /// Blocks two owners declared as different types (the first owner's
    /// was kept). Absent from profiles before it was counted.
    #[serde(default)]
    pub conflicts: u64,
    /// Statics read by their DWARF type as roots.
    pub typed_statics: u64,
    /// Time to get the types ready before the pause (the one-time DWARF
    /// load included when this snapshot made it), not part of `pause_ns`.
    pub prepare_ns: u64,
}

/// Blocks read partly or wholly word by word for one reason.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FallbackCount {
    /// `partly` or `conservative`.
    pub read: String,
    /// `union`, `uninit`, `opaque`, `discriminant`, `depth`,
    /// `no debug info`, `unknown type`, `contradictory types`.
    pub reason: String,
    pub amount: Amount,
}

/// How a heap-graph scan stopped the other threads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopStats {
    /// The stop signal, by name (`SIGPWR`, `SIGRTMIN+3`).
    pub signal: String,
    /// Threads stopped: their stacks and registers are roots.
    pub stopped: u64,
    /// Threads signalled that did not stop in time: they ran during the
    /// scan and their stacks are not roots (what only they refer to may be
    /// reported unreachable).
    pub missed: u64,
    /// Of the missed, threads that block the stop signal.
    pub blocking_signal: u64,
    /// Of the missed, threads that stayed inside the inner allocator's
    /// realloc; their block was read from its old copy.
    pub stuck_in_realloc: u64,
    /// Blocks a realloc held outside the live table at the stop (nodes all
    /// the same).
    pub in_flight: u64,
    /// Rounds of listing and stopping threads (over 1 when threads were
    /// created while the world was stopping).
    pub rounds: u64,
}

/// One owner: a label with the memory it keeps alive.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Owner {
    /// "error value", "retry closure", "result slot", ... or, for memory
    /// without a labelled holder, "site: <function>".
    pub name: String,
    /// `labelled` or `site`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Number of distinct labelled objects (or top-most holders).
    pub objects: u64,
    /// Memory dominated by these objects, themselves included.
    pub retained: Amount,
}

/// How a block is referred to by the object that holds it (guppy's byvia).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Via {
    /// "root: <kind>" or the holder's owner, type or site.
    pub holder: String,
    /// Byte offset of the pointer inside the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The field the pointer sits in, by the holder's type
    /// (`Retries.history[3].closure`), when the holder was read by type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An unreachable strongly connected group of blocks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Cycle {
    pub id: u32,
    /// The members themselves.
    pub members: Amount,
    /// Everything the cycle keeps alive, members included.
    pub retained: Amount,
    /// Node indices of the members (into `graph.nodes`).
    pub nodes: Vec<u32>,
    /// Parallel to `nodes`: the field of each member that points to the
    /// next one (the last to the first), "" where unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// How many of the first `nodes` form the shortest ring of references
    /// through a labelled member (each pointing to the next, the last to
    /// the first); the other members follow. Absent in older profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<u32>,
}

/// A heap object kept in the profile for retainer chains.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub address: u64,
    pub size: u64,
    pub stack: u32,
    pub tag: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Memory this object dominates, itself included.
    pub retained: Amount,
    /// Next hop towards a root on a shortest retainer path, with the byte
    /// offset of the pointer inside that parent; `None` at a root or at a
    /// cycle entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_offset: Option<u64>,
    /// The field of the parent holding the pointer, by the parent's type
    /// (`TaskError.traceback`), when the parent was read by type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_field: Option<String>,
    /// Set when a root refers to this object directly: "stack", "static",
    /// "tls", "registered: <name>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Set on members of an unreachable cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreachable: bool,
}

/// Errors from saving a profile.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("writing profile {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("encoding profile {path}: {error}")]
    Encode {
        path: PathBuf,
        error: serde_json::Error,
    },
}

impl Profile {
    /// An empty profile of the current version, for tests and tools.
    pub fn empty(program: &str) -> Profile {
        Profile {
            format: FORMAT_NAME.to_string(),
            version: VERSION_V1,
            meta: Meta {
                program: program.to_string(),
                leakprof_version: env!("CARGO_PKG_VERSION").to_string(),
                options: RecordOptions {
                    max_frames: 64,
                    ..RecordOptions::default()
                },
                ..Meta::default()
            },
            modules: Vec::new(),
            frames: Vec::new(),
            stacks: Vec::new(),
            tags: vec![TagInfo::default()],
            live: Vec::new(),
            stack_stats: Vec::new(),
            tasks: Vec::new(),
            totals: Totals::default(),
            timeline: Vec::new(),
            dropped: Dropped::default(),
            folded: None,
            graph: None,
            recorder: None,
        }
    }

    /// Writes the profile atomically: to a temporary file in the same
    /// directory, flushed to disk, then renamed over `path`. A reader never
    /// sees a half-written profile, and a failed save leaves any previous
    /// file in place.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), SaveError> {
        let path = path.as_ref();
        let bytes = serde_json::to_vec(self).map_err(|error| SaveError::Encode {
            path: path.to_path_buf(),
            error,
        })?;
        write_atomically(path, &bytes).map_err(|error| SaveError::Io {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Looks up a module-relative frame's module path, for display.
    pub fn module_of(&self, frame: &Frame) -> Option<&Module> {
        frame.module.and_then(|m| self.modules.get(m as usize))
    }
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename.
/// Shared by every writer of leakprof output (profiles, CSV, SVG, JSON).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Names of marked timeline events (`TimelinePoint::event`). The worker lab
/// marks them at the seed's measuring points; the analysis reads them.
pub mod events {
    /// A task is about to allocate its payload.
    pub const BEFORE_ALLOCATION: &str = "before allocation";
    /// A task has allocated (and filled) its payload.
    pub const AFTER_ALLOCATION: &str = "after allocation";
    /// A failed attempt has been fully handled: the retry is scheduled (or
    /// the message dead-lettered) and the worker let go of the error. The
    /// leak slope is fitted to `live_bytes` at these points against `retry`.
    pub const AFTER_FAILURE: &str = "after failure";
    /// A task finished successfully and its result was handed on.
    pub const AFTER_SUCCESS: &str = "after success";
    /// A stored result expired and was dropped.
    pub const RESULT_EXPIRED: &str = "result expired";
    /// Recording stopped early because RSS reached `--max-rss`.
    pub const MAX_RSS: &str = "max rss reached";
    /// Python's cyclic collector starts and ends a collection (recorded
    /// by `leakprof run` for Python programs): what it frees is freed
    /// between the two.
    pub const GC_START: &str = "gc start";
    pub const GC_END: &str = "gc end";
}

/// Well-known keys of `Meta::attributes`.
pub mod attributes {
    /// Lab scenario name, e.g. `exception`.
    pub const SCENARIO: &str = "scenario";
    /// Middleware variant, `original` or `fixed`.
    pub const MIDDLEWARE: &str = "middleware";
    /// `memory` or `redis`.
    pub const BROKER: &str = "broker";
    /// Payload size in bytes, as a decimal string.
    pub const PAYLOAD_BYTES: &str = "payload_bytes";
    /// Why the run ended: `completed`, `duration`, `max-rss`, `signal`, or
    /// with `--processes` `worker-failed` (a worker process exited with an
    /// error or was killed by a signal; see `lab::run::StopReason`).
    pub const STOP_REASON: &str = "stop_reason";
}
