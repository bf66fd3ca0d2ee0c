//! Following a step's pod to its outcome, and its log to the step's [`LogSink`].
//!
//! [`assess`] reads one observed state of the pod (and how long it has waited, by the service's
//! own clock) into where the step is: waiting, running, ended with an exit, or decided without
//! one (not schedulable or no image past `schedule_timeout`, the workspace not fetched, the
//! deadline, an eviction). It is pure, so every mapping is unit-tested. [`drive`] watches the
//! pod, applies the step's timeout from when its container was first seen running, and, once the
//! step ended, waits for its outputs. [`follow_log`] streams `pods/log?container=step&follow`
//! into the sink once the container has started.

use std::time::Duration;

use futures::{AsyncReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, LogParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::time::Instant;

use super::pod::{STEP_CONTAINER, WORKSPACE_IN, WORKSPACE_OUT};
use super::server::Ticket;
use crate::steps::log::LogSink;
use crate::steps::{StepError, StepStatus};

/// Waiting reasons of a container whose image cannot be had.
const IMAGE_FAILURES: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];
/// How often the log stream is tried again while the apiserver says the container is not there yet.
const LOG_RETRY: Duration = Duration::from_millis(500);
/// How often a pod past one of its clocks is looked at again without news from the watch.
const RECHECK: Duration = Duration::from_secs(1);
/// Bytes read from the log stream at once.
const LOG_CHUNK: usize = 64 * 1024;

/// Where a step is, from one look at its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Progress {
    /// Not running yet (being scheduled, pulling, fetching its workspace).
    Waiting,
    /// Its container runs.
    Running,
    /// Its container ended.
    Ended(StepStatus),
    /// Its outcome is known without its container having ended by itself.
    Decided(StepStatus),
}

/// What [`assess`] needs besides the pod.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waited<'a> {
    /// How long since the pod was created, by the service's clock.
    pub(super) for_: Duration,
    /// The scheduling and image deadline.
    pub(super) schedule_timeout: Duration,
    /// The step's memory limit, for the message of an OOM kill.
    pub(super) memory_bytes: u64,
    /// The step's disk limit, for the message of an eviction.
    pub(super) disk_bytes: u64,
    /// The step's image, for image errors.
    pub(super) image: &'a str,
    /// The helpers' image.
    pub(super) helper_image: &'a str,
}

fn container<'a>(statuses: Option<&'a Vec<ContainerStatus>>, name: &str) -> Option<&'a ContainerStatus> {
    statuses?.iter().find(|s| s.name == name)
}

/// Where the step is, from one observed state of its pod.
pub(super) fn assess(pod: &Pod, waited: &Waited<'_>) -> Progress {
    let Some(status) = &pod.status else {
        return Progress::Waiting;
    };
    let overdue = waited.for_ >= waited.schedule_timeout;
    let step = container(status.container_statuses.as_ref(), STEP_CONTAINER);
    let fetch = container(status.init_container_statuses.as_ref(), WORKSPACE_IN);
    let ended = step.and_then(|s| s.state.as_ref()?.terminated.as_ref());
    let reason = status.reason.as_deref().unwrap_or_default();
    let message = status.message.clone().unwrap_or_default();

    match reason {
        "DeadlineExceeded" => return Progress::Decided(StepStatus::TimedOut),
        "Evicted" => {
            return Progress::Decided(StepStatus::LimitExceeded {
                limit: "disk_bytes",
                detail: format!(
                    "the pod was evicted ({}); its limit was {} bytes added to the workspace",
                    message.trim(),
                    waited.disk_bytes
                ),
            });
        }
        _ => {}
    }
    if let Some(terminated) = fetch.and_then(|s| s.state.as_ref()?.terminated.as_ref())
        && terminated.exit_code != 0
    {
        let words = terminated.message.as_deref().unwrap_or_default().trim();
        return Progress::Decided(StepStatus::Error(StepError::Workspace {
            reason: format!(
                "fetching the workspace failed (exit code {}): {}",
                terminated.exit_code,
                if words.is_empty() { "no output" } else { words }
            ),
        }));
    }
    if let Some(terminated) = ended {
        let status = if terminated.reason.as_deref() == Some("OOMKilled") {
            StepStatus::LimitExceeded {
                limit: "memory_bytes",
                detail: format!(
                    "the kernel killed it at its memory limit of {} bytes",
                    waited.memory_bytes
                ),
            }
        } else if terminated.exit_code == 0 {
            StepStatus::Succeeded
        } else {
            StepStatus::Failed {
                exit_code: Some(terminated.exit_code),
                signal: terminated.signal.filter(|s| *s != 0),
            }
        };
        return Progress::Ended(status);
    }
    if step.and_then(|s| s.state.as_ref()?.running.as_ref()).is_some() {
        return Progress::Running;
    }
    if status.phase.as_deref() == Some("Failed") {
        return Progress::Decided(StepStatus::Error(StepError::Kubernetes {
            reason: format!("the pod failed before the step ran: {reason} {}", message.trim()),
        }));
    }
    for (status, image) in [(fetch, waited.helper_image), (step, waited.image)] {
        let Some(waiting) = status.and_then(|s| s.state.as_ref()?.waiting.as_ref()) else {
            continue;
        };
        let why = waiting.reason.as_deref().unwrap_or_default();
        if IMAGE_FAILURES.contains(&why) && (overdue || why == "InvalidImageName") {
            return Progress::Decided(StepStatus::Error(StepError::Image {
                image: image.to_owned(),
                reason: format!("{why}: {}", waiting.message.as_deref().unwrap_or_default().trim()),
            }));
        }
        if why == "CreateContainerConfigError" && overdue {
            return Progress::Decided(StepStatus::Error(StepError::Kubernetes {
                reason: format!(
                    "the step's container cannot be made: {}",
                    waiting.message.as_deref().unwrap_or_default()
                ),
            }));
        }
    }
    let scheduled = status
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    if overdue && !bound {
        let reason = match scheduled {
            Some(condition) if condition.status == "False" => condition
                .message
                .clone()
                .unwrap_or_else(|| "the scheduler gave no reason".to_owned()),
            _ => "no scheduler placed it (is kube-scheduler running?)".to_owned(),
        };
        return Progress::Decided(StepStatus::Error(StepError::Unschedulable { reason }));
    }
    Progress::Waiting
}

/// Whether the `workspace-out` container failed, and its last words.
pub(super) fn sending_failed(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let out = container(status.container_statuses.as_ref(), WORKSPACE_OUT)?;
    let terminated = out.state.as_ref()?.terminated.as_ref()?;
    (terminated.exit_code != 0).then(|| {
        format!(
            "sending the outputs failed (exit code {}): {}",
            terminated.exit_code,
            terminated.message.as_deref().unwrap_or("no output").trim()
        )
    })
}

/// What driving the pod found.
#[derive(Debug)]
pub(super) struct Driven {
    /// The step's outcome.
    pub(super) status: StepStatus,
    /// Why the outputs did not come back, when they did not.
    pub(super) outputs_lost: Option<String>,
}

/// Watches the pod until the step's outcome is known and, when its container ended, its outputs
/// came back. `started` turns `true` once the container has started (its log can be read).
pub(super) async fn drive(
    pods: &Api<Pod>,
    name: &str,
    waited: Waited<'_>,
    step_timeout: Duration,
    transfer_timeout: Duration,
    ticket: &mut Ticket,
    started: &watch::Sender<bool>,
) -> Driven {
    let created = Instant::now();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(pods.clone(), config).default_backoff().boxed();
    let mut last: Option<Pod> = None;
    let mut running_since: Option<Instant> = None;
    let mut ended: Option<(StepStatus, Instant)> = None;
    loop {
        // Whichever clock runs out first wakes the loop even when the pod says nothing.
        let wake = match (&ended, running_since) {
            (Some((_, at)), _) => *at + transfer_timeout,
            (None, Some(since)) => since + step_timeout,
            (None, None) => created + waited.schedule_timeout,
        };
        // A clock already run out is looked at again each second, not in a busy loop.
        let wake = wake.max(Instant::now() + RECHECK);
        if let Some((status, _)) = &ended {
            tokio::select! {
                outputs = ticket.outputs() => {
                    return Driven {
                        status: status.clone(),
                        outputs_lost: outputs.err().map(|e| format!("its outputs were refused: {e}")),
                    };
                }
                event = events.next() => match seen(event) {
                    Seen::Pod(pod) => {
                        if let Some(why) = sending_failed(&pod) {
                            return Driven { status: status.clone(), outputs_lost: Some(why) };
                        }
                        if matches!(assess(&pod, &waited), Progress::Decided(StepStatus::TimedOut)) {
                            return Driven {
                                status: status.clone(),
                                outputs_lost: Some("the pod reached its deadline before the outputs came back".to_owned()),
                            };
                        }
                    }
                    Seen::Deleted => {
                        return Driven { status: status.clone(), outputs_lost: Some("the pod was deleted before the outputs came back".to_owned()) };
                    }
                    Seen::Nothing => {}
                },
                () = tokio::time::sleep_until(wake) => {
                    return Driven {
                        status: status.clone(),
                        outputs_lost: Some(format!(
                            "they did not come back within {}",
                            humantime::format_duration(transfer_timeout)
                        )),
                    };
                }
            }
            continue;
        }
        let observed = tokio::select! {
            event = events.next() => match seen(event) {
                Seen::Pod(pod) => {
                    last = Some((*pod).clone());
                    Some(*pod)
                }
                Seen::Deleted => {
                    return Driven {
                        status: StepStatus::Error(StepError::Kubernetes { reason: "the step's pod was deleted by someone else while it ran".to_owned() }),
                        outputs_lost: None,
                    };
                }
                Seen::Nothing => continue,
            },
            () = tokio::time::sleep_until(wake) => last.clone(),
        };
        if let Some(since) = running_since
            && since.elapsed() >= step_timeout
        {
            return Driven {
                status: StepStatus::TimedOut,
                outputs_lost: None,
            };
        }
        let Some(pod) = observed else {
            if created.elapsed() >= waited.schedule_timeout {
                return Driven {
                    status: StepStatus::Error(StepError::Unschedulable {
                        reason: "the pod was never seen after it was created".to_owned(),
                    }),
                    outputs_lost: None,
                };
            }
            continue;
        };
        let waited_now = Waited {
            for_: created.elapsed(),
            ..waited
        };
        match assess(&pod, &waited_now) {
            Progress::Waiting => {}
            Progress::Running => {
                if running_since.is_none() {
                    running_since = Some(Instant::now());
                    started.send_replace(true);
                }
            }
            Progress::Ended(status) => {
                started.send_replace(true);
                ticket.step_ended();
                ended = Some((status, Instant::now()));
            }
            Progress::Decided(status) => {
                return Driven {
                    status,
                    outputs_lost: None,
                };
            }
        }
    }
}

/// What one watch event says of the pod.
enum Seen {
    /// Its new state.
    Pod(Box<Pod>),
    /// It is gone.
    Deleted,
    /// Nothing (a relist starting or done, a watch error being retried).
    Nothing,
}

fn seen(event: Option<Result<watcher::Event<Pod>, watcher::Error>>) -> Seen {
    match event {
        Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => Seen::Pod(Box::new(pod)),
        Some(Ok(watcher::Event::Delete(_))) => Seen::Deleted,
        Some(Ok(_)) | None => Seen::Nothing,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "watching the step's pod failed; watching again");
            Seen::Nothing
        }
    }
}

/// Streams the `step` container's log into `sink` from when it started until it ends.
pub(super) async fn follow_log(pods: &Api<Pod>, name: &str, mut started: watch::Receiver<bool>, sink: &mut LogSink) {
    if started.wait_for(|s| *s).await.is_err() {
        return;
    }
    let params = LogParams {
        container: Some(STEP_CONTAINER.to_owned()),
        follow: true,
        ..LogParams::default()
    };
    let mut stream = loop {
        match pods.log_stream(name, &params).await {
            Ok(stream) => break stream,
            // The container may not be reported yet ("waiting to start"): ask again.
            Err(kube::Error::Api(status)) if status.code == 400 => tokio::time::sleep(LOG_RETRY).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the step's log");
                sink.note(&format!("baton: cannot read the step's log: {e}"));
                return;
            }
        }
    };
    let mut buffer = vec![0_u8; LOG_CHUNK];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => sink.feed(&buffer[..n]).await,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "the step's log stream broke");
                sink.note(&format!("baton: the step's log stream broke: {e}"));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn waited(for_secs: u64) -> Waited<'static> {
        Waited {
            for_: Duration::from_secs(for_secs),
            schedule_timeout: Duration::from_secs(120),
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 20,
            image: "registry.example/toolchain:1",
            helper_image: "busybox:1.37",
        }
    }

    fn with_step(state: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "step", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state},
            ]},
        }))
    }

    #[test]
    fn a_container_that_ended_is_its_exit() {
        let exited = |code: i32, reason: &str| {
            with_step(serde_json::json!({"terminated": {"exitCode": code, "reason": reason}}))
        };
        assert_eq!(
            assess(&exited(0, "Completed"), &waited(1)),
            Progress::Ended(StepStatus::Succeeded)
        );
        assert_eq!(
            assess(&exited(3, "Error"), &waited(1)),
            Progress::Ended(StepStatus::Failed {
                exit_code: Some(3),
                signal: None
            })
        );
        let Progress::Ended(StepStatus::LimitExceeded { limit, detail }) =
            assess(&exited(137, "OOMKilled"), &waited(1))
        else {
            panic!("an OOM kill is the memory limit");
        };
        assert_eq!(limit, "memory_bytes");
        assert!(detail.contains("1073741824"), "{detail}");
        assert_eq!(
            assess(&with_step(serde_json::json!({"running": {}})), &waited(1)),
            Progress::Running
        );
    }

    #[test]
    fn the_deadline_and_an_eviction_are_named() {
        let deadline =
            pod(serde_json::json!({"metadata": {}, "status": {"phase": "Failed", "reason": "DeadlineExceeded"}}));
        assert_eq!(assess(&deadline, &waited(1)), Progress::Decided(StepStatus::TimedOut));
        let evicted = pod(serde_json::json!({"metadata": {}, "status": {
            "phase": "Failed", "reason": "Evicted",
            "message": "Usage of EmptyDir volume \"workspace\" exceeds the limit \"1Mi\"."}}));
        let Progress::Decided(StepStatus::LimitExceeded { limit, detail }) = assess(&evicted, &waited(1)) else {
            panic!("an eviction is the disk limit");
        };
        assert_eq!(limit, "disk_bytes");
        assert!(detail.contains("EmptyDir"), "{detail}");
    }

    #[test]
    fn an_unschedulable_pod_fails_with_the_schedulers_message_once_overdue() {
        let pending = pod(
            serde_json::json!({"metadata": {}, "spec": {"containers": []}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/2 nodes are available: 2 Insufficient cpu."}]}}),
        );
        assert_eq!(assess(&pending, &waited(119)), Progress::Waiting);
        assert_eq!(
            assess(&pending, &waited(120)),
            Progress::Decided(StepStatus::Error(StepError::Unschedulable {
                reason: "0/2 nodes are available: 2 Insufficient cpu.".into()
            }))
        );
    }

    #[test]
    fn image_and_workspace_failures_are_named() {
        let pulling = with_step(
            serde_json::json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}),
        );
        assert_eq!(assess(&pulling, &waited(10)), Progress::Waiting);
        assert_eq!(
            assess(&pulling, &waited(121)),
            Progress::Decided(StepStatus::Error(StepError::Image {
                image: "registry.example/toolchain:1".into(),
                reason: "ImagePullBackOff: Back-off pulling image".into()
            }))
        );
        let fetch_failed = pod(
            serde_json::json!({"metadata": {}, "status": {"phase": "Failed", "initContainerStatuses": [
            {"name": "workspace-in", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "message": "wget: server returned error: HTTP/1.1 401 Unauthorized"}}}]}}),
        );
        let Progress::Decided(StepStatus::Error(StepError::Workspace { reason })) = assess(&fetch_failed, &waited(1))
        else {
            panic!("a failed fetch is the workspace's");
        };
        assert!(reason.contains("401 Unauthorized"), "{reason}");
    }

    #[test]
    fn a_failed_sending_is_noticed() {
        let pod = pod(serde_json::json!({"metadata": {}, "status": {"containerStatuses": [
            {"name": "workspace-out", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "message": "baton: the workspace server does not answer"}}}]}}));
        assert!(sending_failed(&pod).unwrap().contains("does not answer"));
    }
}
