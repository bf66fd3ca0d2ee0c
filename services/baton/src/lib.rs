//! `baton` is the command line of Baton, kubectl-like: it reads the event log (replayed from
//! the JetStream stream, then live), traces one release from commit to production, shows what
//! runs in every environment, sends the promoter's operator commands (approve, decline,
//! promote, rollback, pin, unpin, mark-bad, unquarantine, whoami) signed with the caller's SSH
//! key ([`signing`]), shows who may do what (`baton policy show`), and prints build and test
//! logs. Human output by default, coloured on a terminal; `-o json|yaml` for scripts.
//! `baton admin provision` is the admin's provisioning step, and `baton up` runs every service
//! in one process for local use.

#![allow(clippy::print_stdout, reason = "a command line prints its results")]

pub mod admin;
pub mod cli;
pub mod ids;
pub mod policy;
pub mod render;
pub mod run;
pub mod signing;
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
    /// Provisioning refused an operator's choice.
    #[error("{0}")]
    Refused(String),
    /// The promoter refused the command; its answer is printed already, once, on stdout (as
    /// `refused: <reason>`, or the reply document with `-o json|yaml`), so `main` prints nothing
    /// more.
    #[error("{0}")]
    CommandRefused(String),
    /// A config file is invalid (a service's, for `baton up`; environments.yaml, for `baton
    /// policy show`): the file and field at fault.
    #[error("{0}")]
    Config(String),
    /// The command cannot be signed: the key file or the ssh-agent cannot be used. Nothing was
    /// sent.
    #[error("cannot sign the command: {0}")]
    Sign(#[source] baton_kit::signing::SigningError),
    /// A service could not start or stopped with an error (`baton up`).
    #[error("{0}")]
    Service(String),
}

impl From<baton_kit::log::LogError> for CliError {
    fn from(error: baton_kit::log::LogError) -> Self {
        match error {
            baton_kit::log::LogError::Since(_) => Self::Usage(error.to_string()),
            _ => Self::Nats(error.to_string()),
        }
    }
}

impl CliError {
    /// Whether the error is printed already (a promoter's refusal, on stdout): `main` then
    /// only exits with [`Self::exit_code`].
    pub fn is_printed(&self) -> bool {
        matches!(self, Self::CommandRefused(_))
    }

    /// The process exit code: 1 a service failed, 2 usage (no signing key among them), 3 not
    /// found, 4 refused, 64 an invalid config file (as the services' own binaries), 69
    /// (unavailable) for NATS.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Service(_) => 1,
            Self::Config(_) => 64,
            Self::Usage(_) | Self::Sign(_) => 2,
            Self::NotFound(_) => 3,
            Self::Refused(_) | Self::CommandRefused(_) => 4,
            Self::Nats(_) => 69,
        }
    }
}
