//! At-least-once delivery when Redis goes away: the consumer and enqueue wait
//! the outage out on their own and no message is lost.
#![cfg(feature = "cli")]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakprof::lab::broker::{Broker, RedisConfig};
use leakprof::lab::message::{JsonObject, Message};
use serde_json::json;
use support::logs::CapturedLogs;
use support::redis::RedisServer;

fn config(redis: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::new(redis.url());
    config.idle_poll_max = Duration::from_millis(50);
    config.reconnect_max_backoff = Duration::from_millis(200);
    config
}

fn message(n: usize) -> Message {
    Message::new("default", "count", vec![json!(n)], JsonObject::new())
}

/// Waits for `condition` with a deadline, checking every few milliseconds.
async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_acked_at_least_once_across_redis_restarts() {
    let Some(mut redis) = RedisServer::start_persistent() else {
        return;
    };
    // Shown only if the test fails.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    const MESSAGES: usize = 300;
    let broker = Broker::redis(config(&redis)).await.unwrap();
    for n in 0..MESSAGES {
        broker.enqueue(message(n), None).await.unwrap();
    }

    let acked = Arc::new(AtomicUsize::new(0));
    let progress = acked.clone();
    let mut consumer = broker.consumer("default", 10);
    let consuming = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut deliveries = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < MESSAGES {
            assert!(
                Instant::now() < deadline,
                "acked {} of {MESSAGES}",
                seen.len()
            );
            let Some(delivery) = consumer.next(Duration::from_millis(200)).await.unwrap() else {
                continue;
            };
            deliveries += 1;
            let n = delivery.message().args[0].as_u64().unwrap() as usize;
            delivery.ack().await.unwrap();
            seen.insert(n);
            progress.store(seen.len(), Ordering::Relaxed);
        }
        consumer.close().await.unwrap();
        deliveries
    });

    for quarter in 1..=3 {
        wait_for("consumption to progress", Duration::from_secs(30), || {
            acked.load(Ordering::Relaxed) >= MESSAGES * quarter / 4
        })
        .await;
        // A hard kill in mid-consumption: fetches, acks and replies are cut.
        tokio::task::block_in_place(|| redis.restart());
    }

    let deliveries = consuming.await.unwrap();
    assert!(deliveries >= MESSAGES);
    assert_eq!(
        broker.qsize("default").await.unwrap(),
        0,
        "nothing left unacked or waiting"
    );
    eprintln!("{MESSAGES} messages acked in {deliveries} deliveries across three restarts");
}

#[tokio::test]
async fn enqueue_waits_out_an_outage_and_logs_it_once() {
    let Some(mut redis) = RedisServer::start_persistent() else {
        return;
    };
    let (logs, _capture) = CapturedLogs::install();
    let broker = Broker::redis(config(&redis)).await.unwrap();
    redis.stop();

    let sender = broker.clone();
    let sending = tokio::spawn(async move { sender.enqueue(message(1), None).await });
    wait_for("the outage to be noticed", Duration::from_secs(10), || {
        !logs.lines_with("lost connection to Redis").is_empty()
    })
    .await;
    // Starting Redis again takes a while, enough for several attempts to fail.
    redis.restart();

    let enqueued = sending.await.unwrap().unwrap();
    assert_eq!(
        logs.lines_with("lost connection to Redis").len(),
        1,
        "one line per outage"
    );
    assert_eq!(logs.lines_with("reconnected to Redis").len(), 1);

    let mut consumer = broker.consumer("default", 1);
    let delivery = consumer
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the message");
    assert_eq!(delivery.message().message_id, enqueued.message_id);
    delivery.ack().await.unwrap();
}
