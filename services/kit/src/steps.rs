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
//! ```no_run
//! # async fn example(topology: &baton_kit::fabric::Topology, step: &baton_schemas::pipeline::Step) {
//! use std::collections::BTreeMap;
//! use baton_kit::steps::{StepRequest, StepRunner};
//!
//! let runner = StepRunner::new(topology);
//! let outcome = runner
//!     .run(StepRequest {
//!         run_id: "build-42",
//!         step,
//!         workspace: std::path::Path::new("/var/cache/baton/ws/build-42"),
//!         extra_env: &BTreeMap::new(),
//!         secrets: &[],
//!     })
//!     .await;
//! let report = outcome.report(&step.name); // what `build.finished` carries
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::SeekFrom;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use async_nats::{Client, Subject};
use baton_schemas::config::builder::StepLimits;
use baton_schemas::payloads::{LogLocation, StepReport};
use baton_schemas::pipeline::Step;
use baton_schemas::subjects;
use bytes::Bytes;
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fabric::Topology;
use crate::secret::Secret;

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

/// Bytes read from the step's output pipe at once.
const READ_CHUNK: usize = 64 * 1024;
/// The spooled log is written to its file in blocks of about this size.
const SPOOL_BLOCK: usize = 256 * 1024;
/// Live lines waiting to be published; beyond this, lines are skipped live (never in the store).
const LIVE_QUEUE: usize = 1024;
/// Longest one live publish may wait for the NATS client before the line is given up.
const LIVE_PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest the live publisher may take to send what is queued once the step has ended.
const LIVE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long output is still read after the step ended, for processes that escaped its group.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for the kernel to hand back a killed step's exit status.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// Limits applied to every step.
    limits: ResourceLimits,
    /// Longest storing one log may take, so a NATS outage cannot hold a finished step.
    store_timeout: Duration,
}

impl fmt::Debug for StepRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepRunner")
            .field("live", &self.live.is_some())
            .field("bucket", &self.store.as_ref().map(|_| &self.bucket))
            .field("limits", &self.limits)
            .field("store_timeout", &self.store_timeout)
            .finish()
    }
}

/// Per-process rlimits every process of a step runs under, so one runaway step cannot starve
/// the builder. They are rlimits, not a cgroup: each process of the step gets the full amount.
/// Wall-clock time is bounded separately, by the step's `timeout`. A value of 0 leaves that
/// limit as the builder's own. A limit above the builder's own hard limit is lowered to it (a
/// process cannot raise its hard limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// CPU seconds one process may use (`ulimit -t`, soft and hard): past them it is killed.
    pub cpu_seconds: u64,
    /// Address space one process may map, in bytes (`ulimit -v`); allocations beyond it fail.
    pub memory_bytes: u64,
    /// File descriptors one process may hold (`ulimit -n`).
    pub open_files: u64,
}

impl Default for ResourceLimits {
    /// The defaults of the builder's configuration ([`StepLimits`]), so both agree.
    fn default() -> Self {
        StepLimits::default().into()
    }
}

impl From<StepLimits> for ResourceLimits {
    fn from(limits: StepLimits) -> Self {
        Self::from(&limits)
    }
}

impl From<&StepLimits> for ResourceLimits {
    fn from(limits: &StepLimits) -> Self {
        Self {
            cpu_seconds: limits.cpu_seconds,
            memory_bytes: limits.memory_bytes,
            open_files: limits.open_files,
        }
    }
}

/// One step to run: the step, where, and what the caller adds to it.
#[derive(Debug, Clone, Copy)]
pub struct StepRequest<'a> {
    /// The build or test run: names the live log subject and the stored log object.
    pub run_id: &'a str,
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
    /// It ran longer than its `timeout`; its whole process group was killed.
    TimedOut,
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
            Self::Error(_) => "error",
        }
    }

    /// The exit code, when the process exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Succeeded => Some(0),
            Self::Failed { exit_code, .. } => *exit_code,
            Self::TimedOut | Self::Error(_) => None,
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
        }
    }
}

/// A `workdir` that cannot be used: steps must stay inside their workspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkdirError {
    /// An absolute `workdir` would point outside the workspace.
    #[error("workdir `{workdir}` is refused: it escapes the workspace (write a path relative to the repository root)")]
    Absolute {
        /// The `workdir` as written.
        workdir: String,
    },
    /// A `..` component could climb out of the workspace.
    #[error("workdir `{workdir}` is refused: it escapes the workspace (`..` is not allowed)")]
    ParentDir {
        /// The `workdir` as written.
        workdir: String,
    },
    /// A symlink in the workspace leads outside it.
    #[error("workdir `{workdir}` is refused: it escapes the workspace through a symlink to {}", resolved.display())]
    SymlinkEscape {
        /// The `workdir` as written.
        workdir: String,
        /// Where it resolves to.
        resolved: PathBuf,
    },
    /// The `workdir` is not a directory of the workspace.
    #[error("workdir `{workdir}` is not a directory of the workspace: {reason}")]
    Missing {
        /// The `workdir` as written.
        workdir: String,
        /// Why.
        reason: String,
    },
    /// The workspace itself cannot be resolved.
    #[error("workspace {} cannot be used: {reason}", path.display())]
    Workspace {
        /// The workspace.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where a step's whole log is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRef {
    /// Object store bucket, e.g. `baton-logs`.
    pub bucket: String,
    /// Object name, `<run>/<step>.log`.
    pub object: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of lines (each ends with `\n` in the stored log).
    pub lines: u64,
    /// SHA-256 of the stored bytes, hex: lets a reader check the log it fetched is whole.
    pub sha256: String,
}

impl From<&LogRef> for LogLocation {
    fn from(log: &LogRef) -> Self {
        Self {
            bucket: log.bucket.clone(),
            object: log.object.clone(),
            bytes: log.bytes,
            lines: log.lines,
        }
    }
}

/// Why a step's log could not be stored. The step's status never depends on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The runner was built without an object store ([`StepRunner::offline`]).
    #[error("no log store is configured")]
    NotConfigured,
    /// The temporary file the log is spooled to failed, so the log would not be whole.
    #[error("cannot spool the log to a temporary file: {reason}")]
    Spool {
        /// Why.
        reason: String,
    },
    /// The object store refused the log or could not be reached in time.
    #[error("cannot store the log as {object} in {bucket}: {reason}")]
    Store {
        /// The bucket.
        bucket: String,
        /// The object name.
        object: String,
        /// Why.
        reason: String,
    },
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
            store_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }

    /// The same runner with other resource limits (the builder's `limits` setting).
    #[must_use]
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
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
    /// can go wrong is in the outcome. Dropping the future kills the step's process group.
    #[tracing::instrument(skip_all, fields(run = %request.run_id, step = %request.step.name))]
    pub async fn run(&self, request: StepRequest<'_>) -> StepOutcome {
        let started = Instant::now();
        let live = self.live.as_ref().map(|client| {
            LiveLog::start(
                client.clone(),
                subjects::log_subject(request.run_id, &request.step.name),
            )
        });
        let (masker, masking_error) = match Masker::new(request.secrets) {
            Ok(masker) => (masker, None),
            Err(reason) => (Masker::default(), Some(StepError::Masking { reason })),
        };
        let mut sink = LogSink::new(masker, live);

        let status = match masking_error {
            Some(error) => StepStatus::Error(error),
            None => self.execute(&request, &mut sink).await,
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
        tracing::info!(status = %status, duration_ms = duration.as_millis(), "step ended");
        StepOutcome {
            status,
            duration,
            log,
            tail,
            live_skipped,
        }
    }

    /// Starts the step and follows it to its end, feeding its output to `sink`.
    async fn execute(&self, request: &StepRequest<'_>, sink: &mut LogSink) -> StepStatus {
        let (workspace, workdir) = match resolve_workdir(request.workspace, request.step.workdir.as_deref()) {
            Ok(dirs) => dirs,
            Err(error) => return StepStatus::Error(error.into()),
        };
        let (reader, writer) = match std::io::pipe() {
            Ok(pipe) => pipe,
            Err(e) => return StepStatus::Error(StepError::Output { reason: e.to_string() }),
        };
        let output = match writer.try_clone() {
            Ok(stderr) => (Stdio::from(writer), Stdio::from(stderr)),
            Err(e) => return StepStatus::Error(StepError::Output { reason: e.to_string() }),
        };
        let reader = match pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
            Ok(reader) => reader,
            Err(e) => return StepStatus::Error(StepError::Output { reason: e.to_string() }),
        };

        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(wrapper_script(&self.limits, &HardLimits::current()))
            .arg("sh")
            .arg(&request.step.run)
            .current_dir(&workdir)
            .env_clear()
            .env("PATH", STEP_PATH)
            .env("HOME", &workspace)
            .envs(&request.step.env)
            .envs(request.extra_env)
            .stdin(Stdio::null())
            .stdout(output.0)
            .stderr(output.1)
            .process_group(0)
            .kill_on_drop(true);
        let spawned = command.spawn();
        // The command holds the pipe's write ends: drop them, or the output never ends.
        drop(command);
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return StepStatus::Error(StepError::Spawn { reason: e.to_string() }),
        };
        let mut group = ProcessGroup::of(child.id());
        tracing::debug!(pid = ?child.id(), workdir = %workdir.display(), "step started");

        let deadline = tokio::time::Instant::now() + request.step.timeout;
        let stop_reading = CancellationToken::new();
        let (status, output_abandoned) = {
            let pump = pump_output(reader, sink, stop_reading.clone());
            tokio::pin!(pump);
            let mut output_ended = false;
            let exited = tokio::select! {
                exited = tokio::time::timeout_at(deadline, child.wait()) => exited,
                () = &mut pump => {
                    output_ended = true;
                    tokio::time::timeout_at(deadline, child.wait()).await
                }
            };
            // Whatever happened, nothing of the step outlives it: background processes it left
            // behind hold its output open and use the builder's resources.
            group.kill();
            let status = match exited {
                Ok(Ok(exit)) => exit_status(exit),
                Ok(Err(e)) => StepStatus::Error(StepError::Wait { reason: e.to_string() }),
                Err(_elapsed) => {
                    if tokio::time::timeout(REAP_TIMEOUT, child.wait()).await.is_err() {
                        tracing::warn!("killed step did not exit within {REAP_TIMEOUT:?}");
                    }
                    StepStatus::TimedOut
                }
            };
            let mut abandoned = false;
            if !output_ended && tokio::time::timeout(OUTPUT_GRACE, &mut pump).await.is_err() {
                // A process that left the group (setsid) still holds the output open.
                stop_reading.cancel();
                pump.await;
                abandoned = true;
            }
            (status, abandoned)
        };
        if output_abandoned {
            sink.note("baton: output written after the step ended was not captured");
        }
        status
    }
}

fn exit_status(exit: ExitStatus) -> StepStatus {
    if exit.success() {
        StepStatus::Succeeded
    } else {
        StepStatus::Failed {
            exit_code: exit.code(),
            signal: exit.signal(),
        }
    }
}

/// Reads the step's output until it ends (every writer closed it) or `stop` is cancelled.
/// Only the read is ever interrupted, never a write of the spooled log.
async fn pump_output(mut reader: pipe::Receiver, sink: &mut LogSink, stop: CancellationToken) {
    let mut buffer = vec![0_u8; READ_CHUNK];
    loop {
        let read = tokio::select! {
            read = reader.read(&mut buffer) => read,
            () = stop.cancelled() => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) => sink.feed(&buffer[..n]).await,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the step's output failed");
                sink.note(&format!("baton: reading the step's output failed: {e}"));
                break;
            }
        }
    }
}

/// The step's process group, killed (`SIGKILL`) once: when the step ends, times out, or its
/// future is dropped. The group id is the step's pid, which the kernel does not hand to a new
/// process while any member of the group lives; once the group is empty the kill finds nothing.
struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    fn of(pid: Option<u32>) -> Self {
        Self(pid.and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw))
    }

    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            match killpg(group, Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => tracing::warn!(error = %e, %group, "cannot kill the step's process group"),
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The builder's own hard limits, which a step's limits cannot exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HardLimits {
    cpu_seconds: Option<u64>,
    memory_bytes: Option<u64>,
    open_files: Option<u64>,
}

impl HardLimits {
    /// `None` for an unlimited (or unreadable) limit.
    fn current() -> Self {
        let hard = |resource| match getrlimit(resource) {
            Ok((_, hard)) if hard != nix::sys::resource::RLIM_INFINITY => Some(hard),
            _ => None,
        };
        Self {
            cpu_seconds: hard(Resource::RLIMIT_CPU),
            memory_bytes: hard(Resource::RLIMIT_AS),
            open_files: hard(Resource::RLIMIT_NOFILE),
        }
    }
}

/// The script the step's command runs under: it sets the limits (soft and hard, so the step
/// cannot raise them), sends stderr into the same pipe as stdout and `exec`s a fresh shell on
/// the command. The command is passed as `$1`, never pasted into the script, so no quoting in it
/// can change the script.
fn wrapper_script(limits: &ResourceLimits, hard: &HardLimits) -> String {
    let clamp = |wanted: u64, hard: Option<u64>| match (wanted, hard) {
        (0, _) => None,
        (wanted, Some(hard)) => Some(wanted.min(hard)),
        (wanted, None) => Some(wanted),
    };
    let mut script = String::new();
    let settings = [
        ("-t", clamp(limits.cpu_seconds, hard.cpu_seconds)),
        // `ulimit -v` counts KiB; round down, but never to 0 (which would forbid everything).
        (
            "-v",
            clamp(limits.memory_bytes, hard.memory_bytes).map(|b| (b / 1024).max(1)),
        ),
        ("-n", clamp(limits.open_files, hard.open_files)),
    ];
    for (flag, value) in settings {
        if let Some(value) = value {
            script.push_str(&format!("ulimit {flag} {value} || exit 125; "));
        }
    }
    script.push_str("exec /bin/sh -c -- \"$1\"");
    script
}

/// Where a step runs: the canonical workspace and the canonical working directory inside it.
///
/// # Errors
/// When `workdir` is absolute, contains `..`, resolves outside the workspace through a symlink,
/// or is not an existing directory.
pub fn resolve_workdir(workspace: &Path, workdir: Option<&str>) -> Result<(PathBuf, PathBuf), WorkdirError> {
    let root = workspace.canonicalize().map_err(|e| WorkdirError::Workspace {
        path: workspace.to_owned(),
        reason: e.to_string(),
    })?;
    let Some(workdir) = workdir.filter(|w| !w.is_empty()) else {
        return Ok((root.clone(), root));
    };
    let relative = check_workdir(workdir)?;
    let resolved = root.join(relative).canonicalize().map_err(|e| WorkdirError::Missing {
        workdir: workdir.to_owned(),
        reason: e.to_string(),
    })?;
    if !resolved.starts_with(&root) {
        return Err(WorkdirError::SymlinkEscape {
            workdir: workdir.to_owned(),
            resolved,
        });
    }
    if !resolved.is_dir() {
        return Err(WorkdirError::Missing {
            workdir: workdir.to_owned(),
            reason: "not a directory".to_owned(),
        });
    }
    Ok((root, resolved))
}

/// The lexical part of the workdir check: relative, and no `..`.
fn check_workdir(workdir: &str) -> Result<&Path, WorkdirError> {
    let path = Path::new(workdir);
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => {
                return Err(WorkdirError::Absolute {
                    workdir: workdir.to_owned(),
                });
            }
            Component::ParentDir => {
                return Err(WorkdirError::ParentDir {
                    workdir: workdir.to_owned(),
                });
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(path)
}

/// Finds secret values in a line. Every occurrence is found, overlapping ones included, in one
/// pass over the line whatever the number of secrets.
#[derive(Debug, Default)]
struct Masker {
    /// `None` when there is nothing to mask: the common case costs nothing.
    searcher: Option<AhoCorasick>,
    /// Length of the longest value: how much of a cut line must still be searched.
    longest: usize,
}

impl Masker {
    fn new(secrets: &[Secret]) -> Result<Self, String> {
        let mut values: Vec<&[u8]> = secrets
            .iter()
            .flat_map(|secret| secret.expose().split(|b| *b == b'\n'))
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|value| value.len() >= MIN_MASKED_LEN)
            .collect();
        values.sort_unstable();
        values.dedup();
        if values.is_empty() {
            return Ok(Self::default());
        }
        let longest = values.iter().map(|v| v.len()).max().unwrap_or(0);
        let searcher = AhoCorasick::new(&values).map_err(|e| e.to_string())?;
        Ok(Self {
            searcher: Some(searcher),
            longest,
        })
    }

    /// The byte ranges of `line` to hide, sorted and merged.
    fn ranges(&self, line: &[u8]) -> Vec<(usize, usize)> {
        let Some(searcher) = &self.searcher else {
            return Vec::new();
        };
        let mut ranges: Vec<(usize, usize)> = searcher
            .find_overlapping_iter(line)
            .map(|m| (m.start(), m.end()))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

/// Writes `line` to `out` with every secret replaced by [`MASK`], keeping at most about `limit`
/// bytes of it; a cut never reveals part of a secret and is followed by a marker saying how many
/// bytes were left out (counting `dropped`, the bytes of the line never kept in memory).
fn render_line(line: &[u8], masker: &Masker, limit: usize, dropped: u64, out: &mut Vec<u8>) {
    let mut position = 0;
    for (start, end) in masker.ranges(line) {
        if start >= limit {
            break;
        }
        out.extend_from_slice(&line[position..start]);
        out.extend_from_slice(MASK.as_bytes());
        position = end;
    }
    let end = if position >= limit {
        position
    } else if line.len() <= limit {
        line.len()
    } else {
        char_boundary(line, limit).max(position)
    };
    out.extend_from_slice(&line[position..end]);
    let cut = (line.len() - end) as u64 + dropped;
    if cut > 0 {
        out.extend_from_slice(format!(" [baton: line cut, {cut} more bytes]").as_bytes());
    }
}

/// The largest index `<= at` not inside a UTF-8 sequence (as far as the bytes are UTF-8), so a
/// cut line stays readable.
fn char_boundary(bytes: &[u8], at: usize) -> usize {
    let mut at = at.min(bytes.len());
    let floor = at.saturating_sub(3);
    while at > floor && at < bytes.len() && (bytes[at] & 0b1100_0000) == 0b1000_0000 {
        at -= 1;
    }
    at
}

/// Splits a byte stream into lines, keeping at most `keep` bytes of any line in memory.
#[derive(Debug)]
struct LineSplitter {
    /// The line being assembled (its first `keep` bytes).
    line: Vec<u8>,
    /// Bytes of the current line beyond `keep`, counted but not kept.
    dropped: u64,
    keep: usize,
}

impl LineSplitter {
    fn new(keep: usize) -> Self {
        Self {
            line: Vec::new(),
            dropped: 0,
            keep,
        }
    }

    /// Feeds output; `emit(line, dropped)` gets every completed line without its `\n`.
    fn feed(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8], u64)) {
        while let Some(newline) = memchr::memchr(b'\n', chunk) {
            let part = &chunk[..newline];
            if self.line.is_empty() && self.dropped == 0 && part.len() <= self.keep {
                emit(part, 0);
            } else {
                self.append(part);
                emit(&self.line, self.dropped);
                self.line.clear();
                self.dropped = 0;
            }
            chunk = &chunk[newline + 1..];
        }
        self.append(chunk);
    }

    /// Emits the last line when the output did not end with `\n`.
    fn finish(&mut self, emit: &mut impl FnMut(&[u8], u64)) {
        if !self.line.is_empty() || self.dropped > 0 {
            emit(&self.line, self.dropped);
            self.line.clear();
            self.dropped = 0;
        }
    }

    fn append(&mut self, part: &[u8]) {
        let take = self.keep.saturating_sub(self.line.len()).min(part.len());
        self.line.extend_from_slice(&part[..take]);
        self.dropped += (part.len() - take) as u64;
    }
}

/// Where a step's lines go: masked and cut, then to the spool file, the tail and the live log.
struct LogSink {
    splitter: LineSplitter,
    lines: LineSink,
}

/// Everything done with one complete line (split from [`LogSink`] so the splitter can lend
/// its buffer while the line is handled).
struct LineSink {
    masker: Masker,
    /// Reused buffer for masked or cut lines.
    scratch: Vec<u8>,
    spool: Spool,
    tail: Tail,
    live: Option<LiveLog>,
    lines: u64,
}

impl LogSink {
    fn new(masker: Masker, live: Option<LiveLog>) -> Self {
        Self {
            splitter: LineSplitter::new(MAX_LINE_BYTES + masker.longest),
            lines: LineSink {
                masker,
                scratch: Vec::new(),
                spool: Spool::new(),
                tail: Tail::default(),
                live,
                lines: 0,
            },
        }
    }

    async fn feed(&mut self, chunk: &[u8]) {
        let lines = &mut self.lines;
        self.splitter
            .feed(chunk, &mut |line, dropped| lines.line(line, dropped));
        if self.lines.spool.pending.len() >= SPOOL_BLOCK {
            self.lines.spool.write_pending().await;
        }
    }

    /// Adds a line of Baton's own (after the step's output, which it completes first).
    fn note(&mut self, text: &str) {
        let lines = &mut self.lines;
        self.splitter.finish(&mut |line, dropped| lines.line(line, dropped));
        self.lines.line(text.as_bytes(), 0);
    }

    /// Ends the log: flushes the live log, stores the spooled log, returns the tail.
    async fn finish(
        mut self,
        store: Option<&ObjectStore>,
        bucket: &str,
        object: &str,
        store_timeout: Duration,
    ) -> (Result<LogRef, LogError>, Vec<String>, u64) {
        let lines = &mut self.lines;
        self.splitter.finish(&mut |line, dropped| lines.line(line, dropped));
        let LineSink {
            spool,
            tail,
            live,
            lines,
            ..
        } = self.lines;
        // The live log drains while the stored log is written: neither waits for the other.
        let drained = async {
            match live {
                Some(live) => live.finish().await,
                None => 0,
            }
        };
        let stored = async {
            match store {
                None => Err(LogError::NotConfigured),
                Some(store) => {
                    let stored = tokio::time::timeout(store_timeout, spool.store(store, bucket, object, lines)).await;
                    stored.unwrap_or_else(|_| {
                        Err(LogError::Store {
                            bucket: bucket.to_owned(),
                            object: object.to_owned(),
                            reason: format!("timed out after {}", humantime::format_duration(store_timeout)),
                        })
                    })
                }
            }
        };
        let (live_skipped, log) = tokio::join!(drained, stored);
        (log, tail.into_lines(), live_skipped)
    }
}

impl LineSink {
    fn line(&mut self, raw: &[u8], dropped: u64) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let line = if self.masker.searcher.is_none() && dropped == 0 && raw.len() <= MAX_LINE_BYTES {
            raw
        } else {
            scratch.clear();
            render_line(raw, &self.masker, MAX_LINE_BYTES, dropped, &mut scratch);
            &scratch[..]
        };
        self.spool.push(line);
        self.tail.push(line);
        if let Some(live) = &mut self.live {
            live.offer(line);
        }
        self.lines += 1;
        self.scratch = scratch;
    }
}

/// The whole log, spooled to an anonymous temporary file (deleted when closed) so a flood of
/// output never accumulates in memory.
struct Spool {
    /// The file, or the first failure to create or write it (the log is no longer whole).
    file: Result<tokio::fs::File, String>,
    /// Lines not yet written to the file.
    pending: Vec<u8>,
    hasher: Sha256,
    bytes: u64,
}

impl Spool {
    fn new() -> Self {
        Self {
            file: tempfile::tempfile()
                .map(tokio::fs::File::from_std)
                .map_err(|e| e.to_string()),
            pending: Vec::with_capacity(SPOOL_BLOCK),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, line: &[u8]) {
        if self.file.is_ok() {
            self.pending.extend_from_slice(line);
            self.pending.push(b'\n');
        }
    }

    async fn write_pending(&mut self) {
        if let Ok(file) = &mut self.file {
            match file.write_all(&self.pending).await {
                Ok(()) => {
                    self.hasher.update(&self.pending);
                    self.bytes += self.pending.len() as u64;
                }
                Err(e) => self.file = Err(e.to_string()),
            }
        }
        self.pending.clear();
    }

    async fn store(mut self, store: &ObjectStore, bucket: &str, object: &str, lines: u64) -> Result<LogRef, LogError> {
        self.write_pending().await;
        let spool_error = |reason: String| LogError::Spool { reason };
        let mut file = self.file.map_err(spool_error)?;
        file.flush().await.map_err(|e| spool_error(e.to_string()))?;
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(|e| spool_error(e.to_string()))?;
        let sha256 = hex::encode(self.hasher.finalize());
        let meta = ObjectMetadata {
            name: object.to_owned(),
            description: Some("Baton step log".to_owned()),
            metadata: [("sha256".to_owned(), sha256.clone())].into(),
            ..Default::default()
        };
        let info = store.put(meta, &mut file).await.map_err(|e| LogError::Store {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
            reason: e.to_string(),
        })?;
        if info.size as u64 != self.bytes {
            return Err(LogError::Store {
                bucket: bucket.to_owned(),
                object: object.to_owned(),
                reason: format!("stored {} bytes of {}", info.size, self.bytes),
            });
        }
        Ok(LogRef {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
            bytes: self.bytes,
            lines,
            sha256,
        })
    }
}

/// The last [`TAIL_LINES`] lines, each cut at [`TAIL_LINE_BYTES`]; buffers are reused so a flood
/// of lines does not allocate.
#[derive(Default)]
struct Tail {
    lines: VecDeque<Vec<u8>>,
}

impl Tail {
    fn push(&mut self, line: &[u8]) {
        let mut kept = if self.lines.len() == TAIL_LINES {
            self.lines.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        kept.clear();
        if line.len() <= TAIL_LINE_BYTES {
            kept.extend_from_slice(line);
        } else {
            kept.extend_from_slice(&line[..char_boundary(line, TAIL_LINE_BYTES)]);
            kept.extend_from_slice(" …".as_bytes());
        }
        self.lines.push_back(kept);
    }

    fn into_lines(self) -> Vec<String> {
        self.lines
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .collect()
    }
}

/// Live lines go through a bounded queue to a task publishing them on core NATS: the step never
/// waits for NATS, and lines are skipped (and counted, and announced) when NATS falls behind.
struct LiveLog {
    queue: mpsc::Sender<Bytes>,
    publisher: JoinHandle<()>,
    /// Lines skipped since the last announcement.
    skipped: u64,
    skipped_total: u64,
}

impl LiveLog {
    fn start(client: Client, subject: String) -> Self {
        let (queue, lines) = mpsc::channel(LIVE_QUEUE);
        Self {
            queue,
            publisher: tokio::spawn(publish_live(client, Subject::from(subject), lines)),
            skipped: 0,
            skipped_total: 0,
        }
    }

    fn offer(&mut self, line: &[u8]) {
        if self.skipped > 0 && self.queue.capacity() > 0 {
            self.announce_skipped();
        }
        if self.queue.capacity() == 0 || self.queue.try_send(Bytes::copy_from_slice(line)).is_err() {
            self.skipped += 1;
        }
    }

    fn announce_skipped(&mut self) {
        let notice = format!(
            "baton: {} lines not shown live (output faster than the live log); the stored log has them",
            self.skipped
        );
        if self.queue.try_send(Bytes::from(notice)).is_ok() {
            self.skipped_total += self.skipped;
            self.skipped = 0;
        }
    }

    /// Lets queued lines go out (for a short while at most); returns how many were skipped.
    async fn finish(mut self) -> u64 {
        if self.skipped > 0 {
            self.announce_skipped();
        }
        let skipped = self.skipped_total + self.skipped;
        drop(self.queue);
        if tokio::time::timeout(LIVE_DRAIN_TIMEOUT, &mut self.publisher)
            .await
            .is_err()
        {
            self.publisher.abort();
            tracing::debug!("live log lines still queued were dropped");
        }
        skipped
    }
}

async fn publish_live(client: Client, subject: Subject, mut lines: mpsc::Receiver<Bytes>) {
    let mut failures = 0_u64;
    while let Some(line) = lines.recv().await {
        let published = tokio::time::timeout(LIVE_PUBLISH_TIMEOUT, client.publish(subject.clone(), line)).await;
        if !matches!(published, Ok(Ok(()))) {
            failures += 1;
            if failures == 1 {
                tracing::warn!(%subject, "NATS is not taking live log lines; the stored log will have them");
            }
        }
    }
    if failures == 0 {
        // So subscribers have every line before the step's outcome is announced.
        let _ = tokio::time::timeout(LIVE_DRAIN_TIMEOUT, client.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> Masker {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Masker::new(&secrets).unwrap()
    }

    fn render(line: &str, masker: &Masker, limit: usize) -> String {
        let mut out = Vec::new();
        render_line(line.as_bytes(), masker, limit, 0, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_occurrence_of_every_secret_is_masked() {
        let m = masker(&["hunter22", "tok-9f8e", "abc"]);
        assert_eq!(
            render("pw=hunter22 again hunter22, tok-9f8e; abc stays", &m, 1000),
            "pw=*** again ***, ***; abc stays"
        );
        // Overlapping secrets hide their union, not just the first found.
        let m = masker(&["abcdef", "defghi"]);
        assert_eq!(render("xxabcdefghiyy", &m, 1000), "xx***yy");
        // Each line of a multi-line secret (a PEM key) is masked on its own.
        let m = masker(&["-----BEGIN KEY-----\r\nAAAABBBB\nCC\n"]);
        assert_eq!(render("AAAABBBB", &m, 1000), "***");
        assert_eq!(render("-----BEGIN KEY-----", &m, 1000), "***");
        assert_eq!(render("CC", &m, 1000), "CC");
    }

    #[test]
    fn short_or_no_secrets_mask_nothing() {
        let m = masker(&["a", "42", "xyz", ""]);
        assert!(m.searcher.is_none());
        assert_eq!(render("a 42 xyz", &m, 1000), "a 42 xyz");
    }

    #[test]
    fn long_lines_are_cut_with_a_marker_never_inside_a_secret() {
        let none = Masker::default();
        assert_eq!(render("0123456789", &none, 4), "0123 [baton: line cut, 6 more bytes]");
        assert_eq!(render("0123", &none, 4), "0123");
        // A secret straddling the cut is hidden whole.
        let m = masker(&["SECRETVALUE"]);
        let out = render("012SECRETVALUE456", &m, 5);
        assert_eq!(out, "012*** [baton: line cut, 3 more bytes]");
        assert!(!out.contains("SE"));
        // Bytes the splitter already dropped are counted in the marker.
        let mut out = Vec::new();
        render_line(b"0123", &none, 4, 10, &mut out);
        assert_eq!(out, b"0123 [baton: line cut, 10 more bytes]");
        // A cut never splits a UTF-8 character.
        assert_eq!(render("ééé", &none, 3), "é [baton: line cut, 4 more bytes]");
    }

    #[test]
    fn splitter_bounds_memory_and_keeps_partial_lines() {
        let mut splitter = LineSplitter::new(8);
        let mut lines = Vec::new();
        let mut emit = |line: &[u8], dropped: u64| lines.push((String::from_utf8_lossy(line).into_owned(), dropped));
        splitter.feed(b"one\ntw", &mut emit);
        splitter.feed(b"o\n", &mut emit);
        for _ in 0..1000 {
            splitter.feed(b"xxxxxxxxxx", &mut emit);
            assert!(splitter.line.len() <= 8);
        }
        splitter.feed(b"\nlast", &mut emit);
        splitter.finish(&mut emit);
        assert_eq!(
            lines,
            vec![
                ("one".to_owned(), 0),
                ("two".to_owned(), 0),
                ("xxxxxxxx".to_owned(), 9992),
                ("last".to_owned(), 0)
            ]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines_cut_short() {
        let mut tail = Tail::default();
        for i in 0..200 {
            tail.push(format!("line {i}").as_bytes());
        }
        tail.push(&vec![b'x'; 10_000]);
        let lines = tail.into_lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 151");
        assert!(lines[49].len() <= TAIL_LINE_BYTES + 4 && lines[49].ends_with('…'));
    }

    #[test]
    fn workdir_must_stay_in_the_workspace() {
        assert!(matches!(check_workdir("/etc"), Err(WorkdirError::Absolute { .. })));
        assert!(matches!(
            check_workdir("a/../../b"),
            Err(WorkdirError::ParentDir { .. })
        ));
        assert!(matches!(check_workdir(".."), Err(WorkdirError::ParentDir { .. })));
        assert!(check_workdir("./src/app").is_ok());

        let workspace = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(workspace.path().join("src/app")).unwrap();
        std::fs::write(workspace.path().join("file"), "").unwrap();
        std::os::unix::fs::symlink(outside.path(), workspace.path().join("out")).unwrap();
        std::os::unix::fs::symlink("src", workspace.path().join("in")).unwrap();
        let root = workspace.path().canonicalize().unwrap();

        assert_eq!(
            resolve_workdir(workspace.path(), None).unwrap(),
            (root.clone(), root.clone())
        );
        assert_eq!(
            resolve_workdir(workspace.path(), Some("src/app")).unwrap().1,
            root.join("src/app")
        );
        assert_eq!(
            resolve_workdir(workspace.path(), Some("in/app")).unwrap().1,
            root.join("src/app")
        );
        let escape = resolve_workdir(workspace.path(), Some("out")).unwrap_err();
        assert!(matches!(escape, WorkdirError::SymlinkEscape { .. }));
        assert!(escape.to_string().contains("escapes the workspace"), "{escape}");
        assert!(matches!(
            resolve_workdir(workspace.path(), Some("nope")),
            Err(WorkdirError::Missing { .. })
        ));
        assert!(matches!(
            resolve_workdir(workspace.path(), Some("file")),
            Err(WorkdirError::Missing { .. })
        ));
    }

    #[test]
    fn wrapper_sets_limits_within_the_hard_limits_and_never_pastes_the_command() {
        let limits = ResourceLimits {
            cpu_seconds: 60,
            memory_bytes: 1 << 30,
            open_files: 100_000,
        };
        let hard = HardLimits {
            cpu_seconds: None,
            memory_bytes: None,
            open_files: Some(4096),
        };
        assert_eq!(
            wrapper_script(&limits, &hard),
            "ulimit -t 60 || exit 125; ulimit -v 1048576 || exit 125; ulimit -n 4096 || exit 125; \
             exec /bin/sh -c -- \"$1\""
        );
        let unlimited = ResourceLimits {
            cpu_seconds: 0,
            memory_bytes: 0,
            open_files: 0,
        };
        assert_eq!(wrapper_script(&unlimited, &hard), "exec /bin/sh -c -- \"$1\"");
    }

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
        }
    }

    async fn run_offline(step: &Step, secrets: &[Secret]) -> StepOutcome {
        let workspace = tempfile::tempdir().unwrap();
        StepRunner::offline()
            .run(StepRequest {
                run_id: "run-1",
                step,
                workspace: workspace.path(),
                extra_env: &BTreeMap::new(),
                secrets,
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
