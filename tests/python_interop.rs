//! Round trips with real Python Dramatiq 2.0.0 through one Redis, both ways,
//! and the exception a lab worker stores read back by Dramatiq's result
//! backend.
//!
//! Python comes from [`support::python`]: `$LEAKPROF_PYTHON`, or a virtual
//! environment in the target directory that the first test to need it sets
//! up from the package index. Without it the tests skip, except with
//! `CI=true`, where they fail.
#![cfg(feature = "cli")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leakprof::lab::broker::{Broker, RedisConfig};
use leakprof::lab::message::{JsonObject, Message};
use leakprof::lab::results::{result_key, RedisResults, DEFAULT_NAMESPACE};
use serde_json::{json, Value};
use support::redis::RedisServer;

/// How long a message or result may take to appear: milliseconds; 10 s
/// only tells a lost one from a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

/// Runs interop.py in `mode` and parses the JSON it prints.
fn run_python(python: &Path, redis: &RedisServer, mode: &str) -> Value {
    run_python_with(python, redis, mode, &[])
}

fn run_python_with(python: &Path, redis: &RedisServer, mode: &str, args: &[&str]) -> Value {
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
    let Some(python) = support::python::dramatiq() else {
        return;
    };
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
    let Some(python) = support::python::dramatiq() else {
        return;
    };
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
    let Some(python) = support::python::dramatiq() else {
        return;
    };
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

/// The rule for tests that need Python: with `CI=true` they fail when it
/// cannot be had, without it they skip. Checked on this binary's own test,
/// run with an interpreter that does not exist.
#[test]
fn without_python_the_tests_skip_but_fail_under_ci() {
    let run = |ci: Option<&str>| {
        let mut test = Command::new(std::env::current_exe().unwrap());
        test.args([
            "--exact",
            "messages_sent_here_are_run_by_a_python_dramatiq_worker",
            "--nocapture",
        ])
        .env("LEAKPROF_PYTHON", "/nonexistent/python3")
        .env_remove("CI");
        if let Some(ci) = ci {
            test.env("CI", ci);
        }
        test.output().unwrap()
    };
    let skipped = run(None);
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{stderr}");
    assert!(stderr.contains("SKIPPED: no Python"), "{stderr}");
    let failed = run(Some("true"));
    let output = String::from_utf8_lossy(&failed.stdout) + String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "passed under CI=true: {output}");
    assert!(output.contains("required on CI"), "{output}");
}
