//! The node simulator: the kubelets of a local Kubernetes control plane, shared by the test
//! harness (`baton_tests::kube`), `just demo` and `just dev` (crate `baton-demo`). A real
//! control plane runs everything but the kubelet; this crate plays that part, so Deployments
//! roll out, or fail to, through the real controllers on one machine.
//!
//! A [`NodeSimulator`] registers nodes the way a kubelet does (a Node with capacity, addresses,
//! system info and a `Ready` condition, plus a Lease in `kube-node-lease`), renews their leases
//! and status so the node-lifecycle controller keeps them Ready, and drives every pod the
//! scheduler binds to them (or that names one of them in `spec.nodeName`) the way a kubelet
//! would: status `Pending`/`ContainerCreating`, then per container what the pod asks for.
//! By default containers never run; probes are not executed. Rollouts therefore succeed or fail
//! through the real Deployment controller, with the states a user would see on a real cluster.
//!
//! With [`NodeSimulatorConfig::execution`] set, pods without [`SIMULATE_ANNOTATION`] are
//! executed for real instead: images pulled from the test registry, containers run as sandboxed
//! processes, statuses and logs as a kubelet gives them (see [`Execution`] and
//! `docs/testing-kubernetes.md`). The simulator does not isolate or police their network.
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
//!
//! The simulator is split along its seams: `node` registers the nodes and keeps them alive,
//! `kubelet` watches pods and posts their status, and `plan` decides, as a pure function of the
//! pod and the time since it was picked up, what that status is. Executed pods go through
//! `execution` (their lifecycle), `image` (pulling and unpacking), `workload` (their command,
//! user and quantities, decided without I/O), `cgroup` (memory limits) `logs` (the kubelet
//! log server) and `certificate` (its self-signed certificate).

mod certificate;
mod cgroup;
mod error;
mod execution;
mod image;
mod kubelet;
mod logs;
mod node;
mod plan;
mod workload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::task::JoinHandle;

pub use error::SimulatorError;
pub use execution::Execution;
use execution::Executor;
use logs::LogServer;
use node::SimulatedNode;
pub use plan::SimulatedBehaviour;
use plan::Timing;

/// The Kubernetes release the simulated kubelets report (`nodeInfo.kubeletVersion`): the one
/// `scripts/build-kubernetes.sh` builds and the local control planes run.
pub const KUBERNETES_VERSION: &str = "1.20.2";
/// Pod annotation choosing what every container of the pod does; see the
/// [module documentation](self) for the values.
pub const SIMULATE_ANNOTATION: &str = "baton.dev/simulate";
/// Label on every simulated Node (value `"true"`), for selectors and for telling them apart.
pub const SIMULATED_NODE_LABEL: &str = "baton.dev/simulated-node";
/// Pause between polls and retries.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The most nodes one simulator runs: each takes one `/24` of `10.244.0.0/16`.
const MAX_NODES: usize = 250;

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
    /// When set, pods without the [`SIMULATE_ANNOTATION`] are executed for real (see
    /// [`Execution`] and the module `execution`): their nodes register InternalIP 127.0.0.1 and
    /// the port of a kubelet log server, so `pods/log` through the apiserver works.
    pub execution: Option<Execution>,
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
            execution: None,
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
    /// with it, and with them every executed container's processes).
    tasks: Vec<JoinHandle<()>>,
    /// The kubelet log server of executed pods.
    log_server: Option<LogServer>,
    /// Executed pods' volumes, root filesystems and logs, and the log server's certificate;
    /// removed on drop.
    _work_dir: Option<tempfile::TempDir>,
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
    pub async fn start(client: Client, config: NodeSimulatorConfig) -> Result<Self, SimulatorError> {
        if config.nodes == 0 || config.nodes > MAX_NODES {
            return Err(SimulatorError::InvalidConfig(format!(
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

        let (executor, log_server, work_dir) = match &config.execution {
            Some(execution) => {
                let (executor, server, dir) = start_execution(execution).await?;
                (Some(executor), Some(server), Some(dir))
            }
            None => (None, None, None),
        };
        let kubelet_port = log_server.as_ref().map(|server| server.port);
        for name in &node_names {
            node::register_node(&client, &table[name], &config, kubelet_port).await?;
        }
        let mut simulator = Self {
            node_names,
            tasks: Vec::new(),
            log_server,
            _work_dir: work_dir,
        };
        simulator.tasks.push(tokio::spawn(node::heartbeat(
            client.clone(),
            simulator.node_names.clone(),
            config.heartbeat_interval,
        )));
        simulator.tasks.push(tokio::spawn(kubelet::drive_pods(
            client.clone(),
            Arc::clone(&table),
            config.timing(),
            executor,
        )));
        node::wait_until_schedulable(&client, &simulator.node_names).await?;
        Ok(simulator)
    }

    /// The registered nodes' names, sorted.
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    /// The port of the kubelet log server (HTTPS on 127.0.0.1) when pods are executed.
    pub fn kubelet_port(&self) -> Option<u16> {
        self.log_server.as_ref().map(|server| server.port)
    }
}

/// The executor of real pods, its log server (with a fresh self-signed certificate) and the
/// directory both work in.
async fn start_execution(
    execution: &Execution,
) -> Result<(Arc<Executor>, LogServer, tempfile::TempDir), SimulatorError> {
    let work_dir = tempfile::Builder::new()
        .prefix("baton-nodesim-")
        .tempdir()
        .map_err(|source| SimulatorError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| SimulatorError::Io { path, source }
    };
    let executor = Executor::new(execution, work_dir.path().join("pods")).map_err(io(work_dir.path()))?;
    std::fs::set_permissions(work_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io(work_dir.path()))?;
    let (cert, key) = certificate::self_signed_localhost(work_dir.path())?;
    let server = LogServer::start(executor.logs.clone(), &cert, &key).await?;
    Ok((Arc::new(executor), server, work_dir))
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
