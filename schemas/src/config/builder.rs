//! The builder's own config sections: where images go, the key that signs them, where sources
//! are cached, the credentials for private repositories, and how build steps run. Schema:
//! `schemas/json/config/builder.json`.
//!
//! ```yaml
//! registry:
//!   address: registry.example.com     # host[:port] images are pushed to
//!   repository_prefix: baton          # images are <address>/<prefix>/<app>
//! signing:
//!   key_file: /run/secrets/baton-builder-signing.pem   # ECDSA P-256, PEM
//!   builder_id: https://baton.dev/builder/v1
//! source:
//!   cache_dir: /var/cache/baton-builder
//!   credentials:
//!     - url_prefix: https://github.com/acme/
//!       username: x-access-token
//!       token_env: GITHUB_TOKEN
//! limits:                             # the most a step may use
//!   memory_bytes: 8589934592
//! steps:
//!   executor: sandbox                 # or unsandboxed
//!   secrets:
//!     NPM_TOKEN:
//!       value_env: NPM_TOKEN          # or file: /run/secrets/npm-token
//!       repositories: [acme/*]
//! ```

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{SourceSettings, StepsSettings};

/// The builder id recorded in provenance unless `signing.builder_id` says otherwise.
pub const DEFAULT_BUILDER_ID: &str = "https://baton.dev/builder/v1";

/// The builder's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BuilderSettings {
    /// The registry images are pushed to.
    pub registry: RegistrySettings,
    /// The key every pushed image is signed, and its provenance attested, with.
    pub signing: SigningSettings,
    /// Source checkouts.
    pub source: SourceSettings,
    /// The most a build step may use (its `limits` in `.baton.yaml` ask for less).
    pub limits: StepLimits,
    /// How build steps run: the executor, granted secrets, the sandbox's user.
    pub steps: StepsSettings,
}

/// The registry images are pushed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// `host[:port]` of the registry.
    pub address: String,
    /// Images are pushed as `<address>/<repository_prefix>/<app>` (prefix may be empty).
    pub repository_prefix: String,
    /// Talk plain HTTP to this registry (a local or in-cluster registry without TLS).
    pub insecure: bool,
    /// Registry user, when it requires authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable holding the registry password or token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:5000".to_owned(),
            repository_prefix: "baton".to_owned(),
            insecure: false,
            username: None,
            password_env: None,
        }
    }
}

/// How the builder signs what it pushes: a cosign signature (`sha256-<hex>.sig`) and an SLSA
/// provenance attestation (`sha256-<hex>.att`) for every image, with one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SigningSettings {
    /// The ECDSA P-256 private key, PEM (`PRIVATE KEY` or `EC PRIVATE KEY`, unencrypted).
    /// Required while `enabled`: without it the builder refuses to start. Its public half
    /// (`openssl ec -in KEY -pubout`) goes into the config repo as `keys/<name>.pem`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Sign and attest every image. Turning it off is logged at start and reported by
    /// `/readyz`: environments that require evidence then hold every release.
    pub enabled: bool,
    /// Who built the image, as provenance's `runDetails.builder.id`: what a promoter's
    /// `evidence.provenance.builders` lists.
    pub builder_id: String,
}

impl Default for SigningSettings {
    fn default() -> Self {
        Self {
            key_file: None,
            enabled: true,
            builder_id: DEFAULT_BUILDER_ID.to_owned(),
        }
    }
}

/// The most a build or test step may use: what a step gets unless its `limits` in
/// `.baton.yaml` ask for less, and more than which it may not ask. 0 leaves a limit unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StepLimits {
    /// CPU seconds one process of a step may use.
    pub cpu_seconds: u64,
    /// Address space one process of a step may map, in bytes.
    pub memory_bytes: u64,
    /// Files one process of a step may hold open.
    pub open_files: u64,
    /// Processes (and threads) of the steps' user at once (`RLIMIT_NPROC`: steps that run as the
    /// same user share it).
    pub processes: u64,
    /// Bytes a step may add to its workspace, and the largest file it may write.
    pub disk_bytes: u64,
}

impl Default for StepLimits {
    fn default() -> Self {
        Self {
            cpu_seconds: 3600,
            memory_bytes: 8 * 1024 * 1024 * 1024,
            open_files: 4096,
            processes: 1024,
            disk_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}
