//! The listener against a real nats-server: real HTTP requests with each git host's payloads
//! and correctly computed signatures, every bad input, duplicate deliveries, NATS outages,
//! a bounded fuzz run, and polling a bare repository pushed to with the `git` CLI.

use std::time::Duration;

use anyhow::{Context as _, Result};
use baton_listener::Application;
use baton_schemas::config::CommonSettings;
use baton_schemas::payloads::PushData;
use baton_schemas::{CdEvent, EventType};
use baton_tests::{NatsServer, app, events, eventually, eventually_every, git};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const GITHUB_PUSH: &str = include_str!("../../services/listener/src/providers/fixtures/github-push.json");
const GITHUB_PING: &str = include_str!("../../services/listener/src/providers/fixtures/github-ping.json");
const GITHUB_TAG: &str = include_str!("../../services/listener/src/providers/fixtures/github-tag-push.json");
const GITHUB_DELETE: &str = include_str!("../../services/listener/src/providers/fixtures/github-delete.json");
const GITLAB_PUSH: &str = include_str!("../../services/listener/src/providers/fixtures/gitlab-push.json");
const GITEA_PUSH: &str = include_str!("../../services/listener/src/providers/fixtures/gitea-push.json");
const BITBUCKET_PUSH: &str = include_str!("../../services/listener/src/providers/fixtures/bitbucket-push.json");

const SECRET: &str = "It's a Secret to Everybody";

const CONFIG: &str = r#"
repositories:
  - name: Codertocat/Hello-World
    provider: github
    secret_env: GITHUB_SECRET
    branches: [main]
  - name: mike/diaspora
    provider: gitlab
    secret_env: GITLAB_TOKEN
    branches: [master]
  - name: gitea/webhooks
    provider: gitea
    secret_env: GITEA_SECRET
    branches: [develop]
  - name: BITBUCKET_REPO
    provider: bitbucket
    secret_env: BITBUCKET_SECRET
    branches: ["*"]
  - name: acme/scripted
    provider: generic
    secret_env: GENERIC_SECRET
    branches: [main]
    clone_url: https://git.internal/acme/scripted.git
  - name: acme/playground
    provider: generic
    insecure: true
    branches: [main]
"#;

fn bitbucket_repo() -> String {
    let v: Value = serde_json::from_str(BITBUCKET_PUSH).expect("fixture is JSON");
    v["repository"]["full_name"]
        .as_str()
        .expect("fixture names its repository")
        .to_owned()
}

struct TestApp {
    nats: NatsServer,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    js: async_nats::jetstream::Context,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), baton_kit::service::StartError>>,
}

fn env_lookup(name: &str) -> Option<String> {
    matches!(
        name,
        "GITHUB_SECRET" | "GITLAB_TOKEN" | "GITEA_SECRET" | "BITBUCKET_SECRET" | "GENERIC_SECRET"
    )
    .then(|| SECRET.to_owned())
}

impl TestApp {
    async fn start() -> Result<Self> {
        Self::start_with(&CONFIG.replace("BITBUCKET_REPO", &bitbucket_repo()), |_| {}).await
    }

    async fn start_with(config: &str, tweak: impl FnOnce(&mut CommonSettings)) -> Result<Self> {
        // reqwest's TLS (compiled in for the chat-ops bot's https posts) needs the process's provider.
        baton_kit::tls::install_crypto_provider();
        let nats = NatsServer::start()?;
        let mut common = app::common(&nats.url());
        tweak(&mut common);
        let stop = CancellationToken::new();
        let listener = app::spawn::<Application>(common, yaml_serde::from_str(config)?, &env_lookup, &stop).await?;
        let client = async_nats::connect(nats.url()).await?;
        Ok(Self {
            nats,
            addr: listener.addr,
            http: reqwest::Client::new(),
            js: async_nats::jetstream::new(client),
            stop,
            task: listener.task,
        })
    }

    async fn post(&self, provider: &str, headers: &[(String, String)], body: &[u8]) -> Result<(u16, Value)> {
        let mut request = self
            .http
            .post(format!("http://{}/webhooks/{provider}", self.addr))
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// Every `change.merged` on the stream with its subject, decoded and validated.
    async fn pushes(&self) -> Result<Vec<(String, CdEvent)>> {
        events::with_subjects(&self.js, EventType::ChangeMerged).await
    }

    /// The pushes on the stream once there are at least `n`.
    async fn wait_for_pushes(&self, n: usize) -> Result<Vec<(String, CdEvent)>> {
        eventually(Duration::from_secs(30), &format!("{n} pushes"), async || {
            let pushes = self.pushes().await?;
            Ok(if pushes.len() >= n {
                Ok(pushes)
            } else {
                Err(format!("{} arrived", pushes.len()))
            })
        })
        .await
    }

    /// Asserts that /metrics shows every one of `lines`.
    async fn assert_metrics(&self, lines: &[&str]) -> Result<()> {
        let url = format!("http://{}/metrics", self.addr);
        let metrics = self.http.get(url).send().await?.text().await?;
        for line in lines {
            assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
        }
        Ok(())
    }

    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await???;
        Ok(())
    }
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn json_headers(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    h.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    h
}

fn github_headers(body: &[u8], event: &str, delivery: &str) -> Vec<(String, String)> {
    json_headers(&[
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", &format!("sha256={}", hmac_hex(body))),
    ])
}

/// Headers of a signed generic push.
fn generic_headers(body: &[u8], delivery: &str) -> Vec<(String, String)> {
    json_headers(&[
        ("X-Baton-Delivery", delivery),
        ("X-Baton-Signature", &format!("sha256={}", hmac_hex(body))),
    ])
}

/// A generic push body moving `git_ref` of acme/scripted to `sha`.
fn generic_push(git_ref: &str, sha: &str) -> String {
    json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "repository": {"full_name": "acme/scripted", "clone_url": "https://example.com/acme/scripted.git"},
        "head_commit": {"id": sha, "message": "scripted", "author": {"name": "CI"}}
    })
    .to_string()
}

fn data(event: &CdEvent) -> PushData {
    event.custom_data_as().expect("customData is a PushData")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_github_push_becomes_one_change_merged() -> Result<()> {
    let app = TestApp::start().await?;
    let body = GITHUB_PUSH.as_bytes();
    let (status, answer) = app.post("github", &github_headers(body, "push", "d-1"), body).await?;
    assert_eq!(status, 202, "{answer}");
    let pushes = app.wait_for_pushes(1).await?;
    assert_eq!(pushes.len(), 1);
    let (subject, event) = &pushes[0];
    let fixture: Value = serde_json::from_str(GITHUB_PUSH)?;
    assert_eq!(subject, "baton.events.Codertocat_Hello-World.change.merged");
    assert_eq!(event.context.ty, "dev.cdevents.change.merged.0.3.0");
    assert_eq!(event.context.id, "github:d-1:refs/heads/main");
    assert_eq!(event.subject.id, fixture["after"].as_str().unwrap());
    let release = event.context.chain_id.clone().context("a release id starts here")?;
    assert_eq!(answer["accepted"][0]["release"], release.as_str());
    let d = data(event);
    assert_eq!(d.app, "Codertocat/Hello-World");
    assert_eq!(d.git_ref, "refs/heads/main");
    assert_eq!(d.branch.as_deref(), Some("main"));
    assert_eq!(d.before, fixture["before"].as_str().unwrap());
    assert_eq!(
        d.repository.clone_url,
        fixture["repository"]["clone_url"].as_str().unwrap()
    );
    assert_eq!(d.head_commit.id, fixture["head_commit"]["id"].as_str().unwrap());
    assert_eq!(
        d.head_commit.author.name.as_deref(),
        fixture["head_commit"]["author"]["name"].as_str()
    );
    assert_eq!(
        d.head_commit.message,
        fixture["head_commit"]["message"].as_str().unwrap()
    );
    assert_eq!(d.commits.len(), fixture["commits"].as_array().unwrap().len());
    assert_eq!(
        d.pusher.as_ref().and_then(|p| p.name.as_deref()),
        fixture["pusher"]["name"].as_str()
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_gitea_bitbucket_and_generic_pushes_are_recorded() -> Result<()> {
    let app = TestApp::start().await?;

    let body = GITLAB_PUSH.as_bytes();
    let headers = json_headers(&[
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Token", SECRET),
        ("X-Gitlab-Event-UUID", "gl-1"),
    ]);
    let (status, answer) = app.post("gitlab", &headers, body).await?;
    assert_eq!(status, 202, "{answer}");

    let body = GITEA_PUSH.as_bytes();
    let headers = json_headers(&[
        ("X-Gitea-Event", "push"),
        ("X-Gitea-Delivery", "gt-1"),
        ("X-Gitea-Signature", &hmac_hex(body)),
    ]);
    let (status, answer) = app.post("gitea", &headers, body).await?;
    assert_eq!(status, 202, "{answer}");

    let body = BITBUCKET_PUSH.as_bytes();
    let headers = json_headers(&[
        ("X-Event-Key", "repo:push"),
        ("X-Request-UUID", "bb-1"),
        ("X-Hub-Signature", &format!("sha256={}", hmac_hex(body))),
    ]);
    let (status, answer) = app.post("bitbucket", &headers, body).await?;
    assert_eq!(status, 202, "{answer}");

    let generic = generic_push("refs/heads/main", "1111111111111111111111111111111111111111");
    let headers = generic_headers(generic.as_bytes(), "gen-1");
    let (status, answer) = app.post("generic", &headers, generic.as_bytes()).await?;
    assert_eq!(status, 202, "{answer}");

    let bitbucket_changes = answer_count(&app).await?;
    let pushes = app.wait_for_pushes(3 + bitbucket_changes).await?;
    let by_provider = |p: &str| {
        pushes
            .iter()
            .filter(|(_, e)| data(e).provider == p)
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>()
    };

    let gitlab = &by_provider("gitlab")[0];
    let fixture: Value = serde_json::from_str(GITLAB_PUSH)?;
    assert_eq!(gitlab.subject.id, fixture["after"].as_str().unwrap());
    assert_eq!(
        data(gitlab).repository.clone_url,
        fixture["project"]["git_http_url"].as_str().unwrap()
    );
    assert_eq!(data(gitlab).commits.len(), fixture["commits"].as_array().unwrap().len());
    assert_eq!(data(gitlab).git_ref, fixture["ref"].as_str().unwrap());
    assert!(
        data(gitlab).head_commit.author.name.is_some(),
        "the head commit's author is carried"
    );
    assert!(gitlab.context.chain_id.is_some());

    let gitea = &by_provider("gitea")[0];
    let fixture: Value = serde_json::from_str(GITEA_PUSH)?;
    assert_eq!(gitea.subject.id, fixture["after"].as_str().unwrap());
    assert_eq!(data(gitea).repository.full_name, "gitea/webhooks");
    assert_eq!(data(gitea).git_ref, fixture["ref"].as_str().unwrap());
    assert_eq!(
        data(gitea).repository.clone_url,
        fixture["repository"]["clone_url"].as_str().unwrap()
    );
    assert!(
        data(gitea).head_commit.author.name.is_some(),
        "the head commit's author is carried"
    );

    let bitbucket = by_provider("bitbucket");
    assert_eq!(bitbucket.len(), bitbucket_changes);
    assert!(bitbucket.iter().all(|e| data(e).app == bitbucket_repo()));

    let scripted = &by_provider("generic")[0];
    assert_eq!(scripted.subject.id, "1111111111111111111111111111111111111111");
    assert_eq!(
        data(scripted).repository.clone_url,
        "https://git.internal/acme/scripted.git",
        "clone_url override wins"
    );
    assert_eq!(
        pushes
            .iter()
            .map(|(_, e)| e.context.chain_id.clone())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        pushes.len(),
        "one release per push"
    );
    app.stop().await
}

/// How many branch/tag changes of the Bitbucket fixture start a release (not deletions).
async fn answer_count(_app: &TestApp) -> Result<usize> {
    let v: Value = serde_json::from_str(BITBUCKET_PUSH)?;
    Ok(v["push"]["changes"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|c| !c["new"].is_null()).count()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_twice_is_one_event() -> Result<()> {
    let app = TestApp::start().await?;
    let body = GITHUB_PUSH.as_bytes();
    let (s1, a1) = app.post("github", &github_headers(body, "push", "again"), body).await?;
    let (s2, a2) = app.post("github", &github_headers(body, "push", "again"), body).await?;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a1["accepted"][0]["duplicate"], false);
    assert_eq!(a2["accepted"][0]["duplicate"], true);
    assert_eq!(
        a1["accepted"][0]["release"], a2["accepted"][0]["release"],
        "the redelivery reports the same release"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.pushes().await?.len(), 1);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_replayed_under_a_new_delivery_id_starts_no_second_release() -> Result<()> {
    let app = TestApp::start().await?;
    let body = GITHUB_PUSH.as_bytes();
    let (s1, first) = app.post("github", &github_headers(body, "push", "first"), body).await?;
    assert_eq!(s1, 202, "{first}");
    assert_eq!(first["accepted"][0]["already_released"], false, "{first}");
    let release = first["accepted"][0]["release"].clone();

    // The same signed body, captured and sent again under a delivery id of the sender's choice.
    let (s2, replay) = app
        .post("github", &github_headers(body, "push", "replay"), body)
        .await?;
    assert_eq!(s2, 202, "the host gets a 2xx so it does not retry forever: {replay}");
    let answer = &replay["accepted"][0];
    assert_eq!(
        answer["release"], release,
        "the answer names the first release: {replay}"
    );
    assert_eq!(answer["event"], "github:first:refs/heads/main", "{replay}");
    assert_eq!(answer["duplicate"], true, "{replay}");
    assert_eq!(answer["already_released"], true, "{replay}");
    let reason = answer["reason"].as_str().unwrap_or_default();
    let fixture: Value = serde_json::from_str(GITHUB_PUSH)?;
    let short = &fixture["after"].as_str().unwrap()[..7];
    assert!(
        reason.contains(&format!("commit {short} of refs/heads/main was released already"))
            && reason.contains(release.as_str().unwrap())
            && reason.contains("(delivery first)"),
        "{replay}"
    );

    // The first delivery redelivered is still a plain duplicate of its own release.
    let (s3, again) = app.post("github", &github_headers(body, "push", "first"), body).await?;
    assert_eq!(s3, 202, "{again}");
    assert_eq!(again["accepted"][0]["duplicate"], true, "{again}");
    assert_eq!(again["accepted"][0]["already_released"], false, "{again}");
    assert!(again["accepted"][0].get("reason").is_none(), "{again}");
    assert_eq!(again["accepted"][0]["release"], release);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let pushes = app.pushes().await?;
    assert_eq!(pushes.len(), 1, "one release of the commit");
    assert_eq!(pushes[0].1.context.chain_id.as_deref(), release.as_str());

    app.assert_metrics(&[
        "baton_webhook_requests_total{provider=\"github\",outcome=\"accepted\"} 1",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"already_released\"} 1",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"duplicate\"} 1",
    ])
    .await?;
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_commit_pushed_to_two_tracked_branches_is_a_release_on_each() -> Result<()> {
    let config = CONFIG.replace("BITBUCKET_REPO", &bitbucket_repo()).replace(
        "    branches: [main]\n    clone_url",
        "    branches: [main, \"release/*\"]\n    clone_url",
    );
    let app = TestApp::start_with(&config, |_| {}).await?;
    let sha = "3333333333333333333333333333333333333333";
    let mut releases = Vec::new();
    for (git_ref, delivery) in [("refs/heads/main", "m-1"), ("refs/heads/release/1.x", "r-1")] {
        let body = generic_push(git_ref, sha);
        let (status, answer) = app
            .post("generic", &generic_headers(body.as_bytes(), delivery), body.as_bytes())
            .await?;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["accepted"][0]["already_released"], false, "{answer}");
        releases.push(answer["accepted"][0]["release"].clone());
    }
    assert_ne!(releases[0], releases[1], "each branch releases the commit");
    // A replay on one branch is refused; the other branch's release is not what it names.
    let body = generic_push("refs/heads/release/1.x", sha);
    let (status, answer) = app
        .post("generic", &generic_headers(body.as_bytes(), "r-2"), body.as_bytes())
        .await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"][0]["already_released"], true, "{answer}");
    assert_eq!(answer["accepted"][0]["release"], releases[1], "{answer}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let pushes = app.pushes().await?;
    assert_eq!(
        pushes.iter().map(|(_, e)| data(e).git_ref).collect::<Vec<_>>(),
        vec!["refs/heads/main", "refs/heads/release/1.x"]
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_unpublished_is_released_by_the_next_push_of_its_commit() -> Result<()> {
    let app = TestApp::start().await?;
    let sha = "4444444444444444444444444444444444444444";
    // What a push leaves when JetStream refused its event after the commit was claimed.
    let first_event = baton_listener::push::event_id("generic", "lost", "refs/heads/main");
    let unfinished = baton_listener::push::CommitRecord {
        release: baton_listener::push::release_id(&first_event),
        event: first_event.clone(),
        delivery: "lost".into(),
        provider: "generic".into(),
        git_ref: "refs/heads/main".into(),
        sha: sha.into(),
        at: chrono::Utc::now(),
        published: false,
    };
    let state = app.js.get_key_value("baton-state").await?;
    let key = baton_listener::push::commit_key("acme/scripted", "refs/heads/main", sha);
    state.create(&key, serde_json::to_vec(&unfinished)?.into()).await?;

    let body = generic_push("refs/heads/main", sha);
    let (status, answer) = app
        .post("generic", &generic_headers(body.as_bytes(), "next"), body.as_bytes())
        .await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["accepted"][0]["release"],
        unfinished.release.as_str(),
        "{answer}"
    );
    assert_eq!(answer["accepted"][0]["already_released"], false, "{answer}");
    let pushes = app.wait_for_pushes(1).await?;
    assert_eq!(pushes[0].1.context.id, first_event, "published under the claim's id");

    // Now it is released: a further push of the commit is not.
    let (_, answer) = app
        .post("generic", &generic_headers(body.as_bytes(), "later"), body.as_bytes())
        .await?;
    assert_eq!(answer["accepted"][0]["already_released"], true, "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.pushes().await?.len(), 1);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_clear_reason_and_no_event() -> Result<()> {
    let app = TestApp::start().await?;
    let body = GITHUB_PUSH.as_bytes();
    let error = |v: &Value| v["error"].as_str().unwrap_or_default().to_owned();

    // Missing and wrong signatures: 401 naming the header.
    let unsigned = json_headers(&[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "u-1")]);
    let (status, answer) = app.post("github", &unsigned, body).await?;
    assert_eq!(status, 401);
    assert!(error(&answer).contains("X-Hub-Signature-256"), "{answer}");
    let mut wrong = unsigned.clone();
    wrong.push(("X-Hub-Signature-256".into(), format!("sha256={}", "0".repeat(64))));
    let (status, answer) = app.post("github", &wrong, body).await?;
    assert_eq!(status, 401);
    assert!(error(&answer).contains("X-Hub-Signature-256"), "{answer}");
    let headers = json_headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "guess")]);
    let (status, answer) = app.post("gitlab", &headers, GITLAB_PUSH.as_bytes()).await?;
    assert_eq!(status, 401);
    assert!(error(&answer).contains("X-Gitlab-Token"), "{answer}");
    assert!(!answer.to_string().contains(SECRET));

    // Unknown repository and provider: 404.
    let other = GITHUB_PUSH.replace("Codertocat/Hello-World", "someone/else");
    let (status, answer) = app
        .post(
            "github",
            &github_headers(other.as_bytes(), "push", "x"),
            other.as_bytes(),
        )
        .await?;
    assert_eq!(status, 404);
    assert!(error(&answer).contains("someone/else"), "{answer}");
    let (status, answer) = app.post("sourceforge", &json_headers(&[]), b"{}").await?;
    assert_eq!(status, 404);
    assert!(error(&answer).contains("/webhooks/github"), "{answer}");

    // Unsupported event, deletion, untracked branch: 202 "ignored".
    let (status, answer) = app.post("github", &github_headers(body, "issues", "i-1"), body).await?;
    assert_eq!(status, 202);
    assert!(
        answer["ignored"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("ignored:"),
        "{answer}"
    );
    let del = GITHUB_DELETE.as_bytes();
    let (status, answer) = app.post("github", &github_headers(del, "push", "del-1"), del).await?;
    assert_eq!(status, 202);
    assert!(
        answer["ignored"][0].as_str().unwrap_or_default().contains("deleted"),
        "{answer}"
    );
    let feature = GITHUB_PUSH.replace("refs/heads/main", "refs/heads/feature/x");
    let (status, answer) = app
        .post(
            "github",
            &github_headers(feature.as_bytes(), "push", "f-1"),
            feature.as_bytes(),
        )
        .await?;
    assert_eq!(status, 202);
    assert!(
        answer["ignored"][0]
            .as_str()
            .unwrap_or_default()
            .contains("not tracked"),
        "{answer}"
    );

    // A tag while the repository's tags do not trigger.
    let tag = GITHUB_TAG.as_bytes();
    let (status, answer) = app.post("github", &github_headers(tag, "push", "tag-1"), tag).await?;
    assert_eq!(status, 202);
    assert!(
        answer["ignored"][0]
            .as_str()
            .unwrap_or_default()
            .contains("tags do not start releases"),
        "{answer}"
    );

    // Malformed JSON, wrong content type, too large.
    let junk = b"{\"ref\": ";
    let (status, answer) = app.post("github", &github_headers(junk, "push", "j-1"), junk).await?;
    assert_eq!(status, 400, "{answer}");
    let mut text = github_headers(body, "push", "t-1");
    text[0] = ("Content-Type".into(), "text/plain".into());
    let (status, answer) = app.post("github", &text, body).await?;
    assert_eq!(status, 415);
    assert!(error(&answer).contains("application/json"), "{answer}");
    let huge = vec![b' '; 5 * 1024 * 1024 + 1];
    let (status, answer) = app.post("github", &github_headers(&huge, "push", "h-1"), &huge).await?;
    assert_eq!(status, 413);
    assert!(error(&answer).contains("max_body_bytes"), "{answer}");

    // A ping is answered 200.
    let ping = GITHUB_PING.as_bytes();
    let (status, _) = app.post("github", &github_headers(ping, "ping", "p-1"), ping).await?;
    assert_eq!(status, 200);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.pushes().await?.is_empty(), "no request above produced an event");

    // Operators see it all on /metrics.
    app.assert_metrics(&[
        "baton_webhook_requests_total{provider=\"github\",outcome=\"unauthorized\"} 2",
        "baton_webhook_requests_total{provider=\"gitlab\",outcome=\"unauthorized\"} 1",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"not_found\"} 1",
        "baton_webhook_requests_total{provider=\"unknown\",outcome=\"not_found\"} 1",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"ignored\"} 4",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"too_large\"} 1",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"unsupported_media_type\"} 1",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"bad_request\"} 1",
        "baton_webhook_requests_total{provider=\"github\",outcome=\"ping\"} 1",
        "baton_webhook_rejected_signatures_total{provider=\"github\",outcome=\"rejected\"} 2",
    ])
    .await?;
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_repository_accepts_unsigned_pushes() -> Result<()> {
    let app = TestApp::start().await?;
    let body = json!({
        "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000",
        "after": "2222222222222222222222222222222222222222",
        "repository": {"full_name": "acme/playground", "clone_url": "file:///tmp/playground.git"}
    })
    .to_string();
    let (status, answer) = app
        .post(
            "generic",
            &json_headers(&[("X-Baton-Delivery", "p-1")]),
            body.as_bytes(),
        )
        .await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(app.wait_for_pushes(1).await?.len(), 1);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_means_503_so_the_host_retries() -> Result<()> {
    let mut app = TestApp::start_with(&CONFIG.replace("BITBUCKET_REPO", &bitbucket_repo()), |_| {}).await?;
    tokio::task::block_in_place(|| app.nats.kill())?;
    let body = GITHUB_PUSH.as_bytes();
    let (status, answer) = app
        .post("github", &github_headers(body, "push", "down-1"), body)
        .await?;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap_or_default().contains("retry"),
        "{answer}"
    );
    let (status, _) = app.post("github", &json_headers(&[]), b"").await?;
    assert_ne!(status, 500);
    tokio::task::block_in_place(|| app.nats.start_again())?;
    // The host's retry succeeds once NATS is back.
    let retry = github_headers(body, "push", "down-1");
    eventually_every(
        Duration::from_millis(200),
        Duration::from_secs(30),
        "202 after NATS came back",
        async || {
            let (status, _) = app.post("github", &retry, body).await?;
            Ok(if status == 202 {
                Ok(())
            } else {
                Err(format!("{status}"))
            })
        },
    )
    .await?;
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_cause_a_5xx() -> Result<()> {
    use rand::{Rng, SeedableRng};
    let app = TestApp::start().await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xBA70);
    let providers = ["github", "gitlab", "gitea", "bitbucket", "generic", "x", ""];
    let header_names = [
        "Content-Type",
        "X-GitHub-Event",
        "X-Hub-Signature-256",
        "X-Gitlab-Token",
        "X-Gitlab-Event",
        "X-Gitea-Signature",
        "X-Event-Key",
        "X-Hub-Signature",
        "X-Baton-Signature",
    ];
    let seeds = [GITHUB_PUSH, GITLAB_PUSH, GITEA_PUSH, BITBUCKET_PUSH, GITHUB_PING];
    for i in 0..2_000 {
        let provider = providers[rng.random_range(0..providers.len())];
        let mut body: Vec<u8> = match rng.random_range(0..3) {
            0 => (0..rng.random_range(0..200)).map(|_| rng.random()).collect(),
            1 => seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec(),
            _ => {
                let mut b = seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec();
                for _ in 0..rng.random_range(1..20) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b
            }
        };
        if rng.random_bool(0.1) {
            body.truncate(rng.random_range(0..body.len().max(1)));
        }
        let mut headers = vec![];
        for name in header_names {
            if rng.random_bool(0.5) {
                let value = match rng.random_range(0..3) {
                    0 => "application/json".to_owned(),
                    1 => "push".to_owned(),
                    _ => format!("sha256={}", hmac_hex(&body)),
                };
                headers.push((name.to_owned(), value));
            }
        }
        let (status, answer) = app.post(provider, &headers, &body).await?;
        assert!(
            status < 500,
            "request {i} to /webhooks/{provider} got {status}: {answer}"
        );
    }
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_emits_one_event_per_new_head() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bare = dir.path().join("shop.git");
    let work = dir.path().join("work");
    git(
        dir.path(),
        &["init", "--bare", "--initial-branch=main", bare.to_str().unwrap()],
    )?;
    git(dir.path(), &["clone", bare.to_str().unwrap(), work.to_str().unwrap()])?;
    git(&work, &["symbolic-ref", "HEAD", "refs/heads/main"])?;
    std::fs::write(work.join("README"), "one\n")?;
    git(&work, &["add", "."])?;
    git(&work, &["commit", "-m", "first"])?;
    git(&work, &["push", "origin", "main"])?;
    let first = git(&work, &["rev-parse", "HEAD"])?;

    let config = format!(
        "repositories:\n  - name: acme/polled\n    branches: [main]\n    poll:\n      url: file://{}\n      interval: 200ms\n",
        bare.display()
    );
    let app = TestApp::start_with(&config, |_| {}).await?;
    let pushes = app.wait_for_pushes(1).await?;
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].1.subject.id, first);
    assert_eq!(data(&pushes[0].1).head_commit.message, "first\n");
    assert_eq!(data(&pushes[0].1).provider, "poll");

    std::fs::write(work.join("README"), "two\n")?;
    git(&work, &["commit", "-am", "second"])?;
    std::fs::write(work.join("README"), "three\n")?;
    git(&work, &["commit", "-am", "third"])?;
    git(&work, &["push", "origin", "main"])?;
    let third = git(&work, &["rev-parse", "HEAD"])?;
    let pushes = app.wait_for_pushes(2).await?;
    assert_eq!(pushes.len(), 2);
    let latest = data(&pushes[1].1);
    assert_eq!(latest.after, third);
    assert_eq!(latest.before, first);
    assert_eq!(
        latest.commits.iter().map(|c| c.message.trim()).collect::<Vec<_>>(),
        vec!["second", "third"]
    );
    assert_eq!(latest.head_commit.author.name.as_deref(), Some("Ada"));

    // Several more intervals pass: nothing new, nothing more.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(app.pushes().await?.len(), 2);

    // The branch is forced back to the first commit, released already: no release. The
    // poller remembers the move, so the next push is described from there.
    git(
        &work,
        &["push", "--force", "origin", &format!("{first}:refs/heads/main")],
    )?;
    let state = app.js.get_key_value("baton-state").await?;
    eventually(Duration::from_secs(30), "the poller saw main move back", async || {
        let mut keys = state.keys().await?;
        while let Some(key) = futures::StreamExt::next(&mut keys).await {
            let key = key?;
            if key.starts_with("poll.acme_polled.") {
                let seen = state.get(&key).await?.unwrap_or_default();
                return Ok(if seen == first.as_bytes() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&seen).into_owned())
                });
            }
        }
        Ok(Err("no poll state yet".into()))
    })
    .await?;
    assert_eq!(
        app.pushes().await?.len(),
        2,
        "moving back to a released commit starts no release"
    );

    git(&work, &["reset", "--hard", &first])?;
    std::fs::write(work.join("README"), "four\n")?;
    git(&work, &["commit", "-am", "fourth"])?;
    git(&work, &["push", "--force", "origin", "main"])?;
    let pushes = app.wait_for_pushes(3).await?;
    assert_eq!(pushes.len(), 3);
    assert_eq!(
        data(&pushes[2].1).before,
        first,
        "described from where main moved back to"
    );
    app.stop().await
}
