//! leakprof: a memory-leak profiler for task-queue worker processes.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//!  record ──► format ──► analysis ──► render
//!  (in the     (the        (model,     (tables, flamegraphs,
//!   profiled    versioned   owners,     timelines, diffs,
//!   process)    profile)    slopes)     exports)        cli: thin commands
//!                                                       lab: the worker lab
//! ```
//!
//! - [`record`]: the `#[global_allocator]` wrapper [`LeakAlloc`], tags
//!   ([`with_tag`], [`Tagged`]) and the [`Recorder`] that snapshots.
//! - [`format`]: the profile file, the only contract between the recorder
//!   and everything that reads its output.
//! - [`analysis`]: the model every renderer reads.
//! - [`graph`]: the heap-graph algorithms (reachability, unreachable
//!   cycles, dominators, owners), a layer below `record` and `analysis`,
//!   which both use it.
//! - `tower` (feature `tower`): a layer that tags every job or request of
//!   a tower stack (apalis, axum) with its task and attempt.
//! - `render`, `lab` and `cli` (feature `cli`, on by default): renderers,
//!   the Dramatiq-faithful worker lab and the `leakprof` command.
//!
//! # Profile your own worker in 5 lines
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();
//!
//! # fn handle(_: u64) {}
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let recorder = leakprof::Recorder::start(leakprof::Options::default())?;
//! for job in 0..10u64 {
//!     leakprof::with_tag(leakprof::Tag::task(job), || handle(job));
//! }
//! recorder.snapshot().save("profile.json")?;
//! # Ok(()) }
//! ```
//!
//! Then `leakprof report profile.json` and `leakprof flamegraph profile.json
//! -o flamegraph.svg`. Build with frame pointers
//! (`-C force-frame-pointers=yes`), as this crate's `.cargo/config.toml`
//! does, so stacks are complete and cheap to capture.

pub mod analysis;
pub mod format;
pub mod graph;
pub mod record;

#[cfg(feature = "tower")]
pub mod tower;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod lab;
#[cfg(feature = "cli")]
pub mod launch;
#[cfg(feature = "cli")]
pub mod render;

pub use analysis::check::{assert_no_leak, check, Limits, Verdict};
pub use format::Profile;
pub use record::owner;
pub use record::{
    current_tag, describe_task, finish_task, is_recording, live, mark, set_attribute, with_tag,
    FutureExt, GraphOptions, GraphUnavailable, LeakAlloc, Options, Recorder, StartError, Tag,
    TagNumber, Tagged, TaskDescription,
};
