//! What a frame's function name says about it: the allocator's and
//! leakprof's own frames (trimmed from every stack), the standard
//! library's (skipped when looking for the allocation site), and the hash
//! legacy mangling appends.
//!
//! The vocabulary of the format's frames, shared by the recorder (which
//! names the holders in a heap graph by their site) and the analysis
//! (which names every stack's site), so neither reaches into the other.

/// Frames that belong to the allocator or to leakprof itself. They are the
/// innermost frames of every stack and say nothing about the program, so
/// flamegraphs and exports trim them.
const ALLOCATOR_FRAMES: &[&str] = &[
    "__rust_alloc",
    "__rust_realloc",
    "__rust_dealloc",
    "__rust_alloc_zeroed",
    "__rdl_",
    "__rg_",
    "alloc::alloc::",
    "<alloc::alloc::Global",
    "std::alloc::",
    "<std::alloc::System",
    "leakprof::record",
    "<leakprof::record",
    "<leakprof::LeakAlloc",
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
];

/// Frames of the standard library and its collections. They are skipped
/// when looking for the allocation *site*: the place in the program's own
/// code that asked for the memory (the caller of `Vec::with_capacity`, not
/// `RawVec::allocate_in`).
const LIBRARY_FRAMES: &[&str] = &[
    "alloc::",
    "core::",
    "std::",
    "hashbrown::",
    "__rust",
    "__rdl_",
    "__rg_",
];

/// Removes the `::h0123456789abcdef` hash that legacy mangling appends.
pub fn clean_function(name: &str) -> &str {
    if let Some(i) = name.rfind("::h") {
        let hash = &name[i + 3..];
        if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return &name[..i];
        }
    }
    name
}

fn starts_with_any(function: &str, prefixes: &[&str]) -> bool {
    let f = function.trim_start_matches('<');
    prefixes
        .iter()
        .any(|p| f.starts_with(p.trim_start_matches('<')))
}

/// True for frames of the allocator or leakprof's own recorder.
pub fn is_allocator_frame(function: &str) -> bool {
    starts_with_any(function, ALLOCATOR_FRAMES)
}

/// True for frames of the standard library (skipped when looking for the
/// allocation site).
pub fn is_library_frame(function: &str) -> bool {
    if starts_with_any(function, LIBRARY_FRAMES) {
        return true;
    }
    // `<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem`: an
    // implementation of a standard-library trait is library code too.
    if let Some(rest) = function.strip_prefix('<') {
        if let Some((_, trait_path)) = rest.split_once(" as ") {
            return starts_with_any(trait_path, LIBRARY_FRAMES);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_hashes_are_removed() {
        assert_eq!(clean_function("app::work::h0123456789abcdef"), "app::work");
        assert_eq!(clean_function("app::hello"), "app::hello");
    }
}
