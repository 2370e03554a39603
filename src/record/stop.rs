//! Stopping the world for a heap-graph scan: the signal handshake.
//!
//! The scanner (one at a time: `scan` holds its lock) stops every other
//! thread of the process with a signal whose handler records the thread's
//! stack pointer, thread pointer and registers and then waits, as the Boehm
//! collector does. Only atomics and futexes are shared with the handler,
//! which must stay async-signal-safe.
//!
//! # Protocol
//!
//! - `PHASE` = `epoch << 1 | active`, one word. [`stop_world`] opens scan
//!   `e` by storing `e << 1 | 1`; [`resume_world`] closes it by storing
//!   `e << 1`. Epochs only grow. A handler loads `PHASE` once: inactive
//!   means a stray or late signal (it returns at once); otherwise it waits
//!   until `PHASE` differs from the value it loaded, so a handler that runs
//!   after its scan resumed never waits for the next one.
//! - `CLAIMS` = `epoch << 32 | closed | count`. A handler of epoch `e`
//!   takes a slot index from it while it is open for `e`; the scanner
//!   closes it when the stop phase ends ([`Stopped::slots`] is then fixed),
//!   so a thread whose signal arrives later is not counted as stopped
//!   (it was running during the scan) and returns at once.
//! - Each slot's `state` = `epoch << 2 | EMPTY/WRITING/READY/DEFERRED`. A
//!   handler takes the slot only if no handler of an older scan is still
//!   `WRITING` it, fills it, then stores `READY` (Release) stamped with its
//!   epoch. The scanner reads a slot only if it is `READY` with the current
//!   epoch, so it never reads a half-written slot or one of an earlier scan.
//! - After a round of signals has been answered, the scanner lists the
//!   threads again (raw `getdents64`: no `malloc`, which a stopped thread
//!   may hold) and stops the newcomers, until a listing finds none.
//! - A thread inside the inner allocator's `realloc` (its in-flight record
//!   in phase `Inner`: the old block may be half freed) is not stopped
//!   there: it leaves a `DEFERRED` slot naming the block, and stops itself
//!   when the inner call returns ([`resume_deferred`]). If that never
//!   happens in time (the inner allocator waits for a lock a stopped thread
//!   holds), the scan reads the block's old copy with a fault-safe read.
//!
//! # What a stop does to the program
//!
//! - A system call that `SA_RESTART` does not restart returns `EINTR` in
//!   the stopped thread: `nanosleep`, `poll`, `epoll_wait`, timed futex
//!   waits (measured by `tests/races`), and `clock_nanosleep`, `select`,
//!   `sigtimedwait`, ... (signal(7)). `read` and untimed futex waits are
//!   restarted. Rust's `thread::sleep`, tokio and mio retry on `EINTR`; C
//!   code that does not sees an error.
//! - A thread that blocks the signal cannot stop. After a short grace the
//!   scanner checks the thread's blocked mask (`/proc/self/task/N/status`)
//!   and stops waiting for it; it is counted (`blocking`) and its stack is
//!   not a root. Other threads that do not answer cost the timeout.
//! - The signal is `SIGPWR` unless [`StopConfig::signal`] says otherwise. A
//!   program that already handles that signal keeps its handler: the scan is
//!   refused (see [`install`]).

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::hooks;
use super::live::{Block, PackedBlock};
use super::mmapvec::MmapVec;
use super::race::{self, RacePoint};
use super::sys;
use super::threads::FlightPhase;

/// General-purpose registers saved per stopped thread.
pub(crate) const SAVED_REGISTERS: usize = 32;
/// Threads whose stop can be recorded (handlers past it are not stopped).
const MAX_SLOTS: usize = 4096;
/// How long every thread gets to answer before the scanner checks whether
/// a silent one blocks the signal.
const GRACE_NS: u64 = 50_000_000;

const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const READY: u64 = 2;
const DEFERRED: u64 = 3;
const CLOSED: u64 = 1 << 31;
const COUNT: u64 = CLOSED - 1;

/// What a stop records of one thread.
pub(crate) struct Slot {
    state: AtomicU64,
    tid: AtomicU32,
    /// The interrupted stack pointer: the scan reads the stack from here,
    /// not from the signal frame (whose floating-point and vector state
    /// holds stale values of caller-saved registers).
    sp: AtomicUsize,
    tp: AtomicUsize,
    /// The general-purpose registers at the interruption.
    registers: [AtomicUsize; SAVED_REGISTERS],
    /// The thread's realloc in flight, if any: its phase, the block whose
    /// memory holds its contents, and (phase `Moved`) the old block, whose
    /// address the program's pointers still hold.
    flight: AtomicU32,
    content: PackedBlock,
    identity: PackedBlock,
}

static PHASE: AtomicU32 = AtomicU32::new(0);
static CLAIMS: AtomicU64 = AtomicU64::new(0);
/// Bumped (and woken) by every handler that stamps a slot: the scanner's
/// doorbell. The slots themselves say who answered.
static DOORBELL: AtomicU32 = AtomicU32::new(0);
/// The last epoch opened.
static EPOCH: AtomicU32 = AtomicU32::new(0);

static SLOTS: [Slot; MAX_SLOTS] = [const {
    Slot {
        state: AtomicU64::new(EMPTY),
        tid: AtomicU32::new(0),
        sp: AtomicUsize::new(0),
        tp: AtomicUsize::new(0),
        registers: [const { AtomicUsize::new(0) }; SAVED_REGISTERS],
        flight: AtomicU32::new(0),
        content: PackedBlock::new(),
        identity: PackedBlock::new(),
    }
}; MAX_SLOTS];

thread_local! {
    /// The epoch whose stop this thread deferred (0: none): see
    /// [`resume_deferred`].
    static DEFERRED_EPOCH: Cell<u32> = const { Cell::new(0) };
}

/// How to stop the world.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StopConfig {
    pub(crate) signal: libc::c_int,
    pub(crate) timeout_ns: u64,
}

/// Installs the stop handler for `signal` unless the program handles that
/// signal itself (then the scan is refused rather than the program's
/// handler replaced). Checked before every scan: a handler installed after
/// ours would otherwise leave the scanner waiting for acknowledgements
/// that never come.
pub(crate) fn install(signal: libc::c_int) -> Result<(), String> {
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new
    // action only queries.
    let current = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
            return Err(format!("signal {signal} cannot be used to stop threads"));
        }
        old.sa_sigaction
    };
    let ours = on_stop_signal as *const () as usize;
    if current == ours {
        return Ok(());
    }
    if current != libc::SIG_DFL && current != libc::SIG_IGN {
        return Err(format!(
            "the program handles {} itself (a garbage collector such as Boehm or Mono uses SIGPWR): \
             choose another signal with GraphOptions::stop_signal",
            signal_name(signal)
        ));
    }
    // SAFETY: a zeroed sigaction is a valid starting value; we set the
    // handler and flags, and sigemptyset initialises the mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ours;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "cannot install a handler for {}",
                signal_name(signal)
            ));
        }
    }
    Ok(())
}

/// `SIGPWR`, `SIGRTMIN+3`, or the number.
pub(crate) fn signal_name(signal: libc::c_int) -> String {
    let rtmin = libc::SIGRTMIN();
    match signal {
        libc::SIGPWR => "SIGPWR".to_string(),
        libc::SIGUSR1 => "SIGUSR1".to_string(),
        libc::SIGUSR2 => "SIGUSR2".to_string(),
        libc::SIGXCPU => "SIGXCPU".to_string(),
        s if s >= rtmin && s <= libc::SIGRTMAX() => format!("SIGRTMIN+{}", s - rtmin),
        s => format!("signal {s}"),
    }
}

/// The stop-signal handler. Async-signal-safe: atomics, `gettid`, futex
/// calls and thread-locals without destructors; errno is preserved.
extern "C" fn on_stop_signal(
    _sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let phase = PHASE.load(Ordering::Acquire);
    if phase & 1 == 1 {
        let epoch = phase >> 1;
        race::hit(RacePoint::HandlerBeforeClaim);
        let flight = hooks::current_flight();
        match flight.map(|f| f.phase()) {
            Some(FlightPhase::Inner) => defer(epoch, ctx),
            _ => park(epoch, phase, ctx),
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Takes a slot of `epoch`, or None when that scan's stop phase is over.
fn claim(epoch: u32) -> Option<&'static Slot> {
    loop {
        let c = CLAIMS.load(Ordering::Acquire);
        if (c >> 32) as u32 != epoch || c & CLOSED != 0 {
            return None;
        }
        let i = (c & COUNT) as usize;
        if i >= MAX_SLOTS {
            return None;
        }
        if CLAIMS
            .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        let slot = &SLOTS[i];
        let s = slot.state.load(Ordering::Acquire);
        if s & 3 == WRITING {
            continue; // a handler of an earlier scan still fills it
        }
        let mine = (epoch as u64) << 2 | WRITING;
        if slot
            .state
            .compare_exchange(s, mine, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Some(slot);
        }
    }
}

/// Records this thread in a slot and waits until the scan resumes.
fn park(epoch: u32, phase: u32, ctx: *mut libc::c_void) {
    let Some(slot) = claim(epoch) else {
        return; // too late: the scan went on without this thread
    };
    race::hit(RacePoint::HandlerBeforeStamp);
    record_thread(slot, ctx);
    record_flight(slot);
    slot.state
        .store((epoch as u64) << 2 | READY, Ordering::Release);
    ring();
    while PHASE.load(Ordering::Acquire) == phase {
        sys::futex_wait(&PHASE, phase, 50_000_000);
    }
}

/// Records the calling thread's id, stack and thread pointers and
/// registers at the interruption.
fn record_thread(slot: &Slot, ctx: *mut libc::c_void) {
    slot.tid.store(sys::gettid() as u32, Ordering::Relaxed);
    // SAFETY: with SA_SIGINFO the kernel passes the interrupted context as
    // the third argument; it is valid during the handler.
    let sp = unsafe { interrupted_registers(ctx, &slot.registers) };
    slot.sp.store(sp, Ordering::Relaxed);
    slot.tp.store(thread_pointer(), Ordering::Relaxed);
}

/// Copies this thread's realloc in flight (phases `Detached` and `Moved`;
/// `Inner` defers instead) into its slot.
fn record_flight(slot: &Slot) {
    let flight = hooks::current_flight();
    let phase = flight.map_or(FlightPhase::Idle, |f| f.phase());
    match (flight, phase) {
        (Some(f), FlightPhase::Detached) => {
            let old = f.old();
            slot.content.store(&old);
            slot.identity.store(&old);
        }
        (Some(f), FlightPhase::Moved) => {
            slot.content.store(&f.new_block());
            slot.identity.store(&f.old());
        }
        _ => {}
    }
    slot.flight.store(phase as u32, Ordering::Relaxed);
}

/// A stop that arrived inside the inner allocator: leave the block's
/// description (and the thread's stack and registers as they are now,
/// for a thread that stays stuck there) and stop later (see
/// [`resume_deferred`]).
fn defer(epoch: u32, ctx: *mut libc::c_void) {
    if let Some(slot) = claim(epoch) {
        record_thread(slot, ctx);
        if let Some(f) = hooks::current_flight() {
            let old = f.old();
            slot.content.store(&old);
            slot.identity.store(&old);
        }
        slot.flight
            .store(FlightPhase::Inner as u32, Ordering::Relaxed);
        slot.state
            .store((epoch as u64) << 2 | DEFERRED, Ordering::Release);
    }
    let _ = DEFERRED_EPOCH.try_with(|d| d.set(epoch));
    compiler_fence(Ordering::SeqCst);
    ring();
    race::hit(RacePoint::HandlerDeferred);
}

/// Called by `realloc` once the inner allocator has returned (the block in
/// flight is whole again, phase `Moved` or `Idle`): a stop deferred during
/// the call happens now, if its scan is still stopping threads.
#[inline]
pub(crate) fn resume_deferred() {
    compiler_fence(Ordering::SeqCst);
    let epoch = DEFERRED_EPOCH.try_with(|d| d.replace(0)).unwrap_or(0);
    if epoch != 0 && PHASE.load(Ordering::Acquire) == (epoch << 1 | 1) {
        raise_self();
    }
}

#[cold]
fn raise_self() {
    let signal = STOP_SIGNAL.load(Ordering::Relaxed) as libc::c_int;
    // SAFETY: tgkill to our own thread with our own pid; the signal is
    // delivered before the call returns (it is not blocked: its handler
    // just ran on this thread).
    unsafe {
        libc::syscall(libc::SYS_tgkill, libc::getpid(), sys::gettid(), signal);
    }
}

/// The signal of the scan in progress (for `raise_self`).
static STOP_SIGNAL: AtomicU32 = AtomicU32::new(libc::SIGPWR as u32);

fn ring() {
    DOORBELL.fetch_add(1, Ordering::Release);
    futex_wake_all(&DOORBELL);
}

/// The outcome of a stop phase; [`resume_world`] ends it.
pub(crate) struct Stopped {
    epoch: u32,
    /// Slots claimed before the stop phase closed: the only ones read.
    slots: usize,
    /// Threads stopped (a `READY` slot of this epoch).
    pub(crate) stopped: usize,
    /// Threads signalled that neither stopped nor exited: their stacks are
    /// not roots and they ran during the scan.
    pub(crate) missed: usize,
    /// Of the missed: threads that block the stop signal.
    pub(crate) blocking: usize,
    /// Of the missed: threads that stayed inside the inner allocator's
    /// realloc (their block is read from its old copy).
    pub(crate) stuck_in_realloc: usize,
    /// Rounds of listing and signalling threads (more than one when threads
    /// were created during the stop phase).
    pub(crate) rounds: usize,
}

/// A stopped thread as its slot recorded it.
pub(crate) struct StoppedThread {
    pub(crate) tid: u32,
    pub(crate) sp: usize,
    pub(crate) tp: usize,
    pub(crate) registers: [usize; SAVED_REGISTERS],
    pub(crate) flight: Option<FlightNode>,
}

/// A block a realloc held outside the live table when the world stopped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlightNode {
    /// Where its contents are (the new block once the inner allocator
    /// returned), with the stack, tag and birth it will be recorded with.
    pub(crate) content: Block,
    /// The block the program's pointers still refer to (the old one).
    pub(crate) identity: Block,
    /// Its contents may be half freed: read them fault-safely.
    pub(crate) unsafe_to_read: bool,
}

impl Stopped {
    fn slot_threads(&self, state: u64) -> impl Iterator<Item = &'static Slot> + '_ {
        let want = (self.epoch as u64) << 2 | state;
        SLOTS[..self.slots]
            .iter()
            .filter(move |s| s.state.load(Ordering::Acquire) == want)
    }

    /// Every stopped thread.
    pub(crate) fn threads(&self) -> impl Iterator<Item = StoppedThread> + '_ {
        self.slot_threads(READY).map(thread_of)
    }

    /// Threads that deferred their stop inside the inner allocator and
    /// never stopped, as they were when they deferred: stuck in the inner
    /// allocator (in life: waiting for a lock a stopped thread holds), so
    /// their callers' frames still hold what they held then. Their block
    /// in flight must be read fault-safely.
    pub(crate) fn stuck(&self) -> impl Iterator<Item = StoppedThread> + '_ {
        self.slot_threads(DEFERRED)
            .filter(|d| {
                let tid = d.tid.load(Ordering::Relaxed);
                !self
                    .slot_threads(READY)
                    .any(|r| r.tid.load(Ordering::Relaxed) == tid)
            })
            .map(thread_of)
    }
}

fn thread_of(s: &Slot) -> StoppedThread {
    StoppedThread {
        tid: s.tid.load(Ordering::Relaxed),
        sp: s.sp.load(Ordering::Relaxed),
        tp: s.tp.load(Ordering::Relaxed),
        registers: std::array::from_fn(|k| s.registers[k].load(Ordering::Relaxed)),
        flight: flight_of(s),
    }
}

fn flight_of(s: &Slot) -> Option<FlightNode> {
    let phase = s.flight.load(Ordering::Relaxed);
    let node = |unsafe_to_read| FlightNode {
        content: s.content.load(),
        identity: s.identity.load(),
        unsafe_to_read,
    };
    match phase {
        p if p == FlightPhase::Detached as u32 || p == FlightPhase::Moved as u32 => {
            Some(node(false))
        }
        p if p == FlightPhase::Inner as u32 => Some(node(true)),
        _ => None,
    }
}

/// One thread the scanner signalled.
#[derive(Clone, Copy)]
struct Signalled {
    tid: i32,
    /// 0 waiting, 1 stopped, 2 exited, 3 blocks the signal.
    state: u8,
}

const WAITING: u8 = 0;
const ANSWERED: u8 = 1;
const EXITED: u8 = 2;
const BLOCKS: u8 = 3;

/// Stops every thread but the caller; see the module docs. No `malloc`
/// from here until [`resume_world`]: scratch memory is `mmap`ed.
pub(crate) fn stop_world(config: StopConfig) -> Stopped {
    let epoch = EPOCH.fetch_add(1, Ordering::AcqRel).wrapping_add(1).max(1) & 0x7fff_ffff;
    STOP_SIGNAL.store(config.signal as u32, Ordering::Relaxed);
    CLAIMS.store((epoch as u64) << 32, Ordering::Release);
    PHASE.store(epoch << 1 | 1, Ordering::Release);
    let me = sys::gettid();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let started = sys::now_ns();
    let deadline = started + config.timeout_ns;
    let mut signalled: MmapVec<Signalled> = MmapVec::with_capacity(256);
    let mut listed: MmapVec<i32> = MmapVec::with_capacity(256);
    let mut rounds = 0;
    loop {
        list_threads(&mut listed);
        let mut fresh = 0;
        for &tid in listed.as_slice() {
            if tid == me || signalled.as_slice().iter().any(|s| s.tid == tid) {
                continue;
            }
            // SAFETY: tgkill with our own pid and a thread id of ours; a
            // thread that exited meanwhile yields ESRCH: not signalled.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, config.signal) } == 0 {
                let _ = signalled.push(Signalled {
                    tid,
                    state: WAITING,
                });
                fresh += 1;
            }
        }
        rounds += 1;
        if fresh == 0 && rounds > 1 {
            break;
        }
        if !wait_for_answers(epoch, &mut signalled, pid, started, deadline, config.signal) {
            break;
        }
        race::hit(RacePoint::StopBeforeRelist);
        if fresh == 0 {
            break;
        }
    }
    // Close the stop phase: later handlers of this epoch do not stop.
    let slots = (CLAIMS.fetch_or(CLOSED, Ordering::AcqRel) & COUNT) as usize;
    let mut stopped = Stopped {
        epoch,
        slots: slots.min(MAX_SLOTS),
        stopped: 0,
        missed: 0,
        blocking: 0,
        stuck_in_realloc: 0,
        rounds,
    };
    stopped.stopped = stopped.slot_threads(READY).count();
    let exited = signalled
        .as_slice()
        .iter()
        .filter(|s| s.state == EXITED)
        .count();
    stopped.missed = signalled.len().saturating_sub(stopped.stopped + exited);
    let answered: MmapVec<i32> = answered_tids(&stopped);
    stopped.blocking = signalled
        .as_slice()
        .iter()
        .filter(|s| s.state == BLOCKS && !answered.as_slice().contains(&s.tid))
        .count();
    stopped.stuck_in_realloc = stopped.stuck().count();
    stopped
}

fn answered_tids(stopped: &Stopped) -> MmapVec<i32> {
    let mut out = MmapVec::with_capacity(stopped.slots);
    for s in stopped.slot_threads(READY) {
        let _ = out.push(s.tid.load(Ordering::Relaxed) as i32);
    }
    out
}

/// Waits until every signalled thread has stopped, exited or is known to
/// block the signal. False at the deadline.
fn wait_for_answers(
    epoch: u32,
    signalled: &mut MmapVec<Signalled>,
    pid: i32,
    started: u64,
    deadline: u64,
    signal: libc::c_int,
) -> bool {
    let want = (epoch as u64) << 2 | READY;
    loop {
        let bell = DOORBELL.load(Ordering::Acquire);
        let claimed = ((CLAIMS.load(Ordering::Acquire) & COUNT) as usize).min(MAX_SLOTS);
        let now = sys::now_ns();
        let mut waiting = 0;
        for s in signalled.as_mut_slice() {
            if s.state == ANSWERED || s.state == EXITED || s.state == BLOCKS {
                continue;
            }
            let answered = SLOTS[..claimed].iter().any(|slot| {
                slot.state.load(Ordering::Acquire) == want
                    && slot.tid.load(Ordering::Relaxed) as i32 == s.tid
            });
            if answered {
                s.state = ANSWERED;
            // SAFETY: signal 0 only checks that the thread exists.
            } else if unsafe { libc::syscall(libc::SYS_tgkill, pid, s.tid, 0) } != 0 {
                s.state = EXITED;
            } else if now >= started + GRACE_NS && blocks_signal(s.tid, signal) {
                s.state = BLOCKS;
            } else {
                waiting += 1;
            }
        }
        if waiting == 0 {
            return true;
        }
        if now >= deadline {
            return false;
        }
        sys::futex_wait(&DOORBELL, bell, 5_000_000);
    }
}

/// Resumes the threads stopped by [`stop_world`].
pub(crate) fn resume_world(stopped: Stopped) {
    PHASE.store(stopped.epoch << 1, Ordering::Release);
    futex_wake_all(&PHASE);
}

/// Every thread of the process, read with raw `getdents64` into a stack
/// buffer (`read_dir` allocates, and a stopped thread may hold `malloc`).
fn list_threads(out: &mut MmapVec<i32>) {
    out.clear();
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length; the kernel fills it
        // with whole `linux_dirent64` records.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8,
            // d_name NUL-terminated.
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 || at + reclen > n as usize {
                break;
            }
            let name = &buf[at + 19..at + reclen];
            let digits = name.iter().take_while(|b| b.is_ascii_digit());
            let mut tid = 0i32;
            let mut any = false;
            for &d in digits {
                tid = tid.wrapping_mul(10).wrapping_add((d - b'0') as i32);
                any = true;
            }
            if any {
                let _ = out.push(tid);
            }
            at += reclen;
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

/// Whether thread `tid` blocks `signal`, from the `SigBlk` line of its
/// status file (read into a stack buffer).
fn blocks_signal(tid: i32, signal: libc::c_int) -> bool {
    let mut path = *b"/proc/self/task/0000000000/status\0";
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut t = tid.max(0) as u32;
    loop {
        digits[n] = b'0' + (t % 10) as u8;
        n += 1;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    let mut at = 16;
    for k in (0..n).rev() {
        path[at] = digits[k];
        at += 1;
    }
    let tail = b"/status\0";
    path[at..at + tail.len()].copy_from_slice(tail);
    let mut buf = [0u8; 4096];
    // SAFETY: NUL-terminated path; `buf` is writable for its length; the
    // descriptor is closed on every path.
    let len = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let len = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        len
    };
    if len <= 0 {
        return false;
    }
    let text = &buf[..len as usize];
    let key = b"SigBlk:";
    let Some(pos) = text.windows(key.len()).position(|w| w == key) else {
        return false;
    };
    let mut mask = 0u64;
    for &c in text[pos + key.len()..]
        .iter()
        .skip_while(|c| c.is_ascii_whitespace())
    {
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => break,
        };
        mask = mask << 4 | v as u64;
    }
    (1..=64).contains(&signal) && mask >> (signal - 1) & 1 == 1
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

/// The calling thread's thread pointer (the TCB address; static TLS lies
/// just below it on x86-64 and just above it on aarch64).
#[inline(always)]
pub(crate) fn thread_pointer() -> usize {
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

fn futex_wake_all(word: &AtomicU32) {
    sys::futex_wake(word, i32::MAX);
}

/// The address range of the slots, which the scan must not read as static
/// data (saved registers deliberately ignored would count after all).
pub(crate) fn slots_area() -> (usize, usize) {
    let lo = SLOTS.as_ptr() as usize;
    (lo, lo + std::mem::size_of_val(&SLOTS))
}
