//! The local stack `just demo` runs and the end-to-end suite asserts on: a nats-server with
//! JetStream, a CNCF Distribution registry, a real Kubernetes control plane with simulated nodes,
//! a config repo (staging automatic; production approved by alice and requiring the image's
//! evidence, verified with the builder's and tester's keys under `keys/`), the sample app `acme/shop`
//! with its `.baton.yaml`, and every Baton service (listener, builder, tester, promoter,
//! deployer, chat-ops bot, and the web UI, [`Stack::web_url`]) in this process; plus what a git
//! host and Slack would send: signed push webhooks and signed slash commands. The config repo's
//! `people.yaml` lists alice, with her Slack user id, and the chat-ops bot, with a key the demo
//! generates, allowed to speak for her: her chat approval reaches the promoter signed by the bot.
//! Her own key, for the `baton` commands the demo suggests at the end, is written next to the
//! repos ([`Stack::cli_key`]); [`Stack::command`] sends her signed commands, and
//! [`Stack::push_by_hand`] pushes and announces an image Baton did not build, which production's
//! gate holds. The release story played on it, one function per step, is [`story`].

#![allow(clippy::print_stdout, reason = "the demo narrates on the terminal")]

use baton_kit::service::{self, StartError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton::cli::Output;
use baton::render::{self, Style};
use baton_kit::command::CommandClient;
use baton_kit::log::Record;
use baton_kit::settings::Settings;
use baton_kit::signing::Signer;
use baton_nodesim::NodeSimulator;
use baton_schemas::commands::{CommandReply, CommandRequest, Verb};
use baton_schemas::config::CommonSettings;
use baton_schemas::payloads::Outcome;
use baton_schemas::release::ReleaseData;
use baton_schemas::{CdEvent, EventType, subjects};
use baton_tests::NatsServer;
use baton_tests::keys::SigningKeyFile;
use baton_tests::kube::KubeCluster;
use baton_tests::people::{Entry, Person, people_yaml};
use baton_tests::registry::RegistryServer;
use baton_tests::verdict::Verdict;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

/// Prints a line when narrating.
macro_rules! note {
    ($narrate:expr, $($arg:tt)*) => {
        if $narrate {
            println!($($arg)*);
        }
    };
}

/// A step of the story, in bold.
pub fn say(text: &str) {
    println!("\n\x1b[1m▶ {text}\x1b[0m");
}

fn say_if(narrate: bool, text: &str) {
    if narrate {
        say(text);
    }
}

pub mod dev;
pub mod story;

/// The application of the story.
pub const APP: &str = "acme/shop";
pub const WEBHOOK_SECRET: &str = "demo-webhook-secret";
pub const SLACK_SECRET: &str = "demo-slack-signing-secret";
pub const SLACK_USER: &str = "U0DEMOALICE";
/// The chat-ops bot's name in `people.yaml`.
pub const CHAT_BOT: &str = "chatops";

/// `git` in `dir` (an independent client, as a developer would use it).
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    baton_tests::git(dir, args).map_err(anyhow::Error::msg)
}

/// The events seen so far, appended as they are published.
pub type Seen = Arc<Mutex<Vec<Record>>>;

async fn wait_in(seen: &Seen, what: &str, pred: impl Fn(&Record) -> bool) -> Result<Record> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(found) = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|r| pred(r))
            .cloned()
        {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the demo waited 3 minutes for {what} in vain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn of(release: &str, ty: EventType) -> impl Fn(&Record) -> bool + '_ {
    move |r: &Record| r.chain() == Some(release) && r.event_type() == Some(ty)
}

pub fn in_env<'a>(release: &'a str, env: &'a str, types: &'a [EventType]) -> impl Fn(&Record) -> bool + 'a {
    move |r: &Record| {
        r.chain() == Some(release)
            && r.event_type().is_some_and(|t| types.contains(&t))
            && r.event.custom_data.as_ref().is_some_and(|d| d["environment"] == env)
    }
}

/// The app's Deployment.
pub const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  replicas: 2
  progressDeadlineSeconds: 60
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: shop
          image: baton/shop:dev
";

/// The sample app's `.baton.yaml`: copy a file into a scratch image, grep it as the test.
pub const SAMPLE_PIPELINE: &str = "build:
  steps:
    - name: compile
      run: mkdir -p out && cp src/greeting.txt out/greeting.txt
image:
  name: baton/shop
  base: scratch
  add:
    - {from: out/greeting.txt, to: /srv/greeting.txt}
  entrypoint: [/srv/shop]
test:
  steps:
    - name: unit
      run: grep -q hello src/greeting.txt
manifests: deploy
";

/// Writes a file, creating its folder.
pub fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn common(nats: &NatsServer) -> Result<CommonSettings> {
    let mut c = CommonSettings::default();
    c.nats.url = nats.url();
    c.http.listen = "127.0.0.1:0".parse()?;
    c.runner.backoff_initial = Duration::from_millis(200);
    Ok(c)
}

fn settings<T: serde::de::DeserializeOwned>(nats: &NatsServer, yaml: &str) -> Result<Settings<T>> {
    Ok(Settings {
        common: common(nats)?,
        service: yaml_serde::from_str(yaml)?,
        warnings: vec![],
    })
}

/// The chat-ops bot's identity: a new key, written to `<dir>/chatops-key` for its config's
/// `signing_key_file`, and its `people.yaml` entry, speaking for alice.
fn chat_bot(dir: &Path) -> Result<(PathBuf, Entry)> {
    let bot = Person::generate(CHAT_BOT);
    let key = dir.join("chatops-key");
    bot.write_private_key(&key)?;
    let entry = Entry {
        speaks_for: Some(vec!["alice".into()]),
        ..bot.entry()
    };
    Ok((key, entry))
}

/// alice's key file for the `baton` CLI, in the stack's directory.
const CLI_KEY: &str = "alice-key";

/// alice at a terminal: a new key, written to `<dir>/alice-key` for `baton --key` (or
/// `BATON_SIGNING_KEY`); her `people.yaml` entry lists its public half.
fn cli_user(dir: &Path) -> Result<Person> {
    let alice = Person::generate("alice");
    alice.write_private_key(&dir.join(CLI_KEY))?;
    Ok(alice)
}

/// `person`'s `people.yaml` entry with `chat_id`: the bot may speak for them through it.
fn in_chat(person: &Person, chat_id: &str) -> Entry {
    Entry {
        chat: vec![chat_id.into()],
        ..person.entry()
    }
}

/// The chat-ops bot's config: the Slack signing secret, its signing key, and `people.yaml` read
/// from the config repo at `config_repo`.
fn chatops_config(key: &Path, config_repo: &Path) -> String {
    format!(
        "signing_secret_env: DEMO_SLACK_SECRET\nsigning_key_file: '{}'\npeople: {{repository: 'file://{}'}}\n",
        key.display(),
        config_repo.display()
    )
}

/// Logs and traces for the stack's services (`service.name` `baton-demo`): spans go to the
/// collector `BATON_TELEMETRY__OTLP_ENDPOINT` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
/// names, and nowhere without one. `None` when the process installed its own subscriber.
fn telemetry() -> Option<baton_kit::telemetry::TelemetryGuard> {
    let settings = baton_schemas::config::TelemetrySettings {
        otlp_endpoint: std::env::var("BATON_TELEMETRY__OTLP_ENDPOINT").ok(),
        ..Default::default()
    };
    // kube's client logs every refused connection as an error, and the stack asks the
    // apiserver while it starts; what Baton's services fail at, they say themselves.
    baton_kit::telemetry::init_with_filter("baton-demo", &settings, "warn,kube_client::client::builder=off").ok()
}

/// Waits (up to a minute) until the web at `base` answers `/readyz` with 200: its view has
/// caught up with the event log.
async fn web_ready(http: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = match http.get(format!("{base}/readyz")).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!(
                "{}: {}",
                response.status(),
                response.text().await.unwrap_or_default().trim()
            ),
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "the web UI at {base} was not ready within a minute ({answer})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The servers under every local platform, `just demo`'s and `just dev`'s alike: NATS with
/// JetStream, a registry, and a Kubernetes control plane whose two simulated nodes
/// ([`baton_nodesim`]) run every pod healthy unless its image says otherwise.
#[derive(Debug)]
pub struct Servers {
    /// The kubelets of the control plane's nodes; they stop when dropped, and are declared
    /// first so that they stop before the control plane they watch.
    pub nodes: NodeSimulator,
    /// NATS.
    pub nats: NatsServer,
    /// The registry images are pushed to.
    pub registry: RegistryServer,
    /// The Kubernetes control plane.
    pub cluster: KubeCluster,
}

impl Servers {
    /// Starts them on free ports; with `narrate`, prints where they listen.
    ///
    /// # Errors
    /// When a server cannot start (the harness's errors name `just setup`).
    pub async fn start(narrate: bool) -> Result<Self> {
        let nats = NatsServer::start()?;
        let registry = RegistryServer::start()?;
        let cluster = KubeCluster::start().await?;
        let nodes = cluster.simulate_nodes(2).await?;
        note!(narrate, "  nats:     {}", nats.url());
        note!(narrate, "  registry: {}", registry.address());
        note!(
            narrate,
            "  kubernetes: {} (kubeconfig {})",
            cluster.server_url(),
            cluster.kubeconfig_path().display()
        );
        Ok(Self {
            nats,
            registry,
            cluster,
            nodes,
        })
    }
}

/// The running stack.
pub struct Stack {
    /// The kubelets, declared first: dropped before the control plane they watch.
    _nodes: NodeSimulator,
    /// NATS.
    pub nats: NatsServer,
    /// The registry images are pushed to.
    pub registry: RegistryServer,
    /// The Kubernetes control plane.
    pub cluster: KubeCluster,
    /// Holds the repos (removed on drop).
    pub temp: tempfile::TempDir,
    /// The listener's generic webhook URL.
    pub webhook: String,
    /// The chat-ops bot's slash-command URL.
    pub chat: String,
    /// The web UI's base URL.
    web: String,
    /// Every event published so far, in order.
    pub seen: Seen,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), StartError>>>,
    http: reqwest::Client,
    pushes: u32,
    /// Whether the stack says what it does and prints every event (`just demo`) or keeps quiet
    /// (the suites): the story's steps narrate by it.
    narrate: bool,
    /// The services' traces, flushed when the stack stops (`None` when the process had its own
    /// subscriber already).
    _telemetry: Option<baton_kit::telemetry::TelemetryGuard>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("webhook", &self.webhook)
            .field("chat", &self.chat)
            .field("web", &self.web)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Starts everything; with `narrate`, says what it does and prints every event.
    ///
    /// # Errors
    /// When a server or service cannot start (the harness errors name `just setup`).
    pub async fn start(narrate: bool) -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        let telemetry = telemetry();
        let Servers {
            nats,
            registry,
            cluster,
            nodes: _nodes,
        } = Servers::start(narrate).await?;

        let temp = tempfile::Builder::new().prefix("baton-demo-").tempdir()?;
        let dir = temp.path().to_owned();
        say_if(
            narrate,
            "Creating the config repo (staging automatic, production needs alice's approval and the image's signature, provenance and passing tests; people.yaml lists alice and the chat-ops bot's new key; keys/ holds the public halves of the builder's and tester's signing keys) and the sample app acme/shop",
        );
        git(&dir, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
        git(&dir, &["clone", "-q", "config.git", "config"])?;
        // Production lets in only images Baton built and tested here: signed by the builder's
        // key, with the builder's provenance of the release's commit of acme/shop, and a PASSED
        // verdict signed by the tester's. Staging asks for nothing, as a team's first stage may:
        // an operator can try an image there that Baton did not build, and the gate in front of
        // production is what holds it.
        write(
            &dir.join("config/environments.yaml"),
            "environments:
  - name: staging
    namespace: shop-staging
    policy: auto
  - name: production
    namespace: shop-production
    policy: manual
    approvals:
      required: 1
      users: [alice]
    evidence:
      signed_by: [builder]
      provenance:
        builders: [https://baton.dev/builder/v1]
      tests:
        signed_by: [tester]
",
        )?;
        // Images are signed and verdicts attested, as users get it (the services read their keys
        // at start); the public halves are in the config repo, where verifiers read them.
        let (builder_key, tester_key) = (SigningKeyFile::generate()?, SigningKeyFile::generate()?);
        write(&dir.join("config/keys/builder.pem"), builder_key.public_pem())?;
        write(&dir.join("config/keys/tester.pem"), tester_key.public_pem())?;
        let alice = cli_user(&dir)?;
        let (bot_key, bot) = chat_bot(&dir)?;
        write(
            &dir.join("config/people.yaml"),
            &people_yaml(&[in_chat(&alice, SLACK_USER), bot]),
        )?;
        git(&dir.join("config"), &["add", "."])?;
        git(&dir.join("config"), &["commit", "-qm", "environments, people and keys"])?;
        git(&dir.join("config"), &["push", "-q", "origin", "main"])?;
        git(&dir, &["init", "-q", "--bare", "-b", "main", "shop.git"])?;
        git(&dir, &["clone", "-q", "shop.git", "shop"])?;
        let shop = dir.join("shop");
        write(&shop.join(".baton.yaml"), SAMPLE_PIPELINE)?;
        write(&shop.join("src/greeting.txt"), "hello from Baton\n")?;
        write(&shop.join("deploy/deployment.yaml"), DEPLOYMENT)?;
        note!(narrate, "  {}", dir.display());

        say_if(
            narrate,
            "Provisioning the streams, buckets and every stage's consumer, as `baton admin provision` does",
        );
        let admin = async_nats::connect(nats.url()).await?;
        baton_kit::provision::apply(&admin, &baton_kit::provision::Plan::new(&common(&nats)?)).await?;
        admin.drain().await?;
        say_if(
            narrate,
            "Starting Baton: listener, builder, tester, promoter, deployer, the chat-ops bot and the web UI",
        );
        let env = |name: &str| match name {
            "DEMO_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.to_owned()),
            "DEMO_SLACK_SECRET" => Some(SLACK_SECRET.to_owned()),
            _ => None,
        };
        let stop = CancellationToken::new();
        // Each service is built and set running by the kit's `service::spawn`, which boxes its
        // start-up and moves it straight into its task: this function's frame holds none of them
        // (a test thread's stack could not hold seven).
        let mut tasks: Vec<tokio::task::JoinHandle<Result<(), StartError>>> = Vec::new();
        let listener = service::spawn::<baton_listener::Application>(
            settings(
                &nats,
                &format!("repositories:\n  - {{name: {APP}, provider: generic, secret_env: DEMO_WEBHOOK_SECRET, branches: [main]}}\n"),
            )?,
            &env,
            &stop,
        )
        .await?;
        let webhook = format!("http://{}/webhooks/generic", listener.addr);
        tasks.push(listener.task);
        let builder = service::spawn::<baton_builder::Application>(
            settings(
                &nats,
                &format!(
                    "registry: {{address: '{}', insecure: true, repository_prefix: baton}}\n{}",
                    registry.address(),
                    builder_key.signing_section()
                ),
            )?,
            &env,
            &stop,
        )
        .await?;
        tasks.push(builder.task);
        let tester = service::spawn::<baton_tester::Application>(
            settings(
                &nats,
                &format!(
                    "registry: {{address: '{}', insecure: true}}\n{}",
                    registry.address(),
                    tester_key.signing_section()
                ),
            )?,
            &env,
            &stop,
        )
        .await?;
        tasks.push(tester.task);
        // The promoter writes the config repo and checks images in the registry; the web reads
        // both (manifest diffs, layers): the same two sections.
        let repo_and_registry = format!(
            "config_repo: {{url: 'file://{}'}}\nregistry: {{address: '{}', insecure: true}}\n",
            dir.join("config.git").display(),
            registry.address()
        );
        let promoter =
            service::spawn::<baton_promoter::Application>(settings(&nats, &repo_and_registry)?, &env, &stop).await?;
        tasks.push(promoter.task);
        let deployer = service::spawn::<baton_deployer::Application>(
            settings(
                &nats,
                &format!(
                    "kubeconfig: {}\npoll_interval: 200ms\ncrashloop_restarts: 2\n",
                    cluster.kubeconfig_path().display()
                ),
            )?,
            &env,
            &stop,
        )
        .await?;
        tasks.push(deployer.task);
        let chatops = service::spawn::<baton_chatops::Application>(
            settings(&nats, &chatops_config(&bot_key, &dir.join("config.git")))?,
            &env,
            &stop,
        )
        .await?;
        let chat = format!("http://{}/slack/commands", chatops.addr);
        tasks.push(chatops.task);
        // The web reads what the others write: the event log, the promoter's state, the logs.
        let web = service::spawn::<baton_web::Application>(settings(&nats, &repo_and_registry)?, &env, &stop).await?;
        let web_url = format!("http://{}", web.addr);
        tasks.push(web.task);
        let http = reqwest::Client::new();
        web_ready(&http, &web_url).await?;
        note!(narrate, "  webhook: {webhook}\n  chat:    {chat}\n  web UI:  {web_url}");

        // The narrator: every event as it happens, the way `baton events --follow` prints it.
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let client = async_nats::connect(nats.url()).await?;
        let mut all = client.subscribe(subjects::ALL_EVENTS).await?;
        let narrated = Arc::clone(&seen);
        let style = Style::detect(Output::Human);
        let print_events = narrate;
        tokio::spawn(async move {
            let mut ids = std::collections::HashSet::new();
            while let Some(message) = all.next().await {
                let Ok(ce) = baton_kit::codec::decode(message.headers.as_ref(), &message.payload) else {
                    continue;
                };
                let Some(cloudevents::Data::Json(data)) = ce.data() else {
                    continue;
                };
                let Ok(event) = serde_json::from_value::<CdEvent>(data.clone()) else {
                    continue;
                };
                // JetStream drops re-published ids; so does the narrator.
                if !ids.insert(event.context.id.clone()) {
                    continue;
                }
                let record = Record {
                    sequence: 0,
                    app: subjects::app_of(&message.subject).unwrap_or_default().to_owned(),
                    event,
                };
                if print_events {
                    println!("  {}", render::line(&style, &record));
                }
                narrated
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(record);
            }
        });

        Ok(Self {
            nats,
            registry,
            cluster,
            _nodes,
            temp,
            webhook,
            chat,
            web: web_url,
            seen,
            stop,
            tasks,
            http,
            pushes: 0,
            narrate,
            _telemetry: telemetry,
        })
    }

    /// Whether the stack narrates: started by `just demo` rather than a suite.
    pub fn narrates(&self) -> bool {
        self.narrate
    }

    /// The app's working clone.
    pub fn shop(&self) -> PathBuf {
        self.temp.path().join("shop")
    }

    /// The web UI's base URL (`http://127.0.0.1:<port>`, no trailing slash): the matrix at `/`,
    /// the JSON API under `/api/`. Its view has caught up with the event log as it was when the
    /// stack started, and follows it since.
    pub fn web_url(&self) -> &str {
        &self.web
    }

    /// The config repo (bare).
    pub fn config_repo(&self) -> PathBuf {
        self.temp.path().join("config.git")
    }

    /// alice's private key, which `people.yaml` lists for her: what `baton` signs her commands
    /// with (`--key`, or `BATON_SIGNING_KEY`).
    pub fn cli_key(&self) -> PathBuf {
        self.temp.path().join(CLI_KEY)
    }

    /// Waits (up to 3 minutes) for an event matching `pred`.
    ///
    /// # Errors
    /// When it does not come.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Record) -> bool) -> Result<Record> {
        wait_in(&self.seen, what, pred).await
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Record> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops every service, draining.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    /// Commits the app's working tree, pushes it, and sends the signed webhook a git host
    /// would; returns the release id the listener answers with.
    pub async fn push(&mut self, message: &str, narrate: bool) -> Result<String> {
        let work = self.shop();
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-qm", message])?;
        let before = git(&work, &["rev-parse", "origin/main"]).unwrap_or_else(|_| "0".repeat(40));
        git(&work, &["push", "-q", "origin", "main"])?;
        let after = git(&work, &["rev-parse", "HEAD"])?;
        self.pushes += 1;
        let body = json!({
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "repository": {"full_name": APP, "clone_url": format!("file://{}", self.temp.path().join("shop.git").display())},
            "head_commit": {"id": after, "message": message, "author": {"name": "Ada", "email": "ada@example.com"}},
            "commits": [{"id": after, "message": message, "author": {"name": "Ada", "email": "ada@example.com"}}],
            "pusher": {"name": "ada"},
        })
        .to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())?;
        mac.update(body.as_bytes());
        let response = self
            .http
            .post(&self.webhook)
            .header("Content-Type", "application/json")
            .header("X-Baton-Delivery", format!("demo-push-{}", self.pushes))
            .header(
                "X-Baton-Signature",
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            )
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "the listener refused the push: {answer}");
        let release = answer["accepted"][0]["release"]
            .as_str()
            .context("the listener names the release")?
            .to_owned();
        note!(narrate, "  git push → webhook {status} → release {release}");
        Ok(release)
    }

    /// alice's command to the promoter, signed with her key as `baton` signs it (the
    /// promoter's answer, accepted or refused).
    ///
    /// # Errors
    /// When the command cannot be signed or the promoter does not answer.
    pub async fn command(&self, verb: Verb, request: CommandRequest) -> Result<CommandReply> {
        let client = async_nats::connect(self.nats.url()).await?;
        let commands =
            CommandClient::new(client, Duration::from_secs(30)).with_signer(Signer::from_key_file(&self.cli_key())?);
        let request = CommandRequest {
            actor: "alice".into(),
            ..request
        };
        Ok(commands.send(verb, &request).await?)
    }

    /// What someone with the registry's and the event stream's credentials could do without
    /// Baton: push an image by hand into the repository of `signed`'s image (the app's, in the
    /// same registry), and announce it as tested with a `testsuiterun.finished` for `signed`'s
    /// commit, as the tester would, naming a new release. Nothing signs or attests the image.
    /// Returns the release and the image pinned by digest.
    ///
    /// # Errors
    /// When the image cannot be pushed (busybox, skopeo) or the event published.
    pub async fn push_by_hand(&self, signed: &ReleaseData, narrate: bool) -> Result<(String, String)> {
        let repository = signed.image.repository.as_str();
        let digest = self.registry.push_busybox_base(repository, "by-hand")?;
        let release = uuid::Uuid::new_v4().to_string();
        let address = self.registry.address();
        let shop = format!("file://{}", self.temp.path().join("shop.git").display());
        let verdict = Verdict {
            app: APP,
            commit: &signed.commit,
            repository: shop,
            registry: &address,
            image_repository: repository,
            case: "by-hand",
            digest_seed: "by-hand",
            release: &release,
            outcome: Outcome::Success,
            untested: false,
            pushed_by: None,
        };
        let reference = format!("{address}/{repository}@{digest}");
        let mut image = verdict.image();
        image.purl = image
            .purl
            .replace(&image.digest.replace(':', "%3A"), &digest.replace(':', "%3A"));
        image.reference.clone_from(&reference);
        image.digest = digest;
        let mut event = verdict.event()?;
        if let Some(data) = event.event.custom_data.as_mut() {
            data["image"] = serde_json::to_value(&image)?;
        }
        let client = async_nats::connect(self.nats.url()).await?;
        baton_kit::events::publish(&async_nats::jetstream::new(client), &event).await?;
        note!(
            narrate,
            "  pushed {reference} by hand and announced it as tested → release {release}"
        );
        Ok((release, reference))
    }

    /// A signed Slack slash command, as Slack sends it; returns the bot's answer.
    pub async fn slash(&self, text: &str) -> Result<String> {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("command", "/baton")
            .append_pair("text", text)
            .append_pair("user_id", SLACK_USER)
            .append_pair("user_name", "alice")
            .append_pair("team_id", "T0DEMO")
            .append_pair("channel_id", "C0RELEASES")
            .finish();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(SLACK_SECRET.as_bytes())?;
        mac.update(format!("v0:{timestamp}:{body}").as_bytes());
        let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        let response = self
            .http
            .post(&self.chat)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Slack-Request-Timestamp", timestamp)
            .header("X-Slack-Signature", signature)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "the chat endpoint answered {status}: {answer}");
        Ok(answer["text"].as_str().unwrap_or_default().to_owned())
    }
}
