//! `baton up` as a user runs it: every service's config file in one directory, none of them
//! naming a port. All seven start side by side (each on a free port, printed), each one's logs
//! reach stderr prefixed with its name and without colour when stderr is not a terminal, and
//! SIGINT stops them all cleanly. Two files naming the same port fail with the service that
//! could not start, exit 1, not as a usage error.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_tests::NatsServer;
use baton_tests::keys::SigningKeyFile;
use baton_tests::people::{Person, people_yaml};
use baton_tests::registry::RegistryServer;

/// The services `baton up` runs, each with a `<name>.yaml`.
const SERVICES: [&str; 7] = [
    "listener", "builder", "tester", "promoter", "deployer", "chatops", "web",
];
/// How long the services get to start on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    baton_tests::git(dir, args).map_err(anyhow::Error::msg)
}

/// The servers and files the services need, and a config directory with every service's file,
/// none with an `http` section.
struct Setup {
    nats: NatsServer,
    _registry: RegistryServer,
    _keys: (SigningKeyFile, SigningKeyFile),
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Result<Self> {
        let nats = NatsServer::start()?;
        let registry = RegistryServer::start()?;
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        git(root, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
        git(root, &["clone", "-q", "config.git", "seed"])?;
        let bot = Person::generate("chatops");
        bot.write_private_key(&root.join("chatops-key"))?;
        std::fs::write(
            root.join("seed/environments.yaml"),
            "environments:\n  - {name: staging, namespace: shop-staging, policy: auto}\n",
        )?;
        std::fs::write(root.join("seed/people.yaml"), people_yaml(&[bot.entry()]))?;
        git(&root.join("seed"), &["add", "."])?;
        git(&root.join("seed"), &["commit", "-qm", "environments and people"])?;
        git(&root.join("seed"), &["push", "-q", "origin", "main"])?;
        // The deployer only reads its kubeconfig at start; it talks to the cluster when it
        // deploys, which this test does not.
        std::fs::write(
            root.join("kubeconfig"),
            "apiVersion: v1\nkind: Config\nclusters: [{name: local, cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}}]\nusers: [{name: me, user: {token: local}}]\ncontexts: [{name: local, context: {cluster: local, user: me}}]\ncurrent-context: local\n",
        )?;
        let keys = (SigningKeyFile::generate()?, SigningKeyFile::generate()?);
        let config_repo = format!("file://{}", root.join("config.git").display());
        let registry_section = format!("registry: {{address: '{}', insecure: true}}\n", registry.address());
        let configs = root.join("configs");
        std::fs::create_dir_all(&configs)?;
        for service in SERVICES {
            let own = match service {
                "listener" => {
                    "repositories:\n  - {name: acme/shop, provider: generic, secret_env: SHOP_SECRET}\n".to_owned()
                }
                "builder" => format!(
                    "registry: {{address: '{}', insecure: true, repository_prefix: baton}}\n{}",
                    registry.address(),
                    keys.0.signing_section()
                ),
                "tester" => format!("{registry_section}{}", keys.1.signing_section()),
                "promoter" | "web" => format!("config_repo: {{url: '{config_repo}'}}\n{registry_section}"),
                "deployer" => format!("kubeconfig: '{}'\n", root.join("kubeconfig").display()),
                _ => format!(
                    "signing_secret_env: SLACK_SECRET\nsigning_key_file: '{}'\npeople: {{repository: '{config_repo}'}}\n",
                    root.join("chatops-key").display()
                ),
            };
            std::fs::write(
                configs.join(format!("{service}.yaml")),
                format!("nats: {{url: '{}'}}\n{own}", nats.url()),
            )?;
        }
        Ok(Self {
            nats,
            _registry: registry,
            _keys: keys,
            dir,
        })
    }

    fn configs(&self) -> std::path::PathBuf {
        self.dir.path().join("configs")
    }

    /// `baton up --config-dir <configs>`, its output piped (not a terminal).
    fn spawn_up(&self) -> Result<Child> {
        Ok(Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["up", "--config-dir"])
            .arg(self.configs())
            .env("SHOP_SECRET", "shop-webhook-secret")
            .env("SLACK_SECRET", "slack-signing-secret")
            .env("RUST_LOG", "info")
            .env_remove("BATON_HTTP__LISTEN")
            .env_remove("NO_COLOR")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }
}

/// Reads `child`'s stdout line by line on a thread.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

#[tokio::test]
async fn every_service_starts_on_its_own_port_and_logs_under_its_name() -> Result<()> {
    let setup = Setup::new()?;
    let mut up = setup.spawn_up()?;
    let stdout = lines_of(up.stdout.take().context("stdout")?);
    let mut stderr_pipe = up.stderr.take().context("stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    // The table `baton up` prints once every service listens: one address each, all different.
    let deadline = Instant::now() + START_TIMEOUT;
    let mut printed = Vec::new();
    let addresses = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match stdout.recv_timeout(remaining) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = up.kill();
                let _ = up.wait();
                anyhow::bail!(
                    "not every service started; stdout:\n{}\nstderr:\n{}",
                    printed.join("\n"),
                    stderr.join().unwrap_or_default()
                );
            }
        }
        let addresses: Vec<(String, String)> = printed
            .iter()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (name, url) = (words.next()?, words.next()?);
                (SERVICES.contains(&name) && url.starts_with("http://")).then(|| (name.to_owned(), url.to_owned()))
            })
            .collect();
        if addresses.len() == SERVICES.len() {
            break addresses;
        }
    };
    let mut urls: Vec<&str> = addresses.iter().map(|(_, url)| url.as_str()).collect();
    urls.sort_unstable();
    urls.dedup();
    assert_eq!(
        urls.len(),
        SERVICES.len(),
        "every service on its own port: {addresses:?}"
    );
    assert!(
        urls.iter().all(|url| !url.ends_with(":8080")),
        "none on the default port: {addresses:?}"
    );
    // Every service answers on the address printed for it.
    baton_kit::tls::install_crypto_provider();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    for (name, url) in &addresses {
        let status = client.get(format!("{url}/healthz")).send().await?.status();
        assert!(status.is_success(), "{name} at {url}: /healthz answered {status}");
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = up.wait()?;
    let logs = stderr.join().unwrap_or_default();
    assert!(status.success(), "SIGINT stops them cleanly ({status}):\n{logs}");
    for service in SERVICES {
        let prefix = format!("{service:>8} │ ");
        assert!(
            logs.lines()
                .any(|line| line.starts_with(&prefix) && line.contains(" INFO ")),
            "{service}'s logs appear under its name:\n{logs}"
        );
    }
    assert!(
        !logs.contains('\x1b'),
        "no colour when stderr is not a terminal:\n{logs}"
    );
    Ok(())
}

#[test]
fn a_service_that_cannot_start_fails_up_with_its_name() -> Result<()> {
    let setup = Setup::new()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let promoter = setup.configs().join("promoter.yaml");
    let text = std::fs::read_to_string(&promoter)?;
    std::fs::write(&promoter, format!("http: {{listen: '127.0.0.1:{port}'}}\n{text}"))?;
    let mut up = setup.spawn_up()?;
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = up.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            up.kill()?;
            anyhow::bail!("baton up kept running with the promoter's port taken");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut logs = String::new();
    up.stderr.take().context("stderr")?.read_to_string(&mut logs)?;
    assert_eq!(status.code(), Some(1), "a service failure, not a usage error:\n{logs}");
    let last = logs.lines().last().unwrap_or_default();
    assert!(
        last.contains("promoter cannot start") && last.contains(&format!("127.0.0.1:{port}")),
        "names the service and the address: {last}"
    );
    drop(taken);
    drop(setup.nats);
    Ok(())
}
