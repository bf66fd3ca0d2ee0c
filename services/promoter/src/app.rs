//! The promoter as a [`Service`]: `build` validates config and connects (or
//! [`Application::build_with_clock`], for a test that moves time); `run_until_stopped` runs the
//! stage, the operator commands, the timers and the operations endpoint until shutdown, then
//! drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use baton_kit::lease::Locks;
use baton_kit::service::{self, Env, Runtime, Service, StageService};
use baton_kit::settings::{ConfigError, Settings};
use baton_kit::source::Sources;
use baton_schemas::config::promoter::PromoterSettings;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::configrepo::ConfigRepo;
use crate::evidence::EvidenceRegistry;
use crate::handler::{HANDLES, PromoterStage};
use crate::manager::ReleaseManager;
use crate::state::State;
use baton_kit::evidence::EvidenceStore;

/// The service name: NATS connection name, OTel `service.name`.
pub const SERVICE: &str = "baton-promoter";
/// The stage (durable consumer) every promoter replica shares.
pub const STAGE: &str = "promoter";

pub use baton_kit::service::StartError;

/// A built promoter, connected, not yet consuming.
#[derive(Debug)]
pub struct Application {
    /// The stage runner and the operations endpoint.
    stage: StageService<PromoterStage>,
    /// Shared by the stage, the commands and the timers.
    promoter: Arc<ReleaseManager>,
    /// The connection the commands are answered on.
    client: async_nats::Client,
    tick: std::time::Duration,
}

impl Application {
    /// As [`Service::build`], with the release manager reading the time from `clock` instead of
    /// the system's: for a test that moves time (a soak, an approval's expiry).
    ///
    /// # Errors
    /// As [`Service::build`].
    pub async fn build_with_clock(
        settings: Settings<PromoterSettings>,
        env: Env<'_>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let own = &settings.service;
        if own.config_repo.url.trim().is_empty() {
            return Err(ConfigError::invalid(
                "config_repo.url",
                "the promoter needs the URL of the config repo it writes environments' desired state to",
            )
            .into());
        }
        if own.config_repo.branch.trim().is_empty() {
            return Err(ConfigError::invalid("config_repo.branch", "name the branch, e.g. main").into());
        }
        if own.tick.is_zero() {
            return Err(ConfigError::invalid("tick", "must be longer than 0s, e.g. 1s").into());
        }
        if own.lock_lease.is_zero() {
            return Err(ConfigError::invalid("lock_lease", "must be longer than 0s, e.g. 30s").into());
        }
        let credentials = baton_kit::source::resolve_credentials(&own.source.credentials, env)?;
        let registry = &own.registry;
        if registry.address.trim().is_empty() {
            return Err(ConfigError::invalid(
                "registry.address",
                "name the registry the images are in (host[:port]): evidence is read from it",
            )
            .into());
        }
        let password = registry
            .password_env
            .as_deref()
            .map(|var| {
                baton_kit::secret::Secret::from_env(var, env)
                    .map_err(|m| ConfigError::invalid("registry.password_env", m))
            })
            .transpose()?;
        let evidence = EvidenceRegistry {
            address: registry.address.clone(),
            store: EvidenceStore::new(
                &registry.address,
                registry.insecure,
                registry.username.clone(),
                password,
            ),
        };
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let (cache_dir, cache) = service::cache_dir(own.source.cache_dir.as_deref(), SERVICE)?;
        let sources = Sources::new(PathBuf::from(&cache_dir), credentials);
        // One working clone per replica process.
        let replica = uuid::Uuid::new_v4().to_string();
        let repo = ConfigRepo::new(
            own.config_repo.url.clone(),
            own.config_repo.branch.clone(),
            PathBuf::from(&cache_dir).join(format!("config-repo-{replica}")),
            (
                own.config_repo.author_name.clone(),
                own.config_repo.author_email.clone(),
            ),
            sources.clone(),
        );
        let locks = Locks::new(
            &runtime.topology,
            format!("{SERVICE}-{replica}"),
            own.lock_lease,
            own.lock_wait,
        );
        let promoter = Arc::new(
            ReleaseManager::new(
                Arc::new(repo),
                sources,
                State::new(runtime.topology.state.clone()),
                locks,
                runtime.topology.jetstream.clone(),
                runtime.topology.handled.clone(),
                own.auto_rollback,
                evidence,
            )
            .with_events_stream(settings.common.jetstream.events_stream.clone())
            .with_clock(clock),
        );
        let stage = PromoterStage {
            promoter: Arc::clone(&promoter),
        };
        let runner = runtime.stage(STAGE, HANDLES, stage).await?;
        let client = runtime.client.clone();
        Ok(Self {
            stage: StageService::bind(runtime, runner, cache).await?,
            promoter,
            client,
            tick: own.tick,
        })
    }
}

impl Service for Application {
    const NAME: &'static str = SERVICE;
    type Config = PromoterSettings;

    /// Validates the config, connects, checks the provisioned topology and durable consumer,
    /// and binds `http.listen`.
    async fn build(settings: Settings<PromoterSettings>, env: Env<'_>) -> Result<Self, StartError> {
        Self::build_with_clock(settings, env, Arc::new(SystemClock)).await
    }

    fn local_addr(&self) -> SocketAddr {
        self.stage.local_addr()
    }

    /// Rebuilds the state if it was lost, then consumes events, answers commands and runs the
    /// timers until `shutdown` is cancelled, and drains the NATS connection.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        // After a loss of the KV state, rebuild it before acting on anything.
        crate::rebuild::ensure(&self.promoter)
            .await
            .map_err(|e| StartError::failed("cannot rebuild the promoter's state", e))?;
        let commands = tokio::spawn(crate::commands::serve(
            Arc::clone(&self.promoter),
            self.client,
            shutdown.child_token(),
        ));
        let timers = tokio::spawn(crate::timers::run(
            Arc::clone(&self.promoter),
            self.tick,
            shutdown.child_token(),
        ));
        let served = self.stage.run_until_stopped(shutdown.clone()).await;
        shutdown.cancel();
        let _ = timers.await;
        match commands.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::failed("cannot answer commands", e)),
            Err(e) => return Err(StartError::failed("the command task failed", e)),
        }
        served
    }
}
