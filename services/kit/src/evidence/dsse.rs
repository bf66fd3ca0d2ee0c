//! DSSE, the envelope in-toto attestations travel in: the statement's bytes in base64, its
//! type, and signatures over the pre-authentication encoding (PAE) of both, so a signature over
//! one payload type can never be replayed as another.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::{SigningKey, Statement};

/// The payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A DSSE envelope, as cosign stores attestations (the `.att` manifest's layers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// What the payload is: [`IN_TOTO_PAYLOAD_TYPE`] for attestations.
    pub payload_type: String,
    /// Base64 of the payload's bytes (the statement's JSON).
    pub payload: String,
    /// One signature per signer.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signer's [`key_id`](super::PublicKey::key_id); a hint only, never trusted (empty
    /// when the signer did not say).
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the ASN.1 DER ECDSA-SHA256 signature over the PAE.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: `DSSEv1 <len(type)> <type> <len(body)> <body>`.
pub(crate) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut encoded = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    encoded.extend_from_slice(payload);
    encoded
}

/// Seals `statement` in an envelope signed with `key`.
pub fn seal(key: &SigningKey, statement: &Statement) -> Envelope {
    let payload = serde_json::to_vec(statement).expect("a statement always serializes");
    let signature = key.sign_der(&pae(IN_TOTO_PAYLOAD_TYPE, &payload));
    Envelope {
        payload_type: IN_TOTO_PAYLOAD_TYPE.to_owned(),
        payload: STANDARD.encode(&payload),
        signatures: vec![EnvelopeSignature {
            keyid: key.public_key().key_id(),
            sig: STANDARD.encode(signature),
        }],
    }
}
