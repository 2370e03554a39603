//! A block's type from where it was allocated: the fallback for blocks no
//! typed owner reaches (an unreachable cycle, a block only a thread's stack
//! points to).
//!
//! std's allocating code is type-erased (`RawVecInner`, `box_new_uninit`,
//! hashbrown's `RawTableInner`), so `T` comes from an outer, usually
//! inlined, generic frame of the allocation stack whose DWARF subprogram
//! (or the abstract origin of the inlined copy) carries
//! `DW_TAG_template_type_parameter`s: the first frame, innermost first, that
//! matches one of [`SITE_RULES`]. The block's size then picks the shape (a
//! `T`, `n` `T`s, a table of `n` buckets).
//!
//! Not sound on its own: in-place `collect` hands a `Vec<(u64, u64)>`'s
//! buffer to a `Vec<Box<u64>>`; the type a typed owner declares must win.
//! Lookups parse the unit of each return address once (cached) and may
//! allocate: call it before the pause.

use std::sync::{Arc, Mutex};

use gimli::constants as dw;

use super::super::fxhash::FxHashMap;
use super::dwarf::{self, Reader};
use super::layout::TypeId;
use super::walk::{BlockType, Shape};
use super::TypeMaps;

/// How a rule's frame allocates, in terms of its type parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteShape {
    /// A `T` (`Box::<T>::new`) or, when the block holds several, a
    /// `Box<[T]>`.
    Boxed,
    /// `size / size_of::<T>()` `T`s (a `Vec`/`RawVec` buffer; the live
    /// length is unknown from the site).
    Array,
    /// `ArcInner<T>` (or `ArcInner<[T]>` of as many elements as fit).
    ArcInner,
    /// `RcInner<T>` (or `RcInner<[T]>`).
    RcInner,
    /// A hashbrown table of buckets of `T`.
    HashTable,
    /// A hash map's table: buckets of `(K, V)`.
    HashMap,
    /// A hash set's table: buckets of `(T, ())`.
    HashSet,
    /// `LeafNode<K, V>` (height 0) / `InternalNode<K, V>` (height taken
    /// as 1: the site cannot tell).
    BTreeLeaf,
    BTreeInternal,
}

/// A generic frame that allocates values of its type parameter(s).
#[derive(Clone, Copy, Debug)]
pub struct SiteRule {
    /// Prefix of the frame's function path, generic arguments removed
    /// (`<alloc::boxed::Box<u8>>::new` and `alloc::boxed::Box<T>::new` are
    /// both `alloc::boxed::Box::new`: v0 and legacy mangling alike).
    pub function: &'static str,
    /// The type parameter(s) that type the block.
    pub params: &'static [&'static str],
    pub shape: SiteShape,
}

/// The frames leakprof knows allocate typed blocks (innermost match wins;
/// a frame whose parameters are not in its DWARF is passed over).
pub const SITE_RULES: &[SiteRule] = &[
    rule("alloc::boxed::Box::", &["T"], SiteShape::Boxed),
    rule("alloc::raw_vec::RawVec::", &["T"], SiteShape::Array),
    rule("alloc::vec::Vec::", &["T"], SiteShape::Array),
    rule(
        "alloc::collections::vec_deque::VecDeque::",
        &["T"],
        SiteShape::Array,
    ),
    rule("hashbrown::raw::RawTable::", &["T"], SiteShape::HashTable),
    rule(
        "hashbrown::table::HashTable::",
        &["T"],
        SiteShape::HashTable,
    ),
    // `RawTable<T>::with_capacity` is often inlined away from the call
    // into the type-erased `RawTableInner`: the map's own frame types it.
    rule(
        "std::collections::hash::map::HashMap::",
        &["K", "V"],
        SiteShape::HashMap,
    ),
    rule("hashbrown::map::HashMap::", &["K", "V"], SiteShape::HashMap),
    rule(
        "std::collections::hash::set::HashSet::",
        &["T"],
        SiteShape::HashSet,
    ),
    rule("hashbrown::set::HashSet::", &["T"], SiteShape::HashSet),
    rule("alloc::sync::Arc::", &["T"], SiteShape::ArcInner),
    rule("alloc::rc::Rc::", &["T"], SiteShape::RcInner),
    rule(
        "alloc::collections::btree::node::LeafNode::new",
        &["K", "V"],
        SiteShape::BTreeLeaf,
    ),
    rule(
        "alloc::collections::btree::node::InternalNode::new",
        &["K", "V"],
        SiteShape::BTreeInternal,
    ),
];

const fn rule(
    function: &'static str,
    params: &'static [&'static str],
    shape: SiteShape,
) -> SiteRule {
    SiteRule {
        function,
        params,
        shape,
    }
}

/// A function path without generic arguments or the `<...>` of an
/// inherent impl: `<alloc::boxed::Box<u8>>::new` -> `alloc::boxed::Box::new`.
pub fn function_path(demangled: &str) -> String {
    let mut out = String::with_capacity(demangled.len());
    let mut depth = 0usize;
    for (i, c) in demangled.char_indices() {
        match c {
            '<' if i == 0 => {}
            '<' => depth += 1,
            '>' if depth > 0 => depth -= 1,
            '>' => {}
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// A block typed by its allocation site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteType {
    pub block: BlockType,
    /// The rule that matched (index into [`SITE_RULES`]).
    pub rule: usize,
}

/// What an allocation stack says about its blocks, with every type it
/// needs already looked up: turning it into a block's type for a given
/// size ([`TypeMaps::site_block`]) never allocates, so it can be done
/// during the pause while the spec is made before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteSpec {
    /// Index into [`SITE_RULES`].
    pub rule: usize,
    /// The element type: `T` of a `Box<T>`, a `Vec<T>`'s buffer, a table's
    /// bucket (`(K, V)` for maps), an `Arc<T>`'s `T`.
    elem: TypeId,
    /// `ArcInner<T>`/`RcInner<T>`, or a btree's `LeafNode<K, V>`.
    inner: Option<TypeId>,
    /// `ArcInner<[T]>`/`RcInner<[T]>`.
    slice_inner: Option<TypeId>,
}

impl SiteSpec {
    /// A spec for `n` elements or one `elem` by rule index, as a site
    /// would give it (tests of the tracer).
    #[cfg(test)]
    pub(crate) fn for_test(rule: usize, elem: TypeId) -> SiteSpec {
        SiteSpec {
            rule,
            elem,
            inner: None,
            slice_inner: None,
        }
    }
}

/// An inlined or out-of-line function's PC range in a unit.
#[derive(Clone, Copy, Debug)]
struct Scope {
    begin: u64,
    end: u64,
    depth: u32,
    /// The DIE naming the function (abstract origin, specification or the
    /// subprogram itself).
    die: u32,
}

struct UnitScopes {
    unit: dwarf::Unit,
    scopes: Vec<Scope>,
}

/// A frame's template type parameter: its name and type (when known).
type TypeParam = (String, Option<TypeId>);

/// What a PC's innermost matching frame says: rule and type arguments.
#[derive(Clone, Debug)]
struct Found {
    rule: usize,
    args: [Option<TypeId>; 2],
    /// The PC lies in a function the compiler merged with others of the
    /// same code ([`Merged`]): its DWARF names the type arguments of one
    /// of them, not necessarily this stack's. These are the first type
    /// arguments of the rule's type the merged functions' symbols spell
    /// (normalised, see [`normalise`]): the stack's is one of them.
    merged: Option<Arc<[String]>>,
}

type PcMatch = Option<Found>;

/// Functions merged because their machine code is identical (rustc's
/// `merge-functions`, on in optimised builds: `RawVec<A>::grow_one` and
/// `RawVec<B>::grow_one` for two types of one size and alignment become
/// one function with two symbols). DWARF describes the function once,
/// with the generic arguments of whichever instance was kept, so a site
/// in one must not be typed by its DWARF alone.
#[derive(Default)]
struct Merged {
    /// Sorted link-time (start, end, index into `names`).
    ranges: Vec<(u64, u64, u32)>,
    /// The demangled names of each merged function's symbols.
    names: Vec<Vec<String>>,
}

impl Merged {
    /// Text symbols of a module's file sharing an address under two or
    /// more names.
    fn read(path: &str) -> Merged {
        use object::{Object, ObjectSymbol, SymbolKind};
        let mut out = Merged::default();
        let Some(bytes) = dwarf::map_file(std::path::Path::new(path)) else {
            return out;
        };
        let Ok(file) = object::File::parse(bytes) else {
            return out;
        };
        let mut syms: Vec<(u64, u64, &str)> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && !s.is_undefined())
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?)))
            .collect();
        syms.sort_unstable();
        for group in syms.chunk_by(|a, b| a.0 == b.0) {
            let mut names: Vec<String> = group
                .iter()
                .map(|&(_, _, n)| format!("{:#}", rustc_demangle::demangle(n)))
                .collect();
            names.sort_unstable();
            names.dedup();
            if names.len() > 1 {
                let (start, size, _) = group[0];
                out.ranges
                    .push((start, start + size, out.names.len() as u32));
                out.names.push(names);
            }
        }
        out
    }

    /// The names of the merged function containing link-time address `at`.
    fn at(&self, at: u64) -> Option<&[String]> {
        let i = self.ranges.partition_point(|r| r.0 <= at).checked_sub(1)?;
        let (_, end, k) = self.ranges[i];
        (at < end).then(|| self.names[k as usize].as_slice())
    }
}

/// A type's name as symbols and DWARF both spell it: symbols leave out
/// default generic arguments (`Vec<u8>`), DWARF spells them (`Vec<u8,
/// alloc::alloc::Global>`).
fn normalise(name: &str) -> String {
    name.replace(", alloc::alloc::Global", "")
}

#[derive(Default)]
struct SiteState {
    /// Per module: sorted (begin, end, unit offset) from `.debug_aranges`.
    aranges: FxHashMap<u32, Vec<(u64, u64, usize)>>,
    scopes: FxHashMap<(u32, usize), Arc<UnitScopes>>,
    pcs: FxHashMap<u64, PcMatch>,
    /// Per module: its merged functions.
    merged: FxHashMap<u32, Arc<Merged>>,
}

#[derive(Default)]
pub(crate) struct SiteCache {
    state: Mutex<SiteState>,
}

impl TypeMaps {
    /// The type of a block of `size` bytes allocated with this stack
    /// (return addresses, innermost first): [`TypeMaps::site_spec`] then
    /// [`TypeMaps::site_block`].
    pub fn site_type(&self, pcs: &[u64], size: u64) -> Option<SiteType> {
        let spec = self.site_spec(pcs)?;
        Some(SiteType {
            block: self.site_block(&spec, size)?,
            rule: spec.rule,
        })
    }

    /// What the innermost frame of this stack that matches [`SITE_RULES`]
    /// says its blocks are. Allocates (parses and caches per unit and
    /// address): call it before the pause, once per stack.
    ///
    /// A frame in a merged function ([`Merged`]) is only believed when an
    /// outer frame of the stack names one of the types the merged
    /// function may be for (the merged `RawVec::grow_one` called from
    /// `Vec::<TraceFrame>::push` is for `TraceFrame`); otherwise the stack
    /// gives no type.
    pub fn site_spec(&self, pcs: &[u64]) -> Option<SiteSpec> {
        let mut state = self.sites.state.lock().unwrap_or_else(|e| e.into_inner());
        // (rule, the types it may be for) of an innermost merged match.
        let mut ambiguous: Option<(usize, Vec<String>)> = None;
        for &pc in pcs {
            let m = match state.pcs.get(&pc) {
                Some(m) => m.clone(),
                None => {
                    let m = self.match_pc(&mut state, pc);
                    state.pcs.insert(pc, m.clone());
                    m
                }
            };
            let Some(found) = m else { continue };
            match ambiguous.as_mut() {
                None => match &found.merged {
                    None => return self.spec_for(found.rule, found.args),
                    Some(may_be) => ambiguous = Some((found.rule, may_be.to_vec())),
                },
                Some((rule, may_be)) => {
                    let t = found.args[0]?;
                    if !may_be.contains(&normalise(self.type_name(t))) {
                        return None;
                    }
                    match &found.merged {
                        None => return self.spec_for(*rule, [Some(t), None]),
                        Some(outer) => may_be.retain(|n| outer.contains(n)),
                    }
                }
            }
        }
        None
    }

    /// The type of a block of `size` bytes made where `spec` says: the
    /// shape the size allows (one `T` or `n`; a table of `n` buckets).
    /// Never allocates.
    pub fn site_block(&self, spec: &SiteSpec, size: u64) -> Option<BlockType> {
        let t = spec.elem;
        let tsize = self.type_size(t);
        let elements = BlockType {
            ty: t,
            shape: Shape::Elements {
                first: 0,
                len: size / tsize.max(1),
            },
        };
        Some(match SITE_RULES.get(spec.rule)?.shape {
            SiteShape::Boxed if size == tsize => BlockType::one(t),
            SiteShape::Boxed | SiteShape::Array if tsize > 0 && size % tsize == 0 => elements,
            SiteShape::Boxed | SiteShape::Array => return None,
            SiteShape::ArcInner | SiteShape::RcInner => match (spec.inner, spec.slice_inner) {
                (Some(inner), _) if self.type_size(inner) <= size => BlockType::one(inner),
                (_, Some(inner)) => BlockType {
                    ty: inner,
                    shape: Shape::Tail {
                        len: size
                            .checked_sub(self.type_size(inner))?
                            .checked_div(tsize)?,
                    },
                },
                _ => return None,
            },
            SiteShape::HashTable | SiteShape::HashMap | SiteShape::HashSet => BlockType {
                ty: t,
                shape: Shape::HashTable {
                    buckets: buckets_for(size, tsize, self.tables.get(t).align as u64)?,
                },
            },
            SiteShape::BTreeLeaf | SiteShape::BTreeInternal => BlockType {
                ty: spec.inner?,
                shape: Shape::BTreeNode {
                    height: u64::from(SITE_RULES[spec.rule].shape == SiteShape::BTreeInternal),
                },
            },
        })
    }

    /// The functions inlined at return address `pc`, innermost first:
    /// demangled name and template type parameters (what [`SITE_RULES`]
    /// are matched against; for diagnostics).
    pub fn site_frames(&self, pc: u64) -> Vec<String> {
        let mut state = self.sites.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        self.frames_at(&mut state, pc, &mut |name, params| {
            let params: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
            out.push(format!("{name} [{}]", params.join(", ")));
            false
        });
        out
    }

    fn match_pc(&self, state: &mut SiteState, pc: u64) -> PcMatch {
        let mut found = None;
        self.frames_at(state, pc, &mut |name, params| {
            let path = function_path(name);
            let Some(rule) = SITE_RULES.iter().position(|r| path.starts_with(r.function)) else {
                return false;
            };
            let mut args = [None, None];
            for (slot, want) in args.iter_mut().zip(SITE_RULES[rule].params) {
                *slot = params.iter().find(|(n, _)| n == want).and_then(|&(_, t)| t);
            }
            if args[0].is_none() {
                args = self.args_from_name(name, rule);
            }
            if args[0].is_some() {
                found = Some(Found {
                    rule,
                    args,
                    merged: None,
                });
            }
            found.is_some()
        });
        let mut found = found?;
        let k = self
            .modules
            .iter()
            .position(|m| m.module.contains(pc as usize))?;
        let module = &self.modules[k].module;
        let merged = Arc::clone(
            state
                .merged
                .entry(k as u32)
                .or_insert_with(|| Arc::new(Merged::read(&module.path))),
        );
        let at = pc.wrapping_sub(1).wrapping_sub(module.bias as u64);
        if let Some(names) = merged.at(at) {
            let may_be: Vec<String> = names
                .iter()
                .filter_map(|n| name_args(n, found.rule).into_iter().next())
                .map(normalise)
                .collect();
            found.merged = Some(may_be.into());
        }
        Some(found)
    }

    /// The type arguments a frame's name spells, for an inlined frame
    /// whose DWARF lists no template parameters (seen for `Box::new`
    /// inlined into a closure): `<alloc::boxed::Box<X>>::new` gives `X`,
    /// looked up by its name (`None` when the name's spelling is not
    /// DWARF's, e.g. a defaulted parameter left out).
    fn args_from_name(&self, name: &str, rule: usize) -> [Option<TypeId>; 2] {
        let mut out = [None, None];
        for (slot, arg) in out.iter_mut().zip(name_args(name, rule)) {
            *slot = self.type_named(arg);
        }
        out
    }

    /// Calls `visit(name, params)` for each function inlined at `pc`,
    /// innermost first, until it returns true.
    fn frames_at(
        &self,
        state: &mut SiteState,
        pc: u64,
        visit: &mut dyn FnMut(&str, &[TypeParam]) -> bool,
    ) -> Option<()> {
        let k = self
            .modules
            .iter()
            .position(|m| m.module.contains(pc as usize))?;
        let module = &self.modules[k];
        let d = module.dwarf.as_ref()?;
        // The call instruction, not the return address after it.
        let at = pc.wrapping_sub(1).wrapping_sub(module.module.bias as u64);
        let unit_off = {
            let ranges = state
                .aranges
                .entry(k as u32)
                .or_insert_with(|| read_aranges(d));
            let i = ranges.partition_point(|r| r.0 <= at).checked_sub(1)?;
            let r = ranges[i];
            (at < r.1).then_some(r.2)?
        };
        let scopes = match state.scopes.get(&(k as u32, unit_off)) {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(read_scopes(d, unit_off)?);
                state.scopes.insert((k as u32, unit_off), Arc::clone(&s));
                s
            }
        };
        let unit_types = self
            .units
            .iter()
            .find(|u| u.module == k as u32 && u.unit == unit_off)?;
        let mut frames: Vec<&Scope> = scopes
            .scopes
            .iter()
            .filter(|s| s.begin <= at && at < s.end)
            .collect();
        frames.sort_by_key(|s| std::cmp::Reverse(s.depth));
        for s in frames {
            let Some((name, params)) = function_of(d, &scopes.unit, s.die) else {
                continue;
            };
            let typed: Vec<(String, Option<TypeId>)> = params
                .into_iter()
                .map(|(n, off)| (n, unit_types.type_at(off)))
                .collect();
            if visit(&name, &typed) {
                break;
            }
        }
        Some(())
    }

    /// Looks up the types a rule's blocks need (by name: `ArcInner<T>`,
    /// `(K, V)`, `LeafNode<K, V>`).
    fn spec_for(&self, rule: usize, args: [Option<TypeId>; 2]) -> Option<SiteSpec> {
        let t = args[0]?;
        let name = |t: TypeId| self.type_name(t).to_string();
        let mut spec = SiteSpec {
            rule,
            elem: t,
            inner: None,
            slice_inner: None,
        };
        match SITE_RULES[rule].shape {
            SiteShape::Boxed | SiteShape::Array | SiteShape::HashTable => {}
            SiteShape::ArcInner | SiteShape::RcInner => {
                let prefix = if SITE_RULES[rule].shape == SiteShape::ArcInner {
                    "alloc::sync::ArcInner<"
                } else {
                    "alloc::rc::RcInner<"
                };
                spec.inner = self.type_named(&format!("{prefix}{}>", name(t)));
                spec.slice_inner = self.type_named(&format!("{prefix}[{}]>", name(t)));
                spec.inner.or(spec.slice_inner)?;
            }
            SiteShape::HashMap => {
                spec.elem = self.type_named(&format!("({}, {})", name(t), name(args[1]?)))?
            }
            SiteShape::HashSet => spec.elem = self.type_named(&format!("({}, ())", name(t)))?,
            SiteShape::BTreeLeaf | SiteShape::BTreeInternal => {
                spec.inner = Some(self.type_named(&format!(
                    "alloc::collections::btree::node::LeafNode<{}, {}>",
                    name(t),
                    name(args[1]?)
                ))?);
            }
        }
        Some(spec)
    }
}

/// The generic arguments of the rule's type as a function name spells
/// them: `<alloc::boxed::Box<X>>::new` gives `["X"]` for the `Box` rule.
fn name_args(name: &str, rule: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let Some(path) = SITE_RULES[rule].function.strip_suffix("::") else {
        return out;
    };
    let Some(at) = name.find(&format!("{path}<")) else {
        return out;
    };
    let rest = &name[at + path.len() + 1..];
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in rest.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' if depth > 0 => depth -= 1,
            ',' | '>' if depth == 0 => {
                out.push(rest[start..i].trim());
                start = i + 1;
                if c == '>' {
                    break;
                }
            }
            _ => {}
        }
    }
    out
}

/// The bucket count of a hashbrown allocation of `size` bytes with
/// buckets of `tsize` bytes: `[buckets x T][pad to max(align, 16)][ctrl:
/// buckets + 16]`.
fn buckets_for(size: u64, tsize: u64, align: u64) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    const WIDTH: u64 = 16;
    #[cfg(not(target_arch = "x86_64"))]
    const WIDTH: u64 = 8;
    let ctrl_align = align.max(WIDTH);
    (1..48).map(|k| 1u64 << k).find(|&b| {
        let Some(data) = b.checked_mul(tsize) else {
            return false;
        };
        let ctrl = data.div_ceil(ctrl_align) * ctrl_align;
        ctrl + b + WIDTH == size
    })
}

fn read_aranges(d: &dwarf::Dwarf) -> Vec<(u64, u64, usize)> {
    let mut out = Vec::new();
    let mut headers = d.debug_aranges.headers();
    while let Ok(Some(h)) = headers.next() {
        let unit = h.debug_info_offset().0;
        let mut entries = h.entries();
        while let Ok(Some(e)) = entries.next() {
            let r = e.range();
            if r.end > r.begin {
                out.push((r.begin, r.end, unit));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Every subprogram and inlined subroutine of a unit with its PC ranges.
fn read_scopes(d: &dwarf::Dwarf, unit_off: usize) -> Option<UnitScopes> {
    let header = d
        .debug_info
        .header_from_offset(gimli::DebugInfoOffset(unit_off))
        .ok()?;
    let unit = d.unit(header).ok()?;
    let mut scopes = Vec::new();
    let mut entries = unit.entries_raw(None).ok()?;
    while !entries.is_empty() {
        let offset = entries.next_offset().0 as u32;
        let depth = entries.next_depth();
        let abbrev = entries.read_abbreviation().ok()?;
        let Some(abbrev) = abbrev else { continue };
        let tag = abbrev.tag();
        if tag != dw::DW_TAG_subprogram && tag != dw::DW_TAG_inlined_subroutine {
            entries.skip_attributes(abbrev.attributes()).ok()?;
            continue;
        }
        let (mut low, mut high, mut high_is_len) = (None, None, false);
        let mut ranges = None;
        let mut die = offset;
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec).ok()?;
            match attr.name() {
                dw::DW_AT_low_pc => low = d.attr_address(&unit, attr.value()).ok().flatten(),
                dw::DW_AT_high_pc => match attr.value() {
                    gimli::AttributeValue::Addr(a) => high = Some(a),
                    v => {
                        high = v.udata_value();
                        high_is_len = true;
                    }
                },
                dw::DW_AT_ranges => {
                    ranges = d.attr_ranges_offset(&unit, attr.value()).ok().flatten()
                }
                dw::DW_AT_abstract_origin | dw::DW_AT_specification => {
                    if let gimli::AttributeValue::UnitRef(o) = attr.value() {
                        die = o.0 as u32;
                    }
                }
                _ => {}
            }
        }
        let depth = depth.max(0) as u32;
        if let (Some(l), Some(h)) = (low, high) {
            let end = if high_is_len { l.wrapping_add(h) } else { h };
            scopes.push(Scope {
                begin: l,
                end,
                depth,
                die,
            });
        }
        if let Some(r) = ranges.and_then(|r| d.ranges(&unit, r).ok()) {
            let mut r = r;
            while let Ok(Some(range)) = r.next() {
                scopes.push(Scope {
                    begin: range.begin,
                    end: range.end,
                    depth,
                    die,
                });
            }
        }
    }
    Some(UnitScopes { unit, scopes })
}

/// The demangled name and template type parameters (name, type DIE) of
/// the function DIE at `off` (following abstract origins and
/// specifications to the declaration that has them).
fn function_of(
    d: &dwarf::Dwarf,
    unit: &dwarf::Unit,
    off: u32,
) -> Option<(String, Vec<(String, u32)>)> {
    let mut off = gimli::UnitOffset(off as usize);
    let mut name = None;
    let mut params = Vec::new();
    for _ in 0..4 {
        let mut tree = unit.entries_tree(Some(off)).ok()?;
        let root = tree.root().ok()?;
        let entry = root.entry();
        if name.is_none() {
            name = linkage_name(d, unit, entry);
        }
        let next = match entry.attr_value(dw::DW_AT_specification) {
            Some(gimli::AttributeValue::UnitRef(o)) => Some(o),
            _ => match entry.attr_value(dw::DW_AT_abstract_origin) {
                Some(gimli::AttributeValue::UnitRef(o)) => Some(o),
                _ => None,
            },
        };
        let mut children = root.children();
        while let Ok(Some(child)) = children.next() {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_template_type_parameter {
                continue;
            }
            let pname = e
                .attr_value(dw::DW_AT_name)
                .and_then(|v| d.attr_string(unit, v).ok())
                .map(|r: Reader| String::from_utf8_lossy(r.slice()).into_owned());
            if let (Some(n), Some(gimli::AttributeValue::UnitRef(t))) =
                (pname, e.attr_value(dw::DW_AT_type))
            {
                params.push((n, t.0 as u32));
            }
        }
        match next {
            Some(o) if params.is_empty() || name.is_none() => off = o,
            _ => break,
        }
    }
    Some((name?, params))
}

fn linkage_name(
    d: &dwarf::Dwarf,
    unit: &dwarf::Unit,
    e: &gimli::DebuggingInformationEntry<Reader>,
) -> Option<String> {
    let v = e
        .attr_value(dw::DW_AT_linkage_name)
        .or_else(|| e.attr_value(dw::DW_AT_MIPS_linkage_name))?;
    let raw = d.attr_string(unit, v).ok()?;
    let raw = std::str::from_utf8(raw.slice()).ok()?;
    Some(format!("{:#}", rustc_demangle::demangle(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_paths_drop_generics_in_both_manglings() {
        assert_eq!(
            function_path("<alloc::boxed::Box<u8>>::new"),
            "alloc::boxed::Box::new"
        );
        assert_eq!(
            function_path("alloc::boxed::Box<T>::new"),
            "alloc::boxed::Box::new"
        );
        assert_eq!(
            function_path("<alloc::raw_vec::RawVec<(u64, u64)>>::with_capacity_in"),
            "alloc::raw_vec::RawVec::with_capacity_in"
        );
        assert_eq!(
            function_path("<alloc::vec::Vec<u8> as core::clone::Clone>::clone"),
            "alloc::vec::Vec as core::clone::Clone::clone"
        );
    }

    #[test]
    fn type_arguments_from_symbol_names() {
        let raw_vec = SITE_RULES
            .iter()
            .position(|r| r.function == "alloc::raw_vec::RawVec::")
            .unwrap();
        assert_eq!(
            name_args(
                "<alloc::raw_vec::RawVec<std::collections::hash::map::HashMap<u8, (u16, [u8; 2])>>>::grow_one",
                raw_vec
            ),
            ["std::collections::hash::map::HashMap<u8, (u16, [u8; 2])>"]
        );
        assert!(name_args("<alloc::vec::Vec<u8>>::push", raw_vec).is_empty());
        assert_eq!(
            normalise(
                "alloc::vec::Vec<alloc::vec::Vec<u8, alloc::alloc::Global>, alloc::alloc::Global>"
            ),
            "alloc::vec::Vec<alloc::vec::Vec<u8>>"
        );
    }

    /// std ships with its `RawVec::grow_one` for 24-byte elements merged
    /// into one function under many symbols (`String`, `Vec<u8>`,
    /// `OsString`...): this binary links it.
    #[test]
    fn merged_functions_are_found_with_all_their_names() {
        let exe = std::env::current_exe().unwrap();
        let merged = Merged::read(exe.to_str().unwrap());
        let group = merged
            .names
            .iter()
            .find(|names| {
                names
                    .iter()
                    .any(|n| n == "<alloc::raw_vec::RawVec<alloc::string::String>>::grow_one")
            })
            .expect("std's merged RawVec<String>::grow_one");
        assert!(group.len() > 1, "{group:?}");
        let k = merged.names.iter().position(|n| n == group).unwrap() as u32;
        let &(start, end, _) = merged.ranges.iter().find(|r| r.2 == k).unwrap();
        assert_eq!(merged.at(start), Some(group.as_slice()));
        assert_eq!(merged.at(end - 1), Some(group.as_slice()));
        assert!(merged.at(end).is_none_or(|other| other != group.as_slice()));
    }

    #[test]
    fn hash_table_buckets_from_allocation_size() {
        // 8 buckets of 16 bytes: 128 bytes of data, ctrl 8 + 16.
        assert_eq!(buckets_for(128 + 8 + 16, 16, 8), Some(8));
        // 4 buckets of 12 bytes (align 4): 48, padded to 48, ctrl 4 + 16.
        assert_eq!(buckets_for(48 + 4 + 16, 12, 4), Some(4));
        assert_eq!(buckets_for(100, 16, 8), None);
    }
}
