//! `just dev`: the local platform for one's own repositories, on the same [`Servers`] as
//! `just demo`. It starts NATS, a registry holding a busybox base image, a Kubernetes control
//! plane with simulated nodes, and writes, in a directory of its own:
//!
//! - `config.git`, the config repo (bare, as the promoter pushes to it), whose `main` holds
//!   `environments.yaml` (`staging` automatic, `production` by the user's approval) and
//!   `people.yaml` listing the user with a key generated for them (`<user>-key`);
//! - `kubeconfig`, the control plane's admin kubeconfig, for the deployer and for `kubectl`;
//! - `configs/`, every service's config file, each on its own port, the listener polling each
//!   repository the user named and taking signed webhooks for it (`webhook-secret`);
//! - `env`, the shell variables the `baton` CLI and the quickstart read: `BATON_NATS_URL`,
//!   `BATON_ACTOR`, `BATON_SIGNING_KEY`, `KUBECONFIG`, the registry, web UI and webhook
//!   addresses and the webhook secret, and `PATH` with the CLI's directory first.
//!
//! Then it runs every service from `configs/` the way `baton up --config-dir configs` does, and
//! keeps all of it running until Ctrl-C, which removes the directory. [`Platform::next_steps`]
//! says what to do next.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use baton_tests::free_port;
use baton_tests::keys::SigningKeyFile;
use baton_tests::people::{Person, people_yaml};

use crate::{Servers, git, write};

/// The services `just dev` runs, each with `configs/<name>.yaml`.
const SERVICES: [&str; 7] = [
    "listener", "builder", "tester", "promoter", "deployer", "chatops", "web",
];
/// The base image's repository and tag in the registry.
pub const BASE_IMAGE: &str = "busybox:stable";
/// The registry's repository prefix for the images the builder pushes: `<registry>/apps/<image.name>`.
pub const REPOSITORY_PREFIX: &str = "apps";
/// How often the listener polls each repository.
const POLL_INTERVAL: &str = "2s";

/// What `just dev` was asked for.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The repositories to watch (working trees or bare repos on this machine); each becomes an
    /// app named after its directory.
    pub repositories: Vec<PathBuf>,
    /// Who approves production: the name in `people.yaml` and `BATON_ACTOR`.
    pub user: String,
}

/// The running platform; dropping it stops the servers and removes its directory.
#[derive(Debug)]
pub struct Platform {
    /// NATS, the registry and the cluster.
    pub servers: Servers,
    /// The builder's and tester's signing keys (their files live as long as the platform).
    keys: (SigningKeyFile, SigningKeyFile),
    /// The apps watched: (name, repository).
    apps: Vec<(String, PathBuf)>,
    /// Who approves production.
    user: String,
    /// Each service's port on 127.0.0.1.
    ports: BTreeMap<&'static str, u16>,
    /// The secret the listener checks generic webhooks with.
    webhook_secret: String,
    /// Holds the config repo, the kubeconfig, the configs and the user's key.
    dir: tempfile::TempDir,
}

impl Platform {
    /// Starts the servers and writes the config repo, the kubeconfig and every service's config.
    ///
    /// # Errors
    /// When a server cannot start, a repository is not a git repository, or a file cannot be
    /// written.
    pub async fn start(options: DevOptions) -> Result<Self> {
        let mut apps = Vec::new();
        for repository in &options.repositories {
            let path = std::fs::canonicalize(repository)
                .with_context(|| format!("{} is not a directory", repository.display()))?;
            git(&path, &["rev-parse", "--git-dir"])
                .with_context(|| format!("{} is not a git repository", path.display()))?;
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .map(|name| name.trim_end_matches(".git").to_owned())
                .context("a repository's directory names its app")?;
            apps.push((name, path));
        }
        let servers = Servers::start(true).await?;
        servers.registry.push_busybox_base("busybox", "stable")?;
        let dir = tempfile::Builder::new().prefix("baton-dev-").tempdir()?;
        let root = dir.path();
        std::fs::copy(servers.cluster.kubeconfig_path(), root.join("kubeconfig"))?;

        let you = Person::generate(&options.user);
        you.write_private_key(&root.join(format!("{}-key", options.user)))?;
        let bot = Person::generate(crate::CHAT_BOT);
        bot.write_private_key(&root.join("chatops-key"))?;
        // The chat-ops bot checks Slack's requests with this secret: a Slack app of your own
        // pointed at the bot would be given it.
        write(
            &root.join("slack-signing-secret"),
            &uuid::Uuid::new_v4().simple().to_string(),
        )?;
        git(root, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
        git(root, &["clone", "-q", "config.git", "config"])?;
        write(
            &root.join("config/environments.yaml"),
            &environments_yaml(&options.user),
        )?;
        write(
            &root.join("config/people.yaml"),
            &people_yaml(&[you.entry(), bot.entry()]),
        )?;
        git(&root.join("config"), &["add", "."])?;
        git(&root.join("config"), &["commit", "-qm", "environments and people"])?;
        git(&root.join("config"), &["push", "-q", "origin", "main"])?;

        let webhook_secret = uuid::Uuid::new_v4().simple().to_string();
        write(&root.join("webhook-secret"), &webhook_secret)?;

        let keys = (SigningKeyFile::generate()?, SigningKeyFile::generate()?);
        let platform = Self {
            servers,
            keys,
            apps,
            user: options.user,
            ports: SERVICES.into_iter().map(|service| (service, free_port())).collect(),
            webhook_secret,
            dir,
        };
        for service in SERVICES {
            write(
                &platform.configs().join(format!("{service}.yaml")),
                &platform.service_config(service),
            )?;
        }
        write(&platform.env_file(), &platform.env())?;
        Ok(platform)
    }

    /// The directory holding the config repo, the kubeconfig, the configs and the user's key.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every service's config file.
    pub fn configs(&self) -> PathBuf {
        self.dir().join("configs")
    }

    /// The user's private key, listed in `people.yaml`.
    pub fn user_key(&self) -> PathBuf {
        self.dir().join(format!("{}-key", self.user))
    }

    /// The shell variables for the CLI and the quickstart, `export`ed: `source` it.
    pub fn env_file(&self) -> PathBuf {
        self.dir().join("env")
    }

    /// `http://127.0.0.1:<port>` of `service`.
    fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    /// The web UI's base URL.
    pub fn web_url(&self) -> String {
        self.url("web")
    }

    /// The listener's generic webhook URL.
    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/generic", self.url("listener"))
    }

    /// The text of [`env_file`](Self::env_file).
    fn env(&self) -> String {
        let cli_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .map(|dir| format!("{}:", dir.display()))
            .unwrap_or_default();
        let variables = [
            ("BATON_NATS_URL", self.servers.nats.url()),
            ("BATON_ACTOR", self.user.clone()),
            ("BATON_SIGNING_KEY", self.user_key().display().to_string()),
            ("KUBECONFIG", self.dir().join("kubeconfig").display().to_string()),
            ("BATON_DEV_REGISTRY", self.servers.registry.address()),
            ("BATON_DEV_WEB", self.web_url()),
            ("BATON_DEV_WEBHOOK", self.webhook_url()),
            ("BATON_DEV_WEBHOOK_SECRET", self.webhook_secret.clone()),
        ];
        let mut text = String::new();
        for (name, value) in variables {
            let _ = writeln!(text, "export {name}='{value}'");
        }
        let _ = writeln!(text, "export PATH=\"{cli_dir}$PATH\"");
        text
    }

    /// The base image for `.baton.yaml`'s `image.base`: busybox in the platform's registry.
    pub fn base_image(&self) -> String {
        format!("{}/{BASE_IMAGE}", self.servers.registry.address())
    }

    /// Runs every service until Ctrl-C, as `baton up --config-dir <configs>` does.
    ///
    /// # Errors
    /// When a service cannot start or stops with an error.
    pub async fn run(&self) -> Result<()> {
        baton::up::up(&self.configs(), None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// `configs/<service>.yaml`: NATS, its own port, and its own sections.
    fn service_config(&self, service: &str) -> String {
        let registry = self.servers.registry.address();
        let config_repo = format!("file://{}", self.dir().join("config.git").display());
        let own = match service {
            "listener" => {
                let mut repositories = String::from("repositories:\n");
                for (name, path) in &self.apps {
                    let _ = writeln!(
                        repositories,
                        "  - {{name: {name}, branches: [main], poll: {{url: 'file://{}', interval: {POLL_INTERVAL}}}, provider: generic, secret_file: '{}'}}",
                        path.display(),
                        self.dir().join("webhook-secret").display()
                    );
                }
                if self.apps.is_empty() {
                    repositories = String::from("repositories: []\n");
                }
                repositories
            }
            "builder" => format!(
                "registry: {{address: '{registry}', insecure: true, repository_prefix: {REPOSITORY_PREFIX}}}\n{}",
                self.keys.0.signing_section()
            ),
            "tester" => format!(
                "registry: {{address: '{registry}', insecure: true}}\n{}",
                self.keys.1.signing_section()
            ),
            "promoter" | "web" => {
                format!("config_repo: {{url: '{config_repo}'}}\nregistry: {{address: '{registry}', insecure: true}}\n")
            }
            "deployer" => format!(
                "kubeconfig: '{}'\npoll_interval: 500ms\n",
                self.dir().join("kubeconfig").display()
            ),
            _ => format!(
                "signing_secret_file: '{}'\nsigning_key_file: '{}'\npeople: {{repository: '{config_repo}'}}\n",
                self.dir().join("slack-signing-secret").display(),
                self.dir().join("chatops-key").display()
            ),
        };
        format!(
            "nats: {{url: '{}'}}\nhttp: {{listen: '127.0.0.1:{}'}}\n{own}",
            self.servers.nats.url(),
            self.ports[service]
        )
    }

    /// What to do next, for the terminal; `env_file` is the copy of
    /// [`env_file`](Self::env_file) the user is told to `source`.
    pub fn next_steps(&self, env_file: &Path) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "The platform runs; its files are in {}", self.dir().display());
        let _ = writeln!(
            text,
            "  base image:  {}   (image.base in .baton.yaml)",
            self.base_image()
        );
        let _ = writeln!(
            text,
            "  config repo: {}   (environments.yaml: staging automatic, production approved by {})",
            self.dir().join("config.git").display(),
            self.user
        );
        let _ = writeln!(text, "  kubeconfig:  {}", self.dir().join("kubeconfig").display());
        let _ = writeln!(text, "  configs:     {}", self.configs().display());
        let _ = writeln!(text, "  web UI:      {}", self.web_url());
        let _ = writeln!(
            text,
            "  webhook:     {}   (generic, secret in {})",
            self.webhook_url(),
            self.dir().join("webhook-secret").display()
        );
        for (name, path) in &self.apps {
            let _ = writeln!(
                text,
                "  watching {name}: {} (main, every {POLL_INTERVAL})",
                path.display()
            );
        }
        let _ = writeln!(text, "In another terminal:");
        let _ = writeln!(
            text,
            "  source {}   # the CLI on PATH, BATON_NATS_URL, BATON_ACTOR={}, BATON_SIGNING_KEY, KUBECONFIG",
            env_file.display(),
            self.user
        );
        let _ = writeln!(
            text,
            "  git commit -am 'my change'      # on main: the listener picks it up within {POLL_INTERVAL}"
        );
        let _ = writeln!(text, "  baton events --follow           # every event as it happens");
        let _ = writeln!(text, "  baton status                    # what runs where");
        let _ = writeln!(text, "  baton approve <release> --env production");
        let _ = writeln!(text, "Ctrl-C stops everything and removes {}.", self.dir().display());
        text
    }
}

/// The config repo's `environments.yaml`: staging takes every release that passes its tests,
/// production waits for `user`'s approval. On a laptop the author is the approver, so the
/// author may approve.
fn environments_yaml(user: &str) -> String {
    format!(
        "environments:
  - name: staging
    namespace: staging
    policy: auto
  - name: production
    namespace: production
    policy: manual
    approvals:
      required: 1
      users: [{user}]
      author_may_approve: true
"
    )
}
