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

use baton_kit::service::{Env, Service, StartError};
use baton_kit::settings::Settings;
use baton_schemas::config::CommonSettings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The common settings of a service under test: NATS at `nats_url`, the HTTP endpoint on a free
/// port of 127.0.0.1, the defaults otherwise (change fields before [`spawn`] as a test needs).
pub fn common(nats_url: &str) -> CommonSettings {
    let mut common = CommonSettings::default();
    common.nats.url = nats_url.to_owned();
    common.http.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    common
}

/// A service running on the test's runtime.
#[derive(Debug)]
pub struct Running {
    /// Where its HTTP endpoint listens (webhooks, chat commands, health and metrics).
    pub addr: SocketAddr,
    /// Its `run_until_stopped`: ends once the `stop` token given to [`spawn`] is cancelled.
    pub task: JoinHandle<Result<(), StartError>>,
}

/// Builds service `S` from `common` and its own `config` (secrets looked up through `env`) and
/// runs it until `stop` is cancelled.
///
/// # Errors
/// When the service refuses its settings or cannot connect, provision or bind.
pub async fn spawn<S: Service>(
    common: CommonSettings,
    config: S::Config,
    env: Env<'_>,
    stop: &CancellationToken,
) -> Result<Running, StartError> {
    let settings = Settings {
        common,
        service: config,
        warnings: vec![],
    };
    let service = S::build(settings, env).await?;
    let addr = service.local_addr();
    let task = tokio::spawn(service.run_until_stopped(stop.clone()));
    Ok(Running { addr, task })
}
