//! Verification, pure: given evidence fetched from a registry and the keys an environment
//! trusts, accept it or refuse it with a [`Refusal`] that names the check that failed
//! (`signature`, `attestation.subject`, `provenance.commit`, …), so a held promotion says why.
//!
//! Signatures are checked before anything signed is parsed: the payload is untrusted until a
//! trusted key has signed its exact bytes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::cosign::SIGNATURE_TYPE;
use super::dsse::pae;
use super::{
    Envelope, IN_TOTO_PAYLOAD_TYPE, ImageSignature, PublicKey, SLSA_PROVENANCE_V1, STATEMENT_V1, Statement, Subject,
    TEST_RESULT_V0_1,
};

/// Why a piece of evidence is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The check that failed: `signature`, `signature.key`, `signature.payload`,
    /// `signature.subject`, `attestation.key`, `attestation.signature`,
    /// `attestation.payload`, `attestation.predicate_type`, `attestation.subject`,
    /// `provenance.builder`, `provenance.repository`, `provenance.commit`, `tests.result`.
    pub check: &'static str,
    /// What was found, for the operator.
    pub reason: String,
}

impl Refusal {
    fn new(check: &'static str, reason: impl Into<String>) -> Self {
        Self {
            check,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.reason)
    }
}

impl std::error::Error for Refusal {}

/// The ids of `keys`, for reasons.
fn key_ids(keys: &[PublicKey]) -> String {
    keys.iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", ")
}

/// Verifies a cosign signature of `subject` against the trusted `keys`; returns the id of the
/// key that made it.
///
/// # Errors
/// A [`Refusal`] naming `signature.key` (no key is trusted), `signature` (not made by a trusted
/// key over these bytes: another key, or the payload or signature changed), `signature.payload`
/// (not a simple-signing payload) or `signature.subject` (it signs another digest or
/// repository).
pub fn verify_image_signature(sig: &ImageSignature, subject: &Subject, keys: &[PublicKey]) -> Result<String, Refusal> {
    if keys.is_empty() {
        return Err(Refusal::new("signature.key", "no key is trusted to sign images"));
    }
    let der = STANDARD
        .decode(sig.signature.trim())
        .map_err(|error| Refusal::new("signature", format!("the signature is not base64: {error}")))?;
    let key = keys
        .iter()
        .find(|key| key.verifies(&sig.payload, &der))
        .ok_or_else(|| {
            Refusal::new(
                "signature",
                format!(
                    "the signature verifies under none of the trusted keys ({}): it was made by another key, or the \
                 payload or the signature was changed after signing",
                    key_ids(keys)
                ),
            )
        })?;
    let payload: Value = serde_json::from_slice(&sig.payload)
        .map_err(|error| Refusal::new("signature.payload", format!("the signed payload is not JSON: {error}")))?;
    let field = |pointer: &str| payload.pointer(pointer).and_then(Value::as_str);
    if field("/critical/type") != Some(SIGNATURE_TYPE) {
        return Err(Refusal::new(
            "signature.payload",
            format!("the signed payload's critical.type is not `{SIGNATURE_TYPE}`"),
        ));
    }
    let (Some(digest), Some(reference)) = (
        field("/critical/image/docker-manifest-digest"),
        field("/critical/identity/docker-reference"),
    ) else {
        return Err(Refusal::new(
            "signature.payload",
            "the signed payload lacks critical.image.docker-manifest-digest or critical.identity.docker-reference",
        ));
    };
    if digest != subject.digest {
        return Err(Refusal::new(
            "signature.subject",
            format!("it signs manifest {digest}, not {}", subject.digest),
        ));
    }
    if reference != subject.name {
        return Err(Refusal::new(
            "signature.subject",
            format!("it signs repository {reference}, not {}", subject.name),
        ));
    }
    Ok(key.key_id())
}

/// Opens a DSSE envelope about `subject` whose statement must be of `predicate_type`, signed by
/// one of the trusted `keys`; returns the statement and the id of the key that signed it.
///
/// # Errors
/// A [`Refusal`] naming `attestation.key` (signed by an untrusted key, or none is trusted),
/// `attestation.signature` (no signature verifies: the payload or a signature was changed),
/// `attestation.payload` (not an in-toto statement), `attestation.predicate_type` or
/// `attestation.subject` (about another digest).
pub fn open_envelope(
    envelope: &Envelope,
    subject: &Subject,
    keys: &[PublicKey],
    predicate_type: &str,
) -> Result<(Statement, String), Refusal> {
    if keys.is_empty() {
        return Err(Refusal::new(
            "attestation.key",
            "no key is trusted to sign attestations",
        ));
    }
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(Refusal::new(
            "attestation.payload",
            format!(
                "the envelope's payload type is `{}`, not `{IN_TOTO_PAYLOAD_TYPE}`",
                envelope.payload_type
            ),
        ));
    }
    let payload = STANDARD
        .decode(envelope.payload.trim())
        .map_err(|error| Refusal::new("attestation.payload", format!("the payload is not base64: {error}")))?;
    let encoded = pae(&envelope.payload_type, &payload);
    let verified = envelope.signatures.iter().find_map(|signature| {
        let der = STANDARD.decode(signature.sig.trim()).ok()?;
        keys.iter().find(|key| key.verifies(&encoded, &der))
    });
    let Some(key) = verified else {
        let trusted: Vec<String> = keys.iter().map(PublicKey::key_id).collect();
        let claimed: Vec<&str> = envelope
            .signatures
            .iter()
            .map(|signature| signature.keyid.as_str())
            .filter(|id| !id.is_empty())
            .collect();
        if envelope.signatures.is_empty() {
            return Err(Refusal::new("attestation.signature", "the envelope has no signature"));
        }
        if !claimed.is_empty() && claimed.iter().all(|id| !trusted.iter().any(|trusted| trusted == id)) {
            return Err(Refusal::new(
                "attestation.key",
                format!(
                    "it is signed by {}, none of the trusted keys ({})",
                    claimed.join(", "),
                    trusted.join(", ")
                ),
            ));
        }
        return Err(Refusal::new(
            "attestation.signature",
            format!(
                "no signature verifies under the trusted keys ({}): the payload or the signature was changed after \
                 signing",
                trusted.join(", ")
            ),
        ));
    };
    let statement: Statement = serde_json::from_slice(&payload).map_err(|error| {
        Refusal::new(
            "attestation.payload",
            format!("the signed payload is not an in-toto statement: {error}"),
        )
    })?;
    if statement.statement_type != STATEMENT_V1 {
        return Err(Refusal::new(
            "attestation.payload",
            format!(
                "the statement's _type is `{}`, not `{STATEMENT_V1}`",
                statement.statement_type
            ),
        ));
    }
    if statement.predicate_type != predicate_type {
        return Err(Refusal::new(
            "attestation.predicate_type",
            format!(
                "the statement's predicate type is `{}`, not `{predicate_type}`",
                statement.predicate_type
            ),
        ));
    }
    let (algorithm, hex) = subject.digest.split_once(':').unwrap_or(("sha256", &subject.digest));
    if !statement
        .subject
        .iter()
        .any(|entry| entry.digest.get(algorithm).is_some_and(|value| value == hex))
    {
        let named: Vec<String> = statement
            .subject
            .iter()
            .flat_map(|entry| entry.digest.iter().map(|(algorithm, hex)| format!("{algorithm}:{hex}")))
            .collect();
        return Err(Refusal::new(
            "attestation.subject",
            format!(
                "the statement is about {}, not {}",
                if named.is_empty() {
                    "nothing".to_owned()
                } else {
                    named.join(", ")
                },
                subject.digest
            ),
        ));
    }
    Ok((statement, key.key_id()))
}

/// What a provenance statement must say for an environment to accept the image.
#[derive(Debug, Clone, Copy)]
pub struct ProvenanceRequirement<'a> {
    /// Builder ids accepted (`runDetails.builder.id`).
    pub builders: &'a [String],
    /// Source repositories accepted (URLs; a trailing `/` or `.git` does not matter).
    pub repositories: &'a [String],
    /// The commit the release names: the provenance must record it.
    pub commit: &'a str,
}

/// Checks an opened provenance statement (see [`open_envelope`]) against `requirement`.
///
/// # Errors
/// A [`Refusal`] naming `attestation.predicate_type`, `provenance.builder`,
/// `provenance.repository` or `provenance.commit`.
pub fn check_provenance(statement: &Statement, requirement: &ProvenanceRequirement<'_>) -> Result<(), Refusal> {
    if statement.predicate_type != SLSA_PROVENANCE_V1 {
        return Err(Refusal::new(
            "attestation.predicate_type",
            format!("`{}` is not SLSA provenance v1", statement.predicate_type),
        ));
    }
    let field = |pointer: &str| statement.predicate.pointer(pointer).and_then(Value::as_str);
    let builder = field("/runDetails/builder/id").unwrap_or_default();
    if !requirement.builders.iter().any(|accepted| accepted == builder) {
        return Err(Refusal::new(
            "provenance.builder",
            format!(
                "built by `{builder}`, not by an accepted builder ({})",
                requirement.builders.join(", ")
            ),
        ));
    }
    let repository = field("/buildDefinition/externalParameters/source/repository").unwrap_or_default();
    if !requirement
        .repositories
        .iter()
        .any(|accepted| same_repository(accepted, repository))
    {
        return Err(Refusal::new(
            "provenance.repository",
            format!(
                "built from `{repository}`, not from an accepted repository ({})",
                requirement.repositories.join(", ")
            ),
        ));
    }
    let commit = field("/buildDefinition/externalParameters/source/commit").unwrap_or_default();
    if commit.is_empty() || !commit.eq_ignore_ascii_case(requirement.commit) {
        return Err(Refusal::new(
            "provenance.commit",
            format!(
                "built from commit `{commit}`, not the release's `{}`",
                requirement.commit
            ),
        ));
    }
    Ok(())
}

/// Whether two repository URLs name the same repository (`…/shop`, `…/shop/`, `…/shop.git`).
fn same_repository(a: &str, b: &str) -> bool {
    let normal = |url: &str| {
        let url = url.trim_end_matches('/');
        url.strip_suffix(".git").unwrap_or(url).to_owned()
    };
    !b.is_empty() && normal(a) == normal(b)
}

/// Checks an opened test-result statement: its result must be `PASSED`.
///
/// # Errors
/// A [`Refusal`] naming `attestation.predicate_type` or `tests.result` (with the failed cases
/// the statement lists, the first few).
pub fn check_test_result(statement: &Statement) -> Result<(), Refusal> {
    if statement.predicate_type != TEST_RESULT_V0_1 {
        return Err(Refusal::new(
            "attestation.predicate_type",
            format!("`{}` is not a test result", statement.predicate_type),
        ));
    }
    let result = statement
        .predicate
        .get("result")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if result != "PASSED" {
        let failed: Vec<&str> = statement
            .predicate
            .get("failedTests")
            .and_then(Value::as_array)
            .map(|cases| cases.iter().filter_map(Value::as_str).take(5).collect())
            .unwrap_or_default();
        let detail = if failed.is_empty() {
            String::new()
        } else {
            format!(" (failed: {})", failed.join(", "))
        };
        return Err(Refusal::new(
            "tests.result",
            format!("the tests' result is `{result}`, not PASSED{detail}"),
        ));
    }
    Ok(())
}
