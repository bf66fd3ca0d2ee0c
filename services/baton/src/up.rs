//! `baton up`: every Baton service in one process, for local use. Each service reads the same
//! config file its own binary would (`<dir>/listener.yaml`, `builder.yaml`, `tester.yaml`,
//! `promoter.yaml`, `deployer.yaml`, `chatops.yaml`, `web.yaml`; a missing file leaves that
//! service out), with `BATON_*` environment overrides, and `--nats` (when given) replaces every
//! file's `nats.url`. Before starting them it provisions what they need, as `baton admin
//! provision --config-dir <dir>` would, connected as the first file's `nats` section says
//! (services only check the topology). SIGINT/SIGTERM stops them all, each draining its work.
//!
//! A service whose file (and environment) sets no `http.listen` listens on a free port of
//! 127.0.0.1 rather than every one on the default 8080; the addresses are printed once all have
//! started. Their logs share stderr, each line prefixed with its service (`logs`). A service
//! that cannot start, or stops with an error, stops the others and fails `baton up` with its
//! name (exit 1).

mod logs;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;

use baton_kit::service::{self, Service, StartError};
use baton_kit::settings;
use baton_schemas::config::LogFormat;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::CliError;

/// What a started service reports when it stops: its name and how it ended.
type Stopped = (&'static str, Result<(), StartError>);

/// A service started by [`start`]: its HTTP address, and the task running it.
type Started = Option<(String, Pin<Box<dyn Future<Output = Stopped> + Send>>)>;

/// Starts one service, if its config file exists, to run until the token is cancelled.
type Starter = for<'a> fn(
    &'a Path,
    Option<&'a str>,
    CancellationToken,
) -> Pin<Box<dyn Future<Output = Result<Started, CliError>> + 'a>>;

/// The services `baton up` knows, in start order.
const SERVICES: [(&str, Starter); 7] = [
    ("listener", |dir, nats, stop| {
        Box::pin(start::<baton_listener::Application>(dir, nats, stop))
    }),
    ("builder", |dir, nats, stop| {
        Box::pin(start::<baton_builder::Application>(dir, nats, stop))
    }),
    ("tester", |dir, nats, stop| {
        Box::pin(start::<baton_tester::Application>(dir, nats, stop))
    }),
    ("promoter", |dir, nats, stop| {
        Box::pin(start::<baton_promoter::Application>(dir, nats, stop))
    }),
    ("deployer", |dir, nats, stop| {
        Box::pin(start::<baton_deployer::Application>(dir, nats, stop))
    }),
    ("chatops", |dir, nats, stop| {
        Box::pin(start::<baton_chatops::Application>(dir, nats, stop))
    }),
    ("web", |dir, nats, stop| {
        Box::pin(start::<baton_web::Application>(dir, nats, stop))
    }),
];

/// Loads `<dir>/<name>.yaml` and builds the service; `None` when the file does not exist.
async fn start<S: Service>(dir: &Path, nats: Option<&str>, stop: CancellationToken) -> Result<Started, CliError> {
    let name = service::short_name::<S>();
    let path = dir.join(format!("{name}.yaml"));
    if !path.exists() {
        return Ok(None);
    }
    let mut settings = settings::load::<S::Config>(Some(&path), std::env::vars())
        .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    if let Some(url) = nats {
        settings.common.nats.url = url.to_owned();
    }
    if !listen_configured(&path, std::env::var_os(LISTEN_ENV).is_some())? {
        settings.common.http.listen = SocketAddr::new(settings.common.http.listen.ip(), 0);
    }
    for warning in &settings.warnings {
        println!("{name}: warning: {warning}");
    }
    let span = tracing::info_span!(target: logs::SERVICE_SPAN_TARGET, "service", name);
    let env = |name: &str| std::env::var(name).ok();
    let app = S::build(settings, &env)
        .instrument(span.clone())
        .await
        .map_err(|e| match e {
            StartError::Config(e) => CliError::Config(format!("{}: {e}", path.display())),
            e => CliError::Service(format!("{name} cannot start: {}", service::chain(&e))),
        })?;
    let line = format!("{name:<9} http://{}", app.local_addr());
    Ok(Some((
        line,
        Box::pin(async move { (name, app.run_until_stopped(stop).instrument(span).await) }),
    )))
}

/// The variable that sets `http.listen` over every file.
const LISTEN_ENV: &str = "BATON_HTTP__LISTEN";

/// Whether the service's file at `path` sets `http.listen`, or the environment does
/// (`in_env`). Otherwise `baton up` picks a free port, as several services in one process
/// cannot all take the default one.
fn listen_configured(path: &Path, in_env: bool) -> Result<bool, CliError> {
    if in_env {
        return Ok(true);
    }
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    let tree: serde_json::Value =
        yaml_serde::from_str(&text).map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    Ok(tree.pointer("/http/listen").is_some_and(|listen| !listen.is_null()))
}

/// What flushes the last spans when `baton up` stops: the kit's telemetry for JSON logs, else
/// up's own prefixed text lines ([`logs`]).
enum Telemetry {
    /// JSON lines, as each service's binary writes them.
    Json(baton_kit::telemetry::TelemetryGuard),
    /// Text lines prefixed with their service.
    Prefixed(logs::LogGuard),
}

impl Telemetry {
    async fn shutdown(self) {
        match self {
            Self::Json(guard) => guard.shutdown().await,
            Self::Prefixed(guard) => guard.shutdown().await,
        }
    }
}

/// Logs and traces for every service of this process (`service.name` `baton-up`), as the first
/// config file's `telemetry` section says: spans go to its `otlp_endpoint`, else to the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, and nowhere without one; text logs are prefixed with their
/// service, JSON logs are the services' own.
fn telemetry(dir: &Path) -> Result<Option<Telemetry>, CliError> {
    let Some(path) = SERVICES
        .iter()
        .map(|(name, _)| dir.join(format!("{name}.yaml")))
        .find(|path| path.exists())
    else {
        return Ok(None);
    };
    let settings = settings::load::<serde_json::Map<String, serde_json::Value>>(Some(&path), std::env::vars())
        .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    let telemetry = &settings.common.telemetry;
    match telemetry.log_format {
        LogFormat::Json => baton_kit::telemetry::init("baton-up", telemetry).map(Telemetry::Json),
        LogFormat::Text => logs::init(telemetry).map(Telemetry::Prefixed),
    }
    .map(Some)
    .map_err(|e| CliError::Service(format!("cannot start telemetry: {}", service::chain(&e))))
}

/// Starts every configured service and runs them until a signal.
///
/// # Errors
/// A service's config is invalid ([`CliError::Config`]) or it cannot start, or a service stops
/// with an error ([`CliError::Service`]).
pub async fn up(dir: &Path, nats: Option<&str>) -> Result<(), CliError> {
    let telemetry = telemetry(dir)?;
    let result = run(dir, nats).await;
    // The last spans are flushed before the process exits.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    result
}

/// [`up`] once telemetry is installed.
async fn run(dir: &Path, nats: Option<&str>) -> Result<(), CliError> {
    if let Some((plan, common)) = crate::admin::plan_from_dir(dir)? {
        let mut settings = common.nats;
        if let Some(url) = nats {
            url.clone_into(&mut settings.url);
        }
        let client = baton_kit::fabric::connect(&settings, "baton-up")
            .await
            .map_err(|e| CliError::Nats(service::chain(&e)))?;
        crate::admin::apply(&client, &plan).await?;
        // Everything it sent was answered; closing it cannot lose anything.
        let _ = client.drain().await;
    }
    let stop = baton_kit::shutdown::on_signal();
    let mut running: JoinSet<Stopped> = JoinSet::new();
    let mut started = Vec::new();
    for (_, starter) in SERVICES {
        match starter(dir, nats, stop.clone()).await {
            Ok(Some((line, run))) => {
                started.push(line);
                running.spawn(run);
            }
            Ok(None) => {}
            Err(e) => {
                // Those already running stop as on a signal, draining their work.
                stop.cancel();
                while running.join_next().await.is_some() {}
                return Err(e);
            }
        }
    }
    if started.is_empty() {
        return Err(CliError::Usage(format!(
            "no service config in {}: write one or more of {} (each as its binary's --config file)",
            dir.display(),
            SERVICES.map(|(name, _)| format!("{name}.yaml")).join(", ")
        )));
    }
    println!("baton up: {} service(s) running; Ctrl-C stops them", started.len());
    for line in &started {
        println!("  {line}");
    }
    let mut first_error = None;
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((name, Err(e))) => {
                stop.cancel();
                first_error.get_or_insert(format!("{name} stopped: {}", service::chain(&e)));
            }
            Ok((name, Ok(()))) => println!("{name} stopped"),
            Err(e) => {
                stop.cancel();
                first_error.get_or_insert(format!("a service task failed: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(CliError::Service(e)),
        None => Ok(()),
    }
}
