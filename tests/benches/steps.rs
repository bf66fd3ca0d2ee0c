//! `just bench steps`: what the step sandbox costs per step: the duration of a step that does
//! nothing (`true`), run 200 times unsandboxed and 200 times in the sandbox (bubblewrap's
//! namespaces and mounts, the workspace handed to the step's user, its `/etc` files written,
//! and the teardown of its PID namespace), and 50 times in the sandbox with `network: true`
//! (slirp4netns started and connected). The difference of the medians is the sandbox's start-up
//! and teardown.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use baton_kit::steps::{Executor, Sandbox, StepRequest, StepRunner};
use baton_schemas::pipeline::Step;
use baton_tests::percentile;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn step(network: bool) -> Step {
    Step {
        name: "noop".into(),
        run: "true".into(),
        env: BTreeMap::new(),
        timeout: Duration::from_secs(30),
        workdir: None,
        network,
        limits: Default::default(),
        secrets: Vec::new(),
        image: None,
    }
}

/// Durations of `runs` runs of `step` by `runner`, sorted.
async fn measure(runner: &StepRunner, step: &Step, runs: usize) -> Result<Vec<Duration>> {
    let workspace = tempfile::tempdir()?;
    std::fs::write(workspace.path().join("README"), "a small checkout\n")?;
    let mut durations = Vec::with_capacity(runs);
    for _ in 0..runs {
        let outcome = runner
            .run(StepRequest {
                run_id: "bench",
                app: "bench/steps",
                step,
                workspace: workspace.path(),
                extra_env: &BTreeMap::new(),
                secrets: &[],
                secret_env: &BTreeMap::new(),
                limits: None,
            })
            .await;
        ensure!(outcome.status.succeeded(), "{:?}: {:?}", outcome.status, outcome.tail);
        durations.push(outcome.duration);
    }
    durations.sort();
    Ok(durations)
}

fn report(label: &str, sorted: &[Duration]) {
    println!(
        "{label:<28} n={:<4} p50 {:>7.2} ms   p90 {:>7.2} ms   max {:>7.2} ms",
        sorted.len(),
        percentile(sorted, 0.50).as_secs_f64() * 1e3,
        percentile(sorted, 0.90).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let sandbox = Executor::Sandbox(Sandbox::new((65534, 65534), Vec::new()));
        sandbox.check().await?;
        let unsandboxed = StepRunner::offline();
        let sandboxed = StepRunner::offline().with_executor(sandbox);
        // Warm-up: page cache, binaries.
        measure(&sandboxed, &step(false), 10).await?;
        let plain = measure(&unsandboxed, &step(false), 200).await?;
        let boxed = measure(&sandboxed, &step(false), 200).await?;
        let networked = measure(&sandboxed, &step(true), 50).await?;
        report("unsandboxed `true`", &plain);
        report("sandboxed `true`", &boxed);
        report("sandboxed, network: true", &networked);
        let overhead = percentile(&boxed, 0.5).saturating_sub(percentile(&plain, 0.5));
        println!(
            "sandbox start-up and teardown per step: p50 {:.2} ms (target <= 15 ms)",
            overhead.as_secs_f64() * 1e3
        );
        Ok(())
    })
}
