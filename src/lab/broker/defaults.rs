//! Broker defaults, read by both the library and the CLI so neither restates
//! them. Dramatiq 2.0's values unless noted.

use std::time::Duration;

/// Prefix of every Redis key.
pub const NAMESPACE: &str = "dramatiq";

/// A worker whose last call is older than this is dead and its unacked
/// messages are given back by the next maintenance.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(60_000);

/// How long dead letters are kept: 7 days.
pub const DEAD_MESSAGE_TTL: Duration = Duration::from_millis(604_800_000);

/// Calls out of a million that run maintenance first (all but ack and nack).
pub const MAINTENANCE_CHANCE: u32 = 1_000;

/// Largest batch the dispatcher unpacks at once. Dramatiq probes Redis's Lua
/// stack (8,000 slots in every Redis release) and uses half of what it finds,
/// 3,996; this is that value.
pub const MAX_UNPACK_SIZE: usize = 3_996;

/// Delayed messages a consumer holds while waiting for their eta
/// (Dramatiq: 1,000 per worker thread).
pub const DELAY_PREFETCH: usize = 1_000;

/// Longest pause between two polls of an idle Redis queue (Dramatiq's
/// worker timeout); the first pauses are 5 ms and double from there.
pub const IDLE_POLL_MAX: Duration = Duration::from_millis(1_000);

/// leakprof: longest pause between reconnect attempts while Redis is away.
pub const RECONNECT_MAX_BACKOFF: Duration = Duration::from_millis(2_000);

/// leakprof: how long to wait for a TCP connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// leakprof: how long to wait for any reply. No dispatcher call blocks on the
/// server, so only a hung or unreachable Redis takes this long.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
