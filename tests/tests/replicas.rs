//! Multi-replica safety (`tests/tests/replicas.rs`): three replicas of every service, each a real
//! process (`target/debug/baton-listener`, `baton-builder`, `baton-tester`, `baton-promoter`,
//! `baton-deployer` with its own `--config` file and operations port) against one nats-server,
//! with a real registry, real git repos and a real Kubernetes control plane with simulated nodes.
//!
//! - **Work is shared, each event handled once**: a burst of signed pushes spread over the three
//!   listeners; every stage's replicas together handle each event they consume exactly once
//!   (their own `/metrics` counters, summed, equal the events on the stream), more than one
//!   replica of every stage did some of it, and the stream holds one build per push, one test
//!   run per artifact, one promotion per release and environment, one verdict per promotion.
//! - **The environment lock holds**: promoter replicas racing on one environment make a clean
//!   fast-forward chain of commits, one per promotion, and no two promotions' critical sections
//!   (from the time its `.baton-release.yaml` records to its `environment.modified`) overlap.
//! - **Chaos**: 100 releases while a killer SIGKILLs random replicas of every service and starts
//!   them again; afterwards nothing is lost (every release reaches a final state, see
//!   [`Ledger::unfinished`]) and nothing is duplicated, the cluster runs the last promotion's
//!   digest in every environment, and the config repo's history is exactly the promotions.
//!
//! The service binaries are built (or found up to date) by the harness
//! ([`service_binary`]: `cargo build --bins` of the service packages) into the target directory
//! this suite runs from, so the processes always run the current code.

#![allow(
    clippy::print_stdout,
    reason = "the chaos suite prints its seed and what it killed, for a failure to be replayed"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use async_nats::jetstream;
use baton_demo::{DEPLOYMENT, SAMPLE_PIPELINE, write};
use baton_kit::log::{self, Query, Record};
use baton_schemas::EventType;
use baton_schemas::payloads::Outcome;
use baton_schemas::release::{DeploymentData, PromotionAction, PromotionData, RELEASE_FILE, ReleaseFile};
use baton_tests::kube::{KubeCluster, NodeSimulator};
use baton_tests::process::{self, LogFile, Process, service_binary};
use baton_tests::registry::RegistryServer;
use baton_tests::verdict::Verdict;
use baton_tests::{NatsServer, eventually_every, free_port, git, repos};
use hmac::{Hmac, Mac};
use k8s_openapi::api::apps::v1::Deployment;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::Sha256;

const APP: &str = "acme/shop";
const SECRET: &str = "replicas-webhook-secret";
const REPLICAS: usize = 3;
/// The environments every release goes through, both automatic.
const ENVIRONMENTS: [(&str, &str); 2] = [("staging", "shop-staging"), ("production", "shop-production")];
/// The longest a suite waits for the pipeline to settle: a deadline, not a speed assertion.
const SETTLE_DEADLINE: Duration = Duration::from_secs(240);

/// A deployment verdict: what the deployer reports for a promotion when it is done with it.
const VERDICTS: [EventType; 5] = [
    EventType::ServiceDeployed,
    EventType::ServiceUpgraded,
    EventType::ServiceRolledBack,
    EventType::DeploymentFailed,
    EventType::DeploymentSuperseded,
];

// ---------------------------------------------------------------------------------------------
// Service processes
// ---------------------------------------------------------------------------------------------

/// A Baton service binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Service {
    Listener,
    Builder,
    Tester,
    Promoter,
    Deployer,
}

impl Service {
    const ALL: [Self; 5] = [
        Self::Listener,
        Self::Builder,
        Self::Tester,
        Self::Promoter,
        Self::Deployer,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::Builder => "builder",
            Self::Tester => "tester",
            Self::Promoter => "promoter",
            Self::Deployer => "deployer",
        }
    }

    /// The event types its stage consumes (the listener consumes none).
    fn consumes(self) -> &'static [EventType] {
        match self {
            Self::Listener => &[],
            Self::Builder => &[EventType::ChangeMerged],
            Self::Tester => &[EventType::ArtifactPublished],
            Self::Promoter => &[
                EventType::TestSuiteRunFinished,
                EventType::ServiceDeployed,
                EventType::ServiceUpgraded,
                EventType::ServiceRolledBack,
                EventType::DeploymentFailed,
            ],
            Self::Deployer => &[EventType::EnvironmentModified],
        }
    }
}

/// One replica: a service process with its config file and operations port, which survive
/// kills, so a restarted replica is the same pod coming back.
#[derive(Debug)]
struct Replica {
    service: Service,
    index: usize,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// The running process; `None` while the replica is down.
    process: Option<Process>,
    /// How many times it was SIGKILLed.
    kills: u32,
}

impl Replica {
    /// Starts the replica's process; its output is appended to its log across restarts.
    fn spawn(&mut self) -> Result<()> {
        let binary = service_binary(&format!("baton-{}", self.service.name()))?;
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                "info,async_nats=warn,kube=warn,hyper=warn,h2=warn,tower=warn",
            );
        self.process = Some(Process::spawn(
            self.label(),
            &mut command,
            &self.log,
            LogFile::Appended,
        )?);
        Ok(())
    }

    /// SIGKILL, like an OOM kill or a node loss: no drain, no goodbye.
    fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
            self.kills += 1;
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn label(&self) -> String {
        format!("{}-{}", self.service.name(), self.index)
    }

    /// The last `lines` lines of its log, across restarts.
    fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log, lines)
    }
}

/// Every replica of every service.
#[derive(Debug)]
struct Fleet {
    replicas: Vec<Replica>,
    http: reqwest::Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            let _ = replica.kill();
        }
    }
}

impl Fleet {
    fn of(&self, service: Service) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(move |r| r.service == service)
    }

    /// Waits until every replica answers `/readyz` with 200.
    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for replica in &self.replicas {
            let timeout = deadline.saturating_duration_since(Instant::now());
            let what = format!("{} to become ready", replica.label());
            eventually_every(Duration::from_millis(100), timeout, &what, async || {
                let ready = self
                    .http
                    .get(replica.url("/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                Ok(if ready {
                    Ok(())
                } else {
                    Err(format!("not ready; its log:\n{}", replica.log_tail(30)))
                })
            })
            .await?;
        }
        Ok(())
    }

    /// `baton_events_total{outcome="handled"}` of one replica, by event type.
    async fn handled(&self, replica: &Replica) -> Result<HashMap<String, u64>> {
        let text = self.http.get(replica.url("/metrics")).send().await?.text().await?;
        let mut out = HashMap::new();
        for line in text.lines().filter(|l| l.starts_with("baton_events_total{")) {
            let Some((labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_owned)
            };
            if label("outcome").as_deref() == Some("handled")
                && let Some(ty) = label("event_type")
            {
                *out.entry(ty).or_default() += value.parse::<u64>()?;
            }
        }
        Ok(out)
    }

    fn log_tails(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {} (killed {}x)\n{}", r.label(), r.kills, r.log_tail(8)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// The world: servers, repos, the fleet
// ---------------------------------------------------------------------------------------------

struct World {
    nats: NatsServer,
    js: jetstream::Context,
    dir: tempfile::TempDir,
    fleet: Fleet,
    // Held for their lifetime: the registry the builders push to, the cluster and its nodes.
    _registry: Option<RegistryServer>,
    cluster: Option<KubeCluster>,
    _nodes: Option<NodeSimulator>,
    pushes: u32,
}

impl World {
    /// NATS, git repos (a config repo with `environments`, the app), and — with `pipeline` — a
    /// registry and a Kubernetes control plane with two simulated nodes.
    async fn start(environments: &str, pipeline: bool) -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        // Build the binaries before any server runs, so the build has both cores.
        service_binary("baton-listener")?;
        let nats = NatsServer::start()?;
        // What the admin provisions before the fleet starts, tuned as every replica's runner
        // (the `runner` section `start_fleet` writes).
        let mut common = baton_schemas::config::CommonSettings::default();
        common.runner.concurrency = 2;
        common.runner.ack_wait = Duration::from_secs(10);
        nats.provision(&common).await?;
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client);
        let dir = tempfile::Builder::new().prefix("baton-replicas-").tempdir()?;
        let root = dir.path();
        repos::config_repo(root, "config-seed", environments)?;
        git(root, &["init", "-q", "--bare", "-b", "main", "shop.git"])?;
        git(root, &["clone", "-q", "shop.git", "shop"])?;
        let shop = root.join("shop");
        write(&shop.join(".baton.yaml"), SAMPLE_PIPELINE)?;
        write(&shop.join("src/greeting.txt"), "hello 0\n")?;
        // The demo's Deployment with one replica, so a rollout is quick.
        assert!(
            DEPLOYMENT.contains("replicas: 2\n"),
            "the demo's Deployment changed its replicas"
        );
        write(
            &shop.join("deploy/deployment.yaml"),
            &DEPLOYMENT.replace("replicas: 2\n", "replicas: 1\n"),
        )?;
        git(&shop, &["add", "-A"])?;
        git(&shop, &["commit", "-qm", "the shop"])?;
        git(&shop, &["push", "-q", "origin", "main"])?;
        let (registry, cluster, nodes) = if pipeline {
            let registry = RegistryServer::start()?;
            let cluster = KubeCluster::start().await?;
            let nodes = cluster.simulate_nodes(2).await?;
            (Some(registry), Some(cluster), Some(nodes))
        } else {
            (None, None, None)
        };
        Ok(Self {
            nats,
            js,
            dir,
            fleet: Fleet {
                replicas: Vec::new(),
                http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            },
            _registry: registry,
            cluster,
            _nodes: nodes,
            pushes: 0,
        })
    }

    fn config_repo(&self) -> PathBuf {
        self.dir.path().join("config.git")
    }

    /// Starts `REPLICAS` processes of each of `services`, each with its own config file, port
    /// and cache directory, and waits until all are ready.
    async fn start_fleet(&mut self, services: &[Service]) -> Result<()> {
        let root = self.dir.path().to_owned();
        for &service in services {
            for index in 0..REPLICAS {
                let port = free_port();
                let cache = root.join("cache").join(format!("{}-{index}", service.name()));
                let own = match service {
                    Service::Listener => format!(
                        "repositories:\n  - {{name: {APP}, provider: generic, secret_env: SHOP_SECRET, branches: [main]}}\n"
                    ),
                    Service::Builder => format!(
                        "registry: {{address: '{}', insecure: true, repository_prefix: baton}}\nsource: {{cache_dir: '{}'}}\nsigning: {{key_file: '{}'}}\n",
                        self._registry
                            .as_ref()
                            .context("the builder needs the registry")?
                            .address(),
                        cache.display(),
                        signing_key(&root, "builder")?.display()
                    ),
                    Service::Tester => match &self._registry {
                        Some(registry) => format!(
                            "source: {{cache_dir: '{}'}}\nregistry: {{address: '{}', insecure: true}}\nsigning: {{key_file: '{}'}}\n",
                            cache.display(),
                            registry.address(),
                            signing_key(&root, "tester")?.display()
                        ),
                        // No registry, so no image to attest.
                        None => format!(
                            "source: {{cache_dir: '{}'}}\nsigning: {{enabled: false}}\n",
                            cache.display()
                        ),
                    },
                    Service::Promoter => format!(
                        "config_repo: {{url: 'file://{}'}}\nsource: {{cache_dir: '{}'}}\nlock_lease: 5s\nlock_wait: 20s\n",
                        self.config_repo().display(),
                        cache.display()
                    ),
                    Service::Deployer => format!(
                        "kubeconfig: '{}'\nsource: {{cache_dir: '{}'}}\npoll_interval: 200ms\nlock_lease: 5s\n",
                        self.cluster
                            .as_ref()
                            .context("the deployer needs the cluster")?
                            .kubeconfig_path()
                            .display(),
                        cache.display()
                    ),
                };
                // Short redelivery and lease times keep a killed replica's work from waiting long.
                let yaml = format!(
                    "nats: {{url: '{}'}}\nhttp: {{listen: '127.0.0.1:{port}'}}\nrunner: {{concurrency: 2, ack_wait: 10s, backoff_initial: 200ms, backoff_max: 2s}}\nshutdown: {{grace_period: 2s}}\n{own}",
                    self.nats.url()
                );
                let config = root.join("configs").join(format!("{}-{index}.yaml", service.name()));
                write(&config, &yaml)?;
                let mut replica = Replica {
                    service,
                    index,
                    port,
                    config,
                    log: root.join("logs").join(format!("{}-{index}.log", service.name())),
                    env: vec![("SHOP_SECRET".to_owned(), SECRET.to_owned())],
                    process: None,
                    kills: 0,
                };
                std::fs::create_dir_all(root.join("logs"))?;
                replica.spawn()?;
                self.fleet.replicas.push(replica);
            }
        }
        self.fleet.wait_ready().await
    }

    /// Commits a new greeting to the app, pushes it, and sends the signed webhook a git host
    /// would to a listener replica — the next one on a refused connection or a 5xx, with the
    /// same delivery id, as a git host redelivers. Returns the release id.
    async fn push(&mut self) -> Result<String> {
        self.pushes += 1;
        let n = self.pushes;
        let (body, _) = baton_tests::push::greeting_pushed(self.dir.path(), APP, n)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes())?;
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let listeners: Vec<u16> = self.fleet.of(Service::Listener).map(|r| r.port).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempt = n as usize;
        loop {
            let port = listeners[attempt % listeners.len()];
            attempt += 1;
            let sent = self
                .fleet
                .http
                .post(format!("http://127.0.0.1:{port}/webhooks/generic"))
                .header("Content-Type", "application/json")
                .header("X-Baton-Delivery", format!("push-{n}"))
                .header("X-Baton-Signature", &signature)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    let answer: serde_json::Value = response.json().await?;
                    return Ok(answer["accepted"][0]["release"]
                        .as_str()
                        .context("the listener names the release")?
                        .to_owned());
                }
                Ok(response) if response.status().is_client_error() => {
                    bail!("the listener refused push {n}: {}", response.text().await?)
                }
                // Down (killed) or 5xx: the git host tries again.
                _ => {
                    ensure!(Instant::now() < deadline, "no listener took push {n}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn ledger(&self) -> Result<Ledger> {
        Ledger::read(&self.js, &self.config_repo()).await
    }

    /// Waits until every release reached a final state and every stage's consumer has nothing
    /// pending or unacknowledged (so no late redelivery can still add an event).
    async fn settle(&self, releases: &[String]) -> Result<Ledger> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let ledger = self.ledger().await?;
            let unfinished = ledger.unfinished(releases)?;
            if unfinished.is_empty() && self.consumers_idle().await? {
                return Ok(ledger);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} of {} releases did not reach a final state: {:#?}\ndead letters: {:#?}\n{}",
                    unfinished.len(),
                    releases.len(),
                    unfinished.iter().take(10).collect::<Vec<_>>(),
                    self.dead_letters().await?,
                    self.fleet.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether every durable consumer of the fleet has delivered and seen acknowledged all.
    async fn consumers_idle(&self) -> Result<bool> {
        let stream = self.js.get_stream("BATON_EVENTS").await?;
        for service in Service::ALL.iter().filter(|s| !s.consumes().is_empty()) {
            if self.fleet.of(*service).next().is_none() {
                continue;
            }
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_consumer(service.name())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = consumer.info().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn dead_letters(&self) -> Result<Vec<String>> {
        let mut stream = self.js.get_stream("BATON_DEADLETTER").await?;
        let n = stream.info().await?.state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=n {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let header = |h: &str| m.headers.get(h).map(|v| v.as_str().to_owned()).unwrap_or_default();
                out.push(format!(
                    "{} {}: {}",
                    header(baton_kit::runner::DEADLETTER_STAGE),
                    header(baton_kit::runner::DEADLETTER_SUBJECT),
                    header(baton_kit::runner::DEADLETTER_REASON)
                ));
            }
        }
        Ok(out)
    }

    /// The image of the app's Deployment in `namespace`.
    async fn image_in(&self, namespace: &str) -> Result<String> {
        let client = self.cluster.as_ref().context("no cluster")?.client()?;
        let deployment = kube::Api::<Deployment>::namespaced(client, namespace)
            .get("shop")
            .await?;
        let spec = deployment
            .spec
            .and_then(|s| s.template.spec)
            .context("a pod template")?;
        Ok(spec.containers[0].image.clone().unwrap_or_default())
    }
}

fn environments_yaml() -> String {
    let mut yaml = String::from("environments:\n");
    for (name, namespace) in ENVIRONMENTS {
        yaml.push_str(&format!("  - {{name: {name}, namespace: {namespace}, policy: auto}}\n"));
    }
    yaml
}

// ---------------------------------------------------------------------------------------------
// The ledger: what the stream and the config repo say happened
// ---------------------------------------------------------------------------------------------

/// The outcome of a build or test run (`customData.outcome`).
fn outcome(record: &Record) -> String {
    record
        .event
        .custom_data
        .as_ref()
        .and_then(|d| d["outcome"].as_str())
        .unwrap_or("none")
        .to_owned()
}

/// One promotion, as announced and as committed.
#[derive(Debug, Clone)]
struct Promotion {
    record: Record,
    data: PromotionData,
    /// Its commit's position in the config repo's first-parent history (0 = the seed).
    position: Option<usize>,
}

/// Everything on the events stream, and the config repo's history.
struct Ledger {
    records: Vec<Record>,
    /// The config repo's commits, oldest first, as `[commit, parent]` (the seed has none).
    history: Vec<Vec<String>>,
    promotions: Vec<Promotion>,
}

impl Ledger {
    async fn read(js: &jetstream::Context, config_repo: &Path) -> Result<Self> {
        let mut records = Vec::new();
        log::read(js, "BATON_EVENTS", &Query::default(), |r| {
            records.push(r);
            true
        })
        .await?;
        let log = git(config_repo, &["rev-list", "--reverse", "--parents", "main"])?;
        let history: Vec<Vec<String>> = log.lines().map(|l| l.split(' ').map(str::to_owned).collect()).collect();
        let positions: HashMap<&str, usize> = history.iter().enumerate().map(|(i, c)| (c[0].as_str(), i)).collect();
        let mut promotions = Vec::new();
        for record in records
            .iter()
            .filter(|r| r.event_type() == Some(EventType::EnvironmentModified))
        {
            let data: PromotionData = record.event.custom_data_as()?;
            let position = positions.get(data.config_commit.as_str()).copied();
            promotions.push(Promotion {
                record: record.clone(),
                data,
                position,
            });
        }
        Ok(Self {
            records,
            history,
            promotions,
        })
    }

    fn of<'a>(&'a self, release: &'a str, ty: EventType) -> impl Iterator<Item = &'a Record> + 'a {
        self.records
            .iter()
            .filter(move |r| r.chain() == Some(release) && r.event_type() == Some(ty))
    }

    fn count(&self, ty: EventType) -> usize {
        self.records.iter().filter(|r| r.event_type() == Some(ty)).count()
    }

    fn promotions_of<'a>(&'a self, release: &'a str, env: &'a str) -> impl Iterator<Item = &'a Promotion> + 'a {
        self.promotions
            .iter()
            .filter(move |p| p.data.release.release == release && p.data.environment == env)
    }

    /// The deployer's verdicts about `promotion`.
    fn verdicts(&self, promotion: &str) -> Vec<(EventType, DeploymentData)> {
        self.records
            .iter()
            .filter_map(|r| {
                let ty = r.event_type().filter(|t| VERDICTS.contains(t))?;
                let data: DeploymentData = r.event.custom_data_as().ok()?;
                (data.promotion == promotion).then_some((ty, data))
            })
            .collect()
    }

    /// Whether a later promotion of `env` than `promotion` was committed.
    fn superseded_in(&self, env: &str, promotion: &Promotion) -> bool {
        self.promotions.iter().any(|p| {
            p.data.environment == env && p.data.promotion != promotion.data.promotion && p.position > promotion.position
        })
    }

    /// The releases that have not reached a final state yet, each with what it waits for.
    ///
    /// A release is **final** when, following docs/events.md from its `change.merged`:
    /// - its build or its tests did not succeed (`build.finished` / `testsuiterun.finished` with
    ///   another outcome: stopped with a reason), or it was held (`baton-promotion.held`); or
    /// - it became a release (`baton-release.created`), was promoted into the first environment
    ///   (`environment.modified`), and for every environment it was promoted into the deployer
    ///   gave its verdict (`service.deployed`/`upgraded`/`rolledback`, `baton-deployment.failed`
    ///   or `baton-deployment.superseded`); and after a healthy verdict it was promoted into the
    ///   next environment, unless the environment had meanwhile been given a later promotion (the
    ///   promoter moves only the environment's current release on) or it is the last one.
    fn unfinished(&self, releases: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        'releases: for release in releases {
            let waiting = |what: &str| format!("{release}: waiting for {what}");
            let Some(build) = self.of(release, EventType::BuildFinished).next() else {
                out.push(waiting("build.finished"));
                continue;
            };
            if outcome(build) != "success" {
                continue;
            }
            let Some(test) = self.of(release, EventType::TestSuiteRunFinished).next() else {
                out.push(waiting("testsuiterun.finished"));
                continue;
            };
            if outcome(test) != "success" {
                continue;
            }
            if self.of(release, EventType::PromotionHeld).next().is_some() {
                continue;
            }
            if self.of(release, EventType::ReleaseCreated).next().is_none() {
                out.push(waiting("baton-release.created"));
                continue;
            }
            for (i, (env, _)) in ENVIRONMENTS.iter().enumerate() {
                let Some(promotion) = self.promotions_of(release, env).next() else {
                    let superseded_before = i > 0
                        && self
                            .promotions_of(release, ENVIRONMENTS[i - 1].0)
                            .next()
                            .is_some_and(|p| self.superseded_in(ENVIRONMENTS[i - 1].0, p));
                    if !superseded_before {
                        out.push(waiting(&format!("its promotion into {env}")));
                    }
                    continue 'releases;
                };
                let verdicts = self.verdicts(&promotion.data.promotion);
                match verdicts.first().map(|(ty, _)| *ty) {
                    None => {
                        out.push(waiting(&format!("the deployer's verdict in {env}")));
                        continue 'releases;
                    }
                    Some(EventType::ServiceDeployed | EventType::ServiceUpgraded) => {}
                    Some(_) => continue 'releases,
                }
            }
        }
        Ok(out)
    }

    /// Nothing duplicated, nothing failed: the assertions every suite here makes once settled.
    fn assert_exactly_once(&self, releases: &[String]) -> Result<()> {
        let mut ids = HashSet::new();
        for r in &self.records {
            ensure!(
                ids.insert(r.event.context.id.as_str()),
                "event id {} is twice on the stream",
                r.event.context.id
            );
        }
        let started: HashSet<&str> = releases.iter().map(String::as_str).collect();
        ensure!(started.len() == releases.len(), "every push started its own release");
        for release in releases {
            for ty in [
                EventType::ChangeMerged,
                EventType::BuildFinished,
                EventType::ArtifactPublished,
                EventType::TestSuiteRunFinished,
                EventType::ReleaseCreated,
            ] {
                let n = self.of(release, ty).count();
                ensure!(n == 1, "release {release}: {n} {ty} events, expected exactly one");
            }
            for ty in [EventType::BuildFinished, EventType::TestSuiteRunFinished] {
                let record = self.of(release, ty).next().context("one")?;
                let outcome = outcome(record);
                ensure!(
                    outcome == "success",
                    "release {release}: {ty} outcome {outcome}: {}",
                    record
                        .event
                        .custom_data
                        .as_ref()
                        .map(|d| d["reason"].clone())
                        .unwrap_or_default()
                );
            }
            for (env, _) in ENVIRONMENTS {
                let n = self.promotions_of(release, env).count();
                ensure!(n <= 1, "release {release} was promoted {n} times into {env}");
            }
        }
        // Nothing but these releases went through, and nothing went wrong.
        ensure!(
            self.count(EventType::ChangeMerged) == releases.len(),
            "{} pushes on the stream for {} webhooks",
            self.count(EventType::ChangeMerged),
            releases.len()
        );
        // The one hold expected: pushes follow each other on one branch, and a release whose
        // tests finished after a newer commit's promotion is older than what runs.
        for r in self
            .records
            .iter()
            .filter(|r| r.event_type() == Some(EventType::PromotionHeld))
        {
            let reason = r.event.subject.content["reason"].as_str().unwrap_or_default();
            ensure!(
                reason.contains("automation never moves an environment back"),
                "an unexpected hold: {reason}"
            );
        }
        for ty in [
            EventType::DeploymentFailed,
            EventType::ReleaseQuarantined,
            EventType::ServiceRolledBack,
        ] {
            ensure!(
                self.count(ty) == 0,
                "{} {ty} events: {:#?}",
                self.count(ty),
                self.records
                    .iter()
                    .filter(|r| r.event_type() == Some(ty))
                    .map(|r| r.event.custom_data.clone())
                    .collect::<Vec<_>>()
            );
        }
        for p in &self.promotions {
            ensure!(
                p.data.action == PromotionAction::Promote,
                "an unexpected {:?}",
                p.data.action
            );
            let verdicts = self.verdicts(&p.data.promotion);
            ensure!(
                verdicts.len() == 1,
                "promotion {} of release {} into {} has {} verdicts: {:?}",
                p.data.promotion,
                p.data.release.release,
                p.data.environment,
                verdicts.len(),
                verdicts.iter().map(|(t, _)| t).collect::<Vec<_>>()
            );
            if verdicts[0].0 == EventType::DeploymentSuperseded {
                ensure!(
                    self.superseded_in(&p.data.environment, p),
                    "promotion {} was reported superseded, but no later promotion of {} exists",
                    p.data.promotion,
                    p.data.environment
                );
            }
        }
        self.assert_history_is_the_promotions()
    }

    /// The config repo: a clean fast-forward chain from the seed, one commit per promotion, each
    /// announced by exactly one `environment.modified`.
    fn assert_history_is_the_promotions(&self) -> Result<()> {
        ensure!(self.history[0].len() == 1, "the seed commit has no parent");
        for pair in self.history.windows(2) {
            ensure!(
                pair[1].len() == 2 && pair[1][1] == pair[0][0],
                "commit {} is not the only child of {} (a merge or a fork): {:?}",
                pair[1][0],
                pair[0][0],
                pair[1]
            );
        }
        let committed: Vec<&str> = self.history[1..].iter().map(|c| c[0].as_str()).collect();
        let mut announced: Vec<&str> = self.promotions.iter().map(|p| p.data.config_commit.as_str()).collect();
        let mut in_order = committed.clone();
        announced.sort_unstable();
        in_order.sort_unstable();
        ensure!(
            announced == in_order,
            "{} commits after the seed, {} promotions announced: the config repo's history must be exactly the promotions",
            committed.len(),
            announced.len()
        );
        Ok(())
    }

    /// The promotions of `env`, in the config repo's order.
    fn promotions_in(&self, env: &str) -> Vec<&Promotion> {
        let mut in_env: Vec<&Promotion> = self.promotions.iter().filter(|p| p.data.environment == env).collect();
        in_env.sort_by_key(|p| p.position);
        in_env
    }
}

/// Each environment runs the digest of its last promotion, which rolled out healthy.
async fn assert_cluster_runs_the_last_promotions(world: &World, ledger: &Ledger) -> Result<()> {
    for (env, namespace) in ENVIRONMENTS {
        let promotions = ledger.promotions_in(env);
        let last = promotions.last().with_context(|| format!("no promotion into {env}"))?;
        let verdict = ledger.verdicts(&last.data.promotion);
        ensure!(
            matches!(
                verdict.first().map(|(t, _)| *t),
                Some(EventType::ServiceDeployed | EventType::ServiceUpgraded)
            ),
            "the last promotion into {env} did not roll out healthy: {:?}",
            verdict.iter().map(|(t, _)| t).collect::<Vec<_>>()
        );
        let image = world.image_in(namespace).await?;
        let story: Vec<String> = promotions
            .iter()
            .map(|p| {
                format!(
                    "commit #{:?} seq {} {} image …{} → {:?}",
                    p.position,
                    p.record.sequence,
                    p.data.promotion,
                    &p.data.release.image.digest[p.data.release.image.digest.len() - 8..],
                    ledger
                        .verdicts(&p.data.promotion)
                        .iter()
                        .map(|(t, _)| *t)
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        ensure!(
            image == last.data.release.image.reference,
            "{namespace} runs {image}, but the last promotion into {env} is release {} ({}); promotions:\n{}",
            last.data.release.release,
            last.data.release.image.reference,
            story.join("\n")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The suites
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_of_each_stage_share_the_work_and_handle_each_event_once() -> Result<()> {
    let mut world = World::start(&environments_yaml(), true).await?;
    world.start_fleet(&Service::ALL).await?;
    let mut releases = Vec::new();
    for _ in 0..12 {
        releases.push(world.push().await?);
    }
    let ledger = world.settle(&releases).await?;
    ledger.assert_exactly_once(&releases)?;
    assert_cluster_runs_the_last_promotions(&world, &ledger).await?;

    // Every stage's replicas, together, handled each event they consume exactly once, and the
    // work was spread: more than one replica of every stage handled some of it.
    for service in Service::ALL.iter().filter(|s| !s.consumes().is_empty()) {
        let mut per_replica = BTreeMap::new();
        let mut total: HashMap<String, u64> = HashMap::new();
        for replica in world.fleet.of(*service) {
            let handled = world.fleet.handled(replica).await?;
            per_replica.insert(replica.label(), handled.values().sum::<u64>());
            for (ty, n) in handled {
                *total.entry(ty).or_default() += n;
            }
        }
        for ty in service.consumes() {
            let on_stream = ledger.count(*ty) as u64;
            let handled = total.get(ty.as_str()).copied().unwrap_or(0);
            assert_eq!(
                handled,
                on_stream,
                "{}: {handled} {ty} handled by the replicas ({per_replica:?}), {on_stream} on the stream",
                service.name()
            );
        }
        let working = per_replica.values().filter(|n| **n > 0).count();
        assert!(
            working >= 2,
            "{}: the work was not shared: {per_replica:?}",
            service.name()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoter_replicas_racing_on_one_environment_never_interleave() -> Result<()> {
    const APPS: [&str; 2] = ["acme/shop", "acme/cart"];
    const PER_APP: usize = 15;
    let mut world = World::start(
        "environments:\n  - {name: staging, namespace: shop-staging, policy: auto}\n",
        false,
    )
    .await?;
    world.start_fleet(&[Service::Promoter]).await?;
    // Both apps' releases contend for the one lease `env.staging`: published all at once, as
    // testers finishing together would.
    let shop = world.dir.path().join("shop");
    // Sibling commits (each on its own branch from one base): none is older than another, so
    // every release may enter staging in whichever order the replicas take them.
    let base = git(&shop, &["rev-parse", "HEAD"])?;
    let branch = git(&shop, &["rev-parse", "--abbrev-ref", "HEAD"])?;
    let mut releases = Vec::new();
    let mut published = Vec::new();
    for i in 0..PER_APP {
        for app in APPS {
            git(
                &shop,
                &[
                    "checkout",
                    "-q",
                    "-B",
                    &format!("race-{}-{i}", app.replace('/', "-")),
                    &base,
                ],
            )?;
            write(&shop.join("src/greeting.txt"), &format!("hello {app} {i}\n"))?;
            git(&shop, &["commit", "-qam", &format!("{app} {i}")])?;
            let sha = git(&shop, &["rev-parse", "HEAD"])?;
            let release = uuid::Uuid::new_v4().to_string();
            published.push(tests_passed(&world, app, sha, release.clone()));
            releases.push((app, release));
        }
    }
    git(&shop, &["checkout", "-q", &branch])?;
    for publish in futures::future::join_all(published).await {
        publish?;
    }
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let ledger = loop {
        let ledger = world.ledger().await?;
        if ledger.promotions.len() >= releases.len() && world.consumers_idle().await? {
            break ledger;
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {} promotions; dead letters: {:#?}\n{}",
            ledger.promotions.len(),
            releases.len(),
            world.dead_letters().await?,
            world.fleet.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // One promotion per release, one commit per promotion, a clean fast-forward chain.
    for (app, release) in &releases {
        let n = ledger.promotions_of(release, "staging").count();
        ensure!(n == 1, "{app} release {release} promoted {n} times");
    }
    ensure!(ledger.promotions.len() == releases.len());
    ledger.assert_history_is_the_promotions()?;

    // Under the lease, a promotion writes `.baton-release.yaml` (its `at`) and then announces
    // itself (`environment.modified`): in commit order, each one's window ends before the next
    // one's begins, whichever replica held the lease.
    let mut windows = Vec::new();
    for p in ledger.promotions_in("staging") {
        let path = format!(
            "staging/{}/{RELEASE_FILE}",
            baton_schemas::subjects::sanitize_token(&p.data.app)
        );
        let text = git(
            &world.config_repo(),
            &["show", &format!("{}:{path}", p.data.config_commit)],
        )?;
        let file: ReleaseFile = yaml_serde::from_str(&text)?;
        ensure!(file.promotion == p.data.promotion, "the commit is the promotion's");
        windows.push((file.at, p.record.time(), p.data.promotion.clone()));
    }
    for (start, end, promotion) in &windows {
        ensure!(start <= end, "promotion {promotion}: announced before it was written");
    }
    for pair in windows.windows(2) {
        let ((_, end, first), (start, _, second)) = (&pair[0], &pair[1]);
        ensure!(
            end <= start,
            "promotions {first} (until {end}) and {second} (from {start}) of staging overlapped: the lock did not hold"
        );
    }
    // The race was real: more than one replica promoted.
    let mut working = 0;
    for replica in world.fleet.of(Service::Promoter) {
        let handled = world.fleet.handled(replica).await?;
        if handled
            .get(EventType::TestSuiteRunFinished.as_str())
            .copied()
            .unwrap_or(0)
            > 0
        {
            working += 1;
        }
    }
    ensure!(working >= 2, "only {working} promoter replica handled releases");
    Ok(())
}

/// Publishes the tester's `testsuiterun.finished` (success) for `sha` of `app`, as release
/// `release`, with an image named after the commit.
async fn tests_passed(world: &World, app: &str, sha: String, release: String) -> Result<()> {
    Verdict {
        app,
        commit: &sha,
        repository: format!("file://{}", world.dir.path().join("shop").display()),
        registry: "127.0.0.1:5000",
        // The manifests name `baton/shop`: the image is the app's.
        image_repository: "baton/shop",
        case: &release,
        digest_seed: &format!("{app}@{sha}"),
        release: &release,
        outcome: Outcome::Success,
        untested: false,
        pushed_by: None,
    }
    .publish(&world.js)
    .await
}

/// Kills replicas at random: every 0.5–1.5 s one replica (of each service in turn, which one
/// picked at random) is SIGKILLed and started again 0.3–1 s later.
struct Killer {
    rng: StdRng,
    next_kill: Instant,
    /// The replica that is down, and when it comes back.
    down: Option<(usize, Instant)>,
    turn: usize,
}

impl Killer {
    fn tick(&mut self, fleet: &mut Fleet) -> Result<()> {
        let now = Instant::now();
        if let Some((i, back_at)) = self.down
            && now >= back_at
        {
            fleet.replicas[i].spawn()?;
            self.down = None;
            self.next_kill = now + Duration::from_millis(self.rng.random_range(500..1500));
        }
        if self.down.is_none() && now >= self.next_kill {
            let service = Service::ALL[self.turn % Service::ALL.len()];
            self.turn += 1;
            let index = self.rng.random_range(0..REPLICAS);
            let i = fleet
                .replicas
                .iter()
                .position(|r| r.service == service && r.index == index)
                .context("a replica")?;
            fleet.replicas[i].kill()?;
            self.down = Some((i, now + Duration::from_millis(self.rng.random_range(300..1000))));
        }
        Ok(())
    }

    /// Brings the replica that is down back.
    fn stop(&mut self, fleet: &mut Fleet) -> Result<()> {
        if let Some((i, _)) = self.down.take() {
            fleet.replicas[i].spawn()?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_replicas_at_random_during_100_releases_loses_and_duplicates_nothing() -> Result<()> {
    const RELEASES: usize = 100;
    let mut world = World::start(&environments_yaml(), true).await?;
    world.start_fleet(&Service::ALL).await?;
    let seed: u64 = rand::rng().random();
    println!("chaos seed {seed}");
    let mut killer = Killer {
        rng: StdRng::seed_from_u64(seed),
        next_kill: Instant::now(),
        down: None,
        turn: 0,
    };
    // A push every 0.3 s: some releases roll out before the next arrives and go on to
    // production, others queue on staging's lock and are superseded.
    let mut releases = Vec::new();
    for _ in 0..RELEASES {
        killer.tick(&mut world.fleet)?;
        releases.push(world.push().await?);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while Instant::now() < deadline && !world.ledger().await?.unfinished(&releases)?.is_empty() {
        killer.tick(&mut world.fleet)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    killer.stop(&mut world.fleet)?;
    let kills: BTreeMap<&str, u32> = Service::ALL
        .iter()
        .map(|s| (s.name(), world.fleet.of(*s).map(|r| r.kills).sum()))
        .collect();
    println!("kills: {kills:?}");
    for (service, n) in &kills {
        ensure!(*n > 0, "the {service} was never killed");
    }
    let ledger = world.settle(&releases).await?;
    // Every killed replica came back on its own cache and config, and is ready.
    world.fleet.wait_ready().await?;
    ledger.assert_exactly_once(&releases)?;
    assert_cluster_runs_the_last_promotions(&world, &ledger).await?;
    let dead = world.dead_letters().await?;
    ensure!(dead.is_empty(), "dead letters: {dead:#?}");
    println!(
        "{} releases, {} promotions ({} into production), {} superseded rollouts",
        releases.len(),
        ledger.promotions.len(),
        ledger.promotions_in("production").len(),
        ledger.count(EventType::DeploymentSuperseded)
    );
    Ok(())
}

/// `<root>/<service>-signing.pem`, a P-256 key every replica of `service` signs with (made on
/// first use, so restarted replicas find it).
fn signing_key(root: &Path, service: &str) -> Result<PathBuf> {
    let path = root.join(format!("{service}-signing.pem"));
    if !path.exists() {
        std::fs::copy(baton_tests::keys::SigningKeyFile::generate()?.path(), &path)?;
    }
    Ok(path)
}
