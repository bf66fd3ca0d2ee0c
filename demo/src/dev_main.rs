//! `just dev [REPO...]`: the local platform for one's own repositories (see `baton_demo::dev`),
//! running until Ctrl-C. Its shell variables are copied to `~/.baton/dev.env` (see
//! [`Platform::env_file`]), the one place a second terminal can find them, and removed on exit.

#![allow(clippy::print_stdout, reason = "it tells the user what to do next")]

use std::path::PathBuf;

use anyhow::{Context as _, Result};
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
    let home = std::env::var_os("HOME").context("HOME is not set: ~/.baton/dev.env goes there")?;
    let env_file = PathBuf::from(home).join(".baton/dev.env");
    let env = std::fs::read_to_string(platform.env_file())?;
    baton_demo::write(&env_file, &env)?;
    println!("{}", platform.next_steps(&env_file));
    // Gone as soon as Ctrl-C is pressed, while the services still drain: nothing may read
    // addresses that are about to close.
    let stopping = baton_kit::shutdown::on_signal();
    let forget = {
        let (env_file, env) = (env_file.clone(), env.clone());
        tokio::spawn(async move {
            stopping.cancelled().await;
            remove_if_ours(&env_file, &env);
        })
    };
    let ran = platform.run().await;
    forget.abort();
    remove_if_ours(&env_file, &env);
    ran
}

/// Removes `env_file` unless another platform started since has written its own.
fn remove_if_ours(env_file: &std::path::Path, env: &str) {
    if std::fs::read_to_string(env_file).is_ok_and(|now| now == env) {
        let _ = std::fs::remove_file(env_file);
    }
}
