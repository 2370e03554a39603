//! Dramatiq's `TimeLimit`: each message gets a deadline (actor option or
//! message option `time_limit`, ms; default 10 minutes). Async actors are
//! cancelled at the deadline by the event loop's interrupt check; sync
//! actors cannot be interrupted in Rust and are reported late instead.

use std::time::{Duration, Instant};

use super::{MessageCtx, Middleware, Outcome, SkipMessage};

#[derive(Default)]
pub struct TimeLimit;

impl Middleware for TimeLimit {
    fn name(&self) -> &'static str {
        "TimeLimit"
    }

    fn before_process_message(&self, ctx: &MessageCtx) -> Result<(), SkipMessage> {
        let limit = ctx
            .message
            .options
            .get("time_limit")
            .and_then(|v| v.as_u64())
            .map(Duration::from_millis)
            .unwrap_or(ctx.actor.options.time_limit);
        ctx.set_deadline(Instant::now() + limit);
        Ok(())
    }

    fn after_process_message(&self, ctx: &MessageCtx, _outcome: &Outcome) {
        if ctx.deadline().is_some_and(|d| Instant::now() > d) {
            tracing::warn!(
                "Time limit exceeded while processing message {}.",
                ctx.message.message_id
            );
        }
    }
}
