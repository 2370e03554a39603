//! Loads the DWARF types of an executable (default: this program) and
//! prints what loading cost and what the layouts cover: one JSON line of
//! figures, then (with `--list`) the types read conservatively.
//!
//! `types-stats [PATH] [--list]`

use std::time::Instant;

use leakprof::record::types::{LoadedModule, TypeMaps};

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
}
