//! Logs and traces: `tracing` with `RUST_LOG`, OpenTelemetry spans (exported over OTLP/gRPC when
//! an endpoint is configured: `telemetry.otlp_endpoint`, else the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), and the W3C trace
//! context carried in every event's `traceparent` and `tracestate` extensions, so one release
//! reads as one trace across services.
//!
//! The spans follow OpenTelemetry's semantic conventions where they exist: messaging spans for
//! NATS ([`messaging_span`]), HTTP server spans for the webhooks and Slack requests
//! ([`http_server_spans`]); Baton's own attributes are named in [`attr`]. A stage that acts later
//! on a release (a timer, an approval, an operator's command) stores the release's
//! [`traceparent`] and continues it with [`continue_trace`]. docs/telemetry.md lists every span.

use std::collections::HashMap;

use baton_schemas::CdEvent;
use baton_schemas::config::{LogFormat, TelemetrySettings};
use cloudevents::Event;
use cloudevents::event::ExtensionValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
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

/// Keeps the tracer provider alive; dropping it flushes pending spans (blocking the thread until
/// they are exported: in async code prefer [`TelemetryGuard::shutdown`]).
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Flushes pending spans and shuts the provider down on a blocking thread. The OTLP/gRPC
    /// exporter's connection is driven by the async runtime, so a flush that blocked the
    /// runtime's only thread (a current-thread runtime, as the CLI's) would wait for it forever.
    pub async fn shutdown(self) {
        if let Err(e) = tokio::task::spawn_blocking(move || drop(self)).await {
            tracing::debug!(error = %e, "tracer provider shutdown");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "tracer provider shutdown");
        }
    }
}

/// Baton's span attributes beside the semantic conventions' own.
pub mod attr {
    /// The release id (the events' `chainId`).
    pub const RELEASE_ID: &str = "baton.release.id";
    /// The application, as the git host names it (or its subject token).
    pub const APP: &str = "baton.app";
    /// The environment a promotion, approval or rollout is about.
    pub const ENVIRONMENT: &str = "baton.environment";
    /// The release's commit (OpenTelemetry's VCS convention).
    pub const COMMIT: &str = "vcs.ref.head.revision";
    /// The Baton service a span is in (`listener`, `builder`, …): under `baton up` every span's
    /// `service.name` is the same.
    pub const SERVICE: &str = "baton.service";
}

/// The standard variables naming the OTLP endpoint, the traces-only one first.
const OTLP_ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// Where spans are exported: `telemetry.otlp_endpoint` (which `BATON_TELEMETRY__OTLP_ENDPOINT`
/// overrides), else the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` as `env` reads them; `None` (nothing exported) when none is set
/// or each is empty.
pub fn otlp_endpoint(settings: &TelemetrySettings, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    settings
        .otlp_endpoint
        .clone()
        .into_iter()
        .chain(OTLP_ENDPOINT_VARS.iter().filter_map(|name| env(name)))
        .map(|e| e.trim().to_owned())
        .find(|e| !e.is_empty())
}

/// Builds the tracer provider: always present, so trace ids exist and are carried from event
/// to event; spans are exported only to `endpoint` (see [`otlp_endpoint`]), never without one.
///
/// # Errors
/// When the OTLP exporter cannot be built.
pub fn tracer_provider(service: &str, endpoint: Option<&str>) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), text or JSON lines on
/// stderr, and the OpenTelemetry layer exporting to [`otlp_endpoint`] (read from the process
/// environment). `service` becomes the OTel `service.name`.
///
/// # Errors
/// When the exporter cannot be built or a subscriber is already installed.
pub fn init(service: &str, settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    init_with_filter(service, settings, "info")
}

/// [`init`] logging what `default_filter` lets through when `RUST_LOG` is unset (the demo,
/// which narrates on the terminal, logs only warnings by default). Spans at `info` and above are
/// recorded whatever the logs show.
///
/// # Errors
/// As [`init`].
pub fn init_with_filter(
    service: &str,
    settings: &TelemetrySettings,
    default_filter: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let endpoint = otlp_endpoint(settings, &|name| std::env::var(name).ok());
    let provider = tracer_provider(service, endpoint.as_deref())?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Spans are recorded at `info` and above whatever the logs show, so the trace context is
    // carried (and exported) even when `RUST_LOG` asks for warnings only.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.to_owned()))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
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

/// The current span's W3C `traceparent`, to store with work done later for the same release
/// (a scheduled promotion, an approval request); `None` without a span.
pub fn traceparent() -> Option<String> {
    current_trace_headers()
        .into_iter()
        .find_map(|(key, value)| (key == "traceparent").then_some(value))
}

/// The span context a stored `traceparent` names (`None` when it is not a valid one).
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Makes `span` continue the trace a stored `traceparent` names (as a child of that span), when
/// there is one and someone records spans. Returns whether it does: call it before `span` is
/// first entered, as a started span's parent cannot change.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) -> bool {
    let Some(parent) = traceparent.and_then(span_context) else {
        return false;
    };
    if span.is_disabled() {
        return false;
    }
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent))
        .is_ok()
}

/// Links `span` to the span a `traceparent` names (e.g. an operator's command, which has its own
/// trace, linked from the release's trace it acts on).
pub fn link(span: &tracing::Span, traceparent: &str) {
    if let Some(other) = span_context(traceparent) {
        span.add_link(other);
    }
}

/// Sets an attribute on the current span (e.g. [`attr::ENVIRONMENT`] once a handler knows it).
pub fn annotate(key: &'static str, value: impl Into<String>) {
    tracing::Span::current().set_attribute(key, value.into());
}

/// Which side of NATS a [`messaging_span`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Messaging {
    /// Publishing a message: `send <subject>`, kind producer.
    Send,
    /// Handling a received message: `process <subject>`, kind consumer.
    Process,
}

/// What a [`messaging_span`] is about.
#[derive(Debug, Clone, Copy, Default)]
pub struct Message<'a> {
    /// The NATS subject (`messaging.destination.name`).
    pub subject: &'a str,
    /// The message id (`messaging.message.id`): the event id, or none for a command.
    pub id: Option<&'a str>,
    /// The release (`baton.release.id`), when the message belongs to one.
    pub release: Option<&'a str>,
    /// The application (`baton.app`), when known.
    pub app: Option<&'a str>,
    /// The environment (`baton.environment`) a promotion, approval, rollout or command is about.
    pub environment: Option<&'a str>,
    /// The release's commit (`vcs.ref.head.revision`), when the message names it.
    pub commit: Option<&'a str>,
    /// The consumer group handling it (`messaging.consumer.group.name`): the stage's durable
    /// consumer or a command's queue group.
    pub group: Option<&'a str>,
    /// The Baton service sending or handling it (`baton.service`, e.g. `builder`), which tells
    /// the stages apart where one process runs them all (`baton up`, the demo).
    pub service: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// A message carrying `event` on `subject`: its id, its release (the `chainId`), and the app,
    /// environment and commit its `customData` names (see [`release_attributes`]).
    pub fn event(subject: &'a str, event: &'a CdEvent) -> Self {
        let facts = release_attributes(event);
        Self {
            subject,
            id: Some(&event.context.id),
            release: event.context.chain_id.as_deref(),
            app: facts.app,
            environment: facts.environment,
            commit: facts.commit,
            group: None,
            service: None,
        }
    }
}

/// What an event's `customData` says about the release it belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleaseAttributes<'a> {
    /// Its `app`.
    pub app: Option<&'a str>,
    /// Its `environment` (promotions, approvals, rollouts).
    pub environment: Option<&'a str>,
    /// Its `commit`, its release's (`release.commit`), or a push's new head (`after`).
    pub commit: Option<&'a str>,
}

/// Reads the app, environment and commit from an event's `customData`, where it names them
/// (every Baton payload names its app; the commit is top-level in the builder's and tester's,
/// inside the release in a promotion or approval, the new head in a push).
pub fn release_attributes(event: &CdEvent) -> ReleaseAttributes<'_> {
    let Some(data) = event.custom_data.as_ref() else {
        return ReleaseAttributes::default();
    };
    fn text(value: Option<&serde_json::Value>) -> Option<&str> {
        value.and_then(serde_json::Value::as_str).filter(|v| !v.is_empty())
    }
    ReleaseAttributes {
        app: text(data.get("app")),
        environment: text(data.get("environment")),
        commit: text(data.get("commit"))
            .or_else(|| text(data.get("release").and_then(|r| r.get("commit"))))
            .or_else(|| text(data.get("after"))),
    }
}

/// The Baton service that emitted an event, from its source (`/baton/<service>`).
pub fn service_of(event: &CdEvent) -> Option<&str> {
    event
        .context
        .source
        .strip_prefix("/baton/")
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

/// A messaging span for NATS (OpenTelemetry's messaging conventions): `send <subject>` of kind
/// producer around a publish, `process <subject>` of kind consumer around handling a message,
/// with `messaging.system=nats`, `messaging.operation.type` and `messaging.destination.name`,
/// and the release's attributes the message names.
pub fn messaging_span(operation: Messaging, message: &Message<'_>) -> tracing::Span {
    let (op, kind) = match operation {
        Messaging::Send => ("send", "producer"),
        Messaging::Process => ("process", "consumer"),
    };
    let empty = tracing::field::Empty;
    let span = tracing::info_span!(
        "messaging",
        otel.name = %format_args!("{op} {}", message.subject),
        otel.kind = kind,
        messaging.system = "nats",
        messaging.operation.type = op,
        messaging.destination.name = message.subject,
        messaging.message.id = empty,
        messaging.consumer.group.name = empty,
        baton.service = empty,
        baton.release.id = empty,
        baton.app = empty,
        baton.environment = empty,
        vcs.ref.head.revision = empty,
    );
    for (field, value) in [
        ("messaging.message.id", message.id),
        ("messaging.consumer.group.name", message.group),
        (attr::SERVICE, message.service),
        (attr::RELEASE_ID, message.release),
        (attr::APP, message.app),
        (attr::ENVIRONMENT, message.environment),
        (attr::COMMIT, message.commit),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            span.record(field, value);
        }
    }
    span
}

/// Wraps every request of a router in an HTTP server span (OpenTelemetry's HTTP conventions):
/// `<METHOD> <route>`, kind server, with `http.request.method`, `http.route`, `url.path` and
/// `http.response.status_code`, and the service answering as `baton.service`; a 5xx marks the
/// span as an error. Such a request starts a trace of its own: Baton trusts no trace context from
/// outside. Put it on the public routes with
/// `route_layer(axum::middleware::from_fn_with_state("<service>", http_server_spans))`.
pub async fn http_server_spans(
    axum::extract::State(service): axum::extract::State<&'static str>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| request.uri().path().to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        baton.service = service,
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_otlp_endpoint_sets_up_export() {
        let provider = tracer_provider("baton-test", Some("http://127.0.0.1:4317")).unwrap();
        provider.shutdown().unwrap();
    }

    #[test]
    fn the_endpoint_is_configured_or_standard_or_none() {
        let configured = TelemetrySettings {
            otlp_endpoint: Some("http://collector:4317".into()),
            ..Default::default()
        };
        let standard = |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://otel:4317".to_owned());
        let traces = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://traces:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://otel:4317".to_owned()),
            _ => None,
        };
        let empty = |_: &str| Some(" ".to_owned());
        let none = |_: &str| None;
        let unset = TelemetrySettings::default();
        assert_eq!(
            otlp_endpoint(&configured, &standard).as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(otlp_endpoint(&unset, &standard).as_deref(), Some("http://otel:4317"));
        assert_eq!(otlp_endpoint(&unset, &traces).as_deref(), Some("http://traces:4317"));
        assert_eq!(otlp_endpoint(&unset, &empty), None);
        assert_eq!(otlp_endpoint(&unset, &none), None);
    }

    #[test]
    fn a_stored_traceparent_is_read_back_and_garbage_is_not() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = span_context(tp).unwrap();
        assert_eq!(cx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span_context("not a traceparent").is_none());
        assert!(!continue_trace(&tracing::Span::none(), Some(tp)));
        assert!(!continue_trace(&tracing::Span::current(), None));
    }

    fn event_with(source: &str, data: Option<serde_json::Value>) -> CdEvent {
        let event = CdEvent::new(
            baton_schemas::EventType::ChangeMerged,
            "evt-1",
            source,
            "subject-1",
            serde_json::json!({}),
        )
        .unwrap()
        .with_chain_id("rel-1");
        match data {
            Some(data) => event.with_custom_data(data).unwrap(),
            None => event,
        }
    }

    #[test]
    fn an_events_release_attributes_come_from_its_chain_id_and_custom_data() {
        let build = event_with(
            "/baton/builder",
            Some(serde_json::json!({"app": "acme/shop", "commit": "c0ffee", "run": "r"})),
        );
        let promotion = event_with(
            "/baton/promoter",
            Some(serde_json::json!({"app": "acme/shop", "environment": "production", "release": {"commit": "beef"}})),
        );
        let rollout = event_with(
            "/baton/deployer",
            Some(serde_json::json!({"app": "acme/shop", "environment": "staging", "release": "rel-1"})),
        );
        let push = event_with(
            "/baton/listener",
            Some(serde_json::json!({"app": "acme/shop", "after": "f00d"})),
        );
        let bare = event_with("elsewhere", None);
        let attributes = |app, environment, commit| ReleaseAttributes {
            app,
            environment,
            commit,
        };
        assert_eq!(
            release_attributes(&build),
            attributes(Some("acme/shop"), None, Some("c0ffee"))
        );
        assert_eq!(
            release_attributes(&promotion),
            attributes(Some("acme/shop"), Some("production"), Some("beef"))
        );
        assert_eq!(
            release_attributes(&rollout),
            attributes(Some("acme/shop"), Some("staging"), None)
        );
        assert_eq!(
            release_attributes(&push),
            attributes(Some("acme/shop"), None, Some("f00d"))
        );
        assert_eq!(release_attributes(&bare), ReleaseAttributes::default());

        let message = Message::event("baton.events.acme_shop.x", &promotion);
        assert_eq!(
            (message.id, message.release, message.environment, message.commit),
            (Some("evt-1"), Some("rel-1"), Some("production"), Some("beef"))
        );
        assert_eq!(service_of(&build), Some("builder"));
        assert_eq!(service_of(&bare), None);
    }

    #[test]
    fn without_a_span_nothing_is_injected() {
        assert!(current_trace_headers().is_empty());
        assert_eq!(traceparent(), None);
        assert_eq!(current_trace_id(), "00000000000000000000000000000000");
    }
}
