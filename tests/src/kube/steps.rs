//! What suites of steps as Pods (`steps.executor: kubernetes`) share: a control plane whose node
//! simulator executes pods on images from a test registry holding the busybox toolchain
//! ([`ExecutingCluster`]), the `steps:` settings of a service running its steps there
//! ([`ExecutingCluster::steps_yaml`]), a namespace made a build namespace by its labels
//! ([`label_build_namespace`]), and the platform's side as `deploy/` ships it
//! ([`deploy_step_runner`]: the service's ServiceAccount, `deploy/rbac/steps` and the example
//! build namespace applied from their files, and a kubeconfig holding the account's token), so a
//! service under test holds exactly the rights production gives it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::json;
use tempfile::TempDir;

use super::{Execution, KubeCluster, NodeSimulator, NodeSimulatorConfig};
use crate::registry::RegistryServer;

/// How often [`nothing_left`] asks the apiserver, and how long it waits.
const POLL: Duration = Duration::from_millis(200);
const NOTHING_LEFT_WAIT: Duration = Duration::from_secs(60);

/// The namespace `deploy/` runs Baton's services in: their ServiceAccounts live there.
pub const SERVICES_NAMESPACE: &str = "baton";

/// A control plane with one node simulator that executes pods, pulling from a test registry
/// that holds the busybox toolchain. Dropping it stops the nodes, the cluster and the registry.
#[derive(Debug)]
pub struct ExecutingCluster {
    /// The simulator running the pods (dropped first: it kills their processes).
    pub nodes: NodeSimulator,
    /// The control plane.
    pub cluster: KubeCluster,
    /// The registry the simulator pulls from (plain HTTP), also a builder's push target.
    pub registry: RegistryServer,
    /// `RegistryServer::push_busybox_toolchain`'s reference, pinned by digest: the step image
    /// and the helper image.
    pub toolchain: String,
    /// Where the simulator unpacks images.
    image_cache: TempDir,
}

impl ExecutingCluster {
    /// Starts the registry (pushing the toolchain to `baton/toolchain:1`), the control plane and
    /// an executing node simulator with the default nodes.
    ///
    /// # Errors
    /// When a server cannot start or the image cannot be pushed.
    pub async fn start() -> anyhow::Result<Self> {
        let registry = RegistryServer::start()?;
        let toolchain = registry.push_busybox_toolchain("baton/toolchain", "1")?;
        let image_cache = tempfile::Builder::new().prefix("baton-image-cache-").tempdir()?;
        let cluster = KubeCluster::start().await?;
        let nodes = NodeSimulator::start(
            cluster.client()?,
            NodeSimulatorConfig {
                execution: Some(Execution::new(registry.address(), image_cache.path())),
                ..NodeSimulatorConfig::default()
            },
        )
        .await?;
        Ok(Self {
            nodes,
            cluster,
            registry,
            toolchain,
            image_cache,
        })
    }

    /// Where the simulator unpacks the images it pulls (one directory per image).
    pub fn image_cache(&self) -> &Path {
        self.image_cache.path()
    }

    /// `steps:` of a service whose steps run as pods here (a [`StepsSettings`] document, not
    /// indented): the toolchain as step and helper image, the apiserver through `kubeconfig`,
    /// pods labelled with `instance`, the workspace server on `127.0.0.1:<workspace_port>`
    /// (executed pods share the host's network, so they reach it there), a minute to schedule a
    /// pod and to move a workspace.
    ///
    /// [`StepsSettings`]: baton_schemas::config::StepsSettings
    pub fn steps_yaml(&self, kubeconfig: &Path, instance: &str, workspace_port: u16) -> String {
        let image = &self.toolchain;
        format!(
            "executor: kubernetes\nkubernetes:\n  kubeconfig: {}\n  image: {image}\n  helper_image: {image}\n  \
             instance: {instance}\n  schedule_timeout: 60s\n  transfer_timeout: 60s\n  \
             workspace:\n    listen: 127.0.0.1:{workspace_port}\n    url: http://127.0.0.1:{workspace_port}\n",
            kubeconfig.display()
        )
    }
}

/// Labels namespace `name` as `service`'s (`builder` or `tester`) build namespace of `app` (as
/// the listener names it, `acme/shop`) and annotates it with the app, as the platform's copy of
/// deploy/build-namespaces does.
///
/// # Errors
/// When the apiserver refuses the patch.
pub async fn label_build_namespace(cluster: &KubeCluster, name: &str, service: &str, app: &str) -> anyhow::Result<()> {
    let label = app.replace('/', "-");
    let labels = json!({"metadata": {
        "labels": {"baton.dev/build-namespace": service, "baton.dev/app": label},
        "annotations": {"baton.dev/app": app},
    }});
    Api::<Namespace>::all(cluster.client()?)
        .patch(name, &PatchParams::default(), &Patch::Merge(&labels))
        .await?;
    Ok(())
}

/// Waits (a minute at most) until no step pod or Secret (label `baton.dev/component=step`) is
/// left in `namespace`.
///
/// # Errors
/// When the apiserver cannot be asked, or something is left after the minute (the error counts
/// what).
pub async fn nothing_left(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let steps = ListParams::default().labels("baton.dev/component=step");
    crate::eventually_every(POLL, NOTHING_LEFT_WAIT, "no step pod or Secret left", async || {
        let pods = pods.list(&steps).await?.items.len();
        let secrets = secrets.list(&steps).await?.items.len();
        Ok(if pods + secrets == 0 {
            Ok(())
        } else {
            Err(format!("{pods} pods and {secrets} Secrets left"))
        })
    })
    .await
}

/// The repository's `deploy/` folder.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// What the platform does for `service` (`builder` or `tester`) before it runs steps as pods,
/// from `deploy/`'s own files, as the cluster's admin: namespace `baton`
/// (`deploy/base/namespace.yaml`, with its labels) and in it the service's
/// ServiceAccount (the `ServiceAccount` of `deploy/base/services/<service>.yaml`), the
/// ClusterRoles and binding of `deploy/rbac/steps`, and the build namespace of `acme/shop`
/// (`deploy/build-namespaces/example/<service>.yaml`). Returns a kubeconfig authenticating as
/// that ServiceAccount (a TokenRequest token), for the service to load.
///
/// # Errors
/// When a file cannot be read or parsed, or the apiserver refuses an object.
pub async fn deploy_step_runner(cluster: &KubeCluster, service: &str) -> anyhow::Result<PathBuf> {
    let admin = cluster.client()?;
    let deploy = deploy_dir();
    apply_file(&admin, &deploy.join("base/namespace.yaml"), None).await?;
    let base = deploy.join(format!("base/services/{service}.yaml"));
    apply_file(&admin, &base, Some("ServiceAccount")).await?;
    for file in ["rbac/steps/step-runner.yaml", "rbac/steps/build-namespace-reader.yaml"] {
        apply_file(&admin, &deploy.join(file), None).await?;
    }
    let namespace = deploy.join(format!("build-namespaces/example/{service}.yaml"));
    apply_file(&admin, &namespace, None).await?;
    let account = format!("baton-{service}");
    let token = cluster.service_account_token(SERVICES_NAMESPACE, &account).await?;
    Ok(cluster.write_kubeconfig(&account, &token)?)
}

/// The documents of the YAML file `path` under `deploy/` (say `base/services/builder.yaml`) that
/// are objects of kind `kind` (all of them with `None`), as JSON: what a test compares the
/// apiserver's objects or a service's settings with.
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn deploy_objects(path: &str, kind: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    let path = deploy_dir().join(path);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut objects = Vec::new();
    for document in yaml_serde::Deserializer::from_str(&text) {
        let object: serde_json::Value = serde::Deserialize::deserialize(document)?;
        if kind.is_none_or(|kind| object["kind"] == kind) {
            objects.push(object);
        }
    }
    Ok(objects)
}

/// Server-side applies every object of the YAML file `path` (only those of kind `only`, when
/// given), as field manager `platform-admin`. A namespaced object without a namespace goes to
/// [`SERVICES_NAMESPACE`], where kustomize puts `deploy/base`'s.
async fn apply_file(admin: &Client, path: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for document in yaml_serde::Deserializer::from_str(&text) {
        let object: DynamicObject = serde::Deserialize::deserialize(document)?;
        let types = object.types.clone().context("an object without apiVersion and kind")?;
        if only.is_some_and(|kind| kind != types.kind) {
            continue;
        }
        let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
        let (resource, capabilities) =
            kube::discovery::pinned_kind(admin, &GroupVersionKind::gvk(group, version, &types.kind)).await?;
        let name = object.metadata.name.clone().context("an object without a name")?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Cluster => Api::all_with(admin.clone(), &resource),
            Scope::Namespaced => {
                let namespace = object.metadata.namespace.as_deref().unwrap_or(SERVICES_NAMESPACE);
                Api::namespaced_with(admin.clone(), namespace, &resource)
            }
        };
        api.patch(&name, &PatchParams::apply("platform-admin"), &Patch::Apply(&object))
            .await
            .with_context(|| format!("applying {} {name} from {}", types.kind, path.display()))?;
    }
    Ok(())
}
