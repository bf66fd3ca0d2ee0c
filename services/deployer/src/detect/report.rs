//! Recording and reporting: what a comparison means is decided against the drift record in KV,
//! written with compare-and-set so that one replica reports, and published as
//! `baton-environment.drifted` or `baton-environment.synced`, and a heal that did not end a drift
//! as `baton-environment.unhealed` (contract item 4 of [`super`]).

use async_nats::jetstream::kv;
use baton_kit::Outgoing;
use baton_schemas::drift::{DriftData, DriftRecord, DriftedObject, SyncState, drift_key};
use baton_schemas::environments::DriftPolicy;
use baton_schemas::extensions::{EnvironmentDriftedContent, EnvironmentSyncedContent, EnvironmentUnhealedContent};
use baton_schemas::release::PromotionData;
use baton_schemas::{CdEvent, EventType};
use chrono::Utc;

use super::metrics::{AppLabels, OutcomeLabels};
use super::{Detector, Target};
use crate::drift::{self, Transition};
use crate::error::DeployError;

/// The event source of what drift detection reports.
const SOURCE: &str = "/baton/deployer";

impl Detector {
    /// Records what a comparison found and reports a change; heals where the policy says.
    pub(super) async fn judge(&self, target: &Target, objects: &[DriftedObject]) -> Result<(), DeployError> {
        let promotion = &target.promotion;
        let key = drift_key(&promotion.app, &promotion.environment);
        let entry = self
            .deployer
            .state
            .entry(&key)
            .await
            .map_err(|e| DeployError::state("reading the drift record", e))?;
        let (previous, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => {
                (serde_json::from_slice::<DriftRecord>(&e.value).ok(), Some(e.revision))
            }
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        };
        let now = Utc::now();
        let labels = AppLabels {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
        };
        match drift::transition(previous.as_ref(), &promotion.config_commit, objects, now) {
            Transition::Unchanged => {
                if let Some(record) = previous.filter(|r| r.state == SyncState::Drifted && r.heal_failed.is_none())
                    && target.policy == DriftPolicy::Heal
                {
                    self.heal(target, record, revision).await?;
                }
            }
            Transition::Record(record) => {
                self.write(&key, &record, revision).await?;
                self.metrics.drifted.get_or_create(&labels).set(0);
            }
            Transition::Drifted(record) => {
                if let Some(revision) = self.write(&key, &record, revision).await? {
                    self.metrics.drifted.get_or_create(&labels).set(1);
                    self.count_report(promotion, "drifted");
                    let data = self.data(target, objects, &record, None, None);
                    tracing::warn!(app = %promotion.app, environment = %promotion.environment, objects = ?record.objects, "drift");
                    self.publish(self.drifted_event(target, &record, data)).await;
                    if target.policy == DriftPolicy::Heal {
                        self.heal(target, record, Some(revision)).await?;
                    }
                }
            }
            Transition::Synced(record) => {
                if self.write(&key, &record, revision).await?.is_some() {
                    let how = match &previous {
                        Some(p) if p.config_commit != promotion.config_commit => "rolled-out",
                        _ => "resolved",
                    };
                    self.synced(target, previous.as_ref(), &record, how, None).await;
                }
            }
        }
        Ok(())
    }

    /// Writes `record` under `key` if it is still at `revision`: the new revision, or `None`
    /// when another replica wrote first (and so reports).
    pub(super) async fn write(
        &self,
        key: &str,
        record: &DriftRecord,
        revision: Option<u64>,
    ) -> Result<Option<u64>, DeployError> {
        let bytes = serde_json::to_vec(record).expect("serializes");
        let state = &self.deployer.state;
        let written = match revision {
            Some(revision) => match state.update(key, bytes.into(), revision).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                Err(e) => return Err(DeployError::state("recording the drift", e)),
            },
            None => match state.create(key, bytes.into()).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(DeployError::state("recording the drift", e)),
            },
        };
        Ok(written)
    }

    pub(super) async fn synced(
        &self,
        target: &Target,
        previous: Option<&DriftRecord>,
        record: &DriftRecord,
        how: &str,
        waited: Option<u64>,
    ) {
        let promotion = &target.promotion;
        self.metrics
            .drifted
            .get_or_create(&AppLabels {
                environment: promotion.environment.clone(),
                app: promotion.app.clone(),
            })
            .set(0);
        self.count_report(promotion, "synced");
        let began = previous.map_or(record.since, |p| p.since);
        let mut data = self.data(target, &[], record, Some(record.since), waited);
        data.detected_at = began;
        tracing::info!(app = %promotion.app, environment = %promotion.environment, how, "drift ended");
        let content = EnvironmentSyncedContent {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
            how: how.to_owned(),
        };
        let seed = format!("{}:{}", promotion.config_commit, record.since.to_rfc3339());
        self.publish(self.event(EventType::EnvironmentSynced, "synced", target, &seed, content, &data))
            .await;
    }

    /// Reports a heal that did not end the drift `record` describes (its `heal_failed` says
    /// why); `left` is what still differs, when that is why.
    pub(super) async fn unhealed(&self, target: &Target, record: &DriftRecord, left: &[DriftedObject]) {
        let promotion = &target.promotion;
        self.count_report(promotion, "unhealed");
        let data = self.data(target, left, record, None, None);
        let content = EnvironmentUnhealedContent {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
            reason: record.heal_failed.clone().unwrap_or_default(),
            objects: record.objects.clone(),
            objects_omitted: record.objects_omitted,
        };
        let seed = format!("{}:{}", promotion.config_commit, record.fingerprint);
        self.publish(self.event(
            EventType::EnvironmentUnhealed,
            "unhealed",
            target,
            &seed,
            content,
            &data,
        ))
        .await;
    }

    fn count_report(&self, promotion: &PromotionData, outcome: &str) {
        self.metrics
            .reports
            .get_or_create(&OutcomeLabels {
                environment: promotion.environment.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    fn data(
        &self,
        target: &Target,
        objects: &[DriftedObject],
        record: &DriftRecord,
        synced_at: Option<chrono::DateTime<Utc>>,
        rollout_wait_ms: Option<u64>,
    ) -> DriftData {
        let (objects, objects_omitted) = drift::listed(objects);
        DriftData {
            policy: Some(target.policy.as_str().to_owned()),
            objects,
            objects_omitted,
            synced_at,
            rollout_wait_ms,
            ..DriftData::of(&target.promotion, record.since)
        }
    }

    fn drifted_event(&self, target: &Target, record: &DriftRecord, data: DriftData) -> Outgoing {
        let content = EnvironmentDriftedContent {
            environment: target.promotion.environment.clone(),
            app: target.promotion.app.clone(),
            objects: record.objects.clone(),
            objects_omitted: record.objects_omitted,
            policy: target.policy.as_str().to_owned(),
        };
        let seed = format!("{}:{}", target.promotion.config_commit, record.fingerprint);
        self.event(EventType::EnvironmentDrifted, "drifted", target, &seed, content, &data)
    }

    /// An event about an app's drift, in its release's chain. Its id derives from what it
    /// reports, so the same report published twice is one event.
    fn event(
        &self,
        ty: EventType,
        label: &str,
        target: &Target,
        seed: &str,
        content: impl serde::Serialize,
        data: &DriftData,
    ) -> Outgoing {
        let promotion = &target.promotion;
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!(
                "baton:deployer:drift:{label}:{}:{}:{seed}",
                promotion.app, promotion.environment
            )
            .as_bytes(),
        )
        .to_string();
        let release = &promotion.release.release;
        let event = CdEvent::new(ty, id, SOURCE, release.clone(), content)
            .and_then(|e| e.with_custom_data(data))
            .expect("drift events serialize")
            .with_chain_id(release.clone());
        Outgoing::new(promotion.app.clone(), event)
    }

    /// Publishes a report; a failure is logged (the record is written, so it is not reported
    /// again: the state in KV and `baton status` still show it).
    async fn publish(&self, outgoing: Outgoing) {
        if let Err(e) = baton_kit::events::publish(&self.deployer.jetstream, &outgoing).await {
            tracing::warn!(error = %e, "could not publish a drift report");
        }
    }
}
