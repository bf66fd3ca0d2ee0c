//! The step executor: runs one [`Step`] of a `.baton.yaml` (a build step for the builder, a test
//! step for the tester) and reports how it ended, with its log.
//!
//! A step is `/bin/sh -c <run>` in a directory of the workspace, with a clean environment (only
//! a minimal `PATH`, `HOME` pointing at the workspace, the step's own `env` and what the caller
//! adds, such as `BATON_IMAGE`), under rlimits (CPU seconds, address space, open files), in a
//! process group of its own so a timeout kills everything it started. Its stdout and stderr
//! share one pipe, so lines keep the order the step wrote them in. Every line is masked (secret
//! values become `***`), cut when very long, published live on `baton.logs.<run>.<step>` (core
//! NATS, fire and forget: a slow or absent NATS never slows the step) and spooled to a
//! temporary file, which is stored whole in the JetStream object store (`baton-logs`, object
//! `<run>/<step>.log`) once the step ends. Memory stays bounded however much a step prints: the
//! outcome carries only the last lines.
//!
//! Running the step never depends on NATS: without it the step still runs, its outcome is still
//! returned, and [`StepOutcome::log`] says why the log could not be kept.
//!
//! The process (`/bin/sh` under rlimits in a process group of its own, its exit or timeout) is
//! `process`, the directory it runs in is checked by `workdir`, and `log` handles its output
//! (masking, the live log, the spool and the stored log, the tail). How the process is isolated
//! is the [`Executor`]: on the host in `sandbox` (or not, `unsandboxed`), or, with `kubernetes`,
//! as a Pod of its own in the app's build namespace (`kubernetes`), whose `step` container's log
//! feeds the same masking, live log and store, and whose end maps to the same [`StepStatus`].
//!
//! ```no_run
//! # async fn example(topology: &baton_kit::fabric::Topology, step: &baton_schemas::pipeline::Step) {
//! use std::collections::BTreeMap;
//! use baton_kit::steps::{StepRequest, StepRunner};
//!
//! let runner = StepRunner::new(topology);
//! let outcome = runner
//!     .run(StepRequest {
//!         run_id: "build-42",
//!         app: "acme/shop",
//!         step,
//!         workspace: std::path::Path::new("/var/cache/baton/ws/build-42"),
//!         extra_env: &BTreeMap::new(),
//!         secrets: &[],
//!         secret_env: &BTreeMap::new(),
//!         limits: None,
//!     })
//!     .await;
//! let report = outcome.report(&step.name); // what `build.finished` carries
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream::object_store::ObjectStore;
use baton_schemas::payloads::{LogLocation, StepReport};
use baton_schemas::pipeline::Step;
use baton_schemas::subjects;

use crate::fabric::Topology;
use crate::secret::Secret;

mod executor;
mod kubernetes;
mod log;
mod policy;
mod process;
mod sandbox;
mod workdir;

pub use executor::Executor;
pub use kubernetes::Kubernetes;
pub use log::{LogError, LogRef};
pub use policy::{PolicyError, StepGrant, StepPolicy, StepProblem, UNSANDBOXED_WARNING, start_executor};
pub use process::ResourceLimits;
pub use sandbox::{BindMount, ContainerSpec, Sandbox, SandboxError, WORKSPACE, disk_usage};
pub use workdir::{WorkdirError, resolve_workdir};

use log::{LiveLog, LogSink, Masker};

/// `PATH` of every step: enough to find the usual tools, nothing from the builder's own `PATH`.
pub const STEP_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// What a secret value is replaced with in logs.
pub const MASK: &str = "***";
/// Secret values (or lines of multi-line secrets) shorter than this are not masked: replacing
/// every `a` or `42` in a log would destroy it while hiding next to nothing.
pub const MIN_MASKED_LEN: usize = 4;
/// Longest line kept in the live and stored log; the rest of the line is cut, with a marker.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// How many last lines [`StepOutcome::tail`] keeps.
pub const TAIL_LINES: usize = 50;
/// Longest line of [`StepOutcome::tail`]: the tail travels in events, which must stay small.
pub const TAIL_LINE_BYTES: usize = 2 * 1024;

/// Default of [`StepRunner::with_store_timeout`].
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs steps and keeps their logs. One per service; cheap to share (`&self`), and steps may run
/// concurrently.
#[derive(Clone)]
pub struct StepRunner {
    /// Core NATS connection for live log lines; `None` runs steps without live logs.
    live: Option<Client>,
    /// Object store keeping whole logs; `None` runs steps without storing logs.
    store: Option<ObjectStore>,
    /// Name of the object store bucket, for [`LogRef::bucket`].
    bucket: String,
    /// Limits applied to every step that brings none of its own.
    limits: ResourceLimits,
    /// How steps are isolated.
    executor: Executor,
    /// Longest storing one log may take, so a NATS outage cannot hold a finished step.
    store_timeout: Duration,
}

impl fmt::Debug for StepRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepRunner")
            .field("live", &self.live.is_some())
            .field("bucket", &self.store.as_ref().map(|_| &self.bucket))
            .field("limits", &self.limits)
            .field("executor", &self.executor.name())
            .field("store_timeout", &self.store_timeout)
            .finish()
    }
}

/// One step to run: the step, where, and what the caller adds to it.
#[derive(Debug, Clone, Copy)]
pub struct StepRequest<'a> {
    /// The build or test run: names the live log subject and the stored log object.
    pub run_id: &'a str,
    /// The app the run is of (`acme/shop`): with the kubernetes executor, its build namespace
    /// and the `baton.dev/app` label of the step's pod.
    pub app: &'a str,
    /// The step from `.baton.yaml`.
    pub step: &'a Step,
    /// The checked-out repository; the step runs in it (or its `workdir`) and may not leave it.
    pub workspace: &'a Path,
    /// Variables the service adds after the step's own (and overriding them), e.g. `BATON_IMAGE`
    /// for the tester.
    pub extra_env: &'a BTreeMap<String, String>,
    /// Values masked as `***` wherever they appear in the output (each line of a multi-line
    /// secret is masked on its own; values shorter than [`MIN_MASKED_LEN`] are not masked).
    pub secrets: &'a [Secret],
    /// Secrets granted to this step (its `secrets` in `.baton.yaml`): set as environment
    /// variables of their names for this step only, and masked like [`StepRequest::secrets`].
    pub secret_env: &'a BTreeMap<String, Secret>,
    /// This step's limits (its `limits` in `.baton.yaml`, checked within the service's maxima);
    /// `None`: the runner's.
    pub limits: Option<&'a ResourceLimits>,
}

/// How a step ended, its duration, its stored log and its last lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// Whether it passed, failed, timed out or could not run.
    pub status: StepStatus,
    /// From start to the end of its process (not counting storing the log).
    pub duration: Duration,
    /// Where the whole (masked) log is stored, or why it could not be stored; the status does
    /// not depend on it.
    pub log: Result<LogRef, LogError>,
    /// The last [`TAIL_LINES`] lines, masked, each cut at [`TAIL_LINE_BYTES`]: for events and
    /// failure messages, where the whole log would not fit.
    pub tail: Vec<String>,
    /// Lines not published live because NATS (or the subscribers) could not keep up; they are
    /// all in the stored log.
    pub live_skipped: u64,
}

impl StepOutcome {
    /// The step's entry in a build or test event (`status`, exit code, duration, log, tail).
    pub fn report(&self, step_name: &str) -> StepReport {
        StepReport {
            name: step_name.to_owned(),
            status: self.status.label().to_owned(),
            exit_code: self.status.exit_code(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            log: self.log.as_ref().ok().map(LogLocation::from),
            tail: self.tail.clone(),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStatus {
    /// It exited with code 0.
    Succeeded,
    /// It exited with another code, or was killed by a signal (other than at its timeout). A
    /// command killed by a signal inside the step's shell usually shows as code 128 + signal.
    Failed {
        /// The exit code, when it exited.
        exit_code: Option<i32>,
        /// The signal that killed it, when it was killed: e.g. 9 (`SIGKILL`) past its CPU limit,
        /// or 11 (`SIGSEGV`) for a shell that ran out of address space.
        signal: Option<i32>,
    },
    /// It ran longer than its `timeout`; its whole process group was killed (or its pod
    /// deleted, or the pod reached its `activeDeadlineSeconds`).
    TimedOut,
    /// It went past one of its limits and was killed.
    LimitExceeded {
        /// The limit, as the config and `.baton.yaml` name it (`disk_bytes`).
        limit: &'static str,
        /// What it did.
        detail: String,
    },
    /// It could not be run at all (a workdir outside the workspace, a shell that cannot start):
    /// the step's fault or Baton's, but not the command's.
    Error(StepError),
}

impl StepStatus {
    /// Whether the step passed.
    pub fn succeeded(&self) -> bool {
        matches!(self, Self::Succeeded)
    }

    /// `succeeded`, `failed`, `timed_out` or `error`: the `status` of a [`StepReport`] and a
    /// metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed { .. } => "failed",
            Self::TimedOut => "timed_out",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::Error(_) => "error",
        }
    }

    /// The exit code, when the process exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Succeeded => Some(0),
            Self::Failed { exit_code, .. } => *exit_code,
            Self::TimedOut | Self::LimitExceeded { .. } | Self::Error(_) => None,
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Succeeded => f.write_str("succeeded"),
            Self::Failed {
                exit_code: Some(code), ..
            } => write!(f, "failed with exit code {code}"),
            Self::Failed {
                signal: Some(signal), ..
            } => write!(f, "killed by signal {signal}"),
            Self::Failed { .. } => f.write_str("failed"),
            Self::TimedOut => f.write_str("timed out"),
            Self::LimitExceeded { limit, detail } => write!(f, "exceeded its limit {limit}: {detail}"),
            Self::Error(e) => write!(f, "not run: {e}"),
        }
    }
}

/// Why a step could not be run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Its `workdir` is unusable or outside the workspace.
    #[error(transparent)]
    Workdir(#[from] WorkdirError),
    /// `/bin/sh` could not be started (or the step's environment is invalid, e.g. a `=` in a
    /// variable name).
    #[error("cannot start /bin/sh: {reason}")]
    Spawn {
        /// Why.
        reason: String,
    },
    /// The pipe collecting its output could not be set up.
    #[error("cannot capture the step's output: {reason}")]
    Output {
        /// Why.
        reason: String,
    },
    /// Its exit status could not be read.
    #[error("cannot wait for the step: {reason}")]
    Wait {
        /// Why.
        reason: String,
    },
    /// The sandbox could not be set up for it.
    #[error("cannot set up the step's sandbox: {reason}")]
    Sandbox {
        /// Why.
        reason: String,
    },
    /// Its build namespace (kubernetes executor) is missing, not labelled for the service, or
    /// not the service's to use.
    #[error("cannot run steps in namespace {namespace}: {reason}")]
    Namespace {
        /// The build namespace.
        namespace: String,
        /// Why, and the fix.
        reason: String,
    },
    /// The build namespace's ResourceQuota refused its pod: too many steps of the app at once,
    /// or too much asked.
    #[error("the build namespace's quota refused the step's pod: {reason}")]
    Quota {
        /// The apiserver's words.
        reason: String,
    },
    /// Its pod could not be scheduled within `steps.kubernetes.schedule_timeout`.
    #[error("the step's pod could not be scheduled: {reason}")]
    Unschedulable {
        /// The scheduler's message.
        reason: String,
    },
    /// An image of its pod could not be pulled.
    #[error("image {image} cannot be pulled: {reason}")]
    Image {
        /// The image reference.
        image: String,
        /// The kubelet's words.
        reason: String,
    },
    /// The workspace did not reach its pod, or its outputs did not come back.
    #[error("the workspace did not move: {reason}")]
    Workspace {
        /// Why, with the helper's last words.
        reason: String,
    },
    /// The Kubernetes API failed otherwise.
    #[error("Kubernetes: {reason}")]
    Kubernetes {
        /// Why.
        reason: String,
    },
    /// The secrets could not be prepared for masking, so the step is not run rather than risk
    /// printing them.
    #[error("cannot prepare secret masking: {reason}")]
    Masking {
        /// Why.
        reason: String,
    },
}

impl StepError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Workdir(_) => "workdir",
            Self::Spawn { .. } => "spawn",
            Self::Output { .. } => "output",
            Self::Wait { .. } => "wait",
            Self::Masking { .. } => "masking",
            Self::Sandbox { .. } => "sandbox",
            Self::Namespace { .. } => "namespace",
            Self::Quota { .. } => "quota",
            Self::Unschedulable { .. } => "unschedulable",
            Self::Image { .. } => "image",
            Self::Workspace { .. } => "workspace",
            Self::Kubernetes { .. } => "kubernetes",
        }
    }
}

impl StepRunner {
    /// A runner publishing live logs on the topology's NATS connection and storing logs in its
    /// log object store, with [`ResourceLimits::default`].
    pub fn new(topology: &Topology) -> Self {
        Self {
            live: Some(topology.jetstream.client()),
            store: Some(topology.logs.clone()),
            bucket: topology.settings.logs_bucket.clone(),
            limits: ResourceLimits::default(),
            executor: Executor::Unsandboxed,
            store_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }

    /// A runner without NATS: steps run and report their tail, but no log is published or kept
    /// (local runs, and tests of the executor itself).
    pub fn offline() -> Self {
        Self {
            live: None,
            store: None,
            bucket: String::new(),
            limits: ResourceLimits::default(),
            executor: Executor::Unsandboxed,
            store_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }

    /// The same runner with other resource limits (the builder's `limits` setting).
    #[must_use]
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same runner running steps with `executor` (the services' default, set from their
    /// `steps.executor`, is the sandbox; a runner is [`Executor::Unsandboxed`] until told).
    #[must_use]
    pub fn with_executor(mut self, executor: Executor) -> Self {
        self.executor = executor;
        self
    }

    /// How steps run.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The same runner with another bound on storing one log (default 2 minutes): past it the
    /// outcome is returned with a [`LogError::Store`].
    #[must_use]
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// The limits steps run under.
    pub fn limits(&self) -> &ResourceLimits {
        &self.limits
    }

    /// The object name a step's log is stored under: `<run>/<step>.log`.
    pub fn log_object(run_id: &str, step_name: &str) -> String {
        format!("{run_id}/{step_name}.log")
    }

    /// Runs one step to its end (or its timeout) and stores its log. Never fails: everything that
    /// can go wrong is in the outcome. Dropping the future kills the step's process group (or
    /// deletes its pod). Runs in a span `step <name>` whose duration is the step's and whose
    /// `baton.step.status` is its outcome (an error status unless it succeeded).
    #[tracing::instrument(
        name = "step",
        skip_all,
        fields(
            otel.name = %format_args!("step {}", request.step.name),
            otel.status_code = tracing::field::Empty,
            run = %request.run_id,
            step = %request.step.name,
            baton.step.status = tracing::field::Empty,
        )
    )]
    pub async fn run(&self, request: StepRequest<'_>) -> StepOutcome {
        let started = Instant::now();
        let live = self.live.as_ref().map(|client| {
            LiveLog::start(
                client.clone(),
                subjects::log_subject(request.run_id, &request.step.name),
            )
        });
        let (masker, masking_error) = match Masker::new(request.secrets.iter().chain(request.secret_env.values())) {
            Ok(masker) => (masker, None),
            Err(reason) => (Masker::default(), Some(StepError::Masking { reason })),
        };
        let mut sink = LogSink::new(masker, live);

        let status = match masking_error {
            Some(error) => StepStatus::Error(error),
            None => match &self.executor {
                Executor::Kubernetes(pods) => {
                    let limits = request.limits.unwrap_or(&self.limits);
                    Box::pin(pods.execute(&request, limits, &mut sink)).await
                }
                Executor::Sandbox(_) | Executor::Unsandboxed => self.execute(&request, &mut sink).await,
            },
        };
        let duration = started.elapsed();
        match &status {
            StepStatus::Error(error) => sink.note(&format!("baton: step not run: {error}")),
            StepStatus::TimedOut => sink.note(&format!(
                "baton: step timed out after {}; its processes were killed",
                humantime::format_duration(request.step.timeout)
            )),
            _ => {}
        }
        let object = Self::log_object(request.run_id, &request.step.name);
        let (log, tail, live_skipped) = sink
            .finish(self.store.as_ref(), &self.bucket, &object, self.store_timeout)
            .await;
        match &log {
            Ok(log) => tracing::debug!(object = %log.object, bytes = log.bytes, lines = log.lines, "step log stored"),
            Err(LogError::NotConfigured) => {}
            Err(error) => tracing::warn!(%error, "step log not stored"),
        }
        let span = tracing::Span::current();
        span.record("baton.step.status", status.label());
        if !matches!(status, StepStatus::Succeeded) {
            span.record("otel.status_code", "ERROR");
        }
        tracing::info!(status = %status, duration_ms = duration.as_millis(), "step ended");
        StepOutcome {
            status,
            duration,
            log,
            tail,
            live_skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_reports() {
        assert_eq!(StepStatus::Succeeded.label(), "succeeded");
        let failed = StepStatus::Failed {
            exit_code: Some(3),
            signal: None,
        };
        assert_eq!((failed.label(), failed.exit_code()), ("failed", Some(3)));
        assert_eq!(failed.to_string(), "failed with exit code 3");
        assert_eq!(StepStatus::TimedOut.label(), "timed_out");
        let outcome = StepOutcome {
            status: failed,
            duration: Duration::from_millis(1500),
            log: Ok(LogRef {
                bucket: "baton-logs".into(),
                object: "r/s.log".into(),
                bytes: 3,
                lines: 1,
                sha256: String::new(),
            }),
            tail: vec!["hi".into()],
            live_skipped: 0,
        };
        let report = outcome.report("s");
        assert_eq!(report.status, "failed");
        assert_eq!(report.exit_code, Some(3));
        assert_eq!(report.duration_ms, 1500);
        assert_eq!(report.log.unwrap().object, "r/s.log");
    }

    fn step(run: &str) -> Step {
        Step {
            name: "unit".into(),
            run: run.into(),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            workdir: None,
            network: false,
            limits: baton_schemas::pipeline::StepResources::default(),
            secrets: Vec::new(),
            image: None,
        }
    }

    async fn run_offline(step: &Step, secrets: &[Secret]) -> StepOutcome {
        let workspace = tempfile::tempdir().unwrap();
        StepRunner::offline()
            .run(StepRequest {
                run_id: "run-1",
                app: "acme/shop",
                step,
                workspace: workspace.path(),
                extra_env: &BTreeMap::new(),
                secrets,
                secret_env: &BTreeMap::new(),
                limits: None,
            })
            .await
    }

    #[tokio::test]
    async fn the_command_reaches_the_shell_verbatim() {
        // Quotes, `$0`/`$1` and a leading dash: the command is an argument, never pasted.
        let outcome = run_offline(&step(r#"echo "it's" '$1' "$0"; echo err >&2"#), &[]).await;
        assert_eq!(outcome.status, StepStatus::Succeeded, "{:?}", outcome.tail);
        assert_eq!(outcome.tail, vec!["it's $1 /bin/sh", "err"]);
        assert_eq!(outcome.log, Err(LogError::NotConfigured));
        let outcome = run_offline(&step("-x"), &[]).await;
        assert!(matches!(outcome.status, StepStatus::Failed { .. }), "{:?}", outcome);
    }

    #[tokio::test]
    async fn output_is_masked_and_the_last_line_kept_without_newline() {
        let outcome = run_offline(&step("printf 'key=p4ssw0rd\\nend'"), &[Secret::new("p4ssw0rd")]).await;
        assert_eq!(outcome.tail, vec!["key=***", "end"]);
    }
}
