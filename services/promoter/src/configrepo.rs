//! The config repo: the desired state of every environment, as commits. The promoter keeps a
//! clone in its cache (its objects and branch; the working tree is never used), and every
//! change is: fetch, move the branch to the remote's head, build the new tree in memory, commit,
//! push fast-forward only; a rejected push (someone else pushed first) starts over from the new
//! head. A clone known to equal a remote head (after a fetch or a push of ours) is fetched only
//! when the branch has moved since (`git ls-remote` says), and a commit right after a read (the
//! policy read that precedes every promotion) starts from it without asking: a push from a head
//! the remote has left is rejected all the same. Each commit names its promotion in a
//! `Baton-Promotion: <id>` trailer, so a promotion retried after a crash finds its own commit
//! instead of committing twice.
//!
//! Layout: `environments.yaml` at the root, and `<environment>/<app>/` holding the app's
//! rendered manifests plus `.baton-release.yaml` (which release they are, and the pin).
//!
//! Blocking (libgit2): call from `spawn_blocking`. One process serializes its own use of the
//! working clone; replicas are kept apart by the environment locks and by fast-forward pushes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use baton_kit::source::{Sources, TreeFile, commits_in, files_in};
use baton_schemas::release::{RELEASE_FILE, ReleaseFile};

/// The trailer naming the promotion a commit made.
pub const PROMOTION_TRAILER: &str = "Baton-Promotion";

/// How far back a promotion's commit is looked for before committing it again.
const PROMOTION_SEARCH_DEPTH: usize = 1000;
/// How many rejected pushes in a row before giving up (the event is retried later).
const PUSH_ATTEMPTS: usize = 10;

/// A config-repo operation failed. Reaching the repo, its branch and the working clone are
/// worth retrying later; what the repo holds (a commit or folder a rollback needs, a release
/// file, a path) is not.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Fetch or push could not reach the repo.
    #[error("the config repo {url} is unreachable: {}", source.message())]
    Unreachable {
        /// The URL.
        url: String,
        /// libgit2's error.
        #[source]
        source: git2::Error,
    },
    /// The branch does not exist yet.
    #[error("the config repo {url} has no branch `{branch}`: push a first commit with environments.yaml to it")]
    NoBranch {
        /// The URL.
        url: String,
        /// The branch.
        branch: String,
    },
    /// Others kept pushing first.
    #[error("pushing to the config repo {url} was rejected {PUSH_ATTEMPTS} times in a row (others pushed first)")]
    Contended {
        /// The URL.
        url: String,
    },
    /// The local working clone failed while doing `operation`.
    #[error("the config repo's working clone failed while {operation}: {}", source.message())]
    Local {
        /// What was being done, e.g. `committing`.
        operation: &'static str,
        /// libgit2's error.
        #[source]
        source: git2::Error,
    },
    /// The working clone's directory could not be created.
    #[error("the config repo's working clone failed: cannot create {}: {source}", path.display())]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The repo has no such commit (a rollback's source).
    #[error("the config repo has no commit {commit}")]
    MissingCommit {
        /// The commit as asked for.
        commit: String,
        /// libgit2's error.
        #[source]
        source: git2::Error,
    },
    /// The commit has no such folder.
    #[error("the config repo has no folder {dir} at {commit}")]
    MissingFolder {
        /// The folder.
        dir: String,
        /// The commit.
        commit: String,
    },
    /// A `.baton-release.yaml` that does not parse.
    #[error("{path} in the config repo is not a Baton release file: {source}")]
    ReleaseFile {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: yaml_serde::Error,
    },
    /// A `.baton-release.yaml` that is not a file.
    #[error("{path} is not a file")]
    NotAFile {
        /// The path.
        path: String,
    },
    /// A manifest path git cannot hold.
    #[error("{path}: {}", source.message())]
    InvalidPath {
        /// The path in the repo.
        path: String,
        /// libgit2's error.
        #[source]
        source: git2::Error,
    },
}

impl RepoError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::NoBranch { .. }
            | Self::Contended { .. }
            | Self::Local { .. }
            | Self::Workdir { .. } => true,
            Self::MissingCommit { .. }
            | Self::MissingFolder { .. }
            | Self::ReleaseFile { .. }
            | Self::NotAFile { .. }
            | Self::InvalidPath { .. } => false,
        }
    }

    /// The error's metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "config_repo_unreachable",
            Self::NoBranch { .. } => "config_repo_no_branch",
            Self::Contended { .. } => "config_repo_contended",
            Self::Local { .. } | Self::Workdir { .. } => "config_repo_local",
            Self::MissingCommit { .. } => "config_repo_missing_commit",
            Self::MissingFolder { .. } => "config_repo_missing_folder",
            Self::ReleaseFile { .. } | Self::NotAFile { .. } => "invalid_release_file",
            Self::InvalidPath { .. } => "invalid_manifest_path",
        }
    }
}

/// The working clone failed while doing `operation`.
fn local(operation: &'static str) -> impl FnOnce(git2::Error) -> RepoError {
    move |source| RepoError::Local { operation, source }
}

/// A change to one environment's folder of one app.
#[derive(Debug, Clone)]
pub struct Change {
    /// The promotion's id (the commit's trailer).
    pub promotion: String,
    /// The folder, `<environment>/<app>`.
    pub dir: String,
    /// The manifests to write (replacing the folder's), or `None` to keep them (pin, unpin).
    pub files: Option<Vec<TreeFile>>,
    /// The new `.baton-release.yaml`.
    pub release_file: Vec<u8>,
    /// The commit message's first lines (the trailer is appended).
    pub message: String,
}

/// What a change produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The commit (full sha).
    pub commit: String,
    /// Whether an earlier attempt had already made it.
    pub existed: bool,
}

/// The config repo and the promoter's working clone of it.
#[derive(Debug)]
pub struct ConfigRepo {
    url: String,
    branch: String,
    workdir: PathBuf,
    author_name: String,
    author_email: String,
    sources: Sources,
    /// Held for every use of the working clone. It holds the remote head the clone was last
    /// made exactly equal to (by a fetch or by a push of ours), if nothing has changed it since.
    guard: Mutex<Option<git2::Oid>>,
}

/// The remote head and the bytes of files there, in the order asked (`None` where absent).
pub type FilesAtHead = (String, Vec<Option<Vec<u8>>>);

impl ConfigRepo {
    /// The repo at `url`, cloned into `workdir` on first use; `sources` supplies credentials.
    pub fn new(
        url: impl Into<String>,
        branch: impl Into<String>,
        workdir: PathBuf,
        author: (String, String),
        sources: Sources,
    ) -> Self {
        Self {
            url: url.into(),
            branch: branch.into(),
            workdir,
            author_name: author.0,
            author_email: author.1,
            sources,
            guard: Mutex::new(None),
        }
    }

    /// The repo's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches and returns the remote head and the text of `path` there (if present).
    ///
    /// # Errors
    /// [`RepoError`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn read_at_head(&self, path: &str) -> Result<(String, Option<Vec<u8>>), RepoError> {
        let mut guard = self.lock();
        let repo = self.open()?;
        let head = self.sync(&repo, &mut guard)?;
        let bytes = file_in(&repo, head, path).map_err(local("reading a file at the head"))?;
        Ok((head.to_string(), bytes))
    }

    /// Fetches and returns the remote head and the bytes of each of `paths` there (`None` where
    /// absent), all read at that one commit.
    ///
    /// # Errors
    /// [`RepoError`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn read_files_at_head(&self, paths: &[String]) -> Result<FilesAtHead, RepoError> {
        let mut guard = self.lock();
        let repo = self.open()?;
        let head = self.sync(&repo, &mut guard)?;
        let files = paths
            .iter()
            .map(|path| file_in(&repo, head, path))
            .collect::<Result<_, _>>()
            .map_err(local("reading a file at the head"))?;
        Ok((head.to_string(), files))
    }

    /// The `.baton-release.yaml` files at the remote head: `(dir, file)` for every
    /// `<environment>/<app>/` folder.
    ///
    /// # Errors
    /// [`RepoError`]; a release file that does not parse is [`RepoError::ReleaseFile`].
    pub fn release_files_at_head(&self) -> Result<(String, Vec<(String, ReleaseFile)>), RepoError> {
        let mut guard = self.lock();
        let repo = self.open()?;
        let head = self.sync(&repo, &mut guard)?;
        let tree = repo
            .find_commit(head)
            .and_then(|c| c.tree())
            .map_err(local("reading the head's tree"))?;
        // Only the release files are read, not every manifest beside them.
        let mut found = Vec::new();
        let mut failure = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
            if entry.name().ok() == Some(RELEASE_FILE) && root.matches('/').count() == 2 {
                let dir = root.trim_end_matches('/').to_owned();
                match entry.to_object(&repo).ok().and_then(|o| o.into_blob().ok()) {
                    Some(blob) => match parse_release_file(&dir, blob.content()) {
                        Ok(file) => found.push((dir, file)),
                        Err(e) => failure = Some(e),
                    },
                    None => {
                        failure = Some(RepoError::NotAFile {
                            path: format!("{dir}/{RELEASE_FILE}"),
                        });
                    }
                }
            }
            git2::TreeWalkResult::Ok
        })
        .map_err(local("reading the head's tree"))?;
        match failure {
            Some(e) => Err(e),
            None => Ok((head.to_string(), found)),
        }
    }

    /// The history of `dir`'s release file, newest first: every commit that changed it, with
    /// the file as that commit left it.
    ///
    /// # Errors
    /// [`RepoError`].
    pub fn history(&self, dir: &str, limit: usize) -> Result<Vec<(String, ReleaseFile)>, RepoError> {
        let mut guard = self.lock();
        let repo = self.open()?;
        let head = self.sync(&repo, &mut guard)?;
        let path = format!("{dir}/{RELEASE_FILE}");
        // The branch's own line (first parents) and the commits that changed `dir` on it: a walk
        // that compares trees, which the kit's `commits_in` (every parent, no trees) is not.
        let mut walk = repo.revwalk().map_err(local("walking the history"))?;
        walk.push(head).map_err(local("walking the history"))?;
        walk.simplify_first_parent().map_err(local("walking the history"))?;
        let mut out = Vec::new();
        for oid in walk {
            let oid = oid.map_err(local("walking the history"))?;
            let commit = repo.find_commit(oid).map_err(local("walking the history"))?;
            if !changed_dir(&commit, dir) {
                continue;
            }
            if let Some(bytes) = file_in(&repo, oid, &path).map_err(local("reading a release file"))? {
                out.push((oid.to_string(), parse_release_file(dir, &bytes)?));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The manifest files of `dir` at `commit` (release file excluded), byte for byte.
    ///
    /// # Errors
    /// [`RepoError::MissingCommit`] and [`RepoError::MissingFolder`] (permanent), and the
    /// failures of reaching the repo.
    pub fn files_at(&self, commit: &str, dir: &str) -> Result<Vec<TreeFile>, RepoError> {
        let mut guard = self.lock();
        let repo = self.open()?;
        let missing = |source| RepoError::MissingCommit {
            commit: commit.to_owned(),
            source,
        };
        let oid = git2::Oid::from_str(commit).map_err(missing)?;
        if repo.find_commit(oid).is_err() {
            self.sync(&repo, &mut guard)?;
        }
        repo.find_commit(oid).map_err(missing)?;
        let files = files_in(&repo, oid, dir)
            .map_err(local("reading a folder"))?
            .ok_or_else(|| RepoError::MissingFolder {
                dir: dir.to_owned(),
                commit: oid.to_string(),
            })?;
        Ok(files.into_iter().filter(|(path, _)| path != RELEASE_FILE).collect())
    }

    /// The commit of promotion `id` on the branch (among the recent ones), if it was made.
    ///
    /// # Errors
    /// [`RepoError`].
    pub fn promotion_commit(&self, id: &str) -> Result<Option<String>, RepoError> {
        let mut guard = self.lock();
        let repo = self.open()?;
        let head = self.sync(&repo, &mut guard)?;
        find_promotion(&repo, head, id)
    }

    /// Commits `change` and pushes it fast-forward, unless a commit of the same promotion is
    /// already on the branch.
    ///
    /// # Errors
    /// [`RepoError`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn commit(&self, change: &Change) -> Result<Committed, RepoError> {
        let mut guard = self.lock();
        let repo = self.open()?;
        for attempt in 1..=PUSH_ATTEMPTS {
            // A clone synced a moment ago (the policy read before a promotion) is not fetched
            // again: the push only moves the branch from the head this commit was made on, so a
            // clone that has fallen behind is rejected and the next attempt fetches.
            let head = match *guard {
                Some(head) if attempt == 1 => head,
                _ => self.sync(&repo, &mut guard)?,
            };
            if let Some(existing) = find_promotion(&repo, head, &change.promotion)? {
                return Ok(Committed {
                    commit: existing,
                    existed: true,
                });
            }
            *guard = None;
            let commit = self.write_and_commit(&repo, head, change)?;
            match self.push(&repo, head, commit) {
                Ok(()) => {
                    *guard = Some(commit);
                    return Ok(Committed {
                        commit: commit.to_string(),
                        existed: false,
                    });
                }
                Err(PushError::Rejected(why)) => {
                    tracing::info!(attempt, %why, "config repo push rejected; starting over from the new head");
                }
                Err(PushError::Failed(e)) => return Err(e),
            }
        }
        Err(RepoError::Contended { url: self.url.clone() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<git2::Oid>> {
        self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open(&self) -> Result<git2::Repository, RepoError> {
        if let Ok(repo) = git2::Repository::open(&self.workdir) {
            return Ok(repo);
        }
        std::fs::create_dir_all(&self.workdir).map_err(|source| RepoError::Workdir {
            path: self.workdir.clone(),
            source,
        })?;
        let repo = git2::Repository::init(&self.workdir).map_err(local("creating the clone"))?;
        repo.remote("origin", &self.url).map_err(local("creating the clone"))?;
        Ok(repo)
    }

    fn unreachable(&self) -> impl FnOnce(git2::Error) -> RepoError + '_ {
        |source| RepoError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    /// Brings the local branch to the remote head, fetching only when the branch moved.
    #[tracing::instrument(level = "debug", skip_all)]
    fn sync(&self, repo: &git2::Repository, synced: &mut Option<git2::Oid>) -> Result<git2::Oid, RepoError> {
        // A clone equal to a head the remote still has needs no fetch: asking the branch's head
        // (`git ls-remote`) is one exchange, where a fetch negotiates and writes a pack.
        if let Some(known) = *synced
            && self.remote_head(repo)? == Some(known)
        {
            return Ok(known);
        }
        *synced = None;
        let mut remote = repo.find_remote("origin").map_err(local("fetching"))?;
        let mut options = git2::FetchOptions::new();
        options.remote_callbacks(self.sources.remote_callbacks(&self.url));
        let tracking = format!("refs/remotes/origin/{}", self.branch);
        remote
            .fetch(
                &[format!("+refs/heads/{}:{tracking}", self.branch)],
                Some(&mut options),
                None,
            )
            .map_err(self.unreachable())?;
        let head = repo.refname_to_id(&tracking).map_err(|_| RepoError::NoBranch {
            url: self.url.clone(),
            branch: self.branch.clone(),
        })?;
        // Only the branch moves: every read and commit works on objects, never the working tree.
        let local_branch = format!("refs/heads/{}", self.branch);
        repo.reference(&local_branch, head, true, "baton: sync with the remote")
            .map_err(local("moving the branch to the remote's head"))?;
        repo.set_head(&local_branch)
            .map_err(local("moving the branch to the remote's head"))?;
        *synced = Some(head);
        Ok(head)
    }

    /// The remote branch's head, without fetching.
    fn remote_head(&self, repo: &git2::Repository) -> Result<Option<git2::Oid>, RepoError> {
        let mut remote = repo.find_remote("origin").map_err(local("asking the remote's head"))?;
        let connection = remote
            .connect_auth(
                git2::Direction::Fetch,
                Some(self.sources.remote_callbacks(&self.url)),
                None,
            )
            .map_err(self.unreachable())?;
        let branch = format!("refs/heads/{}", self.branch);
        let head = connection
            .list()
            .map_err(self.unreachable())?
            .iter()
            .find(|h| h.name() == branch)
            .map(git2::RemoteHead::oid);
        Ok(head)
    }

    fn write_and_commit(
        &self,
        repo: &git2::Repository,
        head: git2::Oid,
        change: &Change,
    ) -> Result<git2::Oid, RepoError> {
        const COMMITTING: &str = "committing";
        // The new tree is built in memory from the head's: the blobs and trees go straight into
        // the object database, and neither the working tree nor the index file is written.
        let parent = repo.find_commit(head).map_err(local(COMMITTING))?;
        let mut index = repo.index().map_err(local(COMMITTING))?;
        index
            .read_tree(&parent.tree().map_err(local(COMMITTING))?)
            .map_err(local(COMMITTING))?;
        let release_file = format!("{}/{RELEASE_FILE}", change.dir);
        if let Some(files) = &change.files {
            // The folder becomes exactly these files.
            index.remove_dir(Path::new(&change.dir), 0).map_err(local(COMMITTING))?;
            for (path, bytes) in files {
                let path = format!("{}/{path}", change.dir);
                add_blob(&mut index, path.clone(), bytes).map_err(|source| RepoError::InvalidPath { path, source })?;
            }
        }
        add_blob(&mut index, release_file, &change.release_file).map_err(local(COMMITTING))?;
        let tree_id = index.write_tree().map_err(local(COMMITTING))?;
        let tree = repo.find_tree(tree_id).map_err(local(COMMITTING))?;
        let signature = git2::Signature::now(&self.author_name, &self.author_email).map_err(local(COMMITTING))?;
        let message = format!(
            "{}\n\n{PROMOTION_TRAILER}: {}\n",
            change.message.trim_end(),
            change.promotion
        );
        let local_branch = format!("refs/heads/{}", self.branch);
        repo.commit(Some(&local_branch), &signature, &signature, &message, &tree, &[&parent])
            .map_err(local(COMMITTING))
    }

    /// Pushes `commit` (a child of `expected`) to the branch, fast-forward only.
    #[tracing::instrument(level = "debug", skip_all)]
    fn push(&self, repo: &git2::Repository, expected: git2::Oid, commit: git2::Oid) -> Result<(), PushError> {
        if let Some(path) = local_path(&self.url) {
            return self.push_local(repo, &path, expected, commit);
        }
        let refspec = format!("refs/heads/{0}:refs/heads/{0}", self.branch);
        self.push_refspec(repo, &refspec)
    }

    fn push_refspec(&self, repo: &git2::Repository, refspec: &str) -> Result<(), PushError> {
        let mut remote = repo.find_remote("origin").map_err(local("pushing"))?;
        let mut callbacks = self.sources.remote_callbacks(&self.url);
        let rejection = std::rc::Rc::new(std::cell::RefCell::new(None::<String>));
        let seen = std::rc::Rc::clone(&rejection);
        callbacks.push_update_reference(move |_refname, status| {
            if let Some(message) = status {
                *seen.borrow_mut() = Some(message.to_owned());
            }
            Ok(())
        });
        let mut options = git2::PushOptions::new();
        options.remote_callbacks(callbacks);
        match remote.push(&[refspec], Some(&mut options)) {
            Ok(()) => match rejection.borrow_mut().take() {
                Some(why) => Err(PushError::Rejected(why)),
                None => Ok(()),
            },
            Err(e) if e.code() == git2::ErrorCode::NotFastForward => Err(PushError::Rejected(e.message().to_owned())),
            Err(e) => Err(PushError::Failed(self.unreachable()(e))),
        }
    }

    /// A repo on this machine: send the objects under a private ref, then move the branch with
    /// compare-and-swap on its old value (the local transport would otherwise overwrite a
    /// branch another process moved a moment earlier).
    fn push_local(
        &self,
        repo: &git2::Repository,
        path: &Path,
        expected: git2::Oid,
        commit: git2::Oid,
    ) -> Result<(), PushError> {
        let staging = format!("refs/baton/incoming/{commit}");
        self.push_refspec(repo, &format!("+{commit}:{staging}"))?;
        let remote = git2::Repository::open_bare(path).map_err(self.unreachable())?;
        let branch = format!("refs/heads/{}", self.branch);
        let moved = remote.reference_matching(&branch, commit, true, expected, "baton: promote (fast-forward)");
        if let Ok(mut staged) = remote.find_reference(&staging) {
            let _ = staged.delete();
        }
        match moved {
            Ok(_) => Ok(()),
            Err(e) if e.code() == git2::ErrorCode::Modified || e.class() == git2::ErrorClass::Reference => {
                Err(PushError::Rejected(e.message().to_owned()))
            }
            Err(e) => Err(PushError::Failed(local("moving the remote's branch")(e))),
        }
    }
}

/// A push that did not land: rejected (someone pushed first; what the remote said), or failed.
enum PushError {
    Rejected(String),
    Failed(RepoError),
}

impl From<RepoError> for PushError {
    fn from(e: RepoError) -> Self {
        Self::Failed(e)
    }
}

/// Puts `bytes` in the object database and at `path` in the (in-memory) index, as a regular file.
fn add_blob(index: &mut git2::Index, path: String, bytes: &[u8]) -> Result<(), git2::Error> {
    let entry = git2::IndexEntry {
        ctime: git2::IndexTime::new(0, 0),
        mtime: git2::IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: 0o100_644,
        uid: 0,
        gid: 0,
        file_size: 0,
        id: git2::Oid::ZERO_SHA1,
        flags: 0,
        flags_extended: 0,
        path: path.into_bytes(),
    };
    index.add_frombuffer(&entry, bytes)
}

/// The directory of a `file://` URL or plain path.
fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    (url.starts_with('/') || url.starts_with("./") || url.starts_with("../")).then(|| PathBuf::from(url))
}

/// The bytes of the file at `path` in `commit` of `repo` (the config repo's clone, or an app
/// repo's mirror); `None` when the commit has no file there.
///
/// # Errors
/// When the commit is not in `repo` or an object cannot be read.
pub(crate) fn file_in(repo: &git2::Repository, commit: git2::Oid, path: &str) -> Result<Option<Vec<u8>>, git2::Error> {
    let tree = repo.find_commit(commit)?.tree()?;
    let Ok(entry) = tree.get_path(Path::new(path)) else {
        return Ok(None);
    };
    Ok(entry
        .to_object(repo)?
        .into_blob()
        .ok()
        .map(|blob| blob.content().to_vec()))
}

/// Whether `commit` changed anything under `dir` compared with its first parent.
fn changed_dir(commit: &git2::Commit<'_>, dir: &str) -> bool {
    let id = |c: &git2::Commit<'_>| {
        c.tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(dir)).ok())
            .map(|e| e.id())
    };
    id(commit) != commit.parent(0).ok().and_then(|p| id(&p))
}

/// The promotion a commit message's trailer names.
fn promotion_of(message: &str) -> Option<&str> {
    let prefix = format!("{PROMOTION_TRAILER}: ");
    message
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
}

/// The commit of promotion `id` among the last commits of the branch.
fn find_promotion(repo: &git2::Repository, head: git2::Oid, id: &str) -> Result<Option<String>, RepoError> {
    let recent =
        commits_in(repo, head, None, PROMOTION_SEARCH_DEPTH).map_err(local("looking for the promotion's commit"))?;
    Ok(recent
        .into_iter()
        .find(|c| promotion_of(&c.message) == Some(id))
        .map(|c| c.id))
}

fn parse_release_file(dir: &str, bytes: &[u8]) -> Result<ReleaseFile, RepoError> {
    yaml_serde::from_slice(bytes).map_err(|source| RepoError::ReleaseFile {
        path: format!("{dir}/{RELEASE_FILE}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bare "remote" is made and read with libgit2 directly: these tests are about the
    // working clone's fetches and pushes; the promoter suite checks the result with the git CLI.

    /// A bare repo whose `main` holds one commit with `environments.yaml`.
    fn bare_with_first_commit(dir: &Path) -> PathBuf {
        let bare = dir.join("config.git");
        let repo = git2::Repository::init_opts(
            &bare,
            git2::RepositoryInitOptions::new().bare(true).initial_head("main"),
        )
        .unwrap();
        let blob = repo.blob(b"environments: []\n").unwrap();
        let mut tree = repo.treebuilder(None).unwrap();
        tree.insert("environments.yaml", blob, 0o100_644).unwrap();
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let author = git2::Signature::now("A", "a@example.com").unwrap();
        repo.commit(Some("refs/heads/main"), &author, &author, "seed", &tree, &[])
            .unwrap();
        bare
    }

    /// The commit `spec` (`main`, `main^`, …) names in the bare repo.
    fn rev(bare: &Path, spec: &str) -> String {
        let repo = git2::Repository::open_bare(bare).unwrap();
        repo.revparse_single(spec).unwrap().id().to_string()
    }

    fn repo(dir: &Path, bare: &Path, name: &str) -> ConfigRepo {
        ConfigRepo::new(
            format!("file://{}", bare.display()),
            "main",
            dir.join(name),
            ("Baton".into(), "baton@test".into()),
            Sources::new(dir.join("cache"), vec![]),
        )
    }

    fn change(promotion: &str, dir: &str, content: &str) -> Change {
        Change {
            promotion: promotion.into(),
            dir: dir.into(),
            files: Some(vec![("app.yaml".into(), content.as_bytes().to_vec())]),
            release_file: b"not read by these tests\n".to_vec(),
            message: format!("promote {promotion}"),
        }
    }

    #[test]
    fn commits_once_per_promotion_and_pushes_fast_forward() {
        let dir = tempfile::tempdir().unwrap();
        let bare = bare_with_first_commit(dir.path());
        let a = repo(dir.path(), &bare, "a");
        let b = repo(dir.path(), &bare, "b");
        let first = a.commit(&change("p1", "staging/shop", "one")).unwrap();
        assert!(!first.existed);
        // The same promotion again (a retry after a crash) finds its commit.
        let again = b.commit(&change("p1", "staging/shop", "one")).unwrap();
        assert_eq!(
            again,
            Committed {
                commit: first.commit.clone(),
                existed: true
            }
        );
        // b's clone is behind nothing: it syncs before committing, so its push is a fast-forward.
        let second = b.commit(&change("p2", "production/shop", "two")).unwrap();
        let third = a.commit(&change("p3", "staging/shop", "three")).unwrap();
        // One line of four commits, each the parent of the next.
        let line = ["main", "main^", "main~2"].map(|spec| rev(&bare, spec));
        assert_eq!(line, [third.commit, second.commit, first.commit.clone()]);
        let remote = git2::Repository::open_bare(&bare).unwrap();
        let seed = remote.revparse_single("main~3").unwrap().peel_to_commit().unwrap();
        assert_eq!(seed.parent_count(), 0, "the seed is the first commit");
        let (_, bytes) = a.read_at_head("staging/shop/app.yaml").unwrap();
        assert_eq!(bytes.unwrap(), b"three");
        assert_eq!(
            a.files_at(&first.commit, "staging/shop").unwrap(),
            vec![("app.yaml".to_owned(), b"one".to_vec())]
        );
    }

    #[test]
    fn a_push_behind_the_remote_is_rejected_and_redone_on_the_new_head() {
        let dir = tempfile::tempdir().unwrap();
        let bare = bare_with_first_commit(dir.path());
        let a = repo(dir.path(), &bare, "a");
        let clone = a.open().unwrap();
        let head = a.sync(&clone, &mut None).unwrap();
        let stale = a
            .write_and_commit(&clone, head, &change("stale", "staging/shop", "x"))
            .unwrap();
        // Someone else pushes first.
        let other = repo(dir.path(), &bare, "other");
        let theirs = other.commit(&change("theirs", "staging/other", "y")).unwrap();
        assert!(matches!(a.push(&clone, head, stale), Err(PushError::Rejected(_))));
        assert_eq!(rev(&bare, "main"), theirs.commit, "the branch was not overwritten");
        drop(clone);
        let mine = a.commit(&change("mine", "staging/shop", "x")).unwrap();
        assert_eq!(rev(&bare, "main^"), theirs.commit);
        assert_eq!(rev(&bare, "main"), mine.commit);
    }

    #[test]
    fn a_clone_that_fell_behind_since_its_last_read_commits_on_the_new_head() {
        let dir = tempfile::tempdir().unwrap();
        let bare = bare_with_first_commit(dir.path());
        let a = repo(dir.path(), &bare, "a");
        // The read syncs a's clone; the commit that follows starts from it without fetching.
        let (read, _) = a.read_at_head("staging/shop/app.yaml").unwrap();
        let other = repo(dir.path(), &bare, "other");
        let theirs = other.commit(&change("theirs", "staging/other", "y")).unwrap();
        assert_ne!(read, theirs.commit);
        let mine = a.commit(&change("mine", "staging/shop", "x")).unwrap();
        assert_eq!(rev(&bare, "main^"), theirs.commit, "not a lost update");
        assert_eq!(rev(&bare, "main"), mine.commit);
        // A retry of their promotion through a finds their commit instead of making another.
        let again = a.commit(&change("theirs", "staging/other", "y")).unwrap();
        assert_eq!((again.commit, again.existed), (theirs.commit, true));
        let next = a.commit(&change("next", "staging/shop", "z")).unwrap();
        assert_eq!(rev(&bare, "main^"), mine.commit);
        assert_eq!(rev(&bare, "main"), next.commit);
        // A's clone is the remote's head now, and a read does not fetch for it; once someone
        // else pushes, a read sees their commit.
        let (head, bytes) = a.read_at_head("staging/shop/app.yaml").unwrap();
        assert_eq!((head, bytes.unwrap()), (next.commit.clone(), b"z".to_vec()));
        let later = other.commit(&change("later", "staging/shop", "w")).unwrap();
        let (head, bytes) = a.read_at_head("staging/shop/app.yaml").unwrap();
        assert_eq!((head, bytes.unwrap()), (later.commit, b"w".to_vec()));
    }
}
