//! Strict loading: every way a file can fail to be a usable profile maps to
//! one clear error that names the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Profile, FORMAT_NAME, SUPPORTED_VERSIONS, VERSION_V1};

/// Why a file could not be loaded as a profile.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading profile {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("profile {path} is empty")]
    Empty { path: PathBuf },
    #[error("profile {path} is truncated: unexpected end of file at line {line}, column {column}")]
    Truncated {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("profile {path} is corrupt: {message} at line {line}, column {column}")]
    Corrupt {
        path: PathBuf,
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{path} is not a leakprof profile ({reason})")]
    WrongKind { path: PathBuf, reason: String },
    #[error("profile {path} has version {version}, which this leakprof ({ours}) cannot read (supported: {supported})")]
    UnknownVersion {
        path: PathBuf,
        version: u64,
        ours: &'static str,
        supported: String,
    },
    #[error("profile {path} is inconsistent: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
}

/// Reads and validates a profile file.
pub fn load(path: impl AsRef<Path>) -> Result<Profile, LoadError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|error| LoadError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    load_bytes(path, &bytes)
}

/// Parses and validates profile bytes; `path` is used only in messages.
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Profile, LoadError> {
    let path_buf = || path.to_path_buf();
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(LoadError::Empty { path: path_buf() });
    }
    match serde_json::from_slice::<Profile>(bytes) {
        Ok(profile) => {
            check_header(path, Some(&profile.format), Some(profile.version as u64))?;
            validate(&profile).map_err(|reason| LoadError::Inconsistent {
                path: path_buf(),
                reason,
            })?;
            Ok(profile)
        }
        Err(err) => Err(diagnose(path, bytes, err)),
    }
}

/// Explains a failed parse: a truncated or corrupt file, another kind of
/// JSON document, or a profile of a version we do not know.
fn diagnose(path: &Path, bytes: &[u8], err: serde_json::Error) -> LoadError {
    use serde_json::error::Category;
    let path_buf = path.to_path_buf();
    match err.classify() {
        Category::Eof => LoadError::Truncated {
            path: path_buf,
            line: err.line(),
            column: err.column(),
        },
        Category::Syntax | Category::Io => LoadError::Corrupt {
            path: path_buf,
            message: strip_position(&err.to_string()),
            line: err.line(),
            column: err.column(),
        },
        Category::Data => {
            // Well-formed JSON that is not a profile of ours: say which.
            #[derive(Deserialize)]
            struct Header {
                format: Option<serde_json::Value>,
                version: Option<serde_json::Value>,
            }
            let header = serde_json::from_slice::<Header>(bytes).ok();
            let (format, version) = match &header {
                Some(h) => (
                    h.format.as_ref().and_then(|v| v.as_str()),
                    h.version.as_ref().and_then(|v| v.as_u64()),
                ),
                None => (None, None),
            };
            if let Err(e) = check_header(path, format, version) {
                return e;
            }
            LoadError::Corrupt {
                path: path_buf,
                message: strip_position(&err.to_string()),
                line: err.line(),
                column: err.column(),
            }
        }
    }
}

fn check_header(path: &Path, format: Option<&str>, version: Option<u64>) -> Result<(), LoadError> {
    match format {
        Some(FORMAT_NAME) => {}
        Some(other) => {
            return Err(LoadError::WrongKind {
                path: path.to_path_buf(),
                reason: format!("its \"format\" is {other:?}, expected {FORMAT_NAME:?}"),
            })
        }
        None => {
            return Err(LoadError::WrongKind {
                path: path.to_path_buf(),
                reason: format!("it has no \"format\": {FORMAT_NAME:?} key"),
            })
        }
    }
    match version {
        Some(v) if SUPPORTED_VERSIONS.iter().any(|&s| s as u64 == v) => Ok(()),
        Some(v) => Err(LoadError::UnknownVersion {
            path: path.to_path_buf(),
            version: v,
            ours: env!("CARGO_PKG_VERSION"),
            supported: SUPPORTED_VERSIONS
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
        None => Err(LoadError::WrongKind {
            path: path.to_path_buf(),
            reason: "it has no numeric \"version\" key".to_string(),
        }),
    }
}

/// serde_json appends " at line L column C"; we report the position ourselves.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Cross-reference checks: every index points at something that exists, so
/// readers may index without bounds worries.
fn validate(p: &Profile) -> Result<(), String> {
    let frames = p.frames.len();
    let stacks = p.stacks.len();
    let tags = p.tags.len();
    let modules = p.modules.len();
    for (i, f) in p.frames.iter().enumerate() {
        if let Some(m) = f.module {
            if m as usize >= modules {
                return Err(format!(
                    "frame {i} refers to module {m}, but there are {modules} modules"
                ));
            }
        }
    }
    for (i, s) in p.stacks.iter().enumerate() {
        if let Some(&f) = s.frames.iter().find(|&&f| f as usize >= frames) {
            return Err(format!(
                "stack {i} refers to frame {f}, but there are {frames} frames"
            ));
        }
    }
    if tags == 0 {
        return Err("the tag table is empty (tag 0, untagged, must exist)".to_string());
    }
    for (i, t) in p.tags.iter().enumerate() {
        if t.id as usize != i {
            return Err(format!("tag at index {i} has id {}", t.id));
        }
    }
    let owners = p.graph.as_ref().map_or(0, |g| g.owners.len());
    let vias = p.graph.as_ref().map_or(0, |g| g.vias.len());
    for (i, l) in p.live.iter().enumerate() {
        if l.stack as usize >= stacks {
            return Err(format!(
                "live group {i} refers to stack {}, but there are {stacks} stacks",
                l.stack
            ));
        }
        if l.tag as usize >= tags {
            return Err(format!(
                "live group {i} refers to tag {}, but there are {tags} tags",
                l.tag
            ));
        }
        if let Some(o) = l.owner {
            if o as usize >= owners {
                return Err(format!(
                    "live group {i} refers to owner {o}, but there are {owners} owners"
                ));
            }
        }
        if let Some(v) = l.via {
            if v as usize >= vias {
                return Err(format!(
                    "live group {i} refers to via {v}, but there are {vias} vias"
                ));
            }
        }
    }
    for (i, s) in p.stack_stats.iter().enumerate() {
        if s.stack as usize >= stacks {
            return Err(format!(
                "stack_stats {i} refers to stack {}, but there are {stacks} stacks",
                s.stack
            ));
        }
    }
    if let Some(g) = &p.graph {
        if p.version == VERSION_V1 {
            return Err("a version 1 profile cannot carry a heap graph".to_string());
        }
        let nodes = g.nodes.len();
        for (i, n) in g.nodes.iter().enumerate() {
            if n.stack as usize >= stacks || n.tag as usize >= tags {
                return Err(format!("graph node {i} refers to a missing stack or tag"));
            }
            if n.parent.is_some_and(|x| x as usize >= nodes) {
                return Err(format!(
                    "graph node {i} has a parent outside the node table"
                ));
            }
            if n.owner.is_some_and(|x| x as usize >= owners) {
                return Err(format!("graph node {i} refers to a missing owner"));
            }
            if n.cycle.is_some_and(|c| c as usize >= g.cycles.len()) {
                return Err(format!("graph node {i} refers to a missing cycle"));
            }
        }
        for c in &g.cycles {
            if c.nodes.iter().any(|&n| n as usize >= nodes) {
                return Err(format!(
                    "cycle {} refers to a node outside the node table",
                    c.id
                ));
            }
        }
    }
    Ok(())
}
