//! The registry as the evidence's home, where cosign keeps it: signatures in the manifest tagged
//! `sha256-<hex>.sig` next to the image, attestations in `sha256-<hex>.att`, one layer per
//! signature or envelope. Attaching appends a layer to what the tag holds, as cosign does, so
//! the tester's attestation joins the builder's; fetching reads both tags.
//!
//! A registry is untrusted input: manifests, layer counts and layer sizes are capped, layers of
//! unexpected types are skipped, and nothing read here is believed before
//! [`verify`](super::verify) checks it.

use std::time::Duration;

use futures::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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
const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

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

/// What an attachment expects its tag to hold, to order its uploads (never its result: a wrong
/// guess costs a round trip, not a wrong manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing yet: the first signature or attestation of an image.
    NewTag,
    /// Layers already: an attestation joining the builder's.
    HeldTag,
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
        let auth = match (username, password) {
            (Some(user), Some(password)) => {
                RegistryAuth::Basic(user, String::from_utf8_lossy(password.expose()).into_owned())
            }
            _ => RegistryAuth::Anonymous,
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
        self.attach(repository, subject, attachment, Expect::NewTag).await
    }

    /// Attaches an attestation of `subject`: the envelope becomes a layer of the
    /// `sha256-<hex>.att` manifest, annotated with its predicate type, after the layers already
    /// there. `expect` orders the uploads for what the tag likely holds: [`Expect::NewTag`] for
    /// the first attestation of an image (the builder's provenance), [`Expect::HeldTag`] for one
    /// joining others (the tester's). Returns the manifest's digest.
    ///
    /// # Errors
    /// As [`attach_signature`](Self::attach_signature).
    pub async fn attach_attestation(
        &self,
        repository: &str,
        subject: &Subject,
        envelope: &Envelope,
        predicate_type: &str,
        expect: Expect,
    ) -> Result<String, EvidenceError> {
        self.attach(repository, subject, attestation(envelope, predicate_type), expect)
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
    /// For a tag expected to be new (the first signature of a digest, its first attestation),
    /// the layer and the config of a manifest holding that layer alone are uploaded while the
    /// current manifest is read: the new manifest is then a single round trip away. When the
    /// tag holds layers after all, the config listing them all is uploaded after the read (the
    /// guessed config stays behind, an unreferenced blob the registry's collector removes).
    /// For a tag expected to hold layers, only the layer is uploaded during the read.
    async fn attach(
        &self,
        repository: &str,
        subject: &Subject,
        attachment: Attachment<'_>,
        expect: Expect,
    ) -> Result<String, EvidenceError> {
        let hex = digest_hex(&subject.digest)?;
        let target = self.reference(repository, &format!("sha256-{hex}.{}", attachment.suffix));
        let layer_digest = sha256_digest(&attachment.data);
        let layer = json!({
            "mediaType": attachment.media_type,
            "size": attachment.data.len(),
            "digest": layer_digest,
            "annotations": attachment.annotations,
        });
        let alone = image_config(std::slice::from_ref(&layer));
        let alone_digest = sha256_digest(&alone);
        let alone_size = alone.len();
        let guess = async {
            match expect {
                Expect::NewTag => Some(self.direct.push_blob(&target, alone, &alone_digest).await),
                Expect::HeldTag => None,
            }
        };
        let (current, pushed_layer, pushed_alone) = tokio::join!(
            self.current_manifest(&target),
            self.direct.push_blob(&target, attachment.data, &layer_digest),
            guess,
        );
        let current = current?;
        pushed_layer
            .map_err(|error| self.registry_error(&target, format!("uploading layer {layer_digest}"), &error))?;

        let mut layers: Vec<Value> = current
            .as_ref()
            .and_then(|(manifest, _)| manifest.get("layers").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        if let Some((_, digest)) = current.filter(|_| layers.contains(&layer)) {
            // Signing is deterministic (RFC 6979): a retried build attaches the same layer.
            return Ok(digest);
        }
        layers.push(layer);
        let (config_digest, config_size) = if let (1, Some(pushed_alone)) = (layers.len(), pushed_alone) {
            pushed_alone
                .map_err(|error| self.registry_error(&target, format!("uploading config {alone_digest}"), &error))?;
            (alone_digest, alone_size)
        } else {
            let config = image_config(&layers);
            let config_digest = sha256_digest(&config);
            let config_size = config.len();
            self.direct
                .push_blob(&target, config, &config_digest)
                .await
                .map_err(|error| self.registry_error(&target, format!("uploading config {config_digest}"), &error))?;
            (config_digest, config_size)
        };

        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "size": config_size, "digest": config_digest},
            "layers": layers,
        }))
        .expect("JSON always serializes");
        let manifest_digest = sha256_digest(&manifest);
        self.direct
            .push_manifest_raw(
                &target,
                manifest,
                http::HeaderValue::from_static(OCI_MANIFEST_MEDIA_TYPE),
            )
            .await
            .map_err(|error| self.registry_error(&target, format!("putting manifest {target}"), &error))?;
        Ok(manifest_digest)
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

/// The config of a manifest holding `layers`, as cosign writes it (an image built from no base
/// with these layers), so tools that read the manifest as an image find it consistent.
fn image_config(layers: &[Value]) -> Vec<u8> {
    let diff_ids: Vec<&Value> = layers.iter().filter_map(|layer| layer.get("digest")).collect();
    serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("JSON always serializes")
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

/// Whether the registry says the tag or the repository does not exist.
fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|error| {
            matches!(
                error.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
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
