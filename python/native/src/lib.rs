//! The C ABI of leakprof's recorder inside a Python process: what the
//! `leakprof` Python package (python/leakprof/_native.py) calls through
//! `ctypes.PyDLL`, so always with the GIL held. Each function is a thin
//! shim over `leakprof::record::python`; errors come back as a message in
//! the caller's buffer and a non-zero result. The per-message calls are
//! the extension module `leakprof._fast` instead ([`PyInit__fast`]).

use std::ffi::{c_char, c_int, CStr};
use std::path::Path;

use leakprof::record::python;

/// Copies `message` into `buf` (`len` bytes, NUL-terminated, truncated).
fn report(message: &str, buf: *mut c_char, len: usize) -> c_int {
    if !buf.is_null() && len > 0 {
        let n = message.len().min(len - 1);
        // SAFETY: the caller gave `len` writable bytes at `buf`; we write
        // `n + 1 <= len` of them.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    1
}

/// A NUL-terminated string argument (None when null or not UTF-8).
fn text<'a>(s: *const c_char) -> Option<&'a str> {
    if s.is_null() {
        return None;
    }
    // SAFETY: the caller passes NUL-terminated strings alive for the call.
    unsafe { CStr::from_ptr(s) }.to_str().ok()
}

/// The version of this C ABI: the Python package (carried in the
/// `leakprof` binary) checks it, so a library from another build is
/// refused with a reason instead of called with the wrong arguments.
#[no_mangle]
pub extern "C" fn leakprof_py_abi() -> u32 {
    4
}

/// The `leakprof._fast` extension module (the per-message and per-step
/// calls; see `leakprof::record::python`'s `module`), imported from this
/// same library by the Python package.
#[no_mangle]
pub extern "C" fn PyInit__fast() -> *mut std::ffi::c_void {
    python::create_module()
}

/// Starts recording. `caller_code`: `id()` of the calling function's code
/// object. `max_frames`, `timeline_ms` (0: no timeline). 0 on success.
#[no_mangle]
pub extern "C" fn leakprof_py_start(
    caller_code: usize,
    max_frames: u32,
    timeline_ms: u64,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let options = leakprof::Options::default()
        .max_frames(max_frames.into())
        .timeline_interval_ms(timeline_ms);
    match python::start(caller_code, options) {
        Ok(()) => 0,
        Err(message) => report(&message, err, err_len),
    }
}

/// The tag id of (task, retry); `retry < 0`: no retry.
#[no_mangle]
pub extern "C" fn leakprof_py_tag(task: u64, retry: i64) -> u32 {
    python::tag(task, u32::try_from(retry).ok())
}

/// Enters tag `id` on this thread; returns the previous tag id.
#[no_mangle]
pub extern "C" fn leakprof_py_enter(id: u32) -> u32 {
    python::enter(id)
}

/// Leaves tag `id`, back to `prev`.
#[no_mangle]
pub extern "C" fn leakprof_py_exit(id: u32, prev: u32) {
    python::exit(id, prev)
}

/// Marks a timeline point (an event of `leakprof::format::events`) with
/// this thread's tag.
#[no_mangle]
pub extern "C" fn leakprof_py_mark(event: *const c_char) {
    if let Some(event) = text(event) {
        python::mark(event)
    }
}

/// The cyclic collector starts (`start` non-zero) or ends a collection
/// that freed `collected` objects.
#[no_mangle]
pub extern "C" fn leakprof_py_collection(start: c_int, collected: u64) {
    python::collection(start != 0, collected)
}

/// Task `task` is over: its tags with nothing alive are folded.
#[no_mangle]
pub extern "C" fn leakprof_py_finish(task: u64) {
    python::finish(task)
}

/// Names a task: its external id (a message id), actor and queue.
#[no_mangle]
pub extern "C" fn leakprof_py_describe(
    task: u64,
    external_id: *const c_char,
    actor: *const c_char,
    queue: *const c_char,
) {
    let mut d = leakprof::TaskDescription::new();
    d.external_id = text(external_id).map(str::to_owned);
    d.actor = text(actor).map(str::to_owned);
    d.queue = text(queue).map(str::to_owned);
    d.name = d.actor.clone();
    python::describe(task, d)
}

/// The object graph's inputs: `objects`, the list `gc.get_objects()`
/// returned (0: no graph); `owners`, a list of `(object, label)` tuples
/// (0: none); `gc_enabled`, whether the program had the collector on.
fn graph_inputs(objects: usize, owners: usize, gc_enabled: c_int) -> Option<python::GraphInputs> {
    (objects != 0).then_some(python::GraphInputs {
        tracked: objects,
        owners,
        gc_enabled: gc_enabled != 0,
    })
}

/// Stops recording and writes the profile to `path`. `attributes`:
/// `key=value` lines for the profile's metadata; the graph's inputs as
/// for [`graph_inputs`], with the collector paused by the caller. 0 on
/// success.
#[no_mangle]
pub extern "C" fn leakprof_py_write(
    path: *const c_char,
    attributes: *const c_char,
    objects: usize,
    owners: usize,
    gc_enabled: c_int,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let Some(path) = text(path) else {
        return report("the profile path is not UTF-8", err, err_len);
    };
    let pairs: Vec<(&str, &str)> = text(attributes)
        .unwrap_or("")
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let graph = graph_inputs(objects, owners, gc_enabled);
    match python::write_profile(Path::new(path), &pairs, graph.as_ref()) {
        Ok(()) => 0,
        Err(message) => report(&message, err, err_len),
    }
}

/// Writes a snapshot of everything live now to `path`, recording on, with
/// the object graph as for [`leakprof_py_write`]. 0 on success.
#[no_mangle]
pub extern "C" fn leakprof_py_snapshot(
    path: *const c_char,
    objects: usize,
    owners: usize,
    gc_enabled: c_int,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let Some(path) = text(path) else {
        return report("the snapshot path is not UTF-8", err, err_len);
    };
    let graph = graph_inputs(objects, owners, gc_enabled);
    match python::write_snapshot(Path::new(path), graph.as_ref()) {
        Ok(()) => 0,
        Err(message) => report(&message, err, err_len),
    }
}
