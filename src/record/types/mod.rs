//! The program's own types, from DWARF, for an exact heap graph.
//!
//! The conservative scan takes every word that holds a live block's address
//! for an edge, so a stale word (an enum's niche after `None` was written,
//! a `Vec`'s spare capacity, a hash table's tombstone) invents a retainer.
//! This module knows, for a block of a known type, which words ARE
//! pointers and to what:
//!
//! - [`TypeMaps`] is built once per set of loaded modules, before any
//!   pause: every module's DWARF (`gimli` over `mmap`ed files, split-off
//!   debug files found by build-id or `.gnu_debuglink`) is read into one
//!   immutable, deduplicated type table with pointer maps (`layout`,
//!   `build`), the containers whose live part DWARF does not say
//!   (`containers`), statics and vtables (`statics`).
//! - [`walk`] enumerates a block's out-pointers given its [`BlockType`]:
//!   each with its offset, target, the target's type when the pointer
//!   says it ([`OutPointer::pointee`]), the field it sits in ([`SlotId`],
//!   printed by [`TypeMaps::slot_path`]) and whether the type says it is a
//!   pointer or it is only a candidate ([`PointerKind`]).
//! - [`TypeMaps::site_type`] types a block from its allocation stack (the
//!   innermost generic frame: `Box::<T>::new`, `RawVec<T>`, ...): the
//!   fallback for blocks no typed owner reaches.
//! - [`TypeMaps::statics`] names static roots (`module!symbol`) and
//!   [`TypeMaps::allocator_metadata`] lists the allocator's own state that
//!   is never a root.
//!
//! How the heap scan uses it (the order matters: everything that
//! allocates happens before the pause):
//!
//! 1. Before the pause: `let maps = TypeMaps::shared();` (built once per
//!    set of loaded modules); per allocation stack,
//!    [`TypeMaps::site_spec`] (the site fallback); the static roots
//!    ([`TypeMaps::statics`]) and [`TypeMaps::allocator_metadata`] (ranges
//!    to cut out of the writable segments).
//! 2. During the pause: seed typed roots with each static's
//!    `BlockType::one(ty)`, call [`walk`] on each region with its type, and
//!    give each target block the type [`OutPointer::pointee_for`] allows
//!    (a typed owner wins; [`TypeMaps::site_block`] is the fallback and
//!    never allocates; a block without either is scanned conservatively,
//!    as is one whose walk says [`Traced::Mismatch`]). Count bytes and
//!    blocks by [`Traced`] and [`Fallback`].
//! 3. After the pause: [`TypeMaps::slot_path`] names an edge's field,
//!    [`TypeMaps::static_label`] a static root.
//!
//! What it must never do: the walker never allocates, never panics, never
//! reads a word that does not overlap the region it is given (it reads
//! memory only through the caller's [`Memory`]), and its recursion and
//! loops are bounded by the type's depth and the region's size. Loading
//! allocates freely (plain `Vec`s): the caller holds leakprof's
//! re-entrancy guard ([`TypeMaps::shared`] takes it), so none of it is
//! recorded. Snapshots without a graph never touch this module.

mod build;
mod containers;
mod coverage;
mod dwarf;
mod layout;
mod names;
mod path;
mod site;
mod statics;
mod walk;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::fxhash::FxHashMap;
use build::{Builder, UnitTypes};
use layout::{Kind, Tables};
use names::Names;

pub use dwarf::{loaded_modules, LoadedModule, NoDebugInfo};
pub use layout::TypeId;
pub use names::NameId;
pub use path::short_name;
pub use site::{function_path, SiteRule, SiteShape, SiteSpec, SiteType, SITE_RULES};
pub use statics::{find_main_arena, StaticRoot, StaticSource};
pub use walk::{walk, BlockType, Fallback, Memory, OutPointer, PointerKind, Shape, SlotId, Traced};

/// One loaded module and what is known of its types.
pub struct ModuleTypes {
    pub module: LoadedModule,
    /// `Err` says why its blocks and statics are untyped.
    pub debug_info: Result<(), NoDebugInfo>,
    dwarf: Option<dwarf::Dwarf>,
}

/// A `<T as Trait>::{vtable}` at its runtime address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vtable {
    pub(crate) addr: usize,
    /// `None` when two types share the address (identical vtables merged).
    pub(crate) concrete: Option<TypeId>,
    /// `ArcInner<T>` and `RcInner<T>`, for `Arc<dyn Trait>`/`Rc<dyn Trait>`.
    pub(crate) arc_inner: Option<TypeId>,
    pub(crate) rc_inner: Option<TypeId>,
}

/// What loading cost and found.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    pub load_ns: u64,
    pub modules: usize,
    pub modules_with_debug_info: usize,
    pub units: usize,
    /// Type DIEs read (before deduplication).
    pub type_dies: u64,
    /// Distinct types after deduplication.
    pub types: usize,
    /// Distinct types without a usable layout (read conservatively).
    pub opaque_types: usize,
    pub containers: usize,
    pub statics: usize,
    pub vtables: usize,
    /// Variables with a location that is not a static address (TLS,
    /// optimised out).
    pub skipped_variables: u64,
    /// Bytes of the tables (heap, not recorded).
    pub table_bytes: usize,
}

/// Every loaded module's types: see the module docs.
pub struct TypeMaps {
    pub(crate) tables: Tables,
    pub(crate) names: Names,
    pub(crate) by_name: FxHashMap<NameId, TypeId>,
    pub(crate) modules: Vec<ModuleTypes>,
    pub(crate) units: Vec<UnitTypes>,
    pub(crate) statics: Vec<StaticRoot>,
    /// Sorted by address.
    pub(crate) vtables: Vec<Vtable>,
    pub(crate) sites: site::SiteCache,
    /// `Once` state values of this process's std.
    pub(crate) once: containers::OnceStates,
    stats: LoadStats,
}

impl TypeMaps {
    /// Loads the types of every module loaded now. Allocates: call it with
    /// leakprof's re-entrancy guard held, or use [`TypeMaps::shared`].
    pub fn load() -> TypeMaps {
        TypeMaps::load_modules(loaded_modules())
    }

    /// The process-wide maps, built on first use and rebuilt when the set
    /// of loaded modules changed (a `dlopen`). Takes the re-entrancy guard,
    /// so loading is never recorded.
    pub fn shared() -> Arc<TypeMaps> {
        /// The loaded modules (path, bias) the cached maps were built for.
        type Key = Vec<(String, usize)>;
        static SHARED: Mutex<Option<(Key, Arc<TypeMaps>)>> = Mutex::new(None);
        super::hooks::guarded(|| {
            let modules = loaded_modules();
            let key: Vec<(String, usize)> =
                modules.iter().map(|m| (m.path.clone(), m.bias)).collect();
            let mut cached = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((k, maps)) = cached.as_ref() {
                if *k == key {
                    return Arc::clone(maps);
                }
            }
            let maps = Arc::new(TypeMaps::load_modules(modules));
            *cached = Some((key, Arc::clone(&maps)));
            maps
        })
    }

    /// Loads the types of the given modules.
    pub fn load_modules(modules: Vec<LoadedModule>) -> TypeMaps {
        let t0 = Instant::now();
        let mut b = Builder::default();
        let mut out = Vec::with_capacity(modules.len());
        let mut symbols = Vec::new();
        let mut nodes = Vec::new();
        for (k, module) in modules.into_iter().enumerate() {
            let files = dwarf::open_module(&module.path);
            if let Some(f) = &files {
                statics::read_symbols(k as u32, &module, f.object, &mut symbols);
            }
            let (debug_info, dw) = match files.map(|f| f.debug) {
                None => (Err(NoDebugInfo::Unreadable), None),
                Some(Err(e)) => (Err(e), None),
                Some(Ok(bytes)) => match dwarf::load_dwarf(bytes) {
                    Some(d) => match read_units(&mut b, k as u32, &d, &mut nodes) {
                        Ok(()) => (Ok(()), Some(d)),
                        Err(e) => (Err(e), None),
                    },
                    None => (Err(NoDebugInfo::Unreadable), None),
                },
            };
            out.push(ModuleTypes {
                module,
                debug_info,
                dwarf: dw,
            });
        }
        let maps = TypeMaps::finish(b, out, symbols, t0);
        dwarf::release_mapped_pages();
        maps
    }

    fn finish(
        mut b: Builder,
        modules: Vec<ModuleTypes>,
        symbols: Vec<(u32, String, usize, usize)>,
        t0: Instant,
    ) -> TypeMaps {
        b.resolve_externs();
        let by_name = index_by_name(&b.tables);
        b.resolve_declarations(&by_name);
        b.tables.prune_uninhabited_variants();
        b.tables.compute_pointer_free();
        containers::recognise(&mut b.tables, &b.names, &by_name);
        b.tables.clear_opaque_pointees();
        b.tables.build_ops();
        let statics = statics::merge(&mut b, &modules, symbols);
        let vtables = statics::vtables(&b, &modules, &by_name);
        let opaque_types = b
            .tables
            .types
            .iter()
            .filter(|t| t.kind == Kind::Opaque)
            .count();
        let stats = LoadStats {
            load_ns: 0,
            modules: modules.len(),
            modules_with_debug_info: modules.iter().filter(|m| m.debug_info.is_ok()).count(),
            units: b.units.len(),
            type_dies: b.type_dies,
            types: b.tables.types.len(),
            opaque_types,
            containers: b.tables.containers.len(),
            statics: statics.len(),
            vtables: vtables.len(),
            skipped_variables: b.skipped_variables,
            table_bytes: b.heap_bytes(),
        };
        let mut maps = TypeMaps {
            tables: b.tables,
            names: b.names,
            by_name,
            modules,
            units: b.units,
            statics,
            vtables,
            sites: site::SiteCache::default(),
            once: containers::OnceStates::measure(),
            stats,
        };
        maps.stats.load_ns = t0.elapsed().as_nanos() as u64;
        maps
    }

    pub fn stats(&self) -> &LoadStats {
        &self.stats
    }

    pub fn modules(&self) -> &[ModuleTypes] {
        &self.modules
    }

    /// The type named exactly `name` (DWARF's spelling: qualified, with
    /// every generic parameter, e.g. `alloc::vec::Vec<u8, alloc::alloc::Global>`).
    pub fn type_named(&self, name: &str) -> Option<TypeId> {
        self.by_name.get(&self.names.lookup(name)?).copied()
    }

    pub fn type_name(&self, t: TypeId) -> &str {
        self.names.get(
            self.tables
                .types
                .get(t.0 as usize)
                .map_or(NameId(u32::MAX), |i| i.name),
        )
    }

    /// Size in bytes of a value of type `t`.
    pub fn type_size(&self, t: TypeId) -> u64 {
        self.tables.types.get(t.0 as usize).map_or(0, |i| i.size)
    }

    /// True when no word of a `t` can hold a heap address: a block of it
    /// need not be read at all.
    pub fn pointer_free(&self, t: TypeId) -> bool {
        self.tables
            .types
            .get(t.0 as usize)
            .is_some_and(|i| i.pointer_free)
    }

    /// True when a `t` is one address-wide integer (`usize`, `u64`, an
    /// atomic of one): every word of an array of them is a candidate
    /// pointer, read as the conservative scan reads a word.
    pub fn is_address_word(&self, t: TypeId) -> bool {
        self.tables
            .types
            .get(t.0 as usize)
            .is_some_and(|i| i.kind == Kind::Scalar(layout::Scalar::AddressWide) && i.size == 8)
    }

    /// The element type and length of an array type (`[T; n]`).
    pub fn array_elem(&self, t: TypeId) -> Option<(TypeId, u64)> {
        match self.tables.types.get(t.0 as usize)?.kind {
            Kind::Array { elem, count } => Some((elem, count)),
            _ => None,
        }
    }

    pub fn name(&self, n: NameId) -> &str {
        self.names.get(n)
    }

    /// Every type's name and whether its layout is known (for coverage
    /// reports).
    pub fn each_type(&self) -> impl Iterator<Item = (TypeId, &str, bool)> + '_ {
        self.tables.types.iter().enumerate().map(|(i, t)| {
            (
                TypeId(i as u32),
                self.names.get(t.name),
                t.kind != Kind::Opaque,
            )
        })
    }

    /// Whether the module containing `addr` (a return address, a static)
    /// has debug info: a block allocated from code without it is untyped
    /// for that reason ([`Fallback::NoDebugInfo`]).
    pub fn has_debug_info(&self, addr: usize) -> bool {
        self.modules
            .iter()
            .find(|m| m.module.contains(addr))
            .is_some_and(|m| m.debug_info.is_ok())
    }

    pub(crate) fn vtable(&self, addr: usize) -> Option<&Vtable> {
        let i = self.vtables.binary_search_by_key(&addr, |v| v.addr).ok()?;
        self.vtables.get(i)
    }
}

fn read_units(
    b: &mut Builder,
    module: u32,
    d: &dwarf::Dwarf,
    nodes: &mut Vec<dwarf::Node>,
) -> Result<(), NoDebugInfo> {
    let mut headers = d.units();
    let (mut units, mut skeletons) = (0usize, 0usize);
    while let Ok(Some(header)) = headers.next() {
        let Ok(unit) = d.unit(header) else { continue };
        units += 1;
        if unit.dwo_id.is_some() {
            skeletons += 1;
            continue;
        }
        if dwarf::read_unit_nodes(d, &unit, nodes).is_ok() {
            let mut locate = |expr: &[u8], out: &mut Vec<dwarf::Piece>| {
                dwarf::static_pieces(d, &unit, expr, out)
            };
            b.add_unit(module, unit.header.offset().0, nodes, &mut locate);
        }
    }
    if units > 0 && skeletons == units {
        return Err(NoDebugInfo::SplitDwarf);
    }
    Ok(())
}

/// The first type defined under each name (a layout preferred over an
/// opaque declaration).
fn index_by_name(tables: &Tables) -> FxHashMap<NameId, TypeId> {
    let mut by_name: FxHashMap<NameId, TypeId> = FxHashMap::default();
    for (i, t) in tables.types.iter().enumerate() {
        let id = TypeId(i as u32);
        by_name
            .entry(t.name)
            .and_modify(|e| {
                if tables.get(*e).kind == Kind::Opaque && t.kind != Kind::Opaque {
                    *e = id;
                }
            })
            .or_insert(id);
    }
    by_name
}

impl TypeMaps {
    /// The field `name` of struct `t`: (offset, type).
    pub fn field(&self, t: TypeId, name: &str) -> Option<(u64, TypeId)> {
        let f = self.tables.field(t, self.names.lookup(name)?)?;
        Some((f.offset, f.ty))
    }
}
