//! `just dev [REPO...]`: the local platform for one's own repositories (see `baton_demo::dev`),
//! running until Ctrl-C.

#![allow(clippy::print_stdout, reason = "it tells the user what to do next")]

use std::path::PathBuf;

use anyhow::Result;
use baton_demo::dev::{DevOptions, Platform};
use clap::Parser;

/// Run Baton on this machine for your own repositories.
#[derive(Debug, Parser)]
#[command(name = "baton-dev")]
struct Args {
    /// Repositories to watch (each an app named after its directory; its `main` is polled).
    repositories: Vec<PathBuf>,
    /// Who approves production: your name in the config repo's people.yaml.
    #[arg(long, env = "USER", default_value = "dev")]
    user: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let args = Args::parse();
    let platform = Platform::start(DevOptions {
        repositories: args.repositories,
        user: args.user,
    })
    .await?;
    println!("{}", platform.next_steps());
    platform.run().await
}
