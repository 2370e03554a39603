//! Which Python a command runs, and whether leakprof can load into it.
//!
//! A command is a Python program when it is a Python interpreter
//! (`python3.11 app.py`, or anything named `python*`, such as pyenv's
//! shims) or a script whose `#!` line names one (a virtual
//! environment's `bin/dramatiq`, `#!/usr/bin/env python3`). The bootstrap
//! reaches the interpreter through PYTHONPATH and `site`, which `-I`
//! (isolated), `-E` (ignore PYTHON* variables) and `-S` (no `site`) turn
//! off: those are refused here, from the command line and the `#!` line,
//! rather than recording nothing.

use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};

/// The version the recorder reads (`record::python::layout`).
pub const SUPPORTED: &str = "3.11";

/// The interpreter behind a command.
#[derive(Debug)]
pub struct Interpreter {
    pub python: PathBuf,
}

/// Finds the interpreter of `command` (program and arguments) and checks
/// that the bootstrap can load into it.
pub fn of_command(command: &[OsString]) -> anyhow::Result<Interpreter> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let path = find_program(program)?;
    let shown = path.display();
    // A file named like an interpreter is one, even a shell script (pyenv's
    // shims, wrappers): it passes the environment on to the real one.
    let named_python = looks_like_python(&path);
    let script = if named_python { None } else { shebang(&path)? };
    let (python, flags): (PathBuf, Vec<OsString>) = match script {
        Some((interpreter, shebang_args)) => {
            let (python, mut flags) = env_target(interpreter, shebang_args)?;
            if !looks_like_python(&python) {
                bail!(
                    "{shown} is not a Python program (its #! line runs {})",
                    python.display()
                );
            }
            flags.extend(args.iter().cloned());
            (python, flags)
        }
        None if named_python => (path.clone(), args.to_vec()),
        None => bail!("{shown} is not a Python program: leakprof run records Python 3.11 programs"),
    };
    refuse_flags(&interpreter_options(&flags))?;
    check_version(&python)?;
    Ok(Interpreter { python })
}

/// `program` as given, or found on PATH.
fn find_program(program: &OsStr) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(program);
    if as_path.components().count() > 1 {
        return Ok(as_path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{}: command not found", as_path.display()))
}

/// The `#!` line's interpreter and its argument, if the file has one.
fn shebang(path: &Path) -> anyhow::Result<Option<(PathBuf, Vec<OsString>)>> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    let head = &head[..n];
    let Some(line) = head.strip_prefix(b"#!") else {
        return Ok(None);
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| OsStr::from_bytes(w).to_os_string());
    let Some(interpreter) = words.next() else {
        return Ok(None);
    };
    Ok(Some((PathBuf::from(interpreter), words.collect())))
}

/// `#!/usr/bin/env python3 -X` runs `python3` from PATH.
fn env_target(
    interpreter: PathBuf,
    args: Vec<OsString>,
) -> anyhow::Result<(PathBuf, Vec<OsString>)> {
    if interpreter.file_name() != Some(OsStr::new("env")) {
        return Ok((interpreter, args));
    }
    let mut args = args.into_iter();
    let program = args
        .next()
        .ok_or_else(|| anyhow!("a #!/usr/bin/env line without a program"))?;
    if program.as_bytes().starts_with(b"-") {
        bail!("#!/usr/bin/env with options is not supported: run the interpreter itself under leakprof");
    }
    Ok((find_program(&program)?, args.collect()))
}

fn looks_like_python(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"python"))
}

/// The single-letter interpreter options before the script, `-c` or `-m`.
fn interpreter_options(args: &[OsString]) -> Vec<u8> {
    let mut letters = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let arg = arg.as_bytes();
        if arg == b"--" || arg == b"-" || !arg.starts_with(b"-") {
            break;
        }
        if arg.starts_with(b"--") {
            continue; // long options (--check-hash-based-pycs ...)
        }
        for (i, &c) in arg.iter().enumerate().skip(1) {
            letters.push(c);
            match c {
                b'c' | b'm' => return letters,
                // Options with a value, attached or next.
                b'W' | b'X' => {
                    if i + 1 == arg.len() {
                        args.next();
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    letters
}

fn refuse_flags(letters: &[u8]) -> anyhow::Result<()> {
    const DEFEATING: &[(u8, &str)] = &[
        (b'I', "-I (isolated mode ignores PYTHONPATH)"),
        (b'E', "-E (PYTHON* variables ignored)"),
        (b'S', "-S (no site module)"),
    ];
    match DEFEATING.iter().find(|(c, _)| letters.contains(c)) {
        Some((_, why)) => {
            bail!("leakprof cannot load into a Python run with {why}: run it without that flag")
        }
        None => Ok(()),
    }
}

fn check_version(python: &Path) -> anyhow::Result<()> {
    let output = Command::new(python)
        .args([
            "-I",
            "-S",
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() {
        bail!(
            "{} does not run: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if version != SUPPORTED {
        bail!(
            "Python {version} ({}) is not supported: leakprof records Python {SUPPORTED} only",
            python.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        String::from_utf8(interpreter_options(&args)).unwrap()
    }

    #[test]
    fn interpreter_options_stop_at_the_program() {
        assert_eq!(options(&["-u", "app.py", "-I"]), "u");
        assert_eq!(options(&["-IS", "app.py"]), "IS");
        assert_eq!(options(&["-X", "dev", "-E", "-m", "dramatiq", "-S"]), "XEm");
        assert_eq!(options(&["-Wignore", "-c", "pass", "-I"]), "Wc");
        assert!(refuse_flags(b"uI").is_err());
        assert!(refuse_flags(b"uXs").is_ok());
    }
}
