//! Python stacks: read on the allocation path from the interpreter's own
//! frame records, resolved to names at snapshot time.
//!
//! The hook reads the calling thread's chain of `_PyInterpreterFrame`s
//! (its thread state from the TSS key, so no GIL is needed and only the
//! thread's own frames, which cannot change under it, are read). It never
//! creates a frame object, never calls into Python and never allocates. A
//! frame is one word: [`FOREIGN_FRAME`], the instruction offset (15 bits)
//! and the code object's address (48 bits).
//!
//! A code object must still exist when its name is read. When a stack is
//! first seen by a thread holding the GIL, the hook takes a reference to
//! each of its code objects (a plain increment, which the GIL makes safe),
//! so code objects seen in a recording live until the process ends. A
//! stack first seen without the GIL (the RAW domain) is not pinned; its
//! frames are resolved only if the address still holds a code object
//! (read with `process_vm_readv`, so an unmapped one cannot fault; a new
//! code object at the same address would lend its name).

use std::ffi::{c_int, c_void};

use super::capi::{self, Api};
use super::layout as l;
use crate::record::hooks::STACKS;
use crate::record::stacks::{Captured, Filler, MAX_DEPTH};
use crate::record::symbols::FOREIGN_FRAME;

const ADDRESS_BITS: u32 = 48;
const ADDRESS_MASK: u64 = (1 << ADDRESS_BITS) - 1;
const MAX_OFFSET: u64 = (1 << 15) - 1;

/// Reads a word of interpreter memory.
///
/// # Safety
/// `base + offset` must be readable and aligned for `T`.
#[inline(always)]
unsafe fn read<T: Copy>(base: usize, offset: usize) -> T {
    // SAFETY: forwarded to the caller.
    unsafe { std::ptr::read((base + offset) as *const T) }
}

/// The stack source of a Python process (`hooks::set_stack_source`).
pub(crate) fn capture(max: usize, out: &mut Captured) {
    if let Some(api) = capi::api() {
        // SAFETY: `this_thread_state` only reads the thread's TSS slot.
        let tstate = unsafe { (api.this_thread_state)() } as usize;
        if tstate != 0 {
            walk(tstate, max, out);
            if STACKS.intern_once(out) {
                pin(api, tstate, out);
            }
            return;
        }
    }
    out.filler(max).finish();
}

/// Fills `out` with the frames of `tstate`, the calling thread's state,
/// innermost first, skipping incomplete ones (as `PyFrame_GetBack` does).
#[inline(always)]
fn walk(tstate: usize, max: usize, out: &mut Captured) {
    let mut fill = out.filler(max);
    walk_into(tstate, &mut fill);
    fill.finish();
}

#[inline(always)]
fn walk_into(tstate: usize, out: &mut Filler) {
    // SAFETY: `tstate` is this thread's live PyThreadState, whose `cframe`
    // points to a live `_PyCFrame` of this thread (layout: `layout`).
    let cframe: usize = unsafe { read(tstate, l::TSTATE_CFRAME) };
    if cframe == 0 {
        return;
    }
    // SAFETY: as above.
    let mut frame: usize = unsafe { read(cframe, l::CFRAME_CURRENT_FRAME) };
    let mut innermost = true;
    // A bound against a corrupt chain; real chains end in NULL.
    for _ in 0..4 * MAX_DEPTH {
        if frame == 0 {
            break;
        }
        // SAFETY: `frame` is on this thread's frame chain, which only this
        // thread changes and which stays put while it runs this hook; its
        // code object is alive while the frame is.
        let (code, owner, prev_instr, previous) = unsafe {
            (
                read::<usize>(frame, l::FRAME_CODE),
                read::<u8>(frame, l::FRAME_OWNER),
                read::<usize>(frame, l::FRAME_PREV_INSTR),
                read::<usize>(frame, l::FRAME_PREVIOUS),
            )
        };
        if code != 0 {
            let first = code + l::CODE_UNITS;
            // Only the innermost frame can be incomplete (pushed, its
            // RESUME not yet run): every outer one is running a call. So
            // only its code object's `_co_firsttraceable` is read, which
            // spares a cache miss per outer frame.
            let complete = !innermost || owner == l::OWNED_BY_GENERATOR || {
                // SAFETY: `code` is the frame's live code object.
                let traceable: c_int = unsafe { read(code, l::CODE_FIRST_TRACEABLE) };
                prev_instr >= first + traceable.max(0) as usize * l::CODE_UNIT_BYTES
            };
            innermost = false;
            if complete {
                let offset = (prev_instr.saturating_sub(first) / l::CODE_UNIT_BYTES) as u64;
                let word = FOREIGN_FRAME | (offset.min(MAX_OFFSET) << ADDRESS_BITS) | code as u64;
                if !out.push(word as usize) {
                    break;
                }
            }
        }
        frame = previous;
    }
}

/// Takes a reference to each code object of a stack the table has just
/// seen for the first time, when this thread holds the GIL.
fn pin(api: &Api, tstate: usize, out: &Captured) {
    // SAFETY: reads the GIL holder's address; no side effect.
    if unsafe { (api.gil_holder)() } as usize != tstate {
        return;
    }
    for &word in out.frames() {
        let code = (word as u64 & ADDRESS_MASK) as usize;
        // SAFETY: the frame's code object is alive (it is on this thread's
        // stack) and this thread holds the GIL, which guards reference
        // counts.
        unsafe {
            let count = (code + l::OBJECT_REFCNT) as *mut isize;
            *count += 1;
        }
    }
}

/// A Python frame's function (qualified name), file and line. Called at
/// snapshot time by the thread that takes the snapshot, which must hold
/// the GIL; without it, or for a code object that is gone, the frame says
/// so instead of reading Python objects.
pub(crate) fn resolve(word: u64) -> (String, Option<String>, Option<u32>) {
    let code = (word & ADDRESS_MASK) as usize;
    let offset = ((word >> ADDRESS_BITS) & MAX_OFFSET) as usize;
    let Some(api) = capi::api() else {
        return (format!("<python code {code:#x}>"), None, None);
    };
    // SAFETY: both calls only read thread and runtime state.
    let holds_gil = unsafe { (api.this_thread_state)() == (api.gil_holder)() };
    // `code` was a code object's address; pinned ones still are, but one
    // first seen without the GIL may be gone and its memory unmapped: the
    // type word is read without trusting the address.
    let is_code = holds_gil && read_checked(code + l::OBJECT_TYPE) == Some(api.code_type);
    if !is_code {
        return (format!("<python code {code:#x}>"), None, None);
    }
    // SAFETY: GIL held and `code` is a code object.
    let (qualname, filename) = unsafe {
        (
            read::<usize>(code, l::CODE_QUALNAME),
            read::<usize>(code, l::CODE_FILENAME),
        )
    };
    let line = (offset * l::CODE_UNIT_BYTES)
        .try_into()
        .ok()
        // SAFETY: GIL held, `code` is a code object; Addr2Line only reads
        // its line table.
        .map(|addr: c_int| unsafe { (api.code_addr_to_line)(code as *mut c_void, addr) })
        .filter(|&line| line > 0)
        .map(|line| line as u32);
    let function = capi::text(api, qualname).unwrap_or_else(|| "<python>".to_string());
    (function, capi::text(api, filename), line)
}

/// Reads a word at an address that may no longer be mapped: through
/// `process_vm_readv` on this process, which fails instead of faulting.
fn read_checked(addr: usize) -> Option<usize> {
    let mut word = 0usize;
    let local = libc::iovec {
        iov_base: (&mut word as *mut usize).cast(),
        iov_len: std::mem::size_of::<usize>(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: std::mem::size_of::<usize>(),
    };
    // SAFETY: the kernel writes at most `iov_len` bytes into `word`, which
    // we own; the remote range is only read, and an unmapped one makes the
    // call fail with EFAULT.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == std::mem::size_of::<usize>() as isize {
        return Some(word);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EFAULT) => None,
        // The call itself is refused (a seccomp filter): read directly,
        // trusting the memory to stay mapped.
        // SAFETY: see above; the rare unpinned, freed and unmapped code
        // object is the risk taken.
        _ => Some(unsafe { read::<usize>(addr, 0) }),
    }
}

/// Checks the layout against the running interpreter: the innermost
/// Python frame of the calling thread must run `caller_code`.
pub(crate) fn check_layout(api: &Api, caller_code: usize) -> Result<(), String> {
    // SAFETY: reads the thread's TSS slot.
    let tstate = unsafe { (api.this_thread_state)() } as usize;
    if tstate == 0 {
        return Err("the calling thread has no Python thread state".into());
    }
    let mut probe = Captured::new();
    walk(tstate, 1, &mut probe);
    match probe.frames().first() {
        Some(&word) if (word as u64 & ADDRESS_MASK) as usize == caller_code => Ok(()),
        _ => Err("this Python's frame layout is not the one leakprof knows for 3.11".into()),
    }
}
