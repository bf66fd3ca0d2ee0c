//! The command line: every subcommand, flag and environment variable of `baton`.

use std::path::PathBuf;

use baton_schemas::commands::{CommandRequest, Verb};
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
        /// The release id (the chainId; `baton releases <app>` lists them), or a unique prefix
        /// of it of at least 4 characters, such as the 8 `baton events` shows.
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
    /// DORA's four key metrics of an application per environment over a window: deployment
    /// frequency, lead time for changes, change failure rate and time to restore, computed
    /// from the event log as docs/dora.md writes them.
    Dora {
        /// The application, as the git host names it (e.g. acme/shop).
        app: String,
        /// Only this environment.
        #[arg(long)]
        environment: Option<String>,
        /// The window, up to now: e.g. 30d, 12h, 2weeks.
        #[arg(long, default_value = "30d", value_parser = positive_duration)]
        window: std::time::Duration,
        /// The buckets of the series over time (in -o json|yaml): e.g. 1d, 1week.
        #[arg(long, default_value = "1d", value_parser = positive_duration)]
        bucket: std::time::Duration,
    },
    /// Approve a pending promotion.
    Approve(Vote),
    /// Decline a pending promotion: the release stops there.
    Decline(Vote),
    /// Promote a release into an environment (its policy still applies).
    Promote {
        /// The release id, or a unique prefix of it (at least 4 characters).
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
        signing: Signing,
    },
    /// Roll an environment back to the previous (or a named) release, and pin it.
    Rollback {
        /// The application.
        app: String,
        /// The environment.
        environment: String,
        /// The release to go back to, its id or a unique prefix of it (default: the newest
        /// earlier one not quarantined).
        #[arg(long)]
        release: Option<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Apply an app's current config commit in an environment again: puts back what was changed
    /// in the cluster by hand (drift). Same grant as `rollback`.
    Sync {
        /// The application.
        app: String,
        /// The environment.
        environment: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Recreate an environment from the config repo's head: every app applied again with the
    /// same digests, no rebuild, no new promotion; works when the namespace is gone. Same grant
    /// as `rollback`.
    Restore {
        /// The environment.
        environment: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Pin an environment: automatic promotion leaves it alone.
    Pin(PinArgs),
    /// Lift a pin.
    Unpin(PinArgs),
    /// Quarantine a release: it is never promoted again.
    MarkBad {
        /// The release id, or a unique prefix of it (at least 4 characters).
        release: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Lift a release's quarantine: it may be promoted again.
    Unquarantine {
        /// The release id, or a unique prefix of it (at least 4 characters).
        release: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Which person, key and channel the promoter sees behind your signature (read-only).
    Whoami {
        #[command(flatten)]
        signing: Signing,
    },
    /// Who may do what, from environments.yaml.
    Policy {
        /// What to show.
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The log of a build or test run (`baton events` shows its run id on the build/test events).
    Logs {
        /// The run id, `build-<uuid>` or `test-<uuid>`, or a unique prefix of it such as the
        /// `test-5cc719e8` `baton events` shows.
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

/// A duration longer than zero, as humantime writes it (`30d`, `12h`, `2weeks`).
fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e}; write a duration such as 30d, 12h or 2weeks"))?;
    if duration.is_zero() {
        return Err("it must be longer than zero".into());
    }
    Ok(duration)
}

/// The `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Per environment, every verb environments.yaml grants (promote, rollback, pin, unpin,
    /// mark-bad, unquarantine, break-glass): who holds it, and whether `grants` says so or a
    /// default does. Reads the file, not the promoter: run it in an up-to-date clone of the config
    /// repo, or name the file.
    Show {
        /// The environments.yaml to read.
        #[arg(long, default_value = "environments.yaml")]
        file: PathBuf,
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
    /// The release id, or a unique prefix of it (at least 4 characters).
    pub release: String,
    /// The environment (needed when the release waits in several).
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// Why, or a comment (recorded with the vote).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub signing: Signing,
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
    pub signing: Signing,
}

/// Who sends a promoter command, and the key that proves it (DESIGN.md §4, "Signed commands";
/// [`crate::signing`] says how the key is found).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Signing {
    /// Who you are: your name in the config repo's people.yaml (default: $BATON_ACTOR, else
    /// $USER). The promoter accepts it only with a key people.yaml lists for that name.
    #[arg(long, env = "BATON_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,
    /// The private key to sign with (an unencrypted OpenSSH key file; a key with a passphrase
    /// signs through the ssh-agent). Without it, the ssh-agent at SSH_AUTH_SOCK signs.
    #[arg(long, env = "BATON_SIGNING_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Which of the ssh-agent's keys signs, by its fingerprint as `ssh-add -l` prints it
    /// (default: the first key the agent lists). With --key, the fingerprint that key must have.
    #[arg(long, env = "BATON_SIGNING_KEY_FINGERPRINT", value_name = "SHA256:…")]
    pub key_fingerprint: Option<String>,
    /// Gone: the actor is --actor NAME, proven by the signing key.
    #[arg(long = "as", hide = true, value_name = "NAME")]
    pub removed_as: Option<String>,
}

impl Command {
    /// The promoter command this subcommand sends, if it sends one: its verb, the request
    /// without its actor (filled in from [`Signing`] once the key is found), and who signs it.
    pub fn promoter_command(&self) -> Option<(Verb, CommandRequest, &Signing)> {
        let request =
            |release: Option<&String>, environment: Option<&String>, app: Option<&String>, reason: &Option<String>| {
                CommandRequest {
                    app: app.cloned(),
                    release: release.cloned(),
                    environment: environment.cloned(),
                    reason: reason.clone(),
                    request_id: Some(uuid::Uuid::new_v4().to_string()),
                    ..CommandRequest::default()
                }
            };
        Some(match self {
            Self::Approve(vote) | Self::Decline(vote) => {
                let verb = if matches!(self, Self::Approve(_)) {
                    Verb::Approve
                } else {
                    Verb::Decline
                };
                let r = request(Some(&vote.release), vote.environment.as_ref(), None, &vote.reason);
                (verb, r, &vote.signing)
            }
            Self::Promote {
                release,
                environment,
                break_glass,
                reason,
                signing,
            } => {
                let mut r = request(Some(release), Some(environment), None, reason);
                r.break_glass = *break_glass;
                (Verb::Promote, r, signing)
            }
            Self::Rollback {
                app,
                environment,
                release,
                reason,
                signing,
            } => (
                Verb::Rollback,
                request(release.as_ref(), Some(environment), Some(app), reason),
                signing,
            ),
            Self::Sync {
                app,
                environment,
                reason,
                signing,
            } => (Verb::Sync, request(None, Some(environment), Some(app), reason), signing),
            Self::Restore {
                environment,
                reason,
                signing,
            } => (Verb::Restore, request(None, Some(environment), None, reason), signing),
            Self::Pin(pin) | Self::Unpin(pin) => {
                let verb = if matches!(self, Self::Pin(_)) {
                    Verb::Pin
                } else {
                    Verb::Unpin
                };
                let r = request(None, Some(&pin.environment), Some(&pin.app), &pin.reason);
                (verb, r, &pin.signing)
            }
            Self::MarkBad {
                release,
                reason,
                signing,
            } => (Verb::MarkBad, request(Some(release), None, None, reason), signing),
            Self::Unquarantine {
                release,
                reason,
                signing,
            } => (Verb::Unquarantine, request(Some(release), None, None, reason), signing),
            Self::Whoami { signing } => (Verb::Whoami, request(None, None, None, &None), signing),
            Self::Events { .. }
            | Self::Dora { .. }
            | Self::Trace { .. }
            | Self::Releases { .. }
            | Self::Status { .. }
            | Self::Logs { .. }
            | Self::Up { .. }
            | Self::Admin { .. }
            | Self::Policy { .. }
            | Self::Completions { .. } => return None,
        })
    }
}
