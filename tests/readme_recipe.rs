//! The README's "Profile your own worker" recipe, built verbatim as a crate
//! of its own and run, so the README cannot drift from what compiles.
//!
//! The blocks marked `<!-- recipe: FILE -->` in README.md become the files
//! of a new crate in a temporary directory; the only edit is the path of
//! the leakprof dependency, pointed at this checkout. Its build directory
//! is `target/readme-recipe` (kept between runs, so only the first build
//! compiles tokio and the recorder's dependencies), and it is built
//! `--offline` from this checkout's lock file when the registry cache has
//! everything, from the registry otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

const README_DEPENDENCY: &str = r#"leakprof = { path = "../leakprof""#;

/// The fenced block following each `<!-- recipe: FILE -->` marker.
fn recipe_files(readme: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut rest = readme;
    while let Some(at) = rest.find("<!-- recipe: ") {
        rest = &rest[at + "<!-- recipe: ".len()..];
        let name = rest
            .split(|c: char| c.is_whitespace())
            .next()
            .expect("a file name after the marker")
            .to_string();
        let fence = rest.find("```").expect("a fenced block after the marker");
        let body_start = fence + rest[fence..].find('\n').expect("fence line") + 1;
        let body_len = rest[body_start..].find("```").expect("a closing fence");
        files.push((name, rest[body_start..body_start + body_len].to_string()));
        rest = &rest[body_start + body_len..];
    }
    files
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        // The recipe's own .cargo/config.toml must be what applies.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .expect("running cargo")
}

#[test]
fn readme_recipe_builds_and_profiles_a_worker() {
    let checkout = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(checkout.join("README.md")).unwrap();
    let files = recipe_files(&readme);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Cargo.toml", ".cargo/config.toml", "src/main.rs"]);

    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("recipe");
    for (name, body) in &files {
        let body = if name == "Cargo.toml" {
            assert!(
                body.contains(README_DEPENDENCY),
                "the README's dependency line changed: update this test"
            );
            let dependency = format!("leakprof = {{ path = {:?}", checkout.display().to_string());
            let package =
                "[package]\nname = \"recipe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n";
            format!("{package}{}", body.replace(README_DEPENDENCY, &dependency))
        } else {
            body.clone()
        };
        let path = crate_dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    // Pin the versions this checkout is tested with.
    std::fs::copy(checkout.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();

    let target = checkout.join("target").join("readme-recipe");
    let mut build = cargo(&crate_dir, &target, &["build", "--offline", "--quiet"]);
    if !build.status.success() {
        build = cargo(&crate_dir, &target, &["build", "--quiet"]);
    }
    assert!(
        build.status.success(),
        "the README recipe does not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let run = Command::new(target.join("debug").join("recipe"))
        .current_dir(&crate_dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the README recipe fails: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    // What the recipe promises: every job's leaked 4 KiB, under its task
    // and attempt, in a profile the reporter loads.
    let profile = leakprof::format::load(crate_dir.join("profile.json")).unwrap();
    let leaked_tags: Vec<_> = profile
        .tags
        .iter()
        .filter(|t| t.task.is_some() && t.live.bytes >= 4096)
        .collect();
    let tasks: std::collections::BTreeSet<u64> =
        leaked_tags.iter().filter_map(|t| t.task).collect();
    assert_eq!(tasks.len(), 100, "every job's leak is under its task");
    // Jobs 0, 10, ... fail twice: their attempts 1 and 2 leak too.
    assert!(
        leaked_tags
            .iter()
            .any(|t| t.task == Some(10) && t.retry == Some(2)),
        "a retried job's third attempt keeps its tag"
    );
    // The RSS gap's split has what the recorder measured.
    assert!(profile.meta.rss_at_start_bytes.is_some_and(|b| b > 0));
    assert!(profile.recorder.as_ref().is_some_and(|r| r.total > 0));
    // The README's CI gate: failed attempts left 4 KiB each, no marks.
    let limits = leakprof::Limits::new().max_leak_per_retry(1024);
    let verdict = leakprof::check(&profile, &limits);
    assert!(
        verdict
            .reason()
            .starts_with("leak per retry 4.0 KiB exceeds the limit 1.0 KiB"),
        "{}",
        verdict.reason()
    );
}
