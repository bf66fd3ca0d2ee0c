//! The listener application: `build` validates config, connects and binds; `run_until_stopped`
//! serves webhooks and polls until shutdown, then drains. `main` and the tests use the same two
//! calls (tests bind port 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use baton_kit::fabric::FabricError;
use baton_kit::health;
use baton_kit::service::Runtime;
use baton_kit::settings::{ConfigError, Settings};
use baton_schemas::config::listener::ListenerSettings;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Repositories};
use crate::poll::Poller;
use crate::webhook::{self, WebhookMetrics, WebhookState};

/// The service name: NATS connection name, OTel `service.name`, log prefix.
pub const SERVICE: &str = "baton-listener";

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration: `main` exits with code 64.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS unreachable or the topology refused.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `http.listen`.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The poll cache directory could not be created.
    #[error("cannot create the poll cache directory {path}: {source}")]
    PollCache {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A built listener, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    router: Router,
    runtime: Runtime,
    pollers: Vec<Poller>,
    grace: std::time::Duration,
    // Owns the default poll cache so it is removed when the listener stops.
    _cache: Option<tempfile::TempDir>,
}

impl Application {
    /// Validates the config (secrets included), connects to NATS, provisions the topology and
    /// binds `http.listen`.
    ///
    /// # Errors
    /// [`StartError::Config`] before anything is bound; the others when NATS or the port fail.
    pub async fn build(
        settings: Settings<ListenerSettings>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StartError> {
        let repositories = config::resolve(&settings.service, env)?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let webhook_metrics = WebhookMetrics::default();
        webhook_metrics.register(&runtime.metrics);
        let state = WebhookState {
            repositories: repositories.clone(),
            jetstream: runtime.topology.jetstream.clone(),
            settings: Arc::new(settings.service.webhook.clone()),
            metrics: webhook_metrics,
        };
        let router = health::router(runtime.health_state()).merge(
            Router::new()
                .route("/webhooks/{provider}", post(webhook::receive))
                .with_state(state),
        );
        let (cache_dir, cache) = poll_cache(&settings.service, &repositories)?;
        let pollers = repositories
            .polled()
            .filter_map(|r| {
                Poller::new(
                    Arc::clone(r),
                    &cache_dir,
                    runtime.topology.jetstream.clone(),
                    runtime.topology.state.clone(),
                )
            })
            .collect();
        let addr = settings.common.http.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(Self {
            addr,
            listener,
            router,
            runtime,
            pollers,
            grace: settings.common.shutdown.grace_period,
            _cache: cache,
        })
    }

    /// The bound address (useful when `http.listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves webhooks and polls until `shutdown` is cancelled, lets in-flight requests finish
    /// within the grace period, then drains the NATS connection.
    ///
    /// # Errors
    /// When the HTTP server fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, pollers = self.pollers.len(), "listener ready");
        let mut tasks = tokio::task::JoinSet::new();
        for poller in self.pollers {
            tasks.spawn(poller.run(shutdown.child_token()));
        }
        let stop = shutdown.clone();
        let server =
            axum::serve(self.listener, self.router).with_graceful_shutdown(async move { stop.cancelled().await });
        let served = server.await;
        if tokio::time::timeout(self.grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("pollers did not stop within the grace period");
        }
        self.runtime.drain().await;
        tracing::info!("listener stopped");
        served
    }
}

fn poll_cache(
    settings: &ListenerSettings,
    repositories: &Repositories,
) -> Result<(PathBuf, Option<tempfile::TempDir>), StartError> {
    if let Some(dir) = &settings.webhook.poll_cache_dir {
        std::fs::create_dir_all(dir).map_err(|source| StartError::PollCache {
            path: dir.clone(),
            source,
        })?;
        return Ok((dir.clone(), None));
    }
    if repositories.polled().next().is_none() {
        return Ok((std::env::temp_dir(), None));
    }
    let dir = tempfile::Builder::new()
        .prefix("baton-listener-poll-")
        .tempdir()
        .map_err(|source| StartError::PollCache {
            path: std::env::temp_dir(),
            source,
        })?;
    Ok((dir.path().to_owned(), Some(dir)))
}
