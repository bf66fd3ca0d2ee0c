//! `baton-chatops --config FILE`: see the crate documentation.

use baton_chatops::{Application, SERVICE, StartError};
use baton_kit::settings::{ServiceArgs, load_or_exit};
use baton_kit::{shutdown, telemetry, tls};
use baton_schemas::config::chatops::ChatopsSettings;
use clap::Parser;

/// Requests and events allocate many small JSON values; mimalloc serves them faster.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let args = ServiceArgs::parse();
    let settings = load_or_exit::<ChatopsSettings>(SERVICE, &args);
    let _telemetry = telemetry::init(SERVICE, &settings.common.telemetry)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let env = |name: &str| std::env::var(name).ok();
    let app = match Application::build(settings, &env).await {
        Ok(app) => app,
        Err(StartError::Config(e)) => baton_kit::service::exit_invalid_config(SERVICE, &e),
        Err(e) => return Err(e.into()),
    };
    app.run_until_stopped(shutdown::on_signal()).await?;
    Ok(())
}
