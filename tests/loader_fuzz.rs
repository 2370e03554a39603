//! Fuzzing the profile loader: random bytes, truncations and mutations of
//! a valid profile never panic; they give a clean error or a valid profile.
//! Every mutated profile that loads is then analysed and rendered by every
//! renderer, which must not panic either (the loader's validation is what
//! lets renderers index without bounds worries).
//!
//! tests/corpus/ keeps inputs worth keeping: `ok-*` files must load,
//! `err-*` files must be rejected with the error kind their name gives.

mod support;

use std::path::Path;

use leakprof::analysis::{grouping, Comparison, Model, Report, GROUPINGS};
use leakprof::format::{load_bytes, LoadError, Profile};
use leakprof::render::{self, Options, RENDERERS};
use proptest::prelude::*;

fn valid_profile_bytes() -> Vec<u8> {
    serde_json::to_vec_pretty(&support::exception_run(true)).unwrap()
}

/// Everything the reporter does with a profile.
fn exercise_reporter(p: &Profile) {
    let model = Model::new(p);
    for g in GROUPINGS {
        let _ = Report::new(&model, g);
    }
    for r in RENDERERS {
        let _ = render::render_to_vec(r, &model, &Options::default());
    }
    let _ = Comparison::of(p, p, "a", "b");
    let _ = leakprof::analysis::merge(&[p.clone(), p.clone()]);
    let _ = leakprof::analysis::relative_to(p, p);
    let _ = Report::new(&model, grouping("owner").unwrap());
}

fn load(bytes: &[u8]) -> Result<Profile, LoadError> {
    load_bytes(Path::new("fuzz.json"), bytes)
}

fn assert_names_file(e: &LoadError) {
    let msg = e.to_string();
    assert!(
        msg.contains("fuzz.json"),
        "error does not name the file: {msg}"
    );
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        match load(&bytes) {
            Ok(p) => exercise_reporter(&p),
            Err(e) => assert_names_file(&e),
        }
    }

    #[test]
    fn truncations_are_rejected_cleanly(cut in 0.0f64..1.0) {
        let bytes = valid_profile_bytes();
        let at = ((bytes.len() as f64) * cut) as usize;
        let trimmed_tail = bytes[at..].iter().all(|b| b.is_ascii_whitespace());
        match load(&bytes[..at]) {
            Ok(p) => {
                prop_assert!(trimmed_tail, "a truncated profile loaded");
                exercise_reporter(&p);
            }
            Err(e) => assert_names_file(&e),
        }
    }

    #[test]
    fn mutations_give_an_error_or_a_profile_the_reporter_survives(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
    ) {
        let mut bytes = valid_profile_bytes();
        for (at, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        match load(&bytes) {
            Ok(p) => exercise_reporter(&p),
            Err(e) => assert_names_file(&e),
        }
    }

    #[test]
    fn digit_mutations_keep_the_reporter_safe(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), b'0'..=b'9'), 1..6)
    ) {
        // Digits keep the JSON well-formed far more often than random
        // bytes, so these reach the cross-reference checks and the reporter.
        let mut bytes = valid_profile_bytes();
        let digits: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect();
        for (at, d) in edits {
            bytes[digits[at.index(digits.len())]] = d;
        }
        match load(&bytes) {
            Ok(p) => exercise_reporter(&p),
            Err(e) => assert_names_file(&e),
        }
    }
}

#[test]
fn corpus_files_load_or_fail_as_their_names_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let result = load_bytes(&path, &bytes);
        seen += 1;
        if name.starts_with("ok-") {
            let p = result.unwrap_or_else(|e| panic!("{name} must load: {e}"));
            exercise_reporter(&p);
            continue;
        }
        let err = match result {
            Ok(_) => panic!("{name} must be rejected"),
            Err(e) => e,
        };
        let kind = match err {
            LoadError::Io { .. } => "io",
            LoadError::Empty { .. } => "empty",
            LoadError::Truncated { .. } => "truncated",
            LoadError::Corrupt { .. } => "corrupt",
            LoadError::WrongKind { .. } => "wrong-kind",
            LoadError::NewerVersion { .. } => "newer-version",
            LoadError::UnknownVersion { .. } => "unknown-version",
            LoadError::Inconsistent { .. } => "inconsistent",
        };
        assert!(
            name.starts_with(&format!("err-{kind}-")),
            "{name} was rejected as {kind}: {err}"
        );
        assert!(err.to_string().contains(&name), "{err}");
    }
    assert!(seen >= 10, "the corpus lost files");
}
