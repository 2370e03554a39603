//! A miniature typed trace, as the scan will do it: from a typed root,
//! walk each block with the type its owner's pointer declares; a block
//! reached only by an untyped word is scanned conservatively.

use std::collections::{BTreeMap, BTreeSet};

use leakprof::record::types::{walk, BlockType, OutPointer, PointerKind, Traced, TypeMaps};

use super::tracker;

/// What the trace found.
#[derive(Default, Debug)]
pub struct Graph {
    /// Block start -> the type it was walked with (None: conservatively).
    pub blocks: BTreeMap<usize, Option<BlockType>>,
    /// (from block or root start, offset, to block start, kind, path).
    pub edges: Vec<(usize, usize, usize, PointerKind, String)>,
    /// Blocks whose walk fell back somewhere, and why.
    pub fallbacks: Vec<(usize, Traced)>,
}

impl Graph {
    pub fn reached(&self) -> BTreeSet<usize> {
        self.blocks.keys().copied().collect()
    }

    pub fn paths_to(&self, block: usize) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|e| e.2 == block)
            .map(|e| e.4.as_str())
            .collect()
    }
}

/// Reads the process's own memory (the test keeps every value alive).
pub fn read(addr: usize) -> usize {
    // SAFETY: the walker only asks for aligned words overlapping a live
    // block or a static of this process, all mapped and readable.
    unsafe { std::ptr::read_volatile(addr as *const usize) }
}

/// Traces from a root region holding a value of `root` type.
pub fn trace(maps: &TypeMaps, start: usize, len: usize, root: BlockType) -> Graph {
    let mut g = Graph::default();
    let mut work: Vec<(usize, usize, Option<BlockType>)> = vec![(start, len, Some(root))];
    while let Some((at, size, bt)) = work.pop() {
        let mut found: Vec<OutPointer> = Vec::new();
        match bt {
            Some(bt) => {
                let traced = walk(maps, at, size, bt, &read, &mut |p| found.push(p));
                if traced != Traced::Exact {
                    g.fallbacks.push((at, traced));
                }
                if traced == Traced::Mismatch {
                    conservative(at, size, &mut found);
                }
            }
            None => conservative(at, size, &mut found),
        }
        for p in found {
            let Some((to, to_size)) = tracker::block_containing(p.target) else {
                continue;
            };
            let path = match bt {
                Some(bt) => maps.slot_path(bt, p.offset, p.slot),
                None => format!("+{:#x}", p.offset),
            };
            g.edges.push((at, p.offset, to, p.kind, path));
            if let std::collections::btree_map::Entry::Vacant(e) = g.blocks.entry(to) {
                let typed = p.pointee_for(maps, to, to_size);
                e.insert(typed);
                work.push((to, to_size, typed));
            }
        }
    }
    g
}

fn conservative(at: usize, size: usize, out: &mut Vec<OutPointer>) {
    let mut o = 0;
    while o + 8 <= size {
        out.push(OutPointer {
            offset: o,
            target: read(at + o),
            pointee: None,
            slot: leakprof::record::types::SlotId::NONE,
            kind: PointerKind::Conservative,
        });
        o += 8;
    }
}
