//! The planted facts. Each case builds values whose truth it knows (the
//! addresses of the real boxes and buffers, and which were leaked), traces
//! from a typed static as the scan will, and compares what it reached with
//! the truth: no missing edge, no false one. Where a stale word is the
//! point, the case also checks the word is really there (so a conservative
//! reading would have failed it).

// The cases are about boxes held in vectors.
#![allow(clippy::vec_box)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicPtr, AtomicUsize};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use leakprof::record::types::{BlockType, Fallback, PointerKind, Shape, Traced, TypeMaps};

use super::trace::{read, trace, Graph};
use super::tracker;

pub type Case = fn(&TypeMaps) -> Result<(), String>;

/// Each case by its function's name.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), $case as Case)),*]
    };
}

pub const ALL: &[(&str, Case)] = cases![
    option_none_in_niche_is_not_an_edge,
    vec_slots_past_len_are_not_edges,
    enum_follows_only_the_active_variant,
    hash_table_tombstones_are_not_edges,
    in_place_collect_owner_type_wins_over_site,
    tagged_pointers_in_words_are_candidates,
    arc_str_and_arc_slice_are_typed_by_length,
    once_lock_value_read_only_when_complete,
    lazy_lock_reads_value_once_forced,
    arc_inner_with_strong_zero_keeps_no_data,
    box_dyn_typed_by_vtable_and_site,
    vec_deque_ring_after_wrap,
    btree_map_nodes_to_len,
    mpsc_channel_holds_only_unread_messages,
    into_iter_holds_only_remaining,
    small_vec_inline_and_spilled_to_len,
    tokio_channel_slots_are_sound_candidates,
    edges_carry_field_paths,
    statics_are_named_and_typed,
    glibc_main_arena_is_allocator_metadata,
    arc_new_in_a_closure_is_typed_by_its_site,
    compressed_debug_sections_give_the_same_types,
    merged_generic_code_is_typed_by_its_caller,
];

fn addr<T: ?Sized>(r: &T) -> usize {
    r as *const T as *const u8 as usize
}

/// The typed root a static gives: (start, len, its type).
fn root<T>(maps: &TypeMaps, value: &T, name: &str) -> Result<(usize, usize, BlockType), String> {
    let at = addr(value);
    let s = maps
        .static_at(at)
        .ok_or_else(|| format!("no static found at {at:#x} ({name})"))?;
    let label = maps.static_label(s);
    if !label.ends_with(&format!("!{name}")) || s.start != at {
        return Err(format!(
            "static at {at:#x} is {label} at {:#x}, expected {name}",
            s.start
        ));
    }
    let ty = s.ty.ok_or_else(|| format!("{label} has no DWARF type"))?;
    Ok((s.start, s.len, BlockType::one(ty)))
}

fn trace_static<T>(maps: &TypeMaps, value: &T, name: &str) -> Result<Graph, String> {
    let (s, l, bt) = root(maps, value, name)?;
    Ok(trace(maps, s, l, bt))
}

fn block(p: usize) -> Result<usize, String> {
    tracker::block_containing(p)
        .map(|(s, _)| s)
        .ok_or_else(|| format!("{p:#x} is in no tracked block"))
}

/// The trace reached exactly `want`, every block exactly typed.
fn expect(maps: &TypeMaps, g: &Graph, want: &BTreeSet<usize>, what: &str) -> Result<(), String> {
    let got = g.reached();
    if &got != want {
        let missing: Vec<_> = want.difference(&got).map(|a| format!("{a:#x}")).collect();
        let extra: Vec<String> = got
            .difference(want)
            .map(|a| {
                let via: Vec<_> = g.paths_to(*a);
                format!("{a:#x} via {via:?}")
            })
            .collect();
        return Err(format!(
            "{what}: reached {} blocks, expected {}; missing (false unreachable) {missing:?}; extra (false edges) {extra:?}",
            got.len(),
            want.len()
        ));
    }
    if let Some((at, why)) = g.fallbacks.first() {
        let ty = g
            .blocks
            .get(at)
            .copied()
            .flatten()
            .map(|b| maps.type_name(b.ty).to_string());
        return Err(format!(
            "{what}: block {at:#x} ({ty:?}) not traced exactly: {why:?}"
        ));
    }
    Ok(())
}

/// `addrs` are still written somewhere in `[start, start + len)`: the
/// stale words the case is about really exist.
fn stale_present(start: usize, len: usize, addrs: &[usize], what: &str) -> Result<(), String> {
    let words: BTreeSet<usize> = (0..len / 8).map(|i| read(start + 8 * i)).collect();
    if addrs.iter().any(|a| words.contains(a)) {
        Ok(())
    } else {
        Err(format!(
            "{what}: no stale word left to test (the case proves nothing)"
        ))
    }
}

fn set(items: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
    items.into_iter().collect()
}

/// A tracked block's allocation stack (return addresses, innermost
/// first) and size.
fn allocation_stack(block: usize) -> Result<(Vec<u64>, u64), String> {
    let e = tracker::entry(block).ok_or("block not tracked")?;
    let pcs = e
        .frames
        .iter()
        .take_while(|&&f| f != 0)
        .map(|&f| f as u64)
        .collect();
    Ok((pcs, e.size as u64))
}

fn site_type_name(maps: &TypeMaps, block: usize) -> Result<(String, Shape), String> {
    let (pcs, size) = allocation_stack(block)?;
    let s = maps.site_type(&pcs, size).ok_or_else(|| {
        let frames: Vec<Vec<String>> = pcs.iter().map(|&pc| maps.site_frames(pc)).collect();
        format!("no site type for the {size}-byte block at {block:#x}; frames {frames:#?}")
    })?;
    Ok((maps.type_name(s.block.ty).to_string(), s.block.shape))
}

// ---------------------------------------------------------------------

#[allow(dead_code)]
struct A {
    x: u64,
    y: u64,
}
#[allow(dead_code)]
struct B {
    z: [u32; 3],
}
static NICHE: Mutex<Option<(Box<A>, Box<B>)>> = Mutex::new(None);

fn option_none_in_niche_is_not_an_edge(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let a = Box::new(A { x: 1, y: 2 });
    let b = Box::new(B { z: [1, 2, 3] });
    let (pa, pb) = (addr(&*a), addr(&*b));
    *NICHE.lock().unwrap() = Some((a, b));
    tracker::end();
    let g = trace_static(maps, &NICHE, "types::cases::NICHE")?;
    expect(maps, &g, &set([pa, pb]), "Some((a, b))")?;
    let taken = NICHE.lock().unwrap().take();
    std::mem::forget(taken);
    let g = trace_static(maps, &NICHE, "types::cases::NICHE")?;
    expect(maps, &g, &set([]), "None after take")?;
    stale_present(
        addr(&NICHE),
        std::mem::size_of_val(&NICHE),
        &[pa, pb],
        "NICHE",
    )
}

static VEC: Mutex<Vec<Box<u64>>> = Mutex::new(Vec::new());

fn vec_slots_past_len_are_not_edges(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let mut v = Vec::with_capacity(8);
    for i in 0..8u64 {
        v.push(Box::new(i));
    }
    tracker::end();
    let buf = v.as_ptr() as usize;
    let boxes: Vec<usize> = v.iter().map(|b| addr(&**b)).collect();
    *VEC.lock().unwrap() = v;
    for _ in 0..3 {
        std::mem::forget(VEC.lock().unwrap().pop());
    }
    let g = trace_static(maps, &VEC, "types::cases::VEC")?;
    expect(
        maps,
        &g,
        &set(std::iter::once(buf).chain(boxes[..5].iter().copied())),
        "Vec after 3 pops",
    )?;
    stale_present(buf, 64, &boxes[5..], "Vec buffer")
}

#[allow(dead_code)]
enum Planted {
    Unit,
    Boxed(Box<u64>),
    Pair { a: Box<u32>, b: Vec<u8> },
    Job(Box<dyn Fn() -> usize + Send>),
    Small(u8),
    Text(String),
}
static ENUMS: Mutex<Vec<Planted>> = Mutex::new(Vec::new());
type Infallible = Result<Box<u64>, std::convert::Infallible>;
static INFALLIBLE: Mutex<Option<Infallible>> = Mutex::new(None);

fn enum_follows_only_the_active_variant(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let b1 = Box::new(1u64);
    let a = Box::new(2u32);
    let bytes = vec![1u8, 2, 3];
    let captured = Box::new(40u64);
    let (p1, pa, pbytes, pcap) = (
        addr(&*b1),
        addr(&*a),
        bytes.as_ptr() as usize,
        addr(&*captured),
    );
    let job: Box<dyn Fn() -> usize + Send> = Box::new(move || *captured as usize);
    let pjob = addr(&*job);
    let text = String::from("text held by an enum");
    let ptext = text.as_ptr() as usize;
    let b2 = Box::new(2u64);
    let p2 = addr(&*b2);
    let v = vec![
        Planted::Boxed(b1),
        Planted::Pair { a, b: bytes },
        Planted::Job(job),
        Planted::Small(3),
        Planted::Text(text),
        Planted::Unit,
        Planted::Boxed(b2),
    ];
    tracker::end();
    let buf = v.as_ptr() as usize;
    *ENUMS.lock().unwrap() = v;
    // The last element becomes `Unit`: only the tag changes, the payload
    // word stays.
    let old = std::mem::replace(&mut ENUMS.lock().unwrap()[6], Planted::Unit);
    std::mem::forget(old);
    let g = trace_static(maps, &ENUMS, "types::cases::ENUMS")?;
    expect(
        maps,
        &g,
        &set([buf, p1, pa, pbytes, pjob, pcap, ptext]),
        "Vec<Planted>",
    )?;
    // rustc writes no discriminant for an enum whose other variants are
    // uninhabited: the inhabited one is read exactly.
    tracker::begin();
    let ok = Box::new(5u64);
    tracker::end();
    let pok = addr(&*ok);
    *INFALLIBLE.lock().unwrap() = Some(Ok(ok));
    let g = trace_static(maps, &INFALLIBLE, "types::cases::INFALLIBLE")?;
    expect(maps, &g, &set([pok]), "Result<Box<u64>, Infallible>")?;
    stale_present(
        buf,
        std::mem::size_of::<Planted>() * 7,
        &[p2],
        "Planted::Unit payload",
    )
}

static MAP: Mutex<Option<HashMap<u64, Box<u64>>>> = Mutex::new(None);

fn hash_table_tombstones_are_not_edges(maps: &TypeMaps) -> Result<(), String> {
    let w = tracker::begin();
    let mut m = HashMap::with_capacity(32);
    for k in 0..20u64 {
        m.insert(k, Box::new(k * 100));
    }
    tracker::end();
    *MAP.lock().unwrap() = Some(m);
    let mut removed = Vec::new();
    for k in 0..10u64 {
        let b = MAP.lock().unwrap().as_mut().unwrap().remove(&k).unwrap();
        removed.push(addr(&*b));
        std::mem::forget(b);
    }
    let want: BTreeSet<usize> = tracker::live_in(w)
        .into_iter()
        .filter(|a| !removed.contains(a))
        .collect();
    let g = trace_static(maps, &MAP, "types::cases::MAP")?;
    expect(maps, &g, &want, "HashMap after 10 removes")?;
    let table = *want
        .iter()
        .find(|&&b| tracker::entry(b).is_some_and(|e| e.size > 64))
        .ok_or("no table block")?;
    let size = tracker::entry(table).map_or(0, |e| e.size);
    stale_present(table, size, &removed, "table buckets")?;
    let (name, shape) = site_type_name(maps, table)?;
    if name != "(u64, alloc::boxed::Box<u64, alloc::alloc::Global>)"
        || !matches!(shape, Shape::HashTable { buckets: 64 })
    {
        return Err(format!("site of the table: {name} {shape:?}"));
    }
    Ok(())
}

static COLLECTED: Mutex<Vec<Box<u64>>> = Mutex::new(Vec::new());

fn in_place_collect_owner_type_wins_over_site(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let src: Vec<(u64, u64)> = (0..16u64).map(|i| (i, i * 2)).collect();
    let buf = src.as_ptr() as usize;
    let dst: Vec<Box<u64>> = src.into_iter().map(|(a, _)| Box::new(a)).collect();
    tracker::end();
    if dst.as_ptr() as usize != buf {
        return Err("collect did not reuse the buffer in place".into());
    }
    let boxes: Vec<usize> = dst.iter().map(|b| addr(&**b)).collect();
    *COLLECTED.lock().unwrap() = dst;
    let g = trace_static(maps, &COLLECTED, "types::cases::COLLECTED")?;
    expect(
        maps,
        &g,
        &set(std::iter::once(buf).chain(boxes)),
        "in-place collected Vec<Box<u64>>",
    )?;
    let owner = g
        .blocks
        .get(&buf)
        .copied()
        .flatten()
        .ok_or("buffer untyped")?;
    let (site, _) = site_type_name(maps, buf)?;
    if maps.type_name(owner.ty) != "alloc::boxed::Box<u64, alloc::alloc::Global>"
        || site != "(u64, u64)"
    {
        return Err(format!(
            "owner says {}, site says {site}: expected a disagreement",
            maps.type_name(owner.ty)
        ));
    }
    Ok(())
}

#[allow(dead_code)]
struct Tagged {
    word: usize,
    atomic: AtomicUsize,
    ptr: AtomicPtr<u64>,
}
static TAGGED: Mutex<Option<Tagged>> = Mutex::new(None);

fn tagged_pointers_in_words_are_candidates(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let (a, b, c) = (Box::new(1u64), Box::new(2u64), Box::new(3u64));
    tracker::end();
    let (pa, pb, pc) = (addr(&*a), addr(&*b), addr(&*c));
    *TAGGED.lock().unwrap() = Some(Tagged {
        word: Box::into_raw(a) as usize | 1,
        atomic: AtomicUsize::new(Box::into_raw(b) as usize | 3),
        ptr: AtomicPtr::new((Box::into_raw(c) as usize | 4) as *mut u64),
    });
    let g = trace_static(maps, &TAGGED, "types::cases::TAGGED")?;
    expect(maps, &g, &set([pa, pb, pc]), "tagged words")?;
    let kinds: BTreeMap<usize, PointerKind> = g.edges.iter().map(|e| (e.2, e.3)).collect();
    if kinds.get(&pa) != Some(&PointerKind::Word)
        || kinds.get(&pb) != Some(&PointerKind::Word)
        || kinds.get(&pc) != Some(&PointerKind::Raw)
    {
        return Err(format!(
            "edge kinds {kinds:x?}: usize/atomic must be Word candidates, AtomicPtr Raw"
        ));
    }
    Ok(())
}

type ArcPair = (Arc<str>, Arc<[Box<u64>]>);
static ARCS: Mutex<Option<ArcPair>> = Mutex::new(None);

fn arc_str_and_arc_slice_are_typed_by_length(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let s: Arc<str> = Arc::from("a string that lives in an ArcInner<str>");
    let boxes = vec![Box::new(1u64), Box::new(2u64), Box::new(3u64)];
    let pboxes: Vec<usize> = boxes.iter().map(|b| addr(&**b)).collect();
    let sl: Arc<[Box<u64>]> = Arc::from(boxes);
    tracker::end();
    let (ps, psl) = (
        block(Arc::as_ptr(&s) as *const u8 as usize)?,
        block(Arc::as_ptr(&sl) as *const u8 as usize)?,
    );
    *ARCS.lock().unwrap() = Some((s, sl));
    let g = trace_static(maps, &ARCS, "types::cases::ARCS")?;
    expect(
        maps,
        &g,
        &set([ps, psl].into_iter().chain(pboxes)),
        "Arc<str>, Arc<[Box<u64>]>",
    )?;
    match g.blocks.get(&ps).copied().flatten() {
        Some(BlockType {
            shape: Shape::Tail { len: 39 },
            ..
        }) => Ok(()),
        other => Err(format!(
            "ArcInner<str> typed {other:?}, expected a tail of 39 bytes"
        )),
    }
}

static ONCE_SET: OnceLock<Box<u64>> = OnceLock::new();
static ONCE_UNSET: OnceLock<Box<u64>> = OnceLock::new();

fn once_lock_value_read_only_when_complete(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let b = Box::new(7u64);
    let stale = Box::new(8u64);
    tracker::end();
    let (pb, ps) = (addr(&*b), addr(&*stale));
    let _ = ONCE_SET.set(b);
    std::mem::forget(stale);
    // Plant the address in the unset cell's value bytes (inside its
    // UnsafeCell): as if a value had been written and never published.
    let (_, _, bt) = root(maps, &ONCE_UNSET, "types::cases::ONCE_UNSET")?;
    let (value, _) = maps
        .field(bt.ty, "value")
        .ok_or("OnceLock has no `value`")?;
    // SAFETY: writes the `value` bytes of the cell, an UnsafeCell; the cell
    // stays incomplete so nothing reads them as a Box.
    unsafe { ((addr(&ONCE_UNSET) + value as usize) as *mut usize).write_volatile(ps) };
    let g = trace_static(maps, &ONCE_SET, "types::cases::ONCE_SET")?;
    expect(maps, &g, &set([pb]), "OnceLock set")?;
    let g = trace_static(maps, &ONCE_UNSET, "types::cases::ONCE_UNSET")?;
    expect(maps, &g, &set([]), "OnceLock unset")?;
    stale_present(addr(&ONCE_UNSET), 16, &[ps], "ONCE_UNSET")
}

// std's `LazyLock` (1.80) is what the case reads; the library itself keeps
// to the crate's rust-version.
#[allow(clippy::incompatible_msrv)]
static LAZY: LazyLock<Box<u64>> = LazyLock::new(|| Box::new(9));

#[allow(clippy::incompatible_msrv)]
fn lazy_lock_reads_value_once_forced(maps: &TypeMaps) -> Result<(), String> {
    let g = trace_static(maps, &LAZY, "types::cases::LAZY")?;
    expect(maps, &g, &set([]), "LazyLock before forcing")?;
    tracker::begin();
    let p = addr(&**LazyLock::force(&LAZY));
    tracker::end();
    let g = trace_static(maps, &LAZY, "types::cases::LAZY")?;
    expect(maps, &g, &set([p]), "LazyLock forced")
}

#[allow(dead_code)]
struct Inner {
    keep: ManuallyDrop<Box<u64>>,
    n: u64,
}
/// A `Weak` and, while it lives, the last strong `Arc`.
type WeakAndStrong = (Weak<Inner>, Option<Arc<Inner>>);
static WEAK: Mutex<Option<WeakAndStrong>> = Mutex::new(None);

fn arc_inner_with_strong_zero_keeps_no_data(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let b = Box::new(5u64);
    let pb = addr(&*b);
    let arc = Arc::new(Inner {
        keep: ManuallyDrop::new(b),
        n: 1,
    });
    tracker::end();
    let inner = block(Arc::as_ptr(&arc) as usize)?;
    *WEAK.lock().unwrap() = Some((Arc::downgrade(&arc), Some(arc)));
    let g = trace_static(maps, &WEAK, "types::cases::WEAK")?;
    expect(maps, &g, &set([inner, pb]), "Arc alive")?;
    // Drop the last strong reference: `Inner` is dropped (its box, kept in
    // a ManuallyDrop, leaks), the allocation stays for the Weak.
    WEAK.lock().unwrap().as_mut().unwrap().1 = None;
    let g = trace_static(maps, &WEAK, "types::cases::WEAK")?;
    expect(maps, &g, &set([inner]), "only a Weak left")?;
    stale_present(inner, 32, &[pb], "ArcInner data")?;
    let (site, _) = site_type_name(maps, inner)?;
    if site != "alloc::sync::ArcInner<types::cases::Inner>" {
        return Err(format!("site of the ArcInner: {site}"));
    }
    Ok(())
}

trait Job: Send {
    fn run(&self) -> usize;
}
struct Impl {
    data: Box<u64>,
    more: Vec<Box<u32>>,
}
impl Job for Impl {
    fn run(&self) -> usize {
        *self.data as usize + self.more.len()
    }
}
static DYN: Mutex<Option<Box<dyn Job>>> = Mutex::new(None);

fn box_dyn_typed_by_vtable_and_site(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let data = Box::new(11u64);
    let more = vec![Box::new(1u32), Box::new(2u32)];
    let mut want = vec![addr(&*data), more.as_ptr() as usize];
    want.extend(more.iter().map(|b| addr(&**b)));
    let job: Box<dyn Job> = Box::new(Impl { data, more });
    tracker::end();
    let pjob = addr(&*job);
    want.push(pjob);
    if job.run() != 13 {
        return Err("job".into());
    }
    *DYN.lock().unwrap() = Some(job);
    let g = trace_static(maps, &DYN, "types::cases::DYN")?;
    expect(maps, &g, &set(want), "Box<dyn Job>")?;
    let (site, _) = site_type_name(maps, pjob)?;
    if site != "types::cases::Impl" {
        return Err(format!("site of the Box<dyn Job>: {site}"));
    }
    Ok(())
}

static DEQUE: Mutex<VecDeque<Box<u64>>> = Mutex::new(VecDeque::new());

fn vec_deque_ring_after_wrap(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let mut d: VecDeque<Box<u64>> = VecDeque::with_capacity(8);
    let cap = d.capacity();
    for i in 0..6u64 {
        d.push_back(Box::new(i));
    }
    let mut popped = Vec::new();
    for _ in 0..4 {
        let b = d.pop_front().unwrap();
        popped.push(addr(&*b));
        std::mem::forget(b);
    }
    for i in 0..(cap as u64 - 3) {
        d.push_back(Box::new(100 + i));
    }
    tracker::end();
    let (front, back) = d.as_slices();
    if back.is_empty() {
        return Err("the ring did not wrap".into());
    }
    let buf = block(front.as_ptr() as usize)?;
    let mut want: Vec<usize> = d.iter().map(|b| addr(&**b)).collect();
    want.push(buf);
    *DEQUE.lock().unwrap() = d;
    let g = trace_static(maps, &DEQUE, "types::cases::DEQUE")?;
    expect(maps, &g, &set(want), "wrapped VecDeque")?;
    stale_present(buf, cap * 8, &popped, "ring buffer")
}

static TREE: Mutex<BTreeMap<u64, Box<u64>>> = Mutex::new(BTreeMap::new());

fn btree_map_nodes_to_len(maps: &TypeMaps) -> Result<(), String> {
    let w = tracker::begin();
    let mut t = BTreeMap::new();
    for k in 0..100u64 {
        t.insert(k, Box::new(k));
    }
    tracker::end();
    *TREE.lock().unwrap() = t;
    let mut removed = Vec::new();
    for k in (0..100u64).step_by(3) {
        let b = TREE.lock().unwrap().remove(&k).unwrap();
        removed.push(addr(&*b));
        std::mem::forget(b);
    }
    let want: BTreeSet<usize> = tracker::live_in(w)
        .into_iter()
        .filter(|a| !removed.contains(a))
        .collect();
    let g = trace_static(maps, &TREE, "types::cases::TREE")?;
    expect(maps, &g, &want, "BTreeMap after removes")?;
    let heights: BTreeSet<u64> = g
        .blocks
        .values()
        .filter_map(|b| match b {
            Some(BlockType {
                shape: Shape::BTreeNode { height },
                ..
            }) => Some(*height),
            _ => None,
        })
        .collect();
    if heights.len() < 2 {
        return Err(format!(
            "expected leaves and internal nodes, got heights {heights:?}"
        ));
    }
    Ok(())
}

type Channel = (Sender<Box<u64>>, Receiver<Box<u64>>);
static CHAN: Mutex<Option<Channel>> = Mutex::new(None);

fn mpsc_channel_holds_only_unread_messages(maps: &TypeMaps) -> Result<(), String> {
    let w = tracker::begin();
    let (tx, rx) = std::sync::mpsc::channel::<Box<u64>>();
    for i in 0..40u64 {
        tx.send(Box::new(i)).unwrap();
    }
    tracker::end();
    let mut read_out = Vec::new();
    for _ in 0..10 {
        let b = rx.recv().unwrap();
        read_out.push(addr(&*b));
        std::mem::forget(b);
    }
    *CHAN.lock().unwrap() = Some((tx, rx));
    let want: BTreeSet<usize> = tracker::live_in(w)
        .into_iter()
        .filter(|a| !read_out.contains(a))
        .collect();
    if want.len() < 32 {
        return Err(format!("only {} live blocks in the channel", want.len()));
    }
    let g = trace_static(maps, &CHAN, "types::cases::CHAN")?;
    expect(maps, &g, &want, "channel after 10 receives")
}

static ITER: Mutex<Option<std::vec::IntoIter<Box<u64>>>> = Mutex::new(None);

fn into_iter_holds_only_remaining(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let v: Vec<Box<u64>> = (0..10u64).map(Box::new).collect();
    tracker::end();
    let buf = v.as_ptr() as usize;
    let all: Vec<usize> = v.iter().map(|b| addr(&**b)).collect();
    let mut it = v.into_iter();
    for _ in 0..4 {
        std::mem::forget(it.next());
    }
    *ITER.lock().unwrap() = Some(it);
    let g = trace_static(maps, &ITER, "types::cases::ITER")?;
    expect(
        maps,
        &g,
        &set(std::iter::once(buf).chain(all[4..].iter().copied())),
        "IntoIter after 4",
    )?;
    stale_present(buf, 80, &all[..4], "consumed slots")
}

type Small = smallvec::SmallVec<[Box<u64>; 4]>;
static SMALL: Mutex<Option<(Small, Small)>> = Mutex::new(None);

fn small_vec_inline_and_spilled_to_len(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let mut inline: Small = (0..4u64).map(Box::new).collect();
    let mut spilled: Small = (0..6u64).map(Box::new).collect();
    tracker::end();
    let stale_inline = addr(&**inline.last().unwrap());
    std::mem::forget(inline.pop());
    let stale_heap: Vec<usize> = spilled[4..].iter().map(|b| addr(&**b)).collect();
    std::mem::forget(spilled.pop());
    std::mem::forget(spilled.pop());
    if inline.spilled() || !spilled.spilled() {
        return Err("expected one inline and one spilled SmallVec".into());
    }
    let heap = spilled.as_ptr() as usize;
    let mut want: Vec<usize> = inline
        .iter()
        .chain(spilled.iter())
        .map(|b| addr(&**b))
        .collect();
    want.push(heap);
    *SMALL.lock().unwrap() = Some((inline, spilled));
    let g = trace_static(maps, &SMALL, "types::cases::SMALL")?;
    expect(maps, &g, &set(want), "SmallVecs after pops")?;
    stale_present(
        addr(&SMALL),
        std::mem::size_of_val(&SMALL),
        &[stale_inline],
        "inline slots",
    )?;
    stale_present(heap, 6 * 8, &stale_heap, "spilled buffer")
}

type TokioChannel = (
    tokio::sync::mpsc::UnboundedSender<Box<u64>>,
    tokio::sync::mpsc::UnboundedReceiver<Box<u64>>,
);
static TOKIO: Mutex<Option<TokioChannel>> = Mutex::new(None);

/// tokio's channel blocks keep values in `MaybeUninit` slots whose state
/// lives in the receiver: not on the containers list, so read as
/// candidates. Sound (every unread message reached), not exact.
fn tokio_channel_slots_are_sound_candidates(maps: &TypeMaps) -> Result<(), String> {
    let w = tracker::begin();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Box<u64>>();
    for i in 0..40u64 {
        tx.send(Box::new(i)).map_err(|_| "send")?;
    }
    tracker::end();
    let mut read_out = Vec::new();
    for _ in 0..10 {
        let b = rx.try_recv().map_err(|_| "recv")?;
        read_out.push(addr(&*b));
        std::mem::forget(b);
    }
    *TOKIO.lock().unwrap() = Some((tx, rx));
    let want: BTreeSet<usize> = tracker::live_in(w)
        .into_iter()
        .filter(|a| !read_out.contains(a))
        .collect();
    let g = trace_static(maps, &TOKIO, "types::cases::TOKIO")?;
    let got = g.reached();
    let missing: Vec<_> = want.difference(&got).collect();
    if !missing.is_empty() {
        return Err(format!("missing (false unreachable) {missing:x?}"));
    }
    if !g
        .fallbacks
        .iter()
        .any(|(_, t)| matches!(t, Traced::Partly(Fallback::Uninit)))
    {
        return Err(format!(
            "expected the block's slots read as candidates, fallbacks {:?}",
            g.fallbacks
        ));
    }
    Ok(())
}

#[allow(dead_code)]
struct Registry {
    name: String,
    entries: Vec<Entry>,
}
#[allow(dead_code)]
struct Entry {
    id: u64,
    payload: Option<Box<Payload>>,
}
#[allow(dead_code)]
struct Payload {
    bytes: Vec<u8>,
}
static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn edges_carry_field_paths(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let entries: Vec<Entry> = (0..4u64)
        .map(|id| Entry {
            id,
            payload: (id % 2 == 0).then(|| {
                Box::new(Payload {
                    bytes: vec![id as u8; 10],
                })
            }),
        })
        .collect();
    let name = String::from("registry");
    tracker::end();
    let buf = entries.as_ptr() as usize;
    let p2 = addr(&**entries[2].payload.as_ref().unwrap());
    let bytes2 = entries[2].payload.as_ref().unwrap().bytes.as_ptr() as usize;
    *REGISTRY.lock().unwrap() = Some(Registry { name, entries });
    let g = trace_static(maps, &REGISTRY, "types::cases::REGISTRY")?;
    let checks = [
        (buf, "Mutex<Option<Registry>>.entries"),
        (p2, "Entry[2].payload"),
        (bytes2, "Payload.bytes"),
    ];
    for (to, want) in checks {
        let paths = g.paths_to(to);
        if paths != [want] {
            return Err(format!(
                "edge to {to:#x}: paths {paths:?}, expected [{want:?}]"
            ));
        }
    }
    Ok(())
}

fn statics_are_named_and_typed(maps: &TypeMaps) -> Result<(), String> {
    let (_, len, bt) = root(maps, &NICHE, "types::cases::NICHE")?;
    let s = maps.static_at(addr(&NICHE)).ok_or("NICHE not found")?;
    if maps.name(s.name) != "types::cases::NICHE" {
        return Err(format!("NICHE named {}", maps.name(s.name)));
    }
    let name = maps.type_name(bt.ty);
    if len != std::mem::size_of_val(&NICHE) || !name.starts_with("std::sync::poison::mutex::Mutex<core::option::Option<(alloc::boxed::Box<types::cases::A") {
        return Err(format!("NICHE: {len} bytes of {name}"));
    }
    // A module without debug info is named by its symbol table.
    // SAFETY: dlsym with a NUL-terminated name.
    let environ = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"environ".as_ptr()) } as usize;
    let s = maps.static_at(environ).ok_or("environ not found")?;
    let label = maps.static_label(s);
    if !label.starts_with("libc.so") || !label.ends_with("environ") {
        return Err(format!("environ labelled {label}"));
    }
    // This binary has debug info; libc has it only where its debug file
    // is installed (Debian's libc6-dbg, zlib-compressed, by build id).
    let own_code = statics_are_named_and_typed as fn(&TypeMaps) -> Result<(), String> as usize;
    if !maps.has_debug_info(own_code) {
        return Err("has_debug_info: false for this binary".into());
    }
    let libc = maps
        .modules()
        .iter()
        .find(|m| m.module.contains(environ))
        .ok_or("no module holds environ")?;
    let libc_debug = libc_debug_file(&libc.module.path)?;
    if maps.has_debug_info(environ) != libc_debug.is_some() {
        return Err(format!(
            "has_debug_info for libc: {}, its debug file: {libc_debug:?}",
            maps.has_debug_info(environ)
        ));
    }
    Ok(())
}

/// Where a build-id debug file for `path` is installed, if one is.
fn libc_debug_file(path: &str) -> Result<Option<String>, String> {
    use object::Object;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let file = object::File::parse(&*bytes).map_err(|e| format!("{path}: {e}"))?;
    let Some(id) = file.build_id().ok().flatten() else {
        return Ok(None);
    };
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]);
    Ok(std::path::Path::new(&debug).exists().then_some(debug))
}

/// The `[heap]` mapping (glibc's main arena grows it with brk).
fn brk_heap() -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[heap]"))?;
    let (range, _) = line.split_once(' ')?;
    let (a, b) = range.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

fn glibc_main_arena_is_allocator_metadata(maps: &TypeMaps) -> Result<(), String> {
    let ranges = maps.allocator_metadata(&read);
    // The main arena's `top` is the chunk that ends at the end of the brk
    // heap: [top, top + its size) = [top, heap end).
    let (heap_lo, heap_hi) = brk_heap().ok_or("no [heap] mapping")?;
    let brk = heap_hi;
    let found = ranges.iter().any(|&(lo, hi)| {
        (lo..hi).step_by(8).any(|w| {
            let top = read(w);
            top % 16 == 0
                && top >= heap_lo
                && top + 16 <= heap_hi
                && top + (read(top + 8) & !7) == brk
        })
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "no range of {ranges:x?} holds main_arena.top (brk {brk:#x})"
        ))
    }
}

#[allow(dead_code)]
struct Subscribed {
    topic: String,
    buffer: Vec<u8>,
    peer: Mutex<Option<Arc<Subscribed>>>,
}

#[inline(never)]
fn in_scope<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

/// `Arc::new` called from a closure run by a generic function (the
/// example service's `owner::scope_typed(|| Arc::new(..))`): the block is
/// an `ArcInner<Subscribed>` by its site. (Where the inlined `Box::new`
/// carries no template parameter in DWARF, the frame's name types it:
/// tests/example_service checks that through the recorder.)
fn arc_new_in_a_closure_is_typed_by_its_site(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let sub = in_scope(|| {
        Arc::new(Subscribed {
            topic: String::new(),
            buffer: Vec::new(),
            peer: Mutex::new(None),
        })
    });
    tracker::end();
    let (site, shape) = site_type_name(maps, Arc::as_ptr(&sub) as usize - 16)?;
    if !site.contains("ArcInner<types::cases::Subscribed>") {
        return Err(format!("site of Arc::new: {site} {shape:?}"));
    }
    Ok(())
}

/// This binary's file rewritten by `objcopy` with `flag`, in `dir`.
fn objcopy(dir: &std::path::Path, flag: &str, name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = dir.join(name);
    let status = std::process::Command::new("objcopy")
        .arg(flag)
        .arg(&exe)
        .arg(&out)
        .status()
        .map_err(|e| format!("objcopy (binutils) cannot run: {e}"))?;
    if !status.success() {
        return Err(format!("objcopy {flag} failed: {status}"));
    }
    Ok(out.to_string_lossy().into_owned())
}

/// A file's types and their figures, loaded at link-time addresses.
fn load_file(path: &str) -> Result<(TypeMaps, Vec<u64>), String> {
    let module = leakprof::record::types::LoadedModule::from_file(path)
        .ok_or_else(|| format!("cannot read {path}"))?;
    let maps = TypeMaps::load_modules(vec![module]);
    let s = maps.stats();
    let figures = [
        s.modules_with_debug_info,
        s.units,
        s.type_dies as usize,
        s.types,
        s.containers,
        s.statics,
        s.vtables,
    ];
    let figures = figures.iter().map(|&f| f as u64).collect();
    Ok((maps, figures))
}

/// The same file with its debug sections plain, zlib-compressed the
/// standard way (`SHF_COMPRESSED`, as `ld --compress-debug-sections` and
/// Debian's debug packages write them) and GNU's way (`.zdebug_*`) loads the
/// same types; zstd, which no linked decompressor reads, is named as the
/// reason the types are missing. Debug builds of this package link
/// compressed (build.rs), so the plain copy must be the larger there.
fn compressed_debug_sections_give_the_same_types(_: &TypeMaps) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let plain = objcopy(dir.path(), "--decompress-debug-sections", "plain")?;
    let zlib = objcopy(dir.path(), "--compress-debug-sections=zlib", "zlib")?;
    let gnu = objcopy(dir.path(), "--compress-debug-sections=zlib-gnu", "gnu")?;
    let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let own = std::fs::metadata(exe).map(|m| m.len()).unwrap_or(0);
    if cfg!(debug_assertions) && own * 2 > size(&plain) {
        return Err(format!(
            "this debug build is {own} bytes, its decompressed copy {}: build.rs did not compress it",
            size(&plain)
        ));
    }
    let (_, want) = load_file(&plain)?;
    if want[0] != 1 || want[3] < 1000 {
        return Err(format!("the plain copy has too few types: {want:?}"));
    }
    for path in [&zlib, &gnu] {
        if size(path) * 2 > size(&plain) {
            return Err(format!("{path} is not compressed"));
        }
        let (_, got) = load_file(path)?;
        if got != want {
            return Err(format!("{path}: {got:?}, plain: {want:?}"));
        }
    }
    let zstd = objcopy(dir.path(), "--compress-debug-sections=zstd", "zstd")?;
    let (maps, got) = load_file(&zstd)?;
    let reason = maps.modules()[0].debug_info;
    if got[0] != 0 || reason != Err(leakprof::record::types::NoDebugInfo::Compressed) {
        return Err(format!("zstd copy: {got:?}, {reason:?}"));
    }
    Ok(())
}

/// The names of the function containing `pc` in this binary, when the
/// compiler merged it with others of identical code (several symbols at
/// one address), else nothing.
fn merged_names(maps: &TypeMaps, pc: u64) -> Result<Vec<String>, String> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let Some(m) = maps
        .modules()
        .iter()
        .find(|m| m.module.contains(pc as usize))
    else {
        return Ok(Vec::new());
    };
    let bytes = std::fs::read(&m.module.path).map_err(|e| e.to_string())?;
    let file = object::File::parse(&*bytes).map_err(|e| e.to_string())?;
    let at = pc - 1 - m.module.bias as u64;
    let text: Vec<_> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .collect();
    let Some(start) = text
        .iter()
        .find(|s| s.address() <= at && at < s.address() + s.size())
        .map(|s| s.address())
    else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = text
        .iter()
        .filter(|s| s.address() == start)
        .filter_map(|s| s.name().ok())
        .map(|n| format!("{:#}", rustc_demangle::demangle(n)))
        .collect();
    names.sort();
    names.dedup();
    Ok(if names.len() > 1 { names } else { Vec::new() })
}

/// A `Vec<String>` grows through std's `RawVec::grow_one`, which the
/// compiler merged with every other instance for 24-byte elements (one
/// function, a symbol per type: `OsString`, `Vec<u8>`, a gimli value...).
/// The site must be typed `String` by the caller's `Vec::<String>::push`.
/// (std ships without DWARF type parameters, so here the merged frame
/// names no type; in an optimised build of one's own code it names one
/// of the merged types, which `site_spec` then checks against the
/// caller: the unit tests of `site` and `trace`, and the release runs of
/// docs/SCENARIOS.md.)
fn merged_generic_code_is_typed_by_its_caller(maps: &TypeMaps) -> Result<(), String> {
    tracker::begin();
    let names = in_scope(|| {
        let mut names: Vec<String> = Vec::new();
        for k in 0..5 {
            names.push(format!("name {k}"));
        }
        names
    });
    tracker::end();
    let (pcs, size) = allocation_stack(names.as_ptr() as usize)?;
    let mut merged = Vec::new();
    for &pc in &pcs {
        merged = merged_names(maps, pc)?;
        if !merged.is_empty() {
            break;
        }
    }
    if !merged
        .iter()
        .any(|n| n.contains("RawVec<alloc::string::String>"))
    {
        return Err(format!(
            "the buffer's stack passes through no merged RawVec<String> code ({merged:?}): \
             the case tests nothing on this toolchain"
        ));
    }
    let site = maps.site_type(&pcs, size);
    let name = site.map(|s| maps.type_name(s.block.ty));
    if name != Some("alloc::string::String") {
        let frames: Vec<Vec<String>> = pcs.iter().map(|&pc| maps.site_frames(pc)).collect();
        return Err(format!(
            "site of Vec<String>::push: {name:?}; frames {frames:#?}"
        ));
    }
    Ok(())
}
