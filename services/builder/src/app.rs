//! The builder as a [`Service`]: `build` validates config and connects; `run_until_stopped`
//! runs the stage and the operations endpoint until shutdown, then drains. `main` and the tests
//! use the same two calls.

use std::net::SocketAddr;

use baton_kit::service::{self, Env, Runtime, Service, StageService};
use baton_kit::settings::Settings;
use baton_kit::steps::{StepPolicy, StepRunner, start_executor};
use baton_schemas::EventType;
use baton_schemas::config::builder::BuilderSettings;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::evidence::Attester;
use crate::handler::Builder;
use crate::image::Registry;
use baton_kit::evidence::EvidenceStore;
use baton_kit::source::Sources;

/// The service name: NATS connection name, OTel `service.name`, durable consumer.
pub const SERVICE: &str = "baton-builder";
/// The stage (durable consumer) every builder replica shares.
pub const STAGE: &str = "builder";

pub use baton_kit::service::StartError;

/// A built builder, connected, not yet consuming.
#[derive(Debug)]
pub struct Application(StageService<Builder>);

impl Service for Application {
    const NAME: &'static str = SERVICE;
    type Config = BuilderSettings;

    /// Validates the config (credentials, the signing key and step secrets included), connects,
    /// checks the provisioned topology and durable consumer, and binds `http.listen`.
    async fn build(settings: Settings<BuilderSettings>, env: Env<'_>) -> Result<Self, StartError> {
        let credentials = config::credentials(&settings.service, env)?;
        let password = config::registry_password(&settings.service, env)?;
        let policy = StepPolicy::resolve("builder", &settings.service.steps, &settings.service.limits, env)?;
        // The sandbox is proven before anything connects: a host that cannot run it refuses to
        // start (exit 64) rather than fail every build.
        let (executor, unsandboxed) = start_executor("builder", &settings.service.steps, env).await?;
        // So is the signing key: a builder that could not sign refuses to start (exit 64, naming
        // `signing.key_file`) rather than push images no environment requiring evidence accepts.
        let signing_key = config::signing_key(&settings.service)?;
        if signing_key.is_none() {
            tracing::warn!("{}", config::UNSIGNED_WARNING);
        }
        let mut runtime = Runtime::start(SERVICE, &settings.common).await?;
        if let Some(warning) = unsandboxed {
            runtime.warn_in_readiness(warning);
        }
        if signing_key.is_none() {
            runtime.warn_in_readiness(config::UNSIGNED_WARNING);
        }
        let (cache_dir, cache) = service::cache_dir(settings.service.source.cache_dir.as_deref(), SERVICE)?;
        let registry_settings = &settings.service.registry;
        let attester = signing_key.map(|key| {
            let store = EvidenceStore::new(
                &registry_settings.address,
                registry_settings.insecure,
                registry_settings.username.clone(),
                password.clone(),
            );
            let attester = Attester::new(key, settings.service.signing.builder_id.clone(), store);
            tracing::info!(key = attester.key_id(), builder = %settings.service.signing.builder_id, "images are signed");
            attester
        });
        let registry = Registry::new(
            &registry_settings.address,
            registry_settings.insecure,
            registry_settings.username.clone(),
            password,
        );
        let builder = Builder {
            sources: Sources::new(cache_dir, credentials),
            steps: StepRunner::new(&runtime.topology)
                .with_limits((&settings.service.limits).into())
                .with_executor(executor),
            policy,
            registry,
            attester,
            repository_prefix: settings.service.registry.repository_prefix.clone(),
            jetstream: runtime.topology.jetstream.clone(),
        };
        let runner = runtime.stage(STAGE, [EventType::ChangeMerged], builder).await?;
        Ok(Self(StageService::bind(runtime, runner, cache).await?))
    }

    fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Consumes until `shutdown` is cancelled, finishing or handing back in-flight builds
    /// within the grace period, then drains the NATS connection.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        self.0.run_until_stopped(shutdown).await
    }
}
