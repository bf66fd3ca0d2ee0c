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

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_kit::steps::{BindMount, ContainerSpec, Sandbox, disk_usage};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::POLL_INTERVAL;
use super::cgroup::MemoryCgroup;
use super::image::{ImageStore, PulledImage};
use super::logs::{LogBook, LogWriterGuard};
use super::workload::{command_line, expand, must_be_non_root, quantity_bytes, user};

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
/// How long a container waiting for its configuration waits between tries.
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// Pause after a failed pull before `ImagePullBackOff` ends and the pull is tried again.
const PULL_BACK_OFF: Duration = Duration::from_secs(2);

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

/// A container's state, as its status shows it.
#[derive(Debug, Clone)]
enum State {
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
struct Record {
    name: String,
    image: String,
    image_id: Option<String>,
    container_id: Option<String>,
    state: State,
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
struct PodState {
    init: Vec<Record>,
    main: Vec<Record>,
    phase: &'static str,
    reason: Option<String>,
    message: Option<String>,
    start_time: Timestamp,
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
struct Reporter {
    api: Api<Pod>,
    name: String,
    state: Mutex<PodState>,
}

impl Reporter {
    fn lock(&self) -> std::sync::MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the state with `change`, then posts it (retrying a few times).
    async fn update(&self, change: impl FnOnce(&mut PodState)) {
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
enum Slot {
    Init(usize),
    Main(usize),
}

fn record(state: &mut PodState, slot: Slot) -> &mut Record {
    match slot {
        Slot::Init(i) => &mut state.init[i],
        Slot::Main(i) => &mut state.main[i],
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

/// A started container.
struct Started {
    child: tokio::process::Child,
    cgroup: Option<MemoryCgroup>,
    started: Timestamp,
    _log: LogWriterGuard,
    _rootfs: RemoveOnDrop,
}

/// Where a variable or volume takes its data from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Secret,
    ConfigMap,
}

impl Source {
    fn kind(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
        }
    }
}

/// A directory removed (in the background) when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let dir = self.0.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }
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

    /// Every container's image, retried (`ErrImagePull`, `ImagePullBackOff`) until pulled.
    async fn pull_all(&self, init: &[Container], main: &[Container]) -> HashMap<String, PulledImage> {
        let mut images: HashMap<String, PulledImage> = HashMap::new();
        let slots = init
            .iter()
            .enumerate()
            .map(|(i, c)| (Slot::Init(i), c))
            .chain(main.iter().enumerate().map(|(i, c)| (Slot::Main(i), c)));
        for (slot, container) in slots {
            let image = container.image.clone().unwrap_or_default();
            loop {
                if images.contains_key(&image) {
                    break;
                }
                match self.executor.images.pull(&image).await {
                    Ok(pulled) => {
                        images.insert(image.clone(), pulled);
                        break;
                    }
                    Err(error) => {
                        let message = error.to_string();
                        let waiting = |reason: &str| State::Waiting {
                            reason: reason.to_owned(),
                            message: Some(message.clone()),
                        };
                        self.reporter
                            .update(|state| record(state, slot).state = waiting("ErrImagePull"))
                            .await;
                        tokio::time::sleep(PULL_BACK_OFF).await;
                        self.reporter
                            .update(|state| record(state, slot).state = waiting("ImagePullBackOff"))
                            .await;
                        tokio::time::sleep(PULL_BACK_OFF).await;
                    }
                }
            }
        }
        images
    }

    /// The pod's volumes by name, as host directories; retried until every Secret and
    /// ConfigMap they need exists.
    async fn prepare_volumes(&self) -> HashMap<String, PathBuf> {
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        loop {
            match self.try_volumes(&volumes).await {
                Ok(dirs) => return dirs,
                Err(message) => {
                    // A kubelet tells this in a FailedMount event; the simulator, which posts
                    // no events, in the waiting containers' message.
                    let message = format!("MountVolume.SetUp failed: {message}");
                    self.reporter
                        .update(|state| {
                            for record in state.init.iter_mut().chain(state.main.iter_mut()) {
                                if let State::Waiting { message: waiting, .. } = &mut record.state {
                                    *waiting = Some(message.clone());
                                }
                            }
                        })
                        .await;
                    tokio::time::sleep(CONFIG_RETRY).await;
                }
            }
        }
    }

    async fn try_volumes(&self, volumes: &[Volume]) -> Result<HashMap<String, PathBuf>, String> {
        let mut dirs = HashMap::new();
        for volume in volumes {
            let dir = self.pod_dir.join("volumes").join(&volume.name);
            let io = |e: std::io::Error| format!("volume {}: {e}", volume.name);
            let files: Option<(BTreeMap<String, Vec<u8>>, _, _)> = if volume.empty_dir.is_some() {
                std::fs::create_dir_all(&dir).map_err(io)?;
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).map_err(io)?;
                None
            } else if let Some(source) = &volume.secret {
                let name = source.secret_name.clone().unwrap_or_default();
                let data = self.required_data(Source::Secret, &name, source.optional).await?;
                Some((data, source.items.clone(), source.default_mode))
            } else if let Some(source) = &volume.config_map {
                let data = self
                    .required_data(Source::ConfigMap, &source.name, source.optional)
                    .await?;
                Some((data, source.items.clone(), source.default_mode))
            } else {
                return Err(format!(
                    "volume {}: the node simulator executes only emptyDir, secret and configMap volumes",
                    volume.name
                ));
            };
            if let Some((data, items, mode)) = files {
                std::fs::create_dir_all(&dir).map_err(io)?;
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(io)?;
                let chosen: Vec<(String, String, Option<i32>)> = match items {
                    Some(items) => items.into_iter().map(|i| (i.key, i.path, i.mode)).collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
                };
                for (key, path, item_mode) in chosen {
                    let Some(bytes) = data.get(&key) else {
                        return Err(format!("volume {}: no key {key}", volume.name));
                    };
                    if path.split('/').any(|part| part == "..") || path.starts_with('/') {
                        return Err(format!("volume {}: invalid path {path}", volume.name));
                    }
                    let file = dir.join(&path);
                    if let Some(parent) = file.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&file, bytes).map_err(io)?;
                    let mode = item_mode.or(mode).unwrap_or(0o644);
                    let mode = u32::try_from(mode).unwrap_or(0o644);
                    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?;
                }
            }
            dirs.insert(volume.name.clone(), dir);
        }
        Ok(dirs)
    }

    /// The named object of the pod's namespace, `None` when it does not exist.
    async fn get<K>(&self, name: &str) -> Result<Option<K>, String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        api.get_opt(name).await.map_err(|e| e.to_string())
    }

    /// The data of the named Secret or ConfigMap, `None` when it does not exist.
    async fn data(&self, source: Source, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(match source {
            Source::Secret => self.get::<Secret>(name).await?.map(|secret| {
                secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }),
            Source::ConfigMap => self.get::<ConfigMap>(name).await?.map(|map| {
                map.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .chain(map.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)))
                    .collect()
            }),
        })
    }

    /// The object's data; nothing when it is missing and `optional`, else the kubelet's error.
    async fn required_data(
        &self,
        source: Source,
        name: &str,
        optional: Option<bool>,
    ) -> Result<BTreeMap<String, Vec<u8>>, String> {
        match self.data(source, name).await? {
            Some(data) => Ok(data),
            None if optional == Some(true) => Ok(BTreeMap::new()),
            None => Err(format!("{} \"{name}\" not found", source.kind().to_lowercase())),
        }
    }

    /// One key of the object (`secretKeyRef`, `configMapKeyRef`).
    async fn key(
        &self,
        source: Source,
        name: &str,
        key: &str,
        optional: Option<bool>,
    ) -> Result<Option<String>, String> {
        match self.required_data(source, name, optional).await?.get(key) {
            Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
            None if optional == Some(true) => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {} {}/{name}",
                source.kind(),
                self.namespace
            )),
        }
    }

    /// The container's environment, in order: the image's, `envFrom`, `env`.
    async fn environment(
        &self,
        container: &Container,
        image: &PulledImage,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        for entry in image.config["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some((key, value)) = entry.split_once('=') {
                env.insert(key.to_owned(), value.to_owned());
            }
        }
        for source in container.env_from.iter().flatten() {
            let prefix = source.prefix.clone().unwrap_or_default();
            let references = [
                source
                    .secret_ref
                    .as_ref()
                    .map(|r| (Source::Secret, &r.name, r.optional)),
                source
                    .config_map_ref
                    .as_ref()
                    .map(|r| (Source::ConfigMap, &r.name, r.optional)),
            ];
            for (kind, name, optional) in references.into_iter().flatten() {
                for (key, value) in self.required_data(kind, name, optional).await? {
                    env.insert(format!("{prefix}{key}"), String::from_utf8_lossy(&value).into_owned());
                }
            }
        }
        for var in container.env.iter().flatten() {
            let value = if let Some(value) = &var.value {
                Some(expand(value, &env))
            } else if let Some(from) = &var.value_from {
                if let Some(key_ref) = &from.secret_key_ref {
                    self.key(Source::Secret, &key_ref.name, &key_ref.key, key_ref.optional)
                        .await?
                } else if let Some(key_ref) = &from.config_map_key_ref {
                    self.key(Source::ConfigMap, &key_ref.name, &key_ref.key, key_ref.optional)
                        .await?
                } else if let Some(field) = &from.field_ref {
                    let spec = self.pod.spec.as_ref();
                    Some(match field.field_path.as_str() {
                        "metadata.name" => self.pod.name_any(),
                        "metadata.namespace" => self.namespace.to_owned(),
                        "metadata.uid" => self.pod.uid().unwrap_or_default(),
                        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                        "spec.serviceAccountName" => {
                            spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default()
                        }
                        "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                        other => return Err(format!("the node simulator does not resolve fieldRef {other}")),
                    })
                } else {
                    return Err(format!(
                        "env {}: only secretKeyRef, configMapKeyRef and fieldRef are resolved",
                        var.name
                    ));
                }
            } else {
                Some(String::new())
            };
            if let Some(value) = value {
                env.insert(var.name.clone(), value);
            }
        }
        Ok(env)
    }

    /// Starts one container (waiting in `CreateContainerConfigError` until its configuration
    /// resolves); `Err` holds the `RunContainerError` message of a container that cannot start.
    async fn start(
        &self,
        slot: Slot,
        container: &Container,
        images: &HashMap<String, PulledImage>,
        volumes: &HashMap<String, PathBuf>,
    ) -> Result<Started, String> {
        let image = &images[&container.image.clone().unwrap_or_default()];
        let env = loop {
            match self.environment(container, image).await {
                Ok(env) => break env,
                Err(message) => {
                    self.reporter
                        .update(|state| {
                            record(state, slot).state = State::Waiting {
                                reason: "CreateContainerConfigError".to_owned(),
                                message: Some(message),
                            };
                        })
                        .await;
                    tokio::time::sleep(CONFIG_RETRY).await;
                }
            }
        };
        let pod_security = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let ids = user(container, pod_security, &image.config);
        if ids.0 == 0 && must_be_non_root(container, pod_security) {
            let message = "container has runAsNonRoot and image will run as root".to_owned();
            self.reporter
                .update(|state| {
                    record(state, slot).state = State::Waiting {
                        reason: "CreateContainerConfigError".to_owned(),
                        message: Some(message),
                    };
                })
                .await;
            return std::future::pending().await;
        }
        let argv = command_line(container, &image.config, &env);
        let read_only_root = container
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false);
        let workdir = container
            .working_dir
            .clone()
            .or_else(|| {
                image.config["WorkingDir"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "/".to_owned());
        let memory = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity_bytes(&q.0));
        let uid = self.pod.uid().unwrap_or_default();
        let container_id = format!(
            "baton-sim://{}",
            hex::encode(&Sha256::digest(format!("{uid}/{}", container.name).as_bytes())[..16])
        );
        let result = async {
            if argv.is_empty() {
                return Err("no command specified".to_owned());
            }
            let rootfs = self.pod_dir.join("rootfs").join(&container.name);
            std::fs::create_dir_all(self.pod_dir.join("rootfs")).map_err(|e| e.to_string())?;
            let _ = std::fs::set_permissions(self.pod_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
            copy_rootfs(&image.rootfs, &rootfs, read_only_root).await?;
            let rootfs_guard = RemoveOnDrop(rootfs.clone());
            let mut mounts = Vec::new();
            let hosts = self.pod_dir.join("hosts");
            let hostname = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| self.pod.name_any());
            std::fs::write(
                &hosts,
                format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.0.1\t{hostname}\n"),
            )
            .map_err(|e| e.to_string())?;
            mounts.push(BindMount {
                source: hosts,
                target: PathBuf::from("/etc/hosts"),
                read_only: true,
            });
            if Path::new("/etc/resolv.conf").exists() {
                mounts.push(BindMount {
                    source: PathBuf::from("/etc/resolv.conf"),
                    target: PathBuf::from("/etc/resolv.conf"),
                    read_only: true,
                });
            }
            for mount in container.volume_mounts.iter().flatten() {
                let dir = volumes
                    .get(&mount.name)
                    .ok_or_else(|| format!("volumeMount {} names no volume of the pod", mount.name))?;
                let source = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                    Some(sub) if sub.split('/').any(|p| p == "..") => return Err(format!("invalid subPath {sub}")),
                    Some(sub) => {
                        let source = dir.join(sub);
                        std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
                        source
                    }
                    None => dir.clone(),
                };
                mounts.push(BindMount {
                    source,
                    target: PathBuf::from(&mount.mount_path),
                    read_only: mount.read_only.unwrap_or(false),
                });
            }
            let cgroup = match memory {
                Some(bytes) => Some(MemoryCgroup::create(&format!("{uid}-{}", container.name), bytes)?),
                None => None,
            };
            let spec = ContainerSpec {
                rootfs,
                read_only_root,
                mounts,
                argv: argv.iter().map(OsString::from).collect(),
                env: env
                    .iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                    .collect(),
                workdir: PathBuf::from(&workdir),
                user: ids,
                hostname,
                cgroup: cgroup.as_ref().map(|c| c.dir().to_owned()),
            };
            let mut command = self
                .executor
                .sandbox
                .container_command(&spec)
                .map_err(|e| format!("cannot create the container: {e}"))?;
            let logs = self.pod_dir.join("logs");
            std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
            let log_path = logs.join(format!("{}.log", container.name));
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let log_err = log.try_clone().map_err(|e| e.to_string())?;
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .kill_on_drop(true);
            let guard = self
                .executor
                .logs
                .register(self.namespace, &self.pod.name_any(), &container.name, &log_path);
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start the container: {e}"))?;
            Ok(Started {
                child,
                cgroup,
                started: Timestamp::now(),
                _log: guard,
                _rootfs: rootfs_guard,
            })
        }
        .await;
        let image_id = image.image_id.clone();
        let state = match &result {
            Ok(started) => State::Running {
                started: started.started,
            },
            Err(message) => State::Waiting {
                reason: "RunContainerError".to_owned(),
                message: Some(message.clone()),
            },
        };
        self.reporter
            .update(|pod| {
                let r = record(pod, slot);
                r.state = state;
                r.image_id = Some(image_id);
                r.container_id = Some(container_id);
            })
            .await;
        result
    }

    /// Waits for a started container to end and posts how; returns its exit code (a container
    /// that could not start never ends: `restartPolicy: Never` leaves it waiting, as a kubelet
    /// does).
    async fn finish(&self, slot: Slot, started: Result<Started, String>) -> i32 {
        let Ok(mut started) = started else {
            return std::future::pending().await;
        };
        let status = started.child.wait().await;
        let finished = Timestamp::now();
        let exit_code = match status {
            Ok(status) => status
                .code()
                .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
                .unwrap_or(128),
            Err(_) => 128,
        };
        let oom = started.cgroup.as_ref().is_some_and(MemoryCgroup::oom_killed);
        let reason = if oom {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let began = started.started;
        drop(started);
        self.reporter
            .update(|state| {
                record(state, slot).state = State::Terminated {
                    exit_code,
                    reason: reason.to_owned(),
                    message: None,
                    started: began,
                    finished,
                };
            })
            .await;
        exit_code
    }
}

/// The container's own root filesystem: hard links of the image's files when it is read-only
/// (nothing can change them through the read-only mount), a full copy when it is writable.
async fn copy_rootfs(image: &Path, rootfs: &Path, read_only: bool) -> Result<(), String> {
    let copy = |flags: &str| {
        let mut command = tokio::process::Command::new("cp");
        command.arg(flags).arg(image).arg(rootfs);
        command
    };
    let linked = read_only && copy("-al").status().await.is_ok_and(|s| s.success());
    if !linked {
        let _ = tokio::fs::remove_dir_all(rootfs).await;
        let status = copy("-a").status().await.map_err(|e| format!("cp: {e}"))?;
        if !status.success() {
            return Err(format!(
                "copying the image's root filesystem to {} failed",
                rootfs.display()
            ));
        }
    }
    Ok(())
}
