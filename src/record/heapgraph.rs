//! Turns a scan ([`super::scan::ScanResult`]) into the profile's version-2
//! heap-graph section: builds the [`HeapGraph`], runs [`Retention`] (the
//! graph algorithms in `crate::graph`), and maps its answers onto the
//! format: owners, vias, cycles, the stored subgraph, and per-block owner,
//! via and reachability for the live groups.
//!
//! Runs after the world has resumed, off the allocation path, with the
//! re-entrancy guard set.

use super::fxhash::FxHashMap;

use super::live::Block;
use super::scan::{RootSource, ScanResult, StopReport};
use super::tags::Tag;
use crate::format::frame_names;
use crate::format::{Amount, Cycle, Graph, LiveGroup, Node, Owner, Stack, StopStats, Via};
use crate::graph::{
    Attribution, HeapGraph, HeapGraphBuilder, LabelId, Retainer, Retention, RootKind,
    SubgraphOptions, OFFSET_UNKNOWN,
};

/// How the heap graph is taken and summarised into the profile.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GraphOptions {
    /// Also keep (with their retainer chains) every object whose type or
    /// allocation site contains one of these texts.
    pub keep_types: Vec<String>,
    /// The signal that stops threads during the scan (default `SIGPWR`, as
    /// the Boehm collector uses). A program that handles `SIGPWR` itself
    /// (Boehm, Mono) picks another, e.g. `libc::SIGRTMIN() + 3`; the scan
    /// refuses a signal the program handles.
    pub stop_signal: i32,
    /// How long every thread gets to stop before the scan goes on without
    /// it (its stack is then not a root, and the profile says so).
    pub stop_timeout: std::time::Duration,
}

impl Default for GraphOptions {
    fn default() -> GraphOptions {
        GraphOptions {
            keep_types: Vec::new(),
            stop_signal: libc::SIGPWR,
            stop_timeout: std::time::Duration::from_secs(2),
        }
    }
}

impl GraphOptions {
    /// Keeps objects whose type, label or site contains `text`.
    pub fn keep_type(mut self, text: impl Into<String>) -> GraphOptions {
        self.keep_types.push(text.into());
        self
    }

    /// Stops threads with `signal` instead of `SIGPWR`.
    pub fn stop_signal(mut self, signal: i32) -> GraphOptions {
        self.stop_signal = signal;
        self
    }

    /// Waits at most `timeout` for every thread to stop.
    pub fn stop_timeout(mut self, timeout: std::time::Duration) -> GraphOptions {
        self.stop_timeout = timeout;
        self
    }

    pub(crate) fn stop_config(&self) -> super::stop::StopConfig {
        super::stop::StopConfig {
            signal: self.stop_signal,
            timeout_ns: self.stop_timeout.as_nanos().min(u64::MAX as u128) as u64,
        }
    }
}

/// The graph section plus the live groups split by owner, via and
/// reachability.
pub(crate) struct Converted {
    pub(crate) graph: Graph,
    pub(crate) live: Vec<LiveGroup>,
}

/// What the conversion needs to know about stacks and tags.
pub(crate) struct Names<'a> {
    pub(crate) stacks: &'a [Stack],
    pub(crate) frames: &'a [crate::format::Frame],
    pub(crate) tag: &'a dyn Fn(u32) -> Tag,
}

impl Names<'_> {
    /// The allocation site of a stack: its first frame in the program's
    /// own code (standard-library frames skipped, as the reporter does),
    /// else its first frame.
    fn site(&self, stack: u32) -> String {
        let Some(s) = self.stacks.get(stack as usize) else {
            return "unknown site".to_string();
        };
        let name = |f: &u32| self.frames.get(*f as usize).map(|fr| fr.function.as_str());
        s.frames
            .iter()
            .filter_map(name)
            .find(|f| !frame_names::is_allocator_frame(f) && !frame_names::is_library_frame(f))
            .or_else(|| s.frames.first().and_then(name))
            .map(|f| frame_names::clean_function(f).to_string())
            .unwrap_or_else(|| "unknown site".to_string())
    }

    fn stack_mentions(&self, stack: u32, text: &str) -> bool {
        self.stacks.get(stack as usize).is_some_and(|s| {
            s.frames.iter().any(|&f| {
                self.frames
                    .get(f as usize)
                    .is_some_and(|fr| fr.function.contains(text))
            })
        })
    }
}

/// A node's facts, whether a block or a registered static container.
struct NodeInfo {
    address: u64,
    size: u64,
    stack: u32,
    tag: u32,
    label: Option<&'static str>,
    type_name: Option<&'static str>,
}

pub(crate) fn convert(
    scan: &ScanResult,
    names: &Names,
    options: &GraphOptions,
    weight: impl Fn(usize) -> (u64, u64),
) -> Converted {
    let blocks: &[Block] = scan.blocks.as_slice();
    let mut infos: Vec<NodeInfo> = blocks
        .iter()
        .map(|b| {
            let tag = (names.tag)(b.tag);
            NodeInfo {
                address: b.addr as u64,
                size: b.size as u64,
                stack: b.stack,
                tag: b.tag,
                label: tag.label_name(),
                type_name: tag.type_name_str(),
            }
        })
        .collect();
    // Registered heap objects take their registration's label.
    for r in &scan.registered {
        if let Some(j) = r.block {
            if let Some(info) = infos.get_mut(j as usize) {
                info.label = Some(r.label);
                info.type_name = r.type_name.or(info.type_name);
            }
        }
    }
    // Registered static containers become pseudo nodes after the blocks.
    let mut static_node: FxHashMap<u32, u32> = FxHashMap::default();
    for (k, r) in scan.registered.iter().enumerate() {
        if r.block.is_none() {
            static_node.insert(k as u32, infos.len() as u32);
            infos.push(NodeInfo {
                address: r.addr as u64,
                size: r.size,
                stack: 0,
                tag: 0,
                label: Some(r.label),
                type_name: r.type_name,
            });
        }
    }

    // Labels, dense.
    let mut label_ids: FxHashMap<&'static str, LabelId> = FxHashMap::default();
    let mut label_names: Vec<&'static str> = Vec::new();
    let mut label_of = |l: &'static str| -> LabelId {
        *label_ids.entry(l).or_insert_with(|| {
            label_names.push(l);
            LabelId(label_names.len() as u32 - 1)
        })
    };
    let mut b = HeapGraphBuilder::with_capacity(
        infos.len(),
        scan.edges.len() + scan.registered_edges.len(),
    );
    for info in &infos {
        let label = info.label.map(&mut label_of);
        b.add_node(info.size, label);
    }
    for e in scan.edges.as_slice() {
        b.add_edge(e.from, e.to, e.offset as u64);
    }
    for &(k, j) in scan.registered_edges.as_slice() {
        if let Some(&n) = static_node.get(&k) {
            b.add_edge(n, j, 0);
        }
    }
    for r in scan.roots.as_slice() {
        let kind = match r.source {
            RootSource::Stack => RootKind::Stack,
            RootSource::Tls => RootKind::Tls,
            RootSource::Static => RootKind::Static,
            RootSource::Registered(k) => {
                RootKind::Registered(label_of(scan.registered[k as usize].label))
            }
        };
        b.add_root(r.node, kind, None);
    }
    for (k, &n) in &static_node {
        b.add_root(
            n,
            RootKind::Registered(label_of(scan.registered[*k as usize].label)),
            None,
        );
    }
    let graph = match b.build() {
        Ok(g) => g,
        Err(e) => {
            return Converted {
                graph: Graph {
                    thread_roots: format!("graph not built: {e}"),
                    ..Graph::default()
                },
                live: Vec::new(),
            }
        }
    };
    let retention = Retention::compute(&graph);
    let n = infos.len() as u32;

    // Owners: one per label, then one per site of unowned top-most holders.
    let mut owners: Vec<Owner> = Vec::new();
    let mut owner_of_label: FxHashMap<u32, u32> = FxHashMap::default();
    for s in retention.labels() {
        let name = label_names[s.label.0 as usize];
        let type_name = infos
            .iter()
            .find(|i| i.label == Some(name))
            .and_then(|i| i.type_name)
            .map(str::to_string);
        owner_of_label.insert(s.label.0, owners.len() as u32);
        owners.push(Owner {
            name: name.to_string(),
            kind: "labelled".to_string(),
            type_name,
            objects: s.objects,
            retained: s.retained,
        });
    }
    // For blocks no labelled object dominates: the labelled object that
    // reaches them in the fewest hops, if any (one BFS from every labelled
    // block at once). A block kept by a labelled container *and* by
    // something else (often a stale word in a stack frame, which a
    // conservative scan cannot tell from a live one) is attributed to the
    // container rather than to nobody.
    const NO_LABEL: u32 = u32::MAX;
    let mut nearest_labelled = vec![NO_LABEL; n as usize];
    let mut queue = std::collections::VecDeque::new();
    for v in 0..n {
        if graph.label(v).is_some() {
            nearest_labelled[v as usize] = v;
            queue.push_back(v);
        }
    }
    while let Some(u) = queue.pop_front() {
        for &t in graph.targets(u) {
            if nearest_labelled[t as usize] == NO_LABEL {
                nearest_labelled[t as usize] = nearest_labelled[u as usize];
                queue.push_back(t);
            }
        }
    }
    let mut owner_of_site: FxHashMap<String, u32> = FxHashMap::default();
    // The site text is made once per holder stack, not once per block.
    let mut owner_of_stack: FxHashMap<u32, u32> = FxHashMap::default();
    let mut holders_seen: FxHashMap<u32, ()> = FxHashMap::default();
    let mut node_owner: Vec<u32> = Vec::with_capacity(n as usize);
    for v in 0..n {
        let o = match retention.attribution(v) {
            Attribution::Owned(l) => graph
                .label(l)
                .and_then(|id| owner_of_label.get(&id.0).copied())
                .unwrap_or(0),
            Attribution::Unowned { .. } if nearest_labelled[v as usize] != NO_LABEL => graph
                .label(nearest_labelled[v as usize])
                .and_then(|id| owner_of_label.get(&id.0).copied())
                .unwrap_or(0),
            Attribution::Unowned { holder } => {
                let stack = infos[holder as usize].stack;
                let idx = *owner_of_stack.entry(stack).or_insert_with(|| {
                    let site = format!("site: {}", names.site(stack));
                    *owner_of_site.entry(site.clone()).or_insert_with(|| {
                        owners.push(Owner {
                            name: site,
                            kind: "site".to_string(),
                            ..Owner::default()
                        });
                        owners.len() as u32 - 1
                    })
                });
                if holders_seen.insert(holder, ()).is_none() {
                    let ow = &mut owners[idx as usize];
                    ow.objects += 1;
                    ow.retained.add(retention.retained(holder));
                }
                idx
            }
        };
        node_owner.push(o);
    }

    // Vias: what refers to each block, and where. A holder is described by
    // its label, else its type, else its site: the text is made once per
    // distinct (label, type, stack), not per block.
    enum HolderKey {
        Object(Option<&'static str>, Option<&'static str>, u32),
        Text(String),
    }
    let mut text_of: FxHashMap<(Option<&'static str>, Option<&'static str>, u32), String> =
        FxHashMap::default();
    let mut vias: Vec<Via> = Vec::new();
    let mut via_index: FxHashMap<(String, Option<u64>), u32> = FxHashMap::default();
    let mut node_via: Vec<u32> = Vec::with_capacity(n as usize);
    for v in 0..n {
        let (key, offset) = match retention.retainer(v) {
            Retainer::Root(i) => (
                HolderKey::Text(root_name(&graph.roots()[i as usize].kind, &label_names)),
                None,
            ),
            Retainer::Pointer { holder, offset } => {
                let info = &infos[holder as usize];
                (
                    HolderKey::Object(info.label, info.type_name, info.stack),
                    Some(offset as u64),
                )
            }
            Retainer::Cycle(c) => (HolderKey::Text(format!("unreachable cycle #{}", c.0)), None),
            Retainer::Unreferenced => (HolderKey::Text("unreferenced".to_string()), None),
        };
        let text = match key {
            HolderKey::Text(t) => t,
            HolderKey::Object(label, type_name, stack) => text_of
                .entry((label, type_name, stack))
                .or_insert_with(|| match (label, type_name) {
                    (Some(l), _) => l.to_string(),
                    (None, Some(t)) => t.to_string(),
                    (None, None) => format!("site: {}", names.site(stack)),
                })
                .clone(),
        };
        let next = vias.len() as u32;
        let idx = *via_index.entry((text.clone(), offset)).or_insert_with(|| {
            vias.push(Via {
                holder: text,
                offset,
            });
            next
        });
        node_via.push(idx);
    }

    // Live groups by (stack, tag, owner, via, reachability); blocks only.
    let mut groups: FxHashMap<(u32, u32, u32, u32, bool), Amount> = FxHashMap::default();
    for (v, blk) in blocks.iter().enumerate() {
        let (bytes, units) = weight(blk.size);
        groups
            .entry((
                blk.stack,
                blk.tag,
                node_owner[v],
                node_via[v],
                !retention.is_reachable(v as u32),
            ))
            .or_default()
            .add(Amount {
                bytes,
                blocks: units,
            });
    }
    let live: Vec<LiveGroup> = groups
        .into_iter()
        .map(|((stack, tag, owner, via, unreachable), a)| LiveGroup {
            stack,
            tag,
            blocks: a.blocks,
            bytes: a.bytes,
            owner: Some(owner),
            via: Some(via),
            unreachable,
        })
        .collect();

    // The stored subgraph: the largest retained objects, objects of the
    // requested types, and everything needed for their chains.
    // Where leaks start (unreferenced blocks, entry-cycle members) are kept
    // too, so `retainers --site/--type` finds leaked objects of any size.
    let mut extra: Vec<u32> = (0..n)
        .filter(|&v| {
            matches!(
                retention.retainer(v),
                Retainer::Unreferenced | Retainer::Cycle(_)
            )
        })
        .take(10_000)
        .collect();
    extra.extend(if options.keep_types.is_empty() {
        Vec::new()
    } else {
        (0..n)
            .filter(|&v| {
                let info = &infos[v as usize];
                options.keep_types.iter().any(|t| {
                    info.type_name.is_some_and(|tn| tn.contains(t.as_str()))
                        || info.label.is_some_and(|l| l.contains(t.as_str()))
                        || (v < blocks.len() as u32 && names.stack_mentions(info.stack, t))
                })
            })
            .take(10_000)
            .collect()
    });
    let kept = retention.subgraph(&SubgraphOptions::default(), &extra);
    let stored: FxHashMap<u32, u32> = kept
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, i as u32))
        .collect();
    let nodes: Vec<Node> = kept
        .iter()
        .map(|&v| {
            let info = &infos[v as usize];
            let (parent, parent_offset, root) = match retention.retainer(v) {
                Retainer::Pointer { holder, offset } => {
                    (stored.get(&holder).copied(), Some(offset as u64), None)
                }
                Retainer::Root(i) => (
                    None,
                    None,
                    Some(root_name(&graph.roots()[i as usize].kind, &label_names)),
                ),
                _ => (None, None, None),
            };
            Node {
                address: info.address,
                size: info.size,
                stack: info.stack,
                tag: info.tag,
                owner: node_owner.get(v as usize).copied(),
                type_name: info.type_name.map(str::to_string),
                retained: retention.retained(v),
                parent,
                parent_offset: parent_offset.filter(|&o| o != OFFSET_UNKNOWN as u64),
                root,
                cycle: retention.cycle_of(v).map(|c| c.0),
                unreachable: !retention.is_reachable(v),
            }
        })
        .collect();
    let cycles: Vec<Cycle> = retention
        .cycles()
        .iter()
        .map(|c| Cycle {
            id: c.id.0,
            members: c.members,
            retained: c.retained,
            nodes: cycle_order(&graph, retention.cycle_members(c.id))
                .iter()
                .filter_map(|m| stored.get(m).copied())
                .collect(),
        })
        .collect();

    let scanned_bytes = blocks.iter().map(|b| b.size as u64).sum();
    Converted {
        graph: Graph {
            scanned: Amount {
                bytes: scanned_bytes,
                blocks: blocks.len() as u64,
            },
            edges: graph.edge_count() as u64,
            pause_ns: scan.pause_ns,
            thread_roots: thread_roots_text(&scan.stop, scan.incomplete),
            stop: Some(StopStats {
                signal: super::stop::signal_name(scan.stop.signal),
                stopped: scan.stop.stopped as u64,
                missed: scan.stop.missed as u64,
                blocking_signal: scan.stop.blocking as u64,
                stuck_in_realloc: scan.stop.stuck_in_realloc as u64,
                in_flight: scan.stop.in_flight as u64,
                rounds: scan.stop.rounds as u64,
            }),
            owners,
            vias,
            cycles,
            nodes,
        },
        live,
    }
}

/// The stop, in words: "signals: 5 thread(s) stopped, 1 did not stop in
/// time (1 blocks the signal) ...".
fn thread_roots_text(stop: &StopReport, incomplete: bool) -> String {
    let mut text = format!("signals: {} thread(s) stopped", stop.stopped);
    if stop.missed > 0 {
        text += &format!(
            ", {} did not stop in time (their stacks are not roots",
            stop.missed
        );
        if stop.blocking > 0 {
            text += &format!("; {} block the stop signal", stop.blocking);
        }
        if stop.stuck_in_realloc > 0 {
            text += &format!("; {} stayed inside realloc", stop.stuck_in_realloc);
        }
        text += ")";
    }
    if incomplete {
        text += "; scratch memory ran out, some pointers are missing";
    }
    text
}

/// The members of a cycle in reference order where possible (each one
/// pointing at the next), so a cycle reads "FutureState -> TaskError ->
/// ...": a walk from the first member along edges to members not yet
/// visited, falling back to the remaining members in id order.
fn cycle_order(graph: &HeapGraph, members: &[u32]) -> Vec<u32> {
    let set: std::collections::HashSet<u32> = members.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::with_capacity(members.len());
    let mut cur = members.iter().copied().min();
    while let Some(v) = cur {
        seen.insert(v);
        order.push(v);
        cur = graph
            .targets(v)
            .iter()
            .copied()
            .find(|t| set.contains(t) && !seen.contains(t))
            .or_else(|| members.iter().copied().filter(|m| !seen.contains(m)).min());
    }
    order
}

fn root_name(kind: &RootKind, labels: &[&'static str]) -> String {
    match kind {
        RootKind::Stack => "root: stack".to_string(),
        RootKind::Static => "root: static".to_string(),
        RootKind::Tls => "root: tls".to_string(),
        RootKind::Registered(l) => format!(
            "registered: {}",
            labels.get(l.0 as usize).copied().unwrap_or("?")
        ),
    }
}
