//! Wire compatibility with Python Dramatiq 2.0.0, against messages captured
//! from it (tests/fixtures/dramatiq, see its README.md).
#![cfg(feature = "cli")]

use std::path::PathBuf;

use leakprof::lab::message::{Message, OPTION_ETA};
use leakprof::lab::results::encode_result;
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dramatiq/messages")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

const MESSAGE_FIXTURES: [&str; 5] = [
    "plain.json",
    "delayed.json",
    "retry.json",
    "dead-lettered.json",
    "async-dead-lettered.json",
];

#[test]
fn every_fixture_message_re_encodes_byte_for_byte() {
    for name in MESSAGE_FIXTURES {
        let bytes = fixture(name);
        let message = Message::decode(&bytes).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(
            String::from_utf8(message.encode()).unwrap(),
            String::from_utf8(bytes).unwrap(),
            "{name} changed through decode and encode"
        );
    }
}

#[test]
fn retry_fixture_options_read_through_typed_accessors() {
    let message = Message::decode(&fixture("retry.json")).unwrap();
    assert_eq!(message.queue_name, "default.DQ");
    assert_eq!(
        message.redis_message_id(),
        Some("9d44237e-fa9a-4976-9042-d6431b2ecc54")
    );
    assert_eq!(message.retries(), Some(1));
    assert_eq!(message.requeue_timestamp(), Some(1795477569977));
    assert_eq!(message.eta(), Some(1795477569991));
    assert!(message
        .traceback()
        .unwrap()
        .ends_with("ValueError: fail 7\n"));
    let order: Vec<&str> = message.options.iter().map(|(key, _)| key).collect();
    assert_eq!(
        order,
        [
            "redis_message_id",
            "retries",
            "traceback",
            "requeue_timestamp",
            OPTION_ETA
        ]
    );
}

#[test]
fn dead_lettered_fixture_is_the_retry_moved_back_without_its_eta() {
    // What the worker does when the retry's eta passes: canonical queue, no
    // eta, a new redis_message_id in place; the rest is unchanged.
    let mut promoted = Message::decode(&fixture("retry.json")).unwrap();
    promoted.queue_name = "default".to_owned();
    promoted.remove_eta();
    promoted.options.insert(
        "redis_message_id",
        json!("5b60053c-08eb-45ab-b8d6-dad7d80eb936"),
    );
    assert_eq!(promoted.encode(), fixture("dead-lettered.json"));
}

#[test]
fn result_fixture_value_is_the_python_encoding_of_the_result() {
    // result-key.txt: line 1 the key, line 2 the list as redis-py shows it.
    let text = String::from_utf8(fixture("result-key.txt")).unwrap();
    let mut lines = text.lines();
    let key = lines.next().unwrap();
    assert_eq!(key.len(), 32, "an md5 hex digest");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(lines.next(), Some("[b'42']"));
    assert_eq!(encode_result(&json!(42)), b"42");
}
