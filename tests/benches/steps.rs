//! `just bench steps`: what a step costs per executor. Locally: the duration of a step that does
//! nothing (`true`), run 200 times unsandboxed and 200 times in the sandbox (bubblewrap's
//! namespaces and mounts, the workspace handed to the step's user, its `/etc` files written,
//! and the teardown of its PID namespace), and 50 times in the sandbox with `network: true`
//! (slirp4netns started and connected). The difference of the medians is the sandbox's start-up
//! and teardown.
//!
//! On Kubernetes: the same `true` step through the kubernetes executor on the test control plane
//! (etcd, kube-apiserver 1.20, controller-manager, scheduler on loopback) with the node simulator
//! executing pods (busybox from the test registry, its root filesystem unpacked once and cached):
//! its Secret and pod created, the pod scheduled, the workspace fetched by the init container,
//! `true` run, the outputs posted back, the pod and Secret deleted. Beside the whole step, the
//! bench's own watch of the pods splits it into phases by when each state was first seen (the
//! pods' status timestamps have whole seconds only).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use baton_kit::steps::{Executor, Sandbox, StepOutcome, StepRequest, StepRunner, start_executor};
use baton_schemas::pipeline::Step;
use baton_tests::kube::steps::{ExecutingCluster, label_build_namespace, nothing_left};
use baton_tests::percentile;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measured runs of the `true` step on the kubernetes executor, after [`KUBERNETES_WARMUP`]
/// (the first pulls and unpacks the image).
const KUBERNETES_RUNS: usize = 200;
const KUBERNETES_WARMUP: usize = 3;
/// The app the steps belong to, and its build namespace.
const APP: &str = "bench/steps";
const NAMESPACE: &str = "baton-build-bench-steps";

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

/// Runs `step` of run `run_id` by `runner` in `workspace`; fails unless it succeeded.
async fn succeed(runner: &StepRunner, run_id: &str, step: &Step, workspace: &std::path::Path) -> Result<StepOutcome> {
    let outcome = runner
        .run(StepRequest {
            run_id,
            app: APP,
            step,
            workspace,
            extra_env: &BTreeMap::new(),
            secrets: &[],
            secret_env: &BTreeMap::new(),
            limits: None,
        })
        .await;
    ensure!(outcome.status.succeeded(), "{:?}: {:?}", outcome.status, outcome.tail);
    Ok(outcome)
}

/// Durations of `runs` runs of `step` by `runner`, sorted.
async fn measure(runner: &StepRunner, step: &Step, runs: usize) -> Result<Vec<Duration>> {
    let workspace = tempfile::tempdir()?;
    std::fs::write(workspace.path().join("README"), "a small checkout\n")?;
    let mut durations = Vec::with_capacity(runs);
    for _ in 0..runs {
        durations.push(succeed(runner, "bench", step, workspace.path()).await?.duration);
    }
    durations.sort();
    Ok(durations)
}

fn report(label: &str, sorted: &[Duration]) {
    println!(
        "{label:<32} n={:<4} p50 {:>7.2} ms   p90 {:>7.2} ms   max {:>7.2} ms",
        sorted.len(),
        percentile(sorted, 0.50).as_secs_f64() * 1e3,
        percentile(sorted, 0.90).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// When the bench's own watch first saw each state of one step's pod.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    created: Option<Instant>,
    scheduled: Option<Instant>,
    /// The `step` container running, or already terminated when no status showed it running.
    running: Option<Instant>,
    /// Whether a status showed the `step` container running before it terminated.
    running_shown: bool,
    terminated: Option<Instant>,
}

impl Seen {
    fn update(&mut self, pod: &Pod, now: Instant) {
        self.created.get_or_insert(now);
        if pod.spec.as_ref().is_some_and(|spec| spec.node_name.is_some()) {
            self.scheduled.get_or_insert(now);
        }
        let status = pod.status.as_ref();
        let state = status
            .and_then(|status| status.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .find(|container| container.name == "step")
            .and_then(|container| container.state.as_ref());
        if let Some(state) = state {
            if state.running.is_some() && self.terminated.is_none() {
                self.running_shown = true;
            }
            if state.running.is_some() || state.terminated.is_some() {
                self.running.get_or_insert(now);
            }
            if state.terminated.is_some() {
                self.terminated.get_or_insert(now);
            }
        }
    }
}

/// Watches the step pods of the build namespace, recording by run (the pod's `baton.dev/run`
/// annotation) when each state was first seen. Returns once the watch has listed the namespace.
async fn watch_steps(client: kube::Client) -> Result<(Arc<Mutex<HashMap<String, Seen>>>, tokio::task::JoinHandle<()>)> {
    let seen = Arc::new(Mutex::new(HashMap::<String, Seen>::new()));
    let (listed, listed_rx) = tokio::sync::oneshot::channel();
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let task = tokio::spawn({
        let seen = Arc::clone(&seen);
        async move {
            let mut listed = Some(listed);
            let events = watcher(pods, watcher::Config::default().labels("baton.dev/component=step")).default_backoff();
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let now = Instant::now();
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        let run = pod
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get("baton.dev/run"))
                            .cloned();
                        if let Some(run) = run {
                            seen.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(run)
                                .or_default()
                                .update(&pod, now);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(listed) = listed.take() {
                            let _ = listed.send(());
                        }
                    }
                    Ok(watcher::Event::Delete(_) | watcher::Event::Init) => {}
                    Err(e) => println!("watching the step pods (tried again): {e}"),
                }
            }
        }
    });
    listed_rx
        .await
        .context("the watch of the step pods ended before listing them")?;
    Ok((seen, task))
}

/// The phases of one step on Kubernetes, in order, and the whole step.
/// The last one is the `workspace-out` container's (asking whether the step ended, archiving the
/// workspace, posting it), the outputs unpacked, the pod and its Secret deleted: the executor
/// returns once the outputs came back, before the pod's own status says it ended.
const PHASES: [&str; 5] = [
    "start -> pod created",
    "pod created -> scheduled",
    "scheduled -> step running",
    "step running -> terminated",
    "terminated -> outcome",
];

/// What the Kubernetes runs measured: the whole steps, and each phase, sorted.
struct KubernetesRuns {
    whole: Vec<Duration>,
    phases: Vec<Vec<Duration>>,
    /// Runs in which a status showed the `step` container running (else `true` had already
    /// terminated by the first status after its start).
    running_shown: usize,
}

/// Runs the `true` step on the kubernetes executor against a control plane of its own with an
/// executing node simulator.
async fn kubernetes() -> Result<KubernetesRuns> {
    baton_kit::tls::install_crypto_provider();
    let executing = ExecutingCluster::start().await?;
    let cluster = &executing.cluster;
    cluster.create_namespace(NAMESPACE).await?;
    label_build_namespace(cluster, NAMESPACE, "builder", APP).await?;
    // Executed pods share the host's network: they reach the workspace server on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // The default quota holds one step pod of this size (8 GiB of memory requests of 16): a pod
    // created just after its predecessor's deletion can be refused while the quota controller has
    // not yet released the predecessor's share. Ten times the default keeps that out of the bench.
    let quota = "  quota:\n    pods: '100'\n    requests.cpu: '80'\n    requests.memory: 160Gi\n    limits.cpu: '160'\n    \
                 limits.memory: 320Gi\n    requests.ephemeral-storage: 500Gi\n";
    let settings = executing.steps_yaml(cluster.kubeconfig_path(), "bench-0", port) + quota;
    let (executor, _) = start_executor("builder", &yaml_serde::from_str(&settings)?, &|_| None).await?;
    let runner = StepRunner::offline().with_executor(executor);
    let (seen, watching) = watch_steps(cluster.client()?).await?;

    let workspace = tempfile::tempdir()?;
    std::fs::write(workspace.path().join("README"), "a small checkout\n")?;
    let step = step(false);
    let mut whole = Vec::with_capacity(KUBERNETES_RUNS);
    let mut phases = vec![Vec::with_capacity(KUBERNETES_RUNS); PHASES.len()];
    let mut running_shown = 0;
    for run in 0..KUBERNETES_WARMUP + KUBERNETES_RUNS {
        let run_id = format!("bench-{run}");
        let started = Instant::now();
        let outcome = succeed(&runner, &run_id, &step, workspace.path()).await?;
        let returned = Instant::now();
        if run < KUBERNETES_WARMUP {
            continue;
        }
        // The watch saw the step end before the executor deleted the pod; its events may still be on their way.
        let deadline = Instant::now() + Duration::from_secs(5);
        let marks = loop {
            let marks = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&run_id)
                .copied()
                .unwrap_or_default();
            if marks.terminated.is_some() || Instant::now() > deadline {
                break marks;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let points = [
            Some(started),
            marks.created,
            marks.scheduled,
            marks.running,
            marks.terminated,
            Some(returned),
        ];
        let points: Vec<Instant> = points
            .into_iter()
            .collect::<Option<_>>()
            .with_context(|| format!("the watch missed a state of {run_id}'s pod: {marks:?}"))?;
        for (phase, pair) in phases.iter_mut().zip(points.windows(2)) {
            phase.push(pair[1].saturating_duration_since(pair[0]));
        }
        running_shown += usize::from(marks.running_shown);
        whole.push(outcome.duration);
    }
    watching.abort();
    nothing_left(&cluster.client()?, NAMESPACE).await?;
    whole.sort();
    for phase in &mut phases {
        phase.sort();
    }
    Ok(KubernetesRuns {
        whole,
        phases,
        running_shown,
    })
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

        let pods = kubernetes().await?;
        report("kubernetes `true`", &pods.whole);
        println!(
            "{:<32} p99 {:>7.2} ms",
            "",
            percentile(&pods.whole, 0.99).as_secs_f64() * 1e3
        );
        println!("its phases, as the bench's watch of the pods first saw each state:");
        for (name, durations) in PHASES.iter().zip(&pods.phases) {
            report(&format!("  {name}"), durations);
        }
        println!(
            "the step container's running state was shown in {} of {} runs (else `true` had already ended)",
            pods.running_shown,
            pods.whole.len()
        );
        Ok(())
    })
}
