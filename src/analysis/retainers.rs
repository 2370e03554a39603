//! Retainer chains (objgraph's `find_backref_chain`) read from a version-2
//! profile's stored heap subgraph: for a chosen object, the shortest chain
//! of references from a root — or, for leaked memory, from the unreachable
//! cycle that keeps it — down to the object.

use super::check::human_bytes;
use super::model::{Model, UNKNOWN};
use crate::format::{Node, Profile};

/// Which objects to show chains for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The `n` objects with the largest retained size.
    Largest(usize),
    /// Objects whose allocation stack mentions this text.
    Site(String),
    /// Objects whose type (or owner label) mentions this text.
    Type(String),
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
        /// Member names in order, e.g. `["FutureState", "TaskError"]`.
        names: Vec<String>,
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
    let graph = profile.graph.as_ref().ok_or(RetainersError::NoGraph)?;
    let model = Model::new(profile);
    let nodes = &graph.nodes;
    let type_of = |n: &Node| -> String {
        n.type_name
            .clone()
            .or_else(|| model.stack(n.stack).type_name.clone())
            .or_else(|| {
                profile
                    .tags
                    .get(n.tag as usize)
                    .and_then(|t| t.type_name.clone())
            })
            .unwrap_or_else(|| UNKNOWN.to_string())
    };
    let site_of = |n: &Node| -> String {
        let f = &model.stack(n.stack).function;
        if f.is_empty() {
            UNKNOWN.to_string()
        } else {
            f.clone()
        }
    };
    let short = |n: &Node| -> String {
        let t = type_of(n);
        if t != UNKNOWN {
            return short_type(&t);
        }
        n.owner
            .and_then(|o| graph.owners.get(o as usize))
            .map(|o| o.name.clone())
            .unwrap_or_else(|| site_of(n))
    };
    let mut picked: Vec<u32> = match selection {
        Selection::Largest(k) => {
            let mut idx: Vec<u32> = (0..nodes.len() as u32).collect();
            idx.sort_by(|&a, &b| {
                nodes[b as usize]
                    .retained
                    .bytes
                    .cmp(&nodes[a as usize].retained.bytes)
                    .then(a.cmp(&b))
            });
            idx.truncate(*k);
            idx
        }
        Selection::Site(p) => (0..nodes.len() as u32)
            .filter(|&i| {
                model
                    .stack(nodes[i as usize].stack)
                    .site
                    .contains(p.as_str())
                    || site_of(&nodes[i as usize]).contains(p.as_str())
            })
            .collect(),
        Selection::Type(p) => (0..nodes.len() as u32)
            .filter(|&i| {
                let n = &nodes[i as usize];
                type_of(n).contains(p.as_str())
                    || n.owner
                        .and_then(|o| graph.owners.get(o as usize))
                        .is_some_and(|o| o.name.contains(p.as_str()))
            })
            .collect(),
    };
    // Largest retained first, whatever the selection.
    picked.sort_by(|&a, &b| {
        nodes[b as usize]
            .retained
            .bytes
            .cmp(&nodes[a as usize].retained.bytes)
            .then(a.cmp(&b))
    });
    picked.dedup();
    let mut out = Vec::with_capacity(picked.len());
    for target in picked {
        let mut path = vec![target];
        let mut cur = target;
        let mut guard = 0;
        while let Some(p) = nodes[cur as usize].parent {
            guard += 1;
            if guard > nodes.len() {
                break;
            }
            path.push(p);
            cur = p;
        }
        path.reverse();
        let first = &nodes[path[0] as usize];
        let start = if let Some(r) = &first.root {
            Start::Root(r.clone())
        } else if let Some(c) = first.cycle {
            let cycle = graph.cycles.iter().find(|x| x.id == c);
            Start::Cycle {
                id: c,
                members: cycle.map_or(0, |x| x.members.blocks),
                bytes: cycle.map_or(0, |x| x.retained.bytes),
                names: cycle
                    .map(|x| x.nodes.iter().map(|&m| short(&nodes[m as usize])).collect())
                    .unwrap_or_default(),
            }
        } else if first.unreachable {
            Start::Unreferenced
        } else {
            Start::Truncated
        };
        let hops = path
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let n = &nodes[i as usize];
                Hop {
                    node: i,
                    address: n.address,
                    size: n.size,
                    retained: n.retained.bytes,
                    offset: if k == 0 { None } else { n.parent_offset },
                    owner: n
                        .owner
                        .and_then(|o| graph.owners.get(o as usize))
                        .map(|o| o.name.clone()),
                    type_name: type_of(n),
                    site: site_of(n),
                }
            })
            .collect();
        out.push(Chain { start, hops });
    }
    Ok(out)
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
        } => {
            let mut ring = names.clone();
            if let Some(first) = names.first() {
                ring.push(first.clone());
            }
            format!(
                "unreachable cycle #{id}: {members} blocks, {}: {}",
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
