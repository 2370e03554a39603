//! The Python object graph: who holds each recorded block of a Python
//! process, and by which reference, taken inside the process with the GIL
//! held and the cyclic collector paused (the Python side pauses it), so
//! nothing is freed while it is read.
//!
//! The objects are those the collector tracks (`gc.get_objects()`, handed
//! over as a list) and those the running frames of every thread hold in
//! their locals, plus every object their types' own traversal
//! (`tp_traverse`, what the collector itself follows) reaches, untracked
//! tuples and dicts included. Locals of leakprof's own running code (the
//! profile writer) make roots named [`PYTHON_OWN_FRAMES_ROOT`]`…`: what
//! they hold at that moment is the tool's. Reachability is decided as the
//! collector decides it, without running a collection: each object's
//! reference count minus the references found inside the graph leaves the
//! references from outside it (C code, a running frame's stack, a
//! container the walk cannot see into); objects with such references are
//! the roots, and what no root reaches is cyclic garbage awaiting the next
//! collection (`gcmodule.c`'s `subtract_refs` and `move_unreachable`, on
//! side tables here, so the interpreter's own state is untouched).
//!
//! The graph handed to the heap-graph analysis is one of recorded blocks:
//! an object is joined to its block by its address minus its pre-header
//! (`PyGC_Head`, the managed dict's two words), and blocks that are no
//! object (a list's item array, a dict's keys, an instance's attribute
//! values, a C extension's buffer) hang off the objects whose fixed part
//! points to them. References through objects that are not recorded
//! (static objects, objects from before recording started) become roots
//! named after that holder. Edges are named from the holder's layout:
//! `BigError.args`, `tuple[0]`, `dict['key']`, `Future._exception`,
//! `frame run_coroutine: local future`.

use std::ffi::{c_int, c_void, CStr};
use std::sync::Mutex;

use super::capi::{self, Api};
use super::layout as l;
use crate::format::{PythonGraph, PYTHON_OWN_FRAMES_ROOT};
use crate::record::fxhash::FxHashMap;
use crate::record::hooks::{self, LIVE, THREADS};
use crate::record::live::Block;
use crate::record::mmapvec::MmapVec;
use crate::record::scan::{
    Edge, EdgeKind, PythonNames, RegisteredRoot, RootRef, RootSource, ScanResult, StopReport,
};

const NONE: u32 = u32::MAX;

/// What the Python side hands over for the object graph, objects by
/// address.
pub struct Inputs {
    /// The list `gc.get_objects()` returned (its own references are not
    /// counted as the objects' holders).
    pub tracked: usize,
    /// A list of `(object, label)` tuples: owners registered with
    /// `leakprof.owner.register`; 0 for none.
    pub owners: usize,
    /// Whether the program had the collector enabled.
    pub gc_enabled: bool,
}

/// Reads a value of interpreter memory.
///
/// # Safety
/// `base + offset` must be readable and aligned for `T`.
#[inline(always)]
unsafe fn read<T: Copy>(base: usize, offset: usize) -> T {
    // SAFETY: forwarded to the caller.
    unsafe { std::ptr::read((base + offset) as *const T) }
}

type Visit = unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int;
type Traverse = unsafe extern "C" fn(*mut c_void, Visit, *mut c_void) -> c_int;
type IsGc = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The `visitproc` handed to `tp_traverse`: collects each referent.
unsafe extern "C" fn collect(object: *mut c_void, out: *mut c_void) -> c_int {
    if !object.is_null() {
        // SAFETY: `out` is the `Vec<usize>` `Walk::referents` passed in,
        // borrowed for the traversal only.
        let out = unsafe { &mut *out.cast::<Vec<usize>>() };
        out.push(object as usize);
    }
    0
}

/// One object found.
struct Object {
    addr: usize,
    ty: usize,
    /// References from outside the graph: the reference count minus the
    /// references found inside it.
    external: isize,
    /// Its block (index into the sorted blocks), or `NONE`.
    block: u32,
    /// Its edges: `edges[first..first + count]`.
    first: u32,
    count: u32,
}

/// Type names, interned for the life of the process (the heap-graph
/// conversion keeps `&'static str`s; one entry per distinct name).
static TYPE_NAMES: Mutex<Option<FxHashMap<String, &'static str>>> = Mutex::new(None);

fn static_name(name: String) -> &'static str {
    let mut names = TYPE_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let names = names.get_or_insert_with(FxHashMap::default);
    if let Some(&n) = names.get(&name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
    names.insert(name, leaked);
    leaked
}

/// Walks the object graph and returns it as a scan of the recorded
/// blocks. Call with the GIL held, inside `hooks::guarded`.
pub(crate) fn walk(api: &Api, inputs: &Inputs) -> ScanResult {
    let started = hooks::now_ns();
    let mut blocks = Vec::new();
    LIVE.copy_into(&mut blocks, || THREADS.each().map(|t| &t.flight));
    blocks.sort_unstable_by_key(|b| b.addr);
    drop_own_blocks(&mut blocks, inputs);
    let mut w = Walk {
        api,
        blocks,
        objects: Vec::new(),
        index: FxHashMap::default(),
        edges: Vec::new(),
        names: Names::default(),
        memo: Default::default(),
        running: FxHashMap::default(),
    };
    w.ignore_owner_list(inputs.owners);
    w.seed(inputs.tracked);
    w.seed_running_locals();
    w.traverse_all();
    let reachable = w.reachable();
    let mut result = w.into_scan(inputs, &reachable);
    result.pause_ns = hooks::now_ns().saturating_sub(started);
    if let Some(p) = result.python.as_mut() {
        p.summary.walk_ns = result.pause_ns;
    }
    result
}

/// The directory of leakprof's own Python package (`leakprof/`, with its
/// trailing slash), from the code object that started the recording.
static OWN_PACKAGE: Mutex<Option<String>> = Mutex::new(None);

/// Notes where leakprof's own Python code lives: `code` is a code object of
/// the package (the function that starts the recording), GIL held.
pub(crate) fn note_own_code(api: &Api, code: usize) {
    // SAFETY: `code` is a live code object and the caller holds the GIL.
    let file = capi::text(api, unsafe { read::<usize>(code, l::CODE_FILENAME) });
    let dir = file.and_then(|f| f.rfind('/').map(|at| f[..=at].to_string()));
    *OWN_PACKAGE.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// Field, root and type names, each interned.
#[derive(Default)]
struct Names {
    fields: Vec<String>,
    field_ids: FxHashMap<String, u32>,
    roots: Vec<String>,
    root_ids: FxHashMap<String, u32>,
    types: Vec<&'static str>,
    type_ids: FxHashMap<&'static str, u32>,
}

impl Names {
    fn field(&mut self, text: String) -> u32 {
        intern(&mut self.fields, &mut self.field_ids, text)
    }

    fn root(&mut self, text: String) -> u32 {
        intern(&mut self.roots, &mut self.root_ids, text)
    }

    fn type_id(&mut self, name: &'static str) -> u32 {
        let types = &mut self.types;
        *self.type_ids.entry(name).or_insert_with(|| {
            types.push(name);
            types.len() as u32 - 1
        })
    }
}

fn intern(list: &mut Vec<String>, ids: &mut FxHashMap<String, u32>, text: String) -> u32 {
    if let Some(&id) = ids.get(&text) {
        return id;
    }
    list.push(text.clone());
    ids.insert(text, list.len() as u32 - 1);
    list.len() as u32 - 1
}

struct Walk<'a> {
    api: &'a Api,
    blocks: Vec<Block>,
    objects: Vec<Object>,
    index: FxHashMap<usize, u32>,
    /// (to object, field name) per edge, grouped by holder.
    edges: Vec<(u32, u32)>,
    names: Names,
    /// Type names by type or code object (`Walk::named`).
    memo: std::cell::RefCell<FxHashMap<usize, &'static str>>,
    /// What the running frames of every thread hold in their locals, named
    /// (`Walk::running_locals`).
    running: FxHashMap<usize, String>,
}

impl Walk<'_> {
    /// The objects of the collector's list, less the list's own reference.
    fn seed(&mut self, list: usize) {
        if list == 0 {
            return;
        }
        // The list itself is no holder of what it lists: it is known (so
        // an edge to it is dropped) and never traversed.
        let me = self.intern(list);
        self.objects[me as usize].external = isize::MIN;
        for object in list_items(list) {
            self.drop_reference(object);
        }
    }

    /// The objects the running frames hold in their locals. An untracked
    /// one (a dict of strings, a tuple of numbers) is on no collector list,
    /// and with no other holder it would be missing from the graph, its
    /// block shown held by nothing.
    fn seed_running_locals(&mut self) {
        self.running = self.running_locals();
        let held: Vec<usize> = self.running.keys().copied().collect();
        for object in held {
            self.intern(object);
        }
    }

    /// The registered owners' list and its pairs hold the owners only for
    /// leakprof: they are no holders in the graph.
    fn ignore_owner_list(&mut self, list: usize) {
        if list == 0 {
            return;
        }
        let me = self.intern(list);
        self.objects[me as usize].external = isize::MIN;
        for pair in list_items(list) {
            let p = self.intern(pair);
            self.objects[p as usize].external = isize::MIN;
            for item in [0, 8] {
                // SAFETY: each pair is a live 2-tuple.
                let object: usize = unsafe { read(pair, l::TUPLE_ITEMS + item) };
                self.drop_reference(object);
            }
        }
    }

    /// Counts one reference to `object` as the walk's own, not a holder's.
    fn drop_reference(&mut self, object: usize) {
        if object == 0 {
            return;
        }
        let k = self.intern(object) as usize;
        if self.objects[k].external != isize::MIN {
            self.objects[k].external -= 1;
        }
    }

    fn intern(&mut self, addr: usize) -> u32 {
        if let Some(&k) = self.index.get(&addr) {
            return k;
        }
        // SAFETY: `addr` is a live object: from the collector's list or a
        // type's traversal, with the GIL held.
        let (refcnt, ty) = unsafe {
            (
                read::<isize>(addr, l::OBJECT_REFCNT),
                read::<usize>(addr, l::OBJECT_TYPE),
            )
        };
        let block = self.block_of(addr, ty);
        let k = self.objects.len() as u32;
        self.objects.push(Object {
            addr,
            ty,
            external: refcnt,
            block,
            first: 0,
            count: 0,
        });
        self.index.insert(addr, k);
        k
    }

    fn flags(ty: usize) -> u64 {
        // SAFETY: `ty` is a live type object.
        unsafe { read(ty, l::TYPE_FLAGS) }
    }

    /// The recorded block the object at `addr` is: the one that starts
    /// its pre-header.
    fn block_of(&self, addr: usize, ty: usize) -> u32 {
        let flags = Self::flags(ty);
        let mut pre = 0;
        if flags & l::FLAG_HAVE_GC != 0 {
            pre += l::GC_HEAD;
        }
        if flags & l::FLAG_MANAGED_DICT != 0 {
            pre += l::MANAGED_DICT_WORDS * 8;
        }
        let start = addr.wrapping_sub(pre);
        match self.blocks.binary_search_by_key(&start, |b| b.addr) {
            Ok(k) if addr < self.blocks[k].addr + self.blocks[k].size.max(1) => k as u32,
            _ => NONE,
        }
    }

    /// The block containing `addr`, if any.
    fn block_containing(&self, addr: usize) -> Option<usize> {
        let k = self
            .blocks
            .partition_point(|b| b.addr <= addr)
            .checked_sub(1)?;
        let b = &self.blocks[k];
        (addr < b.addr + b.size).then_some(k)
    }

    /// Whether the collector would traverse the object.
    fn traversable(&self, obj: usize, ty: usize) -> Option<Traverse> {
        if Self::flags(ty) & l::FLAG_HAVE_GC == 0 {
            return None;
        }
        // SAFETY: `ty` is a live type object; both slots are function
        // pointers or null.
        let (traverse, is_gc) = unsafe {
            (
                read::<Option<Traverse>>(ty, l::TYPE_TRAVERSE),
                read::<Option<IsGc>>(ty, l::TYPE_IS_GC),
            )
        };
        if let Some(is_gc) = is_gc {
            // SAFETY: `tp_is_gc` only reads the object (type objects: is
            // it a heap type).
            if unsafe { is_gc(obj as *mut c_void) } == 0 {
                return None;
            }
        }
        traverse
    }

    /// Traverses every object found, those it finds included.
    fn traverse_all(&mut self) {
        let mut referents: Vec<usize> = Vec::with_capacity(64);
        let mut k = 0;
        while k < self.objects.len() {
            let Object {
                addr, ty, external, ..
            } = self.objects[k];
            k += 1;
            if external == isize::MIN {
                continue;
            }
            let Some(traverse) = self.traversable(addr, ty) else {
                continue;
            };
            referents.clear();
            // SAFETY: the type's own traversal of a live object, with the
            // GIL held; `collect` only pushes to `referents`.
            unsafe {
                traverse(
                    addr as *mut c_void,
                    collect,
                    (&mut referents as *mut Vec<usize>).cast(),
                )
            };
            let first = self.edges.len() as u32;
            let holder_block = self.objects[k - 1].block;
            let fields = if holder_block != NONE {
                self.field_names(addr, ty, &referents)
            } else {
                Vec::new()
            };
            for (i, &r) in referents.iter().enumerate() {
                let j = self.intern(r);
                let target = &mut self.objects[j as usize];
                if target.external == isize::MIN {
                    continue;
                }
                target.external -= 1;
                self.edges.push((j, fields.get(i).copied().unwrap_or(NONE)));
            }
            let o = &mut self.objects[k - 1];
            o.first = first;
            o.count = self.edges.len() as u32 - first;
        }
    }

    /// Reachability from the objects held from outside the graph.
    fn reachable(&self) -> Vec<bool> {
        let mut seen = vec![false; self.objects.len()];
        let mut stack: Vec<u32> = Vec::new();
        for (k, o) in self.objects.iter().enumerate() {
            if o.external > 0 {
                seen[k] = true;
                stack.push(k as u32);
            }
        }
        while let Some(k) = stack.pop() {
            let o = &self.objects[k as usize];
            for &(j, _) in &self.edges[o.first as usize..(o.first + o.count) as usize] {
                if !seen[j as usize] {
                    seen[j as usize] = true;
                    stack.push(j);
                }
            }
        }
        seen
    }

    /// The type's name as the graph shows it: frames and coroutines with
    /// their function.
    fn type_name(&self, obj: usize, ty: usize) -> &'static str {
        let base = self.short_type(ty);
        let code = if ty == self.api.types.frame {
            // SAFETY: a frame object's `f_frame` points to its live
            // interpreter frame.
            let iframe: usize = unsafe { read(obj, l::FRAMEOBJ_FRAME) };
            // SAFETY: as above.
            (iframe != 0).then(|| unsafe { read::<usize>(iframe, l::FRAME_CODE) })
        } else if self.api.types.generators.contains(&ty) {
            // SAFETY: generators hold their interpreter frame inline.
            Some(unsafe { read::<usize>(obj + l::GEN_IFRAME, l::FRAME_CODE) })
        } else {
            None
        };
        match code.filter(|&c| c != 0) {
            Some(code) => self.named(code, || {
                // SAFETY: a live code object's qualified name.
                let q: usize = unsafe { read(code, l::CODE_QUALNAME) };
                let q = capi::text(self.api, q).unwrap_or_else(|| "?".into());
                format!("{base} {q}")
            }),
            None => base,
        }
    }

    /// The name made once for `key` (a type or code object; both stay
    /// alive through the walk), from then on read from the walk's memo.
    fn named(&self, key: usize, make: impl FnOnce() -> String) -> &'static str {
        if let Some(&name) = self.memo.borrow().get(&key) {
            return name;
        }
        let name = static_name(make());
        self.memo.borrow_mut().insert(key, name);
        name
    }

    /// `tp_name` without its module (`_asyncio.Future` -> `Future`).
    fn short_type(&self, ty: usize) -> &'static str {
        self.named(ty, || Self::tp_name(ty))
    }

    fn tp_name(ty: usize) -> String {
        // SAFETY: `tp_name` is a NUL-terminated C string alive with the type.
        let name = unsafe {
            let p: *const std::ffi::c_char = read(ty, l::TYPE_NAME);
            if p.is_null() {
                return "?".to_string();
            }
            CStr::from_ptr(p).to_string_lossy()
        };
        name.rsplit('.').next().unwrap_or(&name).to_string()
    }

    /// The name of each referent's reference in `obj`, in the order the
    /// traversal gave them.
    fn field_names(&mut self, obj: usize, ty: usize, referents: &[usize]) -> Vec<u32> {
        let holder = self.type_name(obj, ty);
        let named = self.named_references(obj, ty, holder);
        let mut cursor = 0;
        let api_types = (self.api.types.tuple, self.api.types.list);
        referents
            .iter()
            .map(|&r| {
                let text = if ty == api_types.0 || ty == api_types.1 {
                    // Sequences are traversed in item order: find the next
                    // item holding `r`.
                    self.item_index(obj, ty == api_types.0, r, &mut cursor)
                        .map(|i| format!("{holder}[{i}]"))
                } else {
                    named.iter().find(|(p, _)| *p == r).map(|(_, n)| n.clone())
                };
                let text = text.unwrap_or_else(|| {
                    if r == ty {
                        format!("{holder}.__class__")
                    } else {
                        String::new()
                    }
                });
                self.names.field(text)
            })
            .collect()
    }

    fn item_index(&self, obj: usize, tuple: bool, r: usize, cursor: &mut usize) -> Option<usize> {
        // SAFETY: a live tuple or list (GIL held): size and items by the
        // public layout.
        let n = unsafe { read::<isize>(obj, l::VAR_SIZE) }.max(0) as usize;
        let items = if tuple {
            obj + l::TUPLE_ITEMS
        } else {
            // SAFETY: as above.
            unsafe { read::<usize>(obj, l::LIST_ITEMS) }
        };
        let at = |i: usize| -> usize {
            // SAFETY: `i < n` items.
            unsafe { read(items, i * 8) }
        };
        let found = (*cursor..n)
            .find(|&i| at(i) == r)
            .or_else(|| (0..(*cursor).min(n)).find(|&i| at(i) == r))?;
        *cursor = found + 1;
        Some(found)
    }

    /// (referent, name) pairs read from the holder's layout.
    fn named_references(&self, obj: usize, ty: usize, holder: &str) -> Vec<(usize, String)> {
        let types = &self.api.types;
        let mut out: Vec<(usize, String)> = Vec::new();
        let field = |out: &mut Vec<(usize, String)>, base: usize, fields: &[(usize, &str)]| {
            for &(offset, name) in fields {
                // SAFETY: `base + offset` is a pointer field of the live
                // object's layout.
                let p: usize = unsafe { read(base, offset) };
                if p != 0 {
                    out.push((p, format!("{holder}.{name}")));
                }
            }
        };
        let flags = Self::flags(ty);
        if ty == types.dict {
            self.dict_items(obj, holder, &mut out);
        } else if flags & l::FLAG_BASE_EXC_SUBCLASS != 0 {
            field(&mut out, obj, &l::EXCEPTION_FIELDS);
        } else if ty == types.traceback {
            field(&mut out, obj, &l::TRACEBACK_FIELDS);
        } else if ty == types.cell {
            field(&mut out, obj, &[(l::CELL_REF, "cell_contents")]);
        } else if ty == types.frame {
            field(&mut out, obj, &l::FRAMEOBJ_FIELDS);
            // SAFETY: a frame object's interpreter frame.
            let iframe: usize = unsafe { read(obj, l::FRAMEOBJ_FRAME) };
            if iframe != 0 {
                self.frame_locals(iframe, holder, &mut out);
            }
        } else if types.generators.contains(&ty) {
            self.frame_locals(obj + l::GEN_IFRAME, holder, &mut out);
        }
        if flags & l::FLAG_MANAGED_DICT != 0 {
            self.managed_dict(obj, ty, holder, &mut out);
        }
        self.members(obj, ty, holder, &mut out);
        out
    }

    fn dict_items(&self, dict: usize, holder: &str, out: &mut Vec<(usize, String)>) {
        let mut pos: isize = 0;
        let mut key: *mut c_void = std::ptr::null_mut();
        let mut value: *mut c_void = std::ptr::null_mut();
        // SAFETY: PyDict_Next on a live dict with the GIL held only reads
        // it; nothing runs that could change it between calls.
        while unsafe { (self.api.dict_next)(dict as *mut c_void, &mut pos, &mut key, &mut value) }
            != 0
        {
            let k = self.key_text(key as usize);
            if !value.is_null() {
                out.push((value as usize, format!("{holder}[{k}]")));
            }
            out.push((key as usize, format!("{holder} key {k}")));
        }
    }

    /// A dict key as Python would show it: `'name'` for a str.
    fn key_text(&self, key: usize) -> String {
        // SAFETY: a live object's type.
        let ty: usize = unsafe { read(key, l::OBJECT_TYPE) };
        if ty == self.api.types.unicode {
            if let Some(t) = capi::text(self.api, key) {
                let t: String = t.chars().take(60).collect();
                return format!("'{t}'");
            }
        }
        format!("<{}>", self.short_type(ty))
    }

    /// An interpreter frame's locals (and cells), by name.
    fn frame_locals(&self, iframe: usize, holder: &str, out: &mut Vec<(usize, String)>) {
        for &(offset, name) in &l::IFRAME_FIELDS {
            // SAFETY: pointer fields of a live interpreter frame.
            let p: usize = unsafe { read(iframe, offset) };
            if p != 0 {
                out.push((p, format!("{holder}.{name}")));
            }
        }
        // SAFETY: as above.
        let code: usize = unsafe { read(iframe, l::FRAME_CODE) };
        if code == 0 {
            return;
        }
        // SAFETY: the frame's live code object: the count of its locals,
        // cells and free variables, and the tuple of their names.
        let (n, names) = unsafe {
            (
                read::<c_int>(code, l::CODE_NLOCALSPLUS).max(0) as usize,
                read::<usize>(code, l::CODE_LOCALSPLUSNAMES),
            )
        };
        for i in 0..n {
            // SAFETY: `localsplus` holds `co_nlocalsplus` slots first.
            let p: usize = unsafe { read(iframe, l::IFRAME_LOCALSPLUS + i * 8) };
            if p == 0 {
                continue;
            }
            // SAFETY: `names` is the code's tuple of `n` str.
            let name: usize = unsafe { read(names, l::TUPLE_ITEMS + i * 8) };
            let name = capi::text(self.api, name).unwrap_or_else(|| format!("#{i}"));
            out.push((p, format!("{holder}: local {name}")));
        }
    }

    /// An instance's attributes kept in its managed dict: the values array
    /// named by the type's shared keys, or the dict once made.
    fn managed_dict(&self, obj: usize, ty: usize, holder: &str, out: &mut Vec<(usize, String)>) {
        // SAFETY: the managed dict's two words before the object (values
        // at -4 words, dict at -3), present by the type's flag.
        let (values, dict) = unsafe { (read::<usize>(obj - 32, 0), read::<usize>(obj - 24, 0)) };
        if dict != 0 {
            out.push((dict, format!("{holder}.__dict__")));
        }
        if values == 0 || Self::flags(ty) & l::FLAG_HEAPTYPE == 0 {
            return;
        }
        // SAFETY: a heap type's cached keys (shared by its instances'
        // values), with the 3.11 layout of `PyDictKeysObject`.
        unsafe {
            let keys: usize = read(ty, l::HEAPTYPE_CACHED_KEYS);
            if keys == 0 {
                return;
            }
            let n = read::<isize>(keys, l::KEYS_NENTRIES).max(0) as usize;
            let log2: u8 = read(keys, l::KEYS_LOG2_INDEX_BYTES);
            let entries = keys + l::KEYS_INDICES + (1usize << log2.min(40));
            for i in 0..n.min(1 << 16) {
                let value: usize = read(values, i * 8);
                let key: usize = read(entries, i * l::UNICODE_ENTRY);
                if value != 0 && key != 0 {
                    let name = capi::text(self.api, key).unwrap_or_else(|| format!("#{i}"));
                    out.push((value, format!("{holder}.{name}")));
                }
            }
        }
    }

    /// Object members the type and its bases declare (`tp_members`: C
    /// types' fields, `__slots__`), and a `__dict__` at `tp_dictoffset`.
    fn members(&self, obj: usize, ty: usize, holder: &str, out: &mut Vec<(usize, String)>) {
        let mut t = ty;
        for _ in 0..64 {
            if t == 0 {
                break;
            }
            // SAFETY: a live type object's slots.
            let (members, dictoffset, base) = unsafe {
                (
                    read::<usize>(t, l::TYPE_MEMBERS),
                    read::<isize>(t, l::TYPE_DICTOFFSET),
                    read::<usize>(t, l::TYPE_BASE),
                )
            };
            // SAFETY: the basic size of the object's own type bounds its
            // fields.
            let size: isize = unsafe { read(ty, l::TYPE_BASICSIZE) };
            let inside = |off: isize| off > 0 && off + 8 <= size;
            if inside(dictoffset) {
                // SAFETY: a pointer field inside the object.
                let p: usize = unsafe { read(obj, dictoffset as usize) };
                if p != 0 {
                    out.push((p, format!("{holder}.__dict__")));
                }
            }
            let mut m = members;
            while m != 0 {
                // SAFETY: `tp_members` is an array of PyMemberDef ended by
                // one with a null name.
                let (name, kind, offset) = unsafe {
                    (
                        read::<*const std::ffi::c_char>(m, 0),
                        read::<c_int>(m, l::MEMBERDEF_TYPE),
                        read::<isize>(m, l::MEMBERDEF_OFFSET),
                    )
                };
                if name.is_null() {
                    break;
                }
                if (kind == l::T_OBJECT || kind == l::T_OBJECT_EX) && inside(offset) {
                    // SAFETY: an object member inside the object; the
                    // name is a C string alive with the type.
                    let (p, name) = unsafe {
                        (
                            read::<usize>(obj, offset as usize),
                            CStr::from_ptr(name).to_string_lossy(),
                        )
                    };
                    if p != 0 {
                        out.push((p, format!("{holder}.{name}")));
                    }
                }
                m += l::MEMBERDEF_SIZE;
            }
            t = base;
        }
    }

    /// Blocks the interpreter keeps for itself, by address, with their
    /// holder: objects and dict keys on its free lists (memory the program
    /// freed, kept for reuse: no object of the program) and the attribute
    /// names its type cache holds (one per looked-up name, by the name
    /// object's address: each new name string stays until its slot is
    /// taken). Both are bounded, and neither is anything a task keeps.
    fn interpreter_kept(&self) -> FxHashMap<usize, &'static str> {
        let mut kept = FxHashMap::default();
        let recorded = |start: usize| self.blocks.binary_search_by_key(&start, |b| b.addr).is_ok();
        // SAFETY (each read): the interpreter's state, read with the GIL
        // held, so nothing takes from or adds to its free lists or cache
        // meanwhile. Offsets into it are `layout`'s; a node is read only
        // once known to be a recorded (live, mapped) block, and counts are
        // checked against their lists' limits, so a layout that is not
        // the expected one stops the walk instead of reading astray.
        unsafe {
            let interp = (self.api.interpreter_head)() as usize;
            if interp == 0 {
                return kept;
            }
            let count = |at: usize, limit: i32| {
                let n: i32 = read(interp, at);
                (0..=limit).contains(&n).then_some(n as usize)
            };
            for &(list, at, limit, pre, holder) in &l::INTERP_FREE_ARRAYS {
                let Some(n) = count(at, limit) else {
                    return FxHashMap::default();
                };
                for k in 0..n {
                    let p: usize = read(interp, list + 8 * k);
                    if p != 0 {
                        // Wrapping: a pointer not checked yet.
                        kept.insert(p.wrapping_sub(pre), holder);
                    }
                }
            }
            // The tuple lists, one per size, are chains like the others.
            let tuples = (0..l::TUPLE_FREE_LISTS).map(|size| {
                (
                    l::INTERP_TUPLE_FREE_LIST + 8 * size,
                    l::INTERP_TUPLE_NUMFREE + 4 * size,
                    l::TUPLE_FREE_LIST_LIMIT,
                    l::TUPLE_ITEMS,
                    l::GC_HEAD,
                    l::TUPLE_FREE_HOLDER,
                )
            });
            for (head, at, limit, next, pre, holder) in
                l::INTERP_FREE_CHAINS.iter().copied().chain(tuples)
            {
                let Some(n) = count(at, limit) else {
                    return FxHashMap::default();
                };
                let mut p: usize = read(interp, head);
                for _ in 0..n {
                    if p == 0 || !recorded(p.wrapping_sub(pre)) {
                        break;
                    }
                    kept.insert(p - pre, holder);
                    p = read(p, next);
                }
            }
            for k in 0..l::TYPE_CACHE_ENTRIES {
                let entry = interp + l::INTERP_TYPE_CACHE + k * l::TYPE_CACHE_ENTRY;
                let name: usize = read(entry, l::TYPE_CACHE_NAME);
                // A `str`, or None (static: never a recorded block).
                if name != 0 && recorded(name) {
                    if read::<usize>(name, l::OBJECT_TYPE) != self.api.types.unicode {
                        return FxHashMap::default();
                    }
                    kept.entry(name).or_insert(l::TYPE_CACHE_HOLDER);
                }
            }
        }
        kept
    }

    /// Names of objects the running frames of every thread hold in their
    /// locals (innermost first): what the roots that are not the graph's
    /// own are most often held by.
    fn running_locals(&self) -> FxHashMap<usize, String> {
        let mut held = FxHashMap::default();
        let own_package = OWN_PACKAGE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // SAFETY: the interpreter and thread-state lists, read with the
        // GIL held: no thread runs Python code or changes its frames.
        unsafe {
            let interp = (self.api.interpreter_head)();
            let mut ts = if interp.is_null() {
                std::ptr::null_mut()
            } else {
                (self.api.thread_head)(interp)
            };
            while !ts.is_null() {
                let cframe: usize = read(ts as usize, l::TSTATE_CFRAME);
                let mut frame = if cframe == 0 {
                    0
                } else {
                    read::<usize>(cframe, l::CFRAME_CURRENT_FRAME)
                };
                for _ in 0..10_000 {
                    if frame == 0 {
                        break;
                    }
                    let code: usize = read(frame, l::FRAME_CODE);
                    if code != 0 {
                        let q: usize = read(code, l::CODE_QUALNAME);
                        let q = capi::text(self.api, q).unwrap_or_else(|| "?".into());
                        let file = capi::text(self.api, read(code, l::CODE_FILENAME));
                        let own = match (&own_package, file) {
                            (Some(dir), Some(file)) if file.starts_with(dir.as_str()) => {
                                PYTHON_OWN_FRAMES_ROOT
                            }
                            _ => "",
                        };
                        let mut locals = Vec::new();
                        self.frame_locals(frame, "", &mut locals);
                        for (p, name) in locals {
                            if let Some(local) = name.strip_prefix(": local ") {
                                held.entry(p).or_insert_with(|| {
                                    format!("{own}local {local} of running {q}")
                                });
                            }
                        }
                    }
                    frame = read(frame, l::FRAME_PREVIOUS);
                }
                ts = (self.api.thread_next)(ts);
            }
        }
        held
    }

    /// The scan: blocks, edges between them, roots, labels and names.
    fn into_scan(mut self, inputs: &Inputs, reachable: &[bool]) -> ScanResult {
        let n_blocks = self.blocks.len();
        let mut block_types = vec![NONE; n_blocks];
        let mut registered = Vec::new();
        let mut summary = PythonGraph {
            objects: self.objects.len() as u64,
            gc_enabled: inputs.gc_enabled,
            ..PythonGraph::default()
        };
        let error_value = "error value";
        for (k, &reached) in reachable.iter().enumerate() {
            let Object {
                addr,
                ty,
                external,
                block,
                ..
            } = self.objects[k];
            if external == isize::MIN {
                continue;
            }
            if external > 0 {
                summary.externally_held += 1;
            }
            if !reached {
                summary.garbage += 1;
            }
            if block == NONE {
                continue;
            }
            summary.recorded += 1;
            let name = self.type_name(addr, ty);
            block_types[block as usize] = self.names.type_id(name);
            if Self::flags(ty) & l::FLAG_BASE_EXC_SUBCLASS != 0 {
                registered.push(RegisteredRoot {
                    addr: 0,
                    label: error_value,
                    type_name: Some(name),
                    block: Some(block),
                    size: self.blocks[block as usize].size as u64,
                });
            }
        }
        // Registered owners outside the recording (a dict from a free
        // list, say) are roots of their own, like a registered static.
        let outside_owners = self.register_owners(inputs.owners, reachable, &mut registered);
        let mut registered_edges: Vec<(u32, u32)> = Vec::new();
        let mut edges: Vec<Edge> = Vec::with_capacity(self.edges.len());
        // By block that is no object: the type id of what owns it
        // (`list items`), NONE while nothing does.
        let mut owned_as = vec![NONE; n_blocks];
        let running = std::mem::take(&mut self.running);
        let mut roots: Vec<RootRef> = Vec::new();
        let outside = self
            .names
            .root("referenced from outside the object graph (C code or a thread's stack)".into());
        for k in 0..self.objects.len() {
            let o = &self.objects[k];
            if o.external == isize::MIN {
                continue;
            }
            let (first, count, from, external, addr, ty) =
                (o.first, o.count, o.block, o.external, o.addr, o.ty);
            if from != NONE && external > 0 {
                let at = match running.get(&addr) {
                    Some(text) => self.names.root(text.clone()),
                    None => outside,
                };
                roots.push(RootRef {
                    node: from,
                    source: RootSource::Static,
                    at: at as usize,
                });
            }
            let holder_root = (from == NONE && reachable[k]).then(|| {
                let name = self.type_name(addr, ty);
                self.names.root(format!(
                    "held by {name} (not recorded: static or older than the recording)"
                ))
            });
            for (ordinal, e) in (first..first + count).enumerate() {
                let (j, field) = self.edges[e as usize];
                let to = self.objects[j as usize].block;
                if to == NONE {
                    continue;
                }
                match holder_root {
                    Some(_) if outside_owners.contains_key(&(k as u32)) => {
                        registered_edges.push((outside_owners[&(k as u32)], to))
                    }
                    Some(at) => roots.push(RootRef {
                        node: to,
                        source: RootSource::Static,
                        at: at as usize,
                    }),
                    None if from != NONE => edges.push(Edge {
                        from,
                        to,
                        offset: ordinal as u32,
                        slot: field,
                        kind: EdgeKind::Exact,
                    }),
                    None => {}
                }
            }
            if from != NONE {
                self.owned_memory(from, addr, ty, &block_types, &mut edges, &mut owned_as);
            }
        }
        self.root_unheld(&mut block_types, &owned_as, &mut roots, &mut summary);
        edges.sort_unstable_by_key(|e| (e.from, e.offset, e.to));
        roots.sort_unstable();
        roots.dedup();
        let scanned_bytes = self.blocks.iter().map(|b| b.size as u64).sum();
        let names = self.names;
        ScanResult {
            blocks: mmap_of(&self.blocks),
            edges: mmap_of(&edges),
            roots: mmap_of(&roots),
            registered_edges: mmap_of(&registered_edges),
            registered,
            scanned_bytes,
            pause_ns: 0,
            stop: StopReport::default(),
            incomplete: false,
            typed: None,
            python: Some(PythonNames {
                block_types,
                type_names: names.types,
                fields: names.fields,
                roots: names.roots,
                summary,
            }),
        }
    }

    /// Blocks that are no object and that no object owns: typed as their
    /// owner's memory when an object's fixed part points into them (in
    /// `owned_as`), else roots, named by what holds them: the interpreter
    /// (its free lists, its type cache; counted in `summary`), or C.
    fn root_unheld(
        &mut self,
        block_types: &mut [u32],
        owned_as: &[u32],
        roots: &mut Vec<RootRef>,
        summary: &mut PythonGraph,
    ) {
        let native = self
            .names
            .root("memory no Python object points to (C or interpreter state)".into());
        let kept = self.interpreter_kept();
        let mut kept_roots: FxHashMap<&'static str, u32> = FxHashMap::default();
        for (b, t) in block_types.iter_mut().enumerate() {
            if *t == NONE && owned_as[b] != NONE {
                *t = owned_as[b];
            } else if *t == NONE {
                let block = &self.blocks[b];
                let at = match kept.get(&block.addr) {
                    Some(&holder) => {
                        summary.interpreter_kept.add(crate::format::Amount {
                            bytes: block.size as u64,
                            blocks: 1,
                        });
                        *kept_roots
                            .entry(holder)
                            .or_insert_with(|| self.names.root(holder.into()))
                    }
                    None => native,
                };
                roots.push(RootRef {
                    node: b as u32,
                    source: RootSource::Static,
                    at: at as usize,
                });
            }
        }
    }

    /// Edges from the object's block to blocks its fixed part points into
    /// that are no object (item arrays, dict keys and values, buffers):
    /// memory the object owns that its traversal does not show.
    fn owned_memory(
        &mut self,
        from: u32,
        obj: usize,
        ty: usize,
        block_types: &[u32],
        edges: &mut Vec<Edge>,
        owned_as: &mut [u32],
    ) {
        let block = self.blocks[from as usize];
        // SAFETY: the type's basic size.
        let basic: isize = unsafe { read(ty, l::TYPE_BASICSIZE) };
        let end = (obj + basic.max(0) as usize).min(block.addr + block.size);
        let holder = self.type_name(obj, ty);
        let mut at = block.addr;
        while at + 8 <= end {
            // SAFETY: a word inside the live object's block (pre-header
            // and fixed part), read with the GIL held.
            let word: usize = unsafe { read(at, 0) };
            let offset = at - block.addr;
            at += 8;
            let Some(k) = self.block_containing(word) else {
                continue;
            };
            if k == from as usize || block_types[k] != NONE {
                continue;
            }
            let within = at - 8;
            let types = &self.api.types;
            let what = match within.checked_sub(obj) {
                None => "__dict__ values".to_string(),
                Some(l::LIST_ITEMS) if ty == types.list => "items".to_string(),
                Some(l::DICT_KEYS) if ty == types.dict => "keys".to_string(),
                Some(l::DICT_VALUES) if ty == types.dict => "values".to_string(),
                Some(off) => format!("+{off:#x}"),
            };
            if owned_as[k] == NONE {
                let kind = if what.starts_with('+') {
                    "memory"
                } else {
                    &what
                };
                owned_as[k] = self.names.type_id(static_name(format!("{holder} {kind}")));
            }
            edges.push(Edge {
                from,
                to: k as u32,
                // Above the traversal's ordinals.
                offset: (1 << 24) + offset as u32,
                slot: self.names.field(format!("{holder} memory {what}")),
                kind: EdgeKind::Candidate,
            });
        }
    }

    /// Owners the program registered: `(object, label)` tuples. Those in
    /// a recorded block label it; a reachable one outside the recording
    /// is registered as a container of its own, returned by object with
    /// its index in `registered`.
    fn register_owners(
        &self,
        list: usize,
        reachable: &[bool],
        registered: &mut Vec<RegisteredRoot>,
    ) -> FxHashMap<u32, u32> {
        let mut outside = FxHashMap::default();
        if list == 0 {
            return outside;
        }
        for pair in list_items(list) {
            // SAFETY: each item is a live tuple of (object, str).
            let (object, label) = unsafe {
                (
                    read::<usize>(pair, l::TUPLE_ITEMS),
                    read::<usize>(pair, l::TUPLE_ITEMS + 8),
                )
            };
            let Some(&k) = self.index.get(&object) else {
                continue;
            };
            let o = &self.objects[k as usize];
            let Some(label) = capi::text(self.api, label) else {
                continue;
            };
            let (block, size) = match o.block {
                NONE if !reachable[k as usize] => continue,
                NONE => {
                    outside.insert(k, registered.len() as u32);
                    // SAFETY: the type's basic size.
                    (
                        None,
                        unsafe { read::<isize>(o.ty, l::TYPE_BASICSIZE) }.max(0) as u64,
                    )
                }
                b => (Some(b), self.blocks[b as usize].size as u64),
            };
            registered.push(RegisteredRoot {
                addr: if block.is_none() { o.addr } else { 0 },
                label: static_name(label),
                type_name: Some(self.type_name(o.addr, o.ty)),
                block,
                size,
            });
        }
        outside
    }
}

/// Leaves out the blocks of the lists handed over for the walk (and of
/// the owner pairs): they are the walk's, not the program's.
fn drop_own_blocks(blocks: &mut Vec<Block>, inputs: &Inputs) {
    let mut own: Vec<usize> = Vec::new();
    for list in [inputs.tracked, inputs.owners] {
        if list == 0 {
            continue;
        }
        // A list is a GC object: its block starts at its GC head; its
        // item array is a block of its own.
        own.push(list - l::GC_HEAD);
        // SAFETY: a live list object (GIL held).
        own.push(unsafe { read::<usize>(list, l::LIST_ITEMS) });
    }
    if inputs.owners != 0 {
        // Each pair is a 2-tuple, a GC object.
        own.extend(list_items(inputs.owners).iter().map(|&t| t - l::GC_HEAD));
    }
    blocks.retain(|b| !own.contains(&b.addr));
}

/// The items of a live list object (GIL held), nulls left out.
fn list_items(list: usize) -> Vec<usize> {
    // SAFETY: `list` is a live list object; its size and item array are
    // read by their public layout, and the item array holds `n` pointers.
    unsafe {
        let n = read::<isize>(list, l::VAR_SIZE).max(0) as usize;
        let items: usize = read(list, l::LIST_ITEMS);
        (0..n)
            .map(|i| read::<usize>(items, i * 8))
            .filter(|&p| p != 0)
            .collect()
    }
}

fn mmap_of<T: Copy>(items: &[T]) -> MmapVec<T> {
    let mut v = MmapVec::with_capacity(items.len().max(1));
    for &item in items {
        v.push(item);
    }
    v
}
