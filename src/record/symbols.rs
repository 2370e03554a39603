//! Symbolization, at snapshot time only: return addresses to function
//! names, files and lines (inlined frames expanded) with the `backtrace`
//! crate, and the loaded modules (path, build-id, load address) so a profile
//! can be re-symbolized offline. Results are cached per address across
//! snapshots.
//!
//! Every stack seen since recording began is symbolized, not only stacks
//! with live blocks, so allocated-bytes views keep their names. The
//! recorder's own frames and the allocator shims above the program's code
//! are trimmed from the top of each stack.

use super::fxhash::FxHashMap;

use super::hooks::STACKS;
use super::sys::{LockCell, RawLock};
use crate::format::{Frame, Module, Stack};

#[derive(Clone, Debug)]
struct Resolved {
    function: String,
    file: Option<String>,
    line: Option<u32>,
    inlined: bool,
}

static CACHE: LockCell<Option<FxHashMap<u64, Vec<Resolved>>>> = LockCell::new(None);

pub(crate) fn cache_lock() -> &'static RawLock {
    CACHE.raw()
}

pub(crate) struct Symbolized {
    pub(crate) frames: Vec<Frame>,
    /// Indexed by stack id.
    pub(crate) stacks: Vec<Stack>,
    pub(crate) modules: Vec<Module>,
}

/// Symbolizes stacks `0..n_stacks`. Caller holds the re-entrancy guard.
pub(crate) fn symbolize(n_stacks: u32) -> Symbolized {
    let modules = loaded_modules();
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(FxHashMap::default);
    let mut frames: Vec<Frame> = Vec::new();
    let mut frame_ids: FxHashMap<(u64, usize), u32> = FxHashMap::default();
    let mut stacks = Vec::with_capacity(n_stacks as usize);
    for id in 0..n_stacks {
        let Some((pcs, truncated)) = STACKS.get(id) else {
            stacks.push(Stack::default());
            continue;
        };
        // Expand each return address into its (inlined) frames.
        let mut expanded: Vec<(u64, usize)> = Vec::with_capacity(pcs.len() * 2);
        for &pc in pcs {
            let n = cache.entry(pc).or_insert_with(|| resolve(pc)).len();
            expanded.extend((0..n).map(|k| (pc, k)));
        }
        let skip = expanded
            .iter()
            .take_while(|(pc, k)| {
                cache
                    .get(pc)
                    .and_then(|r| r.get(*k))
                    .is_some_and(|r| is_internal(&r.function))
            })
            .count();
        let mut ids = Vec::with_capacity(expanded.len() - skip);
        for &(pc, k) in &expanded[skip..] {
            let next_id = frames.len() as u32;
            let fid = *frame_ids.entry((pc, k)).or_insert_with(|| {
                let r = &cache[&pc][k];
                frames.push(Frame {
                    function: r.function.clone(),
                    file: r.file.clone(),
                    line: r.line,
                    address: pc.saturating_sub(1),
                    module: module_of(&modules, pc),
                    inlined: r.inlined,
                });
                next_id
            });
            ids.push(fid);
        }
        stacks.push(Stack {
            frames: ids,
            truncated,
        });
    }
    Symbolized {
        frames,
        stacks,
        modules,
    }
}

/// For each stack id below `n_stacks`: does any of its frames' function
/// names satisfy `pred`? Uses (and fills) the symbol cache. Caller holds the
/// re-entrancy guard.
pub(crate) fn stacks_matching(n_stacks: u32, pred: impl Fn(&str) -> bool) -> Vec<bool> {
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(FxHashMap::default);
    (0..n_stacks)
        .map(|id| match STACKS.get(id) {
            None => false,
            Some((pcs, _)) => pcs.iter().any(|&pc| {
                cache
                    .entry(pc)
                    .or_insert_with(|| resolve(pc))
                    .iter()
                    .any(|r| pred(&r.function))
            }),
        })
        .collect()
}

/// Resolves one return address (looking up `pc - 1`, inside the call
/// instruction) into its frames, innermost first.
fn resolve(pc: u64) -> Vec<Resolved> {
    if pc & FOREIGN_FRAME != 0 {
        return vec![resolve_foreign(pc)];
    }
    let mut out = Vec::new();
    backtrace::resolve(
        pc.saturating_sub(1) as usize as *mut std::ffi::c_void,
        |sym| {
            let function = sym
                .name()
                .map(|n| format!("{n:#}"))
                .unwrap_or_else(|| format!("{pc:#x}"));
            out.push(Resolved {
                function,
                file: sym.filename().map(|p| p.display().to_string()),
                line: sym.lineno(),
                inlined: true,
            });
        },
    );
    match out.last_mut() {
        Some(last) => last.inlined = false,
        None => out.push(Resolved {
            function: format!("{pc:#x}"),
            file: None,
            line: None,
            inlined: false,
        }),
    }
    out
}

/// Frames with this bit set are not return addresses but frames of an
/// interpreted language (`record::python`: a code object and an
/// instruction offset), resolved by the resolver that source registered.
pub(crate) const FOREIGN_FRAME: u64 = 1 << 63;

/// A foreign frame's function, file and line.
pub(crate) type ForeignResolver = fn(frame: u64) -> (String, Option<String>, Option<u32>);

static FOREIGN_RESOLVER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Registers the resolver of foreign frames (once, before recording).
pub(crate) fn set_foreign_resolver(resolver: ForeignResolver) {
    FOREIGN_RESOLVER.store(resolver as usize, std::sync::atomic::Ordering::Release);
}

fn resolve_foreign(frame: u64) -> Resolved {
    let (function, file, line) = match FOREIGN_RESOLVER.load(std::sync::atomic::Ordering::Acquire) {
        0 => (format!("{frame:#x}"), None, None),
        f => {
            // SAFETY: the only non-zero value ever stored is a
            // `ForeignResolver` function pointer (`set_foreign_resolver`).
            let resolver = unsafe { std::mem::transmute::<usize, ForeignResolver>(f) };
            resolver(frame)
        }
    };
    Resolved {
        function,
        file,
        line,
        inlined: false,
    }
}

/// Frames that belong to the recorder or the allocator plumbing between the
/// program's code and `LeakAlloc`: hidden from every report.
pub(crate) fn is_internal(function: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "leakprof::record::",
        "<leakprof::record::",
        "alloc::alloc::",
        "<alloc::alloc::Global",
        "std::alloc::",
        "<std::alloc::System as core::alloc::global::GlobalAlloc>",
        "core::alloc::global::GlobalAlloc::",
        "__rust_",
        "__rg_",
        "__rdl_",
        "__rustc::",
    ];
    PREFIXES.iter().any(|p| function.starts_with(p))
}

fn module_of(modules: &[Module], pc: u64) -> Option<u32> {
    modules
        .iter()
        .position(|m| m.start <= pc && pc < m.end)
        .map(|i| i as u32)
}

/// Every loaded object: path, build-id, load bias and executable range.
pub(crate) fn loaded_modules() -> Vec<Module> {
    let mut modules: Vec<Module> = Vec::new();
    for_each_loaded_object(|object| {
        let base = object.bias as u64;
        let (mut start, mut end) = (u64::MAX, 0u64);
        let mut build_id = None;
        for ph in object.phdrs {
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                start = start.min(base + ph.p_vaddr);
                end = end.max(base + ph.p_vaddr + ph.p_memsz);
            }
            if ph.p_type == libc::PT_NOTE && build_id.is_none() {
                // SAFETY: a PT_NOTE segment of a loaded object is mapped
                // readable at bias + p_vaddr for p_memsz bytes while the
                // object stays loaded, which it does during this call.
                let notes = unsafe {
                    std::slice::from_raw_parts(
                        (base + ph.p_vaddr) as *const u8,
                        ph.p_memsz as usize,
                    )
                };
                build_id = gnu_build_id(notes);
            }
        }
        if end > 0 {
            modules.push(Module {
                path: object.path,
                build_id,
                load_address: base,
                start,
                end,
            });
        }
    });
    modules
}

/// One object the dynamic loader has mapped, as `dl_iterate_phdr` reports
/// it.
pub(crate) struct LoadedObject<'a> {
    /// Its path: for the executable (which the loader reports without a
    /// name) the path of `/proc/self/exe`; empty for other unnamed objects
    /// (the vDSO).
    pub(crate) path: String,
    /// Load bias: runtime address = bias + link-time address.
    pub(crate) bias: usize,
    /// Its program headers.
    pub(crate) phdrs: &'a [libc::Elf64_Phdr],
}

/// Calls `f` for every loaded object, in the loader's order (the
/// executable first). The one walk of the loader's list for code that may
/// allocate (`loaded_modules` here, the type maps' modules); the scan's
/// pause has its own, allocation-free one.
pub(crate) fn for_each_loaded_object(mut f: impl FnMut(LoadedObject<'_>)) {
    let mut first = true;
    let mut visit = |info: &libc::dl_phdr_info| {
        let named = !info.dlpi_name.is_null()
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string,
            // valid during the callback.
            && unsafe { *info.dlpi_name } != 0;
        let path = if named {
            // SAFETY: as above.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        } else if first {
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        first = false;
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader's program headers, `dlpi_phnum` of them,
            // valid during the callback.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        f(LoadedObject {
            path,
            bias: info.dlpi_addr as usize,
            phdrs,
        });
    };
    let mut visit: &mut dyn FnMut(&libc::dl_phdr_info) = &mut visit;
    // SAFETY: the callback casts `data` back to the `&mut dyn FnMut` passed
    // here, which outlives the call, and only hands it the loader's
    // `dl_phdr_info`, valid during the callback.
    unsafe {
        libc::dl_iterate_phdr(
            Some(visit_object),
            (&mut visit as *mut &mut dyn FnMut(&libc::dl_phdr_info)).cast(),
        );
    }
}

unsafe extern "C" fn visit_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut dyn FnMut` passed by
    // `for_each_loaded_object`; `info` is valid for this call.
    unsafe {
        let visit = &mut *data.cast::<&mut dyn FnMut(&libc::dl_phdr_info)>();
        visit(&*info);
    }
    0
}

/// Finds the NT_GNU_BUILD_ID note in an ELF note segment.
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], i: usize| -> Option<u32> {
        b.get(i..i + 4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
    };
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_plumbing_is_internal_and_program_code_is_not() {
        assert!(is_internal("leakprof::record::hooks::on_alloc"));
        assert!(is_internal(
            "<leakprof::record::alloc::LeakAlloc<A> as core::alloc::global::GlobalAlloc>::alloc"
        ));
        assert!(is_internal("__rust_alloc"));
        assert!(is_internal("alloc::alloc::exchange_malloc"));
        assert!(!is_internal("alloc::raw_vec::RawVec<T,A>::allocate_in"));
        assert!(!is_internal("leakprof::lab::scenarios::exception"));
        assert!(!is_internal("my_worker::handle_job"));
    }

    #[test]
    fn this_test_binary_is_a_module_with_a_build_id() {
        let modules = loaded_modules();
        assert!(!modules.is_empty());
        let exe = &modules[0];
        assert!(exe.start < exe.end);
        let here = this_test_binary_is_a_module_with_a_build_id as fn() as usize as u64;
        assert!(modules.iter().any(|m| m.start <= here && here < m.end));
    }
}
