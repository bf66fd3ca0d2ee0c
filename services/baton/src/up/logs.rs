//! How `baton up` logs: every service's lines go to stderr, each prefixed with the service it
//! came from, so one terminal reads like several (`listener │ INFO …`), coloured only when stderr
//! is a terminal. Traces are exported as the services' own binaries export them.
//!
//! A line's service is, in order: the service whose start-up or run loop it happened in (up
//! wraps each in a span of target [`SERVICE_SPAN_TARGET`], which traces never see), the
//! `baton.service` of a message or request span around it (the kit's runner and HTTP spans name
//! the stage), or the crate that logged it (`baton_builder::…` is the builder). What is none of
//! those (say, the provisioning before any service starts) is `up`'s own.

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use baton_kit::telemetry::{TelemetryError, otlp_endpoint, tracer_provider};
use baton_schemas::config::TelemetrySettings;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Target of the span `baton up` runs each service in: it names the service for the logs and is
/// kept out of traces (a span lasting the whole run would become every trace's root).
pub(super) const SERVICE_SPAN_TARGET: &str = "baton_up::service";
/// The prefix of lines no service logged.
const OWN_NAME: &str = "up";
/// Width of the prefix column: the longest service name (`listener`, `promoter`, `deployer`).
const NAME_WIDTH: usize = 8;

/// Flushes the exporter's last spans when `baton up` stops.
#[derive(Debug)]
pub(super) struct LogGuard {
    /// The exporter's provider, shut down by [`LogGuard::shutdown`].
    provider: SdkTracerProvider,
}

impl LogGuard {
    /// Exports what is still buffered, off the async runtime (the exporter blocks).
    pub(super) async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Installs `baton up`'s subscriber: `RUST_LOG` (default `info`) over prefixed text lines on
/// stderr, and spans at `info` and above exported as `baton-up` to the collector `settings` or
/// the standard variables name.
///
/// # Errors
/// When the exporter cannot be built or a subscriber is already installed.
pub(super) fn init(settings: &TelemetrySettings) -> Result<LogGuard, TelemetryError> {
    let endpoint = otlp_endpoint(settings, &|name| std::env::var(name).ok());
    let provider = tracer_provider("baton-up", endpoint.as_deref())?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let traced = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target(SERVICE_SPAN_TARGET, LevelFilter::OFF);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("baton-up"))
        .with_filter(traced);
    let logged = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .or(Targets::new().with_target(SERVICE_SPAN_TARGET, LevelFilter::TRACE));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(Prefixed)
        .with_filter(logged);
    tracing_subscriber::registry()
        .with(ServiceTags)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(LogGuard { provider })
}

/// The service a span names, kept in its extensions by [`ServiceTags`].
#[derive(Debug, Clone, Copy)]
struct ServiceTag(&'static str);

/// Records in each span's extensions which service it belongs to: the `name` of up's own
/// service span, or the `baton.service` of a message or request span.
struct ServiceTags;

impl<S> Layer<S> for ServiceTags
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let field = if attrs.metadata().target() == SERVICE_SPAN_TARGET {
            "name"
        } else {
            baton_kit::telemetry::attr::SERVICE
        };
        let mut found = FindService { field, service: None };
        attrs.record(&mut found);
        if let (Some(service), Some(span)) = (found.service, ctx.span(id)) {
            span.extensions_mut().insert(ServiceTag(service));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut found = FindService {
            field: baton_kit::telemetry::attr::SERVICE,
            service: None,
        };
        values.record(&mut found);
        if let (Some(service), Some(span)) = (found.service, ctx.span(id)) {
            span.extensions_mut().replace(ServiceTag(service));
        }
    }
}

/// Reads one field naming a service and resolves it to a known service name.
struct FindService {
    /// The field to read.
    field: &'static str,
    /// The service it names, when it names one `baton up` runs.
    service: Option<&'static str>,
}

impl Visit for FindService {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.field {
            self.service = known_service(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == self.field {
            self.service = known_service(format!("{value:?}").trim_matches('"'));
        }
    }
}

/// `name` (`builder`, `baton-builder` or `baton_builder`) as one of the services `baton up`
/// runs.
fn known_service(name: &str) -> Option<&'static str> {
    let short = name
        .strip_prefix("baton-")
        .or_else(|| name.strip_prefix("baton_"))
        .unwrap_or(name);
    super::SERVICES
        .iter()
        .map(|(service, _)| *service)
        .find(|service| *service == short)
}

/// The service a line belongs to; see the [module documentation](self).
fn service_of<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> &'static str
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let from_spans = ctx.event_scope().and_then(|scope| {
        scope
            .into_iter()
            .find_map(|span| span.extensions().get::<ServiceTag>().map(|tag| tag.0))
    });
    from_spans
        .or_else(|| {
            let target = event.metadata().target();
            known_service(target.split("::").next().unwrap_or(target))
        })
        .unwrap_or(OWN_NAME)
}

/// One line: `<service> │ <time> <LEVEL> <spans>: <target>: <message and fields>`, the spans
/// without up's own service span.
struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        let service = service_of(ctx, event);
        let metadata = event.metadata();
        let time = chrono::Utc::now().format("%H:%M:%S%.3f");
        if ansi {
            write!(
                writer,
                "\x1b[{}m{service:>NAME_WIDTH$}\x1b[0m │ \x1b[2m{time}\x1b[0m ",
                colour(service)
            )?;
        } else {
            write!(writer, "{service:>NAME_WIDTH$} │ {time} ")?;
        }
        let level = metadata.level();
        if ansi {
            write!(writer, "\x1b[{}m{level:>5}\x1b[0m ", level_colour(*level))?;
        } else {
            write!(writer, "{level:>5} ")?;
        }
        if let Some(scope) = ctx.event_scope() {
            let mut spans = String::new();
            for span in scope.from_root() {
                if span.metadata().target() == SERVICE_SPAN_TARGET {
                    continue;
                }
                spans.push_str(span.name());
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    let _ = write!(spans, "{{{fields}}}");
                }
                spans.push(':');
            }
            if !spans.is_empty() {
                write!(writer, "{spans} ")?;
            }
        }
        write!(writer, "{}: ", metadata.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// An ANSI colour per service, so each one's lines are told apart at a glance.
fn colour(service: &str) -> u8 {
    const COLOURS: [u8; 6] = [36, 32, 33, 35, 34, 96];
    let index = super::SERVICES
        .iter()
        .position(|(name, _)| *name == service)
        .unwrap_or(COLOURS.len() - 1);
    COLOURS[index % COLOURS.len()]
}

/// The ANSI colour of a level, as tracing's own text format colours it.
fn level_colour(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 31,
        tracing::Level::WARN => 33,
        tracing::Level::INFO => 32,
        tracing::Level::DEBUG => 34,
        tracing::Level::TRACE => 35,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_known_by_its_short_binary_or_crate_name() {
        assert_eq!(known_service("builder"), Some("builder"));
        assert_eq!(known_service("baton-promoter"), Some("promoter"));
        assert_eq!(known_service("baton_web"), Some("web"));
        assert_eq!(known_service("baton_kit"), None);
        assert_eq!(known_service("async_nats"), None);
    }
}
