//! The web UI's own config sections: where it reads the manifests it compares (the config
//! repo), where it reads image layers (the registry), and how much of the event log it keeps in
//! memory. Everything is optional: without a config repo the release page says it cannot show
//! manifest diffs, without a registry that it cannot show layers. Schema:
//! `schemas/json/config/web.json`.
//!
//! ```yaml
//! http:
//!   listen: 0.0.0.0:8080
//! config_repo:
//!   url: https://git.example.com/acme/deploy-config.git
//!   branch: main
//! registry:
//!   address: registry.example.com
//!   insecure: false
//!   username: baton-web
//!   password_env: REGISTRY_PASSWORD
//! source:
//!   cache_dir: /var/cache/baton-web
//! view:
//!   max_events: 200000
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SourceSettings;
use super::tester::EvidenceRegistrySettings;

/// The web UI's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// The config repo (read only): the release page compares a release's manifests with what
    /// each environment runs now.
    pub config_repo: WebConfigRepoSettings,
    /// The registry the images are in (read only; the builder's `registry.address`): the
    /// release page lists an image's layers against the previous release's. Unset: no layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<EvidenceRegistrySettings>,
    /// Git access to the config repo (credentials for a private one, the mirror's cache).
    pub source: SourceSettings,
    /// What the service keeps in memory.
    pub view: ViewSettings,
}

/// Where the config repo is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfigRepoSettings {
    /// Clone URL (https or a local path / `file://` URL), the promoter's `config_repo.url`.
    /// Empty: no manifest diffs.
    pub url: String,
    /// The branch holding the desired state.
    pub branch: String,
}

impl Default for WebConfigRepoSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            branch: "main".to_owned(),
        }
    }
}

/// How much of the event log stays in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ViewSettings {
    /// How many one-line event summaries (the event log page's rows) stay in memory; older
    /// ones drop out of the event log page. A release page always reads its events from the
    /// stream, and the matrix and release index keep every release.
    pub max_events: usize,
}

impl Default for ViewSettings {
    fn default() -> Self {
        Self { max_events: 200_000 }
    }
}
