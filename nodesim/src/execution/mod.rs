//! Executed pods: with [`Execution`] configured, a pod without the
//! [`SIMULATE_ANNOTATION`](super::SIMULATE_ANNOTATION) really runs. Its images are pulled
//! (`image`), its volumes made (emptyDir directories, Secret and ConfigMap files), its init
//! containers run one after another and then its containers together, each as a sandboxed
//! process (`baton_kit::steps::Sandbox::container_command`) on its own copy of the image's root
//! filesystem, its output in a log file the kubelet log server (`logs`) serves. The status the
//! apiserver shows is posted at every change, with real times, exit codes and reasons.
//!
//! As a kubelet with `restartPolicy: Never` it never restarts a container; the pod ends
//! `Succeeded` when every container exited 0, else `Failed`. `activeDeadlineSeconds` kills
//! everything (`DeadlineExceeded`), an emptyDir over its `sizeLimit` evicts the pod (`Evicted`),
//! a memory limit is a cgroup: a container in which the OOM killer killed a process ends with
//! reason `OOMKilled` and its main process's exit code (137 when the main process was the one
//! killed). A Secret or ConfigMap an environment variable needs
//! and that does not exist yet leaves the container waiting with `CreateContainerConfigError`,
//! tried again every second. Deleting the pod kills its processes.
//!
//! What it does not do: isolate or police the network (containers share the host's network
//! namespace, NetworkPolicies are not enforced), probes, restarts, `fsGroup`, capabilities
//! beyond dropping all of them for non-root users, volumes other than emptyDir, Secret and
//! ConfigMap, CPU and ephemeral-storage limits.
//!
//! The code follows a pod's life: [`run_pod`] here runs it to its end (the deadline and
//! eviction included); `pull` pulls its images, `volumes` makes its volumes, `config` reads the
//! Secrets and ConfigMaps they and the containers' environment need, `container` starts each
//! container as a sandboxed process and waits for its end (an OOM kill included), and `status`
//! holds what the apiserver is shown and posts it.

mod config;
mod container;
mod pull;
mod status;
mod volumes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_kit::steps::{Sandbox, disk_usage};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt as _};

use super::image::ImageStore;
use super::logs::LogBook;
use super::workload::quantity_bytes;
use status::{PodState, Record, Reporter, Slot, State};

/// How pods are executed: pulled from which registries, unpacked where. What execution does is
/// told in the [simulator's documentation](super) and `docs/testing-kubernetes.md`.
#[derive(Debug, Clone)]
pub struct Execution {
    /// Registries (`host:port`, e.g. the test harness's `RegistryServer::address`) images may be pulled from, over plain HTTP. An image elsewhere fails with `ErrImagePull`.
    pub registries: Vec<String>,
    /// Where pulled images are unpacked, one root filesystem per manifest digest; may be shared
    /// by several simulators (and outlive them) to pull each image once.
    pub image_cache: PathBuf,
}

impl Execution {
    /// Pulling from the one registry `registry` (`host:port`) into `image_cache`.
    pub fn new(registry: impl Into<String>, image_cache: impl Into<PathBuf>) -> Self {
        Self {
            registries: vec![registry.into()],
            image_cache: image_cache.into(),
        }
    }
}

/// The kubelet's reason and message for a pod past its `activeDeadlineSeconds`.
const DEADLINE_REASON: &str = "DeadlineExceeded";
const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";
/// How often emptyDir volumes with a `sizeLimit` are measured.
const EVICTION_INTERVAL: Duration = Duration::from_millis(250);

/// What every executed pod of one simulator shares.
#[derive(Debug)]
pub(super) struct Executor {
    images: ImageStore,
    sandbox: Sandbox,
    pub(super) logs: LogBook,
    /// One directory per pod (by uid): volumes, root filesystem copies, logs.
    pods_dir: PathBuf,
    /// Pods whose directory exists, by uid, as (namespace, name): removed when the pod is.
    pods: Mutex<HashMap<String, (String, String)>>,
}

impl Executor {
    pub(super) fn new(execution: &Execution, pods_dir: PathBuf) -> std::io::Result<Self> {
        for dir in [&execution.image_cache, &pods_dir] {
            std::fs::create_dir_all(dir)?;
            // Containers of other users reach their root filesystems and volumes through it.
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        Ok(Self {
            images: ImageStore::new(execution.image_cache.clone(), execution.registries.clone()),
            sandbox: Sandbox::new((65534, 65534), Vec::new()),
            logs: LogBook::default(),
            pods_dir,
            pods: Mutex::new(HashMap::new()),
        })
    }

    /// Removes what a deleted pod left: its directory and its logs.
    pub(super) fn forget(&self, uid: &str) {
        let known = self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
        if let Some((namespace, name)) = known {
            self.logs.forget_pod(&namespace, &name);
            let dir = self.pods_dir.join(uid);
            std::thread::spawn(move || {
                // Killed processes may still hold files for a moment.
                for _ in 0..20 {
                    if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
        }
    }
}

/// Runs `pod` to its end, posting its status on the way.
pub(super) async fn run_pod(executor: Arc<Executor>, client: Client, pod: Pod) {
    let (Some(uid), Some(namespace)) = (pod.uid(), pod.namespace()) else {
        return;
    };
    let name = pod.name_any();
    let Some(spec) = pod.spec.clone() else {
        return;
    };
    executor
        .pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(uid.clone(), (namespace.clone(), name.clone()));
    let pod_dir = executor.pods_dir.join(&uid);
    let waiting = |reason: &str| State::Waiting {
        reason: reason.to_owned(),
        message: None,
    };
    let records = |containers: &[Container], reason: &str| -> Vec<Record> {
        containers
            .iter()
            .map(|c| Record {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: None,
                container_id: None,
                state: waiting(reason),
            })
            .collect()
    };
    let init_containers = spec.init_containers.clone().unwrap_or_default();
    let main_reason = if init_containers.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let reporter = Reporter {
        api: Api::namespaced(client.clone(), &namespace),
        name: name.clone(),
        state: Mutex::new(PodState {
            init: records(&init_containers, "PodInitializing"),
            main: records(&spec.containers, main_reason),
            phase: "Pending",
            reason: None,
            message: None,
            start_time: Timestamp::now(),
        }),
    };
    reporter.update(|_| {}).await;

    let deadline = spec
        .active_deadline_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let size_limits: Vec<(String, String, PathBuf)> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let limit = v.empty_dir.as_ref()?.size_limit.as_ref()?;
            Some((v.name.clone(), limit.0.clone(), pod_dir.join("volumes").join(&v.name)))
        })
        .collect();
    let context = PodContext {
        executor: &executor,
        client: &client,
        pod: &pod,
        namespace: &namespace,
        pod_dir: &pod_dir,
        reporter: &reporter,
    };
    let ended = tokio::select! {
        () = context.run(&init_containers, &spec.containers) => None,
        () = sleep_until(deadline) => Some((DEADLINE_REASON.to_owned(), DEADLINE_MESSAGE.to_owned())),
        message = watch_size_limits(size_limits) => Some(("Evicted".to_owned(), message)),
    };
    if let Some((reason, message)) = ended {
        // The containers' processes were killed with the future that ran them.
        let now = Timestamp::now();
        reporter
            .update(|state| {
                for record in state.init.iter_mut().chain(state.main.iter_mut()) {
                    if let State::Running { started } = record.state {
                        record.state = State::Terminated {
                            exit_code: 137,
                            reason: "Error".to_owned(),
                            message: None,
                            started,
                            finished: now,
                        };
                    }
                }
                state.phase = "Failed";
                state.reason = Some(reason);
                state.message = Some(message);
            })
            .await;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends with the kubelet's eviction message once an emptyDir grows past its `sizeLimit`.
async fn watch_size_limits(limits: Vec<(String, String, PathBuf)>) -> String {
    if limits.is_empty() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(EVICTION_INTERVAL).await;
        for (name, limit, dir) in &limits {
            let Some(bytes) = quantity_bytes(limit) else { continue };
            let measured = dir.clone();
            let used = tokio::task::spawn_blocking(move || disk_usage(&measured))
                .await
                .unwrap_or(0);
            if used > bytes {
                return format!("Usage of EmptyDir volume \"{name}\" exceeds the limit \"{limit}\". ");
            }
        }
    }
}

/// What running one pod's containers needs.
struct PodContext<'a> {
    executor: &'a Executor,
    client: &'a Client,
    pod: &'a Pod,
    namespace: &'a str,
    pod_dir: &'a Path,
    reporter: &'a Reporter,
}

impl PodContext<'_> {
    /// Pulls, prepares and runs everything; returns when the pod's phase is final.
    async fn run(&self, init: &[Container], main: &[Container]) {
        let images = self.pull_all(init, main).await;
        let volumes = self.prepare_volumes().await;
        for (index, container) in init.iter().enumerate() {
            let slot = Slot::Init(index);
            let started = self.start(slot, container, &images, &volumes).await;
            let exit_code = self.finish(slot, started).await;
            if exit_code != 0 {
                let reason = "Init container failed".to_owned();
                self.reporter
                    .update(|state| {
                        state.phase = "Failed";
                        state.message = Some(reason);
                        for r in &mut state.main {
                            r.state = State::Waiting {
                                reason: "PodInitializing".to_owned(),
                                message: None,
                            };
                        }
                    })
                    .await;
                return;
            }
        }
        let mut waits = FuturesUnordered::new();
        for (index, container) in main.iter().enumerate() {
            let slot = Slot::Main(index);
            let started = self.start(slot, container, &images, &volumes).await;
            self.reporter.update(|state| state.phase = "Running").await;
            waits.push(self.finish(slot, started));
        }
        let mut failed = false;
        while let Some(exit_code) = waits.next().await {
            failed |= exit_code != 0;
        }
        self.reporter
            .update(|state| state.phase = if failed { "Failed" } else { "Succeeded" })
            .await;
    }
}
