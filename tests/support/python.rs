//! Pythons that run Dramatiq, for the interoperability tests: 2.0.0 (the
//! seed's version) and 2.2.1 (upstream's fix of the AsyncIO leak).
//!
//! ```ignore
//! let Some(python) = support::python::dramatiq() else { return }; // skipped
//! ```
//!
//! The 2.0.0 interpreter is `$LEAKPROF_PYTHON` when set (it must import
//! dramatiq 2.0.0 and redis; nothing is installed into it), else the
//! virtual environment `leakprof-py-venv` in the target directory, made on
//! first use with `python3 -m venv` and `pip install 'dramatiq[redis]==2.0.0'`
//! from the package index; 2.2.1 likewise with `$LEAKPROF_PYTHON_FIXED` and
//! `leakprof-py-venv-2.2.1`. Test processes making one at once take turns:
//! the set-up holds an exclusive `flock` on `<venv>.lock` beside it.
//! `.ci/run` makes the same environments beforehand and exports the
//! variables, so CI logs show the installs.
//!
//! When no such interpreter can be had, the function prints a notice and
//! returns `None` so the test can skip, except with `CI=true`, where it
//! panics: CI sets Python up, so its absence there is a failure.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What the interoperability tests are written against.
pub const DRAMATIQ: &str = "dramatiq[redis]==2.0.0";

/// One Dramatiq environment.
struct Setup {
    /// Names an existing interpreter to use instead.
    variable: &'static str,
    /// Directory under the target directory.
    venv: &'static str,
    requirement: &'static str,
    check: &'static str,
}

const SEED: Setup = Setup {
    variable: "LEAKPROF_PYTHON",
    venv: "leakprof-py-venv",
    requirement: DRAMATIQ,
    check: "import dramatiq, redis; assert dramatiq.__version__ == '2.0.0', dramatiq.__version__",
};

const FIXED: Setup = Setup {
    variable: "LEAKPROF_PYTHON_FIXED",
    venv: "leakprof-py-venv-2.2.1",
    requirement: "dramatiq[redis]==2.2.1",
    check: "import dramatiq, redis; assert dramatiq.__version__ == '2.2.1', dramatiq.__version__",
};

/// The interpreter to run Dramatiq 2.0.0 with; see the module docs.
pub fn dramatiq() -> Option<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(|| find_or_make(&SEED)) {
        Ok(python) => Some(python.clone()),
        Err(reason) => unavailable(&SEED, reason),
    }
}

/// The interpreter to run Dramatiq 2.2.1 with; see the module docs.
pub fn dramatiq_fixed() -> Option<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(|| find_or_make(&FIXED)) {
        Ok(python) => Some(python.clone()),
        Err(reason) => unavailable(&FIXED, reason),
    }
}

fn find_or_make(setup: &Setup) -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os(setup.variable) {
        let python = PathBuf::from(python);
        return check(setup, &python)
            .map(|()| python.clone())
            .map_err(|e| format!("{}={}: {e}", setup.variable, python.display()));
    }
    let venv = target_dir()?.join(setup.venv);
    let python = venv.join("bin").join("python");
    if check(setup, &python).is_ok() {
        return Ok(python);
    }
    let lock = lock(&venv.with_extension("lock"))?;
    // Another test process may have made it while we waited.
    if check(setup, &python).is_err() {
        make(setup, &venv)?;
        check(setup, &python)?;
    }
    drop(lock);
    Ok(python)
}

/// The directory cargo builds into: the test binary is `<target>/<profile>/deps/<name>`.
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the test binary: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("no target directory above {}", exe.display()))
}

fn check(setup: &Setup, python: &Path) -> Result<(), String> {
    let output = Command::new(python)
        .args(["-c", setup.check])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} cannot import {}: {}",
            python.display(),
            setup.requirement,
            last_line(&output.stderr)
        ))
    }
}

/// `python3 -m venv` and `pip install`, from scratch.
fn make(setup: &Setup, venv: &Path) -> Result<(), String> {
    eprintln!("setting up {} in {}", setup.requirement, venv.display());
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv))?;
    run(Command::new(venv.join("bin").join("python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        setup.requirement,
    ]))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            last_line(&output.stderr)
        ))
    }
}

/// Holds an exclusive lock on `path` until dropped.
fn lock(path: &Path) -> Result<File, String> {
    let file = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor `file` owns for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn unavailable(setup: &Setup, reason: &str) -> Option<PathBuf> {
    let wanted = setup.requirement;
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("Python with {wanted} is required on CI (CI=true): {reason}");
    }
    eprintln!("SKIPPED: no Python with {wanted} ({reason}); set CI=true to make this a failure");
    None
}

/// Builds the library `leakprof run` loads into the interpreter (`cargo
/// test` builds only this package) and returns its path, beside the
/// `leakprof` binary.
#[cfg(feature = "cli")]
pub fn native_library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "-p", "leakprof-python"]);
            if !cfg!(debug_assertions) {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("run cargo");
            assert!(status.success(), "building leakprof-python");
            Path::new(env!("CARGO_BIN_EXE_leakprof")).with_file_name("libleakprof_python.so")
        })
        .clone()
}

/// `leakprof run --quiet --out OUT -- COMMAND` with `env` added; asserts
/// that it succeeded and returns its standard output.
#[cfg(feature = "cli")]
pub fn leakprof_run(out: &Path, command: &[&std::ffi::OsStr], env: &[(&str, String)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_leakprof"))
        .args(["run", "--quiet", "--out"])
        .arg(out)
        .arg("--")
        .args(command)
        .env("LEAKPROF_NATIVE", native_library())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run leakprof");
    assert!(
        output.status.success(),
        "leakprof run {command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
