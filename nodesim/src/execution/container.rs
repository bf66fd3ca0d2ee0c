//! One container as a sandboxed process: its configuration resolved, its own copy of the
//! image's root filesystem, its mounts, memory cgroup and log file; then its end, with the exit
//! code and reason (`OOMKilled` when the OOM killer struck) its status shows.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baton_kit::steps::{BindMount, ContainerSpec};
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use sha2::{Digest as _, Sha256};

use super::PodContext;
use super::config::CONFIG_RETRY;
use super::status::{Slot, State, record};
use crate::cgroup::MemoryCgroup;
use crate::image::PulledImage;
use crate::logs::LogWriterGuard;
use crate::workload::{command_line, must_be_non_root, quantity_bytes, user};

/// A started container.
pub(super) struct Started {
    child: tokio::process::Child,
    cgroup: Option<MemoryCgroup>,
    started: Timestamp,
    _log: LogWriterGuard,
    _rootfs: RemoveOnDrop,
}

/// A directory removed (in the background) when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let dir = self.0.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }
}

impl PodContext<'_> {
    /// Starts one container (waiting in `CreateContainerConfigError` until its configuration
    /// resolves); `Err` holds the `RunContainerError` message of a container that cannot start.
    pub(super) async fn start(
        &self,
        slot: Slot,
        container: &Container,
        images: &HashMap<String, PulledImage>,
        volumes: &HashMap<String, PathBuf>,
    ) -> Result<Started, String> {
        let image = &images[&container.image.clone().unwrap_or_default()];
        let env = loop {
            match self.environment(container, image).await {
                Ok(env) => break env,
                Err(message) => {
                    self.config_error(slot, message).await;
                    tokio::time::sleep(CONFIG_RETRY).await;
                }
            }
        };
        let pod_security = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let ids = user(container, pod_security, &image.config);
        if ids.0 == 0 && must_be_non_root(container, pod_security) {
            let message = "container has runAsNonRoot and image will run as root".to_owned();
            self.config_error(slot, message).await;
            return std::future::pending().await;
        }
        let argv = command_line(container, &image.config, &env);
        let read_only_root = container
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false);
        let workdir = container
            .working_dir
            .clone()
            .or_else(|| {
                image.config["WorkingDir"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "/".to_owned());
        let memory = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity_bytes(&q.0));
        let uid = self.pod.uid().unwrap_or_default();
        let container_id = format!(
            "baton-sim://{}",
            hex::encode(&Sha256::digest(format!("{uid}/{}", container.name).as_bytes())[..16])
        );
        let result = async {
            if argv.is_empty() {
                return Err("no command specified".to_owned());
            }
            let rootfs = self.pod_dir.join("rootfs").join(&container.name);
            std::fs::create_dir_all(self.pod_dir.join("rootfs")).map_err(|e| e.to_string())?;
            let _ = std::fs::set_permissions(self.pod_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
            copy_rootfs(&image.rootfs, &rootfs, read_only_root).await?;
            let rootfs_guard = RemoveOnDrop(rootfs.clone());
            let mut mounts = Vec::new();
            let hosts = self.pod_dir.join("hosts");
            let hostname = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| self.pod.name_any());
            std::fs::write(
                &hosts,
                format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.0.1\t{hostname}\n"),
            )
            .map_err(|e| e.to_string())?;
            mounts.push(BindMount {
                source: hosts,
                target: PathBuf::from("/etc/hosts"),
                read_only: true,
            });
            if Path::new("/etc/resolv.conf").exists() {
                mounts.push(BindMount {
                    source: PathBuf::from("/etc/resolv.conf"),
                    target: PathBuf::from("/etc/resolv.conf"),
                    read_only: true,
                });
            }
            for mount in container.volume_mounts.iter().flatten() {
                let dir = volumes
                    .get(&mount.name)
                    .ok_or_else(|| format!("volumeMount {} names no volume of the pod", mount.name))?;
                let source = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                    Some(sub) if sub.split('/').any(|p| p == "..") => return Err(format!("invalid subPath {sub}")),
                    Some(sub) => {
                        let source = dir.join(sub);
                        std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
                        source
                    }
                    None => dir.clone(),
                };
                mounts.push(BindMount {
                    source,
                    target: PathBuf::from(&mount.mount_path),
                    read_only: mount.read_only.unwrap_or(false),
                });
            }
            let cgroup = match memory {
                Some(bytes) => Some(MemoryCgroup::create(&format!("{uid}-{}", container.name), bytes)?),
                None => None,
            };
            let spec = ContainerSpec {
                rootfs,
                read_only_root,
                mounts,
                argv: argv.iter().map(OsString::from).collect(),
                env: env
                    .iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                    .collect(),
                workdir: PathBuf::from(&workdir),
                user: ids,
                hostname,
                cgroup: cgroup.as_ref().map(|c| c.dir().to_owned()),
            };
            let mut command = self
                .executor
                .sandbox
                .container_command(&spec)
                .map_err(|e| format!("cannot create the container: {e}"))?;
            let logs = self.pod_dir.join("logs");
            std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
            let log_path = logs.join(format!("{}.log", container.name));
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let log_err = log.try_clone().map_err(|e| e.to_string())?;
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .kill_on_drop(true);
            let guard = self
                .executor
                .logs
                .register(self.namespace, &self.pod.name_any(), &container.name, &log_path);
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start the container: {e}"))?;
            Ok(Started {
                child,
                cgroup,
                started: Timestamp::now(),
                _log: guard,
                _rootfs: rootfs_guard,
            })
        }
        .await;
        let image_id = image.image_id.clone();
        let state = match &result {
            Ok(started) => State::Running {
                started: started.started,
            },
            Err(message) => State::Waiting {
                reason: "RunContainerError".to_owned(),
                message: Some(message.clone()),
            },
        };
        self.reporter
            .update(|pod| {
                let r = record(pod, slot);
                r.state = state;
                r.image_id = Some(image_id);
                r.container_id = Some(container_id);
            })
            .await;
        result
    }

    /// Shows the container waiting with `CreateContainerConfigError` and `message`.
    async fn config_error(&self, slot: Slot, message: String) {
        self.reporter
            .update(|state| {
                record(state, slot).state = State::Waiting {
                    reason: "CreateContainerConfigError".to_owned(),
                    message: Some(message),
                };
            })
            .await;
    }

    /// Waits for a started container to end and posts how; returns its exit code (a container
    /// that could not start never ends: `restartPolicy: Never` leaves it waiting, as a kubelet
    /// does).
    pub(super) async fn finish(&self, slot: Slot, started: Result<Started, String>) -> i32 {
        let Ok(mut started) = started else {
            return std::future::pending().await;
        };
        let status = started.child.wait().await;
        let finished = Timestamp::now();
        let exit_code = match status {
            Ok(status) => status
                .code()
                .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
                .unwrap_or(128),
            Err(_) => 128,
        };
        let oom = started.cgroup.as_ref().is_some_and(MemoryCgroup::oom_killed);
        let reason = if oom {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let began = started.started;
        drop(started);
        self.reporter
            .update(|state| {
                record(state, slot).state = State::Terminated {
                    exit_code,
                    reason: reason.to_owned(),
                    message: None,
                    started: began,
                    finished,
                };
            })
            .await;
        exit_code
    }
}

/// The container's own root filesystem: hard links of the image's files when it is read-only
/// (nothing can change them through the read-only mount), a full copy when it is writable.
async fn copy_rootfs(image: &Path, rootfs: &Path, read_only: bool) -> Result<(), String> {
    let copy = |flags: &str| {
        let mut command = tokio::process::Command::new("cp");
        command.arg(flags).arg(image).arg(rootfs);
        command
    };
    let linked = read_only && copy("-al").status().await.is_ok_and(|s| s.success());
    if !linked {
        let _ = tokio::fs::remove_dir_all(rootfs).await;
        let status = copy("-a").status().await.map_err(|e| format!("cp: {e}"))?;
        if !status.success() {
            return Err(format!(
                "copying the image's root filesystem to {} failed",
                rootfs.display()
            ));
        }
    }
    Ok(())
}
