//! The in-process broker: Dramatiq's broker semantics without a server.
//!
//! Queues hold shared [`Message`]s, not their JSON: enqueue moves a message
//! in, fetch moves it out to the consumer, and settling moves it back
//! (requeue) or into the dead-letter queue (nack). A 128 MiB argument is
//! never copied or encoded on the way, and a dead letter is the very message
//! that was fetched (nobody can change a shared message). Fetched ids are tracked per queue, like the Redis
//! ack sets, so a purge makes later settles of purged messages no-ops.
//!
//! Waiting consumers are woken the moment a message arrives through a
//! per-queue watch channel (a counter bumped on every arrival: a consumer
//! that marks it seen before looking at the queue cannot miss a wake-up);
//! nothing polls.
//!
//! The lock below is a plain mutex held only for queue bookkeeping: it is
//! never held across an await, and nothing that runs under it drops a
//! `Delivery` (whose destructor takes the lock again).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::{defaults, DeadLetter};
use crate::lab::message::{current_millis, dq_name, q_name, xq_name, Message};

/// An in-process broker. Clones share the same queues.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

struct Shared {
    worker_id: String,
    dead_message_ttl: Duration,
    queues: Mutex<HashMap<String, Queue>>,
}

struct Queue {
    ready: VecDeque<Arc<Message>>,
    /// Ids fetched from this queue and not settled yet.
    fetched: HashSet<String>,
    /// Used on canonical queues only: (dead-lettered at, id, message).
    dead: VecDeque<(u64, String, Arc<Message>)>,
    arrived: watch::Sender<u64>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            ready: VecDeque::new(),
            fetched: HashSet::new(),
            dead: VecDeque::new(),
            arrived: watch::channel(0).0,
        }
    }
}

impl Queue {
    fn announce_arrival(&self) {
        self.arrived
            .send_modify(|arrivals| *arrivals = arrivals.wrapping_add(1));
    }
}

/// How a fetched message is settled.
pub(super) enum Settle {
    Ack,
    /// Dead-letter it.
    Nack(Arc<Message>),
    Requeue(Arc<Message>),
}

impl MemoryBroker {
    pub fn new() -> MemoryBroker {
        MemoryBroker::with_dead_message_ttl(defaults::DEAD_MESSAGE_TTL)
    }

    /// A broker whose dead letters are dropped `ttl` after dead-lettering.
    /// Dead letters live in this process, so a short TTL bounds what they
    /// retain.
    pub fn with_dead_message_ttl(ttl: Duration) -> MemoryBroker {
        MemoryBroker {
            shared: Arc::new(Shared {
                worker_id: uuid::Uuid::new_v4().to_string(),
                dead_message_ttl: ttl,
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        // A panic while holding this lock cannot leave a queue half-updated
        // in a way later calls would misread, so poisoning is ignored.
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a stamped message to `message.queue_name` and wakes consumers.
    pub(super) fn push(&self, message: Arc<Message>) {
        let mut queues = self.queues();
        let queue = queues.entry(message.queue_name.clone()).or_default();
        queue.ready.push_back(message);
        queue.announce_arrival();
    }

    /// Moves up to `count` messages out of `queue`, marking them fetched.
    /// Returns (id, message) pairs.
    pub(super) fn fetch(&self, queue: &str, count: usize) -> Vec<(String, Arc<Message>)> {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(queue) else {
            return Vec::new();
        };
        let taken = count.min(queue.ready.len());
        let mut fetched = Vec::with_capacity(taken);
        for message in queue.ready.drain(..taken) {
            let id = message
                .redis_message_id()
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            queue.fetched.insert(id.clone());
            fetched.push((id, message));
        }
        fetched
    }

    /// Settles a fetched message. Like the Redis ack sets, only the first
    /// settle of a fetched id has an effect.
    pub(super) fn settle(&self, queue_name: &str, id: &str, settle: Settle) {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(queue_name) else {
            return;
        };
        if !queue.fetched.remove(id) {
            return;
        }
        match settle {
            Settle::Ack => {}
            Settle::Requeue(message) => {
                queue.ready.push_back(message);
                queue.announce_arrival();
            }
            Settle::Nack(message) => {
                let now = current_millis();
                let dead = queues.entry(xq_name(queue_name)).or_default();
                dead.dead.push_back((now, id.to_owned(), message));
                self.expire_dead_letters(dead, now);
            }
        }
    }

    /// A receiver that sees a change whenever a message arrives on `queue`.
    pub(super) fn arrivals(&self, queue: &str) -> watch::Receiver<u64> {
        self.queues()
            .entry(queue.to_owned())
            .or_default()
            .arrived
            .subscribe()
    }

    pub(super) fn qsize(&self, queue: &str) -> usize {
        let queues = self.queues();
        let canonical = q_name(queue);
        [canonical.to_owned(), dq_name(canonical)]
            .iter()
            .filter_map(|name| queues.get(name))
            .map(|queue| queue.ready.len() + queue.fetched.len())
            .sum()
    }

    pub(super) fn purge(&self, queue: &str) {
        let canonical = q_name(queue);
        // Move the contents out and drop them after unlocking.
        let mut dropped = Vec::new();
        {
            let mut queues = self.queues();
            for name in [canonical.to_owned(), dq_name(canonical), xq_name(canonical)] {
                if let Some(queue) = queues.get_mut(&name) {
                    dropped.push((
                        std::mem::take(&mut queue.ready),
                        std::mem::take(&mut queue.dead),
                    ));
                    queue.fetched.clear();
                }
            }
        }
        drop(dropped);
    }

    pub(super) fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        let mut queues = self.queues();
        let Some(dead) = queues.get_mut(&xq_name(queue)) else {
            return Vec::new();
        };
        self.expire_dead_letters(dead, current_millis());
        dead.dead
            .iter()
            .map(|(at, id, message)| DeadLetter {
                redis_message_id: id.clone(),
                dead_lettered_at: *at,
                message: Ok(Message::clone(message)),
            })
            .collect()
    }

    fn expire_dead_letters(&self, dead: &mut Queue, now: u64) {
        let ttl = self.shared.dead_message_ttl.as_millis() as u64;
        while dead
            .dead
            .front()
            .is_some_and(|(at, _, _)| now.saturating_sub(*at) >= ttl)
        {
            dead.dead.pop_front();
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> MemoryBroker {
        MemoryBroker::new()
    }
}
