//! The node simulator: the kubelets of a test cluster.
//!
//! A [`NodeSimulator`] registers nodes the way a kubelet does (a Node with capacity, addresses,
//! system info and a `Ready` condition, plus a Lease in `kube-node-lease`), renews their leases
//! and status so the node-lifecycle controller keeps them Ready, and drives every pod the
//! scheduler binds to them (or that names one of them in `spec.nodeName`) the way a kubelet
//! would: status `Pending`/`ContainerCreating`, then per container what the pod asks for.
//! Containers never run; probes are not executed. Rollouts therefore succeed or fail through
//! the real Deployment controller, with the states a user would see on a real cluster.
//!
//! # What a container does
//!
//! The pod annotation [`SIMULATE_ANNOTATION`] (`baton.dev/simulate`) sets the behaviour of all
//! its containers; without it, each container's image reference decides: an image whose
//! reference contains `imagepullbackoff`, `crashloop` or `never-ready` (in the repository or
//! the tag, e.g. `registry.example/shop:crashloop` or `registry.example/crashloop/shop@sha256:…`)
//! behaves so, any other image is healthy.
//!
//! | value | container state, as `kubectl get pod` would show it |
//! | --- | --- |
//! | `healthy` | `ContainerCreating` for [`container_start_delay`](NodeSimulatorConfig::container_start_delay), then `Running` and Ready |
//! | `never-ready` | `Running` but never Ready (a readiness probe that never passes) |
//! | `crashloop` | runs for [`crash_after`](NodeSimulatorConfig::crash_after) without becoming Ready, exits with code 1 (`lastState.terminated.reason: Error`), waits in `CrashLoopBackOff` for an exponential back-off, restarts; `restartCount` grows |
//! | `imagepullbackoff` | pod `Pending`; the container waits with reason `ErrImagePull`, then `ImagePullBackOff`, again and again |
//!
//! Any other annotation value makes the containers wait with reason
//! `CreateContainerConfigError` and a message listing the valid values, so a typo fails a test
//! loudly instead of passing as healthy. Init containers always complete (exit 0) when the
//! start delay has passed. Running containers get a `containerID` and an `imageID`: the image's
//! own digest when it is pinned by digest (`repo@sha256:…`), else a digest derived from its
//! reference. Each pod gets an IP from its node's `10.244.<n>.0/24` range.
//!
//! A pod being deleted (`metadata.deletionTimestamp` set, e.g. by a ReplicaSet scaling down) is
//! removed at once with grace period 0, as a kubelet does once the containers are stopped.
//!
//! Containers are restarted whatever the pod's `restartPolicy` (Deployments, StatefulSets and
//! DaemonSets only allow `Always`), and a changed image of a running pod is not acted on
//! (controllers replace pods rather than edit them).
//!
//! The simulator runs as tasks on the Tokio runtime that called [`NodeSimulator::start`]: a test
//! that blocks that runtime's thread (a synchronous harness call, `std::thread::sleep`) pauses
//! the kubelets meanwhile. Dropping the simulator stops its tasks; its nodes stay registered and
//! turn `NotReady` after the node-lifecycle controller's grace period (40 s), as after a real
//! node failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Node,
    NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, Pod, PodCondition, PodIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{KUBERNETES_VERSION, KubeHarnessError};

/// Pod annotation choosing what every container of the pod does; see the
/// [module documentation](self) for the values.
pub const SIMULATE_ANNOTATION: &str = "baton.dev/simulate";
/// Label on every simulated Node (value `"true"`), for selectors and for telling them apart.
pub const SIMULATED_NODE_LABEL: &str = "baton.dev/simulated-node";
/// Namespace of node leases (the kubelet's heartbeat).
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration a kubelet announces.
const NODE_LEASE_SECONDS: i32 = 40;
/// How long [`NodeSimulator::start`] waits for the node-lifecycle controller to lift the
/// `not-ready` taint the admission plugin puts on new nodes.
const SCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between polls and retries.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts at deleting a terminating pod before giving up on it (with a warning).
const DELETE_ATTEMPTS: u32 = 10;
/// The most nodes one simulator runs: each takes one `/24` of `10.244.0.0/16`.
const MAX_NODES: usize = 250;

/// What a simulated container does; see the [module documentation](self).
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

/// Capacity and timings of the simulated nodes.
#[derive(Debug, Clone)]
pub struct NodeSimulatorConfig {
    /// How many nodes to register.
    pub nodes: usize,
    /// Node names are `<prefix>-0`, `<prefix>-1`, …
    pub name_prefix: String,
    /// CPU capacity of each node (a Kubernetes quantity, e.g. `"4"`).
    pub cpu: String,
    /// Memory capacity of each node (e.g. `"16Gi"`).
    pub memory: String,
    /// Pod capacity of each node.
    pub max_pods: u32,
    /// From binding to a container starting (pulling and creating it); also when an image pull
    /// first fails and when init containers complete.
    pub container_start_delay: Duration,
    /// How long a crash-looping container runs before it exits.
    pub crash_after: Duration,
    /// How long each failed pull shows `ErrImagePull` before `ImagePullBackOff`.
    pub pull_failure_duration: Duration,
    /// First restart (and pull) back-off; it doubles each time, up to `back_off_cap`. The
    /// kubelet's are 10 s and 5 min; these are compressed so tests see several restarts fast.
    pub back_off_base: Duration,
    /// Longest back-off.
    pub back_off_cap: Duration,
    /// How often node leases and node status are renewed (a kubelet renews its lease every 10 s;
    /// the node-lifecycle controller marks a node unknown after 40 s).
    pub heartbeat_interval: Duration,
}

impl Default for NodeSimulatorConfig {
    fn default() -> Self {
        Self {
            nodes: 1,
            name_prefix: String::from("baton-sim-node"),
            cpu: String::from("8"),
            memory: String::from("32Gi"),
            max_pods: 110,
            container_start_delay: Duration::from_millis(300),
            crash_after: Duration::from_millis(300),
            pull_failure_duration: Duration::from_millis(300),
            back_off_base: Duration::from_millis(500),
            back_off_cap: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

impl NodeSimulatorConfig {
    fn timing(&self) -> Timing {
        Timing {
            start_delay: self.container_start_delay,
            crash_after: self.crash_after,
            pull_failure: self.pull_failure_duration,
            back_off_base: self.back_off_base,
            back_off_cap: self.back_off_cap,
        }
    }
}

/// Simulated nodes and their kubelets, running as tasks on the current Tokio runtime until
/// dropped. See the [module documentation](self).
#[derive(Debug)]
pub struct NodeSimulator {
    /// Names of the registered nodes.
    node_names: Vec<String>,
    /// The heartbeat and the pod driver; aborted on drop (the pod driver's per-pod tasks go
    /// with it).
    tasks: Vec<JoinHandle<()>>,
}

impl NodeSimulator {
    /// Registers `config.nodes` Ready nodes (reusing existing ones of the same names), starts
    /// renewing their leases and driving their pods, and waits until the node-lifecycle
    /// controller has made them schedulable.
    ///
    /// `client` needs to write nodes, leases, pods and pod status: the cluster admin's.
    ///
    /// # Errors
    /// When the apiserver refuses a node or lease, or the nodes stay tainted `not-ready`.
    pub async fn start(client: Client, config: NodeSimulatorConfig) -> Result<Self, KubeHarnessError> {
        if config.nodes == 0 || config.nodes > MAX_NODES {
            return Err(KubeHarnessError::InvalidSimulatorConfig(format!(
                "nodes must be between 1 and {MAX_NODES}, not {}",
                config.nodes
            )));
        }
        let table: HashMap<String, SimulatedNode> = (0..config.nodes)
            .map(|index| {
                let node = SimulatedNode::new(&config.name_prefix, index);
                (node.name.clone(), node)
            })
            .collect();
        let table = Arc::new(table);
        let mut node_names: Vec<String> = table.keys().cloned().collect();
        node_names.sort();

        for name in &node_names {
            register_node(&client, &table[name], &config).await?;
        }
        let mut simulator = Self {
            node_names,
            tasks: Vec::new(),
        };
        simulator.tasks.push(tokio::spawn(heartbeat(
            client.clone(),
            simulator.node_names.clone(),
            config.heartbeat_interval,
        )));
        simulator.tasks.push(tokio::spawn(drive_pods(
            client.clone(),
            Arc::clone(&table),
            config.timing(),
        )));
        wait_until_schedulable(&client, &simulator.node_names).await?;
        Ok(simulator)
    }

    /// The registered nodes' names, sorted.
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One simulated node: its identity and the pod addresses it hands out.
#[derive(Debug)]
struct SimulatedNode {
    name: String,
    /// Position in the simulator: the third octet of its pod range and its internal address.
    index: usize,
    /// Pod IPs handed out so far, for the next one.
    next_pod_ip: AtomicU32,
}

impl SimulatedNode {
    fn new(prefix: &str, index: usize) -> Self {
        Self {
            name: format!("{prefix}-{index}"),
            index,
            next_pod_ip: AtomicU32::new(0),
        }
    }

    fn internal_ip(&self) -> String {
        format!("10.200.0.{}", self.index + 1)
    }

    fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// The next pod IP in `10.244.<index>.2` … `.254`, wrapping around.
    fn allocate_pod_ip(&self) -> String {
        let n = self.next_pod_ip.fetch_add(1, Ordering::Relaxed) % 253;
        format!("10.244.{}.{}", self.index, n + 2)
    }
}

/// The Node a kubelet would register for `node`.
fn node_object(node: &SimulatedNode, config: &NodeSimulatorConfig) -> Node {
    let quantity = |value: &str| Quantity(value.to_owned());
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), quantity(&config.cpu)),
        ("memory".to_owned(), quantity(&config.memory)),
        ("pods".to_owned(), quantity(&config.max_pods.to_string())),
        ("ephemeral-storage".to_owned(), quantity("100Gi")),
    ]);
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("beta.kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        (SIMULATED_NODE_LABEL.to_owned(), "true".to_owned()),
    ]);
    let identity = hex::encode(&Sha256::digest(node.name.as_bytes())[..16]);
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node.pod_cidr()),
            pod_cidrs: Some(vec![node.pod_cidr()]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            conditions: Some(node_conditions(Timestamp::now())),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_owned(),
                    address: node.internal_ip(),
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: node.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: 10250 }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".to_owned(),
                boot_id: identity.clone(),
                container_runtime_version: "baton-node-simulator://1".to_owned(),
                kernel_version: "simulated".to_owned(),
                kube_proxy_version: format!("v{KUBERNETES_VERSION}"),
                kubelet_version: format!("v{KUBERNETES_VERSION}"),
                machine_id: identity.clone(),
                operating_system: "linux".to_owned(),
                os_image: "Baton node simulator".to_owned(),
                system_uuid: identity,
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

/// The conditions of a healthy node, heartbeat at `now`. The transition time stays at the
/// registration for a node that never changes state, which is what the controllers compare.
fn node_conditions(now: Timestamp) -> Vec<NodeCondition> {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: None,
    };
    vec![
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
}

/// Creates (or refreshes) the Node and its Lease.
async fn register_node(
    client: &Client,
    node: &SimulatedNode,
    config: &NodeSimulatorConfig,
) -> Result<(), KubeHarnessError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let api_error = |action: String| move |source| KubeHarnessError::Api { action, source };
    let mut object = node_object(node, config);
    let now = Timestamp::now();
    for condition in object
        .status
        .iter_mut()
        .flat_map(|status| status.conditions.iter_mut().flatten())
    {
        condition.last_transition_time = Some(Time(now));
    }
    let registered = match nodes.create(&PostParams::default(), &object).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.is_already_exists() => nodes
            .patch_status(
                &node.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": object.status })),
            )
            .await
            .map_err(api_error(format!("refreshing the status of node {}", node.name)))?,
        Err(error) => return Err(api_error(format!("registering node {}", node.name))(error)),
    };

    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            namespace: Some(NODE_LEASE_NAMESPACE.to_owned()),
            // As a kubelet does: the lease goes when the node is deleted.
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: node.name.clone(),
                uid: registered.uid().unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.name.clone()),
            lease_duration_seconds: Some(NODE_LEASE_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    };
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => renew_lease(&leases, &node.name)
            .await
            .map(drop)
            .map_err(api_error(format!("renewing the lease of node {}", node.name))),
        Err(error) => Err(api_error(format!("creating the lease of node {}", node.name))(error)),
    }
}

async fn renew_lease(leases: &Api<Lease>, node: &str) -> Result<Lease, kube::Error> {
    let patch = json!({ "spec": { "holderIdentity": node, "renewTime": MicroTime(Timestamp::now()) } });
    leases.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await
}

/// Renews every node's lease and `Ready` heartbeat each `interval`, as a kubelet does.
async fn heartbeat(client: Client, node_names: Vec<String>, interval: Duration) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for name in &node_names {
            if let Err(error) = renew_lease(&leases, name).await {
                tracing::warn!(node = %name, %error, "node simulator could not renew the node lease");
            }
            // A strategic merge keyed by condition type keeps each transition time.
            let patch = json!({ "status": { "conditions": node_conditions(Timestamp::now()) } });
            if let Err(error) = nodes
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::warn!(node = %name, %error, "node simulator could not post node status");
            }
        }
    }
}

/// Waits until every node is Ready and free of the `not-ready`/`unreachable` taints.
async fn wait_until_schedulable(client: &Client, node_names: &[String]) -> Result<(), KubeHarnessError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + SCHEDULABLE_TIMEOUT;
    loop {
        let mut waiting_for = Vec::new();
        for name in node_names {
            let node = nodes.get(name).await.map_err(|source| KubeHarnessError::Api {
                action: format!("reading node {name}"),
                source,
            })?;
            let tainted = node
                .spec
                .as_ref()
                .and_then(|spec| spec.taints.as_ref())
                .is_some_and(|taints| {
                    taints.iter().any(|taint| {
                        taint.key == "node.kubernetes.io/not-ready" || taint.key == "node.kubernetes.io/unreachable"
                    })
                });
            if tainted {
                waiting_for.push(name.as_str());
            }
        }
        if waiting_for.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KubeHarnessError::Timeout {
                what: format!(
                    "the node-lifecycle controller to lift the not-ready taint from {}",
                    waiting_for.join(", ")
                ),
                timeout: SCHEDULABLE_TIMEOUT,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A pod the simulator is responsible for.
#[derive(Debug)]
struct TrackedPod {
    /// Its driver (or, once it is terminating, its deleter).
    task: AbortHandle,
    /// Whether the deleter runs.
    terminating: bool,
}

/// Watches all pods and drives those bound to a simulated node until they are deleted.
async fn drive_pods(client: Client, nodes: Arc<HashMap<String, SimulatedNode>>, timing: Timing) {
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
                observe_pod(&client, &nodes, &timing, pod, &mut tasks, &mut tracked);
            }
            Ok(Event::InitDone) => {
                // Pods that vanished while the watch was down.
                if let Some(listed) = listed.take() {
                    tracked.retain(|uid, pod| {
                        let keep = listed.contains(uid);
                        if !keep {
                            pod.task.abort();
                        }
                        keep
                    });
                }
            }
            Ok(Event::Delete(pod)) => {
                if let Some(gone) = pod.uid().and_then(|uid| tracked.remove(&uid)) {
                    gone.task.abort();
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

/// The simulation's time constants; see [`NodeSimulatorConfig`].
#[derive(Debug, Clone)]
struct Timing {
    start_delay: Duration,
    crash_after: Duration,
    pull_failure: Duration,
    back_off_base: Duration,
    back_off_cap: Duration,
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
struct Clock {
    origin: Timestamp,
}

impl Clock {
    fn new(origin: Timestamp) -> Self {
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
struct PodPlan {
    pod: String,
    namespace: String,
    uid: String,
    init_containers: Vec<PlannedContainer>,
    containers: Vec<PlannedContainer>,
    host_ip: String,
    pod_ip: String,
}

impl PodPlan {
    fn of(pod: &Pod, host_ip: String, pod_ip: String) -> Self {
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
    fn status_at(&self, elapsed: Duration, timing: &Timing, clock: &Clock) -> (PodStatus, Option<Duration>) {
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
