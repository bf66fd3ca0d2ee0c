//! Containers in the sandbox: [`Sandbox::container_command`] runs an image's root filesystem as
//! `/` with volumes bound in, as a container runtime would, through the same bubblewrap
//! arguments as a step ([`ContainerSpec`] says what a container gets). Paths of the image are
//! resolved inside its root filesystem, never on the host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{Bwrap, Sandbox, setpriv, which};

impl Sandbox {
    /// The command running one container, as a container runtime runs it: see [`ContainerSpec`]
    /// for what the container gets and what it does not. The command's environment is the
    /// container's (nothing of the service's); its stdio is the caller's to set, and killing it
    /// (SIGKILL) kills every process of the container, as the PID namespace ends with it.
    ///
    /// Before building the command, the container's root filesystem is made ready: the mount
    /// points of its volumes, `/proc`, `/dev` and its working directory are created where they
    /// are missing (a working directory inside a volume in the volume, owned by the container's
    /// user), symlinks in the image resolved inside the root filesystem, never on the host.
    ///
    /// # Errors
    /// When a path of the spec is not absolute or leaves the root filesystem, or a mount point
    /// or the working directory cannot be created.
    pub fn container_command(&self, spec: &ContainerSpec) -> std::io::Result<tokio::process::Command> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        if spec.argv.is_empty() {
            return Err(invalid("a container needs a command".to_owned()));
        }
        let mut mounts = Vec::with_capacity(spec.mounts.len());
        for mount in &spec.mounts {
            let target = resolve_in(&spec.rootfs, &mount.target)?;
            let host = spec.rootfs.join(target.strip_prefix("/").unwrap_or(&target));
            if std::fs::symlink_metadata(&host).is_err() {
                if std::fs::metadata(&mount.source)?.is_dir() {
                    std::fs::create_dir_all(&host)?;
                } else {
                    if let Some(parent) = host.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&host, b"")?;
                }
            }
            mounts.push((mount, target));
        }
        for dir in ["proc", "dev"] {
            std::fs::create_dir_all(spec.rootfs.join(dir))?;
        }
        let workdir = resolve_in(&spec.rootfs, &spec.workdir)?;
        // The deepest volume holding the working directory (a later mount hides an earlier one).
        let holder = mounts
            .iter()
            .rev()
            .filter(|(_, target)| workdir.starts_with(target))
            .max_by_key(|(_, target)| target.components().count());
        let host_workdir = match holder {
            Some((mount, target)) => mount.source.join(workdir.strip_prefix(target).unwrap_or(Path::new(""))),
            None => spec.rootfs.join(workdir.strip_prefix("/").unwrap_or(&workdir)),
        };
        create_owned_dirs(&host_workdir, spec.user)?;

        let (uid, gid) = spec.user;
        let mut bwrap = Bwrap::new(&spec.hostname, false);
        // Root in the container is the service's root, with the capabilities a container runtime
        // grants by default; anyone else gets a user namespace mapping only its own ids, as
        // which bubblewrap is started (`setpriv`, below): on the host, the container's
        // processes are that uid.
        let root = self.privileged && uid == 0;
        if root {
            bwrap.push(["--cap-drop", "ALL"].map(OsString::from));
            for capability in ROOT_CAPABILITIES {
                bwrap.push(["--cap-add", capability].map(OsString::from));
            }
        } else {
            bwrap.user_namespace(spec.user);
        }
        bwrap.bind(&spec.rootfs, Path::new("/"), spec.read_only_root);
        bwrap.kernel_filesystems();
        for (mount, target) in &mounts {
            bwrap.bind(&mount.source, target, mount.read_only);
        }
        bwrap.chdir(&workdir);
        let bwrap_args = bwrap.then_run(spec.argv.clone());

        // The environment is the container's, so every program of the chain is named by its
        // host path.
        let program = which(&self.bwrap)?;
        let mut chain: Vec<OsString> = Vec::new();
        if let Some(cgroup) = &spec.cgroup {
            chain.extend([
                HOST_SHELL.into(),
                "-c".into(),
                r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#.into(),
                "sh".into(),
                cgroup.clone().into_os_string(),
            ]);
        }
        if self.privileged && !root {
            chain.extend(setpriv((uid, gid)));
        }
        chain.push(program.into_os_string());
        chain.extend(bwrap_args);
        let mut command = tokio::process::Command::new(&chain[0]);
        command
            .args(&chain[1..])
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)));
        Ok(command)
    }
}

/// What a container is, for [`Sandbox::container_command`]: an image's root filesystem as `/`,
/// volumes bound into it, a command with its environment, working directory and user.
///
/// It gets PID, IPC, UTS and mount namespaces of its own, a minimal `/dev` and a `/proc` of its
/// PID namespace, and, unless it runs as root, a user namespace mapping only its own uid and gid.
/// It shares the host's network namespace: nothing isolates or polices its network (no
/// NetworkPolicy is enforced, every port of the host is reachable). It is not in a cgroup unless
/// [`cgroup`](Self::cgroup) names one.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The container's own root filesystem directory (an unpacked image). Mount points and the
    /// working directory are created in it: give every container its own copy (hard links are
    /// enough with [`read_only_root`](Self::read_only_root)).
    pub rootfs: PathBuf,
    /// Whether `/` is mounted read-only (`readOnlyRootFilesystem`); volumes keep their own mode.
    pub read_only_root: bool,
    /// Host files or directories bound into the container, in order (a later one may be inside
    /// an earlier one).
    pub mounts: Vec<BindMount>,
    /// The command and its arguments (`command` + `args`); `argv[0]` without a `/` is looked up
    /// in the container's `PATH`. Nothing is run through a shell.
    pub argv: Vec<OsString>,
    /// The container's whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// The absolute working directory inside the container, created if missing.
    pub workdir: PathBuf,
    /// uid and gid of its processes. When the service runs as root, a uid other than 0 is the
    /// same uid and gid on the host (`setpriv` drops to them, on the host, before bubblewrap
    /// starts: the image need not contain `setpriv`), and uid 0 is the service's root with gid
    /// 0 whatever the gid says; when the service is not root, the container's processes are the
    /// service's user on the host and appear as these ids inside.
    pub user: (u32, u32),
    /// The hostname it sees.
    pub hostname: String,
    /// A cgroup directory (v1 or v2) the container's processes join before anything of it runs,
    /// so its limits (memory) hold from the first instruction.
    pub cgroup: Option<PathBuf>,
}

/// A host path bound into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The host file or directory.
    pub source: PathBuf,
    /// The absolute path inside the container.
    pub target: PathBuf,
    /// Whether the container may only read it.
    pub read_only: bool,
}

/// The shell that puts a container into its cgroup before it starts.
const HOST_SHELL: &str = "/bin/sh";
/// The capabilities a container running as root keeps: a container runtime's defaults.
const ROOT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// Most symlinks followed while resolving one path inside a root filesystem.
const MAX_SYMLINKS: u32 = 40;

/// `path` (absolute, inside the root filesystem `root`) with every symlink of the image resolved
/// as the container would see it: absolute links from `root`, never above it. The result is
/// absolute, inside the container.
fn resolve_in(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    if !path.is_absolute() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{}` is not an absolute path", path.display()),
        ));
    }
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let host = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(std::io::Error::other(format!(
                        "too many symlinks resolving `{}`",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&host)?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                pending.extend(target.components().rev().filter_map(|c| match c {
                    Component::Normal(name) => Some(name.to_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                }));
            }
            _ => resolved = candidate,
        }
    }
    Ok(resolved)
}

/// Creates `dir` and its missing parents, the new ones owned by `(uid, gid)` (when the service
/// may give them away).
fn create_owned_dirs(dir: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut current = dir;
    while std::fs::symlink_metadata(current).is_err() {
        missing.push(current.to_path_buf());
        match current.parent() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    for path in missing.into_iter().rev() {
        std::fs::create_dir(&path)?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_root_filesystem() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("run/secrets"))?;
        std::os::unix::fs::symlink("/run", root.path().join("var-run"))?;
        std::os::unix::fs::symlink("../../..", root.path().join("run/secrets/up"))?;
        let resolve = |path: &str| resolve_in(root.path(), Path::new(path));
        assert_eq!(resolve("/var-run/secrets/token")?, Path::new("/run/secrets/token"));
        assert_eq!(
            resolve("/run/secrets/up/etc")?,
            Path::new("/etc"),
            "never above the root"
        );
        assert_eq!(resolve("/../../etc/passwd")?, Path::new("/etc/passwd"));
        assert!(resolve("relative").is_err());
        Ok(())
    }

    #[test]
    fn a_container_command_creates_its_mount_points_and_working_directory() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let volume = tempfile::tempdir()?;
        let file = volume.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n")?;
        let spec = ContainerSpec {
            rootfs: root.path().to_owned(),
            read_only_root: true,
            mounts: vec![
                BindMount {
                    source: volume.path().to_owned(),
                    target: PathBuf::from("/workspace"),
                    read_only: false,
                },
                BindMount {
                    source: file,
                    target: PathBuf::from("/etc/hosts"),
                    read_only: true,
                },
            ],
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec![("PATH".into(), "/bin".into())],
            workdir: PathBuf::from("/workspace/src/app"),
            user: (65532, 65532),
            hostname: "pod".to_owned(),
            cgroup: None,
        };
        let command = Sandbox::new((65534, 65534), Vec::new()).container_command(&spec)?;
        assert!(root.path().join("workspace").is_dir());
        assert!(root.path().join("etc/hosts").is_file());
        assert!(root.path().join("proc").is_dir() && root.path().join("dev").is_dir());
        assert!(
            volume.path().join("src/app").is_dir(),
            "inside the volume, not the image"
        );
        let args: Vec<_> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(
            line.contains(&format!("--ro-bind {} /", root.path().display())),
            "{line}"
        );
        assert!(line.contains("--chdir /workspace/src/app"), "{line}");
        assert!(!line.contains("--unshare-net"), "the host's network: {line}");
        assert!(line.ends_with("-- sh -c true"), "{line}");
        Ok(())
    }
}
