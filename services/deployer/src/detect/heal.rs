//! Healing: the config commit re-applied through the normal apply path under the app's rollout
//! lease, never against a rollout, and its outcome recorded (contract item 5 of [`super`]).

use std::time::Instant;

use baton_kit::lease::LockError;
use baton_schemas::drift::{DriftRecord, SyncState, drift_key, names_and_more};
use baton_schemas::subjects::sanitize_token;
use chrono::Utc;

use super::metrics::OutcomeLabels;
use super::{Detector, Target};
use crate::cluster::Cluster;
use crate::drift;
use crate::error::DeployError;
use crate::handler::{Guard, Rollout, latest_key, lease_key, selector};
use crate::rollout::{Interrupt as _, Verdict};

impl Detector {
    /// Re-applies the app's config commit through the normal apply path, unless a rollout is
    /// under way; records the outcome.
    pub(super) async fn heal(
        &self,
        target: &Target,
        record: DriftRecord,
        revision: Option<u64>,
    ) -> Result<(), DeployError> {
        let promotion = &target.promotion;
        let environment = promotion.environment.clone();
        let outcome = |o: &str| OutcomeLabels {
            environment: environment.clone(),
            outcome: o.to_owned(),
        };
        let lease = match self
            .heal_locks
            .acquire(
                &lease_key(&promotion.namespace, &promotion.app),
                &format!("heal of {}", promotion.promotion),
            )
            .await
        {
            Ok(lease) => lease,
            // A rollout holds it: a promotion in progress is never fought.
            Err(LockError::Busy { .. }) => {
                self.metrics.heals.get_or_create(&outcome("skipped")).inc();
                return Ok(());
            }
            Err(e) => return Err(DeployError::Lease(e)),
        };
        let mut guard = Guard {
            deployer: &self.deployer,
            key: latest_key(&promotion.app, &promotion.environment),
            promotion: promotion.promotion.clone(),
            lease,
            renewed: Instant::now(),
        };
        if guard.interrupted().await? {
            guard.lease.release().await;
            self.metrics.heals.get_or_create(&outcome("skipped")).inc();
            return Ok(());
        }
        tracing::info!(app = %promotion.app, environment = %promotion.environment, commit = %promotion.config_commit, "healing drift");
        let result = async {
            self.deployer
                .cluster
                .ensure_namespace(&promotion.namespace, &promotion.environment)
                .await?;
            self.deployer
                .apply_and_watch(promotion, target.manifests.as_ref().clone(), &mut guard, true)
                .await
        }
        .await;
        guard.lease.release().await;
        let key = drift_key(&promotion.app, &promotion.environment);
        match result {
            Ok(Rollout {
                verdict: Verdict::Healthy,
                waited,
                ..
            }) => {
                self.metrics.heals.get_or_create(&outcome("healthy")).inc();
                // Compared again: a heal may leave what is not Baton's to delete.
                let kinds = Cluster::listed_kinds(target.manifests.iter());
                let token = sanitize_token(&promotion.app);
                let listed = self
                    .deployer
                    .cluster
                    .labelled(&promotion.namespace, &selector(&token, &promotion.environment), &kinds)
                    .await?;
                let left = self.compare(target, listed).await?;
                let current = self.deployer.state.entry(&key).await.ok().flatten().map(|e| e.revision);
                if left.is_empty() {
                    let synced = DriftRecord {
                        state: SyncState::Synced,
                        config_commit: promotion.config_commit.clone(),
                        objects: Vec::new(),
                        objects_omitted: 0,
                        fingerprint: String::new(),
                        since: Utc::now(),
                        heal_failed: None,
                    };
                    if self.write(&key, &synced, current).await?.is_some() {
                        self.synced(target, Some(&record), &synced, "healed", Some(waited))
                            .await;
                    }
                } else {
                    let (names, omitted) = drift::listed_names(&left);
                    let failed = DriftRecord {
                        heal_failed: Some(format!(
                            "re-applied, but {} still differ (objects not applied by Baton are not deleted)",
                            names_and_more(&names, usize::MAX, omitted)
                        )),
                        objects: names,
                        objects_omitted: omitted,
                        fingerprint: drift::fingerprint(&left),
                        ..record
                    };
                    if self.write(&key, &failed, current).await?.is_some() {
                        self.unhealed(target, &failed, &left).await;
                    }
                }
            }
            Ok(Rollout {
                verdict: Verdict::Failed { reason, .. },
                ..
            }) => {
                self.metrics.heals.get_or_create(&outcome("failed")).inc();
                tracing::warn!(app = %promotion.app, environment = %promotion.environment, reason, "heal failed");
                let failed = DriftRecord {
                    heal_failed: Some(reason),
                    ..record
                };
                let current = self.deployer.state.entry(&key).await.ok().flatten().map(|e| e.revision);
                if self.write(&key, &failed, current.or(revision)).await?.is_some() {
                    self.unhealed(target, &failed, &[]).await;
                }
            }
            Ok(Rollout {
                verdict: Verdict::Superseded,
                ..
            }) => {
                self.metrics.heals.get_or_create(&outcome("skipped")).inc();
            }
            // The release cannot be applied as it is: recorded, not tried again for this drift.
            Err(e) if e.is_release_fault() => {
                self.metrics.heals.get_or_create(&outcome("failed")).inc();
                tracing::warn!(app = %promotion.app, environment = %promotion.environment, error = %e, "heal failed");
                let failed = DriftRecord {
                    heal_failed: Some(e.to_string()),
                    ..record
                };
                let current = self.deployer.state.entry(&key).await.ok().flatten().map(|e| e.revision);
                if self.write(&key, &failed, current.or(revision)).await?.is_some() {
                    self.unhealed(target, &failed, &[]).await;
                }
            }
            Err(e) => {
                self.metrics.heals.get_or_create(&outcome("failed")).inc();
                return Err(e);
            }
        }
        Ok(())
    }
}
