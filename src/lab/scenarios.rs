//! The seed scenarios: one table, each entry with its name, a one-line
//! description, its actor, what it must show per variant, its defaults and
//! how to build its messages. Every actor is `async` (the AsyncIO
//! middleware is the subject) and fills its payloads, so RSS really grows.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::actor::{ActorFn, Call};
use super::error::{Local, Payload, TaskError};
use super::executor::ActorFuture;
use super::message::{JsonObject, Message};

/// How a scenario's messages reach the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// All of them before the worker starts.
    Upfront,
    /// While the worker runs, at most this many not yet finished at once,
    /// so a run of millions of messages holds only a backlog.
    Streaming { backlog: usize },
}

/// What a scenario must show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expect {
    /// With `original`, each ended attempt of a task leaves this many
    /// payloads alive (the leak per retry, fitted within each task, so
    /// tasks failing side by side do not add up); with `fixed`, nothing
    /// survives its attempt.
    LeaksPerRetry(f64),
    /// Succeeds without retries; memory does not grow in either variant.
    Flat,
    /// Each stored result is retained until its TTL, then dropped, in both
    /// variants.
    RetainedUntilTtl,
}

/// Per-scenario defaults (flags override them).
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub tasks: usize,
    pub threads: usize,
    pub payload_mib: u64,
}

/// What a scenario's messages are built from.
#[derive(Clone, Debug)]
pub struct Params {
    pub payload_bytes: usize,
    pub tasks: usize,
    pub sleep: Duration,
    pub queue: String,
}

pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub actor: &'static str,
    pub function: ActorFn,
    pub expect: Expect,
    pub defaults: Defaults,
    /// The actor stores its results (Results middleware).
    pub store_results: bool,
    /// Arguments of the `index`-th message.
    pub args: fn(&Params, usize) -> Vec<Value>,
    pub feed: Feed,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("actor", &self.actor)
            .field("expect", &self.expect)
            .finish_non_exhaustive()
    }
}

impl Scenario {
    /// The scenario's messages, ready to enqueue.
    pub fn messages(&self, params: &Params) -> Vec<Message> {
        (0..params.tasks.max(1))
            .map(|i| self.message(params, i))
            .collect()
    }

    /// The `index`-th message.
    pub fn message(&self, params: &Params, index: usize) -> Message {
        Message::new(
            params.queue.clone(),
            self.actor,
            (self.args)(params, index),
            JsonObject::new(),
        )
    }
}

const ONE: Defaults = Defaults {
    tasks: 1,
    threads: 1,
    payload_mib: 128,
};

fn size_and_index(p: &Params, i: usize) -> Vec<Value> {
    vec![Value::from(p.payload_bytes as u64), Value::from(i as u64)]
}

fn size_and_sleep(p: &Params, _i: usize) -> Vec<Value> {
    vec![
        Value::from(p.payload_bytes as u64),
        Value::from(p.sleep.as_millis() as u64),
    ]
}

/// The payload travels as the message's argument: a JSON string of
/// `payload_bytes` characters.
fn payload_argument(p: &Params, _i: usize) -> Vec<Value> {
    let text = String::from_utf8(Payload::filled_quietly(p.payload_bytes).into_bytes())
        .unwrap_or_default();
    vec![Value::String(text)]
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "exception",
        description: "each attempt fills a payload and raises BigException(payload); retried until --retries",
        actor: "exception_task",
        function: ActorFn::Async(exception_task),
        expect: Expect::LeaksPerRetry(1.0),
        defaults: ONE,
        store_results: false,
        args: size_and_index,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "nested",
        description: "raise OuterException(payload) from InnerException(payload): two payloads per attempt",
        actor: "nested_task",
        function: ActorFn::Async(nested_task),
        expect: Expect::LeaksPerRetry(2.0),
        defaults: ONE,
        store_results: false,
        args: size_and_index,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "concurrent",
        description: "5 tasks on 5 worker threads, each filling a 64 MiB payload and failing at once",
        actor: "concurrent_task",
        function: ActorFn::Async(exception_task),
        expect: Expect::LeaksPerRetry(1.0),
        defaults: Defaults {
            tasks: 5,
            threads: 5,
            payload_mib: 64,
        },
        store_results: false,
        args: size_and_index,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "large-results",
        description: "3 tasks each return a payload that the Results middleware stores for --result-ttl",
        actor: "large_result_task",
        function: ActorFn::Async(large_result_task),
        expect: Expect::RetainedUntilTtl,
        defaults: Defaults {
            tasks: 3,
            threads: 1,
            payload_mib: 128,
        },
        store_results: true,
        args: size_and_index,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "sleep",
        description: "fills a payload and keeps it across an async sleep of --sleep, then succeeds",
        actor: "sleep_task",
        function: ActorFn::Async(sleep_task),
        expect: Expect::Flat,
        defaults: ONE,
        store_results: false,
        args: size_and_sleep,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "sleep-no-ref",
        description: "fills a payload, drops it, then sleeps for --sleep and succeeds",
        actor: "sleep_task_no_reference",
        function: ActorFn::Async(sleep_task_no_reference),
        expect: Expect::Flat,
        defaults: ONE,
        store_results: false,
        args: size_and_sleep,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "traceback",
        description: "the payload is a local of a deep call chain whose frames the error's traceback keeps",
        actor: "traceback_task",
        function: ActorFn::Async(traceback_task),
        expect: Expect::LeaksPerRetry(1.0),
        defaults: ONE,
        store_results: false,
        args: size_and_index,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "stream",
        description: "an async stream's buffer of 1 MiB chunks overflows and travels in BufferOverflowError",
        actor: "stream_task",
        function: ActorFn::Async(stream_task),
        expect: Expect::LeaksPerRetry(1.0),
        defaults: ONE,
        store_results: false,
        args: size_and_index,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "context-manager",
        description: "a guarded resource's data ends in ProcessingError raised inside the guard",
        actor: "context_manager_task",
        function: ActorFn::Async(context_manager_task),
        expect: Expect::LeaksPerRetry(1.0),
        defaults: ONE,
        store_results: false,
        args: size_and_index,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "retry-args",
        description: "the payload is the message's argument; the error is small, the retry closure keeps the message",
        actor: "retry_args_task",
        function: ActorFn::Async(retry_args_task),
        expect: Expect::LeaksPerRetry(1.0),
        defaults: ONE,
        store_results: false,
        args: payload_argument,
        feed: Feed::Upfront,
    },
    Scenario {
        name: "noop",
        description: "does nothing and succeeds: --tasks messages fed while the worker runs, to measure the worker and the recorder themselves",
        actor: "noop_task",
        function: ActorFn::Async(noop_task),
        expect: Expect::Flat,
        defaults: Defaults {
            tasks: 100_000,
            threads: 1,
            payload_mib: 1,
        },
        store_results: false,
        args: no_args,
        feed: Feed::Streaming { backlog: 1_000 },
    },
];

fn no_args(_: &Params, _: usize) -> Vec<Value> {
    Vec::new()
}

/// The no-op actor.
fn noop_task(_call: Call) -> ActorFuture {
    Box::pin(async { Ok(Value::Null) })
}

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

pub fn names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|s| s.name).collect()
}

fn payload_size(call: &Call) -> Result<usize, TaskError> {
    Ok(call.u64_arg(0, "payload bytes")? as usize)
}

/// `BigException(data)`: the seed's scenario 1 (and, with 64 MiB and five
/// tasks, the concurrent one).
fn exception_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let data = Payload::filled(payload_size(&call)?);
        Err(TaskError::new("BigException", "Big exception with large data").with_payload(data))
    })
}

/// `raise OuterException(outer_data) from InnerException(inner_data)`.
fn nested_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let size = payload_size(&call)?;
        let inner =
            TaskError::new("InnerException", "inner failure").with_payload(Payload::filled(size));
        let outer_data = Payload::filled(size);
        Err(TaskError::new("OuterException", "outer failure")
            .with_payload(outer_data)
            .caused_by(inner))
    })
}

fn large_result_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let data = Payload::filled(payload_size(&call)?);
        // The payload is ASCII, so it becomes the JSON string result as is.
        let text = String::from_utf8(data.into_bytes())
            .map_err(|_| TaskError::new("ValueError", "payload is not text"))?;
        Ok(Value::String(text))
    })
}

fn sleep_arg(call: &Call) -> Result<Duration, TaskError> {
    Ok(Duration::from_millis(call.u64_arg(1, "sleep ms")?))
}

fn sleep_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let data = Payload::filled(payload_size(&call)?);
        tokio::time::sleep(sleep_arg(&call)?).await;
        drop(data);
        Ok(Value::Null)
    })
}

fn sleep_task_no_reference(call: Call) -> ActorFuture {
    Box::pin(async move {
        let data = Payload::filled(payload_size(&call)?);
        drop(data);
        tokio::time::sleep(sleep_arg(&call)?).await;
        Ok(Value::Null)
    })
}

/// Frames of the deep call chain, outermost first; `process_data` holds the
/// payload (`large_df`), every frame below it passes it on.
const CHAIN: &[&str] = &[
    "process_data",
    "validate",
    "validate_rows",
    "validate_row",
    "validate_field",
    "lookup_schema",
    "resolve_schema",
    "load_schema",
    "parse_schema",
    "check_schema",
];

fn traceback_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let data = Arc::new(Payload::filled(payload_size(&call)?));
        Err(call_chain(0, &data))
    })
}

/// Descends the chain; the innermost frame raises; each frame on the way
/// out adds itself to the traceback with its locals, as Python does.
#[inline(never)]
fn call_chain(depth: usize, data: &Arc<Payload>) -> TaskError {
    let err = if depth + 1 == CHAIN.len() {
        TaskError::new("ValidationError", "Schema mismatch")
    } else {
        call_chain(depth + 1, data)
    };
    let name = if depth == 0 { "large_df" } else { "data" };
    err.through(
        CHAIN[depth],
        vec![
            Local::Data {
                name,
                value: data.clone(),
            },
            Local::Text {
                name: "depth",
                value: depth.to_string(),
            },
        ],
    )
}

/// An async source of 1 MiB chunks.
struct ChunkStream {
    left: usize,
}

impl ChunkStream {
    const CHUNK: usize = 1 << 20;

    async fn next(&mut self) -> Option<Vec<u8>> {
        if self.left == 0 {
            return None;
        }
        tokio::task::yield_now().await;
        let n = self.left.min(Self::CHUNK);
        self.left -= n;
        Some(Payload::filled_quietly(n).into_bytes())
    }
}

fn stream_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let threshold = payload_size(&call)?;
        let mut source = ChunkStream { left: threshold };
        let mut buffer: Vec<Vec<u8>> = Vec::new();
        let mut buffered = 0;
        crate::mark(crate::format::events::BEFORE_ALLOCATION);
        while let Some(chunk) = source.next().await {
            buffered += chunk.len();
            buffer.push(chunk);
            if buffered >= threshold {
                crate::mark(crate::format::events::AFTER_ALLOCATION);
                return Err(TaskError::new(
                    "BufferOverflowError",
                    format!("buffer reached {buffered} bytes"),
                )
                .through(
                    "process_stream",
                    vec![Local::Chunks {
                        name: "buffer",
                        value: buffer,
                    }],
                ));
            }
        }
        Ok(Value::Null)
    })
}

/// `async with LargeResourceManager() as resource:`: a resource acquired
/// on entry and released on exit, raising or not. Its data is shared, as a
/// Python attribute is: `raise ProcessingError(resource.data)` hands the
/// error a reference, and the exit drops the resource's own, so what
/// outlives the block is only what the error holds.
struct LargeResource {
    /// `None` once released.
    data: Option<Arc<Payload>>,
}

impl LargeResource {
    /// `__aenter__`.
    async fn acquire(size: usize) -> LargeResource {
        tokio::task::yield_now().await;
        LargeResource {
            data: Some(Arc::new(Payload::filled(size))),
        }
    }

    /// `resource.data`: a reference. (Only a released resource has none,
    /// and only `drop` releases it.)
    fn data(&self) -> Arc<Payload> {
        self.data
            .clone()
            .unwrap_or_else(|| Arc::new(Payload::filled_quietly(0)))
    }

    /// `__aexit__`: the resource lets go of its data.
    fn release(&mut self) {
        self.data = None;
    }
}

impl Drop for LargeResource {
    /// Leaving the block, by an error or not, exits the context.
    fn drop(&mut self) {
        self.release();
    }
}

fn context_manager_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let resource = LargeResource::acquire(payload_size(&call)?).await;
        Err(TaskError::new(
            "ProcessingError",
            "processing failed inside the resource guard",
        )
        .with_payload(resource.data()))
    })
}

fn retry_args_task(call: Call) -> ActorFuture {
    Box::pin(async move {
        let len = match call.arg(0) {
            Some(Value::String(s)) => s.len(),
            _ => {
                return Err(TaskError::new(
                    "TypeError",
                    "retry_args_task takes one string argument",
                ))
            }
        };
        Err(TaskError::new(
            "UpstreamError",
            format!("upstream rejected a batch of {len} bytes"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_actors_distinct_where_functions_differ() {
        let mut names = names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        let mut actors: Vec<_> = SCENARIOS.iter().map(|s| s.actor).collect();
        actors.sort();
        actors.dedup();
        assert_eq!(actors.len(), SCENARIOS.len());
    }

    /// `async with` releases the resource on exit, raising or not, so what
    /// survives a context-manager attempt is only the error's reference.
    #[test]
    fn the_guard_releases_its_data_on_exit_and_only_the_error_keeps_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let data = rt.block_on(async {
            let resource = LargeResource::acquire(1024).await;
            Arc::downgrade(&resource.data())
        });
        assert!(data.upgrade().is_none(), "released on a clean exit");

        let params = Params {
            payload_bytes: 1024,
            tasks: 1,
            sleep: Duration::ZERO,
            queue: "default".into(),
        };
        let message = find("context-manager").unwrap().messages(&params).remove(0);
        let call = Call {
            message: Arc::new(message),
            retries: 0,
        };
        let error = rt.block_on(context_manager_task(call)).unwrap_err();
        let payload = error
            .payload
            .as_ref()
            .expect("ProcessingError(resource.data)");
        assert_eq!(payload.len(), 1024);
        assert_eq!(
            Arc::strong_count(payload),
            1,
            "the guard released its reference on the way out"
        );
    }

    #[test]
    fn messages_carry_the_payload_size_or_the_payload() {
        let p = Params {
            payload_bytes: 1000,
            tasks: 2,
            sleep: Duration::from_millis(5),
            queue: "default".into(),
        };
        let m = find("exception").unwrap().messages(&p);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].args[0], Value::from(1000u64));
        let m = find("retry-args").unwrap().messages(&p);
        assert_eq!(m[0].args[0].as_str().map(str::len), Some(1000));
        let m = find("sleep").unwrap().messages(&p);
        assert_eq!(m[0].args[1], Value::from(5u64));
    }
}
