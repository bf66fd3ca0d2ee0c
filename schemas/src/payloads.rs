//! Payloads Baton carries in a CDEvent's `customData`: what the standard fields cannot hold.
//! Their JSON Schemas are generated into `schemas/json/payloads/`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `customData` of `change.merged`: one push to a tracked branch (or tag), as the git host
/// described it. The subject id of the event is [`PushData::after`], the new head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushData {
    /// The application: the repository's name in the listener's config (GitHub: `full_name`).
    pub app: String,
    /// Where the push came from: `github`, `gitlab`, `gitea`, `bitbucket`, `generic` or `poll`.
    pub provider: String,
    /// The git host's delivery id (or, when polling, `poll:<repo>:<ref>:<sha>`).
    pub delivery_id: String,
    /// The full ref that moved, e.g. `refs/heads/main` or `refs/tags/v1.2.0`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The branch name when a branch moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The tag name when a tag was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The sha the ref pointed to before the push (all zeros for a new ref).
    pub before: String,
    /// The sha the ref points to now: the commit Baton builds.
    pub after: String,
    /// The repository.
    pub repository: RepositoryInfo,
    /// The new head commit.
    pub head_commit: CommitInfo,
    /// Every commit of the push, oldest first, as the host listed them (may be capped by the
    /// host, e.g. GitHub lists at most 2048).
    pub commits: Vec<CommitInfo>,
    /// Who pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher: Option<Person>,
}

/// A repository as a push describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryInfo {
    /// Short name, e.g. `shop`.
    pub name: String,
    /// Full name as the host names it, e.g. `acme/shop`.
    pub full_name: String,
    /// URL the builder clones from (the config's `clone_url` override wins).
    pub clone_url: String,
    /// Web page of the repository, when the host gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_url: Option<String>,
}

/// One commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitInfo {
    /// Full sha.
    pub id: String,
    /// Commit message.
    pub message: String,
    /// Commit time as the host gave it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The author.
    pub author: Person,
    /// The committer, when Baton read the commit itself (the git hosts' push payloads name only
    /// the author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<Person>,
    /// Web page of the commit, when the host gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A person as git hosts describe them; any part may be missing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Person {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Account name on the git host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// `customData` of the builder's events (`build.queued/started/finished`,
/// `artifact.packaged/published`): which commit of which application, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildData {
    /// The application (repository name as the git host names it).
    pub app: String,
    /// The commit built (full sha).
    pub commit: String,
    /// The ref that was pushed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// URL the source was fetched from.
    pub repository: String,
    /// The build's run id: logs live under `baton.logs.<run>.<step>` and `<run>/<step>.log`.
    pub run: String,
    /// How it ended (on `build.finished` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why it failed, in words a developer can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each step that ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepReport>,
    /// The image, once assembled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    /// Who pushed the commit (from the push), carried on so approvers see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_by: Option<Person>,
}

/// `customData` of `artifact.signed`: which image of which commit was signed, with which key,
/// and where the evidence is (the manifests of the image's `sha256-<hex>.sig` and `.att` tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedData {
    /// The application.
    pub app: String,
    /// The commit built (full sha).
    pub commit: String,
    /// URL the source was fetched from.
    pub repository: String,
    /// The build's run id.
    pub run: String,
    /// The image signed, by digest.
    pub image: ImageInfo,
    /// `sha256:<hex>` of the signing public key's DER (SubjectPublicKeyInfo): which key of the
    /// config repo's `keys/` verifies the evidence.
    pub key_id: String,
    /// The builder id the provenance names.
    pub builder_id: String,
    /// Digest of the `sha256-<hex>.sig` manifest holding the signature.
    pub signature_manifest: String,
    /// Digest of the `sha256-<hex>.att` manifest holding the provenance attestation (the
    /// tester's attestation is appended later, giving that tag a new manifest).
    pub attestation_manifest: String,
}

/// How a build or test run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Everything passed.
    Success,
    /// The user's steps or files failed (a non-zero exit, a failing test, a missing file).
    Failure,
    /// Baton could not run it (an unreachable repository, a registry refusing the push).
    Error,
    /// Cancelled (superseded, or Baton shutting down for good).
    Cancel,
}

impl Outcome {
    /// Whether a run with this outcome lets the release go on: only a success does. A failed,
    /// errored or cancelled build or test run stops the release; the promoter never promotes it.
    pub const fn lets_the_release_continue(self) -> bool {
        matches!(self, Self::Success)
    }
}

/// One step of a build or test run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepReport {
    /// The step's name from `.baton.yaml`.
    pub name: String,
    /// `succeeded`, `failed`, `timed_out` or `error`.
    pub status: String,
    /// Exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Wall-clock time in milliseconds.
    pub duration_ms: u64,
    /// Where the whole log is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogLocation>,
    /// The last lines of output (masked, truncated): the whole log is in the object store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<String>,
}

/// Where a step's full log is kept in the JetStream object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogLocation {
    /// Object store bucket, e.g. `baton-logs`.
    pub bucket: String,
    /// Object name, `<run>/<step>.log`.
    pub object: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of lines.
    pub lines: u64,
}

/// An image in a registry, pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageInfo {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// Repository in the registry, e.g. `baton/acme_shop`.
    pub repository: String,
    /// The tag: the commit sha.
    pub tag: String,
    /// The manifest digest, `sha256:<hex>`: the image's identity.
    pub digest: String,
    /// `<registry>/<repository>@<digest>`, what everything downstream pulls.
    pub reference: String,
    /// The package URL of the image, the CDEvents artifact id.
    pub purl: String,
    /// Bytes uploaded for this image (0 when the registry had every blob).
    pub uploaded_bytes: u64,
}

/// `customData` of the tester's events (`testsuiterun.started/finished`): which image of which
/// commit was tested, how, and the verdict with its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestData {
    /// The application.
    pub app: String,
    /// The commit tested.
    pub commit: String,
    /// URL the source was fetched from.
    pub repository: String,
    /// The image tested, by digest (`BATON_IMAGE` in the steps' environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    /// The test run's id: logs live under `baton.logs.<run>.<step>` and `<run>/<step>.log`.
    pub run: String,
    /// How it ended (on `testsuiterun.finished` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why it did not succeed, or a note such as "no tests declared".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the commit declares no test steps at all (it passes, and the promoter can be
    /// configured to refuse such releases).
    #[serde(default)]
    pub no_tests_declared: bool,
    /// Test case counts from the JUnit reports.
    #[serde(default)]
    pub counts: TestCounts,
    /// The failed test cases (the first ones; the reports in the log store have them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_cases: Vec<FailedTestCase>,
    /// Each step that ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepReport>,
    /// Who pushed the commit (from the build), carried on so approvers see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_by: Option<Person>,
}

/// Test case counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestCounts {
    /// Test suites in the reports.
    pub suites: u64,
    /// Test cases.
    pub tests: u64,
    /// Cases that failed an assertion.
    pub failures: u64,
    /// Cases that errored.
    pub errors: u64,
    /// Cases skipped.
    pub skipped: u64,
    /// Failed cases not listed in `failedCases`.
    pub failed_cases_omitted: u64,
}

/// One failed test case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailedTestCase {
    /// The case's name.
    pub name: String,
    /// Its class or module, when the report names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// `failure` (an assertion) or `error` (an unexpected exception).
    pub kind: String,
    /// The failure message, truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The failure's text and the case's output, truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Its duration in milliseconds, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_success_lets_a_release_continue() {
        assert!(Outcome::Success.lets_the_release_continue());
        for stop in [Outcome::Failure, Outcome::Error, Outcome::Cancel] {
            assert!(!stop.lets_the_release_continue(), "{stop:?}");
        }
        // The wire words are the CDEvents `outcome` enum of testsuiterun.finished.
        let words: Vec<String> = [Outcome::Success, Outcome::Failure, Outcome::Error, Outcome::Cancel]
            .iter()
            .map(|o| serde_json::to_value(o).unwrap().as_str().unwrap().to_owned())
            .collect();
        assert_eq!(words, ["success", "failure", "error", "cancel"]);
    }
}
