//! The evidence gate: before a commit moves an environment to a digest (a promotion, an
//! operator's or an automatic rollback), an environment whose `environments.yaml` entry has
//! `evidence` gets it from the registry (cosign's `sha256-<hex>.sig` and `.att` tags) and
//! verifies it with the public keys `keys/<name>.pem` of the config repo, read at its head:
//!
//! 1. a cosign signature of the image by a key of `signed_by`;
//! 2. with `provenance`: an SLSA provenance attestation signed by a key of `signed_by`, by a
//!    listed builder, of the release's commit, from the release's repository (or a listed one);
//! 3. with `tests`: a test-result attestation signed by a key of `tests.signed_by`, `PASSED`.
//!
//! A refusal names the check that failed and holds the move; a registry that cannot answer now
//! is a transient failure (retried, never a pass). Only break-glass skips the gate, and the
//! commit records that it did. What verified is recorded in `.baton-release.yaml`.
//!
//! Keys are read like `people.yaml`: a key file that is invalid at the head is refused with
//! `baton-policy.rejected` naming it, and its last valid version stays in force; a key file
//! that is gone is gone (removing a key is how it is revoked).

use std::sync::Arc;

use base64::Engine as _;
use baton_kit::Outgoing;
use baton_kit::evidence::{
    Envelope, Evidence, ProvenanceRequirement, PublicKey, Refusal, SLSA_PROVENANCE_V1, Subject, TEST_RESULT_V0_1,
    check_provenance, check_test_result, open_envelope, verify_image_signature,
};
use baton_schemas::environments::{EvidencePolicy, KEYS_DIR};
use baton_schemas::release::{AttestationRecord, EvidenceRecord, ReleaseData, SignatureRecord};
use baton_schemas::userfile::FileError;

use crate::error::PromoteError;
use crate::manager::{Outcome, ReleaseManager};
use crate::state::{self, PolicyRecord};

/// The public keys an environment's evidence is verified with, by name, as read from the
/// config repo; and what is wrong with the names that have none.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    /// Usable keys, by name.
    keys: Vec<(String, PublicKey)>,
    /// Names without a usable key, and why (`keys/<name>.pem is missing …`).
    problems: Vec<(String, String)>,
}

impl KeyRing {
    /// A ring of `keys`, with `problems` for names that have none.
    pub fn new(keys: Vec<(String, PublicKey)>, problems: Vec<(String, String)>) -> Self {
        Self { keys, problems }
    }

    /// The usable keys among `names`.
    fn of(&self, names: &[String]) -> Vec<(&str, &PublicKey)> {
        self.keys
            .iter()
            .filter(|(name, _)| names.contains(name))
            .map(|(name, key)| (name.as_str(), key))
            .collect()
    }

    /// The name of the key with id `key_id`.
    fn name_of(&self, key_id: &str) -> String {
        self.keys
            .iter()
            .find(|(_, key)| key.key_id() == key_id)
            .map_or_else(|| key_id.to_owned(), |(name, _)| name.clone())
    }

    /// What is wrong with the keys among `names`, for a refusal's reason ("" when nothing is).
    fn problems_with(&self, names: &[String]) -> String {
        let problems: Vec<&str> = self
            .problems
            .iter()
            .filter(|(name, _)| names.contains(name))
            .map(|(_, why)| why.as_str())
            .collect();
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        }
    }

    /// The usable keys among `names`, or a refusal naming `check` when there is none.
    fn trusted(&self, names: &[String], field: &str) -> Result<Vec<(&str, &PublicKey)>, Refusal> {
        let keys = self.of(names);
        if keys.is_empty() {
            return Err(Refusal {
                check: "evidence.keys",
                reason: format!(
                    "no key `{field}` names is usable{}: add them as {KEYS_DIR}/<name>.pem (PEM PUBLIC KEY, ECDSA P-256) in the config repo",
                    self.problems_with(names)
                ),
            });
        }
        Ok(keys)
    }
}

/// The path of key `name` in the config repo.
pub fn key_path(name: &str) -> String {
    format!("{KEYS_DIR}/{name}.pem")
}

/// Where the evidence of `digest` in `repository` is attached, for reasons.
fn tag(subject: &Subject, suffix: &str) -> String {
    let hex = subject.digest.strip_prefix("sha256:").unwrap_or(&subject.digest);
    format!("{}:sha256-{hex}.{suffix}", subject.name)
}

/// Verifies `evidence` about the release's image (`subject`) against `policy`, with the keys of
/// `ring`, and says what verified.
///
/// # Errors
/// A [`Refusal`] naming the check that failed (the kit's checks, plus `signature` and
/// `provenance` / `tests` when there is none, and `evidence.keys` when no key is usable).
pub fn verify(
    policy: &EvidencePolicy,
    ring: &KeyRing,
    evidence: &Evidence,
    subject: &Subject,
    release: &ReleaseData,
) -> Result<EvidenceRecord, Refusal> {
    let signers = ring.trusted(&policy.signed_by, "signed_by")?;
    let signer_keys: Vec<PublicKey> = signers.iter().map(|(_, key)| (*key).clone()).collect();
    if evidence.signatures.is_empty() {
        return Err(Refusal {
            check: "signature",
            reason: format!(
                "the image has no signature ({} is absent or empty)",
                tag(subject, "sig")
            ),
        });
    }
    // Any signature by a trusted key will do; otherwise the first one's refusal says why.
    let mut first_refusal = None;
    let mut signed = None;
    for signature in &evidence.signatures {
        match verify_image_signature(signature, subject, &signer_keys) {
            Ok(key_id) => {
                signed = Some(key_id);
                break;
            }
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    let key_id = match (signed, first_refusal) {
        (Some(key_id), _) => key_id,
        (None, Some(mut refusal)) => {
            refusal.reason.push_str(&ring.problems_with(&policy.signed_by));
            return Err(refusal);
        }
        (None, None) => unreachable!("there is at least one signature"),
    };
    let manifest = |m: &Option<String>| m.clone().unwrap_or_default();
    let mut record = EvidenceRecord {
        signature: Some(SignatureRecord {
            key: ring.name_of(&key_id),
            key_id,
            manifest: manifest(&evidence.signature_manifest),
        }),
        attestations: Vec::new(),
        skipped: None,
    };
    if let Some(provenance) = &policy.provenance {
        let repositories = if provenance.repositories.is_empty() {
            std::slice::from_ref(&release.repository)
        } else {
            provenance.repositories.as_slice()
        };
        let requirement = ProvenanceRequirement {
            builders: &provenance.builders,
            repositories,
            commit: &release.commit,
        };
        let key_id = attested(
            &evidence.attestations,
            subject,
            &signer_keys,
            SLSA_PROVENANCE_V1,
            "provenance",
            |s| check_provenance(s, &requirement),
        )
        .map_err(|mut refusal| {
            refusal.reason.push_str(&ring.problems_with(&policy.signed_by));
            refusal
        })?;
        record.attestations.push(AttestationRecord {
            predicate_type: SLSA_PROVENANCE_V1.to_owned(),
            key: ring.name_of(&key_id),
            key_id,
            manifest: manifest(&evidence.attestation_manifest),
        });
    }
    if let Some(tests) = &policy.tests {
        let testers: Vec<PublicKey> = ring
            .trusted(&tests.signed_by, "tests.signed_by")?
            .into_iter()
            .map(|(_, key)| key.clone())
            .collect();
        let key_id = attested(
            &evidence.attestations,
            subject,
            &testers,
            TEST_RESULT_V0_1,
            "tests",
            check_test_result,
        )
        .map_err(|mut refusal| {
            refusal.reason.push_str(&ring.problems_with(&tests.signed_by));
            refusal
        })?;
        record.attestations.push(AttestationRecord {
            predicate_type: TEST_RESULT_V0_1.to_owned(),
            key: ring.name_of(&key_id),
            key_id,
            manifest: manifest(&evidence.attestation_manifest),
        });
    }
    Ok(record)
}

/// The id of the key of the first attestation of `predicate_type` that opens with `keys` and
/// passes `check`. The envelopes claiming that type (read before any signature is checked, only
/// to choose which refusal to report) are tried in order; when none passes, the first one's
/// refusal says why, and `missing` names the check when none claims it.
fn attested(
    envelopes: &[Envelope],
    subject: &Subject,
    keys: &[PublicKey],
    predicate_type: &str,
    missing: &'static str,
    check: impl Fn(&baton_kit::evidence::Statement) -> Result<(), Refusal>,
) -> Result<String, Refusal> {
    let mut first_refusal = None;
    for envelope in envelopes.iter().filter(|e| claims(e, predicate_type)) {
        let opened = open_envelope(envelope, subject, keys, predicate_type)
            .and_then(|(statement, key_id)| check(&statement).map(|()| key_id));
        match opened {
            Ok(key_id) => return Ok(key_id),
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    Err(first_refusal.unwrap_or_else(|| Refusal {
        check: missing,
        reason: format!(
            "the image has no `{predicate_type}` attestation ({} is absent or holds none)",
            tag(subject, "att")
        ),
    }))
}

/// Whether `envelope` says (unverified) that its statement is of `predicate_type`. A payload
/// that cannot be read claims every type, so that its refusal is the one reported.
fn claims(envelope: &Envelope, predicate_type: &str) -> bool {
    let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(envelope.payload.trim()) else {
        return true;
    };
    match serde_json::from_slice::<serde_json::Value>(&payload) {
        Ok(statement) => statement
            .get("predicateType")
            .and_then(serde_json::Value::as_str)
            .is_none_or(|claimed| claimed == predicate_type),
        Err(_) => true,
    }
}

impl ReleaseManager {
    /// The keys `names` at the config repo's head: each file `keys/<name>.pem` when it holds a
    /// valid public key (remembered in KV), else its last valid version with a
    /// `baton-policy.rejected` naming the file; a missing file is no key.
    ///
    /// # Errors
    /// Transient when the repo or the state cannot be read.
    pub(crate) async fn keys(&self, names: &[&str]) -> Result<Outcome<KeyRing>, PromoteError> {
        let paths: Vec<String> = names.iter().map(|name| key_path(name)).collect();
        let repo = Arc::clone(&self.repo);
        let wanted = paths.clone();
        let (commit, files) = self.blocking(move || Ok(repo.read_files_at_head(&wanted)?)).await?;
        let mut ring = KeyRing::default();
        let mut events: Vec<Outgoing> = Vec::new();
        for ((name, path), bytes) in names.iter().zip(&paths).zip(files) {
            let Some(bytes) = bytes else {
                ring.problems.push((
                    (*name).to_owned(),
                    format!("{path} is missing from the config repo at {commit}"),
                ));
                continue;
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let key_state = state::key_key(name);
            match PublicKey::from_pem(&text) {
                Ok(key) => {
                    let last = self.state.get::<PolicyRecord>(&key_state).await?;
                    if last.is_none_or(|l| l.value.commit != commit) {
                        self.state
                            .put(
                                &key_state,
                                &PolicyRecord {
                                    commit: commit.clone(),
                                    text,
                                },
                            )
                            .await?;
                    }
                    ring.keys.push(((*name).to_owned(), key));
                }
                Err(error) => {
                    let last = self.state.get::<PolicyRecord>(&key_state).await?;
                    let last_key = last.as_ref().and_then(|l| {
                        PublicKey::from_pem(&l.value.text)
                            .ok()
                            .map(|key| (l.value.commit.clone(), key))
                    });
                    tracing::error!(%error, path, commit, "an invalid public key in the config repo; keeping its last valid version");
                    let invalid = FileError::in_field(path, "", format!("not a PEM PUBLIC KEY (ECDSA P-256): {error}"));
                    events.push(self.policy_rejected(
                        &format!("key-rejected:{name}"),
                        path,
                        &commit,
                        &invalid,
                        last_key.as_ref().map(|(commit, _)| commit.clone()),
                    ));
                    match last_key {
                        Some((_, key)) => ring.keys.push(((*name).to_owned(), key)),
                        None => ring
                            .problems
                            .push(((*name).to_owned(), format!("{path} is invalid at {commit}: {error}"))),
                    }
                }
            }
        }
        Ok(Outcome { value: ring, events })
    }

    /// The evidence gate for moving an environment whose policy is `policy` to the release's
    /// image: the verified evidence, or — with `break_glass`, who skipped it. The events record
    /// key files refused on the way.
    ///
    /// # Errors
    /// [`PromoteError::EvidenceRefused`] naming the failed check (the move is held);
    /// [`PromoteError::EvidenceStore`] when the registry cannot answer now (retried).
    pub(crate) async fn verify_evidence(
        &self,
        policy: &EvidencePolicy,
        release: &ReleaseData,
        environment: &str,
        break_glass: Option<&str>,
    ) -> Result<Outcome<EvidenceRecord>, PromoteError> {
        if let Some(actor) = break_glass {
            tracing::warn!(app = %release.app, environment, release = %release.release, actor, "break-glass: evidence not verified");
            return Ok(Outcome {
                value: EvidenceRecord {
                    signature: None,
                    attestations: Vec::new(),
                    skipped: Some(format!("break-glass by {actor}: the evidence was not verified")),
                },
                events: Vec::new(),
            });
        }
        let refused = |refusal: Refusal| PromoteError::EvidenceRefused {
            environment: environment.to_owned(),
            image: release.image.reference.clone(),
            check: refusal.check,
            reason: refusal.reason,
        };
        let image = &release.image;
        if image.registry != self.registry.address {
            return Err(refused(Refusal {
                check: "evidence.registry",
                reason: format!(
                    "the image is in registry `{}`, but the promoter reads evidence from `{}` (`registry.address` of its config)",
                    image.registry, self.registry.address
                ),
            }));
        }
        let keys = self.keys(&policy.key_names()).await?;
        // Key files refused are recorded whatever the verdict.
        self.publish(&keys.events).await?;
        let evidence = match self.registry.store.fetch(&image.repository, &image.digest).await {
            Ok(evidence) => evidence,
            Err(e) if e.is_transient() => return Err(PromoteError::EvidenceStore(e)),
            Err(e) => {
                return Err(refused(Refusal {
                    check: "evidence.fetch",
                    reason: e.to_string(),
                }));
            }
        };
        let subject = Subject {
            name: format!("{}/{}", image.registry, image.repository),
            digest: image.digest.clone(),
        };
        let record = verify(policy, &keys.value, &evidence, &subject, release).map_err(refused)?;
        tracing::info!(app = %release.app, environment, release = %release.release, "evidence verified");
        Ok(Outcome {
            value: record,
            events: Vec::new(),
        })
    }
}

/// Where the promoter reads evidence: the registry its images are in.
#[derive(Debug)]
pub struct EvidenceRegistry {
    /// `host[:port]`: only images in this registry can have their evidence read.
    pub address: String,
    /// The client.
    pub store: baton_kit::evidence::EvidenceStore,
}
