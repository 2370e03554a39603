//! The in-process broker: Dramatiq's queue semantics without a server.
#![cfg(feature = "cli")]

use std::time::{Duration, Instant};

use leakprof::lab::broker::{Broker, Delivery, MemoryBroker};
use leakprof::lab::message::{current_millis, JsonObject, Message};
use serde_json::{json, Value};

/// How long a due message may take to be handed out: it is there at once;
/// 10 s only tells a lost message from a loaded machine.
const WAIT: Duration = Duration::from_secs(10);
/// How long to wait before concluding nothing is due. `next` hands out
/// what is already there before it looks at its deadline, so a slow
/// machine cannot make a present message look absent.
const NOTHING: Duration = Duration::from_millis(100);

fn message(actor: &str, args: Vec<Value>) -> Message {
    Message::new("default", actor, args, JsonObject::new())
}

async fn next(consumer: &mut leakprof::lab::broker::Consumer) -> Delivery {
    consumer
        .next(WAIT)
        .await
        .unwrap()
        .expect("a message within the deadline")
}

#[tokio::test]
async fn a_message_is_delivered_once_and_gone_after_its_ack() {
    let broker = Broker::memory();
    let sent = message("plain", vec![json!(1), json!("a")]);
    let enqueued = broker.enqueue(sent.clone(), None).await.unwrap();
    assert_eq!(enqueued.queue_name, "default");
    assert_eq!(enqueued.message_id, sent.message_id);
    assert_eq!(broker.qsize("default").await.unwrap(), 1);

    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().args, sent.args);
    assert_eq!(delivery.redis_message_id(), enqueued.redis_message_id);
    assert_eq!(
        delivery.message().redis_message_id(),
        Some(enqueued.redis_message_id.as_str())
    );
    assert_eq!(
        broker.qsize("default").await.unwrap(),
        1,
        "fetched but unacked still counts"
    );

    delivery.ack().await.unwrap();
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
    assert!(consumer.next(NOTHING).await.unwrap().is_none());
}

#[tokio::test]
async fn a_waiting_consumer_wakes_as_soon_as_a_message_arrives() {
    let broker = Broker::memory();
    let mut consumer = broker.consumer("default", 1);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let delivery = consumer.next(Duration::from_secs(30)).await.unwrap();
        (
            delivery.map(|delivery| delivery.message().actor_name.clone()),
            started.elapsed(),
        )
    });
    tokio::task::yield_now().await;
    broker
        .enqueue(message("plain", vec![]), None)
        .await
        .unwrap();
    let (actor, waited) = waiting.await.unwrap();
    assert_eq!(actor.as_deref(), Some("plain"));
    // Woken, it returns within milliseconds; the 30 s wait would be the
    // alternative. 2 s leaves a loaded machine ample room.
    assert!(
        waited < Duration::from_secs(2),
        "woken by the arrival, not a poll: {waited:?}"
    );
}

#[tokio::test]
async fn a_delayed_message_waits_in_the_delay_queue_until_its_eta() {
    let broker = Broker::memory();
    let before = current_millis();
    let enqueued = broker
        .enqueue(
            message("plain", vec![json!(2)]),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(enqueued.queue_name, "default.DQ");
    let eta = enqueued.eta.expect("a delayed message has an eta");
    assert!(eta >= before + 300 && eta <= current_millis() + 300);

    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    assert!(current_millis() >= eta, "delivered before its eta");
    let message = delivery.message();
    assert_eq!(
        message.queue_name, "default",
        "moved to the canonical queue"
    );
    assert_eq!(message.eta(), None, "eta removed when moved");
    assert_ne!(
        message.redis_message_id(),
        Some(enqueued.redis_message_id.as_str())
    );
    assert_eq!(delivery.queue_name(), "default");
    delivery.ack().await.unwrap();
    assert_eq!(
        broker.qsize("default").await.unwrap(),
        0,
        "the delay-queue copy was acked"
    );
}

#[tokio::test]
async fn nack_dead_letters_the_message_as_it_was_fetched() {
    let broker = Broker::memory();
    broker
        .enqueue(message("failing", vec![json!(7)]), None)
        .await
        .unwrap();
    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    let fetched = delivery.message().encode();
    // Whoever still holds a share of the message (an aborted actor's
    // coroutine, say) does not change what is dead-lettered, as with Redis,
    // where the stored JSON is moved.
    let held = delivery.shared_message();
    let id = delivery.redis_message_id().to_owned();
    delivery.nack().await.unwrap();

    let dead = broker.dead_letters("default").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].redis_message_id, id);
    let dead_message = dead[0].message.as_ref().unwrap();
    assert_eq!(dead_message.encode(), fetched, "byte for byte");
    assert_eq!(dead_message, &*held);
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
    assert_eq!(
        broker.dead_letters("default.DQ").await.unwrap().len(),
        1,
        "one XQ per canonical queue"
    );
}

#[tokio::test]
async fn unsettled_deliveries_go_back_to_the_queue() {
    let broker = Broker::memory();
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
    // The third was prefetched by the consumer; closing gives it back.
    consumer.close().await.unwrap();

    let mut consumer = broker.consumer("default", 3);
    let mut seen = Vec::new();
    while let Some(delivery) = consumer.next(NOTHING).await.unwrap() {
        seen.push(delivery.message().args[0].as_i64().unwrap());
        delivery.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
}

#[tokio::test]
async fn prefetch_bounds_the_unsettled_deliveries() {
    let broker = Broker::memory();
    for n in 0..3 {
        broker
            .enqueue(message("plain", vec![json!(n)]), None)
            .await
            .unwrap();
    }
    let mut consumer = broker.consumer("default", 2);
    let first = next(&mut consumer).await;
    let _second = next(&mut consumer).await;
    assert_eq!(consumer.handed_out(), 2);
    assert!(
        consumer.next(NOTHING).await.unwrap().is_none(),
        "both slots taken"
    );

    // Settling from another task frees a slot and wakes the waiting consumer.
    let settle = tokio::spawn(async move { first.ack().await.unwrap() });
    let third = consumer
        .next(WAIT)
        .await
        .unwrap()
        .expect("a slot was freed");
    settle.await.unwrap();
    assert_eq!(third.message().args, vec![json!(2)]);
}

#[tokio::test]
async fn next_is_cancel_safe() {
    let broker = Broker::memory();
    let mut consumer = broker.consumer("default", 1);
    let cancelled = tokio::time::timeout(Duration::from_millis(10), consumer.next(WAIT)).await;
    assert!(cancelled.is_err(), "timed out while waiting");
    broker
        .enqueue(message("plain", vec![]), None)
        .await
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().actor_name, "plain");
}

#[tokio::test]
async fn purge_drops_the_queue_its_delay_queue_and_its_dead_letters() {
    let broker = Broker::memory();
    broker
        .enqueue(message("plain", vec![]), None)
        .await
        .unwrap();
    broker
        .enqueue(message("plain", vec![]), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    broker
        .enqueue(message("failing", vec![]), None)
        .await
        .unwrap();
    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    broker.purge("default").await.unwrap();
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
    // Settling a purged message is a no-op, as with Redis.
    delivery.nack().await.unwrap();
    assert!(broker.dead_letters("default").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_128_mib_argument_is_moved_through_the_broker_not_copied() {
    let broker = Broker::memory();
    let payload = "x".repeat(128 << 20);
    let address = payload.as_ptr();
    broker
        .enqueue(message("big", vec![Value::String(payload)]), None)
        .await
        .unwrap();
    let mut consumer = broker.consumer("default", 1);
    let delivery = next(&mut consumer).await;
    let shared = delivery.shared_message();
    assert_eq!(
        shared.args[0].as_str().unwrap().as_ptr(),
        address,
        "the same allocation came out"
    );
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_dropped_after_their_ttl() {
    let broker = Broker::from(MemoryBroker::with_dead_message_ttl(Duration::from_millis(
        50,
    )));
    broker
        .enqueue(message("failing", vec![]), None)
        .await
        .unwrap();
    let mut consumer = broker.consumer("default", 1);
    next(&mut consumer).await.nack().await.unwrap();
    assert_eq!(broker.dead_letters("default").await.unwrap().len(), 1);
    let deadline = Instant::now() + WAIT;
    while !broker.dead_letters("default").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "dead letter never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
