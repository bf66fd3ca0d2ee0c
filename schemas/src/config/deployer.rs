//! The deployer's own config sections: how it reaches Kubernetes and the config repo, and how it
//! judges a rollout. Schema: `schemas/json/config/deployer.json`.
//!
//! ```yaml
//! kubeconfig: /etc/baton/kubeconfig   # unset: in-cluster service account, or $KUBECONFIG
//! source:
//!   cache_dir: /var/cache/baton-deployer
//! rollout_timeout: 5m
//! crashloop_restarts: 3
//! image_pull_grace: 1m
//! ```

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SourceSettings;

/// The deployer's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeployerSettings {
    /// Kubeconfig file to use. Unset: the in-cluster service account when running in a pod,
    /// else `$KUBECONFIG` or `~/.kube/config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The config repo's mirror cache and credentials (the URL comes with each promotion).
    pub source: SourceSettings,
    /// Field manager name of Baton's server-side applies.
    pub field_manager: String,
    /// Take over fields another manager owns instead of reporting the conflict.
    pub force_conflicts: bool,
    /// Longest a rollout may take before it is judged failed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub rollout_timeout: Duration,
    /// Restarts of a crash-looping container that fail the rollout.
    pub crashloop_restarts: u32,
    /// How long a pod may fail to pull its image before the rollout fails.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub image_pull_grace: Duration,
    /// How often a watched rollout is judged again between the changes its watch reports: the
    /// time limits, a later promotion and the lease renewal are checked this often.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// How long a replica's lease on a namespace lasts unless renewed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock_lease: Duration,
}

impl Default for DeployerSettings {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            source: SourceSettings::default(),
            field_manager: "baton".to_owned(),
            force_conflicts: false,
            rollout_timeout: Duration::from_secs(300),
            crashloop_restarts: 3,
            image_pull_grace: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            lock_lease: Duration::from_secs(30),
        }
    }
}
