//! Judging a rollout: every Deployment, StatefulSet and DaemonSet of the release must become
//! fully updated and available. It fails when a Deployment reports `ProgressDeadlineExceeded`,
//! when a container crash-loops past the restart threshold, when a pod cannot pull its image
//! for longer than the grace period, or when the whole rollout takes longer than its timeout.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use baton_schemas::release::PodReport;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::cluster::ClusterError;

/// The kinds whose rollout is watched.
pub const WORKLOADS: [&str; 3] = ["Deployment", "StatefulSet", "DaemonSet"];

/// How a rollout is judged.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole rollout's deadline.
    pub timeout: Duration,
    /// Restarts of a crash-looping container that fail it.
    pub crashloop_restarts: u32,
    /// How long a pod may fail to pull its image.
    pub image_pull_grace: Duration,
    /// How often the status is read.
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
enum Progress {
    Done,
    Waiting(String),
    Failed(String),
}

/// Asked on every poll whether the rollout should stop watching (a newer promotion arrived).
pub trait Interrupt: Send {
    /// `Ok(true)`: stop, superseded.
    fn interrupted(&mut self) -> impl Future<Output = Result<bool, ClusterError>> + Send;
}

/// Watches `workloads` (kind, name) in `namespace` until a verdict.
///
/// # Errors
/// [`ClusterError`] when the apiserver keeps failing.
pub async fn watch(
    client: &Client,
    namespace: &str,
    workloads: &[(String, String)],
    limits: Limits,
    interrupt: &mut impl Interrupt,
) -> Result<Verdict, ClusterError> {
    let started = Instant::now();
    let mut pulling_since: HashMap<String, Instant> = HashMap::new();
    let mut last_wait = String::new();
    loop {
        if interrupt.interrupted().await? {
            return Ok(Verdict::Superseded);
        }
        let mut all_done = true;
        for (kind, name) in workloads {
            let (progress, selector) = status(client, namespace, kind, name).await?;
            match progress {
                Progress::Done => {}
                Progress::Failed(reason) => {
                    let pods = pods(client, namespace, selector.as_ref()).await?;
                    return Ok(Verdict::Failed {
                        reason: format!("{kind}/{name}: {reason}"),
                        pods: pods.into_iter().filter(|p| !p.ready).collect(),
                    });
                }
                Progress::Waiting(why) => {
                    all_done = false;
                    last_wait = format!("{kind}/{name}: {why}");
                }
            }
            // Pods tell about crash loops and pull errors long before the progress deadline.
            let reports = pods(client, namespace, selector.as_ref()).await?;
            let now = Instant::now();
            for pod in &reports {
                match pod.reason.as_deref() {
                    Some("CrashLoopBackOff") if pod.restarts >= limits.crashloop_restarts => {
                        return Ok(Verdict::Failed {
                            reason: format!(
                                "{kind}/{name}: pod {} is crash-looping ({} restarts{})",
                                pod.name,
                                pod.restarts,
                                pod.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                            ),
                            pods: reports.iter().filter(|p| !p.ready).cloned().collect(),
                        });
                    }
                    Some("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName") => {
                        let since = *pulling_since.entry(pod.name.clone()).or_insert(now);
                        if now.duration_since(since) >= limits.image_pull_grace {
                            return Ok(Verdict::Failed {
                                reason: format!(
                                    "{kind}/{name}: pod {} cannot pull its image ({}{})",
                                    pod.name,
                                    pod.reason.as_deref().unwrap_or_default(),
                                    pod.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                                ),
                                pods: reports.iter().filter(|p| !p.ready).cloned().collect(),
                            });
                        }
                    }
                    _ => {
                        pulling_since.remove(&pod.name);
                    }
                }
            }
        }
        if all_done {
            return Ok(Verdict::Healthy);
        }
        if started.elapsed() >= limits.timeout {
            let mut pods_now = Vec::new();
            for (kind, name) in workloads {
                let (_, selector) = status(client, namespace, kind, name).await?;
                pods_now.extend(
                    pods(client, namespace, selector.as_ref())
                        .await?
                        .into_iter()
                        .filter(|p| !p.ready),
                );
            }
            return Ok(Verdict::Failed {
                reason: format!(
                    "the rollout did not finish within {} (last: {last_wait})",
                    humanize(limits.timeout)
                ),
                pods: pods_now,
            });
        }
        tokio::time::sleep(limits.poll_interval).await;
    }
}

fn humanize(d: Duration) -> String {
    if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

async fn status(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<(Progress, Option<LabelSelector>), ClusterError> {
    let read = |e: kube::Error| ClusterError::Unavailable(format!("reading {kind}/{name}: {e}"));
    match kind {
        "Deployment" => {
            let d = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(read)?;
            // Only the pods of the newest ReplicaSet judge this rollout: the old ones (a crash-looping
            // release being rolled back) are on their way out.
            // Until the controller has seen the applied spec, its newest ReplicaSet is the previous
            // one: judge no pods yet.
            let selector = match d.spec.as_ref().map(|s| s.selector.clone()) {
                Some(selector) if seen(&d) => newest_replica_set_pods(client, namespace, &d, selector).await?,
                _ => None,
            };
            Ok((deployment_progress(&d), selector))
        }
        "StatefulSet" => {
            let s = Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(read)?;
            let selector = s.spec.as_ref().map(|s| s.selector.clone());
            let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = s.metadata.generation.unwrap_or(0);
            let Some(st) = s.status else {
                return Ok((Progress::Waiting("no status yet".into()), selector));
            };
            let selector = match (selector, &st.update_revision) {
                (Some(mut selector), Some(revision)) => {
                    selector
                        .match_labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert("controller-revision-hash".into(), revision.clone());
                    Some(selector)
                }
                (selector, _) => selector,
            };
            let observed = st.observed_generation.unwrap_or(0) >= generation;
            let ready = st.ready_replicas.unwrap_or(0);
            let updated = st.updated_replicas.unwrap_or(0);
            let same_revision = st.current_revision == st.update_revision;
            let progress = if observed && ready == want && updated == want && same_revision {
                Progress::Done
            } else {
                Progress::Waiting(format!("{updated} of {want} updated, {ready} ready"))
            };
            Ok((progress, selector))
        }
        "DaemonSet" => {
            let d = Api::<DaemonSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(read)?;
            let selector = d.spec.as_ref().map(|s| s.selector.clone());
            let generation = d.metadata.generation.unwrap_or(0);
            let Some(st) = d.status else {
                return Ok((Progress::Waiting("no status yet".into()), selector));
            };
            let observed = st.observed_generation.unwrap_or(0) >= generation;
            let want = st.desired_number_scheduled;
            let updated = st.updated_number_scheduled.unwrap_or(0);
            let available = st.number_available.unwrap_or(0);
            let progress = if observed && updated == want && available == want {
                Progress::Done
            } else {
                Progress::Waiting(format!("{updated} of {want} updated, {available} available"))
            };
            Ok((progress, selector))
        }
        other => Ok((
            Progress::Failed(format!("Baton does not watch rollouts of {other}")),
            None,
        )),
    }
}

/// The Deployment's selector narrowed to its newest ReplicaSet's pods (`pod-template-hash`), or
/// `None` while that ReplicaSet does not exist yet.
/// Whether the Deployment controller has observed the Deployment's current spec.
fn seen(d: &Deployment) -> bool {
    d.status.as_ref().and_then(|st| st.observed_generation).unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Where a Deployment stands.
fn deployment_progress(d: &Deployment) -> Progress {
    let seen = seen(d);
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

async fn newest_replica_set_pods(
    client: &Client,
    namespace: &str,
    deployment: &Deployment,
    mut selector: LabelSelector,
) -> Result<Option<LabelSelector>, ClusterError> {
    const REVISION: &str = "deployment.kubernetes.io/revision";
    let Some(revision) = deployment.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)) else {
        return Ok(None);
    };
    let Some(labels) = selector.match_labels.clone().filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector_string(&labels)))
        .await
        .map_err(|e| ClusterError::Unavailable(format!("listing ReplicaSets: {e}")))?;
    let hash = sets.items.iter().find_map(|rs| {
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
    });
    Ok(hash.map(|hash| {
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert("pod-template-hash".into(), hash);
        selector
    }))
}

/// The pods a selector picks, as reports.
async fn pods(
    client: &Client,
    namespace: &str,
    selector: Option<&LabelSelector>,
) -> Result<Vec<PodReport>, ClusterError> {
    let Some(labels) = selector.and_then(|s| s.match_labels.clone()).filter(|l| !l.is_empty()) else {
        return Ok(Vec::new());
    };
    let selector = selector_string(&labels);
    let list = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| ClusterError::Unavailable(format!("listing pods {selector}: {e}")))?;
    // Pods being deleted no longer count.
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(report)
        .collect())
}

fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A pod as the deployer reports it.
pub fn report(pod: &Pod) -> PodReport {
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
}
