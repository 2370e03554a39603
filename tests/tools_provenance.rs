//! The scripts in tools/ that write documents refuse a dirty tree and
//! name the commit they measured (tools/provenance.py). Each script is run
//! in a scratch repository holding a copy of tools/, so the check is the
//! first thing it does: refused, it never reaches its build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The scripts that write a section of docs/BENCHMARKS.md or docs/SCENARIOS.md.
const WRITERS: &[&str] = &[
    "bench-apalis",
    "bench-profile-size",
    "bench-python",
    "bench-recorder",
    "bench-scan",
    "bench-throughput",
    "run-seed-scenarios",
];

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (the tools need it)"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, "git", args);
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A committed scratch repository: tools/, a source file and the documents.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools");
    std::fs::create_dir_all(root.join("tools")).unwrap();
    for entry in std::fs::read_dir(&tools).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let to = root.join("tools").join(path.file_name().unwrap());
            std::fs::copy(&path, to).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(root.join("src/lib.rs"), "// measured code\n").unwrap();
    std::fs::write(root.join("docs/BENCHMARKS.md"), "# Benchmarks\n").unwrap();
    std::fs::write(root.join("docs/SCENARIOS.md"), "# Scenarios\n").unwrap();
    git(&root, &["init", "-q"]);
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "scratch"]);
    (tmp, root)
}

/// What `provenance.commit_to_measure(writes)` says in `root`.
fn commit_to_measure(root: &Path, writes: bool) -> Output {
    let code = format!(
        "import sys; sys.dont_write_bytecode = True; sys.path.insert(0, 'tools'); \
         import provenance; print(provenance.commit_to_measure({}))",
        if writes { "True" } else { "False" }
    );
    run(root, "python3", &["-c", &code])
}

fn assert_refused(out: &Output, script: &str, names: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{script}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{script}: {stderr}");
    assert!(stderr.contains("refusing to write"), "{script}: {stderr}");
    assert!(
        stderr.contains(names),
        "{script} must name {names}: {stderr}"
    );
}

#[test]
fn document_writers_refuse_a_dirty_tree_before_building() {
    let (_tmp, root) = scratch();
    std::fs::write(root.join("src/lib.rs"), "// changed, not committed\n").unwrap();
    for script in WRITERS {
        let out = run(&root, "python3", &[&format!("tools/{script}")]);
        assert_refused(&out, script, "src/lib.rs");
    }
    // An untracked file counts too (cargo picks up new examples and tests).
    git(&root, &["checkout", "-q", "--", "src/lib.rs"]);
    std::fs::write(root.join("src/new.rs"), "").unwrap();
    for script in WRITERS {
        let out = run(&root, "python3", &[&format!("tools/{script}")]);
        assert_refused(&out, script, "src/new.rs");
    }
    assert!(
        !root.join("tools/__pycache__").exists(),
        "importing the shared check must not leave files in tools/"
    );
}

#[test]
fn the_commit_is_named_and_generated_documents_do_not_count_as_changes() {
    let (_tmp, root) = scratch();
    let head = git(&root, &["rev-parse", "--short", "HEAD"]);
    let clean = commit_to_measure(&root, true);
    assert!(clean.status.success(), "{clean:?}");
    assert_eq!(String::from_utf8_lossy(&clean.stdout).trim(), head);
    // One script rewrote its section; the next may still measure.
    std::fs::write(root.join("docs/BENCHMARKS.md"), "# Benchmarks\n\nnew\n").unwrap();
    std::fs::write(root.join("docs/SCENARIOS.md"), "# Scenarios\n\nnew\n").unwrap();
    let after = commit_to_measure(&root, true);
    assert_eq!(String::from_utf8_lossy(&after.stdout).trim(), head);
    // A print-only run may measure a dirty tree, and says so.
    std::fs::write(root.join("src/lib.rs"), "// changed\n").unwrap();
    let dirty = commit_to_measure(&root, false);
    assert_eq!(
        String::from_utf8_lossy(&dirty.stdout).trim(),
        format!("{head}+dirty")
    );
    assert_refused(&commit_to_measure(&root, true), "provenance", "src/lib.rs");
}

/// The scripts find their binaries in cargo's target directory, wherever
/// `CARGO_TARGET_DIR` puts it (tools/provenance.py's `target_dir`).
#[test]
fn scripts_look_for_binaries_in_cargo_target_dir() {
    let (_tmp, root) = scratch();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"scratch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "manifest"]);
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("shared-target");
    let release = target.join("release");
    std::fs::create_dir_all(&release).unwrap();
    // A stand-in `leakprof` that notes it was run and lists nothing.
    let called = elsewhere.path().join("called");
    let fake = release.join("leakprof");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", called.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let with_target = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap()
    };
    let code = "import sys; sys.dont_write_bytecode = True; sys.path.insert(0, 'tools'); \
                import provenance; print(provenance.target_dir())";
    let out = with_target("python3", &["-c", code]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        target.display().to_string(),
        "{out:?}"
    );
    with_target(
        "python3",
        &[
            "tools/run-seed-scenarios",
            "--render-only",
            "--no-build",
            "--no-write",
        ],
    );
    let calls = std::fs::read_to_string(&called)
        .expect("run-seed-scenarios must run <CARGO_TARGET_DIR>/release/leakprof");
    assert!(calls.starts_with("list"), "{calls}");
}
