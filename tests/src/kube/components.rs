//! The control-plane pieces one by one: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, each with the flags a test cluster needs, and how the harness knows each is
//! ready (etcd's `/health`, the apiserver's `/readyz` through the admin client, the scheduler's
//! leader lease and the controller-manager's first ServiceAccount token).

use std::fs;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::{Client, Config};
use tokio::time::Instant;

use super::binaries::Binaries;
use super::credentials::{Credentials, load_kubeconfig};
use super::process::{ComponentProcess, ControlPlaneComponent, Processes};
use super::{ADMIN_USER, POLL_INTERVAL, SERVICE_ACCOUNT_ISSUER};
use crate::net::{free_port, http_get, reserve_ports};
use crate::{HarnessError, create_dir};

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
/// The Service network: its first address (the `kubernetes` Service) is in the serving cert.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/12";

/// What every component is started from: the executables, the key material and the cluster's
/// temporary directory (etcd's data in `etcd/`, logs in `logs/`, kubeconfigs at the top).
#[derive(Debug, Clone, Copy)]
pub(super) struct Start<'a> {
    pub(super) binaries: &'a Binaries,
    pub(super) credentials: &'a Credentials,
    pub(super) root: &'a Path,
}

impl Start<'_> {
    /// Starts etcd on fresh ports (retrying if one was taken) and waits for `/health`; returns it
    /// and its client URL.
    pub(super) async fn etcd(self) -> Result<(ComponentProcess, String), HarnessError> {
        let (binaries, data_dir, log_dir) = (self.binaries, &self.root.join("etcd"), &self.root.join("logs"));
        let mut attempt = 1;
        loop {
            let [client_port, peer_port] = reserve_ports().map_err(HarnessError::FreePort)?;
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
            let mut etcd = ComponentProcess::spawn(ControlPlaneComponent::Etcd, &binaries.etcd, &args, log_dir)?;
            let health = async || match http_get(client_port, "/health") {
                Ok((200, body)) if body.contains(r#""health":"true""#) => Ok(()),
                Ok((status, body)) => Err(format!("GET /health answered {status}: {body}")),
                Err(error) => Err(format!("GET /health failed: {error}")),
            };
            match etcd
                .process
                .wait_ready_async(ETCD_READY_TIMEOUT, POLL_INTERVAL, health)
                .await
            {
                Ok(()) => return Ok((etcd, client_url)),
                Err(HarnessError::Exited { .. }) if attempt < START_ATTEMPTS && etcd.lost_port_race() => {
                    attempt += 1;
                    // A failed start leaves a half-initialised member directory behind.
                    fs::remove_dir_all(data_dir)
                        .and_then(|()| fs::create_dir(data_dir))
                        .map_err(|source| HarnessError::Io {
                            path: data_dir.to_owned(),
                            source,
                        })?;
                }
                // Dropping `etcd` kills it.
                Err(error) => return Err(error),
            }
        }
    }

    /// Starts kube-apiserver on a fresh port (retrying if the port was taken), writes the admin
    /// kubeconfig for it to `kubeconfig_path` and waits until it answers `/readyz` with `ok`; returns
    /// it with its URL and the admin's client configuration.
    pub(super) async fn apiserver(
        self,
        etcd_url: &str,
        kubeconfig_path: &Path,
    ) -> Result<(ComponentProcess, String, Config), HarnessError> {
        let (binaries, credentials, root) = (self.binaries, self.credentials, self.root);
        let cert_dir = root.join("apiserver-certs");
        create_dir(&cert_dir)?;
        let pki = &credentials.pki;
        let mut attempt = 1;
        loop {
            let port = free_port();
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
                // Simulated nodes that execute pods serve their logs on 127.0.0.1, their InternalIP.
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
                "--profiling=false".to_owned(),
            ];
            let component = ControlPlaneComponent::ApiServer;
            let binary = binaries.control_plane(component.name());
            let mut apiserver = ComponentProcess::spawn(component, &binary, &args, &root.join("logs"))?;
            let outcome = async {
                credentials.write_kubeconfig(kubeconfig_path, &server_url, ADMIN_USER, &credentials.admin_token)?;
                let config = load_kubeconfig(kubeconfig_path).await?;
                let client = Client::try_from(config.clone()).map_err(HarnessError::Client)?;
                wait_for_readyz(&client, &mut apiserver).await?;
                Ok(config)
            }
            .await;
            match outcome {
                Ok(config) => return Ok((apiserver, server_url, config)),
                Err(HarnessError::Exited { .. }) if attempt < START_ATTEMPTS && apiserver.lost_port_race() => {
                    attempt += 1;
                }
                // Dropping `apiserver` kills it.
                Err(error) => return Err(error),
            }
        }
    }

    /// Starts kube-controller-manager with every controller but the cloud ones.
    pub(super) fn controller_manager(self, server_url: &str) -> Result<ComponentProcess, HarnessError> {
        let pki = &self.credentials.pki;
        // It would otherwise create /usr/libexec/kubernetes/kubelet-plugins/volume/exec/ on the host.
        let flex_volume_dir = self.root.join("flexvolume");
        create_dir(&flex_volume_dir)?;
        let args = [
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
            // The client-side defaults (20 qps) slow rollouts when several clusters share two cores.
            "--kube-api-qps=100".to_owned(),
            "--kube-api-burst=200".to_owned(),
        ];
        let token = &self.credentials.controller_manager_token;
        self.controller(ControlPlaneComponent::ControllerManager, server_url, token, &args)
    }

    /// Starts kube-scheduler. It runs leader election, cheaply (one candidate), because the lease
    /// it takes after syncing its caches is the readiness signal [`wait_for_controllers`] reads.
    pub(super) fn scheduler(self, server_url: &str) -> Result<ComponentProcess, HarnessError> {
        let args = [
            "--leader-elect=true".to_owned(),
            "--leader-elect-resource-lock=leases".to_owned(),
            // Long enough that a slow, busy machine never makes it lose the lease (and exit).
            "--leader-elect-lease-duration=120s".to_owned(),
            "--leader-elect-renew-deadline=100s".to_owned(),
            "--leader-elect-retry-period=2s".to_owned(),
        ];
        let token = &self.credentials.scheduler_token;
        self.controller(ControlPlaneComponent::Scheduler, server_url, token, &args)
    }

    /// Starts the controller-manager or the scheduler with `args`: it reaches the apiserver at
    /// `server_url` through a kubeconfig for its bootstrap identity (`system:<component>`, which the
    /// bootstrap RBAC policy grants its permissions to) with `token`, and serves nothing (nothing
    /// scrapes it, and fixed default ports would collide between clusters).
    fn controller(
        self,
        component: ControlPlaneComponent,
        server_url: &str,
        token: &str,
        args: &[String],
    ) -> Result<ComponentProcess, HarnessError> {
        let stem = component.name().trim_start_matches("kube-");
        let kubeconfig = self.root.join(format!("{stem}.kubeconfig"));
        self.credentials
            .write_kubeconfig(&kubeconfig, server_url, &format!("system:{}", component.name()), token)?;
        let args: Vec<String> = std::iter::once(format!("--kubeconfig={}", kubeconfig.display()))
            .chain(args.iter().cloned())
            .chain(["--port=0", "--secure-port=0", "--profiling=false"].map(String::from))
            .collect();
        ComponentProcess::spawn(
            component,
            &self.binaries.control_plane(component.name()),
            &args,
            &self.root.join("logs"),
        )
    }
}

/// Polls `GET /readyz` (through the admin client, so TLS trust and token auth are proven too)
/// until it answers `ok`.
async fn wait_for_readyz(client: &Client, apiserver: &mut ComponentProcess) -> Result<(), HarnessError> {
    let readyz = async || {
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a constant request is valid");
        match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => Ok(()),
            Ok(body) => Err(format!("/readyz answered {body:?}")),
            Err(error) => Err(format!("/readyz failed: {error}")),
        }
    };
    apiserver
        .process
        .wait_ready_async(APISERVER_READY_TIMEOUT, POLL_INTERVAL, readyz)
        .await
}

/// Waits until the scheduler holds its lease and the controller-manager has given the `default`
/// namespace a ServiceAccount with a token Secret; fails at once if any process exits.
pub(super) async fn wait_for_controllers(client: &Client, processes: &mut Processes) -> Result<(), HarnessError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + CONTROLLERS_READY_TIMEOUT;
    let (mut scheduler_ready, mut controller_manager_ready) = (false, false);
    let (mut scheduler_check, mut controller_manager_check) = (String::new(), String::new());
    loop {
        for running in processes.iter_mut() {
            running.process.ensure_running()?;
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
            return Err(match processes.get(waiting_for) {
                Some(waiting) => waiting.process.not_ready(CONTROLLERS_READY_TIMEOUT, last_check.clone()),
                None => HarnessError::Timeout {
                    what: format!("{waiting_for}, which was never started ({last_check})"),
                    timeout: CONTROLLERS_READY_TIMEOUT,
                },
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
