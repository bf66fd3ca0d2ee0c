//! in-toto Statements: what an attestation says about an image. The builder's says how the
//! image was built (an SLSA Provenance v1 predicate), the tester's what its tests found (the
//! in-toto test-result predicate). Both are plain JSON that any SLSA or in-toto tool reads.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Subject;

/// The in-toto Statement type.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// The SLSA Provenance v1 predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// The in-toto test-result predicate type.
pub const TEST_RESULT_V0_1: &str = "https://in-toto.io/attestation/test-result/v0.1";
/// The build type Baton's provenance declares: what its `externalParameters` mean.
pub const BATON_BUILD_TYPE: &str = "https://baton.dev/build/v1";

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statement {
    /// Always [`STATEMENT_V1`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The artifacts it is about: the image's repository and manifest digest.
    pub subject: Vec<ResourceDescriptor>,
    /// What the predicate is, e.g. [`SLSA_PROVENANCE_V1`].
    pub predicate_type: String,
    /// What is said about the subject.
    pub predicate: Value,
}

/// in-toto's ResourceDescriptor, reduced to what Baton writes and reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// The artifact's name.
    #[serde(default)]
    pub name: String,
    /// Its digests by algorithm, e.g. `{"sha256": "<hex>"}`.
    #[serde(default)]
    pub digest: BTreeMap<String, String>,
}

impl ResourceDescriptor {
    /// The descriptor of an image subject.
    fn of(subject: &Subject) -> Self {
        let (algorithm, hex) = subject.digest.split_once(':').unwrap_or(("sha256", &subject.digest));
        Self {
            name: subject.name.clone(),
            digest: BTreeMap::from([(algorithm.to_owned(), hex.to_owned())]),
        }
    }
}

/// What the builder knows about one build, for its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// The builder's id (`builder_id` in its config), e.g. `https://baton.dev/builder/v1`.
    pub builder_id: String,
    /// The source repository's URL.
    pub repository: String,
    /// The git ref built, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The commit built (full hex).
    pub commit: String,
    /// `sha256:<hex>` of the pipeline file's bytes (`.baton.yaml`) at that commit.
    pub pipeline_digest: String,
    /// The base image, `None` for `scratch`.
    pub base_image: Option<BaseImageRecord>,
    /// The build's steps in order, with how they ended.
    pub steps: Vec<StepRecord>,
    /// The build run's id, unique per attempt.
    pub run_id: String,
    /// When the build started.
    pub started: DateTime<Utc>,
    /// When it finished (after the push).
    pub finished: DateTime<Utc>,
}

/// A base image as resolved for a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImageRecord {
    /// The base as written in `image.base`.
    pub name: String,
    /// The platform manifest's digest, `sha256:<hex>`.
    pub digest: String,
}

/// One build step and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// The step's name in the pipeline file.
    pub name: String,
    /// Its exit code (`None` when it was killed or never ran).
    pub exit_code: Option<i32>,
    /// How it ended, e.g. `succeeded`, `failed`, `timed_out`.
    pub status: String,
}

/// The provenance statement of a build: SLSA Provenance v1, with the source, pipeline and base
/// image as resolved dependencies and the steps as byproducts.
pub fn provenance(subject: &Subject, build: &BuildRecord) -> Statement {
    let mut dependencies = vec![
        json!({
            "uri": format!("git+{}@{}", build.repository, build.git_ref),
            "digest": {"gitCommit": build.commit},
        }),
        json!({
            "name": "pipeline",
            "uri": format!("git+{}@{}#.baton.yaml", build.repository, build.commit),
            "digest": digest_map(&build.pipeline_digest),
        }),
    ];
    if let Some(base) = &build.base_image {
        dependencies.push(json!({
            "name": "base-image",
            "uri": format!("oci://{}", base.name),
            "digest": digest_map(&base.digest),
        }));
    }
    let steps: Vec<Value> = build
        .steps
        .iter()
        .map(|step| {
            json!({
                "name": format!("step/{}", step.name),
                "annotations": {"exitCode": step.exit_code, "status": step.status},
            })
        })
        .collect();
    let predicate = json!({
        "buildDefinition": {
            "buildType": BATON_BUILD_TYPE,
            "externalParameters": {
                "source": {
                    "repository": build.repository,
                    "ref": build.git_ref,
                    "commit": build.commit,
                },
                "pipeline": {"path": ".baton.yaml", "digest": build.pipeline_digest},
            },
            "resolvedDependencies": dependencies,
        },
        "runDetails": {
            "builder": {"id": build.builder_id},
            "metadata": {
                "invocationId": build.run_id,
                "startedOn": build.started.to_rfc3339_opts(SecondsFormat::Millis, true),
                "finishedOn": build.finished.to_rfc3339_opts(SecondsFormat::Millis, true),
            },
            "byproducts": steps,
        },
    });
    Statement {
        statement_type: STATEMENT_V1.to_owned(),
        subject: vec![ResourceDescriptor::of(subject)],
        predicate_type: SLSA_PROVENANCE_V1.to_owned(),
        predicate,
    }
}

/// `{"sha256": "<hex>"}` for `sha256:<hex>`.
fn digest_map(digest: &str) -> Value {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    json!({ algorithm: hex })
}

/// The tester's verdict, as its test-result statement records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// The tester's id (`tester_id` in its config).
    pub tester_id: String,
    /// The overall outcome.
    pub result: TestOutcome,
    /// What configured the tests (the pipeline file, the report files), as descriptors.
    pub configuration: Vec<ResourceDescriptor>,
    /// Names of the passed cases (may be cut by the tester; the counts stay whole).
    pub passed_tests: Vec<String>,
    /// Names of the cases that passed with warnings (skipped ones, say).
    pub warned_tests: Vec<String>,
    /// Names of the failed cases.
    pub failed_tests: Vec<String>,
    /// Counts by outcome, e.g. `passed`, `failed`, `skipped`.
    pub counts: BTreeMap<String, u64>,
    /// The test run's id.
    pub run_id: String,
}

/// The in-toto test-result outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestOutcome {
    /// Every test passed.
    Passed,
    /// Passed, with warnings.
    Warned,
    /// At least one test failed.
    Failed,
}

impl TestOutcome {
    /// `PASSED`, `WARNED` or `FAILED`, as the predicate writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "PASSED",
            Self::Warned => "WARNED",
            Self::Failed => "FAILED",
        }
    }
}

/// The test-result statement of a verdict (in-toto test-result v0.1); Baton's counts and the
/// tester's id ride under `baton`, which the predicate's readers ignore.
pub fn test_result(subject: &Subject, verdict: &TestRecord) -> Statement {
    let predicate = json!({
        "result": verdict.result.as_str(),
        "configuration": verdict.configuration,
        "passedTests": verdict.passed_tests,
        "warnedTests": verdict.warned_tests,
        "failedTests": verdict.failed_tests,
        "baton": {
            "tester": verdict.tester_id,
            "runId": verdict.run_id,
            "counts": verdict.counts,
        },
    });
    Statement {
        statement_type: STATEMENT_V1.to_owned(),
        subject: vec![ResourceDescriptor::of(subject)],
        predicate_type: TEST_RESULT_V0_1.to_owned(),
        predicate,
    }
}
