//! The Redis broker against a real `redis-server` (started per test): Dramatiq
//! 2.0's key layout, delay and dead-letter queues, malformed messages, dead
//! workers, and messages written the way Python Dramatiq writes them.
#![cfg(feature = "cli")]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use leakprof::lab::broker::{Broker, Consumer, Delivery, RedisBroker, RedisConfig};
use leakprof::lab::message::{current_millis, JsonObject, Message};
use leakprof::lab::results::{
    encode_result, result_key, RedisResults, ResultBackend, DEFAULT_RESULT_TTL,
};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde_json::{json, Value};
use support::logs::CapturedLogs;
use support::redis::RedisServer;

/// How long a due message may take to come from Redis: milliseconds; 10 s
/// only tells a lost message from a loaded machine.
const WAIT: Duration = Duration::from_secs(10);
/// How long to wait before concluding nothing is due. Used by checks
/// that something does *not* come, and by drain loops bounded by [`WAIT`]
/// overall, so a slow machine cannot fail them.
const NOTHING: Duration = Duration::from_millis(200);

fn config(redis: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::new(redis.url());
    // Notice new messages quickly; the default (1 s) only slows tests down.
    config.idle_poll_max = Duration::from_millis(50);
    config
}

async fn broker(config: RedisConfig) -> Broker {
    Broker::redis(config)
        .await
        .expect("connecting to the test redis-server")
}

async fn inspect(redis: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn message(actor: &str, args: Vec<Value>) -> Message {
    Message::new("default", actor, args, JsonObject::new())
}

async fn next(consumer: &mut Consumer) -> Delivery {
    consumer
        .next(WAIT)
        .await
        .unwrap()
        .expect("a message within the deadline")
}

fn fixture(path: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dramatiq")
        .join(path);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

// ---------------------------------------------------------------------------
// The layout of redis-layout.txt, modulo ids and timestamps.

/// Replaces UUIDs with `<id>`, 13-digit millisecond timestamps with `<ts>`
/// and a whole-string md5 digest with `<md5>`.
fn normalize(text: &str) -> String {
    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return "<md5>".to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if is_uuid_at(bytes, i) {
            out.push_str("<id>");
            i += 36;
        } else if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let run = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            if run == 13 {
                out.push_str("<ts>");
                i += 13;
                if text[i..].starts_with(".0") {
                    i += 2;
                }
            } else {
                out.push_str(&text[i..i + run]);
                i += run;
            }
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn is_uuid_at(bytes: &[u8], at: usize) -> bool {
    let Some(candidate) = bytes.get(at..at + 36) else {
        return false;
    };
    candidate.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
    })
}

/// One stage of the layout: normalized key -> "type ttl" and contents.
type Layout = BTreeMap<String, String>;

fn render(layout: &Layout) -> String {
    layout
        .iter()
        .map(|(key, value)| format!("{key} {value}\n"))
        .collect()
}

/// Normalizes the contents of a key given as JSON the way the fixture
/// prints it: a list or set as an array of strings, a zset as [member,
/// score] pairs, a hash as an object.
fn normalize_contents(kind: &str, contents: Value) -> String {
    let normalized: Vec<String> = match (kind, contents) {
        ("list", Value::Array(items)) => items
            .iter()
            .map(|item| normalize(item.as_str().unwrap()))
            .collect(),
        ("set", Value::Array(items)) => {
            let mut items: Vec<String> = items
                .iter()
                .map(|item| normalize(item.as_str().unwrap()))
                .collect();
            items.sort();
            items
        }
        ("zset", Value::Array(pairs)) => pairs
            .iter()
            .map(|pair| {
                format!(
                    "{}={}",
                    normalize(pair[0].as_str().unwrap()),
                    normalize(&pair[1].to_string())
                )
            })
            .collect(),
        ("hash", Value::Object(fields)) => {
            let mut fields: Vec<String> = fields
                .iter()
                .map(|(field, value)| {
                    format!(
                        "{}={}",
                        normalize(field),
                        normalize(value.as_str().unwrap())
                    )
                })
                .collect();
            fields.sort();
            fields
        }
        (kind, contents) => panic!("unexpected {kind} contents {contents}"),
    };
    normalized.join(" | ")
}

fn ttl_class(ttl_ms: i64) -> &'static str {
    if ttl_ms < 0 {
        "persistent"
    } else {
        "expiring"
    }
}

/// The stages of redis-layout.txt by title.
fn fixture_layouts() -> BTreeMap<String, Layout> {
    let text = String::from_utf8(fixture("redis-layout.txt")).unwrap();
    let mut stages = BTreeMap::new();
    let mut title = String::new();
    let mut pending_key: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            title = heading.to_owned();
            stages.insert(title.clone(), Layout::new());
        } else if let Some(contents) = line.strip_prefix("    ") {
            let (key, header) = pending_key.take().expect("contents follow a key line");
            let kind = header.split(',').next().unwrap().to_owned();
            let ttl: i64 = header
                .split("ttl ")
                .nth(1)
                .unwrap()
                .trim_end_matches(" ms")
                .parse()
                .unwrap();
            let contents: Value = serde_json::from_str(contents).unwrap();
            let value = format!(
                "{kind} {} {}",
                ttl_class(ttl),
                normalize_contents(&kind, contents)
            );
            stages
                .get_mut(&title)
                .unwrap()
                .insert(normalize(&key), value);
        } else if let Some((key, header)) = line.split_once("  (") {
            pending_key = Some((key.to_owned(), header.trim_end_matches(')').to_owned()));
        }
    }
    stages
}

/// Every key of the test server, read the same way.
async fn dump(connection: &mut MultiplexedConnection) -> Layout {
    let keys: Vec<String> = connection.keys("*").await.unwrap();
    let mut layout = Layout::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(connection)
            .await
            .unwrap();
        let ttl: i64 = connection.pttl(&key).await.unwrap();
        let contents = match kind.as_str() {
            "list" => json!(connection
                .lrange::<_, Vec<String>>(&key, 0, -1)
                .await
                .unwrap()),
            "set" => json!(connection.smembers::<_, Vec<String>>(&key).await.unwrap()),
            "zset" => {
                let pairs: Vec<(String, f64)> =
                    connection.zrange_withscores(&key, 0, -1).await.unwrap();
                Value::Array(
                    pairs
                        .into_iter()
                        .map(|(member, score)| json!([member, score]))
                        .collect(),
                )
            }
            "hash" => json!(connection
                .hgetall::<_, BTreeMap<String, String>>(&key)
                .await
                .unwrap()),
            other => panic!("unexpected key type {other} for {key}"),
        };
        let value = format!(
            "{kind} {} {}",
            ttl_class(ttl),
            normalize_contents(&kind, contents)
        );
        layout.insert(normalize(&key), value);
    }
    layout
}

async fn assert_layout(
    connection: &mut MultiplexedConnection,
    expected: &BTreeMap<String, Layout>,
    stage: &str,
) {
    let expected = expected
        .get(stage)
        .unwrap_or_else(|| panic!("no stage {stage:?} in redis-layout.txt"));
    let actual = render(&dump(connection).await);
    if std::env::var_os("SHOW_LAYOUT").is_some() {
        eprintln!("## {stage}\n{actual}");
    }
    assert_eq!(actual, render(expected), "layout {stage:?}");
}

#[tokio::test]
async fn every_stage_of_the_dramatiq_layout_is_reproduced() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let stages = fixture_layouts();
    assert_eq!(stages.len(), 7, "redis-layout.txt stages");
    let mut connection = inspect(&redis).await;
    let broker = broker(config(&redis)).await;
    let retry_fixture = Message::decode(&fixture("messages/retry.json")).unwrap();
    let traceback = retry_fixture.traceback().unwrap().to_owned();

    broker
        .enqueue(message("plain", vec![json!(1), json!("a")]), None)
        .await
        .unwrap();
    assert_layout(&mut connection, &stages, "after plain.send(1, 'a')").await;

    let kwargs: JsonObject = [("b", json!("x"))].into_iter().collect();
    let delayed = Message::new("default", "plain", vec![json!(2)], kwargs);
    broker
        .enqueue(delayed, Some(Duration::from_millis(5000)))
        .await
        .unwrap();
    assert_layout(
        &mut connection,
        &stages,
        "after plain.send_with_options(args=(2,), kwargs={'b': 'x'}, delay=5000)",
    )
    .await;

    // Each later stage of the fixture starts from a clean database.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut consumer = broker.consumer("default", 1);
    broker
        .enqueue(message("failing", vec![json!(7)]), None)
        .await
        .unwrap();
    let attempt = next(&mut consumer).await;
    // What the Retries middleware does after a failure.
    let mut retry = attempt.message().clone();
    retry.set_retries(1);
    retry.set_traceback(traceback);
    retry.set_requeue_timestamp(current_millis());
    broker
        .enqueue(retry, Some(Duration::from_millis(50)))
        .await
        .unwrap();
    attempt.ack().await.unwrap();
    assert_layout(
        &mut connection,
        &stages,
        "failing(7) after its first failed attempt (retry waiting in the delay queue)",
    )
    .await;

    // The consumer moves the retry to the queue at its eta; it fails again
    // and retries are exhausted.
    let attempt = next(&mut consumer).await;
    assert_eq!(attempt.message().retries(), Some(1));
    attempt.nack().await.unwrap();
    assert_layout(
        &mut connection,
        &stages,
        "failing(7) after retries exhausted (dead-lettered)",
    )
    .await;

    broker
        .enqueue(message("async_failing", vec![json!(3)]), None)
        .await
        .unwrap();
    next(&mut consumer).await.nack().await.unwrap();
    broker.enqueue(message("slow", vec![]), None).await.unwrap();
    let running = next(&mut consumer).await;
    assert_layout(
        &mut connection,
        &stages,
        "while slow() runs (message held unacked by this worker)",
    )
    .await;

    running.ack().await.unwrap();
    assert_layout(
        &mut connection,
        &stages,
        "after slow() finished and was acked",
    )
    .await;

    let results = ResultBackend::Redis(RedisResults::connect(&redis.url()).await.unwrap());
    let stored = message("stored", vec![json!(21)]);
    let key = results.key_for(&stored);
    assert_eq!(key, result_key("dramatiq-results", &stored));
    results
        .store(&key, encode_result(&json!(42)), DEFAULT_RESULT_TTL)
        .await
        .unwrap();
    assert_layout(
        &mut connection,
        &stages,
        "after stored.send(21) finished (result 42, result key 29dc69dd23d36580374b0ca3fe7ebbea)",
    )
    .await;
    let ttl: i64 = connection.pttl(&key).await.unwrap();
    assert!((590_000..=600_000).contains(&ttl), "result TTL {ttl} ms");
    assert_eq!(
        results
            .get(&key)
            .await
            .unwrap()
            .as_deref()
            .map(Vec::as_slice),
        Some(&b"42"[..])
    );
}

// ---------------------------------------------------------------------------
// Delay queue and dead letters.

#[tokio::test]
async fn a_delayed_message_goes_to_the_delay_queue_with_its_eta() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut connection = inspect(&redis).await;
    let broker = broker(config(&redis)).await;
    let before = current_millis();
    let enqueued = broker
        .enqueue(
            message("plain", vec![json!(2)]),
            Some(Duration::from_millis(400)),
        )
        .await
        .unwrap();

    let ids: Vec<String> = connection
        .lrange("dramatiq:default.DQ", 0, -1)
        .await
        .unwrap();
    assert_eq!(ids, std::slice::from_ref(&enqueued.redis_message_id));
    let stored: String = connection
        .hget("dramatiq:default.DQ.msgs", &enqueued.redis_message_id)
        .await
        .unwrap();
    let stored = Message::decode(stored.as_bytes()).unwrap();
    assert_eq!(stored.queue_name, "default.DQ");
    let eta = stored.eta().unwrap();
    assert!(
        eta >= before + 400 && eta <= current_millis() + 400,
        "eta {eta} vs enqueue time {before}"
    );
    assert_eq!(broker.qsize("default").await.unwrap(), 1);

    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    assert!(current_millis() >= eta, "handed out before its eta");
    assert_eq!(delivery.message().queue_name, "default");
    assert_eq!(delivery.message().eta(), None);
    assert_ne!(delivery.redis_message_id(), enqueued.redis_message_id);
    delivery.ack().await.unwrap();
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
    let exists: bool = connection.exists("dramatiq:default.DQ.msgs").await.unwrap();
    assert!(!exists, "the delay-queue copy was acked");
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_with_one_warning_each() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (logs, _capture) = CapturedLogs::install();
    let mut connection = inspect(&redis).await;
    let broker = broker(config(&redis)).await;

    // Planted the way the dispatcher stores messages, in both queues.
    let planted = [
        ("default", "bad-json-id", "{not json"),
        ("default", "not-a-message-id", r#"{"hello":1}"#),
        ("default.DQ", "bad-delayed-id", "[]"),
    ];
    for (queue, id, body) in planted {
        let _: () = connection
            .hset(format!("dramatiq:{queue}.msgs"), id, body)
            .await
            .unwrap();
        let _: () = connection
            .rpush(format!("dramatiq:{queue}"), id)
            .await
            .unwrap();
    }
    let good = broker
        .enqueue(message("plain", vec![json!(1)]), None)
        .await
        .unwrap();

    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    assert_eq!(
        delivery.message().message_id,
        good.message_id,
        "the consumer kept working"
    );
    delivery.ack().await.unwrap();
    // One more round so the delay queue has been fetched too.
    assert!(consumer.next(NOTHING).await.unwrap().is_none());

    let dead: Vec<String> = connection
        .zrange("dramatiq:default.XQ", 0, -1)
        .await
        .unwrap();
    let mut dead = dead;
    dead.sort();
    assert_eq!(dead, ["bad-delayed-id", "bad-json-id", "not-a-message-id"]);
    let stored: String = connection
        .hget("dramatiq:default.XQ.msgs", "bad-json-id")
        .await
        .unwrap();
    assert_eq!(stored, "{not json", "dead-lettered as stored");
    let misplaced: bool = connection.exists("dramatiq:default.DQ.XQ").await.unwrap();
    assert!(
        !misplaced,
        "a delay queue dead-letters into its canonical queue"
    );

    for (queue, id, reason) in [
        ("default", "bad-json-id", "not JSON"),
        (
            "default",
            "not-a-message-id",
            "not a Dramatiq message: unknown field `hello`",
        ),
        (
            "default.DQ",
            "bad-delayed-id",
            "not a Dramatiq message: invalid type: sequence",
        ),
    ] {
        let lines = logs.lines_with(id);
        assert_eq!(lines.len(), 1, "one line for {id}: {lines:#?}");
        let line = &lines[0];
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&format!("queue={queue} ")), "{line}");
        assert!(line.contains(reason), "{line}");
    }
    let dead_letters = broker.dead_letters("default").await.unwrap();
    assert_eq!(dead_letters.len(), 3);
    assert!(dead_letters.iter().all(|letter| letter.message.is_err()));
}

#[tokio::test]
async fn nack_dead_letters_to_the_canonical_queue() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut connection = inspect(&redis).await;
    let broker = broker(config(&redis)).await;
    let enqueued = broker
        .enqueue(message("failing", vec![json!(7)]), None)
        .await
        .unwrap();
    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    delivery.nack().await.unwrap();

    let score: f64 = connection
        .zscore("dramatiq:default.XQ", &enqueued.redis_message_id)
        .await
        .unwrap();
    assert!((score as u64).abs_diff(current_millis()) < 10_000);
    let dead = broker.dead_letters("default").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].message.as_ref().unwrap().message_id,
        enqueued.message_id
    );
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Sharing queues with Python Dramatiq.

#[tokio::test]
async fn a_message_stored_by_python_dramatiq_is_consumed_and_acked() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut connection = inspect(&redis).await;
    // plain.json is what Dramatiq's enqueue stored: hash field = its
    // redis_message_id, id pushed on the list.
    let bytes = fixture("messages/plain.json");
    let expected = Message::decode(&bytes).unwrap();
    let id = expected.redis_message_id().unwrap().to_owned();
    let _: () = connection
        .hset("dramatiq:default.msgs", &id, &bytes)
        .await
        .unwrap();
    let _: () = connection.rpush("dramatiq:default", &id).await.unwrap();

    let broker = broker(config(&redis)).await;
    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message(), &expected);
    assert_eq!(delivery.redis_message_id(), id);
    let acks = format!("dramatiq:__acks__.{}.default", broker.worker_id());
    let held: Vec<String> = connection.smembers(&acks).await.unwrap();
    assert_eq!(held, std::slice::from_ref(&id));

    delivery.ack().await.unwrap();
    let left: i64 = connection.hlen("dramatiq:default.msgs").await.unwrap();
    assert_eq!(left, 0);
    let acks_left: bool = connection.exists(&acks).await.unwrap();
    assert!(!acks_left);
}

// ---------------------------------------------------------------------------
// Dead and live workers.

#[tokio::test]
async fn a_dead_consumers_unacked_messages_go_to_another_consumer() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut connection = inspect(&redis).await;
    let mut short = config(&redis);
    short.heartbeat_timeout = Duration::from_millis(500);
    short.maintenance_chance = 0;

    let dead_broker = RedisBroker::connect(short.clone()).await.unwrap();
    let dead_worker = dead_broker.worker_id().to_owned();
    let dead_broker = Broker::from(dead_broker);
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(
            dead_broker
                .enqueue(message("plain", vec![json!(n)]), None)
                .await
                .unwrap()
                .message_id,
        );
    }
    let mut dying = dead_broker.consumer("default", 5);
    for _ in 0..5 {
        // Never settled and never dropped: the process "died" holding them.
        std::mem::forget(next(&mut dying).await);
    }
    drop(dying);
    drop(dead_broker);
    let held: i64 = connection
        .scard(format!("dramatiq:__acks__.{dead_worker}.default"))
        .await
        .unwrap();
    assert_eq!(held, 5);

    let mut survivor_config = short;
    survivor_config.maintenance_chance = 1_000_000;
    let survivor = broker(survivor_config).await;
    let mut consumer = survivor.consumer("default", 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = Vec::new();
    while received.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} requeued in time",
            received.len(),
            sent.len()
        );
        if let Some(delivery) = consumer.next(Duration::from_millis(200)).await.unwrap() {
            received.push(delivery.message().message_id.clone());
            delivery.ack().await.unwrap();
        }
    }
    received.sort();
    sent.sort();
    assert_eq!(received, sent);
    let gone: bool = connection
        .exists(format!("dramatiq:__acks__.{dead_worker}.default"))
        .await
        .unwrap();
    assert!(!gone, "the dead worker's ack set is deleted");
    let beat: Option<f64> = connection
        .zscore("dramatiq:__heartbeats__", &dead_worker)
        .await
        .unwrap();
    assert_eq!(beat, None, "the dead worker is forgotten");
}

#[tokio::test]
async fn a_busy_consumer_keeps_its_messages_while_it_heartbeats() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut short = config(&redis);
    short.heartbeat_timeout = Duration::from_millis(1_000);
    short.maintenance_chance = 0;
    let busy_broker = broker(short.clone()).await;
    busy_broker
        .enqueue(message("slow", vec![]), None)
        .await
        .unwrap();
    let mut busy = busy_broker.consumer("default", 1);
    let running = next(&mut busy).await;

    // Another worker maintains on every call for several heartbeat timeouts
    // while the busy one never calls `next`: its heartbeat task keeps it alive.
    let mut watcher_config = short;
    watcher_config.maintenance_chance = 1_000_000;
    let watcher = broker(watcher_config).await;
    let mut other = watcher.consumer("default", 1);
    let until = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < until {
        assert!(
            other
                .next(Duration::from_millis(100))
                .await
                .unwrap()
                .is_none(),
            "stolen from a live worker"
        );
    }
    running.ack().await.unwrap();
    assert_eq!(busy_broker.qsize("default").await.unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Settling and cancellation.

#[tokio::test]
async fn dropped_and_requeued_deliveries_come_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let broker = broker(config(&redis)).await;
    for n in 0..3 {
        broker
            .enqueue(message("plain", vec![json!(n)]), None)
            .await
            .unwrap();
    }
    let mut consumer = broker.consumer("default", 3);
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    drop(first);
    second.requeue().await.unwrap();
    consumer.close().await.unwrap();

    let mut consumer = broker.consumer("default", 3);
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 3 && Instant::now() < deadline {
        if let Some(delivery) = consumer.next(NOTHING).await.unwrap() {
            seen.push(delivery.message().args[0].as_i64().unwrap());
            delivery.ack().await.unwrap();
        }
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
}

#[tokio::test]
async fn a_cancelled_next_loses_no_message() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let broker = broker(config(&redis)).await;
    let mut consumer = broker.consumer("default", 1);
    let mut sent = Vec::new();
    for n in 0..20 {
        sent.push(
            broker
                .enqueue(message("plain", vec![json!(n)]), None)
                .await
                .unwrap()
                .message_id,
        );
    }
    // Cut `next` off at every point it can be cut: some fetches reach Redis
    // and lose their reply, which the broker must give back.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cut = 0u64;
    while received.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "received {} of {}",
            received.len(),
            sent.len()
        );
        cut = (cut + 1) % 4;
        let attempt =
            tokio::time::timeout(Duration::from_micros(cut * 200), consumer.next(WAIT)).await;
        if let Ok(delivery) = attempt {
            let delivery = delivery.unwrap().expect("a message");
            received.push(delivery.message().message_id.clone());
            delivery.ack().await.unwrap();
        }
    }
    received.sort();
    sent.sort();
    assert_eq!(received, sent);
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
}

#[tokio::test]
async fn maintenance_drops_dead_letters_older_than_their_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut connection = inspect(&redis).await;
    let mut config = config(&redis);
    config.dead_message_ttl = Duration::from_millis(50);
    config.maintenance_chance = 1_000_000;
    let broker = broker(config).await;
    broker
        .enqueue(message("failing", vec![]), None)
        .await
        .unwrap();
    let mut consumer = broker.consumer("default", 1);
    next(&mut consumer).await.nack().await.unwrap();
    assert_eq!(
        broker.dead_letters("default").await.unwrap().len(),
        1,
        "kept within its TTL"
    );

    let deadline = Instant::now() + WAIT;
    loop {
        // Every call maintains; `qsize` is a call like any other.
        broker.qsize("default").await.unwrap();
        let left: i64 = connection.zcard("dramatiq:default.XQ").await.unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "dead letter never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bodies: bool = connection.exists("dramatiq:default.XQ.msgs").await.unwrap();
    assert!(!bodies);
}
