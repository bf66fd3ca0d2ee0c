//! What a simulated pod shows, decided without I/O or a clock: [`PodPlan::status_at`] takes the
//! time since the pod was picked up and returns its status (phase, conditions, container states
//! as `kubectl get pod` shows them) and when that status next changes, so the behaviours of the
//! [module documentation](super) are deterministic and unit-tested here.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt as _;
use sha2::{Digest as _, Sha256};

use super::SIMULATE_ANNOTATION;

/// What a simulated container does; see the [module documentation](super).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimulatedBehaviour {
    /// Starts and becomes Ready.
    Healthy,
    /// Runs but never becomes Ready.
    NeverReady,
    /// Crashes shortly after each start and is restarted after a growing back-off.
    CrashLoop,
    /// Its image can never be pulled.
    ImagePullBackOff,
}

impl SimulatedBehaviour {
    /// Every behaviour, in the order image references are matched against their names.
    pub const ALL: [Self; 4] = [Self::ImagePullBackOff, Self::CrashLoop, Self::NeverReady, Self::Healthy];

    /// The annotation value (and image marker) naming it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::NeverReady => "never-ready",
            Self::CrashLoop => "crashloop",
            Self::ImagePullBackOff => "imagepullbackoff",
        }
    }

    /// The behaviour an annotation value names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|behaviour| behaviour.name() == name.trim())
    }

    /// The behaviour an image reference asks for: the first marker it contains (ignoring case),
    /// else healthy.
    pub fn of_image(image: &str) -> Self {
        let image = image.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|behaviour| *behaviour != Self::Healthy && image.contains(behaviour.name()))
            .unwrap_or(Self::Healthy)
    }
}

impl fmt::Display for SimulatedBehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The simulation's time constants; see [`NodeSimulatorConfig`](super::NodeSimulatorConfig).
#[derive(Debug, Clone)]
pub(super) struct Timing {
    pub(super) start_delay: Duration,
    pub(super) crash_after: Duration,
    pub(super) pull_failure: Duration,
    pub(super) back_off_base: Duration,
    pub(super) back_off_cap: Duration,
}

impl Timing {
    /// The back-off after the `attempt`-th failure (0-based): base × 2^attempt, capped.
    fn back_off(&self, attempt: u32) -> Duration {
        self.back_off_base
            .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .map_or(self.back_off_cap, |back_off| back_off.min(self.back_off_cap))
    }
}

/// Converts offsets since the pod was picked up into timestamps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    origin: Timestamp,
}

impl Clock {
    pub(super) fn new(origin: Timestamp) -> Self {
        Self { origin }
    }

    fn at(self, offset: Duration) -> Time {
        let offset = SignedDuration::try_from(offset).unwrap_or(SignedDuration::MAX);
        Time(self.origin.checked_add(offset).unwrap_or(self.origin))
    }
}

/// One run of a container, as offsets since the pod was picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    started: Duration,
    finished: Duration,
}

/// A container's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ContainerPhase {
    /// Its image is being pulled and the container created.
    Creating,
    /// It waits for the init containers.
    PodInitializing,
    /// Its process runs.
    Running {
        started: Duration,
        ready: bool,
        restarts: u32,
        last_run: Option<Run>,
    },
    /// It exited and waits to be restarted.
    CrashLoopBackOff {
        restarts: u32,
        last_run: Run,
        back_off: Duration,
    },
    /// Its image cannot be pulled: `ErrImagePull`, or `ImagePullBackOff` between attempts.
    PullFailed { backing_off: bool },
    /// The pod asked for an unknown behaviour.
    Misconfigured(String),
}

impl ContainerPhase {
    /// Whether the container has run at all (and so has an image ID).
    fn has_run(&self) -> bool {
        matches!(self, Self::Running { .. } | Self::CrashLoopBackOff { .. })
    }

    fn is_ready(&self) -> bool {
        matches!(self, Self::Running { ready: true, .. })
    }
}

/// The state at `elapsed` of a container behaving as `behaviour` whose timeline starts at 0,
/// and when that state next changes (`None`: never).
fn container_phase(
    behaviour: SimulatedBehaviour,
    elapsed: Duration,
    timing: &Timing,
) -> (ContainerPhase, Option<Duration>) {
    if elapsed < timing.start_delay {
        return (ContainerPhase::Creating, Some(timing.start_delay));
    }
    match behaviour {
        SimulatedBehaviour::Healthy | SimulatedBehaviour::NeverReady => (
            ContainerPhase::Running {
                started: timing.start_delay,
                ready: behaviour == SimulatedBehaviour::Healthy,
                restarts: 0,
                last_run: None,
            },
            None,
        ),
        SimulatedBehaviour::CrashLoop => {
            let mut run = Run {
                started: timing.start_delay,
                finished: timing.start_delay + timing.crash_after,
            };
            let mut last_run = None;
            let mut restarts = 0;
            loop {
                if elapsed < run.finished {
                    let phase = ContainerPhase::Running {
                        started: run.started,
                        ready: false,
                        restarts,
                        last_run,
                    };
                    return (phase, Some(run.finished));
                }
                let back_off = timing.back_off(restarts);
                let restart_at = run.finished + back_off;
                if elapsed < restart_at {
                    let phase = ContainerPhase::CrashLoopBackOff {
                        restarts: restarts + 1,
                        last_run: run,
                        back_off,
                    };
                    return (phase, Some(restart_at));
                }
                last_run = Some(run);
                run = Run {
                    started: restart_at,
                    finished: restart_at + timing.crash_after,
                };
                restarts += 1;
            }
        }
        SimulatedBehaviour::ImagePullBackOff => {
            let mut attempt_at = timing.start_delay;
            let mut attempt = 0;
            loop {
                let failed_at = attempt_at + timing.pull_failure;
                if elapsed < failed_at {
                    return (ContainerPhase::PullFailed { backing_off: false }, Some(failed_at));
                }
                let next_attempt = failed_at + timing.back_off(attempt);
                if elapsed < next_attempt {
                    return (ContainerPhase::PullFailed { backing_off: true }, Some(next_attempt));
                }
                attempt_at = next_attempt;
                attempt += 1;
            }
        }
    }
}

/// A container and what it should do.
#[derive(Debug, Clone)]
struct PlannedContainer {
    name: String,
    image: String,
    behaviour: Result<SimulatedBehaviour, String>,
}

/// Everything the simulation needs to know about one pod, taken when it is picked up.
#[derive(Debug, Clone)]
pub(super) struct PodPlan {
    pod: String,
    namespace: String,
    uid: String,
    init_containers: Vec<PlannedContainer>,
    containers: Vec<PlannedContainer>,
    host_ip: String,
    pod_ip: String,
}

impl PodPlan {
    pub(super) fn of(pod: &Pod, host_ip: String, pod_ip: String) -> Self {
        let annotation = pod.annotations().get(SIMULATE_ANNOTATION).map(String::as_str);
        let behaviour = |image: &str| match annotation {
            Some(value) => SimulatedBehaviour::from_name(value).ok_or_else(|| {
                let valid: Vec<&str> = SimulatedBehaviour::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "node simulator: annotation {SIMULATE_ANNOTATION}={value:?} is not one of {}",
                    valid.join(", ")
                )
            }),
            None => Ok(SimulatedBehaviour::of_image(image)),
        };
        let plan = |containers: Option<&Vec<k8s_openapi::api::core::v1::Container>>| {
            containers
                .into_iter()
                .flatten()
                .map(|container| {
                    let image = container.image.clone().unwrap_or_default();
                    PlannedContainer {
                        name: container.name.clone(),
                        behaviour: behaviour(&image),
                        image,
                    }
                })
                .collect()
        };
        let spec = pod.spec.as_ref();
        Self {
            pod: pod.name_any(),
            namespace: pod.namespace().unwrap_or_default(),
            uid: pod.uid().unwrap_or_default(),
            init_containers: plan(spec.and_then(|spec| spec.init_containers.as_ref())),
            containers: plan(spec.map(|spec| &spec.containers)),
            host_ip,
            pod_ip,
        }
    }

    /// The pod's status at `elapsed` since it was picked up, and when it next changes.
    pub(super) fn status_at(&self, elapsed: Duration, timing: &Timing, clock: &Clock) -> (PodStatus, Option<Duration>) {
        // Init containers complete after the start delay; the app containers' timelines begin then.
        let init_done_at = if self.init_containers.is_empty() {
            Duration::ZERO
        } else {
            timing.start_delay
        };
        let initialized = elapsed >= init_done_at;
        let mut next_change = (!initialized).then_some(init_done_at);
        let phases: Vec<ContainerPhase> = self
            .containers
            .iter()
            .map(|container| {
                if !initialized {
                    return ContainerPhase::PodInitializing;
                }
                match &container.behaviour {
                    Err(message) => ContainerPhase::Misconfigured(message.clone()),
                    Ok(behaviour) => {
                        let (phase, next) = container_phase(*behaviour, elapsed - init_done_at, timing);
                        let next = next.map(|at| at + init_done_at);
                        next_change = match (next_change, next) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        shift(phase, init_done_at)
                    }
                }
            })
            .collect();

        let statuses: Vec<ContainerStatus> = self
            .containers
            .iter()
            .zip(&phases)
            .map(|(container, phase)| self.container_status(container, phase, clock))
            .collect();
        let init_statuses: Vec<ContainerStatus> = self
            .init_containers
            .iter()
            .map(|container| self.init_container_status(container, initialized, init_done_at, clock))
            .collect();

        let pending = phases.iter().any(|phase| !phase.has_run());
        let all_ready = phases.iter().all(ContainerPhase::is_ready);
        let unready: Vec<&str> = self
            .containers
            .iter()
            .zip(&phases)
            .filter(|(_, phase)| !phase.is_ready())
            .map(|(container, _)| container.name.as_str())
            .collect();
        // No behaviour goes from Ready back to unready: Ready changed when the last container
        // started, and an unready pod has been unready since it was picked up.
        let ready_since = phases
            .iter()
            .filter_map(|phase| match phase {
                ContainerPhase::Running { started, .. } => Some(*started),
                _ => None,
            })
            .max()
            .filter(|_| all_ready)
            .unwrap_or(Duration::ZERO);
        let ready_condition = |type_: &str| PodCondition {
            type_: type_.to_owned(),
            status: if all_ready { "True" } else { "False" }.to_owned(),
            reason: (!all_ready).then(|| "ContainersNotReady".to_owned()),
            message: (!all_ready).then(|| format!("containers with unready status: [{}]", unready.join(" "))),
            last_transition_time: Some(clock.at(ready_since)),
            ..PodCondition::default()
        };
        let conditions = vec![
            PodCondition {
                type_: "Initialized".to_owned(),
                status: if initialized { "True" } else { "False" }.to_owned(),
                reason: (!initialized).then(|| "ContainersNotInitialized".to_owned()),
                message: (!initialized).then(|| {
                    let names: Vec<&str> = self.init_containers.iter().map(|c| c.name.as_str()).collect();
                    format!("containers with incomplete status: [{}]", names.join(" "))
                }),
                last_transition_time: Some(clock.at(if initialized { init_done_at } else { Duration::ZERO })),
                ..PodCondition::default()
            },
            ready_condition("Ready"),
            ready_condition("ContainersReady"),
            PodCondition {
                type_: "PodScheduled".to_owned(),
                status: "True".to_owned(),
                last_transition_time: Some(clock.at(Duration::ZERO)),
                ..PodCondition::default()
            },
        ];
        // The sandbox (and so the pod IP) exists once the first pull or start was attempted.
        let sandbox_up = elapsed >= timing.start_delay;
        let status = PodStatus {
            phase: Some(if pending { "Pending" } else { "Running" }.to_owned()),
            conditions: Some(conditions),
            host_ip: Some(self.host_ip.clone()),
            pod_ip: sandbox_up.then(|| self.pod_ip.clone()),
            pod_ips: sandbox_up.then(|| {
                vec![PodIP {
                    ip: self.pod_ip.clone(),
                }]
            }),
            start_time: Some(clock.at(Duration::ZERO)),
            container_statuses: Some(statuses),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            ..PodStatus::default()
        };
        (status, next_change)
    }

    fn container_status(&self, container: &PlannedContainer, phase: &ContainerPhase, clock: &Clock) -> ContainerStatus {
        let waiting = |reason: &str, message: Option<String>| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_owned()),
                message,
            }),
            ..ContainerState::default()
        };
        let terminated = |run: &Run, restarts: u32| ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                reason: Some("Error".to_owned()),
                started_at: Some(clock.at(run.started)),
                finished_at: Some(clock.at(run.finished)),
                container_id: Some(self.container_id(&container.name, restarts)),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
        let (state, last_state, restarts, container_id) = match phase {
            ContainerPhase::Creating => (waiting("ContainerCreating", None), None, 0, None),
            ContainerPhase::PodInitializing => (waiting("PodInitializing", None), None, 0, None),
            ContainerPhase::Misconfigured(message) => (
                waiting("CreateContainerConfigError", Some(message.clone())),
                None,
                0,
                None,
            ),
            ContainerPhase::PullFailed { backing_off: false } => (
                waiting(
                    "ErrImagePull",
                    Some(format!(
                        "rpc error: code = NotFound desc = failed to pull and unpack image {:?}: not found \
                         (simulated by Baton's node simulator)",
                        container.image
                    )),
                ),
                None,
                0,
                None,
            ),
            ContainerPhase::PullFailed { backing_off: true } => (
                waiting(
                    "ImagePullBackOff",
                    Some(format!("Back-off pulling image {:?}", container.image)),
                ),
                None,
                0,
                None,
            ),
            ContainerPhase::Running {
                started,
                restarts,
                last_run,
                ..
            } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(clock.at(*started)),
                    }),
                    ..ContainerState::default()
                },
                last_run.map(|run| terminated(&run, *restarts - 1)),
                *restarts,
                Some(self.container_id(&container.name, *restarts)),
            ),
            ContainerPhase::CrashLoopBackOff {
                restarts,
                last_run,
                back_off,
            } => (
                waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {back_off:?} restarting failed container={} pod={}_{}({})",
                        container.name, self.pod, self.namespace, self.uid
                    )),
                ),
                Some(terminated(last_run, *restarts - 1)),
                *restarts,
                Some(self.container_id(&container.name, *restarts - 1)),
            ),
        };
        ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone(),
            image_id: if phase.has_run() {
                image_id(&container.image)
            } else {
                String::new()
            },
            container_id,
            ready: phase.is_ready(),
            started: Some(matches!(phase, ContainerPhase::Running { .. })),
            restart_count: i32::try_from(restarts).unwrap_or(i32::MAX),
            state: Some(state),
            last_state: Some(last_state.unwrap_or_default()),
            ..ContainerStatus::default()
        }
    }

    fn init_container_status(
        &self,
        container: &PlannedContainer,
        done: bool,
        done_at: Duration,
        clock: &Clock,
    ) -> ContainerStatus {
        let state = if done {
            ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 0,
                    reason: Some("Completed".to_owned()),
                    started_at: Some(clock.at(Duration::ZERO)),
                    finished_at: Some(clock.at(done_at)),
                    container_id: Some(self.container_id(&container.name, 0)),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }
        } else {
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(clock.at(Duration::ZERO)),
                }),
                ..ContainerState::default()
            }
        };
        ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone(),
            image_id: image_id(&container.image),
            container_id: Some(self.container_id(&container.name, 0)),
            ready: done,
            started: Some(!done),
            restart_count: 0,
            state: Some(state),
            last_state: Some(ContainerState::default()),
            ..ContainerStatus::default()
        }
    }

    /// A stable, unique container ID for one run of one container of this pod.
    fn container_id(&self, container: &str, run: u32) -> String {
        let digest = Sha256::digest(format!("{}/{container}/{run}", self.uid));
        format!("containerd://{}", hex::encode(digest))
    }
}

/// Moves a phase computed on a timeline starting at 0 to one starting at `offset`.
fn shift(phase: ContainerPhase, offset: Duration) -> ContainerPhase {
    let shift_run = |run: Run| Run {
        started: run.started + offset,
        finished: run.finished + offset,
    };
    match phase {
        ContainerPhase::Running {
            started,
            ready,
            restarts,
            last_run,
        } => ContainerPhase::Running {
            started: started + offset,
            ready,
            restarts,
            last_run: last_run.map(shift_run),
        },
        ContainerPhase::CrashLoopBackOff {
            restarts,
            last_run,
            back_off,
        } => ContainerPhase::CrashLoopBackOff {
            restarts,
            last_run: shift_run(last_run),
            back_off,
        },
        other => other,
    }
}

/// The `imageID` a container runtime reports for `image`: the fully qualified repository with
/// the image's digest, which is the one pinned in the reference if there is one.
fn image_id(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, digest.to_owned()),
        None => (
            image,
            format!("sha256:{}", hex::encode(Sha256::digest(image.as_bytes()))),
        ),
    };
    // Drop a tag: a ':' after the last '/' (a ':' before it belongs to a registry port).
    let repository = match name.rfind(':') {
        Some(colon) if name.rfind('/').is_none_or(|slash| colon > slash) => &name[..colon],
        _ => name,
    };
    format!("{}@{digest}", qualified_repository(repository))
}

/// `repository` with Docker Hub's implicit registry and `library/` namespace made explicit, as
/// containerd reports it.
fn qualified_repository(repository: &str) -> String {
    match repository.split_once('/') {
        None => format!("docker.io/library/{repository}"),
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => repository.to_owned(),
        Some(_) => format!("docker.io/{repository}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn timing() -> Timing {
        Timing {
            start_delay: Duration::from_millis(100),
            crash_after: Duration::from_millis(50),
            pull_failure: Duration::from_millis(20),
            back_off_base: Duration::from_millis(200),
            back_off_cap: Duration::from_millis(500),
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn behaviour_comes_from_the_annotation_or_the_image() {
        assert_eq!(
            SimulatedBehaviour::from_name("crashloop"),
            Some(SimulatedBehaviour::CrashLoop)
        );
        assert_eq!(
            SimulatedBehaviour::from_name(" never-ready "),
            Some(SimulatedBehaviour::NeverReady)
        );
        assert_eq!(SimulatedBehaviour::from_name("crashlop"), None);
        assert_eq!(
            SimulatedBehaviour::of_image("registry.example/shop:crashloop"),
            SimulatedBehaviour::CrashLoop
        );
        assert_eq!(
            SimulatedBehaviour::of_image("registry.example/ImagePullBackOff/shop@sha256:0123"),
            SimulatedBehaviour::ImagePullBackOff
        );
        assert_eq!(
            SimulatedBehaviour::of_image("shop:never-ready"),
            SimulatedBehaviour::NeverReady
        );
        assert_eq!(
            SimulatedBehaviour::of_image("127.0.0.1:5000/shop@sha256:abc123"),
            SimulatedBehaviour::Healthy
        );

        let mut pod = Pod::default();
        pod.metadata.annotations = Some(BTreeMap::from([(
            SIMULATE_ANNOTATION.to_owned(),
            "crashlop".to_owned(),
        )]));
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "web".to_owned(),
                image: Some("shop:1".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        });
        let plan = PodPlan::of(&pod, "10.200.0.1".to_owned(), "10.244.0.2".to_owned());
        let message = plan.containers[0].behaviour.clone().expect_err("a typo is refused");
        assert!(
            message.contains("imagepullbackoff, crashloop, never-ready, healthy"),
            "{message}"
        );
        let (status, _) = plan.status_at(ms(1000), &timing(), &Clock::new(Timestamp::UNIX_EPOCH));
        let container = &status.container_statuses.expect("statuses")[0];
        let waiting = container
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CreateContainerConfigError"));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn healthy_container_starts_after_the_delay_and_stays_ready() {
        let timing = timing();
        assert_eq!(
            container_phase(SimulatedBehaviour::Healthy, ms(50), &timing),
            (ContainerPhase::Creating, Some(ms(100)))
        );
        let running = ContainerPhase::Running {
            started: ms(100),
            ready: true,
            restarts: 0,
            last_run: None,
        };
        assert_eq!(
            container_phase(SimulatedBehaviour::Healthy, ms(100), &timing),
            (running.clone(), None)
        );
        assert_eq!(
            container_phase(SimulatedBehaviour::Healthy, ms(99_999), &timing),
            (running, None)
        );
        let (never_ready, next) = container_phase(SimulatedBehaviour::NeverReady, ms(5000), &timing);
        assert!(!never_ready.is_ready() && never_ready.has_run() && next.is_none());
    }

    #[test]
    fn crash_loop_restarts_with_growing_back_off() {
        let timing = timing();
        // Run 0: 100..150, back-off 200 → run 1: 350..400, back-off 400 → run 2: 800..850,
        // back-off 500 (capped) → run 3 at 1350.
        let (phase, next) = container_phase(SimulatedBehaviour::CrashLoop, ms(120), &timing);
        assert_eq!(
            phase,
            ContainerPhase::Running {
                started: ms(100),
                ready: false,
                restarts: 0,
                last_run: None
            }
        );
        assert_eq!(next, Some(ms(150)));
        let (phase, next) = container_phase(SimulatedBehaviour::CrashLoop, ms(200), &timing);
        assert_eq!(
            phase,
            ContainerPhase::CrashLoopBackOff {
                restarts: 1,
                last_run: Run {
                    started: ms(100),
                    finished: ms(150)
                },
                back_off: ms(200)
            }
        );
        assert_eq!(next, Some(ms(350)));
        let (phase, _) = container_phase(SimulatedBehaviour::CrashLoop, ms(360), &timing);
        assert_eq!(
            phase,
            ContainerPhase::Running {
                started: ms(350),
                ready: false,
                restarts: 1,
                last_run: Some(Run {
                    started: ms(100),
                    finished: ms(150)
                })
            }
        );
        let (phase, next) = container_phase(SimulatedBehaviour::CrashLoop, ms(900), &timing);
        assert!(matches!(phase, ContainerPhase::CrashLoopBackOff { restarts: 3, back_off, .. } if back_off == ms(500)));
        assert_eq!(next, Some(ms(1350)));
    }

    #[test]
    fn image_pull_alternates_between_error_and_back_off() {
        let timing = timing();
        let at = |millis| container_phase(SimulatedBehaviour::ImagePullBackOff, ms(millis), &timing);
        assert_eq!(
            at(110),
            (ContainerPhase::PullFailed { backing_off: false }, Some(ms(120)))
        );
        assert_eq!(
            at(200),
            (ContainerPhase::PullFailed { backing_off: true }, Some(ms(320)))
        );
        assert_eq!(
            at(330),
            (ContainerPhase::PullFailed { backing_off: false }, Some(ms(340)))
        );
        assert_eq!(
            at(400),
            (ContainerPhase::PullFailed { backing_off: true }, Some(ms(740)))
        );
    }

    #[test]
    fn pod_status_reads_like_a_kubelets() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("shop-1".to_owned());
        pod.metadata.namespace = Some("staging".to_owned());
        pod.metadata.uid = Some("uid-1".to_owned());
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            init_containers: Some(vec![k8s_openapi::api::core::v1::Container {
                name: "migrate".to_owned(),
                image: Some("shop-migrations:1".to_owned()),
                ..Default::default()
            }]),
            containers: vec![
                k8s_openapi::api::core::v1::Container {
                    name: "web".to_owned(),
                    image: Some("registry.example:5000/shop@sha256:feed".to_owned()),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::Container {
                    name: "sidecar".to_owned(),
                    image: Some("proxy:crashloop".to_owned()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let plan = PodPlan::of(&pod, "10.200.0.1".to_owned(), "10.244.0.7".to_owned());
        let clock = Clock::new(Timestamp::UNIX_EPOCH);
        let timing = timing();

        let (status, next) = plan.status_at(ms(10), &timing, &clock);
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.pod_ip, None);
        assert_eq!(next, Some(ms(100)));
        let conditions = status.conditions.expect("conditions");
        assert_eq!(conditions[0].type_, "Initialized");
        assert_eq!(conditions[0].status, "False");

        // Init done at 100, so the app containers start at 200; the sidecar crashes at 250.
        let (status, next) = plan.status_at(ms(220), &timing, &clock);
        assert_eq!(next, Some(ms(250)));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.7"));
        let containers = status.container_statuses.expect("statuses");
        assert_eq!(containers[0].image_id, "registry.example:5000/shop@sha256:feed");
        assert!(containers[0].ready);
        assert!(!containers[1].ready);
        let ready = &status.conditions.expect("conditions")[1];
        assert_eq!((ready.type_.as_str(), ready.status.as_str()), ("Ready", "False"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [sidecar]")
        );
        let init = &status.init_container_statuses.expect("init statuses")[0];
        assert_eq!(
            init.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.reason.as_deref()),
            Some("Completed")
        );

        let (status, _) = plan.status_at(ms(300), &timing, &clock);
        let sidecar = &status.container_statuses.expect("statuses")[1];
        assert_eq!(sidecar.restart_count, 1);
        let waiting = sidecar
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = sidecar
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert_eq!(status.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn image_ids_are_qualified_and_keep_pinned_digests() {
        assert!(image_id("nginx:1.19").starts_with("docker.io/library/nginx@sha256:"));
        assert!(image_id("acme/shop").starts_with("docker.io/acme/shop@sha256:"));
        assert_eq!(
            image_id("localhost:5000/shop:v1@sha256:ab"),
            "localhost:5000/shop@sha256:ab"
        );
        assert_eq!(
            image_id("127.0.0.1:5000/shop@sha256:ab"),
            "127.0.0.1:5000/shop@sha256:ab"
        );
        assert_eq!(image_id("nginx:1.19"), image_id("nginx:1.19"));
        assert_ne!(image_id("nginx:1.19"), image_id("nginx:1.20"));
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let timing = timing();
        assert_eq!(timing.back_off(0), ms(200));
        assert_eq!(timing.back_off(1), ms(400));
        assert_eq!(timing.back_off(2), ms(500));
        assert_eq!(timing.back_off(40), ms(500));
    }
}
