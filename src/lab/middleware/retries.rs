//! Dramatiq's `Retries`: a failed attempt is re-enqueued with exponential
//! backoff until `max_retries`, then dead-lettered.
//!
//! Each retry is a [`RetryRecord`]: its facts and a closure that captures
//! the retry's message (with its arguments) and enqueues it. Firing the
//! record is what sends the retry. Fired records then go to the retry
//! history, which the run reports ([`Retries::history_len`]): the
//! `original` variant keeps every record, closure and all, so every fired
//! closure keeps its message alive (the `retry-args` scenario's leak); the
//! `fixed` variant drops each record once fired and only counts it.

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

/// One retry: its facts and the closure that sends it.
pub struct RetryRecord {
    pub message_id: String,
    /// The `retries` value the retry carries.
    pub retries: u64,
    pub delay: Duration,
    /// Enqueues the retry's message (which it captures) with `delay`.
    send: SendRetry,
}

impl RetryRecord {
    /// Sends the retry: the only way a retry is enqueued.
    pub fn fire(&self, env: &Env) -> Result<Enqueued, BrokerError> {
        (self.send)(env)
    }
}

/// What the retry history holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryLen {
    /// Fired records kept, each with its closure and the message it holds.
    pub kept: usize,
    /// Fired records dropped and only counted.
    pub pruned: u64,
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

    /// What the retry history holds now.
    pub fn history_len(&self) -> HistoryLen {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        HistoryLen {
            kept: h.len(),
            pruned: self.pruned.load(Ordering::Relaxed),
        }
    }

    /// Files a fired record by the history policy.
    fn file(&self, record: RetryRecord) {
        match self.policy {
            HistoryPolicy::KeepFired => self
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record),
            // Fired: nothing of it is kept but the count.
            HistoryPolicy::PruneFired => {
                drop(record);
                self.pruned.fetch_add(1, Ordering::Relaxed);
            }
        }
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

        let send: SendRetry = owner::scope_typed::<SendRetry, _>("retry closure", || {
            Box::new(move |env: &Env| env.enqueue((*retry).clone(), Some(delay)))
        });
        let record = RetryRecord {
            message_id: message.message_id.clone(),
            retries: retries + 1,
            delay,
            send,
        };
        tracing::info!(
            "Retrying message {} (retry {}) in {} milliseconds.",
            record.message_id,
            record.retries,
            record.delay.as_millis()
        );
        if let Err(e) = record.fire(ctx.env) {
            // Never lose the message: dead-letter it rather than ack it.
            tracing::error!(
                "Could not enqueue the retry of message {}: {e}; dead-lettering it.",
                record.message_id
            );
            ctx.fail();
        }
        self.file(record);
    }
}
