//! Reading DWARF: the loaded modules, their files (or split-off debug
//! files), and one raw pass per compilation unit that keeps only the DIEs
//! a layout needs (types, their members and variants, template parameters,
//! statics). Subprogram bodies, which are most of the DWARF, are skipped
//! here and read lazily by `site` for the few addresses that allocate.
//!
//! Files are `mmap`ed read-only and never unmapped (the type maps live as
//! long as the process); after loading, their pages are dropped from RSS
//! with `MADV_DONTNEED` (they are file-backed, so nothing is lost).
//! Compressed debug sections are inflated once into unlinked temporary
//! files, mapped and released the same way.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gimli::constants as dw;

/// The reader every DWARF structure here is built on: slices of files that
/// stay mapped for the life of the process.
pub(crate) type Reader = gimli::EndianSlice<'static, gimli::RunTimeEndian>;
pub(crate) type Dwarf = gimli::Dwarf<Reader>;
pub(crate) type Unit = gimli::Unit<Reader>;

/// "No such DIE" in the `u32` offset fields below.
pub(crate) const NONE: u32 = u32::MAX;

/// A loaded object as the dynamic loader lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedModule {
    /// File path (the executable's from `/proc/self/exe`).
    pub path: String,
    /// Load bias: runtime address = bias + link-time address.
    pub bias: usize,
    /// `PT_LOAD` segments at runtime: (start, end, writable).
    pub segments: Vec<(usize, usize, bool)>,
}

impl LoadedModule {
    /// The file name alone, as `module!symbol` prints it.
    pub fn short_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// A module read from a file on disk at load bias 0 (for offline
    /// tools: link-time addresses).
    pub fn from_file(path: &str) -> Option<LoadedModule> {
        use object::{Object, ObjectSegment};
        let bytes = map_file(Path::new(path))?;
        let file = object::File::parse(bytes).ok()?;
        let segments = file
            .segments()
            .map(|s| {
                let start = s.address() as usize;
                let writable = matches!(
                    s.flags(),
                    object::SegmentFlags::Elf { p_flags, .. } if p_flags.0 & object::elf::PF_W.0 != 0
                );
                (start, start + s.size() as usize, writable)
            })
            .collect();
        Some(LoadedModule {
            path: path.to_string(),
            bias: 0,
            segments,
        })
    }

    pub fn contains(&self, addr: usize) -> bool {
        self.segments.iter().any(|&(s, e, _)| s <= addr && addr < e)
    }
}

/// Every loaded object, in the loader's order (the executable first). The
/// vDSO and objects without a file are left out.
pub fn loaded_modules() -> Vec<LoadedModule> {
    let mut out: Vec<LoadedModule> = Vec::new();
    crate::record::symbols::for_each_loaded_object(|object| {
        if object.path.is_empty()
            || object.path.starts_with("linux-vdso")
            || !Path::new(&object.path).exists()
        {
            return;
        }
        let segments = object
            .phdrs
            .iter()
            .filter(|ph| ph.p_type == libc::PT_LOAD)
            .map(|ph| {
                let start = object.bias + ph.p_vaddr as usize;
                (
                    start,
                    start + ph.p_memsz as usize,
                    ph.p_flags & libc::PF_W != 0,
                )
            })
            .collect();
        out.push(LoadedModule {
            path: object.path,
            bias: object.bias,
            segments,
        });
    });
    out
}

/// Files mapped so far, by path: mapped once, never unmapped, so every
/// `Reader` stays valid for the life of the process.
static MAPPED: Mutex<Vec<(PathBuf, &'static [u8])>> = Mutex::new(Vec::new());

/// Maps `path` read-only (or returns the earlier mapping).
pub(crate) fn map_file(path: &Path) -> Option<&'static [u8]> {
    let mut mapped = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, bytes)) = mapped.iter().find(|(p, _)| p == path) {
        return Some(bytes);
    }
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len() as usize;
    if len == 0 {
        return None;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a private read-only mapping of a file we opened; the kernel
    // picks the address. The mapping is never unmapped (see MAPPED), so the
    // slice below stays valid for 'static. A file truncated under us would
    // fault on access: debug files of a running program are not rewritten
    // in place (the linker writes a new file and renames it).
    let bytes = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        std::slice::from_raw_parts(p as *const u8, len)
    };
    mapped.push((path.to_path_buf(), bytes));
    Some(bytes)
}

/// Drops the pages of every mapped file, and of every section inflated
/// into a temporary file, from this process's RSS. They are file-backed: a
/// later read faults them back in.
pub(crate) fn release_mapped_pages() {
    let mapped = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    let inflated = INFLATED.lock().unwrap_or_else(|e| e.into_inner());
    let files = mapped.iter().map(|(_, bytes)| *bytes);
    let temporary = inflated.iter().filter(|i| i.file_backed).map(|i| i.bytes);
    for bytes in files.chain(temporary) {
        // SAFETY: the range is one of our own file mappings, page aligned
        // at its start: a private clean mapping of a file (MAPPED) or a
        // shared one of a temporary file (INFLATED). MADV_DONTNEED on
        // either only discards this process's page table entries; the
        // contents stay in the file and its page cache.
        unsafe {
            libc::madvise(
                bytes.as_ptr() as *mut libc::c_void,
                bytes.len(),
                libc::MADV_DONTNEED,
            )
        };
    }
}

/// Why a module's types are unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoDebugInfo {
    /// The file could not be opened or parsed.
    Unreadable,
    /// Neither the file nor a debug file found by build-id or
    /// `.gnu_debuglink` has `.debug_info`.
    Stripped,
    /// Debug sections compressed other than with zlib (zstd): no such
    /// decompressor is linked.
    Compressed,
    /// Split DWARF (`.dwo`/`.dwp`; `-C split-debuginfo=packed|unpacked`).
    SplitDwarf,
}

impl std::fmt::Display for NoDebugInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoDebugInfo::Unreadable => "file unreadable",
            NoDebugInfo::Stripped => "no debug info",
            NoDebugInfo::Compressed => "zstd-compressed debug info (unsupported)",
            NoDebugInfo::SplitDwarf => "split DWARF (unsupported)",
        })
    }
}

/// A module's file and the file holding its DWARF (often the same).
pub(crate) struct ModuleFiles {
    pub(crate) object: &'static [u8],
    pub(crate) debug: Result<&'static [u8], NoDebugInfo>,
}

/// Opens a module's file and finds its DWARF: in the file itself, else in
/// `/usr/lib/debug/.build-id/xx/yyyy.debug`, else by `.gnu_debuglink`
/// (next to the file, in its `.debug/`, or under `/usr/lib/debug`).
pub(crate) fn open_module(path: &str) -> Option<ModuleFiles> {
    use object::Object;
    let bytes = map_file(Path::new(path))?;
    let file = object::File::parse(bytes).ok()?;
    let own = has_dwarf(&file);
    if own.is_ok() {
        return Some(ModuleFiles {
            object: bytes,
            debug: Ok(bytes),
        });
    }
    let build_id = file.build_id().ok().flatten();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() > 1) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        candidates.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
        candidates.push(dir.join(&name));
        candidates.push(dir.join(".debug").join(&name));
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        candidates.push(Path::new("/usr/lib/debug").join(rel).join(&name));
    }
    for c in candidates {
        let Some(dbg) = map_file(&c) else { continue };
        let Ok(dfile) = object::File::parse(dbg) else {
            continue;
        };
        if build_id.is_some() && dfile.build_id().ok().flatten() != build_id {
            continue;
        }
        if has_dwarf(&dfile).is_ok() {
            return Some(ModuleFiles {
                object: bytes,
                debug: Ok(dbg),
            });
        }
    }
    Some(ModuleFiles {
        object: bytes,
        debug: Err(own.unwrap_err()),
    })
}

fn has_dwarf(file: &object::File<'static>) -> Result<(), NoDebugInfo> {
    use object::{Object, ObjectSection};
    if debug_section(file, ".debug_info").is_none() {
        return Err(NoDebugInfo::Stripped);
    }
    for s in file.sections() {
        let Ok(name) = s.name() else { continue };
        if name.starts_with(".debug_") || name.starts_with(".zdebug_") {
            let format = s
                .compressed_file_range()
                .map(|r| r.format)
                .map_err(|_| NoDebugInfo::Compressed)?;
            if !matches!(
                format,
                object::CompressionFormat::None | object::CompressionFormat::Zlib
            ) {
                return Err(NoDebugInfo::Compressed);
            }
        }
    }
    Ok(())
}

/// A debug section by its `.debug_*` name: the section itself, or its
/// GNU-compressed `.zdebug_*` form (`objcopy --compress-debug-sections=zlib-gnu`).
fn debug_section<'f>(
    file: &'f object::File<'static>,
    name: &str,
) -> Option<object::Section<'static, 'f>> {
    use object::Object;
    file.section_by_name(name).or_else(|| {
        let rest = name.strip_prefix(".debug_")?;
        file.section_by_name(&format!(".zdebug_{rest}"))
    })
}

/// Sections the type maps never read: location lists and macros are most
/// of a debug build's DWARF after `.debug_info`, so a compressed file's
/// are left compressed.
const UNREAD_SECTIONS: &[gimli::SectionId] = &[
    gimli::SectionId::DebugLoc,
    gimli::SectionId::DebugLocLists,
    gimli::SectionId::DebugMacinfo,
    gimli::SectionId::DebugMacro,
];

/// The DWARF of a file with debug sections. Compressed sections (zlib,
/// either as `ld --compress-debug-sections` and Debian's debug packages
/// write them, or GNU's `.zdebug_*`) are inflated once, see [`inflated`].
pub(crate) fn load_dwarf(bytes: &'static [u8]) -> Option<Dwarf> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(bytes).ok()?;
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
        let mut data: &'static [u8] = &[];
        if !UNREAD_SECTIONS.contains(&id) {
            if let Some(section) = debug_section(&file, id.name()) {
                let compressed = section.compressed_data().map_err(|_| gimli::Error::Io)?;
                data = match compressed.format {
                    object::CompressionFormat::None => compressed.data,
                    object::CompressionFormat::Zlib => {
                        inflated(bytes, id.name(), compressed).ok_or(gimli::Error::Io)?
                    }
                    _ => return Err(gimli::Error::Io),
                };
            }
        }
        Ok(gimli::EndianSlice::new(data, endian))
    };
    gimli::Dwarf::load(load).ok()
}

/// Sections inflated so far, by (file mapping, section name): inflated
/// once, never unmapped, like [`MAPPED`].
static INFLATED: Mutex<Vec<Inflated>> = Mutex::new(Vec::new());

struct Inflated {
    file: usize,
    section: &'static str,
    bytes: &'static [u8],
    /// Backed by an unlinked temporary file: its pages can be dropped from
    /// RSS like a mapped file's. Otherwise anonymous memory, which must stay.
    file_backed: bool,
}

/// A zlib-compressed section's contents, inflated into an unlinked
/// temporary file mapped shared (so that [`release_mapped_pages`] can drop
/// its pages: the loaded types cost no RSS, as with an uncompressed file),
/// or into anonymous memory if no temporary file can be made.
fn inflated(
    file: &'static [u8],
    section: &'static str,
    compressed: object::CompressedData<'static>,
) -> Option<&'static [u8]> {
    let mut done = INFLATED.lock().unwrap_or_else(|e| e.into_inner());
    let key = file.as_ptr() as usize;
    if let Some(i) = done.iter().find(|i| i.file == key && i.section == section) {
        return Some(i.bytes);
    }
    let len = usize::try_from(compressed.uncompressed_size).ok()?;
    if len == 0 {
        return Some(&[]);
    }
    let (map, file_backed) = writable_mapping(len)?;
    // SAFETY: `map` is a fresh private-to-us mapping of `len` writable
    // bytes that nothing else refers to yet.
    let out = unsafe { std::slice::from_raw_parts_mut(map, len) };
    use miniz_oxide::inflate::core::inflate_flags::{
        TINFL_FLAG_PARSE_ZLIB_HEADER, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    };
    let (status, read, written) = miniz_oxide::inflate::core::decompress(
        &mut miniz_oxide::inflate::core::DecompressorOxide::new(),
        compressed.data,
        out,
        0,
        TINFL_FLAG_PARSE_ZLIB_HEADER | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    );
    let complete = status == miniz_oxide::inflate::TINFLStatus::Done
        && read == compressed.data.len()
        && written == len;
    // SAFETY: `map`/`len` is the mapping made above; from here on it is
    // only read (on failure it is unmapped and never referred to again).
    unsafe {
        if !complete {
            libc::munmap(map.cast(), len);
            return None;
        }
        libc::mprotect(map.cast(), len, libc::PROT_READ);
    }
    // SAFETY: the mapping is never unmapped (INFLATED keeps it), so the
    // slice stays valid for 'static; it is read-only from here on.
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map, len) };
    done.push(Inflated {
        file: key,
        section,
        bytes,
        file_backed,
    });
    Some(bytes)
}

/// `len` writable bytes: a shared mapping of an unlinked temporary file
/// (`O_TMPFILE` in the temporary directory), else anonymous memory. The
/// bool says which.
fn writable_mapping(len: usize) -> Option<(*mut u8, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(std::env::temp_dir().as_os_str().as_bytes()).ok();
    if let Some(dir) = dir {
        // SAFETY: open/ftruncate/mmap/close on a descriptor we own; the
        // file has no name, so it disappears with its last reference (the
        // mapping, which is never unmapped).
        unsafe {
            let fd = libc::open(
                dir.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            );
            if fd >= 0 {
                let mut map = libc::MAP_FAILED;
                if libc::ftruncate(fd, len as libc::off_t) == 0 {
                    map = libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    );
                }
                libc::close(fd);
                if map != libc::MAP_FAILED {
                    return Some((map.cast(), true));
                }
            }
        }
    }
    // SAFETY: a fresh anonymous private mapping; the kernel picks the address.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (map != libc::MAP_FAILED).then_some((map.cast(), false))
}

/// What kind of DIE a [`Node`] is (only the kinds layouts need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    Namespace,
    Struct,
    Union,
    Enumeration,
    Pointer,
    Array,
    Subrange,
    Base,
    /// typedef, const, volatile: the same layout as their `ty`.
    Alias,
    Member,
    TemplateType,
    VariantPart,
    Variant,
    Subroutine,
    Variable,
    Unspecified,
}

fn classify(tag: gimli::DwTag) -> Option<Tag> {
    Some(match tag {
        dw::DW_TAG_namespace => Tag::Namespace,
        dw::DW_TAG_structure_type | dw::DW_TAG_class_type => Tag::Struct,
        dw::DW_TAG_union_type => Tag::Union,
        dw::DW_TAG_enumeration_type => Tag::Enumeration,
        dw::DW_TAG_pointer_type | dw::DW_TAG_reference_type | dw::DW_TAG_rvalue_reference_type => {
            Tag::Pointer
        }
        dw::DW_TAG_array_type => Tag::Array,
        dw::DW_TAG_subrange_type => Tag::Subrange,
        dw::DW_TAG_base_type => Tag::Base,
        dw::DW_TAG_typedef
        | dw::DW_TAG_const_type
        | dw::DW_TAG_volatile_type
        | dw::DW_TAG_atomic_type
        | dw::DW_TAG_restrict_type => Tag::Alias,
        dw::DW_TAG_member => Tag::Member,
        dw::DW_TAG_template_type_parameter => Tag::TemplateType,
        dw::DW_TAG_variant_part => Tag::VariantPart,
        dw::DW_TAG_variant => Tag::Variant,
        dw::DW_TAG_subroutine_type => Tag::Subroutine,
        dw::DW_TAG_variable => Tag::Variable,
        dw::DW_TAG_unspecified_type => Tag::Unspecified,
        _ => return None,
    })
}

/// A reference to another DIE: in the same unit (a unit offset) or, for
/// `DW_FORM_ref_addr` into another unit (rustc writes about one type
/// reference in seven that way), a `.debug_info` offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DieRef {
    None,
    Local(u32),
    Global(u64),
}

/// One DIE of a unit as the layout builder needs it. Offsets are unit
/// offsets; `NONE` means absent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    pub(crate) offset: u32,
    /// Index of the parent node in the unit's list (`NONE`: the unit).
    pub(crate) parent: u32,
    pub(crate) tag: Tag,
    pub(crate) name: &'static [u8],
    /// `DW_AT_type`.
    pub(crate) ty: DieRef,
    pub(crate) size: Option<u64>,
    pub(crate) align: u32,
    /// `DW_AT_data_member_location` (members).
    pub(crate) member_offset: u64,
    /// `DW_AT_discr_value`, raw bits (variants).
    pub(crate) discr_value: Option<u64>,
    /// `DW_AT_discr` (variant parts).
    pub(crate) discr: u32,
    /// `DW_AT_count` or `upper_bound - lower_bound + 1` (subranges); the
    /// number of enumerators (enumerations: 0 means uninhabited).
    pub(crate) count: Option<u64>,
    pub(crate) encoding: u8,
    pub(crate) declaration: bool,
    /// `DW_AT_containing_type` (rustc's vtable types: the concrete type).
    pub(crate) containing: DieRef,
    /// `DW_AT_location` as an expression (variables).
    pub(crate) location: &'static [u8],
}

impl Node {
    pub(crate) fn new(offset: u32, parent: u32, tag: Tag) -> Node {
        Node {
            offset,
            parent,
            tag,
            name: b"",
            ty: DieRef::None,
            size: None,
            align: 0,
            member_offset: 0,
            discr_value: None,
            discr: NONE,
            count: None,
            encoding: 0,
            declaration: false,
            containing: DieRef::None,
            location: b"",
        }
    }
}

/// Reads the layout-relevant DIEs of `unit` into `out` (cleared first), in
/// offset order. Children of skipped DIEs (subprograms and their bodies,
/// enumerators, subroutine parameters) are skipped too.
pub(crate) fn read_unit_nodes(
    dwarf: &Dwarf,
    unit: &Unit,
    out: &mut Vec<Node>,
) -> gimli::Result<()> {
    out.clear();
    let mut entries = unit.entries_raw(None)?;
    // parents[d]: node index of the open DIE at depth d (NONE: not kept).
    let mut parents: Vec<u32> = Vec::with_capacity(32);
    let mut skip_deeper_than = isize::MAX;
    while !entries.is_empty() {
        let offset = entries.next_offset().0 as u32;
        let depth = entries.next_depth();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        if depth > skip_deeper_than {
            entries.skip_attributes(abbrev.attributes())?;
            // Count an enumeration's enumerators: none means uninhabited.
            if let Some(last) = out.last_mut() {
                if last.tag == Tag::Enumeration
                    && depth == skip_deeper_than + 1
                    && abbrev.tag() == dw::DW_TAG_enumerator
                {
                    last.count = Some(last.count.unwrap_or(0) + 1);
                }
            }
            continue;
        }
        skip_deeper_than = isize::MAX;
        let d = depth.max(0) as usize;
        parents.truncate(d);
        let kept = if depth == 0 {
            entries.skip_attributes(abbrev.attributes())?;
            None
        } else if let Some(tag) = classify(abbrev.tag()) {
            let parent = parents.get(d.wrapping_sub(1)).copied().unwrap_or(NONE);
            let mut node = Node::new(offset, parent, tag);
            if tag == Tag::Enumeration {
                node.count = Some(0);
            }
            for spec in abbrev.attributes() {
                let attr = entries.read_attribute_inline(*spec)?;
                read_attribute(dwarf, unit, &mut node, &attr);
            }
            out.push(node);
            if matches!(tag, Tag::Enumeration | Tag::Subroutine | Tag::Base) {
                skip_deeper_than = depth;
            }
            Some(out.len() as u32 - 1)
        } else {
            entries.skip_attributes(abbrev.attributes())?;
            skip_deeper_than = depth;
            None
        };
        if abbrev.has_children() {
            parents.resize(d, NONE);
            parents.push(kept.unwrap_or(NONE));
        }
    }
    Ok(())
}

fn read_attribute(dwarf: &Dwarf, unit: &Unit, node: &mut Node, attr: &gimli::Attribute<Reader>) {
    use gimli::AttributeValue as V;
    let die_ref = |v: V<Reader>| match v {
        V::UnitRef(o) => DieRef::Local(o.0 as u32),
        V::DebugInfoRef(o) => match o.to_unit_offset(&unit.header) {
            Some(u) => DieRef::Local(u.0 as u32),
            None => DieRef::Global(o.0 as u64),
        },
        _ => DieRef::None,
    };
    let unit_ref = |v: V<Reader>| match die_ref(v) {
        DieRef::Local(o) => o,
        _ => NONE,
    };
    match attr.name() {
        dw::DW_AT_name => {
            node.name = dwarf
                .attr_string(unit, attr.value())
                .map(|r| r.slice())
                .unwrap_or(b"")
        }
        dw::DW_AT_type => node.ty = die_ref(attr.value()),
        dw::DW_AT_containing_type => node.containing = die_ref(attr.value()),
        dw::DW_AT_discr => node.discr = unit_ref(attr.value()),
        dw::DW_AT_byte_size => node.size = attr.udata_value(),
        dw::DW_AT_alignment => node.align = attr.udata_value().unwrap_or(0) as u32,
        dw::DW_AT_data_member_location => node.member_offset = attr.udata_value().unwrap_or(0),
        dw::DW_AT_discr_value => node.discr_value = discr_bits(attr.value()),
        dw::DW_AT_count => node.count = attr.udata_value(),
        // Lower bound 0 (Rust, C); `count` wins when both are present.
        dw::DW_AT_upper_bound if node.count.is_none() => {
            node.count = attr.udata_value().map(|u| u.saturating_add(1))
        }
        dw::DW_AT_encoding => {
            if let V::Encoding(e) = attr.value() {
                node.encoding = e.0;
            }
        }
        dw::DW_AT_declaration => node.declaration = matches!(attr.value(), V::Flag(true)),
        dw::DW_AT_location => {
            if let V::Exprloc(e) = attr.value() {
                node.location = e.0.slice();
            }
        }
        _ => {}
    }
}

/// A discriminant value's bits. rustc writes them with fixed-size data
/// forms holding the raw bits at the discriminant's width (rust-lang/rust
/// #125147), so they are compared as bits after masking to that width.
fn discr_bits(v: gimli::AttributeValue<Reader>) -> Option<u64> {
    use gimli::AttributeValue as V;
    match v {
        V::Data1(x) => Some(x as u64),
        V::Data2(x) => Some(x as u64),
        V::Data4(x) => Some(x as u64),
        V::Data8(x) => Some(x),
        V::Udata(x) => Some(x),
        V::Sdata(x) => Some(x as u64),
        _ => None,
    }
}

/// One piece of a static's location: `size` bytes of the variable (from
/// byte `offset` of its type) live at link-time address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) offset: u64,
    pub(crate) addr: u64,
    /// 0: the rest of the variable.
    pub(crate) size: u64,
}

/// Decodes a static variable's location: `DW_OP_addr`/`DW_OP_addrx`
/// optionally followed by `DW_OP_plus_uconst`, possibly split in
/// `DW_OP_piece`s (LLVM splits globals it optimised). Anything else (TLS,
/// registers, computed values) is not a static address: `false`.
pub(crate) fn static_pieces(dwarf: &Dwarf, unit: &Unit, expr: &[u8], out: &mut Vec<Piece>) -> bool {
    out.clear();
    let mut r = gimli::EndianSlice::new(expr, gimli::RunTimeEndian::Little);
    let mut offset = 0u64;
    let mut addr: Option<u64> = None;
    let addr_size = unit.encoding().address_size;
    while !r.is_empty() {
        let Ok(op) = gimli::Reader::read_u8(&mut r) else {
            return false;
        };
        match gimli::DwOp(op) {
            dw::DW_OP_addr => match gimli::Reader::read_address(&mut r, addr_size) {
                Ok(a) => addr = Some(a),
                Err(_) => return false,
            },
            dw::DW_OP_addrx | dw::DW_OP_GNU_addr_index => {
                let Ok(i) = gimli::Reader::read_uleb128(&mut r) else {
                    return false;
                };
                match dwarf.address(unit, gimli::DebugAddrIndex(i as usize)) {
                    Ok(a) => addr = Some(a),
                    Err(_) => return false,
                }
            }
            dw::DW_OP_plus_uconst => {
                let Ok(k) = gimli::Reader::read_uleb128(&mut r) else {
                    return false;
                };
                match addr.as_mut() {
                    Some(a) => *a = a.wrapping_add(k),
                    None => return false,
                }
            }
            dw::DW_OP_piece => {
                let Ok(size) = gimli::Reader::read_uleb128(&mut r) else {
                    return false;
                };
                // A piece without an address is an optimised-out part.
                if let Some(a) = addr.take() {
                    out.push(Piece {
                        offset,
                        addr: a,
                        size,
                    });
                }
                offset += size;
            }
            _ => return false,
        }
    }
    if let Some(a) = addr {
        out.push(Piece {
            offset,
            addr: a,
            size: 0,
        });
    }
    !out.is_empty()
}
