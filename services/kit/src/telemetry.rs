//! Logs and traces: `tracing` with `RUST_LOG`, OpenTelemetry spans (exported over OTLP/gRPC when
//! an endpoint is configured), and the W3C trace context carried in every event's `traceparent`
//! and `tracestate` extensions, so one release reads as one trace across services.

use std::collections::HashMap;

use baton_schemas::config::{LogFormat, TelemetrySettings};
use cloudevents::Event;
use cloudevents::event::ExtensionValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (e.g. a malformed endpoint).
    #[error("cannot set up OTLP export to {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was already installed.
    #[error("tracing was already initialised in this process")]
    AlreadyInitialised,
}

/// Keeps the tracer provider alive; dropping it flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "tracer provider shutdown");
        }
    }
}

/// Builds the tracer provider: always present, so trace ids exist and are carried from event
/// to event; spans are exported only when an OTLP endpoint is configured.
///
/// # Errors
/// When the OTLP exporter cannot be built.
pub fn tracer_provider(service: &str, settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), text or JSON lines on
/// stderr, and the OpenTelemetry layer. `service` becomes the OTel `service.name`.
///
/// # Errors
/// When the exporter cannot be built or a subscriber is already installed.
pub fn init(service: &str, settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let provider = tracer_provider(service, settings)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_owned()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(TelemetryGuard { provider })
}

/// Writes the current span's trace context into the event's `traceparent`/`tracestate`
/// extensions. Without a valid span context the event keeps whatever it had.
pub fn inject_trace_context(event: &mut Event) {
    for (key, value) in current_trace_headers() {
        event.set_extension(&key, ExtensionValue::String(value));
    }
}

/// The current span's trace context as `traceparent`/`tracestate` pairs (empty without one).
pub fn current_trace_headers() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|key| {
            carrier
                .remove(key)
                .filter(|v| !v.is_empty())
                .map(|v| (key.to_owned(), v))
        })
        .collect()
}

/// Reads the trace context an event carries (its `traceparent`/`tracestate` extensions).
pub fn extract_trace_context(event: &Event) -> opentelemetry::Context {
    let mut carrier: HashMap<String, String> = HashMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(value) = crate::codec::extension_str(event, key) {
            carrier.insert(key.to_owned(), value.to_owned());
        }
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The trace id of the current span, as 32 hex digits (all zeros when there is none).
pub fn current_trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_otlp_endpoint_sets_up_export() {
        let settings = TelemetrySettings {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            ..Default::default()
        };
        let provider = tracer_provider("baton-test", &settings).unwrap();
        provider.shutdown().unwrap();
    }

    #[test]
    fn without_a_span_nothing_is_injected() {
        assert!(current_trace_headers().is_empty());
        assert_eq!(current_trace_id(), "00000000000000000000000000000000");
    }
}
