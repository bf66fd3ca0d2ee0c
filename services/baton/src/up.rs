//! `baton up`: every Baton service in one process, for local use. Each service reads the same
//! config file its own binary would (`<dir>/listener.yaml`, `builder.yaml`, `tester.yaml`,
//! `promoter.yaml`, `deployer.yaml`, `chatops.yaml`; a missing file leaves that service out),
//! with `BATON_*` environment overrides, and `--nats` (when given) replaces every file's
//! `nats.url`. SIGINT/SIGTERM stops them all, each draining its work.

use std::path::Path;

use baton_kit::settings::{self, Settings};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::CliError;

/// The services `baton up` knows, in start order.
pub const SERVICES: [&str; 6] = ["listener", "builder", "tester", "promoter", "deployer", "chatops"];

fn load<T>(dir: &Path, service: &str, nats: Option<&str>) -> Result<Option<Settings<T>>, CliError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let path = dir.join(format!("{service}.yaml"));
    if !path.exists() {
        return Ok(None);
    }
    let mut settings = settings::load::<T>(Some(&path), std::env::vars())
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    if let Some(url) = nats {
        settings.common.nats.url = url.to_owned();
    }
    for warning in &settings.warnings {
        println!("{service}: warning: {warning}");
    }
    Ok(Some(settings))
}

fn failed(service: &str, e: &dyn std::fmt::Display) -> CliError {
    CliError::Usage(format!("{service} cannot start: {e}"))
}

/// Starts every configured service and runs them until a signal.
///
/// # Errors
/// A service's config is invalid or it cannot start; a service stops with an error.
pub async fn up(dir: &Path, nats: Option<&str>) -> Result<(), CliError> {
    let env = |name: &str| std::env::var(name).ok();
    let stop = baton_kit::shutdown::on_signal();
    let mut running: JoinSet<(String, Result<(), String>)> = JoinSet::new();
    let mut started = Vec::new();
    macro_rules! start {
        ($name:literal, $settings:ty, $app:path) => {
            if let Some(s) = load::<$settings>(dir, $name, nats)? {
                let app = <$app>::build(s, &env).await.map_err(|e| failed($name, &e))?;
                started.push(format!("{:<9} http://{}", $name, app.local_addr()));
                let token: CancellationToken = stop.clone();
                running.spawn(async move {
                    (
                        $name.to_owned(),
                        app.run_until_stopped(token).await.map_err(|e| e.to_string()),
                    )
                });
            }
        };
    }
    start!(
        "listener",
        baton_schemas::config::listener::ListenerSettings,
        baton_listener::Application
    );
    start!(
        "builder",
        baton_schemas::config::builder::BuilderSettings,
        baton_builder::Application
    );
    start!(
        "tester",
        baton_schemas::config::tester::TesterSettings,
        baton_tester::Application
    );
    start!(
        "promoter",
        baton_schemas::config::promoter::PromoterSettings,
        baton_promoter::Application
    );
    start!(
        "deployer",
        baton_schemas::config::deployer::DeployerSettings,
        baton_deployer::Application
    );
    start!(
        "chatops",
        baton_schemas::config::chatops::ChatopsSettings,
        baton_chatops::Application
    );
    if started.is_empty() {
        return Err(CliError::Usage(format!(
            "no service config in {}: write one or more of {} (each as its binary's --config file)",
            dir.display(),
            SERVICES.map(|s| format!("{s}.yaml")).join(", ")
        )));
    }
    println!("baton up: {} service(s) running; Ctrl-C stops them", started.len());
    for line in &started {
        println!("  {line}");
    }
    let mut first_error = None;
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((service, Err(e))) => {
                stop.cancel();
                first_error.get_or_insert(format!("{service} stopped: {e}"));
            }
            Ok((service, Ok(()))) => println!("{service} stopped"),
            Err(e) => {
                stop.cancel();
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    match first_error {
        Some(e) => Err(CliError::Usage(e)),
        None => Ok(()),
    }
}
