//! Building the type table from each unit's raw DIEs (see `dwarf`).
//!
//! Per unit: link children, give every type DIE its qualified name and a
//! fingerprint, map the fingerprint to a global [`TypeId`] (new ones get a
//! record), and collect statics and vtables. The unit's DIE-offset ->
//! `TypeId` map is kept for `site`, which resolves template parameters of
//! inlined frames later.

use super::super::fxhash::FxHashMap;
use super::dwarf::{self, Node, Piece, Tag, NONE};
use super::layout::{
    Discr, Field, Kind, Param, PtrClass, Scalar, Span, Tables, TypeId, TypeInfo, Variant,
    NO_CONTAINER,
};
use super::names::{NameId, Names};

/// A unit's DIE offsets of type DIEs and their ids (sorted by offset).
pub(crate) struct UnitTypes {
    pub(crate) module: u32,
    pub(crate) unit: usize,
    pub(crate) offsets: Vec<u32>,
    pub(crate) ids: Vec<TypeId>,
}

impl UnitTypes {
    pub(crate) fn type_at(&self, offset: u32) -> Option<TypeId> {
        let i = self.offsets.binary_search(&offset).ok()?;
        Some(self.ids[i])
    }
}

/// A static variable as DWARF declares it (link-time addresses).
pub(crate) struct RawStatic {
    pub(crate) module: u32,
    pub(crate) name: NameId,
    pub(crate) ty: TypeId,
    pub(crate) pieces: Vec<Piece>,
}

#[derive(Default)]
pub(crate) struct Builder {
    pub(crate) tables: Tables,
    pub(crate) names: Names,
    by_fp: FxHashMap<u64, TypeId>,
    pub(crate) units: Vec<UnitTypes>,
    pub(crate) statics: Vec<RawStatic>,
    /// (module, link-time address, concrete type).
    pub(crate) vtables: Vec<(u32, u64, TypeId)>,
    /// DIEs whose location was not a static address (TLS, optimised out).
    pub(crate) skipped_variables: u64,
    pub(crate) type_dies: u64,
    /// Types met only as declarations (`DW_AT_declaration`, no members):
    /// resolved by name to a definition in `resolve_declarations`.
    declarations: Vec<TypeId>,
}

/// Scratch state for one unit.
struct UnitCtx<'a> {
    nodes: &'a [Node],
    first_child: Vec<u32>,
    next_sibling: Vec<u32>,
    /// Qualified name per node (NONE: not computed yet).
    qual: Vec<u32>,
    /// Fingerprint per node (0: not computed; 1: in progress).
    fp: Vec<u64>,
    /// TypeId per node (NONE: not assigned).
    id: Vec<u32>,
    scratch: String,
}

const FP_IN_PROGRESS: u64 = 1;

#[inline]
fn mix(h: u64, x: u64) -> u64 {
    (h.rotate_left(23) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn finish(mut h: u64) -> u64 {
    // splitmix64's finaliser; never 0 or FP_IN_PROGRESS.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h | 2
}

impl<'a> UnitCtx<'a> {
    fn new(nodes: &'a [Node]) -> UnitCtx<'a> {
        let n = nodes.len();
        let mut first_child = vec![NONE; n];
        let mut next_sibling = vec![NONE; n];
        let mut last_child = vec![NONE; n];
        for (i, node) in nodes.iter().enumerate() {
            let p = node.parent;
            if p == NONE {
                continue;
            }
            let p = p as usize;
            if last_child[p] == NONE {
                first_child[p] = i as u32;
            } else {
                next_sibling[last_child[p] as usize] = i as u32;
            }
            last_child[p] = i as u32;
        }
        UnitCtx {
            nodes,
            first_child,
            next_sibling,
            qual: vec![NONE; n],
            fp: vec![0; n],
            id: vec![NONE; n],
            scratch: String::new(),
        }
    }

    fn index_of(&self, offset: u32) -> Option<usize> {
        if offset == NONE {
            return None;
        }
        self.nodes.binary_search_by_key(&offset, |n| n.offset).ok()
    }

    fn children(&self, i: usize) -> Children<'_, 'a> {
        Children {
            ctx: self,
            next: self.first_child[i],
        }
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut i: usize) -> Option<usize> {
        for _ in 0..16 {
            if self.nodes[i].tag != Tag::Alias {
                return Some(i);
            }
            i = self.index_of(self.nodes[i].ty)?;
        }
        None
    }

    fn target(&self, i: usize) -> Option<usize> {
        self.resolve(self.index_of(self.nodes[i].ty)?)
    }
}

struct Children<'c, 'a> {
    ctx: &'c UnitCtx<'a>,
    next: u32,
}

impl Iterator for Children<'_, '_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.next == NONE {
            return None;
        }
        let i = self.next as usize;
        self.next = self.ctx.next_sibling[i];
        Some(i)
    }
}

fn is_type_tag(tag: Tag) -> bool {
    matches!(
        tag,
        Tag::Struct
            | Tag::Union
            | Tag::Enumeration
            | Tag::Pointer
            | Tag::Array
            | Tag::Base
            | Tag::Subroutine
            | Tag::Unspecified
    )
}

fn is_scope_tag(tag: Tag) -> bool {
    matches!(
        tag,
        Tag::Namespace | Tag::Struct | Tag::Union | Tag::Enumeration
    )
}

impl Builder {
    /// Adds one unit's nodes (from [`dwarf::read_unit_nodes`]).
    pub(crate) fn add_unit(
        &mut self,
        module: u32,
        dwarf: &dwarf::Dwarf,
        unit: &dwarf::Unit,
        nodes: &[Node],
    ) {
        let mut cx = UnitCtx::new(nodes);
        let mut fresh: Vec<usize> = Vec::new();
        let mut offsets = Vec::new();
        let mut ids = Vec::new();
        for i in 0..nodes.len() {
            let tag = nodes[i].tag;
            if !(is_type_tag(tag) || tag == Tag::Alias) {
                continue;
            }
            if let Some(id) = self.assign(&mut cx, i, &mut fresh) {
                offsets.push(nodes[i].offset);
                ids.push(id);
            }
        }
        self.type_dies += offsets.len() as u64;
        for &i in &fresh {
            self.fill(&mut cx, i);
        }
        self.add_variables(&mut cx, module, dwarf, unit, &mut fresh);
        for &i in &fresh {
            if cx.id[i] != NONE && self.tables.types[cx.id[i] as usize].size == u64::MAX {
                self.fill(&mut cx, i);
            }
        }
        let unit_offset = unit.header.offset().0;
        self.units.push(UnitTypes {
            module,
            unit: unit_offset,
            offsets,
            ids,
        });
    }

    /// The TypeId of type node `i` (aliases resolve to their target).
    fn assign(&mut self, cx: &mut UnitCtx, i: usize, fresh: &mut Vec<usize>) -> Option<TypeId> {
        let r = cx.resolve(i)?;
        if cx.id[r] != NONE {
            return Some(TypeId(cx.id[r]));
        }
        let key = self.key(cx, r, 0);
        let id = match self.by_fp.get(&key) {
            Some(&id) => id,
            None => {
                let id = TypeId(self.tables.types.len() as u32);
                let name = self.qualified(cx, r);
                self.tables.types.push(TypeInfo {
                    name,
                    size: u64::MAX, // filled by `fill`
                    align: 0,
                    kind: Kind::Opaque,
                    params: Span::default(),
                    pointer_free: false,
                    container: NO_CONTAINER,
                });
                self.by_fp.insert(key, id);
                fresh.push(r);
                id
            }
        };
        cx.id[r] = id.0;
        Some(id)
    }

    /// The id of the type a node's `DW_AT_type` names (assigning it if it
    /// was not met yet, e.g. a type after its first use).
    fn type_of(&mut self, cx: &mut UnitCtx, i: usize, fresh: &mut Vec<usize>) -> Option<TypeId> {
        let t = cx.index_of(cx.nodes[i].ty)?;
        self.assign(cx, t, fresh)
    }

    /// Identity key: fingerprint; pointers also by what they point to.
    fn key(&mut self, cx: &mut UnitCtx, i: usize, depth: u32) -> u64 {
        let fp = self.fingerprint(cx, i, depth);
        if cx.nodes[i].tag != Tag::Pointer {
            return fp;
        }
        match cx.target(i) {
            Some(t) if depth < 64 => finish(mix(fp, self.key(cx, t, depth + 1))),
            _ => fp,
        }
    }

    /// The fingerprint of node `i`: name, size and members; members that
    /// are pointers contribute their name and their pointee's name only.
    fn fingerprint(&mut self, cx: &mut UnitCtx, i: usize, depth: u32) -> u64 {
        match cx.fp[i] {
            0 => {}
            FP_IN_PROGRESS => return 3,
            h => return h,
        }
        if depth > 200 {
            return 5;
        }
        cx.fp[i] = FP_IN_PROGRESS;
        let node = cx.nodes[i];
        let name = self.qualified(cx, i).0 as u64;
        let mut h = mix(mix(node.tag as u64, name), node.size.unwrap_or(u64::MAX));
        match node.tag {
            Tag::Base => h = mix(h, node.encoding as u64),
            Tag::Pointer => {
                let pointee = cx
                    .target(i)
                    .map_or(0, |t| self.qualified(cx, t).0 as u64 + 1);
                h = mix(h, pointee);
            }
            Tag::Array => {
                let elem = cx.target(i).map_or(0, |t| self.inline_fp(cx, t, depth));
                h = mix(mix(h, elem), array_count(cx, i));
            }
            Tag::Struct | Tag::Union => {
                h = mix(h, node.declaration as u64);
                h = self.hash_children(cx, i, h, depth);
            }
            _ => {}
        }
        let h = finish(h);
        cx.fp[i] = h;
        h
    }

    fn inline_fp(&mut self, cx: &mut UnitCtx, t: usize, depth: u32) -> u64 {
        if cx.nodes[t].tag == Tag::Pointer {
            let pointee = cx
                .target(t)
                .map_or(0, |p| self.qualified(cx, p).0 as u64 + 1);
            finish(mix(mix(7, self.qualified(cx, t).0 as u64), pointee))
        } else {
            self.fingerprint(cx, t, depth + 1)
        }
    }

    fn hash_children(&mut self, cx: &mut UnitCtx, i: usize, mut h: u64, depth: u32) -> u64 {
        let kids: Vec<usize> = cx.children(i).collect();
        for c in kids {
            let n = cx.nodes[c];
            match n.tag {
                Tag::Member => {
                    let ty = cx.target(c).map_or(0, |t| self.inline_fp(cx, t, depth));
                    h = mix(h, 11);
                    h = mix(h, self.names.intern_bytes(n.name).0 as u64);
                    h = mix(mix(h, n.member_offset), ty);
                }
                Tag::VariantPart => {
                    let discr = cx.index_of(n.discr).map_or(u64::MAX, |d| {
                        cx.nodes[d].member_offset ^ (node_size(cx, d) << 32)
                    });
                    h = mix(mix(h, 13), discr);
                    h = self.hash_children(cx, c, h, depth + 1);
                }
                Tag::Variant => {
                    h = mix(mix(h, 17), n.discr_value.map_or(u64::MAX - 1, |v| v));
                    h = self.hash_children(cx, c, h, depth + 1);
                }
                _ => {}
            }
        }
        h
    }

    /// The qualified name of node `i` (namespaces and enclosing types
    /// joined with `::`; arrays and unnamed pointers get a made-up one).
    fn qualified(&mut self, cx: &mut UnitCtx, i: usize) -> NameId {
        if cx.qual[i] != NONE {
            return NameId(cx.qual[i]);
        }
        let node = cx.nodes[i];
        let own = String::from_utf8_lossy(node.name).into_owned();
        let text = match node.tag {
            Tag::Namespace | Tag::Struct | Tag::Union | Tag::Enumeration | Tag::Variable => {
                let own = if own.is_empty() {
                    "{anon}".to_string()
                } else {
                    own
                };
                let p = node.parent;
                if p != NONE && is_scope_tag(cx.nodes[p as usize].tag) {
                    let prefix = self.qualified(cx, p as usize);
                    format!("{}::{own}", self.names.get(prefix))
                } else {
                    own
                }
            }
            Tag::Array => {
                let elem = match cx.target(i) {
                    Some(t) => {
                        let n = self.qualified(cx, t);
                        self.names.get(n).to_string()
                    }
                    None => "?".to_string(),
                };
                format!("[{elem}; {}]", array_count(cx, i))
            }
            Tag::Pointer if own.is_empty() => {
                let to = match cx.target(i) {
                    Some(t) => {
                        let n = self.qualified(cx, t);
                        self.names.get(n).to_string()
                    }
                    None => "void".to_string(),
                };
                format!("*{to}")
            }
            _ if own.is_empty() => "?".to_string(),
            _ => own,
        };
        cx.scratch.clear();
        let id = self.names.intern(&text);
        cx.qual[i] = id.0;
        id
    }

    /// Writes the record of a type met for the first time.
    fn fill(&mut self, cx: &mut UnitCtx, i: usize) {
        let mut fresh = Vec::new();
        let id = cx.id[i] as usize;
        let node = cx.nodes[i];
        let size = node_size(cx, i);
        let (kind, params) = match node.tag {
            Tag::Base => (
                Kind::Scalar(scalar_of(node.encoding, size)),
                Span::default(),
            ),
            Tag::Enumeration | Tag::Unspecified => (Kind::Scalar(Scalar::Plain), Span::default()),
            Tag::Subroutine => (Kind::Code, Span::default()),
            Tag::Pointer => (self.pointer_kind(cx, i, &mut fresh), Span::default()),
            Tag::Array => match cx.target(i) {
                Some(t) => {
                    let elem = self.assign(cx, t, &mut fresh).unwrap_or(TypeId(0));
                    (
                        Kind::Array {
                            elem,
                            count: array_count(cx, i),
                        },
                        Span::default(),
                    )
                }
                None => (Kind::Opaque, Span::default()),
            },
            Tag::Struct | Tag::Union => self.aggregate(cx, i, &mut fresh),
            _ => (Kind::Opaque, Span::default()),
        };
        let info = &mut self.tables.types[id];
        info.size = if size == u64::MAX { 0 } else { size };
        info.align = node.align;
        info.kind = kind;
        info.params = params;
        for f in fresh {
            self.fill(cx, f);
        }
    }

    fn pointer_kind(&mut self, cx: &mut UnitCtx, i: usize, fresh: &mut Vec<usize>) -> Kind {
        let target = cx.target(i);
        let code = target.is_some_and(|t| cx.nodes[t].tag == Tag::Subroutine);
        let name = cx.nodes[i].name;
        let class = if code {
            PtrClass::Code
        } else if name.starts_with(b"&") {
            PtrClass::Ref
        } else if name.starts_with(b"alloc::boxed::Box<") {
            PtrClass::Box
        } else {
            PtrClass::Raw
        };
        let pointee = match target {
            Some(t) if !code => self.assign(cx, t, fresh),
            _ => None,
        };
        Kind::Pointer { pointee, class }
    }

    /// A struct, union or Rust enum: its members (or variants) and template
    /// parameters.
    fn aggregate(&mut self, cx: &mut UnitCtx, i: usize, fresh: &mut Vec<usize>) -> (Kind, Span) {
        let node = cx.nodes[i];
        let kids: Vec<usize> = cx.children(i).collect();
        let params_start = self.tables.params.len() as u32;
        for &c in &kids {
            if cx.nodes[c].tag == Tag::TemplateType {
                if let Some(ty) = self.type_of(cx, c, fresh) {
                    let name = self.names.intern_bytes(cx.nodes[c].name);
                    self.tables.params.push(Param { name, ty });
                }
            }
        }
        let params = Span {
            start: params_start,
            len: self.tables.params.len() as u32 - params_start,
        };
        if node.declaration && kids.iter().all(|&c| cx.nodes[c].tag != Tag::Member) {
            if let Some(&id) = cx.id.get(i) {
                self.declarations.push(TypeId(id));
            }
            return (Kind::Opaque, params);
        }
        if let Some(&vp) = kids.iter().find(|&&c| cx.nodes[c].tag == Tag::VariantPart) {
            return (self.enum_kind(cx, vp, fresh), params);
        }
        let fields = self.members(cx, &kids, fresh);
        let kind = if node.tag == Tag::Union {
            Kind::Union { fields }
        } else {
            Kind::Struct { fields }
        };
        (kind, params)
    }

    fn members(&mut self, cx: &mut UnitCtx, kids: &[usize], fresh: &mut Vec<usize>) -> Span {
        let start = self.tables.fields.len() as u32;
        for &c in kids {
            let n = cx.nodes[c];
            if n.tag != Tag::Member {
                continue;
            }
            let Some(ty) = self.type_of(cx, c, fresh) else {
                continue;
            };
            let name = self.names.intern_bytes(n.name);
            self.tables.fields.push(Field {
                name,
                offset: n.member_offset,
                ty,
            });
        }
        Span {
            start,
            len: self.tables.fields.len() as u32 - start,
        }
    }

    fn enum_kind(&mut self, cx: &mut UnitCtx, vp: usize, fresh: &mut Vec<usize>) -> Kind {
        let discr = cx.index_of(cx.nodes[vp].discr).and_then(|d| {
            let size = node_size(cx, d);
            matches!(size, 1 | 2 | 4 | 8).then_some(Discr {
                offset: cx.nodes[d].member_offset,
                size: size as u8,
            })
        });
        let start = self.tables.variants.len() as u32;
        let variants: Vec<usize> = cx
            .children(vp)
            .filter(|&c| cx.nodes[c].tag == Tag::Variant)
            .collect();
        for v in variants {
            let value = cx.nodes[v].discr_value;
            let Some(m) = cx.children(v).find(|&c| cx.nodes[c].tag == Tag::Member) else {
                continue;
            };
            let Some(ty) = self.type_of(cx, m, fresh) else {
                continue;
            };
            let name = self.names.intern_bytes(cx.nodes[m].name);
            self.tables.variants.push(Variant {
                value: value.map(|x| mask(x, discr.map_or(8, |d| d.size))),
                name,
                offset: cx.nodes[m].member_offset,
                ty,
            });
        }
        Kind::Enum {
            discr,
            variants: Span {
                start,
                len: self.tables.variants.len() as u32 - start,
            },
        }
    }

    /// Static variables (by address) and rustc's vtables.
    fn add_variables(
        &mut self,
        cx: &mut UnitCtx,
        module: u32,
        dwarf: &dwarf::Dwarf,
        unit: &dwarf::Unit,
        fresh: &mut Vec<usize>,
    ) {
        fresh.clear();
        let mut pieces = Vec::new();
        for i in 0..cx.nodes.len() {
            let node = cx.nodes[i];
            if node.tag != Tag::Variable || node.location.is_empty() {
                continue;
            }
            if !dwarf::static_pieces(dwarf, unit, node.location, &mut pieces) {
                self.skipped_variables += 1;
                continue;
            }
            let Some(t) = cx.index_of(node.ty).and_then(|t| cx.resolve(t)) else {
                continue;
            };
            let containing = cx.nodes[t].containing;
            if containing != NONE {
                // rustc's `<T as Trait>::{vtable}`: its type names T.
                if let Some(c) = cx.index_of(containing) {
                    if let Some(concrete) = self.assign(cx, c, fresh) {
                        self.vtables.push((module, pieces[0].addr, concrete));
                    }
                }
                continue;
            }
            let Some(ty) = self.assign(cx, t, fresh) else {
                continue;
            };
            let name = self.qualified(cx, i);
            self.statics.push(RawStatic {
                module,
                name,
                ty,
                pieces: pieces.clone(),
            });
        }
    }

    /// Points every use of a declared-only type at the definition of the
    /// same name (another unit's), so declarations are not opaque.
    pub(crate) fn resolve_declarations(&mut self, by_name: &FxHashMap<NameId, TypeId>) {
        let mut remap: FxHashMap<TypeId, TypeId> = FxHashMap::default();
        for &d in &self.declarations {
            let name = self.tables.get(d).name;
            if let Some(&def) = by_name.get(&name) {
                if def != d && self.tables.get(def).kind != Kind::Opaque {
                    remap.insert(d, def);
                }
            }
        }
        if remap.is_empty() {
            return;
        }
        let map = |t: &mut TypeId| {
            if let Some(&to) = remap.get(t) {
                *t = to;
            }
        };
        for f in &mut self.tables.fields {
            map(&mut f.ty);
        }
        for v in &mut self.tables.variants {
            map(&mut v.ty);
        }
        for p in &mut self.tables.params {
            map(&mut p.ty);
        }
        for t in &mut self.tables.types {
            match &mut t.kind {
                Kind::Pointer {
                    pointee: Some(p), ..
                } => map(p),
                Kind::Array { elem, .. } => map(elem),
                _ => {}
            }
        }
        for s in &mut self.statics {
            map(&mut s.ty);
        }
        for v in &mut self.vtables {
            map(&mut v.2);
        }
        for u in &mut self.units {
            u.ids.iter_mut().for_each(map);
        }
        // The declared records themselves take the definition's layout, so
        // a TypeId held elsewhere still walks.
        for (&d, &def) in &remap {
            let mut info = *self.tables.get(def);
            info.name = self.tables.get(d).name;
            self.tables.types[d.0 as usize] = info;
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.tables.heap_bytes()
            + self.names.heap_bytes()
            + self.by_fp.capacity() * 16
            + self
                .units
                .iter()
                .map(|u| u.offsets.capacity() * 4 + u.ids.capacity() * 4)
                .sum::<usize>()
    }
}

fn mask(x: u64, size: u8) -> u64 {
    if size >= 8 {
        x
    } else {
        x & ((1u64 << (size as u32 * 8)) - 1)
    }
}

fn scalar_of(encoding: u8, size: u64) -> Scalar {
    use gimli::constants as dw;
    let e = gimli::DwAte(encoding);
    let integer = e == dw::DW_ATE_signed || e == dw::DW_ATE_unsigned || e == dw::DW_ATE_address;
    if integer && size == std::mem::size_of::<usize>() as u64 {
        Scalar::AddressWide
    } else {
        Scalar::Plain
    }
}

fn array_count(cx: &UnitCtx, i: usize) -> u64 {
    let mut count = 1u64;
    let mut any = false;
    for c in cx.children(i) {
        if cx.nodes[c].tag == Tag::Subrange {
            any = true;
            count = count.saturating_mul(cx.nodes[c].count.unwrap_or(0));
        }
    }
    if any {
        count
    } else {
        0
    }
}

/// A node's size in bytes (`u64::MAX`: unknown).
fn node_size(cx: &UnitCtx, i: usize) -> u64 {
    let mut i = i;
    for _ in 0..32 {
        let node = cx.nodes[i];
        if let Some(s) = node.size {
            return s;
        }
        match node.tag {
            Tag::Pointer => return std::mem::size_of::<usize>() as u64,
            Tag::Member | Tag::Alias => match cx.index_of(node.ty) {
                Some(t) => i = t,
                None => return u64::MAX,
            },
            Tag::Array => {
                let Some(t) = cx.index_of(node.ty) else {
                    return u64::MAX;
                };
                let elem = node_size(cx, t);
                if elem == u64::MAX {
                    return u64::MAX;
                }
                return elem.saturating_mul(array_count(cx, i));
            }
            _ => return u64::MAX,
        }
    }
    u64::MAX
}
