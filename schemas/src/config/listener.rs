//! The listener's own config sections: the repositories it accepts pushes for, and how it
//! receives webhooks. Schema: `schemas/json/config/listener.json`.
//!
//! ```yaml
//! repositories:
//!   - name: acme/shop                  # as the git host names it (GitHub: full_name)
//!     provider: github
//!     secret_env: SHOP_WEBHOOK_SECRET  # or secret_file: /run/secrets/shop
//!     branches: [main, "release/*"]
//! source:                              # for polled repositories
//!   credentials:
//!     - url_prefix: https://git.example.com/
//!       username: baton
//!       token_env: GIT_TOKEN
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SourceSettings;

/// The listener's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerSettings {
    /// Repositories whose pushes start releases. A push for any other repository is refused (404).
    pub repositories: Vec<RepositoryConfig>,
    /// How webhooks are received.
    pub webhook: WebhookSettings,
    /// Git access for polled repositories: where they are fetched to (`source.cache_dir`) and
    /// the credentials of private remotes (`source.credentials`, as in the other services).
    pub source: SourceSettings,
}

/// A git host whose webhooks the listener understands; the last segment of
/// `/webhooks/<provider>` and the `provider` of a repository in the listener's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = accept_forgejo_alias)]
pub enum WebhookProvider {
    /// GitHub and GitHub Enterprise Server.
    Github,
    /// GitLab, SaaS or self-managed.
    Gitlab,
    /// Gitea, and Forgejo (its fork, which sends the same payloads); `forgejo` is accepted as
    /// an alias.
    #[serde(alias = "forgejo")]
    Gitea,
    /// Bitbucket Cloud.
    Bitbucket,
    /// Anything else that can send Baton's own, GitHub-like payload (see
    /// `services/listener/src/providers/generic.rs`), e.g. a CI job or a script in a git hook.
    Generic,
}

impl WebhookProvider {
    /// Every provider, in the order error messages list them.
    pub const ALL: [WebhookProvider; 5] = [
        WebhookProvider::Github,
        WebhookProvider::Gitlab,
        WebhookProvider::Gitea,
        WebhookProvider::Bitbucket,
        WebhookProvider::Generic,
    ];

    /// The lowercase name used in URLs, config files and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            WebhookProvider::Github => "github",
            WebhookProvider::Gitlab => "gitlab",
            WebhookProvider::Gitea => "gitea",
            WebhookProvider::Bitbucket => "bitbucket",
            WebhookProvider::Generic => "generic",
        }
    }
}

/// Lets the config's JSON Schema accept `forgejo`, which serde reads as [`WebhookProvider::Gitea`]
/// but schemars does not know about.
fn accept_forgejo_alias(schema: &mut schemars::Schema) {
    let Some(variants) = schema.get_mut("oneOf").and_then(Value::as_array_mut) else {
        return;
    };
    let gitea = Value::from(WebhookProvider::Gitea.as_str());
    for variant in variants.iter_mut().filter_map(Value::as_object_mut) {
        if variant.get("const") == Some(&gitea) {
            variant.remove("const");
            variant.insert("enum".to_owned(), serde_json::json!(["gitea", "forgejo"]));
        }
    }
}

impl fmt::Display for WebhookProvider {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for WebhookProvider {
    type Err = UnknownProviderError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name == "forgejo" {
            return Ok(WebhookProvider::Gitea);
        }
        WebhookProvider::ALL
            .into_iter()
            .find(|provider| provider.as_str() == name)
            .ok_or_else(|| UnknownProviderError { found: name.to_owned() })
    }
}

/// A provider name that is not one of [`WebhookProvider::ALL`] (nor `forgejo`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown git provider `{found}`: use one of github, gitlab, gitea (or forgejo), bitbucket, generic")]
pub struct UnknownProviderError {
    /// The name that was given.
    pub found: String,
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
    /// Deprecated: use `source.cache_dir`, which every service that reads git shares. Still
    /// honoured when `source.cache_dir` is unset.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_schema_accepts_forgejo() {
        let schema = serde_json::to_value(schemars::schema_for!(WebhookProvider)).unwrap();
        let accepted: Vec<&Value> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|variant| {
                let values = variant["enum"].as_array().map(|values| values.iter().collect());
                values.unwrap_or_else(|| vec![&variant["const"]])
            })
            .collect();
        assert_eq!(
            accepted,
            ["github", "gitlab", "gitea", "forgejo", "bitbucket", "generic"]
        );
    }

    #[test]
    fn names_parse_and_print() {
        for p in WebhookProvider::ALL {
            assert_eq!(p.as_str().parse::<WebhookProvider>().unwrap(), p);
        }
        assert_eq!("forgejo".parse::<WebhookProvider>().unwrap(), WebhookProvider::Gitea);
        assert!(
            "svn"
                .parse::<WebhookProvider>()
                .unwrap_err()
                .to_string()
                .contains("github")
        );
    }
}
