//! What the builder proves about each image it pushes, once the image is in the registry: a
//! cosign signature over its digest (`sha256-<hex>.sig`) and an SLSA Provenance v1 attestation
//! (`sha256-<hex>.att`, a DSSE envelope) recording who built it, from which repository, commit
//! and pipeline file, on which base, with which steps and when — both with the builder's one
//! key (`signing.key_file`). The formats and the registry layout are `baton_kit::evidence`'s;
//! this module decides what the builder records ([`build_record`], pure) and attaches it.
//!
//! The signature and the provenance go to two tags and are pushed at once.
//!
//! A registry that refuses either push fails the attempt *transiently*: the image is there but
//! its evidence is not, and a promoter requiring evidence would hold it, so the build is retried
//! as a failed image push is (the image push itself is then a no-op).

use baton_kit::evidence::{
    BaseImageRecord, BuildRecord, EvidenceError, EvidenceStore, SLSA_PROVENANCE_V1, SigningKey, StepRecord, Subject,
    provenance, seal, sign_image,
};
use baton_kit::{ErrorKind, HandlerError};
use baton_schemas::payloads::{BuildData, SignedData};
use chrono::{DateTime, Utc};

use crate::image::PushedImage;

/// Signs and attests pushed images with the builder's key.
#[derive(Debug)]
pub struct Attester {
    /// The private key: signs the `.sig` payload and the provenance's envelope.
    key: SigningKey,
    /// `sha256:<hex>` of the public key's DER, carried in `artifact.signed`.
    key_id: String,
    /// Who built, as provenance's `runDetails.builder.id` (`signing.builder_id`).
    builder_id: String,
    /// The registry images are pushed to: their evidence goes beside them.
    store: EvidenceStore,
}

/// What happened around one image's build, as the handler saw it: the facts the provenance
/// records beyond [`BuildData`].
#[derive(Debug, Clone, Copy)]
pub struct BuildFacts<'a> {
    /// The build as its events carry it: app, repository, commit, ref, run id and steps.
    pub data: &'a BuildData,
    /// `sha256:<hex>` of the `.baton.yaml` bytes the build read.
    pub pipeline_digest: &'a str,
    /// When the build steps began.
    pub started: DateTime<Utc>,
    /// When the image was in the registry.
    pub finished: DateTime<Utc>,
}

/// The evidence attached for one image, for `artifact.signed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The cosign signature, base64: the event's `signature`.
    pub signature: String,
    /// The event's `customData`.
    pub data: SignedData,
}

impl Attester {
    /// Signs with `key`, naming the builder `builder_id`, attaching in `store`.
    pub fn new(key: SigningKey, builder_id: String, store: EvidenceStore) -> Self {
        let key_id = key.public_key().key_id();
        Self {
            key,
            key_id,
            builder_id,
            store,
        }
    }

    /// `sha256:<hex>` of the public key's DER.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `image` and attests its provenance, in the registry.
    ///
    /// # Errors
    /// The registry's refusal of either push, or its absence.
    #[tracing::instrument(skip_all, fields(image = %image.reference))]
    pub async fn sign_and_attest(
        &self,
        image: &PushedImage,
        facts: &BuildFacts<'_>,
    ) -> Result<Attested, EvidenceError> {
        let subject = subject(image);
        let signature = sign_image(&self.key, &subject);
        let envelope = seal(
            &self.key,
            &provenance(&subject, &build_record(&self.builder_id, image, facts)),
        );
        // Two tags, two manifests: pushed at once, the build waits for the slower only.
        let (signature_manifest, attestation_manifest) = tokio::try_join!(
            self.store.attach_signature(&image.repository, &subject, &signature),
            self.store
                .attach_attestation(&image.repository, &subject, &envelope, SLSA_PROVENANCE_V1),
        )?;
        tracing::info!(%signature_manifest, %attestation_manifest, key = %self.key_id, "image signed and attested");
        Ok(Attested {
            signature: signature.signature,
            data: SignedData {
                app: facts.data.app.clone(),
                commit: facts.data.commit.clone(),
                repository: facts.data.repository.clone(),
                run: facts.data.run.clone(),
                image: image.info(),
                key_id: self.key_id.clone(),
                builder_id: self.builder_id.clone(),
                signature_manifest,
                attestation_manifest,
            },
        })
    }
}

/// The image as signatures name it: `<registry>/<repository>` and its manifest digest.
pub fn subject(image: &PushedImage) -> Subject {
    Subject {
        name: format!("{}/{}", image.registry, image.repository),
        digest: image.digest.clone(),
    }
}

/// What the provenance of `image` records: the builder, the source (repository, ref, commit),
/// the pipeline file's digest, the base pinned by digest (none for `scratch`), every step that
/// ran with its status and exit code, the run id, and when the build started and finished.
pub fn build_record(builder_id: &str, image: &PushedImage, facts: &BuildFacts<'_>) -> BuildRecord {
    let data = facts.data;
    BuildRecord {
        builder_id: builder_id.to_owned(),
        repository: data.repository.clone(),
        git_ref: data.git_ref.clone().unwrap_or_default(),
        commit: data.commit.clone(),
        pipeline_digest: facts.pipeline_digest.to_owned(),
        base_image: image.base.as_ref().map(|base| BaseImageRecord {
            name: base.name.clone(),
            digest: base.digest.clone(),
        }),
        steps: data
            .steps
            .iter()
            .map(|step| StepRecord {
                name: step.name.clone(),
                status: step.status.clone(),
                exit_code: step.exit_code,
            })
            .collect(),
        run_id: data.run.clone(),
        started: facts.started,
        finished: facts.finished,
    }
}

/// The handler's error for evidence that could not be attached: transient, whatever the
/// registry said (the image is pushed, only its evidence is missing, and the retry's image push
/// is a no-op), under the store's metric label.
pub fn attach_failed(error: EvidenceError) -> HandlerError {
    HandlerError::new(ErrorKind::Transient, error.metric_label(), error)
}
