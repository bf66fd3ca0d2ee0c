//! `just dev`: the local platform for one's own repositories, on the same [`Servers`] as
//! `just demo`. It starts NATS, a registry holding a busybox base image, a Kubernetes control
//! plane with simulated nodes, and writes, in a directory of its own:
//!
//! - `config.git`, the config repo (bare, as the promoter pushes to it), whose `main` holds
//!   `environments.yaml` (`staging` automatic, `production` by the user's approval) and
//!   `people.yaml` listing the user with a key generated for them (`<user>-key`);
//! - `kubeconfig`, the control plane's admin kubeconfig, for the deployer and for `kubectl`;
//! - `configs/`, every service's config file, each on its own port, the listener polling each
//!   repository the user named.
//!
//! Then it runs every service from `configs/` the way `baton up --config-dir configs` does, and
//! keeps all of it running until Ctrl-C, which removes the directory. [`Platform::next_steps`]
//! says what to do next.

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

        let keys = (SigningKeyFile::generate()?, SigningKeyFile::generate()?);
        let platform = Self {
            servers,
            keys,
            apps,
            user: options.user,
            dir,
        };
        for service in SERVICES {
            write(
                &platform.configs().join(format!("{service}.yaml")),
                &platform.service_config(service),
            )?;
        }
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
                        "  - {{name: {name}, branches: [main], poll: {{url: 'file://{}', interval: {POLL_INTERVAL}}}}}",
                        path.display()
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
            free_port()
        )
    }

    /// What to do next, for the terminal.
    pub fn next_steps(&self) -> String {
        let cli = std::env::current_exe()
            .map(|exe| exe.with_file_name("baton").display().to_string())
            .unwrap_or_else(|_| "baton".into());
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
            "  export BATON_NATS_URL={} BATON_ACTOR={} BATON_SIGNING_KEY={}",
            self.servers.nats.url(),
            self.user,
            self.user_key().display()
        );
        let _ = writeln!(
            text,
            "  git commit -am 'my change'      # on main: the listener picks it up within {POLL_INTERVAL}"
        );
        let _ = writeln!(text, "  {cli} events --follow         # every event as it happens");
        let _ = writeln!(text, "  {cli} status                  # what runs where");
        let _ = writeln!(text, "  {cli} approve <release> --env production");
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
