//! The end-to-end harness: real servers that Baton's suites run against, started and cleaned up
//! by the tests themselves, so `cargo nextest run` needs nothing running beforehand.
//!
//! It owns a [`NatsServer`] (a real `nats-server` with JetStream), a
//! [`RegistryServer`](registry::RegistryServer) (CNCF Distribution) and a
//! [`KubeCluster`](kube::KubeCluster) (etcd and the Kubernetes control plane, with simulated
//! nodes), each the way async-nats' `nats-server` test crate owns its server: on its own free
//! ports on 127.0.0.1, with its files in its own temporary directory, ready (not just spawned)
//! when `start` returns, and killed and removed on `Drop`, so tests run in parallel and leave
//! nothing behind. They share one way of finding, starting and stopping a program
//! ([`process`]) and one error type ([`HarnessError`]).
//!
//! Around them: [`app`] (Baton's services in-process), [`git`] (the real CLI, an independent
//! client) and [`repos`] (the app and config repositories made with it), [`events`] (what the
//! services published, read back from the stream and awaited), [`eventually`] (polling until a
//! condition holds, quoting what was last seen), [`push`], [`verdict`], [`promotion`] and
//! [`deployment`] (what the listener, the tester, the promoter and the deployer publish, for
//! suites that run a stage without the ones around it), [`keys`] (signing keys for the builder
//! and the tester), [`process::service_binary`] (Baton's own binaries, built if needed, for suites
//! that run them as processes), and [`browser`] (Debian's chromium driven by a Node script, for
//! suites that check what people see in the web UI).
//!
//! The harness is synchronous and std-only where it can be, so it works from any test, async or
//! not. `just setup` installs every program it runs.
//!
//! ```no_run
//! # fn main() -> Result<(), baton_tests::HarnessError> {
//! let mut nats = baton_tests::NatsServer::start()?;
//! let url = nats.url(); // e.g. "nats://127.0.0.1:41537", for `async_nats::connect`
//! nats.restart()?; // SIGKILL, then the same port and the same JetStream store
//! assert_eq!(nats.url(), url);
//! # Ok(())
//! # }
//! ```

pub mod app;
pub mod browser;
pub mod deployment;
mod error;
pub mod events;
pub mod keys;
pub mod kube;
mod nats;
mod net;
pub mod people;
pub mod process;
pub mod promotion;
pub mod push;
pub mod registry;
pub mod repos;
pub mod verdict;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub use error::HarnessError;
pub use nats::{NATS_SERVER_BIN_ENV, NatsServer, PINNED_NATS_SERVER_VERSION};
pub use net::free_port;

/// Runs the `git` CLI (an independent client) in `dir` with a fixed author and committer, and
/// returns its trimmed stdout.
///
/// # Errors
/// [`HarnessError::Spawn`] when git cannot be run, [`HarnessError::CommandFailed`] (naming the
/// command and quoting git's stderr) when it exits non-zero.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, HarnessError> {
    let stdout = process::run(
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com"),
    )?;
    Ok(String::from_utf8_lossy(&stdout).trim().to_owned())
}

/// A fresh temporary directory named `<prefix>…` for a server's files, removed when dropped.
fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| HarnessError::Io {
            path: std::env::temp_dir(),
            source,
        })
}

/// Writes `contents` to `path`, naming the file in the error.
fn write_file(path: &Path, contents: &str) -> Result<(), HarnessError> {
    std::fs::write(path, contents).map_err(|source| HarnessError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates the directory `path` and its parents.
fn create_dir(path: &Path) -> Result<(), HarnessError> {
    std::fs::create_dir_all(path).map_err(|source| HarnessError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Waits (up to `timeout`) until the `/metrics` page of the service at `addr` has a sample line
/// containing `needle`, and returns that line; while it has none, the page's failure lines are
/// the observation quoted on timeout.
///
/// # Errors
/// When the page cannot be read, or no such line appears in time.
pub async fn metric_line(addr: std::net::SocketAddr, needle: &str, timeout: Duration) -> anyhow::Result<String> {
    let url = format!("http://{addr}/metrics");
    eventually(timeout, &format!("a metric with {needle}"), async || {
        let text = reqwest::get(&url).await?.text().await?;
        Ok(match text.lines().find(|l| l.contains(needle) && !l.starts_with('#')) {
            Some(line) => Ok(line.to_owned()),
            None => Err(text
                .lines()
                .filter(|l| l.contains("failure"))
                .collect::<Vec<_>>()
                .join("\n")),
        })
    })
    .await
}

/// How often [`eventually`] checks.
const EVENTUALLY_POLL: Duration = Duration::from_millis(50);

/// Calls `check` every 50 ms until it yields `Ok(Ok(value))` and returns the value.
/// `Ok(Err(observation))` means "not yet": the last observation is quoted if `timeout` passes
/// first. `Err` fails at once.
///
/// # Errors
/// The first error of `check`, or a timeout naming `what` and the last observation.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    check: impl AsyncFnMut() -> anyhow::Result<Result<T, String>>,
) -> anyhow::Result<T> {
    eventually_every(EVENTUALLY_POLL, timeout, what, check).await
}

/// [`eventually`], checking every `poll` (say, to spare an apiserver on a busy machine).
///
/// # Errors
/// As [`eventually`].
pub async fn eventually_every<T>(
    poll: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Result<T, String>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let observation = match check().await? {
            Ok(value) => return Ok(value),
            Err(observation) => observation,
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {observation}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The `p`-th percentile (0.0–1.0, nearest rank) of `sorted`, for benchmarks' latency reports.
///
/// # Panics
/// When `sorted` is empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = (1..=sorted.len())
        .find(|&r| r as f64 >= p * sorted.len() as f64)
        .unwrap_or(sorted.len());
    sorted[rank - 1]
}
