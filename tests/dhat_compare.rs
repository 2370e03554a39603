//! leakprof's DHAT export against dhat-rs itself. One deterministic,
//! single-threaded workload (`tests/dhat_compare/workload.rs`) runs in two
//! processes: under dhat-rs, and under leakprof's recorder (each must be
//! its process's global allocator). dhat-rs's JSON and leakprof's DHAT
//! export of its profile must have the same shape, and the same figures:
//! totals, at the global peak (t-gmax) and at the end (t-end), whole and
//! per allocation site.

mod support;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use leakprof::analysis::Model;
use leakprof::render::{self, Command, Options};
use serde_json::Value;

#[allow(dead_code)]
#[path = "dhat_compare/workload.rs"]
mod workload;

/// dhat-rs's file and leakprof's export, from one run of each program.
struct Runs {
    theirs: Value,
    ours: Value,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        build_examples();
        let dir = tempfile::tempdir().unwrap();
        let run = |example: &str, out: &str| {
            let path = dir.path().join(out);
            let status = std::process::Command::new(support::example(example))
                .arg(&path)
                .status()
                .unwrap_or_else(|e| panic!("running {example}: {e}"));
            assert!(status.success(), "{example}: {status}");
            path
        };
        let theirs = run("dhat-compare-dhat", "dhat-heap.json");
        let profile = run("dhat-compare-leakprof", "profile.json");
        let theirs = serde_json::from_slice(&std::fs::read(theirs).unwrap()).unwrap();
        let profile = leakprof::format::load(&profile).unwrap();
        let r = render::find(Command::Export, "dhat").unwrap();
        let bytes = render::render_to_vec(r, &Model::new(&profile), &Options::default()).unwrap();
        Runs {
            theirs,
            ours: serde_json::from_slice(&bytes).unwrap(),
        }
    })
}

/// Builds both programs from the current sources: `cargo test --test
/// dhat_compare` alone does not rebuild examples.
fn build_examples() {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.args([
        "build",
        "--example",
        "dhat-compare-dhat",
        "--example",
        "dhat-compare-leakprof",
    ]);
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("run cargo");
    assert!(status.success(), "building the dhat_compare programs");
}

/// A program point's figures: total, at t-gmax, at t-end.
const FIGURES: &[&str] = &["tb", "tbk", "gb", "gbk", "eb", "ebk"];

/// The function a DHAT frame string names: `0x1f: NAME (file:line:col)`.
fn function(frame: &str) -> &str {
    let name = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    name.rsplit_once(" (").map_or(name, |(name, _)| name)
}

/// The workload site of a program point: its innermost frame in a function
/// of the workload module (`<crate>::workload::<site>`, closures included).
/// Generic arguments that mention the workload (`retain::<...::evict::
/// {closure#0}>`) do not count: the path must start with the module.
fn site(file: &Value, pp: &Value) -> Option<String> {
    let ftbl = file["ftbl"].as_array().unwrap();
    pp["fs"].as_array().unwrap().iter().find_map(|f| {
        let name = function(ftbl[f.as_u64().unwrap() as usize].as_str().unwrap());
        let (krate, rest) = name.split_once("::workload::")?;
        if krate.contains(['<', ' ']) {
            return None;
        }
        Some(rest.split("::").next().unwrap().to_string())
    })
}

/// Figure -> sum over the program points of each site (`None`: points
/// outside the workload).
fn per_site(file: &Value) -> BTreeMap<Option<String>, BTreeMap<&'static str, u64>> {
    let mut sites: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
    for pp in file["pps"].as_array().unwrap() {
        let figures = sites.entry(site(file, pp)).or_default();
        for &k in FIGURES {
            *figures.entry(k).or_insert(0) += pp[k].as_u64().unwrap();
        }
    }
    sites
}

fn whole(file: &Value, figure: &str) -> u64 {
    file["pps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pp| pp[figure].as_u64().unwrap())
        .sum()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// `0x55d...: name (file:line:col)`, as dhat-rs writes frames.
fn is_dhat_frame(s: &str) -> bool {
    let Some((addr, rest)) = s.split_once(": ") else {
        return false;
    };
    addr.starts_with("0x")
        && rest.ends_with(')')
        && rest.contains(" (")
        && rest
            .rsplit(':')
            .nth(1)
            .is_some_and(|l| l.parse::<u32>().is_ok())
}

/// Compares the named figures of every workload site.
fn assert_same_per_site(figures: &[&str]) {
    let Runs { theirs, ours } = runs();
    let (theirs_sites, ours_sites) = (per_site(theirs), per_site(ours));
    for &site in workload::SITES {
        let site = Some(site.to_string());
        for &k in figures {
            let get = |m: &BTreeMap<Option<String>, BTreeMap<&str, u64>>| {
                m.get(&site).and_then(|f| f.get(k)).copied().unwrap_or(0)
            };
            assert_eq!(
                get(&ours_sites),
                get(&theirs_sites),
                "{k} of workload::{}: leakprof (left) against dhat-rs (right)",
                site.as_deref().unwrap()
            );
        }
    }
}

#[test]
fn the_workload_is_found_at_every_site_in_both_files() {
    let Runs { theirs, ours } = runs();
    for (who, file) in [("dhat-rs", theirs), ("leakprof", ours)] {
        let sites = per_site(file);
        for &s in workload::SITES {
            let found = sites.get(&Some(s.to_string()));
            assert!(
                found.is_some_and(|f| f["tb"] > 0),
                "{who}: no allocation at workload::{s}; sites {:?}",
                sites.keys().collect::<Vec<_>>()
            );
        }
    }
}

/// Only the program's own allocations are recorded: not the recorder's,
/// nor those of threads it starts. So the whole files agree too.
#[test]
fn nothing_outside_the_workload_is_recorded() {
    let Runs { theirs, ours } = runs();
    for (who, file) in [("dhat-rs", theirs), ("leakprof", ours)] {
        let outside: Vec<&Value> = file["pps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pp| site(file, pp).is_none())
            .collect();
        let frames = |pp: &Value| -> Vec<String> {
            pp["fs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    function(file["ftbl"][f.as_u64().unwrap() as usize].as_str().unwrap())
                        .to_string()
                })
                .collect()
        };
        assert!(
            outside.is_empty(),
            "{who} recorded allocations outside the workload: {:?}",
            outside
                .iter()
                .map(|pp| (pp["tb"].clone(), frames(pp)))
                .collect::<Vec<_>>()
        );
    }
    for &k in FIGURES {
        assert_eq!(
            whole(ours, k),
            whole(theirs, k),
            "{k}: leakprof (left) against dhat-rs (right)"
        );
    }
}

#[test]
fn same_keys_frames_and_constants_as_dhat_rs() {
    let Runs { theirs, ours } = runs();
    assert_eq!(keys(ours), keys(theirs), "top-level keys");
    for pp in ours["pps"]
        .as_array()
        .unwrap()
        .iter()
        .chain(theirs["pps"].as_array().unwrap())
    {
        assert_eq!(keys(pp), keys(&theirs["pps"][0]), "pp keys");
    }
    for k in [
        "dhatFileVersion",
        "mode",
        "verb",
        "bklt",
        "bkacc",
        "tu",
        "Mtu",
        "tuth",
    ] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    for file in [ours, theirs] {
        assert_eq!(file["ftbl"][0], "[root]");
        for f in file["ftbl"].as_array().unwrap().iter().skip(1) {
            assert!(is_dhat_frame(f.as_str().unwrap()), "frame string {f}");
        }
    }
}

#[test]
fn totals_match_dhat_rs_per_site() {
    assert_same_per_site(&["tb", "tbk"]);
}

#[test]
fn t_end_matches_dhat_rs_per_site() {
    assert_same_per_site(&["eb", "ebk"]);
}

/// leakprof's at-peak figures are those of the moment its global live
/// amount was highest, as DHAT's are: a mechanism that captures them only
/// every so often (when the peak has grown by a step) fails this.
#[test]
fn t_gmax_matches_dhat_rs_per_site() {
    assert_same_per_site(&["gb", "gbk"]);
}
