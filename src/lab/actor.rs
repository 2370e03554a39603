//! Actors: named functions a message can call, sync or async, with
//! Dramatiq's per-actor options.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::executor::{ActorFuture, ActorResult};
use super::message::Message;

/// Dramatiq's defaults (`middleware/retries.py`, `time_limit.py`).
pub mod defaults {
    pub const MAX_RETRIES: u64 = 20;
    pub const MIN_BACKOFF_MS: u64 = 15_000;
    pub const MAX_BACKOFF_MS: u64 = 7 * 86_400_000;
    pub const TIME_LIMIT_MS: u64 = 600_000;
    pub const RESULT_TTL_MS: u64 = 600_000;
    pub const QUEUE: &str = "default";
}

/// What an actor is called with: the message (shared, so a large argument
/// is never copied to make the call).
#[derive(Clone)]
pub struct Call {
    pub message: Arc<Message>,
    /// Dramatiq's `retries` option: 0 on the first attempt.
    pub retries: u32,
}

impl Call {
    pub fn arg(&self, i: usize) -> Option<&Value> {
        self.message.args.get(i)
    }

    /// Argument `i` as an unsigned integer, or a clear error.
    pub fn u64_arg(&self, i: usize, what: &str) -> Result<u64, super::error::TaskError> {
        self.arg(i).and_then(Value::as_u64).ok_or_else(|| {
            super::error::TaskError::new(
                "TypeError",
                format!(
                    "{}: argument {i} ({what}) must be a non-negative integer",
                    self.message.actor_name
                ),
            )
        })
    }
}

/// The function behind an actor.
#[derive(Clone, Copy)]
pub enum ActorFn {
    Sync(fn(&Call) -> ActorResult),
    Async(fn(Call) -> ActorFuture),
}

/// Dramatiq's actor options.
#[derive(Clone, Debug, PartialEq)]
pub struct ActorOptions {
    pub queue: String,
    pub max_retries: u64,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub time_limit: Duration,
    pub store_results: bool,
    /// Error kinds that fail at once, never retried (`throws`).
    pub throws: Vec<&'static str>,
}

impl Default for ActorOptions {
    fn default() -> ActorOptions {
        ActorOptions {
            queue: defaults::QUEUE.to_string(),
            max_retries: defaults::MAX_RETRIES,
            min_backoff: Duration::from_millis(defaults::MIN_BACKOFF_MS),
            max_backoff: Duration::from_millis(defaults::MAX_BACKOFF_MS),
            time_limit: Duration::from_millis(defaults::TIME_LIMIT_MS),
            store_results: false,
            throws: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct Actor {
    pub name: String,
    pub function: ActorFn,
    pub options: ActorOptions,
}

/// The actors a worker can run, by name.
#[derive(Clone, Default)]
pub struct Actors {
    by_name: BTreeMap<String, Arc<Actor>>,
}

impl Actors {
    pub fn new() -> Actors {
        Actors::default()
    }

    pub fn register(&mut self, actor: Actor) {
        self.by_name.insert(actor.name.clone(), Arc::new(actor));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Actor>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Actor>> {
        self.by_name.values()
    }

    /// The queues the actors consume from, sorted, without duplicates.
    pub fn queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self
            .by_name
            .values()
            .map(|a| a.options.queue.clone())
            .collect();
        q.sort();
        q.dedup();
        q
    }
}
