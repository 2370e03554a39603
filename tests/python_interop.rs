//! Round trips with real Python Dramatiq 2.0.0 through one Redis, both ways.
//!
//! Runs only where `python3` (or `$LEAKPROF_PYTHON`) imports dramatiq 2.0.0;
//! otherwise prints a notice and passes. Nothing is installed by the test:
//! `python3 -m venv /tmp/dq && /tmp/dq/bin/pip install 'dramatiq[redis]==2.0.0'`
//! then `LEAKPROF_PYTHON=/tmp/dq/bin/python cargo test --test python_interop`.
#![cfg(feature = "cli")]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use leakprof::lab::broker::{Broker, RedisConfig};
use leakprof::lab::message::{JsonObject, Message};
use leakprof::lab::results::{result_key, RedisResults, DEFAULT_NAMESPACE};
use serde_json::{json, Value};
use support::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(10);

/// The interpreter to use, if it has Dramatiq 2.0.0.
fn python() -> Option<String> {
    let python = std::env::var("LEAKPROF_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let check = Command::new(&python)
        .args([
            "-c",
            "import dramatiq, redis; assert dramatiq.__version__ == '2.0.0'",
        ])
        .output();
    match check {
        Ok(output) if output.status.success() => Some(python),
        _ => {
            eprintln!(
                "SKIPPED: {python} cannot import dramatiq 2.0.0 and redis (set LEAKPROF_PYTHON)"
            );
            None
        }
    }
}

/// Runs interop.py in `mode` and parses the JSON it prints.
fn run_python(python: &str, redis: &RedisServer, mode: &str) -> Value {
    run_python_with(python, redis, mode, &[])
}

fn run_python_with(python: &str, redis: &RedisServer, mode: &str, args: &[&str]) -> Value {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dramatiq/interop.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(redis.url())
        .arg(mode)
        .args(args)
        .output()
        .expect("running python");
    assert!(
        output.status.success(),
        "interop.py {mode} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("interop.py prints JSON")
}

fn config(redis: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::new(redis.url());
    config.idle_poll_max = Duration::from_millis(50);
    config
}

#[tokio::test]
async fn messages_sent_by_python_dramatiq_are_consumed_here_byte_for_byte() {
    let Some(python) = python() else { return };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let stored: Vec<String> = serde_json::from_value(run_python(&python, &redis, "send")).unwrap();
    let stored: Vec<Message> = stored
        .iter()
        .map(|json| {
            let message = Message::decode(json.as_bytes()).unwrap();
            assert_eq!(
                message.encode(),
                json.as_bytes(),
                "re-encodes as Python wrote it"
            );
            message
        })
        .collect();

    let broker = Broker::redis(config(&redis)).await.unwrap();
    let mut consumer = broker.consumer("default", 3);
    for _ in 0..stored.len() {
        let delivery = consumer
            .next(WAIT)
            .await
            .unwrap()
            .expect("a message from Python");
        let message = delivery.message();
        let sent = stored
            .iter()
            .find(|sent| sent.message_id == message.message_id)
            .expect("a message Python sent");
        if sent.eta().is_some() {
            // Moved from default.DQ at its eta, as Dramatiq's worker does.
            assert_eq!(message.queue_name, "default");
            assert_eq!(message.eta(), None);
            assert_eq!((&message.args, &message.kwargs), (&sent.args, &sent.kwargs));
        } else {
            assert_eq!(message, sent);
        }
        delivery.ack().await.unwrap();
    }
    assert_eq!(broker.qsize("default").await.unwrap(), 0);
}

#[tokio::test]
async fn messages_sent_here_are_run_by_a_python_dramatiq_worker() {
    let Some(python) = python() else { return };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let broker = Broker::redis(config(&redis)).await.unwrap();
    let kwargs: JsonObject = [("c", json!("\u{e9}"))].into_iter().collect();
    let plain = Message::new("default", "plain", vec![json!(3), json!("b")], kwargs);
    broker.enqueue(plain, None).await.unwrap();
    let delayed = Message::new("default", "plain", vec![json!(4)], JsonObject::new());
    broker
        .enqueue(delayed, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let failing = Message::new("default", "failing", vec![json!(7)], JsonObject::new());
    let failing = broker.enqueue(failing, None).await.unwrap();
    let stored = Message::new("default", "stored", vec![json!(21)], JsonObject::new());
    let result_key = result_key(DEFAULT_NAMESPACE, &stored);
    broker.enqueue(stored, None).await.unwrap();

    let calls = run_python(&python, &redis, "work");
    let calls = calls.as_array().unwrap();
    for expected in [
        json!({"actor": "plain", "args": [3, "b"], "kwargs": {"c": "\u{e9}"}}),
        json!({"actor": "plain", "args": [4], "kwargs": {}}),
        json!({"actor": "stored", "args": [21], "kwargs": {}}),
    ] {
        assert!(
            calls.contains(&expected),
            "Python did not run {expected}: {calls:?}"
        );
    }

    // Python dead-lettered `failing` where this broker reads dead letters...
    let dead = broker.dead_letters("default").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].message.as_ref().unwrap().message_id,
        failing.message_id
    );
    // ...and stored the result under the key derived here.
    let results = RedisResults::connect(&redis.url()).await.unwrap();
    assert_eq!(
        results.get(&result_key).await.unwrap().as_deref(),
        Some(&b"42"[..])
    );
}

/// A message the lab's worker fails for good (no retries left) has its
/// exception stored as Dramatiq's `Results.after_nack` stores it: Python's
/// `get_result` raises `ResultFailure` with the actor's exception.
#[tokio::test]
async fn python_dramatiq_reads_the_exception_a_lab_worker_stored() {
    let Some(python) = python() else { return };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let broker = Broker::redis(config(&redis)).await.unwrap();
    let options: JsonObject = [("store_results", json!(true)), ("max_retries", json!(0))]
        .into_iter()
        .collect();
    let mut failing = Message::new(
        "default",
        "exception_task",
        vec![json!(1024), json!(0)],
        JsonObject::new(),
    );
    failing.options = options;
    broker.enqueue(failing.clone(), None).await.unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_leakprof"))
        .args(["--quiet", "worker", "--broker", "redis", "--redis-url"])
        .arg(redis.url())
        .args(["--queues", "default", "--out"])
        .arg(out.path())
        .spawn()
        .expect("starting leakprof worker");
    let until = std::time::Instant::now() + WAIT;
    while broker.dead_letters("default").await.unwrap().is_empty() {
        if std::time::Instant::now() > until {
            let _ = worker.kill();
            panic!("the worker did not dead-letter the message");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: our own child's pid (not yet reaped) and a valid signal.
    unsafe { libc::kill(worker.id() as libc::pid_t, libc::SIGTERM) };
    assert!(worker.wait().unwrap().success());

    let encoded = String::from_utf8(failing.encode()).unwrap();
    let read = run_python_with(&python, &redis, "get-result", &[&encoded]);
    assert_eq!(
        read,
        json!({
            "raised": "ResultFailure",
            "message": "actor raised BigException: Big exception with large data",
            "orig_exc_type": "BigException",
            "orig_exc_msg": "Big exception with large data",
        })
    );
}
