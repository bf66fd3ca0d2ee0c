//! A pod's volumes as host directories: emptyDir directories, and Secret and ConfigMap files
//! written with their items and modes; retried until every object they need exists.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Volume;

use super::PodContext;
use super::config::{CONFIG_RETRY, Source};
use super::status::State;

impl PodContext<'_> {
    /// The pod's volumes by name, as host directories; retried until every Secret and
    /// ConfigMap they need exists.
    pub(super) async fn prepare_volumes(&self) -> HashMap<String, PathBuf> {
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        loop {
            match self.try_volumes(&volumes).await {
                Ok(dirs) => return dirs,
                Err(message) => {
                    // A kubelet tells this in a FailedMount event; the simulator, which posts
                    // no events, in the waiting containers' message.
                    let message = format!("MountVolume.SetUp failed: {message}");
                    self.reporter
                        .update(|state| {
                            for record in state.init.iter_mut().chain(state.main.iter_mut()) {
                                if let State::Waiting { message: waiting, .. } = &mut record.state {
                                    *waiting = Some(message.clone());
                                }
                            }
                        })
                        .await;
                    tokio::time::sleep(CONFIG_RETRY).await;
                }
            }
        }
    }

    async fn try_volumes(&self, volumes: &[Volume]) -> Result<HashMap<String, PathBuf>, String> {
        let mut dirs = HashMap::new();
        for volume in volumes {
            let dir = self.pod_dir.join("volumes").join(&volume.name);
            let io = |e: std::io::Error| format!("volume {}: {e}", volume.name);
            let files: Option<(BTreeMap<String, Vec<u8>>, _, _)> = if volume.empty_dir.is_some() {
                std::fs::create_dir_all(&dir).map_err(io)?;
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).map_err(io)?;
                None
            } else if let Some(source) = &volume.secret {
                let name = source.secret_name.clone().unwrap_or_default();
                let data = self.required_data(Source::Secret, &name, source.optional).await?;
                Some((data, source.items.clone(), source.default_mode))
            } else if let Some(source) = &volume.config_map {
                let data = self
                    .required_data(Source::ConfigMap, &source.name, source.optional)
                    .await?;
                Some((data, source.items.clone(), source.default_mode))
            } else {
                return Err(format!(
                    "volume {}: the node simulator executes only emptyDir, secret and configMap volumes",
                    volume.name
                ));
            };
            if let Some((data, items, mode)) = files {
                std::fs::create_dir_all(&dir).map_err(io)?;
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(io)?;
                let chosen: Vec<(String, String, Option<i32>)> = match items {
                    Some(items) => items.into_iter().map(|i| (i.key, i.path, i.mode)).collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
                };
                for (key, path, item_mode) in chosen {
                    let Some(bytes) = data.get(&key) else {
                        return Err(format!("volume {}: no key {key}", volume.name));
                    };
                    if path.split('/').any(|part| part == "..") || path.starts_with('/') {
                        return Err(format!("volume {}: invalid path {path}", volume.name));
                    }
                    let file = dir.join(&path);
                    if let Some(parent) = file.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&file, bytes).map_err(io)?;
                    let mode = item_mode.or(mode).unwrap_or(0o644);
                    let mode = u32::try_from(mode).unwrap_or(0o644);
                    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?;
                }
            }
            dirs.insert(volume.name.clone(), dir);
        }
        Ok(dirs)
    }
}
