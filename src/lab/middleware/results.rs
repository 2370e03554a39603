//! Dramatiq's `Results`: an actor with `store_results` has its return
//! value stored in the result backend for `result_ttl` (default 10
//! minutes) by `after_process_message`; a message that failed for good has
//! its exception stored by `after_nack`, once it is dead-lettered (so not
//! while retries follow), in Dramatiq's encoding, and a caller's
//! `get_result` raises it. With the in-memory backend the stored bytes live
//! in this process until their TTL: retained, not leaked. The encoded
//! result is allocated inside the "result slot" owner scope.

use std::time::Duration;

use super::{MessageCtx, Middleware, Outcome};
use crate::lab::results::{encode_exception, encode_result, ResultBackend};
use crate::owner;

pub struct Results {
    backend: ResultBackend,
    ttl: Duration,
}

impl Results {
    pub fn new(backend: ResultBackend, ttl: Duration) -> Results {
        Results { backend, ttl }
    }

    pub fn backend(&self) -> &ResultBackend {
        &self.backend
    }

    fn wanted(ctx: &MessageCtx) -> bool {
        ctx.actor.options.store_results
            || ctx
                .message
                .options
                .get("store_results")
                .and_then(|v| v.as_bool())
                == Some(true)
    }

    /// Stores `encode()`'s bytes, allocated in the "result slot" scope.
    fn store(&self, ctx: &MessageCtx, encode: impl FnOnce() -> Vec<u8>) {
        let encoded = owner::scope_typed::<Vec<u8>, _>("result slot", encode);
        let key = self.backend.key_for(ctx.message);
        if let Err(e) = ctx
            .env
            .rt
            .block_on(self.backend.store(&key, encoded, self.ttl))
        {
            tracing::error!(
                "Could not store the result of message {}: {e}",
                ctx.message.message_id
            );
        }
    }
}

impl Middleware for Results {
    fn name(&self) -> &'static str {
        "Results"
    }

    fn after_process_message(&self, ctx: &MessageCtx, outcome: &Outcome) {
        if let Outcome::Success(value) = outcome {
            if Results::wanted(ctx) {
                self.store(ctx, || encode_result(value));
            }
        }
    }

    /// Dramatiq stores `Exception("unknown")` when a failed message carries
    /// no exception.
    fn after_nack(&self, ctx: &MessageCtx) {
        if !Results::wanted(ctx) || !ctx.failed() {
            return;
        }
        let exception = ctx.exception();
        self.store(ctx, || match &exception {
            Some(e) => encode_exception(e.kind, &e.message),
            None => encode_exception("Exception", "unknown"),
        });
    }
}
