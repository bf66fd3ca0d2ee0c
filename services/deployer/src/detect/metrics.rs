//! The drift metrics: whether each app is drifted, the reports and heals by outcome, and how
//! long a full pass took.

use baton_kit::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Labels of the per-app drift metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppLabels {
    pub(super) environment: String,
    pub(super) app: String,
}

/// Labels of the report and heal counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    pub(super) environment: String,
    pub(super) outcome: String,
}

/// The drift metrics, registered with the service's.
#[derive(Debug, Clone)]
pub(super) struct DriftMetrics {
    /// 1 while an app's environment is drifted, 0 once synced.
    pub(super) drifted: Family<AppLabels, Gauge>,
    /// Drifts reported and ended, by environment (`drifted`, `synced`).
    pub(super) reports: Family<OutcomeLabels, Counter>,
    /// Heals by outcome (`healthy`, `failed`, `skipped`).
    pub(super) heals: Family<OutcomeLabels, Counter>,
    /// How long a full pass took.
    pub(super) pass_seconds: Histogram,
}

impl DriftMetrics {
    pub(super) fn register(metrics: &Metrics) -> Self {
        let this = Self {
            drifted: Family::default(),
            reports: Family::default(),
            heals: Family::default(),
            pass_seconds: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
        };
        metrics.with_registry(|registry| {
            registry.register(
                "deployer_drifted",
                "1 while the live objects of an app in an environment differ from its config commit",
                this.drifted.clone(),
            );
            registry.register(
                "deployer_drift_reports",
                "Drifts reported (drifted), ended (synced) and not ended by a heal (unhealed), by environment",
                this.reports.clone(),
            );
            registry.register(
                "deployer_drift_heals",
                "Heals of a drift by outcome (healthy, failed, skipped)",
                this.heals.clone(),
            );
            registry.register(
                "deployer_drift_pass_seconds",
                "How long a full drift pass over every app took",
                this.pass_seconds.clone(),
            );
        });
        this
    }
}
