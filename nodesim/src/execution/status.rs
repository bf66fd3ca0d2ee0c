//! The pod's status as the simulator knows it (each container's state, the phase and the
//! conditions) and the [`Reporter`] that posts it to the apiserver at every change.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::POLL_INTERVAL;

/// A container's state, as its status shows it.
#[derive(Debug, Clone)]
pub(super) enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started: Timestamp,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started: Timestamp,
        finished: Timestamp,
    },
}

/// One container of the pod and its state.
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) image_id: Option<String>,
    pub(super) container_id: Option<String>,
    pub(super) state: State,
}

impl Record {
    fn status(&self) -> Value {
        let state = match &self.state {
            State::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
            State::Running { started } => json!({"running": {"startedAt": started.to_string()}}),
            State::Terminated {
                exit_code,
                reason,
                message,
                started,
                finished,
            } => json!({"terminated": {
                "exitCode": exit_code, "reason": reason, "message": message,
                "startedAt": started.to_string(), "finishedAt": finished.to_string(),
                "containerID": self.container_id,
            }}),
        };
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id.clone().unwrap_or_default(),
            "containerID": self.container_id,
            "ready": matches!(self.state, State::Running { .. }),
            "started": matches!(self.state, State::Running { .. }),
            "restartCount": 0,
            "state": state,
        })
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }
}

/// The pod's status as the simulator knows it.
#[derive(Debug)]
pub(super) struct PodState {
    pub(super) init: Vec<Record>,
    pub(super) main: Vec<Record>,
    pub(super) phase: &'static str,
    pub(super) reason: Option<String>,
    pub(super) message: Option<String>,
    pub(super) start_time: Timestamp,
}

impl PodState {
    fn status(&self) -> Value {
        let initialized = self
            .init
            .iter()
            .all(|r| matches!(r.state, State::Terminated { exit_code: 0, .. }));
        let ready = !self.main.is_empty() && self.main.iter().all(Record::running);
        let condition = |type_: &str, status: bool, reason: Option<&str>| {
            json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason,
                   "lastTransitionTime": self.start_time.to_string()})
        };
        let finished = matches!(self.phase, "Succeeded" | "Failed");
        let not_ready = if finished {
            Some("PodCompleted")
        } else {
            Some("ContainersNotReady")
        };
        json!({
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time.to_string(),
            "conditions": [
                condition("Initialized", initialized, (!initialized).then_some("ContainersNotInitialized")),
                condition("Ready", ready, (!ready).then_some(not_ready).flatten()),
                condition("ContainersReady", ready, (!ready).then_some(not_ready).flatten()),
                condition("PodScheduled", true, None),
            ],
            "initContainerStatuses": self.init.iter().map(Record::status).collect::<Vec<_>>(),
            "containerStatuses": self.main.iter().map(Record::status).collect::<Vec<_>>(),
        })
    }
}

/// Posts the pod's status; shared by everything that changes it.
pub(super) struct Reporter {
    pub(super) api: Api<Pod>,
    pub(super) name: String,
    pub(super) state: Mutex<PodState>,
}

impl Reporter {
    fn lock(&self) -> std::sync::MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the state with `change`, then posts it (retrying a few times).
    pub(super) async fn update(&self, change: impl FnOnce(&mut PodState)) {
        let status = {
            let mut state = self.lock();
            change(&mut state);
            state.status()
        };
        for _ in 0..10 {
            match self
                .api
                .patch_status(
                    &self.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
            {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.is_not_found() => return,
                Err(error) => {
                    tracing::warn!(pod = %self.name, %error, "node simulator could not post pod status; retrying");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }
}

/// Which list a container is in, and where.
#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    Init(usize),
    Main(usize),
}

pub(super) fn record(state: &mut PodState, slot: Slot) -> &mut Record {
    match slot {
        Slot::Init(i) => &mut state.init[i],
        Slot::Main(i) => &mut state.main[i],
    }
}
