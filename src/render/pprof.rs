//! pprof heap profiles: gzipped `profile.proto`, read by `go tool pprof`
//! and every pprof consumer.
//!
//! The messages are written by hand with `prost` derives (field numbers
//! from pprof's `profile.proto`), so no `protoc` is needed to build.
//! Sample types follow Go's heap profiles: `inuse_space`, `inuse_objects`,
//! `alloc_space`, `alloc_objects`. Surviving memory is split into one
//! sample per (stack, tag) with `task`, `retry` and `owner` labels, so
//! `pprof -tagfocus` works; allocated amounts are per stack and ride on the
//! stack's first sample (or a sample of their own). Each instruction
//! address is one location whose lines list its inlined frames, innermost
//! first, as pprof expects.

use std::collections::HashMap;
use std::io::{self, Write};

use flate2::write::GzEncoder;
use prost::Message;

use super::{Options, Render};
use crate::analysis::Model;

/// pprof's `Profile` message (the fields leakprof fills).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProfileProto {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// The string table: index 0 is always "".
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings::default();
        s.id("");
        s
    }
    fn id(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(text.to_string());
        self.ids.insert(text.to_string(), id);
        id
    }
}

pub struct Pprof;

impl Render for Pprof {
    fn render(&self, model: &Model<'_>, _options: &Options, out: &mut dyn Write) -> io::Result<()> {
        let proto = build(model);
        let bytes = proto.encode_to_vec();
        let mut gz = GzEncoder::new(out, flate2::Compression::default());
        gz.write_all(&bytes)?;
        gz.finish()?;
        Ok(())
    }
}

/// Builds the profile message (exposed for tests and other encoders).
pub fn build(model: &Model<'_>) -> ProfileProto {
    let p = model.profile;
    let mut strings = Strings::new();
    let sample_type = [
        "inuse_space",
        "inuse_objects",
        "alloc_space",
        "alloc_objects",
    ]
    .iter()
    .zip(["bytes", "count", "bytes", "count"])
    .map(|(t, u)| ValueType {
        r#type: strings.id(t),
        unit: strings.id(u),
    })
    .collect();
    let inuse_space = strings.id("inuse_space");
    let mapping: Vec<Mapping> = p
        .modules
        .iter()
        .enumerate()
        .map(|(i, m)| Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: 0,
            filename: strings.id(&m.path),
            build_id: m.build_id.as_deref().map_or(0, |b| strings.id(b)),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        })
        .collect();
    // Functions by (name, file); locations by the run of frames that share
    // one address (an address with inlined code is one location).
    let mut function: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(i64, i64), u64> = HashMap::new();
    let mut location: Vec<Location> = Vec::new();
    let mut location_ids: HashMap<Vec<u32>, u64> = HashMap::new();
    let mut stack_locations: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut locations_of = |stack: u32, strings: &mut Strings| -> Vec<u64> {
        if let Some(l) = stack_locations.get(&stack) {
            return l.clone();
        }
        let frames = model.shown_frames(stack);
        let mut ids = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let addr = p.frames[frames[i] as usize].address;
            let mut j = i + 1;
            while j < frames.len()
                && p.frames[frames[j] as usize].address == addr
                && p.frames[frames[j - 1] as usize].inlined
            {
                j += 1;
            }
            let run = frames[i..j].to_vec();
            let id = match location_ids.get(&run) {
                Some(&id) => id,
                None => {
                    let lines = run
                        .iter()
                        .map(|&f| {
                            let frame = &p.frames[f as usize];
                            let name = strings.id(model.function(f));
                            let file = frame.file.as_deref().map_or(0, |s| strings.id(s));
                            let fid = *function_ids.entry((name, file)).or_insert_with(|| {
                                function.push(Function {
                                    id: function.len() as u64 + 1,
                                    name,
                                    system_name: name,
                                    filename: file,
                                    start_line: 0,
                                });
                                function.len() as u64
                            });
                            Line {
                                function_id: fid,
                                line: frame.line.unwrap_or(0) as i64,
                            }
                        })
                        .collect();
                    let id = location.len() as u64 + 1;
                    location.push(Location {
                        id,
                        mapping_id: p.frames[run[0] as usize].module.map_or(0, |m| m as u64 + 1),
                        address: addr,
                        line: lines,
                    });
                    location_ids.insert(run, id);
                    id
                }
            };
            ids.push(id);
            i = j;
        }
        stack_locations.insert(stack, ids.clone());
        ids
    };
    let mut allocated: HashMap<u32, (u64, u64)> = HashMap::new();
    for s in &p.stack_stats {
        let e = allocated.entry(s.stack).or_default();
        e.0 = e.0.saturating_add(s.allocated.bytes);
        e.1 = e.1.saturating_add(s.allocated.blocks);
    }
    let (k_task, k_retry, k_owner) = (strings.id("task"), strings.id("retry"), strings.id("owner"));
    let mut sample = Vec::with_capacity(p.live.len() + allocated.len());
    for g in &p.live {
        let (ab, ak) = allocated.remove(&g.stack).unwrap_or((0, 0));
        let tag = &p.tags[g.tag as usize];
        let mut label = Vec::new();
        if let Some(t) = tag.task {
            label.push(Label {
                key: k_task,
                num: t as i64,
                ..Label::default()
            });
        }
        if let Some(r) = tag.retry {
            label.push(Label {
                key: k_retry,
                num: r as i64,
                ..Label::default()
            });
        }
        label.push(Label {
            key: k_owner,
            str: strings.id(model.owner(g)),
            ..Label::default()
        });
        sample.push(Sample {
            location_id: locations_of(g.stack, &mut strings),
            value: vec![g.bytes as i64, g.blocks as i64, ab as i64, ak as i64],
            label,
        });
    }
    let mut rest: Vec<(u32, (u64, u64))> = allocated
        .into_iter()
        .filter(|(_, (b, k))| *b > 0 || *k > 0)
        .collect();
    rest.sort_unstable();
    for (stack, (ab, ak)) in rest {
        sample.push(Sample {
            location_id: locations_of(stack, &mut strings),
            value: vec![0, 0, ab as i64, ak as i64],
            label: Vec::new(),
        });
    }
    let comment = vec![strings.id(&format!(
        "leakprof {} profile of {}",
        p.meta.leakprof_version, p.meta.program
    ))];
    let period_type = Some(ValueType {
        r#type: strings.id("space"),
        unit: strings.id("bytes"),
    });
    ProfileProto {
        sample_type,
        sample,
        mapping,
        location,
        function,
        time_nanos: (p.meta.start_unix_ms as i64).saturating_mul(1_000_000),
        duration_nanos: p.meta.snapshot_ns as i64,
        period_type,
        period: p.meta.options.sample_mean_bytes.unwrap_or(1) as i64,
        comment,
        // An index into the string table, like every name here.
        default_sample_type: inuse_space,
        string_table: strings.table,
    }
}
