//! The example profiles in `profiles/` load with this build and say what
//! they were made to show.

use std::path::Path;

use leakprof::format::{load, Profile, VERSION_V2};

fn profile(name: &str) -> Profile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name);
    load(&path).unwrap_or_else(|e| panic!("{e} (regenerate it: see profiles/README.md)"))
}

fn owned(p: &Profile, owner: &str) -> u64 {
    let g = p.graph.as_ref().expect("a heap graph");
    p.live
        .iter()
        .filter(|x| x.owner.map(|o| g.owners[o as usize].name.as_str()) == Some(owner))
        .map(|x| x.bytes)
        .sum()
}

#[test]
fn exception_profiles_show_the_leak_and_the_fix() {
    let original = profile("exception-original.json");
    let fixed = profile("exception-fixed.json");
    assert_eq!(original.version, VERSION_V2);
    // Six attempts of 1 MiB each, all kept by error values.
    assert!(owned(&original, "error value") >= 6 << 20);
    assert_eq!(owned(&fixed, "error value"), 0);
    let slope = leakprof::analysis::LeakSlope::of(&original, 0).expect("a slope");
    assert!((slope.bytes_per_retry - (1 << 20) as f64).abs() < 0.05 * (1 << 20) as f64);
}

#[test]
fn leaky_service_profile_names_its_four_leaks() {
    let p = profile("leaky-service.json");
    for owner in [
        "completion hooks",
        "subscription",
        "session cache",
        "site: leaky_service::render_receipt",
    ] {
        assert!(owned(&p, owner) > 0, "{owner}");
    }
    assert_eq!(p.graph.as_ref().unwrap().cycles.len(), 200);
}

/// The profiles went through `tools/gen-golden-profiles`' normaliser:
/// nothing in them names this machine, this checkout or the moment.
#[test]
fn example_profiles_are_normalised() {
    let checkout = env!("CARGO_MANIFEST_DIR");
    for name in [
        "exception-original.json",
        "exception-fixed.json",
        "leaky-service.json",
    ] {
        let text =
            std::fs::read_to_string(Path::new(checkout).join("profiles").join(name)).unwrap();
        for machine_specific in [checkout, "/tmp/", "/root/", "/home/"] {
            assert!(
                !text.contains(machine_specific),
                "{name} mentions {machine_specific}: regenerate it with tools/gen-golden-profiles"
            );
        }
        let p = profile(name);
        assert_eq!(
            (p.meta.pid, p.meta.start_unix_ms),
            (1, 1_700_000_000_000),
            "{name}"
        );
        assert_eq!(p.graph.as_ref().unwrap().pause_ns, 1_000_000, "{name}");
        for (i, m) in p.modules.iter().enumerate() {
            assert_eq!(
                m.load_address,
                0x5550_0000_0000 + i as u64 * 0x10_0000_0000,
                "{name}"
            );
        }
        assert!(
            p.frames
                .iter()
                .filter_map(|f| f.file.as_deref())
                .all(|f| !f.starts_with("/rustc/") || f.starts_with("/rustc/RUSTC_COMMIT/")),
            "{name}: a rustc commit hash is left in a file name"
        );
        // Times are ranks: whole milliseconds.
        assert!(p.timeline.iter().all(|t| t.t_ns % 1_000_000 == 0), "{name}");
    }
}
