//! Polling mode, for remotes that cannot send webhooks: every `poll.interval` the listener lists
//! the remote's refs (the kit's [`Sources::ls_remote`]), compares each tracked ref with the last
//! sha it saw (kept in JetStream KV, so replicas and restarts agree), fetches what changed into
//! the kit's cached mirror to read its commits, and records the push as a webhook's is
//! ([`push::record`]): a `change.merged`, unless the new head was released on that ref already
//! (a ref moved back to an earlier commit). Private remotes are reached with the credentials of
//! `source.credentials`.
//!
//! The event id is derived from the ref and the old and new sha, so two replicas polling the
//! same remote, or a crash between publishing and remembering, never start a second release.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use baton_kit::source::{self, RemoteRef, SourceError, Sources};
use baton_schemas::payloads::{CommitInfo, RepositoryInfo};
use baton_schemas::subjects::sanitize_token;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// The remote could not be listed or fetched.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A fetched commit could not be read from the mirror.
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// The last-seen state could not be read or written.
    #[error("state bucket: {0}")]
    State(String),
    /// The push could not be recorded (state bucket or JetStream).
    #[error(transparent)]
    Record(#[from] push::RecordError),
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
    sources: Sources,
    jetstream: jetstream::Context,
    state: kv::Store,
}

impl Poller {
    /// A poller for `repo` (which must have `poll` set), fetching through `sources`.
    pub fn new(
        repo: Arc<Repository>,
        sources: Sources,
        jetstream: jetstream::Context,
        state: kv::Store,
    ) -> Option<Self> {
        let poll = repo.poll.clone()?;
        let url = poll.url?;
        Some(Self {
            repo,
            url,
            interval: poll.interval,
            sources,
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

    /// One look at the remote. Returns how many new heads were published (a head released on
    /// its ref already is remembered, not published).
    ///
    /// # Errors
    /// When the remote cannot be listed or fetched, or NATS does not acknowledge.
    pub async fn poll_once(&self) -> Result<usize, PollError> {
        let (url, sources) = (self.url.clone(), self.sources.clone());
        let refs = tokio::task::spawn_blocking(move || sources.ls_remote(&url)).await??;
        let mut published = 0;
        // Annotated tags are advertised twice; the peeled `^{}` entry is not a ref of its own.
        for r in refs.into_iter().filter(|r| !r.name.ends_with("^{}")) {
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
                // A polled head starts its release's trace, as a webhook's request does.
                let span = tracing::info_span!(
                    parent: None,
                    "poll",
                    otel.name = %format_args!("poll {}", self.repo.name),
                    baton.service = "listener",
                );
                let recorded = push::record(&self.state, &self.jetstream, &self.repo, PROVIDER, &delivery, &push);
                match recorded.instrument(span).await? {
                    push::Recorded::Published { .. } => published += 1,
                    push::Recorded::AlreadyReleased(first) => tracing::info!(
                        repository = %self.repo.name, delivery = %delivery, git_ref = %push.git_ref, sha = %push.after,
                        chain.id = %first.release, first.event = %first.event, first.delivery = %first.delivery,
                        "polled head was released on this ref already; no new release"
                    ),
                }
            }
            self.state
                .put(&key, r.sha.clone().into())
                .await
                .map_err(|e| PollError::State(e.to_string()))?;
        }
        Ok(published)
    }

    async fn describe(&self, r: &RemoteRef, before: Option<String>) -> Result<Push, PollError> {
        let (url, sources, r, name) = (
            self.url.clone(),
            self.sources.clone(),
            r.clone(),
            self.repo.name.clone(),
        );
        let clone_url = self.repo.clone_url.clone().unwrap_or_else(|| self.url.clone());
        let (head, commits) =
            tokio::task::spawn_blocking(move || fetch_commits(&sources, &url, &r, before.as_deref())).await??;
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
    format!("poll.{}.{}", sanitize_token(repo), push::ref_token(git_ref))
}

type Head = (String, String, String);

/// Fetches `r` into the mirror and lists the commits from `before` (exclusive) to its new sha,
/// oldest first (the newest `MAX_COMMITS`); for a ref seen for the first time, only its head
/// commit.
fn fetch_commits(
    sources: &Sources,
    url: &str,
    r: &RemoteRef,
    before: Option<&str>,
) -> Result<(Head, Vec<CommitInfo>), PollError> {
    let local = format!("refs/baton/{}", r.name.trim_start_matches("refs/"));
    let mirror = sources.fetch_refs(url, &[format!("+{}:{local}", r.name)])?;
    let head = git2::Oid::from_str(&r.sha)?;
    let known_before = before
        .and_then(|b| git2::Oid::from_str(b).ok())
        .filter(|oid| mirror.find_commit(*oid).is_ok());
    let commits = match known_before {
        Some(old) => {
            let mut newest_first = source::commits_in(&mirror, head, Some(old), MAX_COMMITS)?;
            newest_first.reverse();
            newest_first
        }
        None => vec![source::describe_commit(&mirror, head)?],
    };
    let before = before.unwrap_or(ZERO_SHA).to_owned();
    Ok(((r.name.clone(), before, r.sha.clone()), commits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_are_valid() {
        let k = state_key("acme/shop", "refs/heads/feature/ü");
        assert!(k.starts_with("poll.acme_shop."));
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'));
    }
}
