//! Static roots with names and types, and the allocator's own state that
//! is never a root.
//!
//! A static comes from DWARF (`DW_TAG_variable` with a `DW_OP_addr`
//! location plus the module's load bias: typed) or, for modules without
//! debug info, from the ELF symbol tables (`.symtab`, `.dynsym`: `OBJECT`
//! symbols in a writable segment: named, untyped). Either way a root can be
//! printed `module!symbol` for the user to check.

use super::super::fxhash::FxHashMap;
use super::build::Builder;
use super::layout::TypeId;
use super::names::NameId;
use super::walk::Memory;
use super::{LoadedModule, ModuleTypes, TypeMaps, Vtable};

/// Where a static's name and type come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticSource {
    /// A DWARF variable: typed.
    Dwarf,
    /// A DWARF variable LLVM split into pieces at different addresses:
    /// one piece, untyped.
    DwarfPiece,
    /// An ELF symbol: untyped.
    Symbol,
}

/// A static variable at its runtime address.
#[derive(Clone, Copy, Debug)]
pub struct StaticRoot {
    /// Index into [`TypeMaps::modules`].
    pub module: u32,
    pub name: NameId,
    pub start: usize,
    pub len: usize,
    /// The variable's type (DWARF only).
    pub ty: Option<TypeId>,
    pub source: StaticSource,
}

/// The ELF `OBJECT` symbols of `module` that lie in a writable segment
/// (interned later: names are kept as strings until `merge`).
pub(crate) fn read_symbols(
    module: u32,
    info: &LoadedModule,
    object: &'static [u8],
    out: &mut Vec<(u32, String, usize, usize)>,
) {
    use object::{Object, ObjectSymbol, SymbolKind};
    let Ok(file) = object::File::parse(object) else {
        return;
    };
    let mut seen: Vec<(usize, usize)> = Vec::new();
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if sym.kind() != SymbolKind::Data || sym.size() == 0 || sym.is_undefined() {
            continue;
        }
        let start = info.bias.wrapping_add(sym.address() as usize);
        let len = sym.size() as usize;
        let writable = info
            .segments
            .iter()
            .any(|&(s, e, w)| w && s <= start && start < e);
        if !writable || seen.contains(&(start, len)) {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        seen.push((start, len));
        out.push((module, demangle(name), start, len));
    }
}

fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// DWARF statics at runtime addresses, then symbols for what DWARF does
/// not cover; sorted by address.
pub(crate) fn merge(
    b: &mut Builder,
    modules: &[ModuleTypes],
    symbols: Vec<(u32, String, usize, usize)>,
) -> Vec<StaticRoot> {
    let mut out: Vec<StaticRoot> = Vec::new();
    for s in &b.statics {
        let Some(m) = modules.get(s.module as usize) else {
            continue;
        };
        let bias = m.module.bias;
        let size = b.tables.get(s.ty).size as usize;
        let first = s.pieces[0];
        let contiguous = s
            .pieces
            .iter()
            .all(|p| p.addr.wrapping_sub(first.addr) == p.offset.wrapping_sub(first.offset));
        if contiguous && first.offset == 0 {
            out.push(StaticRoot {
                module: s.module,
                name: s.name,
                start: bias.wrapping_add(first.addr as usize),
                len: size,
                ty: Some(s.ty),
                source: StaticSource::Dwarf,
            });
            continue;
        }
        for p in &s.pieces {
            let len = if p.size == 0 {
                size.saturating_sub(p.offset as usize)
            } else {
                p.size as usize
            };
            out.push(StaticRoot {
                module: s.module,
                name: s.name,
                start: bias.wrapping_add(p.addr as usize),
                len,
                ty: None,
                source: StaticSource::DwarfPiece,
            });
        }
    }
    out.sort_by_key(|s| (s.start, std::cmp::Reverse(s.len)));
    out.dedup_by_key(|s| s.start);
    let covered = out.clone();
    for (module, name, start, len) in symbols {
        if find(&covered, start).is_some() {
            continue;
        }
        out.push(StaticRoot {
            module,
            name: b.names.intern(&name),
            start,
            len,
            ty: None,
            source: StaticSource::Symbol,
        });
    }
    out.sort_by_key(|s| s.start);
    out
}

/// The static containing `addr`, in a list sorted by start.
fn find(list: &[StaticRoot], addr: usize) -> Option<usize> {
    let i = list.partition_point(|s| s.start <= addr).checked_sub(1)?;
    let s = &list[i];
    (addr < s.start + s.len.max(1)).then_some(i)
}

/// rustc's vtables at runtime addresses, with the `ArcInner`/`RcInner`
/// of their concrete type for `Arc<dyn Trait>`.
pub(crate) fn vtables(
    b: &Builder,
    modules: &[ModuleTypes],
    by_name: &FxHashMap<NameId, TypeId>,
) -> Vec<Vtable> {
    let inner = |prefix: &str, t: TypeId| -> Option<TypeId> {
        let name = format!("{prefix}{}>", b.names.get(b.tables.get(t).name));
        by_name.get(&b.names.lookup(&name)?).copied()
    };
    let mut out: Vec<Vtable> = b
        .vtables
        .iter()
        .filter_map(|&(module, addr, concrete)| {
            let bias = modules.get(module as usize)?.module.bias;
            Some(Vtable {
                addr: bias.wrapping_add(addr as usize),
                concrete: Some(concrete),
                arc_inner: inner("alloc::sync::ArcInner<", concrete),
                rc_inner: inner("alloc::rc::RcInner<", concrete),
            })
        })
        .collect();
    out.sort_by_key(|v| v.addr);
    // Identical vtables may be merged by the linker: ambiguous, untyped.
    out.dedup_by(|later, first| {
        if later.addr == first.addr {
            if later.concrete != first.concrete {
                first.concrete = None;
                first.arc_inner = None;
                first.rc_inner = None;
            }
            true
        } else {
            false
        }
    });
    out
}

impl TypeMaps {
    /// Every static root, sorted by address (DWARF variables, then symbols
    /// where DWARF says nothing).
    pub fn statics(&self) -> &[StaticRoot] {
        &self.statics
    }

    /// The static that contains `addr`.
    pub fn static_at(&self, addr: usize) -> Option<&StaticRoot> {
        find(&self.statics, addr).map(|i| &self.statics[i])
    }

    /// `module!symbol` (e.g. `leakprof!leakprof::lab::REGISTRY`).
    pub fn static_label(&self, s: &StaticRoot) -> String {
        let module = self
            .modules
            .get(s.module as usize)
            .map_or("?", |m| m.module.short_name());
        format!("{module}!{}", self.names.get(s.name))
    }

    /// Address ranges holding the allocator's own state, never roots:
    /// glibc's `main_arena` (whose bins and top pointers point at chunk
    /// headers, i.e. into the last bytes of live neighbours) and `mp_`,
    /// jemalloc's and mimalloc's statics. Found by symbol when the module
    /// has one (`.symtab` or a debug file), else, for glibc's main arena,
    /// by its signature in libc's writable data (see
    /// [`find_main_arena`]). Reads memory through `mem` (libc's data).
    pub fn allocator_metadata(&self, mem: &impl Memory) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut arena_named = false;
        for s in &self.statics {
            let name = self.names.get(s.name);
            if is_allocator_state(name) {
                arena_named |= name == "main_arena";
                out.push((s.start, s.start + s.len));
            }
        }
        if !arena_named {
            for m in &self.modules {
                if is_libc(&m.module.path) {
                    for &(start, end, writable) in &m.module.segments {
                        if writable {
                            out.extend(find_main_arena(mem, start, end));
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }
}

fn is_libc(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.starts_with("libc.so") || file.starts_with("libc-")
}

/// Symbols of allocator state: glibc's arenas and parameters, jemalloc's
/// (`je_`, `_rjem_je_` as tikv-jemallocator prefixes them), mimalloc's.
fn is_allocator_state(name: &str) -> bool {
    matches!(
        name,
        "main_arena" | "mp_" | "tcache" | "thread_arena" | "free_list"
    ) || name.starts_with("je_")
        || name.starts_with("_rjem_je_")
        || name.starts_with("_mi_")
        || name.starts_with("mi_")
}

/// glibc's `struct malloc_state` for the main arena, found without symbols:
/// its `bins` array starts empty and an empty bin's `fd` and `bk` both
/// hold the address 16 bytes below the `fd` slot itself (a chunk header
/// whose `fd` field is the slot). No other data has dozens of such
/// self-referential pairs in a row. Returns the range from the first such
/// pair minus the largest offset `bins` may start at, to the last pair plus
/// the rest of the struct: generous, and only ever libc's own data.
pub fn find_main_arena(mem: &impl Memory, start: usize, end: usize) -> Option<(usize, usize)> {
    /// Offset of `bins` in `malloc_state` (x86-64 and aarch64, glibc 2.26+).
    const BINS_OFFSET: usize = 112;
    /// `NBINS * 2 - 2` pointers.
    const BINS_BYTES: usize = 254 * 8;
    /// From the end of `bins` to the end of the struct.
    const AFTER_BINS: usize = 56;
    const MIN_PAIRS: usize = 32;
    let mut p = (start + 7) & !7;
    let (mut first, mut last, mut count) = (0usize, 0usize, 0usize);
    while p + 16 <= end {
        // Non-empty bins interrupt the run: a gap longer than the whole
        // array ends it.
        if count > 0 && p - last > BINS_BYTES {
            if count >= MIN_PAIRS {
                break;
            }
            count = 0;
        }
        let fd = mem.word(p);
        if fd == p.wrapping_sub(16) && mem.word(p + 8) == fd {
            if count == 0 {
                first = p;
            }
            last = p;
            count += 1;
            p += 16;
        } else {
            p += 8;
        }
    }
    (count >= MIN_PAIRS).then(|| {
        let lo = first.saturating_sub(BINS_OFFSET + BINS_BYTES).max(start);
        let hi = (last + 16 + BINS_BYTES + AFTER_BINS).min(end);
        (lo, hi)
    })
}
