//! The tester as a [`Service`]: `build` validates config and connects; `run_until_stopped` runs the
//! stage and the operations endpoint until shutdown, then drains.

use std::net::SocketAddr;

use baton_kit::service::{self, Env, Runtime, Service, StageService};
use baton_kit::settings::Settings;
use baton_kit::source::Sources;
use baton_kit::steps::{StepPolicy, StepRunner, start_executor};
use baton_schemas::EventType;
use baton_schemas::config::tester::TesterSettings;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::evidence::Attester;
use crate::handler::Tester;
use crate::junit::JunitLimits;
use baton_kit::evidence::EvidenceStore;

/// The service name: NATS connection name, OTel `service.name`.
pub const SERVICE: &str = "baton-tester";
/// The stage (durable consumer) every tester replica shares.
pub const STAGE: &str = "tester";

pub use baton_kit::service::StartError;

/// A built tester, connected, not yet consuming.
#[derive(Debug)]
pub struct Application(StageService<Tester>);

impl Service for Application {
    const NAME: &'static str = SERVICE;
    type Config = TesterSettings;

    /// Validates the config (step secrets, the signing key and the registry password included),
    /// connects, checks the provisioned topology and durable consumer, and binds `http.listen`.
    async fn build(settings: Settings<TesterSettings>, env: Env<'_>) -> Result<Self, StartError> {
        let credentials = baton_kit::source::resolve_credentials(&settings.service.source.credentials, env)?;
        let policy = StepPolicy::resolve("tester", &settings.service.steps, &settings.service.limits, env)?;
        let password = config::registry_password(&settings.service, env)?;
        // The sandbox is proven before anything connects: a host that cannot run it refuses to
        // start (exit 64) rather than fail every build.
        let (executor, unsandboxed) = start_executor("tester", &settings.service.steps, env).await?;
        // So is the signing key: a tester that could not attest refuses to start (exit 64, naming
        // `signing.key_file`) rather than hand out verdicts no environment requiring a test attestation accepts.
        let signing_key = config::signing_key(&settings.service)?;
        if signing_key.is_none() {
            tracing::warn!("{}", config::UNATTESTED_WARNING);
        }
        let mut runtime = Runtime::start(SERVICE, &settings.common).await?;
        if let Some(warning) = unsandboxed {
            runtime.warn_in_readiness(warning);
        }
        if signing_key.is_none() {
            runtime.warn_in_readiness(config::UNATTESTED_WARNING);
        }
        let registry = &settings.service.registry;
        let attester = signing_key.map(|key| {
            let store = EvidenceStore::new(&registry.address, registry.insecure, registry.username.clone(), password);
            let attester = Attester::new(key, settings.service.signing.tester_id.clone(), store);
            tracing::info!(key = attester.key_id(), tester = %settings.service.signing.tester_id, "verdicts are attested");
            attester
        });
        let (cache_dir, cache) = service::cache_dir(settings.service.source.cache_dir.as_deref(), SERVICE)?;
        let tester = Tester {
            sources: Sources::new(cache_dir, credentials),
            steps: StepRunner::new(&runtime.topology)
                .with_limits((&settings.service.limits).into())
                .with_executor(executor),
            policy,
            jetstream: runtime.topology.jetstream.clone(),
            junit: JunitLimits {
                max_bytes: settings.service.junit_max_bytes,
                ..JunitLimits::default()
            },
            attester,
        };
        let runner = runtime.stage(STAGE, [EventType::ArtifactPublished], tester).await?;
        Ok(Self(StageService::bind(runtime, runner, cache).await?))
    }

    fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Consumes until `shutdown` is cancelled, finishing or handing back in-flight test runs
    /// within the grace period, then drains the NATS connection.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        self.0.run_until_stopped(shutdown).await
    }
}
