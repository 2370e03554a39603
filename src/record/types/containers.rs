//! Types whose live part DWARF does not say: the short, documented list.
//!
//! DWARF gives a `Vec<T>` as a pointer, a capacity and a length; it does
//! not say that only `len` elements behind the pointer are initialised.
//! Each entry below reads the bookkeeping that says which part is live and
//! types the rest. Members are found by NAME (never by offset) when the
//! tables are built, so a std or hashbrown release that reorders fields
//! still works; one that renames them falls back to the plain layout
//! (reads more words, never fewer, except where noted).
//!
//! | type | live part |
//! |---|---|
//! | `alloc::vec::Vec<T>` | `len` elements at `buf.inner.ptr` |
//! | `VecDeque<T>` | `len` elements of the ring from `head` (mod `cap`) |
//! | `hashbrown::raw::RawTable<T>` | the buckets whose control byte has its high bit clear |
//! | btree `NodeRef`, `LeafNode<K, V>` | `len` keys and values; `len + 1` edges when `height > 0` |
//! | `ArcInner<T>`, `RcInner<T>` | `data` only while `strong > 0` |
//! | `Arc`, `Rc`, `Weak` | typed pointer to the `ArcInner` (`[T]`/`str`/`dyn` included) |
//! | `OnceLock<T>` | `value` only when its `Once` is complete (state values measured on this std) |
//! | `LazyLock<T, F>` | `value` when complete, `f` when incomplete |
//! | `vec::IntoIter<T>` | elements in `[ptr, end)` of the buffer at `buf` |
//! | std mpmc list `Slot<T>` | `msg` when written and not yet read |
//! | `smallvec::SmallVec<[T; N]>` | inline `capacity` elements, or `len` on the heap |
//! | fat pointers (`&[T]`, `Box<[T]>`, `&dyn Tr`, `Box<dyn Tr>`) | the slice's length; `dyn` by its vtable |
//!
//! Not on the list, and so read as their DWARF says: `MaybeUninit<T>`
//! elsewhere (a union: its words are conservative candidates), tokio's and
//! std's bounded channel slots (the same), a `ManuallyDrop<T>` whose value
//! was taken (undetectable: read as live), `vec::Drain` (transient; the
//! `Vec` shows only the elements before the drained range while it lives).

use super::super::fxhash::FxHashMap;
use super::layout::{Kind, PtrClass, Span, Tables, TypeId};
use super::names::{NameId, Names};

/// The values of a `std::sync::Once`'s state word meaning "complete" and
/// "never run". They are std's private constants and have changed between
/// releases (1.95's futex `Once` uses 0 for complete and 3 for
/// incomplete), so they are measured on a real `Once` of this process's
/// std rather than assumed. Anything else (running, poisoned, waiters
/// queued) is read conservatively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OnceStates {
    pub(crate) complete: u64,
    pub(crate) incomplete: u64,
}

impl OnceStates {
    pub(crate) fn measure() -> OnceStates {
        fn bits(once: &std::sync::Once) -> u64 {
            let p = once as *const std::sync::Once;
            // SAFETY: reads the bytes of a Once this thread owns and no
            // other thread can touch (a local); its state is an integer
            // (4 bytes with the futex implementation, a pointer-sized word
            // with the queue one).
            unsafe {
                match std::mem::size_of::<std::sync::Once>() {
                    4 => std::ptr::read_volatile(p as *const u32) as u64,
                    8 => std::ptr::read_volatile(p as *const u64),
                    _ => u64::MAX,
                }
            }
        }
        let once = std::sync::Once::new();
        let incomplete = bits(&once);
        once.call_once(|| {});
        OnceStates {
            complete: bits(&once),
            incomplete,
        }
    }
}
/// std mpmc list slot state bits.
pub(crate) const SLOT_WRITE: u64 = 1;
pub(crate) const SLOT_READ: u64 = 2;

/// Offsets are bytes from the start of the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Container {
    Vec {
        ptr: u32,
        len: u32,
        elem: TypeId,
    },
    VecDeque {
        ptr: u32,
        cap: u32,
        head: u32,
        len: u32,
        elem: TypeId,
    },
    RawTable {
        ctrl: u32,
        mask: u32,
        bucket: TypeId,
    },
    BTreeRef {
        node: u32,
        height: u32,
        leaf: TypeId,
    },
    BTreeLeaf {
        parent: u32,
        len: u32,
        keys: u32,
        vals: u32,
        key: TypeId,
        val: TypeId,
        /// `InternalNode<K, V>` and the offset of its `edges`.
        internal: Option<(TypeId, u32)>,
    },
    Counted {
        strong: u32,
        data: u32,
        data_ty: TypeId,
    },
    Shared {
        ptr: u32,
        /// The pointer member's type: a thin pointer or a fat-pointer struct.
        ptr_ty: TypeId,
        weak: bool,
        /// `Arc` (true) or `Rc`: which inner type a `dyn` pointee needs.
        arc: bool,
    },
    OnceLock {
        state: u32,
        /// Bytes of the state word (4 or 8).
        state_size: u8,
        value: u32,
        ty: TypeId,
    },
    LazyLock {
        state: u32,
        state_size: u8,
        data: u32,
        value: TypeId,
        init: TypeId,
    },
    IntoIter {
        buf: u32,
        ptr: u32,
        end: u32,
        elem: TypeId,
    },
    ListSlot {
        state: u32,
        msg: u32,
        ty: TypeId,
    },
    SmallVec {
        capacity: u32,
        inline: u32,
        heap_ptr: u32,
        heap_len: u32,
        inline_cap: u64,
        elem: TypeId,
    },
    FatSlice {
        ptr: u32,
        len: u32,
        /// The element type, or (`tail`) a struct whose last member is the
        /// unsized slice (`ArcInner<[T]>`).
        pointee: TypeId,
        tail: bool,
        class: PtrClass,
    },
    FatDyn {
        ptr: u32,
        vtable: u32,
        class: PtrClass,
    },
}

type Recognizer = fn(&Lookup, TypeId) -> Option<Container>;

/// Qualified-name prefixes and their recognisers.
const BY_PREFIX: &[(&str, Recognizer)] = &[
    ("alloc::vec::Vec<", vec),
    ("alloc::collections::vec_deque::VecDeque<", vec_deque),
    ("hashbrown::raw::RawTable<", raw_table),
    ("alloc::collections::btree::node::NodeRef<", btree_ref),
    ("alloc::collections::btree::node::LeafNode<", btree_leaf),
    ("alloc::sync::ArcInner<", counted),
    ("alloc::rc::RcInner<", counted),
    ("alloc::rc::RcBox<", counted),
    ("alloc::sync::Arc<", shared),
    ("alloc::rc::Rc<", shared),
    ("alloc::sync::Weak<", shared),
    ("alloc::rc::Weak<", shared),
    ("std::sync::once_lock::OnceLock<", once_lock),
    ("std::sync::lazy_lock::LazyLock<", lazy_lock),
    ("alloc::vec::into_iter::IntoIter<", into_iter),
    ("std::sync::mpmc::list::Slot<", list_slot),
    ("smallvec::SmallVec<", small_vec),
];

/// Read access to the tables while recognising.
pub(crate) struct Lookup<'a> {
    pub(crate) tables: &'a Tables,
    pub(crate) names: &'a Names,
    /// The first defined type of each name.
    pub(crate) by_name: &'a FxHashMap<NameId, TypeId>,
}

impl Lookup<'_> {
    fn name(&self, t: TypeId) -> &str {
        self.names.get(self.tables.get(t).name)
    }

    /// The field `name` of struct `t`: (offset, type).
    fn field(&self, t: TypeId, name: &str) -> Option<(u64, TypeId)> {
        let id = self.names.lookup(name)?;
        let f = self.tables.field(t, id)?;
        Some((f.offset, f.ty))
    }

    /// Follows a path of field names.
    fn path(&self, t: TypeId, path: &[&str]) -> Option<(u64, TypeId)> {
        let (mut off, mut ty) = (0u64, t);
        for name in path {
            let (o, t2) = self.field(ty, name)?;
            off += o;
            ty = t2;
        }
        Some((off, ty))
    }

    fn first_path(&self, t: TypeId, paths: &[&[&str]]) -> Option<(u64, TypeId)> {
        paths.iter().find_map(|p| self.path(t, p))
    }

    fn param(&self, t: TypeId, name: &str) -> Option<TypeId> {
        let id = self.names.lookup(name)?;
        self.tables
            .params(t)
            .iter()
            .find(|p| p.name == id)
            .map(|p| p.ty)
    }

    /// Descends single-purpose wrappers (`NonNull`, `Unique`, `Cell`,
    /// `UnsafeCell`, atomics, `ManuallyDrop`, newtypes) to the pointer or
    /// fat-pointer struct inside: (offset, its type).
    fn pointer_in(&self, t: TypeId) -> Option<(u64, TypeId)> {
        let (mut off, mut ty) = (0u64, t);
        for _ in 0..12 {
            let info = self.tables.get(ty);
            match info.kind {
                Kind::Pointer { .. } => return Some((off, ty)),
                Kind::Struct { fields } => {
                    if is_fat(self, ty) {
                        return Some((off, ty));
                    }
                    let (offset, field) = self.sole_sized_field(fields)?;
                    off += offset;
                    ty = field;
                }
                _ => return None,
            }
        }
        None
    }

    /// Descends wrappers to an address-wide or narrower integer: (offset,
    /// size).
    fn word_in(&self, t: TypeId) -> Option<(u64, u64)> {
        let (mut off, mut ty) = (0u64, t);
        for _ in 0..12 {
            let info = self.tables.get(ty);
            match info.kind {
                Kind::Scalar(_) => return Some((off, info.size)),
                Kind::Struct { fields } => {
                    let (offset, field) = self.sole_sized_field(fields)?;
                    off += offset;
                    ty = field;
                }
                _ => return None,
            }
        }
        None
    }

    /// A wrapper struct's one field of non-zero size (markers such as
    /// `PhantomData` left aside): (offset, type), or `None` when there are
    /// more or none.
    fn sole_sized_field(&self, fields: Span) -> Option<(u64, TypeId)> {
        let mut sized = self
            .tables
            .fields(fields)
            .iter()
            .filter(|f| self.tables.get(f.ty).size > 0);
        let f = sized.next()?;
        sized.next().is_none().then_some((f.offset, f.ty))
    }

    fn pointee(&self, ptr_ty: TypeId) -> Option<TypeId> {
        match self.tables.get(ptr_ty).kind {
            Kind::Pointer { pointee, .. } => pointee,
            _ => None,
        }
    }
}

fn u32_of(x: u64) -> Option<u32> {
    u32::try_from(x).ok()
}

/// Recognises every container in the table.
pub(crate) fn recognise(tables: &mut Tables, names: &Names, by_name: &FxHashMap<NameId, TypeId>) {
    let mut found: Vec<(TypeId, Container)> = Vec::new();
    {
        let lk = Lookup {
            tables,
            names,
            by_name,
        };
        for i in 0..tables.types.len() {
            let t = TypeId(i as u32);
            let info = tables.get(t);
            if !matches!(info.kind, Kind::Struct { .. }) {
                continue;
            }
            let name = names.get(info.name);
            let by_name = BY_PREFIX
                .iter()
                .find(|(p, _)| name.starts_with(p))
                .and_then(|(_, f)| f(&lk, t));
            if let Some(c) = by_name.or_else(|| fat_pointer(&lk, t)) {
                found.push((t, c));
            }
        }
    }
    for (t, c) in found {
        tables.types[t.0 as usize].container = tables.containers.len() as u32;
        tables.containers.push(c);
    }
}

fn is_fat(lk: &Lookup, t: TypeId) -> bool {
    (lk.field(t, "data_ptr").is_some() && lk.field(t, "length").is_some())
        || (lk.field(t, "pointer").is_some() && lk.field(t, "vtable").is_some())
}

fn class_of_name(name: &str) -> PtrClass {
    if name.starts_with('&') {
        PtrClass::Ref
    } else if name.starts_with("alloc::boxed::Box<") {
        PtrClass::Box
    } else {
        PtrClass::Raw
    }
}

fn fat_pointer(lk: &Lookup, t: TypeId) -> Option<Container> {
    let class = class_of_name(lk.name(t));
    if let (Some((ptr, pty)), Some((len, _))) = (lk.field(t, "data_ptr"), lk.field(t, "length")) {
        let pointee = lk.pointee(pty)?;
        let pinfo = lk.tables.get(pointee);
        // `ArcInner<[T]>`: a struct whose last member starts at or past its
        // declared size is the unsized tail.
        let tail = match pinfo.kind {
            Kind::Struct { fields } => lk
                .tables
                .fields(fields)
                .iter()
                .any(|f| f.offset >= pinfo.size && pinfo.size > 0),
            _ => false,
        };
        return Some(Container::FatSlice {
            ptr: u32_of(ptr)?,
            len: u32_of(len)?,
            pointee,
            tail,
            class,
        });
    }
    let (ptr, _) = lk.field(t, "pointer")?;
    let (vtable, _) = lk.field(t, "vtable")?;
    Some(Container::FatDyn {
        ptr: u32_of(ptr)?,
        vtable: u32_of(vtable)?,
        class,
    })
}

fn vec(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (buf, buf_ty) = lk.first_path(t, &[&["buf", "inner", "ptr"], &["buf", "ptr"]])?;
    let (p, _) = lk.pointer_in(buf_ty)?;
    let (len, _) = lk.field(t, "len")?;
    Some(Container::Vec {
        ptr: u32_of(buf + p)?,
        len: u32_of(len)?,
        elem: lk.param(t, "T")?,
    })
}

fn vec_deque(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (buf, buf_ty) = lk.first_path(t, &[&["buf", "inner", "ptr"], &["buf", "ptr"]])?;
    let (p, _) = lk.pointer_in(buf_ty)?;
    let (cap, cap_ty) = lk.first_path(t, &[&["buf", "inner", "cap"], &["buf", "cap"]])?;
    let (c, _) = lk.word_in(cap_ty)?;
    Some(Container::VecDeque {
        ptr: u32_of(buf + p)?,
        cap: u32_of(cap + c)?,
        head: u32_of(lk.field(t, "head")?.0)?,
        len: u32_of(lk.field(t, "len")?.0)?,
        elem: lk.param(t, "T")?,
    })
}

fn raw_table(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (ctrl, ctrl_ty) = lk.first_path(t, &[&["table", "ctrl"], &["ctrl"]])?;
    let (p, _) = lk.pointer_in(ctrl_ty)?;
    let (mask, _) = lk.first_path(t, &[&["table", "bucket_mask"], &["bucket_mask"]])?;
    Some(Container::RawTable {
        ctrl: u32_of(ctrl + p)?,
        mask: u32_of(mask)?,
        bucket: lk.param(t, "T")?,
    })
}

fn btree_ref(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (node, node_ty) = lk.field(t, "node")?;
    let (p, ptr_ty) = lk.pointer_in(node_ty)?;
    let (height, _) = lk.field(t, "height")?;
    Some(Container::BTreeRef {
        node: u32_of(node + p)?,
        height: u32_of(height)?,
        leaf: lk.pointee(ptr_ty)?,
    })
}

fn btree_leaf(lk: &Lookup, t: TypeId) -> Option<Container> {
    let name = lk.name(t);
    let internal_name = name.replacen("::LeafNode<", "::InternalNode<", 1);
    let internal = lk.names.lookup(&internal_name).and_then(|n| {
        let it = *lk.by_name.get(&n)?;
        let (edges, _) = lk.field(it, "edges")?;
        Some((it, u32_of(edges)?))
    });
    Some(Container::BTreeLeaf {
        parent: u32_of(lk.field(t, "parent")?.0)?,
        len: u32_of(lk.field(t, "len")?.0)?,
        keys: u32_of(lk.field(t, "keys")?.0)?,
        vals: u32_of(lk.field(t, "vals")?.0)?,
        key: lk.param(t, "K")?,
        val: lk.param(t, "V")?,
        internal,
    })
}

fn counted(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (strong, strong_ty) = lk.field(t, "strong")?;
    let (s, _) = lk.word_in(strong_ty)?;
    let (data, data_ty) = lk.field(t, "data").or_else(|| lk.field(t, "value"))?;
    Some(Container::Counted {
        strong: u32_of(strong + s)?,
        data: u32_of(data)?,
        data_ty,
    })
}

fn shared(lk: &Lookup, t: TypeId) -> Option<Container> {
    let name = lk.name(t);
    let (ptr, ptr_ty) = lk.field(t, "ptr")?;
    let (p, inner) = lk.pointer_in(ptr_ty)?;
    Some(Container::Shared {
        ptr: u32_of(ptr + p)?,
        ptr_ty: inner,
        weak: name.contains("::Weak<"),
        arc: name.starts_with("alloc::sync::"),
    })
}

fn once_lock(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (once, once_ty) = lk.field(t, "once")?;
    let (s, size) = lk.word_in(once_ty)?;
    if size != 4 && size != 8 {
        return None;
    }
    let (value, _) = lk.field(t, "value")?;
    Some(Container::OnceLock {
        state: u32_of(once + s)?,
        state_size: size as u8,
        value: u32_of(value)?,
        ty: lk.param(t, "T")?,
    })
}

fn lazy_lock(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (once, once_ty) = lk.field(t, "once")?;
    let (s, size) = lk.word_in(once_ty)?;
    if size != 4 && size != 8 {
        return None;
    }
    let (data, _) = lk.field(t, "data")?;
    Some(Container::LazyLock {
        state: u32_of(once + s)?,
        state_size: size as u8,
        data: u32_of(data)?,
        value: lk.param(t, "T")?,
        init: lk.param(t, "F")?,
    })
}

fn into_iter(lk: &Lookup, t: TypeId) -> Option<Container> {
    let word = |name: &str| -> Option<u32> {
        let (off, ty) = lk.field(t, name)?;
        let (p, _) = lk.pointer_in(ty)?;
        u32_of(off + p)
    };
    Some(Container::IntoIter {
        buf: word("buf")?,
        ptr: word("ptr")?,
        end: word("end")?,
        elem: lk.param(t, "T")?,
    })
}

fn list_slot(lk: &Lookup, t: TypeId) -> Option<Container> {
    let (state, state_ty) = lk.field(t, "state")?;
    let (s, _) = lk.word_in(state_ty)?;
    let (msg, _) = lk.field(t, "msg")?;
    Some(Container::ListSlot {
        state: u32_of(state + s)?,
        msg: u32_of(msg)?,
        ty: lk.param(t, "T")?,
    })
}

fn small_vec(lk: &Lookup, t: TypeId) -> Option<Container> {
    let array = lk.param(t, "A")?;
    let Kind::Array { elem, count } = lk.tables.get(array).kind else {
        return None;
    };
    let (capacity, _) = lk.field(t, "capacity")?;
    let (data, data_ty) = lk.field(t, "data")?;
    let (inline, heap_ptr, heap_len) = match lk.tables.get(data_ty).kind {
        Kind::Union { .. } => {
            let (inline, _) = lk.field(data_ty, "inline")?;
            let (heap, heap_ty) = lk.field(data_ty, "heap")?;
            (
                inline,
                heap + lk.field(heap_ty, "__0")?.0,
                heap + lk.field(heap_ty, "__1")?.0,
            )
        }
        Kind::Enum { variants, .. } => {
            let vs = lk.tables.variants(variants);
            let by = |n: &str| vs.iter().find(|v| lk.names.get(v.name) == n).copied();
            let (iv, hv) = (by("Inline")?, by("Heap")?);
            let inline = iv.offset + lk.field(iv.ty, "__0")?.0;
            let ptr = hv.offset + lk.field(hv.ty, "ptr")?.0;
            let len = hv.offset + lk.field(hv.ty, "len")?.0;
            (inline, ptr, len)
        }
        _ => return None,
    };
    Some(Container::SmallVec {
        capacity: u32_of(capacity)?,
        inline: u32_of(data + inline)?,
        heap_ptr: u32_of(data + heap_ptr)?,
        heap_len: u32_of(data + heap_len)?,
        inline_cap: count,
        elem,
    })
}
