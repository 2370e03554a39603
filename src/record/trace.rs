//! The exact trace: reading the heap by the program's own types during the
//! scan's pause (issue 10), so a stale word (an enum's niche after `None`,
//! a `Vec`'s spare capacity, glibc's free-list pointers) never invents a
//! retainer.
//!
//! 1. *Before the pause* ([`TypedPrep::prepare`], allocation allowed): the
//!    type maps ([`TypeMaps::shared`]), a [`SiteSpec`] per allocation
//!    stack, the allocator's own metadata ranges (never roots) and the
//!    typed statics.
//! 2. *In the pause* ([`Tracer`], no `malloc`: every array is an
//!    [`MmapVec`]): typed statics are roots, walked by type; each block an
//!    exact pointer reaches takes the type its owner's field declares
//!    (the first declaration wins); blocks no typed owner reaches take
//!    their allocation site's type; a block without either, or whose type
//!    does not fit it ([`Traced::Mismatch`]), is scanned word by word as
//!    the conservative scan does. A block first walked by its site's type
//!    (or conservatively) and later declared otherwise is walked again:
//!    its edges are kept per block as a range so they can be replaced, and
//!    compacted at the end.
//! 3. *After the pause*: the heap graph turns slots into field paths and
//!    static roots into `module!symbol` names (`heapgraph`).
//!
//! Thread stacks, registers and TLS stay conservative roots (`scan`), as
//! does writable module data no typed static covers, but for the
//! allocator's metadata.

use std::sync::Arc;

use super::hooks;
use super::mmapvec::MmapVec;
use super::scan::{Edge, EdgeKind};
use super::types::{walk, BlockType, Fallback, Shape, SiteSpec, SlotId, Traced, TypeId, TypeMaps};

/// What the exact trace needs, gathered before the pause.
pub(crate) struct TypedPrep {
    pub(crate) maps: Arc<TypeMaps>,
    /// By stack id: what the allocation site says its blocks are.
    sites: Vec<Option<SiteSpec>>,
    /// By stack id: the allocating code has no debug info.
    no_debug_info: Vec<bool>,
    /// Address ranges of the allocator's own state, sorted: never roots.
    pub(crate) allocator_metadata: Vec<(usize, usize)>,
    /// Indices into `maps.statics()` of the statics with a DWARF type.
    pub(crate) typed_statics: Vec<u32>,
    /// Time spent here (the DWARF load, on first use, included).
    pub(crate) prepare_ns: u64,
}

impl TypedPrep {
    /// Loads (or reuses) the type maps and everything the pause needs.
    /// Allocates: call it with the re-entrancy guard held, before the
    /// stop.
    pub(crate) fn prepare(read: &impl Fn(usize) -> usize) -> TypedPrep {
        let t0 = super::sys::now_ns();
        let maps = TypeMaps::shared();
        let n_stacks = hooks::STACKS.id_limit();
        let mut sites = Vec::with_capacity(n_stacks as usize);
        let mut no_debug_info = Vec::with_capacity(n_stacks as usize);
        for id in 0..n_stacks {
            let (spec, bare) = match hooks::STACKS.get(id) {
                Some((pcs, _)) => (
                    maps.site_spec(pcs),
                    !pcs.iter().any(|&pc| maps.has_debug_info(pc as usize)),
                ),
                None => (None, false),
            };
            sites.push(spec);
            no_debug_info.push(bare);
        }
        let allocator_metadata = maps.allocator_metadata(read);
        let typed_statics = maps
            .statics()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.ty.is_some() && s.len > 0)
            .map(|(i, _)| i as u32)
            .collect();
        TypedPrep {
            maps,
            sites,
            no_debug_info,
            allocator_metadata,
            typed_statics,
            prepare_ns: super::sys::now_ns().saturating_sub(t0),
        }
    }
}

/// How a block's type was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum TypeSource {
    /// Not reached yet.
    Unseen,
    /// Declared by the typed field of an owner that points to it.
    Declared,
    /// Its allocation site's type (no typed owner reached it first).
    Site,
    /// No type: scanned word by word.
    Untyped,
}

/// How a block was traced, for the coverage counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockTrace {
    /// Not read yet.
    Pending,
    /// By type, every word typed (pointer-free blocks: never read).
    Exact { pointer_free: bool },
    /// By type, some part read as candidate words.
    Partly(Fallback),
    /// Word by word: why.
    Conservative(Fallback),
}

/// Per-block results of the trace, indexed like the scan's blocks.
pub(crate) struct BlockTypes {
    pub(crate) types: MmapVec<Option<BlockType>>,
    pub(crate) source: MmapVec<TypeSource>,
    pub(crate) traced: MmapVec<BlockTrace>,
    /// Each block's current edges: `[start, end)` into the tracer's edges.
    range: MmapVec<(u32, u32)>,
    /// The block whose walk declared this block's type ([`NO_BLOCK`]: a
    /// static, or none).
    declarer: MmapVec<u32>,
    /// How many times this block's type changed after its first read.
    changes: MmapVec<u8>,
    /// In the tracer's queue (a block is queued at most once).
    queued: MmapVec<bool>,
}

/// "No block" in [`BlockTypes::declarer`].
const NO_BLOCK: u32 = u32::MAX;

/// In [`BlockTypes::declarer`]: the block that declared this one is being
/// read again with a new type; the next declaration, from any block, is
/// taken (see [`Tracer::read_block`]).
const ORPHAN: u32 = u32::MAX - 1;

/// A block whose type changed this many times is read word by word from
/// then on: declarations that keep contradicting each other (a cycle of
/// wrongly typed blocks retyping one another) end there, soundly.
const MAX_TYPE_CHANGES: u8 = 4;

/// Counts of the trace (see `format::Coverage`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TraceCounts {
    /// Blocks whose owner's declared type differed from their site's.
    pub(crate) disagreements: u64,
    /// Blocks walked again after a later declaration.
    pub(crate) rewalked: u64,
    /// Blocks declared by two owners as different types: the first
    /// declaration was kept.
    pub(crate) conflicts: u64,
    /// Typed statics walked.
    pub(crate) typed_statics: u64,
}

/// The heap as the tracer sees it: sorted blocks and address lookups (see
/// `scan::Heap`).
pub(crate) trait HeapLookup {
    fn blocks(&self) -> &[super::live::Block];
    /// Every node `addr` points into (any byte).
    fn find_any(&self, addr: usize, hit: impl FnMut(u32));
    /// Every node a candidate word `addr` refers to under the
    /// conservative scan's rule for heap words.
    fn find_candidate(&self, addr: usize, hit: impl FnMut(u32));
    /// Scans a block word by word (the conservative scan), `hit(offset,
    /// node)` per reference.
    fn scan_block(&self, node: u32, hit: impl FnMut(usize, u32));
    /// Scans bytes `[from, to)` of a readable block word by word under
    /// the conservative rule for heap words, `hit(offset in the block,
    /// node)` per reference.
    fn scan_words_of(&self, node: u32, from: usize, to: usize, hit: impl FnMut(usize, u32));
    /// Whether the block must not be read directly (a realloc stuck in
    /// the inner allocator): it is scanned conservatively, by copy.
    fn unsafe_to_read(&self, node: u32) -> bool;
    /// The word at `addr`.
    ///
    /// # Safety
    /// `addr` is 8-byte aligned and inside a live block or a static in a
    /// readable mapping.
    unsafe fn word(&self, addr: usize) -> usize;
}

/// The trace while the world is stopped. Never calls `malloc`.
pub(crate) struct Tracer<'a, H: HeapLookup> {
    prep: &'a TypedPrep,
    heap: &'a H,
    pub(crate) blocks: BlockTypes,
    edges: MmapVec<Edge>,
    queue: MmapVec<u32>,
    /// Declarations found by the walk in progress (kept to reuse its
    /// mapping).
    scratch: MmapVec<(u32, BlockType)>,
    /// The orphans of the block being read again (kept likewise).
    orphans: MmapVec<u32>,
    pub(crate) counts: TraceCounts,
    /// Scratch memory ran out: some edges are missing.
    pub(crate) incomplete: bool,
}

impl<'a, H: HeapLookup> Tracer<'a, H> {
    pub(crate) fn new(prep: &'a TypedPrep, heap: &'a H) -> Tracer<'a, H> {
        let n = heap.blocks().len();
        let mut blocks = BlockTypes {
            types: MmapVec::with_capacity(n),
            source: MmapVec::with_capacity(n),
            traced: MmapVec::with_capacity(n),
            range: MmapVec::with_capacity(n),
            declarer: MmapVec::with_capacity(n),
            changes: MmapVec::with_capacity(n),
            queued: MmapVec::with_capacity(n),
        };
        let mut ok = true;
        for _ in 0..n {
            ok &= blocks.types.push(None);
            ok &= blocks.source.push(TypeSource::Unseen);
            ok &= blocks.traced.push(BlockTrace::Pending);
            ok &= blocks.range.push((0, 0));
            ok &= blocks.declarer.push(NO_BLOCK);
            ok &= blocks.changes.push(0);
            ok &= blocks.queued.push(false);
        }
        Tracer {
            prep,
            heap,
            blocks,
            edges: MmapVec::with_capacity(n * 2 + 1024),
            queue: MmapVec::with_capacity(1024),
            scratch: MmapVec::with_capacity(1024),
            orphans: MmapVec::with_capacity(64),
            counts: TraceCounts::default(),
            incomplete: !ok,
        }
    }

    /// Walks the typed static `[start, start + len)` as a root: every
    /// pointer it holds is reported through `root`; exact ones type their
    /// targets.
    ///
    /// # Safety
    /// The range must lie inside a readable mapping for the whole call.
    pub(crate) unsafe fn static_root(
        &mut self,
        start: usize,
        len: usize,
        ty: BlockType,
        root: &mut dyn FnMut(u32, usize),
    ) {
        self.counts.typed_statics += 1;
        let maps = &*self.prep.maps;
        let heap = self.heap;
        let mut declared = std::mem::replace(&mut self.scratch, MmapVec::new());
        declared.clear();
        // SAFETY: the walker reads only aligned words overlapping the
        // static, which the caller guarantees is readable.
        let mem = |a: usize| unsafe { heap.word(a) };
        let mut incomplete = false;
        walk(maps, start, len, ty, &mem, &mut |p| {
            if p.kind.exact() {
                heap.find_any(p.target, |j| {
                    root(j, start + p.offset);
                    let b = &heap.blocks()[j as usize];
                    if let Some(bt) = p.pointee_for(maps, b.addr, b.size) {
                        incomplete |= !declared.push((j, bt));
                    }
                });
            } else {
                // Candidate words in static data: any byte of a block, as
                // the conservative scan reads static data.
                heap.find_any(p.target, |j| root(j, start + p.offset));
            }
        });
        self.incomplete |= incomplete;
        for &(j, bt) in declared.as_slice() {
            self.declare(j, bt, NO_BLOCK);
        }
        self.scratch = declared;
    }

    /// Traces everything reachable from the declared blocks, then every
    /// block left by its site's type or word by word, until every block
    /// has been read once (and again if a later declaration changed its
    /// type).
    pub(crate) fn trace_all(&mut self) {
        self.drain();
        for i in 0..self.heap.blocks().len() as u32 {
            if self.blocks.source.as_slice()[i as usize] != TypeSource::Unseen {
                continue;
            }
            let stack = self.heap.blocks()[i as usize].stack as usize;
            let size = self.heap.blocks()[i as usize].size as u64;
            let site = self
                .prep
                .sites
                .get(stack)
                .copied()
                .flatten()
                .and_then(|spec| self.prep.maps.site_block(&spec, size));
            let (source, bt) = match site {
                Some(bt) => (TypeSource::Site, Some(bt)),
                None => (TypeSource::Untyped, None),
            };
            self.blocks.source.as_mut_slice()[i as usize] = source;
            self.blocks.types.as_mut_slice()[i as usize] = bt;
            self.enqueue(i);
            self.drain();
        }
    }

    /// Gives block `j` the type its owner `from` declares (`NO_BLOCK`: a
    /// static). The first declaration wins over later ones from other
    /// owners (counted as conflicts when they differ); a block read by its
    /// site's type (or untyped) is read again with the declared one; and
    /// a block whose declarer is being read again with a new type (an
    /// orphan) takes the new declaration.
    fn declare(&mut self, j: u32, bt: BlockType, from: u32) {
        let i = j as usize;
        match self.blocks.source.as_slice()[i] {
            TypeSource::Declared => {
                let before = self.blocks.types.as_slice()[i];
                if before == Some(bt) {
                    if self.blocks.declarer.as_slice()[i] == ORPHAN {
                        self.blocks.declarer.as_mut_slice()[i] = from;
                    }
                    return;
                }
                let declarer = self.blocks.declarer.as_slice()[i];
                if from == NO_BLOCK || (declarer != from && declarer != ORPHAN) {
                    if before.is_some_and(|b| !self.same_type(b, bt)) {
                        self.counts.conflicts += 1;
                    }
                    return;
                }
                self.retype(j, Some(bt), TypeSource::Declared, from);
            }
            TypeSource::Unseen => {
                if self
                    .site_type(j)
                    .is_some_and(|site| !self.same_type(site, bt))
                {
                    self.counts.disagreements += 1;
                }
                self.blocks.source.as_mut_slice()[i] = TypeSource::Declared;
                self.blocks.types.as_mut_slice()[i] = Some(bt);
                self.blocks.declarer.as_mut_slice()[i] = from;
                self.enqueue(j);
            }
            TypeSource::Site | TypeSource::Untyped => {
                let before = self.blocks.types.as_slice()[i];
                if before.is_some_and(|site| !self.same_type(site, bt)) {
                    self.counts.disagreements += 1;
                }
                self.retype(j, Some(bt), TypeSource::Declared, from);
            }
        }
    }

    /// Sets block `j`'s type and where it came from, and queues it to be
    /// read (again) if its type changed. A block already read counts the
    /// change; past [`MAX_TYPE_CHANGES`] it is read word by word for good.
    fn retype(&mut self, j: u32, bt: Option<BlockType>, source: TypeSource, from: u32) {
        let i = j as usize;
        let before = self.blocks.types.as_slice()[i];
        self.blocks.source.as_mut_slice()[i] = source;
        self.blocks.declarer.as_mut_slice()[i] = from;
        if before == bt {
            return;
        }
        if self.blocks.traced.as_slice()[i] != BlockTrace::Pending {
            let changes = &mut self.blocks.changes.as_mut_slice()[i];
            if *changes >= MAX_TYPE_CHANGES {
                // Already read word by word for good.
                return;
            }
            *changes += 1;
            self.counts.rewalked += 1;
            if *changes == MAX_TYPE_CHANGES {
                self.blocks.types.as_mut_slice()[i] = None;
                self.enqueue(j);
                return;
            }
        }
        self.blocks.types.as_mut_slice()[i] = bt;
        self.enqueue(j);
    }

    /// Whether two block types name the same type (a type may have more
    /// than one id: units the deduplication could not join), or one is an
    /// array of the other (`Box<[T; n]>` made, `Box<[T]>` kept). Shapes
    /// may differ: a site knows a buffer's capacity, its owner its length.
    fn same_type(&self, a: BlockType, b: BlockType) -> bool {
        let maps = &self.prep.maps;
        let named = |x: TypeId, y: TypeId| x == y || maps.type_name(x) == maps.type_name(y);
        let elem = |t: TypeId| maps.array_elem(t).map_or(t, |(e, _)| e);
        named(a.ty, b.ty) || named(elem(a.ty), elem(b.ty))
    }

    fn site_type(&self, j: u32) -> Option<BlockType> {
        let b = &self.heap.blocks()[j as usize];
        let spec = self.prep.sites.get(b.stack as usize).copied().flatten()?;
        self.prep.maps.site_block(&spec, b.size as u64)
    }

    fn drain(&mut self) {
        while let Some(i) = self.pop() {
            self.read_block(i);
        }
    }

    fn enqueue(&mut self, j: u32) {
        let queued = &mut self.blocks.queued.as_mut_slice()[j as usize];
        if !*queued {
            *queued = true;
            self.incomplete |= !self.queue.push(j);
        }
    }

    fn pop(&mut self) -> Option<u32> {
        let n = self.queue.len();
        let top = *self.queue.as_slice().last()?;
        self.queue.truncate(n - 1);
        self.blocks.queued.as_mut_slice()[top as usize] = false;
        Some(top)
    }

    /// Before block `i` is read again with a new type: the blocks its
    /// earlier read declared become orphans, pushed on `orphans`. Its new
    /// read declares most of them again (usually with the same type:
    /// nothing changes); [`Tracer::settle_orphans`] then gives those it
    /// no longer declares their site's type (or none).
    fn orphan_children(&mut self, i: u32, orphans: &mut MmapVec<u32>) {
        let (start, end) = self.blocks.range.as_slice()[i as usize];
        for k in start..end {
            let e = self.edges.as_slice()[k as usize];
            let j = e.to as usize;
            if e.kind == EdgeKind::Exact
                && self.blocks.source.as_slice()[j] == TypeSource::Declared
                && self.blocks.declarer.as_slice()[j] == i
            {
                self.blocks.declarer.as_mut_slice()[j] = ORPHAN;
                self.incomplete |= !orphans.push(e.to);
            }
        }
    }

    /// Orphans no walk declared again fall back to their site's type.
    fn settle_orphans(&mut self, orphans: &MmapVec<u32>) {
        for &j in orphans.as_slice() {
            if self.blocks.declarer.as_slice()[j as usize] != ORPHAN {
                continue;
            }
            let site = self.site_type(j);
            let source = if site.is_some() {
                TypeSource::Site
            } else {
                TypeSource::Untyped
            };
            self.retype(j, site, source, NO_BLOCK);
        }
    }

    /// Reads block `i` with its current type (or word by word), replacing
    /// any edges an earlier read gave it.
    fn read_block(&mut self, i: u32) {
        let again = self.blocks.traced.as_slice()[i as usize] != BlockTrace::Pending;
        let mut orphans = std::mem::replace(&mut self.orphans, MmapVec::new());
        orphans.clear();
        if again {
            self.orphan_children(i, &mut orphans);
        }
        self.read_block_once(i);
        if again {
            self.settle_orphans(&orphans);
        }
        self.orphans = orphans;
    }

    fn read_block_once(&mut self, i: u32) {
        let from = self.edges.len() as u32;
        let bt = self.blocks.types.as_slice()[i as usize];
        let traced = match bt {
            Some(bt) if !self.heap.unsafe_to_read(i) => self.walk_block(i, bt),
            _ => {
                self.conservative(i);
                let changes = self.blocks.changes.as_slice()[i as usize];
                let why = if changes >= MAX_TYPE_CHANGES {
                    Fallback::Contradicted
                } else if self.blocks.source.as_slice()[i as usize] == TypeSource::Untyped
                    && self
                        .prep
                        .no_debug_info
                        .get(self.heap.blocks()[i as usize].stack as usize)
                        .copied()
                        .unwrap_or(false)
                {
                    Fallback::NoDebugInfo
                } else {
                    Fallback::UnknownType
                };
                BlockTrace::Conservative(why)
            }
        };
        self.blocks.traced.as_mut_slice()[i as usize] = traced;
        self.blocks.range.as_mut_slice()[i as usize] = (from, self.edges.len() as u32);
    }

    fn walk_block(&mut self, i: u32, bt: BlockType) -> BlockTrace {
        let maps = &*self.prep.maps;
        if maps.pointer_free(bt.ty) && bt.bytes(maps).is_some_and(|n| n <= self.size(i)) {
            return BlockTrace::Exact { pointer_free: true };
        }
        if let Some(words) = self.address_words(bt, i) {
            return self.candidate_words(i, words);
        }
        let heap = self.heap;
        let b = heap.blocks()[i as usize];
        let mut declared = std::mem::replace(&mut self.scratch, MmapVec::new());
        declared.clear();
        let mut incomplete = false;
        let edges = &mut self.edges;
        // SAFETY: the block is live and readable (the caller checked it is
        // not a realloc's stuck copy); the walker reads only aligned words
        // overlapping it.
        let mem = |a: usize| unsafe { heap.word(a) };
        let traced = walk(maps, b.addr, b.size, bt, &mem, &mut |p| {
            let offset = p.offset.min(u32::MAX as usize) as u32;
            if p.kind.exact() {
                heap.find_any(p.target, |j| {
                    incomplete |= !edges.push(Edge {
                        from: i,
                        to: j,
                        offset,
                        slot: p.slot.0,
                        kind: EdgeKind::Exact,
                    });
                    let t = &heap.blocks()[j as usize];
                    if let Some(pt) = p.pointee_for(maps, t.addr, t.size) {
                        incomplete |= !declared.push((j, pt));
                    }
                });
            } else {
                heap.find_candidate(p.target, |j| {
                    incomplete |= !edges.push(Edge {
                        from: i,
                        to: j,
                        offset,
                        slot: p.slot.0,
                        kind: EdgeKind::Candidate,
                    });
                });
            }
        });
        self.incomplete |= incomplete;
        match traced {
            // The type does not fit the block (the walk reported nothing):
            // read it word by word.
            Traced::Mismatch => {
                self.scratch = declared;
                self.conservative(i);
                BlockTrace::Conservative(Fallback::UnknownType)
            }
            Traced::Exact | Traced::Partly(_) => {
                for &(j, pt) in declared.as_slice() {
                    self.declare(j, pt, i);
                }
                self.scratch = declared;
                match traced {
                    Traced::Partly(why) => BlockTrace::Partly(why),
                    _ => BlockTrace::Exact {
                        pointer_free: false,
                    },
                }
            }
        }
    }

    /// The byte range of a block of address-wide integers (`Box<[u64]>`,
    /// a `Vec<usize>`'s elements) that holds values: every word of it is
    /// a candidate the walk would report one by one; read in one loop.
    fn address_words(&self, bt: BlockType, i: u32) -> Option<(usize, usize)> {
        if !self.prep.maps.is_address_word(bt.ty) {
            return None;
        }
        let (first, len) = match bt.shape {
            Shape::One => (0, 1),
            Shape::Elements { first, len } => (first, len),
            _ => return None,
        };
        let end = first.checked_add(len)?.checked_mul(8)?;
        (end <= self.size(i)).then_some((first as usize * 8, end as usize))
    }

    /// Reads `[from, to)` of block `i` as candidate words.
    fn candidate_words(&mut self, i: u32, (from, to): (usize, usize)) -> BlockTrace {
        let edges = &mut self.edges;
        let mut incomplete = false;
        self.heap.scan_words_of(i, from, to, |off, j| {
            incomplete |= !edges.push(Edge {
                from: i,
                to: j,
                offset: off.min(u32::MAX as usize) as u32,
                slot: SlotId::NONE.0,
                kind: EdgeKind::Candidate,
            });
        });
        self.incomplete |= incomplete;
        BlockTrace::Exact {
            pointer_free: false,
        }
    }

    fn size(&self, i: u32) -> u64 {
        self.heap.blocks()[i as usize].size as u64
    }

    /// The conservative scan of one block, as without types.
    fn conservative(&mut self, i: u32) {
        let edges = &mut self.edges;
        let mut incomplete = false;
        self.heap.scan_block(i, |off, j| {
            incomplete |= !edges.push(Edge {
                from: i,
                to: j,
                offset: off.min(u32::MAX as usize) as u32,
                slot: u32::MAX,
                kind: EdgeKind::Candidate,
            });
        });
        self.incomplete |= incomplete;
    }

    /// Every block's current edges, grouped by block in node order (the
    /// ranges a re-read replaced are left out). `scan` sorts them by
    /// offset within each block once the world runs again.
    pub(crate) fn finish(self) -> (MmapVec<Edge>, BlockTypes, TraceCounts, bool) {
        let mut out: MmapVec<Edge> = MmapVec::with_capacity(self.edges.len());
        let mut incomplete = self.incomplete;
        for &(start, end) in self.blocks.range.as_slice() {
            for e in &self.edges.as_slice()[start as usize..end as usize] {
                incomplete |= !out.push(*e);
            }
        }

        (out, self.blocks, self.counts, incomplete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::live::Block;
    use crate::record::types::SITE_RULES;

    // Fixed layouts, so that both readings of the buffer see a pointer in
    // its first word.
    #[repr(C)]
    struct Item {
        leaf: Box<Leaf>,
        n: u64,
    }
    #[repr(C)]
    struct Decoy {
        bytes: Box<[u8; 16]>,
        n: u64,
    }
    #[repr(C)]
    struct Leaf {
        next: Box<u64>,
        n: u64,
    }
    struct Holder {
        items: Vec<Item>,
    }

    /// The blocks in the order given (the tracer seeds unseen blocks in
    /// index order), looked up by address.
    struct FakeHeap {
        blocks: Vec<Block>,
    }

    impl FakeHeap {
        fn find(&self, addr: usize, mut hit: impl FnMut(u32)) {
            for (k, b) in self.blocks.iter().enumerate() {
                if b.addr <= addr && addr < b.addr + b.size {
                    hit(k as u32);
                }
            }
        }
    }

    impl HeapLookup for FakeHeap {
        fn blocks(&self) -> &[Block] {
            &self.blocks
        }
        fn find_any(&self, addr: usize, hit: impl FnMut(u32)) {
            self.find(addr, hit)
        }
        fn find_candidate(&self, addr: usize, hit: impl FnMut(u32)) {
            self.find(addr, hit)
        }
        fn scan_block(&self, node: u32, hit: impl FnMut(usize, u32)) {
            let b = self.blocks[node as usize];
            self.scan_words_of(node, 0, b.size, hit);
        }
        fn scan_words_of(
            &self,
            node: u32,
            from: usize,
            to: usize,
            mut hit: impl FnMut(usize, u32),
        ) {
            let b = self.blocks[node as usize];
            for o in (from..to.min(b.size)).step_by(8) {
                // SAFETY: inside a live block of this test.
                let w = unsafe { self.word(b.addr + o) };
                self.find(w, |j| hit(o, j));
            }
        }
        fn unsafe_to_read(&self, _: u32) -> bool {
            false
        }
        unsafe fn word(&self, addr: usize) -> usize {
            // SAFETY: the caller's guarantee (an aligned word of a block).
            unsafe { *(addr as *const usize) }
        }
    }

    fn rule(prefix: &str) -> usize {
        SITE_RULES
            .iter()
            .position(|r| r.function == prefix)
            .unwrap()
    }

    /// A buffer first read by a wrong site type (merged generic code named
    /// `Decoy` for what is an `Item`) declares its pointee as pointer-free
    /// bytes; its owner then declares it `Item`s. The pointee must be read
    /// again as the `Leaf` it is, so the `u64` the leaf points to keeps its
    /// edge (with the first declaration kept, it was unreachable).
    #[test]
    fn a_block_read_again_redeclares_what_it_declared() {
        let maps = TypeMaps::shared();
        let named = |n: &str| {
            maps.type_named(n)
                .unwrap_or_else(|| panic!("no DWARF type {n}"))
        };
        let item = named("leakprof::record::trace::tests::Item");
        let decoy = named("leakprof::record::trace::tests::Decoy");
        let holder_type = named("leakprof::record::trace::tests::Holder");
        let holder = Box::new(Holder {
            items: vec![Item {
                leaf: Box::new(Leaf {
                    next: Box::new(7),
                    n: 1,
                }),
                n: 2,
            }],
        });
        let _unused = Decoy {
            bytes: Box::new([0; 16]),
            n: 0,
        };
        let at = |p: *const u8| p as usize;
        let buffer = at(holder.items.as_ptr().cast());
        let leaf = at((&*holder.items[0].leaf as *const Leaf).cast());
        let target = at((&*holder.items[0].leaf.next as *const u64).cast());
        // Stack 0: the buffer's site, typed `Decoy` (wrongly); stack 1:
        // the holder's box, typed right; stack 2: no type.
        let prep = TypedPrep {
            maps: Arc::clone(&maps),
            sites: vec![
                Some(SiteSpec::for_test(rule("alloc::raw_vec::RawVec::"), decoy)),
                Some(SiteSpec::for_test(rule("alloc::boxed::Box::"), holder_type)),
                None,
            ],
            no_debug_info: vec![false; 3],
            allocator_metadata: Vec::new(),
            typed_statics: Vec::new(),
            prepare_ns: 0,
        };
        let heap = FakeHeap {
            blocks: vec![
                Block::new(buffer, std::mem::size_of::<Item>(), 0, 0, 0),
                Block::new(
                    at((&*holder as *const Holder).cast()),
                    std::mem::size_of::<Holder>(),
                    1,
                    0,
                    0,
                ),
                Block::new(leaf, std::mem::size_of::<Leaf>(), 2, 0, 0),
                Block::new(target, 8, 2, 0, 0),
            ],
        };
        let mut tracer = Tracer::new(&prep, &heap);
        tracer.trace_all();
        let (edges, blocks, _, incomplete) = tracer.finish();
        assert!(!incomplete);
        let has = |from: u32, to: u32| {
            edges
                .as_slice()
                .iter()
                .any(|e| e.from == from && e.to == to && e.kind == EdgeKind::Exact)
        };
        let name = |k: usize| blocks.types.as_slice()[k].map(|t| maps.type_name(t.ty).to_string());
        // A type may have several ids (units deduplication could not
        // join): compare names.
        assert_eq!(name(0).as_deref(), Some(maps.type_name(item)));
        assert!(has(1, 0), "holder -> buffer");
        assert!(has(0, 2), "buffer -> leaf");
        assert_eq!(
            name(2).as_deref(),
            Some("leakprof::record::trace::tests::Leaf")
        );
        assert!(has(2, 3), "leaf -> u64: the edge a stale declaration drops");
    }
}
