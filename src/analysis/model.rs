//! The in-memory model every report and renderer reads: a loaded
//! [`Profile`] with its frames resolved into display names, each stack's
//! allocation site and best-effort type worked out once, and the grouping
//! keys (`owner`, `task`, `retry`, `site`, ...) ready to look up.
//!
//! Everything here is computed per frame, per stack or per tag, never per
//! live group, so building a model of a profile with a million live groups
//! costs about as much as reading the stack table.

pub use crate::format::frame_names::{clean_function, is_allocator_frame, is_library_frame};
use crate::format::{Frame, LiveGroup, Profile};

/// The key given to memory whose group says nothing (no task, no type, no
/// module): we print it rather than guess.
pub const UNKNOWN: &str = "unknown";

/// Constructors whose (v0-mangled) names carry the type of the block they
/// allocate, and how to name that type. `{}` is replaced by the type
/// argument; an entry without `{}` names the type outright.
const TYPED_CONSTRUCTORS: &[(&str, &str)] = &[
    ("alloc::vec::Vec<", "Vec<{}>"),
    ("alloc::vec::from_elem::<", "Vec<{}>"),
    ("alloc::boxed::Box<", "Box<{}>"),
    ("alloc::sync::Arc<", "Arc<{}>"),
    ("alloc::rc::Rc<", "Rc<{}>"),
    ("alloc::collections::vec_deque::VecDeque<", "VecDeque<{}>"),
    ("alloc::string::String", "String"),
];

/// What the model knows about one stack.
#[derive(Clone, Debug)]
pub struct StackFacts {
    /// Frame index of the allocation site, when the stack has a frame.
    pub site_frame: Option<u32>,
    /// `function (file:line)` of the site.
    pub site: String,
    /// Function name of the site.
    pub function: String,
    /// File name of the module (executable or library) holding the site.
    pub module: String,
    /// Type inferred from the constructor frames between the allocator and
    /// the site; `None` when they do not say.
    pub type_name: Option<String>,
    /// How many innermost frames belong to the allocator or leakprof.
    pub allocator_frames: usize,
}

/// A profile with resolved names; see the module docs.
pub struct Model<'p> {
    pub profile: &'p Profile,
    functions: Vec<String>,
    stacks: Vec<StackFacts>,
    /// Owner key of memory with no labelled owner: "site: <function>".
    site_owner: Vec<String>,
    task_key: Vec<String>,
    retry_key: Vec<String>,
    via_key: Vec<String>,
}

impl<'p> Model<'p> {
    /// Builds the model. The profile was validated on load, so every index
    /// in it points at something that exists.
    pub fn new(profile: &'p Profile) -> Model<'p> {
        let functions: Vec<String> = profile
            .frames
            .iter()
            .map(|f| clean_function(&f.function).to_string())
            .collect();
        let stacks: Vec<StackFacts> = profile
            .stacks
            .iter()
            .map(|s| stack_facts(profile, &functions, &s.frames))
            .collect();
        let site_owner = stacks
            .iter()
            .map(|s| format!("site: {}", s.function))
            .collect();
        let task_key = profile
            .tags
            .iter()
            .map(|t| {
                t.task
                    .map_or_else(|| "untagged".to_string(), |n| format!("task {n}"))
            })
            .collect();
        let retry_key = profile
            .tags
            .iter()
            .map(|t| {
                t.retry
                    .map_or_else(|| "untagged".to_string(), |n| format!("retry {n}"))
            })
            .collect();
        let via_key = profile
            .graph
            .as_ref()
            .map(|g| {
                g.vias
                    .iter()
                    .map(|v| match (&v.field, v.offset) {
                        (Some(field), _) => via_field_key(&v.holder, field),
                        (None, Some(off)) => format!("{} +{off}", v.holder),
                        (None, None) => v.holder.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Model {
            profile,
            functions,
            stacks,
            site_owner,
            task_key,
            retry_key,
            via_key,
        }
    }

    /// Display name of a frame (demangled, without the legacy hash suffix).
    pub fn function(&self, frame: u32) -> &str {
        &self.functions[frame as usize]
    }

    pub fn stack(&self, stack: u32) -> &StackFacts {
        &self.stacks[stack as usize]
    }

    /// Frames of a stack worth showing, outermost (root) first, allocator
    /// and leakprof frames trimmed: the order folded stacks are written in.
    pub fn shown_frames_root_first(&self, stack: u32) -> impl Iterator<Item = u32> + '_ {
        let frames = &self.profile.stacks[stack as usize].frames;
        let skip = self.stacks[stack as usize].allocator_frames;
        frames[skip.min(frames.len())..].iter().rev().copied()
    }

    /// Frames of a stack worth showing, innermost first.
    pub fn shown_frames(&self, stack: u32) -> &[u32] {
        let frames = &self.profile.stacks[stack as usize].frames;
        let skip = self.stacks[stack as usize].allocator_frames;
        &frames[skip.min(frames.len())..]
    }

    /// The owner of a live group: the heap graph's owner when the profile
    /// has one, else the label of the owner scope the blocks were made in,
    /// else the allocation site (as the graph itself names site owners).
    pub fn owner(&self, g: &LiveGroup) -> &str {
        if let (Some(o), Some(graph)) = (g.owner, &self.profile.graph) {
            return &graph.owners[o as usize].name;
        }
        if let Some(label) = &self.profile.tags[g.tag as usize].label {
            return label;
        }
        &self.site_owner[g.stack as usize]
    }

    pub fn task(&self, g: &LiveGroup) -> &str {
        &self.task_key[g.tag as usize]
    }

    pub fn retry(&self, g: &LiveGroup) -> &str {
        &self.retry_key[g.tag as usize]
    }

    pub fn site(&self, g: &LiveGroup) -> &str {
        &self.stacks[g.stack as usize].site
    }

    pub fn function_of(&self, g: &LiveGroup) -> &str {
        &self.stacks[g.stack as usize].function
    }

    pub fn module(&self, g: &LiveGroup) -> &str {
        &self.stacks[g.stack as usize].module
    }

    /// Type of a live group: from the constructor frames, else from the
    /// owner scope's type, else [`UNKNOWN`]. Never the type of a heap-graph
    /// owner: a registered `ErrorHistory` keeps `Vec<u8>` payloads alive,
    /// and those blocks are `Vec<u8>`s, not `ErrorHistory`s.
    pub fn type_name(&self, g: &LiveGroup) -> &str {
        let graph_type = g.object_type.and_then(|t| {
            self.profile
                .graph
                .as_ref()
                .and_then(|graph| graph.types.get(t as usize))
        });
        if let Some(t) = graph_type {
            return t;
        }
        if let Some(t) = &self.stacks[g.stack as usize].type_name {
            return t;
        }
        if let Some(t) = &self.profile.tags[g.tag as usize].type_name {
            return t;
        }
        UNKNOWN
    }

    /// Referring path of a live group (version-2 profiles), guppy's byvia.
    pub fn via(&self, g: &LiveGroup) -> &str {
        match g.via {
            Some(v) => &self.via_key[v as usize],
            None if self.profile.graph.is_none() => "unknown (no heap graph)",
            None => UNKNOWN,
        }
    }
}

fn stack_facts(profile: &Profile, functions: &[String], frames: &[u32]) -> StackFacts {
    let allocator_frames = frames
        .iter()
        .take_while(|&&f| is_allocator_frame(&functions[f as usize]))
        .count();
    let rest = &frames[allocator_frames..];
    // The site is the first frame of the program's own code; a stack made
    // only of library frames falls back to its innermost shown frame.
    let site_pos = rest
        .iter()
        .position(|&f| !is_library_frame(&functions[f as usize]));
    let site_frame = site_pos
        .map(|p| rest[p])
        .or_else(|| rest.first().copied())
        .or_else(|| frames.first().copied());
    // Only the constructors between the allocator and the site describe
    // this block; a `Box::new` further out built something else.
    let typed_window = &rest[..site_pos.unwrap_or(rest.len())];
    let type_name = typed_window
        .iter()
        .find_map(|&f| type_from_constructor(&functions[f as usize]));
    match site_frame {
        Some(f) => {
            let frame = &profile.frames[f as usize];
            let function = functions[f as usize].clone();
            StackFacts {
                site_frame,
                site: site_label(&function, frame),
                function,
                module: profile
                    .module_of(frame)
                    .map_or_else(|| UNKNOWN.to_string(), |m| file_name(&m.path).to_string()),
                type_name,
                allocator_frames,
            }
        }
        None => StackFacts {
            site_frame: None,
            site: UNKNOWN.to_string(),
            function: UNKNOWN.to_string(),
            module: UNKNOWN.to_string(),
            type_name,
            allocator_frames,
        },
    }
}

fn site_label(function: &str, frame: &Frame) -> String {
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{function} ({}:{line})", file_name(file)),
        (Some(file), None) => format!("{function} ({})", file_name(file)),
        _ => function.to_string(),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// The type a constructor frame allocates, when its name spells it out
/// (v0 mangling keeps type arguments; legacy mangling prints the generic
/// parameter, such as `Vec<T>`, which says nothing and is ignored).
pub fn type_from_constructor(function: &str) -> Option<String> {
    // `vec![x; n]` goes through `<u8 as SpecFromElem>::from_elem`.
    if let Some((elem, _)) = function
        .strip_prefix('<')
        .and_then(|f| f.split_once(" as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"))
    {
        if is_generic_parameter(elem) {
            return None;
        }
        return Some(format!("Vec<{}>", shorten_type(elem)));
    }
    let f = function.trim_start_matches('<');
    for (prefix, shape) in TYPED_CONSTRUCTORS {
        let Some(rest) = f.strip_prefix(prefix) else {
            continue;
        };
        if !shape.contains("{}") {
            return Some(shape.to_string());
        }
        let arg = first_type_argument(rest)?;
        if is_generic_parameter(arg) {
            return None;
        }
        return Some(shape.replace("{}", &shorten_type(arg)));
    }
    None
}

/// The first type argument of a list that starts right after `<`.
fn first_type_argument(rest: &str) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' if depth == 0 => return Some(rest[..i].trim()),
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// `T`, `U`, `A`: a placeholder, not a type.
fn is_generic_parameter(arg: &str) -> bool {
    arg.is_empty()
        || (arg.len() <= 2
            && arg
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
}

/// `alloc::vec::Vec<my_app::jobs::Payload>` -> `Vec<Payload>`: keep the last
/// segment of every path so type names stay readable in a table.
pub fn shorten_type(ty: &str) -> String {
    let mut out = String::with_capacity(ty.len());
    let mut segment = String::new();
    for c in ty.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    out
}

/// A via's grouping key when the holder was read by type: its field path
/// (`Retries.history[3].closure`), after the holder's label when it has
/// one (a type or site holder is already named by the path).
fn via_field_key(holder: &str, field: &str) -> String {
    let labelled = !holder.starts_with("site: ") && !holder.contains("::");
    if labelled {
        format!("{holder}: {field}")
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_concrete_constructor_arguments_only() {
        assert_eq!(
            type_from_constructor("<alloc::vec::Vec<u8>>::with_capacity").as_deref(),
            Some("Vec<u8>")
        );
        assert_eq!(
            type_from_constructor("<alloc::boxed::Box<app::jobs::TaskError>>::new").as_deref(),
            Some("Box<TaskError>")
        );
        assert_eq!(
            type_from_constructor("<alloc::sync::Arc<std::sync::Mutex<alloc::vec::Vec<u8>>>>::new")
                .as_deref(),
            Some("Arc<Mutex<Vec<u8>>>")
        );
        assert_eq!(
            type_from_constructor("alloc::vec::from_elem::<u8>").as_deref(),
            Some("Vec<u8>")
        );
        assert_eq!(
            type_from_constructor("alloc::vec::Vec<T,A>::with_capacity"),
            None
        );
        assert_eq!(type_from_constructor("alloc::boxed::Box<T>::new"), None);
        assert_eq!(type_from_constructor("app::make"), None);
        assert_eq!(
            type_from_constructor(
                "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem::<alloc::alloc::Global>"
            )
            .as_deref(),
            Some("Vec<u8>")
        );
    }
}
