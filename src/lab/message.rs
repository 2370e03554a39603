//! Dramatiq messages and their JSON wire format.
//!
//! A [`Message`] is what an actor call becomes on the wire. Its JSON is the
//! contract with Python Dramatiq 2.0: [`Message::encode`] writes the bytes
//! Dramatiq's `JSONEncoder` writes (field order, compact separators, ASCII
//! escapes, Python float repr) and [`Message::decode`] accepts what Dramatiq
//! writes, so a message can travel through Redis in either direction.
//!
//! Options and keyword arguments keep their insertion order, as Python dicts
//! do, because Dramatiq builds options in a meaningful order
//! (`redis_message_id`, `retries`, `traceback`, `requeue_timestamp`, `eta`)
//! and re-encoding must not reorder them. JSON objects nested *inside*
//! argument values are plain [`serde_json::Value`]s and come back with their
//! keys sorted; Python reads them by key, so their meaning is unchanged.
//!
//! This module never performs I/O and never copies argument values except
//! where a caller asks for a clone: a 128 MiB string argument is parsed once
//! and written once.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::python_json;

/// Option key: the id of this copy of the message inside Redis (the hash
/// key), new on every enqueue; differs from `message_id`.
pub const OPTION_REDIS_MESSAGE_ID: &str = "redis_message_id";
/// Option key: how many times the message has been retried so far.
pub const OPTION_RETRIES: &str = "retries";
/// Option key: the formatted traceback of the last failed attempt.
pub const OPTION_TRACEBACK: &str = "traceback";
/// Option key: when the Retries middleware last re-enqueued it (ms).
pub const OPTION_REQUEUE_TIMESTAMP: &str = "requeue_timestamp";
/// Option key: the earliest time a delayed message may run (ms since epoch).
pub const OPTION_ETA: &str = "eta";

/// Suffix of a delay queue: `default.DQ` holds `default`'s delayed messages.
pub const DELAY_QUEUE_SUFFIX: &str = ".DQ";
/// Suffix of a dead-letter queue: `default.XQ`.
pub const DEAD_LETTER_QUEUE_SUFFIX: &str = ".XQ";

/// One actor invocation, as Dramatiq 2.0 stores it.
///
/// Field order is the wire order; do not reorder.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    /// The queue this copy lives on (`default`, or `default.DQ` while delayed).
    pub queue_name: String,
    pub actor_name: String,
    pub args: Vec<Value>,
    pub kwargs: JsonObject,
    /// Broker and middleware options, in insertion order.
    pub options: JsonObject,
    /// Globally unique id (a UUID v4 string), kept across retries.
    pub message_id: String,
    /// When the message was first created, ms since the UNIX epoch.
    pub message_timestamp: u64,
}

impl Message {
    /// A new message for `actor` on `queue` with a fresh UUID v4 id, the
    /// current time and no options (as `actor.message(*args, **kwargs)`).
    pub fn new(
        queue_name: impl Into<String>,
        actor_name: impl Into<String>,
        args: Vec<Value>,
        kwargs: JsonObject,
    ) -> Message {
        Message {
            queue_name: queue_name.into(),
            actor_name: actor_name.into(),
            args,
            kwargs,
            options: JsonObject::new(),
            message_id: uuid::Uuid::new_v4().to_string(),
            message_timestamp: current_millis(),
        }
    }

    /// The exact bytes Dramatiq's `Message.encode()` produces.
    pub fn encode(&self) -> Vec<u8> {
        python_json::to_vec(self)
    }

    /// Parses Dramatiq's JSON. All seven fields are required and no other
    /// field is accepted (Dramatiq builds the dataclass from exactly these).
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        serde_json::from_slice(bytes).map_err(MessageError::from_json)
    }

    /// A message with no content; used where a message has been moved out
    /// of a holder that still needs a value. Allocates nothing.
    pub(crate) fn placeholder() -> Message {
        Message {
            queue_name: String::new(),
            actor_name: String::new(),
            args: Vec::new(),
            kwargs: JsonObject::new(),
            options: JsonObject::new(),
            message_id: String::new(),
            message_timestamp: 0,
        }
    }

    /// `options.redis_message_id`, if present and a string.
    pub fn redis_message_id(&self) -> Option<&str> {
        self.options.get(OPTION_REDIS_MESSAGE_ID)?.as_str()
    }

    /// `options.retries`, if present and a non-negative integer.
    /// Dramatiq treats a missing value as 0.
    pub fn retries(&self) -> Option<u64> {
        self.options.get(OPTION_RETRIES)?.as_u64()
    }

    /// Sets `options.retries` (kept in place if present, appended if not).
    pub fn set_retries(&mut self, retries: u64) {
        self.options.insert(OPTION_RETRIES, Value::from(retries));
    }

    /// `options.traceback`, if present and a string.
    pub fn traceback(&self) -> Option<&str> {
        self.options.get(OPTION_TRACEBACK)?.as_str()
    }

    /// Sets `options.traceback`.
    pub fn set_traceback(&mut self, traceback: impl Into<String>) {
        self.options
            .insert(OPTION_TRACEBACK, Value::from(traceback.into()));
    }

    /// `options.requeue_timestamp` (ms), if present and an integer.
    pub fn requeue_timestamp(&self) -> Option<u64> {
        self.options.get(OPTION_REQUEUE_TIMESTAMP)?.as_u64()
    }

    /// Sets `options.requeue_timestamp` (ms since epoch).
    pub fn set_requeue_timestamp(&mut self, millis: u64) {
        self.options
            .insert(OPTION_REQUEUE_TIMESTAMP, Value::from(millis));
    }

    /// `options.eta` (ms since epoch), if present and a number. Dramatiq
    /// accepts int or float etas; a float is truncated.
    pub fn eta(&self) -> Option<u64> {
        let eta = self.options.get(OPTION_ETA)?;
        eta.as_u64().or_else(|| {
            eta.as_f64()
                .filter(|eta| eta.is_finite() && *eta >= 0.0)
                .map(|eta| eta as u64)
        })
    }

    /// Sets `options.eta` (ms since epoch).
    pub fn set_eta(&mut self, millis: u64) {
        self.options.insert(OPTION_ETA, Value::from(millis));
    }

    /// Removes `options.eta`, keeping the order of the other options.
    pub fn remove_eta(&mut self) -> Option<Value> {
        self.options.remove(OPTION_ETA)
    }
}

/// A message is only ever a JSON object with exactly the seven fields
/// (serde's derive would also take a seven-element array; Dramatiq does not).
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Message, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            queue_name: String,
            actor_name: String,
            args: Vec<Value>,
            kwargs: JsonObject,
            options: JsonObject,
            message_id: String,
            message_timestamp: u64,
        }

        struct ObjectOnly;

        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object with the fields of a Dramatiq message")
            }

            fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<Fields, A::Error> {
                Fields::deserialize(MapAccessDeserializer::new(access))
            }
        }

        let fields = deserializer.deserialize_map(ObjectOnly)?;
        Ok(Message {
            queue_name: fields.queue_name,
            actor_name: fields.actor_name,
            args: fields.args,
            kwargs: fields.kwargs,
            options: fields.options,
            message_id: fields.message_id,
            message_timestamp: fields.message_timestamp,
        })
    }
}

/// The current UNIX time in milliseconds (Dramatiq's `current_millis()`).
pub fn current_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// The canonical queue of a delay or dead-letter queue: `default.DQ` ->
/// `default`; any other name is returned unchanged.
pub fn q_name(queue_name: &str) -> &str {
    queue_name
        .strip_suffix(DELAY_QUEUE_SUFFIX)
        .or_else(|| queue_name.strip_suffix(DEAD_LETTER_QUEUE_SUFFIX))
        .unwrap_or(queue_name)
}

/// The delay queue of a queue: `default` -> `default.DQ`; a delay queue is
/// returned unchanged and a dead-letter queue maps to its canonical's.
pub fn dq_name(queue_name: &str) -> String {
    if queue_name.ends_with(DELAY_QUEUE_SUFFIX) {
        return queue_name.to_owned();
    }
    format!("{}{DELAY_QUEUE_SUFFIX}", q_name(queue_name))
}

/// The dead-letter queue of a queue: `default` and `default.DQ` both map to
/// `default.XQ` (there is never a `default.DQ.XQ`).
pub fn xq_name(queue_name: &str) -> String {
    if queue_name.ends_with(DEAD_LETTER_QUEUE_SUFFIX) {
        return queue_name.to_owned();
    }
    format!("{}{DEAD_LETTER_QUEUE_SUFFIX}", q_name(queue_name))
}

/// A JSON object that keeps insertion order, like a Python dict: inserting
/// an existing key replaces its value in place, removing a key keeps the
/// order of the rest, and a duplicate key while decoding keeps the first
/// position and the last value (what `json.loads` does).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonObject(IndexMap<String, Value>);

impl JsonObject {
    pub fn new() -> JsonObject {
        JsonObject(IndexMap::new())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.0.get_mut(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Sets `key`, keeping its position if present; returns the old value.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        self.0.insert(key.into(), value)
    }

    /// Removes `key`, keeping the order of the remaining keys.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.shift_remove(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value))
    }
}

impl<K: Into<String>> FromIterator<(K, Value)> for JsonObject {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(entries: I) -> JsonObject {
        JsonObject(
            entries
                .into_iter()
                .map(|(key, value)| (key.into(), value))
                .collect(),
        )
    }
}

impl IntoIterator for JsonObject {
    type Item = (String, Value);
    type IntoIter = indexmap::map::IntoIter<String, Value>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for JsonObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonObject, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = JsonObject;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<JsonObject, A::Error> {
                let mut object = IndexMap::with_capacity(access.size_hint().unwrap_or(0));
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    object.insert(key, value);
                }
                Ok(JsonObject(object))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Why bytes are not a Dramatiq message. Displays as one line, e.g.
/// `not JSON: expected value at line 1 column 1` or
/// `not a Dramatiq message: missing field `actor_name` at line 1 column 42`.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct MessageError {
    pub kind: MessageErrorKind,
    /// serde_json's description, with the position in the input.
    pub detail: String,
}

/// The broad reason a message failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageErrorKind {
    /// Not valid (UTF-8) JSON at all, or truncated.
    NotJson,
    /// Valid JSON, but a field is missing, unknown or of the wrong type.
    NotAMessage,
}

impl fmt::Display for MessageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            MessageErrorKind::NotJson => "not JSON",
            MessageErrorKind::NotAMessage => "not a Dramatiq message",
        })
    }
}

impl MessageError {
    fn from_json(error: serde_json::Error) -> MessageError {
        let kind = match error.classify() {
            serde_json::error::Category::Data => MessageErrorKind::NotAMessage,
            _ => MessageErrorKind::NotJson,
        };
        MessageError {
            kind,
            detail: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: &str = r#"{"queue_name":"default","actor_name":"plain","args":[1,"a"],"kwargs":{},"options":{"redis_message_id":"f55c0fdc-a141-4e65-9dd2-0fd78adc178b"},"message_id":"0d9a25de-1fe8-46d2-85cb-7597bfde4361","message_timestamp":1795477569952}"#;

    #[test]
    fn plain_fixture_round_trips_byte_for_byte() {
        let message = Message::decode(PLAIN.as_bytes()).unwrap();
        assert_eq!(message.actor_name, "plain");
        assert_eq!(message.args, vec![json!(1), json!("a")]);
        assert_eq!(
            message.redis_message_id(),
            Some("f55c0fdc-a141-4e65-9dd2-0fd78adc178b")
        );
        assert_eq!(message.encode(), PLAIN.as_bytes());
    }

    #[test]
    fn options_keep_insertion_order_like_a_python_dict() {
        let mut message = Message::new("default", "failing", vec![json!(7)], JsonObject::new());
        message
            .options
            .insert(OPTION_REDIS_MESSAGE_ID, json!("id-1"));
        message.set_retries(1);
        message.set_traceback("Traceback ...");
        message.set_requeue_timestamp(5);
        message.set_eta(10);
        // Replacing an existing key keeps its place, as `message.copy(options=...)` does.
        message
            .options
            .insert(OPTION_REDIS_MESSAGE_ID, json!("id-2"));
        let keys: Vec<&str> = message.options.iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            [
                "redis_message_id",
                "retries",
                "traceback",
                "requeue_timestamp",
                "eta"
            ]
        );
        message.remove_eta();
        message.set_eta(11);
        let keys: Vec<&str> = message.options.iter().map(|(key, _)| key).collect();
        assert_eq!(keys.last(), Some(&"eta"));
        assert_eq!(message.eta(), Some(11));
    }

    #[test]
    fn kwargs_keep_their_order_through_a_round_trip() {
        let wire = r#"{"queue_name":"q","actor_name":"a","args":[],"kwargs":{"z":1,"a":2,"m":{"y":1,"b":2}},"options":{},"message_id":"m","message_timestamp":1}"#;
        let message = Message::decode(wire.as_bytes()).unwrap();
        // Top-level kwargs keep their order; the nested object is sorted.
        assert_eq!(
            String::from_utf8(message.encode()).unwrap(),
            r#"{"queue_name":"q","actor_name":"a","args":[],"kwargs":{"z":1,"a":2,"m":{"b":2,"y":1}},"options":{},"message_id":"m","message_timestamp":1}"#
        );
    }

    #[test]
    fn duplicate_keys_keep_first_position_and_last_value() {
        let wire = r#"{"queue_name":"q","actor_name":"a","args":[],"kwargs":{"x":1,"y":2,"x":3},"options":{},"message_id":"m","message_timestamp":1}"#;
        let message = Message::decode(wire.as_bytes()).unwrap();
        let entries: Vec<(&str, &Value)> = message.kwargs.iter().collect();
        assert_eq!(entries, [("x", &json!(3)), ("y", &json!(2))]);
    }

    #[test]
    fn malformed_input_gives_a_one_line_reason() {
        let cases: [(&[u8], MessageErrorKind, &str); 6] = [
            (
                br#"["q","a",[],{},{},"m",1]"#,
                MessageErrorKind::NotAMessage,
                "invalid type: sequence, expected a JSON object",
            ),
            (b"not json", MessageErrorKind::NotJson, "not JSON: expected"),
            (b"{\"queue_name\":", MessageErrorKind::NotJson, "not JSON: EOF"),
            (
                br#"{"queue_name":"q","args":[],"kwargs":{},"options":{},"message_id":"m","message_timestamp":1}"#,
                MessageErrorKind::NotAMessage,
                "missing field `actor_name`",
            ),
            (
                br#"{"queue_name":"q","actor_name":"a","args":{},"kwargs":{},"options":{},"message_id":"m","message_timestamp":1}"#,
                MessageErrorKind::NotAMessage,
                "invalid type: map, expected a sequence",
            ),
            (
                br#"{"queue_name":"q","actor_name":"a","args":[],"kwargs":{},"options":{},"message_id":"m","message_timestamp":1,"extra":0}"#,
                MessageErrorKind::NotAMessage,
                "unknown field `extra`",
            ),
        ];
        for (input, kind, needle) in cases {
            let error = Message::decode(input).unwrap_err();
            let text = error.to_string();
            assert_eq!(error.kind, kind, "{text}");
            assert!(text.contains(needle), "{text:?} should contain {needle:?}");
            assert!(!text.contains('\n'), "one line: {text:?}");
        }
    }

    #[test]
    fn eta_accepts_python_floats_and_ignores_garbage() {
        let mut message = Message::new("q", "a", vec![], JsonObject::new());
        message.options.insert(OPTION_ETA, json!(1795477574958.7));
        assert_eq!(message.eta(), Some(1795477574958));
        message.options.insert(OPTION_ETA, json!("soon"));
        assert_eq!(message.eta(), None);
    }

    #[test]
    fn new_messages_get_a_uuid_v4_and_the_current_time() {
        let before = current_millis();
        let message = Message::new("default", "plain", vec![], JsonObject::new());
        let id = uuid::Uuid::parse_str(&message.message_id).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert!(message.message_timestamp >= before);
        assert!(message.options.is_empty());
    }

    #[test]
    fn queue_names_follow_dramatiq() {
        assert_eq!(q_name("default"), "default");
        assert_eq!(q_name("default.DQ"), "default");
        assert_eq!(q_name("default.XQ"), "default");
        assert_eq!(dq_name("default"), "default.DQ");
        assert_eq!(dq_name("default.DQ"), "default.DQ");
        assert_eq!(dq_name("default.XQ"), "default.DQ");
        assert_eq!(xq_name("default"), "default.XQ");
        assert_eq!(xq_name("default.DQ"), "default.XQ");
        assert_eq!(xq_name("default.XQ"), "default.XQ");
    }

    #[test]
    fn a_128_mib_argument_round_trips_in_linear_time() {
        // A quadratic encoder or decoder would not finish on this input.
        let payload = "x".repeat(128 << 20);
        let message = Message::new(
            "default",
            "big",
            vec![Value::String(payload)],
            JsonObject::new(),
        );
        let bytes = message.encode();
        assert!(bytes.len() > 128 << 20);
        let decoded = Message::decode(&bytes).unwrap();
        assert_eq!(decoded, message);
    }
}
