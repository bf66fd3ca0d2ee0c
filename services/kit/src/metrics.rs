//! Prometheus metrics every service exposes on `/metrics`: events handled, failed and
//! dead-lettered by stage and type, handler latency, and events published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of per-event metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The stage (durable consumer) that handled the event.
    pub stage: String,
    /// The event type.
    pub event_type: String,
    /// `handled`, `duplicate`, `retried`, `dead_lettered`, `deadline_exceeded`, `invalid`.
    pub outcome: String,
}

/// Labels of the failure counter: what exactly went wrong, beyond the outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The stage whose handler failed.
    pub stage: String,
    /// The event type it was handling.
    pub event_type: String,
    /// `transient` or `permanent`.
    pub kind: String,
    /// The error's specific label, e.g. `registry_unreachable`, `missing_commit`.
    pub reason: String,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The stage.
    pub stage: String,
    /// The event type.
    pub event_type: String,
}

/// Labels of publish counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// The event type.
    pub event_type: String,
}

/// The metrics of one service, shared by its runner(s) and its HTTP endpoint.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Events a stage finished with, by outcome.
    pub events: Family<EventLabels, Counter>,
    /// Handler failures, by kind and specific reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Handler latency in seconds.
    pub handler_seconds: Family<StageLabels, Histogram>,
    /// Events published (and acknowledged by JetStream).
    pub published: Family<PublishLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with Baton's metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let events = Family::<EventLabels, Counter>::default();
        registry.register("events", "Events a stage finished with, by outcome", events.clone());
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "failures",
            "Handler failures by kind (transient, permanent) and specific reason",
            failures.clone(),
        );
        let handler_seconds = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0])
        });
        registry.register("handler_seconds", "Handler latency in seconds", handler_seconds.clone());
        let published = Family::<PublishLabels, Counter>::default();
        registry.register(
            "published",
            "Events published and acknowledged by JetStream",
            published.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            events,
            failures,
            handler_seconds,
            published,
        }
    }

    /// Counts one event of `stage`/`event_type` with `outcome`.
    pub fn count(&self, stage: &str, event_type: &str, outcome: &str) {
        self.events
            .get_or_create(&EventLabels {
                stage: stage.into(),
                event_type: event_type.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Registers more metrics (a service's own) into the same registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut registry)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String never fails");
        out
    }
}

/// The metrics of one stage, with the handles of each label set looked up once: the event
/// path then only bumps atomics instead of building label strings per event.
#[derive(Debug)]
pub struct StageMetrics {
    metrics: Metrics,
    stage: String,
    events: Mutex<HashMap<(&'static str, &'static str), Counter>>,
    latency: Mutex<HashMap<&'static str, Histogram>>,
    published: Mutex<HashMap<&'static str, Counter>>,
}

impl StageMetrics {
    /// The metrics of `stage` in `metrics`.
    pub fn new(metrics: Metrics, stage: &str) -> Self {
        Self {
            metrics,
            stage: stage.to_owned(),
            events: Mutex::default(),
            latency: Mutex::default(),
            published: Mutex::default(),
        }
    }

    /// Counts one event of `event_type` finished with `outcome`.
    pub fn count(&self, event_type: &'static str, outcome: &'static str) {
        let mut cache = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry((event_type, outcome))
            .or_insert_with(|| {
                self.metrics
                    .events
                    .get_or_create(&EventLabels {
                        stage: self.stage.clone(),
                        event_type: event_type.to_owned(),
                        outcome: outcome.to_owned(),
                    })
                    .clone()
            })
            .inc();
    }

    /// Counts one handler failure on an event of `event_type`, by `kind` and specific `reason`
    /// (rare, so the label set is built each time).
    pub fn failed(&self, event_type: &str, kind: &str, reason: &str) {
        self.metrics
            .failures
            .get_or_create(&FailureLabels {
                stage: self.stage.clone(),
                event_type: event_type.to_owned(),
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records how long a handler took on an event of `event_type`.
    pub fn observe(&self, event_type: &'static str, seconds: f64) {
        let mut cache = self.latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry(event_type)
            .or_insert_with(|| {
                self.metrics
                    .handler_seconds
                    .get_or_create(&StageLabels {
                        stage: self.stage.clone(),
                        event_type: event_type.to_owned(),
                    })
                    .clone()
            })
            .observe(seconds);
    }

    /// Counts one published event of `event_type`.
    pub fn published(&self, event_type: &'static str) {
        let mut cache = self.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry(event_type)
            .or_insert_with(|| {
                self.metrics
                    .published
                    .get_or_create(&PublishLabels {
                        event_type: event_type.to_owned(),
                    })
                    .clone()
            })
            .inc();
    }
}
