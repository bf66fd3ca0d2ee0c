//! `just demo`: Baton end to end on this machine, narrated.
//!
//! Starts a nats-server with JetStream, a CNCF Distribution registry, a real Kubernetes control
//! plane (etcd, kube-apiserver, controller-manager, scheduler 1.20.2) with simulated nodes, a
//! config repo, a sample app repo with a `.baton.yaml`, and every Baton service (listener,
//! builder, tester, promoter, deployer, chat-ops bot), then plays the story:
//!
//! 1. a push to main (a signed webhook) is built, tested, promoted to staging automatically and
//!    rolled out; production waits for an approval, which arrives through the chat endpoint as a
//!    signed Slack request, and production rolls out;
//! 2. a commit whose test fails stops before staging;
//! 3. a commit whose pods crash-loop fails its rollout in staging and is rolled back
//!    automatically to the previous digest, quarantined, and staging pinned.
//!
//! It ends with `baton trace` of each release and keeps everything running for `baton`
//! commands until Ctrl-C (or stops at once with `--down`).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the demo narrates on the terminal"
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton::cli::{Cli, Command, Output};
use baton::log::Record;
use baton::render::{self, Style};
use baton_kit::settings::Settings;
use baton_schemas::config::CommonSettings;
use baton_schemas::{CdEvent, EventType, subjects};
use baton_tests::NatsServer;
use baton_tests::kube::KubeCluster;
use baton_tests::registry::RegistryServer;
use clap::Parser;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const APP: &str = "acme/shop";
const WEBHOOK_SECRET: &str = "demo-webhook-secret";
const SLACK_SECRET: &str = "demo-slack-signing-secret";
const SLACK_USER: &str = "U0DEMOALICE";

/// Play Baton's release story on local servers.
#[derive(Debug, Parser)]
#[command(name = "baton-demo")]
struct Args {
    /// Stop everything when the story is told instead of leaving it running.
    #[arg(long)]
    down: bool,
}

fn say(text: &str) {
    println!("\n\x1b[1m▶ {text}\x1b[0m");
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    baton_tests::git(dir, args).map_err(anyhow::Error::msg)
}

/// The events seen so far, appended by the narrator.
type Seen = Arc<Mutex<Vec<Record>>>;

async fn wait_for(seen: &Seen, what: &str, pred: impl Fn(&Record) -> bool) -> Result<Record> {
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

fn of(release: &str, ty: EventType) -> impl Fn(&Record) -> bool + '_ {
    move |r: &Record| r.chain() == Some(release) && r.event_type() == Some(ty)
}

fn in_env<'a>(release: &'a str, env: &'a str, types: &'a [EventType]) -> impl Fn(&Record) -> bool + 'a {
    move |r: &Record| {
        r.chain() == Some(release)
            && r.event_type().is_some_and(|t| types.contains(&t))
            && r.event.custom_data.as_ref().is_some_and(|d| d["environment"] == env)
    }
}

struct Demo {
    dir: PathBuf,
    webhook: String,
    chat: String,
    http: reqwest::Client,
    pushes: u32,
}

impl Demo {
    /// Commits the working tree of the app and pushes it to its remote, then sends the signed
    /// webhook a git host would; returns the release id the listener answers with.
    async fn push(&mut self, message: &str) -> Result<String> {
        let work = self.dir.join("shop");
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
            "repository": {"full_name": APP, "clone_url": format!("file://{}", self.dir.join("shop.git").display())},
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
        println!("  git push → webhook {status} → release {release}");
        Ok(release)
    }

    /// A signed Slack slash command, as Slack sends it; returns the bot's answer.
    async fn slash(&self, text: &str) -> Result<String> {
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

const DEPLOYMENT: &str = "apiVersion: apps/v1
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

fn write(path: &Path, text: &str) -> Result<()> {
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    baton_kit::tls::install_crypto_provider();
    let started = Instant::now();

    say(
        "Starting the local stack: nats-server (JetStream), a CNCF Distribution registry, Kubernetes 1.20 with two simulated nodes",
    );
    let nats = NatsServer::start()?;
    let registry = RegistryServer::start()?;
    let cluster = KubeCluster::start().await?;
    let _nodes = cluster.simulate_nodes(2).await?;
    println!("  nats:     {}", nats.url());
    println!("  registry: {}", registry.address());
    println!(
        "  kubernetes: {} (kubeconfig {})",
        cluster.server_url(),
        cluster.kubeconfig_path().display()
    );

    let temp = tempfile::Builder::new().prefix("baton-demo-").tempdir()?;
    let dir = temp.path().to_owned();
    say("Creating the config repo (staging automatic, production needs alice's approval) and the sample app acme/shop");
    git(&dir, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
    git(&dir, &["clone", "-q", "config.git", "config"])?;
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
",
    )?;
    git(&dir.join("config"), &["add", "."])?;
    git(&dir.join("config"), &["commit", "-qm", "environments"])?;
    git(&dir.join("config"), &["push", "-q", "origin", "main"])?;
    git(&dir, &["init", "-q", "--bare", "-b", "main", "shop.git"])?;
    git(&dir, &["clone", "-q", "shop.git", "shop"])?;
    let shop = dir.join("shop");
    write(
        &shop.join(".baton.yaml"),
        "build:
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
",
    )?;
    write(&shop.join("src/greeting.txt"), "hello from Baton\n")?;
    write(&shop.join("deploy/deployment.yaml"), DEPLOYMENT)?;
    println!("  {}", dir.display());

    say("Starting Baton: listener, builder, tester, promoter, deployer and the chat-ops bot");
    let env = |name: &str| match name {
        "DEMO_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.to_owned()),
        "DEMO_SLACK_SECRET" => Some(SLACK_SECRET.to_owned()),
        _ => None,
    };
    let stop = CancellationToken::new();
    let listener = baton_listener::Application::build(
        settings(
            &nats,
            &format!("repositories:\n  - {{name: {APP}, provider: generic, secret_env: DEMO_WEBHOOK_SECRET, branches: [main]}}\n"),
        )?,
        &env,
    )
    .await?;
    let webhook = format!("http://{}/webhooks/generic", listener.local_addr());
    let builder = baton_builder::Application::build(
        settings(
            &nats,
            &format!(
                "registry: {{address: '{}', insecure: true, repository_prefix: baton}}\n",
                registry.address()
            ),
        )?,
        &env,
    )
    .await?;
    let tester = baton_tester::Application::build(settings(&nats, "{}")?, &env).await?;
    let promoter = baton_promoter::Application::build(
        settings(
            &nats,
            &format!("config_repo: {{url: 'file://{}'}}\n", dir.join("config.git").display()),
        )?,
        &env,
    )
    .await?;
    let deployer = baton_deployer::Application::build(
        settings(
            &nats,
            &format!(
                "kubeconfig: {}\npoll_interval: 200ms\ncrashloop_restarts: 2\n",
                cluster.kubeconfig_path().display()
            ),
        )?,
        &env,
    )
    .await?;
    let chatops = baton_chatops::Application::build(
        settings(
            &nats,
            &format!("signing_secret_env: DEMO_SLACK_SECRET\nusers: {{{SLACK_USER}: alice}}\n"),
        )?,
        &env,
    )
    .await?;
    let chat = format!("http://{}/slack/commands", chatops.local_addr());
    let mut tasks: Vec<tokio::task::JoinHandle<Result<()>>> = Vec::new();
    let s = stop.clone();
    tasks.push(tokio::spawn(async move { Ok(listener.run_until_stopped(s).await?) }));
    let s = stop.clone();
    tasks.push(tokio::spawn(async move { Ok(builder.run_until_stopped(s).await?) }));
    let s = stop.clone();
    tasks.push(tokio::spawn(async move { Ok(tester.run_until_stopped(s).await?) }));
    let s = stop.clone();
    tasks.push(tokio::spawn(async move { Ok(promoter.run_until_stopped(s).await?) }));
    let s = stop.clone();
    tasks.push(tokio::spawn(async move { Ok(deployer.run_until_stopped(s).await?) }));
    let s = stop.clone();
    tasks.push(tokio::spawn(async move { Ok(chatops.run_until_stopped(s).await?) }));
    println!("  webhook: {webhook}\n  chat:    {chat}");

    // The narrator: every event as it happens, the way `baton events --follow` prints it.
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let client = async_nats::connect(nats.url()).await?;
    let mut all = client.subscribe(subjects::ALL_EVENTS).await?;
    let narrated = Arc::clone(&seen);
    let style = Style::detect(Output::Human);
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
            println!("  {}", render::line(&style, &record));
            narrated
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(record);
        }
    });

    let mut demo = Demo {
        dir: dir.clone(),
        webhook,
        chat,
        http: reqwest::Client::new(),
        pushes: 0,
    };

    say("1. A push to main: build, test, staging automatically; production waits for an approval");
    let first = demo.push("Say hello").await?;
    wait_for(
        &seen,
        "the first release in staging",
        in_env(&first, "staging", &[EventType::ServiceDeployed]),
    )
    .await?;
    wait_for(&seen, "the approval request", of(&first, EventType::ApprovalCreated)).await?;
    say("   alice approves from chat: /baton approve <release> production (a signed Slack request)");
    let answer = demo.slash(&format!("approve {first} production")).await?;
    println!("  chat answers: {answer}");
    wait_for(
        &seen,
        "the first release in production",
        in_env(
            &first,
            "production",
            &[EventType::ServiceDeployed, EventType::ServiceUpgraded],
        ),
    )
    .await?;

    say("2. A commit whose test fails: it stops before staging");
    write(&shop.join("src/greeting.txt"), "goodbye from Baton\n")?;
    let second = demo.push("Say goodbye (breaks the unit test)").await?;
    let verdict = wait_for(
        &seen,
        "the failing test run",
        of(&second, EventType::TestSuiteRunFinished),
    )
    .await?;
    println!(
        "  outcome: {}; nothing is promoted",
        verdict.event.subject.content["outcome"].as_str().unwrap_or_default()
    );

    say("3. A commit whose pods crash-loop: the rollout fails and staging is rolled back automatically");
    write(&shop.join("src/greeting.txt"), "hello again from Baton\n")?;
    write(
        &shop.join("deploy/deployment.yaml"),
        &DEPLOYMENT.replace(
            "      labels: {app: shop}\n    spec:",
            "      labels: {app: shop}\n      annotations: {baton.dev/simulate: crashloop}\n    spec:",
        ),
    )?;
    let third = demo.push("Crash on start").await?;
    wait_for(&seen, "the failed rollout", of(&third, EventType::DeploymentFailed)).await?;
    wait_for(&seen, "the rollback", |r| {
        r.chain() == Some(first.as_str()) && r.event_type() == Some(EventType::ServiceRolledBack)
    })
    .await?;

    say("The story of each release (`baton trace <release>`)");
    for release in [&first, &second, &third] {
        println!();
        baton::run::run(Cli {
            nats: nats.url(),
            output: Output::Human,
            command: Command::Trace {
                release: release.clone(),
            },
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    println!("\nThe story took {:.0} s.", started.elapsed().as_secs_f64());

    if args.down {
        say("Stopping (--down)");
    } else {
        say("Everything keeps running. In another terminal:");
        let cli = std::env::current_exe()?.with_file_name("baton");
        let cli = cli.display();
        println!("  export BATON_NATS_URL={}", nats.url());
        println!("  {cli} events                # the whole log, then: {cli} events --follow");
        println!("  {cli} status                # what runs where (staging is pinned after the rollback)");
        println!("  {cli} trace {first}");
        println!("  {cli} unpin acme/shop staging --as alice");
        println!(
            "  KUBECONFIG={} kubectl get deploy -A   # if you have kubectl",
            cluster.kubeconfig_path().display()
        );
        println!("Ctrl-C stops everything and removes its files.");
        tokio::signal::ctrl_c().await?;
    }
    stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    Ok(())
}
