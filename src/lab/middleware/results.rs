//! Dramatiq's `Results`: an actor with `store_results` has its return
//! value (or, once retries are exhausted, its error) stored in the result
//! backend for `result_ttl` (default 10 minutes). With the in-memory backend
//! the stored bytes live in this process until their TTL: retained, not
//! leaked. The encoded result is allocated inside the "result slot" owner
//! scope.

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
}

impl Middleware for Results {
    fn name(&self) -> &'static str {
        "Results"
    }

    fn after_process_message(&self, ctx: &MessageCtx, outcome: &Outcome) {
        let wanted = ctx.actor.options.store_results
            || ctx
                .message
                .options
                .get("store_results")
                .and_then(|v| v.as_bool())
                == Some(true);
        if !wanted {
            return;
        }
        let encoded = match outcome {
            Outcome::Success(value) => {
                owner::scope_typed::<Vec<u8>, _>("result slot", || encode_result(value))
            }
            // Errors are stored only when no retry follows.
            Outcome::Failure(e) if ctx.failed() => {
                owner::scope_typed::<Vec<u8>, _>("result slot", || {
                    encode_exception(e.kind, &e.message)
                })
            }
            Outcome::Failure(_) => return,
        };
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
