//! Retainer chains as text (one hop per line, as objgraph prints
//! back-reference chains) and as an SVG drawing (objgraph's `show_chain`),
//! drawn here so no Graphviz is needed.

use std::fmt::Write as _;

use crate::analysis::check::human_bytes;
use crate::analysis::retainers::{describe_start, Chain, Start};
use crate::render::flamegraph::xml_escape;
use crate::render::names::{fit_lines, Names};

/// The text form: for each chain its start, then one line per hop, names
/// shown as `names` says and lines cut to `line_width`.
pub fn text(chains: &[Chain], names: &Names, line_width: Option<usize>) -> String {
    let text = text_lines(chains, names);
    fit_lines(&text, line_width).into_owned()
}

fn text_lines(chains: &[Chain], names: &Names) -> String {
    let mut out = String::new();
    if chains.is_empty() {
        out.push_str("No object matched.\n");
    }
    for (k, c) in chains.iter().enumerate() {
        let Some(t) = c.target() else { continue };
        let _ = writeln!(
            out,
            "#{} {} at {:#x} ({} retained{})",
            k + 1,
            names.show(&t.type_name),
            t.address,
            human_bytes(t.retained),
            t.owner
                .as_ref()
                .map(|o| format!(", owner \"{o}\""))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "  {}", start_text(&c.start, names));
        for h in &c.hops {
            let via = match (&h.field, h.offset) {
                (Some(f), _) => format!("{f} -> "),
                (None, Some(o)) => format!("+{o:#x} -> "),
                (None, None) => "   ".to_string(),
            };
            let _ = writeln!(
                out,
                "  {via}{:#x}  {:>10}  {:<24}  owner {:<16}  site {}",
                h.address,
                human_bytes(h.size),
                names.show(&h.type_name),
                h.owner.as_deref().unwrap_or("-"),
                names.show(&h.site)
            );
        }
        out.push('\n');
    }
    out
}

/// A chain's start as `text` prints it: a cycle's ring with each member
/// shortened (the ring itself is kept whole), any other start shortened.
fn start_text(start: &Start, names: &Names) -> String {
    match start {
        Start::Cycle { .. } => {
            let mut shown = start.clone();
            if let Start::Cycle { names: ring, .. } = &mut shown {
                for member in ring.iter_mut() {
                    *member = names.show(member).into_owned();
                }
            }
            describe_start(&shown)
        }
        other => names.show(&describe_start(other)).into_owned(),
    }
}

/// The SVG form: each chain a column of boxes joined by arrows labelled
/// with the pointer's offset; the start above the first box.
pub fn svg(chains: &[Chain], title: &str) -> String {
    const BOX_W: usize = 520;
    const BOX_H: usize = 58;
    const GAP: usize = 34;
    const COL: usize = BOX_W + 60;
    let tallest = chains.iter().map(|c| c.hops.len()).max().unwrap_or(0);
    let width = (chains.len().max(1) * COL + 40).max(600);
    let height = 90 + tallest * (BOX_H + GAP) + 40;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">
<title>{}</title>
<defs><marker id="arrow" markerWidth="10" markerHeight="10" refX="9" refY="3" orient="auto"><path d="M0,0 L9,3 L0,6 z" fill="#444"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="24" font-size="16">{}</text>"##,
        xml_escape(title),
        xml_escape(title)
    );
    if chains.is_empty() {
        let _ = writeln!(s, r#"<text x="20" y="60">No object matched.</text>"#);
    }
    for (k, c) in chains.iter().enumerate() {
        let x = 20 + k * COL;
        let _ = writeln!(
            s,
            r##"<text x="{x}" y="56" fill="#a00">{}</text>"##,
            xml_escape(&describe_start(&c.start))
        );
        for (i, h) in c.hops.iter().enumerate() {
            let y = 70 + i * (BOX_H + GAP);
            let fill = if i + 1 == c.hops.len() {
                "#fde0dc"
            } else {
                "#e8f0fe"
            };
            let _ = writeln!(
                s,
                r##"<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="#557"/>
<text x="{}" y="{}">{}  {}</text>
<text x="{}" y="{}">owner {}  retains {}</text>
<text x="{}" y="{}">{}</text>"##,
                x + 8,
                y + 17,
                xml_escape(&h.type_name),
                human_bytes(h.size),
                x + 8,
                y + 34,
                xml_escape(h.owner.as_deref().unwrap_or("-")),
                human_bytes(h.retained),
                x + 8,
                y + 51,
                xml_escape(&h.site)
            );
            if i + 1 < c.hops.len() {
                let next = &c.hops[i + 1];
                let (ax, ay0, ay1) = (x + BOX_W / 2, y + BOX_H, y + BOX_H + GAP - 2);
                let _ = writeln!(
                    s,
                    r##"<line x1="{ax}" y1="{ay0}" x2="{ax}" y2="{ay1}" stroke="#444" marker-end="url(#arrow)"/>
<text x="{}" y="{}" fill="#444">{}</text>"##,
                    ax + 8,
                    ay0 + GAP / 2 + 4,
                    xml_escape(&next.field.clone().unwrap_or_else(|| {
                        next.offset.map(|o| format!("+{o:#x}")).unwrap_or_default()
                    }))
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
