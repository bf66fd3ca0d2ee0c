//! The simulator's one error type: why nodes could not be registered or kept alive, or why the
//! machinery of executed pods (their work directory, the kubelet log server and its certificate)
//! could not be set up. Every variant names what failed.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why the simulator could not start or keep its nodes.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// A [`NodeSimulatorConfig`](crate::NodeSimulatorConfig) that cannot work.
    #[error("invalid node simulator configuration: {0}")]
    InvalidConfig(String),
    /// A file or directory of the simulator could not be created, written or read.
    #[error("could not prepare {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The kubelet log server found no free port on 127.0.0.1.
    #[error("could not reserve a free port on 127.0.0.1")]
    FreePort(#[source] io::Error),
    /// `openssl`, which makes the log server's certificate, is missing.
    #[error("openssl not found: `openssl` is not on PATH nor in /usr/bin. Install the Debian package `openssl`")]
    OpensslNotFound,
    /// `openssl` could not be run, or failed to make the certificate.
    #[error("`openssl req` failed ({status}): {stderr}")]
    Certificate {
        /// How it ended.
        status: ExitStatus,
        /// What it said on stderr.
        stderr: String,
    },
    /// A request to the apiserver failed.
    #[error("{action}")]
    Api {
        /// What the simulator was doing.
        action: String,
        /// The apiserver's (or the transport's) error.
        #[source]
        source: kube::Error,
    },
    /// The nodes did not become schedulable in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the simulator waited.
        timeout: Duration,
    },
}
