//! The chat-ops bot's own config sections: how it proves requests come from Slack, who the chat
//! users are in Baton, and where it posts approval requests and release news. Schema:
//! `schemas/json/config/chatops.json`.
//!
//! ```yaml
//! signing_secret_env: SLACK_SIGNING_SECRET   # or signing_secret_file: /run/secrets/slack
//! users:
//!   U024BE7LH: alice      # Slack user id → Baton identity (as environments.yaml names people)
//!   U0G9QF9C6: bob
//! contact: "#platform-team"
//! incoming_webhook_url_env: SLACK_WEBHOOK_URL
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// Slack user id (`U…`, as Slack sends it in `user_id`) → Baton identity. Only mapped users
    /// can act; the identity is the `actor` the promoter checks against `environments.yaml`.
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
