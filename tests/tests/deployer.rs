//! The deployer against a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler 1.20.2) with simulated nodes, a real nats-server and
//! a real config repo: a healthy release becomes a Deployment running the pinned digest
//! (`service.deployed`), a second one is an upgrade that prunes what it dropped, a crash-looping
//! one fails with the pods' states, bad manifests fail without applying anything, another
//! namespace is refused, RBAC from `deploy/` confines the deployer, a redelivered promotion is
//! not reported twice, and the later of two promotions wins. Drift: a Deployment's image changed
//! with a plain client and a deleted ConfigMap are reported once each (an autoscaler's replicas
//! are not drift), and with `drift: heal` put back, rollout healthy; a stray object with the
//! app's labels, which a heal does not delete, is reported as `baton-environment.unhealed` once.
//!
//! The promotions are published here the way the promoter publishes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::consumer;
use baton_kit::events;
use baton_schemas::config::deployer::{DeployerSettings, DriftSettings};
use baton_schemas::drift::{DriftData, DriftKind, DriftRecord, SyncState};
use baton_schemas::payloads::ImageInfo;
use baton_schemas::release::{DeploymentData, PromotionAction, PromotionData};
use baton_schemas::{CdEvent, EventType};
use baton_tests::kube::KubeCluster;
use baton_tests::people::{Person, people_yaml};
use baton_tests::promotion::{self, Promotion};
use baton_tests::verdict::Verdict;
use baton_tests::{NatsServer, app, eventually_every, git, repos};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const APP: &str = "acme/shop";
const DIR: &str = "acme_shop";
const STAGING: &str = "shop-staging";

fn deployment(image: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  replicas: 2
  progressDeadlineSeconds: 30
  selector:
    matchLabels: {{app: shop}}
  template:
    metadata:
      labels: {{app: shop}}
    spec:
      containers:
        - name: shop
          image: {image}
{extra}"
    )
}

const CONFIG_MAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-settings\ndata:\n  greeting: hello\n";

fn image(case: &str, repository: &str) -> ImageInfo {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(case.as_bytes())));
    ImageInfo {
        registry: "127.0.0.1:5000".into(),
        repository: repository.into(),
        tag: case.into(),
        digest: digest.clone(),
        reference: format!("127.0.0.1:5000/{repository}@{digest}"),
        purl: format!("pkg:oci/shop@{}", digest.replace(':', "%3A")),
        uploaded_bytes: 0,
    }
}

struct World {
    nats: NatsServer,
    cluster: KubeCluster,
    _nodes: baton_tests::kube::NodeSimulator,
    js: async_nats::jetstream::Context,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), baton_deployer::StartError>>>,
    sequence: std::sync::atomic::AtomicU32,
}

impl World {
    async fn start() -> Result<Self> {
        let cluster = KubeCluster::start().await?;
        let nodes = cluster.simulate_nodes(2).await?;
        let nats = NatsServer::start()?;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        let dir = tempfile::tempdir()?;
        repos::config_repo(dir.path(), "config", "environments: []\n")?;
        Ok(Self {
            nats,
            cluster,
            _nodes: nodes,
            js,
            dir,
            stop: CancellationToken::new(),
            task: None,
            sequence: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Starts the deployer with `kubeconfig` (default: the admin's).
    async fn start_deployer(&mut self, kubeconfig: Option<PathBuf>) -> Result<()> {
        self.start_deployer_with(kubeconfig, DriftSettings::default()).await
    }

    /// Starts the deployer with the admin's kubeconfig, a full drift pass every `interval`.
    async fn start_drift_deployer(&mut self, interval: Duration) -> Result<()> {
        let drift = DriftSettings {
            interval,
            ..DriftSettings::default()
        };
        self.start_deployer_with(None, drift).await
    }

    /// Starts the deployer with `kubeconfig` (default: the admin's) looking for drift as `drift` says.
    async fn start_deployer_with(&mut self, kubeconfig: Option<PathBuf>, drift: DriftSettings) -> Result<()> {
        let mut common = app::common(&self.nats.url());
        common.runner.backoff_initial = Duration::from_millis(100);
        let service = DeployerSettings {
            kubeconfig: Some(kubeconfig.unwrap_or_else(|| self.cluster.kubeconfig_path().to_owned())),
            rollout_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(200),
            crashloop_restarts: 2,
            image_pull_grace: Duration::from_secs(3),
            drift,
            ..Default::default()
        };
        let deployer = app::spawn::<baton_deployer::Application>(common, service, &|_| None, &self.stop).await?;
        self.task = Some(deployer.task);
        Ok(())
    }

    /// Commits `files` as the whole folder `<env>/acme_shop` and returns the commit.
    fn commit(&self, env: &str, files: &[(&str, String)]) -> Result<String> {
        let work = self.dir.path().join("config");
        let folder = work.join(env).join(DIR);
        if folder.exists() {
            std::fs::remove_dir_all(&folder)?;
        }
        std::fs::create_dir_all(&folder)?;
        for (name, content) in files {
            std::fs::write(folder.join(name), content)?;
        }
        std::fs::write(
            folder.join(".baton-release.yaml"),
            "not applied: dot-files are skipped\n",
        )?;
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-qm", "promote", "--allow-empty"])?;
        git(&work, &["push", "-q", "origin", "main"])?;
        Ok(git(&work, &["rev-parse", "HEAD"])?)
    }

    /// Commits a Deployment of `image` as the whole of staging's folder and publishes its
    /// promotion there.
    async fn promote_deployment(&self, image: &ImageInfo, action: PromotionAction) -> Result<PromotionData> {
        let commit = self.commit("staging", &[("deployment.yaml", deployment(&image.reference, ""))])?;
        self.promote("staging", STAGING, &commit, image, action).await
    }

    /// Publishes a promotion of `image` into `env`/`namespace` at `commit`.
    async fn promote(
        &self,
        env: &str,
        namespace: &str,
        commit: &str,
        image: &ImageInfo,
        action: PromotionAction,
    ) -> Result<PromotionData> {
        let n = self.sequence.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let data = Promotion {
            app: APP,
            environment: env,
            namespace,
            promotion: format!("promotion-{n}-{}", image.tag),
            release: format!("release-{}", image.tag),
            image,
            action,
            config_repository: format!("file://{}", self.dir.path().join("config.git").display()),
            config_commit: commit,
            manifests_path: format!("{env}/{DIR}"),
            actor: "baton-promoter",
        }
        .data();
        self.publish(&data, &format!("modified-{n}")).await?;
        Ok(data)
    }

    /// Publishes `data` as an `environment.modified` with id `id`; returns its stream sequence.
    async fn publish(&self, data: &PromotionData, id: &str) -> Result<u64> {
        let (_, published) = events::publish(&self.js, &promotion::event(data, id)?).await?;
        Ok(published.sequence)
    }

    /// Staging alone in the config repo's policy (`policy` its settings after the namespace),
    /// the app repo with its pipeline file and a Deployment, and a promoter on both. Returns
    /// the promoter and the app's first commit.
    async fn with_promoter(&self, policy: &str) -> Result<(app::Running, String)> {
        let config = self.dir.path().join("config");
        std::fs::write(
            config.join("environments.yaml"),
            format!("environments:\n  - name: staging\n    namespace: {STAGING}\n    {policy}\n"),
        )?;
        // The people whose signed commands the promoter accepts.
        let people: Vec<_> = ["alice", "bob"].into_iter().map(|n| Person::new(n).entry()).collect();
        std::fs::write(config.join("people.yaml"), people_yaml(&people))?;
        git(&config, &["add", "."])?;
        git(&config, &["commit", "-qm", "staging"])?;
        git(&config, &["push", "-q", "origin", "main"])?;
        let commit = repos::app_repo(
            &self.dir.path().join("app"),
            &[
                (".baton.yaml", "manifests: deploy\n"),
                (
                    "deploy/deployment.yaml",
                    &deployment("127.0.0.1:5000/baton/acme_shop:dev", ""),
                ),
            ],
        )?;
        let mut settings = baton_schemas::config::promoter::PromoterSettings::default();
        settings.config_repo.url = format!("file://{}", self.dir.path().join("config.git").display());
        settings.tick = Duration::from_millis(100);
        let promoter =
            app::spawn::<baton_promoter::Application>(app::common(&self.nats.url()), settings, &|_| None, &self.stop)
                .await?;
        Ok((promoter, commit))
    }

    /// Promotes a release of only `CONFIG_MAP` into staging (image tag `case`), expects the
    /// deployer to fail it, and returns the reason.
    async fn config_map_release_fails(&self, case: &str) -> Result<String> {
        let img = image(case, "baton/acme_shop");
        let commit = self.commit("staging", &[("config.yaml", CONFIG_MAP.to_owned())])?;
        let promotion = self
            .promote("staging", STAGING, &commit, &img, PromotionAction::Promote)
            .await?;
        let (ty, data) = self.verdict(&promotion).await?;
        anyhow::ensure!(
            ty == EventType::DeploymentFailed,
            "{case}: expected a failure, got {ty}: {data:?}"
        );
        Ok(data.reason.unwrap_or_default())
    }

    /// The image the pod template of staging's `shop` Deployment runs.
    async fn staging_image(&self) -> Result<Option<String>> {
        let deployments: Api<Deployment> = Api::namespaced(self.cluster.client()?, STAGING);
        let template = deployments
            .get("shop")
            .await?
            .spec
            .and_then(|s| s.template.spec)
            .context("template")?;
        Ok(template.containers[0].image.clone())
    }

    async fn events(&self, ty: EventType) -> Result<Vec<CdEvent>> {
        baton_tests::events::of(&self.js, ty).await
    }

    /// The deployer's verdict on `promotion`: healthy, failed or superseded.
    async fn verdict(&self, promotion: &PromotionData) -> Result<(EventType, DeploymentData)> {
        let found = eventually_every(
            Duration::from_millis(200),
            Duration::from_secs(90),
            &format!("a verdict on {}", promotion.promotion),
            async || {
                for ty in [
                    EventType::ServiceDeployed,
                    EventType::ServiceUpgraded,
                    EventType::ServiceRolledBack,
                    EventType::DeploymentFailed,
                    EventType::DeploymentSuperseded,
                ] {
                    for e in self.events(ty).await? {
                        let data: DeploymentData = e.custom_data_as()?;
                        if data.promotion == promotion.promotion {
                            return Ok(Ok((ty, data)));
                        }
                    }
                }
                Ok(Err(String::from("none")))
            },
        )
        .await;
        match found {
            Ok(verdict) => Ok(verdict),
            Err(timeout) => {
                let mut reasons = Vec::new();
                if let Ok(mut dead) = self.js.get_stream("BATON_DEADLETTER").await {
                    let last = dead.info().await.map(|i| i.state.last_sequence).unwrap_or(0);
                    for seq in 1..=last {
                        if let Ok(m) = dead.get_raw_message(seq).await {
                            reasons.push(format!("{:?}", m.headers.get(baton_kit::runner::DEADLETTER_REASON)));
                        }
                    }
                }
                Err(timeout.context(format!(
                    "dead letters: {reasons:?}; controller-manager log:\n{}",
                    self.cluster
                        .log_tail(baton_tests::kube::ControlPlaneComponent::ControllerManager)
                )))
            }
        }
    }

    /// The deployer's consumer once `done` holds for it.
    async fn deployer_consumer(&self, what: &str, done: impl Fn(&consumer::Info) -> bool) -> Result<consumer::Info> {
        eventually_every(Duration::from_millis(100), Duration::from_secs(30), what, async || {
            let mut consumer: consumer::Consumer<consumer::pull::Config> = self
                .js
                .get_stream("BATON_EVENTS")
                .await?
                .get_consumer("deployer")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = consumer.info().await?.clone();
            Ok(if done(&info) {
                Ok(info)
            } else {
                Err(format!("{info:?}"))
            })
        })
        .await
    }

    async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_release_is_deployed_then_upgraded_and_pruned() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    let client = world.cluster.client()?;

    let first = image("v1", "baton/acme_shop");
    let commit = world.commit(
        "staging",
        &[
            ("deployment.yaml", deployment(&first.reference, "")),
            ("config.yaml", CONFIG_MAP.to_owned()),
        ],
    )?;
    let promotion = world
        .promote("staging", STAGING, &commit, &first, PromotionAction::Promote)
        .await?;
    let (ty, data) = world.verdict(&promotion).await?;
    assert_eq!(ty, EventType::ServiceDeployed, "{data:?}");
    assert_eq!(data.applied, ["ConfigMap/shop-settings", "Deployment/shop"]);
    let started = world.events(EventType::DeploymentStarted).await?;
    assert_eq!(started.len(), 1, "progress was announced");

    // The pods run the digest from the event, on the simulated nodes.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), STAGING);
    let shop = deployments.get("shop").await?;
    let labels = shop.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("baton.dev/app").map(String::as_str), Some(DIR));
    assert_eq!(labels.get("baton.dev/environment").map(String::as_str), Some("staging"));
    assert_eq!(labels.get("baton.dev/release").map(String::as_str), Some("release-v1"));
    assert_eq!(shop.status.and_then(|s| s.available_replicas), Some(2));
    let pods: Api<Pod> = Api::namespaced(client.clone(), STAGING);
    let running = pods.list(&ListParams::default().labels("app=shop")).await?;
    assert!(!running.items.is_empty());
    for pod in &running.items {
        let spec = pod.spec.as_ref().context("spec")?;
        if pod.metadata.deletion_timestamp.is_none() {
            assert_eq!(spec.containers[0].image.as_deref(), Some(first.reference.as_str()));
        }
    }
    // Applied by the app's own field manager, not one shared by every app.
    let managers: Vec<_> = shop
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, [format!("baton/{DIR}")]);

    // Someone copies the app's labels onto an object of their own: not Baton's to prune.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), STAGING);
    let hand_made: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "hand-made",
            "labels": {"baton.dev/app": DIR, "baton.dev/environment": "staging"},
        },
        "data": {"note": "made with kubectl"},
    }))?;
    let by_hand = kube::api::PostParams {
        field_manager: Some("kubectl-create".into()),
        ..Default::default()
    };
    config_maps.create(&by_hand, &hand_made).await?;

    // A second release without the ConfigMap: an upgrade that prunes it.
    let second = image("v2", "baton/acme_shop");
    let promotion = world.promote_deployment(&second, PromotionAction::Promote).await?;
    let (ty, data) = world.verdict(&promotion).await?;
    assert_eq!(ty, EventType::ServiceUpgraded, "{data:?}");
    assert_eq!(
        data.pruned,
        ["ConfigMap/shop-settings"],
        "only what Baton applied is pruned"
    );
    assert!(config_maps.get_opt("shop-settings").await?.is_none(), "pruned");
    assert!(
        config_maps.get_opt("hand-made").await?.is_some(),
        "an object that only carries the app's labels stays"
    );
    let shop = deployments.get("shop").await?;
    let template = shop.spec.and_then(|s| s.template.spec).context("template")?;
    assert_eq!(template.containers[0].image.as_deref(), Some(second.reference.as_str()));

    // The same promotion delivered again applies the same state and reports nothing new.
    let again = world.publish(&promotion, "modified-again").await?;
    world
        .deployer_consumer("the deployer to take the redelivery", |info| {
            info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence >= again
        })
        .await?;
    assert_eq!(
        world.events(EventType::ServiceUpgraded).await?.len(),
        1,
        "no second success"
    );
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_release_fails_with_the_pods_states() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    let good = image("good", "baton/acme_shop");
    let promotion = world.promote_deployment(&good, PromotionAction::Promote).await?;
    assert_eq!(world.verdict(&promotion).await?.0, EventType::ServiceDeployed);

    let bad = image("bad", "baton/acme_shop-crashloop");
    let promotion = world.promote_deployment(&bad, PromotionAction::Promote).await?;
    let (ty, data) = world.verdict(&promotion).await?;
    assert_eq!(ty, EventType::DeploymentFailed, "{data:?}");
    let reason = data.reason.unwrap_or_default();
    assert!(reason.contains("crash-looping"), "{reason}");
    assert!(
        data.failing_pods
            .iter()
            .any(|p| p.reason.as_deref() == Some("CrashLoopBackOff") && p.restarts >= 2),
        "{:?}",
        data.failing_pods
    );

    // Rolling back re-points to the good digest (the promoter's rollback commit).
    let rollback = world.promote_deployment(&good, PromotionAction::Rollback).await?;
    let (ty, _) = world.verdict(&rollback).await?;
    assert_eq!(ty, EventType::ServiceRolledBack);
    assert_eq!(world.staging_image().await?.as_deref(), Some(good.reference.as_str()));
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_fail_with_the_reason_and_apply_nothing() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    let client = world.cluster.client()?;
    let img = image("x", "baton/acme_shop");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), STAGING);

    let cases: [(&str, String, &str); 5] = [
        ("not YAML", "kind: [unclosed\n".to_owned(), "not valid YAML"),
        (
            "unknown kind",
            "apiVersion: apps/v1\nkind: Deploymnt\nmetadata: {name: shop}\n".to_owned(),
            "does not know kind `Deploymnt`",
        ),
        (
            "invalid field",
            deployment(&img.reference, "      restartPolicy: Sometimes\n"),
            "restartPolicy",
        ),
        (
            "a port the 1.20 apiserver cannot merge",
            "apiVersion: v1\nkind: Service\nmetadata: {name: shop}\nspec:\n  ports: [{port: 80}]\n".to_owned(),
            "protocol: TCP",
        ),
        (
            "another namespace",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sneaky, namespace: kube-system}\n".to_owned(),
            "targets namespace `kube-system`",
        ),
    ];
    for (case, manifest, words) in cases {
        let commit = world.commit(
            "staging",
            &[("config.yaml", CONFIG_MAP.to_owned()), ("z-broken.yaml", manifest)],
        )?;
        let promotion = world
            .promote("staging", STAGING, &commit, &img, PromotionAction::Promote)
            .await?;
        let (ty, data) = world.verdict(&promotion).await?;
        assert_eq!(ty, EventType::DeploymentFailed, "{case}: {data:?}");
        let reason = data.reason.unwrap_or_default();
        assert!(reason.contains(words), "{case}: {reason}");
        assert!(
            config_maps.get_opt("shop-settings").await?.is_none(),
            "{case}: nothing of the release was applied"
        );
    }
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_from_deploy_confines_the_deployer_to_environment_namespaces() -> Result<()> {
    let mut world = World::start().await?;
    let admin = world.cluster.client()?;
    for ns in ["baton", STAGING, "shop-production"] {
        world.cluster.create_namespace(ns).await?;
    }
    // The manifests of deploy/rbac, applied as an operator would.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac");
    let apply = |ns: Option<&str>, file: &str| {
        let admin = admin.clone();
        let text = std::fs::read_to_string(root.join(file));
        let ns = ns.map(str::to_owned);
        async move {
            for document in yaml_serde::Deserializer::from_str(&text?) {
                let object: DynamicObject = serde::Deserialize::deserialize(document)?;
                let types = object.types.clone().context("apiVersion and kind")?;
                let (group, version) = types
                    .api_version
                    .split_once('/')
                    .unwrap_or(("", types.api_version.as_str()));
                let gvk = kube::core::GroupVersionKind::gvk(group, version, &types.kind);
                let (resource, caps) = kube::discovery::pinned_kind(&admin, &gvk).await?;
                let name = object.metadata.name.clone().context("name")?;
                let api: Api<DynamicObject> = match (&caps.scope, &ns, &object.metadata.namespace) {
                    (kube::discovery::Scope::Cluster, _, _) => Api::all_with(admin.clone(), &resource),
                    (_, Some(ns), _) | (_, None, Some(ns)) => Api::namespaced_with(admin.clone(), ns, &resource),
                    _ => anyhow::bail!("{name}: no namespace"),
                };
                api.patch(&name, &PatchParams::apply("operator"), &Patch::Apply(&object))
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    apply(None, "deployer-serviceaccount.yaml").await?;
    apply(Some(STAGING), "deployer-environment.yaml").await?;
    let token = world.cluster.service_account_token("baton", "baton-deployer").await?;
    let kubeconfig = world.cluster.write_kubeconfig("deployer", &token)?;
    world.start_deployer(Some(kubeconfig)).await?;

    let img = image("rbac", "baton/acme_shop");
    let allowed = world.promote_deployment(&img, PromotionAction::Promote).await?;
    let (ty, data) = world.verdict(&allowed).await?;
    assert_eq!(
        ty,
        EventType::ServiceDeployed,
        "allowed in its environment namespace: {data:?}"
    );

    let commit = world.commit("production", &[("deployment.yaml", deployment(&img.reference, ""))])?;
    let outside = world
        .promote("production", "shop-production", &commit, &img, PromotionAction::Promote)
        .await?;
    let (ty, data) = world.verdict(&outside).await?;
    assert_eq!(ty, EventType::DeploymentFailed, "{data:?}");
    let reason = data.reason.unwrap_or_default();
    assert!(
        reason.contains("403") && reason.contains("RBAC"),
        "the refusal is explained: {reason}"
    );
    let production: Api<Deployment> = Api::namespaced(admin.clone(), "shop-production");
    assert!(production.get_opt("shop").await?.is_none(), "nothing written outside");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_of_two_promotions_wins_and_the_earlier_is_superseded() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    // The first never becomes ready, so it is still rolling out when the second arrives.
    let slow = image("slow", "baton/acme_shop-never-ready");
    let first = world.promote_deployment(&slow, PromotionAction::Promote).await?;
    baton_tests::events::wait_for(
        &world.js,
        EventType::DeploymentStarted,
        1,
        Duration::from_secs(30),
        |_| true,
    )
    .await
    .context("the first rollout never started")?;
    let fast = image("fast", "baton/acme_shop");
    let second = world.promote_deployment(&fast, PromotionAction::Promote).await?;
    let (ty, data) = world.verdict(&first).await?;
    assert_eq!(ty, EventType::DeploymentSuperseded, "{data:?}");
    assert!(data.reason.unwrap_or_default().contains(&second.promotion));
    let (ty, _) = world.verdict(&second).await?;
    assert!(
        matches!(ty, EventType::ServiceDeployed | EventType::ServiceUpgraded),
        "{ty}"
    );
    assert_eq!(
        world.staging_image().await?.as_deref(),
        Some(fast.reference.as_str()),
        "the later wins"
    );
    world.stop().await
}

/// The tester's verdict for `commit` of the app repo, naming an image of `baton/acme_shop` whose
/// digest derives from `case`.
fn tests_passed<'a>(world: &World, case: &'a str, commit: &'a str, release: &'a str) -> Verdict<'a> {
    Verdict::shop(commit, &world.dir.path().join("app"), case, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_promoter_a_crash_looping_release_is_rolled_back_to_the_previous_digest() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    // One automatic environment.
    let (promoter, good_commit) = world.with_promoter("policy: auto").await?;
    let app = world.dir.path().join("app");

    let good_release = "release-good";
    let good = tests_passed(&world, "good", &good_commit, good_release);
    good.publish(&world.js).await?;
    baton_tests::events::wait_for_release(
        &world.js,
        EventType::ServiceDeployed,
        good_release,
        Duration::from_secs(60),
    )
    .await
    .context("the good release was never deployed")?;

    // A commit whose pods crash-loop.
    std::fs::write(
        app.join("deploy/deployment.yaml"),
        deployment("127.0.0.1:5000/baton/acme_shop:dev", "").replace(
            "      labels: {app: shop}\n    spec:",
            "      labels: {app: shop}\n      annotations: {baton.dev/simulate: crashloop}\n    spec:",
        ),
    )?;
    git(&app, &["commit", "-qam", "bad"])?;
    let bad_commit = git(&app, &["rev-parse", "HEAD"])?;
    let bad_release = "release-bad";
    tests_passed(&world, "bad", &bad_commit, bad_release)
        .publish(&world.js)
        .await?;
    let rolled_back = baton_tests::events::wait_for_release(
        &world.js,
        EventType::ServiceRolledBack,
        good_release,
        Duration::from_secs(90),
    )
    .await;
    let rolled_back = match rolled_back {
        Ok(event) => event,
        Err(timeout) => {
            let mut seen = Vec::new();
            for ty in [
                EventType::DeploymentStarted,
                EventType::DeploymentFailed,
                EventType::ServiceDeployed,
                EventType::ServiceUpgraded,
                EventType::EnvironmentModified,
                EventType::ReleaseCreated,
                EventType::PromotionHeld,
            ] {
                for e in world.events(ty).await? {
                    seen.push(format!("{ty} {:?} {}", e.context.chain_id, e.subject.content));
                }
            }
            return Err(timeout.context(format!("no rollback after the bad release; events: {seen:#?}")));
        }
    };
    let failed = world.events(EventType::DeploymentFailed).await?;
    assert!(
        failed
            .iter()
            .any(|e| e.context.chain_id.as_deref() == Some(bad_release))
    );
    let data: DeploymentData = rolled_back.custom_data_as()?;
    assert_eq!(data.image, good.image().reference);
    assert_eq!(
        world.staging_image().await?.as_deref(),
        Some(good.image().reference.as_str()),
        "the previous digest runs again"
    );
    let quarantined = world.events(EventType::ReleaseQuarantined).await?;
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].subject.id, bad_release);
    world.stop.cancel();
    promoter.task.await??;
    world.stop().await
}

/// Issue 15's first hole, end to end: two operator promotions of different releases into a
/// manual environment, each through its own approval, each reach the cluster (the second once
/// found the first's commit and was reported done while the cluster kept the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_promoter_two_operator_promotions_through_approvals_each_reach_the_cluster() -> Result<()> {
    use baton_schemas::commands::{CommandRequest, Verb};
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    let (promoter, first_commit) = world
        .with_promoter("policy: manual\n    approvals: {required: 1, users: [alice, bob]}")
        .await?;
    let app = world.dir.path().join("app");
    std::fs::write(app.join("deploy/config.yaml"), CONFIG_MAP)?;
    git(&app, &["add", "."])?;
    git(&app, &["commit", "-qm", "second"])?;
    let second_commit = git(&app, &["rev-parse", "HEAD"])?;
    let first = tests_passed(&world, "first", &first_commit, "release-first");
    let second = tests_passed(&world, "second", &second_commit, "release-second");
    first.publish(&world.js).await?;
    second.publish(&world.js).await?;
    baton_tests::events::wait_for(
        &world.js,
        EventType::ApprovalCreated,
        2,
        Duration::from_secs(30),
        |_| true,
    )
    .await?;

    let client = async_nats::connect(world.nats.url()).await?;
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));
    for (verdict, deployed) in [
        (&first, EventType::ServiceDeployed),
        (&second, EventType::ServiceUpgraded),
    ] {
        let release = verdict.release;
        let asked = bob
            .send(
                &client,
                Verb::Promote,
                CommandRequest {
                    actor: "bob".into(),
                    release: Some(release.into()),
                    environment: Some("staging".into()),
                    reason: Some("ship it".into()),
                    ..Default::default()
                },
            )
            .await?;
        assert!(asked.ok && asked.approval.is_some(), "{asked:?}");
        let approved = alice
            .send(
                &client,
                Verb::Approve,
                CommandRequest {
                    actor: "alice".into(),
                    release: Some(release.into()),
                    environment: Some("staging".into()),
                    ..Default::default()
                },
            )
            .await?;
        assert!(approved.ok && approved.config_commit.is_some(), "{approved:?}");
        baton_tests::events::wait_for_release(&world.js, deployed, release, Duration::from_secs(60))
            .await
            .with_context(|| format!("{release} never reached the cluster"))?;
        assert_eq!(
            world.staging_image().await?.as_deref(),
            Some(verdict.image().reference.as_str()),
            "the cluster runs {release}"
        );
    }
    world.stop.cancel();
    promoter.task.await??;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_apiserver_is_retried_and_the_promotion_is_not_lost() -> Result<()> {
    let mut world = World::start().await?;
    // The deployer reaches the apiserver through a door that is closed at first.
    let door = std::net::TcpListener::bind("127.0.0.1:0")?;
    let door_port = door.local_addr()?.port();
    drop(door);
    let server = world.cluster.server_url().to_owned();
    let apiserver = server.trim_start_matches("https://").to_owned();
    let admin = std::fs::read_to_string(world.cluster.kubeconfig_path())?;
    let through_door = world.dir.path().join("door.kubeconfig");
    std::fs::write(
        &through_door,
        admin.replace(&server, &format!("https://127.0.0.1:{door_port}")),
    )?;
    world.start_deployer(Some(through_door)).await?;

    let img = image("patient", "baton/acme_shop");
    let promotion = world.promote_deployment(&img, PromotionAction::Promote).await?;
    // Retried, with nothing reported yet.
    world
        .deployer_consumer("the deployer to retry", |info| {
            info.num_redelivered > 0 || info.delivered.consumer_sequence > 1
        })
        .await?;
    assert!(world.events(EventType::ServiceDeployed).await?.is_empty());
    assert!(
        world.events(EventType::DeploymentFailed).await?.is_empty(),
        "unreachable is not a failed release"
    );

    // The door opens: the retried promotion rolls out.
    let door = tokio::net::TcpListener::bind(("127.0.0.1", door_port)).await?;
    let forward = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = door.accept().await {
            let apiserver = apiserver.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&apiserver).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let (ty, data) = world.verdict(&promotion).await?;
    assert_eq!(ty, EventType::ServiceDeployed, "{data:?}");
    forward.abort();
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_unpullable_and_conflicting_releases_fail_with_the_reason() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;

    // Pods that never become ready: the Deployment's progress deadline decides.
    let unready = image("unready", "baton/acme_shop-never-ready");
    let commit = world.commit(
        "staging",
        &[(
            "deployment.yaml",
            deployment(&unready.reference, "").replace("progressDeadlineSeconds: 30", "progressDeadlineSeconds: 4"),
        )],
    )?;
    let promotion = world
        .promote("staging", STAGING, &commit, &unready, PromotionAction::Promote)
        .await?;
    let (ty, data) = world.verdict(&promotion).await?;
    assert_eq!(ty, EventType::DeploymentFailed, "{data:?}");
    assert!(
        data.reason
            .clone()
            .unwrap_or_default()
            .contains("ProgressDeadlineExceeded"),
        "{data:?}"
    );
    assert!(
        data.failing_pods.iter().all(|p| !p.ready) && !data.failing_pods.is_empty(),
        "{data:?}"
    );

    // An image that cannot be pulled: the pull grace (3 s here) decides.
    let unpullable = image("unpullable", "baton/acme_shop-imagepullbackoff");
    let promotion = world.promote_deployment(&unpullable, PromotionAction::Promote).await?;
    let (ty, data) = world.verdict(&promotion).await?;
    assert_eq!(ty, EventType::DeploymentFailed, "{data:?}");
    let reason = data.reason.unwrap_or_default();
    assert!(reason.contains("cannot pull its image"), "{reason}");

    // A field someone else owns is a conflict, reported, not overwritten.
    let admin = world.cluster.client()?;
    let config_maps: Api<ConfigMap> = Api::namespaced(admin, STAGING);
    let theirs: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shop-settings", "namespace": STAGING},
        "data": {"greeting": "set by hand"}
    }))?;
    config_maps
        .patch(
            "shop-settings",
            &PatchParams::apply("kubectl-edit"),
            &Patch::Apply(&theirs),
        )
        .await?;
    let reason = world.config_map_release_fails("conflict").await?;
    assert!(reason.contains("409") && reason.contains("force_conflicts"), "{reason}");
    let kept = config_maps.get("shop-settings").await?;
    assert_eq!(
        kept.data.unwrap_or_default().get("greeting").map(String::as_str),
        Some("set by hand"),
        "not overwritten"
    );
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_naming_another_apps_object_is_refused_and_the_object_left_alone() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    world.cluster.create_namespace(STAGING).await?;
    // Another app's ConfigMap, as the deployer labels the objects it applies for `acme/cart`.
    let config_maps: Api<ConfigMap> = Api::namespaced(world.cluster.client()?, STAGING);
    let theirs = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "shop-settings", "labels": {"baton.dev/app": "acme_cart"}},
        "data": {"greeting": "the cart's"},
    });
    config_maps
        .patch("shop-settings", &PatchParams::apply("baton"), &Patch::Apply(&theirs))
        .await?;

    // acme/shop's release declares the same ConfigMap.
    let reason = world.config_map_release_fails("takeover").await?;
    assert!(
        reason.contains("ConfigMap/shop-settings") && reason.contains("belongs to app `acme_cart`"),
        "{reason}"
    );
    let live = config_maps.get("shop-settings").await?;
    assert_eq!(
        live.metadata
            .labels
            .unwrap_or_default()
            .get("baton.dev/app")
            .map(String::as_str),
        Some("acme_cart"),
        "the other app keeps its object"
    );
    assert_eq!(
        live.data.unwrap_or_default().get("greeting").map(String::as_str),
        Some("the cart's"),
        "nothing of the release was applied over it"
    );
    world.stop().await
}

/// Objects an earlier Baton applied with the one field manager all apps shared (`baton`) are
/// handed to the app's own manager when its next release names them, so the release changes what
/// the earlier one set instead of conflicting with it, and leftovers of the shared manager are
/// still pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_the_shared_field_manager_are_adopted_by_the_apps_own() -> Result<()> {
    let mut world = World::start().await?;
    world.start_deployer(None).await?;
    world.cluster.create_namespace(STAGING).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(world.cluster.client()?, STAGING);
    let labels = json!({"baton.dev/app": DIR, "baton.dev/environment": "staging"});
    for (name, greeting) in [
        ("shop-settings", "from the earlier release"),
        ("shop-legacy", "gone next"),
    ] {
        let earlier = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels},
            "data": {"greeting": greeting},
        });
        config_maps
            .patch(name, &PatchParams::apply("baton"), &Patch::Apply(&earlier))
            .await?;
    }

    let img = image("adopted", "baton/acme_shop");
    let commit = world.commit("staging", &[("config.yaml", CONFIG_MAP.to_owned())])?;
    let promotion = world
        .promote("staging", STAGING, &commit, &img, PromotionAction::Promote)
        .await?;
    let (ty, data) = world.verdict(&promotion).await?;
    assert!(
        matches!(ty, EventType::ServiceDeployed | EventType::ServiceUpgraded),
        "{ty}: {data:?}"
    );
    assert_eq!(
        data.pruned,
        ["ConfigMap/shop-legacy"],
        "the shared manager's leftover is pruned"
    );
    let live = config_maps.get("shop-settings").await?;
    let managers: Vec<_> = live
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, [format!("baton/{DIR}")], "adopted, the shared entry gone");
    assert_eq!(
        live.data.unwrap_or_default().get("greeting").map(String::as_str),
        Some("hello"),
        "the release's value, not a conflict"
    );
    world.stop().await
}

/// A rollout the runner would cancel before its verdict is refused at start, naming the field,
/// before anything is reached (no NATS listens at the address given).
#[tokio::test]
async fn a_handler_deadline_not_longer_than_the_rollout_timeout_is_refused_at_start() -> Result<()> {
    for (rollout_timeout, case) in [
        (Duration::from_secs(600), "equal to the default 10m handler deadline"),
        (Duration::from_secs(1800), "longer than the handler deadline"),
    ] {
        let common = app::common("nats://127.0.0.1:1");
        let service = DeployerSettings {
            rollout_timeout,
            ..Default::default()
        };
        let refused = app::spawn::<baton_deployer::Application>(common, service, &|_| None, &CancellationToken::new())
            .await
            .err()
            .with_context(|| format!("{case}: accepted"))?;
        match refused {
            baton_deployer::StartError::Config(e) => {
                let message = e.to_string();
                assert!(message.contains("runner.handler_deadline"), "{case}: {message}");
            }
            other => panic!("{case}: refused for another reason: {other}"),
        }
    }
    Ok(())
}

/// The `drift` record of acme/shop in staging, if the deployer wrote one.
async fn drift_record(world: &World) -> Result<Option<DriftRecord>> {
    let kv = world.js.get_key_value("baton-state").await?;
    Ok(kv
        .get(baton_schemas::drift::drift_key(APP, "staging"))
        .await?
        .map(|b| serde_json::from_slice(&b))
        .transpose()?)
}

/// Commits staging's `environments.yaml` with `drift: <policy>`.
fn drift_policy(world: &World, policy: &str) -> Result<()> {
    let config = world.dir.path().join("config");
    std::fs::write(
        config.join("environments.yaml"),
        format!("environments:\n  - name: staging\n    namespace: {STAGING}\n    policy: auto\n    drift: {policy}\n"),
    )?;
    git(&config, &["add", "environments.yaml"])?;
    git(&config, &["commit", "-qm", "drift policy"])?;
    git(&config, &["push", "-q", "origin", "main"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_once_an_autoscalers_replicas_are_not_drift_and_heal_puts_the_release_back() -> Result<()> {
    let mut world = World::start().await?;
    drift_policy(&world, "report")?;
    world.start_drift_deployer(Duration::from_secs(2)).await?;
    let client = world.cluster.client()?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), STAGING);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), STAGING);

    // The release leaves `replicas` to an autoscaler.
    let v1 = image("v1", "baton/acme_shop");
    let commit = world.commit(
        "staging",
        &[
            (
                "deployment.yaml",
                deployment(&v1.reference, "").replace("  replicas: 2\n", ""),
            ),
            ("config.yaml", CONFIG_MAP.to_owned()),
        ],
    )?;
    let promotion = world
        .promote("staging", STAGING, &commit, &v1, PromotionAction::Promote)
        .await?;
    let (ty, data) = world.verdict(&promotion).await?;
    assert_eq!(ty, EventType::ServiceDeployed, "{data:?}");
    let synced = eventually_every(
        Duration::from_millis(200),
        Duration::from_secs(30),
        "a synced record",
        async || {
            Ok(match drift_record(&world).await? {
                Some(r) if r.state == SyncState::Synced => Ok(r),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await;
    let synced = match synced {
        Ok(synced) => synced,
        Err(e) => {
            let reports: Vec<_> = world
                .events(EventType::EnvironmentDrifted)
                .await?
                .into_iter()
                .map(|e| e.custom_data)
                .collect();
            anyhow::bail!("{e:#}; drift reported: {reports:#?}");
        }
    };
    assert_eq!(synced.config_commit, commit);

    // An autoscaler scales it: a field Baton does not set, owned by another manager.
    let by = |manager: &str| PatchParams {
        field_manager: Some(manager.to_owned()),
        ..Default::default()
    };
    deployments
        .patch(
            "shop",
            &by("horizontal-pod-autoscaler"),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    // Two passes and the watch see it: still in sync.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(drift_record(&world).await?.map(|r| r.state), Some(SyncState::Synced));
    assert!(
        world.events(EventType::EnvironmentDrifted).await?.is_empty(),
        "replicas are the autoscaler's"
    );

    // A plain client changes the image: reported, naming the field, both values and who.
    let changed_at = std::time::Instant::now();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "shop", "image": "nginx:drift"}]}}}});
    deployments
        .patch("shop", &by("kubectl-set"), &Patch::Strategic(patch))
        .await?;
    let drifted = baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentDrifted,
        1,
        Duration::from_secs(10),
        |_| true,
    )
    .await
    .context("the changed image was never reported")?
    .remove(0);
    assert!(
        changed_at.elapsed() < Duration::from_secs(3),
        "reported within the interval: {:?}",
        changed_at.elapsed()
    );
    let data: DriftData = drifted.custom_data_as()?;
    assert_eq!(
        (
            data.app.as_str(),
            data.environment.as_str(),
            data.policy.as_deref().unwrap_or_default()
        ),
        (APP, "staging", "report")
    );
    assert_eq!(data.config_commit, commit);
    assert_eq!(data.objects.len(), 1, "{data:?}");
    let object = &data.objects[0];
    assert_eq!(
        (object.object.as_str(), object.kind),
        ("Deployment/shop", DriftKind::Changed)
    );
    let image_field = object
        .fields
        .iter()
        .find(|f| f.path == "spec.template.spec.containers[name=shop].image")
        .with_context(|| format!("{:?}", object.fields))?;
    assert_eq!(image_field.expected, Some(json!(v1.reference)));
    assert_eq!(image_field.live, Some(json!("nginx:drift")));
    assert_eq!(image_field.changed_by.as_deref(), Some("kubectl-set"));
    assert!(image_field.changed_at.is_some());
    assert!(
        !object.fields.iter().any(|f| f.path.contains("replicas")),
        "{:?}",
        object.fields
    );
    assert_eq!(
        drifted.context.chain_id.as_deref(),
        Some(promotion.release.release.as_str())
    );

    // Reported once, not at every pass.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        world.events(EventType::EnvironmentDrifted).await?.len(),
        1,
        "reported once"
    );
    let record = drift_record(&world).await?.context("record")?;
    assert_eq!(
        (record.state, record.objects.clone()),
        (SyncState::Drifted, vec!["Deployment/shop".to_owned()])
    );
    assert_eq!(
        world.staging_image().await?.as_deref(),
        Some("nginx:drift"),
        "report changes nothing"
    );

    // A deleted ConfigMap: the drift changed, so it is reported again.
    config_maps.delete("shop-settings", &Default::default()).await?;
    let again = baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentDrifted,
        2,
        Duration::from_secs(10),
        |_| true,
    )
    .await
    .context("the deleted ConfigMap was never reported")?
    .remove(1);
    let data: DriftData = again.custom_data_as()?;
    let missing: Vec<_> = data.objects.iter().map(|o| (o.object.as_str(), o.kind)).collect();
    assert_eq!(
        missing,
        [
            ("ConfigMap/shop-settings", DriftKind::Missing),
            ("Deployment/shop", DriftKind::Changed)
        ]
    );

    // With `heal`, the release is put back through the apply path, rollout healthy.
    drift_policy(&world, "heal")?;
    let healed = baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentSynced,
        1,
        Duration::from_secs(60),
        |_| true,
    )
    .await
    .context("the drift was never healed")?
    .remove(0);
    assert_eq!(healed.subject.content["how"], "healed");
    let data: DriftData = healed.custom_data_as()?;
    assert!(data.rollout_wait_ms.is_some(), "the heal's rollout was judged");
    assert_eq!(world.staging_image().await?.as_deref(), Some(v1.reference.as_str()));
    assert!(config_maps.get_opt("shop-settings").await?.is_some(), "recreated");
    let shop = deployments.get("shop").await?;
    assert_eq!(
        shop.spec.and_then(|s| s.replicas),
        Some(3),
        "the autoscaler's replicas stay"
    );
    assert_eq!(drift_record(&world).await?.map(|r| r.state), Some(SyncState::Synced));
    // The heal is no promotion: nothing reported as deployed again.
    assert_eq!(world.events(EventType::ServiceDeployed).await?.len(), 1);
    assert!(world.events(EventType::ServiceUpgraded).await?.is_empty());

    // An object with the app's labels that Baton never applied: a heal re-applies the release
    // but deletes nothing it did not apply, so the drift does not end, and that is reported.
    let stray = serde_json::from_value::<ConfigMap>(json!({
        "metadata": {
            "name": "stray",
            "labels": {"baton.dev/app": DIR, "baton.dev/environment": "staging"},
        },
        "data": {"note": "made with kubectl"},
    }))?;
    config_maps
        .create(
            &kube::api::PostParams {
                field_manager: Some("kubectl-create".into()),
                ..Default::default()
            },
            &stray,
        )
        .await?;
    let unhealed = baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentUnhealed,
        1,
        Duration::from_secs(60),
        |_| true,
    )
    .await
    .context("the heal that could not end the drift was never reported")?
    .remove(0);
    let reason = unhealed.subject.content["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ConfigMap/stray") && reason.contains("not deleted"),
        "{reason}"
    );
    assert_eq!(unhealed.subject.content["objects"], json!(["ConfigMap/stray"]));
    let data: DriftData = unhealed.custom_data_as()?;
    let left: Vec<_> = data.objects.iter().map(|o| (o.object.as_str(), o.kind)).collect();
    assert_eq!(left, [("ConfigMap/stray", DriftKind::Extra)]);
    assert_eq!(
        unhealed.context.chain_id.as_deref(),
        Some(promotion.release.release.as_str())
    );
    let record = drift_record(&world).await?.context("record")?;
    assert_eq!(record.state, SyncState::Drifted);
    assert_eq!(record.heal_failed.as_deref(), Some(reason));
    // Not tried again for the same drift.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        world.events(EventType::EnvironmentUnhealed).await?.len(),
        1,
        "reported once"
    );

    // Deleted by hand, the drift ends.
    config_maps.delete("stray", &Default::default()).await?;
    let resolved = baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentSynced,
        2,
        Duration::from_secs(30),
        |_| true,
    )
    .await
    .context("the drift never ended once the stray object was gone")?
    .remove(1);
    assert_eq!(resolved.subject.content["how"], "resolved");
    world.stop().await
}

/// `baton status` of acme/shop, as the CLI prints it.
fn baton_status(world: &World) -> Result<String> {
    let out = std::process::Command::new(baton_tests::process::service_binary("baton")?)
        .args(["--nats", &world.nats.url(), "status", APP])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "baton status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_promoter_drift_shows_in_status_sync_puts_it_back_and_restore_recreates_a_deleted_namespace()
-> Result<()> {
    use baton_schemas::commands::{CommandRequest, Verb};
    let mut world = World::start().await?;
    world.start_drift_deployer(Duration::from_secs(2)).await?;
    // Only alice holds `rollback` there, which `sync` and `restore` need too.
    let (promoter, commit) = world
        .with_promoter("policy: auto\n    grants:\n      rollback: {users: [alice]}")
        .await?;
    let good = tests_passed(&world, "good", &commit, "release-good");
    good.publish(&world.js).await?;
    baton_tests::events::wait_for_release(
        &world.js,
        EventType::ServiceDeployed,
        "release-good",
        Duration::from_secs(60),
    )
    .await
    .context("the release was never deployed")?;
    let digest = good.image().reference.clone();

    // Someone sets the image by hand: drifted, and `baton status` says so.
    let client = world.cluster.client()?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), STAGING);
    let by_hand = PatchParams {
        field_manager: Some("kubectl-set".into()),
        ..Default::default()
    };
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "shop", "image": "nginx:drift"}]}}}});
    deployments.patch("shop", &by_hand, &Patch::Strategic(patch)).await?;
    baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentDrifted,
        1,
        Duration::from_secs(10),
        |_| true,
    )
    .await
    .context("the drift was never reported")?;
    let status = baton_status(&world)?;
    assert!(status.lines().next().unwrap_or_default().contains("SYNC"), "{status}");
    assert!(status.contains("drifted: Deployment/shop"), "{status}");

    // `baton sync` puts the config commit back: the same digest, no new release or deployment.
    let nats = async_nats::connect(world.nats.url()).await?;
    let alice = Person::new("alice");
    let refused = Person::new("bob")
        .send(
            &nats,
            Verb::Sync,
            CommandRequest {
                actor: "bob".into(),
                app: Some(APP.into()),
                environment: Some("staging".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(
        !refused.ok && refused.message.contains("grants.rollback"),
        "sync needs the rollback grant: {refused:?}"
    );
    let synced = alice
        .send(
            &nats,
            Verb::Sync,
            CommandRequest {
                actor: "alice".into(),
                app: Some(APP.into()),
                environment: Some("staging".into()),
                reason: Some("someone edited production".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(synced.ok, "{synced:?}");
    let event = baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentSynced,
        1,
        Duration::from_secs(60),
        |e| e.subject.content["how"] == "synced",
    )
    .await
    .context("the sync never finished")?
    .remove(0);
    assert_eq!(event.context.chain_id.as_deref(), Some("release-good"));
    assert_eq!(world.staging_image().await?.as_deref(), Some(digest.as_str()));
    let status = baton_status(&world)?;
    assert!(status.contains("synced") && !status.contains("drifted"), "{status}");
    assert_eq!(
        world.events(EventType::ServiceDeployed).await?.len(),
        1,
        "no new deployment"
    );
    assert!(
        world.events(EventType::ServiceUpgraded).await?.is_empty(),
        "no new deployment"
    );

    // The namespace is lost; `baton restore` recreates the environment from git.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces.delete(STAGING, &Default::default()).await?;
    eventually_every(
        Duration::from_millis(250),
        Duration::from_secs(60),
        "the namespace to be gone",
        async || {
            Ok(match namespaces.get_opt(STAGING).await? {
                None => Ok(()),
                Some(ns) => Err(format!("{:?}", ns.status)),
            })
        },
    )
    .await?;
    let restored = alice
        .send(
            &nats,
            Verb::Restore,
            CommandRequest {
                actor: "alice".into(),
                environment: Some("staging".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(restored.ok, "{restored:?}");
    baton_tests::events::wait_for(
        &world.js,
        EventType::EnvironmentSynced,
        1,
        Duration::from_secs(90),
        |e| e.subject.content["how"] == "restored",
    )
    .await
    .context("the restore never finished")?;
    let modified: Vec<PromotionData> = world
        .events(EventType::EnvironmentModified)
        .await?
        .iter()
        .map(CdEvent::custom_data_as)
        .collect::<Result<_, _>>()?;
    let restores: Vec<_> = modified
        .iter()
        .filter(|p| p.action == PromotionAction::Restore)
        .collect();
    assert_eq!(restores.len(), 1, "one event per app");
    assert_eq!(
        restores[0].release.image.reference, digest,
        "the recorded digest, no rebuild"
    );
    assert_eq!(world.staging_image().await?.as_deref(), Some(digest.as_str()));
    let shop = deployments.get("shop").await?;
    assert_eq!(shop.status.and_then(|s| s.available_replicas), Some(2), "it runs again");
    world.stop.cancel();
    promoter.task.await??;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_detection_and_heal_never_fight_a_promotion_under_way() -> Result<()> {
    let mut world = World::start().await?;
    drift_policy(&world, "heal")?;
    world.start_drift_deployer(Duration::from_secs(1)).await?;
    let v1 = image("v1", "baton/acme_shop");
    let first = world.promote_deployment(&v1, PromotionAction::Promote).await?;
    assert_eq!(world.verdict(&first).await?.0, EventType::ServiceDeployed);
    eventually_every(
        Duration::from_millis(200),
        Duration::from_secs(30),
        "a synced record",
        async || {
            Ok(match drift_record(&world).await? {
                Some(r) if r.state == SyncState::Synced => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;

    // A promotion whose pods never become ready: its rollout stays under way, the cluster
    // differs from the first release the whole time.
    let slow = image("slow", "baton/acme_shop-never-ready");
    let commit = world.commit(
        "staging",
        &[
            ("deployment.yaml", deployment(&slow.reference, "")),
            ("config.yaml", CONFIG_MAP.to_owned()),
        ],
    )?;
    let second = world
        .promote("staging", STAGING, &commit, &slow, PromotionAction::Promote)
        .await?;
    baton_tests::events::wait_for(
        &world.js,
        EventType::DeploymentStarted,
        2,
        Duration::from_secs(30),
        |_| true,
    )
    .await
    .context("the second rollout never started")?;
    // While it rolls out, someone edits one of its objects: judged only once the rollout is
    // over, never healed under it.
    let config_maps: Api<ConfigMap> = Api::namespaced(world.cluster.client()?, STAGING);
    let by_hand = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    eventually_every(
        Duration::from_millis(100),
        Duration::from_secs(30),
        "the second's ConfigMap",
        async || {
            Ok(config_maps
                .get_opt("shop-settings")
                .await?
                .map(|_| ())
                .ok_or_else(|| "not yet".to_owned()))
        },
    )
    .await?;
    config_maps
        .patch(
            "shop-settings",
            &by_hand,
            &Patch::Merge(json!({"data": {"greeting": "edited"}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        world.events(EventType::EnvironmentDrifted).await?.is_empty(),
        "a rollout under way is not drift"
    );
    assert!(
        world.events(EventType::EnvironmentSynced).await?.is_empty(),
        "nothing healed"
    );
    assert_eq!(
        world.staging_image().await?.as_deref(),
        Some(slow.reference.as_str()),
        "the first release was not put back"
    );

    assert_eq!(
        config_maps
            .get("shop-settings")
            .await?
            .data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("edited"),
        "not healed under the rollout"
    );

    // A third promotion takes over (without the ConfigMap, which it prunes); once it is healthy
    // the environment is in sync with it.
    let fast = image("fast", "baton/acme_shop");
    let third = world.promote_deployment(&fast, PromotionAction::Promote).await?;
    assert_eq!(world.verdict(&second).await?.0, EventType::DeploymentSuperseded);
    assert_eq!(world.verdict(&third).await?.0, EventType::ServiceUpgraded);
    let record = eventually_every(
        Duration::from_millis(200),
        Duration::from_secs(30),
        "in sync with the third",
        async || {
            Ok(match drift_record(&world).await? {
                Some(r) if r.state == SyncState::Synced && r.config_commit == third.config_commit => Ok(r),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    assert!(record.heal_failed.is_none());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        world.events(EventType::EnvironmentDrifted).await?.is_empty(),
        "never drifted"
    );
    assert_eq!(world.staging_image().await?.as_deref(), Some(fast.reference.as_str()));
    world.stop().await
}
