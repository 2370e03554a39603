//! Brokers: where messages wait between `send` and a worker.
//!
//! Two brokers with the same semantics, Dramatiq 2.0's:
//!
//! - [`MemoryBroker`]: in-process, zero setup, the default of `leakprof run`.
//! - [`RedisBroker`]: Dramatiq's Redis layout and semantics, so queues can be
//!   shared with Python Dramatiq in both directions.
//!
//! [`Broker`] dispatches over the two. The life of a message:
//!
//! 1. [`Broker::enqueue`] stamps it with a fresh `redis_message_id` and puts
//!    it on its queue, or, with a delay, on the queue's delay queue
//!    (`<queue>.DQ`) with `options.eta`.
//! 2. A [`Consumer`] of the queue fetches it (up to `prefetch` at a time) and
//!    hands it out as a [`Delivery`]. The consumer also drains the delay
//!    queue: it holds delayed messages until their eta, then moves them to
//!    the queue (new `redis_message_id`, no `eta`) as Dramatiq's worker does.
//! 3. The worker settles the delivery: [`Delivery::ack`] (done),
//!    [`Delivery::nack`] (dead-letter to `<queue>.XQ`) or
//!    [`Delivery::requeue`] (give it back). A delivery dropped unsettled is
//!    given back too, so a message is never lost by forgetting it.
//!
//! Delivery is at least once: a message can be delivered again after a
//! worker dies, a connection drops at the wrong moment or a delivery is
//! dropped, never zero times.
//!
//! This module never decides whether an actor failed or should retry; that is
//! the worker's and its middleware's job.

mod consumer;
pub mod defaults;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use super::message::{
    current_millis, dq_name, Message, MessageError, OPTION_ETA, OPTION_REDIS_MESSAGE_ID,
};

pub use self::consumer::{Consumer, Delivery};
pub use self::memory::MemoryBroker;
pub use self::redis::{RedisBroker, RedisConfig};

/// A broker of either kind. Cloning is cheap and clones share everything
/// (queues, connection, worker id).
#[derive(Clone)]
pub enum Broker {
    Memory(MemoryBroker),
    Redis(RedisBroker),
}

/// Where an enqueued message went. The message itself was moved into the
/// broker (the memory broker keeps it without copying its arguments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// `<queue>` or, when delayed, `<queue>.DQ`.
    pub queue_name: String,
    pub actor_name: String,
    pub message_id: String,
    /// The id of this copy in the broker, new on every enqueue.
    pub redis_message_id: String,
    /// When a delayed message becomes due, ms since the epoch.
    pub eta: Option<u64>,
}

/// A message in a dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub redis_message_id: String,
    /// When it was dead-lettered, ms since the epoch.
    pub dead_lettered_at: u64,
    /// The stored message, or why its stored bytes are not a message.
    pub message: Result<Message, MessageError>,
}

/// Why a broker operation failed. Redis outages are not errors: operations
/// wait and retry through them (see [`RedisBroker`]).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid Redis URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("cannot connect to Redis at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("Redis at {url} rejected `{command}`: {source}")]
    Rejected {
        url: String,
        command: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("unexpected reply from Redis to `{command}`: {detail}")]
    UnexpectedReply {
        command: &'static str,
        detail: String,
    },
}

impl Broker {
    /// A new in-process broker with default settings.
    pub fn memory() -> Broker {
        Broker::Memory(MemoryBroker::new())
    }

    /// Connects to Redis (see [`RedisBroker::connect`]).
    pub async fn redis(config: RedisConfig) -> Result<Broker, BrokerError> {
        Ok(Broker::Redis(RedisBroker::connect(config).await?))
    }

    /// This broker instance's worker id (a UUID v4), Dramatiq's `broker_id`:
    /// the name of its ack sets and its heartbeat.
    pub fn worker_id(&self) -> &str {
        match self {
            Broker::Memory(broker) => broker.worker_id(),
            Broker::Redis(broker) => broker.worker_id(),
        }
    }

    /// Enqueues `message` on `message.queue_name`, or with a `delay` on its
    /// delay queue with `options.eta = now + delay`. Sets a fresh
    /// `options.redis_message_id` either way. Waits through Redis outages.
    pub async fn enqueue(
        &self,
        message: Message,
        delay: Option<Duration>,
    ) -> Result<Enqueued, BrokerError> {
        let mut message = message;
        stamp_for_enqueue(&mut message, delay);
        let enqueued = receipt(&message);
        match self {
            Broker::Memory(broker) => broker.push(Arc::new(message)),
            Broker::Redis(broker) => {
                broker.push(&message, None).await?;
            }
        }
        Ok(enqueued)
    }

    /// A consumer of `queue` (and of its delay queue) that keeps at most
    /// `prefetch` messages fetched-but-unsettled. A `.DQ` or `.XQ` name is
    /// taken as its canonical queue.
    pub fn consumer(&self, queue: &str, prefetch: usize) -> Consumer {
        Consumer::new(self.clone(), queue, prefetch)
    }

    /// Messages of `queue` and its delay queue that are waiting or fetched
    /// and not yet settled, by any worker.
    pub async fn qsize(&self, queue: &str) -> Result<usize, BrokerError> {
        match self {
            Broker::Memory(broker) => Ok(broker.qsize(queue)),
            Broker::Redis(broker) => broker.qsize(queue).await,
        }
    }

    /// Drops every message of `queue` and its delay queue, and `queue`'s
    /// dead letters (Dramatiq's `flush`). With Redis, other workers' unacked
    /// messages are untouched until they settle them (their settles become
    /// no-ops).
    pub async fn purge(&self, queue: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Memory(broker) => {
                broker.purge(queue);
                Ok(())
            }
            Broker::Redis(broker) => broker.purge(queue).await,
        }
    }

    /// The dead letters of `queue`'s canonical queue, oldest first. Copies
    /// them; meant for tests and the CLI.
    pub async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, BrokerError> {
        match self {
            Broker::Memory(broker) => Ok(broker.dead_letters(queue)),
            Broker::Redis(broker) => broker.dead_letters(queue).await,
        }
    }
}

impl From<MemoryBroker> for Broker {
    fn from(broker: MemoryBroker) -> Broker {
        Broker::Memory(broker)
    }
}

impl From<RedisBroker> for Broker {
    fn from(broker: RedisBroker) -> Broker {
        Broker::Redis(broker)
    }
}

/// What Dramatiq's `enqueue` does to a message before storing it: a fresh
/// `redis_message_id` (in place if the message had one, so option order is
/// kept), and for a delay the delay queue and an `eta`.
fn stamp_for_enqueue(message: &mut Message, delay: Option<Duration>) {
    message.options.insert(
        OPTION_REDIS_MESSAGE_ID,
        uuid::Uuid::new_v4().to_string().into(),
    );
    if let Some(delay) = delay {
        message.queue_name = dq_name(&message.queue_name);
        let eta = current_millis().saturating_add(delay.as_millis() as u64);
        message.options.insert(OPTION_ETA, eta.into());
    }
}

fn receipt(message: &Message) -> Enqueued {
    Enqueued {
        queue_name: message.queue_name.clone(),
        actor_name: message.actor_name.clone(),
        message_id: message.message_id.clone(),
        redis_message_id: message
            .redis_message_id()
            .expect("stamped messages carry a redis_message_id")
            .to_owned(),
        eta: message.eta(),
    }
}

/// One entry of a fetch: the id it is stored under and what was stored.
struct Fetched {
    id: String,
    body: FetchedBody,
}

enum FetchedBody {
    Message(Arc<Message>),
    /// Bytes that are not a Dramatiq message: dead-lettered by the consumer.
    Malformed(MessageError),
    /// The id was on the queue but its body is gone (purged meanwhile).
    Missing,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::message::JsonObject;

    /// The worker spawns these on tokio's multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_and_handles_are_send() {
        fn send<T: Send>(_: &T) {}
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Broker>();
        send_sync::<Delivery>();
        send_sync::<Consumer>();
        send_sync::<DeadLetter>();
        let broker = Broker::memory();
        let mut consumer = broker.consumer("default", 1);
        send(&broker.enqueue(Message::new("q", "a", vec![], JsonObject::new()), None));
        send(&consumer.next(Duration::ZERO));
        send(&broker.qsize("q"));
        send(&broker.purge("q"));
        send(&broker.dead_letters("q"));
        send(&consumer.requeue(Vec::new()));
        send(&consumer.close());
        send(&RedisBroker::connect(RedisConfig::new(
            "redis://127.0.0.1/",
        )));
        let settle = |delivery: Delivery| send(&delivery.ack());
        let _ = settle;
    }

    #[test]
    fn enqueue_stamps_like_dramatiq() {
        let mut message = Message::new("default", "plain", vec![], JsonObject::new());
        message.set_retries(1);
        message
            .options
            .insert(OPTION_REDIS_MESSAGE_ID, "old".into());
        let before = current_millis();
        let mut stamped = message;
        stamp_for_enqueue(&mut stamped, Some(Duration::from_millis(5_000)));
        assert_eq!(stamped.queue_name, "default.DQ");
        let keys: Vec<&str> = stamped.options.iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["retries", "redis_message_id", "eta"]);
        assert_ne!(stamped.redis_message_id(), Some("old"));
        let eta = stamped.eta().unwrap();
        assert!(eta >= before + 5_000 && eta <= current_millis() + 5_000);
    }
}
