//! Reading the PROFILE|DIR argument every reporting command takes.

use std::path::{Path, PathBuf};

use crate::format::Profile;

/// The profile file a PROFILE|DIR argument names: the path itself, or
/// `DIR/profile.json` for a `leakprof run` output directory.
pub fn profile_path(arg: &Path) -> PathBuf {
    if arg.is_dir() {
        arg.join("profile.json")
    } else {
        arg.to_path_buf()
    }
}

/// Loads the profile a PROFILE|DIR argument names.
pub fn load_profile_arg(arg: &Path) -> anyhow::Result<Profile> {
    let path = profile_path(arg);
    if arg.is_dir() && !path.exists() {
        anyhow::bail!(
            "{} is a directory without a profile.json (is it a `leakprof run` output directory?)",
            arg.display()
        );
    }
    Ok(crate::format::load(&path)?)
}
