//! Baton's services in-process, the way suites run them against the harness's servers: built
//! through the kit's [`Service`] trait from settings whose common part points at the test's NATS
//! and puts the HTTP endpoint on a free port, then run on the test's Tokio runtime until the
//! suite cancels them.
//!
//! ```no_run
//! # async fn example(nats: &baton_tests::NatsServer) -> anyhow::Result<()> {
//! use baton_tests::app;
//! use tokio_util::sync::CancellationToken;
//!
//! let stop = CancellationToken::new();
//! let tester = app::spawn::<baton_tester::Application>(app::common(&nats.url()), Default::default(), &|_| None, &stop).await?;
//! // ... publish an artifact.published, read the verdict ...
//! stop.cancel();
//! tester.task.await??;
//! # Ok(())
//! # }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use baton_kit::provision;
pub use baton_kit::service::Running;
use baton_kit::service::{self, Env, Service, StartError};
use baton_kit::settings::Settings;
use baton_schemas::config::CommonSettings;
use tokio_util::sync::CancellationToken;

/// The common settings of a service under test: NATS at `nats_url`, the HTTP endpoint on a free
/// port of 127.0.0.1, the defaults otherwise (change fields before [`spawn`] as a test needs).
pub fn common(nats_url: &str) -> CommonSettings {
    let mut common = CommonSettings::default();
    common.nats.url = nats_url.to_owned();
    common.http.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    common
}

/// Builds service `S` from `common` and its own `config` (secrets looked up through `env`) and
/// runs it until `stop` is cancelled ([`service::spawn`]).
///
/// First it does what the admin's provisioning step does before a service starts
/// ([`provision_for`]), when the server lets a connection without a user manage JetStream
/// (every harness server but the permission suite's, which provisions as its admin user).
///
/// # Errors
/// When provisioning is refused, or the service refuses its settings or cannot connect, find
/// its topology or bind.
pub async fn spawn<S: Service>(
    common: CommonSettings,
    config: S::Config,
    env: Env<'_>,
    stop: &CancellationToken,
) -> Result<Running, StartError> {
    if common.nats.user.is_none() && common.nats.credentials_file.is_none() {
        provision_for::<S>(&common).await?;
    }
    let settings = Settings {
        common,
        service: config,
        warnings: vec![],
    };
    service::spawn::<S>(settings, env, stop).await
}

/// Provisions on `common.nats.url`, as the admin's `baton admin provision` would before `S`
/// starts: the streams and buckets, and `S`'s stage consumer (if it has one) tuned by
/// `common.runner`; a new consumer on a stream with events for it replays them, as a stage's
/// first start would see them. Nothing is done when no server answers at once: the service's
/// own start then reports what is wrong (its config is checked before NATS is reached).
///
/// # Errors
/// [`StartError::Fabric`] when the server refuses the topology.
pub async fn provision_for<S: Service>(common: &CommonSettings) -> Result<(), StartError> {
    let Ok(client) = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(common.nats.url.as_str())
        .await
    else {
        return Ok(());
    };
    let mut plan = provision::Plan::streams_only(common).with_history(provision::History::Replay);
    if let Some(stage) = provision::stage(service::short_name::<S>()) {
        plan.consumers.push((*stage, common.runner.clone()));
    }
    provision::apply(&client, &plan).await?;
    Ok(())
}
