//! Building the type table from each unit's raw DIEs (see `dwarf`).
//!
//! Per unit: link children, give every type DIE its qualified name and a
//! fingerprint, map the fingerprint to a global [`TypeId`] (new ones get a
//! record), and collect statics and vtables. The unit's DIE-offset ->
//! `TypeId` map is kept for `site`, which resolves template parameters of
//! inlined frames later.

use super::super::fxhash::FxHashMap;
use super::dwarf::{DieRef, Node, Piece, Tag, NONE};
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
    /// Placeholders for types referred to in another unit
    /// (`DW_FORM_ref_addr`), by (module, `.debug_info` offset): resolved
    /// once every unit is in (`resolve_externs`).
    externs: FxHashMap<(u32, u64), TypeId>,
    /// Enums whose discriminant's type is another unit's: (enum, its type),
    /// sized in `resolve_externs`.
    pending_discr: Vec<(TypeId, TypeId)>,
}

/// Scratch state for one unit.
struct UnitCtx<'a> {
    module: u32,
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
    fn new(module: u32, nodes: &'a [Node]) -> UnitCtx<'a> {
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
            module,
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

    /// Follows typedefs and qualifiers: the unit's node a reference ends
    /// at, or the reference it cannot follow (another unit's DIE, none).
    fn resolve_ref(&self, mut r: DieRef) -> Result<usize, DieRef> {
        for _ in 0..16 {
            let DieRef::Local(o) = r else { return Err(r) };
            let Some(i) = self.index_of(o) else {
                return Err(DieRef::None);
            };
            if self.nodes[i].tag != Tag::Alias {
                return Ok(i);
            }
            r = self.nodes[i].ty;
        }
        Err(DieRef::None)
    }

    /// The node `DW_AT_type` of node `i` ends at, in this unit.
    fn target(&self, i: usize) -> Option<usize> {
        self.resolve_ref(self.nodes[i].ty).ok()
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
    ///
    /// `unit_offset` is the unit's `.debug_info` offset; `locate` decodes a
    /// variable's location into static pieces (false: not a static).
    pub(crate) fn add_unit(
        &mut self,
        module: u32,
        unit_offset: usize,
        nodes: &[Node],
        locate: &mut dyn FnMut(&[u8], &mut Vec<Piece>) -> bool,
    ) {
        let mut cx = UnitCtx::new(module, nodes);
        let mut fresh: Vec<usize> = Vec::new();
        let mut offsets = Vec::new();
        let mut ids = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if !(is_type_tag(node.tag) || node.tag == Tag::Alias) {
                continue;
            }
            if let Some(id) = self.assign(&mut cx, i, &mut fresh) {
                offsets.push(node.offset);
                ids.push(id);
            }
        }
        self.type_dies += offsets.len() as u64;
        for &i in &fresh {
            self.fill(&mut cx, i);
        }
        self.add_variables(&mut cx, module, locate, &mut fresh);
        for &i in &fresh {
            if cx.id[i] != NONE && self.tables.types[cx.id[i] as usize].size == u64::MAX {
                self.fill(&mut cx, i);
            }
        }
        self.units.push(UnitTypes {
            module,
            unit: unit_offset,
            offsets,
            ids,
        });
    }

    /// The TypeId of type node `i` (aliases resolve to their target).
    fn assign(&mut self, cx: &mut UnitCtx, i: usize, fresh: &mut Vec<usize>) -> Option<TypeId> {
        self.ref_type(cx, DieRef::Local(cx.nodes[i].offset), fresh)
    }

    /// The TypeId a reference names: this unit's type, or a placeholder
    /// for another unit's.
    fn ref_type(&mut self, cx: &mut UnitCtx, r: DieRef, fresh: &mut Vec<usize>) -> Option<TypeId> {
        match cx.resolve_ref(r) {
            Ok(i) => Some(self.assign_resolved(cx, i, fresh)),
            Err(DieRef::Global(g)) => Some(self.extern_type(cx.module, g)),
            Err(_) => None,
        }
    }

    fn extern_type(&mut self, module: u32, global: u64) -> TypeId {
        if let Some(&id) = self.externs.get(&(module, global)) {
            return id;
        }
        let id = TypeId(self.tables.types.len() as u32);
        let name = self.names.intern("?");
        self.tables.types.push(TypeInfo {
            name,
            size: 0,
            align: 0,
            kind: Kind::Opaque,
            params: Span::default(),
            pointer_free: false,
            container: NO_CONTAINER,
            ops: Span::default(),
        });
        self.externs.insert((module, global), id);
        id
    }

    fn assign_resolved(&mut self, cx: &mut UnitCtx, r: usize, fresh: &mut Vec<usize>) -> TypeId {
        if cx.id[r] != NONE {
            return TypeId(cx.id[r]);
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
                    ops: Span::default(),
                });
                self.by_fp.insert(key, id);
                fresh.push(r);
                id
            }
        };
        cx.id[r] = id.0;
        id
    }

    /// The id of the type a node's `DW_AT_type` names (assigning it if it
    /// was not met yet, e.g. a type after its first use).
    fn type_of(&mut self, cx: &mut UnitCtx, i: usize, fresh: &mut Vec<usize>) -> Option<TypeId> {
        self.ref_type(cx, cx.nodes[i].ty, fresh)
    }

    /// Identity key: fingerprint; pointers also by what they point to.
    fn key(&mut self, cx: &mut UnitCtx, i: usize, depth: u32) -> u64 {
        let fp = self.fingerprint(cx, i, depth);
        if cx.nodes[i].tag != Tag::Pointer {
            return fp;
        }
        match cx.resolve_ref(cx.nodes[i].ty) {
            Ok(t) if depth < 64 => finish(mix(fp, self.key(cx, t, depth + 1))),
            Err(DieRef::Global(g)) => finish(mix(mix(fp, 23), g)),
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
            Tag::Enumeration => h = mix(h, node.count.unwrap_or(0)),
            Tag::Pointer => {
                let pointee = self.pointee_name_fp(cx, i);
                h = mix(h, pointee);
            }
            Tag::Array => {
                let elem = self.ref_fp(cx, cx.nodes[i].ty, depth);
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

    /// What a pointer's fingerprint says of its pointee: its name (or,
    /// in another unit, its offset).
    fn pointee_name_fp(&mut self, cx: &mut UnitCtx, i: usize) -> u64 {
        match cx.resolve_ref(cx.nodes[i].ty) {
            Ok(t) => self.qualified(cx, t).0 as u64 + 1,
            Err(DieRef::Global(g)) => mix(19, g),
            Err(_) => 0,
        }
    }

    /// The fingerprint a reference contributes to a containing type.
    fn ref_fp(&mut self, cx: &mut UnitCtx, r: DieRef, depth: u32) -> u64 {
        match cx.resolve_ref(r) {
            Ok(t) => self.inline_fp(cx, t, depth),
            Err(DieRef::Global(g)) => finish(mix(mix(29, g), cx.module as u64)),
            Err(_) => 0,
        }
    }

    fn inline_fp(&mut self, cx: &mut UnitCtx, t: usize, depth: u32) -> u64 {
        if cx.nodes[t].tag == Tag::Pointer {
            let pointee = self.pointee_name_fp(cx, t);
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
                    let ty = self.ref_fp(cx, n.ty, depth);
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
            // `!` and enums without variants: no value exists.
            Tag::Base | Tag::Enumeration if is_never(&node) => {
                (Kind::Scalar(Scalar::Never), Span::default())
            }
            Tag::Base => (
                Kind::Scalar(scalar_of(node.encoding, size)),
                Span::default(),
            ),
            Tag::Enumeration | Tag::Unspecified => (Kind::Scalar(Scalar::Plain), Span::default()),
            Tag::Subroutine => (Kind::Code, Span::default()),
            Tag::Pointer => (self.pointer_kind(cx, i, &mut fresh), Span::default()),
            Tag::Array => match self.type_of(cx, i, &mut fresh) {
                Some(elem) => (
                    Kind::Array {
                        elem,
                        count: array_count(cx, i),
                    },
                    Span::default(),
                ),
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
        let name = cx.nodes[i].name;
        let code = cx
            .target(i)
            .is_some_and(|t| cx.nodes[t].tag == Tag::Subroutine)
            || [&b"fn("[..], b"unsafe fn(", b"unsafe extern ", b"extern "]
                .iter()
                .any(|p| name.starts_with(p));
        let class = if code {
            PtrClass::Code
        } else if name.starts_with(b"&") {
            PtrClass::Ref
        } else if name.starts_with(b"alloc::boxed::Box<") {
            PtrClass::Box
        } else {
            PtrClass::Raw
        };
        let pointee = if code {
            None
        } else {
            self.type_of(cx, i, fresh)
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
        // `dyn Trait`: rustc gives it size 0 and no members, which would
        // read as "nothing to scan"; its real size is the concrete type's.
        if node.name.starts_with(b"dyn ") {
            return (Kind::Opaque, params);
        }
        if let Some(&vp) = kids.iter().find(|&&c| cx.nodes[c].tag == Tag::VariantPart) {
            return (self.enum_kind(cx, i, vp, fresh), params);
        }
        let fields = self.members(cx, &kids, fresh);
        let kind = if node.tag == Tag::Union {
            Kind::Union {
                fields,
                uninit: node.name.starts_with(b"MaybeUninit<"),
            }
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

    fn enum_kind(&mut self, cx: &mut UnitCtx, i: usize, vp: usize, fresh: &mut Vec<usize>) -> Kind {
        let discr = cx.index_of(cx.nodes[vp].discr).and_then(|d| {
            let size = node_size(cx, d);
            let offset = cx.nodes[d].member_offset;
            if matches!(size, 1 | 2 | 4 | 8) {
                return Some(Discr {
                    offset,
                    size: size as u8,
                });
            }
            // Its type is another unit's: sized once that is known.
            let ty = self.type_of(cx, d, fresh)?;
            self.pending_discr.push((TypeId(cx.id[i]), ty));
            Some(Discr { offset, size: 0 })
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
                // Unmasked while the discriminant's size is unknown.
                value: value
                    .map(|x| mask(x, discr.map_or(8, |d| if d.size == 0 { 8 } else { d.size }))),
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
        locate: &mut dyn FnMut(&[u8], &mut Vec<Piece>) -> bool,
        fresh: &mut Vec<usize>,
    ) {
        fresh.clear();
        let mut pieces = Vec::new();
        for i in 0..cx.nodes.len() {
            let node = cx.nodes[i];
            if node.tag != Tag::Variable || node.location.is_empty() {
                continue;
            }
            if !locate(node.location, &mut pieces) {
                self.skipped_variables += 1;
                continue;
            }
            // rustc's `<T as Trait>::{vtable}`: its type names T.
            let containing = cx
                .target(i)
                .map_or(DieRef::None, |t| cx.nodes[t].containing);
            if containing != DieRef::None {
                if let Some(concrete) = self.ref_type(cx, containing, fresh) {
                    self.vtables.push((module, pieces[0].addr, concrete));
                }
                continue;
            }
            let Some(ty) = self.type_of(cx, i, fresh) else {
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
        self.remap(&remap, true);
    }

    /// Points every use of a placeholder for another unit's type at that
    /// type, then sizes what needed it (arrays of such elements, enums
    /// whose discriminant has such a type). Call once all units are in.
    pub(crate) fn resolve_externs(&mut self) {
        let mut remap: FxHashMap<TypeId, TypeId> = FxHashMap::default();
        for (&(module, global), &placeholder) in &self.externs {
            if let Some(real) = self.type_at_global(module, global) {
                if real != placeholder {
                    remap.insert(placeholder, real);
                }
            }
        }
        // A unit's alias of another unit's type is itself a placeholder.
        let chased: FxHashMap<TypeId, TypeId> = remap
            .iter()
            .map(|(&from, &to)| {
                let mut to = to;
                for _ in 0..8 {
                    match remap.get(&to) {
                        Some(&next) if next != to => to = next,
                        _ => break,
                    }
                }
                (from, to)
            })
            .collect();
        self.remap(&chased, false);
        self.size_arrays();
        self.size_discriminants();
    }

    /// The type a module's `.debug_info` offset holds.
    fn type_at_global(&self, module: u32, global: u64) -> Option<TypeId> {
        let key = (module, global as usize);
        let i = self
            .units
            .partition_point(|u| (u.module, u.unit) <= key)
            .checked_sub(1)?;
        let u = &self.units[i];
        if u.module != module {
            return None;
        }
        u.type_at(u32::try_from(global as usize - u.unit).ok()?)
    }

    /// Replaces every use of a key of `remap` by its value; the replaced
    /// records take their replacement's layout (`keep_name`: and keep
    /// their own name), so an id held elsewhere still walks.
    fn remap(&mut self, remap: &FxHashMap<TypeId, TypeId>, keep_name: bool) {
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
        for (e, d) in &mut self.pending_discr {
            map(e);
            map(d);
        }
        for u in &mut self.units {
            u.ids.iter_mut().for_each(map);
        }
        for (&from, &to) in remap {
            let mut info = *self.tables.get(to);
            if keep_name {
                info.name = self.tables.get(from).name;
            }
            self.tables.types[from.0 as usize] = info;
        }
    }

    /// Arrays whose element type was another unit's had no size yet.
    fn size_arrays(&mut self) {
        for i in 0..self.tables.types.len() {
            self.array_size(TypeId(i as u32), 0);
        }
    }

    fn array_size(&mut self, t: TypeId, depth: u32) -> u64 {
        let info = *self.tables.get(t);
        match info.kind {
            Kind::Array { elem, count } if info.size == 0 && count > 0 && depth < 16 => {
                let size = self.array_size(elem, depth + 1).saturating_mul(count);
                self.tables.types[t.0 as usize].size = size;
                size
            }
            _ => info.size,
        }
    }

    /// Enums whose discriminant's type was another unit's: its size, and
    /// the variants' values masked to it (no size: no discriminant, so
    /// every variant is read as a candidate).
    fn size_discriminants(&mut self) {
        for k in 0..self.pending_discr.len() {
            let (e, d) = self.pending_discr[k];
            let size = self.tables.get(d).size;
            let Kind::Enum {
                discr: Some(mut discr),
                variants,
            } = self.tables.get(e).kind
            else {
                continue;
            };
            let known = matches!(size, 1 | 2 | 4 | 8);
            discr.size = size as u8;
            self.tables.types[e.0 as usize].kind = Kind::Enum {
                discr: known.then_some(discr),
                variants,
            };
            for v in &mut self.tables.variants[variants.range()] {
                v.value = v.value.map(|x| mask(x, discr.size.max(1)));
            }
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

/// `!` (a base type of that name) or an enumeration without enumerators.
fn is_never(node: &Node) -> bool {
    match node.tag {
        Tag::Base => node.name == b"!",
        Tag::Enumeration => node.count == Some(0),
        _ => false,
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
            Tag::Member | Tag::Alias => match cx.resolve_ref(node.ty) {
                Ok(t) => i = t,
                Err(_) => return u64::MAX,
            },
            Tag::Array => {
                let Some(t) = cx.target(i) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::types::layout::{Kind, Scalar};

    fn node(offset: u32, parent: u32, tag: Tag, name: &'static [u8]) -> Node {
        let mut n = Node::new(offset, parent, tag);
        n.name = name;
        n
    }

    fn no_statics(_: &[u8], _: &mut Vec<Piece>) -> bool {
        false
    }

    /// rustc refers to about one type in seven in another unit
    /// (`DW_FORM_ref_addr`); such members must keep their type, or the
    /// pointers in them are never read.
    #[test]
    fn cross_unit_member_types_are_kept() {
        let mut b = Builder::default();
        // Unit at 0x100: `usize` and `*const u8` at unit offsets 0x10, 0x20.
        let mut usize_ = node(0x10, NONE, Tag::Base, b"usize");
        usize_.size = Some(8);
        usize_.encoding = gimli::constants::DW_ATE_unsigned.0;
        let mut ptr = node(0x20, NONE, Tag::Pointer, b"*const u8");
        ptr.size = Some(8);
        b.add_unit(0, 0x100, &[usize_, ptr], &mut no_statics);
        // Unit at 0x200: `struct S { len: usize, data: *const u8 }`, both
        // member types in the first unit.
        let mut st = node(0x10, NONE, Tag::Struct, b"S");
        st.size = Some(16);
        let mut len = node(0x18, 0, Tag::Member, b"len");
        len.ty = DieRef::Global(0x110);
        let mut data = node(0x20, 0, Tag::Member, b"data");
        data.ty = DieRef::Global(0x120);
        data.member_offset = 8;
        b.add_unit(0, 0x200, &[st, len, data], &mut no_statics);
        b.resolve_externs();
        let s = b.units[1].type_at(0x10).expect("S has a type");
        let Kind::Struct { fields } = b.tables.get(s).kind else {
            panic!("S is not a struct");
        };
        let kinds: Vec<Kind> = b
            .tables
            .fields(fields)
            .iter()
            .map(|f| b.tables.get(f.ty).kind)
            .collect();
        assert_eq!(kinds.len(), 2, "both members kept");
        assert_eq!(kinds[0], Kind::Scalar(Scalar::AddressWide));
        assert!(matches!(
            kinds[1],
            Kind::Pointer {
                class: PtrClass::Raw,
                ..
            }
        ));
    }
}
