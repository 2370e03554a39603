//! Interpreting a block's memory with its type: its out-pointers.
//!
//! [`walk`] is called during the stop-the-world pause. It never allocates
//! (results go to the caller's callback), never panics (every table access
//! is checked, every read is bounds-checked against the region), reads
//! only aligned words that overlap the region, through the caller's
//! [`Memory`], and its recursion depth is bounded ([`MAX_DEPTH`]) as are its
//! loops (by the region's size).

use super::containers::{Container, SLOT_READ, SLOT_WRITE};
use super::layout::{Discr, Kind, PtrClass, Scalar, Span, TypeId, NO_CONTAINER};
use super::TypeMaps;

/// Reads memory for the walker.
pub trait Memory {
    /// The word at `addr`, which is 8-byte aligned and overlaps the region
    /// being walked (or the libc data `allocator_metadata` scans).
    fn word(&self, addr: usize) -> usize;
}

impl<F: Fn(usize) -> usize> Memory for F {
    #[inline]
    fn word(&self, addr: usize) -> usize {
        self(addr)
    }
}

/// How a block holds values of its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One value at the block's start (`Box<T>`, `ArcInner<T>`).
    One,
    /// `len` values from element `first` on (a `Vec`'s buffer: first 0;
    /// a `vec::IntoIter`'s: its `ptr` onwards).
    Elements { first: u64, len: u64 },
    /// A `VecDeque`'s ring: `len` values from slot `head`, wrapping at `cap`.
    Ring { head: u64, len: u64, cap: u64 },
    /// A hashbrown table allocation of `buckets` buckets of the type (the
    /// control bytes at the end, the buckets below them in reverse).
    HashTable { buckets: u64 },
    /// A struct whose last member is an unsized slice of `len` elements
    /// (`ArcInner<[T]>`, `ArcInner<str>`).
    Tail { len: u64 },
    /// A btree node (the type is its `LeafNode<K, V>`): a leaf at height
    /// 0, else an `InternalNode<K, V>` with `len + 1` edges.
    BTreeNode { height: u64 },
}

/// A block's type: what the scan stores per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockType {
    pub ty: TypeId,
    pub shape: Shape,
}

impl BlockType {
    pub fn one(ty: TypeId) -> BlockType {
        BlockType {
            ty,
            shape: Shape::One,
        }
    }

    /// The fewest bytes a block of this type occupies (None: no block
    /// can hold it, e.g. a length that overflows).
    pub fn bytes(&self, maps: &TypeMaps) -> Option<u64> {
        let size = maps.type_size(self.ty);
        match self.shape {
            Shape::One => Some(size),
            Shape::Elements { first, len } => first.checked_add(len)?.checked_mul(size),
            Shape::Ring { cap, .. } => cap.checked_mul(size),
            Shape::HashTable { buckets } => buckets.checked_mul(size + 1)?.checked_add(GROUP_WIDTH),
            Shape::Tail { len } => {
                let (off, elem) = tail_of(maps, self.ty)?;
                len.checked_mul(maps.type_size(elem))?.checked_add(off)
            }
            Shape::BTreeNode { height } => match container_of(maps, self.ty)? {
                Container::BTreeLeaf {
                    internal: Some((internal, _)),
                    ..
                } if height > 0 => Some(maps.type_size(internal)),
                Container::BTreeLeaf { .. } if height == 0 => Some(size),
                _ => None,
            },
        }
    }
}

/// What the type says about a pointer word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerKind {
    /// `Box`, a `Vec`'s or a hash table's buffer, a btree's nodes.
    Owning,
    /// `Arc`/`Rc`.
    Shared,
    /// `sync::Weak`/`rc::Weak`: keeps the allocation, not the value.
    Weak,
    /// `&T`, `&mut T`.
    Borrowed,
    /// `*const T`, `*mut T`, `NonNull<T>`, `AtomicPtr<T>`: a pointer, maybe
    /// dangling, tagged (low bits masked) or interior.
    Raw,
    /// An address-wide integer (`usize`, `u64`, atomics): a candidate,
    /// low bits masked.
    Word,
    /// A word in a part whose type or state is unknown (a union, a
    /// `MaybeUninit` whose state is kept elsewhere, an opaque type).
    Conservative,
}

impl PointerKind {
    /// True when the type says the word is a pointer.
    pub fn exact(self) -> bool {
        !matches!(self, PointerKind::Word | PointerKind::Conservative)
    }
}

/// The field an out-pointer sits in (an index into the field table), for
/// [`TypeMaps::slot_path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(pub(crate) u32);

impl SlotId {
    /// The element itself (a `Vec<Box<T>>`'s element), not a field of it.
    pub const NONE: SlotId = SlotId(u32::MAX);
}

/// One pointer found in a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutPointer {
    /// Byte offset of the word in the region.
    pub offset: usize,
    /// The address it holds (tag bits masked for raw and candidate words).
    pub target: usize,
    /// The target block's type, when the pointer's type says it (`Box<T>`:
    /// a `T`; a `Vec<T>`'s buffer: `len` `T`s; ...).
    pub pointee: Option<BlockType>,
    pub slot: SlotId,
    pub kind: PointerKind,
}

impl OutPointer {
    /// The type this pointer gives the block `[start, start + len)` it
    /// points into, or `None` when it must not type it. The policy the scan
    /// follows:
    ///
    /// - the pointer must point where such a pointer points in a block of
    ///   that type: its start, or a hash table's control bytes;
    /// - owning, shared and weak pointers type a block their type fits;
    /// - borrowed and raw pointers only a block of exactly their type's
    ///   size: they may point at a prefix of a larger allocation (tokio
    ///   reaches its tasks by a pointer to their `Header`), which typed by
    ///   the prefix would hide the rest of the block;
    /// - candidate words never type anything.
    pub fn pointee_for(&self, maps: &TypeMaps, start: usize, len: usize) -> Option<BlockType> {
        let bt = self.pointee?;
        let need = bt.bytes(maps)?;
        let at = match bt.shape {
            // The table's pointer is to its control bytes, at the end.
            Shape::HashTable { buckets } => {
                start + (len as u64).checked_sub(buckets.checked_add(GROUP_WIDTH)?)? as usize
            }
            _ => start,
        };
        if self.target != at {
            return None;
        }
        let fits = match self.kind {
            PointerKind::Owning | PointerKind::Shared | PointerKind::Weak => need <= len as u64,
            PointerKind::Borrowed | PointerKind::Raw => need == len as u64,
            PointerKind::Word | PointerKind::Conservative => false,
        };
        fits.then_some(bt)
    }
}

/// Why part of a block was read conservatively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// A union (other than those on the containers list).
    Union,
    /// A `MaybeUninit` or once-cell whose state could not be told.
    Uninit,
    /// A type DWARF gives no layout for.
    Opaque,
    /// An enum whose discriminant matched no variant.
    Discriminant,
    /// Types nested deeper than [`MAX_DEPTH`].
    Depth,
}

/// How a block was traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traced {
    /// Every word read was typed.
    Exact,
    /// Some part was read conservatively (the first reason met).
    Partly(Fallback),
    /// The type does not fit the region (a block smaller than its type):
    /// nothing was reported; scan the block conservatively.
    Mismatch,
}

/// Nesting depth beyond which values are read conservatively (async
/// state machines nest deeply: tokio's task cells reach past 48).
pub const MAX_DEPTH: u32 = 160;

/// Addresses below this are never pointers (null, small integers,
/// `NonNull::dangling()`).
const MIN_ADDRESS: usize = 4096;

/// hashbrown's control group width: SSE2 on x86-64, 8 elsewhere.
#[cfg(target_arch = "x86_64")]
const GROUP_WIDTH: u64 = 16;
#[cfg(not(target_arch = "x86_64"))]
const GROUP_WIDTH: u64 = 8;

/// Low bits masked off candidate and raw words (tagged pointers).
const TAG_MASK: usize = !7;

/// Reports every out-pointer of the region `[start, start + len)` holding
/// values of type `bt`, through `out`. See the module docs for what it
/// never does.
pub fn walk<M: Memory, F: FnMut(OutPointer)>(
    maps: &TypeMaps,
    start: usize,
    len: usize,
    bt: BlockType,
    mem: &M,
    out: &mut F,
) -> Traced {
    let Some(info) = maps.tables.types.get(bt.ty.0 as usize) else {
        return Traced::Mismatch;
    };
    let size = info.size;
    let mut w = Walker {
        maps,
        mem,
        start,
        len: len as u64,
        out,
        traced: Traced::Exact,
    };
    if !w.fits(bt, size) {
        return Traced::Mismatch;
    }
    match bt.shape {
        Shape::One => w.value(bt.ty, 0, SlotId::NONE.0, true, 0),
        Shape::Elements { first, len } => {
            w.elements(bt.ty, first * size, len, SlotId::NONE.0, true, 0)
        }
        Shape::Ring { head, len, cap } => w.ring(bt.ty, head, len, cap),
        Shape::HashTable { buckets } => w.hash_table(bt.ty, buckets),
        Shape::Tail { len } => w.tail(bt.ty, len),
        Shape::BTreeNode { height } => w.btree_node(bt.ty, height),
    }
    w.traced
}

struct Walker<'a, M, F> {
    maps: &'a TypeMaps,
    mem: &'a M,
    start: usize,
    len: u64,
    out: &'a mut F,
    traced: Traced,
}

impl<M: Memory, F: FnMut(OutPointer)> Walker<'_, M, F> {
    /// Does a value of this block type fit the region?
    fn fits(&self, bt: BlockType, size: u64) -> bool {
        let need = match bt.shape {
            Shape::One => Some(size),
            Shape::Elements { first, len } => {
                first.checked_add(len).and_then(|n| n.checked_mul(size))
            }
            Shape::Ring { head, len, cap } => (len <= cap && (head < cap || cap == 0))
                .then(|| cap.checked_mul(size))
                .flatten(),
            Shape::HashTable { buckets } => self.ctrl_offset(buckets, size).map(|c| c + buckets),
            Shape::Tail { len } => self.tail_of(bt.ty).and_then(|(off, elem)| {
                let esz = self.maps.tables.get(elem).size;
                len.checked_mul(esz)?.checked_add(off)
            }),
            Shape::BTreeNode { height } => match self.container_of(bt.ty) {
                Some(Container::BTreeLeaf {
                    internal: Some((internal, _)),
                    ..
                }) if height > 0 => Some(self.maps.tables.get(internal).size),
                Some(Container::BTreeLeaf { .. }) if height == 0 => Some(size),
                _ => None,
            },
        };
        need.is_some_and(|n| n <= self.len)
    }

    /// Reads `size` bytes (1, 2, 4 or 8) at region offset `off`.
    fn read(&self, off: u64, size: u8) -> Option<u64> {
        let end = off.checked_add(size as u64)?;
        if end > self.len || !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let addr = self.start.checked_add(off as usize)?;
        let base = addr & !7;
        let shift = (addr - base) * 8;
        let lo = self.mem.word(base) as u64;
        let bits = size as usize * 8;
        let value = if shift + bits <= 64 {
            lo >> shift
        } else {
            // Straddles two words (packed structs): both overlap the region.
            let hi = self.mem.word(base + 8) as u64;
            (lo >> shift) | (hi << (64 - shift))
        };
        Some(if bits == 64 {
            value
        } else {
            value & ((1u64 << bits) - 1)
        })
    }

    fn note(&mut self, why: Fallback) {
        if self.traced == Traced::Exact {
            self.traced = Traced::Partly(why);
        }
    }

    fn emit(
        &mut self,
        off: u64,
        value: u64,
        pointee: Option<BlockType>,
        slot: u32,
        kind: PointerKind,
    ) {
        let value = value as usize;
        if value < MIN_ADDRESS {
            return;
        }
        let target = match kind {
            PointerKind::Raw | PointerKind::Word | PointerKind::Conservative => value & TAG_MASK,
            _ => value,
        };
        (self.out)(OutPointer {
            offset: off as usize,
            target,
            pointee,
            slot: SlotId(slot),
            kind,
        });
    }

    /// A value of type `ty` at region offset `off`. `certain: false` when
    /// it may not be initialised (its pointers are then only candidates).
    fn value(&mut self, ty: TypeId, off: u64, slot: u32, certain: bool, depth: u32) {
        let Some(&info) = self.maps.tables.types.get(ty.0 as usize) else {
            return;
        };
        if info.pointer_free {
            return;
        }
        if depth > MAX_DEPTH {
            self.note(Fallback::Depth);
            self.conservative(off, info.size, slot);
            return;
        }
        if let Some(c) = self.container_of(ty) {
            if self.container(c, off, slot, certain, depth) {
                return;
            }
        }
        self.plain(ty, off, slot, certain, depth);
    }

    /// A value by its DWARF layout alone.
    fn plain(&mut self, ty: TypeId, off: u64, slot: u32, certain: bool, depth: u32) {
        let Some(&info) = self.maps.tables.types.get(ty.0 as usize) else {
            return;
        };
        match info.kind {
            Kind::Scalar(Scalar::AddressWide) => {
                if let Some(v) = self.read(off, 8) {
                    let kind = if certain {
                        PointerKind::Word
                    } else {
                        PointerKind::Conservative
                    };
                    self.emit(off, v, None, slot, kind);
                }
            }
            Kind::Pointer { pointee, class } => self.pointer(off, pointee, class, slot, certain),
            Kind::Struct { fields } => self.fields(fields, off, certain, depth),
            Kind::Union { fields, uninit } => {
                self.note(if uninit {
                    Fallback::Uninit
                } else {
                    Fallback::Union
                });
                self.fields(fields, off, false, depth);
            }
            Kind::Enum { discr, variants } => {
                self.enumeration(discr, variants, off, slot, certain, depth)
            }
            Kind::Array { elem, count } => {
                self.elements(elem, off, count, slot, certain, depth + 1)
            }
            Kind::Opaque => {
                self.note(Fallback::Opaque);
                self.conservative(off, info.size, slot);
            }
            Kind::Scalar(Scalar::Plain | Scalar::Never) | Kind::Code => {}
        }
    }

    fn fields(&mut self, fields: Span, off: u64, certain: bool, depth: u32) {
        for i in fields.range() {
            let Some(&f) = self.maps.tables.fields.get(i) else {
                return;
            };
            if !self.maps.pointer_free(f.ty) {
                self.value(f.ty, off + f.offset, i as u32, certain, depth + 1);
            }
        }
    }

    fn elements(
        &mut self,
        elem: TypeId,
        off: u64,
        count: u64,
        slot: u32,
        certain: bool,
        depth: u32,
    ) {
        let size = self.maps.type_size(elem);
        if size == 0 || self.maps.pointer_free(elem) {
            return;
        }
        // Never past the region, whatever `count` says.
        let room = self.len.saturating_sub(off) / size;
        for i in 0..count.min(room) {
            self.value(elem, off + i * size, slot, certain, depth);
        }
    }

    fn conservative(&mut self, off: u64, size: u64, slot: u32) {
        let end = off.saturating_add(size).min(self.len);
        let mut o = (off + 7) & !7;
        while o + 8 <= end {
            if let Some(v) = self.read(o, 8) {
                self.emit(o, v, None, slot, PointerKind::Conservative);
            }
            o += 8;
        }
    }

    fn pointer(
        &mut self,
        off: u64,
        pointee: Option<TypeId>,
        class: PtrClass,
        slot: u32,
        certain: bool,
    ) {
        let Some(v) = self.read(off, 8) else { return };
        let kind = match (certain, class) {
            (false, _) => PointerKind::Conservative,
            (true, PtrClass::Box) => PointerKind::Owning,
            (true, PtrClass::Ref) => PointerKind::Borrowed,
            (true, PtrClass::Raw) => PointerKind::Raw,
            (true, PtrClass::Code) => return,
        };
        let pointee = pointee
            .filter(|&p| self.maps.tables.get(p).kind != Kind::Opaque)
            .map(BlockType::one);
        self.emit(off, v, pointee, slot, kind);
    }

    fn enumeration(
        &mut self,
        discr: Option<Discr>,
        variants: Span,
        off: u64,
        slot: u32,
        certain: bool,
        depth: u32,
    ) {
        let vs = variants.range();
        let chosen = match discr {
            None if vs.len() == 1 => Some(vs.start),
            None => None,
            Some(d) => match self.read(off + d.offset, d.size) {
                Some(x) => self.variant_for(vs.clone(), x),
                None => None,
            },
        };
        match chosen.and_then(|i| self.maps.tables.variants.get(i).copied()) {
            Some(v) => self.value(v.ty, off + v.offset, slot, certain, depth + 1),
            None => {
                self.note(Fallback::Discriminant);
                for i in vs {
                    if let Some(v) = self.maps.tables.variants.get(i).copied() {
                        self.value(v.ty, off + v.offset, slot, false, depth + 1);
                    }
                }
            }
        }
    }

    /// The variant a discriminant value selects: the one listing it, else
    /// the only one without a value (the niche-holding or untagged variant).
    fn variant_for(&self, vs: std::ops::Range<usize>, x: u64) -> Option<usize> {
        let all = self.maps.tables.variants.get(vs.clone())?;
        if let Some(k) = all.iter().position(|v| v.value == Some(x)) {
            return Some(vs.start + k);
        }
        let mut default = all.iter().enumerate().filter(|(_, v)| v.value.is_none());
        match (default.next(), default.next()) {
            (Some((k, _)), None) => Some(vs.start + k),
            _ => None,
        }
    }
}

/// A pointer's kind given the certainty of the value holding it.
fn kind_if(certain: bool, kind: PointerKind) -> PointerKind {
    if certain {
        kind
    } else {
        PointerKind::Conservative
    }
}

fn class_kind(class: PtrClass) -> PointerKind {
    match class {
        PtrClass::Box => PointerKind::Owning,
        PtrClass::Ref => PointerKind::Borrowed,
        PtrClass::Raw | PtrClass::Code => PointerKind::Raw,
    }
}

/// A count of `size`-byte elements that could be a real buffer's.
fn plausible(n: u64, size: u64) -> bool {
    n.checked_mul(size).is_some_and(|b| b <= isize::MAX as u64)
}

impl<M: Memory, F: FnMut(OutPointer)> Walker<'_, M, F> {
    fn container_of(&self, ty: TypeId) -> Option<Container> {
        let info = self.maps.tables.types.get(ty.0 as usize)?;
        if info.container == NO_CONTAINER {
            return None;
        }
        self.maps
            .tables
            .containers
            .get(info.container as usize)
            .copied()
    }

    /// A container value; false when it must be read as a plain layout
    /// instead (a btree node met inline).
    fn container(&mut self, c: Container, off: u64, slot: u32, certain: bool, depth: u32) -> bool {
        match c {
            Container::Vec { ptr, len, elem } => {
                let (Some(p), Some(n)) = (
                    self.read(off + ptr as u64, 8),
                    self.read(off + len as u64, 8),
                ) else {
                    return true;
                };
                let size = self.maps.type_size(elem);
                let pointee = plausible(n, size).then_some(BlockType {
                    ty: elem,
                    shape: Shape::Elements { first: 0, len: n },
                });
                self.emit(
                    off + ptr as u64,
                    p,
                    pointee,
                    slot,
                    kind_if(certain, PointerKind::Owning),
                );
            }
            Container::VecDeque {
                ptr,
                cap,
                head,
                len,
                elem,
            } => {
                let r = |o: u32| self.read(off + o as u64, 8);
                let (Some(p), Some(c), Some(h), Some(n)) = (r(ptr), r(cap), r(head), r(len)) else {
                    return true;
                };
                let ok = n <= c && (h < c || c == 0) && plausible(c, self.maps.type_size(elem));
                let pointee = ok.then_some(BlockType {
                    ty: elem,
                    shape: Shape::Ring {
                        head: h,
                        len: n,
                        cap: c,
                    },
                });
                self.emit(
                    off + ptr as u64,
                    p,
                    pointee,
                    slot,
                    kind_if(certain, PointerKind::Owning),
                );
            }
            Container::RawTable { ctrl, mask, bucket } => {
                let (Some(p), Some(m)) = (
                    self.read(off + ctrl as u64, 8),
                    self.read(off + mask as u64, 8),
                ) else {
                    return true;
                };
                let buckets = m.wrapping_add(1);
                let pointee = (buckets.is_power_of_two()
                    && plausible(buckets, self.maps.type_size(bucket) + 1))
                .then_some(BlockType {
                    ty: bucket,
                    shape: Shape::HashTable { buckets },
                });
                self.emit(
                    off + ctrl as u64,
                    p,
                    pointee,
                    slot,
                    kind_if(certain, PointerKind::Owning),
                );
            }
            Container::BTreeRef { node, height, leaf } => {
                let (Some(p), Some(h)) = (
                    self.read(off + node as u64, 8),
                    self.read(off + height as u64, 8),
                ) else {
                    return true;
                };
                let pointee = (h < 64).then_some(BlockType {
                    ty: leaf,
                    shape: Shape::BTreeNode { height: h },
                });
                self.emit(
                    off + node as u64,
                    p,
                    pointee,
                    slot,
                    kind_if(certain, PointerKind::Owning),
                );
            }
            Container::BTreeLeaf { .. } => return false,
            Container::Counted {
                strong,
                data,
                data_ty,
            } => {
                // strong == 0: the value was dropped; only `Weak`s keep
                // the allocation, whose bytes are stale.
                if self.read(off + strong as u64, 8).is_some_and(|s| s != 0) {
                    self.value(data_ty, off + data as u64, slot, certain, depth + 1);
                }
            }
            Container::Shared {
                ptr,
                ptr_ty,
                weak,
                arc,
            } => {
                let kind = if weak {
                    PointerKind::Weak
                } else {
                    PointerKind::Shared
                };
                self.shared(off + ptr as u64, ptr_ty, arc, slot, kind_if(certain, kind));
            }
            Container::OnceLock {
                state,
                state_size,
                value,
                ty,
            } => {
                let once = self.maps.once;
                match self.read(off + state as u64, state_size) {
                    Some(s) if s == once.complete => {
                        self.value(ty, off + value as u64, slot, certain, depth + 1)
                    }
                    Some(s) if s == once.incomplete => {}
                    None => {}
                    Some(_) => {
                        // Running or poisoned: the value may be half written.
                        self.note(Fallback::Uninit);
                        self.value(ty, off + value as u64, slot, false, depth + 1);
                    }
                }
            }
            Container::LazyLock {
                state,
                state_size,
                data,
                value,
                init,
            } => {
                let once = self.maps.once;
                match self.read(off + state as u64, state_size) {
                    Some(s) if s == once.complete => {
                        self.value(value, off + data as u64, slot, certain, depth + 1)
                    }
                    Some(s) if s == once.incomplete => {
                        self.value(init, off + data as u64, slot, certain, depth + 1)
                    }
                    None => {}
                    Some(_) => {
                        self.note(Fallback::Uninit);
                        self.value(value, off + data as u64, slot, false, depth + 1);
                        self.value(init, off + data as u64, slot, false, depth + 1);
                    }
                }
            }
            Container::IntoIter {
                buf,
                ptr,
                end,
                elem,
            } => {
                let r = |o: u32| self.read(off + o as u64, 8);
                let (Some(b), Some(p), Some(e)) = (r(buf), r(ptr), r(end)) else {
                    return true;
                };
                let size = self.maps.type_size(elem);
                let pointee =
                    (size > 0 && b <= p && p <= e && (p - b) % size == 0).then_some(BlockType {
                        ty: elem,
                        shape: Shape::Elements {
                            first: (p - b) / size,
                            len: (e - p) / size,
                        },
                    });
                self.emit(
                    off + buf as u64,
                    b,
                    pointee,
                    slot,
                    kind_if(certain, PointerKind::Owning),
                );
            }
            Container::ListSlot { state, msg, ty } => {
                let st = self.read(off + state as u64, 8).unwrap_or(0);
                if st & SLOT_WRITE != 0 && st & SLOT_READ == 0 {
                    self.value(ty, off + msg as u64, slot, certain, depth + 1);
                }
            }
            Container::SmallVec {
                capacity,
                inline,
                heap_ptr,
                heap_len,
                inline_cap,
                elem,
            } => {
                let Some(cap) = self.read(off + capacity as u64, 8) else {
                    return true;
                };
                if cap > inline_cap {
                    let r = |o: u32| self.read(off + o as u64, 8);
                    let (Some(p), Some(n)) = (r(heap_ptr), r(heap_len)) else {
                        return true;
                    };
                    let pointee = (n <= cap).then_some(BlockType {
                        ty: elem,
                        shape: Shape::Elements { first: 0, len: n },
                    });
                    self.emit(
                        off + heap_ptr as u64,
                        p,
                        pointee,
                        slot,
                        kind_if(certain, PointerKind::Owning),
                    );
                } else {
                    self.elements(elem, off + inline as u64, cap, slot, certain, depth + 1);
                }
            }
            Container::FatSlice {
                ptr,
                len,
                pointee,
                tail,
                class,
            } => {
                let (Some(p), Some(n)) = (
                    self.read(off + ptr as u64, 8),
                    self.read(off + len as u64, 8),
                ) else {
                    return true;
                };
                let shape = if tail {
                    Shape::Tail { len: n }
                } else {
                    Shape::Elements { first: 0, len: n }
                };
                let bt = BlockType { ty: pointee, shape };
                self.emit(
                    off + ptr as u64,
                    p,
                    Some(bt),
                    slot,
                    kind_if(certain, class_kind(class)),
                );
            }
            Container::FatDyn { ptr, vtable, class } => {
                let (Some(p), Some(vt)) = (
                    self.read(off + ptr as u64, 8),
                    self.read(off + vtable as u64, 8),
                ) else {
                    return true;
                };
                let pointee = self
                    .maps
                    .vtable(vt as usize)
                    .and_then(|v| v.concrete)
                    .map(BlockType::one);
                self.emit(
                    off + ptr as u64,
                    p,
                    pointee,
                    slot,
                    kind_if(certain, class_kind(class)),
                );
            }
        }
        true
    }

    /// The pointer inside an `Arc`/`Rc`/`Weak`: thin, or fat (`[T]`, `str`,
    /// `dyn Trait`).
    fn shared(&mut self, at: u64, ptr_ty: TypeId, arc: bool, slot: u32, kind: PointerKind) {
        let info = *self.maps.tables.get(ptr_ty);
        if let Kind::Pointer { pointee, .. } = info.kind {
            if let Some(p) = self.read(at, 8) {
                self.emit(at, p, pointee.map(BlockType::one), slot, kind);
            }
            return;
        }
        match self.container_of(ptr_ty) {
            Some(Container::FatSlice {
                ptr,
                len,
                pointee,
                tail,
                ..
            }) => {
                let (Some(p), Some(n)) =
                    (self.read(at + ptr as u64, 8), self.read(at + len as u64, 8))
                else {
                    return;
                };
                let shape = if tail {
                    Shape::Tail { len: n }
                } else {
                    Shape::Elements { first: 0, len: n }
                };
                self.emit(
                    at + ptr as u64,
                    p,
                    Some(BlockType { ty: pointee, shape }),
                    slot,
                    kind,
                );
            }
            Some(Container::FatDyn { ptr, vtable, .. }) => {
                let (Some(p), Some(vt)) = (
                    self.read(at + ptr as u64, 8),
                    self.read(at + vtable as u64, 8),
                ) else {
                    return;
                };
                let inner = self.maps.vtable(vt as usize).and_then(|v| {
                    if arc {
                        v.arc_inner
                    } else {
                        v.rc_inner
                    }
                });
                self.emit(at + ptr as u64, p, inner.map(BlockType::one), slot, kind);
            }
            _ => self.conservative(at, info.size, slot),
        }
    }

    fn ring(&mut self, ty: TypeId, head: u64, len: u64, cap: u64) {
        let size = self.maps.type_size(ty);
        if size == 0 || cap == 0 || self.maps.pointer_free(ty) {
            return;
        }
        for k in 0..len {
            let i = (head + k) % cap;
            self.value(ty, i * size, SlotId::NONE.0, true, 0);
        }
    }

    /// Where a table's control bytes start: the allocation is
    /// `[buckets x T][pad][ctrl: buckets + GROUP_WIDTH bytes]`.
    fn ctrl_offset(&self, buckets: u64, size: u64) -> Option<u64> {
        if !buckets.is_power_of_two() {
            return None;
        }
        let ctrl = self.len.checked_sub(buckets.checked_add(GROUP_WIDTH)?)?;
        (ctrl >= buckets.checked_mul(size)?).then_some(ctrl)
    }

    fn hash_table(&mut self, ty: TypeId, buckets: u64) {
        let size = self.maps.type_size(ty);
        if size == 0 || self.maps.pointer_free(ty) {
            return;
        }
        let Some(ctrl) = self.ctrl_offset(buckets, size) else {
            return;
        };
        let mut i = 0u64;
        while i < buckets {
            let n = (buckets - i).min(8);
            let Some(group) = self.read(ctrl + i, if n == 8 { 8 } else { 1 }) else {
                return;
            };
            let n = if n == 8 { 8 } else { 1 };
            for k in 0..n {
                // A full bucket's control byte has its high bit clear
                // (EMPTY is 0xff, DELETED 0x80).
                if (group >> (k * 8)) & 0x80 == 0 {
                    let b = i + k;
                    self.value(ty, ctrl - (b + 1) * size, SlotId::NONE.0, true, 0);
                }
            }
            i += n;
        }
    }

    fn tail_of(&self, ty: TypeId) -> Option<(u64, TypeId)> {
        tail_of(self.maps, ty)
    }

    fn tail(&mut self, ty: TypeId, n: u64) {
        let Some((off, elem)) = self.tail_of(ty) else {
            return;
        };
        if let Some(Container::Counted { strong, .. }) = self.container_of(ty) {
            if self.read(strong as u64, 8).map_or(true, |s| s == 0) {
                return;
            }
        }
        if let Kind::Struct { fields } = self.maps.tables.get(ty).kind {
            for i in fields.range() {
                let Some(&f) = self.maps.tables.fields.get(i) else {
                    break;
                };
                if f.offset < off && !self.maps.pointer_free(f.ty) {
                    self.value(f.ty, f.offset, i as u32, true, 1);
                }
            }
        }
        self.elements(elem, off, n, SlotId::NONE.0, true, 1);
    }

    fn btree_node(&mut self, leaf: TypeId, height: u64) {
        let Some(Container::BTreeLeaf {
            parent,
            len,
            keys,
            vals,
            key,
            val,
            internal,
        }) = self.container_of(leaf)
        else {
            return;
        };
        let Some(n) = self.read(len as u64, 2) else {
            return;
        };
        let cap = match self.maps.tables.field_type(leaf, keys) {
            Some(Kind::Array { count, .. }) => count,
            _ => 0,
        };
        if n > cap {
            self.note(Fallback::Discriminant);
            return;
        }
        self.elements(key, keys as u64, n, SlotId::NONE.0, true, 1);
        self.elements(val, vals as u64, n, SlotId::NONE.0, true, 1);
        if let Some(p) = self.read(parent as u64, 8) {
            let up = BlockType {
                ty: leaf,
                shape: Shape::BTreeNode { height: height + 1 },
            };
            self.emit(parent as u64, p, Some(up), SlotId::NONE.0, PointerKind::Raw);
        }
        let Some((_, edges)) = internal.filter(|_| height > 0) else {
            return;
        };
        let down = BlockType {
            ty: leaf,
            shape: Shape::BTreeNode { height: height - 1 },
        };
        for i in 0..=n {
            let at = edges as u64 + i * 8;
            if let Some(e) = self.read(at, 8) {
                self.emit(at, e, Some(down), SlotId::NONE.0, PointerKind::Owning);
            }
        }
    }
}

fn container_of(maps: &TypeMaps, ty: TypeId) -> Option<Container> {
    let info = maps.tables.types.get(ty.0 as usize)?;
    if info.container == NO_CONTAINER {
        return None;
    }
    maps.tables.containers.get(info.container as usize).copied()
}

/// The unsized last member of `ty`: (offset, element type).
fn tail_of(maps: &TypeMaps, ty: TypeId) -> Option<(u64, TypeId)> {
    let info = maps.tables.types.get(ty.0 as usize)?;
    let Kind::Struct { fields } = info.kind else {
        return None;
    };
    let f = maps
        .tables
        .fields(fields)
        .iter()
        .find(|f| f.offset >= info.size)?;
    match maps.tables.get(f.ty).kind {
        Kind::Array { elem, count: 0 } => Some((f.offset, elem)),
        _ => Some((f.offset, f.ty)),
    }
}

impl TypeMaps {
    /// Why walking a value of `t` would read part of it conservatively
    /// (the first reason met in its inline parts; what it points to are
    /// blocks of their own) and the inner type responsible, or `None`
    /// when its walk is exact. For coverage reports.
    pub fn fallback_of(&self, t: TypeId) -> Option<(Fallback, TypeId)> {
        self.fallback_at(t, 0)
    }

    fn fallback_at(&self, t: TypeId, depth: u32) -> Option<(Fallback, TypeId)> {
        let info = self.tables.types.get(t.0 as usize)?;
        if info.pointer_free {
            return None;
        }
        if depth > MAX_DEPTH {
            return Some((Fallback::Depth, t));
        }
        let inner = |ts: &[TypeId]| ts.iter().find_map(|&i| self.fallback_at(i, depth + 1));
        if let Some(c) = container_of(self, t) {
            return match c {
                Container::Counted { data_ty, .. } => inner(&[data_ty]),
                Container::OnceLock { ty, .. } | Container::ListSlot { ty, .. } => inner(&[ty]),
                Container::LazyLock { value, init, .. } => inner(&[value, init]),
                Container::SmallVec { elem, .. } => inner(&[elem]),
                Container::BTreeLeaf { key, val, .. } => inner(&[key, val]),
                _ => None,
            };
        }
        match info.kind {
            Kind::Union { uninit: true, .. } => Some((Fallback::Uninit, t)),
            Kind::Union { .. } => Some((Fallback::Union, t)),
            Kind::Opaque => Some((Fallback::Opaque, t)),
            Kind::Enum {
                discr: None,
                variants,
            } if variants.len > 1 => Some((Fallback::Discriminant, t)),
            Kind::Enum { variants, .. } => self
                .tables
                .variants(variants)
                .iter()
                .find_map(|v| self.fallback_at(v.ty, depth + 1)),
            Kind::Struct { fields } => self
                .tables
                .fields(fields)
                .iter()
                .find_map(|f| self.fallback_at(f.ty, depth + 1)),
            Kind::Array { elem, .. } => inner(&[elem]),
            Kind::Scalar(_) | Kind::Pointer { .. } | Kind::Code => None,
        }
    }
}
