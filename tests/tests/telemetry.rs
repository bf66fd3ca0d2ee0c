//! One release is one trace (`tests/tests/telemetry.rs`), checked against a real OTLP/gRPC
//! receiver (`tests/scripts/otlp_receiver.py`, OpenTelemetry's protobufs served with grpcio),
//! with every service taking part: the listener, builder, tester, promoter, deployer and chat-ops
//! bot, against a real nats-server, registry, git repos and Kubernetes control plane.
//!
//! The story is the demo's first: a signed push is built, tested and rolled out to staging;
//! production waits for alice's approval, which she gives from chat (a signed Slack command); then
//! production rolls out. It is played twice, with the same config files: each service as its own
//! process (`baton-<service> --config <service>.yaml`), and all of them in one `baton up`. Each
//! time the suite asserts that the release is exactly one trace, that it holds spans of every
//! stage and the chat approval (linked to the chat request's own trace), and that its spans'
//! parent links form one tree. A run without an endpoint exports nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use baton_demo::{DEPLOYMENT, SAMPLE_PIPELINE, write};
use baton_tests::keys::SigningKeyFile;
use baton_tests::kube::{KubeCluster, NodeSimulator};
use baton_tests::people::{Entry, Person, people_yaml};
use baton_tests::process::{LogFile, Process, service_binary};
use baton_tests::registry::RegistryServer;
use baton_tests::{NatsServer, eventually_every, free_port, git};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const APP: &str = "acme/shop";
const WEBHOOK_SECRET: &str = "telemetry-webhook-secret";
const SLACK_SECRET: &str = "telemetry-slack-secret";
const SLACK_USER: &str = "U0ALICE";
const SERVICES: [&str; 6] = ["listener", "builder", "tester", "promoter", "deployer", "chatops"];
/// The longest the story may take: a deadline, not a speed assertion.
const DEADLINE: Duration = Duration::from_secs(180);

/// The OTLP receiver: a Python process writing the spans it gets to a JSON-lines file.
struct Receiver {
    _process: Process,
    port: u16,
    spans: PathBuf,
}

impl Receiver {
    /// A receiver on `port` (a free one when `None`).
    fn start(dir: &Path, port: Option<u16>) -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/otlp_receiver.py");
        let port = port.unwrap_or_else(free_port);
        let spans = dir.join("spans.jsonl");
        let mut command = Command::new("python3");
        command.arg(&script).arg(&spans).arg(port.to_string());
        let process = Process::spawn("otlp receiver", &mut command, &dir.join("receiver.log"), LogFile::Fresh)?;
        let receiver = Self {
            _process: process,
            port,
            spans,
        };
        let log = dir.join("receiver.log");
        for _ in 0..100 {
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening")) {
                return Ok(receiver);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "the OTLP receiver did not start (run `just setup` for opentelemetry-proto and grpcio): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.spans).unwrap_or_default();
        Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
    }
}

/// Servers, repos and one config file per service in `<dir>/configs`.
struct World {
    nats: NatsServer,
    dir: tempfile::TempDir,
    _registry: RegistryServer,
    _cluster: KubeCluster,
    _nodes: NodeSimulator,
    // The builder's and tester's signing keys, read when they start.
    _keys: (SigningKeyFile, SigningKeyFile),
    listener_port: u16,
    chatops_port: u16,
    /// What the chat-ops bot posted to Slack's incoming webhook (a local stand-in).
    posts: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl World {
    async fn start(endpoint: Option<&str>) -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        for service in SERVICES {
            service_binary(&format!("baton-{service}"))?;
        }
        service_binary("baton")?;
        let nats = NatsServer::start()?;
        nats.provision(&baton_schemas::config::CommonSettings::default())
            .await?;
        let registry = RegistryServer::start()?;
        let cluster = KubeCluster::start().await?;
        let nodes = cluster.simulate_nodes(2).await?;
        let dir = tempfile::Builder::new().prefix("baton-telemetry-").tempdir()?;
        let root = dir.path();
        git(root, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
        git(root, &["clone", "-q", "config.git", "config"])?;
        write(
            &root.join("config/environments.yaml"),
            "environments:\n  - {name: staging, namespace: shop-staging, policy: auto}\n  - name: production\n    namespace: shop-production\n    policy: manual\n    approvals: {required: 1, users: [alice]}\n",
        )?;
        let alice = Person::generate("alice");
        let bot = Person::generate("chatops");
        bot.write_private_key(&root.join("chatops-key"))?;
        let people = people_yaml(&[
            Entry {
                chat: vec![SLACK_USER.into()],
                ..alice.entry()
            },
            Entry {
                speaks_for: Some(vec!["alice".into()]),
                ..bot.entry()
            },
        ]);
        write(&root.join("config/people.yaml"), &people)?;
        git(&root.join("config"), &["add", "."])?;
        git(&root.join("config"), &["commit", "-qm", "environments and people"])?;
        git(&root.join("config"), &["push", "-q", "origin", "main"])?;
        git(root, &["init", "-q", "--bare", "-b", "main", "shop.git"])?;
        git(root, &["clone", "-q", "shop.git", "shop"])?;
        let shop = root.join("shop");
        write(&shop.join(".baton.yaml"), SAMPLE_PIPELINE)?;
        write(&shop.join("src/greeting.txt"), "hello\n")?;
        write(
            &shop.join("deploy/deployment.yaml"),
            &DEPLOYMENT.replace("replicas: 2\n", "replicas: 1\n"),
        )?;
        git(&shop, &["add", "-A"])?;
        git(&shop, &["commit", "-qm", "the shop"])?;
        git(&shop, &["push", "-q", "origin", "main"])?;

        // Slack's incoming webhook, so the chat-ops bot runs its stage: it posts the approval
        // request and the rollouts, each handled in the release's trace.
        let posts = Arc::new(AtomicUsize::new(0));
        let slack = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let incoming_webhook = format!("http://{}/services/T0/B0/token", slack.local_addr()?);
        let counter = Arc::clone(&posts);
        let router = axum::Router::new().route(
            "/services/T0/B0/token",
            axum::routing::post(async move || {
                counter.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        );
        tokio::spawn(async move { axum::serve(slack, router).await });

        let (builder_key, tester_key) = (SigningKeyFile::generate()?, SigningKeyFile::generate()?);
        let (listener_port, chatops_port) = (free_port(), free_port());
        let telemetry = endpoint.map_or_else(String::new, |e| format!("telemetry: {{otlp_endpoint: '{e}'}}\n"));
        for service in SERVICES {
            let port = match service {
                "listener" => listener_port,
                "chatops" => chatops_port,
                _ => free_port(),
            };
            let own = match service {
                "listener" => format!(
                    "repositories:\n  - {{name: {APP}, provider: generic, secret_env: SHOP_SECRET, branches: [main]}}\n"
                ),
                "builder" => format!(
                    "registry: {{address: '{}', insecure: true, repository_prefix: baton}}\n{}",
                    registry.address(),
                    builder_key.signing_section()
                ),
                "tester" => format!(
                    "registry: {{address: '{}', insecure: true}}\n{}",
                    registry.address(),
                    tester_key.signing_section()
                ),
                "promoter" => format!(
                    "config_repo: {{url: 'file://{}'}}\nregistry: {{address: '{}', insecure: true}}\n",
                    root.join("config.git").display(),
                    registry.address()
                ),
                "deployer" => format!(
                    "kubeconfig: '{}'\npoll_interval: 200ms\n",
                    cluster.kubeconfig_path().display()
                ),
                _ => format!(
                    "signing_secret_env: SLACK_SECRET\nsigning_key_file: '{}'\npeople: {{repository: 'file://{}'}}\nincoming_webhook_url: '{incoming_webhook}'\n",
                    root.join("chatops-key").display(),
                    root.join("config.git").display()
                ),
            };
            // `baton up` binds every service's port in one process: each file names its own.
            let yaml = format!(
                "nats: {{url: '{}'}}\nhttp: {{listen: '127.0.0.1:{port}'}}\nrunner: {{backoff_initial: 200ms}}\nshutdown: {{grace_period: 2s}}\n{telemetry}{own}",
                nats.url()
            );
            write(&root.join("configs").join(format!("{service}.yaml")), &yaml)?;
        }
        Ok(Self {
            nats,
            dir,
            _registry: registry,
            _cluster: cluster,
            _nodes: nodes,
            _keys: (builder_key, tester_key),
            listener_port,
            chatops_port,
            posts,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        })
    }

    fn configs(&self) -> PathBuf {
        self.dir.path().join("configs")
    }

    fn command(&self, program: &str) -> Result<Command> {
        let mut command = Command::new(service_binary(program)?);
        command
            .env("SHOP_SECRET", WEBHOOK_SECRET)
            .env("SLACK_SECRET", SLACK_SECRET)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env(
                "RUST_LOG",
                "info,async_nats=warn,kube=warn,hyper=warn,h2=warn,tower=warn",
            );
        Ok(command)
    }

    /// Every service as its own process.
    fn spawn_each(&self) -> Result<Vec<Process>> {
        SERVICES
            .iter()
            .map(|service| {
                let mut command = self.command(&format!("baton-{service}"))?;
                command
                    .arg("--config")
                    .arg(self.configs().join(format!("{service}.yaml")));
                let log = self.dir.path().join(format!("{service}.log"));
                Ok(Process::spawn(*service, &mut command, &log, LogFile::Fresh)?)
            })
            .collect()
    }

    /// Every service in one `baton up`.
    fn spawn_up(&self) -> Result<Vec<Process>> {
        let mut command = self.command("baton")?;
        command.arg("up").arg("--config-dir").arg(self.configs());
        let log = self.dir.path().join("up.log");
        Ok(vec![Process::spawn("baton up", &mut command, &log, LogFile::Fresh)?])
    }

    async fn wait_ready(&self, processes: &[Process]) -> Result<()> {
        for port in [self.listener_port, self.chatops_port] {
            eventually_every(
                Duration::from_millis(100),
                Duration::from_secs(60),
                "the services to be ready",
                async || {
                    let ready = self
                        .http
                        .get(format!("http://127.0.0.1:{port}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    Ok(if ready { Ok(()) } else { Err(logs(processes)) })
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Commits, pushes and sends the signed webhook; returns the release id and its commit.
    async fn push(&self, n: u32) -> Result<(String, String)> {
        let (body, after) = baton_tests::push::greeting_pushed(self.dir.path(), APP, n)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())?;
        mac.update(body.as_bytes());
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/webhooks/generic", self.listener_port))
            .header("Content-Type", "application/json")
            .header("X-Baton-Delivery", format!("telemetry-push-{n}"))
            .header(
                "X-Baton-Signature",
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            )
            .body(body)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "the listener refused the push: {}",
            response.text().await?
        );
        let answer: Value = response.json().await?;
        let release = answer["accepted"][0]["release"]
            .as_str()
            .context("the listener names the release")?;
        Ok((release.to_owned(), after))
    }

    /// alice's `/baton approve <release> production`, signed as Slack signs it; the bot's answer.
    async fn approve_from_chat(&self, release: &str) -> Result<String> {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("command", "/baton")
            .append_pair("text", &format!("approve {release} production"))
            .append_pair("user_id", SLACK_USER)
            .append_pair("user_name", "alice")
            .append_pair("team_id", "T0TEL")
            .append_pair("channel_id", "C0RELEASES")
            .finish();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(SLACK_SECRET.as_bytes())?;
        mac.update(format!("v0:{timestamp}:{body}").as_bytes());
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/slack/commands", self.chatops_port))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Slack-Request-Timestamp", timestamp)
            .header(
                "X-Slack-Signature",
                format!("v0={}", hex::encode(mac.finalize().into_bytes())),
            )
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "the chat endpoint answered {status}: {answer}");
        Ok(answer["text"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits until `release` has an event of one of `types` (in `env`, if given) on the stream.
    async fn wait_for(&self, release: &str, types: &[&str], env: Option<&str>, processes: &[Process]) -> Result<()> {
        let client = async_nats::connect(self.nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let what = format!("{} of release {release}", types.join(" or "));
        eventually_every(Duration::from_millis(250), DEADLINE, &what, async || {
            let mut found = false;
            let _ = baton_kit::log::read(&js, "BATON_EVENTS", &baton_kit::log::Query::default(), |r| {
                found |= r.event.context.chain_id.as_deref() == Some(release)
                    && types.iter().any(|ty| r.event.context.ty.contains(ty))
                    && env
                        .is_none_or(|e| serde_json::to_string(&r.event).is_ok_and(|t| t.contains(&format!("\"{e}\""))));
                true
            })
            .await;
            Ok(if found { Ok(()) } else { Err(logs(processes)) })
        })
        .await
    }
}

fn logs(processes: &[Process]) -> String {
    processes
        .iter()
        .map(|p| format!("--- {}\n{}", p.name(), p.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// SIGTERM, then waits for each to exit: services drain and flush their spans on the way out.
fn stop(processes: &mut [Process]) -> Result<()> {
    for process in processes.iter() {
        Command::new("kill")
            .arg("-TERM")
            .arg(process.id().to_string())
            .status()?;
    }
    for process in processes.iter_mut() {
        for _ in 0..200 {
            if process.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        process.kill()?;
    }
    Ok(())
}

/// A release the story played: its id and commit.
struct Played {
    release: String,
    commit: String,
}

/// Plays the story: a push reaches staging, alice approves it from chat, production rolls out.
async fn play(world: &World, processes: &[Process], n: u32) -> Result<Played> {
    world.wait_ready(processes).await?;
    let (release, commit) = world.push(n).await?;
    world.wait_for(&release, &["approval.created"], None, processes).await?;
    let answer = world.approve_from_chat(&release).await?;
    ensure!(
        answer.contains("approved") && answer.contains(&release),
        "the chat answered: {answer}"
    );
    // The first release into an environment is deployed there; a later one upgrades it.
    world
        .wait_for(
            &release,
            &["service.deployed", "service.upgraded"],
            Some("production"),
            processes,
        )
        .await?;
    ensure!(
        world.posts.load(Ordering::SeqCst) > 0,
        "the chat-ops bot posted nothing to chat"
    );
    Ok(Played { release, commit })
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"][key].as_str()
}

/// The release's spans are one trace holding every stage and the chat approval, in one tree; each
/// stage's spans name the release, its app, its commit and the environment where they are about
/// one, and the service they are in.
fn assert_one_trace(spans: &[Value], played: &Played, separate: bool) -> Result<()> {
    let (release, commit) = (played.release.as_str(), played.commit.as_str());
    // A command's `send` span names the release it acts on, in the trace of the person's request
    // (the chat command): the release's trace links to it.
    let of_release = |s: &&Value| {
        attr(s, "baton.release.id") == Some(release)
            && !(s["kind"] == "SPAN_KIND_PRODUCER"
                && attr(s, "messaging.destination.name").is_some_and(|d| d.starts_with("baton.cmd.")))
    };
    let traces: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(of_release)
        .filter_map(|s| s["trace_id"].as_str())
        .collect();
    ensure!(
        traces.len() == 1,
        "release {release} is in {} traces: {}",
        traces.len(),
        {
            let names = |trace: &str| -> Vec<String> {
                spans
                    .iter()
                    .filter(|s| s["trace_id"] == trace && of_release(s))
                    .map(|s| format!("{} ({})", s["name"], s["service"]))
                    .collect()
            };
            traces
                .iter()
                .map(|t| format!("{t}: {:?}", names(t)))
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    let trace = *traces.first().context("the release has spans")?;
    let in_trace: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace).collect();

    // Every stage took part: by service.name in separate processes, by consumer group in one.
    let root = in_trace
        .iter()
        .find(|s| s["parent_span_id"] == "")
        .context("the trace has a root")?;
    ensure!(
        root["name"] == "POST /webhooks/{provider}" && root["kind"] == "SPAN_KIND_SERVER",
        "the listener's webhook request starts the trace: {root}"
    );
    ensure!(attr(root, "http.route") == Some("/webhooks/{provider}"));
    ensure!(
        attr(root, "baton.release.id") == Some(release)
            && attr(root, "baton.app") == Some(APP)
            && attr(root, "vcs.ref.head.revision") == Some(commit)
            && attr(root, "baton.service") == Some("listener"),
        "the push names its release, app, commit and service: {root}"
    );
    for stage in ["builder", "tester", "promoter", "deployer", "chatops"] {
        let processed: Vec<&&Value> = in_trace
            .iter()
            .filter(|s| {
                s["kind"] == "SPAN_KIND_CONSUMER"
                    && attr(s, "messaging.system") == Some("nats")
                    && attr(s, "messaging.consumer.group.name") == Some(stage)
            })
            .collect();
        ensure!(!processed.is_empty(), "no span of the {stage} in the release's trace");
        for process in &processed {
            if separate {
                ensure!(process["service"] == format!("baton-{stage}"), "{process}");
            }
            ensure!(
                attr(process, "baton.service") == Some(stage)
                    && attr(process, "baton.release.id") == Some(release)
                    && attr(process, "baton.app") == Some(APP),
                "the {stage}'s span names its service, the release and the app: {process}"
            );
            ensure!(
                attr(process, "vcs.ref.head.revision").is_none_or(|c| c == commit),
                "the {stage}'s span names another commit: {process}"
            );
        }
        let with = |key: &str| processed.iter().filter(|s| attr(s, key).is_some()).count();
        // A push, a build, a promotion and an approval name the commit; a rollout's outcome does not.
        match stage {
            "builder" | "tester" | "deployer" => ensure!(
                with("vcs.ref.head.revision") == processed.len(),
                "each of the {stage}'s spans names the commit: {processed:?}"
            ),
            _ => ensure!(
                with("vcs.ref.head.revision") > 0,
                "a span of the {stage} names the commit: {processed:?}"
            ),
        }
        // Promotions, approvals and rollouts name their environment; a build or a test does not.
        let environments: std::collections::BTreeSet<&str> =
            processed.iter().filter_map(|s| attr(s, "baton.environment")).collect();
        match stage {
            "builder" | "tester" => ensure!(environments.is_empty(), "{processed:?}"),
            "deployer" => ensure!(
                environments == ["production", "staging"].into() && with("baton.environment") == processed.len(),
                "each of the deployer's spans names its environment: {processed:?}"
            ),
            _ => ensure!(
                environments.contains("production"),
                "a span of the {stage} names production: {processed:?}"
            ),
        }
    }
    if separate {
        ensure!(root["service"] == "baton-listener");
    }
    ensure!(
        in_trace
            .iter()
            .any(|s| s["kind"] == "SPAN_KIND_PRODUCER" && attr(s, "messaging.operation.type") == Some("send")),
        "the trace has publish spans"
    );
    ensure!(
        in_trace
            .iter()
            .any(|s| s["name"].as_str().is_some_and(|n| n.starts_with("step "))),
        "build and test steps are spans"
    );
    // The chat approval: the promoter's `approve` in the release's trace, linked to the span the
    // chat-ops bot sent it from, within the Slack request's own trace.
    let approval = in_trace
        .iter()
        .find(|s| s["name"] == "process baton.cmd.promoter.approve")
        .context("the chat approval is in the release's trace")?;
    ensure!(
        attr(approval, "baton.actor") == Some("alice")
            && attr(approval, "baton.environment") == Some("production")
            && attr(approval, "baton.release.id") == Some(release)
            && attr(approval, "baton.app") == Some(APP)
            && attr(approval, "vcs.ref.head.revision") == Some(commit)
            && attr(approval, "baton.service") == Some("promoter"),
        "{approval}"
    );
    let link = &approval["links"][0];
    let sender = spans
        .iter()
        .find(|s| s["span_id"] == link["span_id"] && s["trace_id"] == link["trace_id"])
        .context("the approval links to the span that sent it")?;
    ensure!(sender["name"] == "send baton.cmd.promoter.approve");
    let request_root = spans
        .iter()
        .find(|s| s["trace_id"] == sender["trace_id"] && s["parent_span_id"] == "")
        .context("the chat request has a root")?;
    ensure!(
        request_root["name"] == "POST /slack/commands" && attr(request_root, "baton.service") == Some("chatops"),
        "{request_root}"
    );
    if separate {
        ensure!(sender["service"] == "baton-chatops");
    }

    // One tree: one root, every other span's parent in the trace.
    let ids: std::collections::HashSet<&str> = in_trace.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let roots = in_trace.iter().filter(|s| s["parent_span_id"] == "").count();
    ensure!(roots == 1, "the trace has {roots} roots");
    for span in &in_trace {
        let parent = span["parent_span_id"].as_str().unwrap_or_default();
        ensure!(
            parent.is_empty() || ids.contains(parent),
            "the parent of {span} is not in the trace"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_release_is_one_trace_with_every_service_as_separate_processes_and_in_baton_up() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let receiver = Receiver::start(scratch.path(), None)?;
    let world = Box::pin(World::start(Some(&receiver.endpoint()))).await?;

    let mut each = world.spawn_each()?;
    let first = play(&world, &each, 1).await?;
    stop(&mut each)?;

    let mut up = world.spawn_up()?;
    let second = play(&world, &up, 2).await?;
    stop(&mut up)?;

    let spans = receiver.spans()?;
    assert_one_trace(&spans, &first, true)?;
    assert_one_trace(&spans, &second, false)?;
    // Every stage's publishes name the service that sent them.
    for span in spans.iter().filter(|s| s["kind"] == "SPAN_KIND_PRODUCER") {
        let subject = attr(span, "messaging.destination.name").unwrap_or_default();
        if subject.starts_with("baton.events.") {
            ensure!(attr(span, "baton.service").is_some(), "{span}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_an_endpoint() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    // The receiver listens where an exporter goes by default (OTLP/gRPC's 4317), but no config or
    // variable names it.
    let receiver = Receiver::start(scratch.path(), Some(4317))?;
    let world = Box::pin(World::start(None)).await?;
    let mut each = world.spawn_each()?;
    let played = play(&world, &each, 1).await?;
    stop(&mut each)?;
    let spans = receiver.spans()?;
    ensure!(
        spans.is_empty(),
        "release {}: {} spans exported without an endpoint",
        played.release,
        spans.len()
    );
    Ok(())
}
