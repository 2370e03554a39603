//! leakprof: a memory-leak profiler for task-queue worker processes.

pub mod format;
pub mod record;

pub mod analysis;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod lab;
#[cfg(feature = "cli")]
pub mod render;

pub use record::LeakAlloc;
