//! The step's process: `/bin/sh -c` in a clean environment under the [`ResourceLimits`], in a
//! process group of its own that is killed when the step ends, times out or is dropped, its
//! stdout and stderr read from one pipe into the step's log until every writer has closed it.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use baton_schemas::config::builder::StepLimits;
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use super::Executor;
use super::log::LogSink;
use super::sandbox::{EtcFiles, Network, STARTED_FD, Sandbox, Spec, WORKSPACE, disk_usage};
use super::workdir::resolve_workdir;
use super::{STEP_PATH, StepError, StepRequest, StepRunner, StepStatus};

/// Bytes read from the step's output pipe at once.
const READ_CHUNK: usize = 64 * 1024;
/// How long output is still read after the step ended, for processes that escaped its group.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for the kernel to hand back a killed step's exit status.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits a step runs under, so one runaway step cannot starve the service. CPU time,
/// memory, open files and processes are rlimits, not a cgroup: each process of the step gets the
/// full amount of the first three, and the processes count everything its user runs. The
/// workspace's disk use is watched while the step runs. Wall-clock time is bounded separately,
/// by the step's `timeout`. A value of 0 leaves that limit as the service's own. A limit above
/// the service's own hard limit is lowered to it (a process cannot raise its hard limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// CPU seconds one process may use (`ulimit -t`, soft and hard): past them it is killed.
    pub cpu_seconds: u64,
    /// Address space one process may map, in bytes (`ulimit -v`); allocations beyond it fail.
    pub memory_bytes: u64,
    /// File descriptors one process may hold (`ulimit -n`).
    pub open_files: u64,
    /// Processes and threads of the step's user (`ulimit -p`, `RLIMIT_NPROC`); a fork beyond
    /// them fails.
    pub processes: u64,
    /// Bytes the step may add to its workspace (watched while it runs; past them it is
    /// killed), and the largest file it may write (`ulimit -f`).
    pub disk_bytes: u64,
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
            processes: limits.processes,
            disk_bytes: limits.disk_bytes,
        }
    }
}

impl StepRunner {
    /// Starts the step and follows it to its end, feeding its output to `sink`.
    pub(super) async fn execute(&self, request: &StepRequest<'_>, sink: &mut LogSink) -> StepStatus {
        let (workspace, workdir) = match resolve_workdir(request.workspace, request.step.workdir.as_deref()) {
            Ok(dirs) => dirs,
            Err(error) => return StepStatus::Error(error.into()),
        };
        let limits = request.limits.unwrap_or(&self.limits);
        let (reader, writer) = match std::io::pipe() {
            Ok(pipe) => pipe,
            Err(e) => return StepStatus::Error(StepError::Output { reason: e.to_string() }),
        };
        let reader = match pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
            Ok(reader) => reader,
            Err(e) => return StepStatus::Error(StepError::Output { reason: e.to_string() }),
        };
        let sandboxed = matches!(self.executor, Executor::Sandbox(_));
        let args: Vec<OsString> = vec![
            "-c".into(),
            wrapper_script(limits, &HardLimits::current(), sandboxed).into(),
            "sh".into(),
            request.step.run.clone().into(),
        ];
        let home: OsString = if sandboxed {
            WORKSPACE.into()
        } else {
            workspace.clone().into_os_string()
        };
        // Later entries win: the step's own variables may set PATH or HOME.
        let env: Vec<(OsString, OsString)> = [("PATH".into(), STEP_PATH.into()), ("HOME".into(), home)]
            .into_iter()
            .chain(request.step.env.iter().map(|(k, v)| (k.into(), v.into())))
            .chain(request.extra_env.iter().map(|(k, v)| (k.into(), v.into())))
            .chain(
                request
                    .secret_env
                    .iter()
                    .map(|(k, v)| (k.into(), std::ffi::OsStr::from_bytes(v.expose()).to_owned())),
            )
            .collect();
        // What the workspace holds before the step: its disk limit counts what the step adds.
        let disk = (limits.disk_bytes > 0).then(|| DiskWatch {
            root: workspace.clone(),
            before: disk_usage(&workspace),
            limit: limits.disk_bytes,
        });
        let launch = Launch {
            workspace: &workspace,
            workdir: &workdir,
            network: request.step.network,
            args: &args,
            env: &env,
            output: &writer,
        };
        let started = match &self.executor {
            Executor::Unsandboxed => launch.unsandboxed(),
            Executor::Sandbox(sandbox) => launch.sandboxed(sandbox, sink).await,
            // Dispatched by `StepRunner::run` to its pods; never started on this host.
            Executor::Kubernetes(_) => Err(StepError::Spawn {
                reason: "the kubernetes executor runs steps as pods, not on the service's host".to_owned(),
            }),
        };
        // The launch holds the pipe's write ends: drop them, or the output never ends.
        drop(writer);
        let Started {
            mut child,
            mut group,
            _network,
            _etc,
        } = match started {
            Ok(started) => started,
            Err(error) => return StepStatus::Error(error),
        };
        tracing::debug!(pid = ?child.id(), workdir = %workdir.display(), executor = self.executor.name(), "step started");

        let deadline = tokio::time::Instant::now() + request.step.timeout;
        let stop_reading = CancellationToken::new();
        let (status, output_abandoned) = {
            let pump = pump_output(reader, sink, stop_reading.clone());
            tokio::pin!(pump);
            let over_disk = watch_disk(disk);
            tokio::pin!(over_disk);
            let mut output_ended = false;
            let exited = tokio::select! {
                exited = tokio::time::timeout_at(deadline, child.wait()) => Ended::Exited(exited),
                () = &mut pump => {
                    output_ended = true;
                    tokio::select! {
                        exited = tokio::time::timeout_at(deadline, child.wait()) => Ended::Exited(exited),
                        used = &mut over_disk => Ended::OverDisk(used),
                    }
                }
                used = &mut over_disk => Ended::OverDisk(used),
            };
            // Whatever happened, nothing of the step outlives it: background processes it left
            // behind hold its output open and use the service's resources.
            group.kill();
            let status = match exited {
                Ended::Exited(Ok(Ok(exit))) => exit_status(exit),
                Ended::Exited(Ok(Err(e))) => StepStatus::Error(StepError::Wait { reason: e.to_string() }),
                Ended::Exited(Err(_elapsed)) => {
                    if tokio::time::timeout(REAP_TIMEOUT, child.wait()).await.is_err() {
                        tracing::warn!("killed step did not exit within {REAP_TIMEOUT:?}");
                    }
                    StepStatus::TimedOut
                }
                Ended::OverDisk(used) => {
                    let _ = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
                    StepStatus::LimitExceeded {
                        limit: "disk_bytes",
                        detail: format!(
                            "it added {used} bytes to its workspace, over its {} bytes",
                            limits.disk_bytes
                        ),
                    }
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
        if matches!(status, StepStatus::Failed { .. }) {
            // A limit the step's own words point at (a failed allocation, fork or open, a file
            // cut at its size) is named; a step killed by a signal (directly, or as the shell
            // reports it) may have met any of them.
            let hit = LIMIT_WORDS
                .iter()
                .find(|(_, words)| words.iter().any(|w| sink.tail_mentions(w)))
                .map(|(limit, _)| *limit);
            let killed = matches!(status, StepStatus::Failed { signal: Some(_), .. })
                || matches!(status, StepStatus::Failed { exit_code: Some(code), .. } if code > 128);
            if let Some(limit) = hit {
                sink.note(&format!(
                    "baton: the step reached its limit {limit}; it ran under these limits: {}",
                    describe(limits)
                ));
            } else if killed {
                sink.note(&format!("baton: the step ran under these limits: {}", describe(limits)));
            }
        }
        status
    }
}

/// How many times a sandbox that fails to set itself up is started again before the step is
/// given up: bubblewrap now and then fails to configure a new network namespace's loopback
/// under load, before the step's command ever runs.
const SANDBOX_ATTEMPTS: u32 = 3;
/// Longest a sandbox may take to start the step's command.
const SANDBOX_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What starting the step needs.
struct Launch<'a> {
    workspace: &'a Path,
    workdir: &'a Path,
    network: bool,
    args: &'a [OsString],
    env: &'a [(OsString, OsString)],
    /// The write end of the output pipe, cloned into each start.
    output: &'a std::io::PipeWriter,
}

/// A started step: its process, its process group, and what lives as long as it does.
struct Started {
    child: tokio::process::Child,
    group: ProcessGroup,
    _network: Option<Network>,
    _etc: Option<EtcFiles>,
}

impl Launch<'_> {
    /// stdout and stderr of one start: both the one pipe.
    fn output(&self) -> Result<(Stdio, Stdio), StepError> {
        let clone = || {
            self.output
                .try_clone()
                .map_err(|e| StepError::Output { reason: e.to_string() })
        };
        Ok((Stdio::from(clone()?), Stdio::from(clone()?)))
    }

    fn spawn(&self, mut command: tokio::process::Command) -> Result<(tokio::process::Child, ProcessGroup), StepError> {
        let (stdout, stderr) = self.output()?;
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| StepError::Spawn { reason: e.to_string() })?;
        let group = ProcessGroup::of(child.id());
        Ok((child, group))
    }

    fn unsandboxed(&self) -> Result<Started, StepError> {
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .args(self.args)
            .current_dir(self.workdir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let (child, group) = self.spawn(command)?;
        Ok(Started {
            child,
            group,
            _network: None,
            _etc: None,
        })
    }

    /// Starts the step in `sandbox`: again when the sandbox fails to set itself up (the step's
    /// wrapper never reported that it runs), at most [`SANDBOX_ATTEMPTS`] times in all.
    async fn sandboxed(&self, sandbox: &Sandbox, sink: &mut LogSink) -> Result<Started, StepError> {
        let failed = |reason: String| StepError::Sandbox { reason };
        sandbox
            .prepare(self.workspace)
            .map_err(|e| failed(format!("cannot hand the workspace to the step's user: {e}")))?;
        let relative = self.workdir.strip_prefix(self.workspace).unwrap_or(Path::new(""));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let etc = EtcFiles::write(sandbox.host_ids(), self.network).map_err(|e| failed(e.to_string()))?;
            let (marker_read, marker_write) = std::io::pipe().map_err(|e| failed(e.to_string()))?;
            let spec = Spec {
                workspace: self.workspace,
                workdir: relative,
                network: self.network,
                args: self.args.to_vec(),
                env: self.env.to_vec(),
                started: OwnedFd::from(marker_write),
            };
            let built = sandbox.command(spec, &etc).map_err(|e| failed(e.to_string()))?;
            let (mut child, mut group) = self.spawn(built.command)?;
            let network = match built.network {
                Some(handshake) => handshake.complete(sandbox.slirp()).await.map(Some),
                None => Ok(None),
            };
            let why = match network {
                Ok(network) => match started(marker_read).await {
                    Ok(()) => {
                        return Ok(Started {
                            child,
                            group,
                            _network: network,
                            _etc: Some(etc),
                        });
                    }
                    Err(why) => why,
                },
                Err(e) => format!("its network did not start: {e}"),
            };
            group.kill();
            let _ = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
            if attempt >= SANDBOX_ATTEMPTS {
                return Err(failed(format!(
                    "{why} ({attempt} attempts; the log has bubblewrap's own words)"
                )));
            }
            tracing::warn!(attempt, %why, "the step's sandbox did not start; starting it again");
            sink.note(&format!("baton: the sandbox did not start ({why}); starting it again"));
        }
    }
}

/// Waits for the step's wrapper to report, on the marker pipe, that it runs inside the sandbox.
async fn started(mut marker: std::io::PipeReader) -> Result<(), String> {
    let read = tokio::task::spawn_blocking(move || {
        let mut byte = [0_u8; 1];
        std::io::Read::read(&mut marker, &mut byte)
    });
    match tokio::time::timeout(SANDBOX_START_TIMEOUT, read).await {
        Ok(Ok(Ok(1))) => Ok(()),
        Ok(Ok(Ok(_))) => Err("it ended before the step's command ran".to_owned()),
        Ok(Ok(Err(e))) => Err(format!("its start could not be followed: {e}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "it did not start the step's command within {}",
            humantime::format_duration(SANDBOX_START_TIMEOUT)
        )),
    }
}

/// What a step's processes print when they meet a limit, by the limit's name.
const LIMIT_WORDS: &[(&str, &[&str])] = &[
    (
        "memory_bytes",
        &["Cannot allocate memory", "MemoryError", "out of memory", "bad_alloc"],
    ),
    ("processes", &["Cannot fork", "fork: Resource temporarily unavailable"]),
    ("open_files", &["Too many open files"]),
    ("disk_bytes", &["File size limit exceeded", "File too large"]),
];

/// How waiting for a step ended.
enum Ended {
    Exited(Result<std::io::Result<ExitStatus>, tokio::time::error::Elapsed>),
    /// The workspace grew past the disk limit by this many bytes.
    OverDisk(u64),
}

/// The workspace's disk limit: what it held before the step, and how much the step may add.
struct DiskWatch {
    root: std::path::PathBuf,
    before: u64,
    limit: u64,
}

/// How often the workspace's size is measured while a step with a disk limit runs. A step
/// writing faster than the disk can be measured overshoots by at most what it writes in this
/// time, and no single file of it grows past the limit (`ulimit -f`).
const DISK_INTERVAL: Duration = Duration::from_millis(250);

/// Ends (with what the step added) once the workspace grew past its limit; never without one.
async fn watch_disk(watch: Option<DiskWatch>) -> u64 {
    let Some(watch) = watch else {
        return std::future::pending().await;
    };
    let watch = std::sync::Arc::new(watch);
    loop {
        tokio::time::sleep(DISK_INTERVAL).await;
        let measured = std::sync::Arc::clone(&watch);
        let Ok(now) = tokio::task::spawn_blocking(move || disk_usage(&measured.root)).await else {
            continue;
        };
        let added = now.saturating_sub(watch.before);
        if added > watch.limit {
            return added;
        }
    }
}

/// The limits as a step's log reads them.
fn describe(limits: &ResourceLimits) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("cpu_seconds", limits.cpu_seconds),
        ("memory_bytes", limits.memory_bytes),
        ("open_files", limits.open_files),
        ("processes", limits.processes),
        ("disk_bytes", limits.disk_bytes),
    ] {
        if value > 0 {
            parts.push(format!("{name} {value}"));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
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
    processes: Option<u64>,
    file_bytes: Option<u64>,
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
            processes: hard(Resource::RLIMIT_NPROC),
            file_bytes: hard(Resource::RLIMIT_FSIZE),
        }
    }
}

/// The script the step's command runs under: it sets the limits (soft and hard, so the step
/// cannot raise them), sends stderr into the same pipe as stdout and `exec`s a fresh shell on
/// the command. The command is passed as `$1`, never pasted into the script, so no quoting in it
/// can change the script.
fn wrapper_script(limits: &ResourceLimits, hard: &HardLimits, marker: bool) -> String {
    let clamp = |wanted: u64, hard: Option<u64>| match (wanted, hard) {
        (0, _) => None,
        (wanted, Some(hard)) => Some(wanted.min(hard)),
        (wanted, None) => Some(wanted),
    };
    let mut script = String::new();
    if marker {
        // Inside the sandbox: say that the step's command is about to run, and close the pipe
        // so the command itself never holds it.
        script.push_str(&format!(
            "printf . >&{STARTED_FD} && exec {STARTED_FD}>&- || exit 125; "
        ));
    }
    let settings = [
        ("-t", clamp(limits.cpu_seconds, hard.cpu_seconds)),
        // `ulimit -v` counts KiB; round down, but never to 0 (which would forbid everything).
        (
            "-v",
            clamp(limits.memory_bytes, hard.memory_bytes).map(|b| (b / 1024).max(1)),
        ),
        ("-n", clamp(limits.open_files, hard.open_files)),
        ("-p", clamp(limits.processes, hard.processes)),
        // `ulimit -f` counts 512-byte blocks in dash (Debian's /bin/sh); never 0 either.
        (
            "-f",
            clamp(limits.disk_bytes, hard.file_bytes).map(|b| (b / 512).max(1)),
        ),
    ];
    for (flag, value) in settings {
        if let Some(value) = value {
            script.push_str(&format!("ulimit {flag} {value} || exit 125; "));
        }
    }
    script.push_str("exec /bin/sh -c -- \"$1\"");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_sets_limits_within_the_hard_limits_and_never_pastes_the_command() {
        let limits = ResourceLimits {
            cpu_seconds: 60,
            memory_bytes: 1 << 30,
            open_files: 100_000,
            processes: 200,
            disk_bytes: 1 << 20,
        };
        let hard = HardLimits {
            cpu_seconds: None,
            memory_bytes: None,
            open_files: Some(4096),
            processes: Some(100),
            file_bytes: None,
        };
        assert_eq!(
            wrapper_script(&limits, &hard, false),
            "ulimit -t 60 || exit 125; ulimit -v 1048576 || exit 125; ulimit -n 4096 || exit 125; \
             ulimit -p 100 || exit 125; ulimit -f 2048 || exit 125; exec /bin/sh -c -- \"$1\""
        );
        let unlimited = ResourceLimits {
            cpu_seconds: 0,
            memory_bytes: 0,
            open_files: 0,
            processes: 0,
            disk_bytes: 0,
        };
        assert_eq!(wrapper_script(&unlimited, &hard, false), "exec /bin/sh -c -- \"$1\"");
        assert_eq!(
            wrapper_script(&unlimited, &hard, true),
            "printf . >&5 && exec 5>&- || exit 125; exec /bin/sh -c -- \"$1\""
        );
    }
}
