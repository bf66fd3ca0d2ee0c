//! The `kubernetes` executor: every step runs as a Pod of its own in its app's build namespace,
//! through the same contract as the local executors ([`StepRunner::run`](super::StepRunner::run)
//! masks, publishes and stores its log, and returns the same [`StepStatus`]).
//!
//! One step, in order:
//! 1. its build namespace is checked and reconciled (`namespace`);
//! 2. a ticket of the workspace server is opened for it (`server`): a token for this step only;
//! 3. its Secret (the token, its granted secrets) is created, then its Pod (`pod`), then the
//!    Secret is given the Pod as owner so garbage collection removes it with the Pod;
//! 4. the Pod is watched to its outcome and its `step` container's log streamed into the step's
//!    log (`watch`); once the step ended its outputs come back and replace the workspace;
//! 5. the Pod and the Secret are deleted (also, best effort, when the step's future is dropped).
//!
//! At start [`Kubernetes::start`] builds the client, binds the workspace server (served for as
//! long as the executor lives) and reaps what a previous life of this instance left (`reaper`),
//! then again every five minutes. `settings` resolves `steps.kubernetes`.

mod archive;
mod namespace;
mod pod;
mod reaper;
mod server;
mod settings;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use baton_schemas::config::KubernetesStepsSettings;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::task::AbortOnDropHandle;

use self::archive::Caps;
use self::pod::StepPod;
use self::server::Transfers;
use self::settings::PodSettings;
use super::log::LogSink;
use super::workdir::resolve_workdir;
use super::{ResourceLimits, StepError, StepRequest, StepStatus};
use crate::service::Env;
use crate::settings::ConfigError;

/// What a step may add to its outputs when it has no disk limit.
const UNLIMITED_ADDED_BYTES: u64 = 8 << 30;
/// Entries a step may add to its workspace.
const ADDED_ENTRIES: u64 = 200_000;
/// How long the log may still stream after the outcome is known.
const LOG_GRACE: Duration = Duration::from_secs(5);
/// First and longest pause between asking again for a pod the quota refused.
const QUOTA_PAUSE_FIRST: Duration = Duration::from_millis(100);
const QUOTA_PAUSE_LAST: Duration = Duration::from_secs(2);
/// Longest the deletion of a finished step's pod and Secret is waited for.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs steps as Pods. Cheap to clone: every clone shares one client, one workspace server and
/// one reaper, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct Kubernetes(Arc<Inner>);

struct Inner {
    client: kube::Client,
    settings: PodSettings,
    transfers: Arc<Transfers>,
    reconciled: namespace::Reconciled,
    /// Pods this instance drives now: the reaper leaves them.
    driving: Arc<Mutex<HashSet<String>>>,
    /// Where the workspace server listens.
    listening: std::net::SocketAddr,
    _server: AbortOnDropHandle<()>,
    reaper: Mutex<Option<AbortOnDropHandle<()>>>,
}

impl fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kubernetes")
            .field("service", &self.0.settings.service)
            .field("instance", &self.0.settings.instance)
            .field("image", &self.0.settings.image)
            .field("workspace_server", &self.0.listening)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// Resolves `steps.kubernetes` of `service` (`builder` or `tester`), builds the Kubernetes
    /// client (from `kubeconfig`, else in-cluster or `$KUBECONFIG`), binds the workspace server
    /// and reaps the pods this instance left; then reaps every five minutes.
    ///
    /// # Errors
    /// The field at fault: incomplete or invalid settings, an unusable kubeconfig, a listen
    /// address that cannot be bound.
    pub async fn start(
        service: &'static str,
        settings: &KubernetesStepsSettings,
        env: Env<'_>,
    ) -> Result<Self, ConfigError> {
        let mut resolved = PodSettings::resolve(service, settings, env)?;
        let client = client(settings.kubeconfig.as_deref()).await?;
        let listener = tokio::net::TcpListener::bind(resolved.listen).await.map_err(|e| {
            ConfigError::invalid(
                "steps.kubernetes.workspace.listen",
                format!("cannot listen on {}: {e}", resolved.listen),
            )
        })?;
        let listening = server::bound(&listener).unwrap_or(resolved.listen);
        resolved.listening_on(listening.port());
        let transfers = Arc::new(Transfers::default());
        let serving = tokio::spawn(server::serve(listener, server::router(Arc::clone(&transfers))));
        let kubernetes = Self(Arc::new(Inner {
            client,
            settings: resolved,
            transfers,
            reconciled: namespace::Reconciled::default(),
            driving: Arc::default(),
            listening,
            _server: AbortOnDropHandle::new(serving),
            reaper: Mutex::new(None),
        }));
        match kubernetes.reap().await {
            Ok(reaped) => tracing::info!(
                pods = reaped.pods,
                secrets = reaped.secrets,
                instance = %kubernetes.0.settings.instance,
                "steps run as pods; what this instance left was reaped"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reap the step pods this instance left; trying again in 5 minutes")
            }
        }
        let weak = Arc::downgrade(&kubernetes.0);
        let reaping = tokio::spawn(reap_periodically(weak));
        *kubernetes
            .0
            .reaper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(AbortOnDropHandle::new(reaping));
        Ok(kubernetes)
    }

    /// The build namespace `app`'s steps run in.
    pub fn namespace(&self, app: &str) -> String {
        self.0.settings.namespace(app)
    }

    /// Where the workspace server listens (the port actually bound, for `:0`).
    pub fn workspace_server(&self) -> std::net::SocketAddr {
        self.0.listening
    }

    async fn reap(&self) -> Result<reaper::Reaped, kube::Error> {
        let driving = self
            .0
            .driving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        reaper::reap(&self.0.client, &self.0.settings, &driving).await
    }

    /// Runs one step as a Pod and follows it to its outcome, its log into `sink`.
    pub(super) async fn execute(
        &self,
        request: &StepRequest<'_>,
        limits: &ResourceLimits,
        sink: &mut LogSink,
    ) -> StepStatus {
        match self.run_pod(request, limits, sink).await {
            Ok(status) | Err(status) => status,
        }
    }

    async fn run_pod(
        &self,
        request: &StepRequest<'_>,
        limits: &ResourceLimits,
        sink: &mut LogSink,
    ) -> Result<StepStatus, StepStatus> {
        let inner = &self.0;
        let settings = &inner.settings;
        let error = StepStatus::Error;
        let (workspace, workdir) =
            resolve_workdir(request.workspace, request.step.workdir.as_deref()).map_err(|e| error(e.into()))?;
        let relative = workdir
            .strip_prefix(&workspace)
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        let namespace = settings.namespace(request.app);
        inner
            .reconciled
            .ensure(&inner.client, settings, request.app, &namespace)
            .await
            .map_err(error)?;

        let measured = workspace.clone();
        let (bytes, entries) = tokio::task::spawn_blocking(move || archive::measure(&measured))
            .await
            .map_err(|e| error(StepError::Workspace { reason: e.to_string() }))?
            .map_err(|e| {
                error(StepError::Workspace {
                    reason: format!("cannot read the workspace: {e}"),
                })
            })?;
        let added = if limits.disk_bytes > 0 {
            limits.disk_bytes
        } else {
            UNLIMITED_ADDED_BYTES
        };
        let caps = Caps {
            bytes: bytes.saturating_add(added),
            entries: entries.saturating_add(ADDED_ENTRIES),
        };

        let nonce = uuid::Uuid::new_v4().to_string();
        let name = pod::pod_name(request.run_id, &request.step.name, &nonce);
        let labels = pod::step_labels(
            settings,
            request.app,
            request.run_id,
            &request.step.name,
            request.step.network,
        );
        let lifetime = settings.schedule_timeout + request.step.timeout + settings.transfer_timeout * 2;
        let mut ticket = inner.transfers.open(&name, &workspace, caps, lifetime);
        let env: Vec<(String, String)> = request
            .step
            .env
            .iter()
            .chain(request.extra_env.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let image = request.step.image.as_deref().unwrap_or(&settings.image);
        let spec = StepPod {
            settings,
            name: &name,
            namespace: &namespace,
            labels: &labels,
            annotations: BTreeMap::from([
                ("baton.dev/app".to_owned(), request.app.to_owned()),
                ("baton.dev/run".to_owned(), request.run_id.to_owned()),
                ("baton.dev/step".to_owned(), request.step.name.clone()),
            ]),
            image,
            run: &request.step.run,
            workdir: &relative,
            env,
            secrets: request.secret_env.keys().cloned().collect(),
            limits,
            timeout: request.step.timeout,
            workspace_bytes: bytes,
        };

        let pods: Api<Pod> = Api::namespaced(inner.client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(inner.client.clone(), &namespace);
        // From here on, whatever happens, the pod and its Secret go away with the step.
        let cleanup = Cleanup::new(&pods, &secrets, &name, Arc::clone(&inner.driving));
        secrets
            .create(&PostParams::default(), &spec.secret(ticket.token(), request.secret_env))
            .await
            .map_err(|e| error(creation_refused(e, "Secret", &namespace)))?;
        // A quota refusal waits for room (the app's other steps ending, or the quota counting a
        // pod just deleted), as a pending pod waits for a node: up to `schedule_timeout`.
        let asked = tokio::time::Instant::now();
        let mut pause = QUOTA_PAUSE_FIRST;
        let mut noted = false;
        let created = loop {
            match pods.create(&PostParams::default(), &spec.pod()).await {
                Ok(created) => break created,
                Err(e) => match creation_refused(e, "Pod", &namespace) {
                    StepError::Quota { reason } if asked.elapsed() + pause < settings.schedule_timeout => {
                        if !noted {
                            sink.note(&format!(
                                "baton: waiting for room in the build namespace's quota: {reason}"
                            ));
                            noted = true;
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(QUOTA_PAUSE_LAST);
                    }
                    refused => return Err(error(refused)),
                },
            }
        };
        if let Some(uid) = created.metadata.uid.as_deref() {
            let owner = serde_json::json!({"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid},
            ]}});
            if let Err(e) = secrets
                .patch(&name, &PatchParams::default(), &Patch::Merge(&owner))
                .await
            {
                tracing::warn!(pod = %name, error = %e, "cannot give the step's Secret its pod as owner; it is deleted with the step");
            }
        }
        tracing::debug!(%namespace, pod = %name, image, "step pod created");

        let waited = watch::Waited {
            for_: Duration::ZERO,
            schedule_timeout: settings.schedule_timeout,
            memory_bytes: limits.memory_bytes,
            disk_bytes: limits.disk_bytes,
            image,
            helper_image: &settings.helper_image,
        };
        let (started, started_rx) = tokio::sync::watch::channel(false);
        let driven = {
            let drive = watch::drive(
                &pods,
                &name,
                waited,
                request.step.timeout,
                settings.transfer_timeout,
                &mut ticket,
                &started,
            );
            tokio::pin!(drive);
            let log = watch::follow_log(&pods, &name, started_rx, sink);
            tokio::pin!(log);
            let mut log_ended = false;
            let driven = tokio::select! {
                driven = &mut drive => driven,
                () = &mut log => {
                    log_ended = true;
                    drive.await
                }
            };
            if !log_ended && tokio::time::timeout(LOG_GRACE, &mut log).await.is_err() {
                tracing::debug!(pod = %name, "the step's log did not end with it");
            }
            driven
        };
        drop(ticket);
        cleanup.now().await;
        if let Some(lost) = &driven.outputs_lost {
            sink.note(&format!("baton: the step's outputs did not come back: {lost}"));
            if driven.status.succeeded() {
                return Ok(StepStatus::Error(StepError::Workspace { reason: lost.clone() }));
            }
        }
        Ok(driven.status)
    }
}

/// Reaps every [`reaper::REAP_EVERY`] for as long as the executor lives.
async fn reap_periodically(executor: Weak<Inner>) {
    loop {
        tokio::time::sleep(reaper::REAP_EVERY).await;
        let Some(inner) = executor.upgrade() else {
            return;
        };
        if let Err(e) = Kubernetes(inner).reap().await {
            tracing::warn!(error = %e, "reaping step pods failed; trying again in 5 minutes");
        }
    }
}

/// The client `kubeconfig` names, else the inferred one.
async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ConfigError> {
    const FIELD: &str = "steps.kubernetes.kubeconfig";
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| ConfigError::invalid(FIELD, format!("cannot read {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| ConfigError::invalid(FIELD, format!("{} is not usable: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            ConfigError::invalid(
                FIELD,
                format!("none set and none found (in-cluster or $KUBECONFIG): {e}"),
            )
        })?,
    };
    kube::Client::try_from(config).map_err(|e| ConfigError::invalid(FIELD, format!("cannot build a client: {e}")))
}

/// Why the apiserver refused to create a step's object, as the step's error.
fn creation_refused(error: kube::Error, kind: &str, namespace: &str) -> StepError {
    match error {
        // "exceeded quota: …", or "status unknown for quota: …" while a new quota is first counted.
        kube::Error::Api(status) if status.code == 403 && status.message.contains("quota") => {
            StepError::Quota { reason: status.message }
        }
        kube::Error::Api(status) if status.code == 403 => StepError::Namespace {
            namespace: namespace.to_owned(),
            reason: format!(
                "cannot create the step's {kind}: {} (bind ClusterRole baton-step-runner there, deploy/build-namespaces)",
                status.message
            ),
        },
        other => StepError::Kubernetes {
            reason: format!("cannot create the step's {kind}: {other}"),
        },
    }
}

/// Deletes a step's pod and Secret: now, or when dropped (best effort, in the background), and
/// tells the reaper the pod is no longer driven.
struct Cleanup {
    pods: Api<Pod>,
    secrets: Api<Secret>,
    name: String,
    driving: Arc<Mutex<HashSet<String>>>,
    done: bool,
}

impl Cleanup {
    fn new(pods: &Api<Pod>, secrets: &Api<Secret>, name: &str, driving: Arc<Mutex<HashSet<String>>>) -> Self {
        driving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
        Self {
            pods: pods.clone(),
            secrets: secrets.clone(),
            name: name.to_owned(),
            driving,
            done: false,
        }
    }

    async fn now(mut self) {
        self.done = true;
        let deleting = delete(self.pods.clone(), self.secrets.clone(), self.name.clone());
        if tokio::time::timeout(CLEANUP_TIMEOUT, deleting).await.is_err() {
            tracing::warn!(pod = %self.name, "deleting the step's pod timed out; the reaper will");
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.done
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(delete(self.pods.clone(), self.secrets.clone(), self.name.clone()));
        }
        self.driving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.name);
    }
}

async fn delete(pods: Api<Pod>, secrets: Api<Secret>, name: String) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::background()
    };
    for result in [
        pods.delete(&name, &params).await.map(|_| ()),
        secrets.delete(&name, &params).await.map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "cannot delete the step's pod or Secret; the reaper will")
            }
        }
    }
}
