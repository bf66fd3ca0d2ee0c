//! From an accepted push to the `change.merged` event that starts a release, and the rule that
//! a commit is released once per ref.
//!
//! Webhooks and the poller both go through [`record`]:
//!
//! 1. build the `change.merged` of the push ([`change_merged`]);
//! 2. claim the commit on its ref: create the key [`commit_key`] of `baton-state` holding a
//!    [`CommitRecord`] (compare-and-set, so of two replicas racing one wins);
//! 3. judge what the key already held ([`judge`]): nothing (the claim is ours now), a claim
//!    whose event JetStream has not acknowledged yet (ours from a failed attempt, or another
//!    push's), the published event of this very push (a redelivery), or the published event of
//!    another push of the same commit;
//! 4. publish an unfinished claim's event under the claim's id and release (should it be stored
//!    already, JetStream drops the copy), then mark the claim published; answer a redelivery as
//!    a duplicate; for another push's release, publish nothing and return its record.
//!
//! The git host's delivery id is not signed, so it cannot be what tells a replay from a new
//! push: a captured body sent again under a new delivery id, a force-push back to a released
//! commit or a ref the poller sees move back would otherwise start a fresh release of an old
//! commit.

use async_nats::jetstream::{self, kv};
use baton_kit::{Outgoing, events, telemetry};
use baton_schemas::payloads::{CommitInfo, Person, PushData};
use baton_schemas::subjects::sanitize_token;
use baton_schemas::{CdEvent, EventType};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Repository;
use crate::providers::Push;

/// CloudEvents/CDEvents source of the listener's events.
pub const SOURCE: &str = "/baton/listener";

/// Why a push does not start a release. The text is what the git host sees in the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored(pub String);

/// The event id of a push: derived from the host's delivery id and the ref, so a redelivered
/// webhook produces the same id and JetStream's duplicate window drops it.
pub fn event_id(provider: &str, delivery_id: &str, git_ref: &str) -> String {
    format!("{provider}:{delivery_id}:{git_ref}")
}

/// The release id an event starts: one per event id, so the same for a redelivery of a push.
pub fn release_id(event_id: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("baton:release:{event_id}").as_bytes(),
    )
    .to_string()
}

/// Decides whether `push` starts a release for `repo`.
///
/// # Errors
/// [`Ignored`] with the reason: a deleted ref, an untracked branch, a tag when tags do not
/// trigger, or a ref that is neither a branch nor a tag.
pub fn accept(repo: &Repository, push: &Push) -> Result<(), Ignored> {
    if push.is_deletion() {
        return Err(Ignored(format!(
            "ignored: `{}` was deleted; deletions start no release",
            push.git_ref
        )));
    }
    if let Some(branch) = push.branch() {
        if repo.tracks_branch(branch) {
            return Ok(());
        }
        return Err(Ignored(format!(
            "ignored: branch `{branch}` is not tracked for {} (tracked: {})",
            repo.name,
            repo.branch_patterns.join(", ")
        )));
    }
    if let Some(tag) = push.tag() {
        if repo.tags {
            return Ok(());
        }
        return Err(Ignored(format!(
            "ignored: tag `{tag}`: tags do not start releases for {} (set `tags: true`)",
            repo.name
        )));
    }
    Err(Ignored(format!(
        "ignored: `{}` is neither a branch nor a tag",
        push.git_ref
    )))
}

/// The `change.merged` event for an accepted push.
///
/// # Errors
/// Only if the event cannot be represented as JSON (it always can).
pub fn change_merged(
    repo: &Repository,
    provider: &str,
    delivery_id: &str,
    push: &Push,
) -> Result<Outgoing, serde_json::Error> {
    let id = event_id(provider, delivery_id, &push.git_ref);
    let mut repository = push.repository.clone();
    if let Some(url) = &repo.clone_url {
        repository.clone_url.clone_from(url);
    }
    let head_commit = push.head_commit.clone().unwrap_or_else(|| CommitInfo {
        id: push.after.clone(),
        message: String::new(),
        timestamp: None,
        author: Person::default(),
        committer: None,
        url: None,
    });
    let source = repository
        .html_url
        .clone()
        .unwrap_or_else(|| repository.clone_url.clone());
    let content = cdevents_content(&repo.name, &source);
    let data = PushData {
        app: repo.name.clone(),
        provider: provider.to_owned(),
        delivery_id: delivery_id.to_owned(),
        git_ref: push.git_ref.clone(),
        branch: push.branch().map(str::to_owned),
        tag: push.tag().map(str::to_owned),
        before: push.before.clone(),
        after: push.after.clone(),
        repository,
        head_commit,
        commits: push.commits.clone(),
        pusher: push.pusher.clone(),
    };
    let event = CdEvent::new(EventType::ChangeMerged, id.clone(), SOURCE, push.after.clone(), content)?
        .with_subject_source(source)
        .with_chain_id(release_id(&id))
        .with_custom_data(data)?;
    Ok(Outgoing::new(repo.name.clone(), event))
}

/// The standard `change.merged` content: the repository, typed by the CDEvents SDK.
fn cdevents_content(name: &str, source: &str) -> cdevents_sdk::change_merged_0_3_0::Content {
    let repository =
        cdevents_sdk::Id::try_from(name)
            .ok()
            .map(|id| cdevents_sdk::change_merged_0_3_0::ContentRepository {
                id,
                source: cdevents_sdk::UriReference::try_from(source).ok(),
            });
    cdevents_sdk::change_merged_0_3_0::Content { repository }
}

/// What `baton-state` keeps of the push that released a commit on a ref, under [`commit_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The release the commit started (`chainId`).
    pub release: String,
    /// The id of the `change.merged` that started it.
    pub event: String,
    /// The delivery id of that push (`<before>..<after>` for a polled one).
    pub delivery: String,
    /// Who reported the push: a provider, or `poll`.
    pub provider: String,
    /// The ref the commit was pushed to.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit.
    pub sha: String,
    /// When the listener claimed the commit for that push.
    pub at: DateTime<Utc>,
    /// Whether JetStream acknowledged the event. Until it has, the claim is unfinished: the
    /// next push of the commit publishes the event under the claim's id, so a publish that
    /// failed after the claim never leaves the commit unreleased.
    #[serde(default)]
    pub published: bool,
}

impl CommitRecord {
    /// Why a later push of the same commit starts nothing: what the git host reads in the answer.
    pub fn reason(&self) -> String {
        let short = self.sha.get(..7).unwrap_or(&self.sha);
        format!(
            "commit {short} of {} was released already as {} (delivery {}); a push of the same commit starts no new release",
            self.git_ref, self.release, self.delivery
        )
    }
}

/// What to do with a push whose commit's key holds a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The claim is unfinished (ours, or another push's whose publish failed): publish the event
    /// under the record's id and release.
    Publish(CommitRecord),
    /// This very push was published: a redelivery, answered as a duplicate.
    Redelivery(CommitRecord),
    /// Another push released the commit on this ref: publish nothing.
    AlreadyReleased(CommitRecord),
}

/// Judges the record of a commit's claim against the id of the event a push would publish.
/// Only an event id tells a redelivery from another push (it derives from the delivery id);
/// what tells a new release from a repeated one is the record itself.
pub fn judge(existing: CommitRecord, event_id: &str) -> Claim {
    if !existing.published {
        Claim::Publish(existing)
    } else if existing.event == event_id {
        Claim::Redelivery(existing)
    } else {
        Claim::AlreadyReleased(existing)
    }
}

/// The `baton-state` key of a commit on a ref: `commit.<app token>.<ref token>.<sha>`.
///
/// KV keys allow only `[-/_=.a-zA-Z0-9]` in dot-separated tokens, and refs can hold almost
/// anything (unicode, dots, `>`, `*`, spaces, hundreds of bytes), so the ref is named by
/// `ref_token`. The sha is a full hex commit id for every accepted push; should anything else
/// ever reach here, it is hashed as well rather than written raw.
pub fn commit_key(app: &str, git_ref: &str, sha: &str) -> String {
    let is_sha = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    let commit = if is_sha {
        sha.to_ascii_lowercase()
    } else {
        format!("x{}", hex::encode(Sha256::digest(sha.as_bytes())))
    };
    format!("commit.{}.{}.{commit}", sanitize_token(app), ref_token(git_ref))
}

/// A ref as one KV key token: the first 96 bits of its SHA-256, in hex.
pub(crate) fn ref_token(git_ref: &str) -> String {
    hex::encode(&Sha256::digest(git_ref.as_bytes())[..12])
}

/// What [`record`] did with a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The release's event is on the stream: stored now, or before (`duplicate`) for a
    /// redelivery of the same push.
    Published {
        /// The event id.
        event: String,
        /// The release it starts.
        release: String,
        /// Whether it was on the stream already.
        duplicate: bool,
    },
    /// Another push released this commit on this ref: nothing new was stored.
    AlreadyReleased(CommitRecord),
}

/// Why a push could not be recorded. Every kind is worth a retry of the same push, except
/// [`RecordError::Publish`] with an event that breaks its schema (a bug).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The commit's key could not be created.
    #[error("cannot claim the commit in the state bucket: {0}")]
    Claim(#[source] kv::CreateError),
    /// The commit's key exists but could not be read.
    #[error("cannot read the commit's record in the state bucket: {0}")]
    Read(#[source] kv::EntryError),
    /// The commit's key holds something that is not a [`CommitRecord`].
    #[error("the state bucket's key {key} holds no commit record: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// JetStream did not store the event.
    #[error(transparent)]
    Publish(#[from] events::PublishError),
}

/// Records an accepted push, following the module's contract: claims its commit on its ref in
/// `state`, publishes its `change.merged` unless another push released that commit on that ref
/// already, and marks the claim published once JetStream has acknowledged.
///
/// # Errors
/// [`RecordError`] when the state bucket or JetStream do not answer: nothing new was released,
/// and retrying the same push is safe.
pub async fn record(
    state: &kv::Store,
    js: &jetstream::Context,
    repo: &Repository,
    provider: &str,
    delivery_id: &str,
    push: &Push,
) -> Result<Recorded, RecordError> {
    let mut out = change_merged(repo, provider, delivery_id, push).expect("push events serialize");
    // The span the push arrived in (a webhook's request, a poll) is the release's root.
    telemetry::annotate(telemetry::attr::APP, repo.name.as_str());
    telemetry::annotate(telemetry::attr::COMMIT, push.after.as_str());
    if let Some(release) = &out.event.context.chain_id {
        telemetry::annotate(telemetry::attr::RELEASE_ID, release.as_str());
    }
    let ours = CommitRecord {
        release: out.event.context.chain_id.clone().unwrap_or_default(),
        event: out.event.context.id.clone(),
        delivery: delivery_id.to_owned(),
        provider: provider.to_owned(),
        git_ref: push.git_ref.clone(),
        sha: push.after.clone(),
        at: out.event.context.timestamp,
        published: false,
    };
    let key = commit_key(&repo.name, &push.git_ref, &push.after);
    let (mut claimed, revision) = match claim(state, &key, &ours).await? {
        (Claim::Publish(claimed), revision) => (claimed, revision),
        (Claim::Redelivery(first), _) => {
            return Ok(Recorded::Published {
                event: first.event,
                release: first.release,
                duplicate: true,
            });
        }
        (Claim::AlreadyReleased(first), _) => return Ok(Recorded::AlreadyReleased(first)),
    };
    // An unfinished claim of another push is finished under its id: if that push's event was
    // stored after all, JetStream drops this one as a duplicate.
    out.event.context.id.clone_from(&claimed.event);
    out.event.context.chain_id = Some(claimed.release.clone());
    let (_, ack) = events::publish(js, &out).await?;
    claimed.published = true;
    let marked = serde_json::to_vec(&claimed).expect("a commit record serializes");
    match state.update(&key, marked.into(), revision).await {
        // Another push of the commit marked it first.
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
        // The event is stored; only a later push of the commit finds the claim unfinished and
        // publishes it again under the same id, which JetStream drops within its window.
        Err(e) => tracing::warn!(key, error = %e, "the release is recorded but its claim is not marked published"),
        Ok(_) => {}
    }
    if ack.duplicate && claimed.event != ours.event {
        return Ok(Recorded::AlreadyReleased(claimed));
    }
    Ok(Recorded::Published {
        event: claimed.event,
        release: claimed.release,
        duplicate: ack.duplicate,
    })
}

/// Creates `key` holding `ours`, or judges what it holds; with the revision to mark published.
/// A record that vanishes between the two (nobody deletes them, but an operator may) is
/// claimed again.
async fn claim(state: &kv::Store, key: &str, ours: &CommitRecord) -> Result<(Claim, u64), RecordError> {
    let value = bytes::Bytes::from(serde_json::to_vec(ours).expect("a commit record serializes"));
    loop {
        match state.create(key, value.clone()).await {
            Ok(revision) => return Ok((Claim::Publish(ours.clone()), revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(RecordError::Claim(e)),
        }
        let Some(entry) = state.entry(key).await.map_err(RecordError::Read)? else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let existing = serde_json::from_slice(&entry.value).map_err(|source| RecordError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        return Ok((judge(existing, &ours.event), entry.revision));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    /// What NATS accepts as a KV key: dot-separated non-empty tokens of `[-/_=a-zA-Z0-9]`.
    fn is_valid_kv_key(key: &str) -> bool {
        !key.is_empty()
            && key.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'='))
            })
    }

    #[test]
    fn commit_keys_are_valid_whatever_the_ref() {
        let long = format!("refs/heads/{}", "very-long-branch/".repeat(200));
        for git_ref in [
            "refs/heads/main",
            "refs/heads/feature/ü-日本語",
            "refs/heads/release.1.2..3.",
            "refs/heads/>",
            "refs/heads/*.*",
            "refs/heads/with space\ttab",
            "refs/tags/v1.0.0",
            "",
            long.as_str(),
        ] {
            let key = commit_key("acme/shop.api", git_ref, SHA);
            assert!(is_valid_kv_key(&key), "{git_ref:?} gives the invalid key {key}");
            assert!(key.len() < 128, "{key} is short whatever the ref");
            assert!(key.starts_with("commit.acme_shop_api."), "{key}");
            assert!(key.ends_with(&format!(".{SHA}")), "{key} names the commit");
        }
    }

    #[test]
    fn commit_keys_tell_refs_and_commits_apart() {
        let main = commit_key("acme/shop", "refs/heads/main", SHA);
        assert_ne!(main, commit_key("acme/shop", "refs/heads/release", SHA));
        assert_ne!(main, commit_key("acme/shop", "refs/tags/main", SHA));
        assert_ne!(main, commit_key("acme/other", "refs/heads/main", SHA));
        assert_ne!(main, commit_key("acme/shop", "refs/heads/main", &SHA.replace('0', "f")));
        assert_eq!(
            main,
            commit_key("acme/shop", "refs/heads/main", &SHA.to_ascii_uppercase()),
            "a sha is one commit in either case"
        );
    }

    #[test]
    fn a_sha_that_is_not_a_commit_id_is_hashed_into_the_key() {
        for sha in ["", "abc", "not.a>sha*", &"a".repeat(41), "ü"] {
            let key = commit_key("acme/shop", "refs/heads/main", sha);
            assert!(is_valid_kv_key(&key), "{sha:?} gives the invalid key {key}");
        }
    }

    fn record_of(event: &str) -> CommitRecord {
        CommitRecord {
            release: "r-1".into(),
            event: event.into(),
            delivery: "d-1".into(),
            provider: "github".into(),
            git_ref: "refs/heads/main".into(),
            sha: SHA.into(),
            at: DateTime::<Utc>::UNIX_EPOCH,
            published: true,
        }
    }

    #[test]
    fn a_claim_is_published_until_acknowledged_then_tells_a_redelivery_from_another_push() {
        let published = record_of("github:d-1:refs/heads/main");
        let unfinished = CommitRecord {
            published: false,
            ..published.clone()
        };
        let other_push = |record: &CommitRecord| Claim::AlreadyReleased(record.clone());
        for (record, event, expected) in [
            (
                &published,
                "github:d-1:refs/heads/main",
                Claim::Redelivery(published.clone()),
            ),
            (&published, "github:d-2:refs/heads/main", other_push(&published)),
            (&published, "poll:aaa..bbb:refs/heads/main", other_push(&published)),
            (
                &unfinished,
                "github:d-1:refs/heads/main",
                Claim::Publish(unfinished.clone()),
            ),
            (
                &unfinished,
                "github:d-2:refs/heads/main",
                Claim::Publish(unfinished.clone()),
            ),
        ] {
            assert_eq!(judge(record.clone(), event), expected, "{event} against {record:?}");
        }
    }

    #[test]
    fn the_reason_names_the_commit_the_ref_and_the_first_release() {
        assert_eq!(
            record_of("e").reason(),
            "commit 0123456 of refs/heads/main was released already as r-1 (delivery d-1); \
             a push of the same commit starts no new release"
        );
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let record = record_of("github:d-1:refs/heads/main");
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["ref"], "refs/heads/main");
        assert_eq!(serde_json::from_value::<CommitRecord>(json).unwrap(), record);
    }
}
