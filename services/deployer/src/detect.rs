//! Drift detection: the deployer keeps comparing the live objects of every app in every
//! environment with the manifests of the promotion it last applied there (its config commit),
//! reports a drift once (`baton-environment.drifted`) and its end (`baton-environment.synced`),
//! and, where the environment's `drift` policy says `heal`, re-applies the config commit.
//!
//! The contract, in the order the code follows it:
//! 1. What an environment should run is the promotion the deployer last applied to it (KV
//!    `deployer.applied.<app>.<env>`); what it runs is every object carrying the app's and the
//!    environment's labels, and the release's objects by name.
//! 2. A full pass every `drift.interval` compares every app; between passes a watch of the
//!    objects carrying Baton's app label compares an app as soon as one of its objects changes
//!    or is deleted. An app whose rollout is under way (its rollout lease is held, or a newer
//!    promotion is recorded) is not compared: a promotion is never taken for drift.
//! 3. An object is compared with the apiserver's forced server-side apply dry run of the
//!    release's manifest as the app's field manager ([`crate::drift`]): fields other managers own
//!    that the release does not set are not drift. An object compared clean is not compared
//!    again until its resourceVersion or the promotion changes.
//! 4. What the comparison means is decided by [`drift::transition`] against the record in KV
//!    `deployer.drift.<app>.<env>`, written with compare-and-set: of several replicas, the one
//!    whose write wins reports, so a drift is reported once.
//! 5. Healing takes the app's rollout lease without waiting (a rollout holding it is a promotion
//!    in progress: left alone), checks that no newer promotion is recorded, and re-applies through
//!    the normal apply path, rollout health judged; a newer promotion arriving meanwhile
//!    interrupts it. A heal that does not end the drift is recorded and not tried again for the
//!    same drift.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use baton_kit::Outgoing;
use baton_kit::lease::{LockError, Locks};
use baton_kit::metrics::Metrics;
use baton_schemas::config::deployer::DriftSettings;
use baton_schemas::drift::{DriftData, DriftKind, DriftRecord, DriftedObject, SyncState, drift_key};
use baton_schemas::environments::{DriftPolicy, ENVIRONMENTS_FILE, EnvironmentsFile};
use baton_schemas::extensions::{EnvironmentDriftedContent, EnvironmentSyncedContent};
use baton_schemas::release::PromotionData;
use baton_schemas::subjects::sanitize_token;
use baton_schemas::{CdEvent, EventType};
use chrono::Utc;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::drift::{self, Transition};
use crate::error::DeployError;
use crate::handler::{APPLIED_PREFIX, Deployer, Guard, Rollout, applied_key, latest_key, lease_key, selector};
use crate::manifests::{APP_LABEL, ENVIRONMENT_LABEL, Manifest};
use crate::rollout::{Interrupt as _, Verdict};

/// The event source of what drift detection reports.
const SOURCE: &str = "/baton/deployer";

/// How long the watch gathers changes before comparing the apps they concern: a rollout or an
/// edit touches several objects at once.
const GATHER: Duration = Duration::from_millis(50);

/// Labels of the per-app drift metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    environment: String,
    app: String,
}

/// Labels of the report and heal counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    environment: String,
    outcome: String,
}

/// The drift metrics, registered with the service's.
#[derive(Debug, Clone)]
struct DriftMetrics {
    /// 1 while an app's environment is drifted, 0 once synced.
    drifted: Family<AppLabels, Gauge>,
    /// Drifts reported and ended, by environment (`drifted`, `synced`).
    reports: Family<OutcomeLabels, Counter>,
    /// Heals by outcome (`healthy`, `failed`, `skipped`).
    heals: Family<OutcomeLabels, Counter>,
    /// How long a full pass took.
    pass_seconds: Histogram,
}

impl DriftMetrics {
    fn register(metrics: &Metrics) -> Self {
        let this = Self {
            drifted: Family::default(),
            reports: Family::default(),
            heals: Family::default(),
            pass_seconds: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
        };
        metrics.with_registry(|registry| {
            registry.register(
                "deployer_drifted",
                "1 while the live objects of an app in an environment differ from its config commit",
                this.drifted.clone(),
            );
            registry.register(
                "deployer_drift_reports",
                "Drifts reported (drifted) and ended (synced), by environment",
                this.reports.clone(),
            );
            registry.register(
                "deployer_drift_heals",
                "Heals of a drift by outcome (healthy, failed, skipped)",
                this.heals.clone(),
            );
            registry.register(
                "deployer_drift_pass_seconds",
                "How long a full drift pass over every app took",
                this.pass_seconds.clone(),
            );
        });
        this
    }
}

/// What one full pass looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Apps (in an environment) compared.
    pub apps: usize,
    /// Objects of their releases compared.
    pub objects: usize,
    /// Apps found drifted.
    pub drifted: usize,
    /// The kinds of the releases per namespace: what the watch follows.
    watched: BTreeMap<String, BTreeSet<(String, String, String)>>,
}

/// An app's release as drift is judged against it: the promotion applied, its manifests, and
/// the environment's policy at its config commit.
struct Target {
    promotion: PromotionData,
    manifests: Arc<Vec<Manifest>>,
    policy: DriftPolicy,
}

/// Drift detection over every app the deployer applied.
#[derive(Debug)]
pub struct Detector {
    deployer: Deployer,
    settings: DriftSettings,
    /// Heals take the rollout lease without waiting: a held lease is a rollout in progress.
    heal_locks: Locks,
    metrics: DriftMetrics,
    /// Parsed manifests by config repo, commit and folder (a commit never changes).
    manifests: Mutex<HashMap<String, Arc<Vec<Manifest>>>>,
    /// The `drift` policy by config repo, commit and environment.
    policies: Mutex<HashMap<String, DriftPolicy>>,
    /// The head commit of each config repo as of the last pass: the policy in force is the one
    /// at the head, so a change to `environments.yaml` applies without a promotion.
    heads: Mutex<HashMap<String, String>>,
    /// Objects compared clean: `namespace/Kind/name` → (resourceVersion, promotion).
    clean: Mutex<HashMap<String, (String, String)>>,
    /// `drift.concurrency` permits: objects compared at once across every app of a pass, not
    /// per app (a namespace's apps are compared together).
    comparing: tokio::sync::Semaphore,
}

impl Detector {
    /// Drift detection for `deployer`'s apps, with `heal_locks` (the deployer's leases, taken
    /// without waiting), its metrics registered in `metrics`.
    pub fn new(deployer: Deployer, settings: DriftSettings, heal_locks: Locks, metrics: &Metrics) -> Self {
        Self {
            deployer,
            heal_locks,
            metrics: DriftMetrics::register(metrics),
            manifests: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            clean: Mutex::new(HashMap::new()),
            comparing: tokio::sync::Semaphore::new(settings.concurrency.max(1)),
            settings,
        }
    }

    /// Runs full passes every `drift.interval` and, with `drift.watch`, compares an app as soon
    /// as one of its objects changes, until `shutdown`. A failed pass is logged and tried again
    /// at the next interval.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.settings.interval.is_zero() {
            shutdown.cancelled().await;
            return;
        }
        let (changed, mut changes) = mpsc::channel::<(String, String, String)>(1024);
        let mut watches = tokio::task::JoinSet::new();
        let mut watching: HashSet<(String, String, String, String)> = HashSet::new();
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => match self.pass().await {
                    Ok(summary) => {
                        if self.settings.watch {
                            for (namespace, kinds) in &summary.watched {
                                for (group, version, kind) in kinds {
                                    let key = (namespace.clone(), group.clone(), version.clone(), kind.clone());
                                    // A watch that could not start (the apiserver did not answer
                                    // which resource the kind is) is tried again after the next pass.
                                    if !watching.contains(&key)
                                        && self.watch(&mut watches, namespace, group, version, kind, changed.clone()).await
                                    {
                                        watching.insert(key);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "drift pass failed; trying again at the next interval"),
                },
                Some(first) = changes.recv() => {
                    tokio::time::sleep(GATHER).await;
                    let mut apps = BTreeSet::from([first]);
                    while let Ok(more) = changes.try_recv() {
                        apps.insert(more);
                    }
                    for (namespace, app, environment) in apps {
                        if let Err(e) = self.check_one(&namespace, &app, &environment).await {
                            tracing::warn!(error = %e, app, environment, "drift check failed; the next pass tries again");
                        }
                    }
                }
            }
        }
        watches.abort_all();
    }

    /// Follows the objects of `kind` carrying Baton's app label in `namespace`, sending the
    /// namespace, app and environment of each change and deletion to `changed`. Whether the watch
    /// started: not for a kind the apiserver does not serve or could not say it serves.
    async fn watch(
        &self,
        watches: &mut tokio::task::JoinSet<()>,
        namespace: &str,
        group: &str,
        version: &str,
        kind: &str,
        changed: mpsc::Sender<(String, String, String)>,
    ) -> bool {
        let Some(api) = self.deployer.cluster.listable(group, version, kind, namespace).await else {
            return false;
        };
        let namespace = namespace.to_owned();
        let config = watcher::Config::default().labels(APP_LABEL);
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        watches.spawn(async move {
            loop {
                let object = match stream.next().await {
                    None => return,
                    Some(Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o))) => o,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "drift watch failed; it backs off and lists again");
                        continue;
                    }
                };
                let labels = object.metadata.labels.unwrap_or_default();
                if let (Some(app), Some(env)) = (labels.get(APP_LABEL), labels.get(ENVIRONMENT_LABEL))
                    && changed
                        .send((namespace.clone(), app.clone(), env.clone()))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        true
    }

    /// Compares every app the deployer applied, namespace by namespace (each kind listed once
    /// per namespace), reports what changed, and heals where the policy says.
    ///
    /// # Errors
    /// When the records of what was applied cannot be read. An app that cannot be compared is
    /// logged and left for the next pass.
    pub async fn pass(&self) -> Result<PassSummary, DeployError> {
        let started = Instant::now();
        let applied = self.applied().await?;
        let repos: BTreeSet<String> = applied.iter().map(|p| p.config_repository.clone()).collect();
        for url in repos {
            self.read_head(url).await;
        }
        self.forget_unused(&applied);
        let mut by_namespace: BTreeMap<String, Vec<Target>> = BTreeMap::new();
        for promotion in applied {
            match self.target(promotion).await {
                Ok(Some(target)) => by_namespace
                    .entry(target.promotion.namespace.clone())
                    .or_default()
                    .push(target),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read a release to compare; the next pass tries again"),
            }
        }
        let mut summary = PassSummary::default();
        let namespaces = futures::stream::iter(by_namespace.into_iter().map(|(namespace, targets)| async move {
            let kinds = Cluster::listed_kinds(targets.iter().flat_map(|t| t.manifests.iter()));
            let listed = self
                .deployer
                .cluster
                .labelled(&namespace, APP_LABEL, &kinds)
                .await?;
            let mut per_app: HashMap<(String, String), Vec<(String, DynamicObject)>> = HashMap::new();
            for (kind, object) in listed {
                let labels = object.metadata.labels.clone().unwrap_or_default();
                if let (Some(app), Some(env)) = (labels.get(APP_LABEL), labels.get(ENVIRONMENT_LABEL)) {
                    per_app.entry((app.clone(), env.clone())).or_default().push((kind, object));
                }
            }
            let watched: BTreeSet<(String, String, String)> = targets
                .iter()
                .flat_map(|t| t.manifests.iter())
                .map(|m| {
                    let (g, v) = m.group_version();
                    (g.to_owned(), v.to_owned(), m.kind.clone())
                })
                .collect();
            let checked = futures::future::join_all(targets.into_iter().map(|target| {
                let key = (sanitize_token(&target.promotion.app), target.promotion.environment.clone());
                let listed = per_app.remove(&key).unwrap_or_default();
                async move {
                    let objects = target.manifests.len();
                    match self.check(&target, listed).await {
                        Ok(Some(drifted)) => (objects, !drifted.is_empty()),
                        Ok(None) => (0, false),
                        Err(e) => {
                            tracing::warn!(error = %e, app = %target.promotion.app, environment = %target.promotion.environment, "drift check failed; the next pass tries again");
                            (0, false)
                        }
                    }
                }
            }))
            .await;
            Ok::<_, DeployError>((namespace, watched, checked))
        }))
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await?;
        for (namespace, watched, checked) in namespaces {
            summary.watched.insert(namespace, watched);
            for (objects, drifted) in checked {
                summary.apps += usize::from(objects > 0);
                summary.objects += objects;
                summary.drifted += usize::from(drifted);
            }
        }
        self.metrics.pass_seconds.observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            apps = summary.apps,
            objects = summary.objects,
            drifted = summary.drifted,
            "drift pass"
        );
        Ok(summary)
    }

    /// Drops what the caches hold for promotions no longer applied and commits no longer at a
    /// config repo's head: each promotion adds to them, and a deployer runs for months.
    fn forget_unused(&self, applied: &[PromotionData]) {
        let manifests: HashSet<String> = applied.iter().map(manifests_key).collect();
        let promotions: HashSet<&str> = applied.iter().map(|p| p.promotion.as_str()).collect();
        let heads = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let policies: HashSet<String> = applied
            .iter()
            .map(|p| {
                let commit = heads.get(&p.config_repository).unwrap_or(&p.config_commit);
                policy_key(p, commit)
            })
            .collect();
        self.manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, _| manifests.contains(key));
        self.policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, _| policies.contains(key));
        self.clean
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, (_, promotion)| promotions.contains(promotion.as_str()));
    }

    /// Compares one app in one environment (`app` as its label token), as the watch of
    /// `namespace` asks. The labels that ask are anyone's to write: an object in another
    /// namespace than the environment's asks nothing.
    async fn check_one(&self, namespace: &str, app: &str, environment: &str) -> Result<(), DeployError> {
        let Some(bytes) = self
            .deployer
            .state
            .get(applied_key(app, environment))
            .await
            .map_err(|e| DeployError::state("reading the applied promotion", e))?
        else {
            return Ok(());
        };
        let Ok(promotion) = serde_json::from_slice::<PromotionData>(&bytes) else {
            return Ok(());
        };
        if promotion.namespace != namespace {
            return Ok(());
        }
        let Some(target) = self.target(promotion).await? else {
            return Ok(());
        };
        let kinds = Cluster::listed_kinds(target.manifests.iter());
        let listed = self
            .deployer
            .cluster
            .labelled(&target.promotion.namespace, &selector(app, environment), &kinds)
            .await?;
        self.check(&target, listed).await?;
        Ok(())
    }

    /// Every promotion the deployer applied, one per app and environment.
    async fn applied(&self) -> Result<Vec<PromotionData>, DeployError> {
        const READING: &str = "listing the applied promotions";
        let state = &self.deployer.state;
        let keys: Vec<String> = state
            .keys()
            .await
            .map_err(|e| DeployError::state(READING, e))?
            .try_filter(|k| futures::future::ready(k.starts_with(&format!("{APPLIED_PREFIX}."))))
            .try_collect()
            .await
            .map_err(|e| DeployError::state(READING, e))?;
        let entries = futures::future::join_all(keys.iter().map(|k| state.get(k))).await;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(bytes) = entry.map_err(|e| DeployError::state(READING, e))?
                && let Ok(promotion) = serde_json::from_slice::<PromotionData>(&bytes)
            {
                out.push(promotion);
            }
        }
        Ok(out)
    }

    /// The release to compare an app with, unless its environment ignores drift.
    async fn target(&self, promotion: PromotionData) -> Result<Option<Target>, DeployError> {
        let policy = self.policy(&promotion).await;
        if policy == DriftPolicy::Ignore {
            return Ok(None);
        }
        let key = manifests_key(&promotion);
        let cached = self
            .manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let manifests = match cached {
            Some(m) => m,
            None => {
                let parsed = Arc::new(self.deployer.manifests(&promotion).await?);
                self.manifests
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, Arc::clone(&parsed));
                parsed
            }
        };
        Ok(Some(Target {
            promotion,
            manifests,
            policy,
        }))
    }

    /// Remembers the head commit `url` advertises (its `HEAD`, else its first branch); an
    /// unreachable repo keeps the last one known.
    async fn read_head(&self, url: String) {
        let sources = self.deployer.sources.clone();
        let remote = url.clone();
        let refs = tokio::task::spawn_blocking(move || sources.ls_remote(&remote)).await;
        let head = match refs {
            Ok(Ok(refs)) => refs
                .iter()
                .find(|r| r.name == "HEAD")
                .or_else(|| refs.iter().find(|r| r.name.starts_with("refs/heads/")))
                .map(|r| r.sha.clone()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, url, "cannot read the config repo's head; the last one known stays");
                None
            }
            Err(_) => None,
        };
        if let Some(head) = head {
            self.heads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(url, head);
        }
    }

    /// The environment's `drift` policy in `environments.yaml` at the config repo's head (as of
    /// the last pass; the promotion's commit before any); `report` when the file is missing or
    /// invalid there.
    async fn policy(&self, promotion: &PromotionData) -> DriftPolicy {
        let commit = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&promotion.config_repository)
            .cloned()
            .unwrap_or_else(|| promotion.config_commit.clone());
        let key = policy_key(promotion, &commit);
        if let Some(p) = self
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return *p;
        }
        let sources = self.deployer.sources.clone();
        let url = promotion.config_repository.clone();
        let text = tokio::task::spawn_blocking(move || -> Option<String> {
            let mirror = sources.mirror_with(&url, &commit).ok()?;
            let oid = git2::Oid::from_str(&commit).ok()?;
            let tree = mirror.find_commit(oid).ok()?.tree().ok()?;
            let entry = tree.get_path(std::path::Path::new(ENVIRONMENTS_FILE)).ok()?;
            let blob = entry.to_object(&mirror).ok()?.into_blob().ok()?;
            String::from_utf8(blob.content().to_vec()).ok()
        })
        .await
        .ok()
        .flatten();
        let policy = text
            .and_then(|t| EnvironmentsFile::parse(&t).ok())
            .and_then(|f| f.get(&promotion.environment).map(|e| e.drift))
            .unwrap_or_default();
        self.policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, policy);
        policy
    }

    /// Whether a rollout of the app is under way: its rollout lease is held, or a newer
    /// promotion than the one applied is recorded.
    async fn rolling_out(&self, promotion: &PromotionData) -> Result<bool, DeployError> {
        let state = &self.deployer.state;
        let latest = state
            .get(latest_key(&promotion.app, &promotion.environment))
            .await
            .map_err(|e| DeployError::state("reading the latest promotion", e))?
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if latest
            .as_ref()
            .and_then(|l| l.get("promotion"))
            .and_then(serde_json::Value::as_str)
            .is_some_and(|p| p != promotion.promotion)
        {
            return Ok(true);
        }
        Ok(self
            .deployer
            .rollout_holder(&promotion.namespace, &promotion.app)
            .await?
            .is_some())
    }

    /// Compares one app's live objects (`listed`: those carrying its labels) with its release,
    /// then records and reports what that means and heals where the policy says. `None` when
    /// the app was not compared (a rollout is under way).
    async fn check(
        &self,
        target: &Target,
        listed: Vec<(String, DynamicObject)>,
    ) -> Result<Option<Vec<DriftedObject>>, DeployError> {
        let promotion = &target.promotion;
        if self.rolling_out(promotion).await? {
            return Ok(None);
        }
        let objects = self.compare(target, listed).await?;
        // Looked at again after comparing: a promotion that began meanwhile is not drift.
        if self.rolling_out(promotion).await? {
            return Ok(None);
        }
        self.judge(target, &objects).await?;
        Ok(Some(objects))
    }

    /// How the app's live objects differ from its release.
    async fn compare(
        &self,
        target: &Target,
        listed: Vec<(String, DynamicObject)>,
    ) -> Result<Vec<DriftedObject>, DeployError> {
        let promotion = &target.promotion;
        let namespace = promotion.namespace.as_str();
        let token = sanitize_token(&promotion.app);
        let cluster = &self.deployer.cluster;
        let app_manager = cluster.manager_of(&token);
        let resolved = self
            .deployer
            .resolve(promotion, target.manifests.as_ref().clone())
            .await?;
        let release: Vec<String> = resolved.iter().map(|(m, _, _)| m.display()).collect();
        let mut live: HashMap<String, DynamicObject> = HashMap::new();
        let mut labelled = Vec::new();
        for (kind, object) in listed {
            // An object being deleted is as good as gone.
            if object.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = format!("{kind}/{}", object.metadata.name.clone().unwrap_or_default());
            labelled.push(name.clone());
            live.insert(name, object);
        }
        let (app_manager, token) = (app_manager.as_str(), token.as_str());
        // Gathered first: a stream over a borrowing closure is not `Send` for every lifetime.
        let mut comparisons = Vec::with_capacity(resolved.len());
        for (manifest, resource, _) in &resolved {
            let found = live.get(&manifest.display()).cloned();
            comparisons.push(async move {
                let _permit = self.comparing.acquire().await.expect("the semaphore is never closed");
                let object = match found {
                    Some(o) => Some(o),
                    // Its labels may have been taken off: looked up by name.
                    None => cluster
                        .live(namespace, manifest, resource)
                        .await?
                        .filter(|o| o.metadata.deletion_timestamp.is_none()),
                };
                let Some(object) = object else {
                    return Ok::<_, DeployError>(Some(DriftedObject {
                        object: manifest.display(),
                        kind: DriftKind::Missing,
                        fields: Vec::new(),
                    }));
                };
                let memo = format!("{namespace}/{}", manifest.display());
                let version = (
                    object.metadata.resource_version.clone().unwrap_or_default(),
                    promotion.promotion.clone(),
                );
                if self
                    .clean
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&memo)
                    == Some(&version)
                {
                    return Ok(None);
                }
                let expected = cluster.dry_run(namespace, token, manifest, resource).await?;
                let entries = object.metadata.managed_fields.clone().unwrap_or_default();
                let ours = [app_manager, cluster.shared_manager()];
                let (expected, live) = (to_json(&expected), to_json(&object));
                let drifted =
                    drift::compare_object(&manifest.kind, &manifest.display(), &expected, &live, &entries, &ours);
                if drifted.is_none() {
                    self.clean
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(memo, version);
                }
                Ok(drifted)
            });
        }
        // At most `drift.concurrency` at once, by the permits each takes.
        let compared = futures::future::try_join_all(comparisons).await?;
        let mut objects: Vec<DriftedObject> = compared.into_iter().flatten().collect();
        objects.extend(drift::extras(&labelled, &release));
        objects.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(objects)
    }

    /// Records what a comparison found and reports a change; heals where the policy says.
    async fn judge(&self, target: &Target, objects: &[DriftedObject]) -> Result<(), DeployError> {
        let promotion = &target.promotion;
        let key = drift_key(&promotion.app, &promotion.environment);
        let entry = self
            .deployer
            .state
            .entry(&key)
            .await
            .map_err(|e| DeployError::state("reading the drift record", e))?;
        let (previous, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => {
                (serde_json::from_slice::<DriftRecord>(&e.value).ok(), Some(e.revision))
            }
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        };
        let now = Utc::now();
        let labels = AppLabels {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
        };
        match drift::transition(previous.as_ref(), &promotion.config_commit, objects, now) {
            Transition::Unchanged => {
                if let Some(record) = previous.filter(|r| r.state == SyncState::Drifted && r.heal_failed.is_none())
                    && target.policy == DriftPolicy::Heal
                {
                    self.heal(target, record, revision).await?;
                }
            }
            Transition::Record(record) => {
                self.write(&key, &record, revision).await?;
                self.metrics.drifted.get_or_create(&labels).set(0);
            }
            Transition::Drifted(record) => {
                if let Some(revision) = self.write(&key, &record, revision).await? {
                    self.metrics.drifted.get_or_create(&labels).set(1);
                    self.count_report(promotion, "drifted");
                    let data = self.data(target, objects.to_vec(), &record, None, None);
                    tracing::warn!(app = %promotion.app, environment = %promotion.environment, objects = ?record.objects, "drift");
                    self.publish(self.drifted_event(target, &record, data)).await;
                    if target.policy == DriftPolicy::Heal {
                        self.heal(target, record, Some(revision)).await?;
                    }
                }
            }
            Transition::Synced(record) => {
                if self.write(&key, &record, revision).await?.is_some() {
                    let how = match &previous {
                        Some(p) if p.config_commit != promotion.config_commit => "rolled-out",
                        _ => "resolved",
                    };
                    self.synced(target, previous.as_ref(), &record, how, None).await;
                }
            }
        }
        Ok(())
    }

    /// Writes `record` under `key` if it is still at `revision`: the new revision, or `None`
    /// when another replica wrote first (and so reports).
    async fn write(&self, key: &str, record: &DriftRecord, revision: Option<u64>) -> Result<Option<u64>, DeployError> {
        let bytes = serde_json::to_vec(record).expect("serializes");
        let state = &self.deployer.state;
        let written = match revision {
            Some(revision) => match state.update(key, bytes.into(), revision).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                Err(e) => return Err(DeployError::state("recording the drift", e)),
            },
            None => match state.create(key, bytes.into()).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(DeployError::state("recording the drift", e)),
            },
        };
        Ok(written)
    }

    /// Re-applies the app's config commit through the normal apply path, unless a rollout is
    /// under way; records the outcome.
    async fn heal(&self, target: &Target, record: DriftRecord, revision: Option<u64>) -> Result<(), DeployError> {
        let promotion = &target.promotion;
        let environment = promotion.environment.clone();
        let outcome = |o: &str| OutcomeLabels {
            environment: environment.clone(),
            outcome: o.to_owned(),
        };
        let lease = match self
            .heal_locks
            .acquire(
                &lease_key(&promotion.namespace, &promotion.app),
                &format!("heal of {}", promotion.promotion),
            )
            .await
        {
            Ok(lease) => lease,
            // A rollout holds it: a promotion in progress is never fought.
            Err(LockError::Busy { .. }) => {
                self.metrics.heals.get_or_create(&outcome("skipped")).inc();
                return Ok(());
            }
            Err(e) => return Err(DeployError::Lease(e)),
        };
        let mut guard = Guard {
            deployer: &self.deployer,
            key: latest_key(&promotion.app, &promotion.environment),
            promotion: promotion.promotion.clone(),
            lease,
            renewed: Instant::now(),
        };
        if guard.interrupted().await? {
            guard.lease.release().await;
            self.metrics.heals.get_or_create(&outcome("skipped")).inc();
            return Ok(());
        }
        tracing::info!(app = %promotion.app, environment = %promotion.environment, commit = %promotion.config_commit, "healing drift");
        let result = async {
            self.deployer
                .cluster
                .ensure_namespace(&promotion.namespace, &promotion.environment)
                .await?;
            self.deployer
                .apply_and_watch(promotion, target.manifests.as_ref().clone(), &mut guard, true)
                .await
        }
        .await;
        guard.lease.release().await;
        let key = drift_key(&promotion.app, &promotion.environment);
        match result {
            Ok(Rollout {
                verdict: Verdict::Healthy,
                waited,
                ..
            }) => {
                self.metrics.heals.get_or_create(&outcome("healthy")).inc();
                // Compared again: a heal may leave what is not Baton's to delete.
                let kinds = Cluster::listed_kinds(target.manifests.iter());
                let token = sanitize_token(&promotion.app);
                let listed = self
                    .deployer
                    .cluster
                    .labelled(&promotion.namespace, &selector(&token, &promotion.environment), &kinds)
                    .await?;
                let left = self.compare(target, listed).await?;
                let current = self.deployer.state.entry(&key).await.ok().flatten().map(|e| e.revision);
                if left.is_empty() {
                    let synced = DriftRecord {
                        state: SyncState::Synced,
                        config_commit: promotion.config_commit.clone(),
                        objects: Vec::new(),
                        fingerprint: String::new(),
                        since: Utc::now(),
                        heal_failed: None,
                    };
                    if self.write(&key, &synced, current).await?.is_some() {
                        self.synced(target, Some(&record), &synced, "healed", Some(waited))
                            .await;
                    }
                } else {
                    let names: Vec<String> = left.iter().map(|o| o.object.clone()).collect();
                    let failed = DriftRecord {
                        heal_failed: Some(format!(
                            "re-applied, but {} still differ (objects not applied by Baton are not deleted)",
                            names.join(", ")
                        )),
                        objects: names,
                        fingerprint: drift::fingerprint(&left),
                        ..record
                    };
                    self.write(&key, &failed, current).await?;
                }
            }
            Ok(Rollout {
                verdict: Verdict::Failed { reason, .. },
                ..
            }) => {
                self.metrics.heals.get_or_create(&outcome("failed")).inc();
                tracing::warn!(app = %promotion.app, environment = %promotion.environment, reason, "heal failed");
                let failed = DriftRecord {
                    heal_failed: Some(reason),
                    ..record
                };
                let current = self.deployer.state.entry(&key).await.ok().flatten().map(|e| e.revision);
                self.write(&key, &failed, current.or(revision)).await?;
            }
            Ok(Rollout {
                verdict: Verdict::Superseded,
                ..
            }) => {
                self.metrics.heals.get_or_create(&outcome("skipped")).inc();
            }
            // The release cannot be applied as it is: recorded, not tried again for this drift.
            Err(e) if e.is_release_fault() => {
                self.metrics.heals.get_or_create(&outcome("failed")).inc();
                tracing::warn!(app = %promotion.app, environment = %promotion.environment, error = %e, "heal failed");
                let failed = DriftRecord {
                    heal_failed: Some(e.to_string()),
                    ..record
                };
                let current = self.deployer.state.entry(&key).await.ok().flatten().map(|e| e.revision);
                self.write(&key, &failed, current.or(revision)).await?;
            }
            Err(e) => {
                self.metrics.heals.get_or_create(&outcome("failed")).inc();
                return Err(e);
            }
        }
        Ok(())
    }

    async fn synced(
        &self,
        target: &Target,
        previous: Option<&DriftRecord>,
        record: &DriftRecord,
        how: &str,
        waited: Option<u64>,
    ) {
        let promotion = &target.promotion;
        self.metrics
            .drifted
            .get_or_create(&AppLabels {
                environment: promotion.environment.clone(),
                app: promotion.app.clone(),
            })
            .set(0);
        self.count_report(promotion, "synced");
        let began = previous.map_or(record.since, |p| p.since);
        let mut data = self.data(target, Vec::new(), record, Some(record.since), waited);
        data.detected_at = began;
        tracing::info!(app = %promotion.app, environment = %promotion.environment, how, "drift ended");
        let content = EnvironmentSyncedContent {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
            how: how.to_owned(),
        };
        let seed = format!("{}:{}", promotion.config_commit, record.since.to_rfc3339());
        self.publish(self.event(EventType::EnvironmentSynced, "synced", target, &seed, content, &data))
            .await;
    }

    fn count_report(&self, promotion: &PromotionData, outcome: &str) {
        self.metrics
            .reports
            .get_or_create(&OutcomeLabels {
                environment: promotion.environment.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    fn data(
        &self,
        target: &Target,
        objects: Vec<DriftedObject>,
        record: &DriftRecord,
        synced_at: Option<chrono::DateTime<Utc>>,
        rollout_wait_ms: Option<u64>,
    ) -> DriftData {
        DriftData {
            policy: Some(target.policy.as_str().to_owned()),
            objects,
            synced_at,
            rollout_wait_ms,
            ..DriftData::of(&target.promotion, record.since)
        }
    }

    fn drifted_event(&self, target: &Target, record: &DriftRecord, data: DriftData) -> Outgoing {
        let content = EnvironmentDriftedContent {
            environment: target.promotion.environment.clone(),
            app: target.promotion.app.clone(),
            objects: record.objects.clone(),
            policy: target.policy.as_str().to_owned(),
        };
        let seed = format!("{}:{}", target.promotion.config_commit, record.fingerprint);
        self.event(EventType::EnvironmentDrifted, "drifted", target, &seed, content, &data)
    }

    /// An event about an app's drift, in its release's chain. Its id derives from what it
    /// reports, so the same report published twice is one event.
    fn event(
        &self,
        ty: EventType,
        label: &str,
        target: &Target,
        seed: &str,
        content: impl serde::Serialize,
        data: &DriftData,
    ) -> Outgoing {
        let promotion = &target.promotion;
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!(
                "baton:deployer:drift:{label}:{}:{}:{seed}",
                promotion.app, promotion.environment
            )
            .as_bytes(),
        )
        .to_string();
        let release = &promotion.release.release;
        let event = CdEvent::new(ty, id, SOURCE, release.clone(), content)
            .and_then(|e| e.with_custom_data(data))
            .expect("drift events serialize")
            .with_chain_id(release.clone());
        Outgoing::new(promotion.app.clone(), event)
    }

    /// Publishes a report; a failure is logged (the record is written, so it is not reported
    /// again: the state in KV and `baton status` still show it).
    async fn publish(&self, outgoing: Outgoing) {
        if let Err(e) = baton_kit::events::publish(&self.deployer.jetstream, &outgoing).await {
            tracing::warn!(error = %e, "could not publish a drift report");
        }
    }
}

/// The key of a promotion's parsed manifests in [`Detector`]'s cache: its config repo, commit
/// and folder.
fn manifests_key(promotion: &PromotionData) -> String {
    format!(
        "{}\0{}\0{}",
        promotion.config_repository, promotion.config_commit, promotion.manifests_path
    )
}

/// The key of an environment's `drift` policy at `commit` of its config repo in [`Detector`]'s
/// cache.
fn policy_key(promotion: &PromotionData, commit: &str) -> String {
    format!("{}\0{commit}\0{}", promotion.config_repository, promotion.environment)
}

fn to_json(object: &DynamicObject) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or_default()
}
