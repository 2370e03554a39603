//! Interpreting a block's memory with its type: its out-pointers.
//!
//! [`walk`] is called during the stop-the-world pause. It never allocates
//! (results go to the caller's callback), never panics (every table access
//! is checked, every read is bounds-checked against the region), reads
//! only aligned words that overlap the region, through the caller's
//! [`Memory`], and its recursion depth is bounded ([`MAX_DEPTH`]) as are its
//! loops (by the region's size).

mod live_part;

use super::containers::Container;
use super::layout::{Discr, Kind, Op, PtrClass, Scalar, Span, TypeId, TypeInfo, NO_CONTAINER};
use super::TypeMaps;
pub(crate) use live_part::container_of;
use live_part::{tail_of, At};

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
    /// The whole block, untyped because the module that allocated it has
    /// no debug info (the caller's verdict: [`TypeMaps::has_debug_info`]).
    NoDebugInfo,
    /// The whole block, untyped because neither a typed owner nor its
    /// allocation site says what it is (the caller's verdict).
    UnknownType,
    /// The whole block, because the types its owners declared kept
    /// contradicting each other (the caller's verdict).
    Contradicted,
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
            Shape::Tail { len } => tail_of(self.maps, bt.ty).and_then(|(off, elem)| {
                let esz = self.maps.tables.get(elem).size;
                len.checked_mul(esz)?.checked_add(off)
            }),
            Shape::BTreeNode { height } => match container_of(self.maps, bt.ty) {
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
    #[inline]
    fn read(&self, off: u64, size: u8) -> Option<u64> {
        let end = off.checked_add(size as u64)?;
        if end > self.len || !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let addr = self.start.checked_add(off as usize)?;
        if size == 8 && addr % 8 == 0 {
            return Some(self.mem.word(addr) as u64);
        }
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

    #[inline]
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
    #[inline]
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
        if info.container != NO_CONTAINER {
            if let Some(&c) = self.maps.tables.containers.get(info.container as usize) {
                let at = At {
                    off,
                    slot,
                    certain,
                    depth,
                };
                if self.container(c, at) {
                    return;
                }
            }
        }
        self.plain(&info, off, slot, certain, depth);
    }

    fn value_plain(&mut self, ty: TypeId, off: u64, slot: u32, certain: bool, depth: u32) {
        if let Some(&info) = self.maps.tables.types.get(ty.0 as usize) {
            self.plain(&info, off, slot, certain, depth);
        }
    }

    /// A value by its DWARF layout alone.
    fn plain(&mut self, info: &TypeInfo, off: u64, slot: u32, certain: bool, depth: u32) {
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
            Kind::Struct { .. } => self.ops(info.ops, off, certain, depth),
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

    /// A struct by its flattened pointer map.
    #[inline]
    fn ops(&mut self, ops: Span, off: u64, certain: bool, depth: u32) {
        for i in ops.range() {
            let Some(&op) = self.maps.tables.ops.get(i) else {
                return;
            };
            match op {
                Op::Ptr {
                    off: o,
                    slot,
                    class,
                    pointee,
                } => self.pointer(off + o as u64, pointee, class, slot, certain),
                Op::Word { off: o, slot } => {
                    if let Some(v) = self.read(off + o as u64, 8) {
                        let kind = if certain {
                            PointerKind::Word
                        } else {
                            PointerKind::Conservative
                        };
                        self.emit(off + o as u64, v, None, slot, kind);
                    }
                }
                Op::Value { off: o, slot, ty } => {
                    self.value(ty, off + o as u64, slot, certain, depth + 1)
                }
                Op::Container {
                    off: o,
                    slot,
                    index,
                } => {
                    if let Some(&c) = self.maps.tables.containers.get(index as usize) {
                        let at = At {
                            off: off + o as u64,
                            slot,
                            certain,
                            depth: depth + 1,
                        };
                        if !self.container(c, at) {
                            // A btree node met inline: its plain layout.
                            if let Some(&f) = self.maps.tables.fields.get(slot as usize) {
                                self.value_plain(f.ty, off + o as u64, slot, certain, depth + 1);
                            }
                        }
                    }
                }
            }
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

    #[inline]
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
        // Pointees without a layout were cleared when the tables were built.
        self.emit(off, v, pointee.map(BlockType::one), slot, kind);
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
