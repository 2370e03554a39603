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
    #[error("profile {path} has format version {version}{}, newer than this leakprof ({ours}) reads (versions {supported}): upgrade leakprof to read it", .written_by.as_ref().map(|w| format!(" (written by leakprof {w})")).unwrap_or_default())]
    NewerVersion {
        path: PathBuf,
        version: u64,
        /// `meta.leakprof_version` of the file, when it has one.
        written_by: Option<String>,
        ours: &'static str,
        supported: String,
    },
    #[error("profile {path} has format version {version}, which no leakprof writes (this leakprof, {ours}, reads versions {supported})")]
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
            check_header(
                path,
                &Header {
                    format: Some(&profile.format),
                    version: Some(profile.version as u64),
                    written_by: Some(&profile.meta.leakprof_version),
                },
            )?;
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
            if let Err(e) = check_header(path, &RawHeader::read(bytes).view()) {
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

/// What the loader checks before it trusts the rest: the kind of file,
/// its version and which leakprof wrote it.
struct Header<'a> {
    format: Option<&'a str>,
    version: Option<u64>,
    written_by: Option<&'a str>,
}

/// The header keys of any JSON document, each `None` when missing or not
/// of the expected type; read when the whole file did not parse as a
/// profile, to say why.
#[derive(Default, Deserialize)]
struct RawHeader {
    format: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
    meta: Option<serde_json::Value>,
}

impl RawHeader {
    fn read(bytes: &[u8]) -> RawHeader {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn view(&self) -> Header<'_> {
        Header {
            format: self.format.as_ref().and_then(|v| v.as_str()),
            version: self.version.as_ref().and_then(|v| v.as_u64()),
            written_by: self
                .meta
                .as_ref()
                .and_then(|m| m.get("leakprof_version"))
                .and_then(|v| v.as_str()),
        }
    }
}

fn check_header(path: &Path, header: &Header) -> Result<(), LoadError> {
    match header.format {
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
    let supported = || {
        SUPPORTED_VERSIONS
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let newest = SUPPORTED_VERSIONS.iter().copied().max().unwrap_or(0) as u64;
    match header.version {
        Some(v) if SUPPORTED_VERSIONS.iter().any(|&s| s as u64 == v) => Ok(()),
        Some(v) if v > newest => Err(LoadError::NewerVersion {
            path: path.to_path_buf(),
            version: v,
            written_by: header.written_by.map(str::to_string),
            ours: env!("CARGO_PKG_VERSION"),
            supported: supported(),
        }),
        Some(v) => Err(LoadError::UnknownVersion {
            path: path.to_path_buf(),
            version: v,
            ours: env!("CARGO_PKG_VERSION"),
            supported: supported(),
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

#[cfg(test)]
mod tests {
    //! Both directions of the compatibility rule (docs/FORMAT.md), on real
    //! profiles from `profiles/`.

    use serde_json::{json, Value};

    use super::*;
    use crate::format::Dropped;

    fn example(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("profiles")
            .join(name);
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn load_value(v: &Value) -> Result<Profile, LoadError> {
        load_bytes(Path::new("p.json"), &serde_json::to_vec(v).unwrap())
    }

    /// Adds a field this build does not know to every JSON object but
    /// string maps (`meta.attributes`, whose keys are data).
    fn add_unknown_fields(v: &mut Value, key: Option<&str>) -> usize {
        match v {
            Value::Object(map) => {
                let mut added = 0;
                for (k, child) in map.iter_mut() {
                    added += add_unknown_fields(child, Some(k));
                }
                if key != Some("attributes") {
                    map.insert(
                        "field_from_a_newer_writer".into(),
                        json!({"nested": [1, "two", null]}),
                    );
                    added += 1;
                }
                added
            }
            Value::Array(items) => items.iter_mut().map(|x| add_unknown_fields(x, key)).sum(),
            _ => 0,
        }
    }

    #[test]
    fn fields_a_newer_writer_adds_within_a_version_are_ignored_at_every_level() {
        for name in ["exception-original.json", "leaky-service.json"] {
            let original = example(name);
            let mut newer = original.clone();
            let added = add_unknown_fields(&mut newer, None);
            assert!(added > 100, "{name}: only {added} objects");
            let expected = load_value(&original).unwrap();
            let loaded = load_value(&newer).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(loaded, expected, "{name}");
        }
    }

    #[test]
    fn a_file_from_an_older_writer_of_the_same_version_loads_with_defaults() {
        // Version 2 as first written, before `dropped` gained these fields.
        let mut older = example("exception-original.json");
        let dropped = older["dropped"].as_object_mut().unwrap();
        for later in ["tags_overflowed", "tasks"] {
            assert!(dropped.remove(later).is_some(), "{later}");
        }
        let p = load_value(&older).unwrap();
        assert_eq!(p.version, 2);
        assert_eq!(p.dropped, Dropped::default());
        assert!(p.graph.is_some());
    }

    #[test]
    fn a_version_1_file_loads_and_cannot_carry_a_graph() {
        let mut v1 = example("exception-fixed.json");
        v1["version"] = 1.into();
        let graph = v1.as_object_mut().unwrap().remove("graph").unwrap();
        for group in v1["live"].as_array_mut().unwrap() {
            let group = group.as_object_mut().unwrap();
            for v2_only in ["owner", "via", "unreachable"] {
                group.remove(v2_only);
            }
        }
        assert_eq!(load_value(&v1).unwrap().version, 1);
        v1["graph"] = graph;
        let err = load_value(&v1).unwrap_err().to_string();
        assert!(
            err.contains("a version 1 profile cannot carry a heap graph"),
            "{err}"
        );
    }

    #[test]
    fn a_newer_version_is_refused_in_one_line_that_says_upgrade() {
        let newest = *SUPPORTED_VERSIONS.iter().max().unwrap();
        let mut newer = example("exception-original.json");
        newer["version"] = (newest + 1).into();
        newer["meta"]["leakprof_version"] = "9.1.0".into();
        let err = load_value(&newer).unwrap_err();
        assert!(matches!(err, LoadError::NewerVersion { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        for says in [
            "p.json",
            &format!("format version {}", newest + 1),
            "written by leakprof 9.1.0",
            "newer than this leakprof",
            "upgrade leakprof",
        ] {
            assert!(msg.contains(says), "{says:?} not in {msg}");
        }
        // Refused just the same when its shape no longer parses as ours.
        newer["live"] = json!({"reshaped": true});
        assert!(matches!(
            load_value(&newer),
            Err(LoadError::NewerVersion { .. })
        ));
        newer["version"] = 0.into();
        assert!(matches!(
            load_value(&newer),
            Err(LoadError::UnknownVersion { .. })
        ));
    }
}
