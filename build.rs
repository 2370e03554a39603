//! Debug builds of this package's own programs (its tests, examples and the
//! `leakprof` binary) link their DWARF zlib-compressed: a test binary with
//! full debug info is about 140 MiB uncompressed and 35 MiB compressed, and
//! `cargo test` links some forty of them. The heap graph reads compressed
//! sections (`record::types::dwarf` inflates them once), so this also runs
//! every typed test through that path. Release builds are left as they are
//! (the benchmarks time an ordinary binary), and link arguments of a build
//! script never reach the crates that depend on this one.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let debug = std::env::var("PROFILE").is_ok_and(|p| p == "debug");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if debug && linux {
        println!("cargo:rustc-link-arg=-Wl,--compress-debug-sections=zlib");
    }
}
