//! Consumers and deliveries: how a worker takes messages off a queue.
//!
//! A [`Consumer`] of queue `Q` fetches from `Q` (at most `prefetch`
//! messages fetched and unsettled at once) and from `Q.DQ`. Delayed
//! messages are held here until their eta, then moved to `Q` with a new
//! `redis_message_id` and no `eta`, and their delay-queue copy is acked:
//! what Dramatiq's worker does. So every [`Delivery`] it hands out is due now,
//! and a worker on top only ever sees ready messages.
//!
//! A [`Delivery`] is a lease on one message. Settle it from any task with
//! [`Delivery::ack`], [`Delivery::nack`] or [`Delivery::requeue`]; dropping
//! it unsettled gives the message back to its queue. Malformed messages are
//! dead-lettered here with one warning and never handed out.
//!
//! A delivery's message is shared, never lent out and given back: the worker
//! and the actor it calls hold [`Delivery::shared_message`], which nothing
//! can change, so a nack dead-letters exactly what was fetched however long
//! the actor's coroutine keeps its share (an aborted coroutine may outlive
//! its attempt).
//!
//! [`Consumer::next`] is cancel-safe: dropping its future (say, in a
//! `select!` with a shutdown signal) loses no message. Fetched messages live
//! in the consumer until handed out, and a fetch cut off mid-call is
//! reconciled by the Redis broker before its next fetch.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::memory::Settle as MemorySettle;
use super::redis::Settle as RedisSettle;
use super::{defaults, stamp_for_enqueue, Broker, BrokerError, Fetched, FetchedBody};
use crate::lab::backoff::compute_backoff;
use crate::lab::message::{current_millis, dq_name, q_name, Message, MessageError, OPTION_ETA};

/// First pause when polling an idle Redis queue (Dramatiq's factor).
const FIRST_IDLE_POLL: Duration = Duration::from_millis(5);

/// Takes messages off one queue and its delay queue. See the module docs.
pub struct Consumer {
    broker: Broker,
    queue: Arc<str>,
    delay_queue: Arc<str>,
    prefetch: usize,
    delay_prefetch: usize,
    /// Fetched from the queue, not handed out yet.
    ready: VecDeque<Delivery>,
    /// Fetched from the delay queue, waiting for their eta.
    delayed: BinaryHeap<Delayed>,
    delayed_seq: u64,
    /// Deliveries handed out and not settled; leases decrement it.
    handed_out: Arc<watch::Sender<usize>>,
    handed_out_changes: watch::Receiver<usize>,
    /// Memory broker: raised when a message arrives on the queue / delay queue.
    arrivals: Option<(watch::Receiver<u64>, watch::Receiver<u64>)>,
    idle_polls: u32,
    heartbeat: Option<AbortOnDrop>,
}

/// One message handed to a worker: a lease until settled.
pub struct Delivery {
    message: Arc<Message>,
    /// `None` once settled.
    lease: Option<Lease>,
}

struct Lease {
    broker: Broker,
    /// The queue it was fetched from.
    queue: Arc<str>,
    /// Its `redis_message_id` (the key it is stored under).
    id: String,
    /// Set once handed out; dropping the lease frees a prefetch slot.
    handed_out: Option<Arc<watch::Sender<usize>>>,
}

/// Which of the consumer's two queues a fetch is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Queue,
    DelayQueue,
}

impl Consumer {
    pub(super) fn new(broker: Broker, queue: &str, prefetch: usize) -> Consumer {
        let canonical = q_name(queue);
        let delay_queue = dq_name(canonical);
        let arrivals = match &broker {
            Broker::Memory(memory) => {
                Some((memory.arrivals(canonical), memory.arrivals(&delay_queue)))
            }
            Broker::Redis(_) => None,
        };
        let (handed_out, handed_out_changes) = watch::channel(0);
        Consumer {
            queue: canonical.into(),
            delay_queue: delay_queue.into(),
            broker,
            prefetch: prefetch.max(1),
            delay_prefetch: defaults::DELAY_PREFETCH,
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            delayed_seq: 0,
            handed_out: Arc::new(handed_out),
            handed_out_changes,
            arrivals,
            idle_polls: 0,
            heartbeat: None,
        }
    }

    /// How many delayed messages this consumer may hold while they wait for
    /// their eta (default [`defaults::DELAY_PREFETCH`]).
    pub fn with_delay_prefetch(mut self, delay_prefetch: usize) -> Consumer {
        self.delay_prefetch = delay_prefetch.max(1);
        self
    }

    /// The canonical queue this consumer takes messages from.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// Deliveries handed out and not settled yet.
    pub fn handed_out(&self) -> usize {
        *self.handed_out.borrow()
    }

    /// The next due message, waiting up to `wait` for one. `Ok(None)` when
    /// `wait` elapses first. Redis outages are waited out inside (logged
    /// once), so an error here is a real fault (a rejected command).
    ///
    /// Blocks while `prefetch` deliveries are handed out and unsettled.
    /// Cancel-safe.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Delivery>, BrokerError> {
        self.start_heartbeat();
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        loop {
            // Mark every signal seen before looking, so a message or a free
            // slot that shows up while we look wakes the wait below.
            self.handed_out_changes.borrow_and_update();
            if let Some((queue, delay_queue)) = &mut self.arrivals {
                queue.borrow_and_update();
                delay_queue.borrow_and_update();
            }

            self.promote_due(deadline).await?;
            if let Some(delivery) = self.ready.pop_front() {
                self.idle_polls = 0;
                return Ok(Some(self.hand_out(delivery)));
            }
            if self.refill(deadline).await? {
                self.idle_polls = 0;
                continue;
            }

            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut until = deadline;
            if let Some(eta) = self.delayed.peek().map(|delayed| delayed.eta) {
                let due_in = Duration::from_millis(eta.saturating_sub(current_millis()));
                until = until.min(now + due_in);
            }
            if let Broker::Redis(redis) = &self.broker {
                let pause = compute_backoff(
                    self.idle_polls,
                    FIRST_IDLE_POLL,
                    redis.idle_poll_max(),
                    true,
                );
                until = until.min(now + pause);
                self.idle_polls = self.idle_polls.saturating_add(1);
            }
            let (queue_arrival, delay_arrival) = match &mut self.arrivals {
                Some((queue, delay_queue)) => (Some(queue), Some(delay_queue)),
                None => (None, None),
            };
            tokio::select! {
                _ = changed(queue_arrival) => {}
                _ = changed(delay_arrival) => {}
                _ = self.handed_out_changes.changed() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// Gives deliveries back to their queues in as few calls as possible
    /// (for a worker shutting down with messages it will not run).
    pub async fn requeue(&self, deliveries: Vec<Delivery>) -> Result<(), BrokerError> {
        requeue_all(&self.broker, deliveries).await
    }

    /// Stops consuming: gives back every message fetched but not handed out
    /// (including held delayed messages) and anything dropped unsettled.
    /// Deliveries already handed out stay valid and can still be settled.
    pub async fn close(mut self) -> Result<(), BrokerError> {
        self.heartbeat = None;
        let mut unsent: Vec<Delivery> = self.ready.drain(..).collect();
        unsent.extend(self.delayed.drain().map(|delayed| delayed.delivery));
        requeue_all(&self.broker, unsent).await?;
        if let Broker::Redis(redis) = &self.broker {
            redis.flush(&self.queue).await?;
            redis.flush(&self.delay_queue).await?;
        }
        Ok(())
    }

    fn start_heartbeat(&mut self) {
        let Broker::Redis(redis) = &self.broker else {
            return;
        };
        if self.heartbeat.is_some() {
            return;
        }
        // Keeps this broker alive in `__heartbeats__` while the worker is
        // busy and not fetching, so its unacked messages are not requeued
        // under it. Stops when the consumer is closed or dropped.
        let redis = redis.clone();
        let queue = self.queue.to_string();
        let period = redis.heartbeat_period();
        self.heartbeat = Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                redis.heartbeat(&queue, period).await;
            }
        })));
    }

    fn hand_out(&self, mut delivery: Delivery) -> Delivery {
        self.handed_out.send_modify(|count| *count += 1);
        if let Some(lease) = &mut delivery.lease {
            lease.handed_out = Some(self.handed_out.clone());
        }
        delivery
    }

    /// Fetches into the free prefetch slots of both queues. True if
    /// anything was fetched.
    async fn refill(&mut self, deadline: Instant) -> Result<bool, BrokerError> {
        let mut fetched_any = false;
        let room = self
            .prefetch
            .saturating_sub(self.handed_out() + self.ready.len());
        if room > 0 {
            fetched_any |= self.fetch(Source::Queue, room, deadline).await?;
        }
        let delay_room = self.delay_prefetch.saturating_sub(self.delayed.len());
        if delay_room > 0 {
            fetched_any |= self.fetch(Source::DelayQueue, delay_room, deadline).await?;
        }
        Ok(fetched_any)
    }

    async fn fetch(
        &mut self,
        source: Source,
        count: usize,
        deadline: Instant,
    ) -> Result<bool, BrokerError> {
        let queue = match source {
            Source::Queue => self.queue.clone(),
            Source::DelayQueue => self.delay_queue.clone(),
        };
        let fetched: Vec<Fetched> = match &self.broker {
            Broker::Memory(memory) => memory
                .fetch(&queue, count)
                .into_iter()
                .map(|(id, message)| Fetched {
                    id,
                    body: FetchedBody::Message(message),
                })
                .collect(),
            Broker::Redis(redis) => redis.fetch(&queue, count, deadline).await?,
        };
        let fetched_any = !fetched.is_empty();
        // Wrap every entry in a lease before the first await, so that an
        // error or a cancellation below gives the rest back instead of
        // stranding them in the ack set.
        let entries: Vec<(Delivery, Option<MessageError>)> = fetched
            .into_iter()
            .filter_map(|Fetched { id, body }| {
                // Only Redis stores bytes that are not a message, and a Redis
                // settle moves the stored bytes: the empty message is never
                // read.
                let (message, problem) = match body {
                    FetchedBody::Message(message) => (message, None),
                    FetchedBody::Malformed(error) => {
                        (Arc::new(Message::placeholder()), Some(Some(error)))
                    }
                    FetchedBody::Missing => (Arc::new(Message::placeholder()), Some(None)),
                };
                let lease = Lease {
                    broker: self.broker.clone(),
                    queue: queue.clone(),
                    id,
                    handed_out: None,
                };
                let delivery = Delivery {
                    message,
                    lease: Some(lease),
                };
                match problem {
                    None => {
                        match source {
                            Source::Queue => self.ready.push_back(delivery),
                            Source::DelayQueue => self.hold(delivery),
                        }
                        None
                    }
                    Some(error) => Some((delivery, error)),
                }
            })
            .collect();
        for (delivery, error) in entries {
            match error {
                Some(error) => {
                    tracing::warn!(
                        queue = %queue,
                        redis_message_id = %delivery.redis_message_id(),
                        error = %error,
                        "dead-lettering malformed message"
                    );
                    delivery.nack().await?;
                }
                None => {
                    tracing::debug!(
                        queue = %queue,
                        redis_message_id = %delivery.redis_message_id(),
                        "dropping an id whose message body is gone"
                    );
                    delivery.ack().await?;
                }
            }
        }
        Ok(fetched_any)
    }

    /// Holds a delay-queue delivery until its eta. A missing eta means due
    /// now; an eta that is not a number is warned about and due now, as in
    /// Dramatiq.
    fn hold(&mut self, delivery: Delivery) {
        let eta = delivery.message.eta().unwrap_or_else(|| {
            if let Some(bad) = delivery.message.options.get(OPTION_ETA) {
                tracing::warn!(
                    queue = %self.delay_queue,
                    message_id = %delivery.message.message_id,
                    eta = %bad,
                    "invalid eta; treating the message as due now"
                );
            }
            current_millis()
        });
        self.delayed_seq += 1;
        self.delayed.push(Delayed {
            eta,
            seq: self.delayed_seq,
            delivery,
        });
    }

    /// Moves every held delayed message whose eta has passed to the queue,
    /// then acks its delay-queue copy. During a Redis outage that outlasts
    /// `deadline`, the message stays held for the next call.
    async fn promote_due(&mut self, deadline: Instant) -> Result<(), BrokerError> {
        while self
            .delayed
            .peek()
            .is_some_and(|top| top.eta <= current_millis())
        {
            let Delayed {
                eta,
                seq,
                mut delivery,
            } = self.delayed.pop().expect("peeked");
            // The consumer holds the only share of a delivery it has not
            // handed out, so this changes it in place, without a copy. The
            // delay-queue copy is acked below; only its lease id is used.
            let message = Arc::make_mut(&mut delivery.message);
            message.queue_name = self.queue.to_string();
            message.remove_eta();
            stamp_for_enqueue(message, None);
            match &self.broker {
                Broker::Memory(memory) => memory.push(delivery.message.clone()),
                Broker::Redis(redis) => {
                    if !redis.push(&delivery.message, Some(deadline)).await? {
                        self.delayed.push(Delayed { eta, seq, delivery });
                        return Ok(());
                    }
                }
            }
            delivery.ack().await?;
        }
        Ok(())
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("ready", &self.ready.len())
            .field("delayed", &self.delayed.len())
            .field("handed_out", &self.handed_out())
            .finish()
    }
}

impl Delivery {
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// A share of the message (no copy of its arguments), for whatever must
    /// outlive a borrow of the delivery: an actor's coroutine, say. It
    /// cannot be changed, so the delivery's nack still dead-letters the
    /// message as it was fetched.
    pub fn shared_message(&self) -> Arc<Message> {
        self.message.clone()
    }

    /// The queue this delivery came from.
    pub fn queue_name(&self) -> &str {
        self.lease.as_ref().map_or("", |lease| &lease.queue)
    }

    /// The id it is stored under (its `redis_message_id`).
    pub fn redis_message_id(&self) -> &str {
        self.lease.as_ref().map_or("", |lease| &lease.id)
    }

    /// Done: deletes the message. Waits through Redis outages. On an error
    /// the message is given back to its queue.
    pub async fn ack(mut self) -> Result<(), BrokerError> {
        self.settle(Settlement::Ack).await
    }

    /// Failed for good: moves the message to the canonical queue's
    /// dead-letter queue. Waits through Redis outages.
    pub async fn nack(mut self) -> Result<(), BrokerError> {
        self.settle(Settlement::Nack).await
    }

    /// Not run: puts the message back at the tail of its queue.
    pub async fn requeue(mut self) -> Result<(), BrokerError> {
        self.settle(Settlement::Requeue).await
    }

    async fn settle(&mut self, settlement: Settlement) -> Result<(), BrokerError> {
        let lease = self
            .lease
            .as_mut()
            .expect("an unsettled delivery has a lease");
        match &lease.broker {
            Broker::Memory(memory) => {
                let settle = match settlement {
                    Settlement::Ack => MemorySettle::Ack,
                    Settlement::Nack => MemorySettle::Nack(self.message.clone()),
                    Settlement::Requeue => MemorySettle::Requeue(self.message.clone()),
                };
                memory.settle(&lease.queue, &lease.id, settle);
            }
            Broker::Redis(redis) => {
                let settle = match settlement {
                    Settlement::Ack => RedisSettle::Ack,
                    Settlement::Nack => RedisSettle::Nack,
                    Settlement::Requeue => RedisSettle::Requeue,
                };
                redis.settle(&lease.queue, &lease.id, settle).await?;
            }
        }
        self.lease = None;
        Ok(())
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        match &lease.broker {
            Broker::Memory(memory) => {
                memory.settle(
                    &lease.queue,
                    &lease.id,
                    MemorySettle::Requeue(self.message.clone()),
                );
            }
            Broker::Redis(redis) => redis.abandon(&lease.queue, &lease.id),
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue_name())
            .field("redis_message_id", &self.redis_message_id())
            .field("message_id", &self.message.message_id)
            .field("actor_name", &self.message.actor_name)
            .field("settled", &self.lease.is_none())
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(handed_out) = &self.handed_out {
            handed_out.send_modify(|count| *count = count.saturating_sub(1));
        }
    }
}

#[derive(Clone, Copy)]
enum Settlement {
    Ack,
    Nack,
    Requeue,
}

/// A held delayed message, ordered so the heap's top is the earliest eta
/// (first fetched first among equal etas).
struct Delayed {
    eta: u64,
    seq: u64,
    delivery: Delivery,
}

impl Ord for Delayed {
    fn cmp(&self, other: &Delayed) -> Ordering {
        (other.eta, other.seq).cmp(&(self.eta, self.seq))
    }
}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Delayed) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Delayed) -> bool {
        (self.eta, self.seq) == (other.eta, other.seq)
    }
}

impl Eq for Delayed {}

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves when `receiver` sees a new value; never without a receiver.
async fn changed(receiver: Option<&mut watch::Receiver<u64>>) {
    match receiver {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

async fn requeue_all(broker: &Broker, deliveries: Vec<Delivery>) -> Result<(), BrokerError> {
    match broker {
        Broker::Memory(_) => {
            for delivery in deliveries {
                delivery.requeue().await?;
            }
            Ok(())
        }
        Broker::Redis(redis) => {
            let mut by_queue: Vec<(Arc<str>, Vec<Delivery>)> = Vec::new();
            for delivery in deliveries {
                let Some(lease) = &delivery.lease else {
                    continue;
                };
                let queue = lease.queue.clone();
                match by_queue.iter_mut().find(|(name, _)| *name == queue) {
                    Some((_, group)) => group.push(delivery),
                    None => by_queue.push((queue, vec![delivery])),
                }
            }
            for (queue, mut group) in by_queue {
                let ids: Vec<String> = group
                    .iter()
                    .filter_map(|delivery| delivery.lease.as_ref().map(|lease| lease.id.clone()))
                    .collect();
                // On an error the group is dropped unsettled: given back later.
                redis.requeue(&queue, &ids).await?;
                for delivery in &mut group {
                    delivery.lease = None;
                }
            }
            Ok(())
        }
    }
}
