//! Images for executed pods: pulled from a registry over plain HTTP with the OCI distribution
//! API (the manifest by tag or digest, an index resolved to its `linux/amd64` manifest, every
//! layer checked against its digest), unpacked in order into one root filesystem per manifest
//! digest (gzip or plain tar layers; whiteouts remove what lower layers left), and kept in the
//! image cache for every later pod of the same image.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

/// Media types a manifest request accepts.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
/// Prefix of a whiteout entry: the named file of a lower layer is gone.
const WHITEOUT: &str = ".wh.";
/// An opaque directory: nothing of the lower layers' directory stays.
const OPAQUE: &str = ".wh..wh..opq";

/// A pulled, unpacked image.
#[derive(Debug, Clone)]
pub(super) struct PulledImage {
    /// Its unpacked root filesystem (shared: containers work on copies).
    pub(super) rootfs: PathBuf,
    /// `<registry>/<repository>@<manifest digest>`, the container's `imageID`.
    pub(super) image_id: String,
    /// The image config's `config` object: `Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`.
    pub(super) config: Value,
}

/// Why an image could not be pulled: the container's `ErrImagePull` message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct PullError(String);

/// Pulls and unpacks images into `cache`, once per manifest digest.
#[derive(Debug)]
pub(super) struct ImageStore {
    cache: PathBuf,
    /// Registries (`host:port`) the simulator may pull from, over plain HTTP.
    registries: Vec<String>,
    http: reqwest::Client,
    /// One lock per manifest digest, so two pods of one image unpack it once in this process.
    unpacking: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// An image reference split into its parts.
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    registry: String,
    repository: String,
    /// The tag or the digest.
    reference: String,
}

fn parse_reference(image: &str) -> Option<Reference> {
    let (registry, rest) = image.split_once('/')?;
    if !(registry.contains(':') || registry.contains('.') || registry == "localhost") {
        return None;
    }
    let (repository, reference) = match rest.split_once('@') {
        Some((repository, digest)) => (repository, digest.to_owned()),
        None => match rest.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, tag.to_owned()),
            _ => (rest, "latest".to_owned()),
        },
    };
    let repository = repository.split_once(':').map_or(repository, |(name, _)| name);
    Some(Reference {
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        reference,
    })
}

impl ImageStore {
    pub(super) fn new(cache: PathBuf, registries: Vec<String>) -> Self {
        Self {
            cache,
            registries,
            http: reqwest::Client::new(),
            unpacking: Mutex::new(HashMap::new()),
        }
    }

    /// The image `image`, pulled and unpacked unless the cache has it.
    pub(super) async fn pull(&self, image: &str) -> Result<PulledImage, PullError> {
        let fail = |what: String| PullError(format!("failed to pull image \"{image}\": {what}"));
        let reference = parse_reference(image).ok_or_else(|| {
            fail("the reference names no registry (the node simulator pulls only from its registries)".to_owned())
        })?;
        if !self.registries.contains(&reference.registry) {
            return Err(fail(format!(
                "registry {} is not one the node simulator may pull from ({})",
                reference.registry,
                self.registries.join(", ")
            )));
        }
        let base = format!("http://{}/v2/{}", reference.registry, reference.repository);
        let (digest, mut manifest) = self.manifest(&base, &reference.reference).await.map_err(fail)?;
        let mut digest = digest;
        if manifest["manifests"].is_array() {
            let chosen = manifest["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| fail("the index has no linux/amd64 image".to_owned()))?
                .to_owned();
            (digest, manifest) = self.manifest(&base, &chosen).await.map_err(fail)?;
        }
        let image_id = format!("{}/{}@{digest}", reference.registry, reference.repository);
        let dir = self.cache.join(digest.replace(':', "-"));
        let config_path = dir.join("config.json");
        let rootfs = dir.join("rootfs");

        let lock = {
            let mut locks = self.unpacking.lock().await;
            Arc::clone(locks.entry(digest.clone()).or_default())
        };
        let _unpacking = lock.lock().await;
        if !rootfs.is_dir() {
            let config_digest = manifest["config"]["digest"]
                .as_str()
                .ok_or_else(|| fail("the manifest has no config".to_owned()))?;
            let config = self.blob(&base, config_digest).await.map_err(fail)?;
            let mut layers = Vec::new();
            for layer in manifest["layers"].as_array().into_iter().flatten() {
                let layer_digest = layer["digest"]
                    .as_str()
                    .ok_or_else(|| fail("a layer has no digest".to_owned()))?;
                layers.push(self.blob(&base, layer_digest).await.map_err(fail)?);
            }
            // Unpacked beside the cache entry and renamed into place: another process sharing
            // the cache (test binaries run one test per process) sees all of it or nothing,
            // and whichever rename comes second finds the entry there and drops its own.
            let cache = self.cache.clone();
            let target = dir.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let staging = tempfile::Builder::new().prefix(".unpacking-").tempdir_in(&cache)?;
                std::fs::set_permissions(staging.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
                std::fs::create_dir(staging.path().join("rootfs"))?;
                for layer in &layers {
                    unpack_layer(layer, &staging.path().join("rootfs"))?;
                }
                std::fs::write(staging.path().join("config.json"), &config)?;
                match std::fs::rename(staging.path(), &target) {
                    Ok(()) => {
                        // Renamed away: nothing is left for the guard to remove.
                        let _ = staging.keep();
                        Ok(())
                    }
                    Err(_) if target.join("rootfs").is_dir() => Ok(()),
                    Err(error) => Err(error),
                }
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(format!("unpacking its layers: {e}")))?;
        }
        let config: Value = std::fs::read(&config_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| fail(format!("its config {} is unreadable", config_path.display())))?;
        Ok(PulledImage {
            rootfs,
            image_id,
            config: config["config"].clone(),
        })
    }

    /// The manifest `reference` names, with its digest.
    async fn manifest(&self, base: &str, reference: &str) -> Result<(String, Value), String> {
        let response = self
            .http
            .get(format!("{base}/manifests/{reference}"))
            .header("Accept", MANIFEST_TYPES)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "manifest {reference}: {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(format!("manifest {reference} has digest {digest}"));
        }
        let manifest = serde_json::from_slice(&bytes).map_err(|e| format!("manifest {reference}: {e}"))?;
        Ok((digest, manifest))
    }

    /// The blob `digest`, checked against it.
    async fn blob(&self, base: &str, digest: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(format!("{base}/blobs/{digest}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("blob {digest}: {status}"));
        }
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(format!("blob {digest} has digest {actual}"));
        }
        Ok(bytes.to_vec())
    }
}

/// Unpacks one layer (gzip or plain tar) onto `rootfs`, applying its whiteouts.
fn unpack_layer(layer: &[u8], rootfs: &Path) -> std::io::Result<()> {
    let reader: Box<dyn std::io::Read> = if layer.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else {
        Box::new(layer)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == OPAQUE {
            let dir = rootfs.join(path.parent().unwrap_or(Path::new("")));
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    remove(&child.path())?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let gone = rootfs.join(path.parent().unwrap_or(Path::new(""))).join(hidden);
            if gone.starts_with(rootfs) {
                remove(&gone)?;
            }
            continue;
        }
        // A regular file replacing a directory (or the other way round) of a lower layer.
        if let Ok(meta) = std::fs::symlink_metadata(rootfs.join(&path))
            && meta.is_dir() != entry.header().entry_type().is_dir()
        {
            remove(&rootfs.join(&path))?;
        }
        entry.unpack_in(rootfs)?;
        let mut rest = Vec::new();
        entry.read_to_end(&mut rest)?;
    }
    Ok(())
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_and_tag_or_digest() {
        let parts = |r: &str, repo: &str, reference: &str| Reference {
            registry: r.to_owned(),
            repository: repo.to_owned(),
            reference: reference.to_owned(),
        };
        assert_eq!(
            parse_reference("127.0.0.1:5000/baton/toolchain:1"),
            Some(parts("127.0.0.1:5000", "baton/toolchain", "1"))
        );
        assert_eq!(
            parse_reference("127.0.0.1:5000/baton/toolchain@sha256:ab"),
            Some(parts("127.0.0.1:5000", "baton/toolchain", "sha256:ab"))
        );
        assert_eq!(
            parse_reference("127.0.0.1:5000/busybox"),
            Some(parts("127.0.0.1:5000", "busybox", "latest"))
        );
        assert_eq!(parse_reference("busybox:1.37"), None, "no registry named");
    }

    #[test]
    fn whiteouts_remove_what_lower_layers_left() -> std::io::Result<()> {
        let layer = |entries: &[(&str, &[u8])]| -> std::io::Result<Vec<u8>> {
            let mut builder = tar::Builder::new(Vec::new());
            for (name, data) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                header.set_cksum();
                builder.append_data(&mut header, name, *data)?;
            }
            builder.into_inner()
        };
        let root = tempfile::tempdir()?;
        unpack_layer(
            &layer(&[("etc/a", b"a"), ("etc/b", b"b"), ("opt/x/y", b"y")])?,
            root.path(),
        )?;
        unpack_layer(
            &layer(&[("etc/.wh.a", b""), ("opt/x/.wh..wh..opq", b""), ("opt/x/z", b"z")])?,
            root.path(),
        )?;
        assert!(!root.path().join("etc/a").exists());
        assert!(root.path().join("etc/b").exists());
        assert!(!root.path().join("opt/x/y").exists());
        assert!(root.path().join("opt/x/z").exists());
        Ok(())
    }
}
