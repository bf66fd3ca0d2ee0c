//! The chat-ops application: `build` validates config, connects and binds; `run_until_stopped`
//! serves the Slack endpoints and runs the posting stage until shutdown, then drains. `main`
//! and the tests use the same two calls (tests bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use baton_kit::service::Runtime;
use baton_kit::settings::Settings;
use baton_kit::{Stage, StageRunner, health};
use baton_schemas::config::chatops::ChatopsSettings;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::inbound::{self, InboundState};
use crate::outbound::{ChatStage, HANDLES};

/// The service name: NATS connection name, OTel `service.name`.
pub const SERVICE: &str = "baton-chatops";
/// The stage (durable consumer) every replica shares.
pub const STAGE: &str = "chatops";

pub use baton_kit::service::StartError;

/// A built bot, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    router: Router,
    runtime: Runtime,
    runner: Option<StageRunner<ChatStage>>,
}

impl Application {
    /// Validates the config (secrets included), connects to NATS, provisions the topology,
    /// creates the durable consumer when an incoming webhook is configured, and binds
    /// `http.listen`.
    ///
    /// # Errors
    /// [`StartError::Config`] before anything is bound; the others when NATS or the port fail.
    pub async fn build(
        settings: Settings<ChatopsSettings>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StartError> {
        let chatops = Arc::new(config::resolve(&settings.service, env)?);
        // reqwest's rustls needs the process's provider (idempotent; `main` installs it too).
        baton_kit::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("baton-chatops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StartError::Io(format!("cannot create the HTTP client: {e}")))?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let runner = match &chatops.incoming_webhook_url {
            Some(url) => {
                let runner = StageRunner::new(
                    Stage::new(STAGE, HANDLES),
                    ChatStage {
                        http: http.clone(),
                        webhook: Arc::new(url.clone()),
                        timeout: chatops.post_timeout,
                    },
                    runtime.topology.clone(),
                    settings.common.runner.clone(),
                    runtime.metrics.clone(),
                )
                .with_grace_period(settings.common.shutdown.grace_period);
                runner.ensure_consumer().await?;
                Some(runner)
            }
            None => {
                tracing::info!("no incoming webhook configured: nothing will be posted to chat");
                None
            }
        };
        let metrics = inbound::ChatMetrics::default();
        metrics.register(&runtime.metrics);
        let state = InboundState {
            config: Arc::clone(&chatops),
            client: runtime.client.clone(),
            state: runtime.topology.state.clone(),
            http,
            metrics,
        };
        let router = health::router(runtime.health_state()).merge(
            Router::new()
                .route("/slack/commands", post(inbound::slash_command))
                .route("/slack/interactions", post(inbound::interaction))
                .with_state(state),
        );
        let (listener, addr) = baton_kit::service::bind(settings.common.http.listen).await?;
        Ok(Self {
            addr,
            listener,
            router,
            runtime,
            runner,
        })
    }

    /// The bound address (useful when `http.listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the endpoints and posts events until `shutdown` is cancelled, then drains.
    ///
    /// # Errors
    /// When the HTTP server or the runner fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        tracing::info!(addr = %self.addr, posting = self.runner.is_some(), "{SERVICE} ready");
        let stop = shutdown.clone();
        let server =
            axum::serve(self.listener, self.router).with_graceful_shutdown(async move { stop.cancelled().await });
        let server = tokio::spawn(async move { server.await });
        let consumed = match self.runner {
            Some(runner) => {
                let stop = shutdown.clone();
                runner.run(async move { stop.cancelled().await }).await
            }
            None => {
                shutdown.cancelled().await;
                Ok(())
            }
        };
        shutdown.cancel();
        let served = server.await;
        self.runtime.drain().await;
        tracing::info!("{SERVICE} stopped");
        consumed?;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StartError::Io(format!("the HTTP server failed: {e}"))),
            Err(e) => Err(StartError::Io(e.to_string())),
        }
    }
}
