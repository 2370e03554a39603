//! Names that fit a terminal: long generic names (tower and apalis stacks
//! run to thousands of characters) shortened by a rule a reader can
//! predict, and text lines fitted to a width.
//!
//! The rule, applied only to names longer than [`SHORT_NAME`] characters:
//!
//! 1. A path in the program's own crate (the profile's program name) is
//!    kept whole. Any other path keeps its last segment when that names a
//!    type (`tokio::runtime::park::CachedParkThread` -> `CachedParkThread`)
//!    and its last two otherwise (`tokio::task::spawn` -> `task::spawn`).
//! 2. Generic arguments nested more than two `<` deep become `…`
//!    (`<MapRequest<BoxService<Task<Job>>>>::call` ->
//!    `<MapRequest<BoxService<…>>>::call`).
//! 3. A name still longer than [`LONG_NAME`] keeps its first and last
//!    [`LONG_NAME`]/2 characters around a `…`.
//!
//! `--full-names` turns all of it off. JSON and CSV always carry full names.

use std::borrow::Cow;

/// Names up to this many characters are shown as they are.
pub const SHORT_NAME: usize = 80;
/// What a shortened name may still take, at most.
pub const LONG_NAME: usize = 200;
/// Generic arguments deeper than this many `<` are elided.
const GENERIC_DEPTH: usize = 2;

/// How a text renderer shows names.
#[derive(Clone, Debug)]
pub struct Names {
    /// The program's own crate, whose paths are kept whole.
    own_crate: String,
    full: bool,
}

impl Names {
    /// Names of a profile's program; `full` shows every name as recorded.
    pub fn of(profile: &crate::format::Profile, full: bool) -> Names {
        Names::new(&profile.meta.program, full)
    }

    /// `program` is a crate or executable name (`apalis-worker` is the
    /// crate `apalis_worker`).
    pub fn new(program: &str, full: bool) -> Names {
        let file = program.rsplit('/').next().unwrap_or(program);
        Names {
            own_crate: file.replace('-', "_"),
            full,
        }
    }

    /// A name as the text output shows it.
    pub fn show<'a>(&self, name: &'a str) -> Cow<'a, str> {
        if self.full || name.chars().count() <= SHORT_NAME {
            return Cow::Borrowed(name);
        }
        Cow::Owned(cut_middle(&shorten(name, &self.own_crate), LONG_NAME))
    }
}

/// Steps 1 and 2 of the rule (see the module doc).
fn shorten(name: &str, own_crate: &str) -> String {
    let mut out = String::with_capacity(name.len().min(LONG_NAME * 2));
    let mut path = String::new();
    let mut depth = 0usize;
    let mut prev = '\0';
    for c in name.chars() {
        let is_path = c.is_alphanumeric() || c == '_' || c == ':';
        if is_path {
            if depth <= GENERIC_DEPTH {
                path.push(c);
            }
            prev = c;
            continue;
        }
        if depth <= GENERIC_DEPTH {
            out.push_str(&shorten_path(&path, own_crate));
        }
        path.clear();
        match c {
            '<' => {
                depth += 1;
                if depth <= GENERIC_DEPTH + 1 {
                    out.push('<');
                }
                if depth == GENERIC_DEPTH + 1 {
                    out.push('…');
                }
            }
            // `->` in a function type is not a closing bracket.
            '>' if prev != '-' && depth > 0 => {
                if depth <= GENERIC_DEPTH + 1 {
                    out.push('>');
                }
                depth -= 1;
            }
            _ if depth <= GENERIC_DEPTH => out.push(c),
            _ => {}
        }
        prev = c;
    }
    if depth <= GENERIC_DEPTH {
        out.push_str(&shorten_path(&path, own_crate));
    }
    out
}

/// Step 1: a path outside the program's crate cut to its last segment (a
/// type) or last two (a function).
fn shorten_path<'a>(path: &'a str, own_crate: &str) -> Cow<'a, str> {
    let segments: Vec<&str> = path.split("::").collect();
    // `::block_on::` continues the path before a `>`: kept as it is.
    if segments.len() < 2 || segments[0].is_empty() || segments[0] == own_crate {
        return Cow::Borrowed(path);
    }
    let trailing = path.ends_with("::");
    let named: Vec<&str> = segments.into_iter().filter(|s| !s.is_empty()).collect();
    let Some(last) = named.last() else {
        return Cow::Borrowed(path);
    };
    let keep = if last.starts_with(char::is_uppercase) || named.len() < 2 {
        last.to_string()
    } else {
        format!("{}::{last}", named[named.len() - 2])
    };
    Cow::Owned(if trailing { keep + "::" } else { keep })
}

/// Keeps the first and last `max / 2` characters of a longer string.
fn cut_middle(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let half = (max - 1) / 2;
    let head: String = s.chars().take(half).collect();
    let tail: String = s.chars().skip(n - half).collect();
    format!("{head}…{tail}")
}

/// Cuts every line of `text` longer than `width` characters to `width`,
/// its last character a `…`. `None` leaves the text as it is.
pub fn fit_lines(text: &str, width: Option<usize>) -> Cow<'_, str> {
    let Some(width) = width.filter(|w| *w > 1) else {
        return Cow::Borrowed(text);
    };
    if text.lines().all(|l| l.len() <= width) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if body.chars().count() > width {
            out.extend(body.chars().take(width - 1));
            out.push('…');
        } else {
            out.push_str(body);
        }
        out.push_str(newline);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tower_like(depth: usize) -> String {
        let mut s = "apalis_worker::handle".to_string();
        for k in 0..depth {
            s = format!("tower::util::map_request::MapRequest<{s}, apalis_core::layers::retry::RetryLayer{k}<u8>>");
        }
        format!(
            "<{s} as tower_service::Service<apalis_core::task::Task<alloc::vec::Vec<u8>>>>::call"
        )
    }

    #[test]
    fn short_names_stay_as_they_are() {
        let n = Names::new("app", false);
        let name = "<tokio::runtime::park::CachedParkThread>::block_on";
        assert_eq!(n.show(name), name);
    }

    #[test]
    fn long_names_keep_the_programs_paths_and_elide_deep_generics() {
        let name = tower_like(40);
        assert!(name.len() > 2000);
        let n = Names::new("/opt/bin/apalis-worker", false);
        let shown = n.show(&name);
        assert!(shown.chars().count() <= LONG_NAME, "{shown}");
        assert_eq!(
            shown,
            "<MapRequest<MapRequest<…>, RetryLayer39<…>> as Service<Task<…>>>::call"
        );
        assert_eq!(Names::new("apalis-worker", true).show(&name), name);
        // The program's own paths survive whole.
        let own = format!("apalis_worker::jobs::make_payload::<{}>", "u8, ".repeat(30));
        assert!(n
            .show(&own)
            .starts_with("apalis_worker::jobs::make_payload::<u8"));
        // A function outside it keeps its module.
        let f = format!("tokio::task::spawn::<{}>", "x".repeat(90));
        assert!(n.show(&f).starts_with("task::spawn::<"));
    }

    #[test]
    fn function_types_are_not_closing_brackets() {
        let name = format!(
            "core::ops::function::FnOnce<fn(u8) -> alloc::vec::Vec<u8>>::call_once::<{}>",
            "a".repeat(80)
        );
        let shown = shorten(&name, "app");
        assert!(
            shown.starts_with("FnOnce<fn(u8) -> Vec<u8>>::call_once"),
            "{shown}"
        );
    }

    #[test]
    fn lines_are_cut_to_the_width_with_an_ellipsis() {
        let text = format!("short\n{}\nend", "x".repeat(50));
        let fitted = fit_lines(&text, Some(20));
        let lines: Vec<&str> = fitted.lines().collect();
        assert_eq!(lines[0], "short");
        assert_eq!(lines[1].chars().count(), 20);
        assert!(lines[1].ends_with('…'));
        assert_eq!(lines[2], "end");
        assert_eq!(fit_lines(&text, None), text);
    }
}
