//! The harness's one error type: why a server, a tool or the Kubernetes control plane could not
//! be found, started, reached or stopped. Every variant names what failed and, where a process
//! wrote a log, quotes its last lines, so a failing suite says what to fix without a rerun.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::kube::{K8S_BIN_DIR_ENV, KUBERNETES_VERSION};

/// Why the harness could not start, stop, reach or use what it owns.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A program the harness runs is missing.
    #[error("{program} not found: {reason}. {fix}")]
    ProgramNotFound {
        /// The program looked for.
        program: &'static str,
        /// What was looked at.
        reason: String,
        /// How to install it, or where to point the harness at it.
        fix: String,
    },
    /// The Kubernetes control-plane binaries are not where the harness looks.
    #[error(
        "Kubernetes {KUBERNETES_VERSION} control plane not found: {reason}. Build it once with \
         `just setup` (runs scripts/build-kubernetes.sh, about 9 minutes, then cached), or set \
         {K8S_BIN_DIR_ENV} to a directory holding kube-apiserver, kube-controller-manager and \
         kube-scheduler"
    )]
    ControlPlaneNotFound {
        /// What was looked at.
        reason: String,
    },
    /// A file or directory of the harness could not be created, written or read.
    #[error("could not prepare {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// No free port could be reserved on 127.0.0.1.
    #[error("could not reserve a free port on 127.0.0.1")]
    FreePort(#[source] io::Error),
    /// A program could not be launched.
    #[error("could not spawn {binary}")]
    Spawn {
        /// The executable that was launched.
        binary: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// A process exited while the harness was starting it or waiting for it, typically because
    /// a port it was given was taken.
    #[error("{process} exited ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// The process, as [`Process::name`](crate::process::Process::name) names it.
        process: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its output.
        log_tail: String,
    },
    /// A process kept running but did not become ready in time.
    #[error("{process} was not ready after {timeout:?} ({last_check}); last log lines:\n{log_tail}")]
    NotReady {
        /// The process.
        process: String,
        /// How long the harness waited.
        timeout: Duration,
        /// The outcome of the last readiness probe.
        last_check: String,
        /// The end of its output.
        log_tail: String,
    },
    /// Waiting for a process, or signalling it, failed.
    #[error("could not stop or wait for {process} (pid {pid})")]
    Stop {
        /// The process.
        process: String,
        /// Its process id.
        pid: u32,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// [`NatsServer::start_again`](crate::NatsServer::start_again) was called while the server
    /// still runs.
    #[error("nats-server is already running on port {port}; call kill() or stop() first")]
    AlreadyRunning {
        /// Its client port.
        port: u16,
    },
    /// A command the harness runs to completion (git, openssl, skopeo, cargo) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it said on stderr.
        stderr: String,
    },
    /// A command printed something other than the JSON the harness reads.
    #[error("`{command}` printed no JSON")]
    CommandOutput {
        /// The command line.
        command: String,
        /// The parse failure.
        #[source]
        source: serde_json::Error,
    },
    /// A kubeconfig the harness wrote could not be loaded (a harness bug).
    #[error("the harness's kubeconfig {path} is invalid")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What kube-rs said.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A kube client could not be built.
    #[error("could not build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// A request the harness makes on a test's behalf failed.
    #[error("{action}")]
    Api {
        /// What the harness was doing.
        action: String,
        /// The apiserver's (or the transport's) error.
        #[source]
        source: kube::Error,
    },
    /// The node simulator could not start its nodes.
    #[error("the node simulator could not start")]
    NodeSimulator(#[from] baton_nodesim::SimulatorError),
    /// Something the harness waits for (nodes becoming schedulable, a namespace's service
    /// account) did not happen in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        timeout: Duration,
    },
}
