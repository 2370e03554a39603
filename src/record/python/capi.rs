//! The few CPython C-API entry points the recorder calls, looked up in the
//! running process with `dlsym` when recording starts. Nothing links
//! against libpython, so building leakprof needs neither Python nor its
//! headers, and a process without Python simply has no API.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use super::layout;

/// `PyMemAllocatorEx`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct MemAllocator {
    pub(crate) ctx: *mut c_void,
    pub(crate) malloc: Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
    pub(crate) calloc: Option<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void>,
    pub(crate) realloc:
        Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void>,
    pub(crate) free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
}

impl MemAllocator {
    pub(crate) const EMPTY: MemAllocator = MemAllocator {
        ctx: std::ptr::null_mut(),
        malloc: None,
        calloc: None,
        realloc: None,
        free: None,
    };
}

type SetAllocator = unsafe extern "C" fn(c_int, *mut MemAllocator);
type ThreadState = unsafe extern "C" fn() -> *mut c_void;
type AddrToLine = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type AsUtf8 = unsafe extern "C" fn(*mut c_void, *mut isize) -> *const c_char;
type ErrClear = unsafe extern "C" fn();
type DictNext =
    unsafe extern "C" fn(*mut c_void, *mut isize, *mut *mut c_void, *mut *mut c_void) -> c_int;
type InterpHead = unsafe extern "C" fn() -> *mut c_void;
type ThreadHead = unsafe extern "C" fn(*mut c_void) -> *mut c_void;

pub(crate) struct Api {
    pub(crate) get_allocator: SetAllocator,
    pub(crate) set_allocator: SetAllocator,
    /// The calling thread's own thread state (a TSS read; no GIL needed).
    pub(crate) this_thread_state: ThreadState,
    /// The thread state holding the GIL.
    pub(crate) gil_holder: ThreadState,
    pub(crate) code_addr_to_line: AddrToLine,
    pub(crate) unicode_as_utf8: AsUtf8,
    pub(crate) err_clear: ErrClear,
    /// `&PyCode_Type`.
    pub(crate) code_type: usize,
    pub(crate) dict_next: DictNext,
    pub(crate) interpreter_head: InterpHead,
    pub(crate) thread_head: ThreadHead,
    pub(crate) thread_next: ThreadHead,
    /// The built-in types the object graph names edges of.
    pub(crate) types: Types,
}

/// Addresses of built-in type objects.
pub(crate) struct Types {
    pub(crate) tuple: usize,
    pub(crate) list: usize,
    pub(crate) dict: usize,
    pub(crate) unicode: usize,
    pub(crate) frame: usize,
    pub(crate) traceback: usize,
    pub(crate) cell: usize,
    /// Generators, coroutines, async generators: each holds a frame.
    pub(crate) generators: [usize; 3],
}

// SAFETY: the API is a set of function pointers and one address, all
// process-wide and valid for the life of the interpreter.
unsafe impl Sync for Api {}
// SAFETY: as above.
unsafe impl Send for Api {}

static API: OnceLock<Api> = OnceLock::new();

/// The C function `$name` of the running interpreter as `$signature`, or
/// an early `Err("... not found")` from the enclosing function.
macro_rules! function {
    ($name:literal as $signature:ty) => {{
        let address =
            $crate::record::python::capi::symbol($name).ok_or(concat!($name, " not found"))?;
        // SAFETY: see the caller: a non-null address of the C function
        // `$name`, transmuted to its signature.
        unsafe { std::mem::transmute::<usize, $signature>(address) }
    }};
}
pub(crate) use function;

/// The API once [`load`] succeeded. One atomic load: fit for the hooks.
#[inline(always)]
pub(crate) fn api() -> Option<&'static Api> {
    API.get()
}

/// Finds the running interpreter and checks its version.
pub(crate) fn load() -> Result<&'static Api, String> {
    if let Some(api) = API.get() {
        return Ok(api);
    }
    let version = symbol("Py_Version").ok_or_else(|| {
        "no Python 3.11 in this process (Py_Version not found: Python older than 3.11, or not Python)"
            .to_string()
    })?;
    // SAFETY: `Py_Version` is a `const unsigned long` (3.11+), 64 bits on
    // the 64-bit Linux targets leakprof supports.
    let hex: u64 = unsafe { *(version as *const u64) };
    let (major, minor) = ((hex >> 24) as u8, (hex >> 16) as u8);
    if (major, minor) != layout::SUPPORTED {
        return Err(format!(
            "Python {major}.{minor} is not supported: leakprof records Python {}.{} only",
            layout::SUPPORTED.0,
            layout::SUPPORTED.1
        ));
    }
    let api = Api {
        // SAFETY (each `function!`): the symbol is the C-API function of
        // that name, whose C signature the field's type spells out.
        get_allocator: function!("PyMem_GetAllocator" as SetAllocator),
        set_allocator: function!("PyMem_SetAllocator" as SetAllocator),
        this_thread_state: function!("PyGILState_GetThisThreadState" as ThreadState),
        gil_holder: function!("_PyThreadState_UncheckedGet" as ThreadState),
        code_addr_to_line: function!("PyCode_Addr2Line" as AddrToLine),
        unicode_as_utf8: function!("PyUnicode_AsUTF8AndSize" as AsUtf8),
        err_clear: function!("PyErr_Clear" as ErrClear),
        code_type: symbol("PyCode_Type").ok_or("PyCode_Type not found")?,
        dict_next: function!("PyDict_Next" as DictNext),
        interpreter_head: function!("PyInterpreterState_Head" as InterpHead),
        thread_head: function!("PyInterpreterState_ThreadHead" as ThreadHead),
        thread_next: function!("PyThreadState_Next" as ThreadHead),
        types: Types {
            tuple: type_object("PyTuple_Type")?,
            list: type_object("PyList_Type")?,
            dict: type_object("PyDict_Type")?,
            unicode: type_object("PyUnicode_Type")?,
            frame: type_object("PyFrame_Type")?,
            traceback: type_object("PyTraceBack_Type")?,
            cell: type_object("PyCell_Type")?,
            generators: [
                type_object("PyGen_Type")?,
                type_object("PyCoro_Type")?,
                type_object("PyAsyncGen_Type")?,
            ],
        },
    };
    Ok(API.get_or_init(|| api))
}

fn type_object(name: &str) -> Result<usize, String> {
    symbol(name).ok_or_else(|| format!("{name} not found"))
}

pub(crate) fn symbol(name: &str) -> Option<usize> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
    // searches the loaded objects.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p as usize)
}

/// A `str` object's text (GIL held; may allocate through Python's
/// allocators, so only outside the hooks).
pub(crate) fn text(api: &Api, object: usize) -> Option<String> {
    if object == 0 {
        return None;
    }
    let mut len: isize = 0;
    // SAFETY: the caller holds the GIL and `object` is a live object; a
    // non-str sets an error, cleared at once.
    let p = unsafe { (api.unicode_as_utf8)(object as *mut c_void, &mut len) };
    if p.is_null() {
        // SAFETY: GIL held.
        unsafe { (api.err_clear)() };
        return None;
    }
    // SAFETY: Python returns `len` bytes of UTF-8 plus a NUL, alive as
    // long as the object.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    Some(String::from_utf8_lossy(&bytes[..(len.max(0) as usize).min(bytes.len())]).into_owned())
}
