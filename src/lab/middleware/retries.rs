//! Dramatiq's `Retries`: a failed attempt is re-enqueued with exponential
//! backoff until `max_retries`, then dead-lettered.
//!
//! Each retry is planned as a closure that captures the failed attempt's
//! message (with its arguments) and sends it; the closure is recorded in a
//! retry history (for introspection). The `original` variant never prunes
//! that history, so every fired closure keeps its message alive — the
//! `retry-args` scenario's leak. The `fixed` variant drops a closure as soon
//! as it has fired and keeps only the record's facts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Env, MessageCtx, Middleware, Outcome};
use crate::lab::backoff::compute_backoff;
use crate::lab::broker::{BrokerError, Enqueued};
use crate::lab::message::{current_millis, Message};
use crate::owner;

/// Dramatiq caps every backoff at 7 days.
const MAX_DELAY: Duration = Duration::from_millis(7 * 86_400_000);
/// Frames kept in `options.traceback` (`traceback.format_exc(limit=30)`).
const TRACEBACK_LIMIT: usize = 30;

/// What happens to fired retry closures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryPolicy {
    /// Keep them forever (`original`).
    KeepFired,
    /// Drop each closure once it has fired (`fixed`).
    PruneFired,
}

type SendRetry = Box<dyn Fn(&Env) -> Result<Enqueued, BrokerError> + Send + Sync>;

/// One planned retry.
pub struct RetryRecord {
    pub message_id: String,
    /// The `retries` value the retry carries.
    pub retries: u64,
    pub delay: Duration,
    /// The closure that sent it (kept: the `original` variant's leak).
    send: SendRetry,
}

impl RetryRecord {
    /// Sends the retry again (the history's reason to keep closures:
    /// replaying a retry by hand).
    pub fn resend(&self, env: &Env) -> Result<Enqueued, BrokerError> {
        (self.send)(env)
    }
}

/// Retries reads `max_retries`, `min_backoff` and `max_backoff` from the
/// message's options, else from the actor's (which carry Dramatiq's
/// defaults unless set).
pub struct Retries {
    policy: HistoryPolicy,
    history: Mutex<Vec<RetryRecord>>,
    pruned: AtomicU64,
}

impl Retries {
    pub fn new(policy: HistoryPolicy) -> Retries {
        Retries {
            policy,
            history: Mutex::new(Vec::new()),
            pruned: AtomicU64::new(0),
        }
    }

    /// Records kept in the history (each holding its fired closure) and
    /// retries pruned once fired.
    pub fn history_len(&self) -> (usize, u64) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        (h.len(), self.pruned.load(Ordering::Relaxed))
    }

    fn option_u64(message: &Message, key: &str) -> Option<u64> {
        message.options.get(key).and_then(|v| v.as_u64())
    }
}

impl Middleware for Retries {
    fn name(&self) -> &'static str {
        "Retries"
    }

    fn after_process_message(&self, ctx: &MessageCtx, outcome: &Outcome) {
        let Outcome::Failure(error) = outcome else {
            return;
        };
        let message = ctx.message;
        if ctx.actor.options.throws.contains(&error.kind) {
            tracing::info!(
                "Aborting message {} ({} is in throws).",
                message.message_id,
                error.kind
            );
            ctx.fail();
            return;
        }
        let retries = message.retries().unwrap_or(0);
        let max_retries =
            Self::option_u64(message, "max_retries").unwrap_or(ctx.actor.options.max_retries);
        if retries >= max_retries {
            tracing::warn!("Retries exceeded for message {}.", message.message_id);
            ctx.fail();
            return;
        }
        let min_backoff = Self::option_u64(message, "min_backoff")
            .map(Duration::from_millis)
            .unwrap_or(ctx.actor.options.min_backoff);
        let max_backoff = Self::option_u64(message, "max_backoff")
            .map(Duration::from_millis)
            .unwrap_or(ctx.actor.options.max_backoff)
            .min(MAX_DELAY);
        let delay = compute_backoff(
            retries.min(u32::MAX as u64) as u32,
            min_backoff,
            max_backoff,
            true,
        );

        // The retry copy: same message id, updated options.
        let mut retry = (**message).clone();
        retry.set_retries(retries + 1);
        retry.set_traceback(error.format_traceback(TRACEBACK_LIMIT));
        retry.set_requeue_timestamp(current_millis());
        let retry = Arc::new(retry);

        let captured = retry.clone();
        let send: SendRetry = owner::scope_typed::<SendRetry, _>("retry closure", || {
            Box::new(move |env: &Env| env.enqueue((*captured).clone(), Some(delay)))
        });
        tracing::info!(
            "Retrying message {} in {} milliseconds.",
            message.message_id,
            delay.as_millis()
        );
        if let Err(e) = send(ctx.env) {
            // Never lose the message: dead-letter it rather than ack it.
            tracing::error!(
                "Could not enqueue the retry of message {}: {e}; dead-lettering it.",
                message.message_id
            );
            ctx.fail();
        }
        drop(retry);
        match self.policy {
            HistoryPolicy::KeepFired => {
                let record = RetryRecord {
                    message_id: message.message_id.clone(),
                    retries: retries + 1,
                    delay,
                    send,
                };
                self.history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(record);
            }
            // Fired: nothing of it is kept but the count.
            HistoryPolicy::PruneFired => {
                self.pruned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
