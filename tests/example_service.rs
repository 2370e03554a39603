//! The README's walkthrough: `examples/leaky_service.rs` plants four leaks
//! and profiles itself through the library API; leakprof must name each
//! one's owner, find its cycles and print its retainer chains.

mod support;

use std::process::Command;

use support::example;

use leakprof::format::Profile;

fn owned(p: &Profile, owner: &str) -> (u64, u64) {
    let g = p.graph.as_ref().unwrap();
    p.live
        .iter()
        .filter(|x| x.owner.map(|o| g.owners[o as usize].name.as_str()) == Some(owner))
        .fold((0, 0), |(b, n), x| (b + x.bytes, n + x.blocks))
}

#[test]
fn leakprof_names_the_example_services_four_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.json");
    let run = Command::new(example("leaky_service"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let p = leakprof::format::load(&out).unwrap();
    let g = p.graph.as_ref().expect("a heap graph");
    let total: u64 = p.live.iter().map(|x| x.bytes).sum();

    // 1. The session cache (a registered static): 200 sessions of 4 KiB.
    let (cache, _) = owned(&p, "session cache");
    assert!(cache >= 200 * 4096, "session cache owns {cache}");
    // 4. The completion hooks (a registered static): 200 bodies of 64 KiB.
    let (hooks, _) = owned(&p, "completion hooks");
    assert!(hooks >= 200 * 65536, "completion hooks own {hooks}");
    // 2. Subscriptions: 200 unreachable two-member cycles, each holding a
    // 16 KiB buffer owned by the labelled subscription.
    let (subs, _) = owned(&p, "subscription");
    assert!(subs >= 200 * 16384, "subscriptions own {subs}");
    let cycles: Vec<_> = g
        .cycles
        .iter()
        .filter(|c| c.retained.bytes >= 16384)
        .collect();
    assert_eq!(cycles.len(), 200);
    assert!(cycles.iter().all(|c| c.members.blocks == 2));
    // 3. Forgotten receipts: unreachable, no cycle, owned by their site.
    let receipts: Vec<_> = p
        .live
        .iter()
        .filter(|x| x.bytes == x.blocks * 2048)
        .filter(|x| {
            x.owner.map(|o| g.owners[o as usize].name.as_str())
                == Some("site: leaky_service::render_receipt")
        })
        .collect();
    assert_eq!(receipts.iter().map(|x| x.blocks).sum::<u64>(), 200);
    assert!(receipts.iter().all(|x| x.unreachable));
    // Nearly everything surviving is one of the four leaks.
    let named = cache + hooks + subs + receipts.iter().map(|x| x.bytes).sum::<u64>();
    assert!(
        named as f64 >= 0.99 * total as f64,
        "{named} of {total} bytes attributed"
    );

    // Read by type nearly everywhere (issue 10): the blocks `Box::new`
    // makes inlined into a closure included (typed by their site's name).
    let cov = g.coverage.as_ref().expect("an exact graph");
    let typed_bytes = cov.exact.bytes + cov.partly.bytes;
    assert!(
        typed_bytes as f64 >= 0.99 * g.scanned.bytes as f64,
        "{cov:?}"
    );
    assert!(
        cov.exact.blocks as f64 >= 0.95 * g.scanned.blocks as f64,
        "{cov:?}"
    );

    // The command line tells the same story (it needs the `cli` feature;
    // `cargo test --no-default-features` checks the library alone).
    #[cfg(feature = "cli")]
    command_line_tells_the_same_story(&out);
}

#[cfg(feature = "cli")]
fn command_line_tells_the_same_story(out: &std::path::Path) {
    let leakprof = env!("CARGO_BIN_EXE_leakprof");
    let chains = Command::new(leakprof)
        .args(["retainers", out.to_str().unwrap(), "--type", "Subscription"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&chains.stdout);
    assert!(chains.status.success());
    assert!(text.contains("unreachable cycle #"), "{text}");
    // The cycle names the field that closes it (issue 10).
    assert!(
        text.contains("ArcInner<Subscription>.peer -> ArcInner<Subscription>.peer"),
        "{text}"
    );
    let largest = Command::new(leakprof)
        .args(["retainers", out.to_str().unwrap(), "--largest", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&largest.stdout);
    assert!(text.contains("registered: completion hooks"), "{text}");
    let report = Command::new(leakprof)
        .args(["report", out.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(json["rows"][0]["kind"], "completion hooks");
}
