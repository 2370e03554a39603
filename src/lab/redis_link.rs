//! A Redis connection that survives Redis going away.
//!
//! One multiplexed connection is shared by every caller of a broker or result
//! backend. A call either succeeds, fails *transiently* (the connection broke,
//! Redis is restarting or loading its data) or fails for good (a script or
//! type error: a bug, retrying will not help). After a transient failure the
//! connection is replaced on the next call, and callers pause with capped
//! exponential backoff between attempts. An outage is logged once when it
//! starts and once when it ends, never per attempt.
//!
//! No call here blocks on the server side (no BLPOP and the like), so a
//! response timeout is safe and catches a Redis that stopped answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError};

use super::backoff::compute_backoff;

/// First pause after a failed attempt; doubles up to the configured cap.
const FIRST_PAUSE: Duration = Duration::from_millis(20);

/// How a single attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection or the server is temporarily unavailable: try again.
    /// The command may or may not have run. The link has logged the outage.
    Transient,
    /// The server rejected the command; retrying cannot help.
    Fatal(RedisError),
}

/// Timeouts and backoff of a [`RedisLink`].
#[derive(Clone, Debug)]
pub(crate) struct LinkTimeouts {
    pub connect: Duration,
    pub response: Duration,
    pub reconnect_max_backoff: Duration,
}

pub(crate) struct RedisLink {
    client: Client,
    /// The URL without its password, for messages.
    display_url: String,
    timeouts: LinkTimeouts,
    /// The live connection and its generation; `None` after a failure.
    current: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    outage: Mutex<Option<Outage>>,
}

struct Outage {
    since: Instant,
    failed_attempts: u32,
}

impl RedisLink {
    /// Parses `url`; does not connect yet.
    pub fn new(url: &str, timeouts: LinkTimeouts) -> Result<RedisLink, RedisError> {
        let client = Client::open(url)?;
        Ok(RedisLink {
            display_url: redact_password(url),
            client,
            timeouts,
            current: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            outage: Mutex::new(None),
        })
    }

    /// The URL with any password replaced by `***`.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Runs `cmd` once, connecting first, without outage bookkeeping: for
    /// the first contact, where a failure is a configuration error to report
    /// rather than an outage to wait out.
    pub async fn first_query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        let (_, mut connection) = self.connection().await?;
        cmd.query_async(&mut connection).await
    }

    /// Runs `cmd` once on the shared connection, connecting first if needed.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Failure> {
        let (generation, mut connection) = match self.connection().await {
            Ok(current) => current,
            Err(error) => return Err(self.failed(None, error).await),
        };
        match cmd.query_async(&mut connection).await {
            Ok(value) => {
                self.succeeded();
                Ok(value)
            }
            Err(error) => Err(self.failed(Some(generation), error).await),
        }
    }

    /// [`RedisLink::query`] for a pipeline (a MULTI/EXEC transaction).
    pub async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipeline: &Pipeline,
    ) -> Result<T, Failure> {
        let (generation, mut connection) = match self.connection().await {
            Ok(current) => current,
            Err(error) => return Err(self.failed(None, error).await),
        };
        match pipeline.query_async(&mut connection).await {
            Ok(value) => {
                self.succeeded();
                Ok(value)
            }
            Err(error) => Err(self.failed(Some(generation), error).await),
        }
    }

    /// Sleeps before the next attempt: exponential in the failures of the
    /// current outage, capped, and never past `deadline`.
    pub async fn pause(&self, deadline: Option<Instant>) {
        let failed_attempts = self
            .outage
            .lock()
            .expect("outage lock")
            .as_ref()
            .map_or(0, |outage| outage.failed_attempts);
        let mut pause = compute_backoff(
            failed_attempts.saturating_sub(1),
            FIRST_PAUSE,
            self.timeouts.reconnect_max_backoff,
            true,
        );
        if let Some(deadline) = deadline {
            pause = pause.min(deadline.saturating_duration_since(Instant::now()));
        }
        tokio::time::sleep(pause).await;
    }

    async fn connection(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        let mut current = self.current.lock().await;
        if let Some((generation, connection)) = current.as_ref() {
            return Ok((*generation, connection.clone()));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeouts.connect)
            .set_response_timeout(self.timeouts.response);
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *current = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    fn succeeded(&self) {
        let mut outage = self.outage.lock().expect("outage lock");
        if let Some(ended) = outage.take() {
            tracing::info!(
                redis = %self.display_url,
                down_for_ms = ended.since.elapsed().as_millis() as u64,
                "reconnected to Redis"
            );
        }
    }

    async fn failed(&self, generation: Option<u64>, error: RedisError) -> Failure {
        if !is_transient(&error) {
            return Failure::Fatal(error);
        }
        // Drop the broken connection so the next call makes a new one. If
        // another caller has already replaced it, this error is old news from
        // before the replacement: retry at once, outside any outage.
        if let Some(generation) = generation {
            let mut current = self.current.lock().await;
            match current.as_ref().map(|(live, _)| *live) {
                Some(live) if live == generation => *current = None,
                Some(_) => return Failure::Transient,
                None => {}
            }
        }
        let mut outage = self.outage.lock().expect("outage lock");
        match outage.as_mut() {
            Some(outage) => outage.failed_attempts = outage.failed_attempts.saturating_add(1),
            None => {
                tracing::warn!(
                    redis = %self.display_url,
                    error = %error,
                    "lost connection to Redis; reconnecting with backoff"
                );
                *outage = Some(Outage {
                    since: Instant::now(),
                    failed_attempts: 1,
                });
            }
        }
        Failure::Transient
    }
}

/// Whether an error means "try again later" rather than "this is wrong".
pub(crate) fn is_transient(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::MasterDown
                | ErrorKind::ClusterDown
                | ErrorKind::ReadOnly
        )
        || (error.kind() == ErrorKind::ExtensionError && error.code() == Some("BUSY"))
}

fn redact_password(url: &str) -> String {
    // redis://user:password@host:port/db -> redis://user:***@host:port/db
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_log_lines() {
        assert_eq!(
            redact_password("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_password("redis://me:hunter2@host/0"),
            "redis://me:***@host/0"
        );
        assert_eq!(
            redact_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
