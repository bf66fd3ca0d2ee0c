//! The chat-ops bot as a [`Service`]: `build` validates config, connects and binds; `run_until_stopped`
//! serves the Slack endpoints and runs the posting stage until shutdown, then drains. `main`
//! and the tests use the same two calls (tests bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use baton_kit::StageRunner;
use baton_kit::command::CommandClient;
use baton_kit::provision;
use baton_kit::service::{self, Env, HttpService, Runtime, Service};
use baton_kit::settings::Settings;
use baton_kit::source::Sources;
use baton_schemas::config::chatops::ChatopsSettings;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::inbound::{self, InboundState};
use crate::outbound::{ChatStage, HANDLES};
use crate::people::People;

/// The service name: NATS connection name, OTel `service.name`.
pub const SERVICE: &str = "baton-chatops";
/// The stage (durable consumer) every replica shares.
pub const STAGE: &str = provision::CHATOPS.name;

pub use baton_kit::service::StartError;

/// A built bot, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    /// The Slack endpoints and the operations endpoint, bound; it also owns the config repo's
    /// mirror when that is in a temporary directory, so it is removed when the bot stops.
    service: HttpService,
    /// The posting stage, run beside the server; none without an incoming webhook.
    runner: Option<StageRunner<ChatStage>>,
}

impl Service for Application {
    const NAME: &'static str = SERVICE;
    type Config = ChatopsSettings;

    /// Validates the config (secrets and the signing key included), connects to NATS, checks
    /// the provisioned topology (and the durable consumer when an incoming webhook is
    /// configured), and binds `http.listen`. `people.yaml` is read at the first request.
    async fn build(settings: Settings<ChatopsSettings>, env: Env<'_>) -> Result<Self, StartError> {
        let chatops = Arc::new(config::resolve(&settings.service, env)?);
        let signer = config::load_signer(&chatops.signing_key_file)?;
        tracing::info!(key = %signer.fingerprint(), "commands are signed with this key (list it under bots in people.yaml)");
        let (cache_dir, cache) = service::cache_dir(chatops.cache_dir.as_deref(), SERVICE)?;
        let people = People::new(
            Sources::new(cache_dir, chatops.credentials.clone()),
            chatops.people_repository.clone(),
            chatops.people_branch.clone(),
            chatops.people_refresh,
        );
        // reqwest's rustls needs the process's provider (idempotent; `main` installs it too).
        baton_kit::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("baton-chatops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StartError::failed("cannot create the HTTP client", e))?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let runner = match &chatops.incoming_webhook_url {
            Some(url) => {
                let stage = ChatStage {
                    http: http.clone(),
                    webhook: Arc::new(url.clone()),
                    timeout: chatops.post_timeout,
                };
                Some(runtime.stage(STAGE, HANDLES.iter().copied(), stage).await?)
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
            commands: CommandClient::new(runtime.client.clone(), chatops.command_timeout).with_signer(signer),
            people: Arc::new(people),
            state: runtime.topology.state.clone(),
            http,
            metrics,
        };
        let router = runtime.router().merge(
            Router::new()
                .route("/slack/commands", post(inbound::slash_command))
                .route("/slack/interactions", post(inbound::interaction))
                // Each request is an HTTP server span; the commands it sends are linked from the
                // release's trace.
                .route_layer(axum::middleware::from_fn_with_state(
                    "chatops",
                    baton_kit::telemetry::http_server_spans,
                ))
                .with_state(state),
        );
        Ok(Self {
            service: HttpService::bind(runtime, router, cache).await?,
            runner,
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Serves the endpoints and posts events until `shutdown` is cancelled, then drains.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        tracing::info!(addr = %self.local_addr(), posting = self.runner.is_some(), "{SERVICE} ready");
        let runner = self.runner;
        self.service
            .serve(|stop| service::run_stage(runner, stop), shutdown)
            .await
    }
}
