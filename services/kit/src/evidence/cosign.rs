//! cosign's simple signing: a JSON payload naming the image's repository and manifest digest,
//! signed with ECDSA P-256 over SHA-256. The payload's bytes are what is signed and stored, so
//! verifiers (cosign, skopeo, Baton) read the very bytes written here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::SigningKey;

/// The `critical.type` cosign and containers/image require.
pub(crate) const SIGNATURE_TYPE: &str = "cosign container image signature";

/// What a signature or attestation is about: one image manifest in one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `<registry>/<repository>`, without tag or digest, as pulled (`127.0.0.1:5000/acme/shop`).
    pub name: String,
    /// The manifest digest, `sha256:<hex>`.
    pub digest: String,
}

/// The simple-signing payload for `subject`, byte for byte as cosign writes it:
/// `{"critical":{"identity":{"docker-reference":…},"image":{"docker-manifest-digest":…},"type":"cosign container image signature"},"optional":null}`.
pub fn simple_signing_payload(subject: &Subject) -> Vec<u8> {
    // serde_json's maps are sorted, which is the order cosign writes.
    let payload = json!({
        "critical": {
            "identity": {"docker-reference": subject.name},
            "image": {"docker-manifest-digest": subject.digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&payload).expect("a JSON value always serializes")
}

/// One cosign signature: the payload and the signature over its bytes, as the `.sig` manifest
/// stores them (the payload as a layer, the signature in its annotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSignature {
    /// The simple-signing payload's exact bytes.
    pub payload: Vec<u8>,
    /// Base64 of the ASN.1 DER ECDSA-SHA256 signature over `payload`.
    pub signature: String,
}

/// Signs `subject` with `key` in cosign's format.
pub fn sign_image(key: &SigningKey, subject: &Subject) -> ImageSignature {
    let payload = simple_signing_payload(subject);
    let signature = STANDARD.encode(key.sign_der(&payload));
    ImageSignature { payload, signature }
}
