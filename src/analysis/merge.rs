//! Summing the profiles of several processes into one.
//!
//! Processes number their frames, stacks and tags independently and load
//! code at different addresses, so nothing is matched by index or address:
//! frames by what they read (function, file, line), modules by path and
//! build id, stacks by their frames, tags by (task, retry, label, type).
//! Tasks are matched by their external id (a Dramatiq message id) when they
//! have one: every process numbers its tasks from 1, so the same number in
//! two processes is usually two different messages, and the same message
//! retried in another process is one task. A task whose number is already
//! taken by another message gets a fresh number, in its tags and timeline
//! points too.
//! The heap graphs' owners and vias are merged by name; per-object graph
//! data (nodes, cycles) is process-specific and is dropped.
//!
//! Timelines are aligned on wall-clock time (each profile's
//! `start_unix_ms`) and summed: at every sample time of any process, the
//! merged point holds the sum of every process's latest sample, so the
//! merged RSS is the fleet's RSS. Marked events keep their task and retry.

use std::collections::{BTreeMap, HashMap};

use super::Accumulate;
use crate::format::{
    Amount, Dropped, Folded, Frame, Graph, LiveGroup, Meta, Mode, Module, Owner, Profile,
    RecordOptions, RecorderMemory, Stack, StackStats, TagInfo, TaskInfo, TimelinePoint, Totals,
    Via, FORMAT_NAME, VERSION_V1, VERSION_V2,
};

use super::relative::{frame_symbol, tag_key, TagKey};

/// Merges profiles; `None` for an empty list.
pub fn merge(profiles: &[Profile]) -> Option<Profile> {
    let first = profiles.first()?;
    let mut m = Merger::default();
    for p in profiles {
        m.add(p);
    }
    Some(m.finish(profiles, first))
}

/// A frame as it reads (function, file, line, inlined) and its module.
type FrameKey = (String, Option<String>, Option<u32>, bool, Option<u32>);

/// A live group's identity: stack, tag, owner, via, unreachable.
/// (stack, tag, owner, via, unreachable, object type).
type GroupKey = (u32, u32, Option<u32>, Option<u32>, bool, Option<u32>);

#[derive(Default)]
struct Merger {
    modules: Vec<Module>,
    module_ids: HashMap<(String, Option<String>), u32>,
    frames: Vec<Frame>,
    frame_ids: HashMap<FrameKey, u32>,
    stacks: Vec<Stack>,
    stack_ids: HashMap<Vec<u32>, u32>,
    tags: Vec<TagInfo>,
    tag_ids: HashMap<TagKey, u32>,
    live: BTreeMap<GroupKey, Amount>,
    stack_stats: BTreeMap<u32, StackStats>,
    tasks: BTreeMap<u64, TaskInfo>,
    /// Merged task number of each external id seen.
    task_ids: HashMap<String, u64>,
    /// Per input profile: its task numbers that were renumbered.
    renumbered: Vec<HashMap<u64, u64>>,
    totals: Totals,
    dropped: Dropped,
    folded: Option<Folded>,
    recorder: Option<RecorderMemory>,
    graph: Option<Graph>,
    owner_ids: HashMap<(String, String), u32>,
    via_ids: HashMap<(String, Option<u64>, Option<String>), u32>,
}

impl Merger {
    fn add(&mut self, p: &Profile) {
        let module_map: Vec<u32> = p
            .modules
            .iter()
            .map(|md| {
                let key = (md.path.clone(), md.build_id.clone());
                *self.module_ids.entry(key).or_insert_with(|| {
                    self.modules.push(md.clone());
                    self.modules.len() as u32 - 1
                })
            })
            .collect();
        let frame_map: Vec<u32> = p
            .frames
            .iter()
            .map(|f| {
                let module = f.module.map(|m| module_map[m as usize]);
                let (func, file, line, inlined) = frame_symbol(f);
                *self
                    .frame_ids
                    .entry((func, file, line, inlined, module))
                    .or_insert_with(|| {
                        let mut f = f.clone();
                        f.module = module;
                        self.frames.push(f);
                        self.frames.len() as u32 - 1
                    })
            })
            .collect();
        let stack_map: Vec<u32> = p
            .stacks
            .iter()
            .map(|s| {
                let frames: Vec<u32> = s.frames.iter().map(|&f| frame_map[f as usize]).collect();
                let truncated = s.truncated;
                let stacks = &mut self.stacks;
                let id = *self.stack_ids.entry(frames.clone()).or_insert_with(|| {
                    stacks.push(Stack { frames, truncated });
                    stacks.len() as u32 - 1
                });
                self.stacks[id as usize].truncated |= truncated;
                id
            })
            .collect();
        if self.tags.is_empty() {
            self.tags.push(TagInfo::default());
            self.tag_ids.insert(tag_key(&TagInfo::default()), 0);
        }
        let renumbered = self.number_tasks(p);
        let tag_map: Vec<u32> = p
            .tags
            .iter()
            .map(|t| {
                let renamed;
                let t = match t.task.and_then(|task| renumbered.get(&task)) {
                    Some(&task) => {
                        renamed = TagInfo {
                            task: Some(task),
                            ..t.clone()
                        };
                        &renamed
                    }
                    None => t,
                };
                let tags = &mut self.tags;
                let id = *self.tag_ids.entry(tag_key(t)).or_insert_with(|| {
                    let id = tags.len() as u32;
                    tags.push(TagInfo {
                        id,
                        live: Amount::default(),
                        allocated: Amount::default(),
                        peak: Amount::default(),
                        first_ns: None,
                        last_ns: None,
                        active: false,
                        ..t.clone()
                    });
                    id
                });
                let m = &mut self.tags[id as usize];
                m.live.accumulate(t.live);
                m.allocated.accumulate(t.allocated);
                m.peak.accumulate(t.peak);
                m.first_ns = min_opt(m.first_ns, t.first_ns);
                m.last_ns = m.last_ns.max(t.last_ns);
                m.active |= t.active;
                id
            })
            .collect();
        let (owner_map, via_map, type_map) = self.add_graph(p);
        for g in &p.live {
            let key = (
                stack_map[g.stack as usize],
                tag_map[g.tag as usize],
                g.owner.map(|o| owner_map[o as usize]),
                g.via.map(|v| via_map[v as usize]),
                g.unreachable,
                g.object_type
                    .and_then(|t| type_map.get(t as usize).copied()),
            );
            self.live.entry(key).or_default().accumulate(Amount {
                bytes: g.bytes,
                blocks: g.blocks,
            });
        }
        for s in &p.stack_stats {
            let id = stack_map[s.stack as usize];
            let e = self.stack_stats.entry(id).or_insert_with(|| StackStats {
                stack: id,
                ..StackStats::default()
            });
            e.allocated.accumulate(s.allocated);
            e.at_peak.accumulate(s.at_peak);
            e.live.accumulate(s.live);
        }
        for t in &p.tasks {
            let task = renumbered.get(&t.task).copied().unwrap_or(t.task);
            match self.tasks.get_mut(&task) {
                Some(m) => {
                    m.retries = m.retries.max(t.retries);
                    m.first_ns = min_opt(m.first_ns, t.first_ns);
                    // The outcome of the latest attempt is the task's.
                    if t.last_ns > m.last_ns && t.outcome.is_some() {
                        m.outcome.clone_from(&t.outcome);
                    }
                    m.last_ns = m.last_ns.max(t.last_ns);
                }
                None => {
                    self.tasks.insert(task, TaskInfo { task, ..t.clone() });
                }
            }
        }
        self.renumbered.push(renumbered);
        self.add_counts(p);
    }

    /// Sums `p`'s totals, dropped counters, folded tasks and recorder
    /// memory into the merged ones.
    fn add_counts(&mut self, p: &Profile) {
        let t = &mut self.totals;
        t.live.accumulate(p.totals.live);
        // Peaks of different processes need not coincide: their sum bounds
        // the merged peak from above.
        t.peak.accumulate(p.totals.peak);
        t.peak_error_bytes = t.peak_error_bytes.saturating_add(p.totals.peak_error_bytes);
        t.peak_ns = t.peak_ns.max(p.totals.peak_ns);
        t.allocated.accumulate(p.totals.allocated);
        t.rss_bytes = t.rss_bytes.saturating_add(p.totals.rss_bytes);
        let d = &mut self.dropped;
        d.untracked_allocs = d
            .untracked_allocs
            .saturating_add(p.dropped.untracked_allocs);
        d.untracked_bytes = d.untracked_bytes.saturating_add(p.dropped.untracked_bytes);
        d.stacks_overflowed = d
            .stacks_overflowed
            .saturating_add(p.dropped.stacks_overflowed);
        d.truncated_stacks = d
            .truncated_stacks
            .saturating_add(p.dropped.truncated_stacks);
        d.timeline_points = d.timeline_points.saturating_add(p.dropped.timeline_points);
        d.tags_overflowed = d.tags_overflowed.saturating_add(p.dropped.tags_overflowed);
        d.tasks = d.tasks.saturating_add(p.dropped.tasks);
        d.timeline_decimated = d
            .timeline_decimated
            .saturating_add(p.dropped.timeline_decimated);
        if let Some(f) = &p.folded {
            let m = self.folded.get_or_insert_with(Folded::default);
            m.tasks += f.tasks;
            m.tags += f.tags;
            m.retries += f.retries;
            m.allocated.accumulate(f.allocated);
            for (outcome, n) in &f.outcomes {
                *m.outcomes.entry(outcome.clone()).or_default() += n;
            }
        }
        if let Some(r) = &p.recorder {
            let m = self.recorder.get_or_insert_with(RecorderMemory::default);
            for (sum, v) in [
                (&mut m.live_table, r.live_table),
                (&mut m.stacks, r.stacks),
                (&mut m.tags, r.tags),
                (&mut m.threads, r.threads),
                (&mut m.timeline, r.timeline),
                (&mut m.session, r.session),
                (&mut m.total, r.total),
            ] {
                *sum = sum.saturating_add(v);
            }
        }
    }

    /// Decides the merged number of each of `p`'s tasks (see the module
    /// docs) and returns those that change.
    fn number_tasks(&mut self, p: &Profile) -> HashMap<u64, u64> {
        let taken_by_tags = |tags: &[TagInfo]| tags.iter().filter_map(|t| t.task).max();
        let mut fresh = [
            self.tasks.keys().next_back().copied(),
            taken_by_tags(&self.tags),
            p.tasks.iter().map(|t| t.task).max(),
            taken_by_tags(&p.tags),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let mut renumbered = HashMap::new();
        for t in &p.tasks {
            let Some(external) = &t.external_id else {
                continue;
            };
            let task = match self.task_ids.get(external) {
                Some(&task) => task,
                // Numbers kept or given earlier are in `self.tasks`; fresh
                // ones are above every number of `p`.
                None if self.tasks.contains_key(&t.task) => {
                    fresh += 1;
                    fresh
                }
                None => t.task,
            };
            self.task_ids.insert(external.clone(), task);
            if task != t.task {
                renumbered.insert(t.task, task);
            }
        }
        renumbered
    }

    fn add_graph(&mut self, p: &Profile) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let Some(g) = &p.graph else {
            return (Vec::new(), Vec::new(), Vec::new());
        };
        let merged = self.graph.get_or_insert_with(|| Graph {
            thread_roots: g.thread_roots.clone(),
            ..Graph::default()
        });
        merged.scanned.accumulate(g.scanned);
        merged.edges = merged.edges.saturating_add(g.edges);
        merged.pause_ns = merged.pause_ns.saturating_add(g.pause_ns);
        if merged.thread_roots != g.thread_roots {
            merged.thread_roots = "mixed".to_string();
        }
        if let Some(py) = &g.python {
            let m = merged.python.get_or_insert_with(Default::default);
            m.objects = m.objects.saturating_add(py.objects);
            m.recorded = m.recorded.saturating_add(py.recorded);
            m.externally_held = m.externally_held.saturating_add(py.externally_held);
            m.garbage = m.garbage.saturating_add(py.garbage);
            m.gc_enabled |= py.gc_enabled;
            m.walk_ns = m.walk_ns.saturating_add(py.walk_ns);
            m.interpreter_kept.add(py.interpreter_kept);
        }
        let owners = g
            .owners
            .iter()
            .map(|o| {
                let id = *self
                    .owner_ids
                    .entry((o.name.clone(), o.kind.clone()))
                    .or_insert_with(|| {
                        merged.owners.push(Owner {
                            objects: 0,
                            retained: Amount::default(),
                            ..o.clone()
                        });
                        merged.owners.len() as u32 - 1
                    });
                let m = &mut merged.owners[id as usize];
                m.objects = m.objects.saturating_add(o.objects);
                m.retained.accumulate(o.retained);
                id
            })
            .collect();
        let vias = g
            .vias
            .iter()
            .map(|v| {
                *self
                    .via_ids
                    .entry((v.holder.clone(), v.offset, v.field.clone()))
                    .or_insert_with(|| {
                        merged.vias.push(Via {
                            holder: v.holder.clone(),
                            offset: v.offset,
                            field: v.field.clone(),
                        });
                        merged.vias.len() as u32 - 1
                    })
            })
            .collect();
        let types = g
            .types
            .iter()
            .map(|t| match merged.types.iter().position(|m| m == t) {
                Some(k) => k as u32,
                None => {
                    merged.types.push(t.clone());
                    merged.types.len() as u32 - 1
                }
            })
            .collect();
        (owners, vias, types)
    }

    fn finish(self, profiles: &[Profile], first: &Profile) -> Profile {
        let start = profiles
            .iter()
            .map(|p| p.meta.start_unix_ms)
            .min()
            .unwrap_or(0);
        let offset_ns = |p: &Profile| (p.meta.start_unix_ms - start).saturating_mul(1_000_000);
        let snapshot_ns = profiles
            .iter()
            .map(|p| p.meta.snapshot_ns + offset_ns(p))
            .max()
            .unwrap_or(0);
        let mut programs: Vec<&str> = Vec::new();
        for p in profiles {
            if !programs.contains(&p.meta.program.as_str()) {
                programs.push(&p.meta.program);
            }
        }
        // Attributes all inputs agree on still describe the merge.
        let mut attributes = first.meta.attributes.clone();
        attributes.retain(|k, v| profiles.iter().all(|p| p.meta.attributes.get(k) == Some(v)));
        attributes.insert("merged_profiles".to_string(), profiles.len().to_string());
        let sampled = profiles
            .iter()
            .find(|p| p.meta.options.mode == Mode::Sampled);
        let meta = Meta {
            program: programs.join(" + "),
            args: Vec::new(),
            pid: first.meta.pid,
            start_unix_ms: start,
            snapshot_ns,
            // Processes' RSS add up, as their snapshots' RSS do.
            rss_at_start_bytes: profiles
                .iter()
                .map(|p| p.meta.rss_at_start_bytes)
                .sum::<Option<u64>>(),
            leakprof_version: env!("CARGO_PKG_VERSION").to_string(),
            options: RecordOptions {
                mode: if sampled.is_some() {
                    Mode::Sampled
                } else {
                    Mode::Full
                },
                sample_mean_bytes: sampled.and_then(|p| p.meta.options.sample_mean_bytes),
                max_frames: profiles
                    .iter()
                    .map(|p| p.meta.options.max_frames)
                    .max()
                    .unwrap_or(0),
                timeline_interval_ms: first.meta.options.timeline_interval_ms,
            },
            attributes,
        };
        let live = self
            .live
            .into_iter()
            .map(
                |((stack, tag, owner, via, unreachable, object_type), a)| LiveGroup {
                    stack,
                    tag,
                    blocks: a.blocks,
                    bytes: a.bytes,
                    owner,
                    via,
                    unreachable,
                    object_type,
                },
            )
            .collect();
        Profile {
            format: FORMAT_NAME.to_string(),
            version: if self.graph.is_some() {
                VERSION_V2
            } else {
                VERSION_V1
            },
            meta,
            modules: self.modules,
            frames: self.frames,
            stacks: self.stacks,
            tags: self.tags,
            live,
            stack_stats: self.stack_stats.into_values().collect(),
            tasks: self.tasks.into_values().collect(),
            totals: self.totals,
            timeline: merge_timelines(profiles, &self.renumbered, start),
            dropped: self.dropped,
            folded: self.folded,
            graph: self.graph,
            recorder: self.recorder,
        }
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Sums timelines aligned on wall-clock time; see the module docs.
fn merge_timelines(
    profiles: &[Profile],
    renumbered: &[HashMap<u64, u64>],
    start_ms: u64,
) -> Vec<TimelinePoint> {
    // (time, process, point index), in time order.
    let mut order: Vec<(u64, usize, usize)> = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        let off = (p.meta.start_unix_ms - start_ms).saturating_mul(1_000_000);
        order.extend(
            p.timeline
                .iter()
                .enumerate()
                .map(|(j, pt)| (pt.t_ns + off, i, j)),
        );
    }
    order.sort_unstable();
    let mut latest: Vec<Option<&TimelinePoint>> = vec![None; profiles.len()];
    let mut out = Vec::with_capacity(order.len());
    for (t, i, j) in order {
        let pt = &profiles[i].timeline[j];
        latest[i] = Some(pt);
        let (mut rss, mut live, mut blocks) = (0u64, 0u64, 0u64);
        for q in latest.iter().flatten() {
            rss = rss.saturating_add(q.rss_bytes);
            live = live.saturating_add(q.live_bytes);
            blocks = blocks.saturating_add(q.live_blocks);
        }
        out.push(TimelinePoint {
            t_ns: t,
            rss_bytes: rss,
            live_bytes: live,
            live_blocks: blocks,
            task: pt
                .task
                .map(|task| renumbered[i].get(&task).copied().unwrap_or(task)),
            retry: pt.retry,
            event: pt.event.clone(),
        });
    }
    out
}
