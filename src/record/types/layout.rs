//! The type table: one record per distinct type of every loaded module,
//! with what each word of a value may hold.
//!
//! Types are deduplicated across compilation units and modules by a
//! fingerprint of their name, size and members (member types by their own
//! fingerprint, pointers by the name of what they point to), so the same
//! monomorphised `Vec<Job>` emitted by twenty units is one record, while two
//! versions of a crate whose same-named types differ in layout stay apart.

use super::names::NameId;

/// A type in the [`TypeMaps`](super::TypeMaps) table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeId(pub(crate) u32);

/// A range of a side table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

impl Span {
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// What a scalar word may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    /// Never an address: narrower than a pointer, a float, a bool, a
    /// char, a C-like enum. Never read.
    Plain,
    /// As wide as an address (`usize`, `isize`, `u64`, `i64` and the
    /// atomics wrapping them): a candidate pointer, read with its low tag
    /// bits masked.
    AddressWide,
    /// No value exists (`!`, an enum without variants): an enum variant
    /// holding one is never the active one.
    Never,
}

/// What a thin pointer type is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PtrClass {
    /// `Box<T>`: owns its pointee.
    Box,
    /// `&T`, `&mut T`.
    Ref,
    /// `*const T`, `*mut T` (and `NonNull<T>` through them): may be
    /// dangling, tagged or interior.
    Raw,
    /// A function pointer: never points into the heap. Never read.
    Code,
}

/// An enum's discriminant: where to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Discr {
    pub(crate) offset: u64,
    /// 1, 2, 4 or 8 bytes.
    pub(crate) size: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Pointer {
        pointee: Option<TypeId>,
        class: PtrClass,
    },
    Struct {
        fields: Span,
    },
    /// Every member at once: walked as the union of its members' maps.
    /// `uninit`: a `MaybeUninit<T>`, whose state is kept elsewhere.
    Union {
        fields: Span,
        uninit: bool,
    },
    /// A Rust enum (a struct with a `DW_TAG_variant_part`). `discr: None`
    /// when the enum has one variant (or rustc wrote no discriminant).
    Enum {
        discr: Option<Discr>,
        variants: Span,
    },
    Array {
        elem: TypeId,
        count: u64,
    },
    /// Code (a subroutine type): never points into the heap.
    Code,
    /// A layout DWARF does not give (a declaration, `dyn Trait`, an
    /// unknown tag): read conservatively.
    Opaque,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct TypeInfo {
    pub(crate) name: NameId,
    pub(crate) size: u64,
    pub(crate) align: u32,
    pub(crate) kind: Kind,
    /// Template type parameters (`T`, `K`, `V`, ...), in `params`.
    pub(crate) params: Span,
    /// No word of a value of this type can hold a heap address.
    pub(crate) pointer_free: bool,
    /// Index into the containers table (`NO_CONTAINER`: an ordinary type).
    pub(crate) container: u32,
    /// A struct's pointer map, flattened through nested plain structs
    /// (in `ops`; empty for other kinds): what the walker runs instead of
    /// descending field by field.
    pub(crate) ops: Span,
}

/// One step of a struct's flattened pointer map. Offsets are from the
/// start of the struct; `slot` is the innermost field's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A thin pointer (not code).
    Ptr {
        off: u32,
        slot: u32,
        class: PtrClass,
        pointee: Option<TypeId>,
    },
    /// An address-wide integer: a candidate.
    Word { off: u32, slot: u32 },
    /// A container (index into the containers table).
    Container { off: u32, slot: u32, index: u32 },
    /// A value the walker interprets (an enum, a union, a container, an
    /// array, an opaque type).
    Value { off: u32, slot: u32, ty: TypeId },
}

/// Most ops a struct's map is flattened into; past it the rest stays
/// nested (a `Value`).
const MAX_OPS: usize = 64;

pub(crate) const NO_CONTAINER: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Field {
    pub(crate) name: NameId,
    pub(crate) offset: u64,
    pub(crate) ty: TypeId,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Variant {
    /// `DW_AT_discr_value` bits; `None` for the variant that holds every
    /// other value (the untagged/niche-holding one).
    pub(crate) value: Option<u64>,
    pub(crate) name: NameId,
    pub(crate) offset: u64,
    pub(crate) ty: TypeId,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Param {
    pub(crate) name: NameId,
    pub(crate) ty: TypeId,
}

/// The type tables proper (the part of `TypeMaps` the walker reads).
#[derive(Default)]
pub(crate) struct Tables {
    pub(crate) types: Vec<TypeInfo>,
    pub(crate) fields: Vec<Field>,
    pub(crate) variants: Vec<Variant>,
    pub(crate) params: Vec<Param>,
    pub(crate) containers: Vec<super::containers::Container>,
    pub(crate) ops: Vec<Op>,
}

impl Tables {
    #[inline]
    pub(crate) fn get(&self, t: TypeId) -> &TypeInfo {
        &self.types[t.0 as usize]
    }

    pub(crate) fn fields(&self, s: Span) -> &[Field] {
        &self.fields[s.range()]
    }

    pub(crate) fn variants(&self, s: Span) -> &[Variant] {
        &self.variants[s.range()]
    }

    pub(crate) fn params(&self, t: TypeId) -> &[Param] {
        &self.params[self.get(t).params.range()]
    }

    /// The field of struct `t` named `name`.
    pub(crate) fn field(&self, t: TypeId, name: NameId) -> Option<Field> {
        match self.get(t).kind {
            Kind::Struct { fields } | Kind::Union { fields, .. } => {
                self.fields(fields).iter().find(|f| f.name == name).copied()
            }
            _ => None,
        }
    }

    /// Computes `pointer_free` for every type (after all units are in).
    pub(crate) fn compute_pointer_free(&mut self) {
        // 0 unknown, 1 in progress, 2 false, 3 true.
        let mut state = vec![0u8; self.types.len()];
        for i in 0..self.types.len() {
            self.pointer_free_of(TypeId(i as u32), &mut state, 0);
        }
        for (t, s) in self.types.iter_mut().zip(state) {
            t.pointer_free = s == 3;
        }
    }

    fn pointer_free_of(&self, t: TypeId, state: &mut [u8], depth: u32) -> bool {
        match state[t.0 as usize] {
            2 => return false,
            3 => return true,
            // A cycle through inline members is impossible in a real type;
            // in malformed DWARF, assume the worst.
            1 => return false,
            _ => {}
        }
        if depth > 200 {
            return false;
        }
        state[t.0 as usize] = 1;
        let info = *self.get(t);
        let free = match info.kind {
            Kind::Scalar(Scalar::Plain | Scalar::Never) | Kind::Code => true,
            Kind::Scalar(Scalar::AddressWide) | Kind::Opaque => false,
            Kind::Pointer { class, .. } => class == PtrClass::Code,
            Kind::Struct { fields } | Kind::Union { fields, .. } => self
                .fields(fields)
                .iter()
                .all(|f| self.pointer_free_of(f.ty, state, depth + 1)),
            Kind::Enum { variants, .. } => self
                .variants(variants)
                .iter()
                .all(|v| self.pointer_free_of(v.ty, state, depth + 1)),
            Kind::Array { elem, count } => {
                count == 0 || self.pointer_free_of(elem, state, depth + 1)
            }
        };
        state[t.0 as usize] = if free { 3 } else { 2 };
        free
    }

    /// Enums rustc wrote without a discriminant because all variants but
    /// one are uninhabited (`Option<Infallible>`, `Result<T, !>`): keeps
    /// only the inhabited variant, so they are walked exactly.
    pub(crate) fn prune_uninhabited_variants(&mut self) {
        // 0 unknown, 1 in progress, 2 inhabited, 3 uninhabited.
        let mut state = vec![0u8; self.types.len()];
        for i in 0..self.types.len() {
            let Kind::Enum {
                discr: None,
                variants,
            } = self.types[i].kind
            else {
                continue;
            };
            if variants.len < 2 {
                continue;
            }
            let inhabited: Vec<usize> = variants
                .range()
                .filter(|&v| !self.uninhabited(self.variants[v].ty, &mut state, 0))
                .collect();
            if let [only] = inhabited[..] {
                self.variants.swap(variants.start as usize, only);
                if let Kind::Enum { variants: v, .. } = &mut self.types[i].kind {
                    v.len = 1;
                }
            }
        }
    }

    fn uninhabited(&self, t: TypeId, state: &mut [u8], depth: u32) -> bool {
        match state[t.0 as usize] {
            2 | 1 => return false,
            3 => return true,
            _ => {}
        }
        if depth > 64 {
            return false;
        }
        state[t.0 as usize] = 1;
        let info = *self.get(t);
        let empty = match info.kind {
            Kind::Scalar(s) => s == Scalar::Never,
            Kind::Enum { variants, .. } => self
                .variants(variants)
                .iter()
                .all(|v| self.uninhabited(v.ty, state, depth + 1)),
            Kind::Struct { fields } => self
                .fields(fields)
                .iter()
                .any(|f| self.uninhabited(f.ty, state, depth + 1)),
            Kind::Array { elem, count } => count > 0 && self.uninhabited(elem, state, depth + 1),
            _ => false,
        };
        state[t.0 as usize] = if empty { 3 } else { 2 };
        empty
    }

    /// Clears pointees that have no layout (`dyn Trait`, declarations):
    /// a pointer to one does not type its target.
    pub(crate) fn clear_opaque_pointees(&mut self) {
        for i in 0..self.types.len() {
            if let Kind::Pointer {
                pointee: Some(p),
                class,
            } = self.types[i].kind
            {
                if self.get(p).kind == Kind::Opaque {
                    self.types[i].kind = Kind::Pointer {
                        pointee: None,
                        class,
                    };
                }
            }
        }
    }

    /// Flattens every struct's pointer map (after containers and
    /// `pointer_free` are known).
    pub(crate) fn build_ops(&mut self) {
        let mut scratch = Vec::new();
        for i in 0..self.types.len() {
            let info = self.types[i];
            let Kind::Struct { fields } = info.kind else {
                continue;
            };
            if info.pointer_free || info.container != NO_CONTAINER {
                continue;
            }
            scratch.clear();
            self.flatten(fields, 0, &mut scratch, 0);
            let start = self.ops.len() as u32;
            self.ops.extend_from_slice(&scratch);
            self.types[i].ops = Span {
                start,
                len: scratch.len() as u32,
            };
        }
    }

    fn flatten(&self, fields: Span, base: u64, out: &mut Vec<Op>, depth: u32) {
        for i in fields.range() {
            let f = self.fields[i];
            let info = self.get(f.ty);
            if info.pointer_free {
                continue;
            }
            let Ok(off) = u32::try_from(base + f.offset) else {
                continue;
            };
            let slot = i as u32;
            let nested = match info.kind {
                Kind::Struct { fields } if info.container == NO_CONTAINER => Some(fields),
                _ => None,
            };
            if info.container != NO_CONTAINER {
                out.push(Op::Container {
                    off,
                    slot,
                    index: info.container,
                });
                continue;
            }
            if let Some(op) = self.nullable_pointer(f.ty, off) {
                out.push(op);
                continue;
            }
            match (info.kind, nested) {
                (Kind::Pointer { pointee, class }, _) => out.push(Op::Ptr {
                    off,
                    slot,
                    class,
                    pointee,
                }),
                (Kind::Scalar(Scalar::AddressWide), _) => out.push(Op::Word { off, slot }),
                (_, Some(inner)) if depth < 16 && out.len() + inner.len as usize <= MAX_OPS => {
                    self.flatten(inner, off as u64, out, depth + 1)
                }
                _ => out.push(Op::Value {
                    off,
                    slot,
                    ty: f.ty,
                }),
            }
        }
    }

    /// `Option<Box<T>>`, `Option<&T>`, `Option<NonNull<T>>` and the like at
    /// `off`: an enum whose one data-carrying variant is a single pointer
    /// that is also the discriminant, every other variant being a
    /// discriminant value too small to be an address. Reading the word as
    /// that pointer is then exact (the small values are never reported),
    /// so it becomes one `Ptr` op.
    fn nullable_pointer(&self, ty: TypeId, off: u32) -> Option<Op> {
        let Kind::Enum {
            discr: Some(d),
            variants,
        } = self.get(ty).kind
        else {
            return None;
        };
        if d.size != 8 {
            return None;
        }
        let mut data = None;
        for v in self.variants(variants) {
            match v.value {
                Some(x) if x < 4096 && self.get(v.ty).pointer_free => {}
                None if data.is_none() => data = Some(*v),
                _ => return None,
            }
        }
        let v = data?;
        let Kind::Struct { fields } = self.get(v.ty).kind else {
            return None;
        };
        let mut live = fields
            .range()
            .filter(|&i| !self.get(self.fields[i].ty).pointer_free);
        let (Some(i), None) = (live.next(), live.next()) else {
            return None;
        };
        let f = self.fields[i];
        let info = self.get(f.ty);
        match info.kind {
            Kind::Pointer { pointee, class }
                if info.container == NO_CONTAINER && v.offset + f.offset == d.offset =>
            {
                Some(Op::Ptr {
                    off: off + u32::try_from(d.offset).ok()?,
                    slot: i as u32,
                    class,
                    pointee,
                })
            }
            _ => None,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.types.capacity() * size_of::<TypeInfo>()
            + self.fields.capacity() * size_of::<Field>()
            + self.variants.capacity() * size_of::<Variant>()
            + self.params.capacity() * size_of::<Param>()
            + self.containers.capacity() * size_of::<super::containers::Container>()
            + self.ops.capacity() * size_of::<Op>()
    }
}

impl Tables {
    /// The kind of the type of the field at `offset` of struct `t`.
    pub(crate) fn field_type(&self, t: TypeId, offset: u32) -> Option<Kind> {
        let Kind::Struct { fields } = self.get(t).kind else {
            return None;
        };
        let f = self
            .fields(fields)
            .iter()
            .find(|f| f.offset == offset as u64)?;
        Some(self.get(f.ty).kind)
    }
}
