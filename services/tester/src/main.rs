//! `baton-tester --config FILE`: see the crate documentation.

use baton_kit::settings::{EXIT_INVALID_CONFIG, ServiceArgs, load_or_exit};
use baton_kit::{shutdown, telemetry, tls};
use baton_schemas::config::tester::TesterSettings;
use baton_tester::{Application, SERVICE, StartError};
use clap::Parser;

/// The event path allocates many small buffers; mimalloc serves them faster.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let args = ServiceArgs::parse();
    let settings = load_or_exit::<TesterSettings>(SERVICE, &args);
    let _telemetry = telemetry::init(SERVICE, &settings.common.telemetry)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let env = |name: &str| std::env::var(name).ok();
    let app = match Application::build(settings, &env).await {
        Ok(app) => app,
        Err(StartError::Config(e)) => {
            tracing::error!("{e}");
            #[allow(
                clippy::print_stderr,
                reason = "the operator must see why the service refuses to start"
            )]
            {
                eprintln!("{SERVICE}: {e}");
            }
            std::process::exit(EXIT_INVALID_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    app.run_until_stopped(shutdown::on_signal()).await?;
    Ok(())
}
