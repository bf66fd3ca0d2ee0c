//! The listener as a [`Service`]: `build` validates config, connects and binds; `run_until_stopped`
//! serves webhooks and polls until shutdown, then drains. `main` and the tests use the same two
//! calls (tests bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use baton_kit::service::{self, Env, HttpService, Runtime, Service};
use baton_kit::settings::Settings;
use baton_kit::source::{self as git_source, Sources};
use baton_schemas::config::listener::ListenerSettings;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::poll::Poller;
use crate::webhook::{self, WebhookMetrics, WebhookState};

/// The service name: NATS connection name, OTel `service.name`, log prefix.
pub const SERVICE: &str = "baton-listener";

pub use baton_kit::service::StartError;

/// A built listener, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    /// The webhook endpoint and the operations endpoint, bound; it also owns the default git
    /// cache of polled repositories, so that is removed when the listener stops.
    service: HttpService,
    /// One per polled repository, run beside the server.
    pollers: Vec<Poller>,
}

impl Service for Application {
    const NAME: &'static str = SERVICE;
    type Config = ListenerSettings;

    /// Validates the config (secrets and git credentials included), connects to NATS, checks
    /// the provisioned topology and binds `http.listen`.
    async fn build(settings: Settings<ListenerSettings>, env: Env<'_>) -> Result<Self, StartError> {
        let repositories = config::resolve(&settings.service, env)?;
        let credentials = git_source::resolve_credentials(&settings.service.source.credentials, env)?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let webhook_metrics = WebhookMetrics::default();
        webhook_metrics.register(&runtime.metrics);
        let state = WebhookState {
            repositories: repositories.clone(),
            jetstream: runtime.topology.jetstream.clone(),
            state: runtime.topology.state.clone(),
            settings: Arc::new(settings.service.webhook.clone()),
            metrics: webhook_metrics,
        };
        let router = runtime.router().merge(
            Router::new()
                .route("/webhooks/{provider}", post(webhook::receive))
                // Each request is an HTTP server span; a push starts the release's trace there.
                .route_layer(axum::middleware::from_fn_with_state(
                    "listener",
                    baton_kit::telemetry::http_server_spans,
                ))
                .with_state(state),
        );
        let (pollers, cache) = if repositories.polled().next().is_some() {
            let own = &settings.service;
            let configured = own
                .source
                .cache_dir
                .as_deref()
                .or(own.webhook.poll_cache_dir.as_deref());
            let (cache_dir, cache) = service::cache_dir(configured, SERVICE)?;
            let sources = Sources::new(cache_dir, credentials);
            let pollers = repositories
                .polled()
                .filter_map(|r| {
                    Poller::new(
                        Arc::clone(r),
                        sources.clone(),
                        runtime.topology.jetstream.clone(),
                        runtime.topology.state.clone(),
                    )
                })
                .collect();
            (pollers, cache)
        } else {
            (Vec::new(), None)
        };
        Ok(Self {
            service: HttpService::bind(runtime, router, cache).await?,
            pollers,
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Serves webhooks and polls until `shutdown` is cancelled, lets in-flight requests and
    /// polls finish within the grace period, then drains the NATS connection.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        tracing::info!(addr = %self.local_addr(), pollers = self.pollers.len(), "{SERVICE} ready");
        let (pollers, grace) = (self.pollers, self.service.runtime().grace_period());
        let poll = |stop: CancellationToken| async move {
            let mut tasks = tokio::task::JoinSet::new();
            for poller in pollers {
                tasks.spawn(poller.run(stop.child_token()));
            }
            stop.cancelled().await;
            if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_err()
            {
                tracing::warn!("pollers did not stop within the grace period");
            }
            Ok(())
        };
        self.service.serve(poll, shutdown).await
    }
}
