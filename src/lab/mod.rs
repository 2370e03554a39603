//! The worker lab: a Dramatiq-faithful worker that runs the seed scenarios
//! under the recorder.
//!
//! The broker layer, bottom up:
//!
//! - [`message`]: Dramatiq's message and its exact JSON wire format.
//! - [`backoff`]: Dramatiq's exponential backoff with jitter.
//! - [`broker`]: the in-memory and Redis brokers, consumers and deliveries.
//! - [`results`]: result backends for the Results middleware.
//!
//! Nothing here runs actors or decides retries; the worker on top does.

pub mod backoff;
pub mod broker;
pub mod message;
mod python_json;
mod redis_link;
pub mod results;
