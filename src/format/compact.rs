//! Compact profiles: idle tasks summed instead of listed.
//!
//! A worker that never calls `finish_task` (a framework's worker, tagged by
//! a layer) keeps a tag per attempt and a task record per job: 100,000 jobs
//! made a 25 MB profile, nearly all of it tasks with nothing alive. Here a
//! task is *idle* when none of its tags holds live memory or is running; the
//! newest [`KEEP_IDLE_TASKS`] idle tasks stay listed (recent history, as the
//! recorder keeps for finished tasks) and the older ones are added to the
//! profile's `folded` section, exactly as `finish_task` folds them: their
//! tags and task records go, their counts, retries, allocations and
//! outcomes are summed. Tags that hold memory, and tags of no task, are
//! never folded, so every figure of the leak analysis is unchanged (a
//! folded attempt counts as 0 bytes there, which it holds).

use std::collections::HashMap;

use super::{Amount, Folded, Profile};

/// Idle tasks listed one by one, newest first by their last run.
pub const KEEP_IDLE_TASKS: usize = 10_000;

/// Folds the idle tasks beyond the newest `keep` among the tags with an id
/// below `eligible_below` (tags past it are left as they are). Tag ids are
/// renumbered so that each stays its index; live groups and graph nodes
/// follow.
pub fn fold_idle_tasks(profile: &mut Profile, eligible_below: u32, keep: usize) {
    let idle = idle_tasks(profile, eligible_below);
    if idle.len() <= keep {
        return;
    }
    let mut by_age: Vec<(u64, u64)> = idle.iter().map(|(&task, &last)| (last, task)).collect();
    // Newest first; among equals, the higher task id first.
    by_age.sort_unstable_by(|a, b| b.cmp(a));
    let folding: std::collections::HashSet<u64> =
        by_age[keep..].iter().map(|&(_, task)| task).collect();

    let mut folded = profile.folded.take().unwrap_or_else(|| Folded {
        tasks: 0,
        tags: 0,
        retries: 0,
        allocated: Amount::default(),
        outcomes: Default::default(),
    });
    let mut highest: HashMap<u64, u32> = HashMap::new();
    let mut new_id = vec![u32::MAX; profile.tags.len()];
    let mut kept = Vec::with_capacity(profile.tags.len());
    for (id, tag) in std::mem::take(&mut profile.tags).into_iter().enumerate() {
        let fold = id < eligible_below as usize && tag.task.is_some_and(|t| folding.contains(&t));
        if fold {
            folded.tags += 1;
            folded.allocated.add(tag.allocated);
            let h = highest.entry(tag.task.unwrap_or(0)).or_default();
            *h = (*h).max(tag.retry.unwrap_or(0));
        } else {
            new_id[id] = kept.len() as u32;
            kept.push(super::TagInfo {
                id: kept.len() as u32,
                ..tag
            });
        }
    }
    profile.tags = kept;
    let mut described = 0u64;
    profile.tasks.retain(|info| {
        if !folding.contains(&info.task) {
            return true;
        }
        let h = highest.entry(info.task).or_default();
        *h = (*h).max(info.retries);
        *folded
            .outcomes
            .entry(info.outcome.clone().unwrap_or_default())
            .or_default() += 1;
        described += 1;
        false
    });
    // Folded tasks without a task record: no outcome was described.
    let undescribed = folding.len() as u64 - described.min(folding.len() as u64);
    if undescribed > 0 {
        *folded.outcomes.entry(String::new()).or_default() += undescribed;
    }
    folded.tasks += folding.len() as u64;
    folded.retries += highest.values().map(|&r| r as u64).sum::<u64>();
    profile.folded = Some(folded);
    for g in &mut profile.live {
        g.tag = new_id[g.tag as usize];
    }
    if let Some(graph) = profile.graph.as_mut() {
        for n in &mut graph.nodes {
            n.tag = new_id[n.tag as usize];
        }
    }
}

/// Tasks none of whose eligible tags holds memory or is running, with the
/// last time each ran. A task with any tag past `eligible_below` is left
/// alone (the recorder already listed it as finished).
fn idle_tasks(profile: &Profile, eligible_below: u32) -> HashMap<u64, u64> {
    let mut state: HashMap<u64, Option<u64>> = HashMap::new();
    for tag in &profile.tags {
        let Some(task) = tag.task else { continue };
        let busy =
            tag.id >= eligible_below || tag.live.bytes > 0 || tag.live.blocks > 0 || tag.active;
        let e = state.entry(task).or_insert(Some(0));
        *e = match (*e, busy) {
            (Some(last), false) => Some(last.max(tag.last_ns.unwrap_or(0))),
            _ => None,
        };
    }
    state
        .into_iter()
        .filter_map(|(task, last)| Some((task, last?)))
        .collect()
}
