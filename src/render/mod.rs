//! Renderers: small modules over the analysis model (memray's reporters).
//!
//! Every renderer that turns one profile into one output is an entry of
//! [`RENDERERS`]: a name (what `--format` takes), a one-line description
//! (used by `--help` and `leakprof list`), the commands it serves and a
//! constructor. Commands look renderers up by name here instead of
//! matching on formats themselves, so adding an output is one entry.
//!
//! Renderers compute nothing about leaks: they format what
//! [`analysis`](crate::analysis) worked out. Stages meet through text
//! formats where one exists (flamegraphs through folded stacks, plots
//! through the timeline CSV), so each can be tested alone with files.

pub mod comparison;
pub mod dhat;
pub mod flamegraph;
pub mod names;
pub mod pprof;
pub mod retainers;
pub mod table;
pub mod timeline;

use std::io::{self, Write};

use crate::analysis::{Grouping, Model};

/// Which command offers a renderer through its `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Report,
    Flamegraph,
    Export,
    Timeline,
}

/// Turns one profile's model into bytes.
pub trait Render {
    fn render(&self, model: &Model<'_>, options: &Options, out: &mut dyn Write) -> io::Result<()>;
}

/// One entry of the registry.
pub struct Renderer {
    pub name: &'static str,
    pub description: &'static str,
    pub commands: &'static [Command],
    /// File extension of its output, without the dot.
    pub extension: &'static str,
    /// True when the output is not text (never written to a terminal).
    pub binary: bool,
    pub new: fn() -> Box<dyn Render>,
}

/// Every single-profile renderer.
pub const RENDERERS: &[Renderer] = &[
    Renderer {
        name: "text",
        description: "guppy-style partition table with the leak slope, task-scoped leaks and per-retry growth",
        commands: &[Command::Report],
        extension: "txt",
        binary: false,
        new: || Box::new(table::Text),
    },
    Renderer {
        name: "json",
        description: "the report as JSON (stable schema, see docs/REPORT.md)",
        commands: &[Command::Report],
        extension: "json",
        binary: false,
        new: || Box::new(table::Json),
    },
    Renderer {
        name: "csv",
        description: "the partition rows as CSV",
        commands: &[Command::Report],
        extension: "csv",
        binary: false,
        new: || Box::new(table::Csv),
    },
    Renderer {
        name: "svg",
        description: "flamegraph of allocation stacks (inferno)",
        commands: &[Command::Flamegraph],
        extension: "svg",
        binary: false,
        new: || Box::new(flamegraph::Svg),
    },
    Renderer {
        name: "folded",
        description: "folded stacks, one `frame;frame;frame value` line per stack (inferno, speedscope)",
        commands: &[Command::Flamegraph, Command::Export],
        extension: "folded",
        binary: false,
        new: || Box::new(flamegraph::Folded),
    },
    Renderer {
        name: "dhat",
        description: "DHAT JSON (dhatFileVersion 2, as dhat-rs writes) for the DHAT viewer dh_view.html",
        commands: &[Command::Export],
        extension: "json",
        binary: false,
        new: || Box::new(dhat::Dhat),
    },
    Renderer {
        name: "pprof",
        description: "gzipped pprof profile.proto heap profile (inuse/alloc space and objects)",
        commands: &[Command::Export],
        extension: "pb.gz",
        binary: true,
        new: || Box::new(pprof::Pprof),
    },
    Renderer {
        name: "timeline-csv",
        description: "memory timeline as CSV (time_s, rss_mib, live_mib, live_blocks, event, task, retry)",
        commands: &[Command::Timeline, Command::Export],
        extension: "csv",
        binary: false,
        new: || Box::new(timeline::Csv),
    },
    Renderer {
        name: "timeline-svg",
        description: "memory timeline chart: RSS and live bytes over time, failures marked (plotters)",
        commands: &[Command::Timeline, Command::Export],
        extension: "svg",
        binary: false,
        new: || Box::new(timeline::Svg),
    },
];

/// Finds the renderer a command offers under `name`.
pub fn find(command: Command, name: &str) -> Option<&'static Renderer> {
    RENDERERS
        .iter()
        .find(|r| r.name == name && r.commands.contains(&command))
}

/// Names a command accepts for `--format`, for clap and error messages.
pub fn names(command: Command) -> Vec<&'static str> {
    RENDERERS
        .iter()
        .filter(|r| r.commands.contains(&command))
        .map(|r| r.name)
        .collect()
}

/// Defaults shared by the library and the CLI, so the CLI never restates
/// them (inferno's `defaults` module).
pub mod defaults {
    /// `--by`: partition by owner (which falls back to the site).
    pub const BY: &str = "owner";
    /// Rows the text table shows when `--top` is not given (guppy's 10).
    pub const TEXT_ROWS: usize = 10;
    /// `--metric` of flamegraphs.
    pub const METRIC: &str = "surviving";
    /// `--group-by` of flamegraphs.
    pub const GROUP_BY: &str = "none";
    /// Flamegraph width in pixels.
    pub const WIDTH: usize = 1200;
    /// Widest line of text output (`report`, `retainers`) when it does not
    /// go to a terminal; a terminal's own width otherwise.
    pub const TEXT_WIDTH: usize = 300;
}

/// Options every renderer reads; each uses the ones that concern it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Partition grouping of report tables.
    pub by: &'static Grouping,
    /// Rows to show: `None` shows every row in JSON and CSV and
    /// [`defaults::TEXT_ROWS`] in text.
    pub top: Option<usize>,
    pub metric: flamegraph::Metric,
    pub group_by: flamegraph::FlameGroup,
    /// Replaces the generated title.
    pub title: Option<String>,
    pub width: usize,
    /// Text output: every name as recorded, lines as long as they come
    /// (`--full-names`); else names shortened by the rule of [`names`].
    pub full_names: bool,
    /// Text output: lines longer than this many characters are cut
    /// (`None`: never).
    pub line_width: Option<usize>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            by: crate::analysis::grouping(defaults::BY).expect("the default grouping exists"),
            top: None,
            metric: flamegraph::Metric::from_name(defaults::METRIC)
                .expect("the default metric exists"),
            group_by: flamegraph::FlameGroup::from_name(defaults::GROUP_BY)
                .expect("the default grouping exists"),
            title: None,
            width: defaults::WIDTH,
            full_names: false,
            line_width: Some(defaults::TEXT_WIDTH),
        }
    }
}

impl Options {
    pub fn by(mut self, by: &'static Grouping) -> Options {
        self.by = by;
        self
    }
    pub fn top(mut self, top: Option<usize>) -> Options {
        self.top = top;
        self
    }
    pub fn metric(mut self, metric: flamegraph::Metric) -> Options {
        self.metric = metric;
        self
    }
    pub fn group_by(mut self, group_by: flamegraph::FlameGroup) -> Options {
        self.group_by = group_by;
        self
    }
    pub fn title(mut self, title: Option<String>) -> Options {
        self.title = title;
        self
    }
    /// Full names and uncut lines, or shortened names in lines of at most
    /// `line_width` characters.
    pub fn text_fit(mut self, full_names: bool, line_width: Option<usize>) -> Options {
        self.full_names = full_names;
        self.line_width = if full_names { None } else { line_width };
        self
    }
}

/// Renders a model with the named renderer of a command into bytes.
pub fn render_to_vec(
    renderer: &Renderer,
    model: &Model<'_>,
    options: &Options,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    (renderer.new)().render(model, options, &mut out)?;
    Ok(out)
}

/// "scenario exception, middleware original" from `meta.attributes`, or
/// the program name when the profile carries neither.
pub fn run_label(profile: &crate::format::Profile) -> String {
    use crate::format::attributes::{MIDDLEWARE, SCENARIO};
    let attrs = &profile.meta.attributes;
    let mut parts = Vec::new();
    if let Some(s) = attrs.get(SCENARIO) {
        parts.push(format!("scenario {s}"));
    }
    if let Some(m) = attrs.get(MIDDLEWARE) {
        parts.push(format!("middleware {m}"));
    }
    if parts.is_empty() {
        profile.meta.program.clone()
    } else {
        parts.join(", ")
    }
}
