//! Payloads Baton carries in a CDEvent's `customData`: what the standard fields cannot hold.
//! Their JSON Schemas are generated into `schemas/json/payloads/`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `customData` of `change.merged`: one push to a tracked branch (or tag), as the git host
/// described it. The subject id of the event is [`PushData::after`], the new head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushData {
    /// The application: the repository's name in the listener's config (GitHub: `full_name`).
    pub app: String,
    /// Where the push came from: `github`, `gitlab`, `gitea`, `bitbucket`, `generic` or `poll`.
    pub provider: String,
    /// The git host's delivery id (or, when polling, `poll:<repo>:<ref>:<sha>`).
    pub delivery_id: String,
    /// The full ref that moved, e.g. `refs/heads/main` or `refs/tags/v1.2.0`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The branch name when a branch moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The tag name when a tag was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The sha the ref pointed to before the push (all zeros for a new ref).
    pub before: String,
    /// The sha the ref points to now: the commit Baton builds.
    pub after: String,
    /// The repository.
    pub repository: RepositoryInfo,
    /// The new head commit.
    pub head_commit: CommitInfo,
    /// Every commit of the push, oldest first, as the host listed them (may be capped by the
    /// host, e.g. GitHub lists at most 2048).
    pub commits: Vec<CommitInfo>,
    /// Who pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher: Option<Person>,
}

/// A repository as a push describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryInfo {
    /// Short name, e.g. `shop`.
    pub name: String,
    /// Full name as the host names it, e.g. `acme/shop`.
    pub full_name: String,
    /// URL the builder clones from (the config's `clone_url` override wins).
    pub clone_url: String,
    /// Web page of the repository, when the host gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_url: Option<String>,
}

/// One commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitInfo {
    /// Full sha.
    pub id: String,
    /// Commit message.
    pub message: String,
    /// Commit time as the host gave it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The author.
    pub author: Person,
    /// Web page of the commit, when the host gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A person as git hosts describe them; any part may be missing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Person {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Account name on the git host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}
