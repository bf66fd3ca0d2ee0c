//! `baton`: see the crate documentation, or `baton --help`.

#![allow(clippy::print_stderr, reason = "a command line reports its errors on stderr")]

use baton::cli::Cli;
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    baton_kit::tls::install_crypto_provider();
    let cli = Cli::parse();
    if let Err(e) = baton::run::run(cli).await {
        if !e.is_printed() {
            eprintln!("baton: {e}");
        }
        std::process::exit(e.exit_code());
    }
}
