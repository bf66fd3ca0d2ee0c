//! How the harness finds, starts and stops the programs it runs, written once for every server
//! it owns (nats-server, the registry, the Kubernetes control plane) and for suites that run
//! Baton's own binaries.
//!
//! - A [`Program`] is an installed executable: found through its environment variable, else
//!   `PATH`, else a few fixed places, with a message saying how to install it when it is missing.
//!   [`service_binary`] finds a Baton service binary by building it with cargo (a no-op when it is
//!   up to date), so a suite always runs the current code.
//! - A [`Process`] owns one running child: its output goes to a log file whose last lines every
//!   error quotes, [`Process::wait_ready`] polls a readiness probe while failing fast if the
//!   process exits, and dropping it kills (SIGKILL) and reaps it, so nothing outlives the test.
//! - [`run`] runs a command to completion (git, openssl, skopeo) and turns a failure into an error
//!   carrying its stderr.
//!
//! Processes are not put in a process group of their own: a test runner that kills the test's
//! group on timeout (nextest does) takes them down too.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// Log lines quoted in errors.
pub const LOG_TAIL_LINES: usize = 40;

/// The packages of Baton's services; each builds one binary of the same name.
pub const SERVICE_PACKAGES: [&str; 6] = [
    "baton-listener",
    "baton-builder",
    "baton-tester",
    "baton-promoter",
    "baton-deployer",
    "baton-chatops",
];

/// The CLI's package: its `baton` binary runs every service in one process (`baton up`).
pub const CLI_PACKAGE: &str = "baton";

/// An installed program the harness needs, and how to get it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// The executable's file name, looked for on `PATH`.
    pub name: &'static str,
    /// The environment variable naming the executable; it wins over `PATH` when set.
    pub env: Option<&'static str>,
    /// How `just setup` installs it, for the error message: "Debian package `etcd-server`".
    pub install: &'static str,
    /// Absolute paths tried after `PATH` (Debian installs some programs into directories a test
    /// runner's `PATH` may lack).
    pub fallbacks: &'static [&'static str],
}

impl Program {
    /// Finds the executable from the process environment: `$env` if set, else `name` on `PATH`,
    /// else the fallbacks.
    ///
    /// # Errors
    /// [`HarnessError::ProgramNotFound`], saying how to install it.
    pub fn locate(&self) -> Result<PathBuf, HarnessError> {
        let bin_override = self.env.and_then(std::env::var_os);
        self.locate_in(bin_override, std::env::var_os("PATH"))
    }

    /// [`locate`](Self::locate) with the values of `$env` and `PATH` given.
    pub(crate) fn locate_in(
        &self,
        bin_override: Option<OsString>,
        path: Option<OsString>,
    ) -> Result<PathBuf, HarnessError> {
        if let Some(binary) = bin_override.filter(|value| !value.is_empty()) {
            let binary = PathBuf::from(binary);
            return if is_executable_file(&binary) {
                Ok(binary)
            } else {
                Err(self.not_found(format!(
                    "{}={} is not an executable file",
                    self.env.unwrap_or("the override"),
                    binary.display()
                )))
            };
        }
        path.iter()
            .flat_map(std::env::split_paths)
            // An empty entry means the current directory; never run a binary from there.
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(self.name))
            .chain(self.fallbacks.iter().map(PathBuf::from))
            .find(|candidate| is_executable_file(candidate))
            .ok_or_else(|| {
                let mut reason = format!("`{}` is not on PATH", self.name);
                if !self.fallbacks.is_empty() {
                    reason.push_str(&format!(" nor in {}", self.fallbacks.join(", ")));
                }
                if let Some(env) = self.env {
                    reason.push_str(&format!(" and {env} is unset"));
                }
                self.not_found(reason)
            })
    }

    fn not_found(&self, reason: String) -> HarnessError {
        let mut fix = format!("Install it with `just setup` ({})", self.install);
        if let Some(env) = self.env {
            fix.push_str(&format!(" or set {env} to its path"));
        }
        HarnessError::ProgramNotFound {
            program: self.name,
            reason,
            fix,
        }
    }
}

/// A regular file (after symlinks) with an execute bit.
pub(crate) fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The path of Baton service binary `name` (one of [`SERVICE_PACKAGES`], or [`CLI_PACKAGE`]'s
/// `baton`, which runs them all with `baton up`), built with `cargo build --bins` of every service
/// package and the CLI into the target directory (and profile) the running test binary comes from. The build runs once per test process; when the binaries are up
/// to date it only checks.
///
/// # Errors
/// When cargo cannot be run or the build fails (the error quotes cargo's output).
pub fn service_binary(name: &str) -> Result<PathBuf, HarnessError> {
    static PROFILE_DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = PROFILE_DIR.get() {
        return Ok(dir.join(name));
    }
    let dir = build_services()?;
    Ok(PROFILE_DIR.get_or_init(|| dir).join(name))
}

/// Runs `cargo build --bins` of the service packages; returns `<target>/<profile>`.
fn build_services() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    // <target>/<profile>/deps/<suite>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent);
    let Some((profile_dir, target_dir)) = profile_dir.and_then(|dir| Some((dir, dir.parent()?))) else {
        return Err(HarnessError::Io {
            path: exe.clone(),
            source: std::io::Error::other("the test binary is not in <target>/<profile>/deps"),
        });
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--bins", "--target-dir"])
        .arg(target_dir)
        .args(
            SERVICE_PACKAGES
                .iter()
                .chain([&CLI_PACKAGE])
                .flat_map(|package| ["-p", package]),
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|profile| profile == "release") {
        build.arg("--release");
    }
    run(&mut build)?;
    Ok(profile_dir.to_owned())
}

/// Runs `command` to completion with no stdin and returns its stdout.
///
/// # Errors
/// [`HarnessError::Spawn`] when it cannot be launched, [`HarnessError::CommandFailed`] (with its
/// stderr) when it exits non-zero.
pub fn run(command: &mut Command) -> Result<Vec<u8>, HarnessError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            binary: PathBuf::from(command.get_program()),
            source,
        })?;
    if !output.status.success() {
        return Err(HarnessError::CommandFailed {
            command: command_line(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

/// `program arg...` as one line, for messages.
pub(crate) fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where a process's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFile {
    /// Emptied first: the file holds this process's output only.
    Fresh,
    /// Appended to, so it keeps what earlier processes wrote (a server restarted on the same
    /// files); errors still quote only this process's lines.
    Appended,
}

/// One running child process with its log, killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    /// Names it in errors: `etcd`, `nats-server on port 4222 (monitoring 8222)`.
    name: String,
    child: Child,
    /// Its stdout and stderr.
    log_path: PathBuf,
    /// Length of the log when it was spawned: errors quote only what came after.
    log_offset: u64,
}

impl Process {
    /// Spawns `command` with stdin closed and stdout and stderr going to `log_path`.
    ///
    /// # Errors
    /// When the log cannot be opened or the program cannot be launched.
    pub fn spawn(
        name: impl Into<String>,
        command: &mut Command,
        log_path: &Path,
        log: LogFile,
    ) -> Result<Self, HarnessError> {
        let log_error = |source| HarnessError::Io {
            path: log_path.to_owned(),
            source,
        };
        let stdout = OpenOptions::new()
            .create(true)
            .append(log == LogFile::Appended)
            .write(true)
            .truncate(log == LogFile::Fresh)
            .open(log_path)
            .map_err(log_error)?;
        let log_offset = stdout.metadata().map_err(log_error)?.len();
        let stderr = stdout.try_clone().map_err(log_error)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                binary: PathBuf::from(command.get_program()),
                source,
            })?;
        Ok(Self {
            name: name.into(),
            child,
            log_path: log_path.to_owned(),
            log_offset,
        })
    }

    /// What errors call it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last [`LOG_TAIL_LINES`] lines it wrote, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, self.log_offset, LOG_TAIL_LINES)
    }

    /// How it ended, or `None` while it runs.
    ///
    /// # Errors
    /// When the process cannot be waited for (it is not our child any more).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        self.child.try_wait().map_err(|source| self.stop_error(source))
    }

    /// `Err(`[`HarnessError::Exited`]`)`, quoting its log, if it has ended.
    ///
    /// # Errors
    /// When it has exited or cannot be waited for.
    pub fn ensure_running(&mut self) -> Result<(), HarnessError> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => Err(HarnessError::Exited {
                process: self.name.clone(),
                status,
                log_tail: self.log_tail(),
            }),
        }
    }

    /// The error for a process that runs but was not ready after `timeout`; `last_check` says
    /// what the last probe saw.
    pub fn not_ready(&self, timeout: Duration, last_check: String) -> HarnessError {
        HarnessError::NotReady {
            process: self.name.clone(),
            timeout,
            last_check,
            log_tail: self.log_tail(),
        }
    }

    /// Calls `probe` every `poll` until it returns `Ok`; its `Err` says what is not ready yet.
    /// Blocks the thread.
    ///
    /// # Errors
    /// [`HarnessError::Exited`] as soon as the process ends, [`HarnessError::NotReady`] after
    /// `timeout`. The process is left running either way.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        poll: Duration,
        mut probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            let last_check = match probe() {
                Ok(()) => return Ok(()),
                Err(last_check) => last_check,
            };
            if Instant::now() >= deadline {
                return Err(self.not_ready(timeout, last_check));
            }
            thread::sleep(poll);
        }
    }

    /// [`wait_ready`](Self::wait_ready) with an asynchronous probe, sleeping on Tokio's timer.
    ///
    /// # Errors
    /// As [`wait_ready`](Self::wait_ready).
    pub async fn wait_ready_async(
        &mut self,
        timeout: Duration,
        poll: Duration,
        mut probe: impl AsyncFnMut() -> Result<(), String>,
    ) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            let last_check = match probe().await {
                Ok(()) => return Ok(()),
                Err(last_check) => last_check,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(self.not_ready(timeout, last_check));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Kills it with SIGKILL (no chance to flush, like a crash or an OOM kill) and reaps it so no
    /// zombie is left. A no-op once it has been reaped.
    ///
    /// # Errors
    /// When the OS refuses to signal or wait for our own child.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        // Once reaped, `kill` and `wait` return at once without touching a (reused) pid.
        self.child
            .kill()
            .and_then(|()| self.child.wait())
            .map(drop)
            .map_err(|source| self.stop_error(source))
    }

    fn stop_error(&self, source: std::io::Error) -> HarnessError {
        HarnessError::Stop {
            process: self.name.clone(),
            pid: self.child.id(),
            source,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Nowhere to report a failure from `drop`; the process is gone either way unless the OS
        // refuses to kill our own child.
        let _ = self.kill();
    }
}

/// The last `lines` lines of the log file at `path`, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    tail(path, 0, lines)
}

/// The last `lines` lines of `path` from byte `offset` on; `(no output)` when there are none.
fn tail(path: &Path, offset: u64, lines: usize) -> String {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut bytes)
    });
    if let Err(error) = read {
        return format!("(could not read {}: {error})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return String::from("(no output)");
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SH: Program = Program {
        name: "sh",
        env: Some("BATON_TEST_SH"),
        install: "Debian package `dash`",
        fallbacks: &["/bin/sh"],
    };

    fn shell(script: &str) -> Command {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("tempdir");
        let program = Program { fallbacks: &[], ..SH };
        let message = program
            .locate_in(None, Some(empty.path().into()))
            .expect_err("nothing in an empty dir")
            .to_string();
        assert_eq!(
            message,
            "sh not found: `sh` is not on PATH and BATON_TEST_SH is unset. Install it with `just setup` \
             (Debian package `dash`) or set BATON_TEST_SH to its path"
        );
        let missing = empty.path().join("sh");
        let message = program
            .locate_in(Some(missing.clone().into()), None)
            .expect_err("not a file")
            .to_string();
        assert!(
            message.contains(&format!(
                "BATON_TEST_SH={} is not an executable file",
                missing.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn the_override_wins_then_path_then_the_fallbacks() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("sh");
        fs::write(&binary, "#!/bin/sh\n")?;
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))?;
        let elsewhere = tempfile::tempdir()?;

        assert_eq!(
            SH.locate_in(Some(binary.clone().into()), Some(OsString::new()))?,
            binary
        );
        assert_eq!(SH.locate_in(None, Some(dir.path().into()))?, binary);
        assert_eq!(SH.locate_in(None, Some(elsewhere.path().into()))?, Path::new("/bin/sh"));
        Ok(())
    }

    #[test]
    fn a_process_that_exits_is_reported_with_only_its_own_output() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("out.log");
        fs::write(&log, "an earlier run\n")?;
        let mut process = Process::spawn(
            "the shell",
            &mut shell("echo boom >&2; exit 3"),
            &log,
            LogFile::Appended,
        )?;

        let error = process
            .wait_ready(Duration::from_secs(10), Duration::from_millis(10), || {
                Err("not yet".into())
            })
            .expect_err("it exits");
        let HarnessError::Exited {
            process: name,
            log_tail: quoted,
            ..
        } = &error
        else {
            anyhow::bail!("expected Exited, got {error:?}");
        };
        assert_eq!(name, "the shell");
        assert_eq!(quoted, "boom");
        assert!(error.to_string().contains("exit status: 3"), "{error}");
        assert_eq!(log_tail(&log, 10), "an earlier run\nboom", "appended");
        Ok(())
    }

    #[test]
    fn a_process_that_never_gets_ready_is_reported_with_the_last_check() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("out.log");
        fs::write(&log, "stale\n")?;
        let mut process = Process::spawn(
            "sleeper",
            &mut shell("echo waiting; exec sleep 60"),
            &log,
            LogFile::Fresh,
        )?;
        let mut checks = 0;
        let error = process
            .wait_ready(Duration::from_millis(200), Duration::from_millis(10), || {
                checks += 1;
                Err(format!("check {checks}"))
            })
            .expect_err("never ready");
        let message = error.to_string();
        assert!(
            message.starts_with("sleeper was not ready after 200ms (check "),
            "{message}"
        );
        assert!(!message.contains("stale"), "a fresh log: {message}");
        assert!(checks > 1);
        Ok(())
    }

    #[test]
    fn drop_kills_and_reaps() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut process = Process::spawn(
            "sleeper",
            &mut shell("exec sleep 60"),
            &dir.path().join("out.log"),
            LogFile::Fresh,
        )?;
        let pid = process.id();
        process.ensure_running()?;
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        process.kill()?;
        process.kill()?; // idempotent
        drop(process);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped, not a zombie");
        Ok(())
    }

    #[test]
    fn a_failed_command_carries_its_stderr() {
        let error = run(&mut shell("echo nope >&2; exit 2")).expect_err("fails");
        let message = error.to_string();
        assert!(
            message.starts_with("`/bin/sh -c echo nope >&2; exit 2` failed"),
            "{message}"
        );
        assert!(message.ends_with(": nope"), "{message}");
        assert_eq!(run(&mut shell("printf ok")).expect("succeeds"), b"ok");
    }

    #[test]
    fn log_tails_keep_the_last_lines() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("log");
        assert!(log_tail(&log, 3).starts_with("(could not read"));
        fs::write(&log, "")?;
        assert_eq!(log_tail(&log, 3), "(no output)");
        fs::write(&log, "1\n2\n3\n4\n")?;
        assert_eq!(log_tail(&log, 2), "3\n4");
        assert_eq!(tail(&log, 4, 10), "3\n4");
        Ok(())
    }
}
