//! A real OCI registry for the suites: CNCF Distribution (`docker-registry serve`, Debian's
//! `docker-registry` package), owned the way [`NatsServer`](crate::NatsServer) is: a free port
//! on 127.0.0.1, its storage, config and log in a temporary directory, ready (`GET /v2/`
//! answers 200) when [`RegistryServer::start`] returns, killed and removed on `Drop`.
//!
//! It is a plain-HTTP registry without authentication and with deletes enabled. Tests check
//! what a push left behind with independent means: [`RegistryServer::blob_count`] counts the
//! blobs in the storage directory, [`RegistryServer::skopeo_inspect`] asks skopeo, another
//! client than the one under test. [`RegistryServer::push_busybox_base`] gives suites a real,
//! non-scratch base image: the static busybox of Debian's `busybox-static` in one layer, written
//! as an OCI layout by this module and copied in by skopeo, so it does not depend on Baton's
//! image code either.
//!
//! `just setup` installs the three packages; `DOCKER_REGISTRY_BIN`, `SKOPEO_BIN` and
//! `BUSYBOX_BIN` point at other binaries.
//!
//! ```no_run
//! # fn main() -> Result<(), baton_tests::registry::RegistryHarnessError> {
//! let registry = baton_tests::registry::RegistryServer::start()?;
//! let digest = registry.push_busybox_base("base/busybox", "1")?;
//! let manifest = registry.skopeo_inspect(&format!("{}/base/busybox@{digest}", registry.address()), true)?;
//! assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Environment variable naming the `docker-registry` executable; when unset, `PATH` is searched.
pub const DOCKER_REGISTRY_BIN_ENV: &str = "DOCKER_REGISTRY_BIN";
/// Environment variable naming the `skopeo` executable; when unset, `PATH` is searched.
pub const SKOPEO_BIN_ENV: &str = "SKOPEO_BIN";
/// Environment variable naming a static busybox; default [`DEFAULT_BUSYBOX`].
pub const BUSYBOX_BIN_ENV: &str = "BUSYBOX_BIN";
/// Where Debian's `busybox-static` installs its binary.
pub const DEFAULT_BUSYBOX: &str = "/usr/bin/busybox";

/// How long a freshly spawned registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh-port attempts: another process may take the port between our probe and the bind.
const START_ATTEMPTS: usize = 5;
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Log lines quoted in start-up errors.
const LOG_TAIL_LINES: usize = 40;
/// The `created` time of the busybox base: fixed, so its digest is the same on every run.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// `PATH` of the busybox base, as Docker's official images set it.
const BASE_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the harness could not start the registry or inspect it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryHarnessError {
    /// A needed executable is missing.
    #[error(
        "{program} not found: {reason}. Install it with `just setup` (Debian package `{package}`) or set \
         {env} to its path"
    )]
    BinaryNotFound {
        /// The program looked for.
        program: &'static str,
        /// The Debian package that ships it.
        package: &'static str,
        /// The environment variable overriding its location.
        env: &'static str,
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
    /// The executable could not be launched.
    #[error("could not spawn {binary}")]
    Spawn {
        /// The executable that was launched.
        binary: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The registry exited before it was ready, typically because its port was taken.
    #[error("docker-registry for 127.0.0.1:{port} exited before it was ready ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// The port it was asked to listen on.
        port: u16,
        /// How it ended.
        status: ExitStatus,
        /// The end of its output.
        log_tail: String,
    },
    /// The registry kept running but did not answer `GET /v2/` in time; it has been killed.
    #[error(
        "docker-registry on 127.0.0.1:{port} was not ready after {timeout:?} ({last_check}); last log lines:\n{log_tail}"
    )]
    NotReady {
        /// The port it was asked to listen on.
        port: u16,
        /// How long the harness waited.
        timeout: Duration,
        /// The outcome of the last probe.
        last_check: String,
        /// The end of its output.
        log_tail: String,
    },
    /// Killing or reaping the registry failed.
    #[error("could not stop docker-registry (pid {pid})")]
    Stop {
        /// Its process id.
        pid: u32,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// skopeo failed.
    #[error("`skopeo {args}` failed ({status}): {stderr}")]
    Skopeo {
        /// Its arguments.
        args: String,
        /// How it ended.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// skopeo printed something that is not JSON.
    #[error("`skopeo {args}` printed no JSON: {source}")]
    SkopeoOutput {
        /// Its arguments.
        args: String,
        /// The parse failure.
        #[source]
        source: serde_json::Error,
    },
}

/// A real CNCF Distribution registry on 127.0.0.1, owned by one test.
#[derive(Debug)]
pub struct RegistryServer {
    /// The running process; `None` after [`kill`](Self::kill).
    child: Option<Child>,
    /// The port it listens on (plain HTTP).
    port: u16,
    /// The filesystem storage driver's root: blobs and repositories live under
    /// `docker/registry/v2/`.
    storage_dir: PathBuf,
    /// The registry's output, quoted in errors.
    log_path: PathBuf,
    /// Owns the config, the storage and the log; removed on drop, after the process is gone.
    temp_dir: TempDir,
}

impl RegistryServer {
    /// Starts a registry on a free port and waits until `GET /v2/` answers 200. If it exits
    /// during start-up (its port taken in the race between probing and binding) it is retried
    /// on fresh ports a few times.
    ///
    /// The binary is `$DOCKER_REGISTRY_BIN`, else `docker-registry` on `PATH`.
    pub fn start() -> Result<Self, RegistryHarnessError> {
        let binary = locate(
            "docker-registry",
            "docker-registry",
            DOCKER_REGISTRY_BIN_ENV,
            std::env::var_os(DOCKER_REGISTRY_BIN_ENV),
            std::env::var_os("PATH"),
        )?;
        let temp_dir = tempfile::Builder::new()
            .prefix("baton-registry-")
            .tempdir()
            .map_err(|source| RegistryHarnessError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let storage_dir = temp_dir.path().join("storage");
        fs::create_dir(&storage_dir).map_err(|source| RegistryHarnessError::Io {
            path: storage_dir.clone(),
            source,
        })?;
        let mut server = Self {
            child: None,
            port: 0,
            storage_dir,
            log_path: temp_dir.path().join("registry.log"),
            temp_dir,
        };
        let mut attempt = 1;
        loop {
            let [port] = crate::reserve_ports().map_err(|source| RegistryHarnessError::Io {
                path: PathBuf::from("127.0.0.1:0"),
                source,
            })?;
            server.port = port;
            match server.launch(&binary) {
                Err(RegistryHarnessError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                Err(error) => return Err(error),
                Ok(()) => return Ok(server),
            }
        }
    }

    /// `127.0.0.1:<port>`: the registry part of image references.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`, for raw HTTP requests.
    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The storage root (filesystem driver).
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The registry's output.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Simulates an outage: kills the registry (SIGKILL) and reaps it. Its port then refuses
    /// connections. Does nothing if it is already down.
    pub fn kill(&mut self) -> Result<(), RegistryHarnessError> {
        match self.child.take() {
            Some(child) => kill_and_reap(child),
            None => Ok(()),
        }
    }

    /// How many blobs (layers, configs and manifests: Distribution stores all three as blobs)
    /// the registry holds, counted from its storage: the `data` files under
    /// `docker/registry/v2/blobs/sha256/*/*/`.
    pub fn blob_count(&self) -> usize {
        let blobs = self.storage_dir.join("docker/registry/v2/blobs/sha256");
        let entries = |dir: &Path| fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok);
        entries(&blobs)
            .flat_map(|prefix| entries(&prefix.path()).collect::<Vec<_>>())
            .filter(|blob| blob.path().join("data").is_file())
            .count()
    }

    /// Asks skopeo (`skopeo inspect --tls-verify=false`) about `reference`
    /// (`127.0.0.1:<port>/<repository>:<tag>` or `@<digest>`): the manifest as stored with
    /// `raw`, else the image config.
    pub fn skopeo_inspect(&self, reference: &str, raw: bool) -> Result<Value, RegistryHarnessError> {
        let mode = if raw { "--raw" } else { "--config" };
        let output = skopeo(&["inspect", "--tls-verify=false", mode, &format!("docker://{reference}")])?;
        serde_json::from_slice(&output).map_err(|source| RegistryHarnessError::SkopeoOutput {
            args: format!("inspect {mode} docker://{reference}"),
            source,
        })
    }

    /// Pushes a tiny, real base image to `<repository>:<tag>` and returns its manifest digest:
    /// one layer (written as an uncompressed tar, which skopeo gzips on the way in) holding
    /// `/bin/busybox` (the static busybox, `$BUSYBOX_BIN` or [`DEFAULT_BUSYBOX`]) and the symlink
    /// `/bin/sh -> busybox`; a config with `PATH`, `Cmd ["/bin/sh"]`, a label and a history
    /// entry. Everything is fixed (mtimes 0, `created` 1970), so the digest is the same on every
    /// run. The image is written as an OCI layout and copied in by skopeo.
    pub fn push_busybox_base(&self, repository: &str, tag: &str) -> Result<String, RegistryHarnessError> {
        let busybox = std::env::var_os(BUSYBOX_BIN_ENV)
            .filter(|value| !value.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_BUSYBOX), PathBuf::from);
        let program = fs::read(&busybox).map_err(|error| RegistryHarnessError::BinaryNotFound {
            program: "busybox",
            package: "busybox-static",
            env: BUSYBOX_BIN_ENV,
            reason: format!("cannot read {}: {error}", busybox.display()),
        })?;

        let mut layer = Vec::new();
        tar_entry(&mut layer, "bin/", b'5', 0o755, b"", "");
        tar_entry(&mut layer, "bin/busybox", b'0', 0o755, &program, "");
        tar_entry(&mut layer, "bin/sh", b'2', 0o777, b"", "busybox");
        layer.resize(layer.len() + 1024, 0);
        let diff_id = sha256(&layer);
        let config = serde_json::to_vec(&json!({
            "created": EPOCH,
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": [BASE_PATH_ENV],
                "Cmd": ["/bin/sh"],
                "Labels": {"org.opencontainers.image.title": "baton-test-busybox"},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": EPOCH, "created_by": "baton-tests: busybox-static in /bin"}],
        }))
        .expect("JSON serializes");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        }))
        .expect("JSON serializes");

        let layout = tempfile::Builder::new()
            .prefix("busybox-layout-")
            .tempdir_in(self.temp_dir.path())
            .map_err(|source| RegistryHarnessError::Io {
                path: self.temp_dir.path().to_owned(),
                source,
            })?;
        let write = |name: &str, bytes: &[u8]| {
            let path = layout.path().join(name);
            fs::create_dir_all(path.parent().expect("inside the layout"))
                .and_then(|()| fs::write(&path, bytes))
                .map_err(|source| RegistryHarnessError::Io { path, source })
        };
        for blob in [&layer, &config, &manifest] {
            write(&format!("blobs/sha256/{}", hex::encode(Sha256::digest(blob))), blob)?;
        }
        write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut manifest_descriptor = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        manifest_descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [manifest_descriptor]});
        write("index.json", &serde_json::to_vec(&index).expect("JSON serializes"))?;

        let digest_file = layout.path().join("pushed-digest");
        let source = format!("oci:{}:{tag}", layout.path().display());
        let destination = format!("docker://{}/{repository}:{tag}", self.address());
        let digest_arg = format!("--digestfile={}", digest_file.display());
        skopeo(&[
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &digest_arg,
            &source,
            &destination,
        ])?;
        let digest = fs::read_to_string(&digest_file).map_err(|source| RegistryHarnessError::Io {
            path: digest_file.clone(),
            source,
        })?;
        Ok(digest.trim().to_owned())
    }

    /// Writes the config, spawns the registry on `self.port` and waits until it is ready.
    fn launch(&mut self, binary: &Path) -> Result<(), RegistryHarnessError> {
        let config_path = self.temp_dir.path().join("config.yml");
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage:?}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: baton-test-registry\n",
            storage = self.storage_dir.display().to_string(),
            port = self.port,
        );
        fs::write(&config_path, config).map_err(|source| RegistryHarnessError::Io {
            path: config_path.clone(),
            source,
        })?;
        let log_error = |source| RegistryHarnessError::Io {
            path: self.log_path.clone(),
            source,
        };
        let stdout = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.log_path)
            .map_err(log_error)?;
        let stderr = stdout.try_clone().map_err(log_error)?;
        let mut child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|source| RegistryHarnessError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        match self.wait_until_ready(&mut child) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(error) => {
                let _ = kill_and_reap(child);
                Err(error)
            }
        }
    }

    /// Polls `GET /v2/` until it answers 200; fails fast if the process exits.
    fn wait_until_ready(&self, child: &mut Child) -> Result<(), RegistryHarnessError> {
        let pid = child.id();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(RegistryHarnessError::Exited {
                        port: self.port,
                        status,
                        log_tail: self.log_tail(),
                    });
                }
                Ok(None) => {}
                Err(source) => return Err(RegistryHarnessError::Stop { pid, source }),
            }
            let last_check = match crate::http_get(self.port, "/v2/") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("GET /v2/ answered {status}: {body}"),
                Err(error) => format!("GET /v2/ failed: {error}"),
            };
            if Instant::now() >= deadline {
                return Err(RegistryHarnessError::NotReady {
                    port: self.port,
                    timeout: READY_TIMEOUT,
                    last_check,
                    log_tail: self.log_tail(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The last lines the registry wrote, for error messages.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Err(error) = File::open(&self.log_path).and_then(|mut file| file.read_to_string(&mut text)) {
            return format!("(could not read {}: {error})", self.log_path.display());
        }
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::from("(no output)");
        }
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        // Nowhere to report a failure from `drop`; the process is gone either way unless the OS
        // refuses to kill our own child.
        let _ = self.kill();
    }
}

/// Finds `program`: `bin_override` (the value of `env`) if set, else `program` on `path`.
fn locate(
    program: &'static str,
    package: &'static str,
    env: &'static str,
    bin_override: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, RegistryHarnessError> {
    let not_found = |reason: String| RegistryHarnessError::BinaryNotFound {
        program,
        package,
        env,
        reason,
    };
    if let Some(binary) = bin_override.filter(|value| !value.is_empty()) {
        let binary = PathBuf::from(binary);
        return if crate::is_executable_file(&binary) {
            Ok(binary)
        } else {
            Err(not_found(format!(
                "{env}={} is not an executable file",
                binary.display()
            )))
        };
    }
    path.iter()
        .flat_map(std::env::split_paths)
        // An empty entry means the current directory; never run a binary from there.
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| crate::is_executable_file(candidate))
        .ok_or_else(|| not_found(format!("`{program}` is not on PATH and {env} is unset")))
}

/// Runs skopeo with `args` and returns its stdout.
fn skopeo(args: &[&str]) -> Result<Vec<u8>, RegistryHarnessError> {
    let binary = locate(
        "skopeo",
        "skopeo",
        SKOPEO_BIN_ENV,
        std::env::var_os(SKOPEO_BIN_ENV),
        std::env::var_os("PATH"),
    )?;
    let output = Command::new(&binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RegistryHarnessError::Spawn { binary, source })?;
    if !output.status.success() {
        return Err(RegistryHarnessError::Skopeo {
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

/// Kills a child (a no-op if it already exited) and reaps it so no zombie is left.
fn kill_and_reap(mut child: Child) -> Result<(), RegistryHarnessError> {
    let pid = child.id();
    child
        .kill()
        .and_then(|()| child.wait())
        .map(drop)
        .map_err(|source| RegistryHarnessError::Stop { pid, source })
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()})
}

/// Appends one ustar entry (mtime 0, root-owned) to `archive`: `kind` `b'0'` file, `b'5'`
/// directory, `b'2'` symlink to `link`. Names are short enough for the 100-byte field.
fn tar_entry(archive: &mut Vec<u8>, name: &str, kind: u8, mode: u32, data: &[u8], link: &str) {
    let mut header = [0_u8; 512];
    let mut put = |offset: usize, bytes: &[u8]| header[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, name.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", data.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, &[kind]);
    put(157, link.as_bytes());
    put(257, b"ustar\0");
    put(263, b"00");
    let checksum: u32 = header.iter().map(|&byte| u32::from(byte)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    archive.extend_from_slice(&header);
    archive.extend_from_slice(data);
    archive.resize(archive.len().next_multiple_of(512), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_ready_and_stores_a_pushed_base() -> anyhow::Result<()> {
        let registry = RegistryServer::start()?;
        assert_eq!(crate::http_get(registry.port(), "/v2/")?.0, 200);
        assert_eq!(registry.blob_count(), 0);

        let digest = registry.push_busybox_base("base/busybox", "1")?;
        assert!(digest.starts_with("sha256:"), "{digest}");
        assert_eq!(registry.blob_count(), 3, "layer, config and manifest");
        let manifest = registry.skopeo_inspect(&format!("{}/base/busybox:1", registry.address()), true)?;
        // skopeo gzips the uncompressed layer on its way into a registry.
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let config = registry.skopeo_inspect(&format!("{}/base/busybox@{digest}", registry.address()), false)?;
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));

        let again = registry.push_busybox_base("base/busybox", "2")?;
        assert_eq!(again, digest, "the base is reproducible");
        Ok(())
    }

    #[test]
    fn drop_and_kill_stop_the_process() -> anyhow::Result<()> {
        let mut registry = RegistryServer::start()?;
        let temp_dir = registry.temp_dir.path().to_owned();
        registry.kill()?;
        assert!(
            crate::http_get(registry.port(), "/v2/").is_err(),
            "nobody listens after kill"
        );
        registry.kill()?;
        drop(registry);
        assert!(!temp_dir.exists());
        Ok(())
    }

    #[test]
    fn missing_binaries_say_how_to_install_them() {
        let empty = tempfile::tempdir().expect("tempdir");
        let error = locate(
            "docker-registry",
            "docker-registry",
            DOCKER_REGISTRY_BIN_ENV,
            None,
            Some(empty.path().into()),
        )
        .expect_err("nothing in an empty dir");
        let message = error.to_string();
        assert!(
            message.contains("just setup") && message.contains("DOCKER_REGISTRY_BIN"),
            "{message}"
        );
    }

    #[test]
    fn tar_entries_are_valid_ustar() {
        let mut archive = Vec::new();
        tar_entry(&mut archive, "bin/", b'5', 0o755, b"", "");
        tar_entry(&mut archive, "bin/hello", b'0', 0o644, b"hello", "");
        tar_entry(&mut archive, "bin/hi", b'2', 0o777, b"", "hello");
        assert_eq!(archive.len(), 512 * 4);
        let output = Command::new("tar")
            .arg("-tvf")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        // GNU tar is on every Debian machine; skip the cross-check where it is not.
        let Ok(mut tar) = output else { return };
        archive.resize(archive.len() + 1024, 0);
        io::Write::write_all(&mut tar.stdin.take().expect("stdin"), &archive).expect("write");
        let listing = tar.wait_with_output().expect("tar runs");
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(
            listing.contains("bin/hello") && listing.contains("bin/hi -> hello"),
            "{listing}"
        );
    }
}
