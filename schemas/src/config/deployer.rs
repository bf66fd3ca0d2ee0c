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
//! drift:
//!   interval: 1m                      # a full comparison of every app this often
//!   watch: true                       # and at once when a watched object changes
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
    /// Drift detection: how often the live objects of every app are compared with the manifests
    /// of its environment's current config commit, and whether changes are watched in between.
    pub drift: DriftSettings,
}

/// How the deployer looks for drift (the environment's `drift` policy in `environments.yaml`
/// says what it does about it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DriftSettings {
    /// A full pass over every app and environment this often: the backstop for what a watch
    /// missed (a watch restarted, an object of a kind not watched). `0s` turns drift detection
    /// off.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Watch the objects Baton applied and compare an app as soon as one of its objects changes
    /// or is deleted, rather than only at the next pass.
    pub watch: bool,
    /// Objects compared at once (a server-side apply dry run each): bounds the load a pass puts
    /// on the apiserver.
    pub concurrency: usize,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            watch: true,
            concurrency: 32,
        }
    }
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
            drift: DriftSettings::default(),
        }
    }
}
