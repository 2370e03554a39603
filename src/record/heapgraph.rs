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
use super::scan::{Edge, RootSource, ScanResult, StopReport, TypedScan};
use super::tags::Tag;
use super::trace::{BlockTrace, TypeSource};
use super::types::{short_name, BlockType, Fallback, Shape, SlotId};
use crate::format::frame_names;
use crate::format::{
    Amount, Coverage, Cycle, FallbackCount, Graph, LiveGroup, Node, Owner, Stack, StopStats, Via,
};
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
    /// Read blocks by the program's types from DWARF (the exact trace,
    /// the default) rather than taking every word that holds a live
    /// address for a pointer (the conservative scan). Without debug info
    /// the exact trace falls back to the conservative scan block by block
    /// and says so in the graph's coverage.
    pub exact: bool,
}

impl Default for GraphOptions {
    fn default() -> GraphOptions {
        GraphOptions {
            keep_types: Vec::new(),
            stop_signal: libc::SIGPWR,
            stop_timeout: std::time::Duration::from_secs(2),
            exact: true,
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

    /// Takes the conservative scan (every word holding a live address is
    /// a pointer) instead of the exact trace: no DWARF is read.
    pub fn conservative(mut self) -> GraphOptions {
        self.exact = false;
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

/// Owner labels, numbered densely.
#[derive(Default)]
struct Labels {
    ids: FxHashMap<&'static str, LabelId>,
    names: Vec<&'static str>,
}

impl Labels {
    fn id(&mut self, l: &'static str) -> LabelId {
        let names = &mut self.names;
        *self.ids.entry(l).or_insert_with(|| {
            names.push(l);
            LabelId(names.len() as u32 - 1)
        })
    }
}

pub(crate) fn convert(
    scan: &ScanResult,
    names: &Names,
    options: &GraphOptions,
    weight: impl Fn(usize) -> (u64, u64),
) -> Converted {
    let (infos, static_node) = node_infos(scan, names);
    let mut labels = Labels::default();
    let graph = match build_graph(scan, &infos, &static_node, &mut labels) {
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
    let c = Conversion {
        scan,
        blocks: scan.blocks.as_slice(),
        names,
        infos,
        labels,
        graph: &graph,
        retention: &retention,
    };
    let (owners, node_owner) = c.owners();
    let (vias, node_via) = c.vias();
    let (live, types) = c.live_groups(&node_owner, &node_via, weight);
    let (nodes, stored) = c.stored_subgraph(options, &node_owner);
    let cycles = c.cycles(&stored);
    Converted {
        graph: Graph {
            scanned: Amount {
                bytes: c.blocks.iter().map(|b| b.size as u64).sum(),
                blocks: c.blocks.len() as u64,
            },
            edges: graph.edge_count() as u64,
            pause_ns: scan.pause_ns,
            thread_roots: thread_roots_text(&scan.stop, scan.incomplete),
            stop: Some(stop_stats(&scan.stop)),
            owners,
            vias,
            cycles,
            nodes,
            coverage: scan.typed.as_ref().map(coverage),
            python: scan.python.as_ref().map(|p| p.summary.clone()),
            types,
        },
        live,
    }
}

/// What the exact trace read by type and what word by word.
fn coverage(t: &TypedScan) -> Coverage {
    const REASONS: [Fallback; 8] = [
        Fallback::Union,
        Fallback::Uninit,
        Fallback::Opaque,
        Fallback::Discriminant,
        Fallback::Depth,
        Fallback::NoDebugInfo,
        Fallback::UnknownType,
        Fallback::Contradicted,
    ];
    let mut c = Coverage {
        disagreements: t.counts.disagreements,
        rewalked: t.counts.rewalked,
        conflicts: t.counts.conflicts,
        typed_statics: t.counts.typed_statics,
        prepare_ns: t.prep.prepare_ns,
        ..Coverage::default()
    };
    // (partly, conservative) amounts by reason.
    let mut by_reason = [(Amount::default(), Amount::default()); REASONS.len()];
    let reason_index = |f: Fallback| REASONS.iter().position(|&r| r == f).unwrap_or(0);
    let blocks = t.blocks.traced.as_slice();
    let sources = t.blocks.source.as_slice();
    for (k, (traced, source)) in blocks.iter().zip(sources).enumerate() {
        let size = t.block_size(k);
        let a = Amount {
            bytes: size,
            blocks: 1,
        };
        match source {
            TypeSource::Declared => c.declared_blocks += 1,
            TypeSource::Site => c.site_blocks += 1,
            _ => {}
        }
        match *traced {
            BlockTrace::Exact { pointer_free } => {
                c.exact.add(a);
                if pointer_free {
                    c.pointer_free.add(a);
                }
            }
            BlockTrace::Partly(f) => {
                c.partly.add(a);
                by_reason[reason_index(f)].0.add(a);
            }
            BlockTrace::Conservative(f) => {
                c.conservative.add(a);
                by_reason[reason_index(f)].1.add(a);
            }
            // Every block is read before the pause ends.
            BlockTrace::Pending => {
                c.conservative.add(a);
                by_reason[reason_index(Fallback::UnknownType)].1.add(a);
            }
        }
    }
    for (f, (partly, conservative)) in REASONS.iter().zip(by_reason) {
        for (read, amount) in [("partly", partly), ("conservative", conservative)] {
            if amount.blocks > 0 {
                c.fallbacks.push(FallbackCount {
                    read: read.to_string(),
                    reason: fallback_name(*f).to_string(),
                    amount,
                });
            }
        }
    }
    c
}

fn fallback_name(f: Fallback) -> &'static str {
    match f {
        Fallback::Union => "union",
        Fallback::Uninit => "uninit",
        Fallback::Opaque => "opaque",
        Fallback::Discriminant => "discriminant",
        Fallback::Depth => "depth",
        Fallback::NoDebugInfo => "no debug info",
        Fallback::UnknownType => "unknown type",
        Fallback::Contradicted => "contradictory types",
    }
}

/// The blocks' facts, then registered static containers as pseudo nodes
/// after them (with, by container index, their node).
fn node_infos(scan: &ScanResult, names: &Names) -> (Vec<NodeInfo>, FxHashMap<u32, u32>) {
    let mut infos: Vec<NodeInfo> = scan
        .blocks
        .as_slice()
        .iter()
        .enumerate()
        .map(|(k, b)| {
            let tag = (names.tag)(b.tag);
            NodeInfo {
                address: b.addr as u64,
                size: b.size as u64,
                stack: b.stack,
                tag: b.tag,
                label: tag.label_name(),
                type_name: tag
                    .type_name_str()
                    .or_else(|| scan.python.as_ref().and_then(|p| p.type_of(k))),
            }
        })
        .collect();
    // Registered heap objects take their registration's label.
    for r in &scan.registered {
        if let Some(info) = r.block.and_then(|j| infos.get_mut(j as usize)) {
            info.label = Some(r.label);
            info.type_name = r.type_name.or(info.type_name);
        }
    }
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
    (infos, static_node)
}

/// Nodes with their labels, the scan's edges and roots.
fn build_graph(
    scan: &ScanResult,
    infos: &[NodeInfo],
    static_node: &FxHashMap<u32, u32>,
    labels: &mut Labels,
) -> Result<HeapGraph, crate::graph::GraphError> {
    let mut b = HeapGraphBuilder::with_capacity(
        infos.len(),
        scan.edges.len() + scan.registered_edges.len(),
    );
    for info in infos {
        let label = info.label.map(|l| labels.id(l));
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
        let (kind, at) = match r.source {
            RootSource::Stack => (RootKind::Stack, None),
            RootSource::Tls => (RootKind::Tls, None),
            RootSource::Static => (RootKind::Static, Some(r.at as u64)),
            RootSource::Registered(k) => (
                RootKind::Registered(labels.id(scan.registered[k as usize].label)),
                None,
            ),
        };
        b.add_root(r.node, kind, at);
    }
    for (k, &n) in static_node {
        let label = labels.id(scan.registered[*k as usize].label);
        b.add_root(n, RootKind::Registered(label), None);
    }
    b.build()
}

/// What the conversion's steps share.
struct Conversion<'a> {
    scan: &'a ScanResult,
    blocks: &'a [Block],
    names: &'a Names<'a>,
    infos: Vec<NodeInfo>,
    labels: Labels,
    graph: &'a HeapGraph,
    retention: &'a Retention,
}

const NO_LABEL: u32 = u32::MAX;

impl Conversion<'_> {
    fn n(&self) -> u32 {
        self.infos.len() as u32
    }

    /// The holder's type and the slot of its pointer at `offset` that
    /// refers to `target`, when the holder was read by type.
    fn edge_slot(&self, holder: u32, target: u32, offset: u32) -> Option<(BlockType, SlotId)> {
        let typed = self.scan.typed.as_ref()?;
        let h = holder as usize;
        if matches!(
            typed.blocks.traced.as_slice().get(h)?,
            BlockTrace::Conservative(_) | BlockTrace::Pending
        ) {
            return None;
        }
        let bt = (*typed.blocks.types.as_slice().get(h)?)?;
        let e = self.edge(holder, target, offset)?;
        Some((bt, SlotId(e.slot)))
    }

    /// The scan's edge from `holder` at `offset` to `target`. Edges are
    /// sorted by (source, offset): see `trace::Tracer::finish` and
    /// `python::objects`.
    fn edge(&self, holder: u32, target: u32, offset: u32) -> Option<&Edge> {
        let edges = self.scan.edges.as_slice();
        let lo = edges.partition_point(|e| (e.from, e.offset) < (holder, offset));
        edges[lo..]
            .iter()
            .take_while(|e| e.from == holder && e.offset == offset)
            .find(|e| e.to == target)
    }

    /// The field path of the pointer at `offset` in `holder` that refers
    /// to `target` (`Retries.history[3].closure`), when the holder was
    /// read by type.
    fn field(&self, holder: u32, target: u32, offset: u32) -> Option<String> {
        if let Some(p) = &self.scan.python {
            return self.python_field(p, holder, target, offset);
        }
        let (bt, slot) = self.edge_slot(holder, target, offset)?;
        let maps = &self.scan.typed.as_ref()?.prep.maps;
        Some(maps.slot_path(bt, offset as usize, slot))
    }

    /// Like [`Conversion::field`] with element indices left out
    /// (`Retries.history[..].closure`), so a via groups every element's
    /// pointer; one text per (type, offset in the element, slot).
    fn via_field(
        &self,
        cache: &mut FxHashMap<(u32, u64, u32), String>,
        holder: u32,
        target: u32,
        offset: u32,
    ) -> Option<String> {
        if let Some(p) = &self.scan.python {
            let field = self.python_field(p, holder, target, offset)?;
            return Some(elide_indices(&field));
        }
        let (bt, slot) = self.edge_slot(holder, target, offset)?;
        let maps = &self.scan.typed.as_ref()?.prep.maps;
        let size = maps.type_size(bt.ty).max(1);
        let within = match bt.shape {
            Shape::Elements { .. } | Shape::Ring { .. } => u64::from(offset) % size,
            // One value, or a shape whose path needs the whole offset.
            _ => return Some(maps.slot_path(bt, offset as usize, slot)),
        };
        let text = cache.entry((bt.ty.0, within, slot.0)).or_insert_with(|| {
            let path = maps.slot_path(BlockType::one(bt.ty), within as usize, slot);
            let name = short_name(maps.type_name(bt.ty));
            match path.strip_prefix(name.as_str()) {
                Some(rest) => format!("{name}[..]{rest}"),
                None => path,
            }
        });
        Some(text.clone())
    }

    /// The name a Python object graph gave the edge (`BigError.args`,
    /// `tuple[0]`), found like [`Conversion::edge_slot`] finds a slot.
    fn python_field(
        &self,
        p: &super::scan::PythonNames,
        holder: u32,
        target: u32,
        offset: u32,
    ) -> Option<String> {
        let e = self.edge(holder, target, offset)?;
        p.fields
            .get(e.slot as usize)
            .filter(|f| !f.is_empty())
            .cloned()
    }

    /// Owners: one per label, then one per site of unowned top-most
    /// holders; and each node's owner.
    fn owners(&self) -> (Vec<Owner>, Vec<u32>) {
        let mut owners: Vec<Owner> = Vec::new();
        let mut owner_of_label: FxHashMap<u32, u32> = FxHashMap::default();
        for s in self.retention.labels() {
            let name = self.labels.names[s.label.0 as usize];
            let type_name = self
                .infos
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
        // An exact Python graph has no stale words to discount: a block
        // is a labelled object's only if that object dominates it.
        let nearest_labelled = if self.scan.python.is_some() {
            vec![NO_LABEL; self.n() as usize]
        } else {
            self.nearest_labelled()
        };
        let labelled_owner = |v: u32| {
            self.graph
                .label(v)
                .and_then(|id| owner_of_label.get(&id.0).copied())
                .unwrap_or(0)
        };
        let mut owner_of_site: FxHashMap<String, u32> = FxHashMap::default();
        // The site text is made once per holder stack, not once per block.
        let mut owner_of_stack: FxHashMap<u32, u32> = FxHashMap::default();
        let mut holders_seen: FxHashMap<u32, ()> = FxHashMap::default();
        let mut node_owner: Vec<u32> = Vec::with_capacity(self.n() as usize);
        for v in 0..self.n() {
            let o = match self.retention.attribution(v) {
                Attribution::Owned(l) => labelled_owner(l),
                Attribution::Unowned { .. } if nearest_labelled[v as usize] != NO_LABEL => {
                    labelled_owner(nearest_labelled[v as usize])
                }
                Attribution::Unowned { holder } => {
                    let stack = self.infos[holder as usize].stack;
                    let idx = *owner_of_stack.entry(stack).or_insert_with(|| {
                        let site = format!("site: {}", self.names.site(stack));
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
                        ow.retained.add(self.retention.retained(holder));
                    }
                    idx
                }
            };
            node_owner.push(o);
        }
        (owners, node_owner)
    }

    /// For blocks no labelled object dominates: the labelled object that
    /// reaches them in the fewest hops, if any (one BFS from every
    /// labelled block at once). A block kept by a labelled container *and*
    /// by something else (often a stale word in a stack frame, which a
    /// conservative scan cannot tell from a live one) is attributed to the
    /// container rather than to nobody.
    fn nearest_labelled(&self) -> Vec<u32> {
        let n = self.n();
        let mut nearest = vec![NO_LABEL; n as usize];
        let mut queue = std::collections::VecDeque::new();
        for v in 0..n {
            if self.graph.label(v).is_some() {
                nearest[v as usize] = v;
                queue.push_back(v);
            }
        }
        while let Some(u) = queue.pop_front() {
            for &t in self.graph.targets(u) {
                if nearest[t as usize] == NO_LABEL {
                    nearest[t as usize] = nearest[u as usize];
                    queue.push_back(t);
                }
            }
        }
        nearest
    }

    /// Vias: what refers to each block, and where. A holder is described
    /// by its label, else its type, else its site: the text is made once
    /// per distinct (label, type, stack), not per block.
    fn vias(&self) -> (Vec<Via>, Vec<u32>) {
        let mut text_of: FxHashMap<(Option<&'static str>, Option<&'static str>, u32), String> =
            FxHashMap::default();
        let mut vias: Vec<Via> = Vec::new();
        let mut via_index: FxHashMap<(String, Option<u64>, Option<String>), u32> =
            FxHashMap::default();
        let mut field_cache = FxHashMap::default();
        let mut node_via: Vec<u32> = Vec::with_capacity(self.n() as usize);
        for v in 0..self.n() {
            let (text, offset, field) = match self.retention.retainer(v) {
                Retainer::Root(i) => (self.root_name(i), None, None),
                Retainer::Pointer { holder, offset } => {
                    let info = &self.infos[holder as usize];
                    let key = (info.label, info.type_name, info.stack);
                    let text = text_of
                        .entry(key)
                        .or_insert_with(|| match (info.label, info.type_name) {
                            (Some(l), _) => l.to_string(),
                            (None, Some(t)) => t.to_string(),
                            (None, None) => format!("site: {}", self.names.site(info.stack)),
                        })
                        .clone();
                    let field = self.via_field(&mut field_cache, holder, v, offset);
                    (text, Some(offset as u64), field)
                }
                Retainer::Cycle(c) => (format!("unreachable cycle #{}", c.0), None, None),
                Retainer::Unreferenced => ("unreferenced".to_string(), None, None),
            };
            let next = vias.len() as u32;
            // A field path groups every element's pointer (one via, the
            // first offset kept); without one, the offset tells them apart.
            let key = (
                text.clone(),
                if field.is_some() { None } else { offset },
                field.clone(),
            );
            let idx = *via_index.entry(key).or_insert_with(|| {
                vias.push(Via {
                    holder: text,
                    offset,
                    field,
                });
                next
            });
            node_via.push(idx);
        }
        (vias, node_via)
    }

    /// A root's name; a static one with its `module!symbol` when the
    /// type maps know the static its word lies in.
    fn root_name(&self, root: u32) -> String {
        let r = &self.graph.roots()[root as usize];
        if let (Some(p), Some(at)) = (&self.scan.python, r.offset) {
            if let Some(text) = p.roots.get(at as usize) {
                return format!("root: {text}");
            }
        }
        let symbol = match (r.kind, r.offset, &self.scan.typed) {
            (RootKind::Static, Some(at), Some(t)) => t
                .prep
                .maps
                .static_at(at as usize)
                .map(|s| t.prep.maps.static_label(s)),
            _ => None,
        };
        match symbol {
            Some(sym) => format!("root: static {sym}"),
            None => root_name(&r.kind, &self.labels.names),
        }
    }

    /// Live groups by (stack, tag, owner, via, reachability and, in a
    /// Python object graph, the block's own type); blocks only. Returns
    /// the groups and the type names they index.
    fn live_groups(
        &self,
        node_owner: &[u32],
        node_via: &[u32],
        weight: impl Fn(usize) -> (u64, u64),
    ) -> (Vec<LiveGroup>, Vec<String>) {
        let mut groups: FxHashMap<(u32, u32, u32, u32, bool, u32), Amount> = FxHashMap::default();
        let python = self.scan.python.as_ref();
        for (v, blk) in self.blocks.iter().enumerate() {
            let (bytes, units) = weight(blk.size);
            let unreachable = !self.retention.is_reachable(v as u32);
            let ty = python
                .and_then(|p| p.block_types.get(v).copied())
                .unwrap_or(NO_LABEL);
            groups
                .entry((
                    blk.stack,
                    blk.tag,
                    node_owner[v],
                    node_via[v],
                    unreachable,
                    ty,
                ))
                .or_default()
                .add(Amount {
                    bytes,
                    blocks: units,
                });
        }
        let types = python.map_or_else(Vec::new, |p| {
            p.type_names.iter().map(|t| t.to_string()).collect()
        });
        let live = groups
            .into_iter()
            .map(|((stack, tag, owner, via, unreachable, ty), a)| LiveGroup {
                stack,
                tag,
                blocks: a.blocks,
                bytes: a.bytes,
                owner: Some(owner),
                via: Some(via),
                unreachable,
                object_type: (ty != NO_LABEL).then_some(ty),
            })
            .collect();
        (live, types)
    }

    /// The stored subgraph: the largest retained objects, objects of the
    /// requested types, and everything needed for their chains. Where
    /// leaks start (unreferenced blocks, entry-cycle members) are kept
    /// too, so `retainers --site/--type` finds leaked objects of any size.
    /// Returns the nodes and, by graph node, its stored index.
    fn stored_subgraph(
        &self,
        options: &GraphOptions,
        node_owner: &[u32],
    ) -> (Vec<Node>, FxHashMap<u32, u32>) {
        let mut extra: Vec<u32> = (0..self.n())
            .filter(|&v| {
                matches!(
                    self.retention.retainer(v),
                    Retainer::Unreferenced | Retainer::Cycle(_)
                )
            })
            .take(10_000)
            .collect();
        if !options.keep_types.is_empty() {
            extra.extend(
                (0..self.n())
                    .filter(|&v| self.kept_by_type(v, &options.keep_types))
                    .take(10_000),
            );
        }
        let kept = self.retention.subgraph(&SubgraphOptions::default(), &extra);
        let stored: FxHashMap<u32, u32> = kept
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i as u32))
            .collect();
        let nodes = kept
            .iter()
            .map(|&v| self.node(v, &stored, node_owner))
            .collect();
        (nodes, stored)
    }

    /// Whether node `v`'s type, label or site mentions one of `texts`.
    fn kept_by_type(&self, v: u32, texts: &[String]) -> bool {
        let info = &self.infos[v as usize];
        let is_block = (v as usize) < self.blocks.len();
        texts.iter().any(|t| {
            info.type_name.is_some_and(|tn| tn.contains(t.as_str()))
                || info.label.is_some_and(|l| l.contains(t.as_str()))
                || (is_block && self.names.stack_mentions(info.stack, t))
        })
    }

    fn node(&self, v: u32, stored: &FxHashMap<u32, u32>, node_owner: &[u32]) -> Node {
        let info = &self.infos[v as usize];
        let (parent, parent_offset, parent_field, root) = match self.retention.retainer(v) {
            Retainer::Pointer { holder, offset } => (
                stored.get(&holder).copied(),
                Some(offset as u64),
                self.field(holder, v, offset),
                None,
            ),
            Retainer::Root(i) => (None, None, None, Some(self.root_name(i))),
            _ => (None, None, None, None),
        };
        Node {
            address: info.address,
            size: info.size,
            stack: info.stack,
            tag: info.tag,
            owner: node_owner.get(v as usize).copied(),
            type_name: info.type_name.map(str::to_string),
            retained: self.retention.retained(v),
            parent,
            parent_offset: parent_offset.filter(|&o| o != OFFSET_UNKNOWN as u64),
            parent_field,
            root,
            cycle: self.retention.cycle_of(v).map(|c| c.0),
            unreachable: !self.retention.is_reachable(v),
        }
    }

    /// Unreachable cycles, their stored members in reference order.
    fn cycles(&self, stored: &FxHashMap<u32, u32>) -> Vec<Cycle> {
        self.retention
            .cycles()
            .iter()
            .map(|c| {
                let members = self.retention.cycle_members(c.id);
                // The shortest ring through a labelled member first (what
                // holds the error value in a loop), then the rest.
                let ring = shortest_ring(self.graph, members)
                    .filter(|r| r.iter().all(|m| stored.contains_key(m)));
                let ring_len = ring.as_ref().map_or(0, Vec::len);
                let mut order = ring.unwrap_or_default();
                let rest: Vec<u32> = cycle_order(self.graph, members)
                    .into_iter()
                    .filter(|m| stored.contains_key(m) && !order.contains(m))
                    .collect();
                order.extend(rest);
                let next = |k: usize| {
                    if k < ring_len {
                        order[(k + 1) % ring_len]
                    } else {
                        order[(k + 1) % order.len()]
                    }
                };
                let fields = (0..order.len())
                    .map(|k| {
                        let (from, to) = (order[k], next(k));
                        self.graph
                            .edges(from)
                            .find(|&(t, _)| t == to)
                            .and_then(|(_, off)| self.field(from, to, off))
                            .unwrap_or_default()
                    })
                    .collect::<Vec<String>>();
                Cycle {
                    id: c.id.0,
                    members: c.members,
                    retained: c.retained,
                    nodes: order
                        .iter()
                        .filter_map(|m| stored.get(m).copied())
                        .collect(),
                    fields: if fields.iter().all(String::is_empty) {
                        Vec::new()
                    } else {
                        fields
                    },
                    ring: (ring_len > 0).then_some(ring_len as u32),
                }
            })
            .collect()
    }
}

/// The shortest closed path of references through the cycle's first
/// labelled member (else its lowest): a breadth-first search inside the
/// cycle from that member back to itself. `None` for a one-member cycle
/// without a self reference.
fn shortest_ring(graph: &HeapGraph, members: &[u32]) -> Option<Vec<u32>> {
    let start = members
        .iter()
        .copied()
        .filter(|&m| graph.label(m).is_some())
        .min()
        .or_else(|| members.iter().copied().min())?;
    let inside: FxHashMap<u32, ()> = members.iter().map(|&m| (m, ())).collect();
    let mut parent: FxHashMap<u32, u32> = FxHashMap::default();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(u) = queue.pop_front() {
        for &t in graph.targets(u) {
            if t == start {
                let mut ring = vec![u];
                let mut cur = u;
                while cur != start {
                    cur = parent[&cur];
                    ring.push(cur);
                }
                ring.reverse();
                return Some(ring);
            }
            if inside.contains_key(&t) && !parent.contains_key(&t) {
                parent.insert(t, u);
                queue.push_back(t);
            }
        }
    }
    None
}

fn stop_stats(stop: &StopReport) -> StopStats {
    StopStats {
        signal: super::stop::signal_name(stop.signal),
        stopped: stop.stopped as u64,
        missed: stop.missed as u64,
        blocking_signal: stop.blocking as u64,
        stuck_in_realloc: stop.stuck_in_realloc as u64,
        in_flight: stop.in_flight as u64,
        rounds: stop.rounds as u64,
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

/// A field path with its element indices left out (`tuple[3]` ->
/// `tuple[..]`), so a via groups every element.
fn elide_indices(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        match rest.find(']') {
            Some(close) if close > 0 && rest[..close].bytes().all(|b| b.is_ascii_digit()) => {
                out.push_str("..");
                rest = &rest[close..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
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
