//! Contents of Baton's extension events (`dev.cdeventsx.baton-…`): what CDEvents has no word
//! for. Their JSON Schemas are generated from these types into `schemas/json/events/` and
//! validated like the official ones: context and subject are the CDEvents shapes, the subject's
//! `content` is the type below, and `additionalProperties` is false everywhere.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Content of `dev.cdeventsx.baton-release.created.0.1.0`: a tested artifact became a release.
/// The subject id is the release id (the `chainId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseCreatedContent {
    /// The application, as the git host names its repository (e.g. `acme/shop`).
    pub app: String,
    /// The commit the release was built from (full sha).
    pub commit: String,
    /// The image, as a purl pinned by digest.
    pub artifact_id: String,
}

/// Content of `dev.cdeventsx.baton-deployment.failed.0.1.0` (a rollout did not become healthy)
/// and of `dev.cdeventsx.baton-deployment.superseded.0.1.0` (a newer promotion replaced it).
/// The subject id is the release id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentFailedContent {
    /// The environment the rollout was for (e.g. `staging`).
    pub environment: String,
    /// The application.
    pub app: String,
    /// The image the rollout tried to run, as a purl pinned by digest.
    pub artifact_id: String,
    /// Why the rollout was judged unhealthy, in words an operator can act on.
    pub reason: String,
}

/// Content of `dev.cdeventsx.baton-deployment.started.0.1.0`: the deployer is applying a
/// promotion. The subject id is the release id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStartedContent {
    /// The environment.
    pub environment: String,
    /// The application.
    pub app: String,
    /// The image being rolled out, as a purl pinned by digest.
    pub artifact_id: String,
}

/// Content of `dev.cdeventsx.baton-release.quarantined.0.1.0`: a release is marked bad and never
/// promoted again. The subject id is the release id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseQuarantinedContent {
    /// The application.
    pub app: String,
    /// Who marked it (`baton-promoter` after a failed rollout).
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// Content of `dev.cdeventsx.baton-release.unquarantined.0.1.0`: a quarantine was lifted; the
/// release may be promoted again. The subject id is the release id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseUnquarantinedContent {
    /// The application.
    pub app: String,
    /// The person who lifted it (proven by their signature).
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Why it had been quarantined.
    pub quarantined_for: String,
}

/// Content of `dev.cdeventsx.baton-promotion.held.0.1.0`: a release does not enter an
/// environment now. The subject id is the release id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromotionHeldContent {
    /// The application.
    pub app: String,
    /// The environment it would enter.
    pub environment: String,
    /// Why it is held, in words an operator can act on.
    pub reason: String,
    /// When the promoter will try again by itself (end of a soak or freeze), if it will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
}

/// Content of `dev.cdeventsx.baton-command.rejected.0.1.0`: an operator command was refused.
/// The subject id is the command's request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRejectedContent {
    /// The verb, e.g. `approve`.
    pub verb: String,
    /// Who the command says sent it (claimed; `person` is who was proven).
    pub actor: String,
    /// Why it was refused.
    pub reason: String,
    /// When the sender was not proven: the check that failed (`unsigned`, `unknown_key`,
    /// `not_the_actor`, `bot_may_not_speak`, `stale`, `replayed_nonce`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The person the signature proved, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    /// The fingerprint of the key that signed, as `ssh-keygen -l` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// How it came: `cli` (signed by the person), or the name of the bot that signed for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// Content of `dev.cdeventsx.baton-command.accepted.0.1.0`: an operator command from a proven
/// sender was accepted. The subject id is the caller's request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandAcceptedContent {
    /// The verb, e.g. `approve`.
    pub verb: String,
    /// The person the signature proved (the command's actor).
    pub person: String,
    /// The fingerprint of the key that signed, as `ssh-keygen -l` prints it.
    pub key_fingerprint: String,
    /// `cli` (signed by the person), or the name of the bot that signed for them.
    pub channel: String,
}

/// Content of `dev.cdeventsx.baton-policy.rejected.0.1.0`: `environments.yaml` in the config
/// repo is invalid. The subject id is the config-repo commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRejectedContent {
    /// The file, `environments.yaml`.
    pub file: String,
    /// The field at fault, empty when the whole file is.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
    /// The commit of the last valid policy, which stays in force, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_in_force: Option<String>,
}

/// Content of `dev.cdeventsx.baton-environment.drifted.0.1.0`: the live objects of an app in an
/// environment differ from the manifests of its current config commit. The subject id is the
/// release the environment runs; `customData` ([`crate::drift::DriftData`]) names every object
/// and field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentDriftedContent {
    /// The environment.
    pub environment: String,
    /// The application.
    pub app: String,
    /// The objects that drifted, as `Kind/name`: those `customData` lists.
    pub objects: Vec<String>,
    /// Objects that drifted beyond those listed (`customData.objectsOmitted`).
    #[serde(default, skip_serializing_if = "crate::drift::is_zero")]
    pub objects_omitted: u64,
    /// What the deployer does about it: `report`, `heal` (the environment's `drift` policy).
    pub policy: String,
}

/// Content of `dev.cdeventsx.baton-environment.unhealed.0.1.0`: the deployer re-applied an
/// environment's config commit to end a drift, and it did not end. The subject id is the release
/// the environment runs; `customData` ([`crate::drift::DriftData`]) lists what still differs
/// when that is why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentUnhealedContent {
    /// The environment.
    pub environment: String,
    /// The application.
    pub app: String,
    /// Why: the rollout's failure, the apply's refusal, or the objects that still differ.
    pub reason: String,
    /// The objects of the drift, as `Kind/name`: those the drift record lists.
    pub objects: Vec<String>,
    /// Objects of the drift beyond those listed.
    #[serde(default, skip_serializing_if = "crate::drift::is_zero")]
    pub objects_omitted: u64,
}

/// Content of `dev.cdeventsx.baton-environment.synced.0.1.0`: a reported drift ended. The
/// subject id is the release the environment runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentSyncedContent {
    /// The environment.
    pub environment: String,
    /// The application.
    pub app: String,
    /// How it ended: `healed` (the deployer re-applied the config commit, rollout healthy),
    /// `resolved` (the live objects match again without Baton applying anything), `rolled-out`
    /// (a new promotion's rollout replaced them).
    pub how: String,
}
