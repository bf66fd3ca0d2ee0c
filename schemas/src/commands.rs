//! Operator commands: NATS request/reply on `baton.cmd.<service>.<verb>` (see
//! [`crate::subjects::command_subject`]). The CLI and the chat-ops bot send a
//! [`CommandRequest`] as JSON and get a [`CommandReply`]; the outcome is also recorded as an
//! event with the actor, so the event log says who did what.
//!
//! | verb | needs | does |
//! | --- | --- | --- |
//! | `approve` | `release` (+ `environment` when several requests are open) | records an approval; the quorum promotes |
//! | `decline` | `release` (+ `environment`) | closes the request as rejected; the release stops there |
//! | `promote` | `release`, `environment` | promotes under the environment's policy (`break_glass` asks to override a freeze) |
//! | `rollback` | `app`, `environment` (+ `release`, default: the previous one) | restores an earlier release's manifests and pins |
//! | `pin` / `unpin` | `app`, `environment` | automatic promotion leaves a pinned environment alone |
//! | `sync` | `app`, `environment` | applies the environment's current config commit again (undoes drift) |
//! | `restore` | `environment` | applies every app of the environment from the config repo's head again, namespace included |
//! | `mark-bad` | `release` | quarantines the release: never promoted again |
//! | `unquarantine` | `release` | lifts a quarantine: the release may be promoted again |
//! | `whoami` | nothing | says which person, key and channel the promoter proves the command came from; records nothing |
//!
//! A command is signed (DESIGN.md §4, "Signed commands"): the NATS header `Baton-Signature`
//! holds an SSH signature over the exact body bytes, and the body carries `issuedAt` and a
//! `nonce` so it cannot be replayed. The signing and verifying are `baton_kit::signing`'s.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The service that answers the release commands.
pub const PROMOTER: &str = "promoter";

/// The promoter's command verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Approve a pending promotion.
    Approve,
    /// Decline a pending promotion.
    Decline,
    /// Promote a release into an environment.
    Promote,
    /// Roll an environment back to an earlier release.
    Rollback,
    /// Pin an environment: automatic promotion leaves it alone.
    Pin,
    /// Lift a pin.
    Unpin,
    /// Apply an app's current config commit in an environment again.
    Sync,
    /// Apply every app of an environment from the config repo's head again.
    Restore,
    /// Quarantine a release.
    MarkBad,
    /// Lift a release's quarantine.
    Unquarantine,
    /// Ask who the promoter sees behind the signature (read-only).
    Whoami,
}

impl Verb {
    /// Every verb.
    pub const ALL: &'static [Verb] = &[
        Self::Approve,
        Self::Decline,
        Self::Promote,
        Self::Rollback,
        Self::Pin,
        Self::Unpin,
        Self::Sync,
        Self::Restore,
        Self::MarkBad,
        Self::Unquarantine,
        Self::Whoami,
    ];

    /// The verb as it appears in the subject, e.g. `mark-bad`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Decline => "decline",
            Self::Promote => "promote",
            Self::Rollback => "rollback",
            Self::Pin => "pin",
            Self::Unpin => "unpin",
            Self::Sync => "sync",
            Self::Restore => "restore",
            Self::MarkBad => "mark-bad",
            Self::Unquarantine => "unquarantine",
            Self::Whoami => "whoami",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
            format!("unknown command `{s}`; the promoter knows {}", known.join(", "))
        })
    }
}

/// A command to the promoter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRequest {
    /// Who is asking: a person of `people.yaml`, whose key (or whose bot's key) signed the
    /// command.
    pub actor: String,
    /// When the command was signed (RFC 3339): the promoter refuses one issued too long ago,
    /// so a captured command cannot be sent again later. Optional here only so that a missing
    /// one is refused with this field named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
    /// A value used once: the promoter refuses a nonce it has already seen within the
    /// `issuedAt` window, so a captured command cannot be replayed at once either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The chat user a bot speaks for (e.g. a Slack user id): the promoter checks that it
    /// belongs to `actor` in `people.yaml`. Absent when a person signs for themself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    /// The application (`rollback`, `pin`, `unpin`, `sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The release id (`approve`, `decline`, `promote`, `mark-bad`; optional for `rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Why (recorded with the decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `promote` during a freeze window: ask for a break-glass approval instead of refusing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// An id for this request: a retried request with the same id is not done twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The promoter's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandReply {
    /// Whether the command was accepted.
    pub ok: bool,
    /// What happened, or why not and what to do instead.
    pub message: String,
    /// The config-repo commit the command made, if it made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_commit: Option<String>,
    /// The approval request the command opened or acted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// The release the command acted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

impl CommandReply {
    /// An accepted command.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
            ..Self::default()
        }
    }

    /// A refused command.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            ..Self::default()
        }
    }
}
