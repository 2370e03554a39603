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
use crate::format::LiveGroup;

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
    let mut b = Builder::new(model);
    let sample_type = b.sample_types();
    let inuse_space = b.strings.id("inuse_space");
    let mapping = b.mappings();
    let mut allocated = allocated_by_stack(model);
    let keys = LabelKeys {
        task: b.strings.id("task"),
        retry: b.strings.id("retry"),
        owner: b.strings.id("owner"),
    };
    let mut sample = Vec::with_capacity(p.live.len() + allocated.len());
    for g in &p.live {
        let (ab, ak) = allocated.remove(&g.stack).unwrap_or((0, 0));
        let label = b.labels(g, &keys);
        sample.push(Sample {
            location_id: b.locations_of(g.stack),
            value: vec![g.bytes as i64, g.blocks as i64, ab as i64, ak as i64],
            label,
        });
    }
    sample.extend(b.allocated_only_samples(allocated));
    let comment = vec![b.strings.id(&format!(
        "leakprof {} profile of {}",
        p.meta.leakprof_version, p.meta.program
    ))];
    let period_type = Some(ValueType {
        r#type: b.strings.id("space"),
        unit: b.strings.id("bytes"),
    });
    ProfileProto {
        sample_type,
        sample,
        mapping,
        location: b.location,
        function: b.function,
        time_nanos: (p.meta.start_unix_ms as i64).saturating_mul(1_000_000),
        duration_nanos: p.meta.snapshot_ns as i64,
        period_type,
        period: p.meta.options.sample_mean_bytes.unwrap_or(1) as i64,
        comment,
        // An index into the string table, like every name here.
        default_sample_type: inuse_space,
        string_table: b.strings.table,
    }
}

/// String ids of the sample label keys.
struct LabelKeys {
    task: i64,
    retry: i64,
    owner: i64,
}

/// Allocated bytes and blocks per stack (`stack_stats`), summed.
fn allocated_by_stack(model: &Model<'_>) -> HashMap<u32, (u64, u64)> {
    let mut allocated: HashMap<u32, (u64, u64)> = HashMap::new();
    for s in &model.profile.stack_stats {
        let e = allocated.entry(s.stack).or_default();
        e.0 = e.0.saturating_add(s.allocated.bytes);
        e.1 = e.1.saturating_add(s.allocated.blocks);
    }
    allocated
}

/// The tables a profile message refers to, filled as samples need them:
/// strings, functions by (name, file), locations by the run of frames that
/// share one address (an address with inlined code is one location).
struct Builder<'m> {
    model: &'m Model<'m>,
    strings: Strings,
    function: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    location: Vec<Location>,
    location_ids: HashMap<Vec<u32>, u64>,
    stack_locations: HashMap<u32, Vec<u64>>,
}

impl<'m> Builder<'m> {
    fn new(model: &'m Model<'m>) -> Builder<'m> {
        Builder {
            model,
            strings: Strings::new(),
            function: Vec::new(),
            function_ids: HashMap::new(),
            location: Vec::new(),
            location_ids: HashMap::new(),
            stack_locations: HashMap::new(),
        }
    }

    /// Go's heap profile sample types, in Go's order.
    fn sample_types(&mut self) -> Vec<ValueType> {
        [
            "inuse_space",
            "inuse_objects",
            "alloc_space",
            "alloc_objects",
        ]
        .iter()
        .zip(["bytes", "count", "bytes", "count"])
        .map(|(t, u)| ValueType {
            r#type: self.strings.id(t),
            unit: self.strings.id(u),
        })
        .collect()
    }

    /// One mapping per loaded module, ids from 1.
    fn mappings(&mut self) -> Vec<Mapping> {
        self.model
            .profile
            .modules
            .iter()
            .enumerate()
            .map(|(i, m)| Mapping {
                id: i as u64 + 1,
                memory_start: m.start,
                memory_limit: m.end,
                file_offset: 0,
                filename: self.strings.id(&m.path),
                build_id: m.build_id.as_deref().map_or(0, |b| self.strings.id(b)),
                has_functions: true,
                has_filenames: true,
                has_line_numbers: true,
                has_inline_frames: true,
            })
            .collect()
    }

    /// A live group's labels: its tag's task and retry, and its owner.
    fn labels(&mut self, g: &LiveGroup, keys: &LabelKeys) -> Vec<Label> {
        let tag = &self.model.profile.tags[g.tag as usize];
        let mut label = Vec::new();
        if let Some(t) = tag.task {
            label.push(Label {
                key: keys.task,
                num: t as i64,
                ..Label::default()
            });
        }
        if let Some(r) = tag.retry {
            label.push(Label {
                key: keys.retry,
                num: r as i64,
                ..Label::default()
            });
        }
        label.push(Label {
            key: keys.owner,
            str: self.strings.id(self.model.owner(g)),
            ..Label::default()
        });
        label
    }

    /// A sample of its own for each stack whose allocated amount no live
    /// sample carried, in stack order.
    fn allocated_only_samples(&mut self, allocated: HashMap<u32, (u64, u64)>) -> Vec<Sample> {
        let mut rest: Vec<(u32, (u64, u64))> = allocated
            .into_iter()
            .filter(|(_, (b, k))| *b > 0 || *k > 0)
            .collect();
        rest.sort_unstable();
        rest.into_iter()
            .map(|(stack, (ab, ak))| Sample {
                location_id: self.locations_of(stack),
                value: vec![0, 0, ab as i64, ak as i64],
                label: Vec::new(),
            })
            .collect()
    }

    /// The location ids of a stack's shown frames, innermost first.
    fn locations_of(&mut self, stack: u32) -> Vec<u64> {
        if let Some(l) = self.stack_locations.get(&stack) {
            return l.clone();
        }
        let model = self.model;
        let frames = model.shown_frames(stack);
        let mut ids = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let addr = model.profile.frames[frames[i] as usize].address;
            let mut j = i + 1;
            while j < frames.len()
                && model.profile.frames[frames[j] as usize].address == addr
                && model.profile.frames[frames[j - 1] as usize].inlined
            {
                j += 1;
            }
            ids.push(self.location(&frames[i..j]));
            i = j;
        }
        self.stack_locations.insert(stack, ids.clone());
        ids
    }

    /// The location of a run of frames at one address (inlined frames
    /// first), created on first use.
    fn location(&mut self, run: &[u32]) -> u64 {
        if let Some(&id) = self.location_ids.get(run) {
            return id;
        }
        let frames = &self.model.profile.frames;
        let line = run
            .iter()
            .map(|&f| Line {
                function_id: self.function_id(f),
                line: frames[f as usize].line.unwrap_or(0) as i64,
            })
            .collect();
        let id = self.location.len() as u64 + 1;
        self.location.push(Location {
            id,
            mapping_id: frames[run[0] as usize].module.map_or(0, |m| m as u64 + 1),
            address: frames[run[0] as usize].address,
            line,
        });
        self.location_ids.insert(run.to_vec(), id);
        id
    }

    /// The function of a frame, by (name, file), created on first use.
    fn function_id(&mut self, frame: u32) -> u64 {
        let name = self.strings.id(self.model.function(frame));
        let file = self.model.profile.frames[frame as usize]
            .file
            .as_deref()
            .map_or(0, |s| self.strings.id(s));
        let function = &mut self.function;
        *self.function_ids.entry((name, file)).or_insert_with(|| {
            function.push(Function {
                id: function.len() as u64 + 1,
                name,
                system_name: name,
                filename: file,
                start_line: 0,
            });
            function.len() as u64
        })
    }
}
