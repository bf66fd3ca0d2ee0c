//! The promoter's stage: what it does with each event it consumes.
//!
//! - `testsuiterun.finished` with outcome success → a release, moved toward the first
//!   environment;
//! - `service.deployed` / `service.upgraded` (the deployer found the rollout healthy) → the
//!   environment is marked healthy and the next environment is evaluated;
//!   `service.rolledback` → marked healthy, nothing moves on;
//! - `baton-deployment.failed` → the failed release is quarantined and, with `auto_rollback`,
//!   the environment is rolled back to its last healthy release and pinned; with no healthy
//!   release to go back to (a new app's first rollout), it is held with the reason and left
//!   unpinned, so the next healthy release reaches it.

use std::sync::Arc;

use baton_kit::{Handler, HandlerError, Incoming, Outgoing};
use baton_schemas::EventType;
use baton_schemas::environments::Environment;
use baton_schemas::payloads::TestData;
use baton_schemas::release::{DeploymentData, Pin, PromotionAction, PromotionData, ReleaseData};
use chrono::{DateTime, Utc};

use crate::error::PromoteError;
use crate::gates::Move;
use crate::manager::{AUTOMATION, Outcome, ReleaseManager, derive_id};
use crate::state::Trigger;
use crate::write::Write;

/// The event types the promoter consumes.
pub const HANDLES: [EventType; 5] = [
    EventType::TestSuiteRunFinished,
    EventType::ServiceDeployed,
    EventType::ServiceUpgraded,
    EventType::ServiceRolledBack,
    EventType::DeploymentFailed,
];

/// The stage handler.
#[derive(Debug, Clone)]
pub struct PromoterStage {
    /// The release manager.
    pub promoter: Arc<ReleaseManager>,
}

impl Handler for PromoterStage {
    #[tracing::instrument(skip_all, fields(event.id = %event.id(), event.type = %event.event_type, chain.id = event.chain_id().unwrap_or("")))]
    async fn handle(&self, event: Arc<Incoming>) -> Result<Vec<Outgoing>, HandlerError> {
        let now = self.promoter.now();
        let result = match event.event_type {
            EventType::TestSuiteRunFinished => self.tested(&event, now).await,
            EventType::ServiceDeployed | EventType::ServiceUpgraded | EventType::ServiceRolledBack => {
                self.deployed(&event, now).await
            }
            EventType::DeploymentFailed => self.failed(&event, now).await,
            other => Err(PromoteError::Unhandled(other)),
        };
        Ok(result?)
    }
}

impl PromoterStage {
    async fn tested(&self, event: &Incoming, now: DateTime<Utc>) -> Result<Vec<Outgoing>, PromoteError> {
        let test: TestData = event
            .cdevent
            .custom_data_as()
            .map_err(|e| PromoteError::custom_data("testsuiterun.finished", "tester", e))?;
        if !test.outcome.is_some_and(|o| o.lets_the_release_continue()) {
            tracing::info!(app = %test.app, commit = %test.commit, "tests did not pass: no release");
            return Ok(Vec::new());
        }
        let chain = event.chain_id().ok_or(PromoteError::NoChainId)?;
        let outcome = self.promoter.create_release(event.id(), chain, &test, now).await?;
        tracing::info!(app = %test.app, release = chain, outcome = ?outcome.value, "release created");
        Ok(outcome.events)
    }

    async fn deployed(&self, event: &Incoming, now: DateTime<Utc>) -> Result<Vec<Outgoing>, PromoteError> {
        let data: DeploymentData = event
            .cdevent
            .custom_data_as()
            .map_err(|e| PromoteError::custom_data(event.event_type.to_string(), "deployer", e))?;
        let promoter = &self.promoter;
        if promoter
            .mark_healthy(&data.app, &data.environment, &data.promotion, now)
            .await?
            .is_none()
        {
            tracing::info!(app = %data.app, environment = %data.environment, promotion = %data.promotion, "report about an older promotion: ignored");
            return Ok(Vec::new());
        }
        if event.event_type == EventType::ServiceRolledBack {
            return Ok(Vec::new());
        }
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let Some(next) = policy.value.file.next_after(&data.environment).cloned() else {
            return Ok(events);
        };
        let Some(release) = promoter.state.release(&data.release).await? else {
            return Err(PromoteError::UnknownRelease(data.release));
        };
        let promotion = derive_id(&["promote", event.id(), &next.name]);
        let outcome = promoter
            .advance(
                &policy.value,
                Move {
                    release: &release,
                    env: &next,
                    trigger: &Trigger::Auto,
                    promotion: &promotion,
                },
                event.id(),
                now,
            )
            .await?;
        tracing::info!(app = %data.app, release = %data.release, environment = %next.name, outcome = ?outcome.value, "next environment evaluated");
        events.extend(outcome.events);
        Ok(events)
    }

    async fn failed(&self, event: &Incoming, now: DateTime<Utc>) -> Result<Vec<Outgoing>, PromoteError> {
        let data: DeploymentData = event
            .cdevent
            .custom_data_as()
            .map_err(|e| PromoteError::custom_data("deployment.failed", "deployer", e))?;
        let promoter = &self.promoter;
        let Some(current) = promoter.state.current(&data.app, &data.environment).await? else {
            return Ok(Vec::new());
        };
        if current.value.promotion != data.promotion {
            tracing::info!(app = %data.app, environment = %data.environment, "failure of an older promotion: ignored");
            return Ok(Vec::new());
        }
        let Some(failed) = promoter.state.release(&data.release).await? else {
            return Err(PromoteError::UnknownRelease(data.release));
        };
        let reason = data
            .reason
            .clone()
            .unwrap_or_else(|| "the rollout did not become healthy".into());
        let mut events = vec![
            promoter
                .quarantine(
                    &failed,
                    AUTOMATION,
                    &format!("rollout in `{}` failed: {reason}", data.environment),
                    Some(event.id()),
                    now,
                )
                .await?,
        ];
        if !promoter.auto_rollback {
            return Ok(events);
        }
        let policy = promoter.policy().await?;
        events.extend(policy.events);
        let env = policy.value.environment(&data.environment)?.clone();
        let promotion = derive_id(&["auto-rollback", event.id()]);
        let target = current
            .value
            .last_healthy
            .clone()
            .filter(|h| h.release != failed.release);
        let target_release = match &target {
            Some(h) => promoter.state.release(&h.release).await?,
            None => None,
        };
        let written = match (target, target_release) {
            (Some(healthy), Some(release)) => {
                let why = format!(
                    "release {} failed its rollout in `{}` ({reason}); rolled back to {}",
                    failed.release, env.name, release.release
                );
                let rolled_back = promoter
                    .rollback(
                        &env,
                        &release,
                        &healthy.config_commit,
                        AUTOMATION,
                        &why,
                        &promotion,
                        event.id(),
                        false,
                        now,
                    )
                    .await;
                match rolled_back {
                    Ok(written) => written,
                    // The environment requires evidence the healthy release's image lacks (now:
                    // a key was rotated, say): held, and pinned so automation leaves it alone.
                    Err(e @ PromoteError::EvidenceRefused { .. }) => {
                        let held = e.to_string();
                        events.push(promoter.held_event(&release, &env.name, &promotion, event.id(), &held, None));
                        let why = format!(
                            "release {} failed its rollout in `{}` ({reason}); the rollback to {} is held: {held}",
                            failed.release, env.name, release.release
                        );
                        promoter
                            .pin_after_failure(&failed, &env, promotion, why, event.id(), now)
                            .await?
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => {
                // Nothing healthy to go back to (a new app's first rollout there): a pin would
                // only keep out the release that fixes it. Held with the reason, unpinned; the
                // next release that passes its tests is promoted here as usual.
                let why = format!(
                    "release {} failed its rollout in `{}` ({reason}); no earlier release ran healthy there to roll back to, so `{}` is not pinned: the next healthy release is promoted into it",
                    failed.release, env.name, env.name
                );
                events.push(promoter.held_event(&failed, &env.name, &promotion, event.id(), &why, None));
                return Ok(events);
            }
        };
        events.extend(written.events);
        Ok(events)
    }
}

impl ReleaseManager {
    /// Pins `env` on the `failed` release (a pin changes no manifest), so automation leaves it
    /// alone: what a failed rollout gets when it cannot be rolled back.
    async fn pin_after_failure(
        &self,
        failed: &ReleaseData,
        env: &Environment,
        promotion: String,
        why: String,
        cause: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome<PromotionData>, PromoteError> {
        self.write(
            failed,
            env,
            Write {
                action: PromotionAction::Pin,
                promotion,
                actor: AUTOMATION.into(),
                reason: Some(why.clone()),
                pinned: Some(Pin {
                    by: AUTOMATION.into(),
                    reason: why,
                    at: now,
                }),
                break_glass: false,
                restore_from: None,
                cause: cause.to_owned(),
            },
        )
        .await
    }
}
