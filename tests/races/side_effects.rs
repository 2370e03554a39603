//! What a stop does to the program (item 4): interrupted system calls,
//! threads that block the signal, programs that own it.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakprof::GraphOptions;

use super::{block_stop_signal, gettid, start, stop_stats, Spinner};

/// Runs `call` on a new thread once it is asleep in the kernel; returns the
/// thread (its result: return value, errno, time taken) and its tid.
fn blocked_in<F>(call: F) -> (std::thread::JoinHandle<(i64, i32, Duration)>, i32)
where
    F: FnOnce() -> i64 + Send + 'static,
{
    let tid = Arc::new(AtomicI32::new(0));
    let join = {
        let tid = tid.clone();
        std::thread::spawn(move || {
            tid.store(gettid(), Ordering::Release);
            let t0 = Instant::now();
            let ret = call();
            // SAFETY: __errno_location returns this thread's errno slot.
            let errno = unsafe { *libc::__errno_location() };
            (ret, errno, t0.elapsed())
        })
    };
    while tid.load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    let tid = tid.load(Ordering::Acquire);
    wait_sleeping(tid);
    (join, tid)
}

/// Waits until thread `tid` sleeps in the kernel (state `S` in its stat).
fn wait_sleeping(tid: i32) {
    let path = format!("/proc/self/task/{tid}/stat");
    let t0 = Instant::now();
    loop {
        let stat = std::fs::read_to_string(&path).unwrap_or_default();
        // "tid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.trim().chars().next());
        if state == Some('S') {
            return;
        }
        // It sleeps within milliseconds; 10 s only tells a thread that
        // never blocks from a slow machine.
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "thread {tid} never slept"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

static FUTEX_WORD: AtomicU32 = AtomicU32::new(0);

/// Calls that `SA_RESTART` does not restart return `EINTR` when the world
/// stops (poll, nanosleep, epoll_wait, timed futex waits); restartable ones
/// (read, untimed futex waits) and std's `thread::sleep`, which retries,
/// are not disturbed. Measured on Linux; docs/ARCHITECTURE.md and the
/// `stop` module docs say the same.
pub fn interrupted_system_calls_return_eintr_as_documented() {
    let rec = start();
    let long = || libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    let (poll, _) = blocked_in(|| {
        // SAFETY: no descriptors; a timeout in ms.
        unsafe { libc::poll(std::ptr::null_mut(), 0, 5000) as i64 }
    });
    let (nanosleep, _) = blocked_in(move || {
        let ts = long();
        let mut rem = ts;
        // SAFETY: valid timespec pointers.
        unsafe { libc::nanosleep(&ts, &mut rem) as i64 }
    });
    let (epoll, _) = blocked_in(|| {
        // SAFETY: a fresh epoll descriptor with no events, closed after.
        unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let mut ev: [libc::epoll_event; 1] = std::mem::zeroed();
            let r = libc::epoll_wait(fd, ev.as_mut_ptr(), 1, 5000) as i64;
            let e = *libc::__errno_location();
            libc::close(fd);
            *libc::__errno_location() = e;
            r
        }
    });
    let (futex, _) = blocked_in(move || {
        let ts = long();
        // SAFETY: a valid futex word and timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                FUTEX_WORD.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0,
                &ts as *const libc::timespec,
            )
        }
    });
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) = (fds[0], fds[1]);
    let (read, _) = blocked_in(move || {
        let mut b = [0u8; 1];
        // SAFETY: a valid buffer of one byte.
        unsafe { libc::read(read_end, b.as_mut_ptr().cast(), 1) as i64 }
    });
    let (sleep, _) = blocked_in(|| {
        std::thread::sleep(Duration::from_millis(800));
        0
    });

    let t0 = Instant::now();
    let p = rec
        .snapshot_with_graph(&GraphOptions::default())
        .expect("graph");
    assert_eq!(stop_stats(&p).missed, 0);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: writes one byte to our pipe.
    unsafe { libc::write(write_end, b"x".as_ptr().cast(), 1) };
    let eintr = |name: &str, j: std::thread::JoinHandle<(i64, i32, Duration)>| {
        let (ret, errno, took) = j.join().expect(name);
        assert_eq!(
            (ret, errno),
            (-1, libc::EINTR),
            "{name} was not interrupted"
        );
        // Interrupted, the call returns within milliseconds of the stop;
        // not interrupted, after its 5 s timeout: 4 s keeps any scheduling
        // noise on the right side.
        assert!(took < Duration::from_secs(4), "{name} took {took:?}");
    };
    eintr("poll", poll);
    eintr("nanosleep", nanosleep);
    eintr("epoll_wait", epoll);
    eintr("timed futex wait", futex);
    let (ret, _, _) = read.join().expect("read");
    assert_eq!(ret, 1, "read is restarted and gets its byte");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let (_, _, took) = sleep.join().expect("sleep");
    assert!(
        took >= Duration::from_millis(800),
        "std's sleep retries after EINTR: slept only {took:?}"
    );
}

/// A thread that blocks the stop signal cannot stop. The scan notices
/// (its blocked mask) after a short grace instead of waiting out the
/// timeout, and counts it.
pub fn thread_blocking_the_signal_is_counted_without_costing_the_timeout() {
    let rec = start();
    // Spins until the snapshot is taken (the exact graph's type loading
    // before the pause can take seconds on a loaded machine), at most 60 s.
    static SNAPSHOT_TAKEN: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    let blocker = std::thread::spawn(|| {
        block_stop_signal();
        let t0 = Instant::now();
        while !SNAPSHOT_TAKEN.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
            std::hint::spin_loop();
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    let spinner = Spinner::start();
    let p = rec
        .snapshot_with_graph(&GraphOptions::default())
        .expect("graph");
    SNAPSHOT_TAKEN.store(true, Ordering::Relaxed);
    let took = Duration::from_nanos(p.graph.as_ref().unwrap().pause_ns);
    let stop = stop_stats(&p);
    assert_eq!(
        (stop.stopped, stop.missed, stop.blocking_signal),
        (1, 1, 1),
        "{stop:?}"
    );
    // The grace is short and the stop of the spinner takes microseconds;
    // waiting out the timeout would take 2 s. Half of that leaves room for
    // a loaded machine.
    assert!(
        took < Duration::from_secs(1),
        "the pause took {took:?} with a thread that blocks the signal (timeout 2 s)"
    );
    let text = &p.graph.as_ref().unwrap().thread_roots;
    assert!(text.contains("1 block the stop signal"), "{text}");
    drop(spinner);
    blocker.join().unwrap();
}

static PROGRAM_HANDLER_RAN: AtomicU32 = AtomicU32::new(0);

extern "C" fn program_handler(_: libc::c_int) {
    PROGRAM_HANDLER_RAN.fetch_add(1, Ordering::Relaxed);
}

fn handler_of(signal: libc::c_int) -> usize {
    // SAFETY: a zeroed sigaction as out-parameter; null new action queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

/// A program that handles SIGPWR (Boehm, Mono) keeps its handler: the scan
/// is refused with a one-line reason, and works with another signal.
pub fn program_owning_the_signal_keeps_its_handler() {
    // SAFETY: installs a plain handler for SIGPWR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = program_handler as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGPWR, &sa, std::ptr::null_mut());
    }
    let ours = program_handler as *const () as usize;
    let rec = start();
    let spinner = Spinner::start();
    let err = rec
        .snapshot_with_graph(&GraphOptions::default())
        .expect_err("SIGPWR belongs to the program");
    let msg = err.to_string();
    assert!(
        msg.contains("SIGPWR") && msg.contains("stop_signal") && !msg.contains('\n'),
        "{msg}"
    );
    assert_eq!(
        handler_of(libc::SIGPWR),
        ours,
        "the program's handler stays"
    );
    let rt = libc::SIGRTMIN() + 3;
    let p = rec
        .snapshot_with_graph(&GraphOptions::default().stop_signal(rt))
        .expect("graph with another signal");
    let stop = stop_stats(&p);
    assert_eq!(
        (stop.signal.as_str(), stop.stopped, stop.missed),
        ("SIGRTMIN+3", 1, 0)
    );
    assert_eq!(handler_of(libc::SIGPWR), ours);
    // SAFETY: raises SIGPWR on this thread; the program's handler runs.
    unsafe { libc::raise(libc::SIGPWR) };
    assert_eq!(PROGRAM_HANDLER_RAN.load(Ordering::Relaxed), 1);
    drop(spinner);
}
