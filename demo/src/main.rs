//! `just demo`: Baton end to end on this machine, narrated. See the crate documentation of
//! `baton_demo` for the stack and `baton_demo::story` for the story it plays: a release approved
//! from chat into production, a failing test, a crash-looping release rolled back, and an image
//! pushed by hand that production's evidence gate holds.
//!
//! It ends with `baton trace` of each release, prints the web UI's URL and keeps everything
//! running for the browser and for `baton` commands, signed with alice's key, until Ctrl-C (or
//! stops at once with `--down`).

#![allow(clippy::print_stdout, reason = "the demo narrates on the terminal")]

use std::time::Instant;

use anyhow::Result;
use baton::cli::{Cli, Command, Output};
use baton_demo::{Stack, say, story};
use clap::Parser;

/// Play Baton's release story on local servers.
#[derive(Debug, Parser)]
#[command(name = "baton-demo")]
struct Args {
    /// Stop everything when the story is told instead of leaving it running.
    #[arg(long)]
    down: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut stack = Stack::start(true).await?;
    let first = story::approved_into_production(&mut stack).await?;
    let second = story::failing_test_stops(&mut stack).await?;
    let third = story::crash_loop_rolled_back(&mut stack, &first.release).await?;
    let by_hand = story::hand_pushed_image_held(&mut stack, &first.data).await?;

    say("The story of each release (`baton trace <release>`)");
    for release in [&first.release, &second, &third, &by_hand.release] {
        println!();
        baton::run::run(Cli {
            nats: stack.nats.url(),
            // The demo's nats-server authenticates nobody.
            nats_user: None,
            nats_password_file: None,
            output: Output::Human,
            command: Command::Trace {
                release: release.clone(),
            },
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    println!("\nThe story took {:.0} s.", started.elapsed().as_secs_f64());

    if args.down {
        say("Stopping (--down)");
    } else {
        say(&format!(
            "The web UI: {}   (the environment matrix; each release's timeline, the live event log, DORA metrics)",
            stack.web_url()
        ));
        say("Everything keeps running. In another terminal:");
        let cli = std::env::current_exe()?.with_file_name("baton");
        let cli = cli.display();
        println!("  export BATON_NATS_URL={}", stack.nats.url());
        println!(
            "  export BATON_ACTOR=alice BATON_SIGNING_KEY={}   # alice's key, listed in the config repo's people.yaml",
            stack.cli_key().display()
        );
        println!("  {cli} events                # the whole log, then: {cli} events --follow");
        println!(
            "  {cli} status                # what runs where (staging runs the hand-pushed image; production the signed release)"
        );
        println!("  {cli} trace {}", first.release);
        println!(
            "  # traces: each release is one OpenTelemetry trace, sent to the OTLP/gRPC collector named by OTEL_EXPORTER_OTLP_ENDPOINT (or BATON_TELEMETRY__OTLP_ENDPOINT) when `just demo` starts, e.g. Jaeger's on :4317, viewed at :16686; see docs/telemetry.md"
        );
        println!("  {cli} whoami                # who the promoter sees behind the signature");
        println!("  {cli} unpin acme/shop staging   # signed with alice's key");
        println!(
            "  KUBECONFIG={} kubectl get deploy -A   # if you have kubectl",
            stack.cluster.kubeconfig_path().display()
        );
        println!("Ctrl-C stops everything and removes its files.");
        tokio::signal::ctrl_c().await?;
    }
    stack.stop().await;
    Ok(())
}
