//! Rebuilding the promoter's KV state after a loss, from what is authoritative: the event
//! stream (releases, promotions, health reports, quarantines, approval requests and votes) and
//! the config repo (what every environment runs, and its pins). A promoter starting without the
//! `promoter.rebuilt` marker rebuilds before it consumes; then it re-evaluates the environment
//! after each healthy one, so promotions that were waiting (soak, freeze) are scheduled again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull};
use baton_kit::codec;
use baton_schemas::release::{ApprovalData, DeploymentData, Pin, PromotionAction, PromotionData, ReleaseData};
use baton_schemas::{CdEvent, EventType, subjects};
use futures::StreamExt;

use crate::error::PromoteError;
use crate::gates::Move;
use crate::manager::{ReleaseManager, derive_id};
use crate::state::{self, BadRelease, Closure, Current, HealthyRelease, PendingApproval, Trigger};

/// The key whose presence says the state is complete.
pub const REBUILT_KEY: &str = "promoter.rebuilt";

/// The event types the state is rebuilt from.
const SOURCES: [EventType; 9] = [
    EventType::ReleaseCreated,
    EventType::ReleaseQuarantined,
    EventType::EnvironmentModified,
    EventType::ServiceDeployed,
    EventType::ServiceUpgraded,
    EventType::ServiceRolledBack,
    EventType::ApprovalCreated,
    EventType::ApprovalUpdated,
    EventType::ApprovalClosed,
];

/// What the replay accumulates before it is written.
#[derive(Default)]
struct Rebuilt {
    releases: BTreeMap<String, ReleaseData>,
    bad: BTreeMap<String, BadRelease>,
    current: BTreeMap<(String, String), Current>,
    approvals: BTreeMap<(String, String), PendingApproval>,
}

/// Rebuilds the state unless the marker says it is complete. Returns whether it rebuilt.
///
/// # Errors
/// [`PromoteError`] (transient: the promoter retries at its next start).
pub async fn ensure(promoter: &Arc<ReleaseManager>) -> Result<bool, PromoteError> {
    if promoter.state.get::<String>(REBUILT_KEY).await?.is_some() {
        return Ok(false);
    }
    let now = promoter.now();
    rebuild(promoter, now).await?;
    promoter.state.put(REBUILT_KEY, &now.to_rfc3339()).await?;
    Ok(true)
}

/// Replays the stream, overlays the config repo, writes the state, and re-evaluates the next
/// environments as of `now`.
///
/// # Errors
/// [`PromoteError`].
pub async fn rebuild(promoter: &Arc<ReleaseManager>, now: chrono::DateTime<chrono::Utc>) -> Result<(), PromoteError> {
    let mut rebuilt = Rebuilt::default();
    replay(promoter, &mut rebuilt).await?;
    let repo = Arc::clone(&promoter.repo);
    let (_, files) = promoter.blocking(move || Ok(repo.release_files_at_head()?)).await?;
    for (dir, file) in files {
        let Some((env, _)) = dir.split_once('/') else { continue };
        let key = (file.release.app.clone(), env.to_owned());
        rebuilt
            .releases
            .entry(file.release.release.clone())
            .or_insert_with(|| file.release.clone());
        let current = rebuilt.current.get(&key);
        if current.is_none_or(|c| c.release != file.release.release || c.pinned.is_some() != file.pinned.is_some()) {
            // The config repo is the truth about what runs: the stream may have aged out.
            let repo = Arc::clone(&promoter.repo);
            let folder = dir.clone();
            let history = promoter.blocking(move || Ok(repo.history(&folder, 1)?)).await?;
            let commit = history.first().map(|(c, _)| c.clone()).unwrap_or_default();
            let last_healthy = current.and_then(|c| c.last_healthy.clone());
            rebuilt.current.insert(
                key,
                Current {
                    release: file.release.release.clone(),
                    promotion: file.promotion.clone(),
                    config_commit: commit,
                    action: file.action,
                    healthy_since: None,
                    last_healthy,
                    pinned: file.pinned.clone(),
                },
            );
        }
    }
    let state = &promoter.state;
    for (id, release) in &rebuilt.releases {
        state.put(&state::release_key(id), release).await?;
    }
    for (id, bad) in &rebuilt.bad {
        // Also under its commit and image, when the release is known.
        match rebuilt.releases.get(id) {
            Some(release) => {
                for key in state::bad_keys(release) {
                    state.put(&key, bad).await?;
                }
            }
            None => {
                state.put(&state::bad_key(id), bad).await?;
            }
        }
    }
    for ((app, env), current) in &rebuilt.current {
        state.put(&state::current_key(app, env), current).await?;
    }
    for ((app, env), approval) in &rebuilt.approvals {
        state.put(&state::approval_key(app, env), approval).await?;
    }
    tracing::info!(
        releases = rebuilt.releases.len(),
        environments = rebuilt.current.len(),
        approvals = rebuilt.approvals.len(),
        "promoter state rebuilt from the event stream and the config repo"
    );
    // Promotions that were waiting for a soak or a freeze: evaluate the environment after each
    // healthy one again (idempotent: open requests and finished promotions are left alone).
    let policy = promoter.policy().await?;
    promoter.publish(&policy.events).await?;
    for ((app, env), current) in &rebuilt.current {
        if current.healthy_since.is_none() || current.action != PromotionAction::Promote {
            continue;
        }
        let (Some(next), Some(release)) = (
            policy.value.file.next_after(env),
            rebuilt.releases.get(&current.release),
        ) else {
            continue;
        };
        let cause = derive_id(&["rebuilt", &current.promotion]);
        let promotion = derive_id(&["promote", &cause, &next.name]);
        let outcome = promoter
            .advance(
                &policy.value,
                Move {
                    release,
                    env: next,
                    trigger: &Trigger::Auto,
                    promotion: &promotion,
                },
                &cause,
                now,
            )
            .await?;
        tracing::info!(app, environment = %next.name, outcome = ?outcome.value, "re-evaluated after rebuilding");
        promoter.publish(&outcome.events).await?;
    }
    Ok(())
}

async fn replay(promoter: &ReleaseManager, rebuilt: &mut Rebuilt) -> Result<(), PromoteError> {
    let stream = promoter
        .jetstream
        .get_stream(promoter.events_stream())
        .await
        .map_err(replay_failed)?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subjects: SOURCES.iter().map(|t| subjects::event_filter(*t)).collect(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(replay_failed)?;
    let mut consumer = consumer;
    let mut left = consumer.info().await.map_err(replay_failed)?.num_pending;
    while left > 0 {
        let batch = usize::try_from(left.min(1000)).unwrap_or(1000);
        let mut messages = consumer
            .fetch()
            .max_messages(batch)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(replay_failed)?;
        let mut got = 0u64;
        while let Some(message) = messages.next().await {
            let message = message.map_err(replay_failed)?;
            got += 1;
            let Ok(cloudevent) = codec::decode(message.headers.as_ref(), &message.payload) else {
                continue;
            };
            let Some(cloudevents::Data::Json(data)) = cloudevent.data() else {
                continue;
            };
            if let Ok(event) = serde_json::from_value::<CdEvent>(data.clone()) {
                apply(rebuilt, &event);
            }
        }
        if got == 0 {
            break;
        }
        left = left.saturating_sub(got);
    }
    Ok(())
}

fn replay_failed(e: impl Into<baton_kit::error::BoxError>) -> PromoteError {
    PromoteError::Replay(e.into())
}

fn apply(rebuilt: &mut Rebuilt, event: &CdEvent) {
    let Some(ty) = event.event_type() else { return };
    let at = event.context.timestamp;
    match ty {
        EventType::ReleaseCreated => {
            if let Ok(release) = event.custom_data_as::<ReleaseData>() {
                rebuilt.releases.insert(release.release.clone(), release);
            }
        }
        EventType::ReleaseQuarantined => {
            let content = &event.subject.content;
            rebuilt.bad.entry(event.subject.id.clone()).or_insert(BadRelease {
                actor: content["actor"].as_str().unwrap_or_default().to_owned(),
                reason: content["reason"].as_str().unwrap_or_default().to_owned(),
                at,
                release: event.subject.id.clone(),
            });
        }
        EventType::EnvironmentModified => {
            let Ok(data) = event.custom_data_as::<PromotionData>() else {
                return;
            };
            let key = (data.app.clone(), data.environment.clone());
            let previous = rebuilt.current.get(&key).cloned();
            let pinned = data.pinned.then(|| Pin {
                by: data.actor.clone(),
                reason: data.reason.clone().unwrap_or_default(),
                at,
            });
            let next = match (data.action, previous) {
                (PromotionAction::Pin | PromotionAction::Unpin, Some(mut c)) => {
                    c.pinned = pinned;
                    c
                }
                // Re-applied as it was: the environment's release and pin are unchanged.
                (PromotionAction::Sync | PromotionAction::Restore, Some(c)) => c,
                (_, previous) => Current {
                    release: data.release.release.clone(),
                    promotion: data.promotion.clone(),
                    config_commit: data.config_commit.clone(),
                    action: data.action,
                    healthy_since: None,
                    last_healthy: previous.and_then(|p| p.last_healthy),
                    pinned,
                },
            };
            rebuilt
                .releases
                .entry(data.release.release.clone())
                .or_insert(data.release);
            rebuilt.current.insert(key, next);
        }
        EventType::ServiceDeployed | EventType::ServiceUpgraded | EventType::ServiceRolledBack => {
            let Ok(data) = event.custom_data_as::<DeploymentData>() else {
                return;
            };
            if let Some(current) = rebuilt.current.get_mut(&(data.app.clone(), data.environment.clone()))
                && current.promotion == data.promotion
            {
                current.healthy_since.get_or_insert(at);
                current.last_healthy = Some(HealthyRelease {
                    release: current.release.clone(),
                    config_commit: current.config_commit.clone(),
                });
            }
        }
        EventType::ApprovalCreated => {
            let Ok(data) = event.custom_data_as::<ApprovalData>() else {
                return;
            };
            let key = (data.app.clone(), data.environment.clone());
            rebuilt.approvals.insert(
                key,
                PendingApproval {
                    promotion: derive_id(&["promote", &data.approval]),
                    cause: event
                        .context
                        .links
                        .iter()
                        .flatten()
                        .find_map(|l| l.from.as_ref().map(|f| f.context_id.clone()))
                        .unwrap_or_default(),
                    data,
                    closed: None,
                    promotion_pending: false,
                    trace: None,
                },
            );
        }
        EventType::ApprovalUpdated | EventType::ApprovalClosed => {
            let Ok(data) = event.custom_data_as::<ApprovalData>() else {
                return;
            };
            let key = (data.app.clone(), data.environment.clone());
            let Some(pending) = rebuilt.approvals.get_mut(&key) else {
                return;
            };
            if pending.data.approval != data.approval {
                return;
            }
            pending.data.votes = data.votes.clone();
            if ty == EventType::ApprovalClosed {
                pending.closed = Some(Closure {
                    status: event.subject.content["status"].as_str().unwrap_or_default().to_owned(),
                    reason: data.reason.unwrap_or_default(),
                    at,
                });
            }
        }
        _ => {}
    }
}
