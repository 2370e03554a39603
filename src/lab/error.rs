//! What scenarios allocate and how their failures carry it: [`Payload`]
//! (memory that really becomes resident) and [`TaskError`], the error value
//! an actor raises, with a cause chain and a traceback whose frames keep
//! their locals, as a Python exception's traceback keeps its frames.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use crate::format::events;

use super::executor::FutureState;

/// A scenario's data: `len` bytes filled with a non-zero pattern, so every
/// page is written and counts in RSS (a zeroed `vec!` may stay unmapped).
pub struct Payload {
    bytes: Vec<u8>,
}

impl Payload {
    /// Allocates and fills a payload, marking the seed's measuring points
    /// ("before allocation", "after allocation") on the timeline.
    pub fn filled(len: usize) -> Payload {
        crate::mark(events::BEFORE_ALLOCATION);
        let payload = Payload::filled_quietly(len);
        crate::mark(events::AFTER_ALLOCATION);
        payload
    }

    /// Allocates and fills a payload without marking the timeline.
    pub fn filled_quietly(len: usize) -> Payload {
        // ASCII, so a payload can also travel as a JSON string.
        Payload {
            bytes: vec![b'x'; len],
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.bytes.len())
    }
}

/// A local variable kept by a traceback frame.
pub enum Local {
    Text {
        name: &'static str,
        value: String,
    },
    /// Data shared with the frame that held it.
    Data {
        name: &'static str,
        value: Arc<Payload>,
    },
    /// Chunks an async stream had buffered.
    Chunks {
        name: &'static str,
        value: Vec<Vec<u8>>,
    },
    /// The future the error came out of (the `original` executor's strong
    /// back-pointer: the reference cycle).
    Future {
        name: &'static str,
        value: Arc<FutureState>,
    },
    /// The same back-pointer, weak (the `fixed` executor).
    WeakFuture {
        name: &'static str,
        value: Weak<FutureState>,
    },
}

impl Local {
    fn describe(&self) -> String {
        match self {
            Local::Text { name, value } => format!("{name} = {value:?}"),
            Local::Data { name, value } => format!("{name} = <{} bytes>", value.len()),
            Local::Chunks { name, value } => {
                format!(
                    "{name} = <{} chunks, {} bytes>",
                    value.len(),
                    value.iter().map(Vec::len).sum::<usize>()
                )
            }
            Local::Future { name, .. } => format!("{name} = <Future>"),
            Local::WeakFuture { name, .. } => format!("{name} = <weak Future>"),
        }
    }
}

/// One frame of a traceback.
pub struct TraceFrame {
    pub function: &'static str,
    pub locals: Vec<Local>,
}

/// The error an actor raises.
pub struct TaskError {
    pub kind: &'static str,
    pub message: String,
    /// Data the error itself carries (`BigException(data)`), owned or
    /// shared with whoever else holds it (`ProcessingError(resource.data)`).
    pub payload: Option<Arc<Payload>>,
    /// The error this one was raised from (`raise Outer from inner`).
    pub cause: Option<Box<TaskError>>,
    /// Frames the error passed through, innermost first, with their locals.
    traceback: Mutex<Vec<TraceFrame>>,
}

/// The owner label of raised errors and what they hold.
pub const ERROR_VALUE: &str = "error value";

/// Runs `f` in the "error value" owner scope, typed `TaskError`: the one
/// place raised errors get their label.
fn in_error_scope<R>(f: impl FnOnce() -> R) -> R {
    crate::owner::scope_typed::<TaskError, _>(ERROR_VALUE, f)
}

impl TaskError {
    /// A new error. It is labelled once raised ([`TaskError::raised`]).
    pub fn new(kind: &'static str, message: impl Into<String>) -> TaskError {
        TaskError {
            kind,
            message: message.into(),
            payload: None,
            cause: None,
            traceback: Mutex::new(Vec::new()),
        }
    }

    pub fn with_payload(mut self, payload: impl Into<Arc<Payload>>) -> TaskError {
        self.payload = Some(payload.into());
        self
    }

    pub fn caused_by(mut self, cause: TaskError) -> TaskError {
        self.cause = Some(in_error_scope(|| Box::new(cause)));
        self
    }

    /// The error as raised: shared, its block labelled "error value".
    pub fn raised(self) -> Arc<TaskError> {
        in_error_scope(|| Arc::new(self))
    }

    /// Records that the error passed through `function`, keeping `locals`.
    pub fn push_frame(&self, function: &'static str, locals: Vec<Local>) {
        let frame = TraceFrame { function, locals };
        match self.traceback.lock() {
            Ok(mut tb) => tb.push(frame),
            Err(poisoned) => poisoned.into_inner().push(frame),
        }
    }

    /// Builder form of [`TaskError::push_frame`].
    pub fn through(self, function: &'static str, locals: Vec<Local>) -> TaskError {
        self.push_frame(function, locals);
        self
    }

    /// A Python-style traceback text, as Dramatiq stores in
    /// `options.traceback` (innermost frame last; at most `limit` frames).
    pub fn format_traceback(&self, limit: usize) -> String {
        let mut out = String::new();
        if let Some(cause) = &self.cause {
            out.push_str(&cause.format_traceback(limit));
            out.push_str(
                "\nThe above exception was the direct cause of the following exception:\n\n",
            );
        }
        out.push_str("Traceback (most recent call last):\n");
        if let Ok(tb) = self.traceback.lock() {
            for frame in tb.iter().rev().take(limit) {
                out.push_str(&format!("  in {}\n", frame.function));
                for l in &frame.locals {
                    out.push_str(&format!("    {}\n", l.describe()));
                }
            }
        }
        out.push_str(&format!("{}: {}\n", self.kind, self.message));
        out
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(c) = &self.cause {
            write!(f, " (caused by {c})")?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}
