//! Settings every Baton service shares (the `nats`, `http`, `telemetry`, `jetstream`, `runner`
//! and `shutdown` sections of its `--config` file). Each service adds its own sections beside
//! these. Loading, environment overrides and validation live in `baton-kit`; the JSON Schema is
//! generated into `schemas/json/config/service-common.json`.
//!
//! Durations are written the human way: `30s`, `5m`, `2h`, `365days`.

pub mod builder;
pub mod chatops;
pub mod deployer;
pub mod listener;
pub mod promoter;
pub mod tester;
pub mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The sections every service's config file has. Every field has a default, so an empty file
/// is a valid config for a local run against `nats://127.0.0.1:4222`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CommonSettings {
    /// How to reach NATS.
    pub nats: NatsSettings,
    /// The health, readiness and metrics endpoint (and, for the listener and chatops, their
    /// public endpoint).
    pub http: HttpSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// The JetStream topology every service provisions (idempotently) at start.
    pub jetstream: JetStreamSettings,
    /// How the stage runner consumes events.
    pub runner: RunnerSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
}

/// Connection to NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated (`nats://host:4222,nats://other:4222`). Env: `BATON_NATS_URL`.
    pub url: String,
    /// A NATS `.creds` file (JWT + nkey seed) when the server requires authentication. Each
    /// service gets credentials that let it publish only its own event types.
    pub credentials_file: Option<PathBuf>,
    /// User name, when the server authenticates users by name and password (as
    /// `deploy/base/nats/auth.conf` does: one user per service, allowed to publish only that
    /// service's event types). Needs `password_env` or `password_file`. Replies to the
    /// service's requests then arrive on `_INBOX_<user>.>` instead of `_INBOX.>`.
    pub user: Option<String>,
    /// Environment variable holding the password of `user` (e.g. from a Kubernetes Secret).
    pub password_env: Option<String>,
    /// File holding the password of `user` (trailing newline ignored), e.g. a mounted Secret.
    pub password_file: Option<PathBuf>,
    /// How long to wait for the first connection before giving up at start-up.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: None,
            user: None,
            password_env: None,
            password_file: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The HTTP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on for `/healthz`, `/readyz` and `/metrics`. Port 0 picks a free port.
    #[schemars(with = "String")]
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs and traces. The log filter comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC endpoint traces are exported to (e.g. `http://otel-collector:4317`). Unset:
    /// no export, but trace context is still carried from event to event.
    pub otlp_endpoint: Option<String>,
    /// Log line format.
    pub log_format: LogFormat,
}

/// The JetStream streams, buckets and object store Baton uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamSettings {
    /// Name of the stream that holds every event: the audit log.
    pub events_stream: String,
    /// How long events are kept. The events stream *is* the release history, so the default
    /// is long (ten years); `0s` keeps them forever.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub events_max_age: Duration,
    /// Window in which a second event with the same id is dropped by JetStream. A git host
    /// redelivering a webhook within this window never starts a second pipeline.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duplicate_window: Duration,
    /// Name of the stream that keeps poison messages with the reason they were rejected.
    pub deadletter_stream: String,
    /// How long dead letters are kept.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub deadletter_max_age: Duration,
    /// Stream and bucket replicas: 1 for a single server, 3 for a JetStream cluster.
    pub replicas: usize,
    /// Object store bucket for build and test logs.
    pub logs_bucket: String,
}

impl Default for JetStreamSettings {
    fn default() -> Self {
        Self {
            events_stream: "BATON_EVENTS".to_owned(),
            events_max_age: Duration::from_secs(10 * 365 * 24 * 3600),
            duplicate_window: Duration::from_secs(24 * 3600),
            deadletter_stream: "BATON_DEADLETTER".to_owned(),
            deadletter_max_age: Duration::from_secs(365 * 24 * 3600),
            replicas: 1,
            logs_bucket: "baton-logs".to_owned(),
        }
    }
}

/// How a service's stage runner consumes its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerSettings {
    /// Events handled at once by one replica.
    pub concurrency: usize,
    /// Attempts before an event that keeps failing is dead-lettered.
    pub max_deliver: u32,
    /// How long the server waits for an ack (or a heartbeat) before redelivering.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ack_wait: Duration,
    /// Delay before the first retry of a transiently failed event; doubles each attempt.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_initial: Duration,
    /// Upper bound of the retry delay.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_max: Duration,
    /// Longest one handler may run on one event before it is cancelled and the event is
    /// dead-lettered with the reason.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub handler_deadline: Duration,
    /// How long a handled event id is remembered, so a redelivery is not handled twice.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub remember_handled: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            concurrency: 32,
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            handler_deadline: Duration::from_secs(600),
            remember_handled: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Graceful shutdown on SIGTERM/SIGINT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long in-flight work may take to finish before it is handed back (nak) and the NATS
    /// connection is drained. Keep it below the pod's `terminationGracePeriodSeconds`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub grace_period: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(20),
        }
    }
}

/// Git access, the same section in every service that reads repositories (`source:` in the
/// builder, tester, promoter, deployer and listener).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSettings {
    /// Where per-repository mirrors are cached (later builds fetch only new objects) and
    /// workspaces are created. Default: a directory under the system's temporary directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Credentials for private repositories, chosen by the longest matching URL prefix.
    pub credentials: Vec<GitCredential>,
}

/// How to authenticate to repositories whose URL starts with `url_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitCredential {
    /// Repository URLs this applies to, e.g. `https://github.com/acme/`.
    pub url_prefix: String,
    /// User name for HTTPS (e.g. `x-access-token` for a GitHub token, `oauth2` for GitLab), or
    /// the SSH user (default `git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable holding an HTTPS token or password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding an HTTPS token or password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Not supported: Baton reaches repositories over HTTPS only (its libgit2 is built without
    /// SSH), so a credential with a key file is refused at start. Kept so the refusal can name
    /// the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_file: Option<PathBuf>,
}

/// How the builder and the tester run the steps of `.baton.yaml` (`steps:` in both configs): the
/// executor, the secrets granted to repositories, and who steps run as in the sandbox. The
/// maxima of a step's resources are the service's `limits` section beside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StepsSettings {
    /// How steps are isolated. `sandbox` unless the host cannot run one and the operator accepts
    /// that every step can then read the service's environment, files and network.
    pub executor: StepExecutor,
    /// Secrets steps may ask for by name (their `secrets` in `.baton.yaml`), each granted to the
    /// repositories it lists. The name is the environment variable the step sees.
    pub secrets: BTreeMap<String, StepSecret>,
    /// Who steps run as and what else of the host they see, with `executor: sandbox`.
    pub sandbox: SandboxSettings,
    /// Where and how steps run as Pods, with `executor: kubernetes`.
    pub kubernetes: KubernetesStepsSettings,
}

/// How steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepExecutor {
    /// Each step in its own user, PID, mount, network, IPC and UTS namespaces (bubblewrap),
    /// seeing only the host's toolchain read-only, its workspace and a private `/tmp`. The
    /// service refuses to start when the sandbox cannot run.
    #[default]
    Sandbox,
    /// Steps run as the service's own user with only their environment cleared: they can read
    /// its files and `/proc`, reach its network and outlive their step. For hosts where the
    /// sandbox cannot run; logged at start and shown by `/readyz`.
    Unsandboxed,
    /// Each step as a Pod of its own in the app's build namespace (`steps.kubernetes`): non-root,
    /// read-only root filesystem, no capabilities, no ServiceAccount token, egress only where the
    /// step declares `network: true`. The workspace reaches the pod, and its outputs come back,
    /// over the service's workspace server with a token valid for that step only.
    Kubernetes,
}

/// One secret steps may be granted: where its value is read from at start, and the
/// repositories whose steps may ask for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StepSecret {
    /// Environment variable of the service holding the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_env: Option<String>,
    /// File holding the value (one trailing newline ignored), e.g. a mounted Kubernetes Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Full names of the repositories granted the secret (`acme/shop`), or globs of them: `*`
    /// and `?` match within one part of the name (`acme/*` grants `acme/shop`, not
    /// `acme/team/shop`), a `**` part matches one or more whole parts. Case is ignored, as git hosts
    /// ignore it.
    pub repositories: Vec<String>,
}

/// Who steps run as in the sandbox, and what of the host they see besides its system
/// directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Host uid steps run as when the service runs as root (otherwise steps run as the
    /// service's own uid, mapped in a user namespace). Not 0. Default: `nobody`.
    pub uid: u32,
    /// Host gid steps run as when the service runs as root. Not 0. Default: `nogroup`.
    pub gid: u32,
    /// Extra absolute host paths mounted read-only into every step (e.g. `/opt/toolchains`).
    /// Whatever is under them every step of every repository can read: never a directory
    /// holding the service's config or secrets.
    pub read_only_paths: Vec<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            uid: 65534,
            gid: 65534,
            read_only_paths: Vec::new(),
        }
    }
}

/// How steps run as Pods (`steps.kubernetes`, with `steps.executor: kubernetes`). Each app's
/// steps run in its build namespace, `namespace_prefix` + the app's name as a DNS label
/// (`acme/shop` → `baton-build-acme-shop`), which the platform creates together with the
/// RoleBinding that lets the service work in it (`deploy/build-namespaces`); the service
/// reconciles the quota, limit range and network policies inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesStepsSettings {
    /// A kubeconfig file to reach the cluster with. Default: the in-cluster config of the
    /// service's pod, else `$KUBECONFIG` or `~/.kube/config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Prefix of the build namespaces. Default: `baton-build-` for the builder, `baton-test-`
    /// for the tester, so the two stages' quotas never count each other's pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_prefix: Option<String>,
    /// The default step image (a toolchain with `/bin/sh`), best pinned by digest
    /// (`registry/toolchain@sha256:…`); a step may name its own (`image` in `.baton.yaml`).
    /// Required with `executor: kubernetes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image of the containers moving the workspace in and the outputs out: needs `/bin/sh`,
    /// `tar`, `base64` and `wget` (busybox has all four).
    pub helper_image: String,
    /// The non-root uid and gid every container of a step runs as.
    pub run_as: RunAs,
    /// Where the service serves workspaces to its step pods.
    pub workspace: WorkspaceServerSettings,
    /// Where the service's own pods are: the only destination, besides DNS, that step pods
    /// without `network: true` may reach (the default-deny NetworkPolicy's egress rule).
    pub service: ServicePeers,
    /// The build namespace's ResourceQuota (`spec.hard`: resource name to quantity, e.g.
    /// `pods: "10"`, `requests.memory: 16Gi`): what all steps of one app may hold at once. A pod
    /// beyond it waits for room (as Tekton's `ExceededResourceQuota`) up to `schedule_timeout`,
    /// then its step fails with the quota's reason.
    pub quota: BTreeMap<String, String>,
    /// The build namespace's LimitRange defaults per container (resource name to quantity, e.g.
    /// `cpu: "2"`): the request and limit of what a step does not set itself (its cpu, and its
    /// memory or disk when it has no such limit).
    pub limit_range: BTreeMap<String, String>,
    /// Per-app overrides of `quota` and `limit_range`, by the app's name (`acme/shop`): the keys
    /// given replace the defaults' values, the others are kept.
    pub apps: BTreeMap<String, AppStepOverrides>,
    /// Longest a step's pod may wait to be scheduled (or for its image): past it the step fails
    /// with the scheduler's (or the kubelet's) message.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub schedule_timeout: Duration,
    /// Time added to a step's `timeout` for moving its workspace in and its outputs out: the
    /// pod's `activeDeadlineSeconds` is the sum.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub transfer_timeout: Duration,
    /// This replica's name on its pods (label `baton.dev/instance`): at start a service deletes
    /// the pods of its own instance left by its previous life. Default: `$HOSTNAME` (the pod's
    /// name, stable for a StatefulSet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Default for KubernetesStepsSettings {
    fn default() -> Self {
        let quantities = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        Self {
            kubeconfig: None,
            namespace_prefix: None,
            image: None,
            helper_image: "docker.io/library/busybox:1.37".to_owned(),
            run_as: RunAs::default(),
            workspace: WorkspaceServerSettings::default(),
            service: ServicePeers::default(),
            quota: quantities(&[
                ("pods", "10"),
                ("requests.cpu", "8"),
                ("requests.memory", "16Gi"),
                ("limits.cpu", "16"),
                ("limits.memory", "32Gi"),
                ("requests.ephemeral-storage", "50Gi"),
            ]),
            limit_range: quantities(&[("cpu", "2"), ("memory", "4Gi"), ("ephemeral-storage", "10Gi")]),
            apps: BTreeMap::new(),
            schedule_timeout: Duration::from_secs(120),
            transfer_timeout: Duration::from_secs(120),
            instance: None,
        }
    }
}

/// The uid and gid of a step's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RunAs {
    /// The uid (`runAsUser`). Not 0. Default: 65532 (distroless `nonroot`).
    pub uid: u32,
    /// The gid (`runAsGroup` and `fsGroup`). Not 0. Default: 65532.
    pub gid: u32,
}

impl Default for RunAs {
    fn default() -> Self {
        Self { uid: 65532, gid: 65532 }
    }
}

/// The service's workspace server: step pods fetch their workspace from it and send their
/// outputs back, each with a token valid for its own step only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspaceServerSettings {
    /// Address the server listens on.
    pub listen: SocketAddr,
    /// How step pods reach THIS replica's server, e.g. `http://10.1.2.3:8091` (from the pod's
    /// IP, `http://$(POD_IP):8091` in a Deployment): a step's token and state live only in the
    /// replica driving it, so a Service in front of several replicas would send pods to the
    /// wrong one. Required with `executor: kubernetes`. Its port (and `listen`'s) is what the
    /// network policy lets step pods reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Default for WorkspaceServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8091)),
            url: None,
        }
    }
}

/// Which pods are the service's, as the build namespace's network policy selects them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServicePeers {
    /// Labels of the namespace the service runs in (a `namespaceSelector`). Not empty.
    /// Default: `kubernetes.io/metadata.name: baton`, a label Kubernetes sets on every namespace
    /// from 1.21 on; on older clusters label the namespace yourself (`deploy/` labels its own
    /// `baton.dev/services: "true"` and selects that).
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the service's pods (a `podSelector`). Default (when empty):
    /// `app.kubernetes.io/name: baton-builder` or `baton-tester`.
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for ServicePeers {
    fn default() -> Self {
        Self {
            namespace_labels: BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), "baton".to_owned())]),
            pod_labels: BTreeMap::new(),
        }
    }
}

/// One app's own quota and limit range values, replacing the defaults' values of the keys given.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AppStepOverrides {
    /// The app's build namespace, instead of `namespace_prefix` + its name as a DNS label: for
    /// apps whose names differ only where a namespace cannot (`acme/shop_api` and
    /// `acme/shop-api` both make `…-acme-shop-api`), which the executor refuses to mix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Replaces these keys of `steps.kubernetes.quota`.
    pub quota: BTreeMap<String, String>,
    /// Replaces these keys of `steps.kubernetes.limit_range`.
    pub limit_range: BTreeMap<String, String>,
}
