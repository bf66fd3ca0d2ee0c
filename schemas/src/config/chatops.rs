//! The chat-ops bot's own config sections: how it proves requests come from Slack, the key it
//! signs the promoter's commands with, where it reads who the chat users are (`people.yaml` in
//! the config repo, the one place that maps chat ids to people), and where it posts approval
//! requests and release news. Schema: `schemas/json/config/chatops.json`.
//!
//! ```yaml
//! signing_secret_env: SLACK_SIGNING_SECRET   # or signing_secret_file: /run/secrets/slack
//! signing_key_file: /run/secrets/baton-chatops/signing-key   # listed under bots in people.yaml
//! people:
//!   repository: https://git.example.com/acme/baton-config.git
//!   branch: main
//! contact: "#platform-team"
//! incoming_webhook_url_env: SLACK_WEBHOOK_URL
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SourceSettings;

/// The chat-ops bot's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ChatopsSettings {
    /// Environment variable holding the Slack app's signing secret. Every inbound request is
    /// verified with it; the bot refuses to start without one (set this or
    /// `signing_secret_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret_env: Option<String>,
    /// File holding the signing secret (trailing newline ignored), e.g. a mounted Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret_file: Option<PathBuf>,
    /// The bot's OpenSSH private key (unencrypted), which signs every command it forwards to
    /// the promoter. Its public key is listed under `bots.<name>.keys` in `people.yaml`; the bot
    /// refuses to start without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// Where `people.yaml` is read: who each chat user is (`people.<name>.chat`).
    pub people: PeopleSource,
    /// Git access to the config repo (credentials for a private one, the mirror's cache).
    pub source: SourceSettings,
    /// No longer read: chat users are mapped in `people.yaml` (`people.<name>.chat`). Kept so
    /// that a config still holding the old map is refused naming it, with the entries to move.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, String>,
    /// Whom an unmapped user is told to ask for access (a person, a channel), e.g.
    /// `#platform-team`.
    pub contact: String,
    /// Slack incoming-webhook URL approval requests and release news are posted to. It holds a
    /// token, so prefer `incoming_webhook_url_env` or `incoming_webhook_url_file`. Unset (all
    /// three): nothing is posted, and no event consumer is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incoming_webhook_url: Option<String>,
    /// Environment variable holding the incoming-webhook URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incoming_webhook_url_env: Option<String>,
    /// File holding the incoming-webhook URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incoming_webhook_url_file: Option<PathBuf>,
    /// Requests whose `X-Slack-Request-Timestamp` is further than this from now (past or
    /// future) are refused as replays.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_request_age: Duration,
    /// Longest wait for the promoter's answer to a command before telling the user to try again.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub command_timeout: Duration,
    /// How long a slash command's HTTP answer may wait for the promoter. Slack gives up after
    /// 3 s, so a slower answer is acknowledged at once and the outcome is posted to the
    /// command's `response_url` when it arrives.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub answer_within: Duration,
    /// Longest a post to Slack may take before it counts as failed (and is retried).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub post_timeout: Duration,
    /// Largest request body accepted; bigger ones are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for ChatopsSettings {
    fn default() -> Self {
        Self {
            signing_secret_env: None,
            signing_secret_file: None,
            signing_key_file: None,
            people: PeopleSource::default(),
            source: SourceSettings::default(),
            users: BTreeMap::new(),
            contact: "a Baton administrator".to_owned(),
            incoming_webhook_url: None,
            incoming_webhook_url_env: None,
            incoming_webhook_url_file: None,
            max_request_age: Duration::from_secs(5 * 60),
            command_timeout: Duration::from_secs(10),
            answer_within: Duration::from_millis(2500),
            post_timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Where the bot reads `people.yaml`: the config repo the promoter owns, at its branch's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PeopleSource {
    /// The config repo's URL (the promoter's `config_repo.url`). Required.
    pub repository: String,
    /// The branch whose head holds `people.yaml`.
    pub branch: String,
    /// How long a read of `people.yaml` is used before the head is looked at again. A chat user
    /// the file does not list makes the bot look again at once, so a newly added chat id works
    /// at the next request.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh: Duration,
}

impl Default for PeopleSource {
    fn default() -> Self {
        Self {
            repository: String::new(),
            branch: "main".to_owned(),
            refresh: Duration::from_secs(30),
        }
    }
}
