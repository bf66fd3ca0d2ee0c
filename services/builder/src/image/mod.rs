//! Image assembly: the built workspace becomes an OCI image in the registry, without a Docker
//! daemon. [`assemble`] builds it for one commit and [`Assembled::push`] pushes it
//! ([`assemble_and_push`] does both):
//!
//! 1. the spec's `add` entries become one new layer, built in process by [`build_layer`]; every
//!    mistake in them (a path leaving the workspace, a missing file, a symlink pointing out of
//!    the added tree) is found here, before any network traffic;
//! 2. the base, `scratch` or an image reference, is resolved by [`Registry::pull_base`]:
//!    its manifest (an image index is narrowed to linux/amd64) and its config are fetched, its
//!    layers are kept as descriptors and reused by digest, never rebuilt;
//! 3. [`image_config`] derives the new config from the base's: the spec overrides it, Baton adds
//!    the `org.opencontainers.image.revision` and `.source` labels, `rootfs.diff_ids` gains the
//!    new layer;
//! 4. every blob the registry does not have yet is uploaded (a `HEAD` first: what is there is
//!    skipped), then the OCI manifest is put under the commit sha as its tag.
//!
//! # Reproducibility
//!
//! The same spec over the same file contents gives a byte-identical layer, hence the same
//! digests, whatever the checkout's mtimes, owners or umask: entries are sorted by path, parent
//! directories are written explicitly (mode 0755), every mtime is 0 (1970-01-01), uid and gid
//! are 0 with empty user and group names, and a file's mode is the spec's `mode` or, without
//! one, the normalised mode git itself records (0755 if any execute bit is set, else 0644).
//! The tar is GNU-format and compressed with gzip at level 6 with a zero mtime and no file name
//! in the gzip header ([`LAYER_MEDIA_TYPE`]). The compressed bytes depend on the deflate
//! implementation (flate2's miniz_oxide backend, pinned by `Cargo.lock`); the uncompressed
//! digest (`diff_id`) depends on nothing but the inputs. The config's `created` is fixed to
//! [`CREATED`], so two builds of one commit give one image digest and the second uploads
//! nothing.
//!
//! # Base layers
//!
//! Base layers are referenced by digest in the new manifest. When the target repository lacks
//! one, a base in another repository of the same registry is *mounted* (cross-repository blob
//! mount, no bytes moved); if the registry declines the mount, or the base lives in another
//! registry, the blob is *copied*: downloaded from the base's registry and uploaded, counted in
//! [`PushedImage::uploaded_bytes`]. Docker-format base layers are listed with their OCI media
//! type (the bytes are the same gzipped tar); foreign layers (with `urls`) are referenced only.
//! The new layer, and a base layer being copied, are held in memory while they are uploaded.
//!
//! Plain HTTP is used only for the target registry when it is marked insecure and for the
//! registries the caller lists as insecure; everything else is HTTPS on the process's rustls
//! provider (`baton_kit::tls`).
//!
//! The layer is built in `layer`, the config derived in `config`, the registries are spoken to
//! in `registry`, and `error` says what went wrong and whether a retry may help; this module
//! composes them into one push.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use baton_schemas::payloads::ImageInfo;
use baton_schemas::pipeline::ImageSpec;
use bytes::Bytes;
use oci_client::Reference;
use serde::Serialize;
use sha2::{Digest, Sha256};

mod config;
mod error;
mod layer;
mod registry;

pub use config::image_config;
pub use error::ImageError;
pub use layer::{Layer, build_layer};
pub use registry::{BaseImage, Registry};

use config::check_spec;
use registry::{BlobSource, Provided, PushStats};

/// Media type of the manifest Baton pushes.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config Baton pushes.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the layer Baton builds: a gzip-compressed tar.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The `created` time of every image (and of its history entry): fixed for reproducibility.
pub const CREATED: &str = "1970-01-01T00:00:00Z";
/// Label carrying the commit the image was built from.
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";
/// Label carrying the repository URL the commit came from.
pub const SOURCE_LABEL: &str = "org.opencontainers.image.source";
/// The base `image.base` names to start from an empty filesystem.
pub const SCRATCH: &str = "scratch";

/// Manifest annotation naming the base image (OCI pre-defined annotation).
const BASE_NAME_ANNOTATION: &str = "org.opencontainers.image.base.name";
/// Manifest annotation pinning the base image's manifest digest.
const BASE_DIGEST_ANNOTATION: &str = "org.opencontainers.image.base.digest";

/// What to assemble: one commit's image, and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct ImageJob<'a> {
    /// The pipeline's `image` section.
    pub spec: &'a ImageSpec,
    /// The built workspace the `add` entries are relative to.
    pub workspace: &'a Path,
    /// The commit sha: the image's tag and its revision label.
    pub commit: &'a str,
    /// The repository URL the commit came from: the image's source label.
    pub source_url: &'a str,
    /// The registry pushed to.
    pub registry: &'a Registry,
    /// Repository in the registry, e.g. `baton/acme/shop`.
    pub repository: &'a str,
}

/// A content descriptor, as listed in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is (layer, config) and how it is encoded.
    pub media_type: String,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Where a foreign (non-distributable) layer is downloaded from; empty for ordinary blobs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// An image in the registry, as the build reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// Repository in the registry.
    pub repository: String,
    /// `<registry>/<repository>@<digest>`: what deployments pull.
    pub reference: String,
    /// `sha256:<hex>` of the manifest: the image's identity.
    pub digest: String,
    /// The tag: the commit sha.
    pub tag: String,
    /// `sha256:<hex>` of the image config.
    pub config_digest: String,
    /// The manifest's layers, base layers first, the new layer last.
    pub layers: Vec<Descriptor>,
    /// Bytes sent to the registry: uploaded and copied blobs, plus the manifest if it was put.
    pub uploaded_bytes: u64,
    /// Blobs (layers and config) the target repository already had.
    pub skipped_blobs: usize,
    /// Base layers mounted from another repository of the same registry.
    pub mounted_blobs: usize,
    /// Package URL: `pkg:oci/<name>@<digest>?repository_url=<registry>/<repository>&tag=<sha>`.
    pub purl: String,
    /// The base it was built on, pinned by digest (`None` for `scratch`): what its provenance
    /// records.
    pub base: Option<PinnedBase>,
}

/// A base image as `image.base` names it, and the manifest digest it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedBase {
    /// The base as written in `image.base`.
    pub name: String,
    /// `sha256:<hex>` of its (linux/amd64) manifest.
    pub digest: String,
}

impl PushedImage {
    /// The image as carried in Baton's events.
    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
            reference: self.reference.clone(),
            purl: self.purl.clone(),
            uploaded_bytes: self.uploaded_bytes,
        }
    }
}

/// The package URL (purl) of an image: `pkg:oci/<last segment of repository>@<digest>` with
/// `repository_url=<registry>/<repository>` and `tag=<tag>`.
pub fn purl(registry: &str, repository: &str, digest: &str, tag: &str) -> String {
    let name = repository.rsplit('/').next().unwrap_or(repository);
    format!("pkg:oci/{name}@{digest}?repository_url={registry}/{repository}&tag={tag}")
}

/// Builds the image of `job` and pushes it, tagged with the commit sha: [`assemble`], then
/// [`Assembled::push`].
///
/// # Errors
/// [`ImageError`]: spec and workspace mistakes before any network traffic, then base and push
/// failures, each classified by [`ImageError::is_transient`].
pub async fn assemble_and_push(job: &ImageJob<'_>) -> Result<PushedImage, ImageError> {
    assemble(job).await?.push().await
}

/// An image whose manifest is final and not yet pushed: its digest is its identity already, so
/// what names that digest (its signature, its provenance) can be written while it is pushed.
#[derive(Debug)]
pub struct Assembled<'a> {
    registry: &'a Registry,
    target: Reference,
    repository: String,
    commit: String,
    base: Option<BaseImage>,
    new_layers: Vec<Layer>,
    config: Bytes,
    config_descriptor: Descriptor,
    layers: Vec<Descriptor>,
    manifest: Bytes,
    digest: String,
    pinned_base: Option<PinnedBase>,
}

/// Builds the image of `job`: its layers, the base resolved and pinned by digest, its config
/// and its manifest. Nothing is pushed.
///
/// # Errors
/// [`ImageError`]: spec and workspace mistakes before any network traffic, then the base's.
#[tracing::instrument(skip_all, fields(repository = job.repository, commit = job.commit))]
pub async fn assemble<'a>(job: &ImageJob<'a>) -> Result<Assembled<'a>, ImageError> {
    let (spec, registry) = (job.spec, job.registry);
    let target = registry.target_reference(job.repository, job.commit)?;
    check_spec(spec)?;

    // One layer per `add` entry, like one `COPY` line each: a commit that changes one entry's
    // files uploads only that entry's layer. (No entries: one empty layer.)
    let workspace = job.workspace.to_owned();
    let add = spec.add.clone();
    let new_layers = tokio::task::spawn_blocking(move || {
        if add.is_empty() {
            return build_layer(&workspace, &[]).map(|layer| vec![layer]);
        }
        add.iter()
            .map(|entry| build_layer(&workspace, std::slice::from_ref(entry)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|join| ImageError::Workspace {
        path: job.workspace.to_owned(),
        source: io::Error::other(join),
    })??;
    let diff_ids: Vec<String> = new_layers.iter().map(|layer| layer.diff_id.clone()).collect();

    let base = if is_scratch(&spec.base) {
        None
    } else {
        Some(registry.pull_base(&spec.base).await?)
    };
    let config = image_config(
        base.as_ref().map(|b| &b.config),
        spec,
        job.commit,
        job.source_url,
        &diff_ids,
    )?;
    let config = Bytes::from(serde_json::to_vec(&config).expect("a JSON value serializes"));
    let config_descriptor = Descriptor {
        media_type: CONFIG_MEDIA_TYPE.to_owned(),
        digest: sha256_digest(&config),
        size: config.len() as u64,
        urls: Vec::new(),
    };
    let mut layers = base.as_ref().map(|b| b.layers.clone()).unwrap_or_default();
    layers.extend(new_layers.iter().map(Layer::descriptor));
    let manifest = Bytes::from(manifest_json(&config_descriptor, &layers, base.as_ref()));
    let digest = sha256_digest(&manifest);
    let pinned_base = base.as_ref().map(|b| PinnedBase {
        name: b.name.clone(),
        digest: b.digest.clone(),
    });
    Ok(Assembled {
        registry,
        target,
        repository: job.repository.to_owned(),
        commit: job.commit.to_owned(),
        base,
        new_layers,
        config,
        config_descriptor,
        layers,
        manifest,
        digest,
        pinned_base,
    })
}

impl Assembled<'_> {
    /// `sha256:<hex>` of the manifest: the image's identity.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// `host[:port]` of the registry it goes to.
    pub fn registry(&self) -> &str {
        self.registry.address()
    }

    /// The repository it goes to.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The base it is built on, pinned by digest (`None` for `scratch`).
    pub fn base(&self) -> Option<&PinnedBase> {
        self.pinned_base.as_ref()
    }

    /// Pushes the image, tagged with the commit sha.
    ///
    /// # Errors
    /// [`ImageError`]: base and push failures, each classified by [`ImageError::is_transient`].
    #[tracing::instrument(skip_all, fields(repository = %self.repository, commit = %self.commit))]
    pub async fn push(&self) -> Result<PushedImage, ImageError> {
        let (registry, target, digest) = (self.registry, &self.target, &self.digest);
        // Every blob the manifest names is asked about at once, and the missing ones are
        // provided at once. Only when none was missing can the tag already name this very
        // manifest (a registry refuses a manifest whose blobs it lacks), so only then is the tag
        // asked; a new commit's push waits for four requests in all: the checks, an upload's
        // POST and PUT, and the manifest.
        let mut wanted: Vec<(Descriptor, BlobSource<'_>)> = Vec::new();
        if let Some(base) = &self.base {
            wanted.extend(base.layers.iter().map(|d| (d.clone(), BlobSource::Base(base))));
        }
        wanted.extend(
            self.new_layers
                .iter()
                .map(|layer| (layer.descriptor(), BlobSource::Data(layer.blob.clone()))),
        );
        wanted.push((self.config_descriptor.clone(), BlobSource::Data(self.config.clone())));
        let present = futures::future::try_join_all(
            wanted
                .iter()
                .map(|(descriptor, _)| registry.blob_present(target, descriptor)),
        )
        .await?;
        let mut stats = PushStats::default();
        let mut missing = Vec::new();
        for ((descriptor, source), present) in wanted.into_iter().zip(present) {
            match (present, descriptor.urls.is_empty()) {
                (false, _) => missing.push((descriptor, source)),
                (true, true) => stats.skipped += 1,
                // A foreign layer: neither skipped nor pushed.
                (true, false) => {}
            }
        }
        let already_tagged =
            missing.is_empty() && registry.current_manifest_digest(target).await.as_deref() == Some(digest.as_str());
        let provided = futures::future::try_join_all(
            missing
                .into_iter()
                .map(|(descriptor, source)| async move { registry.provide_blob(target, &descriptor, source).await }),
        )
        .await?;
        for outcome in provided {
            match outcome {
                Provided::Mounted => stats.mounted += 1,
                Provided::Uploaded(bytes) => stats.uploaded_bytes += bytes,
            }
        }
        if !already_tagged {
            registry
                .put_manifest(target, self.manifest.clone(), digest, &mut stats)
                .await?;
        }

        tracing::info!(
            %digest,
            uploaded_bytes = stats.uploaded_bytes,
            skipped_blobs = stats.skipped,
            mounted_blobs = stats.mounted,
            "image pushed"
        );
        let (address, repository) = (registry.address().to_owned(), self.repository.clone());
        Ok(PushedImage {
            reference: format!("{address}/{repository}@{digest}"),
            purl: purl(&address, &repository, digest, &self.commit),
            tag: self.commit.clone(),
            config_digest: self.config_descriptor.digest.clone(),
            layers: self.layers.clone(),
            uploaded_bytes: stats.uploaded_bytes,
            skipped_blobs: stats.skipped,
            mounted_blobs: stats.mounted,
            base: self.pinned_base.clone(),
            digest: digest.clone(),
            registry: address,
            repository,
        })
    }
}

/// Whether `image.base` means an empty base.
fn is_scratch(base: &str) -> bool {
    base.trim() == SCRATCH
}

/// `sha256:<hex>` of `bytes`, as OCI digests (and provenance's) are written.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The manifest's bytes: config, layers, and the base's name and digest as annotations.
fn manifest_json(config: &Descriptor, layers: &[Descriptor], base: Option<&BaseImage>) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        schema_version: u8,
        media_type: &'a str,
        config: &'a Descriptor,
        layers: &'a [Descriptor],
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        annotations: BTreeMap<&'static str, &'a str>,
    }
    let mut annotations = BTreeMap::new();
    if let Some(base) = base {
        annotations.insert(BASE_NAME_ANNOTATION, base.name.as_str());
        annotations.insert(BASE_DIGEST_ANNOTATION, base.digest.as_str());
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        config,
        layers,
        annotations,
    };
    serde_json::to_vec(&manifest).expect("a manifest serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purl_pins_the_digest() {
        assert_eq!(
            purl("registry.local:5000", "baton/acme/shop", "sha256:abc", "0123abcd"),
            "pkg:oci/shop@sha256:abc?repository_url=registry.local:5000/baton/acme/shop&tag=0123abcd"
        );
    }
}
