//! The worker: Dramatiq's `Worker` with one consumer per queue and a pool
//! of worker threads.
//!
//! Consumers run on the tokio runtime and feed a shared work queue; each
//! worker thread takes a delivery, runs the middleware chain and the actor
//! under the recorder's tag for the message (task id, retry number), then
//! acks (or, when a middleware failed the message, nacks) it. Async actors
//! run on the AsyncIO middleware's event-loop thread while the worker
//! thread waits, exactly as in Dramatiq.
//!
//! Stopping is graceful: consumers stop fetching, messages fetched but not
//! started go back to their queue, messages in progress finish.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::actor::{ActorFn, Actors, Call};
use super::broker::Delivery;
use super::error::TaskError;
use super::executor::Outcome;
use super::message::Message;
use super::middleware::{AsyncIo, Chain, Env, MessageCtx, Outcome as Ending};
use super::trace::{AfterJob, JobDone};
use crate::format::events;
use crate::{Tag, TaskDescription};

/// How long a consumer waits for a message before checking for shutdown.
const FETCH_WAIT: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct WorkerConfig {
    pub queues: Vec<String>,
    pub threads: usize,
    /// Messages fetched ahead per queue (Dramatiq: twice the threads).
    pub prefetch: Option<usize>,
    /// Called on the worker thread after each job, outside the job's own
    /// frames (`--trace-memory`).
    pub after_job: Option<AfterJob>,
}

/// Counters the run loop and progress bar read.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Attempts processed (every retry counts).
    pub attempts: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// Messages dead-lettered (retries exhausted, unknown actor, ...).
    pub dead_lettered: AtomicU64,
    /// Highest `retries` value seen.
    pub max_retry: AtomicU64,
    pub in_progress: AtomicUsize,
    /// Settle (ack/nack) calls that failed (the broker gives the message
    /// back to its queue in that case).
    pub settle_errors: AtomicU64,
}

impl WorkerStats {
    /// Tasks that reached a final state (success or dead letter).
    pub fn finished(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed) + self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// Message ids (UUID strings) to the recorder's numeric task ids; retries
/// of a message keep its task id.
/// Only messages not yet final are kept: a task that succeeded or was
/// dead-lettered gives its entry back, so a long-running worker's table
/// stays as small as its work in progress.
#[derive(Default)]
pub struct TaskIds {
    ids: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
}

impl TaskIds {
    fn id_for(&self, message: &Message) -> u64 {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = false;
        let id = *ids.entry(message.message_id.clone()).or_insert_with(|| {
            fresh = true;
            self.next.fetch_add(1, Ordering::Relaxed) + 1
        });
        drop(ids);
        if fresh {
            crate::describe_task(
                id,
                TaskDescription::new()
                    .external_id(message.message_id.clone())
                    .actor(message.actor_name.clone())
                    .queue(message.queue_name.clone())
                    .name(message.actor_name.clone()),
            );
        }
        id
    }

    /// The message reached a final state.
    fn finish(&self, message_id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(message_id);
    }
}

struct WorkQueue {
    items: Mutex<VecDeque<Delivery>>,
    ready: Condvar,
}

struct Shared {
    after_job: Option<AfterJob>,
    env: Env,
    actors: Actors,
    chain: Chain,
    asyncio: Arc<AsyncIo>,
    stats: Arc<WorkerStats>,
    tasks: TaskIds,
    work: WorkQueue,
    stopping: AtomicBool,
}

pub struct Worker {
    shared: Arc<Shared>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Boots the worker: starts one consumer per queue and the worker
    /// threads.
    pub fn start(
        env: Env,
        actors: Actors,
        chain: Chain,
        asyncio: Arc<AsyncIo>,
        config: &WorkerConfig,
    ) -> std::io::Result<Worker> {
        let threads = config.threads.max(1);
        let shared = Arc::new(Shared {
            after_job: config.after_job.clone(),
            env,
            actors,
            chain,
            asyncio,
            stats: Arc::new(WorkerStats::default()),
            tasks: TaskIds::default(),
            work: WorkQueue {
                items: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
            },
            stopping: AtomicBool::new(false),
        });
        let prefetch = config.prefetch.unwrap_or(threads * 2).max(1);
        let consumers = config
            .queues
            .iter()
            .map(|queue| {
                let shared = shared.clone();
                let consumer = shared.env.broker.consumer(queue, prefetch);
                shared.env.rt.spawn(consume(shared.clone(), consumer))
            })
            .collect();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let shared = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || work(&shared))?,
            );
        }
        shared.chain.after_worker_boot(&shared.env);
        Ok(Worker {
            shared,
            consumers,
            threads: handles,
        })
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.shared.stats.clone()
    }

    /// Stops gracefully: no more fetching; fetched messages not started go
    /// back to their queue; messages in progress finish.
    pub fn stop(self) {
        let s = &self.shared;
        s.chain.before_worker_shutdown();
        s.stopping.store(true, Ordering::Release);
        for c in &self.consumers {
            c.abort();
        }
        for c in self.consumers {
            let _ = s.env.rt.block_on(c);
        }
        s.work.ready.notify_all();
        for t in self.threads {
            let _ = t.join();
        }
        let leftovers: Vec<Delivery> = s
            .work
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for d in leftovers {
            if let Err(e) = s.env.rt.block_on(d.requeue()) {
                tracing::warn!("Could not requeue a message at shutdown: {e}");
            }
        }
        s.chain.after_worker_shutdown();
    }
}

/// A consumer task: fetch, hand to the worker threads, repeat.
async fn consume(shared: Arc<Shared>, mut consumer: super::broker::Consumer) {
    while !shared.stopping.load(Ordering::Acquire) {
        match consumer.next(FETCH_WAIT).await {
            Ok(Some(delivery)) => {
                let mut q = shared.work.items.lock().unwrap_or_else(|p| p.into_inner());
                q.push_back(delivery);
                drop(q);
                shared.work.ready.notify_one();
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(
                    "Consumer of {} failed: {e}; retrying.",
                    consumer.queue_name()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if let Err(e) = consumer.close().await {
        tracing::warn!("Closing a consumer: {e}");
    }
}

/// A worker thread.
fn work(shared: &Shared) {
    loop {
        let delivery = {
            let mut q = shared.work.items.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if shared.stopping.load(Ordering::Acquire) {
                    return;
                }
                if let Some(d) = q.pop_front() {
                    break d;
                }
                q = shared
                    .work
                    .ready
                    .wait_timeout(q, FETCH_WAIT)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        shared.stats.in_progress.fetch_add(1, Ordering::Relaxed);
        let job = process(shared, delivery);
        if let Some(hook) = &shared.after_job {
            hook(job);
        }
        shared.stats.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Dramatiq's `process_message`, then the settle and, for a message
/// dead-lettered, `after_nack`.
#[inline(never)]
fn process(shared: &Shared, delivery: Delivery) -> JobDone {
    let stats = &shared.stats;
    // Shared with the delivery (no copy of large arguments), which keeps
    // its share to dead-letter whatever the actor's coroutine does with its.
    let message = delivery.shared_message();
    let task = shared.tasks.id_for(&message);
    let message_id = message.message_id.clone();
    let actor_name = message.actor_name.clone();
    let retries = message.retries().unwrap_or(0);
    stats.max_retry.fetch_max(retries, Ordering::Relaxed);
    stats.attempts.fetch_add(1, Ordering::Relaxed);
    let tag = Tag::task(task).retry(retries);

    let ctx = match shared.actors.get(&message.actor_name) {
        Some(actor) => Some(MessageCtx::new(&shared.env, &message, actor, task)),
        None => {
            tracing::error!(
                "Message {} names actor {:?}, which this worker does not have; dead-lettering it.",
                message.message_id,
                message.actor_name
            );
            None
        }
    };
    let errored = match &ctx {
        Some(ctx) => crate::with_tag(tag, || run_message(shared, ctx, tag)),
        None => true,
    };
    let failed = ctx.as_ref().map_or(true, MessageCtx::failed);
    if settle(shared, delivery, failed) && failed {
        if let Some(ctx) = &ctx {
            crate::with_tag(tag, || shared.chain.after_nack(ctx));
        }
    }
    // Nothing of the attempt (its exception, its share of the message) is
    // held past this point, where its end is marked.
    drop(ctx);
    drop(message);

    let (counter, event, outcome) = match (errored, failed) {
        (false, false) => (&stats.succeeded, events::AFTER_SUCCESS, "succeeded"),
        (true, false) => (&stats.failed_attempts, events::AFTER_FAILURE, "retrying"),
        (_, true) => (&stats.dead_lettered, events::AFTER_FAILURE, "dead-lettered"),
    };
    if errored && failed {
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
    }
    counter.fetch_add(1, Ordering::Relaxed);
    crate::with_tag(tag, || crate::mark(event));
    crate::describe_task(task, TaskDescription::new().outcome(outcome));
    if failed || !errored {
        shared.tasks.finish(&message_id);
        // Final: the recorder folds the task's tags that hold nothing (its
        // leaks stay), so a worker's own memory does not grow per message.
        crate::finish_task(task);
    }
    JobDone {
        task,
        retry: tag.retry_number().unwrap_or(0),
        actor: actor_name,
        message_id,
        outcome,
    }
}

/// The chain's hooks around the actor. True when the actor raised; the
/// exception (or a failing skip's) is stuffed into `ctx` for `after_nack`.
fn run_message(shared: &Shared, ctx: &MessageCtx, tag: Tag) -> bool {
    let message = ctx.message;
    if let Err(skip) = shared.chain.before_process_message(ctx) {
        tracing::warn!("Message {} was skipped: {}", message.message_id, skip.0);
        if ctx.failed() {
            let e = TaskError::new("SkipMessage", skip.0);
            ctx.stuff_exception(e.raised());
        }
        shared.chain.after_skip_message(ctx);
        return false;
    }
    let call = Call {
        message: message.clone(),
        retries: tag.retry_number().unwrap_or(0),
    };
    let outcome: Outcome = match ctx.actor.function {
        ActorFn::Sync(f) => f(&call).map(Arc::new).map_err(TaskError::raised),
        ActorFn::Async(f) => shared.asyncio.run_coroutine(f(call), tag, ctx.deadline()),
    };
    let ending = match &outcome {
        Ok(value) => Ending::Success(value),
        Err(e) => {
            tracing::debug!("Failed to process message {}: {e}", message.message_id);
            ctx.stuff_exception(e.clone());
            Ending::Failure(e)
        }
    };
    shared.chain.after_process_message(ctx, &ending);
    outcome.is_err()
}

/// Acks the message, or nacks (dead-letters) a failed one. True once
/// settled; on an error the broker gives the message back to its queue.
fn settle(shared: &Shared, delivery: Delivery, failed: bool) -> bool {
    let settled = if failed {
        shared.env.rt.block_on(delivery.nack())
    } else {
        shared.env.rt.block_on(delivery.ack())
    };
    match settled {
        Ok(()) => true,
        Err(e) => {
            shared.stats.settle_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("Could not settle a message: {e}");
            false
        }
    }
}
