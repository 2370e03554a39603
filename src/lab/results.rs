//! Result backends for the Results middleware: where an actor's return
//! value waits, for a limited time, until someone asks for it.
//!
//! Both backends store the result's JSON (as Python's encoder writes it,
//! see [`encode_result`]) under Dramatiq's key for the message
//! ([`result_key`]) for a TTL, 10 minutes by default:
//!
//! - [`MemoryResults`]: in this process. The stored bytes are released at
//!   their TTL by a background task, promptly, and whoever registered with
//!   [`MemoryResults::on_expired`] is told, so the lab can mark the moment a
//!   retained result stops being retained.
//! - [`RedisResults`]: Dramatiq's `RedisBackend` layout, so Python can read a
//!   result stored here and the other way round: the key holds a list whose
//!   only element is the JSON, with a `PEXPIRE` of the TTL.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
// Tokio's clock, so a paused test clock drives expiry too.
use tokio::time::Instant;

use super::broker::defaults as broker_defaults;
use super::message::{q_name, Message};
use super::python_json;
use super::redis_link::{Failure, LinkTimeouts, RedisLink};

/// Dramatiq's default namespace of result keys.
pub const DEFAULT_NAMESPACE: &str = "dramatiq-results";

/// Dramatiq's default result TTL: 10 minutes.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_millis(600_000);

/// Marks a stored exception in Dramatiq's result encoding.
const EXCEPTION_CANARY: &str = "dramatiq.results.Result";

/// The key a message's result is stored under: the md5 hex digest of
/// `<namespace>:<canonical queue>:<actor>:<message id>`, as Dramatiq's
/// `ResultBackend.build_message_key` builds it. A retried message keeps its
/// key (same message id, same canonical queue).
pub fn result_key(namespace: &str, message: &Message) -> String {
    let name = format!(
        "{namespace}:{}:{}:{}",
        q_name(&message.queue_name),
        message.actor_name,
        message.message_id
    );
    let digest = Md5::digest(name.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A returned value as Dramatiq stores it: its JSON, Python-encoded.
pub fn encode_result(value: &Value) -> Vec<u8> {
    python_json::to_vec(value)
}

/// A raised exception as Dramatiq's Results middleware stores it
/// (`{"__t":"dramatiq.results.Result","exn":{"type":...,"msg":...}}`).
pub fn encode_exception(type_name: &str, message: &str) -> Vec<u8> {
    // Structs, not maps: their fields serialize in declaration order, which
    // is Python's dict order here (a serde_json map would sort `msg` first).
    #[derive(Serialize)]
    struct StoredException<'a> {
        #[serde(rename = "__t")]
        canary: &'static str,
        exn: ExceptionInfo<'a>,
    }
    #[derive(Serialize)]
    struct ExceptionInfo<'a> {
        #[serde(rename = "type")]
        type_name: &'a str,
        msg: &'a str,
    }
    python_json::to_vec(&StoredException {
        canary: EXCEPTION_CANARY,
        exn: ExceptionInfo {
            type_name,
            msg: message,
        },
    })
}

/// Why a result backend operation failed. Redis outages are waited out.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("invalid Redis URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot connect to Redis at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis at {url} rejected `{command}`: {source}")]
    Rejected {
        url: String,
        command: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

/// A result backend of either kind.
#[derive(Clone)]
pub enum ResultBackend {
    Memory(MemoryResults),
    Redis(RedisResults),
}

impl ResultBackend {
    /// The namespace [`result_key`] is built with.
    pub fn namespace(&self) -> &str {
        match self {
            ResultBackend::Memory(results) => results.namespace(),
            ResultBackend::Redis(results) => results.namespace(),
        }
    }

    /// The key `message`'s result is stored under in this backend.
    pub fn key_for(&self, message: &Message) -> String {
        result_key(self.namespace(), message)
    }

    /// Stores `encoded` (see [`encode_result`]) under `key` for `ttl`,
    /// replacing what was there.
    pub async fn store(
        &self,
        key: &str,
        encoded: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), ResultsError> {
        match self {
            ResultBackend::Memory(results) => {
                results.store(key, encoded, ttl);
                Ok(())
            }
            ResultBackend::Redis(results) => results.store(key, encoded, ttl).await,
        }
    }

    /// Results this process holds in memory (0 for Redis, which holds
    /// them itself).
    pub fn held_in_process(&self) -> usize {
        match self {
            ResultBackend::Memory(results) => results.len(),
            ResultBackend::Redis(_) => 0,
        }
    }

    /// The stored JSON under `key`, if any and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Arc<Vec<u8>>>, ResultsError> {
        match self {
            ResultBackend::Memory(results) => Ok(results.get(key)),
            ResultBackend::Redis(results) => Ok(results.get(key).await?.map(Arc::new)),
        }
    }
}

/// A stored result that reached its TTL and was released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub key: String,
    /// Size of the stored JSON.
    pub bytes: usize,
    /// How long it was stored (its TTL, give or take the timer's resolution).
    pub stored_for: Duration,
}

type ExpiryHook = Arc<dyn Fn(&Expired) + Send + Sync>;

/// Results kept in this process until their TTL. Clones share the store.
///
/// Needs a tokio runtime for [`MemoryResults::store`] (it starts the expiry
/// task on first use). The expiry task holds no strong reference to the
/// store and stops when the last clone is dropped.
#[derive(Clone)]
pub struct MemoryResults {
    shared: Arc<MemoryShared>,
}

struct MemoryShared {
    namespace: String,
    store: Mutex<Store>,
    /// Raised when an entry with an earlier deadline may have been added.
    rescheduled: Arc<Notify>,
    hooks: Mutex<Vec<ExpiryHook>>,
    expiry_task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Store {
    entries: HashMap<String, Stored>,
    /// (deadline, generation, key); stale when the key was stored again.
    deadlines: BinaryHeap<Reverse<(Instant, u64, String)>>,
    generation: u64,
}

struct Stored {
    value: Arc<Vec<u8>>,
    stored_at: Instant,
    expires_at: Instant,
    generation: u64,
}

impl MemoryResults {
    /// An empty store with Dramatiq's default namespace.
    pub fn new() -> MemoryResults {
        MemoryResults::with_namespace(DEFAULT_NAMESPACE)
    }

    pub fn with_namespace(namespace: impl Into<String>) -> MemoryResults {
        MemoryResults {
            shared: Arc::new(MemoryShared {
                namespace: namespace.into(),
                store: Mutex::new(Store::default()),
                rescheduled: Arc::new(Notify::new()),
                hooks: Mutex::new(Vec::new()),
                expiry_task: Mutex::new(None),
            }),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// Calls `hook` (on the expiry task) for every result released at its
    /// TTL from now on. Keep it short; it must not call back into the store.
    pub fn on_expired(&self, hook: impl Fn(&Expired) + Send + Sync + 'static) {
        lock(&self.shared.hooks).push(Arc::new(hook));
    }

    /// Stores `encoded` under `key` until `ttl` from now, replacing (and
    /// releasing) any previous value without an expiry event.
    pub fn store(&self, key: &str, encoded: Vec<u8>, ttl: Duration) {
        self.ensure_expiry_task();
        let now = Instant::now();
        let expires_at = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        let replaced = {
            let mut store = lock(&self.shared.store);
            store.generation += 1;
            let generation = store.generation;
            store
                .deadlines
                .push(Reverse((expires_at, generation, key.to_owned())));
            store.entries.insert(
                key.to_owned(),
                Stored {
                    value: Arc::new(encoded),
                    stored_at: now,
                    expires_at,
                    generation,
                },
            )
        };
        drop(replaced);
        self.shared.rescheduled.notify_one();
    }

    /// The stored JSON under `key`, unless missing or past its TTL.
    pub fn get(&self, key: &str) -> Option<Arc<Vec<u8>>> {
        let store = lock(&self.shared.store);
        let stored = store.entries.get(key)?;
        (stored.expires_at > Instant::now()).then(|| stored.value.clone())
    }

    /// Results currently stored.
    pub fn len(&self) -> usize {
        lock(&self.shared.store).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ensure_expiry_task(&self) {
        let mut task = lock(&self.shared.expiry_task);
        if task.is_none() {
            let shared = Arc::downgrade(&self.shared);
            let rescheduled = self.shared.rescheduled.clone();
            *task = Some(tokio::spawn(expire_results(shared, rescheduled)));
        }
    }
}

impl Default for MemoryResults {
    fn default() -> MemoryResults {
        MemoryResults::new()
    }
}

impl fmt::Debug for MemoryResults {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("MemoryResults")
            .field("namespace", &self.shared.namespace)
            .field("len", &self.len())
            .finish()
    }
}

impl Drop for MemoryShared {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.expiry_task).take() {
            task.abort();
        }
    }
}

/// Releases results at their deadlines until the store is dropped.
async fn expire_results(shared: Weak<MemoryShared>, rescheduled: Arc<Notify>) {
    loop {
        let next_deadline = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            // One at a time: each hook runs once its result is gone and
            // before the next is released, so a hook that measures memory
            // (the lab's `result expired` mark) sees each release alone.
            while let Some(event) = release_next_due(&shared) {
                let hooks: Vec<ExpiryHook> = lock(&shared.hooks).clone();
                for hook in &hooks {
                    hook(&event);
                }
            }
            let store = lock(&shared.store);
            store
                .deadlines
                .peek()
                .map(|Reverse((deadline, _, _))| *deadline)
        };
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = rescheduled.notified() => {}
                }
            }
            None => rescheduled.notified().await,
        }
    }
}

/// Removes the earliest entry past its deadline, if any; its value is
/// dropped after the lock is released (and before this returns).
fn release_next_due(shared: &MemoryShared) -> Option<Expired> {
    let now = Instant::now();
    let (key, stored) = {
        let mut store = lock(&shared.store);
        loop {
            let Reverse((deadline, generation, _)) = store.deadlines.peek()?;
            if *deadline > now {
                return None;
            }
            let generation = *generation;
            let Reverse((_, _, key)) = store.deadlines.pop().expect("peeked");
            let current = store
                .entries
                .get(&key)
                .is_some_and(|stored| stored.generation == generation);
            if current {
                let stored = store.entries.remove(&key).expect("checked above");
                break (key, stored);
            }
        }
    };
    Some(Expired {
        key,
        bytes: stored.value.len(),
        stored_for: stored.stored_at.elapsed(),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Results in Redis, in Dramatiq's `RedisBackend` layout.
#[derive(Clone)]
pub struct RedisResults {
    link: Arc<RedisLink>,
    namespace: String,
}

impl RedisResults {
    /// Connects to `url` with Dramatiq's default namespace. Fails fast if
    /// Redis cannot be reached now; later outages are waited out.
    pub async fn connect(url: &str) -> Result<RedisResults, ResultsError> {
        RedisResults::connect_with_namespace(url, DEFAULT_NAMESPACE).await
    }

    pub async fn connect_with_namespace(
        url: &str,
        namespace: impl Into<String>,
    ) -> Result<RedisResults, ResultsError> {
        let timeouts = LinkTimeouts {
            connect: broker_defaults::CONNECT_TIMEOUT,
            response: broker_defaults::RESPONSE_TIMEOUT,
            reconnect_max_backoff: broker_defaults::RECONNECT_MAX_BACKOFF,
        };
        let link = RedisLink::new(url, timeouts).map_err(|source| ResultsError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        link.first_query::<String>(&redis::cmd("PING"))
            .await
            .map_err(|source| ResultsError::Unreachable {
                url: link.display_url().to_owned(),
                source,
            })?;
        Ok(RedisResults {
            link: Arc::new(link),
            namespace: namespace.into(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `DEL key; LPUSH key json; PEXPIRE key ttl` in one transaction, as
    /// Dramatiq does. Retried through outages (it is idempotent).
    pub async fn store(
        &self,
        key: &str,
        encoded: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), ResultsError> {
        let mut transaction = redis::pipe();
        transaction
            .atomic()
            .del(key)
            .ignore()
            .lpush(key, encoded)
            .ignore()
            .pexpire(key, ttl.as_millis() as i64)
            .ignore();
        loop {
            match self.link.query_pipeline::<()>(&transaction).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(source)) => return Err(self.rejected("store", source)),
                Err(Failure::Transient) => self.link.pause(None).await,
            }
        }
    }

    /// `LINDEX key 0`: the stored JSON, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ResultsError> {
        let mut lindex = redis::cmd("LINDEX");
        lindex.arg(key).arg(0);
        loop {
            match self.link.query::<Option<Vec<u8>>>(&lindex).await {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(source)) => return Err(self.rejected("get", source)),
                Err(Failure::Transient) => self.link.pause(None).await,
            }
        }
    }

    fn rejected(&self, command: &'static str, source: redis::RedisError) -> ResultsError {
        ResultsError::Rejected {
            url: self.link.display_url().to_owned(),
            command,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::message::JsonObject;
    use serde_json::json;

    fn message(queue: &str, actor: &str, id: &str) -> Message {
        let mut message = Message::new(queue, actor, vec![], JsonObject::new());
        message.message_id = id.to_owned();
        message
    }

    #[test]
    fn result_keys_match_dramatiqs_derivation() {
        // Expected: hashlib.md5(b"<namespace>:<queue>:<actor>:<id>").hexdigest()
        // computed by CPython, as Dramatiq's build_message_key does.
        let id = "44918272-3075-4cf1-87cd-b88637c22828";
        let key = result_key(DEFAULT_NAMESPACE, &message("default", "stored", id));
        assert_eq!(key, "91973fc7ef5cd6fa4d35e90dbd23d112");
        // A retried message waiting in the delay queue keeps its key.
        assert_eq!(
            key,
            result_key(DEFAULT_NAMESPACE, &message("default.DQ", "stored", id))
        );
        assert_eq!(
            result_key(
                "custom",
                &message("emails", "send", "0d9a25de-1fe8-46d2-85cb-7597bfde4361")
            ),
            "8a3d929ff8523c19b25d273dcbe0d105"
        );
    }

    #[test]
    fn results_are_encoded_like_pythons_json() {
        assert_eq!(encode_result(&json!(42)), b"42");
        assert_eq!(
            encode_result(&json!({"b": 1.0, "a": "\u{e9}"})),
            br#"{"a":"\u00e9","b":1.0}"#
        );
        assert_eq!(
            String::from_utf8(encode_exception("ValueError", "fail 7")).unwrap(),
            r#"{"__t":"dramatiq.results.Result","exn":{"type":"ValueError","msg":"fail 7"}}"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_results_are_released_at_their_ttl_with_an_event() {
        let results = MemoryResults::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        results.on_expired(move |expired| seen.lock().unwrap().push(expired.clone()));

        results.store("k", b"42".to_vec(), Duration::from_secs(600));
        assert_eq!(
            results.get("k").as_deref().map(Vec::as_slice),
            Some(&b"42"[..])
        );

        tokio::time::sleep(Duration::from_secs(599)).await;
        assert_eq!(results.len(), 1, "kept until its TTL");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(results.is_empty(), "released at its TTL");
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, "k");
        assert_eq!(events[0].bytes, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn storing_again_replaces_without_an_early_expiry() {
        let results = MemoryResults::new();
        let events = Arc::new(Mutex::new(0));
        let seen = events.clone();
        results.on_expired(move |_| *seen.lock().unwrap() += 1);

        results.store("k", b"1".to_vec(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(5)).await;
        results.store("k", b"2".to_vec(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(6)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            results.get("k").as_deref().map(Vec::as_slice),
            Some(&b"2"[..])
        );
        assert_eq!(*events.lock().unwrap(), 0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert!(results.is_empty());
        assert_eq!(*events.lock().unwrap(), 1);
    }
}
