//! The builder and the tester with `steps.executor: kubernetes`, end to end on real servers: a
//! control plane whose node simulator executes pods (busybox from a test registry), nats-server,
//! git repositories, and the services holding exactly the Kubernetes rights `deploy/` gives them
//! (their ServiceAccount's token; `deploy/rbac/steps` and the example build namespaces applied
//! from their files).
//!
//! - A build whose steps run as pods pushes the same image, digest for digest, as a build of the
//!   same commit in the sandbox.
//! - A test step that fails still hands its JUnit report back: the run names the failing case.
//! - A builder killed mid-step leaves a pod running in the cluster; started again as the same
//!   instance, it deletes that pod and its Secret, and the redelivered build runs again to its end.
//! - A hostile step finds no ServiceAccount token, none of the builder's secrets (its registry
//!   and NATS passwords) and not its own pod's workspace token, in its environment, in any
//!   process's environment or command line it can read, or in any file under `/`. Its egress is
//!   what the NetworkPolicies on the apiserver say: the simulator does not enforce policies, so
//!   their content is asserted: default deny, egress to DNS and to the workspace server only,
//!   whose selectors (from production's config) pick the builder's pods as deploy/ runs them;
//!   and only the pod of a `network: true` step carries the label the policy opening the network
//!   selects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use async_nats::jetstream;
use baton_kit::service::StartError;
use baton_schemas::EventType;
use baton_schemas::config::CommonSettings;
use baton_schemas::payloads::{BuildData, ImageInfo, Outcome, StepReport, TestData};
use baton_tests::kube::steps::{
    ExecutingCluster, SERVICES_NAMESPACE, deploy_objects, deploy_step_runner, nothing_left,
};
use baton_tests::process::{LogFile, Process, service_binary};
use baton_tests::push::Push;
use baton_tests::{NatsServer, app, eventually_every, free_port, repos};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The app every push is of; deploy/build-namespaces/example is its build namespaces.
const APP: &str = "acme/shop";
const BUILD_NAMESPACE: &str = "baton-build-acme-shop";
const TEST_NAMESPACE: &str = "baton-test-acme-shop";
/// How often the tests ask the apiserver.
const POLL: Duration = Duration::from_millis(200);
/// How long anything the tests wait for may take on a busy machine: a deadline, not a speed.
const WAIT: Duration = Duration::from_secs(120);

/// A commit's files: a pipeline whose build step writes a site (from a file of the commit) and
/// an executable script, and an image of them on `scratch`.
const SITE_PIPELINE: &str = "\
build:
  steps:
    - name: site
      run: |
        echo \"uid $(id -u)\"
        mkdir -p site/assets && cp src/message.txt site/index.html && chmod 640 site/index.html
        echo 'body {}' > site/assets/style.css
        printf '#!/bin/sh\\necho serving\\n' > serve && chmod 750 serve
image:
  base: scratch
  add:
    - {from: site, to: /srv/site}
    - {from: serve, to: /srv/serve}
  entrypoint: [/srv/serve]
";

/// An app repository at `<root>/shop` holding `files`: its clone URL and the commit.
fn shop(root: &Path, files: &[(&str, &str)]) -> Result<(String, String)> {
    let dir = root.join("shop");
    let sha = repos::app_repo(&dir, files)?;
    Ok((format!("file://{}", dir.display()), sha))
}

/// Stages running in-process on one nats-server of their own.
struct Stages {
    nats: NatsServer,
    js: jetstream::Context,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Result<(), StartError>>>,
}

impl Stages {
    async fn start() -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        let nats = NatsServer::start()?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        Ok(Self {
            nats,
            js,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        })
    }

    /// A builder pushing to `world`'s registry; `steps` is its `steps:` section (unindented),
    /// none for the default (the sandbox).
    async fn builder(&mut self, world: &ExecutingCluster, steps: Option<&str>) -> Result<()> {
        // Signing on, as users get it (the key is read at start).
        let key = baton_tests::keys::SigningKeyFile::generate()?;
        let config = format!(
            "registry:\n  address: {}\n  insecure: true\n{}{}",
            world.registry.address(),
            key.signing_section(),
            steps.map(steps_section).unwrap_or_default()
        );
        let running = app::spawn::<baton_builder::Application>(
            app::common(&self.nats.url()),
            yaml_serde::from_str(&config)?,
            &|_| None,
            &self.stop,
        )
        .await?;
        self.tasks.push(running.task);
        Ok(())
    }

    /// A tester whose `steps:` section is `steps`, attesting nothing (what it runs is the point).
    async fn tester(&mut self, steps: &str) -> Result<()> {
        let running = app::spawn::<baton_tester::Application>(
            app::common(&self.nats.url()),
            yaml_serde::from_str(&format!("signing: {{enabled: false}}\n{}", steps_section(steps)))?,
            &|_| None,
            &self.stop,
        )
        .await?;
        self.tasks.push(running.task);
        Ok(())
    }

    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        Ok(())
    }
}

/// `steps` as the `steps:` section of a service's config.
fn steps_section(steps: &str) -> String {
    let indented: String = steps.lines().map(|line| format!("  {line}\n")).collect();
    format!("steps:\n{indented}")
}

/// Publishes the push of `sha` from `url` as delivery `delivery`; returns the release.
async fn push(js: &jetstream::Context, url: &str, sha: &str, delivery: &str) -> Result<String> {
    Push {
        app: APP,
        clone_url: url,
        commit: sha,
        delivery,
    }
    .publish(js)
    .await
}

/// The `build.finished` of `release`.
async fn build_finished(js: &jetstream::Context, release: &str) -> Result<BuildData> {
    let event = baton_tests::events::wait_for_release(js, EventType::BuildFinished, release, WAIT).await?;
    Ok(event.custom_data_as()?)
}

/// The whole log of `step`, from the object store.
async fn whole_log(js: &jetstream::Context, step: &StepReport) -> Result<String> {
    let log = step.log.clone().with_context(|| format!("no log kept for {step:?}"))?;
    let mut object = js.get_object_store(&log.bucket).await?.get(&log.object).await?;
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut object, &mut text).await?;
    Ok(text)
}

/// Every step pod (and its Secret) seen in a namespace while it runs: the apiserver asked every
/// [`POLL`], each object kept as last seen, so pods that come and go within a build are caught.
struct Seen {
    pods: Arc<Mutex<BTreeMap<String, Pod>>>,
    secrets: Arc<Mutex<BTreeMap<String, Secret>>>,
    task: JoinHandle<()>,
}

impl Seen {
    fn start(client: &Client, namespace: &str) -> Self {
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let secrets_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let pods = Arc::new(Mutex::new(BTreeMap::new()));
        let secrets = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn({
            let (pods, secrets) = (Arc::clone(&pods), Arc::clone(&secrets));
            async move {
                let steps = ListParams::default().labels("baton.dev/component=step");
                loop {
                    if let Ok(list) = pods_api.list(&steps).await {
                        let mut seen = pods.lock().expect("not poisoned");
                        for pod in list.items {
                            seen.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
                        }
                    }
                    if let Ok(list) = secrets_api.list(&steps).await {
                        let mut seen = secrets.lock().expect("not poisoned");
                        for secret in list.items {
                            seen.insert(secret.metadata.name.clone().unwrap_or_default(), secret);
                        }
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        });
        Self { pods, secrets, task }
    }

    /// The pods seen so far, by name.
    fn pods(&self) -> BTreeMap<String, Pod> {
        self.pods.lock().expect("not poisoned").clone()
    }

    /// The step pods seen of `run` whose step is `step`, by name.
    fn pods_of(&self, run: &str, step: &str) -> Vec<Pod> {
        self.pods()
            .into_values()
            .filter(|pod| {
                let annotations = pod.metadata.annotations.clone().unwrap_or_default();
                annotations.get("baton.dev/run").map(String::as_str) == Some(run)
                    && annotations.get("baton.dev/step").map(String::as_str) == Some(step)
            })
            .collect()
    }

    /// The Secret seen named `name`.
    fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets.lock().expect("not poisoned").get(name).cloned()
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_steps_run_as_pods_pushes_the_sandboxs_digest() -> Result<()> {
    let world = ExecutingCluster::start().await?;
    let kubeconfig = deploy_step_runner(&world.cluster, "builder").await?;
    let repo = tempfile::tempdir()?;
    let (url, sha) = shop(
        repo.path(),
        &[
            (".baton.yaml", SITE_PIPELINE),
            ("src/message.txt", "hello from the commit\n"),
        ],
    )?;
    let seen = Seen::start(&world.cluster.client()?, BUILD_NAMESPACE);

    // The same commit, built by a builder whose steps run in the sandbox and by one whose steps
    // run as pods (each on its own NATS, both pushing to the one registry).
    let mut sandboxed = Stages::start().await?;
    sandboxed.builder(&world, None).await?;
    let mut in_pods = Stages::start().await?;
    let steps = world.steps_yaml(&kubeconfig, "builder-0", free_port());
    in_pods.builder(&world, Some(&steps)).await?;
    let release = push(&sandboxed.js, &url, &sha, "sandbox").await?;
    let sandbox = build_finished(&sandboxed.js, &release).await?;
    let release = push(&in_pods.js, &url, &sha, "pods").await?;
    let pods = build_finished(&in_pods.js, &release).await?;
    ensure!(sandbox.outcome == Some(Outcome::Success), "{sandbox:?}");
    ensure!(pods.outcome == Some(Outcome::Success), "{pods:?}");

    // The step ran in a pod of the build namespace, as the pod's non-root user.
    let ran = seen.pods_of(&pods.run, "site");
    ensure!(ran.len() == 1, "pods of the step: {:?}", seen.pods().keys());
    ensure!(pods.steps[0].tail == ["uid 65532"], "{:?}", pods.steps[0].tail);
    ensure!(
        seen.pods_of(&sandbox.run, "site").is_empty(),
        "the sandbox's build made a pod"
    );

    let sandbox_image = sandbox.image.context("the sandbox's build has no image")?;
    let pods_image = pods.image.context("the pods' build has no image")?;
    ensure!(
        pods_image.digest == sandbox_image.digest,
        "pods built {}, the sandbox {}",
        pods_image.digest,
        sandbox_image.digest
    );
    // What the digest covers: the step's files, made from the commit, with their modes.
    let files = image_files(&world, &pods_image).await?;
    let expected = [
        ("srv/serve", 0o755, "#!/bin/sh\necho serving\n"),
        ("srv/site/assets/style.css", 0o644, "body {}\n"),
        ("srv/site/index.html", 0o644, "hello from the commit\n"),
    ];
    let expected: BTreeMap<String, (u32, Vec<u8>)> = expected
        .into_iter()
        .map(|(path, mode, content)| (path.to_owned(), (mode, content.as_bytes().to_vec())))
        .collect();
    ensure!(files == expected, "{files:?}");
    nothing_left(&world.cluster.client()?, BUILD_NAMESPACE).await?;
    sandboxed.stop().await?;
    in_pods.stop().await
}

/// The regular files of `image`'s layers (pulled from the registry): path, mode and content.
async fn image_files(world: &ExecutingCluster, image: &ImageInfo) -> Result<BTreeMap<String, (u32, Vec<u8>)>> {
    let manifest = world.registry.skopeo_inspect(&image.reference, true)?;
    let mut files = BTreeMap::new();
    for layer in manifest["layers"].as_array().context("no layers")? {
        let digest = layer["digest"].as_str().context("a layer without a digest")?;
        let url = format!("{}/v2/{}/blobs/{digest}", world.registry.url(), image.repository);
        let blob = reqwest::get(&url).await?.error_for_status()?.bytes().await?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.header().entry_type().is_file() {
                let path = entry.path()?.display().to_string();
                let mode = entry.header().mode()?;
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut content)?;
                files.insert(path, (mode, content));
            }
        }
    }
    Ok(files)
}

/// A JUnit report of one suite in which one of two cases fails.
const FAILING_REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="checkout" tests="2" failures="1" errors="0" skipped="0">
  <testcase classname="checkout.Payment" name="accepts_cards" time="0.03"/>
  <testcase classname="checkout.Payment" name="refuses_expired_cards" time="0.05">
    <failure message="card 04/21 accepted" type="AssertionError">expired card was charged</failure>
  </testcase>
</testsuite>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_step_in_a_pod_still_hands_back_its_junit_report() -> Result<()> {
    let world = ExecutingCluster::start().await?;
    let builder_kubeconfig = deploy_step_runner(&world.cluster, "builder").await?;
    let tester_kubeconfig = deploy_step_runner(&world.cluster, "tester").await?;
    let pipeline = format!(
        "{SITE_PIPELINE}test:\n  steps:\n    - name: unit\n      \
         run: 'mkdir -p reports && cp src/report.xml reports/junit.xml && echo 1 failed && exit 1'\n      \
         junit: reports/junit.xml\n"
    );
    let repo = tempfile::tempdir()?;
    let (url, sha) = shop(
        repo.path(),
        &[
            (".baton.yaml", &pipeline),
            ("src/message.txt", "hello\n"),
            ("src/report.xml", FAILING_REPORT),
        ],
    )?;
    let seen = Seen::start(&world.cluster.client()?, TEST_NAMESPACE);
    let mut stages = Stages::start().await?;
    stages
        .builder(
            &world,
            Some(&world.steps_yaml(&builder_kubeconfig, "builder-0", free_port())),
        )
        .await?;
    stages
        .tester(&world.steps_yaml(&tester_kubeconfig, "tester-0", free_port()))
        .await?;
    let release = push(&stages.js, &url, &sha, "junit").await?;
    let event =
        baton_tests::events::wait_for_release(&stages.js, EventType::TestSuiteRunFinished, &release, WAIT).await?;
    let data: TestData = event.custom_data_as()?;

    // The step failed (exit 1) in a pod of the test namespace ...
    ensure!(seen.pods_of(&data.run, "unit").len() == 1, "{:?}", seen.pods().keys());
    ensure!(data.steps.len() == 1, "{:?}", data.steps);
    ensure!(
        data.steps[0].status == "failed" && data.steps[0].exit_code == Some(1),
        "{:?}",
        data.steps[0]
    );
    // ... and its report came back with the workspace: the run names the failing case.
    ensure!(data.outcome == Some(Outcome::Failure), "{data:?}");
    let counts = &data.counts;
    ensure!(
        (counts.tests, counts.failures, counts.errors, counts.skipped) == (2, 1, 0, 0),
        "{counts:?}"
    );
    let case = data.failed_cases.first().context("no failed case")?;
    ensure!(case.name == "refuses_expired_cards", "{case:?}");
    ensure!(case.class.as_deref() == Some("checkout.Payment"), "{case:?}");
    ensure!(case.message.as_deref() == Some("card 04/21 accepted"), "{case:?}");
    nothing_left(&world.cluster.client()?, TEST_NAMESPACE).await?;
    stages.stop().await
}

// ---------------------------------------------------------------------------------------------
// The builder as a process of its own
// ---------------------------------------------------------------------------------------------

/// The builder's registry password and NATS password (from its environment): secrets a step
/// must never find.
const REGISTRY_PASSWORD: &str = "registry-pw-7c1e94d2";
const NATS_PASSWORD: &str = "nats-pw-3b8f05a6";

/// `target/debug/baton-builder` running with its own config file and environment, killed on drop.
struct BuilderProcess {
    config: PathBuf,
    log: PathBuf,
    port: u16,
    process: Option<Process>,
}

impl BuilderProcess {
    /// Writes the builder's config (NATS as user `baton-builder`, the registry as user
    /// `baton`, both passwords from the environment, steps `steps`) into `dir` and starts it.
    /// The nats-server of these tests requires no password: the builder holds and sends it all
    /// the same, which is what a step must not reach.
    async fn start(dir: &Path, nats: &NatsServer, world: &ExecutingCluster, steps: &str) -> Result<Self> {
        let port = free_port();
        let config = dir.join("builder.yaml");
        // The signing key beside the config, so a restarted builder finds it too.
        let key = dir.join("signing.pem");
        if !key.exists() {
            std::fs::copy(baton_tests::keys::SigningKeyFile::generate()?.path(), &key)?;
        }
        std::fs::write(
            &config,
            format!(
                "nats: {{url: '{}', user: baton-builder, password_env: BATON_NATS_PASSWORD}}\n\
                 http: {{listen: '127.0.0.1:{port}'}}\n\
                 runner: {{ack_wait: 10s, backoff_initial: 200ms, backoff_max: 2s}}\n\
                 shutdown: {{grace_period: 2s}}\n\
                 registry: {{address: '{}', insecure: true, username: baton, password_env: BATON_REGISTRY_PASSWORD}}\n\
                 signing: {{key_file: '{}'}}\n\
                 {}",
                nats.url(),
                world.registry.address(),
                key.display(),
                steps_section(steps)
            ),
        )?;
        let mut builder = Self {
            config,
            log: dir.join("builder.log"),
            port,
            process: None,
        };
        builder.spawn().await?;
        Ok(builder)
    }

    /// Starts the process (its log appended to across restarts) and waits until it is ready.
    async fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new(service_binary("baton-builder")?);
        command
            .arg("--config")
            .arg(&self.config)
            .env("BATON_NATS_PASSWORD", NATS_PASSWORD)
            .env("BATON_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
            .env(
                "RUST_LOG",
                "info,async_nats=warn,kube=warn,hyper=warn,h2=warn,tower=warn",
            );
        let mut process = Process::spawn("baton-builder", &mut command, &self.log, LogFile::Appended)?;
        let readyz = format!("http://127.0.0.1:{}/readyz", self.port);
        process
            .wait_ready_async(WAIT, POLL, async || match reqwest::get(&readyz).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("/readyz answered {}", response.status())),
                Err(error) => Err(error.to_string()),
            })
            .await?;
        self.process = Some(process);
        Ok(())
    }

    /// SIGKILL: no drain, no cleanup, as when its node dies.
    fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        baton_tests::process::log_tail(&self.log, 40)
    }
}

/// What a builder process runs against: a nats-server provisioned as the admin would before the
/// builder starts (its consumer redelivering after 10 s without progress), an executing cluster
/// where deploy/ gave the builder its rights, and a directory for the app's repository, the
/// builder's config and its log.
struct ProcessWorld {
    nats: NatsServer,
    js: jetstream::Context,
    world: ExecutingCluster,
    client: Client,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl ProcessWorld {
    async fn start() -> Result<Self> {
        // Built before any server runs, so the build has the cores.
        service_binary("baton-builder")?;
        let nats = NatsServer::start()?;
        let mut common = CommonSettings::default();
        common.runner.ack_wait = Duration::from_secs(10);
        nats.provision(&common).await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        let world = ExecutingCluster::start().await?;
        let client = world.cluster.client()?;
        let kubeconfig = deploy_step_runner(&world.cluster, "builder").await?;
        Ok(Self {
            nats,
            js,
            world,
            client,
            kubeconfig,
            dir: tempfile::tempdir()?,
        })
    }

    /// Starts the builder (instance `builder-0`, its workspace server on `workspace_port`),
    /// adding `kubernetes` (lines indented under `steps.kubernetes`) to its steps settings.
    async fn builder(&self, workspace_port: u16, kubernetes: &str) -> Result<BuilderProcess> {
        let steps = self.world.steps_yaml(&self.kubeconfig, "builder-0", workspace_port) + kubernetes;
        BuilderProcess::start(self.dir.path(), &self.nats, &self.world, &steps).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_killed_mid_step_deletes_its_pod_when_it_restarts_and_builds_again() -> Result<()> {
    let w = ProcessWorld::start().await?;
    let (js, client) = (&w.js, &w.client);
    // Long enough to be killed in, short enough for the second attempt to end.
    let pipeline = "build:\n  steps:\n    - name: slow\n      run: 'echo started; sleep 30; echo done > done.txt'\n      \
                    timeout: 120s\nimage:\n  base: scratch\n  add:\n    - {from: done.txt, to: /done.txt}\n";
    let (url, sha) = shop(w.dir.path(), &[(".baton.yaml", pipeline)])?;
    let mut builder = w.builder(free_port(), "").await?;
    let seen = Seen::start(client, BUILD_NAMESPACE);
    let release = push(js, &url, &sha, "killed").await?;

    // Its step runs in a pod.
    let pods: Api<Pod> = Api::namespaced(client.clone(), BUILD_NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), BUILD_NAMESPACE);
    let steps_only = ListParams::default().labels("baton.dev/component=step");
    let first = eventually_every(POLL, WAIT, "the step's container to run", async || {
        let running = pods.list(&steps_only).await?.items.into_iter().find(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.name == "step" && c.state.as_ref().is_some_and(|s| s.running.is_some()))
                })
        });
        Ok(running.ok_or_else(|| format!("not yet; builder log:\n{}", builder.log_tail())))
    })
    .await?;
    let name = first.metadata.name.clone().context("a pod without a name")?;
    ensure!(secrets.get_opt(&name).await?.is_some(), "the pod's Secret is missing");

    // Killed: nothing deletes the pod, which runs on.
    builder.kill()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let orphan = pods.get(&name).await?;
    ensure!(
        orphan.metadata.deletion_timestamp.is_none(),
        "deleted without the builder"
    );
    ensure!(
        orphan.status.and_then(|s| s.phase).as_deref() == Some("Running"),
        "the orphan stopped by itself"
    );

    // Started again as the same instance: it deletes what it left, pod and Secret.
    builder.spawn().await?;
    eventually_every(
        POLL,
        WAIT,
        "the orphaned pod and its Secret to be deleted",
        async || {
            let pod = pods.get_opt(&name).await?;
            let secret = secrets.get_opt(&name).await?;
            Ok(if pod.is_none() && secret.is_none() {
                Ok(())
            } else {
                Err(format!(
                    "pod left: {}, Secret left: {}; builder log:\n{}",
                    pod.is_some(),
                    secret.is_some(),
                    builder.log_tail()
                ))
            })
        },
    )
    .await?;

    // NATS redelivers the push: the build runs again, in a new pod, to its end.
    let build = build_finished(js, &release).await?;
    ensure!(
        build.outcome == Some(Outcome::Success),
        "{build:?}\n{}",
        builder.log_tail()
    );
    ensure!(build.image.is_some(), "{build:?}");
    let attempts = seen.pods_of(&build.run, "slow");
    let names: Vec<_> = attempts.iter().filter_map(|p| p.metadata.name.clone()).collect();
    ensure!(names.len() == 2 && names.contains(&name), "the step's pods: {names:?}");
    nothing_left(client, BUILD_NAMESPACE).await
}

/// What the hostile step prints: `token dir:` and what `ls` says of the ServiceAccount token's
/// directory; `== <what>` and then `od`'s hex of its environment and of every process's
/// environment and command line it can read; `found: <file>` for each file under `/` (but
/// `/proc`, `/sys`, `/dev`) holding one of the builder's passwords or the control value; `hex:`
/// and every 64-hex-digit string in those files (a workspace token's form), its digits mapped to
/// letters so no log masking can hide it. `/tmp/control` and `/tmp/control-hex` are controls:
/// a scan that finds them finds what it looks for. The passwords and the control value are
/// written in halves, so neither the step's command line nor the commit holds them.
fn hostile_script() -> String {
    let (registry_a, registry_b) = REGISTRY_PASSWORD.split_at(6);
    let (nats_a, nats_b) = NATS_PASSWORD.split_at(6);
    format!(
        r#"sleep 2
echo "token dir: $(ls /var/run/secrets/kubernetes.io 2>&1)"
echo "== env"; env | od -An -v -tx1
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do echo "== $f"; od -An -v -tx1 "$f" 2>&1; done
printf '%s%s\n' '{registry_a}' '{registry_b}' '{nats_a}' '{nats_b}' 'control-' 'value-0451' > /tmp/patterns
printf '%s%s\n' 'control-' 'value-0451' > /tmp/control
echo {CONTROL_HEX} > /tmp/control-hex
for d in /*; do
  case "$d" in /proc|/sys|/dev) continue;; esac
  grep -rlF -f /tmp/patterns "$d" 2>/dev/null | sed 's/^/found: /'
  grep -rhoE '[0-9a-f]{{64}}' "$d" 2>/dev/null | tr 0-9a-f a-p | sed 's/^/hex: /'
done
echo scanned
"#
    )
}

const CONTROL_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A 64-hex-digit string as the hostile step prints it (`tr 0-9a-f a-p`).
fn as_letters(hex: &str) -> String {
    hex.chars()
        .map(|c| match c.to_digit(16) {
            Some(d) => char::from(b'a' + u8::try_from(d).unwrap_or(0)),
            None => c,
        })
        .collect()
}

/// The bytes of every `od` line of `log` (lines of two-digit hex numbers), concatenated.
fn dumped_bytes(log: &str) -> Vec<u8> {
    log.lines()
        .filter(|line| {
            !line.trim().is_empty()
                && line
                    .split_whitespace()
                    .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .flat_map(|line| {
            line.split_whitespace()
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_step_finds_no_token_nor_secret_and_its_egress_is_denied_by_policy() -> Result<()> {
    let w = ProcessWorld::start().await?;
    let (js, client) = (&w.js, &w.client);
    let indented: String = hostile_script().lines().map(|l| format!("        {l}\n")).collect();
    let pipeline = format!(
        "build:\n  steps:\n    - name: hostile\n      run: |\n{indented}    - name: online\n      network: true\n      run: 'sleep 3'\n"
    );
    let (url, sha) = shop(w.dir.path(), &[(".baton.yaml", &pipeline)])?;
    let workspace_port = free_port();
    // Where the builder's pods are, as production's config says (its overlay's
    // steps.kubernetes.service): the workspace server's egress rule is made of it.
    let production = deploy_objects("overlays/production/builder.yaml", None)?;
    let service = &production.first().context("no production config")?["steps"]["kubernetes"]["service"];
    ensure!(
        service.is_object(),
        "production's builder names no service: {production:?}"
    );
    let builder = w.builder(workspace_port, &format!("  service: {service}\n")).await?;
    let seen = Seen::start(client, BUILD_NAMESPACE);
    let release = push(js, &url, &sha, "hostile").await?;
    let build = build_finished(js, &release).await?;
    ensure!(
        build.outcome == Some(Outcome::Success),
        "{build:?}\n{}",
        builder.log_tail()
    );
    let log = whole_log(js, &build.steps[0]).await?;
    ensure!(log.trim_end().ends_with("scanned"), "the scan did not finish:\n{log}");

    // No ServiceAccount token.
    ensure!(
        log.contains("token dir: ls: /var/run/secrets/kubernetes.io: No such file or directory"),
        "{log}"
    );
    // Its own pod's workspace token, from the pod's Secret while it ran.
    let hostile = seen.pods_of(&build.run, "hostile");
    let [pod] = hostile.as_slice() else {
        anyhow::bail!("pods of the step: {:?}", seen.pods().keys());
    };
    let pod_name = pod.metadata.name.clone().context("a pod without a name")?;
    let secret = seen.secret(&pod_name).context("the pod's Secret was not seen")?;
    let token = String::from_utf8(secret.data.unwrap_or_default()["BATON_WORKSPACE_TOKEN"].0.clone())?;
    ensure!(token.len() == 64, "{token}");

    // The pod hands that token to its helper containers only.
    let spec = pod.spec.clone().context("a pod without a spec")?;
    let holders: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.env.iter().flatten().any(|e| e.name == "BATON_WORKSPACE_TOKEN"))
        .map(|c| c.name.as_str())
        .collect();
    ensure!(holders == ["workspace-in", "workspace-out"], "{holders:?}");

    // Environments and command lines: the controls are there, the secrets are not.
    let dumped = dumped_bytes(&log);
    ensure!(
        holds(&dumped, "HOME=/workspace") && holds(&dumped, "echo \"token dir: "),
        "the dump lacks the step's own env and command line:\n{log}"
    );
    for (what, secret) in [
        ("the registry password", REGISTRY_PASSWORD),
        ("the NATS password", NATS_PASSWORD),
        ("its pod's workspace token", token.as_str()),
        ("a Kubernetes variable", "KUBERNETES_"),
    ] {
        ensure!(!holds(&dumped, secret), "the step read {what}:\n{log}");
    }
    // Files: only the controls (and the scan's own pattern file) hold what was looked for.
    let mut found: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("found: ")).collect();
    found.sort_unstable();
    ensure!(found == ["/tmp/control", "/tmp/patterns"], "{found:?}");
    let hex: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("hex: ")).collect();
    ensure!(hex.contains(&as_letters(CONTROL_HEX).as_str()), "{hex:?}");
    ensure!(
        !hex.contains(&as_letters(&token).as_str()),
        "a file holds the workspace token"
    );

    // Egress: asserted on the policies' content, since the node simulator does not enforce
    // NetworkPolicies (its pods share the host's network).
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), BUILD_NAMESPACE);
    let deny = serde_json::to_value(policies.get("baton-default-deny").await?.spec)?;
    ensure!(deny["podSelector"] == json!({}), "not every pod: {deny:#}");
    ensure!(deny["policyTypes"] == json!(["Ingress", "Egress"]), "{deny:#}");
    ensure!(deny.get("ingress").is_none(), "ingress allowed: {deny:#}");
    let egress = deny["egress"].as_array().context("no egress rules")?;
    ensure!(egress.len() == 2, "{deny:#}");
    ensure!(
        egress[0]["to"] == json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}])
            && egress[0]["ports"] == json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]),
        "the first rule is not DNS: {deny:#}"
    );
    ensure!(
        egress[1]["ports"] == json!([{"protocol": "TCP", "port": workspace_port}]),
        "the second rule is not the workspace server's port: {deny:#}"
    );
    // ... and its peers are the builder's pods as deploy/ runs them: the selectors match the
    // labels of namespace `baton` as the apiserver holds it (from deploy/base/namespace.yaml)
    // and of the pods of deploy/base's builder Deployment.
    let peer = &egress[1]["to"][0];
    let baton = Api::<Namespace>::all(client.clone()).get(SERVICES_NAMESPACE).await?;
    let deployment = deploy_objects("base/services/builder.yaml", Some("Deployment"))?;
    let deployment = deployment.first().context("no builder Deployment in deploy/base")?;
    for (selector, labels) in [
        ("namespaceSelector", serde_json::to_value(baton.metadata.labels)?),
        (
            "podSelector",
            deployment["spec"]["template"]["metadata"]["labels"].clone(),
        ),
    ] {
        let wanted = peer[selector]["matchLabels"].as_object().context("no matchLabels")?;
        ensure!(
            !wanted.is_empty() && wanted.iter().all(|(key, value)| labels[key] == *value),
            "{selector} {wanted:?} does not select {labels}"
        );
    }
    let open = serde_json::to_value(policies.get("baton-step-network").await?.spec)?;
    ensure!(
        open["podSelector"] == json!({"matchLabels": {"baton.dev/network": "true"}}),
        "{open:#}"
    );
    // Only the `network: true` step's pod carries that label.
    let network_label = |pod: &Pod| {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("baton.dev/network").cloned())
    };
    ensure!(network_label(pod).is_none(), "the hostile step's pod is open");
    let online = seen.pods_of(&build.run, "online");
    let [online] = online.as_slice() else {
        anyhow::bail!("pods of the online step: {:?}", seen.pods().keys());
    };
    ensure!(
        network_label(online).as_deref() == Some("true"),
        "{:?}",
        online.metadata.labels
    );
    nothing_left(client, BUILD_NAMESPACE).await
}
