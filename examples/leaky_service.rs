//! An order service with four planted leaks, profiled through the library
//! API. The README's "profile your own worker" walkthrough runs it:
//!
//! ```text
//! cargo run --release --example leaky_service
//! leakprof report leakprof-out/leaky-service
//! leakprof retainers leakprof-out/leaky-service --type Subscription
//! ```
//!
//! The leaks, and what leakprof must name:
//! 1. `session cache`: every session is cached forever in a static (a
//!    registered owner): retained, reachable, growing.
//! 2. `subscription`: each order subscribes a pair of objects that point at
//!    each other (`Arc` both ways): an unreachable cycle holding a buffer.
//! 3. a forgotten receipt (`mem::forget`): unreachable, referenced by
//!    nothing, owned by its allocation site `render_receipt`.
//! 4. `completion hooks`: a static list of closures, each capturing its
//!    order's request body, never pruned.

use std::sync::{Arc, Mutex};

use leakprof::{owner, Options, Recorder, Tag};

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

const ORDERS: u64 = 200;
const BODY: usize = 64 << 10;
const SESSION: usize = 4 << 10;
const SUBSCRIPTION_BUFFER: usize = 16 << 10;
const RECEIPT: usize = 2 << 10;

/// Leak 1: a cache nobody evicts.
static SESSIONS: Mutex<Vec<Session>> = Mutex::new(Vec::new());

/// Leak 4: hooks to run "when the order completes", never pruned.
type Hook = Box<dyn Fn() -> usize + Send>;
static COMPLETION_HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

struct Session {
    customer: String,
    scratch: Vec<u8>,
}

/// Leak 2: a subscription and its peer point at each other.
struct Subscription {
    topic: String,
    buffer: Vec<u8>,
    peer: Mutex<Option<Arc<Subscription>>>,
}

fn filled(len: usize, byte: u8) -> Vec<u8> {
    vec![byte; len]
}

#[inline(never)]
fn open_session(customer: u64) {
    let session = Session {
        customer: format!("customer-{customer}"),
        scratch: filled(SESSION, 1),
    };
    SESSIONS.lock().unwrap().push(session);
}

#[inline(never)]
fn subscribe(order: u64) {
    let subscription = owner::scope_typed::<Subscription, _>("subscription", || {
        Arc::new(Subscription {
            topic: format!("order-{order}"),
            buffer: filled(SUBSCRIPTION_BUFFER, 2),
            peer: Mutex::new(None),
        })
    });
    let peer = owner::typed::<Subscription, _>(|| {
        Arc::new(Subscription {
            topic: format!("order-{order}-peer"),
            buffer: Vec::new(),
            peer: Mutex::new(Some(subscription.clone())),
        })
    });
    *subscription.peer.lock().unwrap() = Some(peer);
}

#[inline(never)]
fn render_receipt(order: u64) -> Vec<u8> {
    let mut receipt = vec![3u8; RECEIPT];
    receipt[0] = order as u8;
    receipt
}

#[inline(never)]
fn handle(order: u64) -> usize {
    let body = filled(BODY, 4);
    open_session(order % 1_000_000);
    subscribe(order);
    std::mem::forget(render_receipt(order)); // Leak 3.
    let captured = body.clone();
    COMPLETION_HOOKS
        .lock()
        .unwrap()
        .push(Box::new(move || captured.len()));
    body.len()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "leakprof-out/leaky-service/profile.json".to_string());
    // The five lines: install LeakAlloc (above), start, tag, snapshot, save.
    let recorder = Recorder::start(Options::default())?;
    owner::register("session cache", &SESSIONS).forever();
    owner::register("completion hooks", &COMPLETION_HOOKS).forever();
    leakprof::set_attribute("scenario", "leaky-service");
    for order in 1..=ORDERS {
        leakprof::with_tag(Tag::task(order), || handle(order));
    }
    // From this (main) thread, which holds none of the orders' objects.
    let profile = recorder.snapshot_with_graph(&leakprof::GraphOptions::default())?;
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    profile.save(&out)?;
    let sessions = SESSIONS.lock().unwrap();
    let hooks = COMPLETION_HOOKS.lock().unwrap();
    println!(
        "handled {ORDERS} orders; {} sessions cached, {} hooks pending ({} body bytes); profile: {out}",
        sessions.len(),
        hooks.len(),
        hooks.iter().map(|h| h()).sum::<usize>()
    );
    println!(
        "first session: {} ({} scratch bytes)",
        sessions.first().map_or("", |s| s.customer.as_str()),
        sessions.first().map_or(0, |s| s.scratch.len())
    );
    Ok(())
}

#[allow(dead_code)]
fn topics(s: &Subscription) -> (&str, usize) {
    (&s.topic, s.buffer.len())
}
