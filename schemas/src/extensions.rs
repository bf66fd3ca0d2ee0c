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

/// Content of `dev.cdeventsx.baton-deployment.failed.0.1.0`: a rollout did not become healthy.
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
