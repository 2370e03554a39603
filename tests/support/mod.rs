//! Helpers shared by the integration tests. Each test binary uses a part.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod logs;
mod profiles;
pub mod python;
pub mod redis;

#[allow(unused_imports)]
pub use profiles::*;

/// The path of an example binary of this package, building it first if
/// `cargo test` did not (it builds examples, but not always first).
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building example {name}");
    }
    path
}
