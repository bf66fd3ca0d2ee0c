//! The promoter's own config sections: the config repo it owns, where app repositories are
//! cached, and how it reacts to failed rollouts. Schema: `schemas/json/config/promoter.json`.
//!
//! ```yaml
//! config_repo:
//!   url: https://git.example.com/acme/deploy-config.git
//!   branch: main
//!   author_name: Baton
//!   author_email: baton@example.com
//! source:
//!   cache_dir: /var/cache/baton-promoter
//!   credentials:
//!     - url_prefix: https://git.example.com/acme/
//!       username: baton
//!       token_env: GIT_TOKEN
//! auto_rollback: true
//! registry:                     # where environments' `evidence` is read (the images' registry)
//!   address: registry.example.com
//!   username: baton-promoter
//!   password_env: REGISTRY_PASSWORD
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SourceSettings;
use super::tester::EvidenceRegistrySettings;

/// The promoter's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PromoterSettings {
    /// The config repo: the desired state of every environment, and its history.
    pub config_repo: ConfigRepoSettings,
    /// App repositories (read for their manifests and changelogs) and the config repo's working
    /// clone are cached here; credentials are matched against both repositories' URLs.
    pub source: SourceSettings,
    /// When a rollout fails, roll the environment back to its last healthy release, quarantine
    /// the failed release and pin the environment.
    pub auto_rollback: bool,
    /// How often waiting promotions (soak, freeze) and approval expiries are checked.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub tick: Duration,
    /// How long a replica's lock on an environment lasts unless renewed; a crashed replica's
    /// lock is taken over after this.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock_lease: Duration,
    /// Longest wait for another replica's promotion of the same environment before the event
    /// is retried later.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock_wait: Duration,
    /// The registry the images are in: the evidence an environment requires (signatures,
    /// attestations) is read from it before a promotion.
    pub registry: EvidenceRegistrySettings,
}

impl Default for PromoterSettings {
    fn default() -> Self {
        Self {
            config_repo: ConfigRepoSettings::default(),
            source: SourceSettings::default(),
            auto_rollback: true,
            tick: Duration::from_secs(1),
            lock_lease: Duration::from_secs(30),
            lock_wait: Duration::from_secs(20),
            registry: EvidenceRegistrySettings::default(),
        }
    }
}

/// The config repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigRepoSettings {
    /// Clone URL (https, ssh or a local path / `file://` URL).
    pub url: String,
    /// The branch holding the desired state; pushes are fast-forward only.
    pub branch: String,
    /// Committer and author name of the promoter's commits.
    pub author_name: String,
    /// Committer and author e-mail of the promoter's commits.
    pub author_email: String,
}

impl Default for ConfigRepoSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            branch: "main".to_owned(),
            author_name: "Baton".to_owned(),
            author_email: "baton@localhost".to_owned(),
        }
    }
}
