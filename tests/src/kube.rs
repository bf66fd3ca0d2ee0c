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
//! succeed or fail through the real Deployment controller. See [`nodesim`] for its conventions.
//!
//! The binaries come from `$BATON_K8S_BIN_DIR`, else the cache `scripts/build-kubernetes.sh`
//! fills (`$BATON_K8S_CACHE/bin`, default `~/.cache/baton/k8s-1.20.2/bin`); etcd is `$ETCD_BIN`,
//! else `etcd` on `PATH` (Debian's `etcd-server`). Certificates are made with the `openssl` CLI.
//! `just setup` provides all of them.
//!
//! ```no_run
//! # async fn example() -> Result<(), baton_tests::kube::KubeHarnessError> {
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

pub mod nodesim;
mod pki;

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rand::Rng as _;
use serde_json::json;
use tempfile::TempDir;
use tokio::time::Instant;

pub use nodesim::{NodeSimulator, NodeSimulatorConfig, SIMULATE_ANNOTATION, SIMULATED_NODE_LABEL, SimulatedBehaviour};

/// The Kubernetes release the harness runs; `scripts/build-kubernetes.sh` builds the same one.
pub const KUBERNETES_VERSION: &str = "1.20.2";
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

/// The control-plane executables built by `scripts/build-kubernetes.sh`.
const CONTROL_PLANE_BINARIES: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];
/// Fresh-port attempts for etcd and the apiserver: another process may take a port between our
/// probe and the bind.
const START_ATTEMPTS: usize = 5;
/// How long etcd may take to answer `/health`.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the apiserver may take to answer `/readyz` with `ok`. Generous: on two busy cores
/// several clusters starting at once take a while.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the controller-manager and the scheduler may take to show they work.
const CONTROLLERS_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long [`KubeCluster::create_namespace`] waits for the namespace's `default` ServiceAccount
/// and its token, without which no pod can be created in it.
const NAMESPACE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Log lines quoted in start-up errors.
const LOG_TAIL_LINES: usize = 40;
/// Lifetime of tokens minted by [`KubeCluster::service_account_token`].
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 3600;
/// The Service network: its first address (the `kubernetes` Service) is in the serving cert.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/12";

/// Why the harness could not start, reach or use the control plane.
#[derive(Debug, thiserror::Error)]
pub enum KubeHarnessError {
    /// The control-plane binaries are not where the harness looks.
    #[error(
        "Kubernetes {KUBERNETES_VERSION} control plane not found: {reason}. Build it once with \
         `just setup` (runs scripts/build-kubernetes.sh, about 9 minutes, then cached), or set \
         {K8S_BIN_DIR_ENV} to a directory holding kube-apiserver, kube-controller-manager and \
         kube-scheduler"
    )]
    BinariesNotFound {
        /// What was looked at.
        reason: String,
    },
    /// A helper program (etcd, openssl) is missing.
    #[error("{program} not found: {reason}. Install it with `just setup` (Debian package `{package}`)")]
    ProgramNotFound {
        /// The program looked for.
        program: &'static str,
        /// The Debian package that ships it.
        package: &'static str,
        /// What was looked at.
        reason: String,
    },
    /// A file or directory of the harness could not be written or read.
    #[error("could not prepare {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// `openssl` failed while making keys or certificates.
    #[error("`openssl {args}` failed ({status}): {stderr}")]
    Openssl {
        /// Its arguments.
        args: String,
        /// How it ended.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// A process could not be launched.
    #[error("could not spawn {binary}")]
    Spawn {
        /// The executable that was launched.
        binary: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// A component exited while the harness was starting or waiting for it.
    #[error("{component} exited ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// The component.
        component: ControlPlaneComponent,
        /// How it ended.
        status: ExitStatus,
        /// The end of its output.
        log_tail: String,
    },
    /// A component kept running but did not become ready in time.
    #[error("{component} was not ready after {timeout:?} ({last_check}); last log lines:\n{log_tail}")]
    NotReady {
        /// The component.
        component: ControlPlaneComponent,
        /// How long the harness waited.
        timeout: Duration,
        /// The outcome of the last readiness probe.
        last_check: String,
        /// The end of its output.
        log_tail: String,
    },
    /// The kubeconfig the harness wrote could not be loaded (a harness bug).
    #[error("the harness's kubeconfig {path} is invalid")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What kube-rs said.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A kube client could not be built.
    #[error("could not build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// A request the harness makes on a test's behalf failed.
    #[error("{action}")]
    Api {
        /// What the harness was doing.
        action: String,
        /// The apiserver's (or the transport's) error.
        #[source]
        source: kube::Error,
    },
    /// A [`NodeSimulatorConfig`] that cannot work.
    #[error("invalid node simulator configuration: {0}")]
    InvalidSimulatorConfig(String),
    /// Something the harness waits for (nodes becoming schedulable, a namespace's service
    /// account) did not happen in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        timeout: Duration,
    },
}

/// One process of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlPlaneComponent {
    /// etcd, the store.
    Etcd,
    /// kube-apiserver.
    ApiServer,
    /// kube-controller-manager: the Deployment, ReplicaSet, node-lifecycle, service-account and
    /// token controllers, among others.
    ControllerManager,
    /// kube-scheduler, which binds pods to (simulated) nodes.
    Scheduler,
}

impl ControlPlaneComponent {
    /// The program's name, also the stem of its log file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::ApiServer => "kube-apiserver",
            Self::ControllerManager => "kube-controller-manager",
            Self::Scheduler => "kube-scheduler",
        }
    }
}

impl fmt::Display for ControlPlaneComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// Running processes in start order; killed in reverse order on drop.
    processes: Vec<ComponentProcess>,
    /// Logs, one file per component.
    log_dir: PathBuf,
    /// Owns etcd's data, keys, certificates, kubeconfigs and logs; removed on drop, after the
    /// processes are gone.
    temp_dir: TempDir,
}

/// Where the executables are.
#[derive(Debug)]
struct Binaries {
    /// kube-apiserver, kube-controller-manager and kube-scheduler.
    bin_dir: PathBuf,
    /// etcd.
    etcd: PathBuf,
    /// openssl, for keys and certificates.
    openssl: PathBuf,
}

impl Binaries {
    /// Resolves every executable from the process environment.
    fn locate() -> Result<Self, KubeHarnessError> {
        let env = |name| std::env::var_os(name).filter(|value| !value.is_empty());
        let bin_dir = control_plane_bin_dir(
            env(K8S_BIN_DIR_ENV),
            env(K8S_CACHE_ENV),
            env("XDG_CACHE_HOME"),
            env("HOME"),
        )?;
        let path = std::env::var_os("PATH");
        let etcd = locate_program(
            "etcd",
            "etcd-server",
            env(ETCD_BIN_ENV),
            path.clone(),
            &["/usr/bin/etcd"],
        )?;
        let openssl = locate_program("openssl", "openssl", None, path, &["/usr/bin/openssl"])?;
        Ok(Self { bin_dir, etcd, openssl })
    }

    fn control_plane(&self, component: ControlPlaneComponent) -> PathBuf {
        self.bin_dir.join(component.name())
    }
}

/// The directory of the control-plane binaries: `bin_dir_override` if set, else
/// `<cache>/bin` with the cache resolved as `scripts/build-kubernetes.sh` does. Every binary must
/// be an executable file there.
fn control_plane_bin_dir(
    bin_dir_override: Option<OsString>,
    cache_override: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, KubeHarnessError> {
    let (bin_dir, origin) = if let Some(dir) = bin_dir_override {
        (PathBuf::from(dir), format!("{K8S_BIN_DIR_ENV}="))
    } else if let Some(cache) = cache_override {
        (PathBuf::from(cache).join("bin"), format!("{K8S_CACHE_ENV}=.../"))
    } else {
        let cache_home = match (xdg_cache_home, home) {
            (Some(xdg), _) => PathBuf::from(xdg),
            (None, Some(home)) => PathBuf::from(home).join(".cache"),
            (None, None) => {
                return Err(KubeHarnessError::BinariesNotFound {
                    reason: format!("neither {K8S_BIN_DIR_ENV}, XDG_CACHE_HOME nor HOME is set"),
                });
            }
        };
        (
            cache_home
                .join("baton")
                .join(format!("k8s-{KUBERNETES_VERSION}"))
                .join("bin"),
            String::from("the cache "),
        )
    };
    let missing: Vec<&str> = CONTROL_PLANE_BINARIES
        .into_iter()
        .filter(|binary| !crate::is_executable_file(&bin_dir.join(binary)))
        .collect();
    if missing.is_empty() {
        Ok(bin_dir)
    } else {
        Err(KubeHarnessError::BinariesNotFound {
            reason: format!("{} missing in {origin}{}", missing.join(", "), bin_dir.display()),
        })
    }
}

/// Finds `program`: `bin_override` if set, else `PATH`, else the `fallbacks` (Debian installs
/// etcd into /usr/bin, which a test runner's `PATH` may lack).
fn locate_program(
    program: &'static str,
    package: &'static str,
    bin_override: Option<OsString>,
    path: Option<OsString>,
    fallbacks: &[&str],
) -> Result<PathBuf, KubeHarnessError> {
    if let Some(binary) = bin_override.map(PathBuf::from) {
        return if crate::is_executable_file(&binary) {
            Ok(binary)
        } else {
            Err(KubeHarnessError::ProgramNotFound {
                program,
                package,
                reason: format!("{} is not an executable file", binary.display()),
            })
        };
    }
    path.iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|candidate| crate::is_executable_file(candidate))
        .ok_or_else(|| KubeHarnessError::ProgramNotFound {
            program,
            package,
            reason: format!("`{program}` is neither on PATH nor in {}", fallbacks.join(", ")),
        })
}

/// A spawned component with its log.
#[derive(Debug)]
struct ComponentProcess {
    component: ControlPlaneComponent,
    child: Child,
    log_path: PathBuf,
}

impl ComponentProcess {
    /// Spawns `binary args...` with stdout and stderr appended to `log_path`.
    ///
    /// Not in a process group of its own: a test runner that kills the test's group on timeout
    /// (nextest does) takes the control plane down too.
    fn spawn(
        component: ControlPlaneComponent,
        binary: &Path,
        args: &[String],
        log_path: PathBuf,
    ) -> Result<Self, KubeHarnessError> {
        let log_error = |source| KubeHarnessError::Io {
            path: log_path.clone(),
            source,
        };
        let stdout = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log_path)
            .map_err(log_error)?;
        let stderr = stdout.try_clone().map_err(log_error)?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|source| KubeHarnessError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        Ok(Self {
            component,
            child,
            log_path,
        })
    }

    /// `Err(Exited)` if the process has ended.
    fn ensure_running(&mut self) -> Result<(), KubeHarnessError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(KubeHarnessError::Exited {
                component: self.component,
                status,
                log_tail: log_tail(&self.log_path),
            }),
            Err(source) => Err(KubeHarnessError::Io {
                path: PathBuf::from(format!("/proc/{}", self.child.id())),
                source,
            }),
        }
    }

    /// Whether it exited because a port it was given was taken.
    fn lost_port_race(&self) -> bool {
        log_tail(&self.log_path).contains("address already in use")
    }

    /// SIGKILL and reap; a no-op if it already exited.
    fn kill(&mut self) {
        // Nothing to report to: the process is gone either way unless the OS refuses to kill
        // our own child.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Err(error) = File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)) {
        return format!("(could not read {}: {error})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::from("(no output)");
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// A fresh random bearer token.
fn random_token() -> String {
    hex::encode(rand::rng().random::<[u8; 24]>())
}

/// Base64 of `bytes`, as a kubeconfig's `*-data` fields hold it. k8s-openapi's `ByteString` is
/// base64 in JSON, so its serializer does the encoding.
fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(serde_json::Value::String(encoded)) => encoded,
        other => panic!("k8s-openapi's ByteString did not serialize to a base64 string: {other:?}"),
    }
}

/// A kubeconfig (YAML) for `server` that trusts `ca_pem` and authenticates with `token`.
fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "baton-test",
            "cluster": {
                "server": server,
                "certificate-authority-data": base64(ca_pem.as_bytes()),
            },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": "baton-test",
            "context": { "cluster": "baton-test", "user": user, "namespace": "default" },
        }],
        "current-context": "baton-test",
    });
    yaml_serde::to_string(&kubeconfig).expect("a JSON value always serializes to YAML")
}

/// Writes `contents` to `path`, naming the file in the error.
fn write_file(path: &Path, contents: &str) -> Result<(), KubeHarnessError> {
    fs::write(path, contents).map_err(|source| KubeHarnessError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates the directory `path`.
fn create_dir(path: &Path) -> Result<(), KubeHarnessError> {
    fs::create_dir_all(path).map_err(|source| KubeHarnessError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Paths of the generated key material.
#[derive(Debug)]
struct Credentials {
    pki: pki::Pki,
    /// `--token-auth-file`: admin, deployer, controller-manager and scheduler.
    token_file: PathBuf,
    admin_token: String,
    deployer_token: String,
    controller_manager_token: String,
    scheduler_token: String,
}

impl Credentials {
    fn generate(openssl: &Path, dir: &Path) -> Result<Self, KubeHarnessError> {
        let pki = pki::Pki::generate(openssl, dir)?;
        let credentials = Self {
            pki,
            token_file: dir.join("tokens.csv"),
            admin_token: random_token(),
            deployer_token: random_token(),
            controller_manager_token: random_token(),
            scheduler_token: random_token(),
        };
        // token,user,uid,"group1,group2" — the controller-manager and the scheduler use the
        // identities the bootstrap RBAC policy grants their permissions to.
        let tokens = format!(
            "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n\
             {},{DEPLOYER_USER},{DEPLOYER_USER}\n\
             {},system:kube-controller-manager,system:kube-controller-manager\n\
             {},system:kube-scheduler,system:kube-scheduler\n",
            credentials.admin_token,
            credentials.deployer_token,
            credentials.controller_manager_token,
            credentials.scheduler_token,
        );
        write_file(&credentials.token_file, &tokens)?;
        Ok(credentials)
    }
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
    pub async fn start() -> Result<Self, KubeHarnessError> {
        let binaries = Binaries::locate()?;
        let temp_dir = tempfile::Builder::new()
            .prefix("baton-kube-")
            .tempdir()
            .map_err(|source| KubeHarnessError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let root = temp_dir.path();
        let log_dir = root.join("logs");
        let etcd_dir = root.join("etcd");
        let pki_dir = root.join("pki");
        for dir in [&log_dir, &etcd_dir, &pki_dir] {
            create_dir(dir)?;
        }
        let credentials = Credentials::generate(&binaries.openssl, &pki_dir)?;

        // Should a later step fail, dropping `starting` kills what was started.
        let mut starting = StartingProcesses(Vec::new());
        let (etcd, etcd_url) = start_etcd(&binaries, &etcd_dir, &log_dir).await?;
        starting.0.push(etcd);
        let kubeconfig_path = root.join("admin.kubeconfig");
        let (apiserver, server_url, admin_config) =
            start_apiserver(&binaries, &credentials, &etcd_url, root, &kubeconfig_path).await?;
        starting.0.push(apiserver);
        let client = Client::try_from(admin_config.clone()).map_err(KubeHarnessError::Client)?;

        let controller_manager = start_controller_manager(&binaries, &credentials, &server_url, root, &log_dir)?;
        starting.0.push(controller_manager);
        let scheduler = start_scheduler(&binaries, &credentials, &server_url, root, &log_dir)?;
        starting.0.push(scheduler);
        wait_for_controllers(&client, &mut starting.0).await?;

        Ok(Self {
            server_url,
            kubeconfig_path,
            ca_pem: credentials.pki.ca_pem.clone(),
            admin_token: credentials.admin_token,
            deployer_token: credentials.deployer_token,
            admin_config,
            processes: std::mem::take(&mut starting.0),
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
    pub fn client(&self) -> Result<Client, KubeHarnessError> {
        Client::try_from(self.admin_config.clone()).map_err(KubeHarnessError::Client)
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
    pub fn client_for_token(&self, token: &str) -> Result<Client, KubeHarnessError> {
        let mut config = self.admin_config.clone();
        config.auth_info = serde_json::from_value(json!({ "token": token })).expect("kube-rs reads a token-only user");
        Client::try_from(config).map_err(KubeHarnessError::Client)
    }

    /// Writes a kubeconfig that authenticates with `token` as `<temp dir>/<name>.kubeconfig` and
    /// returns its path, for a service under test that takes a kubeconfig file; removed on drop.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf, KubeHarnessError> {
        let path = self.temp_dir.path().join(format!("{name}.kubeconfig"));
        write_file(&path, &kubeconfig_yaml(&self.server_url, &self.ca_pem, name, token))?;
        Ok(path)
    }

    /// Creates namespace `name` and waits until pods can be created in it: the
    /// controller-manager has made its `default` ServiceAccount and that account's token Secret
    /// (the 1.20 ServiceAccount admission plugin refuses pods until both exist).
    ///
    /// # Errors
    /// When the apiserver refuses the namespace or the account does not appear in time.
    pub async fn create_namespace(&self, name: &str) -> Result<Namespace, KubeHarnessError> {
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
            .map_err(|source| KubeHarnessError::Api {
                action: format!("creating namespace {name}"),
                source,
            })?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, name);
        let deadline = Instant::now() + NAMESPACE_READY_TIMEOUT;
        loop {
            let account = accounts
                .get_opt("default")
                .await
                .map_err(|source| KubeHarnessError::Api {
                    action: format!("reading ServiceAccount {name}/default"),
                    source,
                })?;
            if account.is_some_and(|account| account.secrets.is_some_and(|secrets| !secrets.is_empty())) {
                return Ok(created);
            }
            if Instant::now() >= deadline {
                return Err(KubeHarnessError::Timeout {
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
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String, KubeHarnessError> {
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
            .map_err(|source| KubeHarnessError::Api {
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
    pub async fn simulate_nodes(&self, count: usize) -> Result<NodeSimulator, KubeHarnessError> {
        NodeSimulator::start(
            self.client()?,
            NodeSimulatorConfig {
                nodes: count,
                ..NodeSimulatorConfig::default()
            },
        )
        .await
    }

    /// The log file of `component` (stdout and stderr); removed on drop.
    pub fn log_path(&self, component: ControlPlaneComponent) -> PathBuf {
        self.log_dir.join(format!("{}.log", component.name()))
    }

    /// The last lines of `component`'s log, for failure messages.
    pub fn log_tail(&self, component: ControlPlaneComponent) -> String {
        log_tail(&self.log_path(component))
    }

    /// The process ids of the running components, in start order.
    pub fn pids(&self) -> Vec<(ControlPlaneComponent, u32)> {
        self.processes
            .iter()
            .map(|process| (process.component, process.child.id()))
            .collect()
    }

    /// The temporary directory holding etcd's data, keys, kubeconfigs and logs; removed on drop.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        kill_in_reverse(&mut self.processes);
    }
}

/// Processes of a cluster still starting: killed if start-up fails half-way.
struct StartingProcesses(Vec<ComponentProcess>);

impl Drop for StartingProcesses {
    fn drop(&mut self) {
        kill_in_reverse(&mut self.0);
    }
}

/// Kills clients before the servers they talk to, so nothing logs a storm of errors.
fn kill_in_reverse(processes: &mut Vec<ComponentProcess>) {
    while let Some(mut process) = processes.pop() {
        process.kill();
    }
}

/// Starts etcd on fresh ports (retrying if one was taken) and waits for `/health`; returns it
/// and its client URL.
async fn start_etcd(
    binaries: &Binaries,
    data_dir: &Path,
    log_dir: &Path,
) -> Result<(ComponentProcess, String), KubeHarnessError> {
    let mut attempt = 1;
    loop {
        let [client_port, peer_port] = crate::reserve_ports().map_err(|source| KubeHarnessError::Io {
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let args = [
            "--name=baton-test".to_owned(),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=baton-test={peer_url}"),
            // The data lives in a temporary directory for one test: durability buys nothing.
            "--unsafe-no-fsync=true".to_owned(),
            "--logger=zap".to_owned(),
            "--log-outputs=stderr".to_owned(),
        ];
        let log_path = log_dir.join("etcd.log");
        let mut etcd = ComponentProcess::spawn(ControlPlaneComponent::Etcd, &binaries.etcd, &args, log_path)?;
        match wait_for_etcd(&mut etcd, client_port).await {
            Ok(()) => return Ok((etcd, client_url)),
            Err(KubeHarnessError::Exited { .. }) if attempt < START_ATTEMPTS && etcd.lost_port_race() => {
                attempt += 1;
                // A failed start leaves a half-initialised member directory behind.
                fs::remove_dir_all(data_dir)
                    .and_then(|()| fs::create_dir(data_dir))
                    .map_err(|source| KubeHarnessError::Io {
                        path: data_dir.to_owned(),
                        source,
                    })?;
            }
            Err(error) => {
                etcd.kill();
                return Err(error);
            }
        }
    }
}

/// Polls etcd's `/health` until it reports `"health":"true"`.
async fn wait_for_etcd(etcd: &mut ComponentProcess, client_port: u16) -> Result<(), KubeHarnessError> {
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        etcd.ensure_running()?;
        let last_check = match crate::http_get(client_port, "/health") {
            Ok((200, body)) if body.contains(r#""health":"true""#) => return Ok(()),
            Ok((status, body)) => format!("GET /health answered {status}: {body}"),
            Err(error) => format!("GET /health failed: {error}"),
        };
        if Instant::now() >= deadline {
            return Err(KubeHarnessError::NotReady {
                component: ControlPlaneComponent::Etcd,
                timeout: ETCD_READY_TIMEOUT,
                last_check,
                log_tail: log_tail(&etcd.log_path),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Starts kube-apiserver on a fresh port (retrying if the port was taken), writes the admin
/// kubeconfig for it to `kubeconfig_path` and waits until it answers `/readyz` with `ok`; returns
/// it with its URL and the admin's client configuration.
async fn start_apiserver(
    binaries: &Binaries,
    credentials: &Credentials,
    etcd_url: &str,
    root: &Path,
    kubeconfig_path: &Path,
) -> Result<(ComponentProcess, String, Config), KubeHarnessError> {
    let cert_dir = root.join("apiserver-certs");
    create_dir(&cert_dir)?;
    let pki = &credentials.pki;
    let mut attempt = 1;
    loop {
        let port = crate::free_port();
        let server_url = format!("https://127.0.0.1:{port}");
        let args = [
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            "--insecure-port=0".to_owned(),
            format!("--cert-dir={}", cert_dir.display()),
            format!("--tls-cert-file={}", pki.server_cert.display()),
            format!("--tls-private-key-file={}", pki.server_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", credentials.token_file.display()),
            "--authorization-mode=Node,RBAC".to_owned(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
            format!(
                "--service-account-key-file={}",
                pki.service_account_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // The `kubernetes` Service's endpoint would be 127.0.0.1, which the apiserver itself
            // rejects as loopback every ten seconds; nothing in a test cluster needs it.
            "--endpoint-reconciler-type=none".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
        ];
        let log_path = root.join("logs").join("kube-apiserver.log");
        let binary = binaries.control_plane(ControlPlaneComponent::ApiServer);
        let mut apiserver = ComponentProcess::spawn(ControlPlaneComponent::ApiServer, &binary, &args, log_path)?;
        let outcome = async {
            write_file(
                kubeconfig_path,
                &kubeconfig_yaml(&server_url, &pki.ca_pem, ADMIN_USER, &credentials.admin_token),
            )?;
            let config = load_kubeconfig(kubeconfig_path).await?;
            let client = Client::try_from(config.clone()).map_err(KubeHarnessError::Client)?;
            wait_for_readyz(&client, &mut apiserver).await?;
            Ok(config)
        }
        .await;
        match outcome {
            Ok(config) => return Ok((apiserver, server_url, config)),
            Err(KubeHarnessError::Exited { .. }) if attempt < START_ATTEMPTS && apiserver.lost_port_race() => {
                attempt += 1;
            }
            Err(error) => {
                apiserver.kill();
                return Err(error);
            }
        }
    }
}

/// Loads a kubeconfig the harness wrote into a client configuration.
async fn load_kubeconfig(path: &Path) -> Result<Config, KubeHarnessError> {
    let kubeconfig_error = |source| KubeHarnessError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_error)
}

/// Polls `GET /readyz` (through the admin client, so TLS trust and token auth are proven too)
/// until it answers `ok`.
async fn wait_for_readyz(client: &Client, apiserver: &mut ComponentProcess) -> Result<(), KubeHarnessError> {
    let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
    loop {
        apiserver.ensure_running()?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a constant request is valid");
        let last_check = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => format!("/readyz answered {body:?}"),
            Err(error) => format!("/readyz failed: {error}"),
        };
        if Instant::now() >= deadline {
            return Err(KubeHarnessError::NotReady {
                component: ControlPlaneComponent::ApiServer,
                timeout: APISERVER_READY_TIMEOUT,
                last_check,
                log_tail: log_tail(&apiserver.log_path),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Starts kube-controller-manager with every controller but the cloud ones.
fn start_controller_manager(
    binaries: &Binaries,
    credentials: &Credentials,
    server_url: &str,
    root: &Path,
    log_dir: &Path,
) -> Result<ComponentProcess, KubeHarnessError> {
    let pki = &credentials.pki;
    let kubeconfig = root.join("controller-manager.kubeconfig");
    write_file(
        &kubeconfig,
        &kubeconfig_yaml(
            server_url,
            &pki.ca_pem,
            "system:kube-controller-manager",
            &credentials.controller_manager_token,
        ),
    )?;
    // It would otherwise create /usr/libexec/kubernetes/kubelet-plugins/volume/exec/ on the host.
    let flex_volume_dir = root.join("flexvolume");
    create_dir(&flex_volume_dir)?;
    let args = [
        format!("--kubeconfig={}", kubeconfig.display()),
        format!(
            "--service-account-private-key-file={}",
            pki.service_account_key.display()
        ),
        format!("--root-ca-file={}", pki.ca_cert.display()),
        // Each controller acts as its own ServiceAccount, as in a production cluster, so the
        // bootstrap RBAC policy (not a superuser) decides what it may do.
        "--use-service-account-credentials=true".to_owned(),
        // There is no cloud: its controllers would only log that they are skipped.
        "--controllers=*,-service,-route,-cloud-node-lifecycle".to_owned(),
        // The cluster CA signs CertificateSigningRequests too.
        format!("--cluster-signing-cert-file={}", pki.ca_cert.display()),
        format!("--cluster-signing-key-file={}", pki.ca_key.display()),
        format!("--flex-volume-plugin-dir={}", flex_volume_dir.display()),
        // One instance: leader election would only delay the start.
        "--leader-elect=false".to_owned(),
        // No serving: nothing scrapes it, and fixed default ports would collide between clusters.
        "--port=0".to_owned(),
        "--secure-port=0".to_owned(),
        // The client-side defaults (20 qps) slow rollouts when several clusters share two cores.
        "--kube-api-qps=100".to_owned(),
        "--kube-api-burst=200".to_owned(),
        "--profiling=false".to_owned(),
    ];
    let binary = binaries.control_plane(ControlPlaneComponent::ControllerManager);
    ComponentProcess::spawn(
        ControlPlaneComponent::ControllerManager,
        &binary,
        &args,
        log_dir.join("kube-controller-manager.log"),
    )
}

/// Starts kube-scheduler. It runs leader election, cheaply (one candidate), because the lease
/// it takes after syncing its caches is the readiness signal [`wait_for_controllers`] reads.
fn start_scheduler(
    binaries: &Binaries,
    credentials: &Credentials,
    server_url: &str,
    root: &Path,
    log_dir: &Path,
) -> Result<ComponentProcess, KubeHarnessError> {
    let kubeconfig = root.join("scheduler.kubeconfig");
    write_file(
        &kubeconfig,
        &kubeconfig_yaml(
            server_url,
            &credentials.pki.ca_pem,
            "system:kube-scheduler",
            &credentials.scheduler_token,
        ),
    )?;
    let args = [
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=true".to_owned(),
        "--leader-elect-resource-lock=leases".to_owned(),
        // Long enough that a slow, busy machine never makes it lose the lease (and exit).
        "--leader-elect-lease-duration=120s".to_owned(),
        "--leader-elect-renew-deadline=100s".to_owned(),
        "--leader-elect-retry-period=2s".to_owned(),
        "--port=0".to_owned(),
        "--secure-port=0".to_owned(),
        "--profiling=false".to_owned(),
    ];
    let binary = binaries.control_plane(ControlPlaneComponent::Scheduler);
    ComponentProcess::spawn(
        ControlPlaneComponent::Scheduler,
        &binary,
        &args,
        log_dir.join("kube-scheduler.log"),
    )
}

/// Waits until the scheduler holds its lease and the controller-manager has given the `default`
/// namespace a ServiceAccount with a token Secret.
async fn wait_for_controllers(client: &Client, processes: &mut [ComponentProcess]) -> Result<(), KubeHarnessError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + CONTROLLERS_READY_TIMEOUT;
    let (mut scheduler_ready, mut controller_manager_ready) = (false, false);
    let (mut scheduler_check, mut controller_manager_check) = (String::new(), String::new());
    loop {
        for process in processes.iter_mut() {
            process.ensure_running()?;
        }
        if !scheduler_ready {
            match leases.get_opt("kube-scheduler").await {
                Ok(lease) => {
                    scheduler_ready = lease
                        .and_then(|lease| lease.spec)
                        .is_some_and(|spec| spec.holder_identity.is_some());
                    scheduler_check = String::from("the scheduler holds no lease kube-system/kube-scheduler yet");
                }
                Err(error) => scheduler_check = format!("reading lease kube-system/kube-scheduler: {error}"),
            }
        }
        if !controller_manager_ready {
            match accounts.get_opt("default").await {
                Ok(account) => {
                    controller_manager_ready = account
                        .and_then(|account| account.secrets)
                        .is_some_and(|secrets| !secrets.is_empty());
                    controller_manager_check = String::from("ServiceAccount default/default has no token Secret yet");
                }
                Err(error) => controller_manager_check = format!("reading ServiceAccount default/default: {error}"),
            }
        }
        let (waiting_for, last_check) = match (scheduler_ready, controller_manager_ready) {
            (true, true) => return Ok(()),
            (false, _) => (ControlPlaneComponent::Scheduler, &scheduler_check),
            (true, false) => (ControlPlaneComponent::ControllerManager, &controller_manager_check),
        };
        if Instant::now() >= deadline {
            let log_path = processes
                .iter()
                .find(|process| process.component == waiting_for)
                .map(|process| process.log_path.clone())
                .unwrap_or_default();
            return Err(KubeHarnessError::NotReady {
                component: waiting_for,
                timeout: CONTROLLERS_READY_TIMEOUT,
                last_check: last_check.clone(),
                log_tail: log_tail(&log_path),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_override_must_hold_every_binary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = control_plane_bin_dir(Some(dir.path().into()), None, None, None).expect_err("empty dir");
        let message = error.to_string();
        assert!(message.contains("just setup"), "{message}");
        assert!(
            message.contains("kube-apiserver, kube-controller-manager, kube-scheduler missing"),
            "{message}"
        );
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
    }

    #[test]
    fn cache_dir_follows_the_build_script() {
        let home = tempfile::tempdir().expect("temp dir");
        let expected = home.path().join(".cache/baton/k8s-1.20.2/bin");
        let error = control_plane_bin_dir(None, None, None, Some(home.path().into())).expect_err("no binaries");
        assert!(error.to_string().contains(&expected.display().to_string()), "{error}");

        fs::create_dir_all(&expected).expect("cache dir");
        for binary in CONTROL_PLANE_BINARIES {
            let path = expected.join(binary);
            fs::write(&path, "#!/bin/sh\n").expect("fake binary");
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        }
        assert_eq!(
            control_plane_bin_dir(None, None, None, Some(home.path().into())).expect("found"),
            expected
        );
        let cache = home.path().join("elsewhere");
        let error = control_plane_bin_dir(None, Some(cache.clone().into()), None, Some(home.path().into()))
            .expect_err("BATON_K8S_CACHE wins over HOME");
        assert!(
            error.to_string().contains(&cache.join("bin").display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn kubeconfig_embeds_the_ca_and_the_token() {
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:6443",
            "-----BEGIN CERTIFICATE-----\n",
            "alice",
            "s3cret",
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml).expect("kube-rs reads it");
        let cluster = kubeconfig.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==")
        );
        assert_eq!(kubeconfig.auth_infos[0].name, "alice");
        assert_eq!(kubeconfig.current_context.as_deref(), Some("baton-test"));
        assert!(yaml.contains("token: s3cret"), "{yaml}");
    }

    #[test]
    fn tokens_are_random() {
        let token = random_token();
        assert_eq!(token.len(), 48);
        assert_ne!(token, random_token());
    }
}
