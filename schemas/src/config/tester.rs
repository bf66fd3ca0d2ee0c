//! The tester's own config sections. Schema: `schemas/json/config/tester.json`.
//!
//! ```yaml
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
}

impl Default for TesterSettings {
    fn default() -> Self {
        Self {
            source: SourceSettings::default(),
            limits: StepLimits::default(),
            steps: StepsSettings::default(),
            junit_max_bytes: 256 * 1024 * 1024,
        }
    }
}
