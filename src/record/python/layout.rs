//! CPython's private layouts that leakprof reads, for the one version it
//! supports: 3.11 on 64-bit Linux. The only file to change for another
//! version. Offsets were taken from the 3.11 headers (`offsetof` on
//! `PyThreadState`, `_PyCFrame`, `_PyInterpreterFrame`, `PyCodeObject`,
//! with `Py_BUILD_CORE`) and are checked at start-up against the running
//! interpreter (`frames::check_layout`): a mismatch refuses to record.

/// The supported version, as `Py_Version`'s major and minor bytes.
pub(crate) const SUPPORTED: (u8, u8) = (3, 11);

/// `PyThreadState.cframe` (`_PyCFrame *`).
pub(crate) const TSTATE_CFRAME: usize = 56;
/// `_PyCFrame.current_frame` (`_PyInterpreterFrame *`).
pub(crate) const CFRAME_CURRENT_FRAME: usize = 8;

/// `_PyInterpreterFrame.f_code` (`PyCodeObject *`).
pub(crate) const FRAME_CODE: usize = 32;
/// `_PyInterpreterFrame.previous`.
pub(crate) const FRAME_PREVIOUS: usize = 48;
/// `_PyInterpreterFrame.prev_instr` (`_Py_CODEUNIT *`).
pub(crate) const FRAME_PREV_INSTR: usize = 56;
/// `_PyInterpreterFrame.owner` (`char`).
pub(crate) const FRAME_OWNER: usize = 69;
/// `FRAME_OWNED_BY_GENERATOR`: such frames are never incomplete.
pub(crate) const OWNED_BY_GENERATOR: u8 = 1;

/// `PyObject.ob_refcnt` and `PyObject.ob_type`.
pub(crate) const OBJECT_REFCNT: usize = 0;
pub(crate) const OBJECT_TYPE: usize = 8;
/// `PyCodeObject._co_firsttraceable` (`int`, in code units).
pub(crate) const CODE_FIRST_TRACEABLE: usize = 168;
/// `PyCodeObject.co_code_adaptive`: the first code unit.
pub(crate) const CODE_UNITS: usize = 184;
/// `PyCodeObject.co_filename` and `co_qualname` (`str`).
pub(crate) const CODE_FILENAME: usize = 112;
pub(crate) const CODE_QUALNAME: usize = 128;
/// `sizeof(_Py_CODEUNIT)`.
pub(crate) const CODE_UNIT_BYTES: usize = 2;

/// The `PyMemAllocatorDomain` values: RAW, MEM, OBJ.
pub(crate) const DOMAINS: [i32; 3] = [0, 1, 2];

// The object graph (`objects`): public object layouts and the private
// ones the graph names edges by.

/// `PyVarObject.ob_size`.
pub(crate) const VAR_SIZE: usize = 16;

/// `PyTypeObject` fields.
pub(crate) const TYPE_NAME: usize = 24;
pub(crate) const TYPE_BASICSIZE: usize = 32;
pub(crate) const TYPE_FLAGS: usize = 168;
pub(crate) const TYPE_TRAVERSE: usize = 184;
pub(crate) const TYPE_MEMBERS: usize = 240;
pub(crate) const TYPE_BASE: usize = 256;
pub(crate) const TYPE_DICTOFFSET: usize = 288;
pub(crate) const TYPE_IS_GC: usize = 328;
/// `PyHeapTypeObject.ht_cached_keys`: the shared keys of instances'
/// managed dicts.
pub(crate) const HEAPTYPE_CACHED_KEYS: usize = 872;

/// `tp_flags` bits.
pub(crate) const FLAG_MANAGED_DICT: u64 = 1 << 4;
pub(crate) const FLAG_HEAPTYPE: u64 = 1 << 9;
pub(crate) const FLAG_HAVE_GC: u64 = 1 << 14;
pub(crate) const FLAG_BASE_EXC_SUBCLASS: u64 = 1 << 30;

/// `sizeof(PyGC_Head)`, before every GC object; a managed dict adds two
/// words before that (`_PyType_PreHeaderSize`): values at -4 words, dict
/// at -3 words from the object.
pub(crate) const GC_HEAD: usize = 16;
pub(crate) const MANAGED_DICT_WORDS: usize = 2;

/// `PyMemberDef`: size, `type` (`int`), `offset` (`Py_ssize_t`); the
/// object member types.
pub(crate) const MEMBERDEF_SIZE: usize = 40;
pub(crate) const MEMBERDEF_TYPE: usize = 8;
pub(crate) const MEMBERDEF_OFFSET: usize = 16;
pub(crate) const T_OBJECT: i32 = 6;
pub(crate) const T_OBJECT_EX: i32 = 16;

/// `PyTupleObject.ob_item` and `PyListObject.ob_item`.
pub(crate) const TUPLE_ITEMS: usize = 24;
pub(crate) const LIST_ITEMS: usize = 24;
/// `PyDictObject.ma_keys` and `ma_values`.
pub(crate) const DICT_KEYS: usize = 32;
pub(crate) const DICT_VALUES: usize = 40;
/// `PyDictKeysObject`: `dk_log2_index_bytes` (`uint8_t`), `dk_nentries`,
/// `dk_indices`; `sizeof(PyDictUnicodeEntry)` (key, value).
pub(crate) const KEYS_LOG2_INDEX_BYTES: usize = 9;
pub(crate) const KEYS_NENTRIES: usize = 24;
pub(crate) const KEYS_INDICES: usize = 32;
pub(crate) const UNICODE_ENTRY: usize = 16;

/// `PyBaseExceptionObject` fields, with the names Python shows them by.
pub(crate) const EXCEPTION_FIELDS: [(usize, &str); 6] = [
    (16, "__dict__"),
    (24, "args"),
    (32, "__notes__"),
    (40, "__traceback__"),
    (48, "__context__"),
    (56, "__cause__"),
];
/// `PyTracebackObject` fields.
pub(crate) const TRACEBACK_FIELDS: [(usize, &str); 2] = [(16, "tb_next"), (24, "tb_frame")];
/// `PyFrameObject`: `f_back`, `f_frame` (its `_PyInterpreterFrame`),
/// `f_trace`.
pub(crate) const FRAMEOBJ_FIELDS: [(usize, &str); 2] = [(16, "f_back"), (32, "f_trace")];
pub(crate) const FRAMEOBJ_FRAME: usize = 24;
/// `_PyInterpreterFrame` fields and where its `localsplus` start.
pub(crate) const IFRAME_FIELDS: [(usize, &str); 4] = [
    (0, "f_func"),
    (8, "f_globals"),
    (16, "f_builtins"),
    (24, "f_locals"),
];
pub(crate) const IFRAME_LOCALSPLUS: usize = 72;
/// `PyCodeObject.co_nlocalsplus` (`int`) and `co_localsplusnames`.
pub(crate) const CODE_NLOCALSPLUS: usize = 76;
pub(crate) const CODE_LOCALSPLUSNAMES: usize = 96;
/// `PyGenObject.gi_iframe` (coroutines and async generators alike).
pub(crate) const GEN_IFRAME: usize = 80;
/// `PyCellObject.ob_ref`.
pub(crate) const CELL_REF: usize = 16;

// The interpreter's free lists and type cache (`PyInterpreterState`,
// pycore_interp.h; offsets by `offsetof` with `Py_BUILD_CORE`), which the
// object graph reads to name what holds their blocks. They are checked as
// they are read (`objects::Walk::interpreter_kept`): each count within its
// list's limit, each chain node a recorded block before its link is read,
// each recorded name in the type cache a `str`; a mismatch drops them all.
// The holders' names start with "interpreter " (`analysis::leaks` tells
// them by it).

/// Free lists that are arrays of object pointers: array, count (`int`),
/// limit, the objects' pre-header, holder.
pub(crate) const INTERP_FREE_ARRAYS: [(usize, usize, i32, usize, &str); 3] = [
    (
        4520,
        5160,
        80,
        GC_HEAD,
        "interpreter free list: dicts (freed, kept for reuse)",
    ),
    (
        5168,
        5808,
        80,
        0,
        "interpreter free list: dict keys (freed, kept for reuse)",
    ),
    (
        3872,
        4512,
        80,
        GC_HEAD,
        "interpreter free list: lists (freed, kept for reuse)",
    ),
];
/// Free lists that are chains: head, count (`int`), limit, the link's
/// offset in a node, the nodes' pre-header, holder. Floats link through
/// `ob_type`, contexts through `ctx_prev`.
pub(crate) const INTERP_FREE_CHAINS: [(usize, usize, i32, usize, usize, &str); 2] = [
    (
        3616,
        3608,
        100,
        OBJECT_TYPE,
        0,
        "interpreter free list: floats (freed, kept for reuse)",
    ),
    (
        7112,
        7120,
        255,
        16,
        GC_HEAD,
        "interpreter free list: contexts (freed, kept for reuse)",
    ),
];
/// The tuple free lists: one chain per size 1..=20 (heads, then counts
/// as `int`s), linked through `ob_item[0]`.
pub(crate) const INTERP_TUPLE_FREE_LIST: usize = 3632;
pub(crate) const INTERP_TUPLE_NUMFREE: usize = 3792;
pub(crate) const TUPLE_FREE_LISTS: usize = 20;
pub(crate) const TUPLE_FREE_LIST_LIMIT: i32 = 2000;
pub(crate) const TUPLE_FREE_HOLDER: &str = "interpreter free list: tuples (freed, kept for reuse)";
/// `struct type_cache`: 4096 entries of (version, name, value); `name` is
/// a strong reference to the looked-up attribute name.
pub(crate) const INTERP_TYPE_CACHE: usize = 9056;
pub(crate) const TYPE_CACHE_ENTRIES: usize = 4096;
pub(crate) const TYPE_CACHE_ENTRY: usize = 24;
pub(crate) const TYPE_CACHE_NAME: usize = 8;
pub(crate) const TYPE_CACHE_HOLDER: &str = "interpreter type cache: attribute names";
