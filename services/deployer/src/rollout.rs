//! Judging a rollout: every Deployment, StatefulSet and DaemonSet of the release must become
//! fully updated and available. It fails when a Deployment reports `ProgressDeadlineExceeded`,
//! when a container crash-loops past the restart threshold, when a pod cannot pull its image
//! for longer than the grace period, or when the whole rollout takes longer than its timeout.
//!
//! The rollout is watched, not polled: kube-rs's `watcher` follows the release's workloads of
//! each kind in the namespace (selected by Baton's app and environment labels) and, for each
//! workload, its pods and a Deployment's ReplicaSets (selected by the workload's pod selector).
//! Every change is judged as it arrives. Between changes the rollout is judged again every
//! `poll_interval`, because some verdicts come from time passing, not from the cluster (the
//! timeout, the image pull grace), and a later promotion of the app, which stops the watch,
//! shows in the deployer's own state, not in the cluster.
//!
//! The judgement itself ([`Judge`]) is a pure function of what the watches show and the time,
//! unit-tested below; [`watch`] only feeds it.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_schemas::release::PodReport;
use futures::StreamExt as _;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::core::Selector;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::error::ClusterError;
use crate::manifests::Manifest;

/// Failures in a row (each after the watcher's backoff) after which a watch gives up and the
/// promotion is retried: the rollout cannot be judged on what the watch last showed.
const WATCH_ATTEMPTS: u32 = 3;

/// How a rollout is judged.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole rollout's deadline.
    pub timeout: Duration,
    /// Restarts of a crash-looping container that fail it.
    pub crashloop_restarts: u32,
    /// How long a pod may fail to pull its image.
    pub image_pull_grace: Duration,
    /// How often the rollout is judged again between changes the watch reports: the time
    /// limits, a later promotion and the lease renewal are checked this often.
    pub poll_interval: Duration,
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every workload is updated and available.
    Healthy,
    /// It failed: why, and the pods at fault.
    Failed {
        /// In words an operator can act on.
        reason: String,
        /// The failing pods.
        pods: Vec<PodReport>,
    },
    /// A newer promotion took over.
    Superseded,
}

/// Where a workload stands.
#[derive(Debug)]
enum Progress {
    Done,
    Waiting(String),
    Failed(String),
}

/// Asked while the rollout is watched (at its start, then every `poll_interval`) whether to
/// stop watching because a newer promotion arrived.
pub trait Interrupt: Send {
    /// What stops the watch when the check itself fails (a lost lease, say).
    type Error: From<ClusterError>;
    /// `Ok(true)`: stop, superseded.
    fn interrupted(&mut self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

/// The kinds whose rollout is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// The kind's name, as manifests write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
        }
    }
}

/// A workload of the release, whose rollout is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its kind.
    pub kind: WorkloadKind,
    /// `metadata.name`.
    pub name: String,
    /// Its pods' selector as applied (`spec.selector`, which the apiserver keeps immutable):
    /// the pods, and a Deployment's ReplicaSets, that the watch follows. `None` when the
    /// manifest has none Baton can read: the workload is then judged by its status alone.
    pub selector: Option<Selector>,
}

impl Workload {
    /// The workload `manifest` describes, or `None` for other kinds.
    pub fn of(manifest: &Manifest) -> Option<Self> {
        let kind = match manifest.kind.as_str() {
            "Deployment" => WorkloadKind::Deployment,
            "StatefulSet" => WorkloadKind::StatefulSet,
            "DaemonSet" => WorkloadKind::DaemonSet,
            _ => return None,
        };
        let selector = manifest
            .object
            .pointer("/spec/selector")
            .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
            .and_then(|s| Selector::try_from(s).ok())
            .filter(|s| !s.selects_all());
        Some(Self {
            kind,
            name: manifest.name.clone(),
            selector,
        })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// A workload as the apiserver last showed it.
#[derive(Debug, Clone)]
pub enum Live {
    /// A Deployment.
    Deployment(Arc<Deployment>),
    /// A StatefulSet.
    StatefulSet(Arc<StatefulSet>),
    /// A DaemonSet.
    DaemonSet(Arc<DaemonSet>),
}

/// What the watches show of one workload.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The workload of the release.
    pub workload: &'a Workload,
    /// The object in the cluster, once seen.
    pub live: Option<Live>,
    /// The ReplicaSets its selector picks (Deployments only).
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    /// The pods its selector picks.
    pub pods: Vec<Arc<Pod>>,
}

/// Judges a rollout over time. Pure: what the watches show and the time are its inputs.
#[derive(Debug)]
pub struct Judge {
    limits: Limits,
    started: Instant,
    /// Since when each pod has been failing to pull its image.
    pulling_since: HashMap<String, Instant>,
    /// What the rollout waited for last, for the timeout's reason.
    last_wait: String,
}

impl Judge {
    /// A rollout judged by `limits`, started at `started`.
    pub fn new(limits: Limits, started: Instant) -> Self {
        Self {
            limits,
            started,
            pulling_since: HashMap::new(),
            last_wait: String::new(),
        }
    }

    /// The verdict on what the watches show at `now`, or `None` while the rollout goes on.
    pub fn judge(&mut self, observed: &[Observed<'_>], now: Instant) -> Option<Verdict> {
        let mut all_done = true;
        let mut unready = Vec::new();
        for seen in observed {
            let (progress, pods) = assess(seen);
            let failed = |reason: String| Verdict::Failed {
                reason: format!("{}: {reason}", seen.workload),
                pods: pods.iter().filter(|p| !p.ready).cloned().collect(),
            };
            match progress {
                Progress::Done => {}
                Progress::Failed(reason) => return Some(failed(reason)),
                Progress::Waiting(why) => {
                    all_done = false;
                    self.last_wait = format!("{}: {why}", seen.workload);
                }
            }
            // Pods tell about crash loops and pull errors long before the progress deadline.
            for pod in &pods {
                let detail = || pod.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                match pod.reason.as_deref() {
                    Some("CrashLoopBackOff") if pod.restarts >= self.limits.crashloop_restarts => {
                        return Some(failed(format!(
                            "pod {} is crash-looping ({} restarts{})",
                            pod.name,
                            pod.restarts,
                            detail()
                        )));
                    }
                    Some(reason @ ("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName")) => {
                        let since = *self.pulling_since.entry(pod.name.clone()).or_insert(now);
                        if now.saturating_duration_since(since) >= self.limits.image_pull_grace {
                            return Some(failed(format!(
                                "pod {} cannot pull its image ({reason}{})",
                                pod.name,
                                detail()
                            )));
                        }
                    }
                    _ => {
                        self.pulling_since.remove(&pod.name);
                    }
                }
            }
            unready.extend(pods.into_iter().filter(|p| !p.ready));
        }
        if all_done {
            return Some(Verdict::Healthy);
        }
        if now.saturating_duration_since(self.started) >= self.limits.timeout {
            return Some(Verdict::Failed {
                reason: format!(
                    "the rollout did not finish within {} (last: {})",
                    humanize(self.limits.timeout),
                    self.last_wait
                ),
                pods: unready,
            });
        }
        None
    }
}

/// Where one workload stands, and the pods of the revision being rolled out.
fn assess(seen: &Observed<'_>) -> (Progress, Vec<PodReport>) {
    /// Which of the selected pods belong to the revision being rolled out.
    enum Revision {
        /// None yet (the controller has not taken up the applied spec).
        Unknown,
        /// Every selected pod.
        Any,
        /// The pods carrying this label value.
        Labelled(&'static str, String),
    }
    let Some(live) = &seen.live else {
        return (Progress::Waiting("not in the namespace yet".into()), Vec::new());
    };
    let (progress, revision) = match live {
        Live::Deployment(d) => {
            // Only the pods of the newest ReplicaSet judge this rollout: the old ones (a
            // crash-looping release being rolled back) are on their way out. Until the
            // controller has seen the applied spec, its newest ReplicaSet is the previous one.
            let revision = newest_pod_template_hash(d, &seen.replica_sets)
                .filter(|_| seen_by_controller(d))
                .map_or(Revision::Unknown, |hash| Revision::Labelled("pod-template-hash", hash));
            (deployment_progress(d), revision)
        }
        Live::StatefulSet(s) => {
            let revision = s
                .status
                .as_ref()
                .and_then(|st| st.update_revision.clone())
                .map_or(Revision::Any, |r| Revision::Labelled("controller-revision-hash", r));
            (stateful_set_progress(s), revision)
        }
        Live::DaemonSet(d) => (daemon_set_progress(d), Revision::Any),
    };
    let pods = seen
        .pods
        .iter()
        // Pods being deleted no longer count.
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| match &revision {
            Revision::Unknown => false,
            Revision::Any => true,
            Revision::Labelled(key, value) => p.metadata.labels.as_ref().and_then(|l| l.get(*key)) == Some(value),
        })
        .map(|p| report(p))
        .collect();
    (progress, pods)
}

fn humanize(d: Duration) -> String {
    if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// The `pod-template-hash` of the Deployment's newest ReplicaSet (the one it owns carrying its
/// current revision), or `None` while that ReplicaSet does not exist yet.
fn newest_pod_template_hash(deployment: &Deployment, replica_sets: &[Arc<ReplicaSet>]) -> Option<String> {
    const REVISION: &str = "deployment.kubernetes.io/revision";
    let revision = deployment.metadata.annotations.as_ref()?.get(REVISION)?;
    replica_sets.iter().find_map(|rs| {
        let owned = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == deployment.metadata.uid.as_ref());
        let current = rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)) == Some(revision);
        (owned && current)
            .then(|| rs.metadata.labels.as_ref()?.get("pod-template-hash").cloned())
            .flatten()
    })
}

/// Where a StatefulSet stands.
fn stateful_set_progress(s: &StatefulSet) -> Progress {
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = s.metadata.generation.unwrap_or(0);
    let Some(st) = &s.status else {
        return Progress::Waiting("no status yet".into());
    };
    let observed = st.observed_generation.unwrap_or(0) >= generation;
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let same_revision = st.current_revision == st.update_revision;
    if observed && ready == want && updated == want && same_revision {
        Progress::Done
    } else {
        Progress::Waiting(format!("{updated} of {want} updated, {ready} ready"))
    }
}

/// Where a DaemonSet stands.
fn daemon_set_progress(d: &DaemonSet) -> Progress {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = &d.status else {
        return Progress::Waiting("no status yet".into());
    };
    let observed = st.observed_generation.unwrap_or(0) >= generation;
    let want = st.desired_number_scheduled;
    let updated = st.updated_number_scheduled.unwrap_or(0);
    let available = st.number_available.unwrap_or(0);
    if observed && updated == want && available == want {
        Progress::Done
    } else {
        Progress::Waiting(format!("{updated} of {want} updated, {available} available"))
    }
}

/// Whether the Deployment controller has observed the Deployment's current spec.
fn seen_by_controller(d: &Deployment) -> bool {
    d.status.as_ref().and_then(|st| st.observed_generation).unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Where a Deployment stands.
fn deployment_progress(d: &Deployment) -> Progress {
    let seen = seen_by_controller(d);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &d.status else {
        return Progress::Waiting("no status yet".into());
    };
    // A deadline the controller reported before it saw this spec belongs to the previous
    // rollout (a release that failed, being replaced by this one): it judges nothing here.
    if let Some(c) = st.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) && seen
    {
        return Progress::Failed(format!(
            "ProgressDeadlineExceeded: {}",
            c.message.clone().unwrap_or_default()
        ));
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    if seen && updated == want && available == want && total == want {
        Progress::Done
    } else {
        Progress::Waiting(format!(
            "{updated} of {want} updated, {available} available, {total} total"
        ))
    }
}

/// Watches `workloads` in `namespace` until a verdict: the workloads of each kind labelled
/// `labels` (Baton's app and environment labels), and each workload's pods (and a Deployment's
/// ReplicaSets) by its selector. `interrupt` is asked at the start and every `poll_interval`.
///
/// # Errors
/// [`ClusterError::Watch`] when a watch fails `WATCH_ATTEMPTS` times in a row, and what
/// `interrupt` fails with.
pub async fn watch<I: Interrupt>(
    client: &Client,
    namespace: &str,
    labels: &str,
    workloads: &[Workload],
    limits: Limits,
    interrupt: &mut I,
) -> Result<Verdict, I::Error> {
    let mut judge = Judge::new(limits, Instant::now());
    let (mut watches, mut changes) = Watches::start(client, namespace, labels, workloads);
    let mut tick = tokio::time::interval(limits.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // The first tick is at once: a promotion superseded already is not judged.
            biased;
            _ = tick.tick() => {
                if interrupt.interrupted().await? {
                    return Ok(Verdict::Superseded);
                }
            }
            Some((index, change)) = changes.next() => watches.record(index, change)?,
        }
        if watches.current()
            && let Some(verdict) = judge.judge(&watches.observed(workloads), Instant::now())
        {
            return Ok(verdict);
        }
    }
}

/// A change one of the watches reported.
enum Change {
    Deployment(Event<Deployment>),
    StatefulSet(Event<StatefulSet>),
    DaemonSet(Event<DaemonSet>),
    /// Of the ReplicaSets of the workload at this index.
    ReplicaSet(usize, Event<ReplicaSet>),
    /// Of the pods of the workload at this index.
    Pod(usize, Event<Pod>),
}

/// Every watch's changes in one stream, each tagged with the index of its watch.
type Changes = SelectAll<BoxStream<'static, (usize, Result<Change, watcher::Error>)>>;

/// How one watch is doing.
#[derive(Debug)]
struct Feed {
    /// What it watches, for errors.
    resource: String,
    /// Whether its first list is complete.
    listed: bool,
    /// Failures since its last change.
    failures: u32,
}

/// What the rollout's watches have shown so far, kept in one reflector store per watch.
struct Watches {
    namespace: String,
    feeds: Vec<Feed>,
    deployments: Writer<Deployment>,
    stateful_sets: Writer<StatefulSet>,
    daemon_sets: Writer<DaemonSet>,
    /// Per workload, in the order of `workloads`.
    replica_sets: Vec<Writer<ReplicaSet>>,
    /// Per workload, in the order of `workloads`.
    pods: Vec<Writer<Pod>>,
}

impl Watches {
    /// Starts the watches: one per kind among `workloads`, then the pods (and a Deployment's
    /// ReplicaSets) of each workload with a selector.
    fn start(client: &Client, namespace: &str, labels: &str, workloads: &[Workload]) -> (Self, Changes) {
        let mut changes = Changes::new();
        let mut feeds = Vec::new();
        let mut add = |resource: String, stream: BoxStream<'static, Result<Change, watcher::Error>>| {
            let index = feeds.len();
            feeds.push(Feed {
                resource,
                listed: false,
                failures: 0,
            });
            changes.push(stream.map(move |change| (index, change)).boxed());
        };
        let kinds: BTreeSet<WorkloadKind> = workloads.iter().map(|w| w.kind).collect();
        for kind in kinds {
            let what = format!("{}s labelled {labels}", kind.as_str());
            let stream = match kind {
                WorkloadKind::Deployment => follow(client, namespace, labels, Change::Deployment),
                WorkloadKind::StatefulSet => follow(client, namespace, labels, Change::StatefulSet),
                WorkloadKind::DaemonSet => follow(client, namespace, labels, Change::DaemonSet),
            };
            add(what, stream);
        }
        for (index, workload) in workloads.iter().enumerate() {
            let Some(selector) = &workload.selector else {
                continue;
            };
            let selector = selector.to_string();
            add(
                format!("pods of {workload}"),
                follow(client, namespace, &selector, move |e| Change::Pod(index, e)),
            );
            if workload.kind == WorkloadKind::Deployment {
                add(
                    format!("ReplicaSets of {workload}"),
                    follow(client, namespace, &selector, move |e| Change::ReplicaSet(index, e)),
                );
            }
        }
        let watches = Self {
            namespace: namespace.to_owned(),
            feeds,
            deployments: Writer::default(),
            stateful_sets: Writer::default(),
            daemon_sets: Writer::default(),
            replica_sets: workloads.iter().map(|_| Writer::default()).collect(),
            pods: workloads.iter().map(|_| Writer::default()).collect(),
        };
        (watches, changes)
    }

    /// Takes in a change of watch `index`, or its failure.
    ///
    /// # Errors
    /// [`ClusterError::Watch`] when the watch has failed [`WATCH_ATTEMPTS`] times in a row.
    fn record(&mut self, index: usize, change: Result<Change, watcher::Error>) -> Result<(), ClusterError> {
        let feed = &mut self.feeds[index];
        let change = match change {
            Ok(change) => change,
            Err(source) => {
                feed.failures += 1;
                tracing::debug!(resource = %feed.resource, error = %source, "the rollout's watch failed");
                if feed.failures >= WATCH_ATTEMPTS {
                    return Err(ClusterError::Watch {
                        resource: feed.resource.clone(),
                        namespace: self.namespace.clone(),
                        attempts: feed.failures,
                        source,
                    });
                }
                return Ok(());
            }
        };
        feed.failures = 0;
        feed.listed |= match change {
            Change::Deployment(e) => apply(&mut self.deployments, &e),
            Change::StatefulSet(e) => apply(&mut self.stateful_sets, &e),
            Change::DaemonSet(e) => apply(&mut self.daemon_sets, &e),
            Change::ReplicaSet(i, e) => apply(&mut self.replica_sets[i], &e),
            Change::Pod(i, e) => apply(&mut self.pods[i], &e),
        };
        Ok(())
    }

    /// Whether every watch has listed once and none is failing: only then do the stores show
    /// the cluster as it is.
    fn current(&self) -> bool {
        self.feeds.iter().all(|f| f.listed && f.failures == 0)
    }

    /// What the stores show of each of `workloads` (in the order [`Watches::start`] had them).
    fn observed<'a>(&self, workloads: &'a [Workload]) -> Vec<Observed<'a>> {
        workloads
            .iter()
            .enumerate()
            .map(|(index, workload)| {
                let named = |meta: &kube::core::ObjectMeta| meta.name.as_deref() == Some(workload.name.as_str());
                let live = match workload.kind {
                    WorkloadKind::Deployment => self
                        .deployments
                        .as_reader()
                        .find(|d| named(&d.metadata))
                        .map(Live::Deployment),
                    WorkloadKind::StatefulSet => self
                        .stateful_sets
                        .as_reader()
                        .find(|s| named(&s.metadata))
                        .map(Live::StatefulSet),
                    WorkloadKind::DaemonSet => self
                        .daemon_sets
                        .as_reader()
                        .find(|d| named(&d.metadata))
                        .map(Live::DaemonSet),
                };
                Observed {
                    workload,
                    live,
                    replica_sets: self.replica_sets[index].as_reader().state(),
                    pods: self.pods[index].as_reader().state(),
                }
            })
            .collect()
    }
}

/// Applies `event` to `store`; `true` when it completes a (re)list.
fn apply<K>(store: &mut Writer<K>, event: &Event<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.apply_watcher_event(event);
    matches!(event, Event::InitDone)
}

/// The changes of the objects of kind `K` in `namespace` that `labels` selects, as `wrap`
/// makes them, retried with the watcher's backoff after a failure.
fn follow<K>(
    client: &Client,
    namespace: &str,
    labels: &str,
    wrap: impl Fn(Event<K>) -> Change + Send + 'static,
) -> BoxStream<'static, Result<Change, watcher::Error>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + fmt::Debug
        + Send
        + 'static,
{
    let config = watcher::Config::default()
        .labels(labels)
        // A quorum read, not the apiserver's cache: the cache may still show the workload as it
        // was before the apply, healthy.
        .list_semantic(watcher::ListSemantic::MostRecent);
    watcher::watcher(Api::<K>::namespaced(client.clone(), namespace), config)
        .default_backoff()
        .map(move |event| event.map(&wrap))
        .boxed()
}

/// A pod as the deployer reports it.
fn report(pod: &Pod) -> PodReport {
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let restarts = containers
        .iter()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let (reason, message) = containers
        .iter()
        .find_map(|c| {
            let state = c.state.as_ref()?;
            if let Some(w) = &state.waiting {
                return Some((w.reason.clone(), w.message.clone()));
            }
            state.terminated.as_ref().map(|t| (t.reason.clone(), t.message.clone()))
        })
        .unwrap_or((None, None));
    PodReport {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into()),
        ready,
        reason,
        message,
        restarts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Deployment whose last rollout ran out of time, as the controller reports it.
    fn timed_out(generation: i64, observed: i64) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "generation": generation},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "shop"}}, "template": {}},
            "status": {
                "observedGeneration": observed,
                "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
                "conditions": [{
                    "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"shop-7487d48b67\" has timed out progressing."
                }]
            }
        }))
        .expect("a Deployment")
    }

    #[test]
    fn a_deadline_exceeded_by_the_observed_spec_fails_the_rollout() {
        let d = timed_out(2, 2);
        match deployment_progress(&d) {
            Progress::Failed(reason) => assert!(reason.contains("shop-7487d48b67"), "{reason}"),
            _ => panic!("a deadline exceeded by this spec fails it"),
        }
    }

    #[test]
    fn a_deadline_left_by_the_previous_spec_does_not_fail_the_next_rollout() {
        // The spec was just replaced (generation 3); the controller still reports on generation 2.
        let d = timed_out(3, 2);
        match deployment_progress(&d) {
            Progress::Waiting(_) => {}
            Progress::Failed(reason) => panic!("judged by the previous rollout: {reason}"),
            Progress::Done => panic!("not done before the controller saw the spec"),
        }
    }

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(60),
        crashloop_restarts: 2,
        image_pull_grace: Duration::from_secs(3),
        poll_interval: Duration::from_millis(200),
    };

    fn shop() -> Workload {
        let manifest = crate::manifests::parse(
            "staging/shop",
            &[(
                "app.yaml".to_owned(),
                b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: shop}}\n".to_vec(),
            )],
        )
        .expect("a manifest");
        Workload::of(&manifest[0]).expect("a workload")
    }

    /// The Deployment `shop`, and a judge of its rollout started at the returned instant.
    fn start() -> (Workload, Instant, Judge) {
        let t0 = Instant::now();
        (shop(), t0, Judge::new(LIMITS, t0))
    }

    /// The Deployment `shop` at `revision`, as the controller reports it: `generation` observed
    /// up to `observed`, with `available` of its 2 replicas available.
    fn deployment(generation: i64, observed: i64, revision: u32, available: i32) -> Live {
        Live::Deployment(Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "shop", "uid": "shop-uid", "generation": generation,
                    "annotations": {"deployment.kubernetes.io/revision": revision.to_string()}
                },
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop"}}, "template": {}},
                "status": {
                    "observedGeneration": observed,
                    "replicas": 2, "updatedReplicas": 2, "availableReplicas": available
                }
            }))
            .expect("a Deployment"),
        ))
    }

    /// The ReplicaSet of revision `revision` of `shop`, whose pods carry `hash`.
    fn replica_set(revision: u32, hash: &str) -> Arc<ReplicaSet> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": format!("shop-{hash}"),
                    "labels": {"app": "shop", "pod-template-hash": hash},
                    "annotations": {"deployment.kubernetes.io/revision": revision.to_string()},
                    "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": "Deployment", "name": "shop", "uid": "shop-uid"
                    }]
                }
            }))
            .expect("a ReplicaSet"),
        )
    }

    /// A pod of the ReplicaSet with `hash`: ready, or waiting for `waiting` after `restarts`.
    fn pod(name: &str, hash: &str, waiting: Option<&str>, restarts: i32) -> Arc<Pod> {
        let state = match waiting {
            Some(reason) => serde_json::json!({"waiting": {"reason": reason, "message": "back-off"}}),
            None => serde_json::json!({"running": {}}),
        };
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": "shop", "pod-template-hash": hash}},
                "status": {
                    "phase": if waiting.is_some() { "Pending" } else { "Running" },
                    "conditions": [{"type": "Ready", "status": if waiting.is_some() { "False" } else { "True" }}],
                    "containerStatuses": [{
                        "name": "shop", "image": "shop", "imageID": "", "ready": waiting.is_none(),
                        "restartCount": restarts, "state": state
                    }]
                }
            }))
            .expect("a Pod"),
        )
    }

    fn observed(
        workload: &Workload,
        live: Live,
        replica_sets: Vec<Arc<ReplicaSet>>,
        pods: Vec<Arc<Pod>>,
    ) -> Observed<'_> {
        Observed {
            workload,
            live: Some(live),
            replica_sets,
            pods,
        }
    }

    fn failure(verdict: Option<Verdict>) -> (String, Vec<String>) {
        match verdict {
            Some(Verdict::Failed { reason, pods }) => (reason, pods.into_iter().map(|p| p.name).collect()),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_workload_reads_its_pod_selector_from_the_manifest() {
        let workload = shop();
        assert_eq!(workload.to_string(), "Deployment/shop");
        assert_eq!(workload.selector.map(|s| s.to_string()).as_deref(), Some("app=shop"));
        let files = [(
            "x.yaml".to_owned(),
            b"apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  selector:\n    matchExpressions: [{key: tier, operator: In, values: [db]}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n".to_vec(),
        )];
        let parsed = crate::manifests::parse("f", &files).expect("manifests");
        let db = Workload::of(&parsed[0]).expect("a StatefulSet is a workload");
        assert_eq!(db.kind, WorkloadKind::StatefulSet);
        assert_eq!(db.selector.map(|s| s.to_string()).as_deref(), Some("tier in (db)"));
        assert_eq!(Workload::of(&parsed[1]), None, "a ConfigMap has no rollout");
    }

    #[test]
    fn a_selector_that_selects_everything_or_cannot_be_read_follows_no_pods() {
        // Following it would watch every pod of the namespace, other apps' among them, and let
        // their crash loops judge this release: the workload is judged by its status alone.
        for selector in [
            "{}",
            "{matchLabels: {}}",
            "{matchExpressions: [{key: app, operator: Near, values: [shop]}]}",
            "{matchLabels: [app, shop]}",
            "everything",
        ] {
            let yaml = format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: shop}}\nspec:\n  selector: {selector}\n"
            );
            let parsed =
                crate::manifests::parse("f", &[("app.yaml".to_owned(), yaml.into_bytes())]).expect("a manifest");
            let workload = Workload::of(&parsed[0]).expect("still a workload, judged by its status");
            assert_eq!(workload.selector, None, "selector {selector}");
        }
    }

    #[test]
    fn every_replica_of_the_newest_revision_available_is_healthy() {
        let (workload, t0, mut judge) = start();
        let seen = observed(
            &workload,
            deployment(2, 2, 2, 2),
            vec![replica_set(1, "old"), replica_set(2, "new")],
            vec![pod("shop-new-a", "new", None, 0), pod("shop-new-b", "new", None, 0)],
        );
        assert_eq!(judge.judge(&[seen], t0), Some(Verdict::Healthy));
    }

    #[test]
    fn a_workload_not_seen_yet_is_waited_for_until_the_timeout() {
        let (workload, t0, mut judge) = start();
        let missing = Observed {
            workload: &workload,
            live: None,
            replica_sets: Vec::new(),
            pods: Vec::new(),
        };
        assert_eq!(judge.judge(std::slice::from_ref(&missing), t0), None);
        let (reason, _) = failure(judge.judge(&[missing], t0 + LIMITS.timeout));
        assert_eq!(
            reason,
            "the rollout did not finish within 1m (last: Deployment/shop: not in the namespace yet)"
        );
    }

    #[test]
    fn a_crash_loop_of_the_new_revision_fails_it_at_the_restart_threshold() {
        let (workload, t0, mut judge) = start();
        let at = |restarts| {
            observed(
                &workload,
                deployment(2, 2, 2, 1),
                vec![replica_set(1, "old"), replica_set(2, "new")],
                vec![
                    pod("shop-old-a", "old", None, 0),
                    pod("shop-new-a", "new", Some("CrashLoopBackOff"), restarts),
                ],
            )
        };
        assert_eq!(judge.judge(&[at(1)], t0), None, "below the threshold it goes on");
        let (reason, pods) = failure(judge.judge(&[at(2)], t0));
        assert_eq!(
            reason,
            "Deployment/shop: pod shop-new-a is crash-looping (2 restarts: back-off)"
        );
        assert_eq!(
            pods,
            ["shop-new-a"],
            "only the new revision's unready pods are reported"
        );
    }

    #[test]
    fn the_previous_revisions_pods_do_not_judge_the_rollout() {
        let (workload, t0, mut judge) = start();
        // Rolling back from a crash-looping release: its pods are on their way out.
        let seen = observed(
            &workload,
            deployment(3, 3, 3, 1),
            vec![replica_set(2, "bad"), replica_set(3, "good")],
            vec![
                pod("shop-bad-a", "bad", Some("CrashLoopBackOff"), 9),
                pod("shop-good-a", "good", None, 0),
            ],
        );
        assert_eq!(judge.judge(&[seen], t0), None);
    }

    #[test]
    fn no_pod_judges_the_rollout_before_the_controller_saw_the_spec() {
        let (workload, t0, mut judge) = start();
        // Generation 3 applied, the controller still at 2: revision 2 is the previous release.
        let seen = observed(
            &workload,
            deployment(3, 2, 2, 1),
            vec![replica_set(2, "bad")],
            vec![pod("shop-bad-a", "bad", Some("CrashLoopBackOff"), 9)],
        );
        assert_eq!(judge.judge(&[seen], t0), None);
    }

    #[test]
    fn an_image_that_cannot_be_pulled_fails_after_the_grace() {
        let (workload, t0, mut judge) = start();
        let with = |waiting| {
            observed(
                &workload,
                deployment(2, 2, 2, 0),
                vec![replica_set(2, "new")],
                vec![pod("shop-new-a", "new", Some(waiting), 0)],
            )
        };
        let second = Duration::from_secs(1);
        assert_eq!(judge.judge(&[with("ErrImagePull")], t0), None);
        assert_eq!(judge.judge(&[with("ImagePullBackOff")], t0 + 2 * second), None);
        // Pulling again after a success starts the grace anew.
        assert_eq!(judge.judge(&[with("ContainerCreating")], t0 + 3 * second), None);
        assert_eq!(judge.judge(&[with("ErrImagePull")], t0 + 4 * second), None);
        assert_eq!(judge.judge(&[with("ErrImagePull")], t0 + 6 * second), None);
        let (reason, pods) = failure(judge.judge(&[with("ImagePullBackOff")], t0 + 7 * second));
        assert_eq!(
            reason,
            "Deployment/shop: pod shop-new-a cannot pull its image (ImagePullBackOff: back-off)"
        );
        assert_eq!(pods, ["shop-new-a"]);
    }

    #[test]
    fn a_rollout_past_its_timeout_fails_with_what_it_waited_for_and_the_unready_pods() {
        let (workload, t0, mut judge) = start();
        let seen = observed(
            &workload,
            deployment(2, 2, 2, 1),
            vec![replica_set(2, "new")],
            vec![
                pod("shop-new-a", "new", None, 0),
                pod("shop-new-b", "new", Some("ContainerCreating"), 0),
            ],
        );
        assert_eq!(
            judge.judge(std::slice::from_ref(&seen), t0 + Duration::from_secs(59)),
            None
        );
        let (reason, pods) = failure(judge.judge(&[seen], t0 + LIMITS.timeout));
        assert_eq!(
            reason,
            "the rollout did not finish within 1m (last: Deployment/shop: 2 of 2 updated, 1 available, 2 total)"
        );
        assert_eq!(pods, ["shop-new-b"]);
    }

    #[test]
    fn a_stateful_set_is_judged_by_its_update_revisions_pods() {
        let files = [(
            "db.yaml".to_owned(),
            b"apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  selector: {matchLabels: {app: db}}\n".to_vec(),
        )];
        let workload = Workload::of(&crate::manifests::parse("f", &files).expect("manifest")[0]).expect("workload");
        let db: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "generation": 4},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "db"}}, "serviceName": "db", "template": {}},
            "status": {
                "observedGeneration": 4, "replicas": 1, "readyReplicas": 0, "updatedReplicas": 0,
                "currentRevision": "db-1", "updateRevision": "db-2"
            }
        }))
        .expect("a StatefulSet");
        let labelled = |name: &str, revision: &str, waiting| {
            let mut p = Arc::unwrap_or_clone(pod(name, "-", waiting, 5));
            p.metadata.labels = Some([("controller-revision-hash".to_owned(), revision.to_owned())].into());
            Arc::new(p)
        };
        let t0 = Instant::now();
        let mut judge = Judge::new(LIMITS, t0);
        let seen = |pods| Observed {
            workload: &workload,
            live: Some(Live::StatefulSet(Arc::new(db.clone()))),
            replica_sets: Vec::new(),
            pods,
        };
        assert_eq!(
            judge.judge(&[seen(vec![labelled("db-0", "db-1", Some("CrashLoopBackOff"))])], t0),
            None,
            "the current revision's pod is being replaced"
        );
        let (reason, _) = failure(judge.judge(&[seen(vec![labelled("db-0", "db-2", Some("CrashLoopBackOff"))])], t0));
        assert!(
            reason.starts_with("StatefulSet/db: pod db-0 is crash-looping"),
            "{reason}"
        );
    }
}
