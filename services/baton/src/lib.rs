//! `baton` is the command line of Baton, kubectl-like: it reads the event log (replayed from
//! the JetStream stream, then live), traces one release from commit to production, shows what
//! runs in every environment, sends the promoter's operator commands (approve, decline,
//! promote, rollback, pin, unpin, mark-bad) with the caller's identity, and prints build and
//! test logs. Human output by default, coloured on a terminal; `-o json|yaml` for scripts.
//! `baton admin provision` is the admin's provisioning step, and `baton up` runs every service
//! in one process for local use.

#![allow(clippy::print_stdout, reason = "a command line prints its results")]

pub mod admin;
pub mod cli;
pub mod log;
pub mod render;
pub mod run;
pub mod up;

/// Why a command failed. `main` prints it on one line and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// NATS (or JetStream) unreachable or refusing.
    #[error("{0}")]
    Nats(String),
    /// The command is wrong: what to type instead.
    #[error("{0}")]
    Usage(String),
    /// Not found (release, app, run).
    #[error("{0}")]
    NotFound(String),
    /// The promoter refused the command, or provisioning an operator's choice.
    #[error("{0}")]
    Refused(String),
    /// A service's config file is invalid (`baton up`): the file and field at fault.
    #[error("{0}")]
    Config(String),
    /// A service could not start or stopped with an error (`baton up`).
    #[error("{0}")]
    Service(String),
}

impl CliError {
    /// The process exit code: 1 a service failed, 2 usage, 3 not found, 4 refused, 64 an
    /// invalid service config (as the services' own binaries), 69 (unavailable) for NATS.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Service(_) => 1,
            Self::Config(_) => 64,
            Self::Usage(_) => 2,
            Self::NotFound(_) => 3,
            Self::Refused(_) => 4,
            Self::Nats(_) => 69,
        }
    }
}
