//! The command line: every subcommand, flag and environment variable of `baton`.

use baton_schemas::commands::CommandRequest;
use clap::{Parser, Subcommand, ValueEnum};

/// Baton from a terminal: the event log, release traces, where releases run, approvals and the
/// promoter's operator commands, and build/test logs.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, propagate_version = true)]
pub struct Cli {
    /// NATS server URL (JetStream enabled) Baton runs on.
    #[arg(long, global = true, env = "BATON_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// NATS user, when the server authenticates by name and password (Baton on Kubernetes:
    /// `operator`, see deploy/README.md). The password comes from --nats-password-file or the
    /// environment variable BATON_NATS_PASSWORD, never from the command line.
    #[arg(long, global = true, env = "BATON_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// File holding the password of --nats-user (trailing newline ignored).
    #[arg(long, global = true, env = "BATON_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<std::path::PathBuf>,
    /// Output: `human` (default; coloured on a terminal), `wide` (more columns), `json`, `yaml`.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Human,
    /// Aligned text with more columns (event ids, chain ids in full).
    Wide,
    /// One JSON document (a JSON line per event when following).
    Json,
    /// YAML documents.
    Yaml,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The event log: everything that happened, replayed from the stream, then live with --follow.
    Events {
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// Only this application (as the git host names it, e.g. acme/shop).
        #[arg(long)]
        app: Option<String>,
        /// Only this type: a full type (dev.cdevents.service.deployed.0.3.0) or its
        /// `subject.predicate` (service.deployed).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events newer than this, e.g. 15m, 1h, 2days.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
    },
    /// The timeline of one release from commit to production: each stage, its duration, who
    /// approved, and where it runs now.
    Trace {
        /// The release id (the chainId; `baton releases <app>` lists them).
        release: String,
    },
    /// The releases of an application, newest first, and where each runs.
    Releases {
        /// The application, e.g. acme/shop.
        app: String,
    },
    /// What runs in every environment (of one application, or all).
    Status {
        /// Only this application.
        app: Option<String>,
    },
    /// Approve a pending promotion.
    Approve(Vote),
    /// Decline a pending promotion: the release stops there.
    Decline(Vote),
    /// Promote a release into an environment (its policy still applies).
    Promote {
        /// The release id.
        release: String,
        /// The environment.
        environment: String,
        /// During a freeze window: ask for a break-glass approval instead of being refused.
        #[arg(long)]
        break_glass: bool,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        actor: Actor,
    },
    /// Roll an environment back to the previous (or a named) release, and pin it.
    Rollback {
        /// The application.
        app: String,
        /// The environment.
        environment: String,
        /// The release to go back to (default: the newest earlier one not quarantined).
        #[arg(long)]
        release: Option<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        actor: Actor,
    },
    /// Pin an environment: automatic promotion leaves it alone.
    Pin(PinArgs),
    /// Lift a pin.
    Unpin(PinArgs),
    /// Quarantine a release: it is never promoted again.
    MarkBad {
        /// The release id.
        release: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        actor: Actor,
    },
    /// The log of a build or test run (its run id is in the build/test events).
    Logs {
        /// The run id, e.g. build-… or test-….
        run: String,
        /// Only this step.
        #[arg(long)]
        step: Option<String>,
        /// Follow the live log (of a running step).
        #[arg(short, long)]
        follow: bool,
    },
    /// Run every Baton service in this process, for local use: each reads its usual config
    /// file from the directory (listener.yaml, builder.yaml, tester.yaml, promoter.yaml,
    /// deployer.yaml, chatops.yaml; missing ones are left out).
    Up {
        /// The directory of the services' config files.
        #[arg(long, default_value = ".")]
        config_dir: std::path::PathBuf,
    },
    /// Administration with the NATS admin user (deploy/README.md).
    Admin {
        /// What to do.
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print shell completions, e.g. `baton completions bash > /etc/bash_completion.d/baton`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The admin's subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create or update Baton's streams, key-value buckets, log object store and every stage's
    /// durable consumer (services only check them at start). Run it before the services start,
    /// and again after changing their `jetstream` or `runner` settings; it never deletes.
    Provision {
        /// The directory of the services' config files (listener.yaml, builder.yaml, …): each
        /// present file provisions its stage's consumer with its `runner` settings, and all must
        /// name the same streams. Default: every stage, with the default settings.
        #[arg(long)]
        config_dir: Option<std::path::PathBuf>,
        /// A consumer missing on a stream that already holds events for it (a stage added
        /// later, or a consumer deleted) is refused unless this says what it does with them:
        /// `skip` starts it after the newest event, `replay` hands it every one again.
        #[arg(long, value_enum)]
        consumer_history: Option<ConsumerHistory>,
    },
}

/// What a consumer created over existing events does with them (`--consumer-history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsumerHistory {
    /// Start after the newest event; events published while it was missing are not handled.
    Skip,
    /// Handle every event on the stream again.
    Replay,
}

impl From<ConsumerHistory> for baton_kit::provision::History {
    fn from(history: ConsumerHistory) -> Self {
        match history {
            ConsumerHistory::Skip => Self::Skip,
            ConsumerHistory::Replay => Self::Replay,
        }
    }
}

/// A vote on a pending promotion (`approve`, `decline`).
#[derive(Debug, Clone, clap::Args)]
pub struct Vote {
    /// The release id.
    pub release: String,
    /// The environment (needed when the release waits in several).
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// Why, or a comment (recorded with the vote).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub actor: Actor,
}

impl Vote {
    /// The promoter command request.
    ///
    /// # Errors
    /// [`CliError::Usage`](crate::CliError::Usage) when no identity is known.
    pub fn request(self) -> Result<CommandRequest, crate::CliError> {
        crate::run::request(&self.actor, Some(self.release), self.environment, None, self.reason)
    }
}

/// An application's environment to pin or unpin.
#[derive(Debug, Clone, clap::Args)]
pub struct PinArgs {
    /// The application.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// Why (recorded).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub actor: Actor,
}

impl PinArgs {
    /// The promoter command request.
    ///
    /// # Errors
    /// [`CliError::Usage`](crate::CliError::Usage) when no identity is known.
    pub fn request(self) -> Result<CommandRequest, crate::CliError> {
        crate::run::request(&self.actor, None, Some(self.environment), Some(self.app), self.reason)
    }
}

/// Who is acting: recorded with every decision.
#[derive(Debug, Clone, clap::Args)]
pub struct Actor {
    /// Your Baton identity (default: $BATON_ACTOR, else $USER).
    #[arg(long = "as", env = "BATON_ACTOR")]
    pub name: Option<String>,
}

impl Actor {
    /// The identity to record.
    pub fn resolve(&self) -> Option<String> {
        self.name
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|n| !n.trim().is_empty())
    }
}
