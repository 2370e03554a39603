//! The cases, each run in a fresh process by `main.rs`.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::{Duration, Instant};

use leakprof::format::{Amount, Profile};
use leakprof::{Options, Recorder, Tag};

use crate::harness::Case;

pub const ALL: &[Case] = &[
    (
        "exact_bytes_per_tag_and_stack_with_names",
        exact_bytes_per_tag_and_stack_with_names,
    ),
    (
        "realloc_grow_shrink_move_zeroed_aligned_zero_size",
        realloc_grow_shrink_move_zeroed_aligned_zero_size,
    ),
    (
        "frees_of_blocks_from_before_recording_are_harmless",
        frees_of_blocks_from_before_recording_are_harmless,
    ),
    (
        "concurrent_threads_while_snapshotting_account_exactly",
        concurrent_threads_while_snapshotting_account_exactly,
    ),
    (
        "tags_follow_async_tasks_across_tokio_threads",
        tags_follow_async_tasks_across_tokio_threads,
    ),
    (
        "fork_child_keeps_recording_without_deadlock",
        fork_child_keeps_recording_without_deadlock,
    ),
    (
        "sampling_estimates_within_ten_percent",
        sampling_estimates_within_ten_percent,
    ),
    ("timeline_samples_and_marks", timeline_samples_and_marks),
    (
        "panic_under_a_tag_restores_the_tag",
        panic_under_a_tag_restores_the_tag,
    ),
    ("peak_and_per_stack_at_peak", peak_and_per_stack_at_peak),
    (
        "at_peak_is_exact_with_a_hundred_thousand_stacks",
        at_peak_is_exact_with_a_hundred_thousand_stacks,
    ),
    (
        "finished_tasks_fold_but_their_leaks_stay",
        finished_tasks_fold_but_their_leaks_stay,
    ),
    (
        "a_runtime_buffer_made_while_a_task_ran_is_not_the_tasks_leak",
        a_runtime_buffer_made_while_a_task_ran_is_not_the_tasks_leak,
    ),
    (
        "idle_tags_fold_without_finish_task_but_their_leaks_stay",
        idle_tags_fold_without_finish_task_but_their_leaks_stay,
    ),
    (
        "timeline_stays_bounded_and_keeps_the_sawtooth",
        timeline_stays_bounded_and_keeps_the_sawtooth,
    ),
    (
        "profile_saves_and_loads_back_equal",
        profile_saves_and_loads_back_equal,
    ),
    ("second_recorder_is_refused", second_recorder_is_refused),
    (
        "stack_held_objects_are_never_reported_unreachable",
        stack_held_objects_are_never_reported_unreachable,
    ),
    (
        "leaked_arc_cycle_is_reported_with_its_members_and_owner",
        leaked_arc_cycle_is_reported_with_its_members_and_owner,
    ),
    (
        "registered_containers_own_what_they_hold",
        registered_containers_own_what_they_hold,
    ),
    (
        "graph_snapshots_under_concurrent_allocation_are_safe",
        graph_snapshots_under_concurrent_allocation_are_safe,
    ),
    ("sampled_mode_refuses_a_graph", sampled_mode_refuses_a_graph),
    (
        "exact_graph_forgotten_boxes_behind_stale_words_are_unreachable",
        exact_graph_forgotten_boxes_behind_stale_words_are_unreachable,
    ),
    (
        "exact_graph_never_roots_a_block_in_glibcs_free_list_word",
        exact_graph_never_roots_a_block_in_glibcs_free_list_word,
    ),
    (
        "exact_graph_in_place_collect_owner_type_wins_over_site",
        exact_graph_in_place_collect_owner_type_wins_over_site,
    ),
];

fn start() -> Recorder {
    Recorder::start(Options::default().timeline_interval_ms(0)).expect("recorder starts")
}

fn tag_live(p: &Profile, tag: Tag) -> Amount {
    p.tags
        .iter()
        .filter(|t| {
            t.task == tag.task_id()
                && t.retry == tag.retry_number()
                && t.label.as_deref() == tag.label_name()
        })
        .fold(Amount::default(), |mut a, t| {
            a.add(t.live);
            a
        })
}

fn stack_has(p: &Profile, stack: u32, function: &str) -> bool {
    p.stacks[stack as usize]
        .frames
        .iter()
        .any(|&f| p.frames[f as usize].function.contains(function))
}

/// Live amount in groups whose stack mentions `function`.
fn live_from(p: &Profile, function: &str) -> Amount {
    p.live
        .iter()
        .filter(|g| stack_has(p, g.stack, function))
        .fold(Amount::default(), |mut a, g| {
            a.add(Amount {
                bytes: g.bytes,
                blocks: g.blocks,
            });
            a
        })
}

/// (allocated, live) summed over the stack stats of stacks mentioning
/// `function`.
fn stats_from(p: &Profile, function: &str) -> (Amount, Amount) {
    p.stack_stats
        .iter()
        .filter(|s| stack_has(p, s.stack, function))
        .fold(
            (Amount::default(), Amount::default()),
            |(mut a, mut l), s| {
                a.add(s.allocated);
                l.add(s.live);
                (a, l)
            },
        )
}

#[inline(never)]
fn alloc_kilobyte_block() -> Box<[u8]> {
    black_box(vec![7u8; 1000].into_boxed_slice())
}

#[inline(never)]
fn alloc_three_kilobyte_block() -> Box<[u8]> {
    black_box(vec![9u8; 3000].into_boxed_slice())
}

fn exact_bytes_per_tag_and_stack_with_names() {
    let rec = start();
    let mut hold: Vec<Box<[u8]>> = Vec::with_capacity(64);
    let t1 = Tag::task(1);
    let t2 = Tag::task(2).retry(1);
    leakprof::with_tag(t1, || {
        for _ in 0..10 {
            hold.push(alloc_kilobyte_block());
        }
    });
    leakprof::with_tag(t2, || {
        for _ in 0..5 {
            hold.push(alloc_three_kilobyte_block());
        }
    });
    let p = rec.snapshot();
    assert_eq!(
        tag_live(&p, t1),
        Amount {
            bytes: 10_000,
            blocks: 10
        }
    );
    assert_eq!(
        tag_live(&p, t2),
        Amount {
            bytes: 15_000,
            blocks: 5
        }
    );
    assert_eq!(
        live_from(&p, "alloc_kilobyte_block"),
        Amount {
            bytes: 10_000,
            blocks: 10
        }
    );
    assert_eq!(
        live_from(&p, "alloc_three_kilobyte_block"),
        Amount {
            bytes: 15_000,
            blocks: 5
        }
    );
    // The allocation site itself is the program's code, not the recorder's.
    for g in &p.live {
        let top = &p.frames[p.stacks[g.stack as usize].frames[0] as usize].function;
        assert!(
            !top.contains("leakprof::record"),
            "recorder frame on top: {top}"
        );
        assert!(!top.starts_with("__rust"), "allocator shim on top: {top}");
    }
    // Loops may be unrolled into several call sites: sum every stack.
    let (allocated, live) = stats_from(&p, "alloc_kilobyte_block");
    assert_eq!(
        allocated,
        Amount {
            bytes: 10_000,
            blocks: 10
        }
    );
    assert_eq!(
        live,
        Amount {
            bytes: 10_000,
            blocks: 10
        }
    );

    // Free half of the first tag's blocks: live drops, allocated stays.
    for b in hold.drain(..5) {
        drop(b);
    }
    let p = rec.snapshot();
    assert_eq!(
        tag_live(&p, t1),
        Amount {
            bytes: 5_000,
            blocks: 5
        }
    );
    let t1_info = p.tags.iter().find(|t| t.task == Some(1)).unwrap();
    assert_eq!(
        t1_info.allocated,
        Amount {
            bytes: 10_000,
            blocks: 10
        }
    );
    assert_eq!(
        t1_info.peak,
        Amount {
            bytes: 10_000,
            blocks: 10
        }
    );
    assert!(t1_info.first_ns.is_some() && t1_info.last_ns >= t1_info.first_ns);
    assert!(!t1_info.active);
    let (allocated, live) = stats_from(&p, "alloc_kilobyte_block");
    assert_eq!(allocated.bytes, 10_000);
    assert_eq!(live.bytes, 5_000);
    let task2 = p
        .tasks
        .iter()
        .find(|t| t.task == 2)
        .expect("task 2 in the task table");
    assert_eq!(task2.retries, 1);
    drop(hold);
}

fn realloc_grow_shrink_move_zeroed_aligned_zero_size() {
    let rec = start();
    let tag = Tag::task(3);
    let live = |rec: &Recorder| tag_live(&rec.snapshot(), tag);
    leakprof::with_tag(tag, || {
        // SAFETY (test): every pointer below comes from the matching
        // allocation call with the layout passed back to it.
        unsafe {
            let l = Layout::from_size_align(64, 8).unwrap();
            let p = black_box(std::alloc::alloc(l));
            p.write_bytes(1, 64);
            assert_eq!(
                live(&rec),
                Amount {
                    bytes: 64,
                    blocks: 1
                }
            );
            // Grow far enough to move.
            let p = black_box(std::alloc::realloc(p, l, 1 << 20));
            assert!(!p.is_null());
            assert_eq!(*p.add(63), 1, "realloc kept the contents");
            assert_eq!(
                live(&rec),
                Amount {
                    bytes: 1 << 20,
                    blocks: 1
                }
            );
            // Shrink.
            let l = Layout::from_size_align(1 << 20, 8).unwrap();
            let p = black_box(std::alloc::realloc(p, l, 100));
            assert_eq!(
                live(&rec),
                Amount {
                    bytes: 100,
                    blocks: 1
                }
            );
            std::alloc::dealloc(p, Layout::from_size_align(100, 8).unwrap());
            assert_eq!(live(&rec), Amount::default());

            let lz = Layout::from_size_align(4096, 16).unwrap();
            let z = black_box(std::alloc::alloc_zeroed(lz));
            assert!(std::slice::from_raw_parts(z, 4096).iter().all(|&b| b == 0));
            assert_eq!(
                live(&rec),
                Amount {
                    bytes: 4096,
                    blocks: 1
                }
            );
            std::alloc::dealloc(z, lz);

            let la = Layout::from_size_align(5000, 4096).unwrap();
            let a = black_box(std::alloc::alloc(la));
            assert_eq!(a as usize % 4096, 0);
            assert_eq!(
                live(&rec),
                Amount {
                    bytes: 5000,
                    blocks: 1
                }
            );
            let a = black_box(std::alloc::realloc(a, la, 9000));
            assert_eq!(a as usize % 4096, 0, "over-aligned realloc keeps alignment");
            assert_eq!(
                live(&rec),
                Amount {
                    bytes: 9000,
                    blocks: 1
                }
            );
            std::alloc::dealloc(a, Layout::from_size_align(9000, 4096).unwrap());
            assert_eq!(live(&rec), Amount::default());

            // Zero-size requests are outside GlobalAlloc's contract but
            // happen through direct calls; they must not break accounting.
            let l0 = Layout::from_size_align(0, 1).unwrap();
            let z0 = black_box(super::GLOBAL.alloc(l0));
            if !z0.is_null() {
                assert_eq!(
                    live(&rec),
                    Amount {
                        bytes: 0,
                        blocks: 1
                    }
                );
                super::GLOBAL.dealloc(z0, l0);
            }
            assert_eq!(live(&rec), Amount::default());
        }
    });
    let p = rec.snapshot();
    let info = p.tags.iter().find(|t| t.task == Some(3)).unwrap();
    assert!(info.allocated.bytes >= 64 + (1 << 20) + 100 + 4096 + 5000 + 9000);
}

fn frees_of_blocks_from_before_recording_are_harmless() {
    let early: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 100]).collect();
    let rec = start();
    let kept = leakprof::with_tag(Tag::task(4), || vec![5u8; 4000]);
    drop(early);
    let p = rec.snapshot();
    assert_eq!(
        tag_live(&p, Tag::task(4)),
        Amount {
            bytes: 4000,
            blocks: 1
        }
    );
    assert!(p.totals.live.bytes >= 4000 && p.totals.live.bytes < 200_000);
    drop(kept);
}

#[inline(never)]
fn churn_block(size: usize) -> Vec<u8> {
    black_box(vec![size as u8; size])
}

/// Whether a snapshot loop against churning threads has run long enough:
/// at least [`CHURN_SNAPSHOTS`] snapshots and at least [`CHURN_TIME`], so
/// snapshots overlap allocation however fast the machine is. How many
/// snapshots fit in a given time depends on the machine and its load, so
/// a slow machine makes the loop longer, never the test fail; only
/// [`CHURN_HANG`] without three snapshots (a hang) fails it.
fn churned_long_enough(t0: Instant, snapshots: usize) -> bool {
    let elapsed = t0.elapsed();
    assert!(
        snapshots >= CHURN_SNAPSHOTS || elapsed < CHURN_HANG,
        "only {snapshots} snapshots in {elapsed:?} against churning threads: a hang"
    );
    snapshots >= CHURN_SNAPSHOTS && elapsed >= CHURN_TIME
}

const CHURN_SNAPSHOTS: usize = 3;
const CHURN_TIME: Duration = Duration::from_millis(1500);
/// Far beyond what three snapshots take: they fitted in 1.5 s on the
/// project's shared 2-core machine, the bound this loop had before.
const CHURN_HANG: Duration = Duration::from_secs(60);

fn concurrent_threads_while_snapshotting_account_exactly() {
    let rec = start();
    // The first symbolization loads the test binary's debug info (about a
    // second in this build): not what the timed part is about.
    let warm = black_box(churn_block(64));
    black_box(rec.snapshot());
    drop(warm);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let running = || !stop.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    let kept: Vec<(u64, Vec<Vec<u8>>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6u64)
            .map(|t| {
                s.spawn(move || {
                    leakprof::with_tag(Tag::task(100 + t), || {
                        let mut window: Vec<Vec<u8>> = Vec::new();
                        let mut i = 0usize;
                        while running() {
                            for _ in 0..1000 {
                                i = i
                                    .wrapping_mul(6364136223846793005)
                                    .wrapping_add(1442695040888963407 + t as usize);
                                window.push(churn_block(16 + (i >> 33) % 2000));
                                if window.len() > 500 {
                                    window.swap_remove((i >> 40) % window.len());
                                }
                            }
                        }
                        window.truncate(100 + t as usize);
                        window.shrink_to_fit();
                        (100 + t, window)
                    })
                })
            })
            .collect();
        // Short-lived threads come and go meanwhile (slot reuse, teardown).
        let spawner = s.spawn(|| {
            let mut n = 0;
            while running() {
                std::thread::spawn(|| drop(black_box(vec![1u8; 333])))
                    .join()
                    .unwrap();
                n += 1;
            }
            n
        });
        let mut snapshots = 0;
        while !churned_long_enough(t0, snapshots) {
            let p = rec.snapshot();
            assert!(p.totals.live.blocks > 0);
            snapshots += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Thousands in practice; more than 10 says threads came and went
        // while snapshots ran (the spawner runs as long as the snapshots).
        assert!(spawner.join().unwrap() > 10);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let p = rec.snapshot();
    for (task, window) in &kept {
        // The window Vec itself (its buffer) is also live under the tag.
        let expect_bytes: usize =
            window.iter().map(|v| v.len()).sum::<usize>() + window.capacity() * 24;
        let got = tag_live(&p, Tag::task(*task));
        assert_eq!(got.blocks, window.len() as u64 + 1, "blocks of task {task}");
        assert_eq!(got.bytes, expect_bytes as u64, "bytes of task {task}");
    }
    // Exactness of the global counters: sum of live groups equals totals.
    let sum: u64 = p.live.iter().map(|g| g.bytes).sum();
    assert_eq!(sum, p.totals.live.bytes);
    let (live_bytes, _) = leakprof::live();
    let again = rec.snapshot().totals.live.bytes;
    let _ = live_bytes;
    assert!(again >= sum - 100_000 && again <= sum + 100_000);
    drop(kept);
}

fn tags_follow_async_tasks_across_tokio_threads() {
    use leakprof::FutureExt as _;
    let rec = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (kept, threads) = rt.block_on(async {
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                tokio::spawn(
                    async move {
                        let mut kept = Vec::new();
                        let mut threads = std::collections::BTreeSet::new();
                        for _ in 0..50 {
                            kept.push(vec![t as u8; 777]);
                            threads.insert(format!("{:?}", std::thread::current().id()));
                            tokio::task::yield_now().await;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        // Carry the tag into spawn_blocking explicitly.
                        let tag = leakprof::current_tag();
                        let blocking = tokio::task::spawn_blocking(move || {
                            leakprof::with_tag(tag, || vec![1u8; 5000])
                        })
                        .await
                        .unwrap();
                        (t, kept, blocking, threads)
                    }
                    .tagged(Tag::task(200 + t)),
                )
            })
            .collect();
        let mut kept = Vec::new();
        let mut threads = std::collections::BTreeSet::new();
        for h in tasks {
            let (t, k, b, th) = h.await.unwrap();
            threads.extend(th);
            kept.push((t, k, b));
        }
        (kept, threads)
    });
    let p = rec.snapshot();
    for (t, k, _) in &kept {
        // Every block the task allocated is under its tag, whichever
        // worker thread polled it; tokio's own bookkeeping (a blocking-pool
        // thread, say) may add a little.
        let groups: Vec<_> = p
            .live
            .iter()
            .filter(|g| p.tags[g.tag as usize].task == Some(200 + t))
            .collect();
        let of_size = |size: u64| {
            groups
                .iter()
                .filter(|g| g.bytes == size * g.blocks)
                .map(|g| g.blocks)
                .sum::<u64>()
        };
        assert_eq!(of_size(777), 50, "task {t}: its 50 blocks of 777 bytes");
        assert_eq!(of_size(5000), 1, "task {t}: the spawn_blocking block");
        let got: u64 = groups.iter().map(|g| g.bytes).sum();
        let expected = 50 * 777 + 5000 + k.capacity() as u64 * 24;
        assert!(
            got >= expected && got <= expected + 4096,
            "task {t}: {got} bytes, expected {expected}"
        );
        let info = p.tags.iter().find(|x| x.task == Some(200 + t)).unwrap();
        assert!(info.first_ns.is_some() && info.last_ns > info.first_ns);
        assert!(!info.active, "task {t} finished");
    }
    println!("tasks ran on {} distinct threads", threads.len());
    assert_eq!(
        leakprof::current_tag(),
        Tag::NONE,
        "no tag leaks out of polls"
    );
    drop(kept);
}

fn fork_child_keeps_recording_without_deadlock() {
    let rec = start();
    let parent_block = leakprof::with_tag(Tag::task(5), || vec![1u8; 10_000]);
    // A thread that allocates all the time, so forks happen mid-operation.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let churn = std::thread::spawn(move || {
        let mut v = Vec::new();
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            v.push(churn_block(64));
            if v.len() > 1000 {
                v.clear();
            }
        }
    });
    // Warm the symbol cache so each child's snapshot need not load DWARF.
    let _ = rec.snapshot();
    for round in 0..10 {
        // SAFETY (test): fork in a multi-threaded process; the child only
        // allocates (which must work) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: alarm has no preconditions; kills a hung child.
            unsafe { libc::alarm(10) };
            let child_block = leakprof::with_tag(Tag::task(6), || vec![2u8; 20_000]);
            let p = rec.snapshot();
            let ok = tag_live(&p, Tag::task(5)).bytes == 10_000
                && tag_live(&p, Tag::task(6)).bytes == 20_000;
            drop(child_block);
            // SAFETY: leaving the child without running parent-owned destructors.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "fork round {round}: child status {status:#x}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    let p = rec.snapshot();
    assert_eq!(tag_live(&p, Tag::task(5)).bytes, 10_000);
    assert_eq!(
        tag_live(&p, Tag::task(6)).bytes,
        0,
        "the child's block never lived in the parent"
    );
    drop(parent_block);
}

#[inline(never)]
fn sampled_block(size: usize) -> Vec<u8> {
    black_box(vec![3u8; size])
}

fn sampling_estimates_within_ten_percent() {
    let rec = Recorder::start(
        Options::default()
            .sample_mean_bytes(4096)
            .seed(42)
            .timeline_interval_ms(0),
    )
    .unwrap();
    let tag = Tag::task(8);
    let mut truth = Amount::default();
    let mut kept = Vec::with_capacity(60_000);
    leakprof::with_tag(tag, || {
        let mut x: u64 = 12345;
        for _ in 0..60_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let size = 16 + (x >> 33) as usize % 2048;
            truth.add(Amount {
                bytes: size as u64,
                blocks: 1,
            });
            kept.push(sampled_block(size));
        }
    });
    let p = rec.snapshot();
    assert_eq!(p.meta.options.mode, leakprof::format::Mode::Sampled);
    let est = live_from(&p, "sampled_block");
    let err = |e: u64, t: u64| (e as f64 - t as f64).abs() / t as f64;
    println!("truth {truth:?}, estimate {est:?}");
    assert!(
        err(est.bytes, truth.bytes) < 0.10,
        "bytes: estimate {} vs {}",
        est.bytes,
        truth.bytes
    );
    assert!(
        err(est.blocks, truth.blocks) < 0.10,
        "blocks: estimate {} vs {}",
        est.blocks,
        truth.blocks
    );
    // Free every other block: the estimate follows.
    let mut half = Amount::default();
    let mut i = 0;
    kept.retain(|v| {
        i += 1;
        if i % 2 == 0 {
            half.add(Amount {
                bytes: v.len() as u64,
                blocks: 1,
            });
        }
        i % 2 == 0
    });
    let est = live_from(&rec.snapshot(), "sampled_block");
    assert!(
        err(est.bytes, half.bytes) < 0.10,
        "after frees: {} vs {}",
        est.bytes,
        half.bytes
    );
    drop(kept);
}

fn timeline_samples_and_marks() {
    let rec = Recorder::start(Options::default().timeline_interval_ms(10)).unwrap();
    let kept = leakprof::with_tag(Tag::task(11).retry(4), || {
        let v = vec![1u8; 1 << 20];
        leakprof::mark("after allocation");
        v
    });
    std::thread::sleep(Duration::from_millis(150));
    let p = rec.snapshot();
    let periodic = p.timeline.iter().filter(|t| t.event.is_none()).count();
    assert!(
        periodic >= 5,
        "{periodic} periodic points in 150 ms at 10 ms"
    );
    let m = p
        .timeline
        .iter()
        .find(|t| t.event.as_deref() == Some("after allocation"))
        .expect("marked point");
    assert_eq!((m.task, m.retry), (Some(11), Some(4)));
    assert!(m.live_bytes >= 1 << 20);
    assert!(m.rss_bytes > 1 << 20);
    assert!(
        p.timeline.windows(2).all(|w| w[0].t_ns <= w[1].t_ns),
        "time order"
    );
    drop(kept);
}

fn panic_under_a_tag_restores_the_tag() {
    let rec = start();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| {
        leakprof::with_tag(Tag::task(12), || {
            let _v = black_box(vec![0u8; 100]);
            panic!("boom");
        })
    });
    std::panic::set_hook(hook);
    assert!(r.is_err());
    // The panic payload was allocated under the tag; let it go.
    drop(r);
    assert_eq!(leakprof::current_tag(), Tag::NONE);
    let after = vec![1u8; 1234];
    let p = rec.snapshot();
    assert_eq!(
        tag_live(&p, Tag::task(12)).bytes,
        0,
        "unwinding freed the block"
    );
    let untagged = p
        .live
        .iter()
        .filter(|g| g.tag == 0)
        .map(|g| g.bytes)
        .sum::<u64>();
    assert!(untagged >= 1234);
    drop(after);
}

#[inline(never)]
fn peak_phase_a() -> Vec<Vec<u8>> {
    (0..8).map(|_| black_box(vec![1u8; 1 << 20])).collect()
}

#[inline(never)]
fn peak_phase_b() -> Vec<Vec<u8>> {
    (0..2).map(|_| black_box(vec![1u8; 1 << 20])).collect()
}

fn peak_and_per_stack_at_peak() {
    let rec = start();
    let a = peak_phase_a();
    drop(a);
    let b = peak_phase_b();
    let p = rec.snapshot();
    assert!(
        p.totals.peak.bytes >= 8 << 20,
        "peak {}",
        p.totals.peak.bytes
    );
    assert!(p.totals.peak.bytes <= (8 << 20) + (1 << 20));
    let stat = |f: &str| {
        p.stack_stats
            .iter()
            .filter(|s| stack_has(&p, s.stack, f))
            .fold(
                (Amount::default(), Amount::default()),
                |(mut pk, mut lv), s| {
                    pk.add(s.at_peak);
                    lv.add(s.live);
                    (pk, lv)
                },
            )
    };
    let _ = stats_from;
    let (a_peak, a_live) = stat("peak_phase_a");
    let (b_peak, b_live) = stat("peak_phase_b");
    assert!(a_live.bytes < 4096, "phase A was freed: {}", a_live.bytes);
    // Exactly at the top: eight 1 MiB buffers and the Vec of 8 holding them
    // (one allocating thread: the peak is exact).
    assert_eq!(
        (a_peak.bytes, a_peak.blocks),
        ((8 << 20) + 8 * 24, 9),
        "phase A at peak"
    );
    assert_eq!(b_peak.bytes, 0, "phase B came after the peak");
    // Two 1 MiB buffers, plus the small Vec that holds them.
    assert!(
        (2 << 20..(2 << 20) + 4096).contains(&b_live.bytes),
        "{}",
        b_live.bytes
    );
    drop(b);
}

/// One of 2^17 distinct stacks, chosen by the bits of `n`.
#[inline(never)]
fn distinct_stack_a(n: u32, level: u32) -> Box<[u64; 8]> {
    // black_box after the call: no tail call may merge frames.
    let b = match level {
        0 => distinct_leaf(n),
        _ if n & 1 == 1 => distinct_stack_a(n >> 1, level - 1),
        _ => distinct_stack_b(n >> 1, level - 1),
    };
    black_box(b)
}

#[inline(never)]
fn distinct_stack_b(n: u32, level: u32) -> Box<[u64; 8]> {
    let b = match level {
        0 => distinct_leaf(n),
        _ if n & 1 == 1 => distinct_stack_a(n >> 1, level - 1),
        _ => distinct_stack_b(n >> 1, level - 1),
    };
    black_box(b)
}

#[inline(never)]
fn distinct_leaf(n: u32) -> Box<[u64; 8]> {
    black_box(Box::new([n as u64; 8]))
}

#[inline(never)]
fn after_the_peak() -> Vec<u8> {
    black_box(vec![5u8; 1024])
}

/// Item 5 of issue 9: at-peak figures are caught up lazily per counter (no
/// walk of all stacks when the peak rises), and stay exact with 100,000
/// distinct stacks.
fn at_peak_is_exact_with_a_hundred_thousand_stacks() {
    let rec = Recorder::start(Options::default().timeline_interval_ms(0).max_frames(32))
        .expect("recorder starts");
    let n = 100_000u32;
    let mut keep: Vec<Option<Box<[u64; 8]>>> = Vec::with_capacity(n as usize);
    for i in 0..n {
        keep.push(Some(distinct_stack_a(i, 17)));
    }
    for slot in keep.iter_mut().skip(1).step_by(2) {
        *slot = None;
    }
    let later = after_the_peak();
    let p = rec.snapshot();
    let (leaf_stacks, at_peak, live) = p
        .stack_stats
        .iter()
        .filter(|s| stack_has(&p, s.stack, "distinct_leaf"))
        .fold(
            (0, Amount::default(), Amount::default()),
            |(k, mut pk, mut lv), s| {
                pk.add(s.at_peak);
                lv.add(s.live);
                (k + 1, pk, lv)
            },
        );
    assert_eq!(leaf_stacks, n, "one stack per allocation");
    assert_eq!((at_peak.blocks, at_peak.bytes), (n as u64, n as u64 * 64));
    assert_eq!((live.blocks, live.bytes), (n as u64 / 2, n as u64 * 32));
    let (after_peak, after_live) = stats_from(&p, "after_the_peak");
    assert_eq!(after_live.bytes, 1024);
    let at = p
        .stack_stats
        .iter()
        .filter(|s| stack_has(&p, s.stack, "after_the_peak"))
        .map(|s| s.at_peak.bytes)
        .sum::<u64>();
    assert_eq!(at, 0, "allocated after the peak");
    assert_eq!(after_peak.bytes, 1024);
    black_box((keep, later));
}

#[inline(never)]
fn task_work(keep: bool) -> Option<Vec<u8>> {
    let v = black_box(vec![1u8; 100]);
    keep.then_some(v)
}

/// Item 8 of issue 9: finished tasks fold (their tag entries reused, the
/// newest 20,000 tags' and 10,000 tasks' figures listed, older ones
/// summed), so the recorder's memory stays bounded; a task whose memory
/// survives keeps its tag and record until it is freed.
fn finished_tasks_fold_but_their_leaks_stay() {
    let rec = start();
    let tasks = 30_000u64;
    let mut leaked = Vec::new();
    for i in 0..tasks {
        let leaks = i % 1000 == 7;
        if let Some(v) = leakprof::with_tag(Tag::task(i).retry(0), || task_work(leaks)) {
            leaked.push(v);
        }
        leakprof::describe_task(
            i,
            leakprof::TaskDescription::new()
                .actor("work")
                .outcome(if leaks { "dead-lettered" } else { "succeeded" }),
        );
        leakprof::finish_task(i);
    }
    let p = rec.snapshot();
    let folded = p.folded.clone().expect("folded tasks");
    let finished = tasks - 30;
    assert_eq!(
        folded.tags,
        finished - 20_000,
        "tags summed past the newest 20,000"
    );
    assert_eq!(folded.allocated.bytes, (finished - 20_000) * 100);
    assert_eq!(
        folded.tasks,
        finished - 10_000,
        "records summed past the newest 10,000"
    );
    assert_eq!(folded.outcomes.get("succeeded"), Some(&(finished - 10_000)));
    let leaking: Vec<_> = p
        .tags
        .iter()
        .filter(|t| t.task.is_some() && t.live.bytes > 0)
        .collect();
    assert_eq!(
        leaking.len(),
        30,
        "the leaking tasks' tags stay in the table"
    );
    assert!(leaking.iter().all(|t| t.live.bytes == 100));
    let listed: Vec<_> = p
        .tags
        .iter()
        .filter(|t| t.task.is_some() && t.live.bytes == 0)
        .collect();
    assert_eq!(listed.len(), 20_000, "the newest finished tags are listed");
    assert!(listed
        .iter()
        .all(|t| t.allocated.bytes == 100 && t.first_ns.is_some()));
    assert_eq!(
        p.tasks.len(),
        10_000 + 30,
        "the newest records and the leaking ones"
    );
    assert_eq!(
        p.tasks
            .iter()
            .filter(|t| t.outcome.as_deref() == Some("dead-lettered"))
            .count(),
        30
    );
    assert!(p
        .tasks
        .iter()
        .all(|t| t.first_ns.is_some() && t.last_ns.is_some()));
    let in_table = p.tags.len() - listed.len();
    assert!(
        in_table < 100,
        "tag entries were reused: {in_table} in the table"
    );
    let mem = p.recorder.clone().expect("recorder memory");
    assert!(mem.tags < 64 << 10, "{mem:?}");
    assert_eq!(
        mem.total,
        mem.live_table + mem.stacks + mem.tags + mem.threads + mem.timeline + mem.session
    );
    // Once freed, the leaked tags fold too (a few at each finished task).
    drop(leaked);
    for i in tasks..tasks + 10 {
        leakprof::finish_task(i);
    }
    let p = rec.snapshot();
    assert_eq!(
        p.tags
            .iter()
            .filter(|t| t.task.is_some() && t.live.bytes > 0)
            .count(),
        0
    );
    let folded = p.folded.expect("folded");
    let listed = p.tags.iter().filter(|t| t.task.is_some()).count() as u64;
    assert_eq!(
        folded.tags + listed,
        tasks,
        "every tag folded once its memory was freed"
    );
}

/// Issue 12: a framework worker never calls `finish_task`; tags of tasks
/// that hold nothing and have been idle for a quarter of a second fold on
/// their own (a few at each new tag), so the tag table holds about a
/// quarter of a second of recent jobs plus the leaking ones, not every job
/// run. Two rounds of `JOBS` jobs half a second apart: the second round's table is no larger than
/// the first's, the first round's tags are folded, and the leaking tasks'
/// tags stay with their bytes.
fn idle_tags_fold_without_finish_task_but_their_leaks_stay() {
    const JOBS: u64 = 20_000;
    let rec = start();
    let mut leaked = Vec::new();
    let mut round = |from: u64| {
        for i in from..from + JOBS {
            let leaks = i % 1000 == 7;
            let attempt: usize = 0;
            if let Some(v) = leakprof::with_tag(Tag::task(i).retry(attempt), || task_work(leaks)) {
                leaked.push(v);
            }
        }
        rec.snapshot()
    };
    let first = round(0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = round(JOBS);
    let tags_bytes = |p: &leakprof::format::Profile| p.recorder.clone().expect("recorder").tags;
    assert!(
        tags_bytes(&second) <= tags_bytes(&first) + (64 << 10),
        "tag table grew with the jobs run: {} then {} bytes",
        tags_bytes(&first),
        tags_bytes(&second)
    );
    // The first round's tasks were folded (records past the newest
    // 10,000 summed), though nothing called finish_task.
    let folded = second.folded.clone().expect("idle tasks folded");
    assert!(folded.tasks >= JOBS / 2 - 1_000, "{folded:?}");
    let leaking: Vec<u64> = second
        .tags
        .iter()
        .filter(|t| t.live.bytes > 0)
        .filter_map(|t| t.task)
        .collect();
    let expected: Vec<u64> = (0..2 * JOBS).filter(|i| i % 1000 == 7).collect();
    let mut got = leaking.clone();
    got.sort_unstable();
    assert_eq!(got, expected, "every leaking task keeps its tag");
    black_box(leaked);
}

/// What tagged tasks leave in the program's own static.
static KEPT_BY_TASKS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Issue 12: tokio's worker keeps a `Defer` buffer it first fills while a
/// task yields (held by the worker's scheduler context, on its stack):
/// that task's tag is on it, but it is the runtime's memory, shown apart
/// and not counted as the task's leak. What the tasks put in the
/// program's own static stays their leak.
fn a_runtime_buffer_made_while_a_task_ran_is_not_the_tasks_leak() {
    use leakprof::analysis::{Model, TaskScopedLeaks};
    use leakprof::FutureExt as _;
    const TASKS: u64 = 8;
    const KEPT: usize = 3000;
    let rec = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                tokio::spawn(
                    async move {
                        for _ in 0..20 {
                            tokio::task::yield_now().await;
                        }
                        let kept = black_box(vec![t as u8 | 1; KEPT]);
                        KEPT_BY_TASKS.lock().unwrap().push(kept);
                    }
                    .tagged(Tag::task(300 + t)),
                )
            })
            .collect();
        for h in tasks {
            h.await.unwrap();
        }
    });
    // The workers are parked, their scheduler contexts (and buffers) alive.
    let p = rec
        .snapshot_with_graph(&leakprof::GraphOptions::default())
        .unwrap();
    let leaks = TaskScopedLeaks::of(&Model::new(&p));
    let defer: Vec<_> = leaks
        .runtime_rows
        .iter()
        .filter(|r| r.site.contains("Defer>::defer"))
        .collect();
    assert!(!defer.is_empty(), "{:#?}", leaks.runtime_rows);
    assert!(defer.iter().all(|r| r.root == "root: stack"), "{defer:?}");
    assert!(
        leaks.rows.iter().all(|r| !r.site.contains("Defer")),
        "{:#?}",
        leaks.rows
    );
    let per_task: u64 = leaks.per_task.iter().map(|t| t.leaked.bytes).sum();
    assert_eq!(per_task, leaks.total.bytes);
    assert!(
        leaks.total.bytes >= TASKS * KEPT as u64,
        "the tasks' own leak stays theirs: {leaks:#?}"
    );
    assert!(leaks.total.bytes < TASKS * KEPT as u64 + 4096, "{leaks:#?}");
    drop(rt);
}

#[inline(never)]
fn tooth(n: usize) -> Vec<u8> {
    black_box(vec![3u8; n * 1024])
}

/// Item 8 of issue 9: the timeline never holds more than 2 x 16,384
/// points; older ones are decimated keeping each bucket's lowest and
/// highest points, so every tooth of a sawtooth keeps its top.
fn timeline_stays_bounded_and_keeps_the_sawtooth() {
    let rec = start();
    let teeth = 400;
    for t in 0..teeth {
        let mut held = Vec::new();
        for k in 0..100 {
            held.push(tooth(1 + (t % 3)));
            leakprof::mark(if k == 99 { "top" } else { "step" });
        }
        drop(held);
        leakprof::mark("bottom");
    }
    let p = rec.snapshot();
    assert!(
        p.timeline.len() <= 2 * 16_384 + 1,
        "{} points",
        p.timeline.len()
    );
    assert_eq!(
        p.timeline.len() as u64 + p.dropped.timeline_decimated,
        teeth as u64 * 101,
        "every point is kept or counted as decimated"
    );
    // Each tooth's top and bottom survive: as many local maxima as teeth.
    let live: Vec<u64> = p.timeline.iter().map(|x| x.live_bytes).collect();
    let tops = live.windows(2).filter(|w| w[1] + 50 * 1024 < w[0]).count();
    assert_eq!(tops, teeth, "every tooth ends in a drop");
    assert!(p.timeline.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
}

fn profile_saves_and_loads_back_equal() {
    let rec = start();
    leakprof::set_attribute("scenario", "unit-test");
    leakprof::describe_task(
        13,
        leakprof::TaskDescription::new()
            .external_id("msg-13")
            .actor("plain"),
    );
    let kept = leakprof::with_tag(Tag::task(13), || vec![1u8; 100]);
    let p = rec.snapshot();
    let dir = std::env::temp_dir().join(format!("leakprof-recorder-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("profile.json");
    p.save(&path).unwrap();
    let back = leakprof::format::load(&path).unwrap();
    assert_eq!(back, p);
    assert_eq!(
        back.meta.attributes.get("scenario").map(String::as_str),
        Some("unit-test")
    );
    let task = back.tasks.iter().find(|t| t.task == 13).unwrap();
    assert_eq!(task.external_id.as_deref(), Some("msg-13"));
    assert!(!back.modules.is_empty());
    assert!(
        back.modules[0].build_id.is_some(),
        "the test binary has a GNU build-id"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "atomic save leaves no temp file: {leftovers:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    drop(kept);
}

fn second_recorder_is_refused() {
    let rec = start();
    assert!(matches!(
        Recorder::start(Options::default()),
        Err(leakprof::StartError::AlreadyRunning)
    ));
    drop(rec);
    let again =
        Recorder::start(Options::default().timeline_interval_ms(0)).expect("restart after stop");
    let kept = leakprof::with_tag(Tag::task(14), || vec![1u8; 10]);
    assert_eq!(tag_live(&again.snapshot(), Tag::task(14)).bytes, 10);
    drop(kept);
}

// ---- heap graph -------------------------------------------------------

fn graph(rec: &Recorder) -> Profile {
    rec.snapshot_with_graph(&leakprof::GraphOptions::default())
        .expect("graph snapshot")
}

/// Live groups (blocks, bytes, unreachable) whose stack mentions `function`.
fn groups_from<'p>(
    p: &'p Profile,
    function: &'p str,
) -> impl Iterator<Item = &'p leakprof::format::LiveGroup> + 'p {
    p.live
        .iter()
        .filter(move |g| stack_has(p, g.stack, function))
}

fn owner_name<'p>(p: &'p Profile, g: &leakprof::format::LiveGroup) -> &'p str {
    let graph = p.graph.as_ref().expect("graph");
    &graph.owners[g.owner.expect("owner") as usize].name
}

#[inline(never)]
fn hold_on_stack(ready: &std::sync::Barrier, done: &std::sync::Barrier) -> usize {
    let held = black_box(vec![7u8; 1 << 20]);
    ready.wait();
    done.wait();
    black_box(&held).len()
}

fn stack_held_objects_are_never_reported_unreachable() {
    let rec = start();
    let threads = 4;
    let ready = std::sync::Barrier::new(threads + 1);
    let done = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| hold_on_stack(&ready, &done));
        }
        ready.wait();
        for round in 0..3 {
            let p = graph(&rec);
            let held: Vec<_> = groups_from(&p, "hold_on_stack")
                .filter(|g| g.bytes >= 1 << 20)
                .collect();
            let blocks: u64 = held.iter().map(|g| g.blocks).sum();
            assert_eq!(
                blocks, threads as u64,
                "round {round}: every stack-held buffer is in the graph"
            );
            assert!(
                held.iter().all(|g| !g.unreachable),
                "round {round}: a buffer held only by a live stack frame was reported unreachable"
            );
        }
        done.wait();
    });
}

struct CycleNode {
    peer: std::sync::Mutex<Option<std::sync::Arc<CycleNode>>>,
    #[allow(dead_code)] // held, never read: it is what the cycle leaks
    payload: Vec<u8>,
}

#[inline(never)]
fn leak_cycle() {
    use std::sync::{Arc, Mutex};
    let holder = leakprof::owner::scope_typed::<CycleNode, _>("error value", || {
        Arc::new(CycleNode {
            peer: Mutex::new(None),
            payload: vec![9u8; 1 << 20],
        })
    });
    let back = Arc::new(CycleNode {
        peer: Mutex::new(Some(holder.clone())),
        payload: Vec::new(),
    });
    *holder.peer.lock().unwrap() = Some(back);
}

fn leaked_arc_cycle_is_reported_with_its_members_and_owner() {
    let rec = start();
    // Made on another thread, whose stack is gone by the snapshot.
    std::thread::spawn(|| {
        for _ in 0..5 {
            leak_cycle();
        }
    })
    .join()
    .unwrap();
    let p = graph(&rec);
    assert_eq!(p.version, leakprof::format::VERSION_V2);
    let g = p.graph.as_ref().unwrap();
    let payloads: Vec<_> = groups_from(&p, "leak_cycle")
        .filter(|x| x.bytes >= 1 << 20)
        .collect();
    let payload_blocks: u64 = payloads.iter().map(|x| x.blocks).sum();
    assert_eq!(payload_blocks, 5);
    for x in &payloads {
        assert!(x.unreachable, "a leaked cycle's payload is unreachable");
        assert_eq!(
            owner_name(&p, x),
            "error value",
            "owned by the labelled object in the cycle"
        );
    }
    let cycles: Vec<_> = g
        .cycles
        .iter()
        .filter(|c| c.retained.bytes >= 1 << 20)
        .collect();
    assert_eq!(cycles.len(), 5, "one cycle per leak: {:?}", g.cycles);
    for c in &cycles {
        assert_eq!(c.members.blocks, 2, "two Arc blocks point at each other");
        assert!(c.retained.bytes >= (1 << 20) + c.members.bytes);
        assert_eq!(
            c.nodes.len(),
            2,
            "both members are kept for retainer chains"
        );
        for &n in &c.nodes {
            assert_eq!(g.nodes[n as usize].cycle, Some(c.id));
        }
    }
    let owner = g.owners.iter().find(|o| o.name == "error value").unwrap();
    assert!(owner.retained.bytes >= 5 << 20);
    assert_eq!(owner.kind, "labelled");
}

static REGISTERED_STORE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

#[inline(never)]
fn fill_registered_store() {
    let mut s = REGISTERED_STORE.lock().unwrap();
    for _ in 0..3 {
        s.push(vec![1u8; 256 << 10]);
    }
}

#[inline(never)]
fn fill_registered_arc(store: &std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    store.lock().unwrap().push(vec![2u8; 128 << 10]);
}

fn registered_containers_own_what_they_hold() {
    let rec = start();
    let _static = leakprof::owner::register("result store", &REGISTERED_STORE);
    fill_registered_store();
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let registration = leakprof::owner::register_arc("shared pool", &shared);
    fill_registered_arc(&shared);
    let p = graph(&rec);
    let store: u64 = groups_from(&p, "fill_registered_store")
        .filter(|g| g.bytes == g.blocks * (256 << 10))
        .filter(|g| owner_name(&p, g) == "result store")
        .map(|g| g.bytes)
        .sum();
    assert_eq!(store, 3 * (256 << 10), "the static store owns its buffers");
    let pool: u64 = groups_from(&p, "fill_registered_arc")
        .filter(|g| g.bytes == g.blocks * (128 << 10))
        .filter(|g| owner_name(&p, g) == "shared pool")
        .map(|g| g.bytes)
        .sum();
    assert_eq!(pool, 128 << 10, "the registered Arc owns its buffer");
    assert!(p
        .live
        .iter()
        .filter(|g| owner_name(&p, g) == "result store")
        .all(|g| !g.unreachable));
    // Unregistering removes the label.
    drop(registration);
    let p = graph(&rec);
    assert!(p
        .graph
        .as_ref()
        .unwrap()
        .owners
        .iter()
        .all(|o| o.name != "shared pool"));
    drop(shared);
}

fn graph_snapshots_under_concurrent_allocation_are_safe() {
    let rec = start();
    // Symbol loading (the first snapshot) is not what is timed below.
    let warm = black_box(churn_block(64));
    black_box(rec.snapshot());
    drop(warm);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..3usize {
            let stop = &stop;
            s.spawn(move || {
                let mut window: Vec<Vec<u8>> = Vec::new();
                let mut i = t;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i = i.wrapping_mul(6364136223846793005).wrapping_add(1);
                    window.push(churn_block(16 + (i >> 40) % 4000));
                    if window.len() > 300 {
                        window.swap_remove((i >> 20) % window.len());
                    }
                }
            });
        }
        let t0 = Instant::now();
        let mut n = 0;
        while !churned_long_enough(t0, n) {
            let p = graph(&rec);
            let g = p.graph.as_ref().unwrap();
            assert!(g.scanned.blocks > 0);
            assert!(g.thread_roots.contains("stopped"), "{}", g.thread_roots);
            let sum: u64 = p.live.iter().map(|x| x.bytes).sum();
            assert_eq!(
                sum, g.scanned.bytes,
                "groups and the scan saw the same blocks"
            );
            n += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

fn sampled_mode_refuses_a_graph() {
    let rec = Recorder::start(
        Options::default()
            .sample_mean_bytes(64 << 10)
            .timeline_interval_ms(0),
    )
    .unwrap();
    let err = rec
        .snapshot_with_graph(&leakprof::GraphOptions::default())
        .expect_err("no graph in sampled mode");
    assert!(err.to_string().contains("sampling"), "{err}");
}

// ---- the exact graph (issue 10) -------------------------------------

/// Planted sizes, distinct from anything else the process allocates.
#[allow(dead_code)] // held, never read: the sizes are what is looked for
struct NicheA([u64; 37]);
#[allow(dead_code)]
struct NicheB([u64; 41]);
#[allow(dead_code)]
struct Popped([u64; 43]);
#[allow(dead_code)]
struct Kept([u64; 47]);

static PLANTED_NICHE: std::sync::Mutex<Option<(Box<NicheA>, Box<NicheB>)>> =
    std::sync::Mutex::new(None);
// Boxes on purpose: the forgotten boxes are the leaks the case plants.
#[allow(clippy::vec_box)]
static PLANTED_VEC: std::sync::Mutex<Vec<Box<Popped>>> = std::sync::Mutex::new(Vec::new());
#[allow(clippy::vec_box)]
static PLANTED_KEPT: std::sync::Mutex<Vec<Box<Kept>>> = std::sync::Mutex::new(Vec::new());

/// Hides an address from the scan (a `usize` holding one is a candidate
/// pointer, rightly).
const HIDE: usize = 0x5a5a_0000_0000_0000;

/// Plants the facts in a frame below the snapshot's caller (whose stack
/// is not scanned): returns the forgotten addresses, hidden (`HIDE`).
#[inline(never)]
fn plant_stale_words() -> Vec<usize> {
    let mut forgotten = Vec::new();
    *PLANTED_NICHE.lock().unwrap() = Some((Box::new(NicheA([1; 37])), Box::new(NicheB([2; 41]))));
    let (a, b) = PLANTED_NICHE.lock().unwrap().take().unwrap();
    forgotten.push(&*a as *const NicheA as usize ^ HIDE);
    forgotten.push(&*b as *const NicheB as usize ^ HIDE);
    std::mem::forget(a);
    std::mem::forget(b);
    {
        let mut v = PLANTED_VEC.lock().unwrap();
        v.reserve_exact(4);
        for k in 0..4 {
            v.push(Box::new(Popped([k; 43])));
        }
        for _ in 0..3 {
            let p = v.pop().unwrap();
            forgotten.push(&*p as *const Popped as usize ^ HIDE);
            std::mem::forget(p);
        }
    }
    PLANTED_KEPT.lock().unwrap().push(Box::new(Kept([3; 47])));
    forgotten
}

/// Whether `addr` is still written somewhere in `[start, start + len)`.
fn word_present(start: usize, len: usize, addr: usize) -> bool {
    (0..len / 8).any(|k| {
        // SAFETY: the range is a live static of this test.
        unsafe { std::ptr::read_volatile((start + 8 * k) as *const usize) == addr }
    })
}

/// The planted facts of tests/types through the real scan: boxes taken
/// out of an `Option` in a static (`None` written into the niche only)
/// and boxes popped off a static `Vec` (stale copies past its `len`) and
/// forgotten are unreachable leaks, not "owned by" the static; the box the
/// `Vec` keeps is reachable from a root that names the static.
fn exact_graph_forgotten_boxes_behind_stale_words_are_unreachable() {
    let rec = start();
    let forgotten = black_box(plant_stale_words());
    // The stale words exist: the case tests something.
    let niche = &PLANTED_NICHE as *const _ as usize;
    let niche_len = std::mem::size_of_val(&PLANTED_NICHE);
    assert!(
        word_present(niche, niche_len, forgotten[1] ^ HIDE),
        "no stale word in the niche"
    );
    let buffer = PLANTED_VEC.lock().unwrap().as_ptr() as usize;
    assert!(
        word_present(buffer, 4 * 8, forgotten[2] ^ HIDE),
        "no stale slot"
    );

    let p = rec
        .snapshot_with_graph(&leakprof::GraphOptions::default().keep_type("plant_stale_words"))
        .expect("graph snapshot");
    let g = p.graph.as_ref().expect("graph");
    let sized = |size: usize| -> Vec<&leakprof::format::LiveGroup> {
        p.live
            .iter()
            .filter(|x| x.blocks > 0 && x.bytes == size as u64 * x.blocks)
            .collect()
    };
    for (what, size, count) in [
        ("niche box A", std::mem::size_of::<NicheA>(), 1),
        ("niche box B", std::mem::size_of::<NicheB>(), 1),
        ("popped boxes", std::mem::size_of::<Popped>(), 4),
    ] {
        let groups = sized(size);
        let unreachable: u64 = groups
            .iter()
            .filter(|x| x.unreachable)
            .map(|x| x.blocks)
            .sum();
        let total: u64 = groups.iter().map(|x| x.blocks).sum();
        assert_eq!(total, count, "{what}: {groups:?}");
        // The popped boxes: 3 forgotten, 1 still in the Vec.
        let want = if what == "popped boxes" { 3 } else { 1 };
        assert_eq!(unreachable, want, "{what} unreachable: {groups:?}");
    }
    let kept = sized(std::mem::size_of::<Kept>());
    assert!(kept.iter().all(|x| !x.unreachable), "{kept:?}");
    // The kept box's chain starts at a root that names the static.
    let node = g
        .nodes
        .iter()
        .position(|n| n.size == std::mem::size_of::<Kept>() as u64)
        .expect("the kept box is stored (keep_type)");
    let mut at = node;
    while let Some(parent) = g.nodes[at].parent {
        at = parent as usize;
    }
    let root = g.nodes[at].root.clone().unwrap_or_default();
    assert!(
        root.starts_with("root: static ") && root.contains('!') && root.ends_with("PLANTED_KEPT"),
        "root {root:?}"
    );
    let cov = g.coverage.as_ref().expect("coverage");
    assert!(cov.typed_statics > 0, "{cov:?}");
    black_box(forgotten);
}

/// libc's writable data (its `rw-p` mappings and the anonymous one right
/// after them, where its `.bss` continues).
fn libc_data() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut after_libc = false;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let path = line.split_whitespace().nth(5).unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap_or(0),
            usize::from_str_radix(b, 16).unwrap_or(0),
        );
        let libc = path.contains("/libc.so") || path.contains("/libc-");
        if perms.starts_with("rw") && (libc || (after_libc && path.is_empty())) {
            out.push((a, b));
        }
        after_libc = libc || (after_libc && path.is_empty() && perms.starts_with("rw"));
    }
    out
}

/// Whether a word of libc's writable data points into the 40 bytes at
/// the hidden address (unhidden only here, so no caller frame holds it).
#[inline(never)]
fn libc_points_into(hidden: usize, len: usize) -> bool {
    let x = black_box(hidden) ^ HIDE;
    libc_data().iter().any(|&(a, b)| {
        (a..b).step_by(8).any(|p| {
            // SAFETY: a readable, writable mapping of this process.
            let w = unsafe { std::ptr::read_volatile(p as *const usize) };
            (x..x + len).contains(&w)
        })
    })
}

/// Sizes the planted block is tried with (whether glibc's later requests
/// take the freed neighbour depends on its size class).
const PLANT_SIZES: [usize; 6] = [1000, 600, 1512, 2984, 808, 1256];

/// glibc's chunk for a request: 8 bytes of header, 16-byte granules (the
/// next chunk's first 8 bytes usable).
fn chunk_of(size: usize) -> usize {
    (size + 8 + 15) & !15
}

/// Plants a block `x` of `size` bytes right before a freed chunk of the same
/// size that glibc keeps in the main arena's bins (its tcache bin is
/// filled first): the arena's pointer to that chunk's header lands in
/// `x`'s last 8 bytes, and nothing else refers to `x`. Returns `x` hidden (`HIDE`)
/// when the layout came out that way.
#[inline(never)]
fn plant_behind_free_list(size: usize) -> Option<usize> {
    let layout = Layout::from_size_align(size, 8).unwrap();
    let chunk = chunk_of(size);
    // SAFETY: plain allocations of a non-zero size, freed with their layout.
    unsafe {
        let fill: Vec<*mut u8> = (0..7).map(|_| std::alloc::alloc(layout)).collect();
        // Until three chunks in a row come from the top of the heap (the
        // bins' scattered free chunks of this size used up).
        let (mut a, mut b) = (std::alloc::alloc(layout), std::alloc::alloc(layout));
        let mut c = std::alloc::alloc(layout);
        for _ in 0..1_000_000 {
            if b as usize == a as usize + chunk && c as usize == b as usize + chunk {
                break;
            }
            (a, b, c) = (b, c, std::alloc::alloc(layout)); // the older ones leak
        }
        let (x, y) = (a, b);
        black_box(c); // kept: y must not merge forward
        for p in fill {
            std::alloc::dealloc(p, layout); // the tcache bin is full now
        }
        std::alloc::dealloc(y, layout); // into the arena's bins
        let hidden = x as usize ^ HIDE;
        (y as usize == x as usize + chunk).then_some(hidden)
    }
}

/// The root a stored node's chain starts at ("" for a leak).
fn chain_root(p: &Profile, address: u64) -> String {
    let g = p.graph.as_ref().expect("graph");
    let mut at = g
        .nodes
        .iter()
        .position(|n| n.address == address)
        .expect("the planted block is stored (keep_type)");
    while let Some(parent) = g.nodes[at].parent {
        at = parent as usize;
    }
    g.nodes[at].root.clone().unwrap_or_default()
}

/// The apalis finding: glibc's own free-list pointer in
/// `main_arena` (libc's writable data) points at a chunk header inside
/// the last bytes of a live block and, read as a root, kept a leak
/// "owned by root: static". The exact graph never reads the allocator's
/// metadata as roots. The layout is glibc's to make: an attempt counts
/// when the arena word is there before, between and after the two
/// snapshots and the conservative scan roots the plant in static data
/// (the plant works); the case fails if no attempt counts. (A stale word on this thread's stack may still reach the
/// block: stacks stay conservative roots.)
fn exact_graph_never_roots_a_block_in_glibcs_free_list_word() {
    let rec = start();
    // Load the types once, so the measured snapshot allocates little.
    let _ = rec.snapshot_with_graph(&leakprof::GraphOptions::default());
    let options = leakprof::GraphOptions::default().keep_type("plant_behind_free_list");
    let mut tested = 0;
    // Attempts lost at each step: no layout, no arena word, moved by the
    // first snapshot (or not seen by its conservative scan), moved by the
    // second.
    let mut lost = [0; 4];
    for attempt in 0..36 {
        let size = PLANT_SIZES[attempt % PLANT_SIZES.len()];
        let Some(hidden) = plant_behind_free_list(size) else {
            lost[0] += 1;
            continue;
        };
        if !libc_points_into(hidden, size) {
            lost[1] += 1;
            continue;
        }
        let conservative = rec
            .snapshot_with_graph(&options.clone().conservative())
            .expect("graph");
        if !libc_points_into(hidden, size) {
            lost[2] += 1;
            continue;
        }
        let exact = rec.snapshot_with_graph(&options).expect("graph");
        if !libc_points_into(hidden, size) {
            lost[3] += 1; // the snapshot's own allocations moved the chunk
            continue;
        }
        // Unhidden only now (black_box: not computed before the snapshots
        // and kept in a register the scan reads).
        let x = (black_box(hidden) ^ HIDE) as u64;
        if !chain_root(&conservative, x).starts_with("root: static") {
            // The snapshot took the neighbour while it ran and gave it
            // back: the word was not there during its pause.
            lost[2] += 1;
            continue;
        }
        tested += 1;
        let after = chain_root(&exact, x);
        assert!(
            !after.starts_with("root: static"),
            "the exact graph roots a block only glibc's free list points into at {after:?}"
        );
    }
    assert!(
        tested > 0,
        "glibc never kept the planted layout (attempts lost by step: {lost:?})"
    );
}

#[allow(dead_code)] // held, never read: its size is what is looked for
struct Collected([u64; 53]);

#[allow(clippy::vec_box)] // boxes on purpose: the forgotten ones are the leaks
static COLLECTED: std::sync::Mutex<Vec<Box<Collected>>> = std::sync::Mutex::new(Vec::new());

/// Collects boxes in place into a `Vec<(u64, u64)>`'s buffer (so the
/// buffer's site says `(u64, u64)`), keeps them in a static, pops two and
/// forgets them. Returns the buffer's address, hidden.
#[inline(never)]
fn plant_in_place_collect() -> usize {
    let pairs: Vec<(u64, u64)> = (0..6).map(|k| (k, k)).collect();
    let before = pairs.as_ptr() as usize;
    let boxes: Vec<Box<Collected>> = pairs
        .into_iter()
        .map(|(k, _)| Box::new(Collected([k; 53])))
        .collect();
    assert_eq!(
        boxes.as_ptr() as usize,
        before,
        "std collected in place (the case needs it)"
    );
    let mut kept = COLLECTED.lock().unwrap();
    *kept = boxes;
    for _ in 0..2 {
        std::mem::forget(kept.pop());
    }
    before ^ HIDE
}

/// In-place `collect` reuses a `Vec<(u64, u64)>` buffer for a
/// `Vec<Box<Collected>>`: the buffer was made for pairs, the owning
/// static's field says boxes, and how many. Through the real scan the
/// owner's type wins: the two boxes popped off (stale slots past `len`)
/// are unreachable, the four kept are not. (The conservative scan keeps
/// all six: checked by hand with `GraphOptions::conservative`.)
fn exact_graph_in_place_collect_owner_type_wins_over_site() {
    let rec = start();
    let hidden = black_box(plant_in_place_collect());
    let p = rec
        .snapshot_with_graph(&leakprof::GraphOptions::default())
        .expect("graph");
    let size = std::mem::size_of::<Collected>() as u64;
    let (mut kept, mut lost) = (0, 0);
    for x in p
        .live
        .iter()
        .filter(|x| x.blocks > 0 && x.bytes == size * x.blocks)
    {
        if x.unreachable {
            lost += x.blocks;
        } else {
            kept += x.blocks;
        }
    }
    assert_eq!((kept, lost), (4, 2), "{:?}", p.live);
    let cov = p
        .graph
        .as_ref()
        .unwrap()
        .coverage
        .as_ref()
        .expect("coverage");
    assert!(
        cov.declared_blocks >= 5,
        "the buffer and the kept boxes: {cov:?}"
    );
    black_box(hidden);
}
