//! What the builder proves about each image it pushes, once the image is in the registry: a
//! cosign signature over its digest (`sha256-<hex>.sig`) and an SLSA Provenance v1 attestation
//! (`sha256-<hex>.att`, a DSSE envelope) recording who built it, from which repository, commit
//! and pipeline file, on which base, with which steps and when — both with the builder's one
//! key (`signing.key_file`). The formats and the registry layout are `baton_kit::evidence`'s;
//! this module decides what the builder records ([`build_record`], pure) and attaches it.
//!
//! The image's digest is final once it is assembled, so its evidence does not wait for its push:
//! [`publish`] pushes the image and, at the same time, the signature and the provenance (two
//! tags, pushed at once). A build waits for the slowest of the three, not for their sum.
//!
//! A registry that refuses either evidence push fails the attempt *transiently*: the image may
//! be there while its evidence is not, and a promoter requiring evidence would hold it, so the
//! build is retried as a failed image push is (what the registry already has is not sent
//! again).

use baton_kit::evidence::{
    BaseImageRecord, BuildRecord, EvidenceError, EvidenceStore, SLSA_PROVENANCE_V1, SigningKey, StepRecord, Subject,
    provenance, seal, sign_image,
};
use baton_kit::{ErrorKind, HandlerError};
use baton_schemas::payloads::{BuildData, SignedData};
use chrono::{DateTime, Utc};

use crate::image::{Assembled, ImageError, PinnedBase, PushedImage};

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
    /// When the image was assembled: its content and digest final, before it is pushed (its
    /// provenance is pushed beside it).
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

    /// Opens the upload sessions an image's signature and provenance in `repository` will use
    /// ([`EvidenceStore::prepare`]): the handler runs it beside the build, so each attachment is
    /// one request shorter once the image is assembled.
    pub fn prepare(&self, repository: &str) -> impl Future<Output = ()> + Send + 'static {
        let store = self.store.clone();
        let repository = repository.to_owned();
        async move { store.prepare(&repository, 2).await }
    }

    /// Signs `image` and attests its provenance, in the registry: the two tags' manifests.
    ///
    /// # Errors
    /// The registry's refusal of either push, or its absence.
    #[tracing::instrument(skip_all, fields(digest = %image.digest))]
    pub async fn sign_and_attest(
        &self,
        image: Signable<'_>,
        facts: &BuildFacts<'_>,
    ) -> Result<Attachments, EvidenceError> {
        let subject = subject(image);
        let signature = sign_image(&self.key, &subject);
        let envelope = seal(
            &self.key,
            &provenance(&subject, &build_record(&self.builder_id, image, facts)),
        );
        // Two tags, two manifests: pushed at once, the build waits for the slower only.
        let (signature_manifest, attestation_manifest) = tokio::try_join!(
            self.store.attach_signature(image.repository, &subject, &signature),
            self.store
                .attach_attestation(image.repository, &subject, &envelope, SLSA_PROVENANCE_V1),
        )?;
        tracing::info!(%signature_manifest, %attestation_manifest, key = %self.key_id, "image signed and attested");
        Ok(Attachments {
            signature: signature.signature,
            signature_manifest,
            attestation_manifest,
        })
    }

    /// What `artifact.signed` says of `image` once it and its evidence are in the registry.
    pub fn attested(&self, attachments: Attachments, image: &PushedImage, facts: &BuildFacts<'_>) -> Attested {
        Attested {
            signature: attachments.signature,
            data: SignedData {
                app: facts.data.app.clone(),
                commit: facts.data.commit.clone(),
                repository: facts.data.repository.clone(),
                run: facts.data.run.clone(),
                image: image.info(),
                key_id: self.key_id.clone(),
                builder_id: self.builder_id.clone(),
                signature_manifest: attachments.signature_manifest,
                attestation_manifest: attachments.attestation_manifest,
            },
        }
    }
}

/// What is signed of an image: where it goes, its manifest digest and its base, all known once
/// it is assembled.
#[derive(Debug, Clone, Copy)]
pub struct Signable<'a> {
    /// `host[:port]` of the registry.
    pub registry: &'a str,
    /// The repository in the registry.
    pub repository: &'a str,
    /// `sha256:<hex>` of the manifest.
    pub digest: &'a str,
    /// The base, pinned by digest (`None` for `scratch`).
    pub base: Option<&'a PinnedBase>,
}

impl<'a> From<&'a Assembled<'_>> for Signable<'a> {
    fn from(image: &'a Assembled<'_>) -> Self {
        Self {
            registry: image.registry(),
            repository: image.repository(),
            digest: image.digest(),
            base: image.base(),
        }
    }
}

impl<'a> From<&'a PushedImage> for Signable<'a> {
    fn from(image: &'a PushedImage) -> Self {
        Self {
            registry: &image.registry,
            repository: &image.repository,
            digest: &image.digest,
            base: image.base.as_ref(),
        }
    }
}

/// An image's signature and provenance in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachments {
    /// The cosign signature, base64.
    pub signature: String,
    /// `sha256:<hex>` of the `.sig` manifest.
    pub signature_manifest: String,
    /// `sha256:<hex>` of the `.att` manifest.
    pub attestation_manifest: String,
}

/// Why [`publish`] failed: the image's push, or its evidence's.
#[derive(Debug)]
pub enum PublishError {
    /// The image could not be pushed: transient or the commit's fault, as
    /// [`ImageError::is_transient`] says.
    Image(ImageError),
    /// The image's evidence could not be attached: always transient ([`attach_failed`]).
    Evidence(EvidenceError),
}

/// Pushes `image` and, with an `attester`, signs it and attests its provenance while it is
/// pushed. Both are awaited to the end; when both fail, the image's failure is the one reported
/// (a push that can never succeed fails the build, whatever the evidence did).
///
/// # Errors
/// [`PublishError`].
pub async fn publish(
    image: &Assembled<'_>,
    attester: Option<&Attester>,
    facts: &BuildFacts<'_>,
) -> Result<(PushedImage, Option<Attested>), PublishError> {
    let Some(attester) = attester else {
        return Ok((image.push().await.map_err(PublishError::Image)?, None));
    };
    let (pushed, attachments) = tokio::join!(image.push(), attester.sign_and_attest(image.into(), facts));
    let pushed = pushed.map_err(PublishError::Image)?;
    let attachments = attachments.map_err(PublishError::Evidence)?;
    let attested = attester.attested(attachments, &pushed, facts);
    Ok((pushed, Some(attested)))
}

/// The image as signatures name it: `<registry>/<repository>` and its manifest digest.
pub fn subject(image: Signable<'_>) -> Subject {
    Subject {
        name: format!("{}/{}", image.registry, image.repository),
        digest: image.digest.to_owned(),
    }
}

/// What the provenance of `image` records: the builder, the source (repository, ref, commit),
/// the pipeline file's digest, the base pinned by digest (none for `scratch`), every step that
/// ran with its status and exit code, the run id, and when the build started and finished.
pub fn build_record(builder_id: &str, image: Signable<'_>, facts: &BuildFacts<'_>) -> BuildRecord {
    let data = facts.data;
    BuildRecord {
        builder_id: builder_id.to_owned(),
        repository: data.repository.clone(),
        git_ref: data.git_ref.clone().unwrap_or_default(),
        commit: data.commit.clone(),
        pipeline_digest: facts.pipeline_digest.to_owned(),
        base_image: image.base.map(|base| BaseImageRecord {
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
