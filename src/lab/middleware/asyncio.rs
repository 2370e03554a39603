//! Dramatiq's `AsyncIO` middleware: owns the event-loop thread async actors
//! run on. Which hand-off the thread uses is the middleware variant's
//! choice.

use std::time::Instant;

use super::Middleware;
use crate::lab::executor::{ActorFuture, EventLoopThread, Handoff, Outcome};
use crate::Tag;

pub struct AsyncIo {
    thread: EventLoopThread,
}

impl AsyncIo {
    /// Starts the event-loop thread (Dramatiq does it in
    /// `before_worker_boot`).
    pub fn start(handoff: Handoff) -> std::io::Result<AsyncIo> {
        Ok(AsyncIo {
            thread: EventLoopThread::start(handoff)?,
        })
    }

    /// Runs an async actor's coroutine and waits for it (many worker
    /// threads may wait at once).
    pub fn run_coroutine(&self, coro: ActorFuture, tag: Tag, deadline: Option<Instant>) -> Outcome {
        self.thread.run_coroutine(coro, tag, deadline)
    }
}

impl Middleware for AsyncIo {
    fn name(&self) -> &'static str {
        "AsyncIO"
    }

    fn after_worker_shutdown(&self) {
        self.thread.stop();
    }
}
