//! Retainer chains (objgraph's `find_backref_chain`) read from a version-2
//! profile's stored heap subgraph: for a chosen object, the shortest chain
//! of references from a root — or, for leaked memory, from the unreachable
//! cycle that keeps it — down to the object.

use super::check::human_bytes;
use super::model::{Model, UNKNOWN};
use crate::format::{Coverage, Graph, Node, Profile};

/// Which objects to show chains for (the shorthand of [`chains`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The `n` objects with the largest retained size.
    Largest(usize),
    /// Objects whose allocation stack mentions this text.
    Site(String),
    /// Objects whose type (or owner label) mentions this text.
    Type(String),
}

/// Which objects to show chains for: every object that `matching` and
/// `unreachable_only` both select, largest retained first, at most
/// `largest` of them. The cap comes last: capping first and filtering
/// after would keep the N largest objects, then drop them all when they
/// are reachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub matching: Matching,
    /// Only objects no root reaches (members of unreachable cycles and
    /// what they keep alive, or blocks nothing refers to).
    pub unreachable_only: bool,
    /// At most this many objects; `None`: all that match.
    pub largest: Option<usize>,
}

/// What an object must mention to be selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matching {
    Any,
    /// Its allocation stack mentions this text.
    Site(String),
    /// Its type (or owner label) mentions this text.
    Type(String),
}

impl From<&Selection> for Query {
    fn from(selection: &Selection) -> Query {
        let (matching, largest) = match selection {
            Selection::Largest(n) => (Matching::Any, Some(*n)),
            Selection::Site(s) => (Matching::Site(s.clone()), None),
            Selection::Type(t) => (Matching::Type(t.clone()), None),
        };
        Query {
            matching,
            unreachable_only: false,
            largest,
        }
    }
}

/// Where a chain starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    /// A root refers to the first hop ("root: stack", "registered: ...").
    Root(String),
    /// The first hop is a member of this unreachable cycle.
    Cycle {
        id: u32,
        members: u64,
        bytes: u64,
        /// Member names in order, e.g. `["FutureState", "TaskError"]`;
        /// where the profile knows it, the field of each member that
        /// points to the next (`TaskError.traceback`) instead. When the
        /// profile knows the shortest ring through a labelled member, only
        /// that ring.
        names: Vec<String>,
        /// Members of the cycle left out of `names` (off the ring).
        others: u64,
        /// The graph is a Python object graph: the cycle is garbage the
        /// cyclic collector has not collected yet.
        awaiting_gc: bool,
    },
    /// The first hop is leaked memory that nothing refers to.
    Unreferenced,
    /// The stored subgraph does not reach further (only objects on the
    /// chains of the largest ones are stored).
    Truncated,
}

/// One object on a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Hop {
    pub node: u32,
    pub address: u64,
    pub size: u64,
    pub retained: u64,
    /// Byte offset of the pointer, inside the previous hop, that refers to
    /// this one (`None` on the first hop).
    pub offset: Option<u64>,
    /// The previous hop's field holding that pointer, by its type
    /// (`TaskError.traceback`), when the scan read it by type.
    pub field: Option<String>,
    pub owner: Option<String>,
    pub type_name: String,
    pub site: String,
}

/// A chain from its start down to the selected object (last hop).
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub start: Start,
    pub hops: Vec<Hop>,
}

impl Chain {
    /// The selected object.
    pub fn target(&self) -> Option<&Hop> {
        self.hops.last()
    }
}

/// Why chains cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum RetainersError {
    #[error("this profile has no heap graph (format version 1); take one with `leakprof run` or `Recorder::snapshot_with_graph`")]
    NoGraph,
}

/// Builds the chains of the selected objects, those retaining the most
/// first.
pub fn chains(profile: &Profile, selection: &Selection) -> Result<Vec<Chain>, RetainersError> {
    chains_for(profile, &Query::from(selection))
}

/// Builds the chains of the objects `query` selects, those retaining the
/// most first.
pub fn chains_for(profile: &Profile, query: &Query) -> Result<Vec<Chain>, RetainersError> {
    let graph = profile.graph.as_ref().ok_or(RetainersError::NoGraph)?;
    let names = Names {
        profile,
        graph,
        model: Model::new(profile),
    };
    Ok(select(&names, query)
        .into_iter()
        .map(|target| chain_to(&names, target))
        .collect())
}

/// How objects are named on a chain: their type, site and owner.
struct Names<'a> {
    profile: &'a Profile,
    graph: &'a Graph,
    model: Model<'a>,
}

impl Names<'_> {
    fn node(&self, i: u32) -> &Node {
        &self.graph.nodes[i as usize]
    }

    fn type_of(&self, n: &Node) -> String {
        n.type_name
            .clone()
            .or_else(|| self.model.stack(n.stack).type_name.clone())
            .or_else(|| {
                self.profile
                    .tags
                    .get(n.tag as usize)
                    .and_then(|t| t.type_name.clone())
            })
            .unwrap_or_else(|| UNKNOWN.to_string())
    }

    fn site_of(&self, n: &Node) -> String {
        let f = &self.model.stack(n.stack).function;
        if f.is_empty() {
            UNKNOWN.to_string()
        } else {
            f.clone()
        }
    }

    fn owner_of(&self, n: &Node) -> Option<&str> {
        n.owner
            .and_then(|o| self.graph.owners.get(o as usize))
            .map(|o| o.name.as_str())
    }

    /// A cycle member's name in the cycle's ring: its short type, else its
    /// owner, else its site.
    fn short(&self, n: &Node) -> String {
        let t = self.type_of(n);
        if t != UNKNOWN {
            return short_type(&t);
        }
        self.owner_of(n)
            .map(str::to_string)
            .unwrap_or_else(|| self.site_of(n))
    }

    fn matches(&self, n: &Node, matching: &Matching) -> bool {
        match matching {
            Matching::Any => true,
            Matching::Site(p) => {
                self.model.stack(n.stack).site.contains(p.as_str())
                    || self.site_of(n).contains(p.as_str())
            }
            Matching::Type(p) => {
                self.type_of(n).contains(p.as_str())
                    || self.owner_of(n).is_some_and(|o| o.contains(p.as_str()))
            }
        }
    }
}

/// The node indices `query` selects: every criterion first, then the
/// largest retained first, then the cap.
fn select(names: &Names, query: &Query) -> Vec<u32> {
    let nodes = &names.graph.nodes;
    let mut picked: Vec<u32> = (0..nodes.len() as u32)
        .filter(|&i| {
            let n = names.node(i);
            (!query.unreachable_only || n.unreachable) && names.matches(n, &query.matching)
        })
        .collect();
    picked.sort_by(|&a, &b| {
        nodes[b as usize]
            .retained
            .bytes
            .cmp(&nodes[a as usize].retained.bytes)
            .then(a.cmp(&b))
    });
    if let Some(n) = query.largest {
        picked.truncate(n);
    }
    picked
}

/// The chain from the start (root, cycle or nothing) down to `target`,
/// following each node's `parent`.
fn chain_to(names: &Names, target: u32) -> Chain {
    let nodes = &names.graph.nodes;
    let mut path = vec![target];
    let mut cur = target;
    while let Some(p) = nodes[cur as usize].parent {
        // A malformed parent loop must not hang the reader.
        if path.len() > nodes.len() {
            break;
        }
        path.push(p);
        cur = p;
    }
    path.reverse();
    let hops = path
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let n = names.node(i);
            Hop {
                node: i,
                address: n.address,
                size: n.size,
                retained: n.retained.bytes,
                offset: if k == 0 { None } else { n.parent_offset },
                field: if k == 0 { None } else { n.parent_field.clone() },
                owner: names.owner_of(n).map(str::to_string),
                type_name: names.type_of(n),
                site: names.site_of(n),
            }
        })
        .collect();
    Chain {
        start: start_of(names, names.node(path[0])),
        hops,
    }
}

/// Where a chain whose first hop is `first` starts.
fn start_of(names: &Names, first: &Node) -> Start {
    if let Some(r) = &first.root {
        Start::Root(r.clone())
    } else if let Some(c) = first.cycle {
        let cycle = names.graph.cycles.iter().find(|x| x.id == c);
        let shown = cycle.map_or(0, |x| {
            x.ring
                .map_or(x.nodes.len(), |r| (r as usize).min(x.nodes.len()))
        });
        Start::Cycle {
            id: c,
            members: cycle.map_or(0, |x| x.members.blocks),
            bytes: cycle.map_or(0, |x| x.retained.bytes),
            names: cycle
                .map(|x| {
                    x.nodes[..shown]
                        .iter()
                        .enumerate()
                        .map(|(k, &m)| match x.fields.get(k) {
                            Some(f) if !f.is_empty() => f.clone(),
                            _ => names.short(names.node(m)),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            others: cycle.map_or(0, |x| x.members.blocks.saturating_sub(shown as u64)),
            awaiting_gc: names.graph.python.is_some(),
        }
    } else if first.unreachable {
        Start::Unreferenced
    } else {
        Start::Truncated
    }
}

/// `a::b::TaskError` -> `TaskError`, keeping generic arguments readable.
pub fn short_type(t: &str) -> String {
    let head = t.split('<').next().unwrap_or(t);
    let base = head.rsplit("::").next().unwrap_or(head);
    match t.find('<') {
        Some(i) => format!("{base}{}", &t[i..]),
        None => base.to_string(),
    }
}

/// The one-line description of a chain's start, as `leakprof retainers`
/// prints it.
pub fn describe_start(start: &Start) -> String {
    match start {
        Start::Root(r) => r.clone(),
        Start::Cycle {
            id,
            members,
            bytes,
            names,
            others,
            awaiting_gc,
        } => {
            // Runs of three or more of one hop (a traceback's `tb_next`s)
            // are shown once, with their count.
            let mut ring: Vec<String> = Vec::new();
            let mut k = 0;
            while k < names.len() {
                let run = names[k..].iter().take_while(|n| **n == names[k]).count();
                let run = if run >= 3 { run } else { 1 };
                ring.push(if run > 1 {
                    format!("{} (x{run})", names[k])
                } else {
                    names[k].clone()
                });
                k += run;
            }
            if let Some(first) = names.first() {
                ring.push(first.clone());
            }
            let what = if *awaiting_gc {
                format!("cyclic garbage #{id}, awaiting the cyclic GC")
            } else {
                format!("unreachable cycle #{id}")
            };
            let more = if *others > 0 {
                format!(" (and {others} more members)")
            } else {
                String::new()
            };
            format!(
                "{what}: {members} blocks, {}: {}{more}",
                human_bytes(*bytes),
                ring.join(" -> ")
            )
        }
        Start::Unreferenced => "unreachable: nothing refers to it".to_string(),
        Start::Truncated => {
            "(chain cut: the profile stores only the chains of its largest objects)".to_string()
        }
    }
}

/// How the graph was read, in one line, as `report` and `retainers`
/// print it: the share read exactly by type, partly, and word by word,
/// with why.
pub fn describe_coverage(graph: &Graph) -> String {
    if let Some(p) = &graph.python {
        return format!(
            "Graph: Python objects, exact (each type's own traversal): {} objects, {} in recorded blocks, {} held from outside the graph, {} cyclic garbage awaiting the collector (collector {} in the program; paused for the {:.0} ms walk), {} in {} blocks kept by the interpreter",
            p.objects,
            p.recorded,
            p.externally_held,
            p.garbage,
            if p.gc_enabled { "on" } else { "off" },
            p.walk_ns as f64 / 1e6,
            super::check::human_bytes(p.interpreter_kept.bytes),
            p.interpreter_kept.blocks
        );
    }
    let Some(c) = &graph.coverage else {
        return "Graph: conservative scan (every word holding a live block's address counts as a pointer)".to_string();
    };
    let pct = |part: u64, all: u64| 100.0 * part as f64 / all.max(1) as f64;
    let (bytes, blocks) = (graph.scanned.bytes, graph.scanned.blocks);
    let mut text = format!(
        "Graph: exact by type for {:.1}% of bytes and {:.1}% of blocks ({:.1}% / {:.1}% partly)",
        pct(c.exact.bytes, bytes),
        pct(c.exact.blocks, blocks),
        pct(c.partly.bytes, bytes),
        pct(c.partly.blocks, blocks),
    );
    text += &format!(
        "; {} blocks ({}) read word by word",
        c.conservative.blocks,
        human_bytes(c.conservative.bytes)
    );
    let reasons = fallback_reasons(c);
    if !reasons.is_empty() {
        text += &format!(" [{reasons}]");
    }
    text += &format!(
        "; {} typed statics; {} blocks typed by their owner, {} by their site ({} disagreed",
        c.typed_statics, c.declared_blocks, c.site_blocks, c.disagreements
    );
    if c.conflicts > 0 {
        text += &format!("; {} declared as two types, the first kept", c.conflicts);
    }
    text + ")"
}

fn fallback_reasons(c: &Coverage) -> String {
    c.fallbacks
        .iter()
        .map(|f| format!("{} {}: {} blocks", f.read, f.reason, f.amount.blocks))
        .collect::<Vec<_>>()
        .join(", ")
}
