//! Polling mode, for remotes that cannot send webhooks: every `poll.interval` the listener lists
//! the remote's refs with libgit2, compares each tracked ref with the last sha it saw (kept in
//! JetStream KV, so replicas and restarts agree), fetches what changed into a cached bare
//! repository to read its commits, and emits the same `change.merged` a webhook would.
//!
//! The event id is derived from the ref and the old and new sha, so two replicas polling the
//! same remote, or a crash between publishing and remembering, never start a second release.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use baton_kit::{Outgoing, events};
use baton_schemas::payloads::{CommitInfo, Person, RepositoryInfo};
use baton_schemas::subjects::sanitize_token;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::Repository;
use crate::providers::Push;
use crate::push;

/// Provider name of polled pushes in events.
pub const PROVIDER: &str = "poll";
/// Most commits listed for one polled push.
const MAX_COMMITS: usize = 2048;
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Why one poll failed (the poller logs it and tries again next interval).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// libgit2 could not list or fetch the remote.
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// The last-seen state could not be read or written.
    #[error("state bucket: {0}")]
    State(String),
    /// The event could not be published.
    #[error(transparent)]
    Publish(#[from] events::PublishError),
    /// The blocking git task failed.
    #[error("git task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Polls one repository.
#[derive(Debug, Clone)]
pub struct Poller {
    repo: Arc<Repository>,
    url: String,
    interval: Duration,
    cache: PathBuf,
    jetstream: jetstream::Context,
    state: kv::Store,
}

/// A ref as listed by the remote.
#[derive(Debug, Clone)]
struct RemoteRef {
    name: String,
    sha: String,
}

impl Poller {
    /// A poller for `repo` (which must have `poll` set), caching fetched objects under `cache_dir`.
    pub fn new(
        repo: Arc<Repository>,
        cache_dir: &Path,
        jetstream: jetstream::Context,
        state: kv::Store,
    ) -> Option<Self> {
        let poll = repo.poll.clone()?;
        let url = poll.url?;
        let cache = cache_dir.join(format!("{}.git", sanitize_token(&repo.name)));
        Some(Self {
            repo,
            url,
            interval: poll.interval,
            cache,
            jetstream,
            state,
        })
    }

    /// Polls every interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.poll_once().await {
                Ok(n) if n > 0 => {
                    tracing::info!(repository = %self.repo.name, pushes = n, "polling found new heads")
                }
                Ok(_) => tracing::debug!(repository = %self.repo.name, "polling found nothing new"),
                Err(e) => {
                    tracing::warn!(repository = %self.repo.name, error = %e, "polling failed; retrying next interval")
                }
            }
        }
    }

    /// One look at the remote. Returns how many new heads were published.
    ///
    /// # Errors
    /// When the remote cannot be listed or fetched, or NATS does not acknowledge.
    pub async fn poll_once(&self) -> Result<usize, PollError> {
        let (url, cache) = (self.url.clone(), self.cache.clone());
        let refs = tokio::task::spawn_blocking(move || list_refs(&cache, &url)).await??;
        let mut published = 0;
        for r in refs {
            let branch = r.name.strip_prefix("refs/heads/");
            let tag = r.name.strip_prefix("refs/tags/");
            let tracked = branch.is_some_and(|b| self.repo.tracks_branch(b)) || (tag.is_some() && self.repo.tags);
            if !tracked {
                continue;
            }
            let key = state_key(&self.repo.name, &r.name);
            let last = self
                .state
                .get(&key)
                .await
                .map_err(|e| PollError::State(e.to_string()))?;
            let before = last.map(|b| String::from_utf8_lossy(&b).into_owned());
            if before.as_deref() == Some(r.sha.as_str()) {
                continue;
            }
            let push = self.describe(&r, before.clone()).await?;
            if push::accept(&self.repo, &push).is_ok() {
                let delivery = format!("{}..{}", push.before, push.after);
                let event: Outgoing =
                    push::change_merged(&self.repo, PROVIDER, &delivery, &push).expect("push events serialize");
                events::publish(&self.jetstream, &event).await?;
                published += 1;
            }
            self.state
                .put(&key, r.sha.clone().into())
                .await
                .map_err(|e| PollError::State(e.to_string()))?;
        }
        Ok(published)
    }

    async fn describe(&self, r: &RemoteRef, before: Option<String>) -> Result<Push, PollError> {
        let (url, cache, r, name) = (self.url.clone(), self.cache.clone(), r.clone(), self.repo.name.clone());
        let clone_url = self.repo.clone_url.clone().unwrap_or_else(|| self.url.clone());
        let (head, commits) =
            tokio::task::spawn_blocking(move || fetch_commits(&cache, &url, &r, before.as_deref())).await??;
        Ok(Push {
            git_ref: head.0,
            before: head.1,
            after: head.2,
            repository: RepositoryInfo {
                name: name.rsplit('/').next().unwrap_or(&name).to_owned(),
                full_name: name,
                clone_url,
                html_url: None,
            },
            head_commit: commits.last().cloned(),
            commits,
            pusher: None,
        })
    }
}

/// KV key of the last sha seen for one ref (KV keys allow only a few characters, refs many).
fn state_key(repo: &str, git_ref: &str) -> String {
    let digest = Sha256::digest(git_ref.as_bytes());
    format!("poll.{}.{}", sanitize_token(repo), hex::encode(&digest[..12]))
}

fn open_cache(cache: &Path) -> Result<git2::Repository, git2::Error> {
    match git2::Repository::open_bare(cache) {
        Ok(r) => Ok(r),
        Err(_) => git2::Repository::init_bare(cache),
    }
}

fn list_refs(cache: &Path, url: &str) -> Result<Vec<RemoteRef>, git2::Error> {
    let repo = open_cache(cache)?;
    let mut remote = repo.remote_anonymous(url)?;
    let connection = remote.connect_auth(git2::Direction::Fetch, None, None)?;
    let refs = connection
        .list()?
        .iter()
        .filter(|h| {
            h.name().starts_with("refs/heads/") || (h.name().starts_with("refs/tags/") && !h.name().ends_with("^{}"))
        })
        .map(|h| RemoteRef {
            name: h.name().to_owned(),
            sha: h.oid().to_string(),
        })
        .collect();
    Ok(refs)
}

type Head = (String, String, String);

/// Fetches `r` into the cache and lists the commits from `before` (exclusive) to its new sha,
/// oldest first; for a ref seen for the first time, only its head commit.
fn fetch_commits(
    cache: &Path,
    url: &str,
    r: &RemoteRef,
    before: Option<&str>,
) -> Result<(Head, Vec<CommitInfo>), git2::Error> {
    let repo = open_cache(cache)?;
    let mut remote = repo.remote_anonymous(url)?;
    let local = format!("refs/baton/{}", r.name.trim_start_matches("refs/"));
    remote.fetch(&[format!("+{}:{local}", r.name)], None, None)?;
    let head = git2::Oid::from_str(&r.sha)?;
    let mut walk = repo.revwalk()?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)?;
    walk.push(head)?;
    let known_before = before
        .and_then(|b| git2::Oid::from_str(b).ok())
        .filter(|oid| repo.find_commit(*oid).is_ok());
    let commits: Vec<CommitInfo> = match known_before {
        Some(old) => {
            walk.hide(old)?;
            let oids: Vec<git2::Oid> = walk.collect::<Result<_, _>>()?;
            let skip = oids.len().saturating_sub(MAX_COMMITS);
            oids.into_iter()
                .skip(skip)
                .map(|oid| describe_commit(&repo, oid))
                .collect::<Result<_, _>>()?
        }
        None => vec![describe_commit(&repo, head)?],
    };
    let before = before.unwrap_or(ZERO_SHA).to_owned();
    Ok(((r.name.clone(), before, r.sha.clone()), commits))
}

fn describe_commit(repo: &git2::Repository, oid: git2::Oid) -> Result<CommitInfo, git2::Error> {
    let commit = repo.find_commit(oid)?;
    let author = commit.author();
    let time = commit.time();
    let timestamp = rfc3339(time.seconds(), time.offset_minutes());
    Ok(CommitInfo {
        id: oid.to_string(),
        message: commit.message().unwrap_or_default().to_owned(),
        timestamp,
        author: Person {
            name: author.name().ok().map(str::to_owned),
            email: author.email().ok().map(str::to_owned),
            username: None,
        },
        url: None,
    })
}

/// RFC 3339 from git's seconds-since-epoch and the author's UTC offset.
fn rfc3339(seconds: i64, offset_minutes: i32) -> Option<String> {
    let offset = chrono::FixedOffset::east_opt(offset_minutes.checked_mul(60)?)?;
    Some(
        chrono::DateTime::from_timestamp(seconds, 0)?
            .with_timezone(&offset)
            .to_rfc3339(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0, 0).unwrap(), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_763_780_400, 60).unwrap(), "2025-11-22T04:00:00+01:00");
        assert_eq!(rfc3339(1_763_780_400, -330).unwrap(), "2025-11-21T21:30:00-05:30");
    }

    #[test]
    fn state_keys_are_valid() {
        let k = state_key("acme/shop", "refs/heads/feature/ü");
        assert!(k.starts_with("poll.acme_shop."));
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'));
    }
}
