//! The registry as the evidence's home, where cosign keeps it: signatures in the manifest tagged
//! `sha256-<hex>.sig` next to the image, attestations in `sha256-<hex>.att`, one layer per
//! signature or envelope. Attaching appends a layer to what the tag holds, as cosign does, so
//! the tester's attestation joins the builder's; fetching reads both tags.
//!
//! A registry is untrusted input: manifests, layer counts and layer sizes are capped, layers of
//! unexpected types are skipped, and nothing read here is believed before
//! [`verify`](super::verify) checks it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::session::Sessions;
use super::{Envelope, EvidenceError, ImageSignature, Subject};
use crate::secret::Secret;

/// The media type of a simple-signing payload layer.
const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The media type of a DSSE envelope layer.
const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The annotation holding a layer's signature (base64; empty on attestations, whose envelope
/// carries its own).
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The annotation naming an attestation layer's predicate type.
const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config of every `.sig` and `.att` manifest: OCI's empty descriptor (image-spec 1.1,
/// "Guidelines for Artifact Usage"), the same two bytes for all, so a repository stores it once
/// and an attachment uploads one blob, its layer. Readers of cosign's tags (cosign, skopeo,
/// Baton) read the layers and their annotations, never the config.
const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Largest `.sig` or `.att` manifest read. cosign's hold a few hundred bytes a layer.
const MANIFEST_LIMIT: usize = 256 * 1024;
/// Most layers read from one manifest; the rest are ignored.
const LAYER_COUNT_LIMIT: usize = 64;
/// Largest signature payload read (a simple-signing payload is a few hundred bytes).
const PAYLOAD_LIMIT: u64 = 64 * 1024;
/// Largest envelope read (a test result listing many cases stays well below).
const ENVELOPE_LIMIT: u64 = 4 * 1024 * 1024;
/// Longest a TCP connect to the registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What the registry holds about one image: every signature and attestation, unverified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The `.sig` manifest's layers that are simple-signing payloads.
    pub signatures: Vec<ImageSignature>,
    /// The `.att` manifest's layers that are DSSE envelopes.
    pub attestations: Vec<Envelope>,
    /// The `.sig` manifest's digest, `None` when the tag does not exist.
    pub signature_manifest: Option<String>,
    /// The `.att` manifest's digest, `None` when the tag does not exist.
    pub attestation_manifest: Option<String>,
}

/// Attaches and fetches evidence in one registry. Build it once: it caches connections and
/// registry tokens.
#[derive(Clone)]
pub struct EvidenceStore {
    /// `host[:port]`.
    address: String,
    /// Basic-auth credentials, or anonymous.
    auth: RegistryAuth,
    /// oci-client, over plain HTTP when the registry is insecure: for reads, which store the
    /// credentials.
    client: Client,
    /// The client for writes. Anonymous, it is a second client in which no credentials are
    /// ever stored: once they are (even anonymous ones), oci-client asks `/v2/` for a token
    /// before every request, a round trip each that an open registry answers with nothing.
    /// With credentials it is `client` itself.
    direct: Client,
    /// Repositories known to hold [`EMPTY_CONFIG`]: it is uploaded once per repository, and
    /// again if a manifest put says it is gone.
    configured: Arc<Mutex<HashSet<String>>>,
    /// Upload sessions opened ahead by [`prepare`](Self::prepare).
    sessions: Option<Arc<Sessions>>,
}

impl std::fmt::Debug for EvidenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `RegistryAuth`'s own Debug never prints the password.
        f.debug_struct("EvidenceStore")
            .field("address", &self.address)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// One layer to attach: its bytes and its descriptor's media type and annotations.
struct Attachment<'a> {
    data: Vec<u8>,
    media_type: &'static str,
    annotations: Value,
    /// `sig` or `att`.
    suffix: &'a str,
}

/// An envelope as an `.att` layer, annotated with its predicate type.
fn attestation<'a>(envelope: &Envelope, predicate_type: &str) -> Attachment<'a> {
    Attachment {
        data: serde_json::to_vec(envelope).expect("an envelope always serializes"),
        media_type: DSSE_MEDIA_TYPE,
        annotations: json!({ PREDICATE_TYPE_ANNOTATION: predicate_type, SIGNATURE_ANNOTATION: "" }),
        suffix: "att",
    }
}

impl EvidenceStore {
    /// The registry at `address` (`host[:port]`), over HTTPS unless `insecure`; with basic
    /// authentication when both `username` and `password` are given, else anonymous.
    ///
    /// Installs the process's rustls provider (`baton_kit::tls`) if nobody has yet.
    pub fn new(address: &str, insecure: bool, username: Option<String>, password: Option<Secret>) -> Self {
        crate::tls::install_crypto_provider();
        let basic = match (username, password) {
            (Some(user), Some(password)) => Some((user, String::from_utf8_lossy(password.expose()).into_owned())),
            _ => None,
        };
        let sessions = Sessions::new(address, insecure, basic.clone(), CONNECT_TIMEOUT, READ_TIMEOUT).map(Arc::new);
        let auth = match basic {
            Some((user, password)) => RegistryAuth::Basic(user, password),
            None => RegistryAuth::Anonymous,
        };
        let plain_http = if insecure { vec![address.to_owned()] } else { Vec::new() };
        let make = || {
            Client::new(ClientConfig {
                protocol: ClientProtocol::HttpsExcept(plain_http.clone()),
                connect_timeout: Some(CONNECT_TIMEOUT),
                read_timeout: Some(READ_TIMEOUT),
                use_monolithic_push: true,
                ..ClientConfig::default()
            })
        };
        let client = make();
        let direct = match auth {
            RegistryAuth::Anonymous => make(),
            _ => client.clone(),
        };
        Self {
            address: address.to_owned(),
            auth,
            client,
            direct,
            configured: Arc::default(),
            sessions,
        }
    }

    /// Opens upload sessions in `repository` for `count` attachments to come, so that each is
    /// one request shorter (`session.rs`). Call it when the work the evidence will prove starts
    /// (a build, a test run) and let it run beside that work; it never fails, and attaching
    /// without sessions opened ahead works as well, one request longer.
    pub async fn prepare(&self, repository: &str, count: usize) {
        if let Some(sessions) = &self.sessions {
            sessions.open(repository, count).await;
        }
    }

    /// Attaches a cosign signature of `subject` (an image in `repository` of this registry):
    /// its payload becomes a layer of the `sha256-<hex>.sig` manifest, the signature its
    /// annotation. A signature already there is not added twice. Returns the manifest's digest.
    ///
    /// # Errors
    /// [`EvidenceError::Registry`] (transient or not) when the registry fails or refuses;
    /// [`EvidenceError::Malformed`] when the tag holds something that is not a manifest.
    pub async fn attach_signature(
        &self,
        repository: &str,
        subject: &Subject,
        sig: &ImageSignature,
    ) -> Result<String, EvidenceError> {
        let attachment = Attachment {
            data: sig.payload.clone(),
            media_type: SIMPLE_SIGNING_MEDIA_TYPE,
            annotations: json!({ SIGNATURE_ANNOTATION: sig.signature }),
            suffix: "sig",
        };
        self.attach(repository, subject, attachment).await
    }

    /// Attaches an attestation of `subject`: the envelope becomes a layer of the
    /// `sha256-<hex>.att` manifest, annotated with its predicate type, after the layers already
    /// there (the tester's joins the builder's provenance). Returns the manifest's digest.
    ///
    /// # Errors
    /// As [`attach_signature`](Self::attach_signature).
    pub async fn attach_attestation(
        &self,
        repository: &str,
        subject: &Subject,
        envelope: &Envelope,
        predicate_type: &str,
    ) -> Result<String, EvidenceError> {
        self.attach(repository, subject, attestation(envelope, predicate_type))
            .await
    }

    /// Everything the registry holds about the image `digest` in `repository`. Absent tags give
    /// empty lists, not an error; layers of other types, too large or unreadable are skipped.
    ///
    /// # Errors
    /// [`EvidenceError::Registry`] when the registry fails (transient or not);
    /// [`EvidenceError::Malformed`] when a manifest is too large or not a manifest.
    pub async fn fetch(&self, repository: &str, digest: &str) -> Result<Evidence, EvidenceError> {
        let hex = digest_hex(digest)?;
        let mut evidence = Evidence::default();

        let sig = self.reference(repository, &format!("sha256-{hex}.sig"));
        if let Some((manifest, manifest_digest)) = self.current_manifest(&sig).await? {
            evidence.signature_manifest = Some(manifest_digest);
            for layer in layers(&manifest, SIMPLE_SIGNING_MEDIA_TYPE) {
                let Some(signature) = layer.annotation(SIGNATURE_ANNOTATION) else {
                    tracing::warn!(tag = %sig, digest = layer.digest, "signature layer without its annotation, skipped");
                    continue;
                };
                if let Some(payload) = self.read_layer(&sig, &layer, PAYLOAD_LIMIT).await? {
                    evidence.signatures.push(ImageSignature { payload, signature });
                }
            }
        }

        let att = self.reference(repository, &format!("sha256-{hex}.att"));
        if let Some((manifest, manifest_digest)) = self.current_manifest(&att).await? {
            evidence.attestation_manifest = Some(manifest_digest);
            for layer in layers(&manifest, DSSE_MEDIA_TYPE) {
                let Some(data) = self.read_layer(&att, &layer, ENVELOPE_LIMIT).await? else {
                    continue;
                };
                match serde_json::from_slice::<Envelope>(&data) {
                    Ok(envelope) => evidence.attestations.push(envelope),
                    Err(error) => {
                        tracing::warn!(tag = %att, digest = layer.digest, %error, "attestation layer is not a DSSE envelope, skipped");
                    }
                }
            }
        }
        Ok(evidence)
    }

    fn reference(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(self.address.clone(), repository.to_owned(), tag.to_owned())
    }

    /// Puts `attachment` as the last layer of the manifest at `sha256-<hex>.<suffix>`.
    ///
    /// The layer is uploaded while the tag's current manifest is read (and, the first time in
    /// a repository, the shared config with them): the new manifest, which keeps the layers
    /// already there, is then a single round trip away.
    async fn attach(
        &self,
        repository: &str,
        subject: &Subject,
        attachment: Attachment<'_>,
    ) -> Result<String, EvidenceError> {
        let hex = digest_hex(&subject.digest)?;
        let target = self.reference(repository, &format!("sha256-{hex}.{}", attachment.suffix));
        let layer_digest = sha256_digest(&attachment.data);
        let artifact_type = attachment.media_type;
        let layer = json!({
            "mediaType": attachment.media_type,
            "size": attachment.data.len(),
            "digest": layer_digest,
            "annotations": attachment.annotations,
        });
        let config = async {
            if self.config_known(repository) {
                Ok(())
            } else {
                self.push_config(&target).await
            }
        };
        let (current, pushed_layer, pushed_config) = tokio::join!(
            self.current_manifest(&target),
            self.upload(&target, attachment.data, &layer_digest),
            config,
        );
        let current = current?;
        pushed_layer
            .map_err(|error| self.registry_error(&target, format!("uploading layer {layer_digest}"), &error))?;
        pushed_config?;

        let mut layers: Vec<Value> = current
            .as_ref()
            .and_then(|(manifest, _)| manifest.get("layers").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        if let Some((_, digest)) = current.filter(|_| layers.contains(&layer)) {
            // Signing is deterministic (RFC 6979): a retried build attaches the same layer.
            return Ok(digest);
        }
        layers.push(layer);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "size": EMPTY_CONFIG.len(), "digest": EMPTY_DIGEST},
            "layers": layers,
        }))
        .expect("JSON always serializes");
        let manifest_digest = sha256_digest(&manifest);
        let put = || {
            self.direct.push_manifest_raw(
                &target,
                manifest.clone(),
                http::HeaderValue::from_static(OCI_MANIFEST_MEDIA_TYPE),
            )
        };
        let put_error =
            |error: &OciDistributionError| self.registry_error(&target, format!("putting manifest {target}"), error);
        match put().await {
            Ok(_) => {}
            Err(error) if is_blob_unknown(&error) => {
                // The config was known here, but the repository was deleted or collected since.
                tracing::info!(tag = %target, "the registry no longer holds the shared config; uploading it again");
                self.forget_config(repository);
                self.push_config(&target).await?;
                put().await.map_err(|error| put_error(&error))?;
            }
            Err(error) => return Err(put_error(&error)),
        }
        Ok(manifest_digest)
    }

    /// Uploads a blob, through a session opened ahead when there is one.
    async fn upload(&self, target: &Reference, data: Vec<u8>, digest: &str) -> Result<(), OciDistributionError> {
        if let Some(sessions) = &self.sessions
            && sessions.upload(target.repository(), &data, digest).await
        {
            return Ok(());
        }
        self.direct.push_blob(target, data, digest).await.map(drop)
    }

    /// Whether `repository` is known to hold the shared config.
    fn config_known(&self, repository: &str) -> bool {
        self.configured().contains(repository)
    }

    fn forget_config(&self, repository: &str) {
        self.configured().remove(repository);
    }

    /// The repositories known to hold the shared config.
    fn configured(&self) -> MutexGuard<'_, HashSet<String>> {
        self.configured.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Uploads the shared config to `target`'s repository and remembers that it is there.
    async fn push_config(&self, target: &Reference) -> Result<(), EvidenceError> {
        self.upload(target, EMPTY_CONFIG.to_vec(), EMPTY_DIGEST)
            .await
            .map_err(|error| self.registry_error(target, format!("uploading config {EMPTY_DIGEST}"), &error))?;
        self.configured().insert(target.repository().to_owned());
        Ok(())
    }

    /// The manifest the tag names and its digest; `None` when the tag (or the repository) does
    /// not exist.
    async fn current_manifest(&self, target: &Reference) -> Result<Option<(Value, String)>, EvidenceError> {
        let pulled = self
            .client
            .pull_manifest_raw(target, &self.auth, &[OCI_MANIFEST_MEDIA_TYPE])
            .await;
        let (body, digest) = match pulled {
            Ok(pulled) => pulled,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(self.registry_error(target, format!("reading manifest {target}"), &error)),
        };
        let malformed = |reason: String| EvidenceError::Malformed {
            registry: self.address.clone(),
            repository: target.repository().to_owned(),
            tag: target.tag().unwrap_or_default().to_owned(),
            reason,
        };
        if body.len() > MANIFEST_LIMIT {
            return Err(malformed(format!(
                "its manifest has {} bytes, more than the {MANIFEST_LIMIT} read",
                body.len()
            )));
        }
        let manifest: Value =
            serde_json::from_slice(&body).map_err(|error| malformed(format!("its manifest is not JSON: {error}")))?;
        if !manifest.get("layers").is_none_or(Value::is_array) {
            return Err(malformed("its manifest's layers are not a list".to_owned()));
        }
        Ok(Some((manifest, digest)))
    }

    /// A layer's bytes, or `None` (logged) when it is larger than `limit` or its bytes do not
    /// match its digest.
    async fn read_layer(
        &self,
        target: &Reference,
        layer: &Layer,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, EvidenceError> {
        if layer.size > limit {
            tracing::warn!(tag = %target, digest = layer.digest, size = layer.size, limit, "evidence layer too large, skipped");
            return Ok(None);
        }
        let mut stream = self
            .client
            .pull_blob_stream(target, layer.digest.as_str())
            .await
            .map_err(|error| self.registry_error(target, format!("reading layer {}", layer.digest), &error))?
            .stream;
        let mut data = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => {
                    if (data.len() + chunk.len()) as u64 > layer.size {
                        tracing::warn!(tag = %target, digest = layer.digest, "evidence layer longer than its descriptor says, skipped");
                        return Ok(None);
                    }
                    data.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => {
                    // A digest mismatch ends the verifying stream with an error too: the bytes
                    // are not the layer's, so it is skipped like any other unreadable layer.
                    tracing::warn!(tag = %target, digest = layer.digest, %error, "evidence layer unreadable, skipped");
                    return Ok(None);
                }
            }
        }
        if sha256_digest(&data) != layer.digest {
            tracing::warn!(tag = %target, digest = layer.digest, "evidence layer does not match its digest, skipped");
            return Ok(None);
        }
        Ok(Some(data))
    }

    fn registry_error(&self, target: &Reference, operation: String, error: &OciDistributionError) -> EvidenceError {
        let (message, transient) = crate::oci::describe(error);
        EvidenceError::Registry {
            registry: self.address.clone(),
            repository: target.repository().to_owned(),
            operation,
            message,
            transient,
        }
    }
}

/// A layer of a `.sig` or `.att` manifest, as far as Baton reads it.
struct Layer {
    digest: String,
    size: u64,
    annotations: serde_json::Map<String, Value>,
}

impl Layer {
    fn annotation(&self, name: &str) -> Option<String> {
        self.annotations.get(name).and_then(Value::as_str).map(str::to_owned)
    }
}

/// The manifest's first [`LAYER_COUNT_LIMIT`] layers of `media_type` with a sha256 digest.
fn layers(manifest: &Value, media_type: &str) -> Vec<Layer> {
    manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(LAYER_COUNT_LIMIT)
        .filter(|layer| layer.get("mediaType").and_then(Value::as_str) == Some(media_type))
        .filter_map(|layer| {
            let digest = layer.get("digest").and_then(Value::as_str)?;
            digest_hex(digest).ok()?;
            Some(Layer {
                digest: digest.to_owned(),
                size: layer.get("size").and_then(Value::as_u64)?,
                annotations: layer
                    .get("annotations")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The hex of a `sha256:<hex>` digest.
fn digest_hex(digest: &str) -> Result<&str, EvidenceError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| EvidenceError::Digest {
            digest: digest.to_owned(),
        })
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Whether the registry refused a manifest because a blob it names is not in the repository.
fn is_blob_unknown(error: &OciDistributionError) -> bool {
    crate::oci::has_error_code(error, |code| {
        matches!(code, OciErrorCode::ManifestBlobUnknown | OciErrorCode::BlobUnknown)
    })
}

/// Whether the registry says the tag or the repository does not exist.
fn is_not_found(error: &OciDistributionError) -> bool {
    crate::oci::has_error_code(error, |code| {
        matches!(
            code,
            OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
        )
    }) || matches!(
        error,
        OciDistributionError::ImageManifestNotFoundError(_) | OciDistributionError::ServerError { code: 404, .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_manifest_is_told_from_other_failures() {
        let server = |code: u16| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        let unknown =
            serde_json::from_value(json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "m"}]})).unwrap();
        assert!(is_not_found(&OciDistributionError::RegistryError {
            envelope: unknown,
            url: "u".into(),
        }));
        assert!(!is_not_found(&server(500)));
        let blob_unknown =
            serde_json::from_value(json!({"errors": [{"code": "MANIFEST_BLOB_UNKNOWN", "message": "m"}]})).unwrap();
        assert!(is_blob_unknown(&OciDistributionError::RegistryError {
            envelope: blob_unknown,
            url: "u".into(),
        }));
        assert!(is_blob_unknown(&OciDistributionError::ServerError {
            code: 400,
            url: "u".into(),
            message: r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#.into(),
        }));
        assert!(!is_blob_unknown(&server(400)));
    }

    #[test]
    fn the_shared_config_is_the_oci_empty_descriptor() {
        assert_eq!(sha256_digest(EMPTY_CONFIG), EMPTY_DIGEST);
    }

    #[test]
    fn only_capped_layers_of_the_type_are_read() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let mut entries: Vec<Value> = (0..100)
            .map(|_| json!({"mediaType": DSSE_MEDIA_TYPE, "digest": digest, "size": 10}))
            .collect();
        entries.insert(0, json!({"mediaType": "text/plain", "digest": digest, "size": 10}));
        entries.insert(
            1,
            json!({"mediaType": DSSE_MEDIA_TYPE, "digest": "sha256:short", "size": 10}),
        );
        entries.insert(2, json!({"mediaType": DSSE_MEDIA_TYPE, "digest": digest}));
        let manifest = json!({"layers": entries});
        assert_eq!(layers(&manifest, DSSE_MEDIA_TYPE).len(), LAYER_COUNT_LIMIT - 3);
        assert!(digest_hex("sha256:ABC").is_err());
    }
}
