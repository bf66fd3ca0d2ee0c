//! The promoter against a real nats-server and real git repos (a bare config repo, an app
//! repo): releases from successful test runs, auto and manual policies with approvals, ten
//! racing releases with two replicas, rollback and auto-rollback byte for byte, pins and
//! quarantine, an invalid `environments.yaml`, a lock left by a dead replica, a promotion whose
//! commit was pushed before a crash (also when a later promotion followed it), and recreating
//! every environment from git history.
//!
//! The deployer's reports (`service.deployed`, `baton-deployment.failed`) are published here
//! the way the deployer publishes them.
//!
//! Time: the soak and the approval expiry run on a promoter clock the test moves (a
//! [`ManualClock`] handed to the in-process promoter by `Application::build_with_clock`), so
//! they neither wait for real time nor race it. `tokio::time::pause` would not do: the promoter
//! reads wall time (chrono), not tokio's, and with real nats-server and git I/O in flight a
//! paused runtime would jump through their timeouts. A dead replica's lease expires on the real
//! clock of the kit's lock store, so that test waits for real.

use baton_kit::service::Service as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use baton_kit::evidence::{
    BuildRecord, EvidenceStore, SLSA_PROVENANCE_V1, SigningKey, Subject, TEST_RESULT_V0_1, TestOutcome, TestRecord,
    provenance, seal, sign_image, test_result,
};
use baton_kit::settings::Settings;
use baton_promoter::clock::{Clock as _, ManualClock};
use baton_schemas::commands::{CommandReply, CommandRequest};
use baton_schemas::config::CommonSettings;
use baton_schemas::config::promoter::PromoterSettings;
use baton_schemas::payloads::Outcome;
use baton_schemas::release::{ApprovalData, PromotionAction, PromotionData, RELEASE_FILE, ReleaseData, ReleaseFile};
use baton_schemas::{CdEvent, EventType};
use baton_tests::people::{Person, people_yaml};
use baton_tests::repos::{self, STAGING_AUTO, TWO_STAGES};
use baton_tests::verdict::Verdict;
use baton_tests::{NatsServer, deployment, git, promotion};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const APP: &str = "acme/shop";
const DIR: &str = "acme_shop";
/// How long a suite waits for an event.
const WAIT: Duration = Duration::from_secs(30);

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: shop
          image: 127.0.0.1:5000/baton/acme_shop:dev
        - name: proxy
          image: envoyproxy/envoy:v1.30
";

/// The app's `deploy/configmap.yaml`, greeting with `greeting`: what each new app commit changes.
fn configmap(greeting: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  greeting: {greeting}\n")
}

struct Replica {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), baton_promoter::StartError>>,
}

/// A nats-server, a config repo, an app repo, and promoter replicas.
struct World {
    nats: NatsServer,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    dir: tempfile::TempDir,
    replicas: Vec<Replica>,
    lease: Duration,
    /// How long a replica waits for a busy environment (20 s unless a test shortens it).
    lock_wait: Duration,
    /// The promoters' clock when the test drives time; the system clock otherwise.
    clock: Option<Arc<ManualClock>>,
    /// The registry the promoters read evidence from (plain HTTP), when a test has one.
    registry: Option<String>,
}

impl World {
    async fn start(environments: &str, replicas: usize) -> Result<Self> {
        Self::start_with(environments, replicas, Duration::from_secs(30), None).await
    }

    /// A world whose promoter reads the time from a clock that stands still (at the real time
    /// of the start) until the test moves it.
    async fn start_with_clock(environments: &str) -> Result<(Self, Arc<ManualClock>)> {
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let world = Self::start_with(environments, 1, Duration::from_secs(30), Some(Arc::clone(&clock))).await?;
        Ok((world, clock))
    }

    async fn start_with(
        environments: &str,
        replicas: usize,
        lease: Duration,
        clock: Option<Arc<ManualClock>>,
    ) -> Result<Self> {
        let nats = NatsServer::start()?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let config = repos::config_repo(root, "config-edit", environments)?;
        // Everyone the suite's commands come from signs with their own key.
        let people: Vec<_> = ["alice", "bob", "erin", "mallory"]
            .into_iter()
            .map(|name| {
                let mut entry = Person::new(name).entry();
                if name == "erin" {
                    entry.emails = vec!["ada@example.com".into()];
                }
                entry
            })
            .collect();
        std::fs::write(config.join("people.yaml"), people_yaml(&people))?;
        git(&config, &["add", "people.yaml"])?;
        git(&config, &["commit", "-qm", "people"])?;
        git(&config, &["push", "-q", "origin", "main"])?;
        // The app repo with its pipeline file and manifests.
        repos::app_repo(
            &root.join("app"),
            &[
                (
                    ".baton.yaml",
                    "build:\n  steps: [{name: b, run: 'true'}]\nimage:\n  base: scratch\n  add: [{from: x, to: /x}]\nmanifests: deploy\n",
                ),
                ("deploy/deployment.yaml", DEPLOYMENT),
                ("deploy/configmap.yaml", &configmap("hello")),
            ],
        )?;
        let mut world = Self {
            nats,
            client,
            js,
            dir,
            replicas: Vec::new(),
            lease,
            lock_wait: Duration::from_secs(20),
            clock,
            registry: None,
        };
        for _ in 0..replicas {
            world.start_replica().await?;
        }
        Ok(world)
    }

    fn settings(&self) -> Result<Settings<PromoterSettings>> {
        let mut common = CommonSettings::default();
        common.nats.url = self.nats.url();
        common.http.listen = "127.0.0.1:0".parse()?;
        common.runner.backoff_initial = Duration::from_millis(50);
        common.runner.backoff_max = Duration::from_millis(500);
        let mut service = PromoterSettings::default();
        service.config_repo.url = format!("file://{}", self.config_bare().display());
        service.tick = Duration::from_millis(100);
        service.lock_lease = self.lease;
        service.lock_wait = self.lock_wait;
        if let Some(address) = &self.registry {
            service.registry.address = address.clone();
            service.registry.insecure = true;
        }
        Ok(Settings {
            common,
            service,
            warnings: vec![],
        })
    }

    async fn start_replica(&mut self) -> Result<()> {
        let settings = self.settings()?;
        baton_tests::app::provision_for::<baton_promoter::Application>(&settings.common).await?;
        let app = match &self.clock {
            Some(clock) => {
                baton_promoter::Application::build_with_clock(settings, &|_| None, Arc::clone(clock) as _).await?
            }
            None => baton_promoter::Application::build(settings, &|_| None).await?,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        self.replicas.push(Replica { stop, task });
        Ok(())
    }

    fn config_bare(&self) -> PathBuf {
        self.dir.path().join("config.git")
    }

    fn app_repo(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    /// `git` in the bare config repo.
    fn config(&self, args: &[&str]) -> Result<String> {
        Ok(git(&self.config_bare(), args)?)
    }

    /// A file of the config repo at `rev`.
    fn config_file(&self, rev: &str, path: &str) -> Result<String> {
        self.config(&["show", &format!("{rev}:{path}")])
    }

    /// Replaces the config repo's `file` with `text` through a clone, as a person would.
    fn push_config(&self, file: &str, text: &str, message: &str) -> Result<()> {
        let edit = self.dir.path().join("config-edit");
        git(&edit, &["pull", "-q", "--rebase", "origin", "main"])?;
        std::fs::write(edit.join(file), text)?;
        git(&edit, &["commit", "-qam", message])?;
        git(&edit, &["push", "-q", "origin", "main"])?;
        Ok(())
    }

    /// A new app commit (changing the ConfigMap's greeting) and its sha.
    fn commit_app(&self, case: &str) -> Result<String> {
        let app = self.app_repo();
        std::fs::write(app.join("deploy/configmap.yaml"), configmap(case))?;
        git(&app, &["commit", "-qam", &format!("change {case}")])?;
        Ok(git(&app, &["rev-parse", "HEAD"])?)
    }

    /// What a replica that crashed right after pushing leaves behind: a new app commit for
    /// `case`, and the config-repo commit of its promotion into staging (the promotion id its
    /// test verdict will derive), never recorded or announced. Returns the app commit, the
    /// promotion id and the config commit.
    fn push_then_crash(&self, case: &str) -> Result<(String, String, baton_promoter::configrepo::Committed)> {
        let sha = self.commit_app(case)?;
        let promotion_id = baton_promoter::manager::derive_id(&["promote", &format!("finished-{case}"), "staging"]);
        let crashed = baton_promoter::configrepo::ConfigRepo::new(
            format!("file://{}", self.config_bare().display()),
            "main",
            self.dir.path().join(format!("crashed-replica-{case}")),
            ("Baton".into(), "baton@test".into()),
            baton_kit::source::Sources::new(self.dir.path().join("crashed-cache"), vec![]),
        );
        let pushed = crashed.commit(&baton_promoter::configrepo::Change {
            promotion: promotion_id.clone(),
            dir: format!("staging/{DIR}"),
            files: Some(vec![("deployment.yaml".into(), DEPLOYMENT.as_bytes().to_vec())]),
            release_file: b"written by the replica that crashed\n".to_vec(),
            message: "promote (then crashed)".into(),
        })?;
        Ok((sha, promotion_id, pushed))
    }

    /// Publishes the tester's `testsuiterun.finished` for a new commit; returns the release id.
    async fn tests_passed(&self, case: &str) -> Result<String> {
        let sha = self.commit_app(case)?;
        self.publish_test(case, &sha, Outcome::Success, false).await
    }

    async fn publish_test(&self, case: &str, sha: &str, outcome: Outcome, untested: bool) -> Result<String> {
        let release = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, case.as_bytes()).to_string();
        Verdict {
            outcome,
            untested,
            ..Verdict::shop(sha, &self.app_repo(), case, &release)
        }
        .publish(&self.js)
        .await?;
        Ok(release)
    }

    /// Every event of type `ty` on the stream so far, validated against its schema.
    async fn events(&self, ty: EventType) -> Result<Vec<CdEvent>> {
        baton_tests::events::of(&self.js, ty).await
    }

    /// Nothing was promoted: no `environment.modified`, and the config repo has only its seed.
    async fn assert_nothing_promoted(&self) -> Result<()> {
        assert!(self.events(EventType::EnvironmentModified).await?.is_empty());
        // The seed: environments.yaml, then people.yaml.
        assert_eq!(self.config(&["rev-list", "--count", "main"])?, "2", "nothing committed");
        Ok(())
    }

    /// Nothing was promoted: no `environment.modified`, and the config repo has only its `seed`
    /// commits (environments.yaml, people.yaml, and what the test added).
    async fn assert_nothing_promoted_but(&self, seed: usize) -> Result<()> {
        assert!(self.events(EventType::EnvironmentModified).await?.is_empty());
        assert_eq!(
            self.config(&["rev-list", "--count", "main"])?,
            seed.to_string(),
            "nothing committed"
        );
        Ok(())
    }

    /// The reason of the first `baton-promotion.held` of `release`, once there is one.
    async fn held_reason(&self, release: &str) -> Result<String> {
        let held = self
            .wait_for(EventType::PromotionHeld, 1, |e| {
                e.context.chain_id.as_deref() == Some(release)
            })
            .await?;
        Ok(held[0].subject.content["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Waits for `count` events of type `ty` matching `pred`; a timeout quotes the dead
    /// letters' reasons, which say why a promoter gave an event up.
    async fn wait_for(&self, ty: EventType, count: usize, pred: impl Fn(&CdEvent) -> bool) -> Result<Vec<CdEvent>> {
        self.explained(baton_tests::events::wait_for(&self.js, ty, count, WAIT, pred).await)
            .await
    }

    /// `result`, its error followed by the dead letters' reasons.
    async fn explained<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) => Ok(value),
            Err(e) => Err(e.context(format!("dead letters: {:?}", self.dead_letters().await))),
        }
    }

    async fn dead_letters(&self) -> Vec<String> {
        let Ok(mut stream) = self.js.get_stream("BATON_DEADLETTER").await else {
            return vec![];
        };
        let n = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        let mut out = vec![];
        for seq in 1..=n {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(format!("{:?}", m.headers.get(baton_kit::runner::DEADLETTER_REASON)));
            }
        }
        out
    }

    /// The promotion of `release` into `env`; a timeout quotes the dead letters, as
    /// [`World::wait_for`].
    async fn promotion(&self, release: &str, env: &str) -> Result<PromotionData> {
        self.explained(promotion::announced(&self.js, release, env, WAIT).await)
            .await
    }

    /// Reports `promotion` the way the deployer does: healthy, or failed with `reason`.
    async fn deployer_reports(&self, promotion: &PromotionData, failure: Option<&str>) -> Result<()> {
        deployment::publish(&self.js, promotion, failure).await
    }

    /// Sends a command signed by its actor's key; waits for a replica to answer (one that just
    /// started may still be rebuilding its state).
    async fn command(&self, verb: &str, mut request: CommandRequest) -> Result<CommandReply> {
        // Issued as of the promoters' clock, which a test may have moved.
        if let Some(clock) = &self.clock {
            request.issued_at = Some(clock.now());
        }
        Person::new(&request.actor.clone())
            .send(&self.client, verb.parse().map_err(anyhow::Error::msg)?, request)
            .await
    }

    async fn stop_replicas(&mut self) -> Result<()> {
        for r in self.replicas.drain(..) {
            r.stop.cancel();
            tokio::time::timeout(Duration::from_secs(30), r.task).await???;
        }
        Ok(())
    }

    /// Loses the promoter's whole KV state.
    async fn lose_state(&self) -> Result<usize> {
        let kv = self.js.get_key_value("baton-state").await?;
        let keys: Vec<String> = futures::TryStreamExt::try_collect(kv.keys().await?).await?;
        let mut lost = 0;
        for key in keys.iter().filter(|k| k.starts_with("promoter.")) {
            kv.purge(key).await?;
            lost += 1;
        }
        Ok(lost)
    }

    async fn stop(self) -> Result<()> {
        for r in self.replicas {
            r.stop.cancel();
            tokio::time::timeout(Duration::from_secs(30), r.task).await???;
        }
        Ok(())
    }
}

fn vote(actor: &str, release: &str) -> CommandRequest {
    CommandRequest {
        actor: actor.into(),
        release: Some(release.into()),
        environment: Some("production".into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_policy_commits_manifests_pinned_by_digest_and_announces_the_promotion() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let release = world.tests_passed("one").await?;
    let created = world
        .wait_for(EventType::ReleaseCreated, 1, |e| {
            e.context.chain_id.as_deref() == Some(release.as_str())
        })
        .await?;
    let data: ReleaseData = created[0].custom_data_as()?;
    assert_eq!(data.release, release);
    assert!(data.tested);
    assert_eq!(
        data.author.as_ref().and_then(|a| a.email.as_deref()),
        Some("ada@example.com")
    );
    assert_eq!(
        data.changelog.len(),
        2,
        "both commits of the app so far: {:?}",
        data.changelog
    );

    let promotion = world.promotion(&release, "staging").await?;
    assert_eq!(promotion.action, PromotionAction::Promote);
    assert_eq!(promotion.namespace, "shop-staging");
    assert_eq!(promotion.manifests_path, format!("staging/{DIR}"));
    assert_eq!(
        world.config(&["rev-parse", "main"])?,
        promotion.config_commit,
        "the event names the head commit"
    );
    let deployment = world.config_file("main", &format!("staging/{DIR}/deployment.yaml"))?;
    assert!(
        deployment.contains(&format!("image: {}", data.image.reference)),
        "pinned by digest: {deployment}"
    );
    assert!(
        deployment.contains("image: envoyproxy/envoy:v1.30"),
        "other images untouched"
    );
    let file: ReleaseFile =
        yaml_serde::from_str(&world.config_file("main", &format!("staging/{DIR}/{RELEASE_FILE}"))?)?;
    assert_eq!(file.release.release, release);
    let message = world.config(&["log", "-1", "--format=%B", "main"])?;
    assert!(
        message.contains(&release) && message.contains(&data.commit) && message.contains("baton-promoter"),
        "{message}"
    );
    // Nothing reached production: it is manual and the release is not deployed yet.
    assert!(world.events(EventType::ApprovalCreated).await?.is_empty());
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_policy_needs_two_distinct_allowed_approvers_and_records_every_refusal() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let release = world.tests_passed("one").await?;
    let staging = world.promotion(&release, "staging").await?;

    // Before the deployer reports staging healthy, nobody can approve production.
    let early = world.command("approve", vote("alice", &release)).await?;
    assert!(!early.ok && early.message.contains("no approval request"), "{early:?}");

    world.deployer_reports(&staging, None).await?;
    let created = world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;
    let request: ApprovalData = created[0].custom_data_as()?;
    assert_eq!((request.environment.as_str(), request.required), ("production", 2));
    assert_eq!(
        request.release.image.reference, staging.release.image.reference,
        "what is being released"
    );

    let first = world.command("approve", vote("alice", &release)).await?;
    assert!(first.ok && first.message.contains("1 of 2"), "{first:?}");
    assert!(first.config_commit.is_none(), "one approval is not enough");
    let again = world.command("approve", vote("alice", &release)).await?;
    assert!(!again.ok && again.message.contains("already approved"), "{again:?}");
    let stranger = world.command("approve", vote("mallory", &release)).await?;
    assert!(
        !stranger.ok && stranger.message.contains("may not approve"),
        "{stranger:?}"
    );
    let author = world.command("approve", vote("erin", &release)).await?;
    assert!(!author.ok && author.message.contains("authored"), "{author:?}");
    let unknown = world.command("approve", vote("bob", "no-such-release")).await?;
    assert!(
        !unknown.ok && unknown.message.contains("unknown release"),
        "{unknown:?}"
    );
    let rejected = world.wait_for(EventType::CommandRejected, 4, |_| true).await?;
    let actors: Vec<String> = rejected
        .iter()
        .map(|e| e.subject.content["actor"].as_str().unwrap_or_default().to_owned())
        .collect();
    for who in ["alice", "mallory", "erin", "bob"] {
        assert!(
            actors.iter().any(|a| a == who),
            "{who}'s refusal is recorded: {actors:?}"
        );
    }
    assert!(
        world.events(EventType::EnvironmentModified).await?.len() == 1,
        "still only staging"
    );

    let second = world.command("approve", vote("bob", &release)).await?;
    assert!(second.ok, "{second:?}");
    let production = world.promotion(&release, "production").await?;
    assert_eq!(second.config_commit.as_deref(), Some(production.config_commit.as_str()));
    assert_eq!(production.namespace, "shop-production");
    let closed = world.wait_for(EventType::ApprovalClosed, 1, |_| true).await?;
    assert_eq!(closed[0].subject.content["status"], "approved");
    let late = world.command("approve", vote("erin", &release)).await?;
    assert!(!late.ok && late.message.contains("already closed"), "{late:?}");

    // A second release is declined: its journey ends before production.
    let declined = world.tests_passed("two").await?;
    let staging = world.promotion(&declined, "staging").await?;
    world.deployer_reports(&staging, None).await?;
    world.wait_for(EventType::ApprovalCreated, 2, |_| true).await?;
    let no = world
        .command(
            "decline",
            CommandRequest {
                reason: Some("not during the sale".into()),
                ..vote("alice", &declined)
            },
        )
        .await?;
    assert!(no.ok && no.message.contains("will not enter"), "{no:?}");
    let closed = world
        .wait_for(EventType::ApprovalClosed, 1, |e| {
            e.context.chain_id.as_deref() == Some(declined.as_str())
        })
        .await?;
    assert_eq!(closed[0].subject.content["status"], "rejected");
    let reason = closed[0].custom_data_as::<ApprovalData>()?.reason.unwrap_or_default();
    assert!(reason.contains("not during the sale"), "{reason}");
    let after = world.command("approve", vote("bob", &declined)).await?;
    assert!(!after.ok, "a declined release cannot be approved any more: {after:?}");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_expires_and_a_newer_release_supersedes_a_waiting_one() -> Result<()> {
    // Requests expire an hour after they open (TWO_STAGES), on the clock the test moves.
    let (world, clock) = World::start_with_clock(TWO_STAGES).await?;
    let old = world.tests_passed("old").await?;
    world
        .deployer_reports(&world.promotion(&old, "staging").await?, None)
        .await?;
    world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;
    let new = world.tests_passed("new").await?;
    world
        .deployer_reports(&world.promotion(&new, "staging").await?, None)
        .await?;
    let cancelled = world
        .wait_for(EventType::ApprovalClosed, 1, |e| {
            e.context.chain_id.as_deref() == Some(old.as_str())
        })
        .await?;
    assert_eq!(cancelled[0].subject.content["status"], "cancelled");
    let why = cancelled[0]
        .custom_data_as::<ApprovalData>()?
        .reason
        .unwrap_or_default();
    assert!(why.contains(&format!("superseded by release {new}")), "{why}");
    let refused = world.command("approve", vote("alice", &old)).await?;
    assert!(!refused.ok && refused.message.contains("superseded"), "{refused:?}");

    // A minute before the expiry the timers (every 100 ms) leave the request open.
    let new_request: ApprovalData = world
        .wait_for(EventType::ApprovalCreated, 1, |e| {
            e.context.chain_id.as_deref() == Some(new.as_str())
        })
        .await?[0]
        .custom_data_as()?;
    assert_eq!(
        new_request.expires_at,
        clock.now() + chrono::Duration::hours(1),
        "expires_after from the moment the request opened"
    );
    clock.advance(Duration::from_secs(59 * 60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed_early = world.events(EventType::ApprovalClosed).await?;
    assert!(
        closed_early
            .iter()
            .all(|e| e.context.chain_id.as_deref() != Some(new.as_str())),
        "not expired before its time: {closed_early:?}"
    );
    clock.advance(Duration::from_secs(60));
    let expired = world
        .wait_for(EventType::ApprovalClosed, 1, |e| {
            e.context.chain_id.as_deref() == Some(new.as_str()) && e.subject.content["status"] == "expired"
        })
        .await?;
    assert!(
        expired[0]
            .custom_data_as::<ApprovalData>()?
            .reason
            .unwrap_or_default()
            .contains("nobody decided")
    );
    let late = world.command("approve", vote("alice", &new)).await?;
    assert!(!late.ok && late.message.contains("expired"), "{late:?}");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_racing_releases_with_two_replicas_make_ten_fast_forward_commits() -> Result<()> {
    let world = World::start(TWO_STAGES, 2).await?;
    // Ten sibling commits (each on its own branch from one base), so none is older than another
    // and every one may enter staging, in whichever order the replicas take them.
    let app = world.app_repo();
    let base = git(&app, &["rev-parse", "HEAD"])?;
    let mut releases = Vec::new();
    for i in 0..10 {
        git(&app, &["checkout", "-q", "-B", &format!("race-{i}"), &base])?;
        let case = format!("race-{i}");
        let sha = world.commit_app(&case)?;
        releases.push(world.publish_test(&case, &sha, Outcome::Success, false).await?);
    }
    git(&app, &["checkout", "-q", "main"])?;
    let promotions = world.wait_for(EventType::EnvironmentModified, 10, |_| true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let promotions_now = world.events(EventType::EnvironmentModified).await?;
    assert_eq!(promotions_now.len(), 10, "no duplicated promotion event");
    let mut promoted: Vec<String> = promotions
        .iter()
        .map(|e| e.context.chain_id.clone().unwrap_or_default())
        .collect();
    promoted.sort();
    let mut expected = releases.clone();
    expected.sort();
    assert_eq!(promoted, expected, "every release promoted once");
    // History: the seed (environments.yaml, people.yaml) plus one commit per release, each the
    // only child of the one before.
    let log = world.config(&["rev-list", "--parents", "main"])?;
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 12, "{log}");
    for pair in lines.windows(2) {
        assert_eq!(pair[0].len(), 2, "no merge commits: {log}");
        assert_eq!(
            pair[0][1], pair[1][0],
            "each commit's parent is the previous head: {log}"
        );
    }
    let trailers = world.config(&["log", "--format=%(trailers:key=Baton-Promotion,valueonly)", "main"])?;
    let mut ids: Vec<&str> = trailers.lines().filter(|l| !l.is_empty()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "ten distinct promotions: {trailers}");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_rolls_back_byte_for_byte_pins_and_quarantines() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let good = world.tests_passed("good").await?;
    let good_promotion = world.promotion(&good, "staging").await?;
    world.deployer_reports(&good_promotion, None).await?;
    world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;
    let bad = world.tests_passed("bad").await?;
    let bad_promotion = world.promotion(&bad, "staging").await?;
    world
        .deployer_reports(&bad_promotion, Some("pods crash-looping"))
        .await?;

    let rollback = world
        .wait_for(EventType::EnvironmentModified, 1, |e| {
            e.custom_data_as::<PromotionData>()
                .is_ok_and(|p| p.action == PromotionAction::Rollback)
        })
        .await?;
    let rollback: PromotionData = rollback[0].custom_data_as()?;
    assert_eq!(rollback.release.release, good);
    assert!(rollback.pinned);
    assert!(
        rollback
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("pods crash-looping")
    );
    for file in ["deployment.yaml", "configmap.yaml"] {
        let path = format!("staging/{DIR}/{file}");
        assert_eq!(
            world.config_file(&rollback.config_commit, &path)?,
            world.config_file(&good_promotion.config_commit, &path)?,
            "{file} restored byte for byte"
        );
    }
    let quarantined = world.wait_for(EventType::ReleaseQuarantined, 1, |_| true).await?;
    assert_eq!(quarantined[0].subject.id, bad);

    // The bad release is never promoted again, not even by hand.
    let again = world
        .command(
            "promote",
            CommandRequest {
                actor: "alice".into(),
                release: Some(bad.clone()),
                environment: Some("staging".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(!again.ok && again.message.contains("quarantined"), "{again:?}");
    // The environment is pinned: a new release is held, with the reason.
    let held_release = world.tests_passed("while-pinned").await?;
    let held = world
        .wait_for(EventType::PromotionHeld, 1, |e| {
            e.context.chain_id.as_deref() == Some(held_release.as_str())
        })
        .await?;
    assert!(
        held[0].subject.content["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("pinned")
    );
    let commits = world.config(&["rev-list", "--count", "main"])?;

    // Unpin, then roll back by hand to a named release: the same bytes again.
    let unpin = world
        .command(
            "unpin",
            CommandRequest {
                actor: "alice".into(),
                app: Some(APP.into()),
                environment: Some("staging".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(unpin.ok, "{unpin:?}");
    assert_eq!(
        world.config(&["rev-list", "--count", "main"])?.parse::<u32>()?,
        commits.parse::<u32>()? + 1
    );
    let newer = world.tests_passed("newer").await?;
    world.promotion(&newer, "staging").await?;
    let manual = world
        .command(
            "rollback",
            CommandRequest {
                actor: "alice".into(),
                app: Some(APP.into()),
                environment: Some("staging".into()),
                release: Some(good.clone()),
                reason: Some("customers report errors".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(manual.ok, "{manual:?}");
    let commit = manual.config_commit.clone().context("a commit")?;
    assert_eq!(
        world.config_file(&commit, &format!("staging/{DIR}/deployment.yaml"))?,
        world.config_file(&good_promotion.config_commit, &format!("staging/{DIR}/deployment.yaml"))?
    );
    let to_bad = world
        .command(
            "rollback",
            CommandRequest {
                actor: "alice".into(),
                app: Some(APP.into()),
                environment: Some("staging".into()),
                release: Some(bad.clone()),
                ..Default::default()
            },
        )
        .await?;
    assert!(!to_bad.ok && to_bad.message.contains("quarantined"), "{to_bad:?}");
    // mark-bad by an operator.
    let marked = world
        .command(
            "mark-bad",
            CommandRequest {
                actor: "alice".into(),
                release: Some(newer.clone()),
                reason: Some("leaks memory".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(marked.ok, "{marked:?}");
    world.wait_for(EventType::ReleaseQuarantined, 2, |_| true).await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_apps_first_failed_rollout_is_held_unpinned_and_the_next_healthy_release_reaches_it() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let first = world.tests_passed("first").await?;
    let first_promotion = world.promotion(&first, "staging").await?;
    world
        .deployer_reports(&first_promotion, Some("pods crash-looping"))
        .await?;

    // Nothing ran healthy in staging before: held with the reason, quarantined, not pinned.
    let reason = world.held_reason(&first).await?;
    for words in ["pods crash-looping", "not pinned", "next healthy release"] {
        assert!(reason.contains(words), "`{words}` in: {reason}");
    }
    world.wait_for(EventType::ReleaseQuarantined, 1, |_| true).await?;
    let kv = world.js.get_key_value("baton-state").await?;
    let current: serde_json::Value = serde_json::from_slice(
        &kv.get(format!("promoter.current.{DIR}.staging"))
            .await?
            .context("staging's current state")?,
    )?;
    assert!(current["pinned"].is_null(), "staging is not pinned: {current}");
    let modified = world.events(EventType::EnvironmentModified).await?;
    assert!(
        modified.iter().all(|e| e
            .custom_data_as::<PromotionData>()
            .is_ok_and(|p| p.action == PromotionAction::Promote)),
        "no pin or rollback was written: {modified:?}"
    );

    // The next release that passes its tests is promoted into staging, and runs healthy there.
    let fixed = world.tests_passed("fixed").await?;
    let fixed_promotion = world.promotion(&fixed, "staging").await?;
    assert!(!fixed_promotion.pinned);
    world.deployer_reports(&fixed_promotion, None).await?;
    world
        .wait_for(EventType::ApprovalCreated, 1, |e| {
            e.context.chain_id.as_deref() == Some(fixed.as_str())
        })
        .await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_recorded_under_the_app_it_concerns_and_never_under_an_invented_one() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let release = world.tests_passed("known").await?;
    world.promotion(&release, "staging").await?;

    // A release nobody created: refused, recorded under the token of no app, in no timeline.
    let unknown = "0badf00d-0000-5000-8000-000000000000";
    let refused = world.command("mark-bad", vote("alice", unknown)).await?;
    assert!(
        !refused.ok && refused.message.contains("unknown release"),
        "{refused:?}"
    );
    assert_eq!(refused.release, None, "no release was acted on");
    // A release the promoter knows: under its app, in its timeline.
    let marked = world.command("mark-bad", vote("alice", &release)).await?;
    assert!(marked.ok, "{marked:?}");

    let rejected = baton_tests::events::with_subjects(&world.js, EventType::CommandRejected).await?;
    let [(subject, event)] = rejected.as_slice() else {
        anyhow::bail!("one refusal: {rejected:?}");
    };
    assert_eq!(
        baton_schemas::subjects::app_of(subject),
        Some(baton_schemas::subjects::NO_APP),
        "{subject}"
    );
    assert_eq!(event.context.chain_id, None, "an unknown release has no timeline");
    let accepted = baton_tests::events::with_subjects(&world.js, EventType::CommandAccepted).await?;
    let (subject, event) = accepted
        .iter()
        .find(|(_, e)| e.custom_data.as_ref().is_some_and(|d| d["release"] == release.as_str()))
        .context("the accepted mark-bad")?;
    assert_eq!(baton_schemas::subjects::app_of(subject), Some(DIR), "{subject}");
    assert_eq!(event.context.chain_id.as_deref(), Some(release.as_str()));
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untested_releases_and_freeze_windows_are_held_with_the_reason() -> Result<()> {
    let frozen = "\
environments:
  - name: staging
    namespace: shop-staging
    policy: auto
    freeze:
      - name: always
        cron: '* * * * *'
        duration: 2m
  - name: production
    namespace: shop-production
    policy: manual
    approvals: {users: [alice]}
";
    let world = World::start(frozen, 1).await?;
    let sha = world.commit_app("untested")?;
    let untested = world.publish_test("untested", &sha, Outcome::Success, true).await?;
    let held = world
        .wait_for(EventType::PromotionHeld, 1, |e| {
            e.context.chain_id.as_deref() == Some(untested.as_str())
        })
        .await?;
    assert!(
        held[0].subject.content["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("allow_untested")
    );

    let release = world.tests_passed("frozen").await?;
    let held = world
        .wait_for(EventType::PromotionHeld, 1, |e| {
            e.context.chain_id.as_deref() == Some(release.as_str())
        })
        .await?;
    assert!(
        held[0].subject.content["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("freeze window always")
    );
    assert!(
        held[0].subject.content["retryAt"].is_string(),
        "it will be retried when the window ends"
    );
    assert!(world.events(EventType::EnvironmentModified).await?.is_empty());
    // A failed test run makes no release at all.
    let sha = world.commit_app("failing")?;
    world.publish_test("failing", &sha, Outcome::Failure, false).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.events(EventType::ReleaseCreated).await?.len(), 2);
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_environments_file_is_refused_and_the_last_valid_policy_stays() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let first = world.tests_passed("first").await?;
    world.promotion(&first, "staging").await?;
    world.push_config(
        "environments.yaml",
        "environments:\n  - name: staging\n    namespace: Bad_Namespace\n    policy: auto\n",
        "edit environments",
    )?;
    let second = world.tests_passed("second").await?;
    let rejected = world.wait_for(EventType::PolicyRejected, 1, |_| true).await?;
    let content = &rejected[0].subject.content;
    assert_eq!(content["field"], "environments[0].namespace");
    assert!(content["reason"].as_str().unwrap_or_default().contains("Bad_Namespace"));
    assert!(content["policyInForce"].is_string());
    // Still promoted, under the last valid policy (staging's namespace from it).
    let promotion = world.promotion(&second, "staging").await?;
    assert_eq!(promotion.namespace, "shop-staging");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_dead_replica_and_a_commit_pushed_before_a_crash_give_one_promotion() -> Result<()> {
    let world = World::start_with(TWO_STAGES, 1, Duration::from_secs(2), None).await?;
    // A replica died holding staging's lock; its lease runs for two more seconds. The lock
    // store judges expiry by the real clock, so this test waits for real.
    let locks = world.js.get_key_value("baton-locks").await?;
    let lease = json!({
        "owner": "baton-promoter-dead",
        "purpose": "promote something",
        "expires_at": (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339(),
    });
    locks.put("env.staging", serde_json::to_vec(&lease)?.into()).await?;
    let release = world.tests_passed("after-a-crash").await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        world.events(EventType::EnvironmentModified).await?.is_empty(),
        "nobody promotes while the dead replica's lease runs"
    );
    let promotion = world.promotion(&release, "staging").await?;
    assert_eq!(
        world.config(&["rev-list", "--count", "main"])?,
        "3",
        "one commit after the lease expired"
    );

    // A replica pushed the next promotion's commit and died before announcing it: the event is
    // redelivered to another replica, which finds the commit instead of making a second one.
    let case = "pushed-then-crashed";
    let (sha, promotion_id, pushed) = world.push_then_crash(case)?;
    let again = world.publish_test(case, &sha, Outcome::Success, false).await?;
    let redone = world.promotion(&again, "staging").await?;
    assert_eq!(redone.promotion, promotion_id);
    assert_eq!(
        redone.config_commit, pushed.commit,
        "the commit pushed before the crash is the promotion"
    );
    assert_eq!(world.config(&["rev-list", "--count", "main"])?, "4", "no second commit");
    assert_ne!(redone.config_commit, promotion.config_commit);
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_promotion_overtaken_by_a_later_one_leaves_the_environment_to_the_later() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    // A replica pushed the commit of an early release's promotion and died before recording or
    // announcing it; meanwhile a later release was promoted on top of it.
    let case = "early";
    let (sha, promotion_id, pushed) = world.push_then_crash(case)?;
    let later = world.tests_passed("later").await?;
    let later_promotion = world.promotion(&later, "staging").await?;

    // The early release's event comes back: its commit is found and announced, nothing more.
    let early = world.publish_test(case, &sha, Outcome::Success, false).await?;
    let redone = world.promotion(&early, "staging").await?;
    assert_eq!(redone.promotion, promotion_id);
    assert_eq!(redone.config_commit, pushed.commit);
    assert_eq!(
        world.config(&["rev-list", "--count", "main"])?,
        "4",
        "no further commit"
    );
    // Staging still runs the later release, as the config repo says: its healthy report moves
    // it on to production's approval.
    world.deployer_reports(&later_promotion, None).await?;
    world
        .wait_for(EventType::ApprovalCreated, 1, |e| {
            e.context.chain_id.as_deref() == Some(later.as_str())
        })
        .await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_history_alone_recreates_every_environment() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let mut last = None;
    for case in ["h1", "h2", "h3"] {
        let release = world.tests_passed(case).await?;
        let staging = world.promotion(&release, "staging").await?;
        world.deployer_reports(&staging, None).await?;
        world
            .wait_for(EventType::ApprovalCreated, 1, |e| {
                e.context.chain_id.as_deref() == Some(release.as_str())
            })
            .await?;
        last = Some(release);
    }
    let last = last.context("releases")?;
    for who in ["alice", "bob"] {
        assert!(world.command("approve", vote(who, &last)).await?.ok);
    }
    world.promotion(&last, "production").await?;
    // Re-render every promotion in the history from its release file alone (the app repo at
    // the recorded commit, the recorded image) and compare with what the commit holds.
    let log = world.config(&["rev-list", "main"])?;
    let mut checked = 0;
    for commit in log.lines() {
        for env in ["staging", "production"] {
            let dir = format!("{env}/{DIR}");
            let Ok(text) = world.config_file(commit, &format!("{dir}/{RELEASE_FILE}")) else {
                continue;
            };
            let file: ReleaseFile = yaml_serde::from_str(&text)?;
            if file.action != PromotionAction::Promote {
                continue;
            }
            let app = world.app_repo();
            let mut files = Vec::new();
            for name in ["configmap.yaml", "deployment.yaml"] {
                let bytes = git(&app, &["show", &format!("{}:deploy/{name}", file.release.commit)])?;
                files.push((name.to_owned(), format!("{bytes}\n").into_bytes()));
            }
            let rendered = baton_promoter::render::render("deploy", &files, &file.release.image)?;
            for r in rendered {
                assert_eq!(
                    world.config_file(commit, &format!("{dir}/{}", r.path))? + "\n",
                    String::from_utf8(r.bytes)?,
                    "{dir}/{} at {commit}",
                    r.path
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "three staging and one production state checked, got {checked}"
    );
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_losing_its_state_the_promoter_rebuilds_it_from_the_stream_and_the_config_repo() -> Result<()> {
    let mut world = World::start(TWO_STAGES, 1).await?;
    let good = world.tests_passed("kept").await?;
    let good_staging = world.promotion(&good, "staging").await?;
    world.deployer_reports(&good_staging, None).await?;
    world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;
    assert!(world.command("approve", vote("alice", &good)).await?.ok);
    let next = world.tests_passed("in-flight").await?;
    let next_staging = world.promotion(&next, "staging").await?;

    world.stop_replicas().await?;
    let lost = world.lose_state().await?;
    assert!(
        lost >= 5,
        "releases, environments, approval and policy were in KV: {lost}"
    );
    world.start_replica().await?;

    // The approval request and its first vote survived: one more approval reaches the quorum.
    let again = world.command("approve", vote("alice", &good)).await?;
    assert!(!again.ok && again.message.contains("already approved"), "{again:?}");
    // The in-flight release fails in staging: the rollback target (the last healthy release) was
    // rebuilt too.
    world.deployer_reports(&next_staging, Some("image pull failed")).await?;
    let rollback = world
        .wait_for(EventType::EnvironmentModified, 1, |e| {
            e.custom_data_as::<PromotionData>()
                .is_ok_and(|p| p.action == PromotionAction::Rollback)
        })
        .await?;
    assert_eq!(rollback[0].custom_data_as::<PromotionData>()?.release.release, good);
    let quorum = world.command("approve", vote("bob", &good)).await?;
    assert!(quorum.ok && quorum.config_commit.is_some(), "{quorum:?}");
    world.promotion(&good, "production").await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_without_the_app_image_hold_the_release_with_what_to_fix() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let app = world.app_repo();
    std::fs::write(
        app.join("deploy/deployment.yaml"),
        DEPLOYMENT.replace("127.0.0.1:5000/baton/acme_shop:dev", "nginx:1.27"),
    )?;
    let release = world.tests_passed("no-app-image").await?;
    let reason = world.held_reason(&release).await?;
    assert!(
        reason.contains("no container") && reason.contains("image: 127.0.0.1:5000/baton/acme_shop"),
        "{reason}"
    );
    assert_eq!(world.events(EventType::ReleaseCreated).await?.len(), 1);
    world.assert_nothing_promoted().await?;
    world.stop().await
}

/// A pipeline file whose `manifests` names the repository's root would put every YAML file of
/// the app repo (its manifests folder included) into the config repo: the release is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_file_naming_the_repository_root_as_manifests_is_held() -> Result<()> {
    let world = World::start(TWO_STAGES, 1).await?;
    let app = world.app_repo();
    let pipeline = std::fs::read_to_string(app.join(".baton.yaml"))?.replace("manifests: deploy", "manifests: /");
    std::fs::write(app.join(".baton.yaml"), pipeline)?;
    let release = world.tests_passed("root-as-manifests").await?;
    let reason = world.held_reason(&release).await?;
    assert!(reason.contains("the manifests directory ``"), "{reason}");
    world.assert_nothing_promoted().await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_delays_the_next_environment_and_the_timer_promotes_after_it() -> Result<()> {
    // Staging as usual, then production, automatic once a release has soaked in staging.
    let soaking = STAGING_AUTO.to_owned()
        + "  - name: production\n    namespace: shop-production\n    policy: auto\n    soak: 10m\n";
    let (world, clock) = World::start_with_clock(&soaking).await?;
    let release = world.tests_passed("soaked").await?;
    let healthy_at = clock.now();
    world
        .deployer_reports(&world.promotion(&release, "staging").await?, None)
        .await?;
    let held = world
        .wait_for(EventType::PromotionHeld, 1, |e| {
            e.context.chain_id.as_deref() == Some(release.as_str())
        })
        .await?;
    assert!(
        held[0].subject.content["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("soak in `staging`")
    );
    let retry_at = held[0].subject.content["retryAt"]
        .as_str()
        .context("the hold says when it is retried")?;
    let retry_at = chrono::DateTime::parse_from_rfc3339(retry_at)?.with_timezone(&chrono::Utc);
    assert_eq!(
        retry_at,
        healthy_at + chrono::Duration::minutes(10),
        "the soak runs from the healthy report"
    );
    // A minute before the soak is over the timers (every 100 ms) leave production alone.
    clock.advance(Duration::from_secs(9 * 60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = world.events(EventType::EnvironmentModified).await?;
    assert!(
        early.iter().all(|e| e
            .custom_data_as::<PromotionData>()
            .is_ok_and(|p| p.environment != "production")),
        "not promoted before the soak is over: {early:?}"
    );
    clock.advance(Duration::from_secs(60));
    let production = world.promotion(&release, "production").await?;
    let recorded: ReleaseFile = yaml_serde::from_str(&world.config_file(
        &production.config_commit,
        &format!("{}/{RELEASE_FILE}", production.manifests_path),
    )?)?;
    assert!(
        recorded.at - healthy_at >= chrono::Duration::minutes(10),
        "promoted only after the soak: healthy at {healthy_at}, promoted at {}",
        recorded.at
    );
    assert_eq!(production.actor, "baton-promoter");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_promotion_during_a_freeze_needs_an_approval_and_is_recorded() -> Result<()> {
    let frozen = "\
environments:
  - name: staging
    namespace: shop-staging
    policy: auto
    approvals: {users: [alice, bob]}
    freeze:
      - name: release-week
        cron: '* * * * *'
        duration: 5m
";
    let world = World::start(frozen, 1).await?;
    let release = world.tests_passed("urgent-fix").await?;
    world
        .wait_for(EventType::PromotionHeld, 1, |e| {
            e.context.chain_id.as_deref() == Some(release.as_str())
        })
        .await?;
    let promote = |break_glass: bool| CommandRequest {
        actor: "bob".into(),
        release: Some(release.clone()),
        environment: Some("staging".into()),
        reason: Some("security fix".into()),
        break_glass,
        ..Default::default()
    };
    let refused = world.command("promote", promote(false)).await?;
    assert!(!refused.ok && refused.message.contains("break-glass"), "{refused:?}");
    let asked = world.command("promote", promote(true)).await?;
    assert!(asked.ok && asked.approval.is_some(), "{asked:?}");
    let request: ApprovalData = world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?[0].custom_data_as()?;
    assert_eq!(request.kind, baton_schemas::release::ApprovalKind::BreakGlass);
    assert_eq!(request.requested_by, "bob");
    // Whoever asked for the break-glass may not approve it.
    let own = world
        .command(
            "approve",
            CommandRequest {
                environment: Some("staging".into()),
                ..vote("bob", &release)
            },
        )
        .await?;
    assert!(!own.ok && own.message.contains("asked for this break-glass"), "{own:?}");
    let approved = world
        .command(
            "approve",
            CommandRequest {
                environment: Some("staging".into()),
                ..vote("alice", &release)
            },
        )
        .await?;
    assert!(approved.ok && approved.config_commit.is_some(), "{approved:?}");
    let promotion = world.promotion(&release, "staging").await?;
    assert!(promotion.break_glass, "recorded as break-glass");
    assert!(promotion.reason.unwrap_or_default().contains("freeze"));
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operator_promotions_through_approvals_each_reach_the_environment() -> Result<()> {
    let manual = "\
environments:
  - name: production
    namespace: shop-production
    policy: manual
    approvals: {required: 1, users: [alice, bob]}
";
    let world = World::start(manual, 1).await?;
    // Each tested release asks for production; the newer request supersedes the older one.
    let first = world.tests_passed("first").await?;
    let second = world.tests_passed("second").await?;
    world.wait_for(EventType::ApprovalCreated, 2, |_| true).await?;
    let promote = |release: &str| CommandRequest {
        actor: "bob".into(),
        release: Some(release.into()),
        environment: Some("production".into()),
        reason: Some("ship it".into()),
        ..Default::default()
    };

    // The operator asks for the first release, then (once it runs) for the second: two
    // requests of the same environment with no event behind them.
    let mut commits = Vec::new();
    let mut approvals = Vec::new();
    for release in [&first, &second] {
        let asked = world.command("promote", promote(release)).await?;
        assert!(asked.ok && asked.approval.is_some(), "{asked:?}");
        approvals.push(asked.approval.clone().unwrap_or_default());
        let approved = world.command("approve", vote("alice", release)).await?;
        assert!(approved.ok, "{approved:?}");
        let commit = approved.config_commit.clone().expect("the approval promotes");
        let promotion = world.promotion(release, "production").await?;
        assert_eq!(
            promotion.config_commit, commit,
            "the announced commit is the promotion's"
        );
        assert_eq!(&promotion.release.release, release);
        let file: ReleaseFile =
            yaml_serde::from_str(&world.config_file(&commit, &format!("production/{DIR}/{RELEASE_FILE}"))?)?;
        assert_eq!(&file.release.release, release, "production runs {release} at {commit}");
        commits.push(commit);
    }
    assert_ne!(approvals[0], approvals[1], "each request has its own approval");
    assert_ne!(commits[0], commits[1], "the second promotion is a commit of its own");
    let head = world.config(&["rev-parse", "main"])?;
    assert_eq!(head, commits[1], "production ends on the second release");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_for_another_release_is_a_command_of_its_own() -> Result<()> {
    let world = World::start(STAGING_AUTO, 1).await?;
    let first = world.tests_passed("first").await?;
    world.promotion(&first, "staging").await?;
    let second = world.tests_passed("second").await?;
    world.promotion(&second, "staging").await?;
    // A client (careless or hostile) sends one request id for two different promotions.
    let promote = |release: &str| CommandRequest {
        actor: "alice".into(),
        release: Some(release.into()),
        environment: Some("staging".into()),
        request_id: Some("request-1".into()),
        ..Default::default()
    };
    let back = world.command("promote", promote(&first)).await?;
    assert!(back.ok, "{back:?}");
    let forward = world.command("promote", promote(&second)).await?;
    assert!(forward.ok, "{forward:?}");
    assert_ne!(
        back.config_commit, forward.config_commit,
        "the second request is not taken for the first one already done"
    );
    let file: ReleaseFile =
        yaml_serde::from_str(&world.config_file("main", &format!("staging/{DIR}/{RELEASE_FILE}"))?)?;
    assert_eq!(
        file.release.release, second,
        "staging runs what the last request asked for"
    );
    // The very same request again is the same command: it finds its commit, nothing new.
    let again = world.command("promote", promote(&second)).await?;
    assert_eq!(again.config_commit, forward.config_commit);
    world.stop().await
}

/// A quarantine follows the commit and the image, not only the release id: the same commit
/// released again under another id (a replayed push) and the same image under another commit
/// (a rebuild that reproduced it) are held as quarantined, naming the release that was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_commit_or_image_stays_quarantined_under_another_release() -> Result<()> {
    let world = World::start(STAGING_AUTO, 1).await?;
    let bad = world.tests_passed("bad").await?;
    world.promotion(&bad, "staging").await?;
    let marked = world
        .command(
            "mark-bad",
            CommandRequest {
                actor: "alice".into(),
                release: Some(bad.clone()),
                reason: Some("corrupts orders".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(marked.ok, "{marked:?}");
    let sha = git(&world.app_repo(), &["rev-parse", "HEAD"])?;

    // The same commit, under a new release id and a new image.
    let replayed = world
        .publish_test("bad-replayed", &sha, Outcome::Success, false)
        .await?;
    let reason = world.held_reason(&replayed).await?;
    assert!(
        reason.contains(&format!("quarantined with release {bad}")) && reason.contains("corrupts orders"),
        "{reason}"
    );

    // The same image, built from another commit.
    let other = world.commit_app("bad-rebuilt")?;
    let rebuilt = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"bad-rebuilt").to_string();
    Verdict {
        digest_seed: "bad",
        ..Verdict::shop(&other, &world.app_repo(), "bad-rebuilt", &rebuilt)
    }
    .publish(&world.js)
    .await?;
    let reason = world.held_reason(&rebuilt).await?;
    assert!(reason.contains(&format!("quarantined with release {bad}")), "{reason}");
    assert_eq!(
        world.events(EventType::EnvironmentModified).await?.len(),
        1,
        "only the first release was promoted"
    );
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_commit_whose_tests_finish_later_does_not_replace_a_newer_one() -> Result<()> {
    let world = World::start(STAGING_AUTO, 1).await?;
    // Two pushes in a row; the newer one's tests finish first.
    let older_sha = world.commit_app("older")?;
    let newer_sha = world.commit_app("newer")?;
    let newer = world.publish_test("newer", &newer_sha, Outcome::Success, false).await?;
    let staging = world.promotion(&newer, "staging").await?;
    let older = world.publish_test("older", &older_sha, Outcome::Success, false).await?;
    let held = world
        .wait_for(EventType::PromotionHeld, 1, |e| {
            e.context.chain_id.as_deref() == Some(older.as_str())
        })
        .await?;
    let reason = held[0].subject.content["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("is older than") && reason.contains(&newer) && reason.contains("baton promote"),
        "{reason}"
    );
    assert_eq!(
        world.events(EventType::EnvironmentModified).await?.len(),
        1,
        "staging keeps the newer release"
    );
    let file: ReleaseFile =
        yaml_serde::from_str(&world.config_file("main", &format!("staging/{DIR}/{RELEASE_FILE}"))?)?;
    assert_eq!(file.release.release, newer);
    assert_eq!(file.promotion, staging.promotion);

    // An operator can still move staging back, explicitly, and it is recorded as theirs.
    let back = world
        .command(
            "promote",
            CommandRequest {
                actor: "alice".into(),
                release: Some(older.clone()),
                environment: Some("staging".into()),
                reason: Some("the newer one misbehaves".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(back.ok && back.config_commit.is_some(), "{back:?}");
    let moved = world.promotion(&older, "staging").await?;
    assert_eq!(moved.actor, "alice");
    world.stop().await
}

const MANUAL_PRODUCTION: &str = "\
environments:
  - name: production
    namespace: shop-production
    policy: manual
    approvals: {required: 1, users: [alice, bob]}
";

/// A world with one promoter replica that waits at most half a second for a busy environment,
/// and a release of `case` waiting for its approval into production.
async fn awaiting_approval(case: &str) -> Result<(World, String)> {
    let mut world = World::start_with(MANUAL_PRODUCTION, 0, Duration::from_secs(30), None).await?;
    world.lock_wait = Duration::from_millis(500);
    world.start_replica().await?;
    let release = world.tests_passed(case).await?;
    world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;
    Ok((world, release))
}

/// The final approval arrives while the promotion cannot be made; the vote is answered and
/// recorded, and the promotion is carried out by itself once it can, exactly once.
async fn approved_then_carried_out(world: &World, release: &str) -> Result<()> {
    let approved = world.command("approve", vote("alice", release)).await?;
    assert!(
        approved.ok && approved.message.contains("retries it by itself"),
        "{approved:?}"
    );
    world
        .wait_for(EventType::ApprovalClosed, 1, |e| {
            e.subject.content["status"] == "approved"
        })
        .await?;
    assert!(
        world.events(EventType::EnvironmentModified).await?.is_empty(),
        "not yet"
    );
    let again = world.command("approve", vote("bob", release)).await?;
    assert!(!again.ok && again.message.contains("closed"), "{again:?}");
    Ok(())
}

/// Then: the promotion arrives once, at a commit of its own that production's release file
/// names.
async fn promoted_once(world: &World, release: &str) -> Result<()> {
    let promotion = world.promotion(release, "production").await?;
    let file: ReleaseFile = yaml_serde::from_str(
        &world.config_file(&promotion.config_commit, &format!("production/{DIR}/{RELEASE_FILE}"))?,
    )?;
    assert_eq!(file.release.release, release);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        world.events(EventType::EnvironmentModified).await?.len(),
        1,
        "exactly once"
    );
    assert_eq!(world.config(&["rev-list", "--count", "main"])?, "3", "one commit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_meeting_a_busy_environment_is_carried_out_once_it_frees() -> Result<()> {
    let (world, release) = awaiting_approval("busy").await?;
    // Another replica holds production past the promoter's lock_wait.
    let topology = world.nats.topology().await?;
    let other = baton_kit::lease::Locks::new(&topology, "other-replica", Duration::from_secs(60), Duration::ZERO);
    let held = other.acquire("env.production", "promote something else").await?;
    approved_then_carried_out(&world, &release).await?;
    held.release().await;
    promoted_once(&world, &release).await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_whose_push_fails_is_carried_out_once_the_config_repo_takes_it() -> Result<()> {
    let (world, release) = awaiting_approval("push-fails").await?;
    // The config repo's branch is locked (as by a stuck git process): every push fails.
    let lock = world.config_bare().join("refs/heads/main.lock");
    std::fs::write(&lock, "")?;
    approved_then_carried_out(&world, &release).await?;
    std::fs::remove_file(&lock)?;
    promoted_once(&world, &release).await?;
    world.stop().await
}

impl World {
    /// Replaces the config repo's people.yaml with `entries`.
    fn set_people(&self, entries: &[baton_tests::people::Entry]) -> Result<()> {
        self.push_config("people.yaml", &people_yaml(entries), "people")
    }

    /// The `check` of the last `baton-command.rejected` claiming `actor`.
    async fn rejected_check(&self, actor: &str) -> Result<String> {
        let rejected = self
            .wait_for(EventType::CommandRejected, 1, |e| e.subject.content["actor"] == actor)
            .await?;
        let last = rejected.last().context("one")?;
        Ok(last.subject.content["check"].as_str().unwrap_or_default().to_owned())
    }
}

fn everyone(extra: Vec<baton_tests::people::Entry>) -> Vec<baton_tests::people::Entry> {
    let mut entries: Vec<_> = ["alice", "bob", "erin", "mallory"]
        .into_iter()
        .map(|name| {
            let mut entry = Person::new(name).entry();
            if name == "erin" {
                entry.emails = vec!["ada@example.com".into()];
            }
            if name == "alice" {
                entry.chat = vec!["U-ALICE".into()];
            }
            entry
        })
        .collect();
    entries.extend(extra);
    entries
}

/// Spoofed commands, each refused with the check named and recorded as `baton-command.rejected`,
/// the release untouched: unsigned, an unknown key, bob's key claiming alice, a replayed nonce,
/// a stale issuedAt, a bot speaking through a chat id not the actor's, a body changed after it
/// was signed, and a key removed from people.yaml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_commands_are_refused_naming_the_check_and_recorded() -> Result<()> {
    use baton_schemas::commands::Verb;
    use baton_tests::people::{Entry, send_signed};
    let world = World::start(TWO_STAGES, 1).await?;
    let bot = Person::new("chatops");
    world.set_people(&everyone(vec![Entry {
        speaks_for: Some(vec!["*".into()]),
        ..bot.entry()
    }]))?;
    let release = world.tests_passed("spoofed").await?;
    let staging = world.promotion(&release, "staging").await?;
    world.deployer_reports(&staging, None).await?;
    world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;
    let approve = |actor: &str| vote(actor, &release);
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));

    // Unsigned.
    let body = serde_json::to_vec(&CommandRequest {
        issued_at: Some(chrono::Utc::now()),
        nonce: Some("n-1".into()),
        ..approve("alice")
    })?;
    let reply = send_signed(&world.client, Verb::Approve, body, None).await?;
    assert!(!reply.ok && reply.message.starts_with("unsigned"), "{reply:?}");
    assert_eq!(world.rejected_check("alice").await?, "unsigned");

    // A key people.yaml does not list: the refusal says how to add it.
    let stranger = Person::new("zed");
    let reply = stranger.send(&world.client, Verb::Approve, approve("zed")).await?;
    assert!(
        !reply.ok && reply.message.contains("unknown key") && reply.message.contains("people.yaml"),
        "{reply:?}"
    );
    assert_eq!(world.rejected_check("zed").await?, "unknown_key");

    // Bob's key, claiming alice.
    let reply = bob.send(&world.client, Verb::Approve, approve("alice")).await?;
    assert!(
        !reply.ok && reply.message.contains("signed with bob's key, but claims to be alice"),
        "{reply:?}"
    );

    // A stale issuedAt.
    let stale = CommandRequest {
        issued_at: Some(chrono::Utc::now() - chrono::Duration::minutes(10)),
        ..approve("alice")
    };
    let reply = alice.send(&world.client, Verb::Approve, stale).await?;
    assert!(!reply.ok && reply.message.starts_with("stale"), "{reply:?}");

    // The bot speaking for alice through a chat id that is not hers.
    let through_bob = CommandRequest {
        chat_id: Some("U-BOB".into()),
        ..approve("alice")
    };
    let (body, signature) = bot.sign(through_bob)?;
    let reply = send_signed(&world.client, Verb::Approve, body, Some(signature)).await?;
    assert!(
        !reply.ok && reply.message.contains("may not speak for alice"),
        "{reply:?}"
    );

    // A replayed command: the same bytes and signature twice (the first one counts).
    let (body, signature) = alice.sign(approve("alice"))?;
    let first = send_signed(&world.client, Verb::Approve, body.clone(), Some(signature.clone())).await?;
    assert!(first.ok, "{first:?}");
    let replayed = send_signed(&world.client, Verb::Approve, body, Some(signature)).await?;
    assert!(!replayed.ok && replayed.message.starts_with("replayed"), "{replayed:?}");
    assert_eq!(world.rejected_check("alice").await?, "replayed_nonce");

    // Bob's signature over a body changed after he signed it (another environment).
    let (body, signature) = bob.sign(approve("bob"))?;
    let mut forged: serde_json::Value = serde_json::from_slice(&body)?;
    forged["environment"] = "staging".into();
    let reply = send_signed(
        &world.client,
        Verb::Approve,
        serde_json::to_vec(&forged)?,
        Some(signature),
    )
    .await?;
    assert!(!reply.ok && reply.message.starts_with("bad signature"), "{reply:?}");
    assert_eq!(world.rejected_check("bob").await?, "bad_signature");

    // Every refusal recorded, the release untouched: only alice's one vote counted, recorded
    // with who she was proven to be.
    let updated = world.events(EventType::ApprovalUpdated).await?;
    assert_eq!(updated.len(), 1, "one vote: {updated:?}");
    let accepted = world.events(EventType::CommandAccepted).await?;
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let content = &accepted[0].subject.content;
    assert_eq!(content["person"], "alice");
    assert_eq!(content["channel"], "cli");
    assert_eq!(content["keyFingerprint"], alice.signer().fingerprint().as_str());
    assert!(world.events(EventType::ApprovalClosed).await?.is_empty());
    let rejected = world.events(EventType::CommandRejected).await?;
    let checks: Vec<&str> = rejected
        .iter()
        .filter_map(|e| e.subject.content["check"].as_str())
        .collect();
    for check in [
        "unsigned",
        "unknown_key",
        "not_the_actor",
        "stale",
        "bot_may_not_speak",
        "replayed_nonce",
        "bad_signature",
    ] {
        assert!(checks.contains(&check), "{check} in {checks:?}");
    }

    // Bob's key removed from people.yaml: his next command is refused.
    world.set_people(
        &everyone(vec![])
            .into_iter()
            .filter(|e| e.name != "bob")
            .collect::<Vec<_>>(),
    )?;
    let reply = bob.send(&world.client, Verb::Approve, approve("bob")).await?;
    assert!(!reply.ok && reply.message.contains("unknown key"), "{reply:?}");
    assert!(
        world.events(EventType::ApprovalClosed).await?.is_empty(),
        "still one approval of two"
    );
    world.stop().await
}

/// Who may do what: a rollback by someone not granted it is refused; self-approval is judged
/// against every person behind the release, through any of their e-mail addresses, as a
/// committer and as the pusher; whoever asked for a break-glass promotion cannot approve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_authorised_per_verb_and_nobody_approves_their_own_change() -> Result<()> {
    use baton_schemas::payloads::Person as GitPerson;
    let world = World::start(TWO_STAGES, 1).await?;
    let mut people = everyone(vec![]);
    for entry in &mut people {
        match entry.name.as_str() {
            // Bob commits as ada@example.com too (another of his addresses, in another case).
            "bob" => entry.emails = vec!["bob@corp.example".into(), "ADA@example.com".into()],
            "erin" => entry.emails = vec!["erin@corp.example".into()],
            "alice" => entry.logins = vec!["alice-gh".into()],
            _ => {}
        }
    }
    world.set_people(&people)?;
    // An earlier commit of the change, committed (not authored) by erin.
    let app = world.app_repo();
    std::fs::write(app.join("deploy/configmap.yaml"), configmap("committed-by-erin"))?;
    let committed = std::process::Command::new("git")
        .args(["commit", "-qam", "committed by erin"])
        .current_dir(&app)
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Erin")
        .env("GIT_COMMITTER_EMAIL", "Erin@Corp.Example")
        .status()?;
    anyhow::ensure!(committed.success(), "git commit: {committed}");
    let sha = world.commit_app("pushed-by-alice")?;
    let release = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"pushed-by-alice").to_string();
    Verdict {
        pushed_by: Some(GitPerson {
            name: Some("Alice".into()),
            email: None,
            username: Some("alice-gh".into()),
        }),
        ..Verdict::shop(&sha, &world.app_repo(), "pushed-by-alice", &release)
    }
    .publish(&world.js)
    .await?;
    let staging = world.promotion(&release, "staging").await?;
    world.deployer_reports(&staging, None).await?;
    world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;

    // Bob authored it under another address; alice pushed it; erin committed a commit of it.
    for who in ["bob", "alice", "erin"] {
        let refused = world.command("approve", vote(who, &release)).await?;
        assert!(
            !refused.ok && refused.message.contains("authored or pushed"),
            "{who}: {refused:?}"
        );
    }
    // Mallory may not roll production back (only its approvers may).
    let rollback = world
        .command(
            "rollback",
            CommandRequest {
                actor: "mallory".into(),
                app: Some(APP.into()),
                environment: Some("production".into()),
                ..Default::default()
            },
        )
        .await?;
    assert!(
        !rollback.ok
            && rollback.message.contains("mallory may not rollback")
            && rollback.message.contains("grants.rollback"),
        "{rollback:?}"
    );
    assert!(
        world.events(EventType::ApprovalUpdated).await?.is_empty(),
        "no vote counted"
    );
    world.stop().await
}

/// A command signed by OpenSSH's own `ssh-keygen -Y sign` is accepted: an independent signer
/// interoperates with the promoter's verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_signed_by_ssh_keygen_is_accepted() -> Result<()> {
    use baton_schemas::commands::Verb;
    use baton_tests::people::{Entry, send_signed};
    let world = World::start(STAGING_AUTO, 1).await?;
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("olivia");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "olivia@laptop", "-f"])
        .arg(&key)
        .status()
        .context("ssh-keygen (Debian openssh-client; `just setup` installs it)")?;
    anyhow::ensure!(made.success(), "ssh-keygen: {made}");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    world.set_people(&everyone(vec![Entry {
        name: "olivia".into(),
        key: public.trim().to_owned(),
        ..Entry::default()
    }]))?;
    let release = world.tests_passed("olivia").await?;
    world.promotion(&release, "staging").await?;
    let request = CommandRequest {
        actor: "olivia".into(),
        app: Some(APP.into()),
        environment: Some("staging".into()),
        reason: Some("hold it".into()),
        issued_at: Some(chrono::Utc::now()),
        nonce: Some(uuid::Uuid::new_v4().to_string()),
        ..Default::default()
    };
    let body = serde_json::to_vec(&request)?;
    let file = keys.path().join("command.json");
    std::fs::write(&file, &body)?;
    let signed = std::process::Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "baton-command", "-f"])
        .arg(&key)
        .arg(&file)
        .output()?;
    anyhow::ensure!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let armored = std::fs::read_to_string(keys.path().join("command.json.sig"))?;
    let header: String = armored.lines().filter(|l| !l.starts_with("-----")).collect();
    let reply = send_signed(&world.client, Verb::Pin, body, Some(header)).await?;
    assert!(reply.ok, "{reply:?}");
    world.stop().await
}

/// An invalid people.yaml is refused with the field at fault and recorded; the last valid one
/// stays in force, so the people it lists still act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_people_file_is_refused_and_the_last_valid_one_stays() -> Result<()> {
    let world = World::start(STAGING_AUTO, 1).await?;
    let release = world.tests_passed("people").await?;
    world.promotion(&release, "staging").await?;
    let pin = |reason: &str| CommandRequest {
        actor: "alice".into(),
        app: Some(APP.into()),
        environment: Some("staging".into()),
        reason: Some(reason.into()),
        ..Default::default()
    };
    // A command while the file is valid: it becomes the last valid one.
    assert!(world.command("pin", pin("first")).await?.ok);
    world.push_config(
        "people.yaml",
        "people:\n  alice:\n    keys: ['not a key']\n",
        "a broken people.yaml",
    )?;
    let unpinned = world.command("unpin", pin("second")).await?;
    assert!(unpinned.ok, "alice's key is still in force: {unpinned:?}");
    let rejected = world
        .wait_for(EventType::PolicyRejected, 1, |e| {
            e.subject.content["file"] == "people.yaml"
        })
        .await?;
    assert_eq!(rejected[0].subject.content["field"], "people.alice.keys[0]");
    world.stop().await
}

/// The `evidence` an environment of the evidence suite requires: a signature by `builder`,
/// provenance from Baton's builder and a passing test attestation by `tester`.
const EVIDENCE: &str = "    evidence:
      signed_by: [builder]
      provenance:
        builders: [https://baton.dev/builder/v1]
      tests:
        signed_by: [tester]
";

/// `environments.yaml` for the evidence suite: one automatic environment that requires
/// [`EVIDENCE`].
fn evidenced_staging() -> String {
    format!("environments:\n  - name: staging\n    namespace: shop-staging\n    policy: auto\n{EVIDENCE}")
}

/// How a case's evidence differs from what the builder and tester attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attached {
    /// Signature, provenance and a passing test result, as Baton writes them.
    Whole,
    /// Attestations, but no signature.
    NoSignature,
    /// Everything signed by a key the config repo does not list.
    OtherKey,
    /// The signed payload changed after signing.
    TamperedSignature,
    /// The provenance statement changed after sealing.
    TamperedAttestation,
    /// Provenance of another commit.
    OtherCommit,
    /// Provenance by a builder the environment does not list.
    UnknownBuilder,
    /// The test result is FAILED.
    FailingTests,
}

/// A world with a registry, the builder's, the tester's and a stranger's keys, and the
/// builder's and tester's public keys in the config repo.
struct Evidenced {
    world: World,
    registry: baton_tests::registry::RegistryServer,
    builder: baton_tests::keys::SigningKeyFile,
    tester: baton_tests::keys::SigningKeyFile,
    stranger: baton_tests::keys::SigningKeyFile,
}

impl Evidenced {
    async fn start() -> Result<Self> {
        Self::start_with(&evidenced_staging()).await
    }

    /// An evidenced world whose config repo's `environments.yaml` is `environments`.
    async fn start_with(environments: &str) -> Result<Self> {
        let registry = baton_tests::registry::RegistryServer::start()?;
        let mut world = World::start(environments, 0).await?;
        world.registry = Some(registry.address());
        let (builder, tester, stranger) = (
            baton_tests::keys::SigningKeyFile::generate()?,
            baton_tests::keys::SigningKeyFile::generate()?,
            baton_tests::keys::SigningKeyFile::generate()?,
        );
        let this = Self {
            world,
            registry,
            builder,
            tester,
            stranger,
        };
        this.put_key("builder", this.builder.public_pem(), "keys: builder")?;
        this.put_key("tester", this.tester.public_pem(), "keys: tester")?;
        let mut this = this;
        this.world.start_replica().await?;
        Ok(this)
    }

    /// Commits `keys/<name>.pem` to the config repo, as a reviewed change would.
    fn put_key(&self, name: &str, pem: &str, message: &str) -> Result<()> {
        let edit = self.world.dir.path().join("config-edit");
        git(&edit, &["pull", "-q", "--rebase", "origin", "main"])?;
        std::fs::create_dir_all(edit.join("keys"))?;
        std::fs::write(edit.join(format!("keys/{name}.pem")), pem)?;
        git(&edit, &["add", "keys"])?;
        git(&edit, &["commit", "-qm", message])?;
        git(&edit, &["push", "-q", "origin", "main"])?;
        Ok(())
    }

    fn key(file: &baton_tests::keys::SigningKeyFile) -> Result<SigningKey> {
        Ok(SigningKey::from_pem_file(file.path())?)
    }

    /// A new app commit whose manifests run `baton/shop-<case>`, its image pushed to the
    /// registry (a real busybox image) with the evidence `attached`, and the tester's verdict
    /// naming it. Returns the release id and the image's digest.
    async fn release(&self, case: &str, attached: Attached) -> Result<(String, String)> {
        let repository = format!("baton/shop-{case}");
        let app = self.world.app_repo();
        std::fs::write(
            app.join("deploy/deployment.yaml"),
            DEPLOYMENT.replace("127.0.0.1:5000/baton/acme_shop:dev", &format!("{repository}:dev")),
        )?;
        let sha = self.world.commit_app(case)?;
        let digest = self.registry.push_busybox_base(&repository, "dev")?;
        self.attach(&repository, &digest, &sha, attached).await?;
        let release = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, case.as_bytes()).to_string();
        let address = self.registry.address();
        let verdict = Verdict {
            registry: &address,
            image_repository: &repository,
            ..Verdict::shop(&sha, &app, case, &release)
        };
        let mut event = verdict.event()?;
        let mut image = verdict.image();
        image.reference = format!("{address}/{repository}@{digest}");
        image.purl = image
            .purl
            .replace(&image.digest.replace(':', "%3A"), &digest.replace(':', "%3A"));
        image.digest = digest.clone();
        if let Some(data) = event.event.custom_data.as_mut() {
            data["image"] = serde_json::to_value(&image)?;
        }
        baton_kit::events::publish(&self.world.js, &event).await?;
        Ok((release, digest))
    }

    /// Attaches the evidence of `repository@digest`, built from `commit`, as `attached` says.
    async fn attach(&self, repository: &str, digest: &str, commit: &str, attached: Attached) -> Result<()> {
        let store = EvidenceStore::new(&self.registry.address(), true, None, None);
        let subject = Subject {
            name: format!("{}/{repository}", self.registry.address()),
            digest: digest.to_owned(),
        };
        let builder = Self::key(if attached == Attached::OtherKey {
            &self.stranger
        } else {
            &self.builder
        })?;
        let tester = Self::key(if attached == Attached::OtherKey {
            &self.stranger
        } else {
            &self.tester
        })?;
        if attached != Attached::NoSignature {
            let mut signature = sign_image(&builder, &subject);
            if attached == Attached::TamperedSignature {
                signature.payload = String::from_utf8(signature.payload)?
                    .replace(repository, "baton/elsewhere")
                    .into_bytes();
            }
            store.attach_signature(repository, &subject, &signature).await?;
        }
        let now = chrono::Utc::now();
        let build = BuildRecord {
            builder_id: if attached == Attached::UnknownBuilder {
                "https://ci.example.com/rogue".into()
            } else {
                "https://baton.dev/builder/v1".into()
            },
            repository: format!("file://{}", self.world.app_repo().display()),
            git_ref: "refs/heads/main".into(),
            commit: if attached == Attached::OtherCommit {
                "f".repeat(40)
            } else {
                commit.to_owned()
            },
            pipeline_digest: format!("sha256:{}", "0".repeat(64)),
            base_image: None,
            steps: vec![],
            run_id: format!("build-{commit}"),
            started: now,
            finished: now,
        };
        let mut sealed = seal(&builder, &provenance(&subject, &build));
        if attached == Attached::TamperedAttestation {
            // Another statement's payload under this one's signature.
            let other = BuildRecord {
                git_ref: "refs/heads/evil".into(),
                ..build.clone()
            };
            sealed.payload = seal(&builder, &provenance(&subject, &other)).payload;
        }
        store
            .attach_attestation(repository, &subject, &sealed, SLSA_PROVENANCE_V1)
            .await?;
        let verdict = TestRecord {
            tester_id: "https://baton.dev/tester/v1".into(),
            result: if attached == Attached::FailingTests {
                TestOutcome::Failed
            } else {
                TestOutcome::Passed
            },
            configuration: vec![],
            passed_tests: vec!["checkout".into()],
            warned_tests: vec![],
            failed_tests: if attached == Attached::FailingTests {
                vec!["payment".into()]
            } else {
                vec![]
            },
            counts: Default::default(),
            run_id: format!("test-{commit}"),
        };
        store
            .attach_attestation(
                repository,
                &subject,
                &seal(&tester, &test_result(&subject, &verdict)),
                TEST_RESULT_V0_1,
            )
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fully_evidenced_release_promotes_and_its_release_file_records_the_evidence() -> Result<()> {
    let e = Evidenced::start().await?;
    let (release, digest) = e.release("whole", Attached::Whole).await?;
    let promotion = e.world.promotion(&release, "staging").await?;
    assert_eq!(promotion.release.image.digest, digest);
    let file: ReleaseFile =
        yaml_serde::from_str(&e.world.config_file("main", &format!("staging/{DIR}/{RELEASE_FILE}"))?)?;
    let evidence = file.evidence.context("the release file records the evidence")?;
    let signature = evidence.signature.context("the signature")?;
    assert_eq!(signature.key, "builder");
    assert!(signature.manifest.starts_with("sha256:"), "{signature:?}");
    let kinds: Vec<(&str, &str)> = evidence
        .attestations
        .iter()
        .map(|a| (a.predicate_type.as_str(), a.key.as_str()))
        .collect();
    assert_eq!(kinds, [(SLSA_PROVENANCE_V1, "builder"), (TEST_RESULT_V0_1, "tester")]);
    assert!(evidence.attestations.iter().all(|a| a.manifest.starts_with("sha256:")));
    assert_eq!(
        promotion.evidence.as_ref().and_then(|e| e.signature.as_ref()),
        Some(&signature)
    );
    let message = e.world.config(&["log", "-1", "--format=%B", "main"])?;
    assert!(
        message.contains("Evidence: verified: signature by builder"),
        "{message}"
    );
    e.world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_valid_evidence_is_held_naming_the_check() -> Result<()> {
    let e = Evidenced::start().await?;
    let cases = [
        ("unsigned", Attached::NoSignature, "`signature`"),
        ("other-key", Attached::OtherKey, "`signature`"),
        ("tampered-sig", Attached::TamperedSignature, "`signature`"),
        ("tampered-att", Attached::TamperedAttestation, "`attestation.signature`"),
        ("other-commit", Attached::OtherCommit, "`provenance.commit`"),
        ("rogue-builder", Attached::UnknownBuilder, "`provenance.builder`"),
        ("failing", Attached::FailingTests, "`tests.result`"),
    ];
    for (case, attached, check) in cases {
        let (release, _) = e.release(case, attached).await?;
        let reason = e.world.held_reason(&release).await?;
        assert!(reason.contains(check), "{case}: {reason}");
        assert!(reason.contains("`staging` requires evidence"), "{case}: {reason}");
    }
    // The seed: environments.yaml, people.yaml and the two keys.
    e.world.assert_nothing_promoted_but(4).await?;
    e.world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_environment_asks_for_approval_only_of_a_release_with_valid_evidence() -> Result<()> {
    // One manual environment that requires [`EVIDENCE`].
    let e = Evidenced::start_with(&format!("{MANUAL_PRODUCTION}{EVIDENCE}")).await?;
    // An unsigned release is held before anyone is asked, the check named.
    let (unsigned, _) = e.release("unsigned", Attached::NoSignature).await?;
    let reason = e.world.held_reason(&unsigned).await?;
    assert!(reason.contains("`signature`"), "{reason}");
    assert!(reason.contains("`production` requires evidence"), "{reason}");
    // An operator's promote of it is refused with the reason, and asks nobody either.
    let promote = CommandRequest {
        actor: "bob".into(),
        release: Some(unsigned.clone()),
        environment: Some("production".into()),
        ..Default::default()
    };
    let refused = e.world.command("promote", promote).await?;
    assert!(!refused.ok && refused.message.contains("`signature`"), "{refused:?}");
    assert!(refused.approval.is_none(), "{refused:?}");
    let early = e.world.command("approve", vote("alice", &unsigned)).await?;
    assert!(!early.ok && early.message.contains("no approval request"), "{early:?}");

    // A release with valid evidence is asked for and, approved, promoted through the gate.
    let (good, _) = e.release("good", Attached::Whole).await?;
    let created = e.world.wait_for(EventType::ApprovalCreated, 1, |_| true).await?;
    let request: ApprovalData = created[0].custom_data_as()?;
    assert_eq!(
        (request.release.release.as_str(), request.environment.as_str()),
        (good.as_str(), "production")
    );
    let approved = e.world.command("approve", vote("alice", &good)).await?;
    assert!(approved.ok && approved.config_commit.is_some(), "{approved:?}");
    let promotion = e.world.promotion(&good, "production").await?;
    assert_eq!(
        promotion.evidence.and_then(|e| e.signature).map(|s| s.key).as_deref(),
        Some("builder")
    );
    // Nobody was ever asked about the unsigned release.
    let asked = e.world.events(EventType::ApprovalCreated).await?;
    assert_eq!(asked.len(), 1, "only the evidenced release was put to a vote");
    e.world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_promote_and_rollback_pass_the_gate_and_only_break_glass_skips_it() -> Result<()> {
    let e = Evidenced::start().await?;
    let (good, _) = e.release("good", Attached::Whole).await?;
    e.world.promotion(&good, "staging").await?;
    let (unsigned, _) = e.release("unsigned", Attached::NoSignature).await?;
    e.world.held_reason(&unsigned).await?;
    let promote = |breaking: bool| CommandRequest {
        actor: "alice".into(),
        release: Some(unsigned.clone()),
        environment: Some("staging".into()),
        break_glass: breaking,
        ..Default::default()
    };
    let refused = e.world.command("promote", promote(false)).await?;
    assert!(!refused.ok && refused.message.contains("`signature`"), "{refused:?}");

    let broken = e.world.command("promote", promote(true)).await?;
    assert!(broken.ok, "{broken:?}");
    let promotion = e.world.promotion(&unsigned, "staging").await?;
    assert!(promotion.break_glass);
    let file: ReleaseFile =
        yaml_serde::from_str(&e.world.config_file("main", &format!("staging/{DIR}/{RELEASE_FILE}"))?)?;
    let skipped = file
        .evidence
        .and_then(|e| e.skipped)
        .context("break-glass is recorded")?;
    assert!(skipped.contains("break-glass by alice"), "{skipped}");
    let message = e.world.config(&["log", "-1", "--format=%B", "main"])?;
    assert!(message.contains("Evidence: skipped (break-glass by alice"), "{message}");
    let accepted = e
        .world
        .wait_for(EventType::CommandAccepted, 1, |ev| {
            ev.subject.content["verb"] == "promote"
        })
        .await?;
    assert!(
        accepted
            .iter()
            .any(|ev| ev.custom_data.as_ref().is_some_and(|d| d["breakGlass"] == true)),
        "the accepted command records break-glass"
    );

    // A rollback from the unsigned release to the good one passes the gate; one back to the
    // unsigned release is held like a promotion.
    let rollback = |release: &str, breaking: bool| CommandRequest {
        actor: "alice".into(),
        app: Some(APP.into()),
        release: Some(release.into()),
        environment: Some("staging".into()),
        break_glass: breaking,
        ..Default::default()
    };
    let back = e.world.command("rollback", rollback(&good, false)).await?;
    assert!(back.ok, "{back:?}");
    let held = e.world.command("rollback", rollback(&unsigned, false)).await?;
    assert!(!held.ok && held.message.contains("`signature`"), "{held:?}");
    e.world
        .wait_for(EventType::PromotionHeld, 2, |ev| {
            ev.context.chain_id.as_deref() == Some(unsigned.as_str())
        })
        .await?;
    let forced = e.world.command("rollback", rollback(&unsigned, true)).await?;
    assert!(forced.ok, "{forced:?}");
    e.world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_by_a_config_commit_takes_effect_at_the_next_check() -> Result<()> {
    let e = Evidenced::start().await?;
    // The builder's new key signs, but the config repo still lists the old one: held.
    let rotated = baton_tests::keys::SigningKeyFile::generate()?;
    let builder = Evidenced { builder: rotated, ..e };
    let (first, _) = builder.release("before", Attached::Whole).await?;
    let reason = builder.world.held_reason(&first).await?;
    assert!(reason.contains("`signature`"), "{reason}");
    // The rotation is a commit; the next release signed with the new key goes through.
    builder.put_key("builder", builder.builder.public_pem(), "keys: rotate builder")?;
    let (second, _) = builder.release("after", Attached::Whole).await?;
    builder.world.promotion(&second, "staging").await?;
    // An invalid key file is refused naming it, and the last valid key stays in force.
    builder.put_key("builder", "not a key\n", "keys: break builder")?;
    let (third, _) = builder.release("invalid", Attached::Whole).await?;
    builder.world.promotion(&third, "staging").await?;
    let rejected = builder.world.wait_for(EventType::PolicyRejected, 1, |_| true).await?;
    assert_eq!(rejected[0].subject.content["file"], "keys/builder.pem");
    builder.world.stop().await
}
