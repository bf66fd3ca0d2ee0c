//! The tester's own config sections. Schema: `schemas/json/config/tester.json`.
//!
//! ```yaml
//! source:
//!   cache_dir: /var/cache/baton-tester
//! limits:
//!   cpu_seconds: 3600
//! junit_max_bytes: 268435456
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SourceSettings;
use super::builder::StepLimits;

/// The tester's sections of its config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TesterSettings {
    /// Source checkouts (same shape as the builder's, credentials included).
    pub source: SourceSettings,
    /// Resource limits of every test step.
    pub limits: StepLimits,
    /// Largest JUnit report read; a bigger one makes the run an `error` with the reason.
    pub junit_max_bytes: u64,
}

impl Default for TesterSettings {
    fn default() -> Self {
        Self {
            source: SourceSettings::default(),
            limits: StepLimits::default(),
            junit_max_bytes: 256 * 1024 * 1024,
        }
    }
}
