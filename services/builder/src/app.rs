//! The builder application: `build` validates config and connects; `run_until_stopped` runs the
//! stage and the operations endpoint until shutdown, then drains. `main` and the tests use the
//! same two calls.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_kit::service::Runtime;
use baton_kit::settings::Settings;
use baton_kit::steps::StepRunner;
use baton_kit::{Stage, StageRunner};
use baton_schemas::EventType;
use baton_schemas::config::builder::BuilderSettings;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::handler::Builder;
use crate::image::Registry;
use baton_kit::source::Sources;

/// The service name: NATS connection name, OTel `service.name`, durable consumer.
pub const SERVICE: &str = "baton-builder";
/// The stage (durable consumer) every builder replica shares.
pub const STAGE: &str = "builder";

pub use baton_kit::service::StartError;

/// A built builder, connected, not yet consuming.
#[derive(Debug)]
pub struct Application {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    runtime: Runtime,
    runner: StageRunner<Builder>,
    // Owns the default cache so it is removed when the builder stops.
    _cache: Option<tempfile::TempDir>,
}

impl Application {
    /// Validates the config (credentials included), connects, provisions, creates the durable
    /// consumer and binds `http.listen`.
    ///
    /// # Errors
    /// [`StartError::Config`] before anything is bound; the others when NATS or the port fail.
    pub async fn build(
        settings: Settings<BuilderSettings>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StartError> {
        let credentials = config::credentials(&settings.service, env)?;
        let password = config::registry_password(&settings.service, env)?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let (cache_dir, cache) = baton_kit::service::cache_dir(settings.service.source.cache_dir.as_deref(), SERVICE)
            .map_err(|e| StartError::Io(format!("cannot create the cache directory: {e}")))?;
        let registry = Registry::new(
            &settings.service.registry.address,
            settings.service.registry.insecure,
            settings.service.registry.username.clone(),
            password,
        );
        let builder = Builder {
            sources: Sources::new(PathBuf::from(&cache_dir), credentials),
            steps: StepRunner::new(&runtime.topology).with_limits((&settings.service.limits).into()),
            registry,
            repository_prefix: settings.service.registry.repository_prefix.clone(),
            jetstream: runtime.topology.jetstream.clone(),
        };
        let runner = StageRunner::new(
            Stage::new(STAGE, [EventType::ChangeMerged]),
            builder,
            runtime.topology.clone(),
            settings.common.runner.clone(),
            runtime.metrics.clone(),
        )
        .with_grace_period(settings.common.shutdown.grace_period);
        runner.ensure_consumer().await?;
        let (listener, addr) = baton_kit::service::bind(settings.common.http.listen).await?;
        Ok(Self {
            addr,
            listener,
            runtime,
            runner,
            _cache: cache,
        })
    }

    /// The bound address of the operations endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Consumes until `shutdown` is cancelled, finishing or handing back in-flight builds
    /// within the grace period, then drains the NATS connection.
    ///
    /// # Errors
    /// When the operations endpoint or the runner fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        tracing::info!(addr = %self.addr, "{SERVICE} ready");
        self.runtime
            .serve_stage(self.listener, self.runner, shutdown)
            .await
            .map_err(|e| StartError::Io(e.to_string()))
    }
}
