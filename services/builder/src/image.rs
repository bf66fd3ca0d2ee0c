//! Image assembly: the built workspace becomes an OCI image in the registry, without a Docker
//! daemon. [`assemble_and_push`] runs the whole of it for one commit:
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

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use baton_kit::secret::Secret;
use baton_schemas::payloads::ImageInfo;
use baton_schemas::pipeline::{AddEntry, ImageSpec};
use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

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
/// Mode of directories the spec does not give one (implicit parents, walked directories).
const DIR_MODE: u32 = 0o755;
/// Mode of symlinks (ignored by Linux, written as tar tools do).
const SYMLINK_MODE: u32 = 0o777;
/// gzip level of the layer: part of the reproducibility contract, do not change lightly.
const GZIP_LEVEL: u32 = 6;
/// Platform of images from `scratch`, and the one picked from a multi-platform base.
const OS: &str = "linux";
/// See [`OS`].
const ARCHITECTURE: &str = "amd64";
/// Docker's media type of a gzipped layer; the same bytes as [`LAYER_MEDIA_TYPE`].
const DOCKER_LAYER_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Config media types of container images (OCI and Docker); anything else is an artifact.
const IMAGE_CONFIG_MEDIA_TYPES: [&str; 2] = [CONFIG_MEDIA_TYPE, "application/vnd.docker.container.image.v1+json"];
/// Longest a TCP connect to a registry may take before the attempt counts as a network failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Registry messages quoted in errors are cut to this many characters.
const MESSAGE_LIMIT: usize = 500;

/// Why an image could not be assembled or pushed. [`is_transient`](Self::is_transient) says
/// whether a retry may succeed; every message says what to fix otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A value of the image spec cannot be used.
    #[error("{field}: {message}")]
    InvalidSpec {
        /// The field at fault, e.g. `image.add[0].mode`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An `add` entry's `from` leaves the workspace (absolute, `..`, or through a symlink).
    #[error(
        "{field}: `{path}` is outside the workspace ({reason}); name a file or directory by its path relative to the repository root"
    )]
    PathOutsideWorkspace {
        /// The field at fault, e.g. `image.add[1].from`.
        field: String,
        /// The path as written in the spec.
        path: String,
        /// How it leaves the workspace.
        reason: String,
    },
    /// An `add` entry's `from` does not exist in the workspace after the build.
    #[error(
        "{field}: `{path}` does not exist in the workspace; check the path (relative to the repository root) \
         and that a build step produces it"
    )]
    SourceMissing {
        /// The field at fault, e.g. `image.add[0].from`.
        field: String,
        /// The path as written in the spec.
        path: String,
    },
    /// A symlink inside an added directory points outside that directory.
    #[error(
        "symlink `{link}` -> `{target}` points outside the added tree `{tree}`: an image may only contain \
         relative symlinks that stay inside what is added; copy the file instead or add the directory it \
         points into"
    )]
    SymlinkOutsideTree {
        /// The symlink, relative to the workspace.
        link: String,
        /// Its target as stored on disk.
        target: String,
        /// The added directory (`from`) it belongs to.
        tree: String,
    },
    /// A workspace entry is neither a file, a directory nor a symlink.
    #[error("`{path}` is a {kind}; images can only contain regular files, directories and symlinks")]
    UnsupportedFileType {
        /// The entry, relative to the workspace.
        path: String,
        /// What it is (fifo, socket, device...).
        kind: &'static str,
    },
    /// Two `add` entries put a file and a directory at the same path in the image.
    #[error("`{path}` in the image {reason}; change the `to` of one of the add entries")]
    PathConflict {
        /// The path in the image.
        path: String,
        /// The clash.
        reason: String,
    },
    /// Reading the workspace failed (disk, permissions).
    #[error("cannot read `{}` in the workspace", path.display())]
    Workspace {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// `image.base` is not a valid image reference.
    #[error(
        "{field}: `{reference}` is not a valid image reference ({reason}); write e.g. registry.example.com/team/app:1.2"
    )]
    InvalidReference {
        /// Where it came from, e.g. `image.base`.
        field: String,
        /// The reference as given.
        reference: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The base image could not be fetched.
    #[error("cannot pull the base image `{reference}`: {message}; {}", base_hint(*.transient))]
    BaseUnavailable {
        /// The base as written in `image.base`.
        reference: String,
        /// The registry's or the network's message.
        message: String,
        /// Whether a retry may succeed (network, 5xx, rate limit).
        transient: bool,
    },
    /// The base is not a usable container image.
    #[error("the base image `{reference}` cannot be used: {reason}; pick a linux/amd64 container image or `scratch`")]
    UnsupportedBase {
        /// The base as written in `image.base`.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target registry failed or refused an operation of the push.
    #[error("pushing to {registry}/{repository} failed while {operation}: {message}; {}", push_hint(*.transient))]
    Push {
        /// `host[:port]` of the target registry.
        registry: String,
        /// The repository pushed to.
        repository: String,
        /// What was being done, e.g. `uploading blob sha256:...`.
        operation: String,
        /// The registry's or the network's message.
        message: String,
        /// Whether a retry may succeed (network, 5xx, rate limit).
        transient: bool,
    },
}

fn base_hint(transient: bool) -> &'static str {
    if transient {
        "the registry is unreachable or overloaded, the build is retried"
    } else {
        "check that `image.base` names an existing image and that the builder may pull it"
    }
}

fn push_hint(transient: bool) -> &'static str {
    if transient {
        "the registry is unreachable or overloaded, the build is retried"
    } else {
        "check the builder's `registry` settings (address, credentials) and that the repository accepts pushes"
    }
}

impl ImageError {
    /// Whether retrying later may succeed: network failures, 5xx answers and rate limits, or a
    /// local I/O failure (the build starts again in a fresh workspace). Mistakes in the spec and
    /// images or repositories that do not exist are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Workspace { .. } => true,
            Self::BaseUnavailable { transient, .. } | Self::Push { transient, .. } => *transient,
            Self::InvalidSpec { .. }
            | Self::PathOutsideWorkspace { .. }
            | Self::SourceMissing { .. }
            | Self::SymlinkOutsideTree { .. }
            | Self::UnsupportedFileType { .. }
            | Self::PathConflict { .. }
            | Self::InvalidReference { .. }
            | Self::UnsupportedBase { .. } => false,
        }
    }

    /// The error's kind as a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. }
            | Self::PathOutsideWorkspace { .. }
            | Self::SourceMissing { .. }
            | Self::SymlinkOutsideTree { .. }
            | Self::UnsupportedFileType { .. }
            | Self::PathConflict { .. }
            | Self::InvalidReference { .. } => "invalid_image_spec",
            Self::Workspace { .. } => "workspace_io",
            Self::BaseUnavailable { .. } | Self::UnsupportedBase { .. } => "base_image",
            Self::Push { .. } => "registry_push",
        }
    }
}

/// The registry images are pushed to, and the client that talks to it (and to the registries
/// of base images). Build it once: it caches connections and registry tokens.
#[derive(Clone)]
pub struct Registry {
    /// `host[:port]`.
    address: String,
    /// Plain HTTP to it (a local or in-cluster registry without TLS).
    insecure: bool,
    /// Basic-auth credentials, or anonymous.
    auth: RegistryAuth,
    /// Other registries (of base images) reached over plain HTTP.
    insecure_registries: Vec<String>,
    /// oci-client, configured for the above.
    client: Client,
    /// The client for requests to the target registry that need no token: blob checks,
    /// uploads, mounts and the manifest put. Anonymous, it is a second client in which no
    /// credentials are ever stored: oci-client asks `/v2/` for a token before every request
    /// once credentials are stored for a registry, and a registry that issues none (an open
    /// one) would cost a round trip per request. With credentials it is `client` itself.
    direct: Client,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `RegistryAuth`'s own Debug never prints the password.
        f.debug_struct("Registry")
            .field("address", &self.address)
            .field("insecure", &self.insecure)
            .field("auth", &self.auth)
            .field("insecure_registries", &self.insecure_registries)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The registry at `address` (`host[:port]`), over HTTPS unless `insecure`; with basic
    /// authentication when both `username` and `password` are given, else anonymous.
    ///
    /// Installs the process's rustls provider (`baton_kit::tls`) if nobody has yet.
    pub fn new(address: impl Into<String>, insecure: bool, username: Option<String>, password: Option<Secret>) -> Self {
        let auth = match (username, password) {
            (Some(user), Some(password)) => {
                RegistryAuth::Basic(user, String::from_utf8_lossy(password.expose()).into_owned())
            }
            _ => RegistryAuth::Anonymous,
        };
        let address = address.into();
        let (client, direct) = clients(&address, insecure, &[], &auth);
        Self {
            address,
            insecure,
            auth,
            insecure_registries: Vec::new(),
            client,
            direct,
        }
    }

    /// Also reaches these registries (`host[:port]`, where base images live) over plain HTTP.
    #[must_use]
    pub fn with_insecure_registries(mut self, registries: &[String]) -> Self {
        self.insecure_registries = registries.to_vec();
        (self.client, self.direct) = clients(&self.address, self.insecure, registries, &self.auth);
        self
    }

    /// `host[:port]` of the registry.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether it is reached over plain HTTP.
    pub fn insecure(&self) -> bool {
        self.insecure
    }
}

/// The two clients of a [`Registry`]: the general one and the one for requests that need no
/// token (a separate client only when anonymous: see the `direct` field of [`Registry`]).
fn clients(address: &str, insecure: bool, insecure_registries: &[String], auth: &RegistryAuth) -> (Client, Client) {
    let general = client(address, insecure, insecure_registries);
    let direct = match auth {
        RegistryAuth::Anonymous => client(address, insecure, insecure_registries),
        _ => general.clone(),
    };
    (general, direct)
}

/// oci-client for a target registry: plain HTTP only for the registries marked insecure, an
/// image index narrowed to linux/amd64.
fn client(address: &str, insecure: bool, insecure_registries: &[String]) -> Client {
    baton_kit::tls::install_crypto_provider();
    let mut plain_http = insecure_registries.to_vec();
    if insecure {
        plain_http.push(address.to_owned());
    }
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain_http),
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        // One POST and one PUT a blob, not a POST, PATCHes and a closing PUT: Baton's blobs are
        // in memory already, and every request is a round trip the release waits for.
        use_monolithic_push: true,
        ..ClientConfig::default()
    })
}

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

/// The layer built from the spec's `add` entries.
#[derive(Clone)]
pub struct Layer {
    /// The compressed tar, as uploaded.
    pub blob: Bytes,
    /// `sha256:<hex>` of [`blob`](Self::blob): the layer's digest in the manifest.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar: its entry in the config's `rootfs.diff_ids`.
    pub diff_id: String,
    /// The archive's paths in order (no leading `/`, directories end with `/`), for logs and
    /// tests.
    pub paths: Vec<String>,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("size", &self.blob.len())
            .field("paths", &self.paths)
            .finish()
    }
}

impl Layer {
    /// The layer's descriptor in the manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: LAYER_MEDIA_TYPE.to_owned(),
            digest: self.digest.clone(),
            size: self.blob.len() as u64,
            urls: Vec::new(),
        }
    }
}

/// A resolved base image: what the new image reuses.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// The base as written in `image.base`.
    pub name: String,
    /// The platform manifest's digest (the index's entry for linux/amd64, if the base is one).
    pub digest: String,
    /// Its layers, reused by digest.
    pub layers: Vec<Descriptor>,
    /// Its image config, which the new config starts from.
    pub config: Value,
    /// Parsed reference, to mount or copy blobs from.
    reference: Reference,
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

/// Builds the image of `job` and pushes it, tagged with the commit sha; returns it as Baton's
/// events carry it. [`assemble_and_push`] returns the push's details too.
///
/// # Errors
/// As [`assemble_and_push`].
pub async fn build_and_push(job: &ImageJob<'_>) -> Result<ImageInfo, ImageError> {
    assemble_and_push(job).await.map(|image| image.info())
}

/// Builds the image of `job` and pushes it, tagged with the commit sha.
///
/// # Errors
/// [`ImageError`]: spec and workspace mistakes before any network traffic, then base and push
/// failures, each classified by [`ImageError::is_transient`].
#[tracing::instrument(skip_all, fields(repository = job.repository, commit = job.commit))]
pub async fn assemble_and_push(job: &ImageJob<'_>) -> Result<PushedImage, ImageError> {
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

    // Every blob the manifest names is asked about at once, and the missing ones are provided
    // at once. Only when none was missing can the tag already name this very manifest (a
    // registry refuses a manifest whose blobs it lacks), so only then is the tag asked; a new
    // commit's push waits for four requests in all: the checks, an upload's POST and PUT, and
    // the manifest.
    let mut wanted: Vec<(Descriptor, BlobSource<'_>)> = Vec::new();
    if let Some(base) = &base {
        wanted.extend(base.layers.iter().map(|d| (d.clone(), BlobSource::Base(base))));
    }
    wanted.extend(
        new_layers
            .iter()
            .map(|layer| (layer.descriptor(), BlobSource::Data(layer.blob.clone()))),
    );
    wanted.push((config_descriptor.clone(), BlobSource::Data(config)));
    let present = futures::future::try_join_all(
        wanted
            .iter()
            .map(|(descriptor, _)| registry.blob_present(&target, descriptor)),
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
        missing.is_empty() && registry.current_manifest_digest(&target).await.as_deref() == Some(digest.as_str());
    let target_ref = &target;
    let provided = futures::future::try_join_all(
        missing
            .into_iter()
            .map(|(descriptor, source)| async move { registry.provide_blob(target_ref, &descriptor, source).await }),
    )
    .await?;
    for outcome in provided {
        match outcome {
            Provided::Mounted => stats.mounted += 1,
            Provided::Uploaded(bytes) => stats.uploaded_bytes += bytes,
        }
    }
    if !already_tagged {
        registry.put_manifest(&target, manifest, &digest, &mut stats).await?;
    }

    tracing::info!(
        %digest,
        uploaded_bytes = stats.uploaded_bytes,
        skipped_blobs = stats.skipped,
        mounted_blobs = stats.mounted,
        "image pushed"
    );
    let (address, repository) = (registry.address.clone(), job.repository.to_owned());
    Ok(PushedImage {
        reference: format!("{address}/{repository}@{digest}"),
        purl: purl(&address, &repository, &digest, job.commit),
        tag: job.commit.to_owned(),
        config_digest: config_descriptor.digest,
        layers,
        uploaded_bytes: stats.uploaded_bytes,
        skipped_blobs: stats.skipped,
        mounted_blobs: stats.mounted,
        digest,
        registry: address,
        repository,
    })
}

impl Registry {
    /// Fetches the base image's manifest (an index is narrowed to linux/amd64) and config.
    /// The target registry's credentials are used if the base lives there, else none.
    ///
    /// # Errors
    /// [`ImageError::InvalidReference`], [`ImageError::BaseUnavailable`] (transient or not) or
    /// [`ImageError::UnsupportedBase`].
    pub async fn pull_base(&self, base: &str) -> Result<BaseImage, ImageError> {
        let reference: Reference =
            base.parse()
                .map_err(|error: oci_client::ParseError| ImageError::InvalidReference {
                    field: "image.base".to_owned(),
                    reference: base.to_owned(),
                    reason: error.to_string(),
                })?;
        let unavailable = |error: OciDistributionError| {
            let (message, transient) = describe(&error);
            ImageError::BaseUnavailable {
                reference: base.to_owned(),
                message,
                transient,
            }
        };
        let unsupported = |reason: String| ImageError::UnsupportedBase {
            reference: base.to_owned(),
            reason,
        };

        let auth = if reference.resolve_registry() == self.address {
            self.auth.clone()
        } else {
            RegistryAuth::Anonymous
        };
        let (manifest, digest) = self
            .client
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(unavailable)?;
        if !IMAGE_CONFIG_MEDIA_TYPES.contains(&manifest.config.media_type.as_str()) {
            return Err(unsupported(format!(
                "its config has media type `{}`, so it is an artifact, not a container image",
                manifest.config.media_type
            )));
        }
        let mut raw_config = Vec::new();
        self.client
            .pull_blob(&reference, &manifest.config, &mut raw_config)
            .await
            .map_err(unavailable)?;
        let config: Value = serde_json::from_slice(&raw_config)
            .map_err(|error| unsupported(format!("its config is not JSON: {error}")))?;
        if !config.is_object() {
            return Err(unsupported("its config is not a JSON object".to_owned()));
        }
        let diff_ids = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if diff_ids != manifest.layers.len() {
            return Err(unsupported(format!(
                "its manifest lists {} layers but its config {diff_ids} diff_ids",
                manifest.layers.len()
            )));
        }
        let layers = manifest
            .layers
            .iter()
            .map(|layer| {
                Ok(Descriptor {
                    media_type: if layer.media_type == DOCKER_LAYER_MEDIA_TYPE {
                        LAYER_MEDIA_TYPE.to_owned()
                    } else {
                        layer.media_type.clone()
                    },
                    digest: layer.digest.clone(),
                    size: u64::try_from(layer.size)
                        .map_err(|_| unsupported(format!("layer {} has a negative size", layer.digest)))?,
                    urls: layer.urls.clone().unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        Ok(BaseImage {
            name: base.to_owned(),
            digest,
            layers,
            config,
            reference,
        })
    }

    /// The reference pushed to: `<registry>/<repository>:<commit>`, both parts checked.
    fn target_reference(&self, repository: &str, commit: &str) -> Result<Reference, ImageError> {
        let invalid = |field: &str, message: String| ImageError::InvalidSpec {
            field: field.to_owned(),
            message,
        };
        if commit.is_empty()
            || commit.len() > 128
            || !commit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(invalid(
                "commit",
                format!("`{commit}` cannot be a tag: 1 to 128 letters, digits, `_`, `.` or `-`"),
            ));
        }
        // Parsed under a placeholder host, so a repository's first segment is never taken for a
        // registry and the grammar (lower case, separators) is checked.
        let parsed: Result<Reference, _> = format!("baton.invalid/{repository}:{commit}").parse();
        if !parsed.is_ok_and(|parsed| parsed.repository() == repository) {
            return Err(invalid(
                "repository",
                format!(
                    "`{repository}` is not a repository name: lower-case letters and digits, separated by `.`, `_`, \
                     `-` or `/`, without a registry or tag"
                ),
            ));
        }
        Ok(Reference::with_tag(
            self.address.clone(),
            repository.to_owned(),
            commit.to_owned(),
        ))
    }

    /// Whether the target repository already has the blob. A foreign layer counts as present:
    /// runtimes fetch it from its URLs, and registries refuse to host it.
    async fn blob_present(&self, target: &Reference, descriptor: &Descriptor) -> Result<bool, ImageError> {
        let digest = descriptor.digest.as_str();
        if !descriptor.urls.is_empty() {
            tracing::debug!(digest, "foreign layer referenced, not pushed");
            return Ok(true);
        }
        self.direct
            .blob_exists(target, digest)
            .await
            .map_err(|error| self.push_error(target, format!("checking for blob {digest}"), &error))
    }

    /// Puts a blob the target repository lacks there: uploaded, mounted from the base's
    /// repository, or copied from the base's registry.
    async fn provide_blob(
        &self,
        target: &Reference,
        descriptor: &Descriptor,
        source: BlobSource<'_>,
    ) -> Result<Provided, ImageError> {
        let digest = descriptor.digest.as_str();
        let data = match source {
            BlobSource::Data(data) => data,
            BlobSource::Base(base) => {
                if base.reference.resolve_registry() == target.resolve_registry() {
                    match self.direct.mount_blob(target, &base.reference, digest).await {
                        Ok(()) => return Ok(Provided::Mounted),
                        Err(error) => {
                            tracing::debug!(digest, %error, "cross-repository mount declined, copying the blob")
                        }
                    }
                }
                let mut data = Vec::new();
                self.client
                    .pull_blob(&base.reference, digest, &mut data)
                    .await
                    .map_err(|error| {
                        let (message, transient) = describe(&error);
                        ImageError::BaseUnavailable {
                            reference: base.name.clone(),
                            message: format!("downloading layer {digest}: {message}"),
                            transient,
                        }
                    })?;
                Bytes::from(data)
            }
        };
        let size = data.len() as u64;
        self.direct
            .push_blob(target, data, digest)
            .await
            .map_err(|error| self.push_error(target, format!("uploading blob {digest}"), &error))?;
        Ok(Provided::Uploaded(size))
    }

    /// The digest of the manifest the tag names now, if it names one. Any failure (typically
    /// "manifest unknown") just means the manifest must be put.
    async fn current_manifest_digest(&self, target: &Reference) -> Option<String> {
        self.client.fetch_manifest_digest(target, &self.auth).await.ok()
    }

    /// Puts the manifest under the tag.
    async fn put_manifest(
        &self,
        target: &Reference,
        manifest: Bytes,
        digest: &str,
        stats: &mut PushStats,
    ) -> Result<(), ImageError> {
        let size = manifest.len() as u64;
        self.direct
            .push_manifest_raw(target, manifest, http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE))
            .await
            .map_err(|error| self.push_error(target, format!("putting manifest {digest}"), &error))?;
        stats.uploaded_bytes += size;
        Ok(())
    }

    fn push_error(&self, target: &Reference, operation: String, error: &OciDistributionError) -> ImageError {
        let (message, transient) = describe(error);
        ImageError::Push {
            registry: self.address.clone(),
            repository: target.repository().to_owned(),
            operation,
            message,
            transient,
        }
    }
}

/// Where a missing blob comes from.
enum BlobSource<'a> {
    /// Built here: uploaded.
    Data(Bytes),
    /// A base layer: mounted or copied from the base's repository.
    Base(&'a BaseImage),
}

/// How a missing blob reached the target repository.
enum Provided {
    /// Mounted from the base's repository in the same registry: nothing uploaded.
    Mounted,
    /// Uploaded, this many bytes.
    Uploaded(u64),
}

/// What one push did, for [`PushedImage`].
#[derive(Debug, Default)]
struct PushStats {
    uploaded_bytes: u64,
    skipped: usize,
    mounted: usize,
}

/// Whether `image.base` means an empty base.
fn is_scratch(base: &str) -> bool {
    base.trim() == SCRATCH
}

/// The registry's message for `error`, and whether retrying may help.
fn describe(error: &OciDistributionError) -> (String, bool) {
    use OciDistributionError as E;
    match error {
        E::RegistryError { envelope, .. } => (envelope_message(envelope), envelope_is_transient(envelope)),
        E::ServerError { code, message, .. } => {
            let transient = *code >= 500 || *code == 429 || *code == 408;
            let text = match serde_json::from_str::<OciEnvelope>(message) {
                Ok(envelope) => envelope_message(&envelope),
                Err(_) if message.trim().is_empty() => "no message".to_owned(),
                Err(_) => truncate(message.trim()),
            };
            (format!("HTTP {code}: {text}"), transient)
        }
        E::UnauthorizedError { url } => (format!("not authorized for {url}"), false),
        E::AuthenticationFailure(reason) => (format!("authentication failed: {}", truncate(reason)), false),
        // Connection refused or reset, DNS, timeouts: the network, or a corrupted transfer.
        E::RequestError(_) | E::IoError(_) | E::DigestError(_) => (error_chain(error), true),
        _ => (error_chain(error), false),
    }
}

/// `CODE: message` for each error the registry listed.
fn envelope_message(envelope: &OciEnvelope) -> String {
    let parts: Vec<String> = envelope
        .errors
        .iter()
        .map(|error| {
            let code = serde_json::to_value(&error.code)
                .ok()
                .and_then(|code| code.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", error.code));
            if error.message.is_empty() {
                code
            } else {
                format!("{code}: {}", truncate(&error.message))
            }
        })
        .collect();
    if parts.is_empty() {
        "the registry gave no reason".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Rate limits and expired upload sessions pass; everything else the registry says is final.
fn envelope_is_transient(envelope: &OciEnvelope) -> bool {
    envelope.errors.iter().any(|error| {
        matches!(
            error.code,
            OciErrorCode::Toomanyrequests | OciErrorCode::BlobUploadUnknown
        )
    })
}

/// An error and its sources, `outer: inner: innermost`, repeated messages dropped.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    truncate(&text)
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks the spec's fields that do not concern files (those are checked by [`build_layer`]).
fn check_spec(spec: &ImageSpec) -> Result<(), ImageError> {
    let invalid = |field: &str, message: String| ImageError::InvalidSpec {
        field: field.to_owned(),
        message,
    };
    for (index, add) in spec.add.iter().enumerate() {
        if let Some(mode) = &add.mode {
            parse_mode(mode).map_err(|message| invalid(&format!("image.add[{index}].mode"), message))?;
        }
    }
    for port in &spec.expose {
        exposed_port(port).map_err(|message| invalid("image.expose", message))?;
    }
    for name in spec.env.keys() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(
                "image.env",
                format!("`{name}` is not a variable name (no `=`, not empty)"),
            ));
        }
    }
    Ok(())
}

/// `"0755"` (or `"0o755"`, `"755"`) as permission bits.
fn parse_mode(mode: &str) -> Result<u32, String> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|bits| *bits <= 0o7777)
        .ok_or_else(|| format!("`{mode}` is not an octal mode like \"0755\""))
}

/// `8080`, `8080/tcp` or `53/udp` as the config's `8080/tcp` key.
fn exposed_port(port: &str) -> Result<String, String> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    match (number.parse::<u16>(), protocol.as_str()) {
        (Ok(n), "tcp" | "udp" | "sctp") if n > 0 => Ok(format!("{n}/{protocol}")),
        _ => Err(format!(
            "`{port}` is not a port like \"8080/tcp\" (1-65535, tcp, udp or sctp)"
        )),
    }
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

/// The new image's config: the base's (or an empty linux/amd64 one), with the spec applied.
///
/// - `Env`: the base's, a variable of the spec replacing the base's value in place, new ones
///   appended in name order;
/// - `Entrypoint` and `Cmd`: the spec's when given; a new entrypoint without `cmd` drops the
///   base's `Cmd` (as Docker does: the base's arguments were meant for the base's entrypoint);
/// - `WorkingDir`, `User`: the spec's when given; `ExposedPorts` and `Labels`: merged, the spec
///   winning, then Baton's revision and source labels;
/// - `rootfs.diff_ids`: the base's plus `layer_diff_ids`; `history`: the base's plus one entry per new layer,
///   dropped when the base's history does not match its layers;
/// - `created`: [`CREATED`].
///
/// # Errors
/// [`ImageError::InvalidSpec`] for an exposed port that is not `<port>[/<protocol>]`. Fields of
/// the base config that have the wrong JSON type are replaced, not refused.
pub fn image_config(
    base: Option<&Value>,
    spec: &ImageSpec,
    commit: &str,
    source_url: &str,
    layer_diff_ids: &[String],
) -> Result<Value, ImageError> {
    let mut image = match base {
        Some(Value::Object(config)) => config.clone(),
        _ => Map::new(),
    };
    image.insert("created".into(), json!(CREATED));
    image.entry("architecture").or_insert_with(|| json!(ARCHITECTURE));
    image.entry("os").or_insert_with(|| json!(OS));

    let config = object_field(&mut image, "config");
    let mut env: Vec<Value> = config.get("Env").and_then(Value::as_array).cloned().unwrap_or_default();
    for (name, value) in &spec.env {
        let entry = json!(format!("{name}={value}"));
        let same_name = |existing: &Value| {
            existing
                .as_str()
                .is_some_and(|e| e.split_once('=').map_or(e, |(key, _)| key) == name.as_str())
        };
        match env.iter_mut().find(|existing| same_name(existing)) {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    if !env.is_empty() {
        config.insert("Env".into(), Value::Array(env));
    }
    if !spec.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(spec.entrypoint));
        if spec.cmd.is_empty() {
            config.remove("Cmd");
        }
    }
    if !spec.cmd.is_empty() {
        config.insert("Cmd".into(), json!(spec.cmd));
    }
    if let Some(workdir) = &spec.workdir {
        config.insert("WorkingDir".into(), json!(workdir));
    }
    if let Some(user) = &spec.user {
        config.insert("User".into(), json!(user));
    }
    if !spec.expose.is_empty() {
        let ports = object_field(config, "ExposedPorts");
        for port in &spec.expose {
            let key = exposed_port(port).map_err(|message| ImageError::InvalidSpec {
                field: "image.expose".into(),
                message,
            })?;
            ports.insert(key, json!({}));
        }
    }
    let labels = object_field(config, "Labels");
    for (name, value) in &spec.labels {
        labels.insert(name.clone(), json!(value));
    }
    labels.insert(REVISION_LABEL.into(), json!(commit));
    labels.insert(SOURCE_LABEL.into(), json!(source_url));

    let rootfs = object_field(&mut image, "rootfs");
    rootfs.insert("type".into(), json!("layers"));
    let mut diff_ids: Vec<Value> = rootfs
        .get("diff_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base_layers = diff_ids.len();
    diff_ids.extend(layer_diff_ids.iter().map(|id| json!(id)));
    rootfs.insert("diff_ids".into(), Value::Array(diff_ids));

    let mut history: Vec<Value> = image
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base_layer_entries = history
        .iter()
        .filter(|entry| !entry.get("empty_layer").and_then(Value::as_bool).unwrap_or(false))
        .count();
    if base_layer_entries == base_layers {
        // One history entry per new layer: one per `add` entry (or one empty layer).
        let added: Vec<String> = spec.add.iter().map(|add| format!("{} {}", add.from, add.to)).collect();
        for n in 0..layer_diff_ids.len() {
            let what = added.get(n).map_or_else(|| "nothing".to_owned(), Clone::clone);
            history.push(json!({
                "created": CREATED,
                "created_by": format!("baton: add {what}"),
                "comment": format!("built from {source_url} at {commit}"),
            }));
        }
        image.insert("history".into(), Value::Array(history));
    } else {
        // Runtimes pair history entries with layers; a mismatched list is worse than none.
        image.remove("history");
    }
    Ok(Value::Object(image))
}

/// `map[key]` as an object, replacing whatever else was there.
fn object_field<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(object) => object,
        _ => unreachable!("just made an object"),
    }
}

/// Builds the reproducible layer holding the `add` entries (see the module docs for what
/// "reproducible" covers). Blocking: call it from `spawn_blocking`.
///
/// A `from` naming a file is written at `to` (inside `to` if `to` ends with `/`); a `from`
/// naming a directory has its content written under `to`. `mode` applies to every file and
/// directory the entry adds (like Docker's `COPY --chmod`). When two entries write the same file,
/// the later one wins; a file and a directory at one path is an error.
///
/// # Errors
/// A `from` that is absolute, climbs out with `..` or resolves through a symlink outside the
/// workspace; a missing `from`; a `to` that is relative or has `..`; a symlink in an added
/// directory pointing outside it; a special file; I/O failures.
pub fn build_layer(workspace: &Path, add: &[AddEntry]) -> Result<Layer, ImageError> {
    let root = fs::canonicalize(workspace).map_err(|source| ImageError::Workspace {
        path: workspace.to_owned(),
        source,
    })?;
    let mut tree = Tree {
        root,
        nodes: BTreeMap::new(),
    };
    for (index, entry) in add.iter().enumerate() {
        tree.add(index, entry)?;
    }
    tree.write()
}

/// One entry of the layer.
#[derive(Debug)]
enum Node {
    Dir { mode: u32, implicit: bool },
    File { source: PathBuf, mode: u32 },
    Symlink { target: PathBuf },
}

/// The layer's entries, keyed by their path in the image (relative, no leading `/`); the
/// `BTreeMap` order (component by component) writes every parent before its children.
struct Tree {
    /// The canonical workspace.
    root: PathBuf,
    nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    fn add(&mut self, index: usize, entry: &AddEntry) -> Result<(), ImageError> {
        let from_field = format!("image.add[{index}].from");
        let mode = match &entry.mode {
            Some(mode) => Some(parse_mode(mode).map_err(|message| ImageError::InvalidSpec {
                field: format!("image.add[{index}].mode"),
                message,
            })?),
            None => None,
        };
        let (to, into_dir) = image_path(&entry.to).map_err(|message| ImageError::InvalidSpec {
            field: format!("image.add[{index}].to"),
            message,
        })?;
        let outside = |reason: String| ImageError::PathOutsideWorkspace {
            field: from_field.clone(),
            path: entry.from.clone(),
            reason,
        };
        let relative = workspace_relative(&entry.from).map_err(outside)?;
        let source = self.root.join(&relative);
        let missing = || ImageError::SourceMissing {
            field: from_field.clone(),
            path: entry.from.clone(),
        };
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source: io::Error| match source.kind() {
                io::ErrorKind::NotFound => missing(),
                _ => ImageError::Workspace { path, source },
            }
        };
        fs::symlink_metadata(&source).map_err(io_error(&source))?;
        let resolved = fs::canonicalize(&source).map_err(io_error(&source))?;
        if !resolved.starts_with(&self.root) {
            return Err(outside(format!(
                "it resolves through a symlink to {}",
                resolved.display()
            )));
        }
        let metadata = fs::metadata(&resolved).map_err(io_error(&resolved))?;
        if metadata.is_dir() {
            if !to.as_os_str().is_empty() {
                self.insert(
                    to.clone(),
                    Node::Dir {
                        mode: mode.unwrap_or(DIR_MODE),
                        implicit: false,
                    },
                )?;
            }
            self.walk(&resolved, &resolved, &to, mode)
        } else if metadata.is_file() {
            let to = if into_dir {
                let name = resolved.file_name().ok_or_else(missing)?;
                to.join(name)
            } else {
                to
            };
            let mode = mode.unwrap_or_else(|| normalised_mode(metadata.permissions().mode()));
            self.insert(to, Node::File { source: resolved, mode })
        } else {
            Err(ImageError::UnsupportedFileType {
                path: entry.from.clone(),
                kind: file_kind(&metadata.file_type()),
            })
        }
    }

    /// Adds the content of `dir` (inside the added tree `tree`) under `image_dir`.
    fn walk(&mut self, tree: &Path, dir: &Path, image_dir: &Path, mode: Option<u32>) -> Result<(), ImageError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ImageError::Workspace { path, source }
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            names.push(entry.map_err(io_error(dir))?.file_name());
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let image_path = image_dir.join(&name);
            let metadata = fs::symlink_metadata(&path).map_err(io_error(&path))?;
            let kind = metadata.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(io_error(&path))?;
                self.check_symlink(tree, &path, &target)?;
                self.insert(image_path, Node::Symlink { target })?;
            } else if kind.is_dir() {
                self.insert(
                    image_path.clone(),
                    Node::Dir {
                        mode: mode.unwrap_or(DIR_MODE),
                        implicit: false,
                    },
                )?;
                self.walk(tree, &path, &image_path, mode)?;
            } else if kind.is_file() {
                let mode = mode.unwrap_or_else(|| normalised_mode(metadata.permissions().mode()));
                self.insert(image_path, Node::File { source: path, mode })?;
            } else {
                return Err(ImageError::UnsupportedFileType {
                    path: self.display(&path),
                    kind: file_kind(&kind),
                });
            }
        }
        Ok(())
    }

    /// A symlink at `link` (inside `tree`) may stay only if its target is relative and,
    /// resolved from the link's directory, does not leave `tree`.
    fn check_symlink(&self, tree: &Path, link: &Path, target: &Path) -> Result<(), ImageError> {
        let outside = || ImageError::SymlinkOutsideTree {
            link: self.display(link),
            target: target.display().to_string(),
            tree: self.display(tree),
        };
        if target.is_absolute() {
            return Err(outside());
        }
        let parent = link
            .parent()
            .and_then(|parent| parent.strip_prefix(tree).ok())
            .ok_or_else(outside)?;
        let mut depth: Vec<Component<'_>> = parent.components().collect();
        for component in target.components() {
            match component {
                Component::CurDir => {}
                Component::ParentDir => {
                    depth.pop().ok_or_else(outside)?;
                }
                Component::Normal(_) => depth.push(component),
                Component::RootDir | Component::Prefix(_) => return Err(outside()),
            }
        }
        Ok(())
    }

    /// Inserts `node` at `path`, creating missing parents as 0755 directories.
    fn insert(&mut self, path: PathBuf, node: Node) -> Result<(), ImageError> {
        for ancestor in path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
            match self.nodes.get(ancestor) {
                None => {
                    self.nodes.insert(
                        ancestor.to_owned(),
                        Node::Dir {
                            mode: DIR_MODE,
                            implicit: true,
                        },
                    );
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(ImageError::PathConflict {
                        path: format!("/{}", ancestor.display()),
                        reason: format!("is a file or symlink, yet `/{}` is added inside it", path.display()),
                    });
                }
            }
        }
        match (self.nodes.get(&path), &node) {
            // An implicit parent never overrides a directory already there.
            (Some(Node::Dir { .. }), Node::Dir { implicit: true, .. }) => {}
            (Some(Node::Dir { .. }), Node::File { .. } | Node::Symlink { .. })
            | (Some(Node::File { .. } | Node::Symlink { .. }), Node::Dir { .. }) => {
                return Err(ImageError::PathConflict {
                    path: format!("/{}", path.display()),
                    reason: "is added both as a directory and as a file".to_owned(),
                });
            }
            _ => {
                self.nodes.insert(path, node);
            }
        }
        Ok(())
    }

    /// Writes the tar through gzip, hashing the uncompressed stream on the way.
    fn write(self) -> Result<Layer, ImageError> {
        let gzip = GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), Compression::new(GZIP_LEVEL));
        let mut archive = tar::Builder::new(HashingWriter {
            inner: gzip,
            hasher: Sha256::new(),
        });
        let mut paths = Vec::with_capacity(self.nodes.len());
        for (path, node) in &self.nodes {
            let failed = |source| ImageError::Workspace {
                path: path.clone(),
                source,
            };
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(0);
            match node {
                Node::Dir { mode, .. } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    let mut name = path.as_os_str().to_owned();
                    name.push("/");
                    archive.append_data(&mut header, &name, io::empty()).map_err(failed)?;
                    paths.push(name.to_string_lossy().into_owned());
                }
                Node::File { source, mode } => {
                    let data = fs::read(source).map_err(|source_error| ImageError::Workspace {
                        path: source.clone(),
                        source: source_error,
                    })?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    archive
                        .append_data(&mut header, path, data.as_slice())
                        .map_err(failed)?;
                    paths.push(path.to_string_lossy().into_owned());
                }
                Node::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(SYMLINK_MODE);
                    archive.append_link(&mut header, path, target).map_err(failed)?;
                    paths.push(path.to_string_lossy().into_owned());
                }
            }
        }
        let finished = |source| ImageError::Workspace {
            path: PathBuf::from("<layer>"),
            source,
        };
        let HashingWriter { inner, hasher } = archive.into_inner().map_err(finished)?;
        let blob = Bytes::from(inner.finish().map_err(finished)?);
        Ok(Layer {
            digest: sha256_digest(&blob),
            diff_id: format!("sha256:{}", hex::encode(hasher.finalize())),
            blob,
            paths,
        })
    }

    /// `path` relative to the workspace, for messages.
    fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }
}

/// `from` as a normalised path inside the workspace; `Err` says how it leaves it.
fn workspace_relative(from: &str) -> Result<PathBuf, String> {
    let path = Path::new(from);
    if path.is_absolute() {
        return Err("it is an absolute path".to_owned());
    }
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !relative.pop() {
                    return Err("its `..` climbs above the repository root".to_owned());
                }
            }
            Component::Normal(part) => relative.push(part),
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path".to_owned()),
        }
    }
    Ok(relative)
}

/// `to` as a relative path in the image (empty for `/`), and whether it ends with `/`.
fn image_path(to: &str) -> Result<(PathBuf, bool), String> {
    if !to.starts_with('/') {
        return Err(format!("`{to}` must be an absolute path in the image, e.g. `/{to}`"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(to).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("`{to}` must not contain `..`; write the normalised path"));
            }
        }
    }
    Ok((relative, to.ends_with('/')))
}

/// The mode git would record: executable or not, nothing else of the checkout's umask.
fn normalised_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

fn file_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "named pipe"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Passes bytes on to `inner` and hashes them: the tar's uncompressed digest, computed in the
/// same pass that compresses it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;
    use std::time::SystemTime;

    fn add(from: &str, to: &str, mode: Option<&str>) -> AddEntry {
        AddEntry {
            from: from.into(),
            to: to.into(),
            mode: mode.map(Into::into),
        }
    }

    fn write(dir: &Path, path: &str, content: &str, mode: u32) {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// One entry of a layer, read back with the `tar` crate.
    #[derive(Debug)]
    struct Entry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        /// `(mtime, uid, gid, user name)`: what must never vary.
        fixed: (u64, u64, u64, String),
        /// File content or symlink target.
        content: String,
    }

    /// The layer's entries, after checking its `diff_id` is the uncompressed tar's digest.
    fn entries(layer: &Layer) -> Vec<Entry> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&layer.blob[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(layer.diff_id, sha256_digest(&raw));
        let mut archive = tar::Archive::new(&raw[..]);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut content = String::new();
                entry.read_to_string(&mut content).unwrap();
                if let Some(link) = entry.link_name().unwrap() {
                    content = link.display().to_string();
                }
                Entry {
                    path: entry.path().unwrap().display().to_string(),
                    kind: header.entry_type(),
                    mode: header.mode().unwrap(),
                    fixed: (
                        header.mtime().unwrap(),
                        header.uid().unwrap(),
                        header.gid().unwrap(),
                        header.username().unwrap().unwrap_or_default().to_owned(),
                    ),
                    content,
                }
            })
            .collect()
    }

    fn sample_workspace(dir: &Path, file_mode: u32, exec_mode: u32) {
        write(dir, "target/release/shop", "#!binary", exec_mode);
        write(dir, "static/index.html", "<h1>shop</h1>", file_mode);
        write(dir, "static/css/site.css", "body{}", file_mode);
        symlink("index.html", dir.join("static/home.html")).unwrap();
        symlink("../index.html", dir.join("static/css/up.html")).unwrap();
    }

    fn sample_add() -> Vec<AddEntry> {
        vec![
            add("target/release/shop", "/app/bin/shop", None),
            add("./static", "/app/static", None),
        ]
    }

    #[test]
    fn layer_has_sorted_entries_parents_and_fixed_metadata() {
        let dir = tempfile::tempdir().unwrap();
        sample_workspace(dir.path(), 0o644, 0o755);

        let layer = build_layer(dir.path(), &sample_add()).unwrap();

        let entries = entries(&layer);
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "app/",
                "app/bin/",
                "app/bin/shop",
                "app/static/",
                "app/static/css/",
                "app/static/css/site.css",
                "app/static/css/up.html",
                "app/static/home.html",
                "app/static/index.html",
            ]
        );
        assert_eq!(layer.paths, names);
        for entry in &entries {
            assert_eq!(entry.fixed, (0, 0, 0, String::new()), "{entry:?}");
        }
        let by_name = |name: &str| entries.iter().find(|e| e.path == name).unwrap();
        assert_eq!(
            (by_name("app/").kind, by_name("app/").mode),
            (tar::EntryType::Directory, 0o755)
        );
        let shop = by_name("app/bin/shop");
        assert_eq!(
            (shop.kind, shop.mode, shop.content.as_str()),
            (tar::EntryType::Regular, 0o755, "#!binary")
        );
        assert_eq!(by_name("app/static/index.html").mode, 0o644);
        let home = by_name("app/static/home.html");
        assert_eq!(
            (home.kind, home.content.as_str()),
            (tar::EntryType::Symlink, "index.html")
        );
        assert_eq!(by_name("app/static/css/up.html").content, "../index.html");
        assert!(layer.blob.starts_with(&[0x1f, 0x8b]), "gzip");
    }

    #[test]
    fn same_contents_give_the_same_digest_whatever_the_checkout() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        sample_workspace(first.path(), 0o644, 0o755);
        // Another checkout: another umask (group-writable), other mtimes.
        sample_workspace(second.path(), 0o664, 0o775);
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        fs::File::options()
            .write(true)
            .open(second.path().join("static/index.html"))
            .unwrap()
            .set_modified(old)
            .unwrap();

        let a = build_layer(first.path(), &sample_add()).unwrap();
        let b = build_layer(second.path(), &sample_add()).unwrap();
        let again = build_layer(first.path(), &sample_add()).unwrap();

        assert_eq!(a.blob, b.blob, "byte-identical layers");
        assert_eq!((&a.digest, &a.diff_id), (&b.digest, &b.diff_id));
        assert_eq!(a.digest, again.digest);

        write(second.path(), "static/index.html", "<h1>changed</h1>", 0o644);
        let changed = build_layer(second.path(), &sample_add()).unwrap();
        assert_ne!(changed.digest, a.digest);
    }

    #[test]
    fn spec_mode_applies_to_what_the_entry_adds() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.sh", "echo", 0o644);
        write(dir.path(), "conf/a.yaml", "a: 1", 0o644);
        let layer = build_layer(
            dir.path(),
            &[
                add("run.sh", "/usr/local/bin/", Some("0750")),
                add("conf", "/etc/app", Some("0700")),
            ],
        )
        .unwrap();
        let entries = entries(&layer);
        let mode = |name: &str| entries.iter().find(|e| e.path == name).unwrap().mode;
        assert_eq!(
            mode("usr/local/bin/run.sh"),
            0o750,
            "a `to` ending in / receives the file"
        );
        assert_eq!(mode("usr/local/bin/"), 0o755, "implicit parents");
        assert_eq!(mode("etc/app/"), 0o700);
        assert_eq!(mode("etc/app/a.yaml"), 0o700);
    }

    #[test]
    fn paths_leaving_the_workspace_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("ws");
        write(&workspace, "app", "x", 0o755);
        write(dir.path(), "secret", "s", 0o644);
        symlink("../secret", workspace.join("link-out")).unwrap();
        symlink("app", workspace.join("link-in")).unwrap();

        let error = |from: &str| build_layer(&workspace, &[add(from, "/x", None)]).unwrap_err();

        let e = error("../secret");
        assert!(matches!(e, ImageError::PathOutsideWorkspace { .. }), "{e}");
        assert!(
            e.to_string().contains("image.add[0].from") && e.to_string().contains(".."),
            "{e}"
        );
        let e = error("sub/../../secret");
        assert!(matches!(e, ImageError::PathOutsideWorkspace { .. }), "{e}");
        let e = error("/etc/passwd");
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = error("link-out");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!e.is_transient());
        let e = error("missing/file");
        assert!(matches!(e, ImageError::SourceMissing { .. }), "{e}");
        assert!(e.to_string().contains("`missing/file` does not exist"), "{e}");

        build_layer(&workspace, &[add("link-in", "/x", None)]).expect("a symlink inside the workspace is followed");
        build_layer(&workspace, &[add("sub/../app", "/x", None)]).expect("`..` that stays inside is fine");
    }

    #[test]
    fn symlinks_leaving_the_added_tree_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "site/index.html", "x", 0o644);
        write(dir.path(), "other.txt", "x", 0o644);
        symlink("../other.txt", dir.path().join("site/escape")).unwrap();
        let e = build_layer(dir.path(), &[add("site", "/srv", None)]).unwrap_err();
        assert!(matches!(e, ImageError::SymlinkOutsideTree { .. }), "{e}");
        assert!(
            e.to_string().contains("site/escape") && e.to_string().contains("../other.txt"),
            "{e}"
        );

        fs::remove_file(dir.path().join("site/escape")).unwrap();
        symlink("/etc/passwd", dir.path().join("site/absolute")).unwrap();
        let e = build_layer(dir.path(), &[add("site", "/srv", None)]).unwrap_err();
        assert!(matches!(e, ImageError::SymlinkOutsideTree { .. }), "{e}");
    }

    #[test]
    fn bad_targets_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", "x", 0o644);
        write(dir.path(), "d/b", "x", 0o644);
        let error = |entries: &[AddEntry]| build_layer(dir.path(), entries).unwrap_err().to_string();
        assert!(error(&[add("a", "relative", None)]).contains("image.add[0].to"));
        assert!(error(&[add("a", "/app/../etc/x", None)]).contains("`..`"));
        assert!(error(&[add("a", "/x", Some("999"))]).contains("image.add[0].mode"));
        assert!(error(&[add("a", "/x", None), add("d", "/x", None)]).contains("both as a directory and as a file"));
        assert!(error(&[add("a", "/x", None), add("a", "/x/y", None)]).contains("is added inside it"));
        // The later file wins over the earlier.
        build_layer(dir.path(), &[add("a", "/x", None), add("d/b", "/x", None)]).unwrap();
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            name: None,
            base: SCRATCH.into(),
            add: vec![add("bin", "/app/bin", None)],
            entrypoint: vec!["/app/bin/shop".into()],
            cmd: vec![],
            env: BTreeMap::from([("PATH".into(), "/app/bin".into()), ("MODE".into(), "prod".into())]),
            workdir: Some("/app".into()),
            user: Some("65532".into()),
            expose: vec!["8080/tcp".into(), "9090".into()],
            labels: BTreeMap::from([("team".into(), "shop".into())]),
        }
    }

    #[test]
    fn config_from_scratch_has_the_spec_and_provenance() {
        let config = image_config(
            None,
            &spec(),
            "abc123",
            "https://git.example.com/shop.git",
            &["sha256:11".to_owned()],
        )
        .unwrap();
        assert_eq!(config["created"], CREATED);
        assert_eq!(
            (config["os"].as_str(), config["architecture"].as_str()),
            (Some("linux"), Some("amd64"))
        );
        assert_eq!(config["config"]["Entrypoint"], json!(["/app/bin/shop"]));
        assert_eq!(config["config"]["Env"], json!(["MODE=prod", "PATH=/app/bin"]));
        assert_eq!(
            config["config"]["ExposedPorts"],
            json!({"8080/tcp": {}, "9090/tcp": {}})
        );
        assert_eq!(config["config"]["WorkingDir"], "/app");
        assert_eq!(config["config"]["User"], "65532");
        assert_eq!(config["config"]["Labels"][REVISION_LABEL], "abc123");
        assert_eq!(
            config["config"]["Labels"][SOURCE_LABEL],
            "https://git.example.com/shop.git"
        );
        assert_eq!(config["config"]["Labels"]["team"], "shop");
        assert_eq!(config["rootfs"], json!({"type": "layers", "diff_ids": ["sha256:11"]}));
        assert_eq!(config["history"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn config_inherits_the_base_and_overrides_it() {
        let base = json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", "LANG=C"], "Cmd": ["/bin/sh"],
                "ExposedPorts": {"22/tcp": {}}, "Labels": {"vendor": "base", REVISION_LABEL: "base-rev"}
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:b1"]},
            "history": [{"created_by": "ADD rootfs"}, {"created_by": "CMD", "empty_layer": true}]
        });
        let config = image_config(
            Some(&base),
            &spec(),
            "abc123",
            "https://x/y.git",
            &["sha256:11".to_owned()],
        )
        .unwrap();
        assert_eq!(config["config"]["Env"], json!(["PATH=/app/bin", "LANG=C", "MODE=prod"]));
        assert_eq!(
            config["config"].get("Cmd"),
            None,
            "a new entrypoint drops the base's arguments"
        );
        assert_eq!(
            config["config"]["ExposedPorts"],
            json!({"22/tcp": {}, "8080/tcp": {}, "9090/tcp": {}})
        );
        assert_eq!(config["config"]["Labels"]["vendor"], "base");
        assert_eq!(config["config"]["Labels"][REVISION_LABEL], "abc123");
        assert_eq!(config["rootfs"]["diff_ids"], json!(["sha256:b1", "sha256:11"]));
        assert_eq!(config["history"].as_array().unwrap().len(), 3);
        assert_eq!(config["created"], CREATED);

        let mut no_entrypoint = spec();
        no_entrypoint.entrypoint.clear();
        let config = image_config(Some(&base), &no_entrypoint, "c", "s", &["sha256:11".to_owned()]).unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));

        let mut broken_history = base.clone();
        broken_history["history"] = json!([]);
        let config = image_config(Some(&broken_history), &spec(), "c", "s", &["sha256:11".to_owned()]).unwrap();
        assert_eq!(
            config.get("history"),
            None,
            "a history that does not match the layers is dropped"
        );
    }

    #[test]
    fn spec_values_are_checked() {
        let mut bad = spec();
        bad.expose = vec!["http".into()];
        let e = check_spec(&bad).unwrap_err();
        assert!(e.to_string().starts_with("image.expose: `http`"), "{e}");
        let mut bad = spec();
        bad.env.insert("A=B".into(), "x".into());
        assert!(check_spec(&bad).unwrap_err().to_string().contains("image.env"));
        assert_eq!(exposed_port("53/UDP").unwrap(), "53/udp");
        assert!(exposed_port("0").is_err() && exposed_port("70000").is_err() && exposed_port("1/icmp").is_err());
        assert_eq!(parse_mode("0o755"), Ok(0o755));
    }

    #[test]
    fn purl_pins_the_digest() {
        assert_eq!(
            purl("registry.local:5000", "baton/acme/shop", "sha256:abc", "0123abcd"),
            "pkg:oci/shop@sha256:abc?repository_url=registry.local:5000/baton/acme/shop&tag=0123abcd"
        );
    }

    #[test]
    fn registry_failures_are_classified() {
        let envelope = |code: &str| {
            serde_json::from_value::<OciEnvelope>(json!({"errors": [{"code": code, "message": "m"}]})).unwrap()
        };
        let registry = |code: &str| OciDistributionError::RegistryError {
            envelope: envelope(code),
            url: "u".into(),
        };
        assert_eq!(
            describe(&registry("MANIFEST_UNKNOWN")),
            ("MANIFEST_UNKNOWN: m".to_owned(), false)
        );
        assert!(describe(&registry("TOOMANYREQUESTS")).1);
        let server = |code: u16, message: &str| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: message.into(),
        };
        assert!(describe(&server(503, "down")).1);
        assert!(!describe(&server(405, "")).1);
        let (message, transient) = describe(&server(405, r#"{"errors":[{"code":"UNSUPPORTED","message":"no"}]}"#));
        assert_eq!((message.as_str(), transient), ("HTTP 405: UNSUPPORTED: no", false));
        assert!(describe(&OciDistributionError::IoError(io::Error::other("reset"))).1);
        assert!(!describe(&OciDistributionError::UnauthorizedError { url: "u".into() }).1);
    }

    #[test]
    fn target_references_are_checked() {
        let assembler = Registry::new("127.0.0.1:5000", true, None, None);
        let target = assembler.target_reference("baton/acme/shop", "0123abcd").unwrap();
        assert_eq!(target.to_string(), "127.0.0.1:5000/baton/acme/shop:0123abcd");
        let e = assembler.target_reference("Baton/Shop", "0123").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("repository: `Baton/Shop` is not a repository name"),
            "{e}"
        );
        assert!(
            assembler.target_reference("127.0.0.1:5000/shop", "0123").is_err(),
            "no registry in it"
        );
        assert!(assembler.target_reference("shop", "").is_err());
        assert!(assembler.target_reference("shop", "a b").is_err());
    }
}
