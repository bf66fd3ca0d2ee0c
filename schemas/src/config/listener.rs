//! The listener's own config sections: the repositories it accepts pushes for, and how it
//! receives webhooks. Schema: `schemas/json/config/listener.json`.
//!
//! ```yaml
//! repositories:
//!   - name: acme/shop                  # as the git host names it (GitHub: full_name)
//!     provider: github
//!     secret_env: SHOP_WEBHOOK_SECRET  # or secret_file: /run/secrets/shop
//!     branches: [main, "release/*"]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The listener's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerSettings {
    /// Repositories whose pushes start releases. A push for any other repository is refused (404).
    pub repositories: Vec<RepositoryConfig>,
    /// How webhooks are received.
    pub webhook: WebhookSettings,
}

/// The git host that sends a repository's webhooks, i.e. the `<provider>` of
/// `POST /webhooks/<provider>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookProvider {
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// GitLab (`X-Gitlab-Token`).
    Gitlab,
    /// Gitea or Forgejo (`X-Gitea-Signature` / `X-Forgejo-Signature`); `forgejo` is accepted too.
    #[serde(alias = "forgejo")]
    Gitea,
    /// Bitbucket Cloud (`X-Hub-Signature`).
    Bitbucket,
    /// Anything else that signs its body with HMAC-SHA256 (`webhook.generic_signature_header`).
    Generic,
}

impl WebhookProvider {
    /// The provider's name in the webhook URL.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Gitea => "gitea",
            Self::Bitbucket => "bitbucket",
            Self::Generic => "generic",
        }
    }
}

/// One repository Baton delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// The repository as the git host names it (GitHub, Gitea, Bitbucket: `owner/name`;
    /// GitLab: `group/subgroup/name`). It is also the application's name in events.
    pub name: String,
    /// The git host that sends its webhooks. Optional for a repository that is only polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<WebhookProvider>,
    /// Environment variable holding the webhook secret (GitLab: the secret token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// File holding the webhook secret (trailing newline ignored), e.g. a mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Accept unsigned webhooks. Only for local experiments: every request logs a warning.
    #[serde(default)]
    pub insecure: bool,
    /// Branches whose pushes start releases: exact names or globs (`release/*`).
    #[serde(default = "default_branches")]
    pub branches: Vec<String>,
    /// Whether pushing a tag starts a release too.
    #[serde(default)]
    pub tags: bool,
    /// URL the builder clones from, when it differs from what the host reports (e.g. an
    /// internal mirror, or SSH instead of HTTPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_url: Option<String>,
    /// Poll this repository's remote instead of (or besides) receiving webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollConfig>,
}

fn default_branches() -> Vec<String> {
    vec!["main".to_owned()]
}

/// Polling of a remote without webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// The remote to poll (`https://…`, `file://…`, or a local path to a bare repository).
    /// Defaults to the repository's `clone_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Time between two looks at the remote's refs.
    #[serde(with = "humantime_serde", default = "default_poll_interval")]
    #[schemars(with = "String")]
    pub interval: Duration,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}

/// How webhooks are received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Largest body accepted; bigger ones are refused with 413.
    pub max_body_bytes: usize,
    /// Header that carries the HMAC-SHA256 of the body for the `generic` provider
    /// (`sha256=<hex>` or bare hex).
    pub generic_signature_header: String,
    /// Longest the listener waits for JetStream to acknowledge an event before answering 503,
    /// keeping the answer inside the git hosts' 10 s budget.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub publish_timeout: Duration,
    /// Where polled repositories are fetched to (to read their commits). Default: a directory
    /// under the system's temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_cache_dir: Option<PathBuf>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 5 * 1024 * 1024,
            generic_signature_header: "X-Baton-Signature".to_owned(),
            publish_timeout: Duration::from_secs(5),
            poll_cache_dir: None,
        }
    }
}
