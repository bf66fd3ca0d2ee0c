//! The Kubernetes harness against itself: a real control plane (etcd, kube-apiserver 1.20,
//! controller-manager, scheduler) that starts in seconds and leaves nothing behind, simulated
//! nodes on which the real Deployment controller rolls out healthy releases and fails broken ones
//! with `ProgressDeadlineExceeded`, RBAC that confines a token user and a ServiceAccount to their
//! namespace, and server-side apply with field managers — what Baton's deployer relies on.
//!
//! Each test starts its own cluster, so they run in parallel and share nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use baton_tests::eventually_every;
use baton_tests::kube::steps::ExecutingCluster;
use baton_tests::kube::{
    ControlPlaneComponent, DEPLOYER_USER, KubeCluster, NodeSimulator, NodeSimulatorConfig, SIMULATE_ANNOTATION,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

/// How often a test asks the apiserver whether what it waits for happened: seldom enough to
/// spare the apiserver on a busy two-core machine.
const POLL: Duration = Duration::from_millis(200);
/// How long a rollout (or its failure) may take on a busy two-core machine.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(90);
/// Short enough to keep the failure tests fast, long enough that a healthy first rollout on a
/// busy machine is not mistaken for a stuck one.
const PROGRESS_DEADLINE_SECONDS: i32 = 6;
const FIRST_DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const SECOND_DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// A Deployment of `replicas` pods labelled `app: <name>` running `image`, its pod template
/// annotated with `pod_annotations`.
fn deployment(name: &str, image: &str, replicas: i32, pod_annotations: &BTreeMap<&str, &str>) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name }, "annotations": pod_annotations },
                "spec": {
                    "containers": [{
                        "name": "app",
                        "image": image,
                        "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } },
                    }],
                },
            },
        },
    }))?)
}

/// The condition `type_` of a Deployment, as (status, reason).
fn deployment_condition(deployment: &Deployment, type_: &str) -> Option<(String, String)> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == type_)
        .map(|condition| (condition.status.clone(), condition.reason.clone().unwrap_or_default()))
}

/// Waits until the Deployment's latest generation has fully rolled out: every replica updated,
/// ready and available, `Available` true and `Progressing` true with `NewReplicaSetAvailable`.
async fn wait_for_rollout(api: &Api<Deployment>, name: &str, cluster: &KubeCluster) -> Result<Deployment> {
    let outcome = eventually_every(
        POLL,
        ROLLOUT_TIMEOUT,
        &format!("deployment {name} to roll out"),
        || async {
            let deployment = api.get(name).await?;
            let replicas = deployment.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
            let status = deployment.status.clone().unwrap_or_default();
            let done = status.observed_generation >= deployment.metadata.generation
                && status.updated_replicas == Some(replicas)
                && status.ready_replicas == Some(replicas)
                && status.available_replicas == Some(replicas)
                && status.replicas == Some(replicas)
                && deployment_condition(&deployment, "Available").is_some_and(|(status, _)| status == "True")
                && deployment_condition(&deployment, "Progressing")
                    .is_some_and(|(status, reason)| status == "True" && reason == "NewReplicaSetAvailable");
            Ok(if done {
                Ok(deployment)
            } else {
                Err(format!("{status:?}"))
            })
        },
    )
    .await;
    outcome.with_context(|| {
        format!(
            "controller-manager log:\n{}",
            cluster.log_tail(ControlPlaneComponent::ControllerManager)
        )
    })
}

/// Waits until the Deployment reports `Progressing` false with `ProgressDeadlineExceeded`.
async fn wait_for_deadline_exceeded(api: &Api<Deployment>, name: &str) -> Result<Deployment> {
    eventually_every(
        POLL,
        ROLLOUT_TIMEOUT,
        &format!("deployment {name} to exceed its progress deadline"),
        || async {
            let deployment = api.get(name).await?;
            Ok(match deployment_condition(&deployment, "Progressing") {
                Some((status, reason)) if status == "False" && reason == "ProgressDeadlineExceeded" => Ok(deployment),
                other => Err(format!("Progressing = {other:?}")),
            })
        },
    )
    .await
}

/// The pods labelled `app=<app>`.
async fn pods_of(api: &Api<Pod>, app: &str) -> Result<Vec<Pod>> {
    Ok(api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

/// The state of a pod's first container, as (waiting reason, restart count, ready).
fn first_container(pod: &Pod) -> (Option<String>, i32, bool) {
    let status = pod
        .status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|statuses| statuses.first());
    match status {
        None => (None, 0, false),
        Some(status) => (
            status
                .state
                .as_ref()
                .and_then(|state| state.waiting.as_ref())
                .and_then(|waiting| waiting.reason.clone()),
            status.restart_count,
            status.ready,
        ),
    }
}

fn pod_condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == type_)
        .map(|condition| condition.status.clone())
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// A client built from a kubeconfig file, the way a service under test would load it.
async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Whether `error` is the apiserver refusing with 403 Forbidden.
fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403)
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        ..Default::default()
    }
}

#[tokio::test]
async fn cluster_starts_ready_and_leaves_nothing_behind() -> Result<()> {
    let started = std::time::Instant::now();
    let cluster = KubeCluster::start().await?;
    let startup = started.elapsed();
    let client = cluster.client()?;

    let readyz = client
        .request_text(http::Request::get("/readyz?verbose").body(Vec::new())?)
        .await?;
    ensure!(readyz.trim_end().ends_with("readyz check passed"), "{readyz}");
    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, "v1.20.2");
    assert!(
        cluster.server_url().starts_with("https://127.0.0.1:"),
        "{}",
        cluster.server_url()
    );

    // The kubeconfig on disk is enough for another client: it carries the CA and the token.
    let from_file = client_from_kubeconfig(cluster.kubeconfig_path()).await?;
    let namespaces: Vec<String> = Api::<Namespace>::all(from_file)
        .list(&ListParams::default())
        .await?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    for expected in ["default", "kube-system", "kube-node-lease"] {
        ensure!(namespaces.iter().any(|name| name == expected), "{namespaces:?}");
    }
    // Tokens are checked: a wrong one is 401, not anonymous access.
    let stranger = cluster.client_for_token("not-a-token")?;
    match Api::<Namespace>::all(stranger).list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
        other => bail!("a wrong token must be refused with 401, got {other:?}"),
    }
    // The controller-manager runs (it made the default ServiceAccount) and so does the
    // scheduler (it holds its lease).
    let account = Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .get("default")
        .await?;
    ensure!(account.secrets.is_some_and(|secrets| !secrets.is_empty()));
    let lease = Api::<Lease>::namespaced(client, "kube-system")
        .get("kube-scheduler")
        .await?;
    ensure!(lease.spec.and_then(|spec| spec.holder_identity).is_some());

    let pids = cluster.pids();
    let components: Vec<ControlPlaneComponent> = pids.iter().map(|(component, _)| *component).collect();
    assert_eq!(
        components,
        [
            ControlPlaneComponent::Etcd,
            ControlPlaneComponent::ApiServer,
            ControlPlaneComponent::ControllerManager,
            ControlPlaneComponent::Scheduler
        ]
    );
    let temp_dir = cluster.temp_dir().to_owned();
    ensure!(cluster.log_path(ControlPlaneComponent::ApiServer).exists());
    drop(cluster);
    for (component, pid) in pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{component} (pid {pid}) still runs after drop"
        );
    }
    ensure!(!temp_dir.exists(), "{} was not removed", temp_dir.display());
    // Not a hard limit (parallel suites share the cores), but a start of minutes means the
    // harness waits for something it should not.
    ensure!(startup < Duration::from_secs(120), "start-up took {startup:?}");
    Ok(())
}

#[tokio::test]
async fn healthy_deployment_rolls_out_and_rolls_over_on_simulated_nodes() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    let nodes = NodeSimulator::start(
        cluster.client()?,
        NodeSimulatorConfig {
            nodes: 2,
            heartbeat_interval: Duration::from_secs(1),
            ..NodeSimulatorConfig::default()
        },
    )
    .await?;
    assert_eq!(nodes.node_names(), ["baton-sim-node-0", "baton-sim-node-1"]);
    cluster.create_namespace("shop").await?;
    let client = cluster.client()?;

    // Nodes look like a kubelet registered them, and their leases are renewed.
    let node_api: Api<Node> = Api::all(client.clone());
    for name in nodes.node_names() {
        let node = node_api.get(name).await?;
        let status = node.status.context("node status")?;
        let capacity = status.capacity.context("capacity")?;
        assert_eq!(capacity["cpu"].0, "8");
        assert_eq!(capacity["pods"].0, "110");
        let ready = status
            .conditions
            .context("conditions")?
            .into_iter()
            .find(|condition| condition.type_ == "Ready")
            .context("Ready condition")?;
        assert_eq!(ready.status, "True");
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew_time = |lease: Lease| lease.spec.and_then(|spec| spec.renew_time).map(|time| time.0);
    let first_renewal = renew_time(leases.get("baton-sim-node-0").await?).context("renewTime")?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let first_image = format!("registry.example/acme/shop@{FIRST_DIGEST}");
    deployments
        .create(
            &PostParams::default(),
            &deployment("shop", &first_image, 3, &BTreeMap::new())?,
        )
        .await?;
    let rolled_out = wait_for_rollout(&deployments, "shop", &cluster).await?;
    assert_eq!(rolled_out.status.and_then(|status| status.available_replicas), Some(3));

    let running = pods_of(&pods, "shop").await?;
    assert_eq!(running.len(), 3);
    for pod in &running {
        assert_eq!(phase(pod), Some("Running"));
        assert_eq!(pod_condition(pod, "Ready").as_deref(), Some("True"));
        let node = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.clone())
            .unwrap_or_default();
        ensure!(nodes.node_names().contains(&node), "pod on {node:?}");
        let status = pod.status.as_ref().context("pod status")?;
        ensure!(
            status.pod_ip.as_deref().is_some_and(|ip| ip.starts_with("10.244.")),
            "{:?}",
            status.pod_ip
        );
        let container = &status.container_statuses.as_ref().context("container statuses")?[0];
        assert_eq!(container.image_id, format!("registry.example/acme/shop@{FIRST_DIGEST}"));
        assert_eq!(container.restart_count, 0);
        ensure!(
            container
                .state
                .as_ref()
                .and_then(|state| state.running.as_ref())
                .is_some()
        );
    }

    // A new release: the Deployment controller creates a new ReplicaSet and the old pods are
    // deleted gracefully, which the simulator completes as a kubelet would.
    let second_image = format!("registry.example/acme/shop@{SECOND_DIGEST}");
    let patch =
        json!({ "spec": { "template": { "spec": { "containers": [{ "name": "app", "image": second_image }] } } } });
    deployments
        .patch("shop", &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    wait_for_rollout(&deployments, "shop", &cluster).await?;
    let replaced = eventually_every(POLL, ROLLOUT_TIMEOUT, "the old pods to be gone", || async {
        let current = pods_of(&pods, "shop").await?;
        let images: Vec<String> = current
            .iter()
            .filter_map(|pod| pod.spec.as_ref()?.containers.first()?.image.clone())
            .collect();
        Ok(
            if images.len() == 3 && images.iter().all(|image| *image == second_image) {
                Ok(current)
            } else {
                Err(format!("{images:?}"))
            },
        )
    })
    .await?;
    ensure!(
        replaced
            .iter()
            .all(|pod| !running.iter().any(|old| old.uid() == pod.uid()))
    );
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), "shop")
        .list(&ListParams::default().labels("app=shop"))
        .await?;
    let mut sizes: Vec<i32> = replica_sets
        .iter()
        .map(|set| set.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or_default())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [0, 3], "the old ReplicaSet is scaled to zero");

    let renewed = eventually_every(
        POLL,
        Duration::from_secs(30),
        "the node lease to be renewed",
        || async {
            let now = renew_time(leases.get("baton-sim-node-0").await?);
            Ok(match now {
                Some(time) if time > first_renewal => Ok(time),
                other => Err(format!("renewTime {other:?}")),
            })
        },
    )
    .await?;
    ensure!(renewed > first_renewal);
    Ok(())
}

#[tokio::test]
async fn failing_rollouts_end_in_progress_deadline_exceeded() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    let _nodes = cluster.simulate_nodes(1).await?;
    cluster.create_namespace("shop").await?;
    let client = cluster.client()?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let none = BTreeMap::new();

    // An upgrade to a crash-looping image: the new pod crash-loops, the old one keeps serving.
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", "registry.example/acme/web:v1", 1, &none)?,
        )
        .await?;
    wait_for_rollout(&deployments, "web", &cluster).await?;
    let old_pod = pods_of(&pods, "web").await?.pop().context("the v1 pod")?;
    let patch = json!({ "spec": { "template": { "spec": { "containers": [{
        "name": "app", "image": "registry.example/acme/web:v2-crashloop"
    }] } } } });
    deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    // Fresh Deployments that never work: a pull that fails, and pods that never become Ready.
    let pull_fails = BTreeMap::from([(SIMULATE_ANNOTATION, "imagepullbackoff")]);
    deployments
        .create(
            &PostParams::default(),
            &deployment("pull", "registry.example/acme/pull:v1", 1, &pull_fails)?,
        )
        .await?;
    let never_ready = BTreeMap::from([(SIMULATE_ANNOTATION, "never-ready")]);
    deployments
        .create(
            &PostParams::default(),
            &deployment("unready", "registry.example/acme/unready:v1", 1, &never_ready)?,
        )
        .await?;

    for name in ["web", "pull", "unready"] {
        let stuck = wait_for_deadline_exceeded(&deployments, name).await?;
        let status = stuck.status.clone().unwrap_or_default();
        if name == "web" {
            // The old ReplicaSet's pod still counts: the service stays up.
            assert_eq!(
                deployment_condition(&stuck, "Available").map(|c| c.0).as_deref(),
                Some("True")
            );
            assert_eq!(status.available_replicas, Some(1), "{status:?}");
        } else {
            assert_eq!(
                deployment_condition(&stuck, "Available").map(|c| c.0).as_deref(),
                Some("False")
            );
            assert_eq!(status.available_replicas.unwrap_or_default(), 0, "{status:?}");
        }
    }

    let crashing = eventually_every(
        POLL,
        ROLLOUT_TIMEOUT,
        "the v2 pod to crash-loop with restarts",
        || async {
            let current = pods_of(&pods, "web").await?;
            let new_pod = current.iter().find(|pod| pod.uid() != old_pod.uid());
            Ok(match new_pod.map(|pod| (pod, first_container(pod))) {
                Some((pod, (Some(reason), restarts, false))) if reason == "CrashLoopBackOff" && restarts >= 2 => {
                    Ok(pod.clone())
                }
                other => Err(format!("{:?}", other.map(|(_, state)| state))),
            })
        },
    )
    .await?;
    assert_eq!(phase(&crashing), Some("Running"));
    let last_state = crashing
        .status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|statuses| statuses[0].last_state.as_ref())
        .and_then(|state| state.terminated.as_ref())
        .context("the last run's termination")?;
    assert_eq!((last_state.exit_code, last_state.reason.as_deref()), (1, Some("Error")));
    let old_now = pods.get(&old_pod.name_any()).await?;
    assert_eq!(pod_condition(&old_now, "Ready").as_deref(), Some("True"));

    eventually_every(POLL, ROLLOUT_TIMEOUT, "the pull pod to back off", || async {
        let current = pods_of(&pods, "pull").await?;
        Ok(
            match current
                .first()
                .map(|pod| (phase(pod).map(str::to_owned), first_container(pod)))
            {
                Some((Some(phase), (Some(reason), 0, false))) if phase == "Pending" && reason == "ImagePullBackOff" => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            },
        )
    })
    .await?;

    let unready = pods_of(&pods, "unready").await?;
    let pod = unready.first().context("the never-ready pod")?;
    assert_eq!(phase(pod), Some("Running"));
    assert_eq!(first_container(pod), (None, 0, false));
    assert_eq!(pod_condition(pod, "Ready").as_deref(), Some("False"));
    Ok(())
}

#[tokio::test]
async fn rbac_confines_a_token_user_and_a_service_account_to_their_namespace() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    cluster.create_namespace("team-a").await?;
    cluster.create_namespace("team-b").await?;
    let admin = cluster.client()?;

    // The deployer loads its credentials from a kubeconfig file, as a service would.
    let kubeconfig = cluster.write_kubeconfig(DEPLOYER_USER, cluster.deployer_token())?;
    let deployer = client_from_kubeconfig(&kubeconfig).await?;
    let deployer_in = |namespace: &str| Api::<ConfigMap>::namespaced(deployer.clone(), namespace);
    match deployer_in("team-a")
        .create(&PostParams::default(), &config_map("before", &[]))
        .await
    {
        Err(error) if is_forbidden(&error) => {}
        other => bail!("an unbound user must be refused, got {other:?}"),
    }

    Api::<ServiceAccount>::namespaced(admin.clone(), "team-a")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "deployer" } }))?,
        )
        .await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "configmap-writer" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "update", "patch", "delete"] }],
    }))?;
    Api::<Role>::namespaced(admin.clone(), "team-a")
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "deployer-writes-configmaps" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-writer" },
        "subjects": [
            { "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": DEPLOYER_USER },
            { "kind": "ServiceAccount", "name": "deployer", "namespace": "team-a" },
        ],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), "team-a")
        .create(&PostParams::default(), &binding)
        .await?;

    // The authorizer learns of the binding through its informer, a moment later.
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the RoleBinding to take effect",
        || async {
            Ok(
                match deployer_in("team-a")
                    .create(&PostParams::default(), &config_map("release", &[("version", "1")]))
                    .await
                {
                    Ok(created) => Ok(created),
                    Err(error) if is_forbidden(&error) => Err(error.to_string()),
                    Err(error) => return Err(error.into()),
                },
            )
        },
    )
    .await?;
    match deployer_in("team-b")
        .create(&PostParams::default(), &config_map("release", &[]))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {
            ensure!(
                status.message.contains(DEPLOYER_USER) && status.message.contains("team-b"),
                "{}",
                status.message
            );
        }
        other => bail!("the deployer must be refused outside team-a, got {other:?}"),
    }

    let token = cluster.service_account_token("team-a", "deployer").await?;
    let account = cluster.client_for_token(&token)?;
    Api::<ConfigMap>::namespaced(account.clone(), "team-a")
        .create(&PostParams::default(), &config_map("from-account", &[]))
        .await?;
    match Api::<ConfigMap>::namespaced(account, "team-b")
        .create(&PostParams::default(), &config_map("from-account", &[]))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => ensure!(
            status.message.contains("system:serviceaccount:team-a:deployer"),
            "{}",
            status.message
        ),
        other => bail!("the ServiceAccount must be refused outside team-a, got {other:?}"),
    }

    let names: Vec<String> = Api::<ConfigMap>::namespaced(admin.clone(), "team-a")
        .list(&ListParams::default())
        .await?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    ensure!(
        names.contains(&"release".to_owned()) && names.contains(&"from-account".to_owned()),
        "{names:?}"
    );
    let in_b = Api::<ConfigMap>::namespaced(admin, "team-b")
        .list(&ListParams::default())
        .await?;
    ensure!(
        in_b.iter().all(|map| map.name_any() == "kube-root-ca.crt"),
        "nothing was written to team-b"
    );
    Ok(())
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers_and_conflicts() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    cluster.create_namespace("apply").await?;
    let client = cluster.client()?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "apply");
    let baton = PatchParams::apply("baton");

    let applied = maps
        .patch(
            "settings",
            &baton,
            &Patch::Apply(config_map(
                "settings",
                &[("color", "blue"), ("size", "m"), ("extra", "x")],
            )),
        )
        .await?;
    let managers: Vec<(String, String)> = applied
        .managed_fields()
        .iter()
        .map(|entry| {
            (
                entry.manager.clone().unwrap_or_default(),
                entry.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(managers, [("baton".to_owned(), "Apply".to_owned())]);

    // Another manager changing a field Baton owns is a conflict unless it forces.
    let intruder = PatchParams::apply("kubectl-edit");
    match maps
        .patch(
            "settings",
            &intruder,
            &Patch::Apply(config_map("settings", &[("color", "red")])),
        )
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 409 => {
            ensure!(status.message.contains("baton"), "{}", status.message);
        }
        other => bail!("a conflicting apply must be refused with 409, got {other:?}"),
    }
    let forced = maps
        .patch(
            "settings",
            &intruder.clone().force(),
            &Patch::Apply(config_map("settings", &[("color", "red")])),
        )
        .await?;
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|data| data.get("color"))
            .map(String::as_str),
        Some("red")
    );

    // Baton's next apply drops `extra` and `color`: `extra` (Baton's alone) is removed, `color`
    // (now the other manager's) stays.
    let reapplied = maps
        .patch(
            "settings",
            &baton,
            &Patch::Apply(config_map("settings", &[("size", "l")])),
        )
        .await?;
    let data = reapplied.data.unwrap_or_default();
    assert_eq!(
        data,
        BTreeMap::from([
            ("color".to_owned(), "red".to_owned()),
            ("size".to_owned(), "l".to_owned())
        ])
    );

    // Typed objects of k8s-openapi's v1_33 API apply to the 1.20 apiserver.
    let deployments: Api<Deployment> = Api::namespaced(client, "apply");
    let web = deployment("web", "registry.example/acme/web:v1", 2, &BTreeMap::new())?;
    let created = deployments.patch("web", &baton, &Patch::Apply(&web)).await?;
    let spec = created.spec.context("spec")?;
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.strategy.and_then(|strategy| strategy.type_).as_deref(),
        Some("RollingUpdate"),
        "the apiserver defaulted the rest"
    );
    let again = deployments.patch("web", &baton, &Patch::Apply(&web)).await?;
    assert_eq!(
        again.metadata.generation, created.metadata.generation,
        "re-applying changes nothing"
    );
    Ok(())
}

/// The harness's executing cluster, with `namespace` created for a test's pods.
async fn executing(namespace: &str) -> Result<ExecutingCluster> {
    let env = ExecutingCluster::start().await?;
    env.cluster.create_namespace(namespace).await?;
    Ok(env)
}

/// The pods of `namespace`, as the cluster admin sees them.
fn pods(env: &ExecutingCluster, namespace: &str) -> Result<Api<Pod>> {
    Ok(Api::namespaced(env.cluster.client()?, namespace))
}

/// A pod (restartPolicy Never) from the JSON of its spec.
fn executed_pod(name: &str, spec: serde_json::Value) -> Result<Pod> {
    let mut spec = spec;
    spec["restartPolicy"] = json!("Never");
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": spec,
    }))?)
}

/// Waits until the pod's phase is `Succeeded` or `Failed`.
async fn wait_for_end(api: &Api<Pod>, name: &str) -> Result<Pod> {
    eventually_every(POLL, ROLLOUT_TIMEOUT, &format!("pod {name} to end"), || async {
        let pod = api.get(name).await?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        Ok(if phase == "Succeeded" || phase == "Failed" {
            Ok(pod)
        } else {
            Err(format!("{:?}", pod.status))
        })
    })
    .await
}

/// The terminated state of the pod's container `name` (init containers included).
fn terminated(pod: &Pod, name: &str) -> Result<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    let status = pod.status.as_ref().context("no status")?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .with_context(|| format!("container {name} has not terminated: {status:?}"))
}

#[tokio::test]
async fn an_executed_pod_runs_its_init_container_then_its_container_and_serves_their_logs() -> Result<()> {
    let env = executing("exec").await?;
    let api = pods(&env, "exec")?;
    let pod = executed_pod(
        "hello",
        json!({
            "volumes": [{ "name": "workspace", "emptyDir": {} }],
            "initContainers": [{
                "name": "prepare",
                "image": env.toolchain,
                "command": ["/bin/sh", "-c", "echo prepared by $(POD) > /workspace/greeting; echo greeting written"],
                "env": [{ "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                "volumeMounts": [{ "name": "workspace", "mountPath": "/workspace" }],
            }],
            "containers": [{
                "name": "main",
                "image": env.toolchain,
                "command": ["sh", "-c", "cat greeting; for i in 1 2 3; do echo line $i; sleep 1; done"],
                "workingDir": "/workspace",
                "volumeMounts": [{ "name": "workspace", "mountPath": "/workspace" }],
            }],
        }),
    )?;
    api.create(&PostParams::default(), &pod).await?;

    // Followed through the real apiserver while the container runs: lines arrive as written.
    let running = eventually_every(POLL, ROLLOUT_TIMEOUT, "container main to run", || async {
        let pod = api.get("hello").await?;
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref()?.running.clone());
        Ok(running.ok_or_else(|| format!("{:?}", pod.status)))
    })
    .await?;
    ensure!(running.started_at.is_some());
    let mut lines = futures::AsyncBufReadExt::lines(
        api.log_stream(
            "hello",
            &kube::api::LogParams {
                container: Some("main".to_owned()),
                follow: true,
                ..kube::api::LogParams::default()
            },
        )
        .await?,
    );
    let mut followed = Vec::new();
    let mut running_at_first_line = None;
    while let Some(line) = futures::TryStreamExt::try_next(&mut lines).await? {
        if running_at_first_line.is_none() {
            // The container still has seconds to go: the line came live, not from its end.
            let pod = api.get("hello").await?;
            running_at_first_line = Some(
                pod.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref()?.running.as_ref())
                    .is_some(),
            );
        }
        followed.push(line);
    }
    assert_eq!(
        running_at_first_line,
        Some(true),
        "the first line arrived while the container ran"
    );
    assert_eq!(followed, ["prepared by hello", "line 1", "line 2", "line 3"]);

    let pod = wait_for_end(&api, "hello").await?;
    let status = pod.status.clone().context("status")?;
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{status:?}");
    for name in ["prepare", "main"] {
        let end = terminated(&pod, name)?;
        assert_eq!((end.exit_code, end.reason.as_deref()), (0, Some("Completed")), "{name}");
        ensure!(end.started_at.is_some() && end.finished_at.is_some());
    }
    let main = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .context("main")?;
    let digest = env
        .toolchain
        .split_once('@')
        .map(|(_, d)| d)
        .context("a pinned image")?;
    ensure!(
        main.image_id.ends_with(digest),
        "imageID {} names the image's digest",
        main.image_id
    );

    // Logs of an ended container, whole, tailed and cut; the init container's too.
    let logs = async |container: &str, tail_lines: Option<i64>, limit_bytes: Option<i64>| {
        let params = kube::api::LogParams {
            container: Some(container.to_owned()),
            tail_lines,
            limit_bytes,
            ..kube::api::LogParams::default()
        };
        api.logs("hello", &params).await
    };
    assert_eq!(
        logs("main", None, None).await?,
        "prepared by hello\nline 1\nline 2\nline 3\n"
    );
    assert_eq!(logs("main", Some(2), None).await?, "line 2\nline 3\n");
    assert_eq!(logs("main", None, Some(8)).await?, "prepared");
    assert_eq!(logs("prepare", None, None).await?, "greeting written\n");
    ensure!(
        env.image_cache().read_dir()?.count() == 1,
        "the image was unpacked once"
    );
    ensure!(env.nodes.kubelet_port().is_some());
    Ok(())
}

#[tokio::test]
async fn executed_pods_fail_with_the_kubelets_reasons() -> Result<()> {
    let env = executing("fail").await?;
    let api = pods(&env, "fail")?;
    let container = |command: &str| json!({ "name": "main", "image": env.toolchain, "command": ["sh", "-c", command] });
    let mut oom = container("head -c 300m /dev/zero | tail");
    oom["resources"] = json!({ "limits": { "memory": "32Mi" } });
    let mut filler = container("dd if=/dev/zero of=/workspace/fill bs=1024 count=4096; sleep 60");
    filler["volumeMounts"] = json!([{ "name": "workspace", "mountPath": "/workspace" }]);
    let pods = [
        (
            "failing",
            json!({ "containers": [container("echo about to fail; exit 3")] }),
        ),
        ("oom", json!({ "containers": [oom] })),
        (
            "slow",
            json!({ "activeDeadlineSeconds": 2, "containers": [container("sleep 60")] }),
        ),
        (
            "filler",
            json!({
                "volumes": [{ "name": "workspace", "emptyDir": { "sizeLimit": "1Mi" } }],
                "containers": [filler],
            }),
        ),
    ];
    for (name, spec) in pods {
        api.create(&PostParams::default(), &executed_pod(name, spec)?).await?;
    }

    let failing = wait_for_end(&api, "failing").await?;
    assert_eq!(failing.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed"));
    let end = terminated(&failing, "main")?;
    assert_eq!((end.exit_code, end.reason.as_deref()), (3, Some("Error")));
    let log = api.logs("failing", &kube::api::LogParams::default()).await?;
    assert_eq!(log, "about to fail\n");

    let oom = wait_for_end(&api, "oom").await?;
    let end = terminated(&oom, "main")?;
    assert_eq!(
        (end.exit_code, end.reason.as_deref()),
        (137, Some("OOMKilled")),
        "{end:?}"
    );

    let slow = wait_for_end(&api, "slow").await?;
    let status = slow.status.clone().context("status")?;
    assert_eq!(
        (
            status.phase.as_deref(),
            status.reason.as_deref(),
            status.message.as_deref()
        ),
        (
            Some("Failed"),
            Some("DeadlineExceeded"),
            Some("Pod was active on the node longer than the specified deadline")
        )
    );

    let filler = wait_for_end(&api, "filler").await?;
    let status = filler.status.clone().context("status")?;
    assert_eq!(
        (
            status.phase.as_deref(),
            status.reason.as_deref(),
            status.message.as_deref()
        ),
        (
            Some("Failed"),
            Some("Evicted"),
            Some("Usage of EmptyDir volume \"workspace\" exceeds the limit \"1Mi\". ")
        )
    );
    Ok(())
}

/// The host processes whose command line is exactly `argv`, with their real uid.
fn host_processes(argv: &[&str]) -> Vec<(u32, u32)> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            if cmdline != wanted {
                return None;
            }
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((pid, uid))
        })
        .collect()
}

#[tokio::test]
async fn an_executed_pod_gets_its_secrets_and_runs_as_its_security_context_says() -> Result<()> {
    let env = executing("secure").await?;
    let api = pods(&env, "secure")?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.cluster.client()?, "secure");
    let secret = |name: &str, value: &str| -> Result<k8s_openapi::api::core::v1::Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": { "name": name },
            "stringData": { "token": value },
        }))?)
    };
    // The volume's secret exists; the variable's comes later: a missing volume's secret would
    // keep the pod in ContainerCreating, a missing variable's makes the container wait with
    // CreateContainerConfigError until it exists.
    secrets
        .create(&PostParams::default(), &secret("step-files", "f1le")?)
        .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(env.cluster.client()?, "secure");
    let settings = json!({ "metadata": { "name": "settings" }, "data": { "mode": "strict" } });
    config_maps
        .create(&PostParams::default(), &serde_json::from_value(settings)?)
        .await?;
    let script = "echo \"token=$TOKEN\"; echo \"file=$(cat /secret/token)\"; echo \"uid=$(id -u) gid=$(id -g)\"; \
                  echo \"config=$CFG_mode/$(cat /config/mode)\"; touch /tmp/x 2>&1 || true; exec sleep 1234.5";
    let pod = executed_pod(
        "secure",
        json!({
            "securityContext": { "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true },
            "volumes": [
                { "name": "credentials", "secret": { "secretName": "step-files" } },
                { "name": "settings", "configMap": { "name": "settings" } },
            ],
            "containers": [{
                "name": "main",
                "image": env.toolchain,
                "command": ["sh", "-c", script],
                "env": [{ "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "step-secret", "key": "token" } } }],
                "securityContext": { "readOnlyRootFilesystem": true },
                "envFrom": [{ "prefix": "CFG_", "configMapRef": { "name": "settings" } }],
                "volumeMounts": [
                    { "name": "credentials", "mountPath": "/secret", "readOnly": true },
                    { "name": "settings", "mountPath": "/config", "readOnly": true },
                ],
            }],
        }),
    )?;
    api.create(&PostParams::default(), &pod).await?;
    // No secret yet: the container waits as a kubelet makes it wait.
    eventually_every(
        POLL,
        ROLLOUT_TIMEOUT,
        "the container to wait for its secret",
        || async {
            let pod = api.get("secure").await?;
            let waiting = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref()?.waiting.clone());
            Ok(match waiting {
                Some(w) if w.reason.as_deref() == Some("CreateContainerConfigError") => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    secrets
        .create(&PostParams::default(), &secret("step-secret", "s3cret")?)
        .await?;

    let log = eventually_every(POLL, ROLLOUT_TIMEOUT, "the container to report", || async {
        let log = api
            .logs("secure", &kube::api::LogParams::default())
            .await
            .unwrap_or_default();
        Ok(if log.contains("uid=") && log.lines().count() >= 5 {
            Ok(log)
        } else {
            Err(log)
        })
    })
    .await?;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "token=s3cret",
            "file=f1le",
            "uid=65532 gid=65532",
            "config=strict/strict"
        ],
        "{log}"
    );
    ensure!(
        lines[4].contains("Read-only file system"),
        "readOnlyRootFilesystem refuses a write: {log}"
    );

    // On the host, the container's process is that uid, and deleting the pod kills it.
    let processes = host_processes(&["sleep", "1234.5"]);
    ensure!(!processes.is_empty(), "the container's sleep runs on the host");
    ensure!(processes.iter().all(|(_, uid)| *uid == 65532), "{processes:?}");
    api.delete("secure", &kube::api::DeleteParams::default()).await?;
    eventually_every(POLL, ROLLOUT_TIMEOUT, "the pod's processes to end", || async {
        let left = host_processes(&["sleep", "1234.5"]);
        Ok(if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        })
    })
    .await?;
    Ok(())
}
