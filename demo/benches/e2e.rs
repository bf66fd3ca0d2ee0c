//! `just bench e2e`: Baton's orchestration overhead for a five-stage release (listener →
//! builder → tester → promoter → deployer) on the demo's local stack: the time from the webhook
//! received (`change.merged`) to `service.deployed`/`service.upgraded` in staging, minus the time
//! spent in the user's build and test commands (their step durations) and in waiting for pods to
//! become ready (the deployer's `rolloutWaitMs`). p50/p99 over sequential releases, plus the
//! sustained rate of releases per minute.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::Instant;

use anyhow::{Context as _, Result};
use baton_demo::{Stack, in_env, of, write};
use baton_kit::log::Record;
use baton_schemas::EventType;
use baton_schemas::payloads::{BuildData, TestData};
use baton_schemas::release::DeploymentData;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RELEASES: usize = 30;
const WARMUP: usize = 2;

/// Microseconds to create (and write a byte to) a file in the temporary directory the stack will
/// use, the median of 200. Every stage creates files (checkouts, git objects, the registry's
/// uploads), so this is printed with the figures: an ext4 without a journal skips inodes deleted
/// in the last minutes when it allocates one, and right after a run's teardown has deleted
/// thousands of files a create there can cost ten times what it costs on a quiet filesystem.
fn file_create_us() -> Result<u64> {
    let dir = tempfile::tempdir()?;
    let mut times = Vec::with_capacity(200);
    for i in 0..200 {
        let started = Instant::now();
        std::fs::write(dir.path().join(format!("probe-{i}")), b"x")?;
        times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn steps_ms(record: &Record, build: bool) -> Result<u64> {
    Ok(if build {
        record
            .event
            .custom_data_as::<BuildData>()?
            .steps
            .iter()
            .map(|s| s.duration_ms)
            .sum()
    } else {
        record
            .event
            .custom_data_as::<TestData>()?
            .steps
            .iter()
            .map(|s| s.duration_ms)
            .sum()
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    // With RUST_LOG set, the services log to stderr with microsecond timestamps and every
    // span's duration when it closes: the timeline behind the breakdown printed at the end.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(std::io::stderr)
            .init();
    }
    let create_us = file_create_us()?;
    let mut stack = Stack::start(false).await?;
    let shop = stack.shop();
    let mut overheads = Vec::new();
    let mut totals = Vec::new();
    let mut waited = Vec::new();
    let mut commands = Vec::new();
    let mut stages: Vec<Vec<u64>> = vec![Vec::new(); 7];
    let started = Instant::now();
    for round in 0..RELEASES + WARMUP {
        write(&shop.join("src/greeting.txt"), &format!("hello, round {round}\n"))?;
        let release = stack.push(&format!("round {round}"), false).await?;
        let deployed = stack
            .wait_for(
                "staging",
                in_env(
                    &release,
                    "staging",
                    &[EventType::ServiceDeployed, EventType::ServiceUpgraded],
                ),
            )
            .await?;
        let merged = stack
            .wait_for("the push", of(&release, EventType::ChangeMerged))
            .await?;
        let built = stack
            .wait_for("the build", of(&release, EventType::BuildFinished))
            .await?;
        let tested = stack
            .wait_for("the tests", of(&release, EventType::TestSuiteRunFinished))
            .await?;
        let rollout = deployed
            .event
            .custom_data_as::<DeploymentData>()?
            .rollout_wait_ms
            .context("rolloutWaitMs")?;
        let total = u64::try_from((deployed.time() - merged.time()).num_milliseconds()).unwrap_or(0);
        let user = steps_ms(&built, true)? + steps_ms(&tested, false)?;
        if round >= WARMUP {
            // Where the time goes: from each stage's first event to the next stage's.
            let marks = [
                EventType::ChangeMerged,
                EventType::BuildStarted,
                EventType::ArtifactPublished,
                EventType::TestSuiteRunFinished,
                EventType::ReleaseCreated,
                EventType::EnvironmentModified,
                EventType::DeploymentStarted,
            ];
            let mut at = Vec::new();
            for ty in marks {
                at.push(stack.wait_for("a stage", of(&release, ty)).await?.time());
            }
            at.push(deployed.time());
            for (i, pair) in at.windows(2).enumerate() {
                stages[i].push(u64::try_from((pair[1] - pair[0]).num_milliseconds()).unwrap_or(0));
            }
            totals.push(total);
            waited.push(rollout);
            commands.push(user);
            overheads.push(total.saturating_sub(user + rollout));
        }
    }
    let elapsed = started.elapsed();
    stack.stop().await;
    let percentile = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        baton_tests::percentile(v, p)
    };
    println!(
        "e2e: {RELEASES} sequential releases (after {WARMUP} warm-up), webhook received → service.deployed in staging:"
    );
    // Every release's overhead in order, for comparisons across runs (`just bench telemetry`).
    let samples: Vec<String> = overheads.iter().map(u64::to_string).collect();
    println!("  overhead samples (ms, in release order): {}", samples.join(" "));
    println!(
        "  orchestration overhead  p50 {} ms, p99 {} ms",
        percentile(&mut overheads, 0.50),
        percentile(&mut overheads, 0.99)
    );
    println!(
        "  total                   p50 {} ms, p99 {} ms (build/test commands p50 {} ms, waiting for pods p50 {} ms)",
        percentile(&mut totals, 0.50),
        percentile(&mut totals, 0.99),
        percentile(&mut commands, 0.50),
        percentile(&mut waited, 0.50)
    );
    let names = [
        "listener → build started",
        "build (checkout, steps, image, push)",
        "tests",
        "release created",
        "promotion committed",
        "deployer picked it up",
        "apply + rollout (incl. pods)",
    ];
    for (name, mut times) in names.into_iter().zip(stages) {
        println!("    {name:<38} p50 {:>4} ms", percentile(&mut times, 0.50));
    }
    println!(
        "  file create in {}: p50 {create_us} µs before the run (see BENCHMARKS.md)",
        std::env::temp_dir().display()
    );
    let per_minute = (RELEASES + WARMUP) as f64 / elapsed.as_secs_f64() * 60.0;
    println!(
        "  sustained: {per_minute:.0} releases/minute (one after another, each to a healthy staging rollout, {:.1} s in all)",
        elapsed.as_secs_f64()
    );
    Ok(())
}
