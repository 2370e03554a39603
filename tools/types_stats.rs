//! Loads the DWARF types of an executable (default: this program) and
//! prints what loading cost and what the layouts cover: one JSON line of
//! figures, then with `--list` the types without a layout, and with
//! `--fallbacks` the std, tokio and hashbrown types whose walk falls back
//! to candidate words somewhere (grouped by generic-free name, counted).
//!
//! `types-stats [PATH] [--list] [--fallbacks]`

use std::time::Instant;

use std::collections::BTreeMap;

use leakprof::record::types::{function_path, LoadedModule, TypeMaps};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = args.iter().any(|a| a == "--list");
    let fallbacks = args.iter().any(|a| a == "--fallbacks");
    let path = args.iter().find(|a| !a.starts_with("--")).cloned();
    let rss_before = status_kib("VmRSS:");
    let t0 = Instant::now();
    let maps = match &path {
        Some(p) => match LoadedModule::from_file(p) {
            Some(m) => TypeMaps::load_modules(vec![m]),
            None => {
                eprintln!("types-stats: cannot read {p}");
                std::process::exit(2);
            }
        },
        None => TypeMaps::load(),
    };
    let secs = t0.elapsed().as_secs_f64();
    let s = maps.stats();
    let (mut usable, mut total) = (0usize, 0usize);
    let mut conservative: Vec<&str> = Vec::new();
    for (_, name, layout) in maps.each_type() {
        total += 1;
        if layout {
            usable += 1;
        } else {
            conservative.push(name);
        }
    }
    println!(
        "{{\"path\":{:?},\"load_s\":{secs:.3},\"peak_rss_mib\":{:.1},\"rss_before_mib\":{:.1},\"rss_after_mib\":{:.1},\"table_mib\":{:.1},\"modules\":{},\"modules_with_debug_info\":{},\"units\":{},\"type_dies\":{},\"types\":{},\"types_with_layout\":{usable},\"layout_fraction\":{:.4},\"containers\":{},\"statics\":{},\"vtables\":{},\"skipped_variables\":{}}}",
        path.as_deref().unwrap_or("self"),
        status_kib("VmHWM:") as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        status_kib("VmRSS:") as f64 / 1024.0,
        s.table_bytes as f64 / (1 << 20) as f64,
        s.modules,
        s.modules_with_debug_info,
        s.units,
        s.type_dies,
        s.types,
        usable as f64 / total.max(1) as f64,
        s.containers,
        s.statics,
        s.vtables,
        s.skipped_variables,
    );
    if list {
        conservative.sort_unstable();
        for name in conservative {
            println!("{name}");
        }
    }
    if fallbacks {
        print_fallbacks(&maps);
    }
}

/// Types of std, tokio and hashbrown whose walk reads some words as
/// candidates, by name without generic arguments, with the reason.
fn print_fallbacks(maps: &TypeMaps) {
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (t, name, _) in maps.each_type() {
        let Some((why, culprit)) = maps.fallback_of(t) else {
            continue;
        };
        let why = format!("{why:?} in {}", function_path(maps.type_name(culprit)));
        *by_reason
            .entry(why.split(' ').next().unwrap_or("").to_string())
            .or_default() += 1;
        if ["std::", "core::", "alloc::", "tokio::", "hashbrown::"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            *groups.entry((function_path(name), why)).or_default() += 1;
        }
    }
    println!("types with a fallback, by reason: {by_reason:?}");
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for ((name, why), n) in rows {
        println!("{n:6} {name}: {why}");
    }
}
