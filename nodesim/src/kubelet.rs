//! The simulated kubelets: a watch on every pod drives each one bound to a simulated node (or
//! naming one in `spec.nodeName`) by posting the status its [`PodPlan`] gives at every change of
//! its timeline, and removes a terminating pod at once, as a kubelet does once its containers are
//! stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt as _};
use serde_json::json;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::execution::{Executor, run_pod};
use super::node::SimulatedNode;
use super::plan::{Clock, PodPlan, Timing};
use super::{POLL_INTERVAL, SIMULATE_ANNOTATION};

/// Attempts at deleting a terminating pod before giving up on it (with a warning).
const DELETE_ATTEMPTS: u32 = 10;

/// A pod the simulator is responsible for.
#[derive(Debug)]
struct TrackedPod {
    /// Its driver (or, once it is terminating, its deleter).
    task: AbortHandle,
    /// Whether the deleter runs.
    terminating: bool,
}

/// Watches all pods and drives those bound to a simulated node until they are deleted.
/// With an `executor`, pods without the simulate annotation are executed instead.
pub(super) async fn drive_pods(
    client: Client,
    nodes: Arc<HashMap<String, SimulatedNode>>,
    timing: Timing,
    executor: Option<Arc<Executor>>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = std::pin::pin!(watcher::watcher(pods, watcher::Config::default()).default_backoff());
    // Dropping the set (when this task is aborted) aborts every pod's task.
    let mut tasks = JoinSet::new();
    let mut tracked: HashMap<String, TrackedPod> = HashMap::new();
    let mut listed: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        while tasks.try_join_next().is_some() {}
        match event {
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(pod) | Event::Apply(pod)) => {
                if let (Some(listed), Some(uid)) = (listed.as_mut(), pod.uid()) {
                    listed.insert(uid);
                }
                observe_pod(
                    &client,
                    &nodes,
                    &timing,
                    executor.as_ref(),
                    pod,
                    &mut tasks,
                    &mut tracked,
                );
            }
            Ok(Event::InitDone) => {
                // Pods that vanished while the watch was down.
                if let Some(listed) = listed.take() {
                    tracked.retain(|uid, pod| {
                        let keep = listed.contains(uid);
                        if !keep {
                            pod.task.abort();
                            if let Some(executor) = &executor {
                                executor.forget(uid);
                            }
                        }
                        keep
                    });
                }
            }
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.uid() {
                    if let Some(gone) = tracked.remove(&uid) {
                        gone.task.abort();
                    }
                    if let Some(executor) = &executor {
                        executor.forget(&uid);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "node simulator's pod watch failed; retrying"),
        }
    }
}

/// Starts driving a newly bound pod, or deleting a terminating one.
fn observe_pod(
    client: &Client,
    nodes: &HashMap<String, SimulatedNode>,
    timing: &Timing,
    executor: Option<&Arc<Executor>>,
    pod: Pod,
    tasks: &mut JoinSet<()>,
    tracked: &mut HashMap<String, TrackedPod>,
) {
    let Some(node) = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_ref())
        .and_then(|name| nodes.get(name))
    else {
        return;
    };
    let (Some(uid), Some(namespace)) = (pod.uid(), pod.namespace()) else {
        return;
    };
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        if tracked.get(&uid).is_some_and(|pod| pod.terminating) {
            return;
        }
        if let Some(previous) = tracked.remove(&uid) {
            previous.task.abort();
        }
        let task = tasks.spawn(delete_pod(api, name, uid.clone()));
        tracked.insert(
            uid,
            TrackedPod {
                task,
                terminating: true,
            },
        );
        return;
    }
    if tracked.contains_key(&uid) {
        return;
    }
    let finished = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    if finished {
        return;
    }
    if let Some(executor) = executor
        && !pod.annotations().contains_key(SIMULATE_ANNOTATION)
    {
        let task = tasks.spawn(run_pod(Arc::clone(executor), client.clone(), pod));
        tracked.insert(
            uid,
            TrackedPod {
                task,
                terminating: false,
            },
        );
        return;
    }
    let plan = PodPlan::of(&pod, node.internal_ip(), node.allocate_pod_ip());
    let task = tasks.spawn(drive_pod(api, name, plan, timing.clone()));
    tracked.insert(
        uid,
        TrackedPod {
            task,
            terminating: false,
        },
    );
}

/// Removes a terminating pod for good, as a kubelet does once its containers are stopped.
async fn delete_pod(api: Api<Pod>, name: String, uid: String) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        // Never a newer pod of the same name (a StatefulSet's replacement).
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    for _ in 0..DELETE_ATTEMPTS {
        match api.delete(&name, &params).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => return,
            Err(error) => {
                tracing::warn!(pod = %name, %error, "node simulator could not delete a terminating pod; retrying");
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
}

/// Posts a pod's simulated status at every change of its timeline, until it never changes again.
async fn drive_pod(api: Api<Pod>, name: String, plan: PodPlan, timing: Timing) {
    let started = Instant::now();
    let clock = Clock::new(Timestamp::now());
    let mut posted: Option<serde_json::Value> = None;
    loop {
        let (status, next_change) = plan.status_at(started.elapsed(), &timing, &clock);
        let patch = json!({ "status": status });
        if posted.as_ref() != Some(&patch) {
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => posted = Some(patch),
                Err(kube::Error::Api(status)) if status.is_not_found() => return,
                Err(error) => {
                    tracing::warn!(pod = %name, %error, "node simulator could not post pod status; retrying");
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                }
            }
        }
        match next_change {
            Some(at) => tokio::time::sleep_until(started + at).await,
            None => return,
        }
    }
}
