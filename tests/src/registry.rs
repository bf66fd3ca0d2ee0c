//! A real OCI registry for the suites: CNCF Distribution (`docker-registry serve`, Debian's
//! `docker-registry` package), owned the way [`NatsServer`](crate::NatsServer) is: a free port
//! on 127.0.0.1, its storage, config and log in a temporary directory, ready (`GET /v2/`
//! answers 200) when [`RegistryServer::start`] returns, killed and removed on `Drop`.
//!
//! It is a plain-HTTP registry without authentication and with deletes enabled, its blob
//! descriptors cached in memory as Distribution's stock config (and Debian's) has them. Tests check
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
//! # fn main() -> Result<(), baton_tests::HarnessError> {
//! let registry = baton_tests::registry::RegistryServer::start()?;
//! let digest = registry.push_busybox_base("base/busybox", "1")?;
//! let manifest = registry.skopeo_inspect(&format!("{}/base/busybox@{digest}", registry.address()), true)?;
//! assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::HarnessError;
use crate::net::{http_get, on_free_ports};
use crate::process::{self, LogFile, Process, Program};

/// Environment variable naming the `docker-registry` executable; when unset, `PATH` is searched.
pub const DOCKER_REGISTRY_BIN_ENV: &str = "DOCKER_REGISTRY_BIN";
/// Environment variable naming the `skopeo` executable; when unset, `PATH` is searched.
pub const SKOPEO_BIN_ENV: &str = "SKOPEO_BIN";
/// Environment variable naming a static busybox; default [`DEFAULT_BUSYBOX`].
pub const BUSYBOX_BIN_ENV: &str = "BUSYBOX_BIN";
/// Where Debian's `busybox-static` installs its binary.
pub const DEFAULT_BUSYBOX: &str = "/usr/bin/busybox";

/// The registry, and how `just setup` installs it.
const DOCKER_REGISTRY: Program = Program {
    name: "docker-registry",
    env: Some(DOCKER_REGISTRY_BIN_ENV),
    install: "Debian package `docker-registry`",
    fallbacks: &[],
};
/// skopeo, the independent client that inspects and seeds the registry.
const SKOPEO: Program = Program {
    name: "skopeo",
    env: Some(SKOPEO_BIN_ENV),
    install: "Debian package `skopeo`",
    fallbacks: &[],
};

/// Environment variable naming a skopeo that verifies sigstore signatures; default
/// [`skopeo_sigstore`]'s cache.
pub const SKOPEO_SIGSTORE_BIN_ENV: &str = "SKOPEO_SIGSTORE_BIN";
/// Environment variable naming the cache `scripts/install-skopeo-sigstore.sh` fills.
pub const SKOPEO_SIGSTORE_CACHE_ENV: &str = "BATON_SKOPEO_SIGSTORE_CACHE";

/// A skopeo whose `sigstoreSigned` policies verify cosign-format signatures (Debian bookworm's
/// refuses them all): `$SKOPEO_SIGSTORE_BIN`, else `bin/skopeo` in the cache
/// `scripts/install-skopeo-sigstore.sh` fills (`$BATON_SKOPEO_SIGSTORE_CACHE`, default
/// `~/.cache/baton/skopeo-sigstore`: Debian trixie's skopeo with its own loader and libraries).
///
/// # Errors
/// [`HarnessError::ProgramNotFound`] saying how to install it.
pub fn skopeo_sigstore() -> Result<std::path::PathBuf, HarnessError> {
    let not_found = |reason: String| HarnessError::ProgramNotFound {
        program: "skopeo (sigstore)",
        reason,
        fix: format!(
            "Install it with `just setup` (scripts/install-skopeo-sigstore.sh) or set {SKOPEO_SIGSTORE_BIN_ENV} to a skopeo >= 1.10 built with sigstore"
        ),
    };
    let candidate = match std::env::var_os(SKOPEO_SIGSTORE_BIN_ENV).filter(|value| !value.is_empty()) {
        Some(binary) => std::path::PathBuf::from(binary),
        None => {
            let cache = match std::env::var_os(SKOPEO_SIGSTORE_CACHE_ENV).filter(|value| !value.is_empty()) {
                Some(cache) => std::path::PathBuf::from(cache),
                None => std::env::var_os("XDG_CACHE_HOME")
                    .filter(|value| !value.is_empty())
                    .map(std::path::PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache")))
                    .ok_or_else(|| not_found("neither XDG_CACHE_HOME nor HOME is set".to_owned()))?
                    .join("baton/skopeo-sigstore"),
            };
            cache.join("bin/skopeo")
        }
    };
    if process::is_executable_file(&candidate) {
        Ok(candidate)
    } else {
        Err(not_found(format!("{} is not an executable file", candidate.display())))
    }
}

/// How long a freshly spawned registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The `created` time of the busybox base: fixed, so its digest is the same on every run.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// `PATH` of the busybox base, as Docker's official images set it.
const BASE_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A real CNCF Distribution registry on 127.0.0.1, owned by one test.
#[derive(Debug)]
pub struct RegistryServer {
    /// The running process; `None` after [`kill`](Self::kill). Declared before `temp_dir`, so
    /// it is killed before its files are removed.
    process: Option<Process>,
    /// The port it listens on (plain HTTP).
    port: u16,
    /// The filesystem storage driver's root: blobs and repositories live under
    /// `docker/registry/v2/`.
    storage_dir: PathBuf,
    /// The registry's output, quoted in errors.
    log_path: PathBuf,
    /// Whether it runs in Distribution's read-only mode (reads served, every write refused).
    read_only: bool,
    /// Owns the config, the storage and the log; removed on drop, after the process is gone.
    temp_dir: TempDir,
}

impl RegistryServer {
    /// Starts a registry on a free port and waits until `GET /v2/` answers 200. If it exits
    /// during start-up (its port taken in the race between probing and binding) it is retried
    /// on fresh ports a few times.
    ///
    /// The binary is `$DOCKER_REGISTRY_BIN`, else `docker-registry` on `PATH`.
    ///
    /// # Errors
    /// When the binary is missing (the message says how to install it), or the registry cannot
    /// be started or is not ready in time (the message quotes its log).
    pub fn start() -> Result<Self, HarnessError> {
        let binary = DOCKER_REGISTRY.locate()?;
        let temp_dir = crate::temp_dir("baton-registry-")?;
        let storage_dir = temp_dir.path().join("storage");
        crate::create_dir(&storage_dir)?;
        let mut server = Self {
            process: None,
            port: 0,
            storage_dir,
            log_path: temp_dir.path().join("registry.log"),
            read_only: false,
            temp_dir,
        };
        on_free_ports(|[port]| {
            server.port = port;
            server.launch(&binary)
        })?;
        Ok(server)
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
    ///
    /// # Errors
    /// When the OS refuses to kill or reap our own child.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        match self.process.take() {
            Some(mut process) => process.kill(),
            None => Ok(()),
        }
    }

    /// Restarts the registry on the same port and storage, in Distribution's read-only mode
    /// (`storage.maintenance.readonly`: pulls, `HEAD`s and `GET`s are served, every push is
    /// refused with 405) or back out of it: a registry refusing pushes for real.
    ///
    /// # Errors
    /// As [`start`](Self::start), when it does not come back.
    pub fn restart_read_only(&mut self, read_only: bool) -> Result<(), HarnessError> {
        let binary = DOCKER_REGISTRY.locate()?;
        self.kill()?;
        self.read_only = read_only;
        self.launch(&binary)
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
    ///
    /// # Errors
    /// When skopeo is missing, fails or prints no JSON.
    pub fn skopeo_inspect(&self, reference: &str, raw: bool) -> Result<Value, HarnessError> {
        let mode = if raw { "--raw" } else { "--config" };
        let mut inspect = Command::new(SKOPEO.locate()?);
        inspect.args(["inspect", "--tls-verify=false", mode, &format!("docker://{reference}")]);
        let output = process::run(&mut inspect)?;
        serde_json::from_slice(&output).map_err(|source| HarnessError::CommandOutput {
            command: process::command_line(&inspect),
            source,
        })
    }

    /// Pushes a tiny, real base image to `<repository>:<tag>` and returns its manifest digest:
    /// one layer (written as an uncompressed tar, which skopeo gzips on the way in) holding
    /// `/bin/busybox` (the static busybox, `$BUSYBOX_BIN` or [`DEFAULT_BUSYBOX`]) and the symlink
    /// `/bin/sh -> busybox`; a config with `PATH`, `Cmd ["/bin/sh"]`, a label and a history
    /// entry. Everything is fixed (mtimes 0, `created` 1970), so the digest is the same on every
    /// run. The image is written as an OCI layout and copied in by skopeo.
    ///
    /// # Errors
    /// When busybox or skopeo is missing, or skopeo fails.
    pub fn push_busybox_base(&self, repository: &str, tag: &str) -> Result<String, HarnessError> {
        let program = read_busybox()?;
        let mut layer = Vec::new();
        tar_entry(&mut layer, "bin/", b'5', 0o755, b"", "");
        tar_entry(&mut layer, "bin/busybox", b'0', 0o755, &program, "");
        tar_entry(&mut layer, "bin/sh", b'2', 0o777, b"", "busybox");
        self.push_single_layer(repository, tag, layer, "baton-test-busybox", "busybox-static in /bin")
    }

    /// Pushes a busybox image a pod can work in to `<repository>:<tag>` and returns its
    /// reference pinned by digest (`127.0.0.1:<port>/<repository>@sha256:…`): the layer of
    /// [`push_busybox_base`](Self::push_busybox_base) plus a symlink in `/bin` for every applet
    /// `busybox --list` names (`sh`, `tar`, `wget`, `mkdir`, `cp`, `cat`, `env`, `sleep`, `head`,
    /// `dd`, `id`, …), a world-writable `/tmp` (mode 1777), and `/etc/passwd` and `/etc/group`
    /// knowing `root`, `nonroot` (uid and gid 65532, the non-root user of distroless images)
    /// and `nobody` (65534). Reproducible as the base is: the same busybox gives the same digest.
    ///
    /// # Errors
    /// When busybox or skopeo is missing, busybox cannot list its applets, or skopeo fails.
    pub fn push_busybox_toolchain(&self, repository: &str, tag: &str) -> Result<String, HarnessError> {
        let busybox = busybox_path();
        let program = read_busybox()?;
        let listing = process::run(Command::new(&busybox).arg("--list"))?;
        let mut applets: Vec<String> = String::from_utf8_lossy(&listing)
            .lines()
            .map(str::trim)
            .filter(|name| !name.is_empty() && *name != "busybox" && !name.contains('/'))
            .map(str::to_owned)
            .collect();
        applets.sort();
        applets.dedup();
        let mut layer = Vec::new();
        tar_entry(&mut layer, "bin/", b'5', 0o755, b"", "");
        tar_entry(&mut layer, "bin/busybox", b'0', 0o755, &program, "");
        for applet in &applets {
            tar_entry(&mut layer, &format!("bin/{applet}"), b'2', 0o777, b"", "busybox");
        }
        tar_entry(&mut layer, "etc/", b'5', 0o755, b"", "");
        tar_entry(
            &mut layer,
            "etc/passwd",
            b'0',
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n\
              nonroot:x:65532:65532:nonroot:/home/nonroot:/bin/sh\n\
              nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            "",
        );
        tar_entry(
            &mut layer,
            "etc/group",
            b'0',
            0o644,
            b"root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n",
            "",
        );
        tar_entry(&mut layer, "tmp/", b'5', 0o1777, b"", "");
        let digest = self.push_single_layer(
            repository,
            tag,
            layer,
            "baton-test-toolchain",
            "busybox-static in /bin with every applet, /tmp, /etc/passwd",
        )?;
        Ok(format!("{}/{repository}@{digest}", self.address()))
    }

    /// Pushes an image of the one uncompressed tar `layer` (ended here) to `<repository>:<tag>`
    /// through an OCI layout and skopeo, titled `title`; returns its manifest digest.
    fn push_single_layer(
        &self,
        repository: &str,
        tag: &str,
        mut layer: Vec<u8>,
        title: &str,
        created_by: &str,
    ) -> Result<String, HarnessError> {
        layer.resize(layer.len() + 1024, 0);
        let diff_id = sha256(&layer);
        let config = serde_json::to_vec(&json!({
            "created": EPOCH,
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": [BASE_PATH_ENV],
                "Cmd": ["/bin/sh"],
                "Labels": {"org.opencontainers.image.title": title},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": EPOCH, "created_by": format!("baton-tests: {created_by}")}],
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
            .map_err(|source| HarnessError::Io {
                path: self.temp_dir.path().to_owned(),
                source,
            })?;
        let write = |name: &str, bytes: &[u8]| {
            let path = layout.path().join(name);
            fs::create_dir_all(path.parent().expect("inside the layout"))
                .and_then(|()| fs::write(&path, bytes))
                .map_err(|source| HarnessError::Io { path, source })
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
        process::run(Command::new(SKOPEO.locate()?).args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &digest_arg,
            &source,
            &destination,
        ]))?;
        let digest = fs::read_to_string(&digest_file).map_err(|source| HarnessError::Io {
            path: digest_file.clone(),
            source,
        })?;
        Ok(digest.trim().to_owned())
    }

    /// Writes the config, spawns the registry on `self.port` and waits until `GET /v2/`
    /// answers 200. On failure nothing is left running.
    fn launch(&mut self, binary: &Path) -> Result<(), HarnessError> {
        let config_path = self.temp_dir.path().join("config.yml");
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {storage:?}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n    readonly:\n      enabled: {read_only}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: baton-test-registry\n",
            storage = self.storage_dir.display().to_string(),
            port = self.port,
            read_only = self.read_only,
        );
        fs::write(&config_path, config).map_err(|source| HarnessError::Io {
            path: config_path.clone(),
            source,
        })?;
        let mut process = Process::spawn(
            format!("docker-registry on 127.0.0.1:{}", self.port),
            Command::new(binary).arg("serve").arg(&config_path),
            &self.log_path,
            LogFile::Fresh,
        )?;
        let port = self.port;
        process.wait_ready(READY_TIMEOUT, POLL_INTERVAL, || match http_get(port, "/v2/") {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("GET /v2/ answered {status}: {body}")),
            Err(error) => Err(format!("GET /v2/ failed: {error}")),
        })?;
        self.process = Some(process);
        Ok(())
    }
}

/// The static busybox the test images are made of: `$BUSYBOX_BIN` or [`DEFAULT_BUSYBOX`]. Not
/// looked for on `PATH`: the images need the static build, which a `busybox` there may not be.
fn busybox_path() -> PathBuf {
    std::env::var_os(BUSYBOX_BIN_ENV)
        .filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_BUSYBOX), PathBuf::from)
}

fn read_busybox() -> Result<Vec<u8>, HarnessError> {
    let busybox = busybox_path();
    fs::read(&busybox).map_err(|error| HarnessError::ProgramNotFound {
        program: "busybox",
        reason: format!("cannot read {}: {error}", busybox.display()),
        fix: format!(
            "Install it with `just setup` (Debian package `busybox-static`) or set {BUSYBOX_BIN_ENV} to its path"
        ),
    })
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
    use std::io;
    use std::process::Stdio;

    use super::*;

    #[test]
    fn starts_ready_and_stores_a_pushed_base() -> anyhow::Result<()> {
        let registry = RegistryServer::start()?;
        assert_eq!(http_get(registry.port(), "/v2/")?.0, 200);
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
    fn the_toolchain_image_has_every_applet_and_its_users() -> anyhow::Result<()> {
        let registry = RegistryServer::start()?;
        let reference = registry.push_busybox_toolchain("baton/toolchain", "1")?;
        let (repository, digest) = reference.split_once('@').expect("pinned by digest");
        assert_eq!(repository, format!("{}/baton/toolchain", registry.address()));
        assert_eq!(
            registry.push_busybox_toolchain("baton/toolchain", "2")?,
            format!("{repository}@{digest}"),
            "reproducible"
        );
        let config = registry.skopeo_inspect(&reference, false)?;
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.title"],
            "baton-test-toolchain"
        );

        // The layer as skopeo stored it, listed by tar: another reader than the one that wrote it.
        let manifest = registry.skopeo_inspect(&reference, true)?;
        let layer = manifest["layers"][0]["digest"].as_str().expect("a layer").to_owned();
        let (hex_prefix, hex_digest) = (&layer[7..9], &layer[7..]);
        let blob = registry.storage_dir().join(format!(
            "docker/registry/v2/blobs/sha256/{hex_prefix}/{hex_digest}/data"
        ));
        let listing = process::run(Command::new("tar").arg("-tvzf").arg(&blob))?;
        let listing = String::from_utf8_lossy(&listing);
        for entry in [
            "bin/sh -> busybox",
            "bin/wget -> busybox",
            "bin/tar -> busybox",
            "etc/passwd",
            "etc/group",
        ] {
            assert!(listing.contains(entry), "{entry} in {listing}");
        }
        assert!(
            listing.contains("drwxrwxrwt"),
            "a sticky, world-writable /tmp: {listing}"
        );
        Ok(())
    }

    #[test]
    fn drop_and_kill_stop_the_process() -> anyhow::Result<()> {
        let mut registry = RegistryServer::start()?;
        let temp_dir = registry.temp_dir.path().to_owned();
        registry.kill()?;
        assert!(http_get(registry.port(), "/v2/").is_err(), "nobody listens after kill");
        registry.kill()?;
        drop(registry);
        assert!(!temp_dir.exists());
        Ok(())
    }

    #[test]
    fn missing_binaries_say_how_to_install_them() {
        let empty = tempfile::tempdir().expect("tempdir");
        let error = DOCKER_REGISTRY
            .locate_in(None, Some(empty.path().into()))
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
