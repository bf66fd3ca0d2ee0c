//! The web's own metrics, beside the kit's on `/metrics`: requests it failed, by the reason
//! [`WebError::metric_label`] gives (`bad_parameter`, `not_found`, `unavailable`, `render`). An
//! error's answer carries its label as a response extension ([`Failure`]); one middleware counts
//! every answer that carries one, so no handler counts by hand.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::http::WebError;

/// Labels of the failed-request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// [`WebError::metric_label`].
    pub reason: String,
}

/// The web's own metrics.
#[derive(Debug, Clone, Default)]
pub struct WebMetrics {
    /// Requests answered with an error, by reason.
    pub failed_requests: Family<FailureLabels, Counter>,
}

impl WebMetrics {
    /// Registers the counters in the service's registry.
    pub fn register(&self, metrics: &baton_kit::metrics::Metrics) {
        metrics.with_registry(|r| {
            r.register(
                "web_failed_requests",
                "Web requests answered with an error, by reason (bad_parameter, not_found, unavailable, render)",
                self.failed_requests.clone(),
            );
        });
    }

    /// Counts one failed request.
    pub fn count(&self, reason: &str) {
        self.failed_requests
            .get_or_create(&FailureLabels { reason: reason.into() })
            .inc();
    }
}

/// The label of the error an answer reports, set by the error's `IntoResponse`.
#[derive(Debug, Clone, Copy)]
pub struct Failure(pub &'static str);

impl Failure {
    /// The label of `error`.
    pub fn of(error: &WebError) -> Self {
        Self(error.metric_label())
    }
}

/// Counts every answer that reports a [`Failure`].
pub async fn count_failures(State(metrics): State<WebMetrics>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(Failure(reason)) = response.extensions().get::<Failure>() {
        metrics.count(reason);
    }
    response
}
