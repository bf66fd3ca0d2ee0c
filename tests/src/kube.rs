//! A real Kubernetes control plane for the suites (DESIGN.md §6): etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler 1.20.2, owned the way [`NatsServer`](crate::NatsServer)
//! is. Every [`KubeCluster`] listens on its own free ports on 127.0.0.1, keeps its etcd data, keys,
//! certificates, kubeconfigs and logs in its own temporary directory, is ready (not just spawned)
//! when [`KubeCluster::start`] returns, and is killed and removed on `Drop`, so suites run in
//! parallel and leave nothing behind.
//!
//! What a test gets is a cluster a user would recognise: HTTPS with a certificate signed by the
//! cluster's own CA (trusted through the kubeconfig's `certificate-authority-data`), static
//! bearer tokens, `Node,RBAC` authorization, service-account tokens signed with a key pair the
//! harness generates (legacy token Secrets and the TokenRequest API both work), and the real
//! Deployment, ReplicaSet, garbage-collector and node-lifecycle controllers. Two token users
//! exist from the start: [`ADMIN_USER`] (group `system:masters`) and [`DEPLOYER_USER`], which
//! holds no permission until a test binds one, so RBAC applies to it exactly as it would to
//! Baton's deployer in production; [`KubeCluster::service_account_token`] mints tokens for any
//! other identity.
//!
//! The kubelet is the one part that does not run: a [`NodeSimulator`] registers nodes and plays
//! their kubelets, so pods go Running and Ready, or crash-loop, or fail to pull, and rollouts
//! succeed or fail through the real Deployment controller. See [`baton_nodesim`] (its own
//! crate, which the demo shares) for its conventions.
//!
//! The binaries come from `$BATON_K8S_BIN_DIR`, else the cache `scripts/build-kubernetes.sh`
//! fills (`$BATON_K8S_CACHE/bin`, default `~/.cache/baton/k8s-1.20.2/bin`); etcd is `$ETCD_BIN`,
//! else `etcd` on `PATH` (Debian's `etcd-server`). Certificates are made with the `openssl` CLI.
//! `just setup` provides all of them.
//!
//! The module follows the cluster's seams: `binaries` finds the executables, `process` owns the
//! running components, `components` starts each piece and knows when it is ready, `credentials`
//! and `pki` make who may talk to it, [`baton_nodesim`] plays the kubelets, and [`steps`] is what suites
//! of steps as Pods share (an executing cluster, `deploy/`'s step RBAC applied from its files).
//!
//! ```no_run
//! # async fn example() -> Result<(), baton_tests::HarnessError> {
//! use baton_tests::kube::KubeCluster;
//! use k8s_openapi::api::apps::v1::Deployment;
//!
//! let cluster = KubeCluster::start().await?;
//! let nodes = cluster.simulate_nodes(2).await?;
//! cluster.create_namespace("shop-staging").await?;
//! let deployments: kube::Api<Deployment> = kube::Api::namespaced(cluster.client()?, "shop-staging");
//! // ... create a Deployment and watch it become Available on `nodes.node_names()`.
//! # Ok(())
//! # }
//! ```

mod binaries;
mod components;
mod credentials;
mod pki;
mod process;
pub mod steps;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use serde_json::json;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::process::LOG_TAIL_LINES;
use crate::{HarnessError, create_dir, write_file};
pub use baton_nodesim::{
    Execution, KUBERNETES_VERSION, NodeSimulator, NodeSimulatorConfig, SIMULATE_ANNOTATION, SIMULATED_NODE_LABEL,
    SimulatedBehaviour,
};
use binaries::Binaries;
use components::Start;
use credentials::Credentials;
pub use process::ControlPlaneComponent;
use process::Processes;

/// Environment variable naming a directory holding kube-apiserver, kube-controller-manager and
/// kube-scheduler; overrides the cache.
pub const K8S_BIN_DIR_ENV: &str = "BATON_K8S_BIN_DIR";
/// Environment variable overriding the cache directory of `scripts/build-kubernetes.sh` (the
/// binaries are in its `bin/`).
pub const K8S_CACHE_ENV: &str = "BATON_K8S_CACHE";
/// Environment variable naming the `etcd` executable; when unset, `PATH` and then `/usr/bin` are
/// searched.
pub const ETCD_BIN_ENV: &str = "ETCD_BIN";
/// The token user in group `system:masters`: allowed everything, what [`KubeCluster::client`]
/// uses.
pub const ADMIN_USER: &str = "baton-admin";
/// A token user in no group but `system:authenticated`: allowed nothing until a (Cluster)RoleBinding
/// names it, the identity least-privilege tests give Baton's deployer.
pub const DEPLOYER_USER: &str = "baton-deployer";
/// Issuer and audience of service-account tokens (`--service-account-issuer`, `--api-audiences`).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";

/// How long [`KubeCluster::create_namespace`] waits for the namespace's `default` ServiceAccount
/// and its token, without which no pod can be created in it.
const NAMESPACE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lifetime of tokens minted by [`KubeCluster::service_account_token`].
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 3600;

/// A real Kubernetes control plane owned by one test. See the [module documentation](self).
#[derive(Debug)]
pub struct KubeCluster {
    /// `https://127.0.0.1:<port>` of the apiserver.
    server_url: String,
    /// The admin kubeconfig, for tools and for services under test that take a file.
    kubeconfig_path: PathBuf,
    /// The cluster CA in PEM: it signed the serving certificate, clients trust it.
    ca_pem: String,
    /// Bearer token of [`ADMIN_USER`].
    admin_token: String,
    /// Bearer token of [`DEPLOYER_USER`].
    deployer_token: String,
    /// Client configuration for the admin, loaded from the kubeconfig once so [`Self::client`]
    /// needs no I/O.
    admin_config: Config,
    /// Running processes in start order; killed in reverse order on drop, before `temp_dir`
    /// is removed.
    processes: Processes,
    /// Logs, one file per component.
    log_dir: PathBuf,
    /// Owns etcd's data, keys, certificates, kubeconfigs and logs; removed on drop, after the
    /// processes are gone.
    temp_dir: TempDir,
}

impl KubeCluster {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on free ports and
    /// waits until the cluster works: the apiserver answers `/readyz` with `ok`, the scheduler
    /// holds its leader lease (it has synced its caches and schedules), and the
    /// controller-manager has given the `default` namespace a ServiceAccount with a token.
    ///
    /// Takes a few seconds once the binaries are cached. No node exists yet: start a
    /// [`NodeSimulator`] (e.g. [`simulate_nodes`](Self::simulate_nodes)) for pods to run.
    ///
    /// # Errors
    /// When a binary is missing (the message names `just setup`), a process cannot be spawned or
    /// exits, or a component is not ready in time; the error quotes the component's log.
    pub async fn start() -> Result<Self, HarnessError> {
        let binaries = Binaries::locate()?;
        let temp_dir = crate::temp_dir("baton-kube-")?;
        let root = temp_dir.path();
        let log_dir = root.join("logs");
        let etcd_dir = root.join("etcd");
        let pki_dir = root.join("pki");
        for dir in [&log_dir, &etcd_dir, &pki_dir] {
            create_dir(dir)?;
        }
        let credentials = Credentials::generate(&binaries.openssl, &pki_dir)?;

        // Should a later step fail, dropping `processes` kills what was started.
        let start = Start {
            binaries: &binaries,
            credentials: &credentials,
            root,
        };
        let mut processes = Processes::default();
        let (etcd, etcd_url) = start.etcd().await?;
        processes.push(etcd);
        let kubeconfig_path = root.join("admin.kubeconfig");
        let (apiserver, server_url, admin_config) = start.apiserver(&etcd_url, &kubeconfig_path).await?;
        processes.push(apiserver);
        let client = Client::try_from(admin_config.clone()).map_err(HarnessError::Client)?;
        processes.push(start.controller_manager(&server_url)?);
        processes.push(start.scheduler(&server_url)?);
        components::wait_for_controllers(&client, &mut processes).await?;

        Ok(Self {
            server_url,
            kubeconfig_path,
            ca_pem: credentials.pki.ca_pem.clone(),
            admin_token: credentials.admin_token,
            deployer_token: credentials.deployer_token,
            admin_config,
            processes,
            log_dir,
            temp_dir,
        })
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// A kubeconfig for [`ADMIN_USER`] (it embeds the CA and the token); removed on drop.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The cluster CA certificate (PEM) that signed the apiserver's serving certificate.
    pub fn ca_certificate_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token of [`ADMIN_USER`] (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The bearer token of [`DEPLOYER_USER`], which has no permission until a test binds one.
    pub fn deployer_token(&self) -> &str {
        &self.deployer_token
    }

    /// A client acting as [`ADMIN_USER`].
    ///
    /// # Errors
    /// When kube-rs cannot build the TLS connector (a harness bug).
    ///
    /// # Panics
    /// Outside a Tokio runtime: a kube client spawns its request buffer on it.
    pub fn client(&self) -> Result<Client, HarnessError> {
        Client::try_from(self.admin_config.clone()).map_err(HarnessError::Client)
    }

    /// A client that authenticates with `token`: [`deployer_token`](Self::deployer_token), a
    /// token from [`service_account_token`](Self::service_account_token), or a bad one to test
    /// refusals. It trusts the cluster CA like [`client`](Self::client).
    ///
    /// # Errors
    /// When kube-rs cannot build the TLS connector (a harness bug).
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn client_for_token(&self, token: &str) -> Result<Client, HarnessError> {
        let mut config = self.admin_config.clone();
        config.auth_info = serde_json::from_value(json!({ "token": token })).expect("kube-rs reads a token-only user");
        Client::try_from(config).map_err(HarnessError::Client)
    }

    /// Writes a kubeconfig that authenticates with `token` as `<temp dir>/<name>.kubeconfig` and
    /// returns its path, for a service under test that takes a kubeconfig file; removed on drop.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf, HarnessError> {
        let path = self.temp_dir.path().join(format!("{name}.kubeconfig"));
        write_file(
            &path,
            &credentials::kubeconfig_yaml(&self.server_url, &self.ca_pem, name, token),
        )?;
        Ok(path)
    }

    /// Creates namespace `name` and waits until pods can be created in it: the
    /// controller-manager has made its `default` ServiceAccount and that account's token Secret
    /// (the 1.20 ServiceAccount admission plugin refuses pods until both exist).
    ///
    /// # Errors
    /// When the apiserver refuses the namespace or the account does not appear in time.
    pub async fn create_namespace(&self, name: &str) -> Result<Namespace, HarnessError> {
        let client = self.client()?;
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|source| HarnessError::Api {
                action: format!("creating namespace {name}"),
                source,
            })?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, name);
        let deadline = Instant::now() + NAMESPACE_READY_TIMEOUT;
        loop {
            let account = accounts.get_opt("default").await.map_err(|source| HarnessError::Api {
                action: format!("reading ServiceAccount {name}/default"),
                source,
            })?;
            if account.is_some_and(|account| account.secrets.is_some_and(|secrets| !secrets.is_empty())) {
                return Ok(created);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "the controller-manager to give namespace {name} its default ServiceAccount token; \
                         controller-manager log:\n{}",
                        self.log_tail(ControlPlaneComponent::ControllerManager)
                    ),
                    timeout: NAMESPACE_READY_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (audience
    /// [`SERVICE_ACCOUNT_ISSUER`], valid an hour), for least-privilege tests of workloads that run
    /// as a ServiceAccount. Use it with [`client_for_token`](Self::client_for_token).
    ///
    /// # Errors
    /// When the account does not exist or the apiserver refuses.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String, HarnessError> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client()?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![SERVICE_ACCOUNT_ISSUER.to_owned()],
                expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|source| HarnessError::Api {
                action: format!("requesting a token for ServiceAccount {namespace}/{name}"),
                source,
            })?;
        Ok(issued.status.map(|status| status.token).unwrap_or_default())
    }

    /// Registers `count` simulated nodes with [`NodeSimulatorConfig::default`] capacity and
    /// timings, and waits until they are schedulable. Keep the returned simulator alive as long as
    /// pods should run.
    ///
    /// # Errors
    /// As [`NodeSimulator::start`].
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub async fn simulate_nodes(&self, count: usize) -> Result<NodeSimulator, HarnessError> {
        Ok(NodeSimulator::start(
            self.client()?,
            NodeSimulatorConfig {
                nodes: count,
                ..NodeSimulatorConfig::default()
            },
        )
        .await?)
    }

    /// The log file of `component` (stdout and stderr); removed on drop.
    pub fn log_path(&self, component: ControlPlaneComponent) -> PathBuf {
        component.log_path(&self.log_dir)
    }

    /// The last lines of `component`'s log, for failure messages.
    pub fn log_tail(&self, component: ControlPlaneComponent) -> String {
        crate::process::log_tail(&self.log_path(component), LOG_TAIL_LINES)
    }

    /// The process ids of the running components, in start order.
    pub fn pids(&self) -> Vec<(ControlPlaneComponent, u32)> {
        self.processes
            .iter()
            .map(|running| (running.component, running.process.id()))
            .collect()
    }

    /// The temporary directory holding etcd's data, keys, kubeconfigs and logs; removed on drop.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }
}
