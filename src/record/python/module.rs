//! `leakprof._fast`: the calls the `leakprof` package makes for every
//! message and every AsyncIO task step, as a CPython extension module
//! (`METH_FASTCALL` functions) instead of `ctypes` calls. A `ctypes` call
//! converts and checks each argument in Python and costs about half a
//! microsecond; these cost what a built-in function call costs. The rest
//! of the C ABI (start, write, snapshot) stays with `ctypes`.
//!
//! The functions, each called with the GIL held:
//!
//! - `begin(task, retry, external_id, actor, queue) -> tag id`: the tag of
//!   (task, retry; `retry < 0`: none), interned; when `external_id` is not
//!   None the task is described first (its first attempt in this process).
//! - `enter(tag_id) -> previous tag id`: this thread's tag is `tag_id`.
//! - `end(tag_id, previous, finished_task)`: back to `previous` (tag id 0:
//!   nothing to leave); when `finished_task` is not 0, that task is over
//!   (`finish`).
//!
//! Like `capi`, the C-API entry points are looked up at run time, so
//! building needs no Python.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use super::{capi, describe, enter, exit, finish, tag};
use crate::record::TaskDescription;

type Object = *mut c_void;
type FastCall = unsafe extern "C" fn(Object, *const Object, isize) -> Object;

/// `PyMethodDef`.
#[repr(C)]
struct MethodDef {
    name: *const c_char,
    function: Option<FastCall>,
    flags: c_int,
    doc: *const c_char,
}

/// `PyModuleDef` (with `PyModuleDef_HEAD_INIT` as its base).
#[repr(C)]
struct ModuleDef {
    refcnt: isize,
    ob_type: *mut c_void,
    m_init: *mut c_void,
    m_index: isize,
    m_copy: *mut c_void,
    name: *const c_char,
    doc: *const c_char,
    size: isize,
    methods: *const MethodDef,
    slots: *mut c_void,
    traverse: *mut c_void,
    clear: *mut c_void,
    free: *mut c_void,
}

/// `METH_FASTCALL`.
const FASTCALL: c_int = 0x0080;
/// `PYTHON_API_VERSION`, which `PyModule_Create2` checks.
const API_VERSION: c_int = 1013;

/// The module definition: CPython writes into its base (`m_index`), so it
/// lives in an `UnsafeCell`, handed over once.
struct Definition(UnsafeCell<ModuleDef>);

// SAFETY: only `create` touches the cell, under the GIL (module
// initialisation), and CPython owns it from then on.
unsafe impl Sync for Definition {}

struct Methods([MethodDef; 4]);

// SAFETY: the table is immutable, and its pointers are to static strings.
unsafe impl Sync for Methods {}

static METHODS: Methods = Methods([
    MethodDef {
        name: c"begin".as_ptr(),
        function: Some(begin_fn),
        flags: FASTCALL,
        doc: c"begin(task, retry, external_id, actor, queue) -> tag id".as_ptr(),
    },
    MethodDef {
        name: c"enter".as_ptr(),
        function: Some(enter_fn),
        flags: FASTCALL,
        doc: c"enter(tag_id) -> previous tag id".as_ptr(),
    },
    MethodDef {
        name: c"end".as_ptr(),
        function: Some(end_fn),
        flags: FASTCALL,
        doc: c"end(tag_id, previous, finished_task)".as_ptr(),
    },
    MethodDef {
        name: std::ptr::null(),
        function: None,
        flags: 0,
        doc: std::ptr::null(),
    },
]);

static DEFINITION: Definition = Definition(UnsafeCell::new(ModuleDef {
    refcnt: 1,
    ob_type: std::ptr::null_mut(),
    m_init: std::ptr::null_mut(),
    m_index: 0,
    m_copy: std::ptr::null_mut(),
    name: c"leakprof._fast".as_ptr(),
    doc: c"leakprof's per-message and per-step calls (see python/leakprof/_native.py)".as_ptr(),
    size: -1,
    methods: METHODS.0.as_ptr(),
    slots: std::ptr::null_mut(),
    traverse: std::ptr::null_mut(),
    clear: std::ptr::null_mut(),
    free: std::ptr::null_mut(),
}));

type Create = unsafe extern "C" fn(*mut ModuleDef, c_int) -> Object;
type AsI64 = unsafe extern "C" fn(Object) -> i64;
type FromU64 = unsafe extern "C" fn(u64) -> Object;
type ErrOccurred = unsafe extern "C" fn() -> Object;
type ErrSet = unsafe extern "C" fn(Object, *const c_char);
type AsUtf8 = unsafe extern "C" fn(Object, *mut isize) -> *const c_char;

/// The C-API functions the module calls.
struct Api {
    create: Create,
    as_i64: AsI64,
    from_u64: FromU64,
    err_occurred: ErrOccurred,
    err_set: ErrSet,
    type_error: Object,
    none: Object,
    utf8: AsUtf8,
}

// SAFETY: function pointers and the addresses of two process-wide objects.
unsafe impl Sync for Api {}
// SAFETY: as above.
unsafe impl Send for Api {}

static API: OnceLock<Api> = OnceLock::new();

fn load() -> Result<&'static Api, String> {
    if let Some(api) = API.get() {
        return Ok(api);
    }
    let object = |name: &str| capi::symbol(name).ok_or_else(|| format!("{name} not found"));
    let type_error = object("PyExc_TypeError")?;
    let api = Api {
        // SAFETY (each `function!`): the symbol is the C-API function of
        // that name, whose C signature the field's type spells out.
        create: capi::function!("PyModule_Create2" as Create),
        as_i64: capi::function!("PyLong_AsLongLong" as AsI64),
        from_u64: capi::function!("PyLong_FromUnsignedLongLong" as FromU64),
        err_occurred: capi::function!("PyErr_Occurred" as ErrOccurred),
        err_set: capi::function!("PyErr_SetString" as ErrSet),
        // SAFETY: `PyExc_TypeError` is a `PyObject *` variable.
        type_error: unsafe { *(type_error as *const Object) },
        none: object("_Py_NoneStruct")? as Object,
        utf8: capi::function!("PyUnicode_AsUTF8AndSize" as AsUtf8),
    };
    Ok(API.get_or_init(|| api))
}

/// Creates the module (its `PyInit` calls this, GIL held): a new
/// reference, or null with an exception set (or, without a Python API,
/// null and none: the import then fails with a SystemError).
pub fn create() -> *mut c_void {
    let Ok(api) = load() else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; the definition is static and CPython keeps it.
    unsafe { (api.create)(DEFINITION.0.get(), API_VERSION) }
}

/// Raises TypeError with `message`; returns null for the caller to return.
///
/// # Safety
/// GIL held.
unsafe fn raise(api: &Api, message: &CStr) -> Object {
    // SAFETY: forwarded; `type_error` is a live exception type.
    unsafe { (api.err_set)(api.type_error, message.as_ptr()) };
    std::ptr::null_mut()
}

/// The API and the call's first `N` arguments as integers, if the call
/// has `arity` arguments; else null to return, with TypeError (`what`,
/// for a wrong count) or the conversion's error set.
///
/// # Safety
/// GIL held; `args` holds `n` live objects; `N <= arity`.
unsafe fn call<const N: usize>(
    args: *const Object,
    n: isize,
    arity: usize,
    what: &CStr,
) -> Result<(&'static Api, [i64; N]), Object> {
    let api = API.get().ok_or(std::ptr::null_mut())?;
    if n != arity as isize {
        // SAFETY: GIL held (a Python call).
        return Err(unsafe { raise(api, what) });
    }
    let mut ints = [0; N];
    for (k, v) in ints.iter_mut().enumerate() {
        // SAFETY: GIL held; k < N <= n, so `args` holds argument k.
        *v = unsafe { (api.as_i64)(*args.add(k)) };
        // SAFETY: GIL held.
        if *v == -1 && !unsafe { (api.err_occurred)() }.is_null() {
            return Err(std::ptr::null_mut());
        }
    }
    Ok((api, ints))
}

/// Argument `k` as text, None for Python's None; `Err` for anything else
/// (TypeError set, for the caller to return null).
///
/// # Safety
/// GIL held; `args` holds `k + 1` live objects.
unsafe fn text(api: &Api, args: *const Object, k: usize) -> Result<Option<String>, ()> {
    // SAFETY: forwarded.
    let object = unsafe { *args.add(k) };
    if object == api.none {
        return Ok(None);
    }
    let mut len: isize = 0;
    // SAFETY: GIL held, `object` is live; a non-str sets TypeError.
    let p = unsafe { (api.utf8)(object, &mut len) };
    if p.is_null() {
        return Err(());
    }
    // SAFETY: Python returns `len` bytes of UTF-8, alive as long as the
    // object, which the caller holds for the call.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len.max(0) as usize) };
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// `None`, a new reference.
///
/// # Safety
/// GIL held.
unsafe fn none(api: &Api) -> Object {
    // SAFETY: GIL held: `Py_INCREF(Py_None)` on 3.11 (not immortal).
    unsafe { *(api.none as *mut isize) += 1 };
    api.none
}

unsafe extern "C" fn begin_fn(_module: Object, args: *const Object, n: isize) -> Object {
    // SAFETY: a Python call: GIL held, `args` holds `n` arguments.
    let (api, [task, retry]) = match unsafe { call::<2>(args, n, 5, c"begin takes 5 arguments") } {
        Ok(call) => call,
        Err(null) => return null,
    };
    // SAFETY (each): as above, and there are 5 arguments.
    let (Ok(external_id), Ok(actor), Ok(queue)) = (
        unsafe { text(api, args, 2) },
        unsafe { text(api, args, 3) },
        unsafe { text(api, args, 4) },
    ) else {
        return std::ptr::null_mut();
    };
    if external_id.is_some() {
        let mut d = TaskDescription::new();
        d.external_id = external_id;
        d.name = actor.clone();
        d.actor = actor;
        d.queue = queue;
        describe(task as u64, d);
    }
    let id = tag(task as u64, u32::try_from(retry).ok());
    // SAFETY: GIL held.
    unsafe { (api.from_u64)(id.into()) }
}

unsafe extern "C" fn enter_fn(_module: Object, args: *const Object, n: isize) -> Object {
    // SAFETY: a Python call: GIL held, `args` holds `n` arguments.
    let (api, [id]) = match unsafe { call::<1>(args, n, 1, c"enter takes 1 argument") } {
        Ok(call) => call,
        Err(null) => return null,
    };
    let prev = enter(id as u32);
    // SAFETY: GIL held.
    unsafe { (api.from_u64)(prev.into()) }
}

unsafe extern "C" fn end_fn(_module: Object, args: *const Object, n: isize) -> Object {
    // SAFETY: a Python call: GIL held, `args` holds `n` arguments.
    let (api, [id, prev, task]) = match unsafe { call::<3>(args, n, 3, c"end takes 3 arguments") } {
        Ok(call) => call,
        Err(null) => return null,
    };
    if id != 0 {
        exit(id as u32, prev as u32);
    }
    if task != 0 {
        finish(task as u64);
    }
    // SAFETY: GIL held.
    unsafe { none(api) }
}
