//! The sandbox a step runs in (`steps.executor: sandbox`, the default): bubblewrap (`bwrap`)
//! gives every step its own mount, PID, network, IPC and UTS namespaces.
//!
//! - **Who it runs as.** A service running as root starts bubblewrap as root without a user
//!   namespace, and the step drops to an unprivileged uid (`steps.sandbox.uid`, default 65534)
//!   through `setpriv`: no capabilities, no supplementary groups, `no_new_privs`. The step's
//!   processes then count against that uid's `RLIMIT_NPROC`, which does not hold for root. A
//!   service running as another user gives the step a user namespace of its own (unprivileged
//!   user namespaces must be allowed) with the service's own uid: its processes count against
//!   the service's user.
//! - **What it sees.** A root of its own, in which only the host's system directories are
//!   mounted read-only (`/usr` and the `/bin`, `/lib*`, `/sbin` beside it, what `/etc` needs for
//!   libraries, certificates and time zones; extra paths from `steps.sandbox.read_only_paths`),
//!   its workspace read-write at [`WORKSPACE`], a private `/tmp`, a minimal `/dev` and a `/proc`
//!   of its own PID namespace. Nothing of the service: not its config, secrets, caches, other
//!   runs' workspaces, nor other processes. `/etc/passwd`, `/etc/group` and `/etc/hosts` are
//!   written for the step. The host's system directories were chosen over unpacking an image's
//!   root filesystem per step: they cost nothing to mount (a few milliseconds per step in all),
//!   and the builder and tester already run on hosts (or images) provisioned with the toolchains
//!   their repositories need.
//! - **Processes.** The step is PID 1's child in its own PID namespace. When its command ends,
//!   is killed or the service drops it, bubblewrap's PID 1 ends and the kernel kills every
//!   process left in the namespace, a `setsid` or double-forked child included.
//! - **Network.** None: the namespace has only its own loopback. A step that declares
//!   `network: true` gets user-mode networking from `slirp4netns` (as rootless containers do),
//!   with the host's loopback unreachable (`--disable-host-loopback`): it reaches the outside,
//!   never NATS, the registry, the Kubernetes API or any other port of the host.
//!
//! The same bubblewrap arguments also run a container rather than a step
//! ([`Sandbox::container_command`], [`ContainerSpec`]): an image's root filesystem as `/`
//! instead of the host's system directories, volumes bound in, the command without a shell, the
//! container's own uid and gid, and the host's network. The test harness's node simulator runs
//! pods' containers so.

use std::ffi::OsString;
use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use command_fds::{CommandFdExt as _, FdMapping};

mod container;

pub use container::{BindMount, ContainerSpec};

/// Where the workspace is inside the sandbox.
pub const WORKSPACE: &str = "/workspace";
/// The hostname a step sees.
const HOSTNAME: &str = "baton-step";
/// Host directories of the toolchain, mounted read-only (a symlink, as `/bin` is on a
/// merged-`/usr` system, is reproduced as the same symlink).
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// What of the host's `/etc` programs need: the dynamic linker's cache, certificates, time
/// zones, name service switch, the `alternatives` links. Nothing else: `/etc` may hold the
/// service's own configuration and secrets.
const ETC_ENTRIES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ssl",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/protocols",
    "/etc/services",
];
/// Size of a step's private `/tmp` (a tmpfs: it counts against memory), at most.
const TMP_BYTES: u64 = 512 * 1024 * 1024;
/// `setpriv`, which drops a root-started sandbox's step to its unprivileged uid.
const SETPRIV: &str = "/usr/bin/setpriv";
/// The DNS forwarder slirp4netns provides.
const SLIRP_DNS: &str = "10.0.2.3";
/// Longest wait for the sandbox's network to be ready.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// The sandbox cannot run steps on this host.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A program it needs is not installed.
    #[error(
        "`{program}` is not installed ({source}): install it (Debian: `apt-get install {package}`), or set `steps.executor: unsandboxed` to run steps without isolation"
    )]
    Missing {
        /// The program.
        program: String,
        /// Its Debian package.
        package: &'static str,
        /// Why it could not be run.
        #[source]
        source: std::io::Error,
    },
    /// A trial step did not run in the sandbox.
    #[error(
        "a trial step did not run in the sandbox: {reason}. {hint}, or set `steps.executor: unsandboxed` to run steps without isolation"
    )]
    Trial {
        /// What it printed, or how it ended.
        reason: String,
        /// What usually fixes it.
        hint: &'static str,
    },
}

/// The settings of the sandbox (from `steps.sandbox` in the service's config).
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// uid and gid of the step when the service runs as root.
    run_as: (u32, u32),
    /// Extra host paths mounted read-only at the same place.
    read_only: Vec<PathBuf>,
    /// Whether the service runs as root (then no user namespace: the step drops to `run_as`).
    privileged: bool,
    bwrap: PathBuf,
    slirp: PathBuf,
}

impl Sandbox {
    /// A sandbox running steps as `run_as` (uid, gid) when the service is root, with the extra
    /// host paths `read_only` mounted read-only (e.g. a toolchain outside `/usr`).
    pub fn new(run_as: (u32, u32), read_only: Vec<PathBuf>) -> Self {
        Self {
            run_as,
            read_only,
            privileged: nix::unistd::geteuid().is_root(),
            bwrap: PathBuf::from("bwrap"),
            slirp: PathBuf::from("slirp4netns"),
        }
    }

    /// The slirp4netns program.
    pub(super) fn slirp(&self) -> &Path {
        &self.slirp
    }

    /// The uid and gid the step's processes have on the host.
    pub fn host_ids(&self) -> (u32, u32) {
        if self.privileged {
            self.run_as
        } else {
            (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
        }
    }

    pub(super) async fn check(&self) -> Result<Option<String>, SandboxError> {
        let missing = |program: &Path, package, source| SandboxError::Missing {
            program: program.display().to_string(),
            package,
            source,
        };
        let version = |program: &Path| {
            let mut command = tokio::process::Command::new(program);
            command
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            command
        };
        version(&self.bwrap)
            .status()
            .await
            .map_err(|e| missing(&self.bwrap, "bubblewrap", e))?;
        if self.privileged {
            tokio::fs::metadata(SETPRIV)
                .await
                .map_err(|e| missing(Path::new(SETPRIV), "util-linux", e))?;
        }
        // Trial steps, run as every step is (with the same retries of a sandbox that fails to
        // set itself up): one without network, one with.
        let runner = super::StepRunner::offline().with_executor(super::Executor::Sandbox(self.clone()));
        for network in [false, true] {
            let workspace = tempfile::tempdir().map_err(|e| SandboxError::Trial {
                reason: format!("no temporary directory: {e}"),
                hint: "make the system's temporary directory writable",
            })?;
            let step = baton_schemas::pipeline::Step {
                name: "sandbox-trial".to_owned(),
                run: "echo ok > trial".to_owned(),
                env: std::collections::BTreeMap::new(),
                timeout: Duration::from_secs(30),
                workdir: None,
                network,
                limits: baton_schemas::pipeline::StepResources::default(),
                secrets: Vec::new(),
                image: None,
            };
            let outcome = runner
                .run(super::StepRequest {
                    run_id: "sandbox-trial",
                    app: "sandbox-trial",
                    step: &step,
                    workspace: workspace.path(),
                    extra_env: &std::collections::BTreeMap::new(),
                    secrets: &[],
                    secret_env: &std::collections::BTreeMap::new(),
                    limits: None,
                })
                .await;
            if !outcome.status.succeeded() || !workspace.path().join("trial").exists() {
                let reason = format!("{}: {}", outcome.status, outcome.tail.join(" / "));
                if network {
                    return Ok(Some(format!(
                        "steps that declare `network: true` will fail: a trial step with network did not run ({reason}); install slirp4netns and give the service /dev/net/tun"
                    )));
                }
                return Err(SandboxError::Trial {
                    reason,
                    hint: if self.privileged {
                        "bubblewrap needs to create mount, PID and network namespaces (a container needs CAP_SYS_ADMIN, or run the service as a non-root user with user namespaces allowed)"
                    } else {
                        "bubblewrap needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, a seccomp profile that allows creating namespaces, and a /proc without masked paths)"
                    },
                });
            }
        }
        Ok(None)
    }

    /// Hands the workspace to the step's user (when the service is root and the step is not):
    /// every entry not owned by it yet is given to it, symlinks themselves rather than what they
    /// point to.
    ///
    /// # Errors
    /// When an entry cannot be read or changed.
    pub(super) fn prepare(&self, workspace: &Path) -> std::io::Result<()> {
        if !self.privileged {
            return Ok(());
        }
        let (uid, gid) = self.run_as;
        chown_tree(workspace, uid, gid)
    }

    /// The bubblewrap command running `/bin/sh` with `spec.args` in the sandbox, and the network
    /// handshake to complete once it is spawned, if the step has a network.
    pub(super) fn command(&self, spec: Spec<'_>, files: &EtcFiles) -> std::io::Result<SandboxCommand> {
        let mut bwrap = Bwrap::new(HOSTNAME, true);
        if !self.privileged {
            bwrap.user_namespace(self.host_ids());
        }
        for dir in SYSTEM_DIRS {
            match std::fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(dir)?;
                    bwrap.push(["--symlink".into(), target.into_os_string(), (*dir).into()]);
                }
                Ok(meta) if meta.is_dir() => bwrap.bind(Path::new(dir), Path::new(dir), true),
                _ => {}
            }
        }
        // Directories bubblewrap makes for a mount point are root's and private (0700): `/etc`
        // must be readable by a step that is not root.
        bwrap.push(["--perms", "0755", "--dir", "/etc"].map(OsString::from));
        for entry in ETC_ENTRIES {
            bwrap.push(["--ro-bind-try", entry, entry].map(OsString::from));
        }
        for path in &self.read_only {
            bwrap.push([
                "--ro-bind-try".into(),
                path.clone().into_os_string(),
                path.clone().into_os_string(),
            ]);
        }
        for (name, file) in files.binds() {
            bwrap.bind(&file, &Path::new("/etc").join(name), true);
        }
        bwrap.kernel_filesystems();
        let tmp = TMP_BYTES.to_string();
        bwrap.push(["--size", tmp.as_str(), "--tmpfs", "/tmp"].map(OsString::from));
        bwrap.bind(spec.workspace, Path::new(WORKSPACE), false);
        bwrap.chdir(&Path::new(WORKSPACE).join(spec.workdir));

        let mut command = tokio::process::Command::new(&self.bwrap);
        let mut fds = vec![FdMapping {
            parent_fd: spec.started,
            child_fd: STARTED_FD,
        }];
        let network = if spec.network {
            let (info_read, info_write) = std::io::pipe()?;
            let (block_read, block_write) = std::io::pipe()?;
            bwrap.push(["--info-fd", "3", "--block-fd", "4"].map(OsString::from));
            fds.push(FdMapping {
                parent_fd: OwnedFd::from(info_write),
                child_fd: 3,
            });
            fds.push(FdMapping {
                parent_fd: OwnedFd::from(block_read),
                child_fd: 4,
            });
            Some(Handshake {
                info: info_read,
                block: block_write,
            })
        } else {
            None
        };
        command.fd_mappings(fds).map_err(std::io::Error::other)?;
        let mut argv: Vec<OsString> = Vec::new();
        if self.privileged {
            argv.extend(setpriv(self.run_as));
        }
        argv.push("/bin/sh".into());
        argv.extend(spec.args);
        command.args(bwrap.then_run(argv)).env_clear().envs(spec.env);
        Ok(SandboxCommand { command, network })
    }
}

/// The arguments of one bubblewrap invocation, shared by steps and containers: the namespaces,
/// then mounts in order, then the command.
struct Bwrap {
    args: Vec<OsString>,
}

impl Bwrap {
    /// Own PID, IPC, UTS (named `hostname`) and cgroup namespaces, a new session, ending with
    /// the service; an own network namespace (only loopback) with `own_network`.
    fn new(hostname: &str, own_network: bool) -> Self {
        let mut bwrap = Self { args: Vec::new() };
        bwrap.push(["--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid"].map(OsString::from));
        if own_network {
            bwrap.push(["--unshare-net".into()]);
        }
        bwrap.push(["--unshare-uts", "--unshare-cgroup-try", "--hostname", hostname].map(OsString::from));
        bwrap
    }

    fn push<I: IntoIterator<Item = OsString>>(&mut self, items: I) {
        self.args.extend(items);
    }

    /// A user namespace mapping only `ids` (uid, gid), no capabilities, no nested namespaces.
    fn user_namespace(&mut self, (uid, gid): (u32, u32)) {
        self.push(["--unshare-user", "--disable-userns", "--cap-drop", "ALL"].map(OsString::from));
        self.push([
            "--uid".into(),
            uid.to_string().into(),
            "--gid".into(),
            gid.to_string().into(),
        ]);
    }

    fn bind(&mut self, source: &Path, target: &Path, read_only: bool) {
        let flag = if read_only { "--ro-bind" } else { "--bind" };
        self.push([
            flag.into(),
            source.as_os_str().to_owned(),
            target.as_os_str().to_owned(),
        ]);
    }

    /// `/proc` of the PID namespace and a minimal `/dev`.
    fn kernel_filesystems(&mut self) {
        self.push(["--proc", "/proc", "--dev", "/dev"].map(OsString::from));
    }

    fn chdir(&mut self, dir: &Path) {
        self.push(["--chdir".into(), dir.as_os_str().to_owned()]);
    }

    /// The arguments, ending with `argv` as the command.
    fn then_run(mut self, argv: Vec<OsString>) -> Vec<OsString> {
        self.args.push("--".into());
        self.args.extend(argv);
        self.args
    }
}

/// `setpriv` dropping to `(uid, gid)`: no supplementary groups, no capabilities, `no_new_privs`;
/// then the command that follows.
fn setpriv((uid, gid): (u32, u32)) -> Vec<OsString> {
    vec![
        SETPRIV.into(),
        "--reuid".into(),
        uid.to_string().into(),
        "--regid".into(),
        gid.to_string().into(),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
    ]
}

/// `program` as a host path: itself when it names one, else found on the service's `PATH`.
fn which(program: &Path) -> std::io::Result<PathBuf> {
    if program.components().count() > 1 {
        return Ok(program.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("`{}` is not on PATH", program.display()),
            )
        })
}

/// What runs in the sandbox: `/bin/sh` with `args`, in `workdir` (relative to the workspace),
/// with `env` (and `HOME` the workspace inside), with or without network. `started` is the
/// write end of the pipe the step's wrapper reports on, as [`STARTED_FD`], that it runs.
#[derive(Debug)]
pub(super) struct Spec<'a> {
    pub(super) workspace: &'a Path,
    pub(super) workdir: &'a Path,
    pub(super) network: bool,
    pub(super) args: Vec<OsString>,
    pub(super) env: Vec<(OsString, OsString)>,
    pub(super) started: OwnedFd,
}

/// The descriptor the step's wrapper writes one byte to once it runs inside the sandbox.
pub(super) const STARTED_FD: i32 = 5;

/// The bubblewrap command, and the network handshake to complete once it is spawned.
#[derive(Debug)]
pub(super) struct SandboxCommand {
    pub(super) command: tokio::process::Command,
    pub(super) network: Option<Handshake>,
}

/// The pipes bubblewrap tells its namespace's PID on and waits on before it runs the step.
#[derive(Debug)]
pub(super) struct Handshake {
    info: std::io::PipeReader,
    block: std::io::PipeWriter,
}

/// The step's user-mode network: slirp4netns, killed when this is dropped.
#[derive(Debug)]
pub(crate) struct Network {
    _slirp: tokio::process::Child,
}

impl Handshake {
    /// Reads the sandbox's PID from bubblewrap, connects slirp4netns to its network namespace,
    /// waits until the network is configured, then lets bubblewrap run the step.
    ///
    /// # Errors
    /// When bubblewrap says nothing, slirp4netns cannot start or is not ready in time.
    pub(super) async fn complete(self, slirp: &Path) -> std::io::Result<Network> {
        let Self { mut info, block } = self;
        let pid = tokio::time::timeout(
            NETWORK_TIMEOUT,
            tokio::task::spawn_blocking(move || -> std::io::Result<u32> {
                let mut text = String::new();
                let mut buffer = [0_u8; 256];
                while !text.contains('}') {
                    let n = info.read(&mut buffer)?;
                    if n == 0 {
                        break;
                    }
                    text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
                let end = text.find('}').map_or(text.len(), |i| i + 1);
                let value: serde_json::Value = serde_json::from_str(&text[..end])
                    .map_err(|e| std::io::Error::other(format!("bubblewrap's info `{text}`: {e}")))?;
                value["child-pid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| std::io::Error::other(format!("no child-pid in bubblewrap's info `{text}`")))
            }),
        )
        .await
        .map_err(|_| std::io::Error::other("bubblewrap did not report its namespace in time"))?
        .map_err(std::io::Error::other)??;
        let (mut ready_read, ready_write) = std::io::pipe()?;
        let mut command = tokio::process::Command::new(slirp);
        command
            .args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--ready-fd",
                "3",
            ])
            .arg(pid.to_string())
            .arg("tap0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .fd_mappings(vec![FdMapping {
                parent_fd: OwnedFd::from(ready_write),
                child_fd: 3,
            }])
            .map_err(std::io::Error::other)?;
        let slirp = command.spawn()?;
        drop(command);
        tokio::time::timeout(
            NETWORK_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let mut byte = [0_u8; 1];
                match ready_read.read(&mut byte) {
                    Ok(1) => Ok(()),
                    Ok(_) => Err(std::io::Error::other("slirp4netns ended before its network was ready")),
                    Err(e) => Err(e),
                }
            }),
        )
        .await
        .map_err(|_| std::io::Error::other("slirp4netns was not ready in time"))?
        .map_err(std::io::Error::other)??;
        // Any byte lets bubblewrap go on; closing the pipe would too.
        let mut block = block;
        std::io::Write::write_all(&mut block, b"1")?;
        Ok(Network { _slirp: slirp })
    }
}

/// The files written for the step's `/etc`: who it is, its hosts, and its name server.
#[derive(Debug)]
pub(super) struct EtcFiles {
    dir: tempfile::TempDir,
    network: bool,
}

impl EtcFiles {
    /// Writes them for a step running as `ids` (uid, gid), with or without network.
    ///
    /// # Errors
    /// When the temporary directory cannot be written.
    pub(super) fn write(ids: (u32, u32), network: bool) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("baton-step-etc-").tempdir()?;
        let (uid, gid) = ids;
        let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
        let mut group = String::from("root:x:0:\n");
        if uid != 0 {
            passwd.push_str(&format!("baton:x:{uid}:{gid}:Baton step:{WORKSPACE}:/bin/sh\n"));
            group.push_str(&format!("baton:x:{gid}:\n"));
        }
        std::fs::write(dir.path().join("passwd"), passwd)?;
        std::fs::write(dir.path().join("group"), group)?;
        std::fs::write(
            dir.path().join("hosts"),
            format!("127.0.0.1 localhost {HOSTNAME}\n::1 localhost\n"),
        )?;
        if network {
            std::fs::write(dir.path().join("resolv.conf"), format!("nameserver {SLIRP_DNS}\n"))?;
        }
        // Readable by a step that is not the service's user.
        for name in ["passwd", "group", "hosts", "resolv.conf"] {
            let path = dir.path().join(name);
            if path.exists() {
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            }
        }
        Ok(Self { dir, network })
    }

    fn binds(&self) -> Vec<(&'static str, PathBuf)> {
        let mut names = vec!["passwd", "group", "hosts"];
        if self.network {
            names.push("resolv.conf");
        }
        names.into_iter().map(|n| (n, self.dir.path().join(n))).collect()
    }
}

/// Gives `root` and everything under it to `uid:gid`, not following symlinks.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Bytes the files under `root` take on disk (symlinks not followed); entries that vanish
/// while it counts are skipped.
pub fn disk_usage(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total: u64 = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}
