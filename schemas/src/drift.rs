//! Drift: what the deployer finds when the live objects of an app in an environment no longer
//! match the manifests of the environment's current config commit. [`DriftData`] is the
//! `customData` of `baton-environment.drifted` and `baton-environment.synced`; [`DriftRecord`] is
//! what the deployer keeps in KV `baton-state` under [`drift_key`], which `baton status` reads
//! for its SYNC column. Their JSON Schemas are generated into `schemas/json/payloads/`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::release::PromotionData;
use crate::subjects::sanitize_token;

/// What stands in for a Secret's values in a drift report.
pub const REDACTED: &str = "<redacted>";

/// The `baton-state` key of an app's drift in an environment: `deployer.drift.<app>.<env>`
/// (the app as its NATS token).
pub fn drift_key(app: &str, environment: &str) -> String {
    format!("deployer.drift.{}.{environment}", sanitize_token(app))
}

/// How a live object differs from the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftKind {
    /// A field Baton manages has another value (or is gone).
    Changed,
    /// An object the release has is not in the cluster.
    Missing,
    /// An object carries the app's labels but the release does not have it.
    Extra,
}

/// One field of a live object that differs from the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldDrift {
    /// The field, as a path: `spec.template.spec.containers[name=shop].image`.
    pub path: String,
    /// Its value in the release (what applying the config commit sets), absent when the release
    /// would remove it. A Secret's values are [`REDACTED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
    /// Its live value, absent when someone removed it. A Secret's values are [`REDACTED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<serde_json::Value>,
    /// The field manager that set the live value, when the object's managedFields say
    /// (e.g. `kubectl-set`, `kubectl-edit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    /// When that manager last wrote the object, when the managedFields say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<DateTime<Utc>>,
}

/// One object that drifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftedObject {
    /// `Kind/name`.
    pub object: String,
    /// How it differs.
    pub kind: DriftKind,
    /// The fields that differ (for [`DriftKind::Changed`]); a report lists the first few dozen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldDrift>,
    /// Fields that differ beyond those listed, so that a report stays within one message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fields_omitted: u64,
}

/// Whether a count is zero: serde's `skip_serializing_if` for the omitted counts.
#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
pub fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `A, B, C and 7 more`: the first `shown` of `names`, then how many more there are, counting
/// the `omitted` ones a report left out.
pub fn names_and_more<S: AsRef<str>>(names: &[S], shown: usize, omitted: u64) -> String {
    let listed: Vec<&str> = names.iter().take(shown).map(AsRef::as_ref).collect();
    let more = (names.len() - listed.len()) as u64 + omitted;
    let mut text = listed.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// `customData` of `baton-environment.drifted` and `baton-environment.synced`: which app in
/// which environment, at which config commit, and (when drifted) what differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftData {
    /// The application.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// Its namespace.
    pub namespace: String,
    /// The release the environment runs.
    pub release: String,
    /// The promotion that last applied it.
    pub promotion: String,
    /// The config-repo commit the live objects were compared with.
    pub config_commit: String,
    /// The environment's `drift` policy (`report` or `heal`) when drift detection reports;
    /// absent when an operator's `sync` or `restore` put the environment back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The objects that differ (empty on `synced`), in name order, as many as fit a report of
    /// at most 256 KiB (and at most 200).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<DriftedObject>,
    /// Objects that differ beyond those listed (anyone who can create objects with the app's
    /// labels can make thousands), so that a report stays within one message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub objects_omitted: u64,
    /// When the drift was first seen.
    pub detected_at: DateTime<Utc>,
    /// When it ended (on `synced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<DateTime<Utc>>,
    /// How long the healing rollout waited for the workloads to become healthy, in
    /// milliseconds (on `synced` after a heal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_wait_ms: Option<u64>,
}

impl DriftData {
    /// About the app and environment of `promotion` (the one last applied there), detected at
    /// `detected_at`: no policy, objects, end or rollout yet.
    pub fn of(promotion: &PromotionData, detected_at: DateTime<Utc>) -> Self {
        Self {
            app: promotion.app.clone(),
            environment: promotion.environment.clone(),
            namespace: promotion.namespace.clone(),
            release: promotion.release.release.clone(),
            promotion: promotion.promotion.clone(),
            config_commit: promotion.config_commit.clone(),
            policy: None,
            objects: Vec::new(),
            objects_omitted: 0,
            detected_at,
            synced_at: None,
            rollout_wait_ms: None,
        }
    }
}

/// What the deployer keeps in `baton-state` under [`drift_key`]: whether the app's live objects
/// in the environment match its config commit, as of the last look. Written only when that
/// changes, so a drift is reported once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftRecord {
    /// `synced` or `drifted`.
    pub state: SyncState,
    /// The config-repo commit compared with.
    pub config_commit: String,
    /// The objects that differ, as `Kind/name` (empty when synced): those a report lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// Objects that differ beyond those listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub objects_omitted: u64,
    /// A fingerprint of what differs: the same drift seen again is not reported again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// When the current state began.
    pub since: DateTime<Utc>,
    /// Why the last heal did not end the drift, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal_failed: Option<String>,
}

/// Whether live objects match the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// They match.
    Synced,
    /// They differ.
    Drifted,
}

impl SyncState {
    /// The word `baton status` shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Drifted => "drifted",
        }
    }
}
