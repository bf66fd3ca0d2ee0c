//! What the promoter and the deployer say about releases: the `customData` of
//! `baton-release.created`, `environment.modified`, `approval.*`, `service.*` and
//! `baton-deployment.failed`, and the file the promoter keeps next to each environment's
//! manifests in the config repo. Their JSON Schemas are generated into `schemas/json/payloads/`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::payloads::{ImageInfo, Person};

/// Name of the file the promoter writes next to an environment's manifests of an app in the
/// config repo (`<environment>/<app>/.baton-release.yaml`): which release the manifests are,
/// and whether the environment is pinned. The deployer skips dot-files.
pub const RELEASE_FILE: &str = ".baton-release.yaml";

/// Whether a file of a manifests folder is a manifest: `.yaml`, `.yml` or `.json`, and not a
/// dot-file (such as [`RELEASE_FILE`]). The promoter renders these files; the deployer applies
/// them.
pub fn is_manifest_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.to_ascii_lowercase().ends_with(ext))
}

/// A release: one tested image of one commit, on its way through the environments. Its id is
/// the `chainId` of every event from the push on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseData {
    /// The release id (the `chainId`).
    pub release: String,
    /// The application (repository name as the git host names it).
    pub app: String,
    /// The commit it was built from (full sha).
    pub commit: String,
    /// URL the source is fetched from.
    pub repository: String,
    /// The image, pinned by digest.
    pub image: ImageInfo,
    /// The commit's author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Person>,
    /// Who pushed the commit, when the git host said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_by: Option<Person>,
    /// Whether the commit declares test steps (a release without tests enters only
    /// environments that `allow_untested`).
    pub tested: bool,
    /// The test run that passed, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_run: Option<String>,
    /// The release the first environment ran when this one was created, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_release: Option<String>,
    /// Commits since the previous release's commit, newest first (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changelog: Vec<ChangeEntry>,
    /// When the release was created.
    pub created_at: DateTime<Utc>,
}

/// One commit of a changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeEntry {
    /// Full sha.
    pub commit: String,
    /// First line of the message.
    pub summary: String,
    /// The author.
    pub author: Person,
    /// The committer, when it is not the author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<Person>,
}

/// What a config-repo commit of the promoter did to an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PromotionAction {
    /// A release was promoted into the environment.
    Promote,
    /// The environment was re-pointed to an earlier release (its manifests restored byte for
    /// byte from the config repo's history).
    Rollback,
    /// The environment was pinned: automatic promotion leaves it alone.
    Pin,
    /// The pin was lifted.
    Unpin,
    /// An operator asked for the environment's current config commit to be applied again
    /// (`baton sync`): no new commit, the same release and digest.
    Sync,
    /// An operator asked for the whole environment to be recreated from the config repo's head
    /// (`baton restore`): one per app, no new commit, the same releases and digests.
    Restore,
}

impl PromotionAction {
    /// Whether the deployer has something to apply (a pin changes no manifest; a sync or a
    /// restore applies the manifests already committed).
    pub const fn changes_manifests(self) -> bool {
        matches!(self, Self::Promote | Self::Rollback | Self::Sync | Self::Restore)
    }

    /// Whether it re-applies the config commit the environment already has, rather than moving
    /// the environment to another release (`sync`, `restore`).
    pub const fn reapplies(self) -> bool {
        matches!(self, Self::Sync | Self::Restore)
    }

    /// The word used in commit messages and replies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Rollback => "rollback",
            Self::Pin => "pin",
            Self::Unpin => "unpin",
            Self::Sync => "sync",
            Self::Restore => "restore",
        }
    }
}

/// `customData` of `environment.modified`: one commit of the promoter to the config repo. The
/// deployer applies `manifestsPath` at `configCommit` to `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromotionData {
    /// The promotion's id: the same decision always has the same id (it is the `Baton-Promotion`
    /// trailer of the config-repo commit).
    pub promotion: String,
    /// What the commit did.
    pub action: PromotionAction,
    /// The application.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// The release the environment now runs.
    pub release: ReleaseData,
    /// The release it ran before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_release: Option<String>,
    /// URL of the config repo.
    pub config_repository: String,
    /// The config-repo commit.
    pub config_commit: String,
    /// Folder of the app's manifests for this environment in the config repo, e.g.
    /// `production/acme_shop`.
    pub manifests_path: String,
    /// Who decided: a person's identity, or `baton-promoter` for automatic promotions.
    pub actor: String,
    /// Why, in words (a rollback's cause, a pin's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the environment is pinned after this commit.
    pub pinned: bool,
    /// Whether a freeze window was overridden by an approved break-glass request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The evidence verified before the commit, when the environment requires evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceRecord>,
}

/// What the promoter verified of an image before moving an environment to it (the
/// environment's `evidence` in `environments.yaml`), or that break-glass skipped the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvidenceRecord {
    /// The cosign signature that verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRecord>,
    /// The attestations that verified (provenance, test result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestations: Vec<AttestationRecord>,
    /// Set when a break-glass command moved the environment without verifying: who, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A verified image signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureRecord {
    /// The key's name (`keys/<name>.pem` in the config repo).
    pub key: String,
    /// The key's id, `sha256:<hex>` of its DER public key.
    pub key_id: String,
    /// Digest of the `sha256-<hex>.sig` manifest it was read from.
    pub manifest: String,
}

/// A verified attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationRecord {
    /// Its in-toto predicate type.
    pub predicate_type: String,
    /// The signing key's name.
    pub key: String,
    /// The key's id.
    pub key_id: String,
    /// Digest of the `sha256-<hex>.att` manifest it was read from.
    pub manifest: String,
}

/// The file `<environment>/<app>/.baton-release.yaml` in the config repo: the release whose
/// manifests sit next to it, and the pin. With the manifests it is all that is needed to
/// recreate the environment, and the promoter rebuilds its state from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseFile {
    /// The release.
    pub release: ReleaseData,
    /// The promotion that wrote the manifests.
    pub promotion: String,
    /// What that promotion did.
    pub action: PromotionAction,
    /// Who decided.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Set while the environment is pinned (automatic promotion leaves it alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pin>,
    /// The evidence verified before the manifests were written, when the environment requires
    /// evidence (a pin or unpin writes no manifests and records none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceRecord>,
}

/// A pin on an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pin {
    /// Who pinned it (`baton-promoter` after an automatic rollback).
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// What an approval request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalKind {
    /// Promotion into a `manual` environment.
    Promotion,
    /// Promotion during a freeze window, asked for explicitly.
    BreakGlass,
}

/// One recorded decision on an approval request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalVote {
    /// Who decided.
    pub actor: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `customData` of `approval.created/updated/closed`: the request, what is being released,
/// and the decisions so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalData {
    /// The request's id (the subject id of its events).
    pub approval: String,
    /// What it is for.
    pub kind: ApprovalKind,
    /// The application.
    pub app: String,
    /// The environment the release would enter.
    pub environment: String,
    /// The release.
    pub release: ReleaseData,
    /// The release the environment runs now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_release: Option<String>,
    /// The image the environment runs now, by digest reference, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_image: Option<String>,
    /// Distinct approvals needed.
    pub required: u32,
    /// Who may approve.
    pub approvers: Vec<String>,
    /// Decisions so far, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<ApprovalVote>,
    /// When the request expires.
    pub expires_at: DateTime<Utc>,
    /// Who asked (an operator's identity for a break-glass or a manual promote).
    pub requested_by: String,
    /// Why it was asked for, or why it closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The prefix of a person's URN in the CDEvents Baton writes (`responder`, `requestor`).
pub const USER_URN_PREFIX: &str = "urn:baton:user:";

/// The URN of the person `actor`: [`USER_URN_PREFIX`] and the name, every character a URN
/// should not carry replaced by `_`.
pub fn user_urn(actor: &str) -> String {
    let safe: String = actor
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{USER_URN_PREFIX}{safe}")
}

/// The person a URN names (`urn:baton:user:alice` → `alice`); any other text as it is.
pub fn user_of_urn(urn: &str) -> &str {
    urn.strip_prefix(USER_URN_PREFIX).unwrap_or(urn)
}

impl ApprovalData {
    /// The subject content of an answer to this request (`approval.updated`, and
    /// `approval.closed` with the request's `status`): who answered, and what.
    pub fn answer_content(&self, responder: &str, decision: &str, status: Option<&str>) -> serde_json::Value {
        let mut content = serde_json::json!({
            "approvalDetailsUrl": format!("urn:baton:approval:{}", self.approval),
            "resourceTargetUrl": format!("urn:baton:release:{}:{}", self.release.release, self.environment),
            "responder": user_urn(responder),
            "decision": decision,
        });
        if let Some(status) = status {
            content["status"] = serde_json::json!(status);
        }
        content
    }
}

/// `customData` of the deployer's `service.deployed/upgraded/rolledback` and
/// `baton-deployment.failed`: which promotion was applied where, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentData {
    /// The promotion applied.
    pub promotion: String,
    /// What it did (`promote` or `rollback`).
    pub action: PromotionAction,
    /// The application.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// Its namespace.
    pub namespace: String,
    /// The release now running.
    pub release: String,
    /// The config-repo commit applied.
    pub config_commit: String,
    /// The image, by digest reference.
    pub image: String,
    /// Why the rollout failed (on `baton-deployment.failed`) or was superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The objects applied, as `Kind/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<String>,
    /// Objects of this app in this environment that the release no longer has, deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// The pods that made the rollout fail, with their states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_pods: Vec<PodReport>,
    /// How long the deployer waited for the workloads to become healthy after applying (pods
    /// being scheduled, started and ready), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_wait_ms: Option<u64>,
}

/// A pod's state, as the deployer saw it when judging a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodReport {
    /// The pod.
    pub name: String,
    /// Its phase (`Pending`, `Running`, …).
    pub phase: String,
    /// Whether it is Ready.
    pub ready: bool,
    /// The reason a container is waiting or terminated (`CrashLoopBackOff`, `ImagePullBackOff`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The message that came with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Container restarts so far.
    pub restarts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_urn_carries_no_character_a_urn_should_not_and_reads_back() {
        assert_eq!(user_urn("alice"), "urn:baton:user:alice");
        assert_eq!(user_urn("bob@example.com"), "urn:baton:user:bob@example.com");
        // A hostile name cannot add URN parts, spaces or anything beyond ASCII.
        assert_eq!(user_urn("eve:admin x/é"), "urn:baton:user:eve_admin_x__");
        assert_eq!(user_of_urn(&user_urn("alice")), "alice");
        assert_eq!(user_of_urn("baton-promoter"), "baton-promoter", "other text is kept");
    }
}
