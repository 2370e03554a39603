//! Reporter tests on hand-built profiles (given these allocations, when
//! analysed and rendered, then these rows, figures and files), and golden
//! outputs of recorded ones.
//!
//! Golden files live in tests/golden/: every renderer's output for the
//! recorded profiles in profiles/ (real runs, normalised).
//! `tools/gen-golden-profiles` records the profiles again and rewrites the
//! golden files (`BLESS=1 cargo test --test reporter golden_outputs` alone
//! rewrites the outputs), so a review diff shows exactly what changed.

mod support;

use std::path::PathBuf;

use leakprof::analysis::check::{check, Limits, Verdict};
use leakprof::analysis::{
    grouping, merge, relative_to, Behaviour, Comparison, LeakSlope, Model, Partition, Report,
    SlopeSource, Summary, TaskScopedLeaks,
};
use leakprof::format::{Profile, TagInfo};
use leakprof::render::flamegraph::{folded, FlameGroup, Metric};
use leakprof::render::{self, Command, Options};
use support::*;

fn golden(name: &str, actual: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    if expected != actual {
        let shown = String::from_utf8_lossy(actual);
        panic!(
            "{} differs from the output (run with BLESS=1 to accept). Output:\n{}",
            path.display(),
            &shown[..shown.len().min(4000)]
        );
    }
}

fn render(name: &str, command: Command, profile: &Profile, options: &Options) -> Vec<u8> {
    let r = render::find(command, name).unwrap_or_else(|| panic!("renderer {name}"));
    render::render_to_vec(r, &Model::new(profile), options).unwrap()
}

fn rows(p: &Partition) -> Vec<(String, u64, u64)> {
    p.rows
        .iter()
        .map(|r| (r.kind.clone(), r.count, r.size))
        .collect()
}

#[test]
fn partition_by_owner_names_the_error_value_and_falls_back_to_sites() {
    let p = exception_run(true);
    let model = Model::new(&p);
    let part = Partition::of(&model, grouping("owner").unwrap());
    let n = RETRIES as u64;
    assert_eq!(
        rows(&part),
        vec![
            (
                "site: leakprof::lab::scenarios::exception::allocate_payload".to_string(),
                n,
                n * PAYLOAD
            ),
            (
                "site: leakprof::lab::broker::Broker::enqueue".to_string(),
                1,
                BROKER
            ),
            ("error value".to_string(), n, n * ERROR_VALUE),
            ("site: <[u8; 8] as app::Odd name>::make".to_string(), 1, 16),
        ]
    );
    assert_eq!(part.total.bytes, p.totals.live.bytes);
    let last = part.rows.last().unwrap();
    assert_eq!(last.cumulative, part.total.bytes);
    assert_eq!(last.cumulative_pct, 100.0);
}

#[test]
fn types_come_from_constructor_frames_or_owner_scopes_else_unknown() {
    let p = exception_run(true);
    let part = Partition::of(&Model::new(&p), grouping("type").unwrap());
    let kinds: Vec<String> = part.rows.iter().map(|r| r.kind.clone()).collect();
    // The payload's Vec<u8> from `<Vec<u8>>::with_capacity`; the error's
    // Box<TaskError> from `<Box<TaskError>>::new`; nothing says the broker
    // buffer's type, so it is unknown (two stacks).
    assert_eq!(kinds, vec!["Vec<u8>", "unknown", "Box<TaskError>"]);
}

#[test]
fn task_and_retry_partitions_split_by_tag() {
    let p = exception_run(true);
    let model = Model::new(&p);
    let by_retry = Partition::of(&model, grouping("retry").unwrap());
    assert_eq!(by_retry.rows.len(), RETRIES as usize + 1);
    assert!(by_retry
        .rows
        .iter()
        .any(|r| r.kind == "retry 0" && r.size == PAYLOAD + ERROR_VALUE));
    assert!(by_retry
        .rows
        .iter()
        .any(|r| r.kind == "untagged" && r.size == BROKER + 16));
    let by_task = Partition::of(&model, grouping("task").unwrap());
    assert_eq!(
        rows(&by_task)[0],
        (
            "task 1".to_string(),
            2 * RETRIES as u64,
            RETRIES as u64 * (PAYLOAD + ERROR_VALUE)
        )
    );
}

#[test]
fn leak_slope_is_payload_plus_error_value_per_retry() {
    let p = exception_run(true);
    let s = LeakSlope::of(&p, 0).unwrap();
    assert!(
        (s.bytes_per_retry - (PAYLOAD + ERROR_VALUE) as f64).abs() < 1e-6,
        "{s:?}"
    );
    assert!((s.r2 - 1.0).abs() < 1e-9);
    assert_eq!((s.points, s.first_retry, s.last_retry), (3, 0, 2));
    let fixed = LeakSlope::of(&exception_run(false), 0).unwrap();
    assert_eq!(fixed.bytes_per_retry, 0.0);
    // Warm-up past all but one failure leaves nothing to fit.
    assert!(LeakSlope::of(&p, 2).is_none());
}

#[test]
fn task_scoped_leaks_are_the_blocks_of_ended_retries_by_site_and_type() {
    let p = exception_run(true);
    let r = Report::of(&p, grouping("owner").unwrap());
    let t = &r.task_scoped;
    // Retries 0..3 ended: their payloads; every error value (their scopes
    // ended). The running retry's payload is not a leak yet, and untagged
    // memory never is.
    let ended = RETRIES as u64 - 1;
    assert_eq!(
        t.total.bytes,
        ended * PAYLOAD + RETRIES as u64 * ERROR_VALUE
    );
    assert_eq!(
        t.rows[0].site,
        "leakprof::lab::scenarios::exception::allocate_payload (exception.rs:42)"
    );
    assert_eq!(
        (
            t.rows[0].type_name.as_str(),
            t.rows[0].count,
            t.rows[0].tasks
        ),
        ("Vec<u8>", ended, 1)
    );
    assert_eq!(t.rows[1].type_name, "Box<TaskError>");
    let fixed = Report::of(&exception_run(false), grouping("owner").unwrap());
    assert_eq!(fixed.task_scoped.total.bytes, 0);
}

#[test]
fn summary_has_the_seed_figures_and_decides_behaviour() {
    let leak = Summary::of(&exception_run(true));
    let fixed = Summary::of(&exception_run(false));
    assert_eq!(leak.min_rss_bytes, BROKER + 16 + 2 * MIB);
    assert_eq!(leak.growth_bytes, leak.max_rss_bytes - leak.min_rss_bytes);
    assert_eq!(leak.retries, RETRIES as u64 - 1);
    assert_eq!(leak.failures, RETRIES as u64 - 1);
    assert_eq!(leak.behaviour, Behaviour::ContinuousAccumulation);
    assert_eq!(fixed.behaviour, Behaviour::Stable);
    assert_eq!(leak.duration_s, 0.41);
    let json = serde_json::to_value(&leak).unwrap();
    for key in [
        "min_rss_bytes",
        "max_rss_bytes",
        "mean_rss_bytes",
        "growth_bytes",
        "surviving_bytes",
        "duration_s",
        "retries",
        "leak_per_retry_bytes",
        "leak_per_retry_r2",
    ] {
        assert!(json.get(key).is_some(), "summary.json lacks {key}");
    }
}

#[test]
fn relative_to_a_baseline_shows_only_new_memory() {
    let now = exception_run(true);
    let mut before = exception_run(true);
    // The baseline was taken after retry 0: drop later retries' groups.
    before
        .live
        .retain(|g| before.tags[g.tag as usize].retry.map_or(true, |r| r == 0));
    let rel = relative_to(&now, &before);
    let untagged_or_first = rel
        .live
        .iter()
        .any(|g| rel.tags[g.tag as usize].retry.map_or(true, |r| r == 0));
    assert!(!untagged_or_first, "baseline memory must be subtracted");
    assert_eq!(
        rel.totals.live.bytes,
        (RETRIES as u64 - 1) * (PAYLOAD + ERROR_VALUE)
    );
    let same = relative_to(&now, &now);
    assert_eq!(same.totals.live.bytes, 0);
    assert!(same.live.is_empty());
}

#[test]
fn merge_sums_by_symbolized_stack_and_tag_and_keeps_totals() {
    let a = exception_run(true);
    let mut b = exception_run(true);
    // Another process: the same code at other addresses, frames in another order.
    b.meta.pid = 7;
    b.meta.start_unix_ms += 1000;
    for f in &mut b.frames {
        f.address += 0x1000;
    }
    b.frames.reverse();
    let n = b.frames.len() as u32;
    for s in &mut b.stacks {
        for f in &mut s.frames {
            *f = n - 1 - *f;
        }
    }
    let m = merge(&[a.clone(), b]).unwrap();
    assert_eq!(m.stacks.len(), a.stacks.len());
    assert_eq!(m.frames.len(), a.frames.len());
    assert_eq!(m.tags.len(), a.tags.len());
    assert_eq!(m.totals.live.bytes, 2 * a.totals.live.bytes);
    assert_eq!(
        m.live.iter().map(|g| g.bytes).sum::<u64>(),
        2 * a.totals.live.bytes
    );
    // Timelines aligned on wall-clock time: the second starts 1 s later.
    assert_eq!(m.timeline.len(), 2 * a.timeline.len());
    assert_eq!(
        m.timeline.last().unwrap().t_ns,
        1_000_000_000 + a.timeline.last().unwrap().t_ns
    );
    assert_eq!(
        m.timeline.last().unwrap().rss_bytes,
        2 * a.timeline.last().unwrap().rss_bytes
    );
    // It is a valid profile.
    let bytes = serde_json::to_vec(&m).unwrap();
    leakprof::format::load_bytes(std::path::Path::new("merged.json"), &bytes).unwrap();
}

#[test]
fn merge_keeps_apart_tasks_that_share_a_number_in_different_processes() {
    // Both worker processes number their first message 1: different
    // messages, so two tasks in the merge, each with its own tags and
    // timeline points.
    let a = exception_run(true);
    let mut b = exception_run(true);
    b.meta.start_unix_ms += 1000;
    b.tasks[0].external_id = Some("msg-0002".into());
    let m = merge(&[a.clone(), b]).unwrap();
    let mut ids: Vec<(u64, &str)> = m
        .tasks
        .iter()
        .map(|t| (t.task, t.external_id.as_deref().unwrap()))
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], (1, "msg-0001"));
    assert_eq!(ids[1].1, "msg-0002");
    let second = ids[1].0;
    assert_ne!(second, 1);
    let tagged = |task: u64| m.tags.iter().filter(|t| t.task == Some(task)).count();
    assert_eq!(tagged(1), tagged(second));
    let marked = |task: u64| m.timeline.iter().filter(|p| p.task == Some(task)).count();
    assert_eq!(marked(1), marked(second));
    // Tags without a task are shared; each task brings its own.
    assert_eq!(m.tags.len(), a.tags.len() + tagged(second));
    let bytes = serde_json::to_vec(&m).unwrap();
    leakprof::format::load_bytes(std::path::Path::new("merged.json"), &bytes).unwrap();
}

#[test]
fn merge_joins_a_message_retried_in_another_process_into_one_task() {
    // Process b saw msg-0001 first as its task 2 and dead-lettered it last.
    let a = exception_run(true);
    let mut b = exception_run(true);
    b.meta.start_unix_ms += 1000;
    b.tasks[0].task = 2;
    b.tasks[0].retries += 1;
    b.tasks[0].last_ns = b.tasks[0].last_ns.map(|t| t + 1);
    b.tasks[0].outcome = Some("dead-lettered".into());
    for t in &mut b.tags {
        if t.task == Some(1) {
            t.task = Some(2);
        }
    }
    for p in &mut b.timeline {
        if p.task == Some(1) {
            p.task = Some(2);
        }
    }
    let m = merge(&[a.clone(), b]).unwrap();
    assert_eq!(m.tasks.len(), 1, "{:?}", m.tasks);
    assert_eq!(m.tasks[0].task, 1);
    assert_eq!(m.tasks[0].retries, a.tasks[0].retries + 1);
    assert_eq!(m.tasks[0].outcome.as_deref(), Some("dead-lettered"));
    assert_eq!(m.tags.len(), a.tags.len());
    assert!(m.timeline.iter().all(|p| p.task.map_or(true, |t| t == 1)));
}

#[test]
fn checks_give_a_one_line_verdict() {
    let leak = exception_run(true);
    let fixed = exception_run(false);
    let per_retry = Limits::new().max_leak_per_retry(64 * KIB);
    assert!(check(&fixed, &per_retry).is_pass());
    let v = check(&leak, &per_retry);
    assert!(matches!(v, Verdict::Fail(_)));
    assert!(
        v.reason()
            .starts_with("leak per retry 128.1 KiB exceeds the limit 64.0 KiB"),
        "{}",
        v.reason()
    );
    assert!(!v.reason().contains('\n'));
    assert!(matches!(
        check(&leak, &per_retry.clone().warmup(2)),
        Verdict::Inconclusive(_)
    ));
    let owned = Limits::new().max_owned("error value", 100);
    assert!(check(&leak, &owned)
        .reason()
        .contains("owner \"error value\" keeps 256 B alive"));
    assert!(check(&fixed, &Limits::new().max_surviving(PAYLOAD + BROKER + 16)).is_pass());
    assert!(!check(&fixed, &Limits::new().max_surviving(PAYLOAD)).is_pass());
    leakprof::analysis::assert_no_leak(&fixed, &per_retry);
    let panicked =
        std::panic::catch_unwind(|| leakprof::analysis::assert_no_leak(&leak, &per_retry));
    assert!(panicked.is_err());
}

#[test]
fn comparison_reads_like_the_seed_table() {
    let c = Comparison::of(
        &exception_run(true),
        &exception_run(false),
        "original",
        "fixed",
    );
    let names: Vec<&str> = c.metrics.iter().map(|m| m.name).collect();
    assert_eq!(
        &names[..4],
        ["Min Memory", "Max Memory", "Mean Memory", "Memory Growth"]
    );
    assert_eq!(c.metrics[0].improvement, "-");
    assert!(
        c.metrics[3].improvement.ends_with("reduction"),
        "{:?}",
        c.metrics[3]
    );
    assert_eq!(
        c.behaviours(),
        (Behaviour::ContinuousAccumulation, Behaviour::Stable)
    );
    assert_eq!(
        c.owners[0].kind,
        "site: leakprof::lab::scenarios::exception::allocate_payload"
    );
    assert_eq!(c.owners[0].delta_bytes, -(3 * PAYLOAD as i64));
}

#[test]
fn folded_stacks_trim_the_allocator_and_sanitise_symbols() {
    let p = exception_run(true);
    let lines = folded(&Model::new(&p), Metric::Surviving, FlameGroup::None).unwrap();
    assert!(lines.iter().all(|l| !l.contains("__rust_alloc")));
    let odd = lines.iter().find(|l| l.contains("Odd")).unwrap();
    // `;` and spaces inside a symbol would break the folded format.
    assert_eq!(
        odd,
        "tokio::runtime::task::harness::Harness<T,S>::poll;<[u8,_8]_as_app::Odd_name>::make 16"
    );
    for l in &lines {
        let (stack, value) = l.rsplit_once(' ').unwrap();
        assert!(!stack.contains(' '));
        value.parse::<u64>().unwrap();
    }
    let grouped = folded(&Model::new(&p), Metric::Surviving, FlameGroup::Retry).unwrap();
    assert!(grouped.iter().any(|l| l.starts_with("retry_2;")));
    assert!(folded(&Model::new(&p), Metric::Allocated, FlameGroup::Task).is_err());
}

/// A profile of `profiles/`: real runs, normalised by
/// `tools/gen-golden-profiles`, which also rewrites the golden outputs.
fn recorded(name: &str) -> Profile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name);
    leakprof::format::load(&path)
        .unwrap_or_else(|e| panic!("{e} (regenerate it: tools/gen-golden-profiles)"))
}

/// Every renderer's output for the recorded `exception` runs (1 MiB
/// payloads, 6 attempts, `original` and `fixed`), byte for byte.
#[test]
fn golden_outputs_of_the_exception_scenario() {
    let leak = recorded("exception-original.json");
    let fixed = recorded("exception-fixed.json");
    let o = Options::default();
    golden(
        "exception-original.report.txt",
        &render("text", Command::Report, &leak, &o),
    );
    golden(
        "exception-original.report.json",
        &render("json", Command::Report, &leak, &o),
    );
    golden(
        "exception-original.by-site.csv",
        &render(
            "csv",
            Command::Report,
            &leak,
            &o.clone().by(grouping("site").unwrap()),
        ),
    );
    golden(
        "exception-fixed.report.txt",
        &render("text", Command::Report, &fixed, &o),
    );
    golden(
        "exception-original.folded",
        &render("folded", Command::Flamegraph, &leak, &o),
    );
    golden(
        "exception-original.svg",
        &render("svg", Command::Flamegraph, &leak, &o),
    );
    golden(
        "exception-original.timeline.csv",
        &render("timeline-csv", Command::Export, &leak, &o),
    );
    golden(
        "exception-original.timeline.svg",
        &render("timeline-svg", Command::Timeline, &leak, &o),
    );
    golden(
        "exception-original.dhat.json",
        &render("dhat", Command::Export, &leak, &o),
    );
    let c = Comparison::of(&leak, &fixed, "original", "fixed");
    let mut diff = Vec::new();
    leakprof::render::comparison::write_text(&c, 10, &mut diff).unwrap();
    golden("exception.diff.txt", &diff);
}

#[test]
fn text_report_has_guppys_header_columns_and_more_rows_line() {
    let p = exception_run(true);
    let text = String::from_utf8(render(
        "text",
        Command::Report,
        &p,
        &Options::default().top(Some(2)),
    ))
    .unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!(
            "Partition of a set of {} allocations. Total size = {} bytes.",
            p.totals.live.blocks, p.totals.live.bytes
        )
    );
    assert_eq!(
        lines.next().unwrap(),
        " Index  Count   %     Size   % Cumulative  % Kind (owner)"
    );
    assert!(lines
        .next()
        .unwrap()
        .starts_with("     0      4  40   524288  99    524288  99 site: "));
    lines.next();
    assert_eq!(
        lines.next().unwrap(),
        "<2 more rows. Use --top 4 to view them.>"
    );
}

#[test]
fn json_report_keeps_its_documented_keys() {
    let p = exception_run(true);
    let v: serde_json::Value =
        serde_json::from_slice(&render("json", Command::Report, &p, &Options::default())).unwrap();
    assert_eq!(v["schema"], "leakprof-report/1");
    assert_eq!(v["total_surviving_bytes"], p.totals.live.bytes);
    assert_eq!(v["total_surviving_blocks"], p.totals.live.blocks);
    assert_eq!(v["rss_bytes"], p.totals.rss_bytes);
    assert_eq!(v["dropped_events"], 0);
    assert_eq!(v["retries"], 3);
    assert_eq!(v["leak_per_retry_bytes"], (PAYLOAD + ERROR_VALUE) as f64);
    assert_eq!(v["leak_per_retry_r2"], 1.0);
    let row = &v["rows"][0];
    for key in [
        "index",
        "count",
        "count_pct",
        "size",
        "size_pct",
        "cumulative",
        "cumulative_pct",
        "kind",
    ] {
        assert!(row.get(key).is_some(), "row lacks {key}");
    }
    assert_eq!(v["rows"].as_array().unwrap().len(), 4);
}

/// Parses an SVG with quick-xml; returns every text node.
fn svg_texts(svg: &[u8]) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(svg);
    let mut texts = Vec::new();
    let mut buf = Vec::new();
    let mut depth = 0i32;
    let mut saw_svg = false;
    loop {
        match reader
            .read_event_into(&mut buf)
            .unwrap_or_else(|e| panic!("malformed SVG at {}: {e}", reader.buffer_position()))
        {
            Event::Start(e) => {
                saw_svg |= e.name().as_ref() == b"svg";
                depth += 1;
            }
            Event::End(_) => depth -= 1,
            Event::Empty(e) => saw_svg |= e.name().as_ref() == b"svg",
            Event::Text(t) => texts.push(t.unescape().unwrap().into_owned()),
            Event::CData(t) => texts.push(String::from_utf8_lossy(&t).into_owned()),
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    assert_eq!(depth, 0, "unbalanced elements");
    assert!(saw_svg, "no <svg> element");
    texts
}

#[test]
fn flamegraph_svg_is_well_formed_with_frames_and_titles() {
    let p = exception_run(true);
    let svg = render("svg", Command::Flamegraph, &p, &Options::default());
    let texts = svg_texts(&svg).join("\n");
    assert!(texts.contains("Surviving memory: scenario exception, middleware original"));
    assert!(texts.contains("516.3 KiB surviving in 10 blocks"));
    assert!(texts.contains("leakprof::lab::scenarios::exception::allocate_payload"));
    assert!(!texts.contains("__rust_alloc"));
    let grouped = render(
        "svg",
        Command::Flamegraph,
        &p,
        &Options::default().group_by(FlameGroup::Owner),
    );
    assert!(svg_texts(&grouped).join("\n").contains("error_value"));
}

#[test]
fn flamegraph_of_an_empty_profile_is_a_valid_svg_that_says_so() {
    let p = Profile::empty("idle");
    let svg = render("svg", Command::Flamegraph, &p, &Options::default());
    let texts = svg_texts(&svg).join("\n");
    assert!(texts.contains("Nothing to draw"), "{texts}");
}

#[test]
fn differential_flamegraph_is_well_formed() {
    let (a, b) = (exception_run(true), exception_run(false));
    let fa = folded(&Model::new(&a), Metric::Surviving, FlameGroup::None).unwrap();
    let fb = folded(&Model::new(&b), Metric::Surviving, FlameGroup::None).unwrap();
    let mut out = Vec::new();
    leakprof::render::flamegraph::write_differential(
        &fa,
        &fb,
        "Differential",
        "fixed vs original",
        "bytes",
        1200,
        &mut out,
    )
    .unwrap();
    let texts = svg_texts(&out).join("\n");
    assert!(texts.contains("Differential"));
    assert!(texts.contains("allocate_payload"));
}

#[test]
fn timeline_chart_is_well_formed_with_labels_and_overlays() {
    use leakprof::render::timeline::{plot_svg, Run};
    let csv = render(
        "timeline-csv",
        Command::Export,
        &exception_run(true),
        &Options::default(),
    );
    let original = Run::parse_csv(std::str::from_utf8(&csv).unwrap(), "original").unwrap();
    assert_eq!(original.samples.len(), exception_run(true).timeline.len());
    let fixed = Run::of_profile(&exception_run(false), "fixed");
    let mut svg = Vec::new();
    plot_svg(&[original, fixed], "Memory usage", 1000, &mut svg).unwrap();
    let texts = svg_texts(&svg).join("\n");
    for expected in [
        "Memory usage",
        "time (s)",
        "memory (MiB)",
        "original: RSS",
        "fixed: RSS",
        "original: retry (after failure)",
    ] {
        assert!(texts.contains(expected), "missing {expected:?} in {texts}");
    }
    assert!(Run::parse_csv("a,b\n1,2\n", "x")
        .unwrap_err()
        .contains("not a leakprof timeline CSV"));
    assert!(Run::parse_csv("time_s,rss_mib,live_mib\n1,x,2\n", "x")
        .unwrap_err()
        .starts_with("line 2: rss_mib"));
}

#[test]
fn untagged_memory_is_counted_in_totals_but_never_as_a_task_scoped_leak() {
    let mut b = Builder::new("untagged");
    let f = b.frame("app::cache::fill", Some("src/cache.rs"), Some(9));
    let s = b.stack(&[f]);
    let ended = b.tag(TagInfo {
        task: Some(3),
        first_ns: Some(1),
        last_ns: Some(2),
        ..TagInfo::default()
    });
    b.alloc(s, 0, 5, 100, 5);
    b.alloc(s, ended, 2, 10, 2);
    b.p.meta.snapshot_ns = 10;
    let p = b.finish();
    let r = Report::of(&p, grouping("site").unwrap());
    assert_eq!(r.partition.total.bytes, 520);
    assert_eq!(r.task_scoped.total.bytes, 20);
    assert_eq!(r.task_scoped.per_task[0].task, Some(3));
}

/// A protobuf wire-format reader written for this test, so the pprof
/// export is checked by a decoder that is not its encoder.
mod wire {
    #[derive(Debug, Clone)]
    pub enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
    }

    pub fn varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    pub fn fields(buf: &[u8]) -> Vec<(u64, Value<'_>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let key = varint(buf, &mut pos);
            let (field, wire) = (key >> 3, key & 7);
            let v = match wire {
                0 => Value::Varint(varint(buf, &mut pos)),
                2 => {
                    let len = varint(buf, &mut pos) as usize;
                    let v = Value::Bytes(&buf[pos..pos + len]);
                    pos += len;
                    v
                }
                1 => {
                    pos += 8;
                    continue;
                }
                5 => {
                    pos += 4;
                    continue;
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push((field, v));
        }
        out
    }

    /// Repeated scalar fields may be packed (one length-delimited run).
    pub fn repeated_varints(fields: &[(u64, Value<'_>)], field: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (f, v) in fields {
            if *f != field {
                continue;
            }
            match v {
                Value::Varint(x) => out.push(*x),
                Value::Bytes(b) => {
                    let mut pos = 0;
                    while pos < b.len() {
                        out.push(varint(b, &mut pos));
                    }
                }
            }
        }
        out
    }

    pub fn varint_field(fields: &[(u64, Value<'_>)], field: u64) -> u64 {
        fields
            .iter()
            .find_map(|(f, v)| match v {
                Value::Varint(x) if *f == field => Some(*x),
                _ => None,
            })
            .unwrap_or(0)
    }

    pub fn messages<'a>(fields: &[(u64, Value<'a>)], field: u64) -> Vec<&'a [u8]> {
        fields
            .iter()
            .filter_map(|(f, v)| match v {
                Value::Bytes(b) if *f == field => Some(*b),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn pprof_export_decodes_with_an_independent_reader() {
    use std::io::Read;
    let p = exception_run(true);
    let gz = render("pprof", Command::Export, &p, &Options::default());
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let top = wire::fields(&raw);
    let strings: Vec<String> = wire::messages(&top, 6)
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(
        strings[0], "",
        "string table must start with the empty string"
    );
    let types: Vec<(String, String)> = wire::messages(&top, 1)
        .iter()
        .map(|m| {
            let f = wire::fields(m);
            (
                strings[wire::varint_field(&f, 1) as usize].clone(),
                strings[wire::varint_field(&f, 2) as usize].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("inuse_space", "bytes"),
        ("inuse_objects", "count"),
        ("alloc_space", "bytes"),
        ("alloc_objects", "count"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(types, expected);
    let mut sums = [0u64; 4];
    let samples = wire::messages(&top, 2);
    let locations = wire::messages(&top, 4);
    let functions = wire::messages(&top, 5);
    for s in &samples {
        let f = wire::fields(s);
        let values = wire::repeated_varints(&f, 2);
        assert_eq!(values.len(), 4);
        for (i, v) in values.iter().enumerate() {
            sums[i] += v;
        }
        for loc in wire::repeated_varints(&f, 1) {
            assert!(
                loc >= 1 && loc as usize <= locations.len(),
                "location id {loc} out of range"
            );
        }
    }
    assert_eq!(
        sums,
        [
            p.totals.live.bytes,
            p.totals.live.blocks,
            p.totals.allocated.bytes,
            p.totals.allocated.blocks
        ]
    );
    // Every location's lines name functions that exist; the payload site is there.
    let names: Vec<String> = functions
        .iter()
        .map(|m| strings[wire::varint_field(&wire::fields(m), 2) as usize].clone())
        .collect();
    assert!(names
        .iter()
        .any(|n| n == "leakprof::lab::scenarios::exception::allocate_payload"));
    assert!(!names.iter().any(|n| n == "__rust_alloc"));
    let mappings = wire::messages(&top, 3);
    assert_eq!(mappings.len(), 1);
    assert_eq!(
        strings[wire::varint_field(&wire::fields(mappings[0]), 5) as usize],
        "/opt/lab/bin/lab-worker"
    );
    assert_eq!(
        strings[wire::varint_field(&top, 14) as usize],
        "inuse_space"
    );
}

#[test]
fn dhat_export_has_one_program_point_per_frame_list() {
    let p = exception_run(true);
    let v: serde_json::Value =
        serde_json::from_slice(&render("dhat", Command::Export, &p, &Options::default())).unwrap();
    assert_eq!(v["dhatFileVersion"], 2);
    assert_eq!(v["ftbl"][0], "[root]");
    let pps = v["pps"].as_array().unwrap();
    let mut lists: Vec<String> = pps.iter().map(|pp| pp["fs"].to_string()).collect();
    let n = lists.len();
    lists.sort();
    lists.dedup();
    assert_eq!(lists.len(), n, "duplicate frame lists");
    let eb: u64 = pps.iter().map(|pp| pp["eb"].as_u64().unwrap()).sum();
    let tb: u64 = pps.iter().map(|pp| pp["tb"].as_u64().unwrap()).sum();
    assert_eq!(eb, p.totals.live.bytes);
    assert_eq!(tb, p.totals.allocated.bytes);
}

/// A version-2 profile: the heap graph names owners and referring paths.
fn with_graph() -> Profile {
    use leakprof::format::{Graph, Owner, Via, VERSION_V2};
    let mut p = exception_run(true);
    p.version = VERSION_V2;
    p.graph = Some(Graph {
        thread_roots: "quiescent".into(),
        owners: vec![
            Owner {
                name: "error value".into(),
                kind: "labelled".into(),
                type_name: Some("TaskError".into()),
                objects: RETRIES as u64,
                ..Owner::default()
            },
            Owner {
                name: "site: leakprof::lab::broker::Broker::enqueue".into(),
                kind: "site".into(),
                objects: 1,
                ..Owner::default()
            },
        ],
        vias: vec![Via {
            holder: "TaskError".into(),
            offset: Some(8),
            field: None,
        }],
        ..Graph::default()
    });
    // The payloads are held by the error values, at offset 8.
    for g in &mut p.live {
        if g.bytes % PAYLOAD == 0 {
            g.owner = Some(0);
            g.via = Some(0);
        }
    }
    p
}

#[test]
fn heap_graph_owners_and_vias_take_precedence() {
    let p = with_graph();
    let bytes = serde_json::to_vec(&p).unwrap();
    leakprof::format::load_bytes(std::path::Path::new("v2.json"), &bytes).unwrap();
    let model = Model::new(&p);
    let owners = Partition::of(&model, grouping("owner").unwrap());
    assert_eq!(owners.rows[0].kind, "error value");
    assert_eq!(
        owners.rows[0].size,
        RETRIES as u64 * (PAYLOAD + ERROR_VALUE)
    );
    let vias = Partition::of(&model, grouping("via").unwrap());
    assert_eq!(
        rows(&vias)[0],
        (
            "TaskError +8".to_string(),
            RETRIES as u64,
            RETRIES as u64 * PAYLOAD
        )
    );
    let merged = merge(&[p.clone(), p.clone()]).unwrap();
    assert_eq!(merged.version, 2);
    let g = merged.graph.as_ref().unwrap();
    assert_eq!(
        (g.owners.len(), g.owners[0].objects),
        (2, 2 * RETRIES as u64)
    );
    let m = Model::new(&merged);
    assert_eq!(
        Partition::of(&m, grouping("owner").unwrap()).rows[0].size,
        2 * owners.rows[0].size
    );
    // Without a graph, `--by via` says so instead of guessing.
    let v1 = Partition::of(&Model::new(&exception_run(true)), grouping("via").unwrap());
    assert_eq!(v1.rows[0].kind, "unknown (no heap graph)");
}

/// Ten tasks run interleaved, each of their four attempts failing and
/// leaving `payload` bytes alive, among `clean` tasks that leave nothing;
/// the timeline's marks (one per failure, in time order) see every task's
/// leak at once, so live bytes against the retry number scatter.
fn interleaved_retries(payload: u64, clean: u64) -> Profile {
    let mut b = Builder::new("apalis-worker");
    let alloc = b.frame("__rust_alloc", None, None);
    let make = b.frame(
        "apalis_worker::make_payload",
        Some("examples/apalis_worker.rs"),
        Some(64),
    );
    let stack = b.stack(&[alloc, make]);
    let mut t_ms = 0;
    let mut live = 0;
    for attempt in 0..4u32 {
        for task in 0..10u64 {
            t_ms += 1;
            let tag = b.tag(TagInfo {
                task: Some(task),
                retry: Some(attempt),
                first_ns: Some(t_ms * 1_000_000),
                last_ns: Some(t_ms * 1_000_000 + 1),
                ..TagInfo::default()
            });
            b.alloc(stack, tag, 1, payload, 1);
            live += payload;
            b.point(
                t_ms,
                live,
                Some(leakprof::format::events::AFTER_FAILURE),
                Some(attempt),
            );
        }
    }
    for task in 100..100 + clean {
        t_ms += 1;
        let tag = b.tag(TagInfo {
            task: Some(task),
            retry: Some(0),
            first_ns: Some(t_ms * 1_000_000),
            last_ns: Some(t_ms * 1_000_000 + 1),
            ..TagInfo::default()
        });
        b.alloc(stack, tag, 3, 100, 0);
    }
    b.p.meta.snapshot_ns = (t_ms + 1) * 1_000_000;
    b.finish()
}

#[test]
fn leak_per_retry_comes_from_the_tags_of_interleaved_tasks_without_marks() {
    let payload = 4 * MIB;
    let mut p = interleaved_retries(payload, 1000);
    // The marks pool every task: ten payloads per retry number.
    let marks = LeakSlope::from_marks(&p, 0).unwrap();
    assert!(marks.bytes_per_retry > 5.0 * payload as f64, "{marks:?}");
    let s = LeakSlope::of(&p, 0).unwrap();
    assert_eq!(s.source, SlopeSource::Tags);
    assert!((s.bytes_per_retry - payload as f64).abs() < 1e-3, "{s:?}");
    assert!((s.r2 - 1.0).abs() < 1e-9);
    assert_eq!(
        (s.tasks, s.points, s.first_retry, s.last_retry),
        (10, 40, 0, 3)
    );
    assert_eq!(
        Summary::of(&p).behaviour,
        Behaviour::ContinuousAccumulation,
        "never \"stable\" while ended attempts keep their bytes"
    );
    let v = check(&p, &Limits::new().max_leak_per_retry(MIB));
    assert_eq!(
        v.reason(),
        "leak per retry 4.0 MiB exceeds the limit 1.0 MiB (fitted over 40 ended attempts of 10 tasks, retries 0..=3, r² 1.000)"
    );
    assert!(check(&p, &Limits::new().max_leak_per_retry(8 * MIB)).is_pass());
    // Without any marks at all, the same figure.
    p.timeline.clear();
    let s = LeakSlope::of(&p, 0).unwrap();
    assert!((s.bytes_per_retry - payload as f64).abs() < 1e-3);
    // Attempts that free what they allocated leave a flat line.
    let freed = interleaved_retries(0, 10);
    let s = LeakSlope::of(&freed, 0).unwrap();
    assert_eq!(s.bytes_per_retry, 0.0);
    assert_eq!(Summary::of(&freed).behaviour, Behaviour::Stable);
}

#[test]
fn a_running_attempt_is_not_counted_until_a_later_one_ends_it() {
    let mut p = interleaved_retries(4 * MIB, 0);
    // Task 0's last attempt is still running at snapshot: 3 points left.
    let last = p
        .tags
        .iter_mut()
        .find(|t| t.task == Some(0) && t.retry == Some(3))
        .unwrap();
    last.active = true;
    let s = LeakSlope::from_tags(&p, 0).unwrap();
    assert_eq!(s.points, 39);
    // An earlier attempt marked running is still ended by a later one.
    p.tags[1].active = true;
    assert_eq!(LeakSlope::from_tags(&p, 0).unwrap().points, 39);
}

#[test]
fn a_profile_without_timeline_or_tagged_retries_has_no_slope_and_unknown_behaviour() {
    let mut p = exception_run(true);
    p.timeline.clear();
    // The tags alone still give the leak per retry.
    let from_tags = Summary::of(&p);
    assert_eq!(
        from_tags.leak_per_retry_bytes,
        Some((PAYLOAD + ERROR_VALUE) as f64)
    );
    assert_eq!(from_tags.behaviour, Behaviour::ContinuousAccumulation);
    for t in &mut p.tags {
        t.retry = None;
    }
    let s = Summary::of(&p);
    assert_eq!(s.behaviour, Behaviour::Unknown);
    assert_eq!(s.leak_per_retry_bytes, None);
    assert_eq!(s.min_rss_bytes, p.totals.rss_bytes);
    let v: serde_json::Value =
        serde_json::from_slice(&render("json", Command::Report, &p, &Options::default())).unwrap();
    assert!(v["leak_per_retry_bytes"].is_null());
}

#[test]
fn per_job_leaked_types_report_for_trace_memory() {
    let mut out = Vec::new();
    leakprof::render::table::write_task_scoped_leaks(&exception_run(true), 10, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Kind (site [type])"));
    assert!(text.contains("allocate_payload (exception.rs:42) [Vec<u8>]"));
    assert!(text.contains("Per task: task 1: 384.2 KiB"));
}

#[test]
fn pruning_invisible_frames_draws_the_same_flamegraph() {
    // 3,000 stacks over shared prefixes, most far narrower than inferno's
    // minimum width, a few wide: the pruned lines must draw byte for byte
    // the SVG that all lines draw.
    use leakprof::render::flamegraph::{visible_folded, write_svg};
    let mut b = Builder::new("many-stacks");
    let root = b.frame("app::main", None, None);
    let mids: Vec<u32> = (0..30)
        .map(|i| b.frame(&format!("app::mid_{i}"), None, None))
        .collect();
    let leaves: Vec<u32> = (0..100)
        .map(|i| b.frame(&format!("app::leaf_{i}"), None, None))
        .collect();
    let mut x = 7u64;
    for i in 0..3000usize {
        let s = b.stack(&[leaves[i % 100], mids[(i / 100) % 30], mids[i % 7], root]);
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let size = if i % 500 == 0 { 1 << 20 } else { 1 + (x >> 58) };
        let tag = if i % 3 == 0 {
            0
        } else {
            b.tag(TagInfo {
                task: Some(i as u64 % 40),
                ..TagInfo::default()
            })
        };
        b.alloc(s, tag, 1, size, 1);
    }
    let p = b.finish();
    let m = Model::new(&p);
    for group in [FlameGroup::None, FlameGroup::Task] {
        let all = folded(&m, Metric::Surviving, group).unwrap();
        let visible = visible_folded(&m, Metric::Surviving, group).unwrap();
        assert!(
            visible.len() * 4 < all.len(),
            "{} of {} lines kept",
            visible.len(),
            all.len()
        );
        let (mut a, mut v) = (Vec::new(), Vec::new());
        write_svg(&all, "t", "s", "bytes", 1200, &mut a).unwrap();
        write_svg(&visible, "t", "s", "bytes", 1200, &mut v).unwrap();
        assert!(a == v, "{group:?}: pruned lines draw another SVG");
    }
}

/// A heap graph whose largest objects are reachable (a root holds them)
/// while smaller ones leak in two unreachable cycles and one unreferenced
/// block: `retainers --unreachable --largest N` must find the leaks.
fn with_reachable_giants_and_small_leaks() -> Profile {
    use leakprof::format::{Amount, Cycle, Graph, Node, VERSION_V2};
    let mut p = exception_run(true);
    p.version = VERSION_V2;
    let node = |address: u64, retained: u64| Node {
        address,
        size: 64,
        stack: 1,
        retained: Amount {
            bytes: retained,
            blocks: 1,
        },
        ..Node::default()
    };
    let reachable = |mut n: Node, parent: Option<u32>| {
        if parent.is_none() {
            n.root = Some("root: stack".into());
        }
        n.parent = parent;
        n
    };
    let leaked = |mut n: Node, cycle: Option<u32>, parent: Option<u32>| {
        n.unreachable = true;
        n.cycle = cycle;
        n.parent = parent;
        n
    };
    let nodes = vec![
        reachable(node(0x1000, 10 * MIB), None),
        reachable(node(0x2000, 9 * MIB), Some(0)),
        reachable(node(0x3000, 8 * MIB), Some(1)),
        leaked(node(0x4000, 2 * MIB), Some(0), None),
        leaked(node(0x5000, MIB), Some(0), None),
        leaked(node(0x6000, 3 * MIB), Some(1), None),
        leaked(node(0x7000, 3 * MIB - 1), None, Some(5)),
        leaked(node(0x8000, 512 * KIB), None, None),
    ];
    let cycle = |id: u32, members: &[u32]| Cycle {
        id,
        members: Amount {
            bytes: 128,
            blocks: members.len() as u64,
        },
        retained: Amount {
            bytes: 3 * MIB,
            blocks: 3,
        },
        nodes: members.to_vec(),
        fields: Vec::new(),
        ring: None,
    };
    p.graph = Some(Graph {
        thread_roots: "quiescent".into(),
        cycles: vec![cycle(0, &[3, 4]), cycle(1, &[5])],
        nodes,
        ..Graph::default()
    });
    p
}

#[test]
fn unreachable_selection_filters_before_the_largest_cap() {
    use leakprof::analysis::retainers::{chains_for, Matching, Query, Start};
    let p = with_reachable_giants_and_small_leaks();
    let bytes = serde_json::to_vec(&p).unwrap();
    leakprof::format::load_bytes(std::path::Path::new("v2.json"), &bytes).unwrap();
    let query = |unreachable_only, largest| Query {
        matching: Matching::Any,
        unreachable_only,
        largest,
    };
    let targets = |q: Query| -> Vec<u64> {
        chains_for(&p, &q)
            .unwrap()
            .iter()
            .map(|c| c.target().unwrap().address)
            .collect()
    };
    // Largest first among the unreachable objects only, then capped.
    assert_eq!(targets(query(true, Some(3))), vec![0x6000, 0x7000, 0x4000]);
    assert_eq!(
        targets(query(true, None)),
        vec![0x6000, 0x7000, 0x4000, 0x5000, 0x8000]
    );
    // Without the filter the cap keeps the reachable giants.
    assert_eq!(targets(query(false, Some(3))), vec![0x1000, 0x2000, 0x3000]);
    let found = chains_for(&p, &query(true, Some(3))).unwrap();
    assert!(matches!(found[0].start, Start::Cycle { id: 1, .. }));
    // The block a cycle keeps alive is reached from that cycle.
    assert!(matches!(found[1].start, Start::Cycle { id: 1, .. }));
    assert_eq!(found[1].hops.len(), 2);
    assert!(matches!(found[2].start, Start::Cycle { id: 0, .. }));
    // A site pattern and the filter select together, then the cap.
    let by_site = Query {
        matching: Matching::Site("exception::fail".into()),
        unreachable_only: true,
        largest: Some(1),
    };
    assert_eq!(chains_for(&p, &by_site).unwrap().len(), 1);
}

/// A tower-like generic name: services wrapping services, 2,000+
/// characters, as apalis and axum stacks name their frames.
fn tower_like_name() -> String {
    let mut s = "apalis_worker::handle::{closure#0}".to_string();
    for k in 0..30 {
        s = format!(
            "tower::util::map_request::MapRequest<{s}, apalis_core::layers::retry::RetryLayer<apalis_core::backend::memory::MemoryStorage<u{k}>>>"
        );
    }
    format!("<{s} as tower_service::Service<apalis_core::task::Task<alloc::vec::Vec<u8>>>>::call")
}

fn widest_line(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[test]
fn report_and_retainers_lines_fit_300_columns_with_tower_like_names() {
    use leakprof::analysis::retainers::{chains_for, Matching, Query};
    use leakprof::render::names::Names;
    let name = tower_like_name();
    assert!(name.len() > 2000, "{}", name.len());
    let mut p = with_reachable_giants_and_small_leaks();
    for f in &mut p.frames {
        if !f.function.starts_with("__rust") {
            f.function = name.clone();
        }
    }
    let report =
        String::from_utf8(render("text", Command::Report, &p, &Options::default())).unwrap();
    assert!(widest_line(&report) <= 300, "{report}");
    // The rule keeps it readable: the service and its layers, not `…`s.
    assert!(
        report
            .contains("site: <MapRequest<MapRequest<…>, RetryLayer<…>> as Service<Task<…>>>::call"),
        "{report}"
    );
    let full = Options::default().text_fit(true, None);
    let report_full = String::from_utf8(render("text", Command::Report, &p, &full)).unwrap();
    assert!(widest_line(&report_full) > 2000);
    let query = Query {
        matching: Matching::Any,
        unreachable_only: false,
        largest: Some(3),
    };
    let chains = chains_for(&p, &query).unwrap();
    let shown = leakprof::render::retainers::text(&chains, &Names::of(&p, false), Some(300));
    assert!(widest_line(&shown) <= 300, "{shown}");
    let all = leakprof::render::retainers::text(&chains, &Names::of(&p, true), None);
    assert!(widest_line(&all) > 1000);
}

#[test]
fn task_tables_list_the_leaking_tasks_first() {
    // Tasks 100.. leave nothing; tasks 0..10 leak, but come later in the
    // profile than twenty clean ones would by id.
    let mut p = interleaved_retries(4 * MIB, 30);
    for t in &mut p.tags {
        if let Some(task) = t.task.as_mut() {
            *task = if *task >= 100 {
                *task - 100
            } else {
                *task + 1000
            };
        }
    }
    let text = String::from_utf8(render("text", Command::Report, &p, &Options::default())).unwrap();
    let per_task = text
        .split("\nPer task:\n")
        .nth(1)
        .expect("a per-task table");
    let first = per_task.lines().nth(1).unwrap();
    assert!(first.trim_start().starts_with("100"), "{first}");
    assert!(first.contains("16.0 MiB"), "{first}");
    let leaks_line = text.lines().find(|l| l.starts_with("Per task: ")).unwrap();
    assert!(
        leaks_line.starts_with("Per task: task 1000: 16.0 MiB"),
        "{leaks_line}"
    );
}

#[test]
fn a_block_shows_its_own_type_not_its_owners() {
    use leakprof::format::{Graph, Owner, VERSION_V2};
    let mut b = Builder::new("apalis-worker");
    let alloc = b.frame("__rust_alloc", None, None);
    let from_elem = b.frame(
        "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem::<alloc::alloc::Global>",
        None,
        None,
    );
    let make = b.frame(
        "apalis_worker::make_payload",
        Some("examples/apalis_worker.rs"),
        Some(64),
    );
    let plain = b.frame(
        "apalis_worker::remember",
        Some("examples/apalis_worker.rs"),
        Some(80),
    );
    let typed = b.stack(&[alloc, from_elem, make]);
    let untyped = b.stack(&[alloc, plain]);
    let tag = b.tag(TagInfo::default());
    b.alloc(typed, tag, 1, 4 * MIB, 1);
    b.alloc(untyped, tag, 1, 64, 1);
    let mut p = b.finish();
    p.version = VERSION_V2;
    for g in &mut p.live {
        g.owner = Some(0);
    }
    p.graph = Some(Graph {
        owners: vec![Owner {
            name: "error history".into(),
            kind: "labelled".into(),
            type_name: Some("ErrorHistory".into()),
            objects: 1,
            ..Owner::default()
        }],
        ..Graph::default()
    });
    let rows = rows(&Partition::of(&Model::new(&p), grouping("type").unwrap()));
    assert_eq!(rows[0].0, "Vec<u8>");
    assert_eq!(rows[1].0, "unknown", "never the owner's ErrorHistory");
}

#[test]
fn idle_tasks_fold_into_sums_and_every_figure_stays() {
    use leakprof::format::compact::fold_idle_tasks;
    let before = interleaved_retries(4 * MIB, 50);
    let mut after = before.clone();
    let all = after.tags.len() as u32;
    fold_idle_tasks(&mut after, all, 10);
    // 40 of the 50 clean tasks summed, the 10 newest listed; every tag of
    // the leaking tasks stays, ids renumbered to their index.
    let folded = after.folded.as_ref().expect("a folded section");
    assert_eq!((folded.tasks, folded.tags), (40, 40));
    assert_eq!(folded.allocated.bytes, 40 * 300);
    assert_eq!(after.tags.len(), before.tags.len() - 40);
    assert!(after.tags.iter().enumerate().all(|(i, t)| t.id == i as u32));
    let listed: Vec<u64> = after
        .tags
        .iter()
        .filter_map(|t| t.task)
        .filter(|&t| t >= 100)
        .collect();
    assert_eq!(listed, (140..150).collect::<Vec<u64>>(), "the newest stay");
    for g in &after.live {
        assert!(after.tags[g.tag as usize].task.is_some_and(|t| t < 10));
    }
    let (a, b) = (Summary::of(&before), Summary::of(&after));
    assert_eq!((a.tasks, a.retries), (b.tasks, b.retries));
    assert_eq!(a.leak_per_retry_bytes, b.leak_per_retry_bytes);
    let by_task = |p: &Profile| rows(&Partition::of(&Model::new(p), grouping("task").unwrap()));
    assert_eq!(by_task(&before), by_task(&after));
    // A saved and loaded compact profile is valid.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    after.save(&path).unwrap();
    assert_eq!(
        leakprof::format::load(&path).unwrap().tags.len(),
        after.tags.len()
    );
}

#[test]
fn the_rss_gap_is_split_into_leakprofs_own_memory_what_came_before_and_the_rest() {
    let mut p = exception_run(true);
    // Live is the recorded blocks; RSS 2 MiB above (see Builder::finish).
    let text = |p: &Profile| {
        String::from_utf8(render("text", Command::Report, p, &Options::default())).unwrap()
    };
    assert!(text(&p)
        .contains("2.0 MiB above live: allocator overhead, fragmentation and untracked memory)"));
    p.recorder = Some(leakprof::format::RecorderMemory {
        total: 1024 * KIB,
        ..Default::default()
    });
    p.meta.rss_at_start_bytes = Some(768 * KIB);
    let split = text(&p);
    assert!(
        split.contains("2.0 MiB above live: leakprof's own 1.0 MiB, RSS before recording 768.0 KiB, the rest 256.0 KiB: allocator overhead"),
        "{split}"
    );
    let gap = leakprof::analysis::summary::RssGap::of(&p);
    assert_eq!(gap.rest_bytes, 256 * KIB as i64);
}

/// Issue 12: while task 1 ran, tokio filled a `Defer` buffer (referred to
/// here from a thread-local) and a library its cache (referred to from the
/// library's static); the program's own static keeps a buffer too, a
/// stack holds what the program's own code allocated, and an error
/// history (registered) keeps the task's payload.
fn runtime_keeps_some_of_what_a_task_allocated() -> Profile {
    use leakprof::format::{Graph, Owner, Via, VERSION_V2};
    let mut b = Builder::new("apalis-worker");
    let alloc = b.frame("__rust_alloc", None, None);
    let grow = b.frame(
        "<alloc::raw_vec::RawVec<core::task::wake::Waker>>::grow_one",
        None,
        None,
    );
    let defer = b.frame(
        "<tokio::runtime::scheduler::defer::Defer>::defer",
        Some("defer.rs"),
        Some(20),
    );
    let cache = b.frame("cachelib::Cache::insert", Some("cache.rs"), Some(7));
    let own = b.frame("apalis_worker::remember", Some("main.rs"), Some(90));
    let payload = b.frame("apalis_worker::make_payload", Some("main.rs"), Some(64));
    let defer_stack = b.stack(&[alloc, grow, defer]);
    let cache_stack = b.stack(&[alloc, cache]);
    let own_stack = b.stack(&[alloc, own]);
    let payload_stack = b.stack(&[alloc, payload]);
    let held = b.frame("apalis_worker::hold", Some("main.rs"), Some(120));
    let held_stack = b.stack(&[alloc, held]);
    let task = b.tag(TagInfo {
        task: Some(1),
        retry: Some(0),
        first_ns: Some(1_000),
        last_ns: Some(2_000),
        ..TagInfo::default()
    });
    b.alloc(defer_stack, task, 1, 256, 1);
    b.alloc(cache_stack, task, 2, 1024, 2);
    b.alloc(own_stack, task, 1, 4096, 1);
    b.alloc(payload_stack, task, 1, MIB, 1);
    b.alloc(held_stack, task, 1, 512, 1);
    b.p.meta.snapshot_ns = 10_000;
    let mut p = b.finish();
    p.version = VERSION_V2;
    p.graph = Some(Graph {
        thread_roots: "signals".into(),
        owners: vec![
            Owner {
                name: "error history".into(),
                kind: "labelled".into(),
                objects: 1,
                ..Owner::default()
            },
            Owner {
                name: "site: tokio::runtime::scheduler::defer::Defer::defer".into(),
                kind: "site".into(),
                objects: 1,
                ..Owner::default()
            },
        ],
        vias: vec![
            Via {
                holder: "root: tls".into(),
                ..Via::default()
            },
            Via {
                holder: "root: static apalis-worker!cachelib::cache::CACHE".into(),
                ..Via::default()
            },
            Via {
                holder: "root: static apalis-worker!apalis_worker::REMEMBERED".into(),
                ..Via::default()
            },
            Via {
                holder: "ErrorHistory".into(),
                offset: Some(8),
                ..Via::default()
            },
            Via {
                holder: "root: stack".into(),
                ..Via::default()
            },
        ],
        ..Graph::default()
    });
    for (g, (owner, via)) in p
        .live
        .iter_mut()
        .zip([(1, 0), (1, 1), (1, 2), (0, 3), (1, 4)])
    {
        g.owner = Some(owner);
        g.via = Some(via);
    }
    p
}

#[test]
fn what_a_runtime_keeps_from_its_own_statics_is_not_the_tasks_leak() {
    let p = runtime_keeps_some_of_what_a_task_allocated();
    let leaks = TaskScopedLeaks::of(&Model::new(&p));
    // The payload, the program's own static's buffer and what the
    // program's own code allocated and a stack holds are the task's.
    assert_eq!(leaks.total.bytes, MIB + 4096 + 512, "{leaks:#?}");
    assert_eq!(leaks.per_task.len(), 1);
    assert_eq!(leaks.per_task[0].leaked.bytes, MIB + 4096 + 512);
    // tokio's thread-local buffer and the library's cache are not.
    assert_eq!(leaks.kept_by_runtime.bytes, 256 + 2048);
    assert_eq!(leaks.kept_by_runtime.blocks, 3);
    let roots: Vec<&str> = leaks.runtime_rows.iter().map(|r| r.root.as_str()).collect();
    assert_eq!(
        roots,
        [
            "root: static apalis-worker!cachelib::cache::CACHE",
            "root: tls"
        ]
    );
    assert_eq!(
        leaks.runtime_rows[1].site,
        "<tokio::runtime::scheduler::defer::Defer>::defer (defer.rs:20)"
    );

    let mut out = Vec::new();
    leakprof::render::table::write_task_scoped_leaks(&p, 10, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Per task: task 1: 1.0 MiB"), "{text}");
    assert!(
        text.contains("Kept by the runtime or a library: 2.2 KiB in 3 blocks"),
        "{text}"
    );
    assert!(text.contains("<- root: tls"), "{text}");

    // Without a heap graph nothing says who keeps the blocks: all the task's.
    let mut v1 = p.clone();
    v1.graph = None;
    let leaks = TaskScopedLeaks::of(&Model::new(&v1));
    assert_eq!(leaks.total.bytes, MIB + 4096 + 512 + 256 + 2048);
    assert_eq!(leaks.kept_by_runtime.bytes, 0);
}
