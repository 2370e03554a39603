//! The heap-graph scan: the one stop-the-world pause in leakprof.
//!
//! 1. *Prepare* (allocation allowed): read `/proc/self/maps`, list the
//!    process's threads, collect the writable segments and TLS size of every
//!    loaded object, snapshot the registered owner containers.
//! 2. *Stop*: take every live-table shard lock (allocation and free on other
//!    threads now wait), then stop every other thread with a signal whose
//!    handler records its stack pointer and thread pointer and waits (the
//!    Boehm GC approach). The handler runs on the thread's own stack (no
//!    `SA_ONSTACK`), so the registers the kernel saved for it lie between
//!    its stack pointer and the interrupted frames: scanning from there up
//!    covers them.
//! 3. *Scan* (no allocation through `malloc` from here until resume: a
//!    stopped thread may hold malloc's locks; scratch memory is `mmap`ed):
//!    copy the live table, sort it by address, read every block's words
//!    and keep those that point into a live block (interior pointers
//!    included) as edges; read the roots (thread stacks with saved
//!    registers, static TLS blocks, writable segments of every loaded
//!    object, registered containers) the same way.
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
//! by `/proc/self/maps`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;

use super::hooks::{self, LIVE};
use super::live::Block;
use super::mmapvec::MmapVec;
use super::owner;
use super::sys;

/// The signal that stops threads (Boehm's choice on Linux).
const STOP_SIGNAL: libc::c_int = libc::SIGPWR;
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

/// How long to wait for every thread to stop.
const STOP_TIMEOUT_NS: u64 = 2_000_000_000;
/// Threads whose stop we can record.
const MAX_THREADS: usize = 4096;

/// A pointer found in a block: `from` and `to` index the sorted blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Edge {
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) offset: u32,
}

/// What kind of root referred to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RootSource {
    Stack,
    Tls,
    Static,
    /// A registered container, by index into `ScanResult::registered`.
    Registered(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RootRef {
    pub(crate) node: u32,
    pub(crate) source: RootSource,
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
    pub(crate) threads_stopped: usize,
    pub(crate) threads_missed: usize,
    /// The kernel refused scratch memory: some edges or roots are missing.
    pub(crate) incomplete: bool,
}

/// Why no scan was made.
#[derive(Debug)]
pub(crate) enum ScanError {
    NotRecording,
    Sampled,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::NotRecording => write!(f, "no recorder is running"),
            ScanError::Sampled => write!(
                f,
                "sampling mode records only some blocks, so pointers between unrecorded blocks are invisible and a heap graph would be guesswork"
            ),
        }
    }
}

/// A readable range of the address space.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    start: usize,
    end: usize,
}

/// General-purpose registers saved per stopped thread.
const SAVED_REGISTERS: usize = 32;

struct StopSlot {
    tid: AtomicU32,
    /// The interrupted stack pointer: the scan reads the stack from here,
    /// not from the signal frame (whose floating-point and vector state
    /// holds stale values of caller-saved registers).
    sp: AtomicUsize,
    tp: AtomicUsize,
    /// The general-purpose registers at the interruption.
    registers: [AtomicUsize; SAVED_REGISTERS],
}

/// State shared with the stop-signal handler: only atomics (the handler
/// must be async-signal-safe).
struct Stop {
    active: AtomicBool,
    epoch: AtomicU32,
    acks: AtomicU32,
    next_slot: AtomicUsize,
    slots: [StopSlot; MAX_THREADS],
}

static STOP: Stop = Stop {
    active: AtomicBool::new(false),
    epoch: AtomicU32::new(0),
    acks: AtomicU32::new(0),
    next_slot: AtomicUsize::new(0),
    slots: [const {
        StopSlot {
            tid: AtomicU32::new(0),
            sp: AtomicUsize::new(0),
            tp: AtomicUsize::new(0),
            registers: [const { AtomicUsize::new(0) }; SAVED_REGISTERS],
        }
    }; MAX_THREADS],
};

/// Serialises scans (a scan holds every shard lock; two at once would
/// deadlock on each other's signals).
static SCANNING: sys::LockCell<()> = sys::LockCell::new(());

pub(crate) fn scanning_lock() -> &'static sys::RawLock {
    SCANNING.raw()
}

static HANDLER: Once = Once::new();

fn install_handler() {
    HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting value; we set the
        // handler and flags, and sigemptyset initialises the mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(STOP_SIGNAL, &sa, std::ptr::null_mut());
        }
    });
}

/// The stop-signal handler: record where this thread's stack and TLS are
/// and its registers at the interruption, tell the scanner, wait for the
/// scan to end. Async-signal-safe: atomics, `gettid` and futex calls only;
/// errno is preserved.
extern "C" fn on_stop_signal(
    _sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    if !STOP.active.load(Ordering::Acquire) {
        return; // a stray signal outside a scan
    }
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let epoch = STOP.epoch.load(Ordering::Acquire);
    let i = STOP.next_slot.fetch_add(1, Ordering::AcqRel);
    if let Some(slot) = STOP.slots.get(i) {
        slot.tid.store(sys::gettid() as u32, Ordering::Relaxed);
        // SAFETY: with SA_SIGINFO the kernel passes the interrupted
        // context as the third argument; it is valid during the handler.
        let sp = unsafe { interrupted_registers(ctx, &slot.registers) };
        slot.sp.store(sp, Ordering::Relaxed);
        slot.tp.store(thread_pointer(), Ordering::Relaxed);
    }
    STOP.acks.fetch_add(1, Ordering::Release);
    futex_wake_all(&STOP.acks);
    while STOP.epoch.load(Ordering::Acquire) == epoch {
        futex_wait(&STOP.epoch, epoch, 50_000_000);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Copies the interrupted general-purpose registers into `out` and returns
/// the interrupted stack pointer.
///
/// # Safety
/// `ctx` must be the `ucontext_t` the kernel passed to a SA_SIGINFO handler.
unsafe fn interrupted_registers(
    ctx: *mut libc::c_void,
    out: &[AtomicUsize; SAVED_REGISTERS],
) -> usize {
    // SAFETY: forwarded from the caller.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    #[cfg(target_arch = "x86_64")]
    {
        for (slot, &r) in out.iter().zip(uc.uc_mcontext.gregs.iter()) {
            slot.store(r as usize, Ordering::Relaxed);
        }
        uc.uc_mcontext.gregs[libc::REG_RSP as usize] as usize
    }
    #[cfg(target_arch = "aarch64")]
    {
        for (slot, &r) in out.iter().zip(uc.uc_mcontext.regs.iter()) {
            slot.store(r as usize, Ordering::Relaxed);
        }
        uc.uc_mcontext.sp as usize
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (uc, out);
        let marker = 0usize;
        std::hint::black_box(&marker) as *const usize as usize
    }
}

/// True when the thread was stopped blocked in a system call: then its
/// caller-saved registers hold nothing live (the calling convention
/// discards them across the call), only stale values, and only the
/// callee-saved ones are roots.
fn stopped_in_syscall(slot: &StopSlot, mappings: &[Mapping]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let rip = slot.registers[libc::REG_RIP as usize].load(Ordering::Relaxed);
        let at = rip.wrapping_sub(2);
        // The interrupted instruction follows a 2-byte `syscall` (0f 05).
        if at % 2 != 0 && at % 8 == 7 {
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
        let _ = (slot, mappings);
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

fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid aligned futex word and timeout; spurious wake-ups are
    // handled by the callers' loops.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: a valid aligned futex word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// The calling thread's thread pointer (the TCB address; static TLS lies
/// just below it on x86-64 and just above it on aarch64).
#[inline(always)]
fn thread_pointer() -> usize {
    let tp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: glibc keeps the TCB's self-pointer at %fs:0.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads the thread pointer register.
    unsafe {
        std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        tp = 0;
    }
    tp
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

/// What `prepare` gathers while allocation is still allowed.
struct Prepared {
    /// Known stack ends by kernel thread id (threads that allocated while
    /// recording registered theirs).
    stack_ends: Vec<(u32, usize)>,
    /// Size of glibc's `struct pthread` (the thread descriptor at the thread
    /// pointer, holding pthread-specific data pointers).
    thread_descriptor: usize,
    /// By stack id: blocks from this stack are referred to by interior
    /// pointers (see [`ROOT_INTERIOR_LIMIT`]).
    interior_sites: Vec<bool>,
    mappings: Vec<Mapping>,
    tids: Vec<i32>,
    segments: Vec<Mapping>,
    tls_size: usize,
    statics: Vec<(Mapping, RegisteredRoot)>,
    blocks_hint: usize,
}

fn read_mappings() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out: Vec<Mapping> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let range = parts.next()?;
            let perms = parts.next()?;
            if !perms.starts_with('r') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(a, 16).ok()?,
                end: usize::from_str_radix(b, 16).ok()?,
            })
        })
        .collect();
    // Not merged: the kernel already shows one entry per mapping (and may
    // itself join a stack with a neighbouring heap; see `stack_end`).
    out.sort_by_key(|m| m.start);
    out
}

fn list_threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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
    let stack_ends = hooks::THREADS
        .each()
        .map(|t| {
            (
                t.tid.load(Ordering::Relaxed) as u32,
                t.stack_end.load(Ordering::Relaxed),
            )
        })
        .filter(|&(tid, end)| tid != 0 && end != 0)
        .collect();
    Prepared {
        stack_ends,
        thread_descriptor: thread_descriptor_size(),
        interior_sites: super::symbols::stacks_matching(n_stacks, |f| {
            INTERIOR_POINTER_SITES.iter().any(|p| f.starts_with(p))
        }),
        mappings: read_mappings(),
        tids: list_threads(),
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

/// The sorted live blocks and a fast address lookup.
struct Heap<'a> {
    blocks: &'a [Block],
    starts: &'a [usize],
    lo: usize,
    hi: usize,
    interior_sites: &'a [bool],
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

    /// Like [`Heap::find`], for a word on a stack or in a register: see
    /// [`ROOT_INTERIOR_LIMIT`].
    #[inline(always)]
    fn find_from_root(&self, addr: usize) -> Option<u32> {
        let i = self.find(addr)?;
        let b = &self.blocks[i as usize];
        let interior_ok = self
            .interior_sites
            .get(b.stack as usize)
            .copied()
            .unwrap_or(false);
        (addr - b.addr < ROOT_INTERIOR_LIMIT || interior_ok).then_some(i)
    }
}

/// Scans `[start, end)` word by word, calling `hit(offset, block)` for
/// every word that points into a live block.
///
/// # Safety
/// The range must be mapped and readable for the whole call.
#[inline(always)]
unsafe fn scan_range(heap: &Heap, start: usize, end: usize, mut hit: impl FnMut(usize, u32)) {
    let mut p = (start + 7) & !7;
    while p + 8 <= end {
        // SAFETY: p is aligned and inside [start, end), which the caller
        // guarantees is readable.
        let w = unsafe { load_word(p) };
        if let Some(j) = heap.find(w) {
            hit(p - start, j);
        }
        p += 8;
    }
}

/// Scans a block's words for pointers into other blocks, with the same
/// interior rule as roots (see [`ROOT_INTERIOR_LIMIT`]): the stale words
/// in a container's spare capacity (popped from a `VecDeque`, truncated
/// from a `Vec`) are the heap's own source of false references.
///
/// # Safety
/// The range must be a live block, readable for the whole call.
#[inline(always)]
unsafe fn scan_block(heap: &Heap, start: usize, end: usize, mut hit: impl FnMut(usize, u32)) {
    let mut p = (start + 7) & !7;
    while p + 8 <= end {
        // SAFETY: p is aligned and inside the readable block.
        let w = unsafe { load_word(p) };
        if let Some(j) = heap.find_from_root(w) {
            hit(p - start, j);
        }
        p += 8;
    }
}

/// Scans a stack range: like [`scan_range`] with the stricter root rule.
///
/// # Safety
/// The range must be mapped and readable for the whole call.
#[inline(always)]
unsafe fn scan_stack(heap: &Heap, start: usize, end: usize, mut hit: impl FnMut(u32)) {
    let mut p = (start + 7) & !7;
    while p + 8 <= end {
        // SAFETY: p is aligned and inside the readable [start, end).
        let w = unsafe { load_word(p) };
        if let Some(j) = heap.find_from_root(w) {
            hit(j);
        }
        p += 8;
    }
}

/// Takes a heap-graph scan. See the module docs.
///
/// `own_stack_from` is where the calling thread's stack is scanned from:
/// just below the public entry point's frame pointer (its saved registers)
/// and up through the caller's frames; `own_registers` are the registers
/// the entry point spilled. leakprof's own frames below are not scanned:
/// they occupy stack memory the caller's earlier calls left full of stale
/// addresses.
pub(crate) fn scan(
    own_stack_from: usize,
    own_registers: [usize; 8],
) -> Result<ScanResult, ScanError> {
    if !hooks::recording() {
        return Err(ScanError::NotRecording);
    }
    if hooks::CONFIG.sample_mean.load(Ordering::Relaxed) != 0 {
        return Err(ScanError::Sampled);
    }
    hooks::guarded(|| {
        install_handler();
        let _one_scan = SCANNING.lock();
        let prepared = prepare();
        // Registered heap containers are looked up while stopped; hold the
        // registry so none is dropped meanwhile (LockCells come before the
        // shard locks, the one lock order).
        let registry = owner::lock_registry();
        let mut result = ScanResult {
            blocks: MmapVec::with_capacity(prepared.blocks_hint + prepared.blocks_hint / 4 + 1024),
            edges: MmapVec::new(),
            roots: MmapVec::new(),
            registered_edges: MmapVec::new(),
            registered: prepared.statics.iter().map(|(_, r)| r.clone()).collect(),
            scanned_bytes: 0,
            pause_ns: 0,
            threads_stopped: 0,
            threads_missed: 0,
            incomplete: false,
        };
        let mut starts: MmapVec<usize> =
            MmapVec::with_capacity(prepared.blocks_hint + prepared.blocks_hint / 4 + 1024);
        let registered_blocks: Vec<(usize, RegisteredRoot)> = registry
            .heap_objects()
            .map(|(addr, label, type_name)| {
                (
                    addr,
                    RegisteredRoot {
                        addr: 0,
                        label,
                        type_name,
                        block: None,
                        size: 0,
                    },
                )
            })
            .collect();
        // Filled while stopped: its capacity is reserved now (no malloc later).
        let mut heap_registered = Vec::with_capacity(registered_blocks.len());
        let me = sys::gettid();
        let t0 = sys::now_ns();

        // ---- stop the world: no malloc from here to resume ----
        LIVE.lock_all();
        let _ = hooks::LOCAL.try_with(|l| l.holds_locks.set(true));
        let (stopped, missed) = stop_threads(&prepared.tids, me);
        result.threads_stopped = stopped;
        result.threads_missed = missed;

        // SAFETY: we hold every shard lock.
        unsafe {
            LIVE.for_each_locked(|b| {
                if !result.blocks.push(*b) {
                    result.incomplete = true;
                }
            })
        };
        result
            .blocks
            .as_mut_slice()
            .sort_unstable_by_key(|b| b.addr);
        for b in result.blocks.as_slice() {
            if !starts.push(b.addr) {
                result.incomplete = true;
            }
        }
        let blocks = result.blocks.as_slice();
        let heap = Heap {
            blocks,
            starts: starts.as_slice(),
            lo: blocks.first().map_or(0, |b| b.addr),
            hi: blocks.last().map_or(0, |b| b.addr + b.size.max(1)),
            interior_sites: &prepared.interior_sites,
        };
        let mut incomplete = result.incomplete;
        let mut scanned = 0u64;
        for (i, b) in blocks.iter().enumerate() {
            // SAFETY: the block is live (in the table, whose locks we hold),
            // so its `size` bytes are allocated and readable.
            unsafe {
                scan_block(&heap, b.addr, b.addr + b.size, |off, j| {
                    incomplete |= !result.edges.push(Edge {
                        from: i as u32,
                        to: j,
                        offset: off.min(u32::MAX as usize) as u32,
                    });
                })
            };
            scanned += b.size as u64;
        }
        // Registered static containers are scanned as their own labelled
        // roots below: excluded here, or the plain static root would hide
        // the label (two roots, no single owner).
        let stop_lo = &STOP as *const Stop as usize;
        let stop_area = Mapping {
            start: stop_lo,
            end: stop_lo + std::mem::size_of::<Stop>(),
        };
        let excluded = std::iter::once(stop_area).chain(prepared.statics.iter().map(|(m, _)| *m));
        let mut pieces: MmapVec<Mapping> = MmapVec::new();
        for seg in &prepared.segments {
            incomplete |= !pieces.push(*seg);
        }
        for ex in excluded {
            let mut cut: MmapVec<Mapping> = MmapVec::with_capacity(pieces.len() + 1);
            for &m in pieces.as_slice() {
                for part in [
                    Mapping {
                        start: m.start,
                        end: m.end.min(ex.start),
                    },
                    Mapping {
                        start: m.start.max(ex.end),
                        end: m.end,
                    },
                ] {
                    if part.start < part.end {
                        incomplete |= !cut.push(part);
                    }
                }
            }
            pieces = cut;
        }
        let mut root = |node: u32, source: RootSource, roots: &mut MmapVec<RootRef>| {
            incomplete |= !roots.push(RootRef { node, source });
        };
        let mut roots_early = MmapVec::new();
        // Stacks and TLS of the stopped threads, then our own (from the
        // caller's frame up).
        let own_sp = own_stack_from;
        let stopped_slots = STOP.next_slot.load(Ordering::Acquire).min(MAX_THREADS);
        for &r in &own_registers {
            if let Some(j) = heap.find_from_root(r) {
                root(j, RootSource::Stack, &mut roots_early);
            }
        }
        for slot in &STOP.slots[..stopped_slots] {
            let in_syscall = stopped_in_syscall(slot, &prepared.mappings);
            for (k, r) in slot.registers.iter().enumerate() {
                if in_syscall && !is_callee_saved(k) {
                    continue;
                }
                if let Some(j) = heap.find_from_root(r.load(Ordering::Relaxed)) {
                    root(j, RootSource::Stack, &mut roots_early);
                }
            }
        }
        let my_tid = me as u32;
        let threads = STOP.slots[..stopped_slots]
            .iter()
            .map(|s| {
                (
                    s.tid.load(Ordering::Relaxed),
                    s.sp.load(Ordering::Relaxed),
                    s.tp.load(Ordering::Relaxed),
                )
            })
            .chain(std::iter::once((my_tid, own_sp, thread_pointer())));
        let mut roots = roots_early;
        for (tid, sp, tp) in threads {
            if let Some(m) = mapping_of(&prepared.mappings, sp) {
                // The thread's own idea of its stack end when we know it (a
                // mapping entry may have been joined with a neighbour).
                let known = prepared
                    .stack_ends
                    .iter()
                    .find(|&&(t, end)| t == tid && end > sp && end <= m.end)
                    .map(|&(_, end)| end);
                let end = known.unwrap_or(m.end);
                // SAFETY: [sp, end) lies inside a readable mapping.
                unsafe { scan_stack(&heap, sp, end, |j| root(j, RootSource::Stack, &mut roots)) };
                scanned += (end - sp) as u64;
            }
            if tp != 0 {
                if let Some(m) = mapping_of(&prepared.mappings, tp) {
                    // Exactly the static TLS blocks below the thread pointer
                    // and glibc's thread descriptor above it: the main
                    // thread's live in the heap, whose neighbouring chunks
                    // (free ones included) must not be read as roots.
                    let lo = tp.saturating_sub(prepared.tls_size + 64).max(m.start);
                    let hi = (tp + prepared.thread_descriptor).min(m.end);
                    // SAFETY: clipped to the readable mapping containing tp.
                    unsafe { scan_stack(&heap, lo, hi, |j| root(j, RootSource::Tls, &mut roots)) };
                }
            }
        }
        // The stop slots (saved registers of stopped threads, already
        // scanned under the stricter rule above) are static data too: skip
        // them, or registers deliberately ignored would count after all.
        for &seg in pieces.as_slice() {
            // Only the parts inside readable mappings.
            let mut addr = seg.start;
            while addr < seg.end {
                match mapping_of(&prepared.mappings, addr) {
                    Some(m) => {
                        let end = m.end.min(seg.end);
                        // SAFETY: [addr, end) is inside a readable mapping.
                        unsafe {
                            scan_range(&heap, addr, end, |_, j| {
                                root(j, RootSource::Static, &mut roots)
                            })
                        };
                        scanned += (end - addr) as u64;
                        addr = end;
                    }
                    None => addr += 4096,
                }
            }
        }
        for (k, (area, _)) in prepared.statics.iter().enumerate() {
            if mapping_of(&prepared.mappings, area.start).is_some_and(|m| area.end <= m.end) {
                // SAFETY: the registered static lies in a readable mapping.
                unsafe {
                    scan_range(&heap, area.start, area.end, |_, j| {
                        incomplete |= !result.registered_edges.push((k as u32, j));
                    })
                };
            }
        }
        // By reference: dropping the Vec here would call free() while a
        // stopped thread may hold malloc's lock.
        for (addr, reg) in &registered_blocks {
            if let Some(j) = heap.find(*addr) {
                if heap_registered.len() < heap_registered.capacity() {
                    heap_registered.push((j, reg.clone()));
                }
            }
        }
        roots.as_mut_slice().sort_unstable();
        let mut deduped: MmapVec<RootRef> = MmapVec::with_capacity(roots.len());
        let mut last: Option<RootRef> = None;
        for &r in roots.as_slice() {
            if last != Some(r) {
                incomplete |= !deduped.push(r);
                last = Some(r);
            }
        }
        result.roots = deduped;
        result.scanned_bytes = scanned;
        result.incomplete = incomplete;

        resume_threads();
        let _ = hooks::LOCAL.try_with(|l| l.holds_locks.set(false));
        LIVE.unlock_all();
        // ---- the world runs again ----
        result.pause_ns = sys::now_ns().saturating_sub(t0);
        drop(registry);

        for (j, mut reg) in heap_registered {
            let k = result.registered.len() as u32;
            reg.block = Some(j);
            reg.size = result.blocks.as_slice()[j as usize].size as u64;
            result.registered.push(reg);
            let _ = result.roots.push(RootRef {
                node: j,
                source: RootSource::Registered(k),
            });
        }
        Ok(result)
    })
}

/// Signals every other thread and waits until each has stopped (or the
/// timeout). Returns (stopped, missed).
fn stop_threads(tids: &[i32], me: i32) -> (usize, usize) {
    STOP.next_slot.store(0, Ordering::Release);
    STOP.acks.store(0, Ordering::Release);
    STOP.active.store(true, Ordering::Release);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut sent = 0u32;
    for &tid in tids {
        if tid == me {
            continue;
        }
        // SAFETY: tgkill with our own pid and a thread id of ours; a thread
        // that has exited meanwhile yields ESRCH, which we skip.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, STOP_SIGNAL) } == 0 {
            sent += 1;
        }
    }
    let deadline = sys::now_ns() + STOP_TIMEOUT_NS;
    loop {
        let acks = STOP.acks.load(Ordering::Acquire);
        if acks >= sent || sys::now_ns() >= deadline {
            return (acks as usize, sent.saturating_sub(acks) as usize);
        }
        futex_wait(&STOP.acks, acks, 10_000_000);
    }
}

fn resume_threads() {
    STOP.active.store(false, Ordering::Release);
    STOP.epoch.fetch_add(1, Ordering::AcqRel);
    futex_wake_all(&STOP.epoch);
}
