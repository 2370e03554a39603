//! The heap-graph scan: the one stop-the-world pause in leakprof.
//!
//! 1. *Prepare* (allocation allowed): collect the writable segments and TLS
//!    size of every loaded object, snapshot the registered owner
//!    containers, mark the allocation sites whose blocks are referred to by
//!    interior pointers.
//! 2. *Stop*: take every live-table shard lock (allocation and free on other
//!    threads now wait), then stop every other thread with a signal (see
//!    [`super::stop`] for the handshake). The handler runs on the thread's
//!    own stack (no `SA_ONSTACK`), so the registers the kernel saved for it
//!    lie below the interrupted stack pointer, where the scan starts.
//! 3. *Scan* (no allocation through `malloc` from here until resume: a
//!    stopped thread may hold malloc's locks; scratch memory is `mmap`ed):
//!    read `/proc/self/maps`; copy the live table and the blocks reallocs
//!    hold in flight, sort them by address; read every block's words and
//!    keep those that point into a live block as edges; read the roots
//!    (thread stacks and registers, static TLS blocks, writable segments of
//!    every loaded object, registered containers) the same way.
//! 4. *Resume*: release the threads and the shard locks.
//!
//! Memory is read with an inline-assembly load per word. The bytes may be
//! uninitialised (a `Vec`'s spare capacity) or written concurrently (a
//! thread that did not stop in time); a Rust read of them would be
//! undefined behaviour, while the value an `asm!` load produces is, to the
//! compiler, an ordinary initialised integer. A copy through `ptr::copy`
//! into `MaybeUninit` would still leave the value uninitialised as far as
//! Rust is concerned, and an FFI `memcpy` would cost a call per block for
//! no gain.
//!
//! Only memory the recorder knows is allocated and live is read as heap
//! (the locks held keep it so); roots are read only inside mappings listed
//! by `/proc/self/maps`. The one exception is a block whose realloc was
//! stuck inside the inner allocator when the stop phase ended: its old
//! copy may be freed, so it is read with `process_vm_readv`, which fails
//! instead of faulting.

use std::sync::atomic::Ordering;

use super::hooks::{self, LIVE};
use super::live::Block;
use super::mmapvec::MmapVec;
use super::owner;
use super::stop::{self, FlightNode, StopConfig, StoppedThread, SAVED_REGISTERS};
use super::sys;
use super::trace::{BlockTypes, HeapLookup, TraceCounts, Tracer, TypedPrep};
use super::types::BlockType;

/// A word (on a stack, in a register, in TLS or in a heap block) counts as
/// a reference to a block only if it points into the block's first bytes
/// ([`ROOT_INTERIOR_LIMIT`]), unless
/// the block was allocated by a container known to keep interior pointers
/// (hashbrown's tables, whose handle points at the control bytes in the
/// middle of the allocation). Live frames are full of stale words (unused
/// slots, dead temporaries); a stale address that now falls deep inside a
/// large, recycled block would otherwise keep it "reachable"; containers'
/// spare capacity holds stale words the same way. Rust values refer to
/// their heap buffers by the start (Vec, Box, Arc, String; `bytes::Bytes`
/// keeps its buffer's start, tagged, or a shared header); a slice into the
/// middle of a buffer is always accompanied by its owner.
const ROOT_INTERIOR_LIMIT: usize = 4096;

/// Allocation sites whose blocks are referred to by interior pointers.
const INTERIOR_POINTER_SITES: &[&str] = &["hashbrown::raw::", "<hashbrown::raw::"];

/// A pointer found in a block: `from` and `to` index the sorted blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Edge {
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) offset: u32,
    /// The field the pointer sits in (`types::SlotId`), for its path;
    /// `u32::MAX` for a word read without a type.
    pub(crate) slot: u32,
    pub(crate) kind: EdgeKind,
}

/// Whether an edge's word is a pointer by its type or only a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EdgeKind {
    /// The source's type says the word is a pointer.
    Exact,
    /// A word that holds a live block's address (the conservative rule).
    Candidate,
}

/// What kind of root referred to a block. Roots are sorted by node, then
/// in this order, and a block's first root names its chain: a static
/// (read by its type when the types are known) before a stack or TLS word
/// (which may be stale).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RootSource {
    Static,
    Tls,
    Stack,
    /// A registered container, by index into `ScanResult::registered`.
    Registered(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RootRef {
    pub(crate) node: u32,
    pub(crate) source: RootSource,
    /// Address of the referring word for a static root (its name is
    /// looked up after the pause), else 0.
    pub(crate) at: usize,
}

/// A registered container as scanned: a static area (`block: None`, its
/// pointers become edges of a pseudo node) or a heap block.
#[derive(Clone, Debug)]
pub(crate) struct RegisteredRoot {
    /// Address of the static area (0 for a heap object: its block says).
    pub(crate) addr: usize,
    pub(crate) label: &'static str,
    pub(crate) type_name: Option<&'static str>,
    /// Index of the block it is, for a heap object.
    pub(crate) block: Option<u32>,
    pub(crate) size: u64,
}

/// How the world stood still for the scan.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StopReport {
    pub(crate) stopped: usize,
    /// Signalled threads that did not stop (their stacks are not roots).
    pub(crate) missed: usize,
    /// Of the missed: threads that block the stop signal.
    pub(crate) blocking: usize,
    /// Of the missed: threads stuck inside the inner allocator's realloc.
    pub(crate) stuck_in_realloc: usize,
    /// Blocks that reallocs held outside the live table (graph nodes all
    /// the same).
    pub(crate) in_flight: usize,
    /// Rounds of listing threads (over 1 when threads were created while
    /// the world was stopping).
    pub(crate) rounds: usize,
    pub(crate) signal: libc::c_int,
}

/// What a scan found.
pub(crate) struct ScanResult {
    /// Live blocks, sorted by address; node `i` is `blocks[i]`.
    pub(crate) blocks: MmapVec<Block>,
    pub(crate) edges: MmapVec<Edge>,
    pub(crate) roots: MmapVec<RootRef>,
    /// Pointers from registered static containers: (container index, block).
    pub(crate) registered_edges: MmapVec<(u32, u32)>,
    pub(crate) registered: Vec<RegisteredRoot>,
    pub(crate) scanned_bytes: u64,
    pub(crate) pause_ns: u64,
    pub(crate) stop: StopReport,
    /// The kernel refused scratch memory: some edges or roots are missing.
    pub(crate) incomplete: bool,
    /// The exact trace's types and counts (`None`: conservative scan).
    pub(crate) typed: Option<TypedScan>,
    /// Set when the graph is a Python object graph (`python::objects`):
    /// its names for types, fields and roots.
    pub(crate) python: Option<PythonNames>,
}

/// The names a Python object graph gives what the scan of a Rust heap
/// reads from DWARF: each block's Python type, each edge's field (by
/// `Edge::slot`) and each root's referrer (by `RootRef::at`).
#[derive(Default)]
pub(crate) struct PythonNames {
    /// By block: an index into `type_names`, or `u32::MAX` for a block
    /// that is no Python object.
    pub(crate) block_types: Vec<u32>,
    pub(crate) type_names: Vec<&'static str>,
    pub(crate) fields: Vec<String>,
    pub(crate) roots: Vec<String>,
    /// What the walk found, for the profile's graph section.
    pub(crate) summary: crate::format::PythonGraph,
}

impl PythonNames {
    pub(crate) fn type_of(&self, block: usize) -> Option<&'static str> {
        let t = *self.block_types.get(block)?;
        self.type_names.get(t as usize).copied()
    }
}

/// What the exact trace adds to a scan.
pub(crate) struct TypedScan {
    pub(crate) prep: TypedPrep,
    pub(crate) blocks: BlockTypes,
    pub(crate) counts: TraceCounts,
    /// Block sizes by node (copied: the scan's blocks move into the result).
    sizes: MmapVec<u64>,
}

impl TypedScan {
    pub(crate) fn block_size(&self, node: usize) -> u64 {
        self.sizes.as_slice().get(node).copied().unwrap_or(0)
    }
}

/// Why no scan was made.
#[derive(Debug)]
pub(crate) enum ScanError {
    NotRecording,
    Sampled,
    /// The stop signal cannot be used (the program handles it).
    Signal(String),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::NotRecording => write!(f, "no recorder is running"),
            ScanError::Sampled => write!(
                f,
                "sampling mode records only some blocks, so pointers between unrecorded blocks are invisible and a heap graph would be guesswork"
            ),
            ScanError::Signal(why) => write!(f, "{why}"),
        }
    }
}

/// A readable range of the address space.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    start: usize,
    end: usize,
}

/// The parts of `seg` outside every area of `excluded` (sorted by start,
/// possibly overlapping), in address order.
fn uncovered(seg: Mapping, excluded: &[Mapping], mut part: impl FnMut(Mapping)) {
    let mut from = seg.start;
    for ex in excluded {
        if ex.start >= seg.end {
            break;
        }
        if ex.end <= from || ex.start >= ex.end {
            continue;
        }
        if ex.start > from {
            part(Mapping {
                start: from,
                end: ex.start,
            });
        }
        from = ex.end;
    }
    if from < seg.end {
        part(Mapping {
            start: from,
            end: seg.end,
        });
    }
}

/// Serialises scans (a scan holds every shard lock; two at once would
/// deadlock on each other's signals).
static SCANNING: sys::LockCell<()> = sys::LockCell::new(());

pub(crate) fn scanning_lock() -> &'static sys::RawLock {
    SCANNING.raw()
}

/// Loads one word of memory the compiler must assume nothing about.
///
/// # Safety
/// `addr` must be 8-byte aligned and lie inside a mapped, readable range.
#[inline(always)]
unsafe fn load_word(addr: usize) -> usize {
    let value: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees the address is mapped and aligned.
    unsafe {
        std::arch::asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, readonly, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // SAFETY: as above; volatile keeps the compiler from assuming.
        value = unsafe { std::ptr::read_volatile(addr as *const usize) };
    }
    value
}

/// Bytes below an entry point's frame pointer where its prologue saved the
/// caller's callee-saved registers (five on x86-64; ten on aarch64).
#[cfg(target_arch = "x86_64")]
pub(crate) const SAVED_REGISTERS_BELOW_FP: usize = 48;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const SAVED_REGISTERS_BELOW_FP: usize = 96;

/// The calling function's frame pointer.
#[inline(always)]
pub(crate) fn frame_pointer() -> usize {
    let fp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads a register.
    unsafe {
        std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads a register.
    unsafe {
        std::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let marker = 0usize;
        fp = std::hint::black_box(&marker) as *const usize as usize;
    }
    fp
}

/// Spills the callee-saved registers of the calling thread onto its stack
/// (into `out`), so pointers only held in registers are seen by the scan of
/// its own stack.
#[inline(never)]
pub(crate) fn spill_registers(out: &mut [usize; 8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: stores six registers into the caller's array.
    unsafe {
        std::arch::asm!(
            "mov [{o}], rbx", "mov [{o} + 8], rbp", "mov [{o} + 16], r12",
            "mov [{o} + 24], r13", "mov [{o} + 32], r14", "mov [{o} + 40], r15",
            o = in(reg) out.as_mut_ptr(), options(nostack, preserves_flags)
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: stores eight callee-saved registers into the caller's array.
    unsafe {
        std::arch::asm!(
            "stp x19, x20, [{o}]", "stp x21, x22, [{o}, #16]", "stp x23, x24, [{o}, #32]",
            "stp x25, x26, [{o}, #48]",
            o = in(reg) out.as_mut_ptr(), options(nostack, preserves_flags)
        );
    }
    std::hint::black_box(out);
}

/// True when the thread was stopped blocked in a system call: then its
/// caller-saved registers hold nothing live (the calling convention
/// discards them across the call), only stale values, and only the
/// callee-saved ones are roots.
fn stopped_in_syscall(registers: &[usize; SAVED_REGISTERS], mappings: &[Mapping]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let rip = registers[libc::REG_RIP as usize];
        let at = rip.wrapping_sub(2);
        // The interrupted instruction follows a 2-byte `syscall` (0f 05).
        if at % 8 == 7 {
            return false; // straddles a word boundary: not worth it
        }
        match mapping_of(mappings, at & !7) {
            Some(m) if (at & !7) + 8 <= m.end => {
                // SAFETY: the aligned word containing both bytes lies in a
                // readable mapping (code is readable).
                let word = unsafe { load_word(at & !7) };
                let shift = (at & 7) * 8;
                ((word >> shift) & 0xffff) as u16 == u16::from_le_bytes([0x0f, 0x05])
            }
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (registers, mappings);
        false
    }
}

/// Whether saved register `k` (an index into the saved general-purpose
/// registers) is callee-saved in the platform's calling convention.
fn is_callee_saved(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        [
            libc::REG_RBX,
            libc::REG_RBP,
            libc::REG_R12,
            libc::REG_R13,
            libc::REG_R14,
            libc::REG_R15,
        ]
        .iter()
        .any(|&r| r as usize == k)
    }
    #[cfg(target_arch = "aarch64")]
    {
        (19..=29).contains(&k)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = k;
        true
    }
}

/// The calling thread, which scans itself: its stack from `stack_from` up
/// (just below the public entry point's frame, with the registers it
/// spilled), its registers as spilled.
#[derive(Clone, Copy)]
pub(crate) struct OwnThread {
    pub(crate) stack_from: usize,
    pub(crate) registers: [usize; 8],
}

/// Takes a heap-graph scan. See the module docs.
///
/// leakprof's own frames below `own.stack_from` are not scanned: they
/// occupy stack memory the caller's earlier calls left full of stale
/// addresses.
pub(crate) fn scan(
    own: OwnThread,
    config: StopConfig,
    exact: bool,
) -> Result<ScanResult, ScanError> {
    if !hooks::recording() {
        return Err(ScanError::NotRecording);
    }
    if hooks::CONFIG.sample_mean.load(Ordering::Relaxed) != 0 {
        return Err(ScanError::Sampled);
    }
    hooks::guarded(|| {
        stop::install(config.signal).map_err(ScanError::Signal)?;
        let _one_scan = SCANNING.lock();
        let prepared = prepare();
        // SAFETY (of the read): `allocator_metadata` reads only libc's
        // writable segments, which are mapped.
        let typed = exact.then(|| TypedPrep::prepare(&|a| unsafe { load_word(a) }));
        // Registered heap containers are looked up while stopped; hold the
        // registry so none is dropped meanwhile (LockCells come before the
        // shard locks, the one lock order).
        let registry = owner::lock_registry();
        let registered_heap: Vec<(usize, RegisteredRoot)> = registry
            .heap_objects()
            .map(|(addr, label, type_name)| {
                let root = RegisteredRoot {
                    addr: 0,
                    label,
                    type_name,
                    block: None,
                    size: 0,
                };
                (addr, root)
            })
            .collect();
        let mut result = ScanResult {
            blocks: MmapVec::with_capacity(prepared.blocks_hint + prepared.blocks_hint / 4 + 1024),
            edges: MmapVec::new(),
            roots: MmapVec::new(),
            registered_edges: MmapVec::new(),
            registered: prepared.statics.iter().map(|(_, r)| r.clone()).collect(),
            scanned_bytes: 0,
            pause_ns: 0,
            stop: StopReport {
                signal: config.signal,
                ..StopReport::default()
            },
            incomplete: false,
            typed: None,
            python: None,
        };
        // Filled while stopped: its capacity is reserved now (no malloc later).
        let mut heap_registered = Vec::with_capacity(registered_heap.len());
        let t0 = sys::now_ns();

        // ---- stop the world: no malloc from here to resume ----
        LIVE.lock_all();
        let _ = hooks::LOCAL.try_with(|l| l.holds_locks.set(true));
        let stopped = stop::stop_world(config);
        result.stop = StopReport {
            stopped: stopped.stopped,
            missed: stopped.missed,
            blocking: stopped.blocking,
            stuck_in_realloc: stopped.stuck_in_realloc,
            in_flight: 0,
            rounds: stopped.rounds,
            signal: config.signal,
        };
        let world = World::read(&stopped);
        let blocks = collect_blocks(&world, &mut result);
        let mut index = HeapIndex::new(blocks.as_slice());
        index.alias_moved(world.flights.as_slice());
        let mut paused = Paused {
            prepared: &prepared,
            world: &world,
            result: &mut result,
        };
        let heap = paused.heap(&index);
        paused.scan_threads(&heap, &stopped, own);
        let traced = match &typed {
            Some(prep) => {
                let (blocks, counts, covered) = paused.trace_typed(&heap, prep);
                paused.scan_statics(&heap, covered.as_slice());
                Some((blocks, counts))
            }
            None => {
                paused.scan_blocks(&heap);
                paused.scan_statics(&heap, &[]);
                None
            }
        };
        for (addr, reg) in &registered_heap {
            if let Some(j) = heap.find(*addr) {
                if heap_registered.len() < heap_registered.capacity() {
                    heap_registered.push((j, reg.clone()));
                }
            }
        }
        paused.dedupe_roots();
        drop(index);
        result.blocks = blocks;
        stop::resume_world(stopped);
        let _ = hooks::LOCAL.try_with(|l| l.holds_locks.set(false));
        LIVE.unlock_all();
        // ---- the world runs again ----
        result.pause_ns = sys::now_ns().saturating_sub(t0);
        if let (Some(prep), Some((blocks, counts))) = (typed, traced) {
            // By (source, offset), so a holder's pointer at an offset is
            // found by binary search (field paths); sorted out of the pause.
            result
                .edges
                .as_mut_slice()
                .sort_unstable_by_key(|e| (e.from, e.offset, e.to));
            let mut sizes = MmapVec::with_capacity(result.blocks.len());
            for b in result.blocks.as_slice() {
                let _ = sizes.push(b.size as u64);
            }
            result.typed = Some(TypedScan {
                prep,
                blocks,
                counts,
                sizes,
            });
        }
        drop(registry);

        for (j, mut reg) in heap_registered {
            let k = result.registered.len() as u32;
            reg.block = Some(j);
            reg.size = result.blocks.as_slice()[j as usize].size as u64;
            result.registered.push(reg);
            let _ = result.roots.push(RootRef {
                node: j,
                source: RootSource::Registered(k),
                at: 0,
            });
        }
        Ok(result)
    })
}

/// What the scan reads of the stopped world besides the heap: mappings and
/// stack ends, read after the stop so threads created meanwhile are known.
struct World {
    mappings: MmapVec<Mapping>,
    /// Known stack ends by kernel thread id (threads that allocated while
    /// recording registered theirs).
    stack_ends: MmapVec<(u32, usize)>,
    /// Blocks reallocs held in flight: the node's address range the
    /// program's pointers still use when it differs from where its contents
    /// are (`content`), and whether the contents must be read fault-safely.
    flights: MmapVec<FlightNode>,
}

impl World {
    fn read(stopped: &stop::Stopped) -> World {
        let mut flights = MmapVec::new();
        for t in stopped.threads() {
            if let Some(f) = t.flight {
                let _ = flights.push(f);
            }
        }
        for f in stopped.stuck().filter_map(|t| t.flight) {
            let _ = flights.push(f);
        }
        let mut stack_ends = MmapVec::new();
        for t in hooks::THREADS.each() {
            let (tid, end) = (
                t.tid.load(Ordering::Relaxed) as u32,
                t.stack_end.load(Ordering::Relaxed),
            );
            if tid != 0 && end != 0 {
                let _ = stack_ends.push((tid, end));
            }
        }
        World {
            mappings: read_mappings(),
            stack_ends,
            flights,
        }
    }

    fn mapping_of(&self, addr: usize) -> Option<Mapping> {
        mapping_of(self.mappings.as_slice(), addr)
    }
}

/// The live table and the blocks reallocs hold in flight, sorted by
/// address.
fn collect_blocks(world: &World, r: &mut ScanResult) -> MmapVec<Block> {
    let mut blocks = std::mem::replace(&mut r.blocks, MmapVec::new());
    // SAFETY: we hold every shard lock.
    unsafe {
        LIVE.for_each_locked(|b| {
            if !blocks.push(*b) {
                r.incomplete = true;
            }
        })
    };
    for f in world.flights.as_slice() {
        r.incomplete |= !blocks.push(f.content);
    }
    r.stop.in_flight = world.flights.len();
    blocks.as_mut_slice().sort_unstable_by_key(|b| b.addr);
    blocks
}

/// The scan's work while the world is stopped, step by step.
struct Paused<'a> {
    prepared: &'a Prepared,
    world: &'a World,
    result: &'a mut ScanResult,
}

impl Paused<'_> {
    fn heap<'h>(&self, index: &'h HeapIndex<'h>) -> Heap<'h>
    where
        Self: 'h,
    {
        Heap {
            blocks: index.blocks,
            starts: index.starts.as_slice(),
            lo: index.lo,
            hi: index.hi,
            interior_sites: &self.prepared.interior_sites,
            aliases: &index.aliases,
        }
    }

    /// Every block's pointers into other blocks.
    fn scan_blocks(&mut self, heap: &Heap) {
        let r = &mut *self.result;
        let mut scanned = 0u64;
        let mut incomplete = false;
        for (i, b) in heap.blocks.iter().enumerate() {
            let mut edge = |off: usize, j: u32| {
                incomplete |= !r.edges.push(Edge {
                    from: i as u32,
                    to: j,
                    offset: off.min(u32::MAX as usize) as u32,
                    slot: u32::MAX,
                    kind: EdgeKind::Candidate,
                });
            };
            if self
                .world
                .flights
                .as_slice()
                .iter()
                .any(|f| f.unsafe_to_read && f.content.addr == b.addr)
            {
                scan_copied(heap, b.addr, b.size, &mut edge);
            } else {
                // SAFETY: the block is live (in the table, whose locks we
                // hold, or held by a stopped realloc before or after the
                // inner allocator ran), so its `size` bytes are readable.
                unsafe {
                    scan_words(heap, b.addr, b.addr + b.size, Rule::FromRoot, |off, j| {
                        edge(off, j)
                    })
                };
            }
            scanned += b.size as u64;
        }
        r.scanned_bytes += scanned;
        r.incomplete |= incomplete;
    }

    /// Registers, stacks and static TLS of the stopped threads (and of those
    /// stuck inside the inner allocator's realloc, as they were when they
    /// deferred their stop), then the caller's own (from its caller's frame
    /// up).
    fn scan_threads(&mut self, heap: &Heap, stopped: &stop::Stopped, own: OwnThread) {
        let mut roots = std::mem::replace(&mut self.result.roots, MmapVec::new());
        let mut incomplete = false;
        let mut root = |node: u32, source: RootSource| {
            incomplete |= !roots.push(RootRef {
                node,
                source,
                at: 0,
            });
        };
        for &r in &own.registers {
            heap.find_from_root(r, |j| root(j, RootSource::Stack));
        }
        for t in stopped.threads().chain(stopped.stuck()) {
            let in_syscall = stopped_in_syscall(&t.registers, self.world.mappings.as_slice());
            for (k, &r) in t.registers.iter().enumerate() {
                if !in_syscall || is_callee_saved(k) {
                    heap.find_from_root(r, |j| root(j, RootSource::Stack));
                }
            }
        }
        let me = StoppedThread {
            tid: sys::gettid() as u32,
            sp: own.stack_from,
            tp: stop::thread_pointer(),
            registers: [0; SAVED_REGISTERS],
            flight: None,
        };
        let mut scanned = 0u64;
        for t in stopped
            .threads()
            .chain(stopped.stuck())
            .chain(std::iter::once(me))
        {
            scanned += self.scan_stack_and_tls(heap, &t, &mut root);
        }
        self.result.scanned_bytes += scanned;
        self.result.roots = roots;
        self.result.incomplete |= incomplete;
    }

    fn scan_stack_and_tls(
        &self,
        heap: &Heap,
        t: &StoppedThread,
        root: &mut impl FnMut(u32, RootSource),
    ) -> u64 {
        let mut scanned = 0;
        if let Some(m) = self.world.mapping_of(t.sp) {
            // The thread's own idea of its stack end when we know it (a
            // mapping entry may have been joined with a neighbour).
            let known = self
                .world
                .stack_ends
                .as_slice()
                .iter()
                .find(|&&(tid, end)| tid == t.tid && end > t.sp && end <= m.end)
                .map(|&(_, end)| end);
            let end = known.unwrap_or(m.end);
            // SAFETY: [sp, end) lies inside a readable mapping.
            unsafe {
                scan_words(heap, t.sp, end, Rule::FromRoot, |_, j| {
                    root(j, RootSource::Stack)
                })
            };
            scanned += (end - t.sp) as u64;
        }
        if t.tp != 0 {
            if let Some(m) = self.world.mapping_of(t.tp) {
                // Exactly the static TLS blocks below the thread pointer
                // and glibc's thread descriptor above it: the main
                // thread's live in the heap, whose neighbouring chunks
                // (free ones included) must not be read as roots.
                let lo =
                    t.tp.saturating_sub(self.prepared.tls_size + 64)
                        .max(m.start);
                let hi = (t.tp + self.prepared.thread_descriptor).min(m.end);
                // SAFETY: clipped to the readable mapping containing tp.
                unsafe {
                    scan_words(heap, lo, hi, Rule::FromRoot, |_, j| {
                        root(j, RootSource::Tls)
                    })
                };
            }
        }
        scanned
    }

    /// The exact trace (see [`super::trace`]): typed statics as roots, then
    /// every block by its declared or site type, or word by word. Returns
    /// the blocks' types, the counts, and the static data the typed
    /// statics covered and the allocator's metadata (both left out of the
    /// conservative scan of writable segments).
    fn trace_typed(
        &mut self,
        heap: &Heap,
        prep: &TypedPrep,
    ) -> (BlockTypes, TraceCounts, MmapVec<Mapping>) {
        let view = HeapView {
            heap,
            flights: self.world.flights.as_slice(),
        };
        let mut tracer = Tracer::new(prep, &view);
        let mut covered: MmapVec<Mapping> = MmapVec::new();
        let mut incomplete = false;
        for &(start, end) in &prep.allocator_metadata {
            incomplete |= !covered.push(Mapping { start, end });
        }
        let (slots_lo, slots_hi) = stop::slots_area();
        let statics = prep.maps.statics();
        let mut roots = std::mem::replace(&mut self.result.roots, MmapVec::new());
        let mut registered_edges =
            std::mem::replace(&mut self.result.registered_edges, MmapVec::new());
        for &k in &prep.typed_statics {
            let Some(s) = statics.get(k as usize) else {
                continue;
            };
            let Some(ty) = s.ty else { continue };
            let area = Mapping {
                start: s.start,
                end: s.start + s.len,
            };
            let overlaps = |m: &Mapping| m.start < area.end && area.start < m.end;
            // A registered container that is exactly this static is read
            // by its type, its pointers edges of its labelled node.
            let registered = self
                .prepared
                .statics
                .iter()
                .position(|(m, _)| m.start == area.start && m.end == area.end);
            // The stop slots, other registered containers (their own
            // labelled roots, read word by word) and the allocator's state
            // stay out of the typed roots.
            if overlaps(&Mapping {
                start: slots_lo,
                end: slots_hi,
            }) || (registered.is_none()
                && self.prepared.statics.iter().any(|(m, _)| overlaps(m)))
                || prep
                    .allocator_metadata
                    .iter()
                    .any(|&(start, end)| overlaps(&Mapping { start, end }))
                || !self
                    .world
                    .mapping_of(area.start)
                    .is_some_and(|m| area.end <= m.end)
            {
                continue;
            }
            incomplete |= !covered.push(area);
            // SAFETY: the static lies inside a readable mapping.
            unsafe {
                tracer.static_root(area.start, s.len, BlockType::one(ty), &mut |j, at| {
                    incomplete |= !match registered {
                        Some(r) => registered_edges.push((r as u32, j)),
                        None => roots.push(RootRef {
                            node: j,
                            source: RootSource::Static,
                            at,
                        }),
                    };
                })
            };
            self.result.scanned_bytes += s.len as u64;
        }
        self.result.roots = roots;
        self.result.registered_edges = registered_edges;
        tracer.trace_all();
        let (edges, blocks, counts, lost) = tracer.finish();
        self.result.edges = edges;
        self.result.scanned_bytes += heap.blocks.iter().map(|b| b.size as u64).sum::<u64>();
        self.result.incomplete |= incomplete | lost;
        (blocks, counts, covered)
    }

    /// Writable segments of every loaded object (but the stop slots, the
    /// registered static containers, scanned as their own labelled roots,
    /// and `covered`: statics the exact trace read by type, the
    /// allocator's metadata), then the registered static containers.
    fn scan_statics(&mut self, heap: &Heap, covered: &[Mapping]) {
        let (slots_lo, slots_hi) = stop::slots_area();
        let mut excluded: MmapVec<Mapping> =
            MmapVec::with_capacity(1 + self.prepared.statics.len() + covered.len());
        let mut incomplete = false;
        for ex in std::iter::once(Mapping {
            start: slots_lo,
            end: slots_hi,
        })
        .chain(self.prepared.statics.iter().map(|(m, _)| *m))
        .chain(covered.iter().copied())
        {
            incomplete |= !excluded.push(ex);
        }
        // Sorted once, then one sweep per segment: the exact trace covers
        // hundreds of statics, and work per area (let alone a mapping per
        // area) would lengthen the pause.
        excluded.as_mut_slice().sort_unstable_by_key(|m| m.start);
        let mut pieces: MmapVec<Mapping> = MmapVec::new();
        for seg in &self.prepared.segments {
            uncovered(*seg, excluded.as_slice(), |m| incomplete |= !pieces.push(m));
        }
        let r = &mut *self.result;
        for &seg in pieces.as_slice() {
            // Only the parts inside readable mappings.
            let mut addr = seg.start;
            while addr < seg.end {
                match self.world.mapping_of(addr) {
                    Some(m) => {
                        let end = m.end.min(seg.end);
                        // SAFETY: [addr, end) is inside a readable mapping.
                        unsafe {
                            scan_words(heap, addr, end, Rule::Any, |off, j| {
                                incomplete |= !r.roots.push(RootRef {
                                    node: j,
                                    source: RootSource::Static,
                                    at: addr + off,
                                })
                            })
                        };
                        r.scanned_bytes += (end - addr) as u64;
                        addr = end;
                    }
                    None => addr += 4096,
                }
            }
        }
        for (k, (area, _)) in self.prepared.statics.iter().enumerate() {
            let typed = covered
                .iter()
                .any(|c| c.start == area.start && c.end == area.end);
            if !typed
                && self
                    .world
                    .mapping_of(area.start)
                    .is_some_and(|m| area.end <= m.end)
            {
                // SAFETY: the registered static lies in a readable mapping.
                unsafe {
                    scan_words(heap, area.start, area.end, Rule::Any, |_, j| {
                        incomplete |= !r.registered_edges.push((k as u32, j));
                    })
                };
            }
        }
        r.incomplete |= incomplete;
    }

    fn dedupe_roots(&mut self) {
        let r = &mut *self.result;
        r.roots.as_mut_slice().sort_unstable();
        let mut deduped: MmapVec<RootRef> = MmapVec::with_capacity(r.roots.len());
        let mut last: Option<RootRef> = None;
        for &x in r.roots.as_slice() {
            if last != Some(x) {
                r.incomplete |= !deduped.push(x);
                last = Some(x);
            }
        }
        r.roots = deduped;
    }
}

/// Reads a block whose memory may be freed or unmapped (a realloc stuck
/// inside the inner allocator) through `process_vm_readv`, in pages, and
/// reports its pointers like [`scan_words`]. Unreadable pages are skipped.
fn scan_copied(heap: &Heap, addr: usize, size: usize, hit: &mut impl FnMut(usize, u32)) {
    const CHUNK: usize = 64 << 10;
    let scratch = sys::map(CHUNK).cast::<usize>();
    if scratch.is_null() {
        return;
    }
    let mut at = 0;
    while at + 8 <= size {
        let len = (size - at).min(CHUNK) & !7;
        let got = sys::read_own_memory(addr + at, scratch.cast(), len);
        // SAFETY: the kernel wrote `got <= len <= CHUNK` bytes of the
        // scratch mapping, which holds CHUNK / 8 words.
        let words = unsafe { std::slice::from_raw_parts(scratch, got / 8) };
        for (k, &w) in words.iter().enumerate() {
            heap.find_from_root(w, |j| hit(at + k * 8, j));
        }
        at += len;
    }
    // SAFETY: the scratch came from `map` with this size.
    unsafe { sys::unmap(scratch.cast(), CHUNK) };
}

/// The scan's heap for the exact trace.
struct HeapView<'h> {
    heap: &'h Heap<'h>,
    flights: &'h [FlightNode],
}

impl HeapLookup for HeapView<'_> {
    fn blocks(&self) -> &[Block] {
        self.heap.blocks
    }

    #[inline(always)]
    fn find_any(&self, addr: usize, hit: impl FnMut(u32)) {
        self.heap.find_any(addr, hit)
    }

    #[inline(always)]
    fn find_candidate(&self, addr: usize, hit: impl FnMut(u32)) {
        self.heap.find_from_root(addr, hit)
    }

    #[inline(always)]
    unsafe fn word(&self, addr: usize) -> usize {
        // SAFETY: the caller's guarantee.
        unsafe { load_word(addr) }
    }

    fn scan_block(&self, node: u32, mut hit: impl FnMut(usize, u32)) {
        let b = self.heap.blocks[node as usize];
        if self.unsafe_to_read(node) {
            scan_copied(self.heap, b.addr, b.size, &mut hit);
        } else {
            // SAFETY: the block is live (see `Paused::scan_blocks`).
            unsafe { scan_words(self.heap, b.addr, b.addr + b.size, Rule::FromRoot, hit) };
        }
    }

    #[inline(always)]
    fn scan_words_of(&self, node: u32, from: usize, to: usize, mut hit: impl FnMut(usize, u32)) {
        let b = self.heap.blocks[node as usize];
        let (lo, hi) = (b.addr + from, b.addr + to.min(b.size));
        // SAFETY: the block is live and readable (the tracer reads only
        // blocks `unsafe_to_read` said no to), and [lo, hi) lies inside it.
        unsafe { scan_words(self.heap, lo, hi, Rule::FromRoot, |o, j| hit(from + o, j)) };
    }

    fn unsafe_to_read(&self, node: u32) -> bool {
        let addr = self.heap.blocks[node as usize].addr;
        self.flights
            .iter()
            .any(|f| f.unsafe_to_read && f.content.addr == addr)
    }
}

/// Which words count as references: see [`ROOT_INTERIOR_LIMIT`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Into any byte of a block (static data).
    Any,
    /// Into a block's first bytes only, unless its site keeps interior
    /// pointers (stacks, TLS, registers and heap blocks).
    FromRoot,
}

/// Scans `[start, end)` word by word, calling `hit(offset, block)` for
/// every word that refers to a live block under `rule`.
///
/// # Safety
/// The range must be mapped and readable for the whole call.
#[inline(always)]
unsafe fn scan_words(
    heap: &Heap,
    start: usize,
    end: usize,
    rule: Rule,
    mut hit: impl FnMut(usize, u32),
) {
    let mut p = (start + 7) & !7;
    while p + 8 <= end {
        // SAFETY: p is aligned and inside [start, end), which the caller
        // guarantees is readable.
        let w = unsafe { load_word(p) };
        match rule {
            Rule::Any => heap.find_any(w, |j| hit(p - start, j)),
            Rule::FromRoot => heap.find_from_root(w, |j| hit(p - start, j)),
        }
        p += 8;
    }
}

/// What `prepare` gathers while allocation is still allowed.
struct Prepared {
    /// Size of glibc's `struct pthread` (the thread descriptor at the thread
    /// pointer, holding pthread-specific data pointers).
    thread_descriptor: usize,
    /// By stack id: blocks from this stack are referred to by interior
    /// pointers (see [`ROOT_INTERIOR_LIMIT`]).
    interior_sites: Vec<bool>,
    segments: Vec<Mapping>,
    tls_size: usize,
    statics: Vec<(Mapping, RegisteredRoot)>,
    blocks_hint: usize,
}

/// The readable mappings of `/proc/self/maps`, read with raw system calls
/// into `mmap`ed memory (the world is stopped: no `malloc`). Not merged:
/// the kernel already shows one entry per mapping (and may itself join a
/// stack with a neighbouring heap; see the stack ends).
fn read_mappings() -> MmapVec<Mapping> {
    let mut text: MmapVec<u8> = MmapVec::with_capacity(64 << 10);
    sys::read_file_into(c"/proc/self/maps", &mut text);
    let mut out = MmapVec::new();
    for line in text.as_slice().split(|&b| b == b'\n') {
        let mut parts = line.split(|&b| b == b' ');
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if perms.first() != Some(&b'r') {
            continue;
        }
        let mut ends = range.split(|&b| b == b'-');
        if let (Some(a), Some(b)) = (ends.next(), ends.next()) {
            if let (Some(start), Some(end)) = (parse_hex(a), parse_hex(b)) {
                let _ = out.push(Mapping { start, end });
            }
        }
    }
    out.as_mut_slice().sort_unstable_by_key(|m| m.start);
    out
}

fn parse_hex(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &c| {
        let v = (c as char).to_digit(16)?;
        Some(acc << 4 | v as usize)
    })
}

/// Writable segments of every loaded object, and the static TLS size.
fn writable_segments() -> (Vec<Mapping>, usize) {
    struct Acc {
        segments: Vec<Mapping>,
        tls: usize,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is our Acc; the loader's info is valid for the call.
        unsafe {
            let acc = &mut *data.cast::<Acc>();
            let info = &*info;
            if info.dlpi_phdr.is_null() {
                return 0;
            }
            let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            for ph in phdrs {
                let start = (info.dlpi_addr + ph.p_vaddr) as usize;
                let end = start + ph.p_memsz as usize;
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_W != 0 {
                    acc.segments.push(Mapping { start, end });
                }
                if ph.p_type == libc::PT_TLS {
                    let align = (ph.p_align as usize).max(16);
                    acc.tls += (ph.p_memsz as usize).div_ceil(align) * align;
                }
            }
        }
        0
    }
    let mut acc = Acc {
        segments: Vec::new(),
        tls: 0,
    };
    // SAFETY: the callback only touches `acc` and the loader's data.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut acc as *mut Acc).cast()) };
    (acc.segments, acc.tls)
}

fn prepare() -> Prepared {
    let (segments, tls_size) = writable_segments();
    let mut statics = Vec::new();
    for r in owner::registered_statics() {
        statics.push((
            Mapping {
                start: r.addr,
                end: r.addr + r.len,
            },
            RegisteredRoot {
                addr: r.addr,
                label: r.label,
                type_name: r.type_name,
                block: None,
                size: r.len as u64,
            },
        ));
    }
    let n_stacks = hooks::STACKS.id_limit();
    Prepared {
        thread_descriptor: thread_descriptor_size(),
        interior_sites: super::symbols::stacks_matching(n_stacks, |f| {
            INTERIOR_POINTER_SITES.iter().any(|p| f.starts_with(p))
        }),
        segments,
        tls_size,
        statics,
        blocks_hint: hooks::live_now().1 as usize,
    }
}

/// glibc exports the size of its thread descriptor for debuggers
/// (`_thread_db_sizeof_pthread`); 2304 bytes (glibc 2.3x on x86-64) when
/// it cannot be found.
fn thread_descriptor_size() -> usize {
    // SAFETY: dlsym on the default namespace with a NUL-terminated name; the
    // symbol, when present, is a `const unsigned int` in libc.
    unsafe {
        let p = libc::dlsym(libc::RTLD_DEFAULT, c"_thread_db_sizeof_pthread".as_ptr());
        if p.is_null() {
            2304
        } else {
            (*(p as *const u32)).clamp(512, 16384) as usize
        }
    }
}

fn mapping_of(mappings: &[Mapping], addr: usize) -> Option<Mapping> {
    let i = mappings.partition_point(|m| m.start <= addr);
    let m = mappings.get(i.checked_sub(1)?)?;
    (addr < m.end).then_some(*m)
}

/// The sorted blocks and their start addresses, plus the address ranges
/// the program's pointers still use for blocks a realloc moved.
struct HeapIndex<'a> {
    blocks: &'a [Block],
    starts: MmapVec<usize>,
    lo: usize,
    hi: usize,
    aliases: MmapVec<(usize, usize, u32)>,
}

impl<'a> HeapIndex<'a> {
    fn new(blocks: &'a [Block]) -> HeapIndex<'a> {
        let mut starts = MmapVec::with_capacity(blocks.len());
        for b in blocks {
            let _ = starts.push(b.addr);
        }
        HeapIndex {
            blocks,
            starts,
            lo: blocks.first().map_or(0, |b| b.addr),
            hi: blocks.last().map_or(0, |b| b.addr + b.size.max(1)),
            aliases: MmapVec::new(),
        }
    }

    /// Adds the old address range of every block a realloc moved: the
    /// program's pointers still hold it.
    fn alias_moved(&mut self, flights: &[FlightNode]) {
        for f in flights {
            if f.identity.addr == f.content.addr {
                continue;
            }
            let i = self
                .starts
                .as_slice()
                .partition_point(|&s| s < f.content.addr);
            if self.starts.as_slice().get(i) == Some(&f.content.addr) {
                let (start, size) = (f.identity.addr, f.identity.size.max(1));
                let _ = self.aliases.push((start, start + size, i as u32));
            }
        }
    }
}

/// The sorted live blocks and a fast address lookup.
struct Heap<'a> {
    blocks: &'a [Block],
    starts: &'a [usize],
    lo: usize,
    hi: usize,
    interior_sites: &'a [bool],
    /// (start, end, node): old address ranges of blocks a realloc moved
    /// while the world stopped; usually empty.
    aliases: &'a MmapVec<(usize, usize, u32)>,
}

impl Heap<'_> {
    /// The block containing `addr` (interior pointers included).
    #[inline(always)]
    fn find(&self, addr: usize) -> Option<u32> {
        if addr < self.lo || addr >= self.hi {
            return None;
        }
        let i = self.starts.partition_point(|&s| s <= addr).checked_sub(1)?;
        let b = &self.blocks[i];
        (addr < b.addr + b.size.max(1)).then_some(i as u32)
    }

    /// Every node `addr` refers to (any byte of it): the block containing
    /// it and, rarely, a moved block whose old range contains it.
    #[inline(always)]
    fn find_any(&self, addr: usize, mut hit: impl FnMut(u32)) {
        if let Some(i) = self.find(addr) {
            hit(i);
        }
        if self.aliases.len() != 0 {
            for &(start, end, node) in self.aliases.as_slice() {
                if start <= addr && addr < end {
                    hit(node);
                }
            }
        }
    }

    /// Like [`Heap::find_any`], for a word on a stack, in a register or in
    /// a heap block: see [`ROOT_INTERIOR_LIMIT`].
    #[inline(always)]
    fn find_from_root(&self, addr: usize, mut hit: impl FnMut(u32)) {
        if let Some(i) = self.find(addr) {
            let b = &self.blocks[i as usize];
            let interior_ok = self
                .interior_sites
                .get(b.stack as usize)
                .copied()
                .unwrap_or(false);
            if addr - b.addr < ROOT_INTERIOR_LIMIT || interior_ok {
                hit(i);
            }
        }
        if self.aliases.len() != 0 {
            for &(start, end, node) in self.aliases.as_slice() {
                if start <= addr && addr < end && addr - start < ROOT_INTERIOR_LIMIT {
                    hit(node);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{uncovered, Mapping};

    fn parts(seg: (usize, usize), excluded: &[(usize, usize)]) -> Vec<(usize, usize)> {
        let ex: Vec<Mapping> = excluded
            .iter()
            .map(|&(start, end)| Mapping { start, end })
            .collect();
        let mut out = Vec::new();
        uncovered(
            Mapping {
                start: seg.0,
                end: seg.1,
            },
            &ex,
            |m| out.push((m.start, m.end)),
        );
        out
    }

    #[test]
    fn uncovered_parts_skip_overlapping_and_outside_areas() {
        assert_eq!(parts((100, 200), &[]), [(100, 200)]);
        assert_eq!(parts((100, 200), &[(0, 50), (300, 400)]), [(100, 200)]);
        assert_eq!(
            parts(
                (100, 200),
                &[(90, 110), (120, 130), (125, 140), (150, 150), (190, 250)]
            ),
            [(110, 120), (140, 190)]
        );
        // An area inside another does not bring back what the outer one cut.
        assert_eq!(parts((100, 200), &[(100, 180), (120, 130)]), [(180, 200)]);
        assert_eq!(parts((100, 200), &[(50, 250)]), []);
    }
}
