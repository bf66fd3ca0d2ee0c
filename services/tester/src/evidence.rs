//! The tester's verdict as evidence: once a run has its verdict, an in-toto test-result
//! attestation (result `PASSED` or `FAILED`, the passed and failed cases by name, the counts,
//! Baton's outcome) is sealed with the tester's key (`signing.key_file`) and appended to the
//! tested image's `sha256-<hex>.att`, beside the builder's provenance. The formats and the
//! registry layout are `baton_kit::evidence`'s; this module decides what the tester records
//! ([`test_record`], pure) and attaches it.
//!
//! A registry that refuses the push fails the run *transiently*: the event is retried (the
//! tests run again), as any machinery failure is, because a promoter requiring a test
//! attestation would hold the release without it.

use std::collections::BTreeMap;

use baton_kit::evidence::{
    EvidenceError, EvidenceStore, SigningKey, Subject, TEST_RESULT_V0_1, TestOutcome, TestRecord, seal, test_result,
};
use baton_kit::{ErrorKind, HandlerError};
use baton_schemas::payloads::{ImageInfo, Outcome, TestData};

use crate::junit::case_name;

/// Attests verdicts with the tester's key.
#[derive(Debug)]
pub struct Attester {
    /// The private key: signs the attestation's envelope.
    key: SigningKey,
    /// `sha256:<hex>` of the public key's DER, for the logs.
    key_id: String,
    /// Who tested (`signing.tester_id`).
    tester_id: String,
    /// The registry the tested images are in.
    store: EvidenceStore,
}

/// The passed cases of a run, by name, as far as they are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassedCases {
    /// Names of passed cases, in report order (each report's first ones).
    pub names: Vec<String>,
    /// Passed cases not named.
    pub omitted: u64,
}

impl Attester {
    /// Attests with `key`, naming the tester `tester_id`, attaching in `store`.
    pub fn new(key: SigningKey, tester_id: String, store: EvidenceStore) -> Self {
        let key_id = key.public_key().key_id();
        Self {
            key,
            key_id,
            tester_id,
            store,
        }
    }

    /// `sha256:<hex>` of the public key's DER.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Opens the upload session the verdict's attestation on an image in `repository` will
    /// use ([`EvidenceStore::prepare`]): the handler runs it beside the tests, so attaching is
    /// one request shorter once they are done.
    pub fn prepare(&self, repository: &str) -> impl Future<Output = ()> + Send + 'static {
        let store = self.store.clone();
        let repository = repository.to_owned();
        async move { store.prepare(&repository, 1).await }
    }

    /// Seals the verdict of `data` on `image` and appends it to the image's `.att`; returns
    /// the digest of the `.att` manifest it made.
    ///
    /// # Errors
    /// The registry's refusal, or its absence.
    #[tracing::instrument(skip_all, fields(image = %image.reference))]
    pub async fn attest(
        &self,
        image: &ImageInfo,
        data: &TestData,
        passed: &PassedCases,
    ) -> Result<String, EvidenceError> {
        let subject = Subject {
            name: format!("{}/{}", image.registry, image.repository),
            digest: image.digest.clone(),
        };
        let envelope = seal(
            &self.key,
            &test_result(&subject, &test_record(&self.tester_id, data, passed)),
        );
        let manifest = self
            .store
            .attach_attestation(&image.repository, &subject, &envelope, TEST_RESULT_V0_1)
            .await?;
        tracing::info!(%manifest, key = %self.key_id, "verdict attested");
        Ok(manifest)
    }
}

/// What the test-result attestation of a run records: `PASSED` only for outcome `success`
/// (`FAILED` for a failure, an error or a cancel), the passed and failed cases by name, and the
/// counts — `passed`, `failed`, `errored`, `skipped`, the cases not named, and `outcome_<word>`
/// for Baton's own outcome — under the run's id.
pub fn test_record(tester_id: &str, data: &TestData, passed: &PassedCases) -> TestRecord {
    let outcome = data.outcome.unwrap_or(Outcome::Error);
    let counts = &data.counts;
    let passed_count = counts
        .tests
        .saturating_sub(counts.failures + counts.errors + counts.skipped);
    let outcome_word = serde_json::to_value(outcome)
        .ok()
        .and_then(|word| word.as_str().map(str::to_owned))
        .unwrap_or_default();
    TestRecord {
        tester_id: tester_id.to_owned(),
        result: if outcome == Outcome::Success {
            TestOutcome::Passed
        } else {
            TestOutcome::Failed
        },
        configuration: Vec::new(),
        passed_tests: passed.names.clone(),
        warned_tests: Vec::new(),
        failed_tests: data
            .failed_cases
            .iter()
            .map(|case| case_name(case.class.as_deref(), &case.name))
            .collect(),
        counts: BTreeMap::from([
            ("tests".to_owned(), counts.tests),
            ("passed".to_owned(), passed_count),
            ("failed".to_owned(), counts.failures),
            ("errored".to_owned(), counts.errors),
            ("skipped".to_owned(), counts.skipped),
            ("passedNotNamed".to_owned(), passed.omitted),
            ("failedNotNamed".to_owned(), counts.failed_cases_omitted),
            (format!("outcome_{outcome_word}"), 1),
        ]),
        run_id: data.run.clone(),
    }
}

/// The handler's error for an attestation that could not be attached: transient, whatever the
/// registry said, under the store's metric label.
pub fn attach_failed(error: EvidenceError) -> HandlerError {
    HandlerError::new(ErrorKind::Transient, error.metric_label(), error)
}
