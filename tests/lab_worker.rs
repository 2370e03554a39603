//! The lab's worker in this process, with actors written for the test:
//! what it does with a message whose attempt went wrong.
//!
//! - A dead letter is the message as it was stored, byte for byte, on both
//!   brokers, even when the attempt was cut off by its time limit while its
//!   coroutine still held the message.
//! - The Results middleware stores a failed message's exception (after its
//!   last retry), in Dramatiq's encoding, as Dramatiq's `after_nack` does.
#![cfg(feature = "cli")]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakprof::lab::actor::{Actor, ActorFn, ActorOptions, Actors, Call};
use leakprof::lab::broker::{Broker, RedisConfig};
use leakprof::lab::error::TaskError;
use leakprof::lab::executor::{ActorFuture, Handoff};
use leakprof::lab::message::{JsonObject, Message, OPTION_REDIS_MESSAGE_ID};
use leakprof::lab::middleware::{
    AsyncIo, Chain, Env, HistoryPolicy, Middleware, Results, Retries, TimeLimit,
};
use leakprof::lab::results::{MemoryResults, ResultBackend};
use leakprof::lab::worker::{Worker, WorkerConfig, WorkerStats};
use serde_json::{json, Value};
use support::redis::RedisServer;

/// How long any one condition may take to come true. Generous on
/// purpose: it tells a hang from a slow, loaded machine and never
/// measures speed.
const DEADLINE: Duration = Duration::from_secs(20);

/// Blocks the event loop well past its message's time limit, holding its
/// call (and so its message) the whole time, as a coroutine stuck in a
/// synchronous call does.
fn stuck(call: Call) -> ActorFuture {
    Box::pin(async move {
        std::thread::sleep(Duration::from_millis(1_500));
        Ok(Value::from(call.message.args.len()))
    })
}

fn failing(call: Call) -> ActorFuture {
    Box::pin(async move {
        let n = call.u64_arg(0, "n")?;
        Err(TaskError::new("ValueError", format!("fail {n}")))
    })
}

fn doubling(call: Call) -> ActorFuture {
    Box::pin(async move { Ok(Value::from(call.u64_arg(0, "n")? * 2)) })
}

fn actors() -> Actors {
    let mut actors = Actors::new();
    for (name, function, store_results) in [
        ("stuck", stuck as fn(Call) -> ActorFuture, false),
        ("failing", failing, true),
        ("doubling", doubling, true),
    ] {
        actors.register(Actor {
            name: name.to_owned(),
            function: ActorFn::Async(function),
            options: ActorOptions {
                min_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                store_results,
                ..ActorOptions::default()
            },
        });
    }
    actors
}

/// A worker with Dramatiq's chain (the `original` variant) on `broker`.
struct Lab {
    rt: tokio::runtime::Runtime,
    broker: Broker,
    results: ResultBackend,
    stats: Arc<WorkerStats>,
    worker: Option<Worker>,
}

impl Lab {
    fn start(broker: impl FnOnce(&tokio::runtime::Runtime) -> Broker) -> Lab {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let broker = broker(&rt);
        let results = ResultBackend::Memory(MemoryResults::new());
        let asyncio = Arc::new(AsyncIo::start(Handoff::KeepInFuture).unwrap());
        let chain = Chain::new(vec![
            Arc::new(TimeLimit) as Arc<dyn Middleware>,
            Arc::new(Retries::new(HistoryPolicy::KeepFired)),
            Arc::new(Results::new(results.clone(), Duration::from_secs(600))),
            asyncio.clone(),
        ]);
        let env = Env {
            broker: broker.clone(),
            rt: rt.handle().clone(),
        };
        let worker = Worker::start(
            env,
            actors(),
            chain,
            asyncio,
            &WorkerConfig {
                queues: vec!["default".to_owned()],
                threads: 1,
                prefetch: None,
                after_job: None,
            },
        )
        .unwrap();
        Lab {
            rt,
            broker,
            results,
            stats: worker.stats(),
            worker: Some(worker),
        }
    }

    /// Enqueues `message` and returns it as the broker stored it.
    fn enqueue(&self, message: Message) -> Message {
        let enqueued = self
            .rt
            .block_on(self.broker.enqueue(message.clone(), None))
            .unwrap();
        let mut stored = message;
        stored
            .options
            .insert(OPTION_REDIS_MESSAGE_ID, enqueued.redis_message_id.into());
        stored
    }

    fn wait_for(&self, what: &str, condition: impl Fn(&WorkerStats) -> bool) {
        let stats = &self.stats;
        let until = Instant::now() + DEADLINE;
        while !condition(stats) {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
    }
}

fn message(actor: &str, args: Vec<Value>, options: Value) -> Message {
    let mut message = Message::new("default", actor, args, JsonObject::new());
    if let Value::Object(options) = options {
        for (key, value) in options {
            message.options.insert(key, value);
        }
    }
    message
}

/// A message cut off by its time limit, with no retries left: its
/// coroutine still holds it when the worker dead-letters it.
fn timed_out() -> Message {
    message(
        "stuck",
        vec![json!("a large argument"), json!({"k": [1, 2.5, null]})],
        json!({"time_limit": 100, "max_retries": 0}),
    )
}

#[test]
fn a_time_limited_message_is_dead_lettered_byte_for_byte_on_the_memory_broker() {
    let mut lab = Lab::start(|_| Broker::memory());
    let stored = lab.enqueue(timed_out());
    lab.wait_for("the dead letter", |s| {
        s.dead_lettered.load(Ordering::Relaxed) == 1
    });
    let dead = lab.rt.block_on(lab.broker.dead_letters("default")).unwrap();
    lab.stop();
    assert_eq!(dead.len(), 1);
    let dead = dead[0].message.as_ref().expect("a message");
    assert_eq!(
        String::from_utf8(dead.encode()).unwrap(),
        String::from_utf8(stored.encode()).unwrap(),
        "the dead letter is the message as stored"
    );
}

#[test]
fn a_time_limited_message_is_dead_lettered_byte_for_byte_on_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let mut lab = Lab::start(|rt| {
        rt.block_on(Broker::redis(RedisConfig::new(url.clone())))
            .unwrap()
    });
    let stored = lab.enqueue(timed_out());
    lab.wait_for("the dead letter", |s| {
        s.dead_lettered.load(Ordering::Relaxed) == 1
    });
    lab.stop();
    let id = stored.redis_message_id().unwrap();
    let mut connection = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let dead: Option<Vec<u8>> = redis::cmd("HGET")
        .arg("dramatiq:default.XQ.msgs")
        .arg(id)
        .query(&mut connection)
        .unwrap();
    assert_eq!(
        String::from_utf8(dead.expect("a dead letter under its id")).unwrap(),
        String::from_utf8(stored.encode()).unwrap(),
        "the dead letter is the message as stored"
    );
}

/// Dramatiq's `Results.after_nack`: once no retry follows, the exception is
/// stored where `get_result` looks, and `get_result` raises it.
#[test]
fn a_failed_messages_exception_is_stored_after_its_last_retry() {
    let mut lab = Lab::start(|_| Broker::memory());
    let failed = lab.enqueue(message(
        "failing",
        vec![json!(7)],
        json!({"max_retries": 2}),
    ));
    let succeeded = lab.enqueue(message("doubling", vec![json!(21)], json!({})));
    // Failed once, its retry a minute away: nothing is stored yet.
    let retrying = lab.enqueue(message(
        "failing",
        vec![json!(8)],
        json!({"max_retries": 2, "min_backoff": 60_000, "max_backoff": 60_000}),
    ));
    lab.wait_for("every attempt to end", |s| {
        s.dead_lettered.load(Ordering::Relaxed) == 1
            && s.succeeded.load(Ordering::Relaxed) == 1
            && s.failed_attempts.load(Ordering::Relaxed) == 4
    });
    lab.stop();
    let stored = |message: &Message| {
        let key = lab.results.key_for(message);
        lab.rt
            .block_on(lab.results.get(&key))
            .unwrap()
            .map(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
    };
    assert_eq!(
        stored(&failed).as_deref(),
        Some(r#"{"__t":"dramatiq.results.Result","exn":{"type":"ValueError","msg":"fail 7"}}"#)
    );
    assert_eq!(stored(&succeeded).as_deref(), Some("42"));
    assert_eq!(stored(&retrying), None);
}
