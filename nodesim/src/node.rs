//! The simulated nodes themselves: each is registered the way a kubelet registers its node (a
//! Node with capacity, addresses, system info and a `Ready` condition, plus a Lease in
//! `kube-node-lease`) and kept Ready by a heartbeat renewing the lease and the status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::{NodeSimulatorConfig, POLL_INTERVAL, SIMULATED_NODE_LABEL};
use crate::KUBERNETES_VERSION;
use crate::SimulatorError;

/// Namespace of node leases (the kubelet's heartbeat).
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration a kubelet announces.
const NODE_LEASE_SECONDS: i32 = 40;
/// How long [`NodeSimulator::start`](super::NodeSimulator::start) waits for the node-lifecycle controller to lift the
/// `not-ready` taint the admission plugin puts on new nodes.
const SCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One simulated node: its identity and the pod addresses it hands out.
#[derive(Debug)]
pub(super) struct SimulatedNode {
    pub(super) name: String,
    /// Position in the simulator: the third octet of its pod range and its internal address.
    index: usize,
    /// Pod IPs handed out so far, for the next one.
    next_pod_ip: AtomicU32,
}

impl SimulatedNode {
    pub(super) fn new(prefix: &str, index: usize) -> Self {
        Self {
            name: format!("{prefix}-{index}"),
            index,
            next_pod_ip: AtomicU32::new(0),
        }
    }

    pub(super) fn internal_ip(&self) -> String {
        format!("10.200.0.{}", self.index + 1)
    }

    fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// The next pod IP in `10.244.<index>.2` … `.254`, wrapping around.
    pub(super) fn allocate_pod_ip(&self) -> String {
        let n = self.next_pod_ip.fetch_add(1, Ordering::Relaxed) % 253;
        format!("10.244.{}.{}", self.index, n + 2)
    }
}

/// The Node a kubelet would register for `node`: at 127.0.0.1 with its log server's port
/// `kubelet_port` when pods are executed.
fn node_object(node: &SimulatedNode, config: &NodeSimulatorConfig, kubelet_port: Option<u16>) -> Node {
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
                    address: if kubelet_port.is_some() {
                        "127.0.0.1".to_owned()
                    } else {
                        node.internal_ip()
                    },
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: node.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint {
                    port: kubelet_port.map_or(10250, i32::from),
                }),
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
pub(super) async fn register_node(
    client: &Client,
    node: &SimulatedNode,
    config: &NodeSimulatorConfig,
    kubelet_port: Option<u16>,
) -> Result<(), SimulatorError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let api_error = |action: String| move |source| SimulatorError::Api { action, source };
    let mut object = node_object(node, config, kubelet_port);
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
pub(super) async fn heartbeat(client: Client, node_names: Vec<String>, interval: Duration) {
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
pub(super) async fn wait_until_schedulable(client: &Client, node_names: &[String]) -> Result<(), SimulatorError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + SCHEDULABLE_TIMEOUT;
    loop {
        let mut waiting_for = Vec::new();
        for name in node_names {
            let node = nodes.get(name).await.map_err(|source| SimulatorError::Api {
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
            return Err(SimulatorError::Timeout {
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
