//! Field paths for edges: `Retries.history[3].closure` instead of `+0x68`.
//!
//! A path is rebuilt after the pause from the block's type, the word's
//! offset and its [`SlotId`] (the innermost field the walker read it
//! from), which picks the variant of an enum or the member of a union the
//! offset alone cannot. std's own wrappers (`Option`, `Cell`, `Mutex`,
//! `MaybeUninit`, ...) add no segment; a path stops at a container or a
//! pointer, whose name is the field holding it.

use super::layout::{Kind, TypeId, NO_CONTAINER};
use super::walk::{BlockType, Shape, SlotId};
use super::TypeMaps;

/// Deepest path printed.
const MAX_SEGMENTS: u32 = 24;

impl TypeMaps {
    /// The readable path of the word at `offset` of a block of type `block`
    /// (e.g. `Retries.history[3].closure`).
    pub fn slot_path(&self, block: BlockType, offset: usize, slot: SlotId) -> String {
        let mut out = short_name(self.type_name(block.ty));
        let size = self.type_size(block.ty);
        let off = offset as u64;
        let within = match block.shape {
            Shape::One | Shape::BTreeNode { .. } | Shape::Tail { .. } => off,
            Shape::Elements { .. } | Shape::HashTable { .. } if size == 0 => off,
            Shape::Elements { .. } => {
                out.push_str(&format!("[{}]", off / size));
                off % size
            }
            Shape::Ring { head, cap, .. } => {
                let i = off / size.max(1);
                out.push_str(&format!("[{}]", (i + cap - head.min(cap)) % cap.max(1)));
                off % size.max(1)
            }
            Shape::HashTable { .. } => {
                out.push_str("[..]");
                size - 1 - (size - 1 - off % size) % size
            }
        };
        self.descend(block.ty, within, slot.0, &mut out, 0);
        out
    }

    fn descend(&self, ty: TypeId, off: u64, slot: u32, out: &mut String, depth: u32) {
        let Some(info) = self.tables.types.get(ty.0 as usize) else {
            return;
        };
        if depth > MAX_SEGMENTS || info.container != NO_CONTAINER && !self.see_through(ty) {
            return;
        }
        let user = is_user_type(self.type_name(ty));
        match info.kind {
            Kind::Struct { fields } | Kind::Union { fields, .. } => {
                let candidates = self
                    .tables
                    .fields(fields)
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| {
                        let s = self.type_size(f.ty);
                        f.offset <= off && (off < f.offset + s || s == 0 && off == f.offset)
                    });
                let mut chosen = None;
                for (i, f) in candidates {
                    let idx = fields.start + i as u32;
                    if chosen.is_none() || idx == slot || self.contains_field(f.ty, slot, 0) {
                        chosen = Some((idx, *f));
                    }
                }
                let Some((_, f)) = chosen else { return };
                if user {
                    let name = self.names.get(f.name);
                    out.push('.');
                    out.push_str(name.strip_prefix("__").unwrap_or(name));
                }
                self.descend(f.ty, off - f.offset, slot, out, depth + 1);
            }
            Kind::Enum { variants, .. } => {
                let vs = self.tables.variants(variants);
                let v = vs
                    .iter()
                    .find(|v| self.contains_field(v.ty, slot, 0))
                    .or_else(|| vs.first());
                let Some(v) = v else { return };
                if user {
                    out.push_str("::");
                    out.push_str(self.names.get(v.name));
                }
                self.descend(v.ty, off.saturating_sub(v.offset), slot, out, depth + 1);
            }
            Kind::Array { elem, .. } => {
                let size = self.type_size(elem).max(1);
                out.push_str(&format!("[{}]", off / size));
                self.descend(elem, off % size, slot, out, depth + 1);
            }
            _ => {}
        }
    }

    /// Containers that hold their value inline (`ArcInner`, `OnceLock`,
    /// `LazyLock`, channel slots): the path goes on into the value.
    fn see_through(&self, ty: TypeId) -> bool {
        let name = self.type_name(ty);
        [
            "alloc::sync::ArcInner<",
            "alloc::rc::RcInner<",
            "std::sync::once_lock::OnceLock<",
            "std::sync::lazy_lock::LazyLock<",
            "std::sync::mpmc::list::Slot<",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    }

    /// Whether field `slot` lies anywhere inside type `ty`.
    fn contains_field(&self, ty: TypeId, slot: u32, depth: u32) -> bool {
        if slot == SlotId::NONE.0 || depth > 16 {
            return false;
        }
        let Some(info) = self.tables.types.get(ty.0 as usize) else {
            return false;
        };
        match info.kind {
            Kind::Struct { fields } | Kind::Union { fields, .. } => fields.range().any(|i| {
                i as u32 == slot
                    || self
                        .tables
                        .fields
                        .get(i)
                        .is_some_and(|f| self.contains_field(f.ty, slot, depth + 1))
            }),
            Kind::Enum { variants, .. } => self
                .tables
                .variants(variants)
                .iter()
                .any(|v| self.contains_field(v.ty, slot, depth + 1)),
            Kind::Array { elem, .. } => self.contains_field(elem, slot, depth + 1),
            _ => false,
        }
    }
}

/// Types whose fields are the program's, not std's plumbing.
fn is_user_type(name: &str) -> bool {
    !["core::", "alloc::", "std::", "hashbrown::"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `leakprof::lab::Job` -> `Job`; `alloc::vec::Vec<leakprof::lab::Job,
/// alloc::alloc::Global>` -> `Vec<Job>`: last path segments, no default
/// allocator.
pub fn short_name(name: &str) -> String {
    let name = name.replace(", alloc::alloc::Global", "");
    let mut out = String::with_capacity(name.len());
    let mut segment = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            segment.clear();
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '{' || c == '}' || c == '#' {
            segment.push(c);
            continue;
        }
        out.push_str(&segment);
        segment.clear();
        out.push(c);
    }
    out.push_str(&segment);
    out
}

#[cfg(test)]
mod tests {
    use super::short_name;

    #[test]
    fn short_names_drop_paths_and_global() {
        assert_eq!(short_name("leakprof::lab::Job"), "Job");
        assert_eq!(
            short_name("alloc::vec::Vec<leakprof::lab::Job, alloc::alloc::Global>"),
            "Vec<Job>"
        );
        assert_eq!(
            short_name("(u64, alloc::boxed::Box<u8, alloc::alloc::Global>)"),
            "(u64, Box<u8>)"
        );
    }
}
