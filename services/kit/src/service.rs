//! What every service does at start, while serving and at shutdown, in one place.
//!
//! A service is a [`Service`]: a type built from its settings (validate, connect, bind) and then
//! run until a shutdown token is cancelled. Its binary is [`main`] behind the
//! [`service_main!`](crate::service_main) macro, so every `main.rs` is the same three lines, and
//! `baton up` starts any list of services through the same trait. Inside `build`, a service uses
//! [`Runtime::start`] (connect to NATS, check the provisioned topology, set up metrics) and
//! [`Runtime::stage`] (its stage runner, its durable consumer checked), then binds: a stage
//! service as a [`StageService`], a service with routes of its own as an [`HttpService`], whose
//! [`serve`](HttpService::serve) runs the router beside whatever work the service does, with one
//! shutdown for both, then a NATS drain.
//!
//! A new stage service is a handler, a `Service` impl and a three-line `main.rs`:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//!
//! use baton_kit::service::{self, Env, Runtime, Service, StageService, StartError};
//! use baton_kit::settings::Settings;
//! use baton_kit::{Handler, HandlerError, Incoming, Outgoing};
//! use baton_schemas::EventType;
//! use tokio_util::sync::CancellationToken;
//!
//! /// Counts the artifacts it sees; emits nothing.
//! #[derive(Debug)]
//! struct Auditor;
//!
//! impl Handler for Auditor {
//!     async fn handle(&self, event: Arc<Incoming>) -> Result<Vec<Outgoing>, HandlerError> {
//!         tracing::info!(event.id = %event.id(), "artifact seen");
//!         Ok(Vec::new())
//!     }
//! }
//!
//! #[derive(Debug)]
//! pub struct Application(StageService<Auditor>);
//!
//! impl Service for Application {
//!     const NAME: &'static str = "baton-auditor";
//!     type Config = serde_json::Map<String, serde_json::Value>;
//!
//!     async fn build(settings: Settings<Self::Config>, _env: Env<'_>) -> Result<Self, StartError> {
//!         let runtime = Runtime::start(Self::NAME, &settings.common).await?;
//!         let runner = runtime.stage("auditor", [EventType::ArtifactPublished], Auditor).await?;
//!         Ok(Self(StageService::bind(runtime, runner, None).await?))
//!     }
//!
//!     fn local_addr(&self) -> SocketAddr {
//!         self.0.local_addr()
//!     }
//!
//!     async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
//!         self.0.run_until_stopped(shutdown).await
//!     }
//! }
//!
//! // main.rs:
//! // baton_kit::service_main!(baton_auditor::Application);
//! # fn main() { let _ = service::short_name::<Application>(); }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use async_nats::Client;
use axum::Router;
use baton_schemas::EventType;
use baton_schemas::config::{CommonSettings, RunnerSettings};
use clap::Parser;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::fabric::{self, FabricError, Topology};
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::runner::{Handler, RunnerError, Stage, StageRunner};
use crate::settings::{self, ConfigError, EXIT_INVALID_CONFIG, ServiceArgs, Settings};
use crate::{provision, shutdown, telemetry, tls};

/// How a service reads its secrets and other environment values: `std::env::var` in `main`, a
/// map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A Baton service: built from its settings, then run until shut down. `main` and `baton up`
/// know a service only through this trait; tests call the same two steps, bound to port 0.
pub trait Service: Sized + Send + 'static {
    /// The binary's name, e.g. `baton-builder`: the NATS connection name, OTel `service.name`,
    /// and the prefix of its error messages. `baton up` reads its config from the name without
    /// `baton-` (`builder.yaml`).
    const NAME: &'static str;

    /// The service's own config sections (beside the common ones).
    type Config: DeserializeOwned + Serialize + Default + Send + 'static;

    /// Validates the config (secrets included), connects, checks the provisioned topology and
    /// binds `http.listen`.
    ///
    /// # Errors
    /// [`StartError::Config`] before anything is bound; the others when NATS, the topology, the
    /// port or another dependency fails.
    fn build(settings: Settings<Self::Config>, env: Env<'_>) -> impl Future<Output = Result<Self, StartError>>;

    /// The bound address of its HTTP endpoint (useful when `http.listen` has port 0).
    fn local_addr(&self) -> SocketAddr;

    /// Serves and works until `shutdown` is cancelled, finishing or handing back in-flight work
    /// within the grace period, then drains the NATS connection.
    ///
    /// # Errors
    /// When serving or the service's work fails.
    fn run_until_stopped(self, shutdown: CancellationToken) -> impl Future<Output = Result<(), StartError>> + Send;
}

/// A service built and running in a task of its own.
#[derive(Debug)]
pub struct Running {
    /// Where its HTTP endpoint listens (webhooks, chat commands, health and metrics).
    pub addr: SocketAddr,
    /// Its `run_until_stopped`: ends once the `stop` token given to [`spawn`] is cancelled.
    pub task: tokio::task::JoinHandle<Result<(), StartError>>,
}

/// Builds service `S` and runs it in a task of its own until `stop` is cancelled: what a process
/// holding several services (the demo, the tests) does for each. The build runs in a box and the
/// service moves straight into its task, so a caller starting many services keeps none of them
/// (nor their start-up futures) in its own stack frame.
///
/// # Errors
/// As [`Service::build`].
pub async fn spawn<S: Service>(
    settings: Settings<S::Config>,
    env: Env<'_>,
    stop: &CancellationToken,
) -> Result<Running, StartError> {
    let service = Box::pin(S::build(settings, env)).await?;
    let addr = service.local_addr();
    let task = tokio::spawn(service.run_until_stopped(stop.clone()));
    Ok(Running { addr, task })
}

/// The name `baton up` reads a service's config file by: its binary name without `baton-`.
pub fn short_name<S: Service>() -> &'static str {
    S::NAME.strip_prefix("baton-").unwrap_or(S::NAME)
}

/// Why a service could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration: `main` exits with code 64.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS unreachable, or the topology missing or provisioned otherwise than the service needs.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// The stage runner could not create its consumer or keep consuming.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `http.listen`.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory the service keeps files in could not be created.
    #[error("cannot create the directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while serving.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// Something else the service needs failed; `doing` says what it was doing.
    #[error("{doing}: {source}")]
    Failed {
        /// What the service was doing, e.g. "cannot build the Kubernetes client".
        doing: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
}

impl StartError {
    /// `doing` failed because of `source`.
    pub fn failed(doing: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Failed {
            doing,
            source: source.into(),
        }
    }
}

/// A started service's connection to the fabric, and the common settings its pieces share.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The service's name, e.g. `baton-listener`; the NATS connection name and `service.name`.
    pub service: String,
    /// The NATS connection.
    pub client: Client,
    /// The provisioned streams, buckets and object store.
    pub topology: Topology,
    /// The service's metrics.
    pub metrics: Metrics,
    /// How its stage runners consume.
    runner: RunnerSettings,
    /// How long in-flight work may finish after a shutdown signal.
    grace: Duration,
    /// `http.listen`.
    listen: SocketAddr,
    /// What `/readyz` repeats after its verdict (e.g. steps running unsandboxed).
    readiness_warnings: Vec<String>,
}

impl Runtime {
    /// Connects (retrying up to `nats.connect_timeout`) and binds to the provisioned topology
    /// ([`provision::check`]: one `INFO` per stream and bucket; a service never creates them).
    ///
    /// # Errors
    /// When NATS cannot be reached, or the topology is not provisioned (the error names what is
    /// missing and how to provision it).
    pub async fn start(service: &str, settings: &CommonSettings) -> Result<Self, FabricError> {
        let client = fabric::connect(&settings.nats, service).await?;
        let topology = provision::check(&client, &settings.jetstream).await?;
        tracing::info!(nats = %settings.nats.url, stream = %settings.jetstream.events_stream, "connected, topology provisioned");
        Ok(Self {
            service: service.to_owned(),
            client,
            topology,
            metrics: Metrics::new(),
            runner: settings.runner.clone(),
            grace: settings.shutdown.grace_period,
            listen: settings.http.listen,
            readiness_warnings: Vec::new(),
        })
    }

    /// Adds a warning `/readyz` repeats after its verdict for as long as the service runs: what
    /// it runs without that an operator must know about.
    pub fn warn_in_readiness(&mut self, warning: impl Into<String>) {
        self.readiness_warnings.push(warning.into());
    }

    /// The stage runner of `stage`, once its provisioned durable consumer is found to filter
    /// exactly `handles` ([`provision::check_consumer`]).
    ///
    /// # Errors
    /// When the consumer is missing or provisioned otherwise (naming what differs and how to
    /// provision it), or cannot be read.
    pub async fn stage<H: Handler>(
        &self,
        stage: &str,
        handles: impl IntoIterator<Item = EventType>,
        handler: H,
    ) -> Result<StageRunner<H>, StartError> {
        let runner = StageRunner::new(
            Stage::new(stage, handles),
            handler,
            self.topology.clone(),
            self.runner.clone(),
            self.metrics.clone(),
        )
        .with_grace_period(self.grace);
        runner.check_consumer().await?;
        Ok(runner)
    }

    /// How long in-flight work may finish after a shutdown signal (`shutdown.grace_period`).
    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// What the operations endpoint needs.
    pub fn health_state(&self) -> HealthState {
        HealthState {
            client: self.client.clone(),
            events_stream: self.topology.settings.events_stream.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The operations endpoint (`/healthz`, `/readyz`, `/metrics`); merge a service's own
    /// routes into it.
    pub fn router(&self) -> Router {
        health::router_with_warnings(self.health_state(), self.readiness_warnings.clone())
    }

    /// Flushes and drains the NATS connection: the last step of a graceful shutdown.
    pub async fn drain(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "draining the NATS connection failed");
        }
    }
}

/// A built HTTP service, connected and bound, not yet serving: its runtime, its listener on
/// `http.listen` and the router it will serve there (the operations endpoint and the service's
/// own routes), and the temporary cache it must keep until it stops. A service's `Application`
/// holds one beside what is its own (the listener's pollers, the chat-ops bot's stage runner,
/// the web's shared view), forwards [`Service::local_addr`] to it and runs its work beside the
/// server with [`HttpService::serve`]. A [`StageService`] is one whose work is a stage runner.
#[derive(Debug)]
pub struct HttpService {
    runtime: Runtime,
    listener: TcpListener,
    // Bound in `build`, so a test binding port 0 knows the port before the service runs.
    addr: SocketAddr,
    router: Router,
    // Removed when the service stops.
    _cache: Option<tempfile::TempDir>,
}

impl HttpService {
    /// Binds `http.listen` (port 0 picks a free port) to serve `router` for the service made of
    /// `runtime`, keeping `cache` until it stops.
    ///
    /// # Errors
    /// [`StartError::Bind`] naming the address.
    pub async fn bind(runtime: Runtime, router: Router, cache: Option<tempfile::TempDir>) -> Result<Self, StartError> {
        let listen = runtime.listen;
        let bind_error = |source| StartError::Bind { addr: listen, source };
        let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            runtime,
            listener,
            addr,
            router,
            _cache: cache,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service's connection to the fabric, for the work that runs beside the server.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Serves the router and runs `work` (a stage runner, pollers, …) beside it until
    /// `shutdown` is cancelled. `work` gets the token and must stop when it is cancelled; when
    /// `work` ends on its own (or fails), the server is stopped too. In-flight requests finish,
    /// then the NATS connection is drained.
    ///
    /// # Errors
    /// The first of `work`'s error and the server's.
    pub async fn serve<W, F>(self, work: W, shutdown: CancellationToken) -> Result<(), StartError>
    where
        W: FnOnce(CancellationToken) -> F,
        F: Future<Output = Result<(), StartError>> + Send,
    {
        let stop = shutdown.clone();
        let server =
            axum::serve(self.listener, self.router).with_graceful_shutdown(async move { stop.cancelled().await });
        let server = tokio::spawn(async move { server.await });
        let worked = work(shutdown.clone()).await;
        shutdown.cancel();
        let served = match server.await {
            Ok(served) => served.map_err(StartError::Serve),
            Err(e) => Err(StartError::Serve(std::io::Error::other(e))),
        };
        self.runtime.drain().await;
        tracing::info!(service = %self.runtime.service, "stopped");
        worked.and(served)
    }
}

/// A built stage service (the builder, the tester, the deployer, the promoter): an
/// [`HttpService`] serving the operations endpoint, with its stage runner as the work beside it.
/// Such a service's `Application` wraps one and forwards [`Service::local_addr`] and
/// [`Service::run_until_stopped`] to it.
#[derive(Debug)]
pub struct StageService<H> {
    service: HttpService,
    runner: StageRunner<H>,
}

impl<H: Handler> StageService<H> {
    /// Binds `http.listen` for the service made of `runtime` and `runner`, keeping `cache`.
    ///
    /// # Errors
    /// [`StartError::Bind`].
    pub async fn bind(
        runtime: Runtime,
        runner: StageRunner<H>,
        cache: Option<tempfile::TempDir>,
    ) -> Result<Self, StartError> {
        let router = runtime.router();
        let service = HttpService::bind(runtime, router, cache).await?;
        Ok(Self { service, runner })
    }

    /// The bound address of the operations endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Consumes until `shutdown` is cancelled, finishing or handing back in-flight events within
    /// the grace period, then drains the NATS connection.
    ///
    /// # Errors
    /// When the runner cannot consume or the endpoint fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        tracing::info!(addr = %self.service.addr, "{} ready", self.service.runtime.service);
        let runner = self.runner;
        self.service.serve(|stop| run_stage(Some(runner), stop), shutdown).await
    }
}

/// Runs `runner`, if there is one, until `shutdown` is cancelled (with none, just waits for it).
///
/// # Errors
/// When the runner cannot consume.
pub async fn run_stage<H: Handler>(
    runner: Option<StageRunner<H>>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    match runner {
        Some(runner) => Ok(runner.run(shutdown.cancelled_owned()).await?),
        None => {
            shutdown.cancelled().await;
            Ok(())
        }
    }
}

/// The directory a service caches into: `configured` (created if missing), or else a fresh
/// temporary directory named after `service`, returned too so it is removed when dropped.
///
/// # Errors
/// [`StartError::Directory`] naming the directory.
pub fn cache_dir(configured: Option<&Path>, service: &str) -> Result<(PathBuf, Option<tempfile::TempDir>), StartError> {
    match configured {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| StartError::Directory {
                path: dir.to_owned(),
                source,
            })?;
            Ok((dir.to_owned(), None))
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{service}-"))
                .tempdir()
                .map_err(|source| StartError::Directory {
                    path: std::env::temp_dir(),
                    source,
                })?;
            Ok((dir.path().to_owned(), Some(dir)))
        }
    }
}

/// For `main`: reports a configuration error the operator must fix and exits with code 64.
pub fn exit_invalid_config(service: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!("{error}");
    report(service, &error.to_string());
    std::process::exit(EXIT_INVALID_CONFIG)
}

#[allow(clippy::print_stderr, reason = "the operator must see why the service stopped")]
fn report(service: &str, message: &str) {
    eprintln!("{service}: {message}");
}

/// An error and each of its causes that its message does not already say, joined by `: `.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = e.source();
    }
    message
}

/// The whole life of a service binary: parse `--config`, load the settings (exit 64 naming the
/// field when they are invalid), start telemetry, build the service and run it until SIGTERM or
/// SIGINT. Any other failure is reported with its causes and exits 1.
pub fn main<S: Service>() -> ExitCode {
    tls::install_crypto_provider();
    let args = ServiceArgs::parse();
    let settings = settings::load_or_exit::<S::Config>(S::NAME, &args);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            report(S::NAME, &format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(S::NAME, &settings.common.telemetry) {
            Ok(guard) => guard,
            Err(e) => {
                report(S::NAME, &chain(&e));
                return ExitCode::FAILURE;
            }
        };
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
        let env = |name: &str| std::env::var(name).ok();
        let service = match S::build(settings, &env).await {
            Ok(service) => service,
            Err(StartError::Config(e)) => exit_invalid_config(S::NAME, &e),
            Err(e) => {
                tracing::error!(error = %chain(&e), "cannot start");
                report(S::NAME, &chain(&e));
                return ExitCode::FAILURE;
            }
        };
        match service.run_until_stopped(shutdown::on_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %chain(&e), "stopped with an error");
                report(S::NAME, &chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}

/// A service binary's whole `main.rs` body: mimalloc as the global allocator (the event path
/// allocates many small JSON values, which it serves faster than glibc) and
/// `fn main() { baton_kit::service::main::<$service>() }`.
#[macro_export]
macro_rules! service_main {
    ($service:ty) => {
        #[global_allocator]
        static ALLOCATOR: $crate::service::MiMalloc = $crate::service::MiMalloc;

        fn main() -> ::std::process::ExitCode {
            $crate::service::main::<$service>()
        }
    };
}

#[doc(hidden)]
pub use mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn the_chain_names_each_cause_once() {
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(chain(&e), "outer: refused");
        let e = Wrapper(std::io::Error::other("refused"));
        assert_eq!(chain(&e), "wrapper: refused");
        let e = StartError::failed("cannot build the client", Wrapper(std::io::Error::other("bad pem")));
        assert_eq!(chain(&e), "cannot build the client: wrapper: bad pem");
    }
}
