//! Walking the containers whose live part DWARF does not say (the list in
//! `types::containers`) and the block shapes they give their buffers.
//! Same rules as the rest of the walker: no allocation, no panic, reads
//! only through `Walker::read`.

use super::super::containers::{Container, SLOT_READ, SLOT_WRITE};
use super::super::layout::{Kind, PtrClass, TypeId, NO_CONTAINER};
use super::super::TypeMaps;
use super::{
    BlockType, Fallback, Memory, OutPointer, PointerKind, Shape, SlotId, Walker, GROUP_WIDTH,
};

/// Where a container value sits and what holds it.
#[derive(Clone, Copy)]
pub(super) struct At {
    pub(super) off: u64,
    pub(super) slot: u32,
    /// False when the value may not be initialised (its pointers are only
    /// candidates).
    pub(super) certain: bool,
    pub(super) depth: u32,
}

impl At {
    fn kind(self, kind: PointerKind) -> PointerKind {
        if self.certain {
            kind
        } else {
            PointerKind::Conservative
        }
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

pub(crate) fn container_of(maps: &TypeMaps, ty: TypeId) -> Option<Container> {
    let info = maps.tables.types.get(ty.0 as usize)?;
    if info.container == NO_CONTAINER {
        return None;
    }
    maps.tables.containers.get(info.container as usize).copied()
}

/// The unsized last member of `ty`: (offset, element type).
pub(super) fn tail_of(maps: &TypeMaps, ty: TypeId) -> Option<(u64, TypeId)> {
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

impl<M: Memory, F: FnMut(OutPointer)> Walker<'_, M, F> {
    /// A container value; false when it must be read as a plain layout
    /// instead (a btree node met inline).
    #[inline]
    pub(super) fn container(&mut self, c: Container, at: At) -> bool {
        match c {
            Container::Vec { ptr, len, elem } => self.buffer(at, ptr, len, elem),
            Container::VecDeque {
                ptr,
                cap,
                head,
                len,
                elem,
            } => self.ring_buffer(at, [ptr, cap, head, len], elem),
            Container::RawTable { ctrl, mask, bucket } => self.table(at, ctrl, mask, bucket),
            Container::BTreeRef { node, height, leaf } => self.btree_root(at, node, height, leaf),
            Container::BTreeLeaf { .. } => return false,
            Container::Counted {
                strong,
                data,
                data_ty,
            } => {
                // strong == 0: the value was dropped; only `Weak`s keep
                // the allocation, whose bytes are stale.
                if self.read(at.off + strong as u64, 8).is_some_and(|s| s != 0) {
                    self.value(
                        data_ty,
                        at.off + data as u64,
                        at.slot,
                        at.certain,
                        at.depth + 1,
                    );
                }
            }
            Container::Shared {
                ptr,
                ptr_ty,
                weak,
                arc,
            } => {
                let kind = at.kind(if weak {
                    PointerKind::Weak
                } else {
                    PointerKind::Shared
                });
                self.shared(at.off + ptr as u64, ptr_ty, arc, at.slot, kind);
            }
            Container::OnceLock {
                state,
                state_size,
                value,
                ty,
            } => self.once_cell(at, (state, state_size), value, ty, None),
            Container::LazyLock {
                state,
                state_size,
                data,
                value,
                init,
            } => self.once_cell(at, (state, state_size), data, value, Some(init)),
            Container::IntoIter {
                buf,
                ptr,
                end,
                elem,
            } => self.iter_buffer(at, [buf, ptr, end], elem),
            Container::ListSlot { state, msg, ty } => {
                let st = self.read(at.off + state as u64, 8).unwrap_or(0);
                if st & SLOT_WRITE != 0 && st & SLOT_READ == 0 {
                    self.value(ty, at.off + msg as u64, at.slot, at.certain, at.depth + 1);
                }
            }
            Container::SmallVec {
                capacity,
                inline,
                heap_ptr,
                heap_len,
                inline_cap,
                elem,
            } => self.small_vec(at, [capacity, inline, heap_ptr, heap_len], inline_cap, elem),
            Container::FatSlice {
                ptr,
                len,
                pointee,
                tail,
                class,
            } => self.fat_slice(
                at.off,
                [ptr, len],
                pointee,
                tail,
                at.slot,
                at.kind(class_kind(class)),
            ),
            Container::FatDyn { ptr, vtable, class } => self.fat_dyn(
                at.off,
                [ptr, vtable],
                None,
                at.slot,
                at.kind(class_kind(class)),
            ),
        }
        true
    }

    /// Reads the words at `offs` of the container at `at`.
    #[inline]
    fn words<const N: usize>(&self, at: u64, offs: [u32; N]) -> Option<[u64; N]> {
        let mut out = [0u64; N];
        for (o, w) in offs.iter().zip(out.iter_mut()) {
            *w = self.read(at + *o as u64, 8)?;
        }
        Some(out)
    }

    /// A `Vec`'s buffer: `len` elements.
    #[inline]
    fn buffer(&mut self, at: At, ptr: u32, len: u32, elem: TypeId) {
        let Some([p, n]) = self.words(at.off, [ptr, len]) else {
            return;
        };
        let pointee = plausible(n, self.maps.type_size(elem)).then_some(BlockType {
            ty: elem,
            shape: Shape::Elements { first: 0, len: n },
        });
        self.emit(
            at.off + ptr as u64,
            p,
            pointee,
            at.slot,
            at.kind(PointerKind::Owning),
        );
    }

    /// A `VecDeque`'s buffer: the ring from `head`.
    fn ring_buffer(&mut self, at: At, offs: [u32; 4], elem: TypeId) {
        let Some([p, cap, head, len]) = self.words(at.off, offs) else {
            return;
        };
        let ok =
            len <= cap && (head < cap || cap == 0) && plausible(cap, self.maps.type_size(elem));
        let pointee = ok.then_some(BlockType {
            ty: elem,
            shape: Shape::Ring { head, len, cap },
        });
        self.emit(
            at.off + offs[0] as u64,
            p,
            pointee,
            at.slot,
            at.kind(PointerKind::Owning),
        );
    }

    /// A hashbrown table: its control pointer points into the allocation.
    fn table(&mut self, at: At, ctrl: u32, mask: u32, bucket: TypeId) {
        let Some([p, m]) = self.words(at.off, [ctrl, mask]) else {
            return;
        };
        let buckets = m.wrapping_add(1);
        let ok = buckets.is_power_of_two() && plausible(buckets, self.maps.type_size(bucket) + 1);
        let pointee = ok.then_some(BlockType {
            ty: bucket,
            shape: Shape::HashTable { buckets },
        });
        self.emit(
            at.off + ctrl as u64,
            p,
            pointee,
            at.slot,
            at.kind(PointerKind::Owning),
        );
    }

    /// A btree `NodeRef`: the node and its height.
    fn btree_root(&mut self, at: At, node: u32, height: u32, leaf: TypeId) {
        let Some([p, h]) = self.words(at.off, [node, height]) else {
            return;
        };
        let pointee = (h < 64).then_some(BlockType {
            ty: leaf,
            shape: Shape::BTreeNode { height: h },
        });
        self.emit(
            at.off + node as u64,
            p,
            pointee,
            at.slot,
            at.kind(PointerKind::Owning),
        );
    }

    /// `OnceLock`/`LazyLock`: the value when complete; a `LazyLock`'s
    /// initialiser (`init`) when never run; both as candidates while
    /// running or poisoned.
    fn once_cell(
        &mut self,
        at: At,
        (state, size): (u32, u8),
        data: u32,
        value: TypeId,
        init: Option<TypeId>,
    ) {
        let once = self.maps.once;
        let off = at.off + data as u64;
        match self.read(at.off + state as u64, size) {
            Some(s) if s == once.complete => {
                self.value(value, off, at.slot, at.certain, at.depth + 1)
            }
            Some(s) if s == once.incomplete => {
                if let Some(init) = init {
                    self.value(init, off, at.slot, at.certain, at.depth + 1);
                }
            }
            None => {}
            Some(_) => {
                self.note(Fallback::Uninit);
                self.value(value, off, at.slot, false, at.depth + 1);
                if let Some(init) = init {
                    self.value(init, off, at.slot, false, at.depth + 1);
                }
            }
        }
    }

    /// `vec::IntoIter`: the buffer at `buf`, live in `[ptr, end)`.
    fn iter_buffer(&mut self, at: At, offs: [u32; 3], elem: TypeId) {
        let Some([b, p, e]) = self.words(at.off, offs) else {
            return;
        };
        let size = self.maps.type_size(elem);
        let pointee = (size > 0 && b <= p && p <= e && (p - b) % size == 0).then_some(BlockType {
            ty: elem,
            shape: Shape::Elements {
                first: (p - b) / size,
                len: (e - p) / size,
            },
        });
        self.emit(
            at.off + offs[0] as u64,
            b,
            pointee,
            at.slot,
            at.kind(PointerKind::Owning),
        );
    }

    /// `SmallVec`: inline while `capacity` (then the length) fits, else
    /// `len` elements on the heap.
    fn small_vec(&mut self, at: At, offs: [u32; 4], inline_cap: u64, elem: TypeId) {
        let [capacity, inline, heap_ptr, heap_len] = offs;
        let Some(cap) = self.read(at.off + capacity as u64, 8) else {
            return;
        };
        if cap <= inline_cap {
            self.elements(
                elem,
                at.off + inline as u64,
                cap,
                at.slot,
                at.certain,
                at.depth + 1,
            );
            return;
        }
        let Some([p, n]) = self.words(at.off, [heap_ptr, heap_len]) else {
            return;
        };
        let pointee = (n <= cap).then_some(BlockType {
            ty: elem,
            shape: Shape::Elements { first: 0, len: n },
        });
        self.emit(
            at.off + heap_ptr as u64,
            p,
            pointee,
            at.slot,
            at.kind(PointerKind::Owning),
        );
    }

    /// A fat pointer to a slice (`[ptr, len]` offsets): `len` elements, or
    /// a struct with an unsized tail of `len` (`tail`).
    fn fat_slice(
        &mut self,
        at: u64,
        [ptr, len]: [u32; 2],
        pointee: TypeId,
        tail: bool,
        slot: u32,
        kind: PointerKind,
    ) {
        let Some([p, n]) = self.words(at, [ptr, len]) else {
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

    /// A fat pointer to a `dyn Trait` (`[ptr, vtable]` offsets): its
    /// concrete type from the vtable; `arc`: behind an `Arc` (true) or
    /// `Rc` (false), so the block is the concrete type's `ArcInner`/`RcInner`.
    fn fat_dyn(
        &mut self,
        at: u64,
        [ptr, vtable]: [u32; 2],
        arc: Option<bool>,
        slot: u32,
        kind: PointerKind,
    ) {
        let Some([p, vt]) = self.words(at, [ptr, vtable]) else {
            return;
        };
        let pointee = self.maps.vtable(vt as usize).and_then(|v| match arc {
            None => v.concrete,
            Some(true) => v.arc_inner,
            Some(false) => v.rc_inner,
        });
        self.emit(at + ptr as u64, p, pointee.map(BlockType::one), slot, kind);
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
        match container_of(self.maps, ptr_ty) {
            Some(Container::FatSlice {
                ptr,
                len,
                pointee,
                tail,
                ..
            }) => self.fat_slice(at, [ptr, len], pointee, tail, slot, kind),
            Some(Container::FatDyn { ptr, vtable, .. }) => {
                self.fat_dyn(at, [ptr, vtable], Some(arc), slot, kind)
            }
            _ => self.conservative(at, info.size, slot),
        }
    }

    /// A `VecDeque` buffer's live elements.
    pub(super) fn ring(&mut self, ty: TypeId, head: u64, len: u64, cap: u64) {
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
    pub(super) fn ctrl_offset(&self, buckets: u64, size: u64) -> Option<u64> {
        if !buckets.is_power_of_two() {
            return None;
        }
        let ctrl = self.len.checked_sub(buckets.checked_add(GROUP_WIDTH)?)?;
        (ctrl >= buckets.checked_mul(size)?).then_some(ctrl)
    }

    /// A hashbrown allocation's full buckets (control byte high bit clear;
    /// EMPTY is 0xff, DELETED 0x80), 8 control bytes per read.
    pub(super) fn hash_table(&mut self, ty: TypeId, buckets: u64) {
        let size = self.maps.type_size(ty);
        if size == 0 || self.maps.pointer_free(ty) {
            return;
        }
        let Some(ctrl) = self.ctrl_offset(buckets, size) else {
            return;
        };
        let mut i = 0u64;
        while i < buckets {
            let n: u64 = if buckets - i >= 8 { 8 } else { 1 };
            let Some(group) = self.read(ctrl + i, n as u8) else {
                return;
            };
            for k in 0..n {
                if (group >> (k * 8)) & 0x80 == 0 {
                    self.value(ty, ctrl - (i + k + 1) * size, SlotId::NONE.0, true, 0);
                }
            }
            i += n;
        }
    }

    /// A struct with an unsized tail of `n` elements; an `ArcInner`/
    /// `RcInner` whose strong count is 0 holds nothing.
    pub(super) fn tail(&mut self, ty: TypeId, n: u64) {
        let Some((off, elem)) = tail_of(self.maps, ty) else {
            return;
        };
        if let Some(Container::Counted { strong, .. }) = container_of(self.maps, ty) {
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

    /// A btree node: `len` keys and values, its parent, and `len + 1`
    /// edges when internal (`height > 0`).
    pub(super) fn btree_node(&mut self, leaf: TypeId, height: u64) {
        let Some(Container::BTreeLeaf {
            parent,
            len,
            keys,
            vals,
            key,
            val,
            internal,
        }) = container_of(self.maps, leaf)
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
