//! Recording a CPython 3.11 process from inside it (issue 11).
//!
//! `leakprof run -- python ...` loads leakprof's native library into the
//! interpreter (the `leakprof-python` crate, called by the `leakprof`
//! Python package through `ctypes`, and for the per-message calls through
//! the extension module of `module`) and calls [`start`] before the
//! program's code runs. From then on the three PyMem allocator domains are
//! wrapped ([`domains`]): every block the interpreter allocates is
//! recorded once, in the same live table, stack table and tag table a Rust
//! program's allocations go to, with a Python stack ([`frames`]) in place
//! of the native one. [`write_profile`] writes the usual profile at exit.
//!
//! What must stay true: nothing on the allocation path takes the GIL,
//! calls into Python, creates a frame object, touches the error state or
//! `errno`, or allocates through a recorded allocator (the recorder's own
//! memory is `mmap`ed, and its slow paths run under the re-entrancy guard).
//! The CPython API is looked up at run time ([`capi`]), so building
//! leakprof needs no Python; the private layouts it reads live in
//! [`layout`], for 3.11 only, and are checked against the running
//! interpreter before anything is wrapped.

mod capi;
mod domains;
mod frames;
mod layout;
mod module;
mod objects;

pub use module::create as create_module;
pub use objects::Inputs as GraphInputs;

use std::path::Path;
use std::sync::Mutex;

use super::{hooks, snapshot, symbols, timeline, Options, Recorder, Tag, TaskDescription};
use crate::format::events;

/// The running Python recording.
static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

/// Starts recording this Python process. `caller_code` is the address of
/// the code object of the Python function calling this (with the GIL
/// held): its frame must be the innermost one the layout reads, or the
/// interpreter is not one leakprof can read and nothing is wrapped.
pub fn start(caller_code: usize, options: Options) -> Result<(), String> {
    let api = capi::load()?;
    frames::check_layout(api, caller_code)?;
    objects::note_own_code(api, caller_code);
    let mut running = RECORDER.lock().map_err(|_| "recorder state poisoned")?;
    if running.is_some() {
        return Err("a leakprof recorder is already running in this process".into());
    }
    hooks::note_installed();
    hooks::set_stack_source(frames::capture);
    symbols::set_foreign_resolver(frames::resolve);
    // The interpreter's many small objects come from pools in address
    // order: their live-table slots follow it (see `live`'s module doc).
    hooks::LIVE.use_region_pages();
    let recorder = Recorder::start(options.zero_new_blocks(0)).map_err(|e| e.to_string())?;
    domains::install(api);
    *running = Some(recorder);
    Ok(())
}

/// The tag id for (task, retry), interned outside the allocation path.
pub fn tag(task: u64, retry: Option<u32>) -> u32 {
    let tag = match retry {
        Some(r) => Tag::task(task).retry(r),
        None => Tag::task(task),
    };
    // Entered later by id alone (no generation to check): never folded
    // when idle, see `tags`.
    hooks::guarded(|| hooks::TAGS.intern(&tag, hooks::now_ns(), None).id)
}

/// Makes tag `id` this thread's current tag; returns the previous one.
pub fn enter(id: u32) -> u32 {
    hooks::enter_tag(id)
}

/// Leaves tag `id`, back to `prev`.
pub fn exit(id: u32, prev: u32) {
    hooks::exit_tag(id, prev)
}

/// Marks a point on the timeline (`format::events`), with this thread's
/// tag.
pub fn mark(event: &str) {
    super::mark(event)
}

/// The start of the collection under way, kept until its end says
/// whether it freed anything.
static COLLECTION: Mutex<Option<crate::format::TimelinePoint>> = Mutex::new(None);

/// Python's cyclic collector starts (`start`) or ends a collection that
/// freed `collected` objects (a `gc.callbacks` callback, GIL held). A
/// collection that freed objects is marked on the timeline by its start
/// and its end (`format::events::GC_START`, `GC_END`); the many that free
/// nothing leave no point.
pub fn collection(start: bool, collected: u64) {
    if !hooks::recording() {
        return;
    }
    hooks::guarded(|| {
        let mut pending = COLLECTION.lock().unwrap_or_else(|e| e.into_inner());
        if start {
            *pending = Some(timeline::point_now(events::GC_START));
        } else if let Some(begun) = pending.take() {
            if collected > 0 {
                timeline::push_point(begun);
                timeline::push_point(timeline::point_now(events::GC_END));
            }
        }
    })
}

/// Task `task` is over (a message succeeded, or failed for good): its
/// tags with nothing alive are folded (`leakprof::finish_task`), so a
/// worker's recorder memory does not grow with every message it ran.
pub fn finish(task: u64) {
    super::finish_task(task)
}

/// Names task `task` in the profile's task table.
pub fn describe(task: u64, description: TaskDescription) {
    super::describe_task(task, description)
}

/// Writes a profile of everything live now to `path`, recording on (the
/// mid-run snapshot), with the object graph when `graph` is given. Call
/// with the GIL held, as for [`write_profile`].
pub fn write_snapshot(path: &Path, graph: Option<&GraphInputs>) -> Result<(), String> {
    let running = RECORDER.lock().map_err(|_| "recorder state poisoned")?;
    let recorder = running
        .as_ref()
        .ok_or("leakprof is not recording this process")?;
    let profile = profile_now(recorder, graph);
    hooks::guarded(|| profile.save(path)).map_err(|e| e.to_string())
}

/// Stops recording and writes the profile to `path`, with the object
/// graph when `graph` is given. Call with the GIL held (Python frames are
/// named now, from their code objects, and the graph reads objects).
pub fn write_profile(
    path: &Path,
    attributes: &[(&str, &str)],
    graph: Option<&GraphInputs>,
) -> Result<(), String> {
    let recorder = RECORDER
        .lock()
        .map_err(|_| "recorder state poisoned")?
        .take()
        .ok_or("leakprof is not recording this process")?;
    recorder.stop_timeline();
    for (key, value) in attributes {
        hooks::guarded(|| snapshot::set_attribute(key, value));
    }
    let profile = profile_now(&recorder, graph);
    drop(recorder);
    hooks::guarded(|| profile.save(path)).map_err(|e| e.to_string())
}

/// A profile of everything live now: with the object graph (GIL held, the
/// collector paused by the caller) or without.
fn profile_now(recorder: &Recorder, graph: Option<&GraphInputs>) -> crate::format::Profile {
    match (graph, capi::api()) {
        (Some(inputs), Some(api)) => {
            hooks::guarded(|| snapshot::take_with_scan(objects::walk(api, inputs)))
        }
        _ => hooks::guarded(|| recorder.snapshot()),
    }
}
