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
