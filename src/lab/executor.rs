//! The AsyncIO middleware's event-loop thread (Dramatiq 2.0's
//! `EventLoopThread`): async actors run on one dedicated thread's event
//! loop, and the worker thread that took the message waits for the outcome,
//! waking every 100 ms to honour time limits.
//!
//! The two ways of handing the outcome back are the heart of the seed
//! incident:
//!
//! - [`Handoff::KeepInFuture`] (`original`): like `concurrent.futures.Future`,
//!   the shared future state keeps its outcome after handing out a copy, and
//!   the error's traceback records the waiting frame with its local `future`
//!   — a strong pointer back to that state. State -> error -> traceback ->
//!   state is a reference cycle: Python needed its cyclic GC to free it, and
//!   Rust never frees it. Every failed attempt strands its error and all the
//!   error holds.
//! - [`Handoff::TakeAndClear`] (`fixed`, the seed's `FixedEventLoopThread`):
//!   the outcome is captured in a container, taken out, handed on, and the
//!   traceback's back-pointer is weak. Nothing outlives the attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::{Local, TaskError};
use crate::{owner, FutureExt as _, Tag};

/// What an actor returns.
pub type ActorResult = Result<Value, TaskError>;

/// What the worker gets back. Both sides are shared, as Python objects are:
/// the future state keeps its outcome while the worker reads it (and in
/// `original`, for errors, long after), so handing it out is a reference,
/// never a copy of a 128 MiB result.
pub type Outcome = Result<Arc<Value>, Arc<TaskError>>;

/// A boxed actor coroutine.
pub type ActorFuture = Pin<Box<dyn Future<Output = ActorResult> + Send + 'static>>;

/// How Dramatiq checks for asynchronous interrupts while waiting.
pub const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

/// How the outcome goes from the event loop to the waiting worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Dramatiq 2.0: the future keeps its outcome; the traceback keeps the
    /// future. Leaks every failed attempt.
    KeepInFuture,
    /// The fix: take the outcome out, clear every reference, weak
    /// back-pointers.
    TakeAndClear,
}

/// The state shared by the event loop (which completes it) and the waiting
/// worker thread: a `concurrent.futures.Future`.
pub struct FutureState {
    outcome: Mutex<Option<Outcome>>,
    ready: Condvar,
}

impl FutureState {
    fn new() -> FutureState {
        FutureState {
            outcome: Mutex::new(None),
            ready: Condvar::new(),
        }
    }

    fn complete(&self, outcome: Outcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.ready.notify_all();
    }

    /// Waits up to `timeout`; true once an outcome is set.
    fn wait(&self, timeout: Duration) -> bool {
        let slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return true;
        }
        let (slot, _) = self
            .ready
            .wait_timeout(slot, timeout)
            .unwrap_or_else(|p| p.into_inner());
        slot.is_some()
    }

    /// `Future.result()`: a reference to the outcome (the `Arc`s are
    /// cloned, not what they hold); the state keeps its own.
    fn result(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the outcome out of the container.
    fn take(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// The event-loop thread.
pub struct EventLoopThread {
    /// `None` once stopped, so nothing of the loop outlives it.
    handle: Mutex<Option<tokio::runtime::Handle>>,
    handoff: Handoff,
    stopped: std::sync::atomic::AtomicBool,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EventLoopThread {
    /// Starts the thread and its loop.
    pub fn start(handoff: Handoff) -> std::io::Result<EventLoopThread> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("event-loop".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the event-loop thread died while starting"))??;
        Ok(EventLoopThread {
            handle: Mutex::new(Some(handle)),
            handoff,
            stopped: std::sync::atomic::AtomicBool::new(false),
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `coro` on the loop under `tag` and waits for its outcome on the
    /// calling thread. Past `deadline` the coroutine is cancelled and a
    /// `TimeLimitExceeded` error is returned.
    pub fn run_coroutine(&self, coro: ActorFuture, tag: Tag, deadline: Option<Instant>) -> Outcome {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return Err(TaskError::new("RuntimeError", "Event loop is not running.").raised());
        }
        let future = owner::typed::<FutureState, _>(|| Arc::new(FutureState::new()));
        let done = future.clone();
        let Some(handle) = self
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Err(TaskError::new("RuntimeError", "Event loop is not running.").raised());
        };
        let task = handle.spawn(
            async move {
                let outcome = coro.await.map(Arc::new).map_err(TaskError::raised);
                done.complete(outcome);
            }
            .tagged(tag),
        );
        loop {
            if future.wait(INTERRUPT_CHECK) {
                break;
            }
            if task.is_finished() && future.result().is_none() {
                // The coroutine panicked: report it as the actor's failure.
                let e = TaskError::new("ActorPanicked", "the actor's coroutine panicked");
                future.complete(Err(e.raised()));
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                task.abort();
                let e = TaskError::new("TimeLimitExceeded", "the actor ran past its time limit");
                future.complete(Err(e.raised()));
                break;
            }
        }
        match self.handoff {
            Handoff::KeepInFuture => {
                let outcome = future.result().unwrap_or_else(|| Ok(Arc::new(Value::Null)));
                if let Err(e) = &outcome {
                    // The traceback keeps this frame and its locals, the
                    // future among them.
                    e.push_frame(
                        "EventLoopThread::run_coroutine",
                        vec![Local::Future {
                            name: "future",
                            value: future.clone(),
                        }],
                    );
                }
                outcome
            }
            Handoff::TakeAndClear => {
                let outcome = future.take().unwrap_or_else(|| Ok(Arc::new(Value::Null)));
                if let Err(e) = &outcome {
                    e.push_frame(
                        "FixedEventLoopThread::run_coroutine",
                        vec![Local::WeakFuture {
                            name: "future",
                            value: Arc::downgrade(&future),
                        }],
                    );
                }
                outcome
            }
        }
    }

    /// Stops the loop and joins its thread.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(tx) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Drop for EventLoopThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing() -> ActorFuture {
        Box::pin(async { Err(TaskError::new("BigException", "boom")) })
    }

    #[test]
    fn original_keeps_the_error_alive_through_a_cycle_and_fixed_does_not() {
        for (handoff, leaks) in [
            (Handoff::KeepInFuture, true),
            (Handoff::TakeAndClear, false),
        ] {
            let lp = EventLoopThread::start(handoff).unwrap();
            let outcome = lp.run_coroutine(failing(), Tag::task(1), None);
            let err = outcome.unwrap_err();
            let weak = Arc::downgrade(&err);
            drop(err);
            assert_eq!(weak.upgrade().is_some(), leaks, "{handoff:?}");
            lp.stop();
        }
    }

    /// `Future.result()` returns a reference: a large result is never
    /// copied on its way back, in either variant.
    #[test]
    fn a_result_comes_back_without_a_copy() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static ADDRESS: AtomicUsize = AtomicUsize::new(0);
        for handoff in [Handoff::KeepInFuture, Handoff::TakeAndClear] {
            let lp = EventLoopThread::start(handoff).unwrap();
            let large: ActorFuture = Box::pin(async {
                let text = "x".repeat(1 << 20);
                ADDRESS.store(text.as_ptr() as usize, Ordering::Relaxed);
                Ok(Value::String(text))
            });
            let outcome = lp.run_coroutine(large, Tag::NONE, None).unwrap();
            let text = outcome.as_str().unwrap();
            assert_eq!(
                text.as_ptr() as usize,
                ADDRESS.load(Ordering::Relaxed),
                "{handoff:?} copied the result"
            );
            lp.stop();
        }
    }

    #[test]
    fn success_values_come_back_and_deadlines_cancel() {
        let lp = EventLoopThread::start(Handoff::TakeAndClear).unwrap();
        let ok = lp.run_coroutine(Box::pin(async { Ok(Value::from(42)) }), Tag::NONE, None);
        assert_eq!(*ok.unwrap(), Value::from(42));
        let slow: ActorFuture = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Value::Null)
        });
        let t0 = Instant::now();
        let r = lp.run_coroutine(
            slow,
            Tag::NONE,
            Some(Instant::now() + Duration::from_millis(150)),
        );
        assert_eq!(r.unwrap_err().kind, "TimeLimitExceeded");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
