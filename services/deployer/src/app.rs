//! The deployer as a [`Service`]: `build` validates config, reaches Kubernetes and NATS;
//! `run_until_stopped` runs the stage and the operations endpoint until shutdown, then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_kit::lease::Locks;
use baton_kit::service::{self, Env, Runtime, Service, StageService};
use baton_kit::settings::{ConfigError, Settings};
use baton_kit::source::Sources;
use baton_schemas::config::deployer::DeployerSettings;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, MAX_FIELD_MANAGER_BASE};
use crate::detect::Detector;
use crate::handler::{Deployer, HANDLES};
use crate::rollout::Limits;

pub use baton_kit::service::StartError;

/// The service name: NATS connection name, OTel `service.name`.
pub const SERVICE: &str = "baton-deployer";
/// The stage (durable consumer) every deployer replica shares.
pub const STAGE: &str = "deployer";

/// A built deployer, connected, not yet consuming.
#[derive(Debug)]
pub struct Application {
    service: StageService<Deployer>,
    /// Drift detection, run beside the stage.
    detector: Arc<Detector>,
}

/// A kube client from the configured kubeconfig, or inferred (in-cluster, `$KUBECONFIG`).
async fn kube_client(settings: &DeployerSettings) -> Result<kube::Client, StartError> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| ConfigError::invalid("kubeconfig", format!("cannot read {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| ConfigError::invalid("kubeconfig", format!("{} is not usable: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            ConfigError::invalid(
                "kubeconfig",
                format!("no kubeconfig set and none found (in-cluster or $KUBECONFIG): {e}"),
            )
        })?,
    };
    kube::Client::try_from(config).map_err(|e| StartError::failed("cannot build the Kubernetes client", e))
}

impl Service for Application {
    const NAME: &'static str = SERVICE;
    type Config = DeployerSettings;

    /// Validates the config, builds the Kubernetes client, connects to NATS, checks the
    /// provisioned topology and durable consumer, and binds `http.listen`.
    async fn build(settings: Settings<DeployerSettings>, env: Env<'_>) -> Result<Self, StartError> {
        let own = &settings.service;
        for (field, value) in [
            ("rollout_timeout", own.rollout_timeout),
            ("poll_interval", own.poll_interval),
            ("lock_lease", own.lock_lease),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(field, "must be longer than 0s").into());
            }
        }
        // A handler cancelled mid-rollout would report neither success nor failure.
        if settings.common.runner.handler_deadline <= own.rollout_timeout {
            return Err(ConfigError::invalid(
                "runner.handler_deadline",
                format!(
                    "must be longer than rollout_timeout ({}), or a rollout is cancelled before it is judged; e.g. {}",
                    humantime::format_duration(own.rollout_timeout),
                    humantime::format_duration(own.rollout_timeout * 2),
                ),
            )
            .into());
        }
        if own.field_manager.trim().is_empty() || own.field_manager.contains('/') {
            return Err(ConfigError::invalid("field_manager", "name the field manager without `/`, e.g. baton").into());
        }
        if own.field_manager.len() > MAX_FIELD_MANAGER_BASE {
            return Err(ConfigError::invalid(
                "field_manager",
                format!("at most {MAX_FIELD_MANAGER_BASE} characters: each app applies as `<field_manager>/<app>`"),
            )
            .into());
        }
        let credentials = baton_kit::source::resolve_credentials(&own.source.credentials, env)?;
        let client = kube_client(own).await?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let (cache_dir, cache) = service::cache_dir(own.source.cache_dir.as_deref(), SERVICE)?;
        let replica = uuid::Uuid::new_v4();
        let deployer = Deployer {
            cluster: Arc::new(Cluster::new(client, own.field_manager.clone(), own.force_conflicts)),
            sources: Sources::new(cache_dir, credentials),
            state: runtime.topology.state.clone(),
            // A replica waits for another's rollout of the same app and namespace at most as
            // long as a rollout may take.
            locks: Locks::new(
                &runtime.topology,
                format!("{SERVICE}-{replica}"),
                own.lock_lease,
                own.rollout_timeout + own.lock_lease,
            ),
            leases: runtime.topology.locks.clone(),
            jetstream: runtime.topology.jetstream.clone(),
            limits: Limits {
                timeout: own.rollout_timeout,
                crashloop_restarts: own.crashloop_restarts,
                image_pull_grace: own.image_pull_grace,
                poll_interval: own.poll_interval,
            },
        };
        if own.drift.concurrency == 0 {
            return Err(
                ConfigError::invalid("drift.concurrency", "compare at least 1 object at a time, e.g. 32").into(),
            );
        }
        // A heal never waits for a rollout: a held lease is a promotion in progress.
        let heal_locks = Locks::new(
            &runtime.topology,
            format!("{SERVICE}-{replica}-drift"),
            own.lock_lease,
            Duration::ZERO,
        );
        let detector = Arc::new(Detector::new(
            deployer.clone(),
            own.drift.clone(),
            heal_locks,
            &runtime.metrics,
        ));
        let runner = runtime.stage(STAGE, HANDLES, deployer).await?;
        Ok(Self {
            service: StageService::bind(runtime, runner, cache).await?,
            detector,
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Consumes and looks for drift until `shutdown` is cancelled, finishing or handing back
    /// in-flight rollouts within the grace period, then drains the NATS connection.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let drift = Arc::clone(&self.detector).run(shutdown.clone());
        let stage = async {
            let result = self.service.run_until_stopped(shutdown.clone()).await;
            shutdown.cancel();
            result
        };
        let ((), result) = tokio::join!(drift, stage);
        result
    }
}
