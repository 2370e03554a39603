//! The performance figures the README and the API docs quote are the ones
//! docs/BENCHMARKS.md measured. The benchmark scripts rewrite their
//! sections of BENCHMARKS.md; when a figure moves, this test names the
//! quote that has to follow it.

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Text with every run of whitespace (line breaks, `///` comment markers
/// included) made one space, so a quote may wrap anywhere.
fn flat(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| *w != "///")
        .collect::<Vec<_>>()
        .join(" ")
}

/// The section a script writes between `<!-- name:begin -->` and
/// `<!-- name:end -->`.
fn section<'a>(doc: &'a str, name: &str) -> &'a str {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let from = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/BENCHMARKS.md has no {begin}"));
    let to = doc[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("docs/BENCHMARKS.md has no {end}"));
    &doc[from..from + to]
}

fn cells(line: &str) -> Vec<String> {
    line.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// One row of a Markdown table, its cells looked up by column header, so
/// a script may add or reorder columns.
struct Row {
    header: Vec<String>,
    cells: Vec<String>,
}

impl Row {
    /// The row whose leading cells are `key`, in the table around it.
    fn find(section: &str, key: &[&str]) -> Row {
        let mut header = Vec::new();
        let mut previous_was_table = false;
        for line in section.lines() {
            if !line.starts_with('|') {
                previous_was_table = false;
                continue;
            }
            let cells = cells(line);
            if !previous_was_table {
                header = cells.clone();
            }
            previous_was_table = true;
            if cells.len() >= key.len() && cells.iter().zip(key).all(|(c, k)| c == k) {
                return Row { header, cells };
            }
        }
        panic!("docs/BENCHMARKS.md has no row {key:?}")
    }

    fn get(&self, column: &str) -> &str {
        let i = self
            .header
            .iter()
            .position(|h| h == column)
            .unwrap_or_else(|| panic!("docs/BENCHMARKS.md has no column {column:?}"));
        &self.cells[i]
    }
}

/// The median a cell quotes: the scripts write `median (min–max)` of
/// their rounds (tools/benchdoc.py). `+92.3 (+90.1–+95.0)` -> `92.3`,
/// `1.03x (1.01x–1.05x)` -> `1.03`, `0.61 s` -> `0.61`.
fn figure(cell: &str) -> &str {
    let median = cell.split(" (").next().unwrap_or(cell);
    median
        .trim_start_matches('+')
        .trim_end_matches(" s")
        .trim_end_matches('x')
}

fn number(cell: &str) -> f64 {
    figure(cell)
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

fn assert_quotes(file: &str, text: &str, quotes: &[String]) {
    for quote in quotes {
        assert!(
            text.contains(quote.as_str()),
            "{file} must quote docs/BENCHMARKS.md as measured: {quote:?} not found"
        );
    }
}

// Columns of the recorder table.
const ADDED_CPU: &str = "added CPU ns/pair";
const SLOWDOWN: &str = "slowdown vs system (CPU)";
const WHOLE_RUN_CPU: &str = "whole-run CPU ns/pair";
const ADDED_WHOLE_RUN: &str = "added whole-run";

#[test]
fn readme_quotes_the_recorder_benchmark_with_what_each_figure_includes() {
    let bench = read("docs/BENCHMARKS.md");
    let recorder = section(&bench, "recorder");
    let system = Row::find(recorder, &["system", "2"]);
    let full = Row::find(recorder, &["leakprof", "2"]);
    let sampled = Row::find(recorder, &["leakprof sampled 512KiB", "2"]);
    let heaptrack = Row::find(recorder, &["heaptrack", "2"]);
    let whole_run_slowdown = number(sampled.get(WHOLE_RUN_CPU)) / number(system.get(WHOLE_RUN_CPU));
    assert_quotes(
        "README.md",
        &flat(&read("README.md")),
        &[
            format!(
                "recording every allocation adds {} ns of the program's CPU per pair, where heaptrack adds {} ns",
                figure(full.get(ADDED_CPU)),
                figure(heaptrack.get(ADDED_CPU))
            ),
            format!(
                "over each tool's whole run, start-up and exit included: {} ns against {} ns",
                figure(full.get(ADDED_WHOLE_RUN)),
                figure(heaptrack.get(ADDED_WHOLE_RUN))
            ),
            format!(
                "Sampling mode costs {}x the system allocator's CPU inside the program, and {whole_run_slowdown:.2}x over the whole run",
                figure(sampled.get(SLOWDOWN))
            ),
        ],
    );
}

#[test]
fn graph_snapshot_docs_quote_the_scan_benchmark() {
    let bench = read("docs/BENCHMARKS.md");
    let pause = Row::find(
        section(&bench, "scan"),
        &["pause per GiB of object-shaped heap"],
    );
    assert_quotes(
        "src/record/mod.rs (Recorder::snapshot_with_graph)",
        &flat(&read("src/record/mod.rs")),
        &[format!(
            "measures a pause of {} s per GiB of live heap made of 1 KiB objects",
            figure(pause.get("measured"))
        )],
    );
}

#[test]
fn a_cell_quotes_its_median_with_or_without_the_spread() {
    assert_eq!(figure("+92.3 (+90.1–+95.0)"), "92.3");
    assert_eq!(figure("1.03x (1.01x–1.05x)"), "1.03");
    assert_eq!(figure("0.61 s (0.58–0.66)"), "0.61");
    assert_eq!(figure("135.2"), "135.2");
    assert_eq!(number("-1.5 (-2.0–+0.5)"), -1.5);
}
