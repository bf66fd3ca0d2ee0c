//! The tester's stage: for each `artifact.published`, check out the same commit (from the
//! shared cached mirror), run the test steps of its `.baton.yaml` with the kit's step executor
//! — `BATON_IMAGE`, `BATON_COMMIT` and `BATON_RELEASE` in their environment — read the JUnit
//! reports they declare, attest the verdict on the image (an in-toto test-result attestation
//! appended to its `.att`, see [`crate::evidence`]), and emit `testsuiterun.started` and
//! `testsuiterun.finished` with the outcome (`success`, `failure`, `error`, `cancel`), the counts
//! and the failed cases.
//!
//! Steps run in the order written; consecutive steps marked `independent: true` run together.
//! The suite's `timeout` bounds the whole run: steps still running then are killed. Each step
//! runs with the limits and secrets the tester's [`StepPolicy`] gives it; every step is checked
//! before any runs, and one asking for more than the tester allows fails the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use baton_kit::source::Sources;
use baton_kit::steps::{StepGrant, StepOutcome, StepPolicy, StepRequest, StepRunner};
use baton_kit::{Handler, HandlerError, Incoming, Outgoing, events as kit_events};
use baton_schemas::EventType;
use baton_schemas::payloads::{BuildData, FailedTestCase, Outcome, TestCounts, TestData};
use baton_schemas::pipeline::{PIPELINE_FILE, Pipeline, TestStep};
use serde_json::json;

use crate::evidence::{self, Attester, PassedCases};
use crate::junit::{self, FailureKind, JunitLimits};

/// Default bound of a whole suite when `.baton.yaml` sets none.
pub const DEFAULT_SUITE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How much longer than [`JunitLimits::max_read_time`] the run waits for a report's reader before
/// giving up on it: the reader stops itself at the limit unless a read never returns.
const JUNIT_READ_GRACE: Duration = Duration::from_secs(5);
/// Failed cases carried in the event (the reports themselves stay in the workspace logs).
const MAX_FAILED_CASES: usize = 50;

/// The tester's handler.
#[derive(Debug)]
pub struct Tester {
    /// Mirrors and workspaces (shared with the builder's cache layout).
    pub sources: Sources,
    /// Runs the test steps and keeps their logs.
    pub steps: StepRunner,
    /// What each test step may have: limits within the maxima, the secrets granted to its
    /// repository.
    pub policy: StepPolicy,
    /// For publishing `testsuiterun.started` as it happens.
    pub jetstream: jetstream::Context,
    /// Bounds on JUnit reports.
    pub junit: JunitLimits,
    /// Attests every verdict on its image; `None` when `signing.enabled` is false.
    pub attester: Option<Attester>,
}

/// The `environment` of the test run in CDEvents terms: where the tests ran.
fn environment() -> serde_json::Value {
    json!({"id": "baton-tester", "source": "/baton/tester"})
}

fn suite_id(data: &TestData) -> String {
    format!("{}@{}", data.app, data.commit)
}

/// The verdict of one run, before it becomes an event.
struct Verdict {
    outcome: Outcome,
    reason: Option<String>,
}

impl Verdict {
    fn success() -> Self {
        Self {
            outcome: Outcome::Success,
            reason: None,
        }
    }
    fn failure(reason: String) -> Self {
        Self {
            outcome: Outcome::Failure,
            reason: Some(reason),
        }
    }
    fn error(reason: String) -> Self {
        Self {
            outcome: Outcome::Error,
            reason: Some(reason),
        }
    }
}

impl Tester {
    fn data(incoming: &Incoming, build: &BuildData) -> TestData {
        TestData {
            app: build.app.clone(),
            commit: build.commit.clone(),
            repository: build.repository.clone(),
            image: build.image.clone(),
            run: format!("test-{}", incoming.derive_id("test")),
            outcome: None,
            reason: None,
            no_tests_declared: false,
            counts: TestCounts::default(),
            failed_cases: Vec::new(),
            steps: Vec::new(),
            pushed_by: build.pushed_by.clone(),
        }
    }

    fn event(incoming: &Incoming, ty: EventType, label: &str, data: &TestData, content: serde_json::Value) -> Outgoing {
        let e = incoming
            .follow_up(ty, label, suite_id(data), content)
            .and_then(|e| e.with_custom_data(data))
            .expect("tester events serialize");
        Outgoing::new(incoming.app.clone(), e)
    }

    fn started(incoming: &Incoming, data: &TestData) -> Outgoing {
        let content = json!({
            "environment": environment(),
            "testSuite": {"id": suite_id(data), "name": data.app},
            "trigger": {"type": "event"},
        });
        Self::event(
            incoming,
            EventType::TestSuiteRunStarted,
            "testsuiterun.started",
            data,
            content,
        )
    }

    fn finished(incoming: &Incoming, data: &TestData) -> Outgoing {
        let mut content = json!({
            "environment": environment(),
            "testSuite": {"id": suite_id(data), "name": data.app},
            "outcome": data.outcome.unwrap_or(Outcome::Error),
        });
        if let Some(reason) = &data.reason {
            content["reason"] = json!(reason);
        }
        Self::event(
            incoming,
            EventType::TestSuiteRunFinished,
            "testsuiterun.finished",
            data,
            content,
        )
    }

    async fn run(
        &self,
        incoming: &Incoming,
        data: &mut TestData,
        passed: &mut PassedCases,
    ) -> Result<Verdict, HandlerError> {
        let workspace = match self
            .sources
            .checkout_workspace(&data.repository, &data.commit, "test-")
            .await
        {
            Ok(workspace) => workspace,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => return Ok(Verdict::error(e.to_string())),
        };
        let pipeline = match std::fs::read_to_string(workspace.path().join(PIPELINE_FILE)) {
            Ok(text) => match Pipeline::parse(&text) {
                Ok(p) => p,
                Err(e) => return Ok(Verdict::error(e.to_string())),
            },
            Err(_) => {
                return Ok(Verdict::error(format!(
                    "{PIPELINE_FILE} is missing at the root of commit {}",
                    data.commit
                )));
            }
        };
        if pipeline.test.steps.is_empty() {
            data.no_tests_declared = true;
            return Ok(Verdict {
                outcome: Outcome::Success,
                reason: Some("no tests declared".into()),
            });
        }
        // Every step is checked before any runs; one asking for more than this tester allows
        // fails the run, naming the field.
        let steps = pipeline.test.steps.iter().map(|t| &t.step);
        let grants = match self.policy.allow_all(&data.app, "test.steps", steps) {
            Ok(grants) => grants,
            Err(e) => return Ok(Verdict::failure(format!("{PIPELINE_FILE}: {e}"))),
        };
        let mut env = BTreeMap::new();
        if let Some(image) = &data.image {
            env.insert("BATON_IMAGE".to_owned(), image.reference.clone());
        }
        env.insert("BATON_COMMIT".to_owned(), data.commit.clone());
        env.insert(
            "BATON_RELEASE".to_owned(),
            incoming.chain_id().unwrap_or_default().to_owned(),
        );
        let suite_timeout = pipeline.test.timeout.unwrap_or(DEFAULT_SUITE_TIMEOUT);
        let run = data.run.clone();
        let suite = self.run_steps(
            &pipeline.test.steps,
            &grants,
            workspace.path(),
            &env,
            &run,
            data,
            passed,
        );
        match tokio::time::timeout(suite_timeout, suite).await {
            Ok(verdict) => Ok(verdict),
            Err(_) => Ok(Verdict::failure(format!(
                "the test suite exceeded its timeout of {}s; the steps still running were killed",
                suite_timeout.as_secs()
            ))),
        }
    }

    /// Runs the steps group by group (consecutive independent steps together), each with its
    /// grant (`grants[i]` is `steps[i]`'s), and reads their JUnit reports (the passed cases'
    /// names into `passed`). Stops at the first group with a failing step.
    #[expect(
        clippy::too_many_arguments,
        reason = "one run's parts, borrowed apart so its steps run concurrently"
    )]
    async fn run_steps(
        &self,
        steps: &[TestStep],
        grants: &[StepGrant],
        workspace: &Path,
        env: &BTreeMap<String, String>,
        run: &str,
        data: &mut TestData,
        passed: &mut PassedCases,
    ) -> Verdict {
        let mut verdict = Verdict::success();
        let mut first = 0;
        for group in groups(steps) {
            let granted = &grants[first..first + group.len()];
            first += group.len();
            let outcomes: Vec<StepOutcome> = futures::future::join_all(group.iter().zip(granted).map(|(t, grant)| {
                self.steps.run(StepRequest {
                    run_id: run,
                    app: &data.app,
                    step: &t.step,
                    workspace,
                    extra_env: env,
                    secrets: &[],
                    secret_env: &grant.secrets,
                    limits: Some(&grant.limits),
                })
            }))
            .await;
            for (test, outcome) in group.iter().zip(&outcomes) {
                data.steps.push(outcome.report(&test.step.name));
                if let Some(report) = &test.junit {
                    match self.read_junit(workspace, report).await {
                        Ok(summary) => {
                            add_counts(data, &summary);
                            passed.names.extend(summary.passed_names.iter().cloned());
                            passed.omitted += summary.passed_names_omitted;
                            if !summary.passed() && verdict.outcome == Outcome::Success {
                                verdict = Verdict::failure(format!(
                                    "step `{}`: {} of {} tests failed, {} errored",
                                    test.step.name, summary.failures, summary.tests, summary.errors
                                ));
                            }
                        }
                        Err(e) if verdict.outcome != Outcome::Error => {
                            verdict = Verdict::error(format!("step `{}`: its JUnit report {e}", test.step.name));
                        }
                        Err(_) => {}
                    }
                }
                if !outcome.status.succeeded() && verdict.outcome == Outcome::Success {
                    verdict = Verdict::failure(format!("test step `{}` {}", test.step.name, outcome.status));
                }
            }
            if verdict.outcome != Outcome::Success {
                break;
            }
        }
        verdict
    }

    async fn read_junit(&self, workspace: &Path, report: &str) -> Result<junit::JunitSummary, String> {
        let path = inside(workspace, report)?;
        let limits = self.junit.clone();
        let time_limit = limits.max_read_time;
        let reading = tokio::task::spawn_blocking({
            let path = path.clone();
            move || junit::read_report(&path, &limits)
        });
        // The reader checks its time limit between reads; one read stuck in the kernel (a hung
        // file system) is bounded here instead, leaving only its thread behind.
        match tokio::time::timeout(time_limit.saturating_add(JUNIT_READ_GRACE), reading).await {
            Ok(read) => read
                .map_err(|e| format!("could not be read: {e}"))?
                .map_err(|e| e.to_string()),
            Err(_) => Err(junit::JunitError::TimedOut {
                path: Some(path),
                limit: time_limit,
            }
            .to_string()),
        }
    }
}

/// The report's path, refused when it would leave the workspace: as written, and once the
/// symlinks on the way are followed (a step can leave a symlink to any file of the host at the
/// report's path, or a directory symlink before it). The step's processes are gone by then (in
/// the sandbox, all of them), so nothing changes the path between this check and the read.
fn inside(workspace: &Path, report: &str) -> Result<PathBuf, String> {
    let relative = Path::new(report);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("`{report}` must be a path inside the repository"));
    }
    let joined = workspace.join(relative);
    let root = std::fs::canonicalize(workspace).map_err(|e| format!("the workspace cannot be read: {e}"))?;
    match std::fs::canonicalize(&joined) {
        Ok(real) if real.starts_with(&root) => Ok(real),
        Ok(_) => Err(format!(
            "`{report}` leads outside the repository through a symlink; a report must be a file of the repository"
        )),
        // Missing (or unreadable): the reader says so, naming the path as declared.
        Err(_) => Ok(joined),
    }
}

fn groups(steps: &[TestStep]) -> Vec<&[TestStep]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < steps.len() {
        let mut end = start + 1;
        if steps[start].independent {
            while end < steps.len() && steps[end].independent {
                end += 1;
            }
        }
        out.push(&steps[start..end]);
        start = end;
    }
    out
}

fn add_counts(data: &mut TestData, summary: &junit::JunitSummary) {
    let c = &mut data.counts;
    c.suites += summary.suites;
    c.tests += summary.tests;
    c.failures += summary.failures;
    c.errors += summary.errors;
    c.skipped += summary.skipped;
    c.failed_cases_omitted += summary.failed_cases_omitted;
    for case in &summary.failed_cases {
        if data.failed_cases.len() >= MAX_FAILED_CASES {
            data.counts.failed_cases_omitted += 1;
            continue;
        }
        data.failed_cases.push(FailedTestCase {
            name: case.name.clone(),
            class: case.class.clone(),
            kind: match case.kind {
                FailureKind::Failure => "failure".into(),
                FailureKind::Error => "error".into(),
            },
            message: case.message.clone(),
            output: case.output.clone(),
            duration_ms: case.duration.and_then(|d| u64::try_from(d.as_millis()).ok()),
        });
    }
}

impl Handler for Tester {
    async fn handle(&self, incoming: Arc<Incoming>) -> Result<Vec<Outgoing>, HandlerError> {
        let build: BuildData = incoming.cdevent.custom_data_as().map_err(|e| {
            HandlerError::permanent(
                "invalid_input",
                format!("artifact.published without build data in customData: {e}"),
            )
        })?;
        let mut data = Self::data(&incoming, &build);
        let mut announced = kit_events::InFlight::default();
        announced
            .send(&self.jetstream, &Self::started(&incoming, &data))
            .await?;
        if let (Some(attester), Some(image)) = (&self.attester, &data.image) {
            tokio::spawn(attester.prepare(&image.repository));
        }
        let mut passed = PassedCases::default();
        let verdict = self.run(&incoming, &mut data, &mut passed).await?;
        announced.confirmed().await?;
        data.outcome = Some(verdict.outcome);
        data.reason = verdict.reason;
        // The verdict is attested before it is announced: `testsuiterun.finished` means the
        // evidence is in the registry. Without an image there is nothing to attach it to.
        if let (Some(attester), Some(image)) = (&self.attester, &data.image) {
            attester
                .attest(image, &data, &passed)
                .await
                .map_err(evidence::attach_failed)?;
        }
        tracing::info!(app = %data.app, commit = %data.commit, outcome = ?data.outcome, reason = ?data.reason, "tests finished");
        Ok(vec![Self::finished(&incoming, &data)])
    }

    fn on_give_up(&self, incoming: &Incoming, reason: &str) -> Vec<Outgoing> {
        let Ok(build) = incoming.cdevent.custom_data_as::<BuildData>() else {
            return Vec::new();
        };
        let mut data = Self::data(incoming, &build);
        data.outcome = Some(Outcome::Error);
        data.reason = Some(format!("the tests could not run: {reason}"));
        vec![Self::finished(incoming, &data)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_schemas::pipeline::Step;

    fn step(name: &str, independent: bool) -> TestStep {
        TestStep {
            step: Step {
                name: name.into(),
                run: "true".into(),
                env: BTreeMap::new(),
                timeout: Duration::from_secs(1),
                workdir: None,
                network: false,
                limits: baton_schemas::pipeline::StepResources::default(),
                secrets: Vec::new(),
                image: None,
            },
            junit: None,
            independent,
        }
    }

    #[test]
    fn consecutive_independent_steps_run_together() {
        let steps = vec![
            step("a", false),
            step("b", true),
            step("c", true),
            step("d", false),
            step("e", true),
        ];
        let names: Vec<Vec<&str>> = groups(&steps)
            .iter()
            .map(|g| g.iter().map(|t| t.step.name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a"], vec!["b", "c"], vec!["d"], vec!["e"]]);
    }

    #[test]
    fn reports_stay_inside_the_workspace() {
        let ws = tempfile::tempdir().unwrap();
        let ws = ws.path();
        assert!(inside(ws, "target/junit.xml").is_ok());
        assert!(inside(ws, "../junit.xml").is_err());
        assert!(inside(ws, "/etc/junit.xml").is_err());
        // Through symlinks a step left: to a file of the host, or a directory outside.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.xml"), "<testsuite/>").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.xml"), ws.join("report.xml")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.join("reports")).unwrap();
        for report in ["report.xml", "reports/secret.xml"] {
            let refused = inside(ws, report).unwrap_err();
            assert!(refused.contains("leads outside the repository"), "{report}: {refused}");
        }
        // A symlink that stays inside is followed.
        std::fs::write(ws.join("real.xml"), "<testsuite/>").unwrap();
        std::os::unix::fs::symlink("real.xml", ws.join("latest.xml")).unwrap();
        assert_eq!(
            inside(ws, "latest.xml").unwrap(),
            std::fs::canonicalize(ws.join("real.xml")).unwrap()
        );
    }
}
