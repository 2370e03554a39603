//! A throwaway `redis-server` for integration tests.
//!
//! ```ignore
//! let Some(redis) = RedisServer::start() else { return }; // skipped without redis-server
//! let url = redis.url();
//! ```
//!
//! Each server listens on a free loopback port with its own temporary
//! directory and is killed when dropped. [`RedisServer::start`] keeps
//! nothing on disk; [`RedisServer::start_persistent`] writes an append-only
//! file synced on every write, so [`RedisServer::restart`] (a hard kill and a
//! fresh start on the same port) keeps every acknowledged write.
//!
//! When `redis-server` cannot be started, `start` prints a notice and returns
//! `None` so the test can skip, except with `CI=true`, where it panics: CI
//! installs Redis, so its absence there is a failure, not a skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer PING (milliseconds usually;
/// generous for a loaded machine).
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

pub struct RedisServer {
    port: u16,
    persistent: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A server that keeps nothing on disk. `None` (after a notice) when
    /// `redis-server` is unavailable and `CI` is not `true`.
    pub fn start() -> Option<RedisServer> {
        RedisServer::launch(false)
    }

    /// A server with `appendonly yes` and `appendfsync always`: a
    /// [`RedisServer::restart`] loses no write Redis has replied to.
    pub fn start_persistent() -> Option<RedisServer> {
        RedisServer::launch(true)
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, like a crash) and starts it again on the
    /// same port and directory. Clients see their connections drop.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(reason) = self.spawn_and_wait() {
            panic!(
                "redis-server did not come back on port {}: {reason}",
                self.port
            );
        }
    }

    /// Kills the server and waits until it is gone. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn launch(persistent: bool) -> Option<RedisServer> {
        let mut last_failure = String::new();
        // A port found free can be taken by someone else before Redis binds
        // it; try a few.
        for _ in 0..5 {
            let dir = match tempfile::tempdir() {
                Ok(dir) => dir,
                Err(error) => return unavailable(&format!("cannot create a temp dir: {error}")),
            };
            let mut server = RedisServer {
                port: free_port(),
                persistent,
                dir,
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Some(server),
                Err(reason) => last_failure = reason,
            }
        }
        unavailable(&last_failure)
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot run redis-server: {error}"))?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited with {status} on port {}: {}",
                    self.port,
                    tail(&log)
                ));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server did not answer PING on port {} within {STARTUP_DEADLINE:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log file, for test failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unavailable(reason: &str) -> Option<RedisServer> {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("redis-server is required on CI (CI=true) but could not be started: {reason}");
    }
    eprintln!(
        "SKIPPED: redis-server could not be started ({reason}); set CI=true to make this a failure"
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding an ephemeral loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
