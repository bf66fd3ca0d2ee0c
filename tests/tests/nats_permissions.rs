//! NATS permissions proof: a real nats-server started with exactly `deploy/base/nats/auth.conf`
//! (the file every overlay's NATS StatefulSet includes) refuses a service publishing another
//! service's event types, lets each publish its own, and lets every real service do its work
//! with its own user: the whole release story from a signed push to a healthy Deployment, with
//! the listener, builder, tester, promoter, deployer, chat-ops bot and the read-only web UI each
//! connected as itself, and not one permissions violation in the server's log; the web's user
//! may read what the web shows and nothing more. Only the admin user may change the
//! topology: every service user and the operator are refused each way of creating, updating,
//! sealing, purging or deleting a stream or bucket and of creating, changing, deleting or
//! pulling from a stage's durable consumer, and a service refuses to start before the admin has
//! provisioned.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use baton_kit::fabric::Topology;
use baton_kit::provision::{self, Plan};
use baton_schemas::config::CommonSettings;
use baton_schemas::{EventType, subjects};
use baton_tests::keys::SigningKeyFile;
use baton_tests::people::{Entry, Person, people_yaml};
use baton_tests::{NatsServer, app, events, eventually_every, repos};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

/// The one file of users and permissions, as deployed.
fn auth_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/nats/auth.conf")
}

/// The services that emit events (from the catalog), then the ones that emit none.
fn users() -> Vec<&'static str> {
    let mut users: Vec<&str> = Vec::new();
    for ty in EventType::ALL {
        if !users.contains(&ty.emitted_by()) {
            users.push(ty.emitted_by());
        }
    }
    users.extend(["chatops", "web", "operator", "admin"]);
    users
}

/// The users that must not change the topology: every service's and the operator's.
fn unprivileged() -> Vec<&'static str> {
    users().into_iter().filter(|u| *u != "admin").collect()
}

/// Provisions what Baton's services need with `common`'s settings, as the admin user would
/// (`baton admin provision`).
async fn provision_as_admin(nats: &SecuredNats, common: &CommonSettings) -> Result<Topology> {
    let admin = baton_kit::fabric::connect(&nats.common("admin")?.nats, "baton-admin").await?;
    Ok(provision::apply(&admin, &Plan::new(common)).await?.topology)
}

/// A nats-server with auth.conf (or a cluster of them) and a fresh random password per user,
/// and those passwords.
struct SecuredNats {
    server: NatsServer,
    /// The other members of a cluster.
    peers: Vec<NatsServer>,
    passwords: tempfile::TempDir,
}

impl SecuredNats {
    fn start() -> Result<Self> {
        Self::cluster(1)
    }

    /// `size` servers; more than one form a JetStream cluster over loopback routes, each
    /// including the same auth.conf, as the StatefulSet's members do.
    fn cluster(size: usize) -> Result<Self> {
        let passwords = tempfile::tempdir()?;
        let mut env = Vec::new();
        for user in users() {
            // nats-server parses a `$VAR` value as a config token: a password must start with a
            // letter (deploy/README.md says how to generate one).
            let password = format!("p{:032x}", rand::random::<u128>());
            std::fs::write(passwords.path().join(user), &password)?;
            env.push((format!("BATON_{}_NATS_PASSWORD", user.to_ascii_uppercase()), password));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if size == 1 {
            let server = NatsServer::start_with_config(&auth_conf(), &env)?;
            return Ok(Self {
                server,
                peers: Vec::new(),
                passwords,
            });
        }
        let route_ports: Vec<u16> = (0..size).map(|_| baton_tests::free_port()).collect();
        let mut servers = Vec::new();
        for (i, port) in route_ports.iter().enumerate() {
            let dir = passwords.path().join(format!("node-{i}"));
            std::fs::create_dir(&dir)?;
            std::fs::copy(auth_conf(), dir.join("auth.conf"))?;
            let routes: Vec<String> = route_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
            std::fs::write(
                dir.join("nats.conf"),
                format!(
                    "server_name: nats-{i}\ncluster {{\n  name: baton\n  listen: 127.0.0.1:{port}\n  routes: [{}]\n}}\ninclude ./auth.conf\n",
                    routes.join(", ")
                ),
            )?;
            servers.push(NatsServer::start_with_config(&dir.join("nats.conf"), &env)?);
        }
        let server = servers.remove(0);
        Ok(Self {
            server,
            peers: servers,
            passwords,
        })
    }

    /// The common settings of a service connecting as `user`, its password read from a file.
    fn common(&self, user: &str) -> Result<CommonSettings> {
        let mut c = CommonSettings::default();
        c.nats.url = std::iter::once(&self.server)
            .chain(&self.peers)
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        c.nats.user = Some(user.to_owned());
        c.nats.password_file = Some(self.passwords.path().join(user));
        c.http.listen = "127.0.0.1:0".parse()?;
        c.runner.backoff_initial = Duration::from_millis(200);
        baton_kit::settings::validate_common(&c)?;
        Ok(c)
    }

    /// The provisioned topology, as a service connected as `user` binds to it at start.
    async fn bound(&self, user: &str) -> Result<Topology> {
        let client = baton_kit::fabric::connect(&self.common(user)?.nats, user).await?;
        Ok(provision::check(&client, &CommonSettings::default().jetstream).await?)
    }

    fn password(&self, user: &str) -> Result<String> {
        Ok(std::fs::read_to_string(self.passwords.path().join(user))?)
    }

    /// Lines of the server's log reporting a permissions violation.
    fn violations(&self) -> Result<Vec<String>> {
        let log = std::fs::read_to_string(self.server.log_path())?;
        Ok(log
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("violation"))
            .map(str::to_owned)
            .collect())
    }

    /// Messages in the events stream, read from the monitoring endpoint (no NATS user needed).
    async fn stored_events(&self) -> Result<u64> {
        let url = format!("{}/jsz?acc=BATON&streams=true", self.server.monitor_url());
        let jsz: Value = reqwest::get(&url).await?.json().await?;
        let streams = jsz["account_details"][0]["stream_detail"]
            .as_array()
            .context("stream details in /jsz")?;
        Ok(streams
            .iter()
            .find(|s| s["name"] == "BATON_EVENTS")
            .and_then(|s| s["state"]["messages"].as_u64())
            .unwrap_or(0))
    }
}

/// A connection as `user` that collects the errors the server sends it.
async fn connect_as(nats: &SecuredNats, user: &str) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    connect_to(&nats.server, nats, user).await
}

/// [`connect_as`] one given server.
async fn connect_to(
    server: &NatsServer,
    nats: &SecuredNats,
    user: &str,
) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&errors);
    let client = async_nats::ConnectOptions::with_user_and_password(user.to_owned(), nats.password(user)?)
        .custom_inbox_prefix(baton_kit::fabric::inbox_prefix(user))
        .event_callback(move |event| {
            let sink = Arc::clone(&sink);
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(e.to_string());
                }
            }
        })
        .connect(server.url())
        .await?;
    Ok((client, errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_may_publish_only_its_own_event_types() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let nats = SecuredNats::start()?;
    provision_as_admin(&nats, &CommonSettings::default()).await?;

    // A wrong password is refused outright.
    let wrong = async_nats::ConnectOptions::with_user_and_password("builder".into(), "not-the-password".into())
        .connect(nats.server.url())
        .await;
    assert!(wrong.is_err(), "a wrong password must not connect");

    let mut allowed_total = 0;
    for user in users() {
        let (client, errors) = connect_as(&nats, user).await?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(2));
        let attempts = EventType::ALL.iter().map(|&ty| {
            let js = js.clone();
            let subject = subjects::event_subject("acme/shop", ty);
            async move {
                let acked = match js.publish(subject.clone(), format!("{ty} as {user}").into()).await {
                    Ok(ack) => ack.await.map(|ack| ack.sequence).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (ty, subject, acked)
            }
        });
        let outcomes = futures::future::join_all(attempts).await;
        client.flush().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let errors = errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for (ty, subject, acked) in outcomes {
            let refusal = format!("permissions violation for publish to \"{subject}\"");
            let refused_by_server = errors.iter().any(|e| e.to_ascii_lowercase().contains(&refusal));
            if ty.emitted_by() == user {
                let sequence = acked.map_err(|e| anyhow::anyhow!("{user} may publish {ty} on {subject}: {e}"))?;
                assert!(sequence > 0);
                assert!(!refused_by_server, "{user}'s own {ty} was refused: {errors:?}");
                allowed_total += 1;
            } else {
                assert!(
                    acked.is_err(),
                    "{user} published {ty}, which only the {} may",
                    ty.emitted_by()
                );
                assert!(
                    refused_by_server,
                    "the server must refuse {user} publishing {ty} ({subject}); it said {errors:?}"
                );
            }
        }
        // Nor may a service write its events outside the catalog's subjects, or reply-spoof.
        if user != "operator" {
            let (other, other_errors) = connect_as(&nats, user).await?;
            other.publish("baton.events.acme_shop.made.up", "x".into()).await?;
            other.flush().await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                other_errors
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .any(|e| e.to_ascii_lowercase().contains("permissions violation")),
                "{user} published an event type nobody emits"
            );
        }
    }
    assert_eq!(
        nats.stored_events().await?,
        allowed_total,
        "exactly the permitted publishes reached the events stream"
    );
    assert_eq!(allowed_total, EventType::ALL.len() as u64, "every type has its emitter");
    // The server logs every refusal: what the story test below relies on to find a permission
    // a service lacks.
    assert!(
        nats.violations()?
            .iter()
            .any(|l| l.contains("baton.events.acme_shop.service.deployed")),
        "the server's log names the refused publishes"
    );

    // Subscriptions are confined too: the builder cannot listen to the promoter's commands, and
    // no service but the operator's CLI may tap the live event subjects.
    let (builder, errors) = connect_as(&nats, "builder").await?;
    let _commands = builder.subscribe("baton.cmd.promoter.approve").await?;
    let _events = builder.subscribe("baton.events.>").await?;
    // Nor read the answers others get: every user has an inbox prefix of its own.
    let _inboxes = builder.subscribe("_INBOX.>").await?;
    let _promoters = builder.subscribe("_INBOX_promoter.>").await?;
    builder.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errors = errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    for subject in [
        "baton.cmd.promoter.approve",
        "baton.events.>",
        "_INBOX.>",
        "_INBOX_promoter.>",
    ] {
        assert!(
            errors.iter().any(|e| e
                .to_ascii_lowercase()
                .contains(&format!("permissions violation for subscription to \"{subject}\"").to_ascii_lowercase())),
            "the builder must not subscribe to {subject}: {errors:?}"
        );
    }
    Ok(())
}

const WEBHOOK_SECRET: &str = "permissions-webhook-secret";
const SLACK_SECRET: &str = "permissions-slack-secret";

fn sign(secret: &str, message: &str) -> Result<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(message.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// The release story with every service on its own NATS user: a signed push becomes an image,
/// a test verdict, a release, a promotion to staging and a healthy rollout; the chat-ops bot
/// posts the deployment and answers `/baton status` from the promoter's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_does_its_work_with_its_own_user() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let nats = SecuredNats::start()?;
    let registry = baton_tests::registry::RegistryServer::start()?;
    let cluster = baton_tests::kube::KubeCluster::start().await?;
    let _nodes = cluster.simulate_nodes(1).await?;
    let dir = tempfile::tempdir()?;

    let repo = dir.path().join("shop");
    let sha = repos::app_repo(
        &repo,
        &[
            (
                ".baton.yaml",
                "build:\n  steps:\n    - name: compile\n      run: mkdir -p out && echo hello > out/hello.txt\nmanifests: deploy\nimage:\n  name: baton/shop\n  base: scratch\n  add:\n    - {from: out/hello.txt, to: /srv/hello.txt}\n  entrypoint: [/srv/hello]\ntest:\n  steps:\n    - name: smoke\n      run: test -n \"$BATON_IMAGE\"\n",
            ),
            ("deploy/deployment.yaml", &repos::shop_deployment("baton/shop:dev")),
        ],
    )?;
    let config = repos::config_repo(dir.path(), "config-seed", repos::STAGING_AUTO)?;
    // The bot finds who Slack user U0ALICE is in people.yaml, and signs with its own key.
    let bot = Person::new("chatops");
    let people = [
        Entry {
            chat: vec!["U0ALICE".into()],
            ..Person::new("alice").entry()
        },
        Entry {
            speaks_for: Some(vec!["*".into()]),
            ..bot.entry()
        },
    ];
    std::fs::write(config.join("people.yaml"), people_yaml(&people))?;
    baton_tests::git(&config, &["add", "people.yaml"])?;
    baton_tests::git(&config, &["commit", "-qm", "people"])?;
    baton_tests::git(&config, &["push", "-q", "origin", "main"])?;
    let bot_key = dir.path().join("chatops-key");
    bot.write_private_key(&bot_key)?;

    // Slack's incoming webhook: records what the bot posts.
    let posted = Arc::new(Mutex::new(Vec::<Value>::new()));
    let hook_posts = Arc::clone(&posted);
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", hook.local_addr()?);
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let posts = Arc::clone(&hook_posts);
                async move {
                    posts
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(body);
                    "ok"
                }
            }),
        );
        axum::serve(hook, app).await
    });

    let env = |name: &str| match name {
        "SHOP_SECRET" => Some(WEBHOOK_SECRET.to_owned()),
        "SLACK_SECRET" => Some(SLACK_SECRET.to_owned()),
        _ => None,
    };
    // The admin provisions first; then each service finds what it needs with its own user.
    provision_as_admin(&nats, &nats.common("builder")?).await?;
    let stop = CancellationToken::new();
    let listener = app::spawn::<baton_listener::Application>(
        nats.common("listener")?,
        yaml_serde::from_str(
            "repositories:\n  - name: acme/shop\n    provider: generic\n    secret_env: SHOP_SECRET\n",
        )?,
        &env,
        &stop,
    )
    .await?;
    let webhook = format!("http://{}/webhooks/generic", listener.addr);
    // Signing on, as users get it: the builder publishes artifact.signed as its own user too.
    // (The services read their keys at start.)
    let (builder_key, tester_key) = (SigningKeyFile::generate()?, SigningKeyFile::generate()?);
    let builder = app::spawn::<baton_builder::Application>(
        nats.common("builder")?,
        yaml_serde::from_str(&format!(
            "registry:\n  address: {}\n  insecure: true\n{}",
            registry.address(),
            builder_key.signing_section()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let tester = app::spawn::<baton_tester::Application>(
        nats.common("tester")?,
        yaml_serde::from_str(&format!(
            "registry:\n  address: {}\n  insecure: true\n{}",
            registry.address(),
            tester_key.signing_section()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let promoter = app::spawn::<baton_promoter::Application>(
        nats.common("promoter")?,
        yaml_serde::from_str(&format!(
            "config_repo:\n  url: file://{}\n",
            dir.path().join("config.git").display()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let deployer = app::spawn::<baton_deployer::Application>(
        nats.common("deployer")?,
        yaml_serde::from_str(&format!(
            "kubeconfig: {}\npoll_interval: 200ms\n",
            cluster.kubeconfig_path().display()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let chatops = app::spawn::<baton_chatops::Application>(
        nats.common("chatops")?,
        yaml_serde::from_str(&format!(
            "signing_secret_env: SLACK_SECRET\nsigning_key_file: {}\npeople: {{repository: 'file://{}'}}\nincoming_webhook_url: {hook_url}\n",
            bot_key.display(),
            dir.path().join("config.git").display()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let chat = format!("http://{}/slack/commands", chatops.addr);
    // The web UI, read only, on its own user: the config repo's manifests and the registry's
    // layers beside what NATS holds.
    let web = app::spawn::<baton_web::Application>(
        nats.common("web")?,
        yaml_serde::from_str(&format!(
            "config_repo: {{url: 'file://{}'}}\nregistry: {{address: '{}', insecure: true}}\n",
            dir.path().join("config.git").display(),
            registry.address()
        ))?,
        &env,
        &stop,
    )
    .await?;

    // The push, signed as a git host would.
    let body = json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "repository": {"full_name": "acme/shop", "clone_url": format!("file://{}", repo.display())},
        "head_commit": {"id": sha, "message": "first", "author": {"name": "Ada"}}
    })
    .to_string();
    let http = reqwest::Client::new();
    let response = http
        .post(&webhook)
        .header("Content-Type", "application/json")
        .header("X-Baton-Delivery", "push-1")
        .header("X-Baton-Signature", format!("sha256={}", sign(WEBHOOK_SECRET, &body)?))
        .body(body)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 202, "{}", response.text().await?);

    // The release reaches staging healthy, every stage on its own user. Watched as the
    // operator's CLI would: the operator user may read every event.
    let operator = baton_kit::fabric::connect(&nats.common("operator")?.nats, "operator").await?;
    let js = async_nats::jetstream::new(operator);
    let wanted = [
        EventType::ChangeMerged,
        EventType::BuildFinished,
        EventType::ArtifactPublished,
        EventType::TestSuiteRunFinished,
        EventType::ReleaseCreated,
        EventType::EnvironmentModified,
        EventType::ServiceDeployed,
    ];
    eventually_every(
        Duration::from_millis(200),
        Duration::from_secs(120),
        "the release to reach staging",
        async || {
            let mut missing = Vec::new();
            for ty in wanted {
                if events::of(&js, ty).await?.is_empty() {
                    missing.push(ty);
                }
            }
            Ok(if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "no {missing:?}; permission violations: {:?}",
                    nats.violations()?
                ))
            })
        },
    )
    .await?;

    // The operator's CLI, as its own user, traces the release and reads where it runs; without
    // the user it is refused at the door.
    let release = events::of(&js, EventType::ReleaseCreated).await?[0].subject.id.clone();
    let cli = |user: Option<&str>, command: baton::cli::Command| baton::cli::Cli {
        nats: nats.server.url(),
        nats_user: user.map(str::to_owned),
        nats_password_file: user.map(|u| nats.passwords.path().join(u)),
        output: baton::cli::Output::Json,
        command,
    };
    use baton::cli::Command as Cmd;
    for command in [
        Cmd::Trace {
            release: release.clone(),
        },
        Cmd::Status {
            app: Some("acme/shop".into()),
        },
        Cmd::Releases {
            app: "acme/shop".into(),
        },
    ] {
        let what = format!("{command:?}");
        baton::run::run(cli(Some("operator"), command))
            .await
            .map_err(|e| anyhow::anyhow!("baton {what} as operator: {e}"))?;
    }
    let anonymous = baton::run::run(cli(None, Cmd::Status { app: None })).await;
    assert!(
        matches!(anonymous, Err(baton::CliError::Nats(_))),
        "no user, no entry: {anonymous:?}"
    );

    // The bot posted the deployment, and answers from the promoter's state.
    eventually_every(
        Duration::from_millis(200),
        Duration::from_secs(30),
        "the chat-ops bot to post the deployment",
        async || {
            let posted = posted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(if posted.iter().any(|p| p.to_string().contains("staging")) {
                Ok(())
            } else {
                Err(format!("{} posts, none naming staging", posted.len()))
            })
        },
    )
    .await?;
    let form = "command=%2Fbaton&text=status+acme%2Fshop&user_id=U0ALICE&user_name=alice";
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = sign(SLACK_SECRET, &format!("v0:{timestamp}:{form}"))?;
    let answer: Value = http
        .post(&chat)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Slack-Request-Timestamp", &timestamp)
        .header("X-Slack-Signature", format!("v0={signature}"))
        .body(form)
        .send()
        .await?
        .json()
        .await?;
    assert!(answer.to_string().contains("staging"), "status names staging: {answer}");

    // The web shows the release in staging, its events read back from the stream, and the
    // build's step log from the object store.
    let base = format!("http://{}", web.addr);
    let web_json = |path: String| {
        let http = http.clone();
        async move {
            let response = http.get(&path).send().await?;
            let status = response.status();
            let text = response.text().await?;
            Ok::<_, anyhow::Error>(if status.is_success() {
                Ok(serde_json::from_str::<Value>(&text)?)
            } else {
                Err(format!("GET {path}: {status}: {text}"))
            })
        }
    };
    eventually_every(
        Duration::from_millis(200),
        Duration::from_secs(30),
        "the web to show the release in staging",
        async || {
            Ok(match web_json(format!("{base}/api/matrix")).await? {
                Ok(matrix) if matrix.to_string().contains(&release) => Ok(()),
                Ok(matrix) => Err(format!("the matrix: {matrix}")),
                Err(e) => Err(e),
            })
        },
    )
    .await?;
    let page = web_json(format!("{base}/api/releases/{release}"))
        .await?
        .map_err(anyhow::Error::msg)?;
    let kinds = each(&page["timeline"], "type");
    assert!(
        kinds.iter().any(|k| k.contains("service.deployed")),
        "the timeline reaches the deployment: {kinds:?}"
    );
    let logs = each(&page["logs"], "url");
    let build_log = logs.first().with_context(|| format!("a build step's log: {page}"))?;
    let log = web_json(format!("{base}/api{build_log}"))
        .await?
        .map_err(anyhow::Error::msg)?;
    assert!(log["text"].is_string(), "the step log reads back: {log}");

    stop.cancel();
    for service in [listener, builder, tester, promoter, deployer, chatops, web] {
        service.task.await??;
    }
    let violations = nats.violations()?;
    assert!(
        violations.is_empty(),
        "a service needed a permission auth.conf does not grant:\n{}",
        violations.join("\n")
    );
    Ok(())
}

/// The string `key` of each object in the array `list` (none when it is not an array).
fn each<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item[key].as_str())
        .collect()
}

/// Production's topology: three servers with the same auth.conf, and the admin's provisioning
/// with `jetstream.replicas: 3` (what the base's `BATON_JETSTREAM__REPLICAS=3` sets) gives every
/// stream and bucket three replicas; a service's publishes still go through with one server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_r3_streams_for_the_same_users() -> Result<()> {
    let mut nats = SecuredNats::cluster(3)?;
    let mut common = nats.common("admin")?;
    common.jetstream.replicas = 3;
    let admin = baton_kit::fabric::connect(&common.nats, "baton-admin").await?;
    // The cluster elects its JetStream leader shortly after the routes connect.
    eventually_every(
        Duration::from_millis(500),
        Duration::from_secs(60),
        "the cluster's JetStream to take the provisioning",
        async || {
            let provisioned = provision::apply(&admin, &Plan::new(&common)).await;
            Ok(provisioned.map(|_| ()).map_err(|e| e.to_string()))
        },
    )
    .await?;
    // The builder binds to it with its own user, as it does at start.
    let builder = baton_kit::fabric::connect(&nats.common("builder")?.nats, "builder").await?;
    let topology = provision::check(&builder, &common.jetstream).await?;
    let operator = baton_kit::fabric::connect(&nats.common("operator")?.nats, "operator").await?;
    let js = async_nats::jetstream::new(operator);
    for stream in STREAMS {
        let info = js.get_stream(stream).await?.info().await?.clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let cluster = info.cluster.context("cluster info")?;
        assert_eq!(
            cluster.replicas.len(),
            2,
            "{stream}: a leader and two replicas: {cluster:?}"
        );
    }

    let publish = |n: u32| {
        let js = topology.jetstream.clone();
        async move {
            js.publish(
                subjects::event_subject("acme/shop", EventType::BuildQueued),
                format!("{n}").into(),
            )
            .await?
            .await
            .map_err(anyhow::Error::from)
        }
    };
    publish(1).await?;
    // One server of three gone: the streams keep their quorum.
    let gone = nats.peers.pop().context("a peer")?;
    drop(gone);
    eventually_every(
        Duration::from_millis(500),
        Duration::from_secs(30),
        "a publish with one server of three down",
        async || Ok(publish(2).await.map_err(|e| format!("{e:#}"))),
    )
    .await?;
    let events = js.get_stream("BATON_EVENTS").await?.info().await?.state.messages;
    assert_eq!(events, 2, "both events are stored");
    Ok(())
}

/// One way of changing the topology: what it is, the JetStream API subject it is requested on,
/// and a request body that would do it.
struct Change {
    what: String,
    subject: String,
    body: Value,
}

/// Every way a user could change Baton's topology: create, update (seal; a bucket cut to one
/// message), purge and delete each of the six streams, create a stream of its own, and create,
/// update, delete and pull from each stage's durable consumer. `for_user`'s own consumer is
/// included: a stage's consumer is the admin's too (it may only INFO, pull from and ack it).
fn changes(streams: &[(String, Value)], for_user: &str) -> Vec<Change> {
    let change = |what: String, subject: String, body: Value| Change {
        what,
        subject: format!("$JS.API.{subject}"),
        body,
    };
    let mut changes = Vec::new();
    for (name, config) in streams {
        let mut sealed = config.clone();
        sealed["sealed"] = json!(true);
        let mut shrunk = config.clone();
        shrunk["max_msgs"] = json!(1);
        shrunk["max_msgs_per_subject"] = json!(1);
        changes.extend([
            change(
                format!("create stream {name}"),
                format!("STREAM.CREATE.{name}"),
                config.clone(),
            ),
            change(format!("seal stream {name}"), format!("STREAM.UPDATE.{name}"), sealed),
            change(
                format!("cut stream {name} to one message"),
                format!("STREAM.UPDATE.{name}"),
                shrunk,
            ),
            change(
                format!("purge stream {name}"),
                format!("STREAM.PURGE.{name}"),
                json!({}),
            ),
            change(
                format!("delete stream {name}"),
                format!("STREAM.DELETE.{name}"),
                json!({}),
            ),
        ]);
    }
    changes.push(change(
        "create a stream of its own".into(),
        "STREAM.CREATE.MINE".into(),
        json!({"name": "MINE", "subjects": ["mine.>"]}),
    ));
    for stage in provision::STAGES {
        let c = stage.name;
        let config = json!({"durable_name": c, "ack_policy": "explicit", "filter_subjects": ["baton.events.>"]});
        let request = json!({"stream_name": "BATON_EVENTS", "config": config});
        changes.extend([
            change(
                format!("create or update consumer {c}"),
                format!("CONSUMER.CREATE.BATON_EVENTS.{c}"),
                request.clone(),
            ),
            change(
                format!("create or update consumer {c} with a filter"),
                format!("CONSUMER.CREATE.BATON_EVENTS.{c}.baton.events.>"),
                request.clone(),
            ),
            change(
                format!("create or update durable {c} (legacy API)"),
                format!("CONSUMER.DURABLE.CREATE.BATON_EVENTS.{c}"),
                request,
            ),
            change(
                format!("delete consumer {c}"),
                format!("CONSUMER.DELETE.BATON_EVENTS.{c}"),
                json!({}),
            ),
        ]);
        if c != for_user {
            changes.push(change(
                format!("pull from consumer {c}"),
                format!("CONSUMER.MSG.NEXT.BATON_EVENTS.{c}"),
                json!({"batch": 1, "no_wait": true}),
            ));
        }
    }
    changes
}

/// The stream configurations and message counts, and every stage consumer's configuration and
/// position, as the admin reads them: what no other user may change.
async fn topology_state(js: &async_nats::jetstream::Context) -> Result<Vec<(String, Value)>> {
    let mut state = Vec::new();
    for name in STREAMS {
        let info = js.get_stream(name).await?.info().await?.clone();
        let mut config = serde_json::to_value(&info.config)?;
        config["messages"] = json!(info.state.messages);
        state.push((name.to_owned(), config));
    }
    let events = js.get_stream("BATON_EVENTS").await?;
    for stage in provision::STAGES {
        let info = events.consumer_info(stage.name).await?;
        let mut config = serde_json::to_value(&info.config)?;
        config["delivered"] = json!(info.delivered.stream_sequence);
        config["pending"] = json!(info.num_pending);
        state.push((format!("consumer {}", stage.name), config));
    }
    Ok(state)
}

const STREAMS: [&str; 6] = [
    "BATON_EVENTS",
    "BATON_DEADLETTER",
    "KV_baton-handled",
    "KV_baton-state",
    "KV_baton-locks",
    "OBJ_baton-logs",
];

/// Only the admin changes the topology. Before it has provisioned, a service refuses to start,
/// naming what is missing. Afterwards every service user and the operator are refused, by the
/// server, every way of creating, updating, sealing, purging or deleting a stream or bucket and
/// of creating, changing, deleting or pulling from a stage's consumer (table-driven: each change
/// for each user), and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_user_but_the_admin_may_change_the_topology() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let nats = SecuredNats::start()?;

    // Before provisioning: the builder refuses to start, naming the fix; its look was allowed.
    let key = SigningKeyFile::generate()?;
    let refused = app::spawn::<baton_builder::Application>(
        nats.common("builder")?,
        yaml_serde::from_str(&key.signing_section())?,
        &|_| None,
        &CancellationToken::new(),
    )
    .await
    .err()
    .context("the builder started with nothing provisioned")?;
    let message = baton_kit::service::chain(&refused);
    assert!(
        message.contains("missing stream BATON_EVENTS") && message.contains("baton admin provision"),
        "{message}"
    );
    // Nor could a service have provisioned it itself.
    let builder = baton_kit::fabric::connect(&nats.common("builder")?.nats, "builder").await?;
    let denied = provision::apply(&builder, &Plan::new(&CommonSettings::default())).await;
    assert!(denied.is_err(), "the builder provisioned the topology");

    let js = provision_as_admin(&nats, &CommonSettings::default()).await?.jetstream;
    // Something in the streams, each written by the user whose it is.
    let listener = nats.bound("listener").await?.jetstream;
    for id in ["kept-1", "kept-2"] {
        listener
            .publish(subjects::event_subject("acme/shop", EventType::ChangeMerged), id.into())
            .await?
            .await?;
    }
    nats.bound("promoter")
        .await?
        .state
        .put("promoter.current.shop", "rel-1".into())
        .await?;
    nats.bound("builder")
        .await?
        .logs
        .put("run-1/build.log", &mut "line 1\n".as_bytes())
        .await?;
    let before = topology_state(&js).await?;
    let configs: Vec<(String, Value)> = before
        .iter()
        .filter(|(name, _)| STREAMS.contains(&name.as_str()))
        .map(|(name, config)| {
            let mut config = config.clone();
            if let Some(c) = config.as_object_mut() {
                c.remove("messages");
            }
            (name.clone(), config)
        })
        .collect();

    let mut unrefused = Vec::new();
    for user in unprivileged() {
        let (client, errors) = connect_as(&nats, user).await?;
        let changes = changes(&configs, user);
        for change in &changes {
            client
                .publish(change.subject.clone(), serde_json::to_vec(&change.body)?.into())
                .await?;
        }
        client.flush().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let errors = errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|e| e.to_ascii_lowercase())
            .collect::<Vec<_>>();
        for change in changes {
            let refusal = format!("permissions violation for publish to \"{}\"", change.subject).to_ascii_lowercase();
            if !errors.iter().any(|e| e.contains(&refusal)) {
                unrefused.push(format!("{user}: {} ({})", change.what, change.subject));
            }
        }
    }
    assert!(
        unrefused.is_empty(),
        "the server must refuse these:\n{}",
        unrefused.join("\n")
    );

    // A temporary consumer named like a stage's, through the subject the operator's and the
    // promoter's temporary consumers use, does not reach the stage's consumer either.
    for user in ["operator", "promoter", "web"] {
        let (client, _) = connect_as(&nats, user).await?;
        let request = json!({"stream_name": "BATON_EVENTS", "config": {"name": "builder", "filter_subjects": ["baton.events.>"]}});
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(
                "$JS.API.CONSUMER.CREATE.BATON_EVENTS",
                serde_json::to_vec(&request)?.into(),
            ),
        )
        .await;
    }
    let after = topology_state(&js).await?;
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(was, is, "{name} changed");
    }
    Ok(())
}

/// A retried run's step log is stored beside the earlier attempt's, never over it: replacing an
/// object makes the object store purge the old one's chunks, which the builder's user may not
/// (a purge cannot be confined to one object by permissions). Each attempt's log is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_runs_step_log_is_kept_beside_the_first_with_the_builders_user() -> Result<()> {
    let nats = SecuredNats::start()?;
    provision_as_admin(&nats, &CommonSettings::default()).await?;
    let client = baton_kit::fabric::connect(&nats.common("builder")?.nats, "builder").await?;
    let topology = provision::check(&client, &CommonSettings::default().jetstream).await?;
    let runner = baton_kit::steps::StepRunner::new(&topology);
    let workspace = tempfile::tempdir()?;
    let step = baton_schemas::pipeline::Step {
        name: "compile".into(),
        run: "n=$(cat attempts 2>/dev/null || echo 0); n=$((n+1)); echo $n > attempts; echo attempt $n".into(),
        env: Default::default(),
        timeout: Duration::from_secs(30),
        workdir: None,
        network: false,
        limits: Default::default(),
        secrets: Vec::new(),
        image: None,
    };
    let mut objects = Vec::new();
    for _ in 0..3 {
        let outcome = runner
            .run(baton_kit::steps::StepRequest {
                run_id: "build-1",
                app: "acme/shop",
                step: &step,
                workspace: workspace.path(),
                extra_env: &Default::default(),
                secrets: &[],
                secret_env: &Default::default(),
                limits: None,
            })
            .await;
        let log = outcome
            .log
            .map_err(|e| anyhow::anyhow!("the log was not stored: {e}"))?;
        objects.push(log.object);
    }
    assert_eq!(
        objects,
        ["build-1/compile.log", "build-1/compile.2.log", "build-1/compile.3.log"]
    );
    // Read as people read them, with the operator's CLI user.
    let operator = baton_kit::fabric::connect(&nats.common("operator")?.nats, "operator").await?;
    let logs = provision::check(&operator, &CommonSettings::default().jetstream)
        .await?
        .logs;
    for (n, object) in objects.iter().enumerate() {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut logs.get(object).await?, &mut text).await?;
        assert_eq!(text, format!("attempt {}\n", n + 1), "{object}");
    }
    let violations = nats.violations()?;
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    Ok(())
}

/// The web UI's user reads what the web shows and nothing more. baton-web, connected as `web`,
/// catches up with the event log, follows the promoter's keys, reads a release's events by
/// sequence and a step log of several megabytes from the object store, with no permissions
/// violation in the server's log. The same user is refused, by the server, publishing an event,
/// sending a command, writing a key or an object, purging or deleting the events stream or one
/// of its messages, pulling from or deleting a stage's consumer, and listening to the live
/// events or the commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_user_reads_what_the_web_shows_and_changes_nothing() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let nats = SecuredNats::start()?;
    let js = provision_as_admin(&nats, &CommonSettings::default()).await?.jetstream;
    // What the services wrote, each as its own user: a test verdict, the promoter's state, and
    // a step log larger than the web shows (it reads the first 4 MiB).
    let tester = nats.bound("tester").await?;
    let verdict =
        baton_tests::verdict::Verdict::shop("0123456789abcdef", Path::new("/nowhere"), "web", "web-release-1");
    verdict.publish(&tester.jetstream).await?;
    let line = "a line of the unit step's log, long enough to fill the chunks quickly\n";
    let log = line.repeat(6 * 1024 * 1024 / line.len());
    tester.logs.put("test-web/unit.log", &mut log.as_bytes()).await?;
    nats.bound("promoter")
        .await?
        .state
        .put("promoter.current.acme_shop.staging", "web-release-1".into())
        .await?;

    let stop = CancellationToken::new();
    let web = app::spawn::<baton_web::Application>(
        nats.common("web")?,
        baton_schemas::config::web::WebSettings::default(),
        &|_| None,
        &stop,
    )
    .await?;
    let base = format!("http://{}", web.addr);
    let http = reqwest::Client::new();
    eventually_every(
        Duration::from_millis(100),
        Duration::from_secs(30),
        "the web's view to catch up",
        async || {
            let response = http.get(format!("{base}/readyz")).send().await?;
            let status = response.status();
            Ok(if status.is_success() {
                Ok(())
            } else {
                Err(format!("{status}: {}", response.text().await?))
            })
        },
    )
    .await?;
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let response = http.get(&url).send().await?;
            let status = response.status();
            let text = response.text().await?;
            anyhow::ensure!(status.is_success(), "GET {url}: {status}: {text}");
            anyhow::Ok(text)
        }
    };
    let events: Value = serde_json::from_str(&get("/api/events").await?)?;
    assert!(
        events.to_string().contains("testsuiterun.finished"),
        "the event log shows the verdict: {events}"
    );
    // A release's events are read from the stream by sequence.
    let release: Value = serde_json::from_str(&get("/api/releases/web-release-1").await?)?;
    assert!(
        release["timeline"].as_array().is_some_and(|t| !t.is_empty()),
        "the release page reads its events: {release}"
    );
    // A push consumer the client does not answer stalls: the read would never end.
    let shown = tokio::time::timeout(Duration::from_secs(30), get("/api/logs/test-web/unit"))
        .await
        .map_err(|_| anyhow::anyhow!("the log was not read in 30 s; violations: {:?}", nats.violations()))??;
    let shown: Value = serde_json::from_str(&shown)?;
    let text = shown["text"].as_str().context("the log's text")?;
    assert_eq!(shown["truncated"], true, "a log over 4 MiB is cut");
    assert!(
        text.len() >= 4 * 1024 * 1024 - line.len() && log.starts_with(text),
        "the web read the log's first 4 MiB ({} bytes shown)",
        text.len()
    );
    let violations = nats.violations()?;
    assert!(
        violations.is_empty(),
        "the web needed a permission auth.conf does not grant:\n{}",
        violations.join("\n")
    );

    // Everything else is refused by the server.
    let stored = nats.stored_events().await?;
    let (client, errors) = connect_as(&nats, "web").await?;
    let mut as_web = async_nats::jetstream::new(client.clone());
    as_web.set_timeout(Duration::from_secs(2));
    let event = subjects::event_subject("acme/shop", EventType::ReleaseCreated);
    let acked = match as_web.publish(event.clone(), "a release by the web".into()).await {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(acked.is_err(), "the web published an event");
    let command = tokio::time::timeout(
        Duration::from_secs(2),
        client.request("baton.cmd.promoter.approve", "{}".into()),
    )
    .await;
    assert!(
        !matches!(command, Ok(Ok(_))),
        "the web's command was answered: {command:?}"
    );
    let refused_publishes = [
        "$KV.baton-state.promoter.current.acme_shop.staging",
        "$O.baton-logs.C.web",
        "$JS.API.STREAM.PURGE.BATON_EVENTS",
        "$JS.API.STREAM.DELETE.BATON_EVENTS",
        "$JS.API.STREAM.MSG.DELETE.BATON_EVENTS",
        "$JS.API.STREAM.UPDATE.BATON_EVENTS",
        "$JS.API.CONSUMER.MSG.NEXT.BATON_EVENTS.promoter",
        "$JS.API.CONSUMER.DELETE.BATON_EVENTS.deployer",
        "$JS.API.CONSUMER.CREATE.BATON_EVENTS.builder",
    ];
    for subject in refused_publishes {
        client.publish(subject, "{}".into()).await?;
    }
    let refused_subscriptions = ["baton.events.>", "baton.cmd.promoter.*", "_INBOX_promoter.>"];
    let mut subscriptions = Vec::new();
    for subject in refused_subscriptions {
        subscriptions.push(client.subscribe(subject).await?);
    }
    client.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errors: Vec<String> = errors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|e| e.to_ascii_lowercase())
        .collect();
    let refused = |what: &str, subject: &str| {
        let refusal = format!("permissions violation for {what} \"{subject}\"").to_ascii_lowercase();
        errors.iter().any(|e| e.contains(&refusal))
    };
    let mut unrefused: Vec<String> = [event.as_str(), "baton.cmd.promoter.approve"]
        .into_iter()
        .chain(refused_publishes)
        .filter(|s| !refused("publish to", s))
        .map(|s| format!("publish to {s}"))
        .collect();
    unrefused.extend(
        refused_subscriptions
            .into_iter()
            .filter(|s| !refused("subscription to", s))
            .map(|s| format!("subscription to {s}")),
    );
    assert!(
        unrefused.is_empty(),
        "the server must refuse the web user these:\n{}\nit said {errors:?}",
        unrefused.join("\n")
    );
    assert_eq!(nats.stored_events().await?, stored, "the events stream is as it was");
    let events_stream = js.get_stream("BATON_EVENTS").await?.info().await?.clone();
    assert!(!events_stream.config.sealed, "the events stream is not sealed");

    stop.cancel();
    web.task.await??;
    Ok(())
}
