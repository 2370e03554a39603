//! Helpers shared by the integration tests. Each test binary uses a part.
#![allow(dead_code)]

pub mod logs;
mod profiles;
pub mod redis;

#[allow(unused_imports)]
pub use profiles::*;
