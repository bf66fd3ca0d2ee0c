//! `just demo`: Baton end to end on this machine, narrated. See the crate documentation of
//! `baton_demo` for the stack; the story:
//!
//! 1. a push to main (a signed webhook) is built, tested, promoted to staging automatically and
//!    rolled out; production waits for an approval, which arrives through the chat endpoint as a
//!    signed Slack request, and production rolls out;
//! 2. a commit whose test fails stops before staging;
//! 3. a commit whose pods crash-loop fails its rollout in staging and is rolled back
//!    automatically to the previous digest, quarantined, and staging pinned;
//! 4. an image pushed by hand to the same registry and announced as tested runs in staging when
//!    alice promotes it there (staging asks for no evidence), but production's evidence gate
//!    holds it before anyone is asked to approve it: nothing signed it.
//!
//! It ends with `baton trace` of each release, prints the web UI's URL and keeps everything
//! running for the browser and for `baton` commands, signed with alice's key, until Ctrl-C (or
//! stops at once with `--down`).

#![allow(clippy::print_stdout, reason = "the demo narrates on the terminal")]

use std::time::Instant;

use anyhow::Result;
use baton::cli::{Cli, Command, Output};
use baton_demo::{DEPLOYMENT, Stack, in_env, of, say, write};
use baton_schemas::EventType;
use baton_schemas::commands::{CommandRequest, Verb};
use baton_schemas::release::ReleaseData;
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
    let shop = stack.shop();

    say(
        "1. A push to main: build, sign, test, staging automatically; production waits for an approval and checks the evidence",
    );
    let first = stack.push("Say hello", true).await?;
    stack
        .wait_for(
            "the first release in staging",
            in_env(&first, "staging", &[EventType::ServiceDeployed]),
        )
        .await?;
    stack
        .wait_for("the approval request", of(&first, EventType::ApprovalCreated))
        .await?;
    say("   alice approves from chat: /baton approve <release> production (a signed Slack request)");
    let answer = stack.slash(&format!("approve {first} production")).await?;
    println!("  chat answers: {answer}");
    stack
        .wait_for(
            "the first release in production",
            in_env(
                &first,
                "production",
                &[EventType::ServiceDeployed, EventType::ServiceUpgraded],
            ),
        )
        .await?;

    say("2. A commit whose test fails: it stops before staging");
    write(&shop.join("src/greeting.txt"), "goodbye from Baton\n")?;
    let second = stack.push("Say goodbye (breaks the unit test)", true).await?;
    let verdict = stack
        .wait_for("the failing test run", of(&second, EventType::TestSuiteRunFinished))
        .await?;
    println!(
        "  outcome: {}; nothing is promoted",
        verdict.event.subject.content["outcome"].as_str().unwrap_or_default()
    );

    say("3. A commit whose pods crash-loop: the rollout fails and staging is rolled back automatically");
    write(&shop.join("src/greeting.txt"), "hello again from Baton\n")?;
    write(
        &shop.join("deploy/deployment.yaml"),
        &DEPLOYMENT.replace(
            "      labels: {app: shop}\n    spec:",
            "      labels: {app: shop}\n      annotations: {baton.dev/simulate: crashloop}\n    spec:",
        ),
    )?;
    let third = stack.push("Crash on start", true).await?;
    stack
        .wait_for("the failed rollout", of(&third, EventType::DeploymentFailed))
        .await?;
    stack
        .wait_for("the rollback", |r| {
            r.chain() == Some(first.as_str()) && r.event_type() == Some(EventType::ServiceRolledBack)
        })
        .await?;

    say(
        "4. An image pushed by hand to the registry, announced as tested: staging takes it, production's gate does not",
    );
    let signed: ReleaseData = stack
        .wait_for("the first release", of(&first, EventType::ReleaseCreated))
        .await?
        .event
        .custom_data_as()?;
    let (by_hand, _) = stack.push_by_hand(&signed, true).await?;
    stack
        .wait_for("the pinned staging", |r| {
            r.chain() == Some(by_hand.as_str()) && r.event_type() == Some(EventType::PromotionHeld)
        })
        .await?;
    say("   alice promotes it into staging: baton promote <release> staging (signed with her key)");
    let promote = CommandRequest {
        release: Some(by_hand.clone()),
        environment: Some("staging".into()),
        ..CommandRequest::default()
    };
    let promoted = stack.command(Verb::Promote, promote).await?;
    println!("  the promoter answers: {}", promoted.message);
    let held = stack
        .wait_for("production's gate", |r| {
            r.chain() == Some(by_hand.as_str())
                && r.event_type() == Some(EventType::PromotionHeld)
                && r.event.subject.content["environment"] == "production"
        })
        .await?;
    say("   production's gate verifies its evidence before asking anyone to approve it");
    println!(
        "  held: {}",
        held.event.subject.content["reason"].as_str().unwrap_or_default()
    );
    say("   alice tries to approve it from chat anyway");
    let answer = stack.slash(&format!("approve {by_hand} production")).await?;
    println!("  chat answers: {answer}");

    say("The story of each release (`baton trace <release>`)");
    for release in [&first, &second, &third, &by_hand] {
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
        println!("  {cli} trace {first}");
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
