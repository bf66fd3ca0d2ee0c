//! The chat-ops bot against a real nats-server, a real promoter with a real config repo, and a
//! real local HTTP server playing Slack (its incoming webhook and `response_url`): signed slash
//! commands and button clicks travel chat → promoter → production; every bad request (bad
//! signature, replay, unknown user, unknown release, malformed form, random bytes) is refused
//! without a 5xx and without recording anything; approval requests are posted with their
//! buttons, and a chat outage delays the post while the release keeps moving.
//!
//! Requests are signed here with Slack's documented algorithm, computed independently of the
//! bot (HMAC-SHA256 over `v0:<timestamp>:<body>`).
//!
//! The promoter accepts only signed commands: the bot signs with its own key, listed in the
//! config repo's `people.yaml` as the bot `chatops` speaking for everyone, and finds who a
//! Slack user is in that same file. The spoofing cases (the bot speaking for a Slack user the
//! file does not give the actor, a bot key the file does not list) are refused by the promoter
//! and recorded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use baton_schemas::commands::{CommandRequest, Verb};
use baton_schemas::config::CommonSettings;
use baton_schemas::config::chatops::ChatopsSettings;
use baton_schemas::config::promoter::PromoterSettings;
use baton_schemas::release::PromotionData;
use baton_schemas::{CdEvent, EventType};
use baton_tests::people::{Entry, Person, people_yaml};
use baton_tests::verdict::Verdict;
use baton_tests::{NatsServer, app, deployment, eventually, git, promotion, repos};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const ALICE: &str = "U0ALICE";
const BOB: &str = "U0BOB";
/// The bot's name in `people.yaml` (its key derived from it).
const BOT: &str = "chatops";

/// What the fake Slack received, and whether its incoming webhook is "down".
#[derive(Default)]
struct Slack {
    down: AtomicBool,
    refused: AtomicUsize,
    messages: Mutex<Vec<Value>>,
    responses: Mutex<Vec<Value>>,
}

async fn incoming_webhook(State(slack): State<Arc<Slack>>, Json(message): Json<Value>) -> StatusCode {
    if slack.down.load(Ordering::SeqCst) {
        slack.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    slack.messages.lock().unwrap().push(message);
    StatusCode::OK
}

async fn response_url(State(slack): State<Arc<Slack>>, Json(message): Json<Value>) -> StatusCode {
    slack.responses.lock().unwrap().push(message);
    StatusCode::OK
}

/// A nats-server, a config repo, an app repo, a promoter, a fake Slack and the bot.
struct World {
    _nats: NatsServer,
    js: async_nats::jetstream::Context,
    dir: tempfile::TempDir,
    slack: Arc<Slack>,
    slack_url: String,
    bot: String,
    http: reqwest::Client,
    /// The common settings and the bot's own, for another bot ([`World::another_bot`]).
    common: CommonSettings,
    chatops: ChatopsSettings,
    stops: Vec<CancellationToken>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), baton_kit::service::StartError>>>,
}

impl World {
    async fn start(slack_down: bool) -> Result<Self> {
        Self::start_with(slack_down, ChatopsSettings::default().answer_within).await
    }

    async fn start_with(slack_down: bool, answer_within: Duration) -> Result<Self> {
        let nats = NatsServer::start()?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let config = repos::config_repo(root, "config-edit", repos::TWO_STAGES)?;
        std::fs::write(config.join("people.yaml"), people_yaml(&people(ALICE)))?;
        git(&config, &["add", "people.yaml"])?;
        git(&config, &["commit", "-qm", "people"])?;
        git(&config, &["push", "-q", "origin", "main"])?;
        repos::app_repo(
            &root.join("app"),
            &[
                (
                    ".baton.yaml",
                    "build:\n  steps: [{name: b, run: 'true'}]\nimage:\n  base: scratch\n  add: [{from: x, to: /x}]\nmanifests: deploy\n",
                ),
                (
                    "deploy/deployment.yaml",
                    &repos::shop_deployment("127.0.0.1:5000/baton/acme_shop:dev"),
                ),
            ],
        )?;

        // The fake Slack.
        let slack = Arc::new(Slack::default());
        slack.down.store(slack_down, Ordering::SeqCst);
        let router = axum::Router::new()
            .route("/services/T0/B0/token", axum::routing::post(incoming_webhook))
            .route("/commands/T0/1/response", axum::routing::post(response_url))
            .with_state(Arc::clone(&slack));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let slack_url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, router).await });

        let mut common = app::common(&nats.url());
        common.runner.backoff_initial = Duration::from_millis(50);
        common.runner.backoff_max = Duration::from_millis(300);
        common.runner.max_deliver = 1000;

        let mut promoter = PromoterSettings::default();
        promoter.config_repo.url = format!("file://{}", root.join("config.git").display());
        promoter.tick = Duration::from_millis(100);
        let promoter_stop = CancellationToken::new();
        let promoter =
            app::spawn::<baton_promoter::Application>(common.clone(), promoter, &|_| None, &promoter_stop).await?;

        let key = root.join("chatops-key");
        Person::new(BOT).write_private_key(&key)?;
        let mut chatops = ChatopsSettings {
            signing_secret_env: Some("SLACK_SIGNING_SECRET".into()),
            signing_key_file: Some(key),
            contact: "#platform-team".into(),
            incoming_webhook_url: Some(format!("{slack_url}/services/T0/B0/token")),
            answer_within,
            ..ChatopsSettings::default()
        };
        chatops.people.repository = format!("file://{}", root.join("config.git").display());
        // Longer than any test: a read of people.yaml stays in use, unless a Slack user is not
        // in it (then the bot looks again at once).
        chatops.people.refresh = Duration::from_secs(600);
        let bot_stop = CancellationToken::new();
        let bot =
            app::spawn::<baton_chatops::Application>(common.clone(), chatops.clone(), &slack_secret, &bot_stop).await?;

        Ok(Self {
            _nats: nats,
            js,
            dir,
            slack,
            slack_url,
            bot: format!("http://{}", bot.addr),
            http: reqwest::Client::new(),
            common,
            chatops,
            // The promoter first: `stop_promoter` stops it alone.
            stops: vec![promoter_stop, bot_stop],
            tasks: vec![promoter.task, bot.task],
        })
    }

    fn app_repo(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    /// Commits `people.yaml` listing `entries` to the config repo, over the promoter's commits.
    fn commit_people(&self, entries: &[Entry]) -> Result<()> {
        let config = self.dir.path().join("config-edit");
        git(&config, &["pull", "-q", "--rebase", "origin", "main"])?;
        std::fs::write(config.join("people.yaml"), people_yaml(entries))?;
        git(&config, &["commit", "-qam", "people"])?;
        git(&config, &["push", "-q", "origin", "main"])?;
        Ok(())
    }

    /// Another bot like the first, signing with `key`'s key and posting nothing; returns its
    /// URL. It stops with the world.
    async fn another_bot(&mut self, key: &Person) -> Result<String> {
        let path = self.dir.path().join(format!("{}-key", key.name));
        key.write_private_key(&path)?;
        let chatops = ChatopsSettings {
            signing_key_file: Some(path),
            incoming_webhook_url: None,
            ..self.chatops.clone()
        };
        let stop = CancellationToken::new();
        let bot = app::spawn::<baton_chatops::Application>(self.common.clone(), chatops, &slack_secret, &stop).await?;
        self.stops.push(stop);
        self.tasks.push(bot.task);
        Ok(format!("http://{}", bot.addr))
    }

    fn response_url(&self) -> String {
        format!("{}/commands/T0/1/response", self.slack_url)
    }

    /// A new app commit and the tester's success for it; returns the release id.
    async fn tests_passed(&self, case: &str) -> Result<String> {
        let app = self.app_repo();
        std::fs::write(app.join("deploy/note.txt"), case)?;
        git(&app, &["add", "-A"])?;
        git(&app, &["commit", "-qm", &format!("change {case}")])?;
        let sha = git(&app, &["rev-parse", "HEAD"])?;
        let release = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, case.as_bytes()).to_string();
        Verdict::shop(&sha, &app, case, &release).publish(&self.js).await?;
        Ok(release)
    }

    /// Every event of type `ty` so far, validated against its schema.
    async fn events(&self, ty: EventType) -> Result<Vec<CdEvent>> {
        baton_tests::events::of(&self.js, ty).await
    }

    /// Waits for `count` events of type `ty` matching `pred`.
    async fn wait_for(&self, ty: EventType, count: usize, pred: impl Fn(&CdEvent) -> bool) -> Result<Vec<CdEvent>> {
        baton_tests::events::wait_for(&self.js, ty, count, Duration::from_secs(30), pred).await
    }

    async fn promotion(&self, release: &str, env: &str) -> Result<PromotionData> {
        promotion::announced(&self.js, release, env, Duration::from_secs(30)).await
    }

    /// The deployer's report that `promotion` runs healthy.
    async fn deployed(&self, promotion: &PromotionData) -> Result<()> {
        deployment::publish(&self.js, promotion, None).await
    }

    /// A release that runs in staging and waits for production's approvals.
    async fn release_waiting_for_approval(&self, case: &str) -> Result<String> {
        let release = self.tests_passed(case).await?;
        let staging = self.promotion(&release, "staging").await?;
        self.deployed(&staging).await?;
        self.wait_for(EventType::ApprovalCreated, 1, |e| {
            e.context.chain_id.as_deref() == Some(release.as_str())
        })
        .await?;
        Ok(release)
    }

    /// POSTs `body` to the bot with the given headers.
    async fn post(&self, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<(u16, String)> {
        self.post_to(&self.bot, path, body, headers).await
    }

    /// POSTs `body` to the bot at `bot` with the given headers.
    async fn post_to(&self, bot: &str, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<(u16, String)> {
        let mut request = self
            .http
            .post(format!("{bot}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// POSTs `body` signed as Slack signs, at `timestamp`.
    async fn signed_at(&self, path: &str, body: &str, timestamp: i64) -> Result<(u16, String)> {
        self.signed_to(&self.bot, path, body, timestamp).await
    }

    /// POSTs `body` to the bot at `bot`, signed as Slack signs, at `timestamp`.
    async fn signed_to(&self, bot: &str, path: &str, body: &str, timestamp: i64) -> Result<(u16, String)> {
        let ts = timestamp.to_string();
        let signature = slack_signature(SECRET.as_bytes(), &ts, body.as_bytes());
        self.post_to(
            bot,
            path,
            body.as_bytes().to_vec(),
            &[("X-Slack-Request-Timestamp", ts), ("X-Slack-Signature", signature)],
        )
        .await
    }

    async fn signed(&self, path: &str, body: &str) -> Result<(u16, String)> {
        self.signed_at(path, body, chrono::Utc::now().timestamp()).await
    }

    /// A signed `/baton <text>` from `user`, answered as Slack JSON.
    async fn slash(&self, user: &str, text: &str) -> Result<Value> {
        self.slash_to(&self.bot, user, text).await
    }

    /// A signed `/baton <text>` from `user` to the bot at `bot`, answered as Slack JSON.
    async fn slash_to(&self, bot: &str, user: &str, text: &str) -> Result<Value> {
        let form = slash_form(user, text, &self.response_url());
        let (status, body) = self
            .signed_to(bot, "/slack/commands", &form, chrono::Utc::now().timestamp())
            .await?;
        anyhow::ensure!(status == 200, "{status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    async fn approvals_updated(&self) -> Result<usize> {
        Ok(self.events(EventType::ApprovalUpdated).await?.len())
    }

    /// Stops the promoter (started first); the bot keeps running.
    async fn stop_promoter(&mut self) -> Result<()> {
        self.stops.remove(0).cancel();
        tokio::time::timeout(Duration::from_secs(30), self.tasks.remove(0)).await???;
        Ok(())
    }

    /// Waits for the `n`th post to `response_url` (counting from 1).
    async fn response(&self, n: usize) -> Result<Value> {
        eventually(
            Duration::from_secs(20),
            &format!("post {n} to response_url"),
            async || {
                let responses = self.slack.responses.lock().unwrap();
                Ok(responses
                    .get(n - 1)
                    .cloned()
                    .ok_or_else(|| format!("{} posts", responses.len())))
            },
        )
        .await
    }

    async fn stop(self) -> Result<()> {
        for stop in &self.stops {
            stop.cancel();
        }
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        Ok(())
    }
}

fn slack_secret(name: &str) -> Option<String> {
    (name == "SLACK_SIGNING_SECRET").then(|| SECRET.to_owned())
}

/// `people.yaml`'s entries: alice (Slack user `alice_chat`), bob (`U0BOB`), erin (who authors
/// every app commit), and the bot, which may speak for everyone.
fn people(alice_chat: &str) -> Vec<Entry> {
    vec![
        Entry {
            chat: vec![alice_chat.into()],
            ..Person::new("alice").entry()
        },
        Entry {
            chat: vec![BOB.into()],
            ..Person::new("bob").entry()
        },
        Entry {
            emails: vec!["ada@example.com".into()],
            ..Person::new("erin").entry()
        },
        Entry {
            speaks_for: Some(vec!["*".into()]),
            ..Person::new(BOT).entry()
        },
    ]
}

/// Slack's algorithm, written out here independently of the bot.
fn slack_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn slash_form(user: &str, text: &str, response_url: &str) -> String {
    form(&[
        ("token", "deprecated-verification-token"),
        ("team_id", "T0"),
        ("channel_id", "C0"),
        ("user_id", user),
        ("user_name", &user.to_lowercase()),
        ("command", "/baton"),
        ("text", text),
        ("response_url", response_url),
        ("trigger_id", "1.2.3"),
    ])
}

fn button_form(user: &str, action: &str, release: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase()},
        "response_url": response_url,
        "actions": [{
            "type": "button",
            "action_id": action,
            "value": json!({"release": release, "environment": "production"}).to_string(),
        }],
    });
    form(&[("payload", &payload.to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_approval_and_a_button_click_promote_to_production() -> Result<()> {
    let world = World::start(false).await?;
    let release = world.release_waiting_for_approval("one").await?;

    // `status` reads what runs where from the promoter's state.
    let status = world.slash(ALICE, "status acme/shop").await?;
    assert_eq!(status["response_type"], "ephemeral");
    let text = status["text"].as_str().unwrap_or_default();
    assert!(text.contains("`staging`") && text.contains(&release), "{status}");

    // Alice approves with a slash command: recorded, announced in the channel.
    let first = world.slash(ALICE, &format!("approve {release} production")).await?;
    assert_eq!(first["response_type"], "in_channel", "{first}");
    let text = first["text"].as_str().unwrap_or_default();
    assert!(text.contains("1 of 2") && text.contains("alice"), "{first}");
    let updated = world.wait_for(EventType::ApprovalUpdated, 1, |_| true).await?;
    assert_eq!(
        updated[0].subject.content["responder"], "urn:baton:user:alice",
        "{:?}",
        updated[0].subject
    );
    assert!(
        world.events(EventType::EnvironmentModified).await?.len() == 1,
        "one approval is not the quorum"
    );

    // Bob clicks Approve on the message: the quorum, and production is promoted.
    let (status, body) = world
        .signed(
            "/slack/interactions",
            &button_form(BOB, "approve", &release, &world.response_url()),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body)?;
    assert_eq!(reply["response_type"], "in_channel", "{reply}");
    let production = world.promotion(&release, "production").await?;
    assert_eq!(production.namespace, "shop-production");
    assert!(reply["text"].as_str().unwrap_or_default().contains("bob"), "{reply}");
    let closed = world.wait_for(EventType::ApprovalClosed, 1, |_| true).await?;
    assert_eq!(closed[0].subject.content["status"], "approved");
    // Slack does not show a button click's HTTP answer: it was posted to response_url too.
    let posted = eventually(Duration::from_secs(10), "a post to response_url", async || {
        Ok(world
            .slack
            .responses
            .lock()
            .unwrap()
            .first()
            .cloned()
            .ok_or_else(|| String::from("nothing posted")))
    })
    .await?;
    assert_eq!(posted["text"], reply["text"]);
    assert_eq!(posted["replace_original"], false);
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_without_a_5xx_and_record_nothing() -> Result<()> {
    let world = World::start(false).await?;
    let release = world.release_waiting_for_approval("one").await?;
    let approve = slash_form(ALICE, &format!("approve {release} production"), &world.response_url());
    let now = chrono::Utc::now().timestamp();

    // Signed with another secret.
    let ts = now.to_string();
    let (status, body) = world
        .post(
            "/slack/commands",
            approve.clone().into_bytes(),
            &[
                ("X-Slack-Request-Timestamp", ts.clone()),
                (
                    "X-Slack-Signature",
                    slack_signature(b"not-the-secret", &ts, approve.as_bytes()),
                ),
            ],
        )
        .await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("X-Slack-Signature does not match"), "{body}");
    // A good signature over another body (the text was tampered with).
    let tampered = approve.replace("production", "staging");
    let (status, _) = world
        .post(
            "/slack/commands",
            tampered.into_bytes(),
            &[
                ("X-Slack-Request-Timestamp", ts.clone()),
                (
                    "X-Slack-Signature",
                    slack_signature(SECRET.as_bytes(), &ts, approve.as_bytes()),
                ),
            ],
        )
        .await?;
    assert_eq!(status, 401);
    // A correctly signed request from six minutes ago, and one from the future: replays.
    for skew in [-360, 360] {
        let (status, body) = world.signed_at("/slack/commands", &approve, now + skew).await?;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("replay"), "{body}");
    }
    // No signature headers at all.
    let (status, body) = world.post("/slack/commands", approve.clone().into_bytes(), &[]).await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("X-Slack-Request-Timestamp header is missing"), "{body}");
    let (status, _) = world
        .post(
            "/slack/interactions",
            button_form(ALICE, "approve", &release, "").into_bytes(),
            &[],
        )
        .await?;
    assert_eq!(status, 401);

    // A Slack user with no Baton identity: a polite refusal that says whom to ask.
    let stranger = world
        .slash("U0MALLORY", &format!("approve {release} production"))
        .await?;
    assert_eq!(stranger["response_type"], "ephemeral");
    let text = stranger["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("U0MALLORY") && text.contains("#platform-team"),
        "{stranger}"
    );
    let (status, body) = world
        .signed(
            "/slack/interactions",
            &button_form("U0MALLORY", "approve", &release, &world.response_url()),
        )
        .await?;
    assert_eq!(status, 200);
    assert!(body.contains("ephemeral") && body.contains("#platform-team"), "{body}");
    // A click's HTTP answer is not shown by Slack: the refusal is posted to response_url.
    let posted = world.response(1).await?;
    assert_eq!(posted["response_type"], "ephemeral");
    assert!(
        posted["text"].as_str().unwrap_or_default().contains("#platform-team"),
        "{posted}"
    );

    // An unknown release: the promoter's refusal, only to the requester.
    let unknown = world.slash(ALICE, "approve no-such-release production").await?;
    assert_eq!(unknown["response_type"], "ephemeral");
    assert!(
        unknown["text"].as_str().unwrap_or_default().contains("unknown release"),
        "{unknown}"
    );
    // A grammar mistake: the usage.
    let typo = world.slash(ALICE, "aprove it").await?;
    assert_eq!(typo["response_type"], "ephemeral");
    assert!(
        typo["text"]
            .as_str()
            .unwrap_or_default()
            .contains("/baton approve &lt;release&gt;"),
        "{typo}"
    );

    // Malformed forms, correctly signed: 400 saying what is expected.
    for (path, body, expect) in [
        ("/slack/commands", "text=approve+x", "user_id"),
        ("/slack/interactions", "nothing=here", "payload"),
        ("/slack/interactions", "payload=%7Bnot+json", "not JSON"),
        (
            "/slack/interactions",
            &form(&[("payload", r#"{"type":"block_actions","user":{"id":"U0ALICE"}}"#)]),
            "actions[0]",
        ),
        (
            "/slack/interactions",
            &form(&[("payload", r#"{"type":"view_submission","user":{"id":"U0ALICE"}}"#)]),
            "block_actions",
        ),
    ] {
        let (status, text) = world.signed(path, body).await?;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(text.contains(expect), "{path} {body}: {text}");
    }
    let (status, text) = world.signed("/slack/commands", "user_id=%FF%FE&text=%C3").await?;
    assert!(status == 200 || status == 400, "{status}: {text}");

    // Random bodies, signed and unsigned, to both endpoints: never a 5xx.
    let mut rng = rand::rng();
    for i in 0..200 {
        let len = rng.random_range(0..400);
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let path = if i % 2 == 0 {
            "/slack/commands"
        } else {
            "/slack/interactions"
        };
        let (status, text) = if i % 3 == 0 {
            world.post(path, body, &[]).await?
        } else {
            let ts = chrono::Utc::now().timestamp().to_string();
            let signature = slack_signature(SECRET.as_bytes(), &ts, &body);
            world
                .post(
                    path,
                    body,
                    &[("X-Slack-Request-Timestamp", ts), ("X-Slack-Signature", signature)],
                )
                .await?
        };
        assert!(status < 500, "{path}: {status} {text}");
    }
    // Random slash texts from a mapped user: answered, never a 5xx, nothing approved.
    let words = [
        "approve",
        "decline",
        "status",
        "rollback",
        "pin",
        "unpin",
        "help",
        "-",
        "x",
        "production",
        "%",
        "*",
        "🙂",
    ];
    for _ in 0..30 {
        let n = rng.random_range(0..6);
        let text: Vec<&str> = (0..n).map(|_| words[rng.random_range(0..words.len())]).collect();
        let reply = world.slash(BOB, &text.join(" ")).await?;
        assert!(reply["text"].is_string(), "{reply}");
    }

    // Nothing above was recorded as an approval (random texts name no real release).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.approvals_updated().await?, 0, "no vote was recorded");

    // The same approval, signed properly, is recorded: the refusals above were the requests' fault.
    let (status, body) = world.signed("/slack/commands", &approve).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("in_channel"), "{body}");
    world.wait_for(EventType::ApprovalUpdated, 1, |_| true).await?;

    // Operators see the refusals on /metrics.
    let metrics = world
        .http
        .get(format!("{}/metrics", world.bot))
        .send()
        .await?
        .text()
        .await?;
    for line in [
        "baton_chat_requests_total{endpoint=\"commands\",outcome=\"bad_signature\"}",
        "baton_chat_requests_total{endpoint=\"commands\",outcome=\"stale\"}",
        "baton_chat_requests_total{endpoint=\"interactions\",outcome=\"bad_request\"}",
        // U0MALLORY twice, and the user id that was not UTF-8.
        "baton_chat_unknown_users_total 3",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_outage_delays_the_approval_message_but_not_the_release() -> Result<()> {
    // Slack's incoming webhook answers 500 from the start.
    let world = World::start(true).await?;
    let release = world.release_waiting_for_approval("one").await?;

    // The bot keeps trying…
    eventually(Duration::from_secs(20), "the bot to retry the post", async || {
        let refused = world.slack.refused.load(Ordering::SeqCst);
        Ok(if refused >= 3 {
            Ok(())
        } else {
            Err(format!("{refused} posts refused"))
        })
    })
    .await?;
    // …while the release moves on: both approvals (through the chat endpoint, which does not
    // depend on the incoming webhook) and the production promotion.
    for user in [ALICE, BOB] {
        let reply = world.slash(user, &format!("approve {release} production")).await?;
        assert_eq!(reply["response_type"], "in_channel", "{reply}");
    }
    world.promotion(&release, "production").await?;
    assert!(
        world.slack.messages.lock().unwrap().is_empty(),
        "Slack was down the whole time"
    );

    // Slack recovers: the approval request arrives, with what is released and the buttons.
    world.slack.down.store(false, Ordering::SeqCst);
    let request = eventually(Duration::from_secs(20), "the approval request", async || {
        let messages = world.slack.messages.lock().unwrap();
        Ok(messages
            .iter()
            .find(|m| m["text"].as_str().unwrap_or_default().contains("Approval needed"))
            .cloned()
            .ok_or_else(|| format!("{} other messages", messages.len())))
    })
    .await?;
    let all = request.to_string();
    assert!(
        all.contains(&release) && all.contains("production") && all.contains("sha256:"),
        "{all}"
    );
    let actions = request["blocks"]
        .as_array()
        .context("blocks")?
        .iter()
        .find(|b| b["type"] == "actions")
        .context("an actions block")?;
    let ids: Vec<&str> = actions["elements"]
        .as_array()
        .context("elements")?
        .iter()
        .filter_map(|e| e["action_id"].as_str())
        .collect();
    assert_eq!(ids, ["approve", "decline"]);
    let value: Value = serde_json::from_str(actions["elements"][0]["value"].as_str().context("value")?)?;
    assert_eq!(value, json!({"release": release, "environment": "production"}));
    // The staging deployment and the approval's outcome are posted as release news too.
    eventually(Duration::from_secs(20), "the release news", async || {
        let texts: Vec<String> = world
            .slack
            .messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        Ok(
            if texts.iter().any(|t| t.contains("runs healthy in *staging*"))
                && texts.iter().any(|t| t.contains("into *production*: approved"))
            {
                Ok(())
            } else {
                Err(format!("{texts:?}"))
            },
        )
    })
    .await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_absent_promoter_answers_go_to_response_url_and_never_fail_the_request() -> Result<()> {
    // Every promoter answer counts as slow: Slack gets an acknowledgement, the outcome follows.
    let mut world = World::start_with(false, Duration::from_millis(1)).await?;
    let release = world.release_waiting_for_approval("one").await?;
    let ack = world.slash(ALICE, &format!("approve {release} production")).await?;
    assert_eq!(ack["response_type"], "ephemeral", "{ack}");
    assert!(ack["text"].as_str().unwrap_or_default().contains("Working on"), "{ack}");
    let outcome = world.response(1).await?;
    assert_eq!(outcome["response_type"], "in_channel", "{outcome}");
    assert!(
        outcome["text"].as_str().unwrap_or_default().contains("1 of 2"),
        "{outcome}"
    );
    world.wait_for(EventType::ApprovalUpdated, 1, |_| true).await?;

    // No promoter at all: a polite "try again", by response_url and, without one, in the answer.
    world.stop_promoter().await?;
    // (NATS says "no responders" at once, so the answer may beat the acknowledgement.)
    let ack = world.slash(BOB, &format!("approve {release} production")).await?;
    let outcome = if ack["text"].as_str().unwrap_or_default().contains("Working on") {
        world.response(2).await?
    } else {
        ack
    };
    assert_eq!(outcome["response_type"], "ephemeral", "{outcome}");
    assert!(
        outcome["text"].as_str().unwrap_or_default().contains("did not answer"),
        "{outcome}"
    );
    let no_url = form(&[
        ("user_id", BOB),
        ("command", "/baton"),
        ("text", &format!("approve {release}")),
    ]);
    let (status, body) = world.signed("/slack/commands", &no_url).await?;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body)?;
    assert_eq!(reply["response_type"], "ephemeral");
    assert!(
        reply["text"]
            .as_str()
            .unwrap_or_default()
            .contains("promoter did not answer"),
        "{reply}"
    );
    assert_eq!(world.approvals_updated().await?, 1, "only Alice's vote was recorded");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promoter_refuses_the_bot_speaking_through_another_s_chat_id_and_an_unlisted_bot() -> Result<()> {
    let mut world = World::start(false).await?;
    let release = world.release_waiting_for_approval("one").await?;
    let rejected = |check: &'static str| {
        move |e: &CdEvent| e.subject.content["check"] == check && e.subject.content["actor"] == "alice"
    };

    // The bot has read people.yaml: Slack user U0ALICE is alice.
    let status = world.slash(ALICE, "status acme/shop").await?;
    assert!(
        status["text"].as_str().unwrap_or_default().contains("`staging`"),
        "{status}"
    );
    // Alice moves to another Slack user; U0ALICE is nobody's now. The bot's read still says
    // alice, so it speaks for alice through U0ALICE: the promoter reads the file at the head,
    // refuses, and records it.
    world.commit_people(&people("U0ALICE2"))?;
    let stale = world.slash(ALICE, &format!("approve {release} production")).await?;
    assert_eq!(stale["response_type"], "ephemeral", "{stale}");
    let text = stale["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("Baton refused to approve")
            && text.contains("the bot chatops may not speak for alice through chat id U0ALICE"),
        "{stale}"
    );
    let refused = world
        .wait_for(EventType::CommandRejected, 1, rejected("bot_may_not_speak"))
        .await?;
    let claimed = refused[0].custom_data.as_ref().context("the request, as claimed")?;
    assert_eq!(claimed["chatId"], ALICE, "{claimed}");

    // The bot's own key, forging alice through bob's Slack id: refused the same way.
    let bot = baton_kit::signing::Signer::from_key_file(&world.dir.path().join("chatops-key"))?;
    let forged = CommandRequest {
        actor: "alice".into(),
        chat_id: Some(BOB.into()),
        release: Some(release.clone()),
        environment: Some("production".into()),
        ..CommandRequest::default()
    };
    let client = async_nats::connect(world._nats.url()).await?;
    let reply = baton_kit::command::CommandClient::new(client, Duration::from_secs(10))
        .with_signer(bot)
        .send(Verb::Approve, &forged)
        .await?;
    assert!(
        !reply.ok && reply.message.contains("through chat id U0BOB"),
        "{reply:?}"
    );
    world
        .wait_for(EventType::CommandRejected, 2, rejected("bot_may_not_speak"))
        .await?;

    // A bot whose key people.yaml does not list: alice's request through it is refused as
    // signed by an unknown key, and recorded.
    let rogue = world.another_bot(&Person::new("rogue")).await?;
    let unlisted = world
        .slash_to(&rogue, "U0ALICE2", &format!("approve {release} production"))
        .await?;
    assert_eq!(unlisted["response_type"], "ephemeral", "{unlisted}");
    assert!(
        unlisted["text"].as_str().unwrap_or_default().contains("unknown key"),
        "{unlisted}"
    );
    world
        .wait_for(EventType::CommandRejected, 1, rejected("unknown_key"))
        .await?;
    assert_eq!(world.approvals_updated().await?, 0, "no vote was recorded");

    // Alice's new Slack user, through the listed bot: the bot finds it at once (a user it does
    // not know makes it read people.yaml again), and the promoter records her vote.
    let approved = world
        .slash("U0ALICE2", &format!("approve {release} production"))
        .await?;
    assert_eq!(approved["response_type"], "in_channel", "{approved}");
    let updated = world.wait_for(EventType::ApprovalUpdated, 1, |_| true).await?;
    assert_eq!(updated[0].subject.content["responder"], "urn:baton:user:alice");
    world.stop().await
}

#[tokio::test]
async fn the_bot_does_not_start_without_a_readable_signing_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let encrypted = dir.path().join("locked");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&encrypted)
        .output()?;
    anyhow::ensure!(keygen.status.success(), "ssh-keygen: {keygen:?}");
    for (key, says) in [
        (None, "bots.chatops.keys"),
        (Some(dir.path().join("absent")), "cannot read"),
        (Some(encrypted.with_extension("pub")), "not an OpenSSH private key"),
        (Some(encrypted), "passphrase"),
    ] {
        let mut chatops = ChatopsSettings {
            signing_secret_env: Some("SLACK_SIGNING_SECRET".into()),
            signing_key_file: key.clone(),
            ..ChatopsSettings::default()
        };
        chatops.people.repository = format!("file://{}", dir.path().join("config.git").display());
        // Checked before NATS is reached: no server runs here.
        let started = app::spawn::<baton_chatops::Application>(
            app::common("nats://127.0.0.1:1"),
            chatops,
            &slack_secret,
            &CancellationToken::new(),
        )
        .await;
        let Err(baton_kit::service::StartError::Config(e)) = started else {
            anyhow::bail!("{key:?}: {started:?}");
        };
        assert_eq!(e.field(), Some("signing_key_file"), "{key:?}: {e}");
        assert!(e.to_string().contains(says), "{key:?}: {e}");
    }
    Ok(())
}
