//! The registries: the target registry images are pushed to, and those base images are pulled
//! from, all through oci-client. [`Registry`] holds the clients; its methods resolve a base
//! image, check which blobs the target repository lacks, mount, copy or upload them and put the
//! manifest that `assemble_and_push` composes.

use std::fmt;
use std::time::Duration;

use baton_kit::secret::Secret;
use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use super::error::{ImageError, describe};
use super::{CONFIG_MEDIA_TYPE, Descriptor, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};

/// Docker's media type of a gzipped layer; the same bytes as [`LAYER_MEDIA_TYPE`].
const DOCKER_LAYER_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Config media types of container images (OCI and Docker); anything else is an artifact.
const IMAGE_CONFIG_MEDIA_TYPES: [&str; 2] = [CONFIG_MEDIA_TYPE, "application/vnd.docker.container.image.v1+json"];
/// Longest a TCP connect to a registry may take before the attempt counts as a network failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

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
    pub(super) fn target_reference(&self, repository: &str, commit: &str) -> Result<Reference, ImageError> {
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
    pub(super) async fn blob_present(&self, target: &Reference, descriptor: &Descriptor) -> Result<bool, ImageError> {
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
    pub(super) async fn provide_blob(
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
    pub(super) async fn current_manifest_digest(&self, target: &Reference) -> Option<String> {
        self.client.fetch_manifest_digest(target, &self.auth).await.ok()
    }

    /// Puts the manifest under the tag.
    pub(super) async fn put_manifest(
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
pub(super) enum BlobSource<'a> {
    /// Built here: uploaded.
    Data(Bytes),
    /// A base layer: mounted or copied from the base's repository.
    Base(&'a BaseImage),
}

/// How a missing blob reached the target repository.
pub(super) enum Provided {
    /// Mounted from the base's repository in the same registry: nothing uploaded.
    Mounted,
    /// Uploaded, this many bytes.
    Uploaded(u64),
}

/// What one push did, for [`PushedImage`](super::PushedImage).
#[derive(Debug, Default)]
pub(super) struct PushStats {
    pub(super) uploaded_bytes: u64,
    pub(super) skipped: usize,
    pub(super) mounted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

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
