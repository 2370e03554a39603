//! The Python side of leakprof, carried in the binary and written into the
//! run's output directory, so `leakprof run` needs nothing installed into
//! the program's environment.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// (path under the package directory, contents).
const PACKAGE: &[(&str, &str)] = &[
    (
        "leakprof/__init__.py",
        include_str!("../../python/leakprof/__init__.py"),
    ),
    (
        "leakprof/_asyncio.py",
        include_str!("../../python/leakprof/_asyncio.py"),
    ),
    (
        "leakprof/_bootstrap.py",
        include_str!("../../python/leakprof/_bootstrap.py"),
    ),
    (
        "leakprof/_native.py",
        include_str!("../../python/leakprof/_native.py"),
    ),
    (
        "leakprof/_tags.py",
        include_str!("../../python/leakprof/_tags.py"),
    ),
    (
        "leakprof/dramatiq.py",
        include_str!("../../python/leakprof/dramatiq.py"),
    ),
    (
        "leakprof/owner.py",
        include_str!("../../python/leakprof/owner.py"),
    ),
];
const SITECUSTOMIZE: &str = include_str!("../../python/bootstrap/sitecustomize.py");

/// Where the files went.
pub struct Dirs {
    /// Holds only `sitecustomize.py`: first on PYTHONPATH.
    pub bootstrap: PathBuf,
    /// Holds the `leakprof` package.
    pub package: PathBuf,
    /// The bootstrap writes its word here.
    pub ready: PathBuf,
}

pub fn write(out: &Path) -> anyhow::Result<Dirs> {
    let root = std::path::absolute(out.join(".leakprof-python"))
        .with_context(|| format!("resolving {}", out.display()))?;
    let dirs = Dirs {
        bootstrap: root.join("bootstrap"),
        package: root.join("lib"),
        ready: root.join("ready"),
    };
    let files = PACKAGE
        .iter()
        .map(|&(path, text)| (dirs.package.join(path), text))
        .chain([(dirs.bootstrap.join("sitecustomize.py"), SITECUSTOMIZE)]);
    for (path, text) in files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dirs)
}
