//! The Redis broker: Dramatiq 2.0's Redis layout and semantics.
//!
//! Every operation is one call of our dispatcher script (`dispatch.lua`,
//! loaded with `include_str!`) with Dramatiq's argument convention, so the
//! keys, ack sets, heartbeats, dead letters and maintenance are the ones a
//! Python Dramatiq worker reads and writes. Every call records this broker's
//! heartbeat; calls other than ack and nack run maintenance first with a
//! configurable chance (requeue dead workers' unacked messages, drop
//! expired dead letters).
//!
//! Outages: when Redis goes away, every operation waits and retries with
//! capped exponential backoff on a fresh connection (logged once per outage)
//! and goes on when Redis is back. Enqueue, ack, nack and requeue are
//! idempotent in the script, so retrying one whose reply was lost does no
//! harm. A fetch whose reply is lost leaves ids in this broker's ack set that
//! nobody here knows about; the broker remembers which ids it holds and, on
//! the next fetch of that queue, gives back every other id of its ack set
//! (`recover`). Fetches and recoveries of a queue exclude each other so a
//! recovery never mistakes an in-flight fetch for a lost one.
//!
//! Locks: `holdings` is a plain mutex held for bookkeeping only, never across
//! an await. The per-queue gate is an async read/write lock held across the
//! fetch or recover call it protects.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::{Cmd, ErrorKind, FromRedisValue, Value};
use tokio::sync::RwLock;

use super::{defaults, BrokerError, DeadLetter, Fetched, FetchedBody};
use crate::lab::message::{q_name, Message};
use crate::lab::redis_link::{Failure, LinkTimeouts, RedisLink};

const DISPATCH_SCRIPT: &str = include_str!("dispatch.lua");

/// Maintenance chance is out of this many calls.
const MAINTENANCE_SCALE: u32 = 1_000_000;

/// Settings of a [`RedisBroker`]. Start from [`RedisConfig::new`] and set
/// fields; every default is in [`defaults`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]`
    pub url: String,
    /// Prefix of every key (`dramatiq`).
    pub namespace: String,
    /// A worker silent for this long is dead (60 s).
    pub heartbeat_timeout: Duration,
    /// Dead letters older than this are dropped by maintenance (7 days).
    pub dead_message_ttl: Duration,
    /// Calls out of a million that run maintenance first (1,000). Tests
    /// use 1,000,000 to make every call maintain.
    pub maintenance_chance: u32,
    /// Largest batch the script unpacks at once (3,996).
    pub max_unpack_size: usize,
    /// Longest pause between polls of an idle queue (1 s).
    pub idle_poll_max: Duration,
    /// Longest pause between reconnect attempts (2 s).
    pub reconnect_max_backoff: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// Dramatiq's defaults for a Redis at `url`.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            namespace: defaults::NAMESPACE.to_owned(),
            heartbeat_timeout: defaults::HEARTBEAT_TIMEOUT,
            dead_message_ttl: defaults::DEAD_MESSAGE_TTL,
            maintenance_chance: defaults::MAINTENANCE_CHANCE,
            max_unpack_size: defaults::MAX_UNPACK_SIZE,
            idle_poll_max: defaults::IDLE_POLL_MAX,
            reconnect_max_backoff: defaults::RECONNECT_MAX_BACKOFF,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            response_timeout: defaults::RESPONSE_TIMEOUT,
        }
    }
}

/// A broker on Redis. Clones share one connection and one worker id.
#[derive(Clone)]
pub struct RedisBroker {
    core: Arc<Core>,
}

struct Core {
    config: RedisConfig,
    worker_id: String,
    link: RedisLink,
    script: redis::Script,
    holdings: Mutex<HashMap<String, Holdings>>,
    /// When the last dispatcher call succeeded, ms after `started`.
    last_call_ms: AtomicU64,
    started: Instant,
}

/// What this broker instance holds of one queue.
#[derive(Default)]
struct Holdings {
    /// Ids fetched and not yet settled (cached, delayed or handed out).
    held: HashSet<String>,
    /// Ids dropped unsettled, to give back on the next occasion.
    orphans: Vec<String>,
    /// A fetch's reply may have been lost: reconcile the ack set.
    suspect: bool,
    /// A flush of orphans is already scheduled.
    flush_scheduled: bool,
    /// Fetches share it, a recovery takes it alone.
    gate: Arc<RwLock<()>>,
}

/// How a fetched message is settled.
#[derive(Clone, Copy, Debug)]
pub(super) enum Settle {
    Ack,
    Nack,
    Requeue,
}

impl Settle {
    fn command(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Nack => "nack",
            Settle::Requeue => "requeue",
        }
    }
}

impl RedisBroker {
    /// Connects to `config.url` and loads the dispatcher. Fails fast if Redis
    /// cannot be reached now (a wrong URL should not hang); once connected,
    /// later outages are waited out instead.
    pub async fn connect(config: RedisConfig) -> Result<RedisBroker, BrokerError> {
        let timeouts = LinkTimeouts {
            connect: config.connect_timeout,
            response: config.response_timeout,
            reconnect_max_backoff: config.reconnect_max_backoff,
        };
        let link =
            RedisLink::new(&config.url, timeouts).map_err(|source| BrokerError::InvalidUrl {
                url: config.url.clone(),
                source,
            })?;
        let script = redis::Script::new(DISPATCH_SCRIPT);
        link.first_query::<String>(&load_script(DISPATCH_SCRIPT))
            .await
            .map_err(|source| BrokerError::Unreachable {
                url: link.display_url().to_owned(),
                source,
            })?;
        Ok(RedisBroker {
            core: Arc::new(Core {
                config,
                worker_id: uuid::Uuid::new_v4().to_string(),
                link,
                script,
                holdings: Mutex::new(HashMap::new()),
                last_call_ms: AtomicU64::new(0),
                started: Instant::now(),
            }),
        })
    }

    /// This instance's worker id (Dramatiq's `broker_id`), a UUID v4.
    pub fn worker_id(&self) -> &str {
        &self.core.worker_id
    }

    pub fn config(&self) -> &RedisConfig {
        &self.core.config
    }

    /// Stores a stamped message on `message.queue_name`. Returns false if
    /// `deadline` passed during an outage before it could be stored.
    pub(super) async fn push(
        &self,
        message: &Message,
        deadline: Option<Instant>,
    ) -> Result<bool, BrokerError> {
        let id = message
            .redis_message_id()
            .expect("stamped messages carry a redis_message_id");
        let body = message.encode();
        let stored = self
            .core
            .dispatch::<Value>(
                "enqueue",
                &message.queue_name,
                &[id.as_bytes(), &body],
                deadline,
            )
            .await?;
        Ok(stored.is_some())
    }

    /// Fetches up to `count` messages of `queue` into this broker's ack set.
    /// One attempt: during an outage it pauses (at most until `deadline`)
    /// and returns nothing, so the caller's loop decides when to give up.
    pub(super) async fn fetch(
        &self,
        queue: &str,
        count: usize,
        deadline: Instant,
    ) -> Result<Vec<Fetched>, BrokerError> {
        let core = &self.core;
        core.reconcile(queue, Some(deadline)).await?;
        let gate = core.holdings(queue).gate.clone();
        let _shared = gate.read().await;
        let mut lost_reply = SuspectUnlessDisarmed {
            core,
            queue,
            armed: true,
        };
        let count = count.to_string();
        let reply = match core
            .dispatch_once::<Value>("fetch", queue, &[count.as_bytes()])
            .await
        {
            Ok(reply) => reply,
            Err(Failure::Transient) => {
                // The ids may have moved into our ack set: leave `armed`.
                drop(lost_reply);
                core.link.pause(Some(deadline)).await;
                return Ok(Vec::new());
            }
            Err(Failure::Fatal(source)) => {
                lost_reply.armed = false;
                return Err(core.rejected("fetch", source));
            }
        };
        let fetched = parse_fetch_reply(reply)?;
        let mut holdings = core.holdings(queue);
        holdings
            .held
            .extend(fetched.iter().map(|entry| entry.id.clone()));
        lost_reply.armed = false;
        Ok(fetched)
    }

    /// Settles one fetched message, retrying through outages until done.
    pub(super) async fn settle(
        &self,
        queue: &str,
        id: &str,
        settle: Settle,
    ) -> Result<(), BrokerError> {
        self.core
            .dispatch::<Value>(settle.command(), queue, &[id.as_bytes()], None)
            .await?;
        self.core.holdings(queue).held.remove(id);
        Ok(())
    }

    /// Gives fetched messages back to `queue` in one call, retrying through
    /// outages until done.
    pub(super) async fn requeue(&self, queue: &str, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        for batch in ids.chunks(self.core.config.max_unpack_size.max(1)) {
            let args: Vec<&[u8]> = batch.iter().map(|id| id.as_bytes()).collect();
            self.core
                .dispatch::<Value>("requeue", queue, &args, None)
                .await?;
            let mut holdings = self.core.holdings(queue);
            for id in batch {
                holdings.held.remove(id);
            }
        }
        Ok(())
    }

    /// A fetched message was dropped unsettled: give it back soon, from a
    /// background task if a runtime is running, else on the next fetch.
    pub(super) fn abandon(&self, queue: &str, id: &str) {
        let schedule = {
            let mut holdings = self.core.holdings(queue);
            holdings.held.remove(id);
            holdings.orphans.push(id.to_owned());
            !std::mem::replace(&mut holdings.flush_scheduled, true)
        };
        if !schedule {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let core = self.core.clone();
                let queue = queue.to_owned();
                runtime.spawn(async move {
                    core.holdings(&queue).flush_scheduled = false;
                    if let Err(error) = core.reconcile(&queue, None).await {
                        tracing::warn!(queue = %queue, error = %error, "could not give back dropped messages");
                    }
                });
            }
            Err(_) => self.core.holdings(queue).flush_scheduled = false,
        }
    }

    /// Gives back orphans and lost fetches of `queue` now.
    pub(super) async fn flush(&self, queue: &str) -> Result<(), BrokerError> {
        self.core.reconcile(queue, None).await
    }

    /// Records a heartbeat unless another call did within `period`. One
    /// attempt; a failure is left to the next beat.
    pub(super) async fn heartbeat(&self, queue: &str, period: Duration) {
        let core = &self.core;
        let since_last = core.started.elapsed().saturating_sub(Duration::from_millis(
            core.last_call_ms.load(Ordering::Relaxed),
        ));
        if since_last < period {
            return;
        }
        let _ = core.dispatch_once::<Value>("heartbeat", queue, &[]).await;
    }

    pub(super) async fn qsize(&self, queue: &str) -> Result<usize, BrokerError> {
        let size = self
            .core
            .dispatch::<usize>("qsize", q_name(queue), &[], None)
            .await?
            .unwrap_or(0);
        Ok(size)
    }

    pub(super) async fn purge(&self, queue: &str) -> Result<(), BrokerError> {
        let canonical = q_name(queue);
        for name in [canonical.to_owned(), format!("{canonical}.DQ")] {
            self.core
                .dispatch::<Value>("purge", &name, &[], None)
                .await?;
            self.core.holdings(&name).held.clear();
        }
        Ok(())
    }

    pub(super) async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, BrokerError> {
        let reply = self
            .core
            .dispatch::<Value>("dead_letters", q_name(queue), &[], None)
            .await?
            .unwrap_or(Value::Nil);
        parse_dead_letters_reply(reply)
    }

    /// How often a consumer should make sure this broker is seen alive.
    pub(super) fn heartbeat_period(&self) -> Duration {
        (self.core.config.heartbeat_timeout / 4).max(Duration::from_millis(10))
    }

    pub(super) fn idle_poll_max(&self) -> Duration {
        self.core.config.idle_poll_max
    }
}

impl Core {
    fn holdings(&self, queue: &str) -> MappedHoldings<'_> {
        let mut all = self
            .holdings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        all.entry(queue.to_owned()).or_default();
        MappedHoldings {
            all,
            queue: queue.to_owned(),
        }
    }

    /// The EVALSHA call of one dispatcher command, stamped now.
    fn dispatch_cmd(&self, command: &str, queue: &str, args: &[&[u8]]) -> Cmd {
        let config = &self.config;
        let maintain = !matches!(command, "ack" | "nack")
            && rand::thread_rng().gen_range(1..=MAINTENANCE_SCALE) <= config.maintenance_chance;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(1)
            .arg(&config.namespace)
            .arg(command)
            .arg(crate::lab::message::current_millis())
            .arg(queue)
            .arg(&self.worker_id)
            .arg(config.heartbeat_timeout.as_millis() as u64)
            .arg(config.dead_message_ttl.as_millis() as u64)
            .arg(if maintain { "1" } else { "0" })
            .arg(config.max_unpack_size);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }

    /// One attempt of a dispatcher command, loading the script first if
    /// Redis lost it (after a restart).
    async fn dispatch_once<T: FromRedisValue>(
        &self,
        command: &str,
        queue: &str,
        args: &[&[u8]],
    ) -> Result<T, Failure> {
        let cmd = self.dispatch_cmd(command, queue, args);
        let result = match self.link.query(&cmd).await {
            Err(Failure::Fatal(error)) if error.kind() == ErrorKind::NoScriptError => {
                self.link
                    .query::<String>(&load_script(DISPATCH_SCRIPT))
                    .await?;
                self.link.query(&cmd).await
            }
            other => other,
        };
        if result.is_ok() {
            self.last_call_ms
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        result
    }

    /// A dispatcher command retried through outages. `Ok(None)` if
    /// `deadline` passed first.
    async fn dispatch<T: FromRedisValue>(
        &self,
        command: &'static str,
        queue: &str,
        args: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<Option<T>, BrokerError> {
        loop {
            match self.dispatch_once(command, queue, args).await {
                Ok(reply) => return Ok(Some(reply)),
                Err(Failure::Fatal(source)) => return Err(self.rejected(command, source)),
                Err(Failure::Transient) => {
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        return Ok(None);
                    }
                    self.link.pause(deadline).await;
                }
            }
        }
    }

    fn rejected(&self, command: &'static str, source: redis::RedisError) -> BrokerError {
        BrokerError::Rejected {
            url: self.link.display_url().to_owned(),
            command,
            source,
        }
    }

    fn mark_suspect(&self, queue: &str) {
        self.holdings(queue).suspect = true;
    }

    /// Gives back this broker's orphans of `queue` and, after a lost fetch
    /// reply, every id of its ack set it does not know it holds.
    async fn reconcile(&self, queue: &str, deadline: Option<Instant>) -> Result<(), BrokerError> {
        let gate = {
            let holdings = self.holdings(queue);
            if holdings.orphans.is_empty() && !holdings.suspect {
                return Ok(());
            }
            holdings.gate.clone()
        };
        let _exclusive = gate.write().await;

        let orphans = std::mem::take(&mut self.holdings(queue).orphans);
        if !orphans.is_empty() {
            let args: Vec<&[u8]> = orphans.iter().map(|id| id.as_bytes()).collect();
            let done = self
                .dispatch::<Value>("requeue", queue, &args, deadline)
                .await;
            if !matches!(done, Ok(Some(_))) {
                self.holdings(queue).orphans.extend(orphans);
                return done.map(|_| ());
            }
        }

        let held: Option<Vec<String>> = {
            let holdings = self.holdings(queue);
            holdings
                .suspect
                .then(|| holdings.held.iter().cloned().collect())
        };
        if let Some(held) = held {
            let args: Vec<&[u8]> = held.iter().map(|id| id.as_bytes()).collect();
            if let Some(recovered) = self
                .dispatch::<u64>("recover", queue, &args, deadline)
                .await?
            {
                self.holdings(queue).suspect = false;
                if recovered > 0 {
                    tracing::info!(
                        queue,
                        recovered,
                        "gave back messages whose fetch reply was lost"
                    );
                }
            }
        }
        Ok(())
    }
}

/// The holdings of one queue, borrowed from the locked map.
struct MappedHoldings<'a> {
    all: MutexGuard<'a, HashMap<String, Holdings>>,
    queue: String,
}

impl std::ops::Deref for MappedHoldings<'_> {
    type Target = Holdings;

    fn deref(&self) -> &Holdings {
        &self.all[&self.queue]
    }
}

impl std::ops::DerefMut for MappedHoldings<'_> {
    fn deref_mut(&mut self) -> &mut Holdings {
        self.all
            .get_mut(&self.queue)
            .expect("holdings inserted on lock")
    }
}

/// Marks the queue suspect if a fetch ends (error or cancellation) without
/// having recorded what it fetched.
struct SuspectUnlessDisarmed<'a> {
    core: &'a Core,
    queue: &'a str,
    armed: bool,
}

impl Drop for SuspectUnlessDisarmed<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.core.mark_suspect(self.queue);
        }
    }
}

fn load_script(source: &str) -> Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(source);
    cmd
}

fn unexpected(command: &'static str, detail: impl Into<String>) -> BrokerError {
    BrokerError::UnexpectedReply {
        command,
        detail: detail.into(),
    }
}

fn into_items(command: &'static str, reply: Value) -> Result<Vec<Value>, BrokerError> {
    match reply {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(
            command,
            format!("expected an array, got {other:?}"),
        )),
    }
}

fn into_text(command: &'static str, value: Value) -> Result<String, BrokerError> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes).map_err(|_| unexpected(command, "an id is not UTF-8"))
        }
        Value::SimpleString(text) => Ok(text),
        other => Err(unexpected(
            command,
            format!("expected a string, got {other:?}"),
        )),
    }
}

fn into_body(command: &'static str, value: Value) -> Result<Option<Vec<u8>>, BrokerError> {
    match value {
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::Nil => Ok(None),
        other => Err(unexpected(
            command,
            format!("expected a message body, got {other:?}"),
        )),
    }
}

/// `{id1, json1, id2, json2, ...}`, a json nil when its body is gone.
fn parse_fetch_reply(reply: Value) -> Result<Vec<Fetched>, BrokerError> {
    let mut items = into_items("fetch", reply)?.into_iter();
    let mut fetched = Vec::with_capacity(items.len() / 2);
    while let Some(id) = items.next() {
        let id = into_text("fetch", id)?;
        let body = match into_body("fetch", items.next().unwrap_or(Value::Nil))? {
            None => FetchedBody::Missing,
            Some(bytes) => match Message::decode(&bytes) {
                Ok(message) => FetchedBody::Message(Arc::new(message)),
                Err(error) => FetchedBody::Malformed(error),
            },
        };
        fetched.push(Fetched { id, body });
    }
    Ok(fetched)
}

/// `{id1, score1, json1, ...}` oldest first.
fn parse_dead_letters_reply(reply: Value) -> Result<Vec<DeadLetter>, BrokerError> {
    let mut items = into_items("dead_letters", reply)?.into_iter();
    let mut letters = Vec::new();
    while let Some(id) = items.next() {
        let redis_message_id = into_text("dead_letters", id)?;
        let score = into_text("dead_letters", items.next().unwrap_or(Value::Nil))?;
        let dead_lettered_at = score
            .parse::<f64>()
            .map_err(|_| unexpected("dead_letters", format!("score {score:?} is not a number")))?
            as u64;
        let body =
            into_body("dead_letters", items.next().unwrap_or(Value::Nil))?.unwrap_or_default();
        letters.push(DeadLetter {
            redis_message_id,
            dead_lettered_at,
            message: Message::decode(&body),
        });
    }
    Ok(letters)
}
