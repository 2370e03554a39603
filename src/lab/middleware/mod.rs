//! The middleware chain, with Dramatiq's hook points: `before_*` hooks run
//! in chain order, `after_*` hooks in reverse (as `Broker.emit_after`).
//! A message's hooks come in Dramatiq's order: `before_process_message`,
//! the actor, `after_process_message` (or `after_skip_message`), then the
//! settle and, for a failed message once it is dead-lettered, `after_nack`.
//!
//! The lab's chain is `TimeLimit, Retries, Results, AsyncIO` in Dramatiq's
//! default order (`AsyncIO` and `Results` appended as users add them).
//! Which `Retries` history policy and which `AsyncIO` hand-off are used is
//! decided by the middleware variant ([`super::variants`]).

mod asyncio;
mod results;
mod retries;
mod time_limit;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use asyncio::AsyncIo;
pub use results::Results;
pub use retries::{HistoryLen, HistoryPolicy, Retries, RetryRecord};
pub use time_limit::TimeLimit;

use super::actor::Actor;
use super::broker::{Broker, BrokerError, Enqueued};
use super::error::TaskError;
use super::message::Message;

/// What middleware may use outside the message: the broker (for retries)
/// and the runtime its I/O runs on. Worker threads are not runtime
/// threads, so they block on it.
#[derive(Clone)]
pub struct Env {
    pub broker: Broker,
    pub rt: tokio::runtime::Handle,
}

impl Env {
    /// Enqueues from a worker thread.
    pub fn enqueue(
        &self,
        message: Message,
        delay: Option<Duration>,
    ) -> Result<Enqueued, BrokerError> {
        self.rt.block_on(self.broker.enqueue(message, delay))
    }
}

/// One message being processed, as middleware sees it (Dramatiq's
/// `MessageProxy`).
pub struct MessageCtx<'a> {
    pub env: &'a Env,
    pub message: &'a Arc<Message>,
    pub actor: &'a Actor,
    /// The recorder's task id for this message.
    pub task: u64,
    failed: Cell<bool>,
    deadline: Cell<Option<Instant>>,
    exception: RefCell<Option<Arc<TaskError>>>,
}

impl<'a> MessageCtx<'a> {
    pub fn new(
        env: &'a Env,
        message: &'a Arc<Message>,
        actor: &'a Actor,
        task: u64,
    ) -> MessageCtx<'a> {
        MessageCtx {
            env,
            message,
            actor,
            task,
            failed: Cell::new(false),
            deadline: Cell::new(None),
            exception: RefCell::new(None),
        }
    }

    /// Marks the message failed: it is dead-lettered instead of acked.
    pub fn fail(&self) {
        self.failed.set(true);
    }

    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    /// Records the exception processing raised (Dramatiq's
    /// `stuff_exception`), for `after_nack`. It lives as long as this
    /// context: until the message is settled, as in Dramatiq, which clears
    /// it after post-processing.
    pub fn stuff_exception(&self, exception: Arc<TaskError>) {
        *self.exception.borrow_mut() = Some(exception);
    }

    /// The exception processing raised, if any.
    pub fn exception(&self) -> Option<Arc<TaskError>> {
        self.exception.borrow().clone()
    }

    pub fn set_deadline(&self, at: Instant) {
        self.deadline.set(Some(at));
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// Dramatiq's `retries` option (0 on a first attempt).
    pub fn retries(&self) -> u32 {
        self.message.retries().unwrap_or(0).min(u32::MAX as u64) as u32
    }
}

/// How processing ended.
pub enum Outcome<'a> {
    Success(&'a Value),
    Failure(&'a Arc<TaskError>),
}

/// A middleware asks to skip the message (Dramatiq's `SkipMessage`).
#[derive(Debug)]
pub struct SkipMessage(pub String);

/// A Dramatiq middleware: every hook has a no-op default.
pub trait Middleware: Send + Sync {
    fn name(&self) -> &'static str;

    fn after_worker_boot(&self, _env: &Env) {}

    fn before_process_message(&self, _ctx: &MessageCtx) -> Result<(), SkipMessage> {
        Ok(())
    }

    fn after_process_message(&self, _ctx: &MessageCtx, _outcome: &Outcome) {}

    fn after_skip_message(&self, _ctx: &MessageCtx) {}

    /// A failed message was dead-lettered (called only once the nack
    /// succeeded; never for a message whose actor this worker lacks).
    fn after_nack(&self, _ctx: &MessageCtx) {}

    fn before_worker_shutdown(&self) {}

    fn after_worker_shutdown(&self) {}
}

/// The ordered chain.
#[derive(Clone, Default)]
pub struct Chain {
    items: Vec<Arc<dyn Middleware>>,
}

impl Chain {
    pub fn new(items: Vec<Arc<dyn Middleware>>) -> Chain {
        Chain { items }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.items.iter().map(|m| m.name()).collect()
    }

    pub fn after_worker_boot(&self, env: &Env) {
        for m in &self.items {
            m.after_worker_boot(env);
        }
    }

    pub fn before_process_message(&self, ctx: &MessageCtx) -> Result<(), SkipMessage> {
        for m in &self.items {
            m.before_process_message(ctx)?;
        }
        Ok(())
    }

    pub fn after_process_message(&self, ctx: &MessageCtx, outcome: &Outcome) {
        for m in self.items.iter().rev() {
            m.after_process_message(ctx, outcome);
        }
    }

    pub fn after_skip_message(&self, ctx: &MessageCtx) {
        for m in self.items.iter().rev() {
            m.after_skip_message(ctx);
        }
    }

    pub fn after_nack(&self, ctx: &MessageCtx) {
        for m in self.items.iter().rev() {
            m.after_nack(ctx);
        }
    }

    pub fn before_worker_shutdown(&self) {
        for m in &self.items {
            m.before_worker_shutdown();
        }
    }

    pub fn after_worker_shutdown(&self) {
        for m in self.items.iter().rev() {
            m.after_worker_shutdown();
        }
    }
}
