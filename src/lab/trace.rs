//! `leakprof run --trace-memory`: after each job, what that job left
//! behind (MRQ's `--trace_memory`): the blocks allocated under the job's
//! task and retry that are still alive once it ended, grouped by
//! allocation site and type, with their owner from a heap graph. With
//! `--trace-memory-type PATTERN`, the retainer chains of that job's objects
//! of matching type are drawn into one SVG per job (MRQ's
//! `--trace_memory_type` with objgraph).
//!
//! The worker thread that finished the job hands it to the run's main
//! thread and waits: the snapshot is taken from a thread that never held
//! the job's objects, while the worker is parked outside the job's frames.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::analysis::check::human_bytes;
use crate::analysis::model::Model;
use crate::analysis::retainers::{chains, Selection};
use crate::format::{write_atomically, Amount, Profile};
use crate::render::retainers;

/// A finished job, as the worker reports it.
#[derive(Clone, Debug)]
pub struct JobDone {
    pub task: u64,
    pub retry: u32,
    pub actor: String,
    pub message_id: String,
    pub outcome: &'static str,
}

/// What the worker calls after each job.
pub type AfterJob = Arc<dyn Fn(JobDone) + Send + Sync>;

/// The channel from worker threads to the tracing (main) thread. Each job
/// waits for its report before the worker takes the next message.
pub struct Tracer {
    jobs: Receiver<(JobDone, Sender<()>)>,
    pub hook: AfterJob,
    type_pattern: Option<String>,
    output_dir: Option<PathBuf>,
}

impl Tracer {
    pub fn new(type_pattern: Option<String>, output_dir: Option<PathBuf>) -> Tracer {
        let (tx, rx) = std::sync::mpsc::channel::<(JobDone, Sender<()>)>();
        let tx = Mutex::new(tx);
        let hook: AfterJob = Arc::new(move |job| {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let sent = tx
                .lock()
                .map(|t| t.send((job, done_tx)).is_ok())
                .unwrap_or(false);
            if sent {
                // The run loop answers after its report; if it has gone,
                // recv fails and the worker goes on.
                let _ = done_rx.recv();
            }
        });
        Tracer {
            jobs: rx,
            hook,
            type_pattern,
            output_dir,
        }
    }

    /// Reports every job waiting, with `snapshot` producing a profile (a
    /// graph snapshot, from the calling thread) per job. Returns the report
    /// texts, for the caller to print.
    pub fn drain(&self, snapshot: impl Fn(&[String]) -> Profile, mut print: impl FnMut(&str)) {
        while let Ok((job, done)) = self.jobs.try_recv() {
            let keep: Vec<String> = self.type_pattern.iter().cloned().collect();
            let profile = snapshot(&keep);
            print(&report_job(&profile, &job));
            if let (Some(pattern), Some(dir)) = (&self.type_pattern, &self.output_dir) {
                match write_job_chains(&profile, &job, pattern, dir) {
                    Ok(Some(path)) => print(&format!(
                        "    chains of {pattern} objects: {}\n",
                        path.display()
                    )),
                    Ok(None) => {}
                    Err(e) => print(&format!("    could not write the chain graph: {e}\n")),
                }
            }
            let _ = done.send(());
        }
    }
}

/// The per-job report: what the job allocated that is still alive.
pub fn report_job(profile: &Profile, job: &JobDone) -> String {
    let model = Model::new(profile);
    let graph = profile.graph.as_ref();
    let mut rows: BTreeMap<(String, String, String), Amount> = BTreeMap::new();
    let mut total = Amount::default();
    for g in &profile.live {
        let tag = &profile.tags[g.tag as usize];
        if tag.task != Some(job.task) || tag.retry != Some(job.retry) {
            continue;
        }
        let owner = match (g.owner, graph) {
            (Some(o), Some(gr)) => gr.owners[o as usize].name.clone(),
            _ => model.owner(g).to_string(),
        };
        let a = Amount {
            bytes: g.bytes,
            blocks: g.blocks,
        };
        total.add(a);
        rows.entry((
            model.type_name(g).to_string(),
            model.site(g).to_string(),
            owner,
        ))
        .or_default()
        .add(a);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[trace-memory] task {} retry {} ({}, message {}, {}): {} in {} block(s) still alive",
        job.task,
        job.retry,
        job.actor,
        job.message_id,
        job.outcome,
        human_bytes(total.bytes),
        total.blocks
    );
    let mut sorted: Vec<_> = rows.into_iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.1.bytes));
    for ((type_name, site, owner), a) in sorted.iter().take(10) {
        let _ = writeln!(
            out,
            "    {:>10} {:>6} block(s)  {type_name}  at {site}  (owner: {owner})",
            human_bytes(a.bytes),
            a.blocks
        );
    }
    if sorted.len() > 10 {
        let _ = writeln!(out, "    <{} more rows>", sorted.len() - 10);
    }
    out
}

/// Draws the chains of the job's objects whose type matches `pattern` into
/// `dir/task-<t>-retry-<r>.svg`; `None` when the job left none.
pub fn write_job_chains(
    profile: &Profile,
    job: &JobDone,
    pattern: &str,
    dir: &Path,
) -> std::io::Result<Option<PathBuf>> {
    let Ok(all) = chains(profile, &Selection::Type(pattern.to_string())) else {
        return Ok(None);
    };
    let graph = profile.graph.as_ref();
    let mine: Vec<_> = all
        .into_iter()
        .filter(|c| {
            c.target()
                .and_then(|t| graph.and_then(|g| g.nodes.get(t.node as usize)))
                .and_then(|n| profile.tags.get(n.tag as usize))
                .is_some_and(|t| t.task == Some(job.task) && t.retry == Some(job.retry))
        })
        .take(8)
        .collect();
    if mine.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("task-{}-retry-{}.svg", job.task, job.retry));
    let title = format!(
        "{pattern} objects left by task {} retry {}",
        job.task, job.retry
    );
    write_atomically(&path, retainers::svg(&mine, &title).as_bytes())?;
    Ok(Some(path))
}
