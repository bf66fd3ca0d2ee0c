//! The reaper: what a crashed or restarted service left in the build namespaces is deleted. At
//! start and then every [`REAP_EVERY`], the service lists the namespaces labelled
//! `baton.dev/build-namespace=<service>` and deletes in each the step pods of its service that
//! are of its own `baton.dev/instance` and not driven by it now (at start: all of them), and
//! those of any instance that ended more than [`ENDED_GRACE`] ago; and the step Secrets of its own
//! instance not driven now, or without an owner pod and older than [`ENDED_GRACE`]. Which to
//! delete is decided by pure functions of the object, the instance, what is driven and the time.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};

use super::pod::labels;
use super::settings::PodSettings;

/// How often the reaper runs after the start.
pub(super) const REAP_EVERY: Duration = Duration::from_secs(300);
/// How long an ended pod (of any instance) or an ownerless Secret is left before it is reaped.
pub(super) const ENDED_GRACE: Duration = Duration::from_secs(600);

/// What one reaping deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Reaped {
    /// Pods deleted.
    pub(super) pods: usize,
    /// Secrets deleted.
    pub(super) secrets: usize,
}

/// Why `pod` is to be deleted by this instance, if it is.
pub(super) fn reap_pod(pod: &Pod, instance: &str, driving: &HashSet<String>, now: Timestamp) -> Option<&'static str> {
    let name = pod.metadata.name.as_deref()?;
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(labels::INSTANCE));
    if label.map(String::as_str) == Some(instance) && !driving.contains(name) {
        return Some("orphaned by this instance");
    }
    let ended = ended_at(pod)?;
    (now.duration_since(ended).unsigned_abs() > ENDED_GRACE && now > ended).then_some("ended long ago")
}

/// When `pod` ended: its phase is final or every container terminated; the last finish (or,
/// without one, its last condition change or creation).
fn ended_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    let statuses: Vec<_> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    let final_phase = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let all_terminated = status.container_statuses.as_ref().is_some_and(|c| !c.is_empty())
        && status
            .container_statuses
            .iter()
            .flatten()
            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
    if !final_phase && !all_terminated {
        return None;
    }
    let finished = statuses
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let changed = status
        .conditions
        .iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
        .max();
    finished
        .or(changed)
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Why a step's `secret` is to be deleted by this instance, if it is.
pub(super) fn reap_secret(
    secret: &Secret,
    instance: &str,
    driving: &HashSet<String>,
    now: Timestamp,
) -> Option<&'static str> {
    let name = secret.metadata.name.as_deref()?;
    if secret.metadata.deletion_timestamp.is_some() || driving.contains(name) {
        return None;
    }
    let label = secret.metadata.labels.as_ref().and_then(|l| l.get(labels::INSTANCE));
    if label.map(String::as_str) == Some(instance) {
        return Some("orphaned by this instance");
    }
    let owned = secret.metadata.owner_references.as_ref().is_some_and(|o| !o.is_empty());
    let created = secret.metadata.creation_timestamp.as_ref()?.0;
    (!owned && now > created && now.duration_since(created).unsigned_abs() > ENDED_GRACE).then_some("without a pod")
}

/// Deletes what [`reap_pod`] and [`reap_secret`] pick in every build namespace of the service.
///
/// # Errors
/// When the build namespaces cannot be listed; a namespace that cannot be read is skipped with
/// a warning.
pub(super) async fn reap(
    client: &Client,
    settings: &PodSettings,
    driving: &HashSet<String>,
) -> Result<Reaped, kube::Error> {
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{}={}", labels::BUILD_NAMESPACE, settings.service)))
        .await?;
    let selector = ListParams::default().labels(&format!(
        "{}=step,{}={}",
        labels::COMPONENT,
        labels::SERVICE,
        settings.service
    ));
    let mut reaped = Reaped::default();
    for namespace in namespaces.items.iter().filter_map(|n| n.metadata.name.as_deref()) {
        let now = Timestamp::now();
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        reaped.pods += delete_picked(&pods, &selector, "pod", |pod| {
            reap_pod(pod, &settings.instance, driving, now)
        })
        .await;
        let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
        reaped.secrets += delete_picked(&secrets, &selector, "Secret", |secret| {
            reap_secret(secret, &settings.instance, driving, now)
        })
        .await;
    }
    Ok(reaped)
}

/// Deletes the objects `selector` lists that `pick` gives a reason for; how many were deleted.
/// Failures are logged: the next reaping tries again.
async fn delete_picked<K>(
    api: &Api<K>,
    selector: &ListParams,
    kind: &str,
    pick: impl Fn(&K) -> Option<&'static str>,
) -> usize
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let list = match api.list(selector).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(kind, error = %e, "cannot list step objects of a build namespace");
            return 0;
        }
    };
    let mut deleted = 0;
    for object in &list.items {
        let meta = object.meta();
        let (Some(why), Some(name), namespace) = (pick(object), meta.name.as_deref(), meta.namespace.as_deref()) else {
            continue;
        };
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(kind, namespace, name, why, "step object reaped");
                deleted += 1;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => tracing::warn!(kind, namespace, name, error = %e, "cannot reap a step object"),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(instance: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"baton.dev/instance": instance},
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "status": status,
        }))
        .unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn own_pods_not_driven_and_long_ended_pods_are_reaped() {
        let now = at("2025-01-01T01:00:00Z");
        let none = HashSet::new();
        let driving = HashSet::from(["p".to_owned()]);
        let running = serde_json::json!({"phase": "Running"});
        assert_eq!(
            reap_pod(&pod("me", running.clone()), "me", &none, now),
            Some("orphaned by this instance")
        );
        assert_eq!(reap_pod(&pod("me", running.clone()), "me", &driving, now), None);
        assert_eq!(reap_pod(&pod("other", running), "me", &none, now), None);
        let ended = |finished: &str| {
            serde_json::json!({"phase": "Failed", "containerStatuses": [
                {"name": "step", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "finishedAt": finished}}}]})
        };
        assert_eq!(
            reap_pod(&pod("other", ended("2025-01-01T00:55:00Z")), "me", &none, now),
            None
        );
        assert_eq!(
            reap_pod(&pod("other", ended("2025-01-01T00:45:00Z")), "me", &none, now),
            Some("ended long ago")
        );
        // Ended without a container having run (e.g. its deadline while pending).
        let failed = serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded"});
        assert_eq!(
            reap_pod(&pod("other", failed), "me", &none, now),
            Some("ended long ago")
        );
    }

    #[test]
    fn secrets_without_a_pod_are_reaped_after_the_grace() {
        let secret = |instance: &str, created: &str, owned: bool| -> Secret {
            let owners = if owned {
                serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}])
            } else {
                serde_json::json!([])
            };
            serde_json::from_value(serde_json::json!({"metadata": {
                "name": "p", "labels": {"baton.dev/instance": instance},
                "creationTimestamp": created, "ownerReferences": owners}}))
            .unwrap()
        };
        let now = at("2025-01-01T01:00:00Z");
        let none = HashSet::new();
        assert_eq!(
            reap_secret(&secret("me", "2025-01-01T00:59:00Z", true), "me", &none, now),
            Some("orphaned by this instance")
        );
        assert_eq!(
            reap_secret(&secret("other", "2025-01-01T00:59:00Z", false), "me", &none, now),
            None
        );
        assert_eq!(
            reap_secret(&secret("other", "2025-01-01T00:00:00Z", false), "me", &none, now),
            Some("without a pod")
        );
        assert_eq!(
            reap_secret(&secret("other", "2025-01-01T00:00:00Z", true), "me", &none, now),
            None
        );
    }
}
