//! What the type maps cover: which types a walk reads partly as
//! candidate words, and why (for coverage reports; never during a pause).

use super::containers::Container;
use super::layout::{Kind, TypeId};
use super::walk::{container_of, Fallback, MAX_DEPTH};
use super::TypeMaps;

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
