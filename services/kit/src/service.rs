//! What every service does at start, in one place: connect to NATS, provision the JetStream
//! topology, and set up metrics. A service's `Application::build` calls [`Runtime::start`].

use async_nats::Client;
use baton_schemas::config::CommonSettings;
use tokio_util::sync::CancellationToken;

use crate::fabric::{self, FabricError, Topology};
use crate::health::{self, HealthState};
use crate::metrics::Metrics;
use crate::runner::{Handler, RunnerError, StageRunner};
use crate::settings::{ConfigError, EXIT_INVALID_CONFIG};

/// A started service's connection to the fabric.
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
}

impl Runtime {
    /// Connects (retrying up to `nats.connect_timeout`) and provisions the topology.
    ///
    /// # Errors
    /// When NATS cannot be reached or refuses the topology.
    pub async fn start(service: &str, settings: &CommonSettings) -> Result<Self, FabricError> {
        let client = fabric::connect(&settings.nats, service).await?;
        let topology = fabric::provision(&client, &settings.jetstream, settings.runner.remember_handled).await?;
        tracing::info!(nats = %settings.nats.url, stream = %settings.jetstream.events_stream, "connected and provisioned");
        Ok(Self {
            service: service.to_owned(),
            client,
            topology,
            metrics: Metrics::new(),
        })
    }

    /// What the operations endpoint needs.
    pub fn health_state(&self) -> HealthState {
        HealthState {
            client: self.client.clone(),
            events_stream: self.topology.settings.events_stream.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Flushes and drains the NATS connection: the last step of a graceful shutdown.
    pub async fn drain(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "draining the NATS connection failed");
        }
    }
}

/// Why a stage service (builder, tester, promoter, …) could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration: `main` exits with code 64.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS unreachable or the topology refused.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// The consumer could not be created.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// The HTTP address could not be bound, a directory created, or a subscription made.
    #[error("{0}")]
    Io(String),
}

/// Binds the operations endpoint (`http.listen`; port 0 picks a free port) and returns the
/// listener with the address it got.
///
/// # Errors
/// [`StartError::Io`] naming the address.
pub async fn bind(addr: std::net::SocketAddr) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
    Ok((listener, addr))
}

/// Why a stage service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StageServiceError {
    /// The stage runner could not consume.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// The operations endpoint failed.
    #[error("the operations endpoint failed: {0}")]
    Http(#[from] std::io::Error),
}

impl Runtime {
    /// Runs a stage service until `shutdown` is cancelled: the operations endpoint on
    /// `listener` and the stage `runner`, which finishes or hands back in-flight events within
    /// its grace period; then drains the NATS connection.
    ///
    /// # Errors
    /// When the runner cannot consume or the endpoint fails.
    pub async fn serve_stage<H: Handler>(
        self,
        listener: tokio::net::TcpListener,
        runner: StageRunner<H>,
        shutdown: CancellationToken,
    ) -> Result<(), StageServiceError> {
        let stop = shutdown.clone();
        let server = axum::serve(listener, health::router(self.health_state()))
            .with_graceful_shutdown(async move { stop.cancelled().await });
        let server = tokio::spawn(async move { server.await });
        let stop = shutdown.clone();
        let consumed = runner.run(async move { stop.cancelled().await }).await;
        shutdown.cancel();
        let served = server.await.map_err(std::io::Error::other);
        self.drain().await;
        tracing::info!(service = %self.service, "stopped");
        consumed?;
        served??;
        Ok(())
    }
}

/// For `main`: reports a configuration error the operator must fix and exits with code 64.
pub fn exit_invalid_config(service: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!("{error}");
    #[allow(
        clippy::print_stderr,
        reason = "the operator must see why the service refuses to start"
    )]
    {
        eprintln!("{service}: {error}");
    }
    std::process::exit(EXIT_INVALID_CONFIG)
}

/// The directory a service caches into: `configured` (created if missing), or else a fresh
/// temporary directory named after `service`, returned too so it is removed when dropped.
///
/// # Errors
/// When the directory cannot be created.
pub fn cache_dir(
    configured: Option<&std::path::Path>,
    service: &str,
) -> std::io::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    match configured {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok((dir.to_owned(), None))
        }
        None => {
            let dir = tempfile::Builder::new().prefix(&format!("{service}-")).tempdir()?;
            Ok((dir.path().to_owned(), Some(dir)))
        }
    }
}
