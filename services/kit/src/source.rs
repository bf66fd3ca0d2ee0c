//! Source: every service's git access, in one place. A cached bare mirror per repository
//! (later reads fetch only new objects), from which the builder and the tester check out a
//! fresh workspace at the exact commit, the promoter and the deployer read a folder's files at
//! a commit ([`Sources::files_at`]), the promoter and the listener walk the commits between two
//! heads ([`commits_in`]), and the listener lists a remote's refs without
//! fetching ([`Sources::ls_remote`]). Credentials for private repositories come from the common
//! `source.credentials` config, are offered to every remote operation, and never reach a log.
//!
//! Failures are classified: an unreachable remote is transient (the event is retried with
//! backoff), a commit the remote does not have is permanent (the build fails with the reason).
//!
//! The functions on a plain [`git2::Repository`] ([`files_in`], [`commits_in`]) serve a
//! repository the caller manages itself, such as the promoter's clone of the config repo.

use std::path::{Path, PathBuf};

use baton_schemas::config::GitCredential;
use baton_schemas::payloads::{CommitInfo, Person};

use crate::secret::{Named, Secret};
use crate::settings::ConfigError;
use sha2::{Digest, Sha256};

/// Credentials for one URL prefix, resolved from config.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Repository URLs this applies to.
    pub url_prefix: String,
    /// HTTPS user name (`git` when unset and the URL names none).
    pub username: Option<String>,
    /// HTTPS token or password.
    pub token: Secret,
}

/// Resolves configured git credentials, reading their secrets through `env`.
///
/// # Errors
/// The first invalid field, named like `source.credentials[0].token_env`.
pub fn resolve_credentials(
    configured: &[GitCredential],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Credential>, ConfigError> {
    let mut out = Vec::new();
    for (i, c) in configured.iter().enumerate() {
        let field = |name: &str| format!("source.credentials[{i}].{name}");
        if c.url_prefix.is_empty() {
            return Err(ConfigError::invalid(
                field("url_prefix"),
                "must be the start of repository URLs, e.g. https://github.com/acme/",
            ));
        }
        let (token_env, token_file) = (field("token_env"), field("token_file"));
        let token = Secret::from_config(
            Named {
                field: &token_env,
                value: c.token_env.as_deref(),
            },
            Named {
                field: &token_file,
                value: c.token_file.as_deref(),
            },
            env,
        )?;
        // libgit2 is built with HTTPS only (git2's `https` feature): an SSH key would be read
        // and then never used, so it is refused here rather than failing at every fetch.
        if c.ssh_key_file.is_some() {
            return Err(ConfigError::invalid(
                field("ssh_key_file"),
                "SSH remotes are not supported; reach the repository over HTTPS with a token (token_env or token_file)",
            ));
        }
        let Some(token) = token else {
            return Err(ConfigError::invalid(
                field("token_env"),
                "a credential needs a token: set token_env or token_file",
            ));
        };
        out.push(Credential {
            url_prefix: c.url_prefix.clone(),
            username: c.username.clone(),
            token,
        });
    }
    Ok(out)
}

/// Why the source could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The remote could not be reached or refused us: worth retrying.
    #[error("cannot fetch {url}: {message}")]
    Unreachable {
        /// The repository URL.
        url: String,
        /// libgit2's message.
        message: String,
    },
    /// The remote does not have the commit (e.g. it was force-pushed away): retrying cannot help.
    #[error("commit {commit} is not in {url} (was it force-pushed away?)")]
    MissingCommit {
        /// The repository URL.
        url: String,
        /// The commit.
        commit: String,
    },
    /// The commit has no such folder: retrying cannot help.
    #[error("{url} has no folder `{folder}` at commit {commit}")]
    MissingFolder {
        /// The repository URL.
        url: String,
        /// The commit.
        commit: String,
        /// The folder asked for.
        folder: String,
    },
    /// A workspace directory could not be created.
    #[error("cannot create a workspace in {}: {source}", path.display())]
    Workspace {
        /// The directory workspaces are created in.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The blocking git task failed (panicked or was cancelled).
    #[error("the git task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The local cache or workspace failed.
    #[error("cannot prepare the workspace: {0}")]
    Local(String),
}

impl SourceError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::MissingCommit { .. } | Self::MissingFolder { .. })
    }
}

impl crate::error::Classify for SourceError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::transient_if(self.is_transient())
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "git_unreachable",
            Self::MissingCommit { .. } => "missing_commit",
            Self::MissingFolder { .. } => "missing_folder",
            Self::Workspace { .. } => "workspace_io",
            Self::Task(_) => "git_task",
            Self::Local(_) => "git_local",
        }
    }
}

impl From<SourceError> for crate::error::HandlerError {
    fn from(e: SourceError) -> Self {
        Self::classified(e)
    }
}

/// A file read from a commit's tree: its path (relative to the folder asked for) and its bytes.
pub type TreeFile = (String, Vec<u8>);

/// A ref a remote advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// Full name, e.g. `refs/heads/main`.
    pub name: String,
    /// The commit it points at.
    pub sha: String,
}

/// The files under `dir` (`""` for the whole tree) at `commit`, with their paths relative to
/// `dir`, byte for byte; `None` when the commit has no such folder.
///
/// # Errors
/// When the commit is not in `repo` or an object cannot be read.
pub fn files_in(repo: &git2::Repository, commit: git2::Oid, dir: &str) -> Result<Option<Vec<TreeFile>>, git2::Error> {
    let tree = repo.find_commit(commit)?.tree()?;
    let dir = dir.trim_matches('/');
    let folder = if dir.is_empty() {
        tree
    } else {
        match tree.get_path(Path::new(dir)).and_then(|e| e.to_object(repo)) {
            Ok(object) => match object.into_tree() {
                Ok(folder) => folder,
                Err(_) => return Ok(None),
            },
            Err(_) => return Ok(None),
        }
    };
    let mut files = Vec::new();
    let mut failure = None;
    folder.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            match repo.find_blob(entry.id()) {
                Ok(blob) => files.push((
                    format!("{root}{}", entry.name().unwrap_or_default()),
                    blob.content().to_vec(),
                )),
                Err(e) => {
                    failure = Some(e);
                    return git2::TreeWalkResult::Abort;
                }
            }
        }
        git2::TreeWalkResult::Ok
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(Some(files)),
    }
}

/// The commits reachable from `head` but not from `since` (when `repo` has it), newest first,
/// at most `limit` of them: what a push or a release brought.
///
/// # Errors
/// When `head` is not in `repo` or the walk fails.
pub fn commits_in(
    repo: &git2::Repository,
    head: git2::Oid,
    since: Option<git2::Oid>,
    limit: usize,
) -> Result<Vec<CommitInfo>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL)?;
    walk.push(head)?;
    if let Some(since) = since.filter(|oid| repo.find_commit(*oid).is_ok()) {
        walk.hide(since)?;
    }
    walk.take(limit).map(|oid| describe_commit(repo, oid?)).collect()
}

/// A commit as events carry it: sha, message, time and author.
///
/// # Errors
/// When the commit is not in `repo`.
pub fn describe_commit(repo: &git2::Repository, oid: git2::Oid) -> Result<CommitInfo, git2::Error> {
    let commit = repo.find_commit(oid)?;
    let author = commit.author();
    let time = commit.time();
    Ok(CommitInfo {
        id: oid.to_string(),
        message: commit.message().unwrap_or_default().to_owned(),
        timestamp: rfc3339(time.seconds(), time.offset_minutes()),
        author: Person {
            name: author.name().ok().map(str::to_owned),
            email: author.email().ok().map(str::to_owned),
            username: None,
        },
        committer: {
            let committer = commit.committer();
            Some(Person {
                name: committer.name().ok().map(str::to_owned),
                email: committer.email().ok().map(str::to_owned),
                username: None,
            })
        },
        url: None,
    })
}

/// RFC 3339 from git's seconds-since-epoch and the author's UTC offset.
fn rfc3339(seconds: i64, offset_minutes: i32) -> Option<String> {
    let offset = chrono::FixedOffset::east_opt(offset_minutes.checked_mul(60)?)?;
    let utc = chrono::DateTime::from_timestamp(seconds, 0)?;
    Some(utc.with_timezone(&offset).to_rfc3339())
}

/// Mirrors and checkouts under one cache directory.
#[derive(Debug, Clone)]
pub struct Sources {
    cache: PathBuf,
    credentials: Vec<Credential>,
}

impl Sources {
    /// Sources cached under `cache` (mirrors in `mirrors/`, workspaces in `workspaces/`).
    pub fn new(cache: PathBuf, credentials: Vec<Credential>) -> Self {
        Self { cache, credentials }
    }

    /// The directory workspaces are created in.
    pub fn workspaces(&self) -> PathBuf {
        self.cache.join("workspaces")
    }

    /// A fresh workspace (a temporary directory named `<prefix>…` under [`Sources::workspaces`],
    /// removed when dropped) with `commit` of `url` checked out, off the async threads.
    ///
    /// # Errors
    /// [`SourceError`], classified transient or permanent.
    pub async fn checkout_workspace(
        &self,
        url: &str,
        commit: &str,
        prefix: &str,
    ) -> Result<tempfile::TempDir, SourceError> {
        let workspaces = self.workspaces();
        let workspace = std::fs::create_dir_all(&workspaces)
            .and_then(|()| tempfile::Builder::new().prefix(prefix).tempdir_in(&workspaces))
            .map_err(|source| SourceError::Workspace {
                path: workspaces,
                source,
            })?;
        let (sources, url, commit, dir) = (
            self.clone(),
            url.to_owned(),
            commit.to_owned(),
            workspace.path().to_owned(),
        );
        tokio::task::spawn_blocking(move || sources.checkout(&url, &commit, &dir))
            .await
            .map_err(SourceError::Task)??;
        Ok(workspace)
    }

    /// Fetches `url` into its mirror and checks out `commit` into the fresh directory
    /// `workspace`. Blocking: call it from `spawn_blocking`.
    ///
    /// # Errors
    /// [`SourceError`], classified transient or permanent.
    pub fn checkout(&self, url: &str, commit: &str, workspace: &Path) -> Result<(), SourceError> {
        let local = |e: git2::Error| SourceError::Local(e.message().to_owned());
        let mirror = self.mirror_with(url, commit)?;
        let oid = git2::Oid::from_str(commit).map_err(local)?;
        let commit_obj = mirror.find_commit(oid).map_err(local)?;
        std::fs::create_dir_all(workspace).map_err(|e| SourceError::Local(format!("{}: {e}", workspace.display())))?;
        let tree = commit_obj.tree().map_err(local)?;
        let mut checkout = git2::build::CheckoutBuilder::new();
        checkout.target_dir(workspace).force().recreate_missing(true);
        mirror
            .checkout_tree(tree.as_object(), Some(&mut checkout))
            .map_err(local)?;
        Ok(())
    }

    fn mirror(&self, url: &str) -> Result<git2::Repository, SourceError> {
        let name = hex::encode(&Sha256::digest(url.as_bytes())[..12]);
        let path = self.cache.join("mirrors").join(format!("{name}.git"));
        match git2::Repository::open_bare(&path) {
            Ok(repo) => Ok(repo),
            Err(_) => git2::Repository::init_bare(&path).map_err(|e| SourceError::Local(e.message().to_owned())),
        }
    }

    /// The cached mirror of `url`, fetched first when it lacks `commit`. For reading a commit's
    /// tree, author and history without checking it out. Blocking.
    ///
    /// # Errors
    /// [`SourceError`], classified transient or permanent.
    pub fn mirror_with(&self, url: &str, commit: &str) -> Result<git2::Repository, SourceError> {
        let missing = || SourceError::MissingCommit {
            url: url.to_owned(),
            commit: commit.to_owned(),
        };
        let oid = git2::Oid::from_str(commit).map_err(|_| missing())?;
        let mirror = self.mirror(url)?;
        if mirror.find_commit(oid).is_err() {
            self.fetch(&mirror, url)?;
        }
        mirror.find_commit(oid).map_err(|_| missing())?;
        Ok(mirror)
    }

    /// Remote callbacks answering credential requests for `url` from the configured
    /// credentials (never logged). The credential is offered once per operation: a remote that
    /// asks again has refused it, and the operation fails saying so, instead of libgit2
    /// replaying the refused credential until it gives up on "too many authentication replays".
    pub fn remote_callbacks(&self, url: &str) -> git2::RemoteCallbacks<'static> {
        let mut callbacks = git2::RemoteCallbacks::new();
        let credential = self.credential_for(url).cloned();
        let mut offered = false;
        callbacks.credentials(move |_url, username_from_url, allowed| {
            let Some(c) = &credential else {
                return Err(git2::Error::from_str(
                    "the repository asks for credentials and none are configured for it",
                ));
            };
            if offered {
                return Err(git2::Error::from_str(&format!(
                    "authentication failed: the repository refused the credential configured for {}",
                    c.url_prefix
                )));
            }
            let user = c.username.as_deref().or(username_from_url).unwrap_or("git");
            let offer = if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
                let token = std::str::from_utf8(c.token.expose())
                    .map_err(|_| git2::Error::from_str("the token is not UTF-8"))?;
                git2::Cred::userpass_plaintext(user, token)
            } else {
                return Err(git2::Error::from_str(
                    "no configured credential fits what the repository asks for",
                ));
            };
            offered = true;
            offer
        });
        callbacks
    }

    /// The files under `dir` of `commit` in `url` (fetched into the mirror when it lacks the
    /// commit), paths relative to `dir`. Blocking.
    ///
    /// # Errors
    /// [`SourceError::MissingFolder`] (permanent) when the commit has no such folder; the
    /// others as [`Sources::mirror_with`].
    pub fn files_at(&self, url: &str, commit: &str, dir: &str) -> Result<Vec<TreeFile>, SourceError> {
        let mirror = self.mirror_with(url, commit)?;
        let oid = git2::Oid::from_str(commit).map_err(|e| SourceError::Local(e.message().to_owned()))?;
        files_in(&mirror, oid, dir)
            .map_err(|e| SourceError::Local(e.message().to_owned()))?
            .ok_or_else(|| SourceError::MissingFolder {
                url: url.to_owned(),
                commit: commit.to_owned(),
                folder: dir.to_owned(),
            })
    }

    /// The refs `url` advertises, without fetching anything (`git ls-remote`), with the
    /// configured credentials. Blocking.
    ///
    /// # Errors
    /// [`SourceError::Unreachable`] when the remote cannot be reached or refuses us.
    pub fn ls_remote(&self, url: &str) -> Result<Vec<RemoteRef>, SourceError> {
        let unreachable = |e: git2::Error| SourceError::Unreachable {
            url: url.to_owned(),
            message: e.message().to_owned(),
        };
        let mirror = self.mirror(url)?;
        let mut remote = mirror.remote_anonymous(url).map_err(unreachable)?;
        let connection = remote
            .connect_auth(git2::Direction::Fetch, Some(self.remote_callbacks(url)), None)
            .map_err(unreachable)?;
        let refs = connection
            .list()
            .map_err(unreachable)?
            .iter()
            .map(|head| RemoteRef {
                name: head.name().to_owned(),
                sha: head.oid().to_string(),
            })
            .collect();
        Ok(refs)
    }

    /// Fetches `refspecs` of `url` into its mirror with the configured credentials, and
    /// returns the mirror. Blocking.
    ///
    /// # Errors
    /// [`SourceError::Unreachable`].
    pub fn fetch_refs(&self, url: &str, refspecs: &[String]) -> Result<git2::Repository, SourceError> {
        let mirror = self.mirror(url)?;
        self.fetch_with(&mirror, url, refspecs)?;
        Ok(mirror)
    }

    fn fetch(&self, mirror: &git2::Repository, url: &str) -> Result<(), SourceError> {
        self.fetch_with(
            mirror,
            url,
            &[
                "+refs/heads/*:refs/heads/*".to_owned(),
                "+refs/tags/*:refs/tags/*".to_owned(),
            ],
        )
    }

    fn fetch_with(&self, mirror: &git2::Repository, url: &str, refspecs: &[String]) -> Result<(), SourceError> {
        let mut remote = mirror.remote_anonymous(url).map_err(|e| SourceError::Unreachable {
            url: url.to_owned(),
            message: e.message().to_owned(),
        })?;
        let mut options = git2::FetchOptions::new();
        options.remote_callbacks(self.remote_callbacks(url));
        remote
            .fetch(refspecs, Some(&mut options), None)
            .map_err(|e| SourceError::Unreachable {
                url: url.to_owned(),
                message: e.message().to_owned(),
            })
    }

    fn credential_for(&self, url: &str) -> Option<&Credential> {
        self.credentials
            .iter()
            .filter(|c| url.starts_with(&c.url_prefix))
            .max_by_key(|c| c.url_prefix.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "A")
            .env("GIT_AUTHOR_EMAIL", "a@example.com")
            .env("GIT_COMMITTER_NAME", "A")
            .env("GIT_COMMITTER_EMAIL", "a@example.com")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn a_credential_needs_a_token_and_an_ssh_key_is_refused_by_name() {
        let env = |name: &str| (name == "TOKEN").then(|| "t0ken".to_owned());
        let credential = |token_env: Option<&str>, ssh_key_file: Option<&str>| GitCredential {
            url_prefix: "https://git.example.com/".to_owned(),
            username: Some("baton".to_owned()),
            token_env: token_env.map(str::to_owned),
            token_file: None,
            ssh_key_file: ssh_key_file.map(PathBuf::from),
        };
        let resolved = resolve_credentials(&[credential(Some("TOKEN"), None)], &env).unwrap();
        assert_eq!(resolved[0].token.expose(), b"t0ken");

        let refused = resolve_credentials(&[credential(Some("TOKEN"), Some("/etc/hostname"))], &env).unwrap_err();
        assert_eq!(refused.field(), Some("source.credentials[0].ssh_key_file"));
        assert!(refused.to_string().contains("over HTTPS with a token"), "{refused}");

        let refused = resolve_credentials(&[credential(None, None)], &env).unwrap_err();
        assert_eq!(refused.field(), Some("source.credentials[0].token_env"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0, 0).unwrap(), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_763_780_400, 60).unwrap(), "2025-11-22T04:00:00+01:00");
        assert_eq!(rfc3339(1_763_780_400, -330).unwrap(), "2025-11-21T21:30:00-05:30");
    }

    #[test]
    fn checks_out_the_exact_commit_and_fetches_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("a.txt"), "one").unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-qm", "one"]);
        let first = git(&work, &["rev-parse", "HEAD"]);
        std::fs::write(work.join("a.txt"), "two").unwrap();
        git(&work, &["commit", "-qam", "two"]);
        let url = format!("file://{}", work.display());

        let sources = Sources::new(dir.path().join("cache"), vec![]);
        let ws = dir.path().join("ws1");
        sources.checkout(&url, &first, &ws).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "one");
        assert!(!ws.join(".git").exists(), "a workspace is a plain tree");

        let missing = "0123456789012345678901234567890123456789";
        let err = sources.checkout(&url, missing, &dir.path().join("ws2")).unwrap_err();
        assert!(!err.is_transient(), "{err}");
        let err = sources
            .checkout("file:///nonexistent/repo", &first, &dir.path().join("ws3"))
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}
