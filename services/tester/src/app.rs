//! The tester application: `build` validates config and connects; `run_until_stopped` runs the
//! stage and the operations endpoint until shutdown, then drains.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_kit::service::Runtime;
use baton_kit::settings::Settings;
use baton_kit::source::Sources;
use baton_kit::steps::StepRunner;
use baton_kit::{Stage, StageRunner};
use baton_schemas::EventType;
use baton_schemas::config::tester::TesterSettings;
use tokio_util::sync::CancellationToken;

use crate::handler::Tester;
use crate::junit::JunitLimits;

/// The service name: NATS connection name, OTel `service.name`.
pub const SERVICE: &str = "baton-tester";
/// The stage (durable consumer) every tester replica shares.
pub const STAGE: &str = "tester";

pub use baton_kit::service::StartError;

/// A built tester, connected, not yet consuming.
#[derive(Debug)]
pub struct Application {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    runtime: Runtime,
    runner: StageRunner<Tester>,
    // Owns the default cache so it is removed when the tester stops.
    _cache: Option<tempfile::TempDir>,
}

impl Application {
    /// Validates the config, connects, provisions, creates the durable consumer and binds
    /// `http.listen`.
    ///
    /// # Errors
    /// [`StartError::Config`] before anything is bound; the others when NATS or the port fail.
    pub async fn build(
        settings: Settings<TesterSettings>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StartError> {
        let credentials = baton_kit::source::resolve_credentials(&settings.service.source.credentials, env)?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let (cache_dir, cache) = baton_kit::service::cache_dir(settings.service.source.cache_dir.as_deref(), SERVICE)
            .map_err(|e| StartError::Io(format!("cannot create the cache directory: {e}")))?;
        let tester = Tester {
            sources: Sources::new(PathBuf::from(&cache_dir), credentials),
            steps: StepRunner::new(&runtime.topology).with_limits((&settings.service.limits).into()),
            jetstream: runtime.topology.jetstream.clone(),
            junit: JunitLimits {
                max_bytes: settings.service.junit_max_bytes,
                ..JunitLimits::default()
            },
        };
        let runner = StageRunner::new(
            Stage::new(STAGE, [EventType::ArtifactPublished]),
            tester,
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

    /// Consumes until `shutdown` is cancelled, then drains the NATS connection.
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
