//! From an accepted push to the `change.merged` event that starts a release.

use baton_kit::Outgoing;
use baton_schemas::payloads::{CommitInfo, Person, PushData};
use baton_schemas::{CdEvent, EventType};

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

/// The release id a push starts: fresh for every push, yet the same for a redelivery of it.
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
