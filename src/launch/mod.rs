//! `leakprof run -- COMMAND`: a Python program run under the recorder
//! (issue 11).
//!
//! The steps: find the program's interpreter and check that leakprof can
//! load into it ([`interpreter`]); write the bootstrap and the `leakprof`
//! Python package into the output directory ([`package`]); start the
//! command with that directory first on PYTHONPATH, so `site` imports our
//! `sitecustomize` before the program's code, which loads the native
//! recorder (`libleakprof_python.so`) and says whether it could; supervise
//! the run (`--duration`, `--max-rss`, SIGINT/SIGTERM: the program is
//! interrupted with SIGINT, so its `atexit` handlers, ours included, run;
//! the snapshot signal is passed on, and the program writes a snapshot);
//! then turn the profiles the program (and each process it forked, also
//! those that end in `os._exit`) wrote at exit into one merged profile and
//! the usual outputs.

pub mod interpreter;
mod package;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::analysis::summary::Summary;
use crate::format::attributes;

/// How long the bootstrap may take to say it loaded.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// A Python run's settings.
#[derive(Debug)]
pub struct PythonRun {
    pub command: Vec<OsString>,
    pub out: PathBuf,
    pub duration: Option<Duration>,
    pub max_rss: u64,
    pub max_frames: u32,
    pub timeline_interval_ms: u64,
    /// The signal that makes the program write a mid-run snapshot (sent to
    /// leakprof, it is passed on); `None`: no snapshots.
    pub snapshot_signal: Option<libc::c_int>,
}

/// `--snapshot-signal`: a signal, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSignal(pub Option<libc::c_int>);

impl std::str::FromStr for SnapshotSignal {
    type Err = String;

    fn from_str(name: &str) -> Result<SnapshotSignal, String> {
        parse_snapshot_signal(name).map(SnapshotSignal)
    }
}

/// `USR1`, `SIGUSR2`, ... or `none`.
fn parse_snapshot_signal(name: &str) -> Result<Option<libc::c_int>, String> {
    let upper = name.to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    match short {
        "NONE" => Ok(None),
        "USR1" => Ok(Some(libc::SIGUSR1)),
        "USR2" => Ok(Some(libc::SIGUSR2)),
        "HUP" => Ok(Some(libc::SIGHUP)),
        "WINCH" => Ok(Some(libc::SIGWINCH)),
        _ => Err(format!(
            "{name}: not a snapshot signal (USR1, USR2, HUP, WINCH or none)"
        )),
    }
}

/// How a Python run ended.
#[derive(Debug)]
pub struct PythonReport {
    pub out: PathBuf,
    pub status: ExitStatus,
    pub stop_reason: &'static str,
    pub elapsed: Duration,
    pub summary: Summary,
}

/// Runs the command under the recorder and writes the outputs.
pub fn run(cfg: &PythonRun) -> anyhow::Result<PythonReport> {
    let interpreter = interpreter::of_command(&cfg.command)?;
    let native = native_library()?;
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let dirs = package::write(&cfg.out)?;
    let profile_path = cfg.out.join("profile.json");
    for stale in [profile_path.clone(), dirs.ready.clone()]
        .into_iter()
        .chain(child_profiles(&cfg.out))
    {
        let _ = std::fs::remove_file(stale);
    }
    let started = Instant::now();
    let mut child = spawn(cfg, &dirs, &native)?;
    let (status, stop_reason) = supervise(cfg, &mut child, &dirs.ready, &interpreter)?;
    let elapsed = started.elapsed();
    if !profile_path.exists() {
        bail!(
            "{} ended ({status}) without writing its profile (killed before its exit handlers ran?)",
            shown(&cfg.command)
        );
    }
    let children = child_profiles(&cfg.out);
    let mut profile = if children.is_empty() {
        crate::format::load(&profile_path)?
    } else {
        // Every process keeps a profile of its own; profile.json becomes
        // the merge.
        let own = cfg.out.join(format!("profile-{}.json", child.id()));
        std::fs::rename(&profile_path, &own)
            .with_context(|| format!("renaming {}", profile_path.display()))?;
        merged_profile(&own, &children)?
    };
    profile
        .meta
        .attributes
        .insert(attributes::STOP_REASON.to_string(), stop_reason.to_string());
    let summary = crate::lab::outputs::write(&cfg.out, &profile)?;
    Ok(PythonReport {
        out: cfg.out.clone(),
        status,
        stop_reason,
        elapsed,
        summary,
    })
}

/// The profiles forked children of the program wrote
/// (`profile-<pid>.json`), in pid order.
fn child_profiles(out: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let pid = name.strip_prefix("profile-")?.strip_suffix(".json")?;
            Some((pid.parse().ok()?, entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

/// The program's profile with its forked children's summed in. A forked
/// child's profile includes the blocks it inherited at the fork: each
/// process holds its own copy.
fn merged_profile(root: &Path, children: &[PathBuf]) -> anyhow::Result<crate::format::Profile> {
    let mut profiles = vec![crate::format::load(root)?];
    for child in children {
        profiles.push(crate::format::load(child)?);
    }
    crate::analysis::merge::merge(&profiles).ok_or_else(|| anyhow!("no profile to merge"))
}

/// `libleakprof_python.so`: `$LEAKPROF_NATIVE`, else beside the `leakprof`
/// executable (cargo puts both in `target/<profile>/`).
fn native_library() -> anyhow::Result<PathBuf> {
    const NAME: &str = "libleakprof_python.so";
    if let Some(path) = std::env::var_os("LEAKPROF_NATIVE") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("finding the leakprof executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(NAME), dir.join("..").join(NAME)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "leakprof's Python library {NAME} is not beside {}: build it with `cargo build -p leakprof-python` (or set LEAKPROF_NATIVE)",
            exe.display()
        )
    })
}

fn spawn(cfg: &PythonRun, dirs: &package::Dirs, native: &Path) -> anyhow::Result<Child> {
    let mut python_path = vec![dirs.bootstrap.clone(), dirs.package.clone()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        python_path.extend(std::env::split_paths(&existing));
    }
    let python_path = std::env::join_paths(python_path).context("building PYTHONPATH")?;
    let (program, args) = cfg
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let out = std::path::absolute(&cfg.out).unwrap_or_else(|_| cfg.out.clone());
    install_signal_handlers(cfg.snapshot_signal);
    Command::new(program)
        .args(args)
        .env("PYTHONPATH", python_path)
        .env("LEAKPROF_NATIVE", native)
        .env("LEAKPROF_OUT", out)
        .env("LEAKPROF_READY", &dirs.ready)
        .env("LEAKPROF_MAX_FRAMES", cfg.max_frames.to_string())
        .env("LEAKPROF_TIMELINE_MS", cfg.timeline_interval_ms.to_string())
        .env(
            "LEAKPROF_SNAPSHOT_SIGNAL",
            cfg.snapshot_signal.unwrap_or(0).to_string(),
        )
        .spawn()
        .with_context(|| format!("starting {}", shown(&cfg.command)))
}

/// Waits for the program, stopping it (SIGINT) at `--duration`, at
/// `--max-rss`, or when leakprof is interrupted. Fails when the recorder
/// did not load.
fn supervise(
    cfg: &PythonRun,
    child: &mut Child,
    ready: &Path,
    interpreter: &interpreter::Interpreter,
) -> anyhow::Result<(ExitStatus, &'static str)> {
    let started = Instant::now();
    let mut loaded = false;
    let mut stop_reason = "completed";
    let mut interrupted = false;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the program")? {
            if !loaded {
                check_loaded(ready, &cfg.command, interpreter)?;
            }
            return Ok((status, stop_reason));
        }
        if !loaded {
            if ready.exists() {
                check_loaded(ready, &cfg.command, interpreter).inspect_err(|_| {
                    let _ = child.kill();
                    let _ = child.wait();
                })?;
                loaded = true;
            } else if started.elapsed() > LOAD_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the recorder did not load into {} within {LOAD_TIMEOUT:?}",
                    shown(&cfg.command)
                );
            }
        }
        if SNAPSHOTS_ASKED.swap(0, Ordering::Relaxed) > 0 {
            if let Some(signal) = cfg.snapshot_signal {
                // SAFETY: kill(2) on our own child, not reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            }
        }
        if !interrupted {
            let reason = if SIGNALLED.load(Ordering::Relaxed) {
                Some("signal")
            } else if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
                Some("duration")
            } else if rss_of(child.id()) > cfg.max_rss {
                Some("max-rss")
            } else {
                None
            };
            if let Some(reason) = reason {
                stop_reason = reason;
                interrupted = true;
                // SAFETY: kill(2) on our own child's pid, which we have not
                // reaped yet, so it cannot name another process.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Reads the bootstrap's word: `ok`, or `error: <reason>`; no word at
/// all means the bootstrap never ran.
fn check_loaded(
    ready: &Path,
    command: &[OsString],
    interpreter: &interpreter::Interpreter,
) -> anyhow::Result<()> {
    match std::fs::read_to_string(ready) {
        Ok(word) if word.trim() == "ok" => Ok(()),
        Ok(word) => bail!(
            "cannot record {}: {}",
            shown(command),
            word.trim().trim_start_matches("error: ")
        ),
        Err(_) => bail!(
            "the recorder did not load into {} ({}): its sitecustomize never ran (a program that starts Python with -I, -E or -S, or replaces PYTHONPATH?)",
            shown(command),
            interpreter.python.display()
        ),
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);
static SNAPSHOTS_ASKED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn note_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

extern "C" fn note_snapshot(_: libc::c_int) {
    SNAPSHOTS_ASKED.fetch_add(1, Ordering::Relaxed);
}

/// SIGINT and SIGTERM stop the program cleanly instead of killing
/// leakprof, and the snapshot signal is passed on; handlers (unlike an
/// ignored disposition) are reset in the child by exec.
fn install_signal_handlers(snapshot: Option<libc::c_int>) {
    let handlers = [
        (
            Some(libc::SIGINT),
            note_signal as extern "C" fn(libc::c_int),
        ),
        (Some(libc::SIGTERM), note_signal),
        (snapshot, note_snapshot),
    ];
    for (signal, handler) in handlers {
        if let Some(signal) = signal {
            // SAFETY: installs a handler that only updates an atomic, which
            // is async-signal-safe.
            unsafe { libc::signal(signal, handler as *const () as libc::sighandler_t) };
        }
    }
}

fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn shown(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `leakprof run -- COMMAND` prints at the end.
pub fn describe(report: &PythonReport) -> String {
    let s = &report.summary;
    format!(
        "The program ended ({}, stopped: {}) after {:.1} s\nSurviving: {:.2} MiB in {} blocks; allocated {:.2} MiB\nOutputs in {}: profile.json, memory.csv, memory.svg, flamegraph.svg, summary.json\n",
        report.status,
        report.stop_reason,
        report.elapsed.as_secs_f64(),
        s.surviving_bytes as f64 / 1048576.0,
        s.surviving_blocks,
        s.allocated_bytes as f64 / 1048576.0,
        report.out.display(),
    )
}
