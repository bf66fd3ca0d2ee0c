//! `just bench web`: baton-web over a large history. 200 apps × 3 environments and 100,000
//! events in the stream — pushes, builds, artifacts, tests, releases, promotions, rollouts,
//! approvals and the commands behind them, holds, failures, quarantines and rollbacks — each a
//! valid CDEvent (checked against its schema) shaped as the services emit it, published in
//! stream order into a real nats-server with the topology provisioned as the suites do; plus the
//! promoter's state for the 600 cells (what each runs, approval requests, scheduled promotions,
//! quarantined releases, `environments.yaml`) written with the promoter's own types.
//!
//! Then, several times, the release binary `baton-web` is started as its own process against it
//! and measured: the catch-up (from the spawn until `/readyz` answers 200), the matrix `GET /`
//! and release pages `GET /releases/<id>` (varied ids) timed from the request to the last byte
//! of the response over loopback with a keep-alive client, one request at a time, and the
//! process's peak RSS (`VmHWM` in `/proc/<pid>/status`) once it has served them.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use baton_kit::{codec, events, fabric};
use baton_promoter::state::{
    self as promoter_state, BadRelease, Closure, Current, PendingApproval, PolicyRecord, Scheduled, Trigger,
};
use baton_schemas::commands::CommandRequest;
use baton_schemas::extensions::{
    CommandAcceptedContent, DeploymentFailedContent, DeploymentStartedContent, PromotionHeldContent,
    ReleaseCreatedContent, ReleaseQuarantinedContent,
};
use baton_schemas::payloads::{
    BuildData, CommitInfo, FailedTestCase, ImageInfo, LogLocation, Outcome, Person, PushData, RepositoryInfo,
    SignedData, StepReport, TestCounts, TestData,
};
use baton_schemas::release::{
    ApprovalData, ApprovalKind, ApprovalVote, ChangeEntry, DeploymentData, Pin, PodReport, PromotionAction,
    PromotionData, ReleaseData, user_urn,
};
use baton_schemas::subjects::{event_subject, sanitize_token};
use baton_schemas::{CdEvent, EventType};
use baton_tests::process::{LogFile, Process};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const APPS: usize = 200;
/// The environments, in promotion order.
const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "production"];
const EVENTS: usize = 100_000;
/// Time between two releases of one app (the apps are spread over it).
const RELEASE_EVERY: TimeDelta = TimeDelta::hours(30);
/// How many times baton-web is started and measured.
const STARTS: usize = 3;
/// Requests per page and start, after [`WARM_UP`] uncounted ones.
const REQUESTS: usize = 200;
const WARM_UP: usize = 20;
const REGISTRY: &str = "registry.example.com";
const CONFIG_REPO: &str = "https://git.example.com/platform/deploy-config.git";
/// Baton identities: who pushes, who approves (`sre`), who operates.
const PEOPLE: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
const APPROVERS: [&str; 3] = ["bob", "carol", "dave"];
const MESSAGES: [&str; 8] = [
    "Add retry with backoff to the payment client",
    "Fix off-by-one in pagination of the orders list",
    "Bump serde to 1.0.219",
    "Cache the catalogue per tenant",
    "Log the request id on every error",
    "Remove the legacy v1 checkout endpoint",
    "Tune the connection pool for the read replicas",
    "Translate the error messages <en, de>",
];

const POLICY: &str = "\
environments:
  - name: dev
    namespace: apps-dev
    policy: auto
  - name: staging
    namespace: apps-staging
    policy: auto
    soak: 30m
  - name: production
    namespace: apps-production
    policy: manual
    soak: 1h
    approvals:
      required: 1
      groups: [sre]
      expires_after: 24h
    freeze:
      - name: weekend
        cron: \"0 18 * * FRI\"
        duration: 62h
        timezone: Europe/Berlin
groups:
  sre: [bob, carol, dave]
";

fn hex_of(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

fn uuid_of(seed: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, seed.as_bytes()).to_string()
}

fn person(name: &str) -> Person {
    Person {
        name: Some(format!("{}{} Example", name[..1].to_uppercase(), &name[1..])),
        email: Some(format!("{name}@example.com")),
        username: Some(name.to_owned()),
    }
}

/// What an environment of an app runs.
#[derive(Clone)]
struct Running {
    release: ReleaseData,
    promotion: String,
    config_commit: String,
    action: PromotionAction,
    since: DateTime<Utc>,
    last_healthy: Option<(String, String)>,
}

/// The last approval request of an app's production.
struct Request {
    record: PendingApproval,
    created_id: String,
}

/// One app's history so far.
struct AppHistory {
    name: String,
    token: String,
    head: String,
    releases: usize,
    last_release: Option<String>,
    running: [Option<Running>; 3],
    approval: Option<Request>,
    scheduled: Option<Scheduled>,
}

/// The history: the events in stream order, the promoter's state at its end, and the releases.
struct History {
    events: Vec<(String, CdEvent)>,
    apps: Vec<AppHistory>,
    bad: Vec<(ReleaseData, BadRelease)>,
    releases: Vec<String>,
}

/// Writes the history of [`APPS`] apps, release after release, until [`EVENTS`] events.
struct Generator {
    rng: StdRng,
    now: DateTime<Utc>,
    events: Vec<(String, CdEvent)>,
    bad: Vec<(ReleaseData, BadRelease)>,
    releases: Vec<String>,
}

/// A release on its way: its data so far, its clock, the cause of its next event.
struct Flow {
    app: String,
    chain: String,
    at: DateTime<Utc>,
    cause: String,
}

impl Generator {
    /// Records event `ty` of `flow`'s release, `label` naming it uniquely within the release
    /// (its id derives from both), caused by the release's previous event.
    fn emit(
        &mut self,
        flow: &mut Flow,
        ty: EventType,
        label: &str,
        subject: &str,
        content: Value,
        data: &impl Serialize,
    ) -> Result<()> {
        let id = uuid_of(&format!("{}:{label}", flow.chain));
        let mut event =
            CdEvent::new(ty, &id, format!("/baton/{}", ty.emitted_by()), subject, content)?.with_chain_id(&flow.chain);
        let data = serde_json::to_value(data)?;
        if !data.is_null() {
            event = event.with_custom_data(data)?;
        }
        if !flow.cause.is_empty() {
            event = event.caused_by(&flow.cause);
        }
        event.context.timestamp = flow.at;
        baton_schemas::validate_event(ty, &serde_json::to_value(&event)?)
            .with_context(|| format!("a generated {ty} is not valid"))?;
        self.events.push((flow.app.clone(), event));
        flow.cause = id;
        Ok(())
    }

    fn later(&mut self, flow: &mut Flow, min_seconds: i64, max_seconds: i64) {
        flow.at += TimeDelta::seconds(self.rng.random_range(min_seconds..=max_seconds));
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// One release of `app`, from its push to wherever it stops.
    #[allow(clippy::too_many_lines)]
    fn release(&mut self, app: &mut AppHistory, start: DateTime<Utc>) -> Result<()> {
        let name = app.name.clone();
        let n = app.releases;
        app.releases += 1;
        let pusher = PEOPLE[self.rng.random_range(0..PEOPLE.len())];
        let clone_url = format!("https://git.example.com/{name}.git");
        let html_url = format!("https://git.example.com/{name}");
        let commits: Vec<CommitInfo> = (0..self.rng.random_range(1..=3))
            .map(|i| {
                let author = PEOPLE[self.rng.random_range(0..PEOPLE.len())];
                CommitInfo {
                    id: hex_of(&format!("{name}:{n}:{i}"))[..40].to_owned(),
                    message: format!(
                        "{}\n\nPart of #{}.",
                        MESSAGES[self.rng.random_range(0..MESSAGES.len())],
                        n * 3 + i
                    ),
                    timestamp: Some(
                        (start - TimeDelta::minutes(self.rng.random_range(5..600)))
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ),
                    author: person(author),
                    committer: None,
                    url: Some(format!(
                        "{html_url}/commit/{}",
                        hex_of(&format!("{name}:{n}:{i}"))[..40].to_owned()
                    )),
                }
            })
            .collect();
        let head = commits.last().expect("one commit at least").clone();
        let push_id = uuid_of(&format!("bench:push:{name}:{n}"));
        let chain = uuid_of(&format!("baton:release:{push_id}"));
        let mut flow = Flow {
            app: name.clone(),
            chain: chain.clone(),
            at: start,
            cause: String::new(),
        };
        let push = PushData {
            app: name.clone(),
            provider: "github".into(),
            delivery_id: uuid_of(&format!("bench:delivery:{name}:{n}")),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            tag: None,
            before: app.head.clone(),
            after: head.id.clone(),
            repository: RepositoryInfo {
                name: name.rsplit('/').next().unwrap_or(&name).to_owned(),
                full_name: name.clone(),
                clone_url: clone_url.clone(),
                html_url: Some(html_url.clone()),
            },
            head_commit: head.clone(),
            commits: commits.clone(),
            pusher: Some(person(pusher)),
        };
        app.head = head.id.clone();
        let mut event = CdEvent::new(
            EventType::ChangeMerged,
            &push_id,
            "/baton/listener",
            &head.id,
            json!({"repository": {"id": name, "source": html_url}}),
        )?
        .with_subject_source(&html_url)
        .with_chain_id(&chain)
        .with_custom_data(&push)?;
        event.context.timestamp = flow.at;
        baton_schemas::validate_event(EventType::ChangeMerged, &serde_json::to_value(&event)?)?;
        self.events.push((name.clone(), event));
        flow.cause = push_id;

        // The build.
        let run = format!("build-{}", uuid_of(&format!("bench:build:{chain}")));
        let step = |step: &str, status: &str, ms: u64, lines: u64| StepReport {
            name: step.into(),
            status: status.into(),
            exit_code: Some(i32::from(status != "succeeded")),
            duration_ms: ms,
            log: Some(LogLocation {
                bucket: "baton-logs".into(),
                object: format!("{run}/{step}.log"),
                bytes: lines * 64,
                lines,
            }),
            tail: if status == "succeeded" {
                Vec::new()
            } else {
                vec![
                    "error[E0308]: mismatched types".into(),
                    "error: could not compile".into(),
                ]
            },
        };
        let mut build = BuildData {
            app: name.clone(),
            commit: head.id.clone(),
            git_ref: Some("refs/heads/main".into()),
            repository: clone_url.clone(),
            run: run.clone(),
            outcome: None,
            reason: None,
            steps: Vec::new(),
            image: None,
            pushed_by: Some(person(pusher)),
        };
        let build_subject = format!("build-{}", uuid_of(&format!("bench:build-id:{chain}")));
        self.later(&mut flow, 1, 2);
        self.emit(
            &mut flow,
            EventType::BuildQueued,
            "queued",
            &build_subject,
            json!({}),
            &build,
        )?;
        self.later(&mut flow, 1, 5);
        self.emit(
            &mut flow,
            EventType::BuildStarted,
            "started",
            &build_subject,
            json!({}),
            &build,
        )?;
        self.later(&mut flow, 40, 400);
        if self.chance(0.08) {
            build.outcome = Some(Outcome::Failure);
            build.reason = Some("step `compile` exited with 101".into());
            build.steps = vec![
                step("lint", "succeeded", 4_000, 12),
                step("compile", "failed", 38_000, 840),
            ];
            self.emit(
                &mut flow,
                EventType::BuildFinished,
                "finished",
                &build_subject,
                json!({}),
                &build,
            )?;
            return Ok(());
        }
        let token = sanitize_token(&name);
        let repository = format!("baton/{token}");
        let digest = format!("sha256:{}", hex_of(&chain));
        let image = ImageInfo {
            registry: REGISTRY.into(),
            repository: repository.clone(),
            tag: head.id.clone(),
            digest: digest.clone(),
            reference: format!("{REGISTRY}/{repository}@{digest}"),
            purl: baton_builder::image::purl(REGISTRY, &repository, &digest, &head.id),
            uploaded_bytes: self.rng.random_range(2_000..40_000_000),
        };
        build.outcome = Some(Outcome::Success);
        build.steps = vec![
            step("lint", "succeeded", 4_000, 12),
            step("compile", "succeeded", 61_000, 1_250),
        ];
        build.image = Some(image.clone());
        self.emit(
            &mut flow,
            EventType::BuildFinished,
            "finished",
            &build_subject,
            json!({"artifactId": image.purl}),
            &build,
        )?;
        self.later(&mut flow, 1, 3);
        self.emit(
            &mut flow,
            EventType::ArtifactPackaged,
            "packaged",
            &image.purl,
            json!({"change": {"id": head.id, "source": clone_url}}),
            &build,
        )?;
        self.later(&mut flow, 1, 8);
        self.emit(
            &mut flow,
            EventType::ArtifactPublished,
            "published",
            &image.purl,
            json!({}),
            &build,
        )?;
        let signed = SignedData {
            app: name.clone(),
            commit: head.id.clone(),
            repository: clone_url.clone(),
            run: run.clone(),
            image: image.clone(),
            key_id: "builder-2026".into(),
            builder_id: "https://baton.dev/builder/v1".into(),
            signature_manifest: format!("{REGISTRY}/{repository}:sha256-{}.sig", &digest[7..]),
            attestation_manifest: format!("{REGISTRY}/{repository}:sha256-{}.att", &digest[7..]),
        };
        self.later(&mut flow, 0, 1);
        self.emit(
            &mut flow,
            EventType::ArtifactSigned,
            "signed",
            &image.purl,
            json!({"signature": "MEUCIQDm3bsXzWv0p6F8b0eW4cmc8o1mK5dRvZHk1yoTtPq1nwIgE2PpsmK6zH3v6vBB9dYw3ZcZx1OqDLGFkP0gQ5wiuV0="}),
            &signed,
        )?;

        // The tests.
        let suite = format!("{name}@{}", head.id);
        let mut test = TestData {
            app: name.clone(),
            commit: head.id.clone(),
            repository: clone_url.clone(),
            image: Some(image.clone()),
            run: format!("test-{}", uuid_of(&format!("bench:test:{chain}"))),
            outcome: None,
            reason: None,
            no_tests_declared: false,
            counts: TestCounts::default(),
            failed_cases: Vec::new(),
            steps: Vec::new(),
            pushed_by: Some(person(pusher)),
        };
        let environment = json!({"id": "baton-tester", "source": "/baton/tester"});
        self.later(&mut flow, 1, 4);
        self.emit(
            &mut flow,
            EventType::TestSuiteRunStarted,
            "test-started",
            &suite,
            json!({"environment": environment, "testSuite": {"id": suite, "name": name}, "trigger": {"type": "event"}}),
            &test,
        )?;
        self.later(&mut flow, 20, 600);
        let passed = !self.chance(0.06);
        test.counts = TestCounts {
            suites: 3,
            tests: 240,
            failures: u64::from(!passed),
            errors: 0,
            skipped: 4,
            failed_cases_omitted: 0,
        };
        test.steps = vec![StepReport {
            name: "unit".into(),
            status: if passed { "succeeded" } else { "failed" }.into(),
            exit_code: Some(i32::from(!passed)),
            duration_ms: 45_000,
            log: Some(LogLocation {
                bucket: "baton-logs".into(),
                object: format!("{}/unit.log", test.run),
                bytes: 96_000,
                lines: 1_500,
            }),
            tail: Vec::new(),
        }];
        let mut content = json!({"environment": environment, "testSuite": {"id": suite, "name": name}});
        if passed {
            test.outcome = Some(Outcome::Success);
            content["outcome"] = json!("success");
        } else {
            test.outcome = Some(Outcome::Failure);
            test.reason = Some("1 of 240 tests failed".into());
            test.failed_cases = vec![FailedTestCase {
                name: "orders::pagination::last_page_is_full".into(),
                class: Some("orders::pagination".into()),
                kind: "failure".into(),
                message: Some("assertion `left == right` failed: left: 19, right: 20".into()),
                output: None,
                duration_ms: Some(3),
            }];
            content["outcome"] = json!("failure");
            content["reason"] = json!("1 of 240 tests failed");
        }
        self.emit(
            &mut flow,
            EventType::TestSuiteRunFinished,
            "test-finished",
            &suite,
            content,
            &test,
        )?;
        if !passed {
            return Ok(());
        }

        // The release.
        self.later(&mut flow, 1, 3);
        let release = ReleaseData {
            release: chain.clone(),
            app: name.clone(),
            commit: head.id.clone(),
            repository: clone_url.clone(),
            image: image.clone(),
            author: Some(head.author.clone()),
            pushed_by: Some(person(pusher)),
            tested: true,
            test_run: Some(test.run.clone()),
            previous_release: app.last_release.clone(),
            changelog: commits
                .iter()
                .map(|c| ChangeEntry {
                    commit: c.id.clone(),
                    summary: c.message.lines().next().unwrap_or_default().to_owned(),
                    author: c.author.clone(),
                    committer: None,
                })
                .collect(),
            created_at: flow.at,
        };
        app.last_release = Some(chain.clone());
        self.releases.push(chain.clone());
        self.emit(
            &mut flow,
            EventType::ReleaseCreated,
            "created",
            &chain,
            serde_json::to_value(ReleaseCreatedContent {
                app: name.clone(),
                commit: head.id.clone(),
                artifact_id: image.purl.clone(),
            })?,
            &release,
        )?;

        for (env_index, env) in ENVIRONMENTS.iter().enumerate() {
            self.later(&mut flow, 1, 5);
            if env_index > 0 && self.chance(0.08) {
                // Not soaked long enough in the environment before: held, then promoted by the timer.
                let wait = TimeDelta::minutes(self.rng.random_range(5..30));
                let promotion = uuid_of(&format!("{chain}:{env}:promotion"));
                let reason = format!(
                    "soaking: healthy in {} for less than the soak",
                    ENVIRONMENTS[env_index - 1]
                );
                let retry = flow.at + wait;
                self.held(&mut flow, env, &reason, Some(retry))?;
                if self.chance(0.1) {
                    // Still waiting when the history ends (until a newer release replaces it).
                    app.scheduled = Some(Scheduled {
                        release: chain.clone(),
                        environment: (*env).to_owned(),
                        promotion,
                        not_before: flow.at + wait,
                        trigger: Trigger::Auto,
                        cause: flow.cause.clone(),
                        waiting_for: "soak".into(),
                        trace: None,
                    });
                    return Ok(());
                }
                flow.at += wait;
            }
            if *env == "production" {
                if self.chance(0.04) {
                    let until = flow.at + TimeDelta::hours(2);
                    self.held(
                        &mut flow,
                        env,
                        "frozen: production is in its freeze window `weekend`",
                        Some(until),
                    )?;
                    flow.at = until;
                }
                if !self.approve(app, &release, &mut flow)? {
                    return Ok(());
                }
            }
            if !self.roll_out(app, env_index, &release, &mut flow)? {
                return Ok(());
            }
            self.later(&mut flow, 60, 1_800);
        }
        app.scheduled = None;
        Ok(())
    }

    fn held(&mut self, flow: &mut Flow, env: &str, reason: &str, retry: Option<DateTime<Utc>>) -> Result<()> {
        let chain = flow.chain.clone();
        self.emit(
            flow,
            EventType::PromotionHeld,
            &format!("{env}:held:{reason}"),
            &chain,
            serde_json::to_value(PromotionHeldContent {
                app: flow.app.clone(),
                environment: env.to_owned(),
                reason: reason.to_owned(),
                retry_at: retry.map(|t| t.to_rfc3339()),
            })?,
            &Value::Null,
        )
    }

    /// The production approval of `release`: `true` when it was approved.
    fn approve(&mut self, app: &mut AppHistory, release: &ReleaseData, flow: &mut Flow) -> Result<bool> {
        let name = app.name.clone();
        let chain = flow.chain.clone();
        // A request still open for an older release is superseded.
        if let Some(old) = app.approval.as_mut().filter(|r| r.record.closed.is_none()) {
            let mut data = old.record.data.clone();
            data.reason = Some(format!("superseded by release {chain}"));
            let old_chain = data.release.release.clone();
            old.record.closed = Some(Closure {
                status: "cancelled".into(),
                reason: format!("superseded by release {chain}"),
                at: flow.at,
            });
            let cause = old.created_id.clone();
            let mut old_flow = Flow {
                app: name.clone(),
                chain: old_chain,
                at: flow.at,
                cause,
            };
            let content = data.answer_content("baton-promoter", "rejected", Some("cancelled"));
            self.emit(
                &mut old_flow,
                EventType::ApprovalClosed,
                "approval-closed",
                &data.approval,
                content,
                &data,
            )?;
        }
        let approval = uuid_of(&format!("{chain}:approval"));
        let production = app.running[2].as_ref();
        let mut data = ApprovalData {
            approval: approval.clone(),
            kind: ApprovalKind::Promotion,
            app: name.clone(),
            environment: "production".into(),
            release: release.clone(),
            current_release: production.map(|r| r.release.release.clone()),
            current_image: production.map(|r| r.release.image.reference.clone()),
            required: 1,
            approvers: APPROVERS.iter().map(|a| (*a).to_owned()).collect(),
            votes: Vec::new(),
            expires_at: flow.at + TimeDelta::hours(24),
            requested_by: "baton-promoter".into(),
            reason: None,
        };
        self.emit(
            flow,
            EventType::ApprovalCreated,
            "approval-created",
            &approval,
            json!({
                "approvalDetailsUrl": format!("urn:baton:approval:{approval}"),
                "resourceTargetUrl": format!("urn:baton:release:{chain}:production"),
                "requestor": user_urn("baton-promoter"),
            }),
            &data,
        )?;
        let created_id = flow.cause.clone();
        let promotion = uuid_of(&format!("{chain}:production:promotion"));
        app.approval = Some(Request {
            record: PendingApproval {
                data: data.clone(),
                promotion: promotion.clone(),
                cause: created_id.clone(),
                closed: None,
                promotion_pending: false,
                trace: None,
            },
            created_id: created_id.clone(),
        });
        if self.chance(0.12) {
            // Nobody has answered yet.
            return Ok(false);
        }
        self.later(flow, 300, 4 * 3600);
        let approve = !self.chance(0.05);
        let voter = APPROVERS[self.rng.random_range(0..APPROVERS.len())];
        let verb = if approve { "approve" } else { "decline" };
        let request_id = uuid_of(&format!("{approval}:{verb}"));
        let request = CommandRequest {
            actor: voter.into(),
            issued_at: Some(flow.at),
            nonce: Some(uuid_of(&format!("{approval}:nonce"))),
            chat_id: Some("C0123456".into()),
            app: Some(name.clone()),
            release: Some(chain.clone()),
            environment: Some("production".into()),
            ..CommandRequest::default()
        };
        self.emit(
            flow,
            EventType::CommandAccepted,
            &format!("{verb}-accepted"),
            &request_id,
            serde_json::to_value(CommandAcceptedContent {
                verb: verb.into(),
                person: voter.into(),
                key_fingerprint: format!("SHA256:{}", &hex_of(voter)[..43]),
                channel: "slack".into(),
            })?,
            &request,
        )?;
        let decision = if approve { "approved" } else { "rejected" };
        data.votes.push(ApprovalVote {
            actor: voter.into(),
            decision: decision.into(),
            at: flow.at,
            comment: None,
        });
        self.later(flow, 0, 1);
        flow.cause = created_id.clone();
        let content = data.answer_content(voter, decision, None);
        self.emit(
            flow,
            EventType::ApprovalUpdated,
            &format!("approval-{voter}"),
            &approval,
            content,
            &data,
        )?;
        data.reason = Some(if approve { "approved by 1 of 1" } else { "declined" }.to_owned());
        flow.cause = created_id;
        let content = data.answer_content(voter, decision, Some(decision));
        self.emit(
            flow,
            EventType::ApprovalClosed,
            "approval-closed",
            &approval,
            content,
            &data,
        )?;
        if let Some(request) = app.approval.as_mut() {
            request.record.data = data;
            request.record.closed = Some(Closure {
                status: decision.into(),
                reason: if approve { "approved" } else { "declined" }.into(),
                at: flow.at,
            });
        }
        Ok(approve)
    }

    /// The promotion of `release` into environment `env_index` and its rollout: `true` when it
    /// runs healthy there.
    fn roll_out(
        &mut self,
        app: &mut AppHistory,
        env_index: usize,
        release: &ReleaseData,
        flow: &mut Flow,
    ) -> Result<bool> {
        let env = ENVIRONMENTS[env_index];
        let name = app.name.clone();
        let chain = flow.chain.clone();
        let promotion = uuid_of(&format!("{chain}:{env}:promotion"));
        let config_commit = hex_of(&format!("config:{promotion}"))[..40].to_owned();
        let previous = app.running[env_index].clone();
        let data = PromotionData {
            promotion: promotion.clone(),
            action: PromotionAction::Promote,
            app: name.clone(),
            environment: env.into(),
            namespace: format!("apps-{env}"),
            release: release.clone(),
            previous_release: previous.as_ref().map(|p| p.release.release.clone()),
            config_repository: CONFIG_REPO.into(),
            config_commit: config_commit.clone(),
            manifests_path: format!("{env}/{}", app.token),
            actor: "baton-promoter".into(),
            reason: None,
            pinned: false,
            break_glass: false,
            evidence: None,
        };
        self.emit(
            flow,
            EventType::EnvironmentModified,
            &format!("{env}:modified"),
            env,
            json!({"name": env}),
            &data,
        )?;
        let deployment = |reason: Option<String>, wait: Option<u64>| DeploymentData {
            promotion: promotion.clone(),
            action: PromotionAction::Promote,
            app: name.clone(),
            environment: env.into(),
            namespace: format!("apps-{env}"),
            release: chain.clone(),
            config_commit: config_commit.clone(),
            image: release.image.reference.clone(),
            reason,
            applied: vec![
                format!("apps/v1/Deployment/apps-{env}/{}", app.token),
                format!("v1/Service/apps-{env}/{}", app.token),
                format!("v1/ConfigMap/apps-{env}/{}-config", app.token),
            ],
            pruned: Vec::new(),
            failing_pods: Vec::new(),
            rollout_wait_ms: wait,
        };
        self.later(flow, 1, 3);
        self.emit(
            flow,
            EventType::DeploymentStarted,
            &format!("{env}:deployment-started"),
            &chain,
            serde_json::to_value(DeploymentStartedContent {
                environment: env.into(),
                app: name.clone(),
                artifact_id: release.image.purl.clone(),
            })?,
            &deployment(None, None),
        )?;
        self.later(flow, 15, 240);
        if self.chance(0.03) {
            let reason = format!(
                "pod {}-7d9f8c-x2x1q: CrashLoopBackOff (back-off restarting failed container)",
                app.token
            );
            let mut failed = deployment(Some(reason.clone()), None);
            failed.failing_pods = vec![PodReport {
                name: format!("{}-7d9f8c-x2x1q", app.token),
                phase: "Running".into(),
                ready: false,
                reason: Some("CrashLoopBackOff".into()),
                message: Some("back-off 40s restarting failed container".into()),
                restarts: 4,
            }];
            self.emit(
                flow,
                EventType::DeploymentFailed,
                &format!("{env}:deployment-failed"),
                &chain,
                serde_json::to_value(DeploymentFailedContent {
                    environment: env.into(),
                    app: name.clone(),
                    artifact_id: release.image.purl.clone(),
                    reason: reason.clone(),
                })?,
                &failed,
            )?;
            self.later(flow, 0, 2);
            let why = format!("its rollout failed in {env}");
            self.emit(
                flow,
                EventType::ReleaseQuarantined,
                "quarantined",
                &chain,
                serde_json::to_value(ReleaseQuarantinedContent {
                    app: name.clone(),
                    actor: "baton-promoter".into(),
                    reason: why.clone(),
                })?,
                &Value::Null,
            )?;
            self.bad.push((
                release.clone(),
                BadRelease {
                    actor: "baton-promoter".into(),
                    reason: why,
                    at: flow.at,
                    release: chain.clone(),
                },
            ));
            if let Some(previous) = previous {
                self.roll_back(app, env_index, &previous, flow)?;
            }
            return Ok(false);
        }
        let ty = if previous.is_some() {
            EventType::ServiceUpgraded
        } else {
            EventType::ServiceDeployed
        };
        let wait = self.rng.random_range(3_000..90_000);
        self.emit(
            flow,
            ty,
            &format!("{env}:healthy"),
            &chain,
            json!({"environment": {"id": env}, "artifactId": release.image.purl}),
            &deployment(None, Some(wait)),
        )?;
        app.running[env_index] = Some(Running {
            release: release.clone(),
            promotion,
            config_commit,
            action: PromotionAction::Promote,
            since: flow.at,
            last_healthy: previous.map(|p| (p.release.release, p.config_commit)),
        });
        Ok(true)
    }

    /// The promoter rolls environment `env_index` back to `previous` after a failed rollout.
    fn roll_back(&mut self, app: &mut AppHistory, env_index: usize, previous: &Running, flow: &Flow) -> Result<()> {
        let env = ENVIRONMENTS[env_index];
        let name = app.name.clone();
        let release = &previous.release;
        let promotion = uuid_of(&format!("{}:{env}:rollback:{}", flow.chain, release.release));
        let config_commit = hex_of(&format!("config:{promotion}"))[..40].to_owned();
        let mut back = Flow {
            app: name.clone(),
            chain: release.release.clone(),
            at: flow.at + TimeDelta::seconds(2),
            cause: flow.cause.clone(),
        };
        let data = PromotionData {
            promotion: promotion.clone(),
            action: PromotionAction::Rollback,
            app: name.clone(),
            environment: env.into(),
            namespace: format!("apps-{env}"),
            release: release.clone(),
            previous_release: Some(flow.chain.clone()),
            config_repository: CONFIG_REPO.into(),
            config_commit: config_commit.clone(),
            manifests_path: format!("{env}/{}", app.token),
            actor: "baton-promoter".into(),
            reason: Some(format!("release {} failed its rollout", flow.chain)),
            pinned: false,
            break_glass: false,
            evidence: None,
        };
        self.emit(
            &mut back,
            EventType::EnvironmentModified,
            &format!("{env}:rollback:{promotion}"),
            env,
            json!({"name": env}),
            &data,
        )?;
        self.later(&mut back, 10, 90);
        let deployed = DeploymentData {
            promotion: promotion.clone(),
            action: PromotionAction::Rollback,
            app: name.clone(),
            environment: env.into(),
            namespace: format!("apps-{env}"),
            release: release.release.clone(),
            config_commit: config_commit.clone(),
            image: release.image.reference.clone(),
            reason: None,
            applied: vec![format!("apps/v1/Deployment/apps-{env}/{}", app.token)],
            pruned: Vec::new(),
            failing_pods: Vec::new(),
            rollout_wait_ms: Some(12_000),
        };
        self.emit(
            &mut back,
            EventType::ServiceRolledBack,
            &format!("{env}:rolled-back:{promotion}"),
            &release.release,
            json!({"environment": {"id": env}, "artifactId": release.image.purl}),
            &deployed,
        )?;
        app.running[env_index] = Some(Running {
            release: release.clone(),
            promotion,
            config_commit,
            action: PromotionAction::Rollback,
            since: back.at,
            last_healthy: None,
        });
        Ok(())
    }

    /// The whole history: releases app after app, round after round, until [`EVENTS`].
    fn history(mut self) -> Result<History> {
        let mut apps: Vec<AppHistory> = (0..APPS)
            .map(|a| {
                let name = format!("team-{:02}/service-{a:03}", a % 17);
                AppHistory {
                    token: sanitize_token(&name),
                    name,
                    head: "0".repeat(40),
                    releases: 0,
                    last_release: None,
                    running: [None, None, None],
                    approval: None,
                    scheduled: None,
                }
            })
            .collect();
        // Enough rounds to reach EVENTS with about 20 events per release, ending before now.
        let rounds = i32::try_from(EVENTS / APPS / 18 + 2)?;
        let origin = self.now - RELEASE_EVERY * rounds - TimeDelta::days(2);
        let mut round = 0;
        'rounds: loop {
            for (index, app) in apps.iter_mut().enumerate() {
                if self.events.len() >= EVENTS {
                    break 'rounds;
                }
                let offset = RELEASE_EVERY * round + RELEASE_EVERY / i32::try_from(APPS)? * i32::try_from(index)?;
                let jitter = TimeDelta::minutes(self.rng.random_range(0..120));
                self.release(app, origin + offset + jitter)?;
            }
            round += 1;
            ensure!(round < rounds * 2, "the history does not reach {EVENTS} events");
        }
        let mut events = self.events;
        // Stream order is time order; the stable sort keeps a release's simultaneous events in
        // the order they were made.
        events.sort_by_key(|(_, event)| event.context.timestamp);
        ensure!(
            events.last().is_some_and(|(_, e)| e.context.timestamp < self.now),
            "the history runs into the future; fewer rounds"
        );
        Ok(History {
            events,
            apps,
            bad: self.bad,
            releases: self.releases,
        })
    }
}

/// Publishes `events` in order, many in flight (each send before the next keeps the order).
async fn publish(js: &async_nats::jetstream::Context, history: &[(String, CdEvent)]) -> Result<Duration> {
    let encoded: Vec<_> = history
        .iter()
        .map(|(app, event)| {
            let ty = event.event_type().expect("a catalog type");
            let (headers, payload) = codec::encode_binary(&events::to_cloudevent(event));
            (event_subject(app, ty), headers, payload, event.context.id.clone())
        })
        .collect();
    let started = Instant::now();
    let mut in_flight = VecDeque::new();
    for (subject, headers, payload, id) in encoded {
        in_flight.push_back(fabric::send_raw(js, &subject, headers, payload, &id).await?);
        if in_flight.len() >= 2048 {
            let published = in_flight.pop_front().expect("not empty").acked().await?;
            ensure!(!published.duplicate, "an event id was used twice");
        }
    }
    for sent in in_flight {
        ensure!(!sent.acked().await?.duplicate, "an event id was used twice");
    }
    Ok(started.elapsed())
}

/// Writes the promoter's keys as the promoter does.
async fn write_state(state: &async_nats::jetstream::kv::Store, history: &History) -> Result<usize> {
    let mut puts: Vec<(String, Vec<u8>)> = vec![(
        promoter_state::POLICY_KEY.to_owned(),
        serde_json::to_vec(&PolicyRecord {
            commit: hex_of("policy")[..40].to_owned(),
            text: POLICY.to_owned(),
        })?,
    )];
    let mut rng = StdRng::seed_from_u64(7);
    for app in &history.apps {
        for (env, running) in ENVIRONMENTS.iter().zip(&app.running) {
            let Some(running) = running else { continue };
            let pinned = rng.random_bool(0.03).then(|| Pin {
                by: "alice".into(),
                reason: "holding while the schema migration runs".into(),
                at: running.since + TimeDelta::minutes(10),
            });
            let current = Current {
                release: running.release.release.clone(),
                promotion: running.promotion.clone(),
                config_commit: running.config_commit.clone(),
                action: running.action,
                healthy_since: Some(running.since),
                last_healthy: running
                    .last_healthy
                    .as_ref()
                    .map(|(release, commit)| promoter_state::HealthyRelease {
                        release: release.clone(),
                        config_commit: commit.clone(),
                    }),
                pinned,
            };
            puts.push((
                promoter_state::current_key(&app.name, env),
                serde_json::to_vec(&current)?,
            ));
        }
        if let Some(request) = &app.approval {
            puts.push((
                promoter_state::approval_key(&app.name, "production"),
                serde_json::to_vec(&request.record)?,
            ));
        }
        if let Some(scheduled) = &app.scheduled {
            puts.push((
                promoter_state::scheduled_key(&app.name, &scheduled.environment),
                serde_json::to_vec(scheduled)?,
            ));
        }
    }
    for (release, bad) in &history.bad {
        for key in promoter_state::bad_keys(release) {
            puts.push((key, serde_json::to_vec(bad)?));
        }
    }
    let count = puts.len();
    let mut writes = futures::stream::iter(puts)
        .map(|(key, value)| async move { state.put(key, value.into()).await })
        .buffer_unordered(64);
    while let Some(written) = writes.next().await {
        written?;
    }
    Ok(count)
}

/// `baton-web` built in the release profile into the target directory this bench runs from.
fn web_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // <target>/<profile>/deps/web-<hash>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench binary is not in <target>/<profile>/deps")?;
    let target = profile.parent().context("no target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "baton-web",
            "--bin",
            "baton-web",
            "--target-dir",
        ])
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    ensure!(status.success(), "cargo build -p baton-web failed");
    Ok(target.join("release").join("baton-web"))
}

/// A field of `/proc/<pid>/status` in KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("a status line without a value")?
        .parse()?)
}

/// What one start of baton-web measured.
struct Measured {
    catch_up: Duration,
    matrix: Vec<Duration>,
    release: Vec<Duration>,
    peak_kib: u64,
    rss_kib: u64,
}

/// Times `GET path` to the last byte; fails unless it is a 200 holding `marker`.
async fn timed(http: &reqwest::Client, url: &str, marker: &str) -> Result<Duration> {
    let started = Instant::now();
    let response = http.get(url).send().await?;
    let status = response.status();
    let body = response.text().await?;
    let took = started.elapsed();
    ensure!(
        status.is_success() && body.contains(marker),
        "{url}: {status}, no `{marker}` in the page"
    );
    Ok(took)
}

async fn measure(binary: &Path, nats_url: &str, dir: &Path, start: usize, releases: &[String]) -> Result<Measured> {
    let port = baton_tests::free_port();
    let config = dir.join(format!("web-{start}.yaml"));
    std::fs::write(
        &config,
        format!("nats:\n  url: {nats_url}\nhttp:\n  listen: 127.0.0.1:{port}\n"),
    )?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
    let spawned = Instant::now();
    let mut web = Process::spawn(
        "baton-web",
        Command::new(binary).arg("--config").arg(&config),
        &dir.join(format!("web-{start}.log")),
        LogFile::Fresh,
    )?;
    let catch_up = loop {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            break spawned.elapsed();
        }
        web.ensure_running()?;
        if spawned.elapsed() > Duration::from_secs(120) {
            bail!("baton-web not ready after 120 s:\n{}", web.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let matrix_url = format!("{base}/");
    let page = http.get(&matrix_url).send().await?.text().await?;
    let rows = page.matches("<tr data-app=").count();
    ensure!(rows == APPS, "the matrix shows {rows} apps, not {APPS}");
    let mut matrix = Vec::with_capacity(REQUESTS);
    for i in 0..WARM_UP + REQUESTS {
        let took = timed(&http, &matrix_url, "id=\"matrix\"").await?;
        if i >= WARM_UP {
            matrix.push(took);
        }
    }
    let mut rng = StdRng::seed_from_u64(start as u64);
    let mut release = Vec::with_capacity(REQUESTS);
    for i in 0..WARM_UP + REQUESTS {
        let id = &releases[rng.random_range(0..releases.len())];
        let took = timed(&http, &format!("{base}/releases/{id}"), "id=\"timeline\"").await?;
        if i >= WARM_UP {
            release.push(took);
        }
    }
    let peak_kib = status_kib(web.id(), "VmHWM:")?;
    let rss_kib = status_kib(web.id(), "VmRSS:")?;
    web.kill()?;
    matrix.sort();
    release.sort();
    Ok(Measured {
        catch_up,
        matrix,
        release,
        peak_kib,
        rss_kib,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let binary = web_binary()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let nats = baton_tests::NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    runtime.block_on(async {
        let made = Instant::now();
        let generator = Generator {
            rng: StdRng::seed_from_u64(20),
            now: Utc::now(),
            events: Vec::with_capacity(EVENTS + 64),
            bad: Vec::new(),
            releases: Vec::new(),
        };
        let history = generator.history()?;
        let made = made.elapsed();
        let topology = nats.provision(&baton_tests::app::common(&nats.url())).await?;
        let took = publish(&topology.jetstream, &history.events).await?;
        let keys = write_state(&topology.state, &history).await?;
        let mut kinds = std::collections::BTreeMap::<EventType, usize>::new();
        for (_, event) in &history.events {
            *kinds.entry(event.event_type().context("a catalog type")?).or_default() += 1;
        }
        println!(
            "web benchmark: {APPS} apps × {} environments, {} events ({} releases created, {} quarantined) made and validated in {:.1} s, published in {:.1} s ({:.0} events/s); {keys} promoter keys",
            ENVIRONMENTS.len(),
            history.events.len(),
            history.releases.len(),
            history.bad.len(),
            made.as_secs_f64(),
            took.as_secs_f64(),
            history.events.len() as f64 / took.as_secs_f64()
        );
        let mix: Vec<String> = kinds
            .iter()
            .map(|(ty, n)| format!("{}.{} {n}", ty.subject(), ty.predicate()))
            .collect();
        println!("  mix: {}", mix.join(", "));
        println!(
            "  baton-web (release binary, own process), {STARTS} starts; pages over loopback, keep-alive, one at a time, {REQUESTS} each after {WARM_UP} uncounted"
        );
        let mut all = Vec::new();
        for start in 0..STARTS {
            let m = measure(&binary, &nats.url(), dir.path(), start, &history.releases).await?;
            let p = |v: &[Duration], q: f64| ms(baton_tests::percentile(v, q));
            println!(
                "  start {}: catch-up {:.2} s (target <= 10 s) | GET / p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms (target p50 <= 20 ms) | GET /releases/<id> p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms (target p50 <= 20 ms) | peak RSS (VmHWM) {:.1} MiB, RSS after {:.1} MiB (target <= 200 MiB)",
                start + 1,
                m.catch_up.as_secs_f64(),
                p(&m.matrix, 0.5),
                p(&m.matrix, 0.9),
                p(&m.matrix, 0.99),
                p(&m.release, 0.5),
                p(&m.release, 0.9),
                p(&m.release, 0.99),
                m.peak_kib as f64 / 1024.0,
                m.rss_kib as f64 / 1024.0,
            );
            all.push(m);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let catch_up = median(all.iter().map(|m| m.catch_up.as_secs_f64()).collect());
        let matrix = median(all.iter().map(|m| ms(baton_tests::percentile(&m.matrix, 0.5))).collect());
        let release = median(all.iter().map(|m| ms(baton_tests::percentile(&m.release, 0.5))).collect());
        let peak = all.iter().map(|m| m.peak_kib).max().unwrap_or_default() as f64 / 1024.0;
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!("  median of the starts:");
        println!("    catch-up to ready          {catch_up:>8.2} s   (target <= 10 s: {})", verdict(catch_up <= 10.0));
        println!("    GET / p50                  {matrix:>8.2} ms  (target <= 20 ms: {})", verdict(matrix <= 20.0));
        println!("    GET /releases/<id> p50     {release:>8.2} ms  (target <= 20 ms: {})", verdict(release <= 20.0));
        println!("    peak RSS, highest start    {peak:>8.1} MiB (target <= 200 MiB: {})", verdict(peak <= 200.0));
        anyhow::Ok(())
    })
}
