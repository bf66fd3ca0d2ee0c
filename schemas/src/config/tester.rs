//! The tester's own config sections: where sources are cached, how test steps run, and the key
//! and registry its test-result attestations go out with. Schema: `schemas/json/config/tester.json`.
//!
//! ```yaml
//! signing:
//!   key_file: /run/secrets/baton-tester-signing.pem    # ECDSA P-256, PEM
//!   tester_id: https://baton.dev/tester/v1
//! registry:                                            # where the tested images are
//!   address: registry.example.com
//!   username: baton-tester
//!   password_env: REGISTRY_PASSWORD
//! source:
//!   cache_dir: /var/cache/baton-tester
//! limits:
//!   cpu_seconds: 3600
//! steps:
//!   executor: sandbox
//!   secrets:
//!     PACT_TOKEN:
//!       file: /run/secrets/pact-token
//!       repositories: [acme/shop]
//! junit_max_bytes: 268435456
//! ```

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::builder::StepLimits;
use super::{SourceSettings, StepsSettings};

/// The tester's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TesterSettings {
    /// Source checkouts (same shape as the builder's, credentials included).
    pub source: SourceSettings,
    /// The most a test step may use (its `limits` in `.baton.yaml` ask for less).
    pub limits: StepLimits,
    /// How test steps run: the executor, granted secrets, the sandbox's user.
    pub steps: StepsSettings,
    /// Largest JUnit report read; a bigger one makes the run an `error` with the reason.
    pub junit_max_bytes: u64,
    /// The key every verdict is attested with.
    pub signing: TesterSigningSettings,
    /// The registry the tested images live in: the attestations are attached there.
    pub registry: EvidenceRegistrySettings,
}

/// The tester id recorded in test-result attestations unless `signing.tester_id` says otherwise.
pub const DEFAULT_TESTER_ID: &str = "https://baton.dev/tester/v1";

/// How the tester attests its verdicts: an in-toto test-result attestation appended to the
/// image's `sha256-<hex>.att`, signed with this key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TesterSigningSettings {
    /// The ECDSA P-256 private key, PEM (`PRIVATE KEY` or `EC PRIVATE KEY`, unencrypted).
    /// Required while `enabled`: without it the tester refuses to start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Attest every verdict. Turning it off is logged at start and reported by `/readyz`:
    /// environments that require a test attestation then hold every release.
    pub enabled: bool,
    /// Who tested, recorded in the attestation: lets a verifier tell testers apart.
    pub tester_id: String,
}

impl Default for TesterSigningSettings {
    fn default() -> Self {
        Self {
            key_file: None,
            enabled: true,
            tester_id: DEFAULT_TESTER_ID.to_owned(),
        }
    }
}

/// A registry Baton reads and writes evidence in (the images are already there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceRegistrySettings {
    /// `host[:port]` of the registry: the builder's `registry.address`.
    pub address: String,
    /// Talk plain HTTP to this registry (a local or in-cluster registry without TLS).
    pub insecure: bool,
    /// Registry user, when it requires authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable holding the registry password or token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

impl Default for EvidenceRegistrySettings {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:5000".to_owned(),
            insecure: false,
            username: None,
            password_env: None,
        }
    }
}

impl Default for TesterSettings {
    fn default() -> Self {
        Self {
            source: SourceSettings::default(),
            limits: StepLimits::default(),
            steps: StepsSettings::default(),
            junit_max_bytes: 256 * 1024 * 1024,
            signing: TesterSigningSettings::default(),
            registry: EvidenceRegistrySettings::default(),
        }
    }
}
