//! The worker lab: a Dramatiq-faithful worker that runs the seed scenarios
//! under the recorder.
//!
//! Bottom up:
//!
//! - [`message`]: Dramatiq's message and its exact JSON wire format.
//! - [`backoff`]: Dramatiq's exponential backoff with jitter.
//! - [`broker`]: the in-memory and Redis brokers, consumers and deliveries.
//! - [`results`]: result backends for the Results middleware.
//! - [`actor`]: actors and their options; [`error`]: payloads and the error
//!   values actors raise.
//! - [`executor`]: the AsyncIO event-loop thread, with the `original`
//!   (leaking) and `fixed` hand-offs.
//! - [`middleware`]: the chain (TimeLimit, Retries, Results, AsyncIO).
//! - [`variants`] and [`scenarios`]: the two registries `leakprof list`
//!   prints.
//! - [`worker`]: consumers feeding worker threads.
//! - [`run`]: `leakprof run` / `leakprof worker` end to end; [`processes`]:
//!   `--processes N`; [`outputs`]: the output directory.

pub mod actor;
pub mod backoff;
pub mod broker;
pub mod error;
pub mod executor;
pub mod message;
pub mod middleware;
pub mod outputs;
pub mod processes;
mod python_json;
mod redis_link;
pub mod results;
pub mod run;
pub mod scenarios;
pub mod trace;
pub mod variants;
pub mod worker;
