//! Comparing one app: its live objects with the apiserver's dry run of its release, skipped
//! while a rollout is under way (contract items 2 and 3 of [`super`]).

use std::collections::HashMap;

use baton_schemas::drift::{DriftKind, DriftedObject};
use baton_schemas::release::PromotionData;
use baton_schemas::subjects::sanitize_token;
use kube::api::DynamicObject;

use super::{Detector, Target};
use crate::drift;
use crate::error::DeployError;
use crate::handler::latest_key;

impl Detector {
    /// Whether a rollout of the app is under way: its rollout lease is held, or a newer
    /// promotion than the one applied is recorded.
    async fn rolling_out(&self, promotion: &PromotionData) -> Result<bool, DeployError> {
        let state = &self.deployer.state;
        let latest = state
            .get(latest_key(&promotion.app, &promotion.environment))
            .await
            .map_err(|e| DeployError::state("reading the latest promotion", e))?
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if latest
            .as_ref()
            .and_then(|l| l.get("promotion"))
            .and_then(serde_json::Value::as_str)
            .is_some_and(|p| p != promotion.promotion)
        {
            return Ok(true);
        }
        Ok(self
            .deployer
            .rollout_holder(&promotion.namespace, &promotion.app)
            .await?
            .is_some())
    }

    /// Compares one app's live objects (`listed`: those carrying its labels) with its release,
    /// then records and reports what that means and heals where the policy says. `None` when
    /// the app was not compared (a rollout is under way).
    pub(super) async fn check(
        &self,
        target: &Target,
        listed: Vec<(String, DynamicObject)>,
    ) -> Result<Option<Vec<DriftedObject>>, DeployError> {
        let promotion = &target.promotion;
        if self.rolling_out(promotion).await? {
            return Ok(None);
        }
        let objects = self.compare(target, listed).await?;
        // Looked at again after comparing: a promotion that began meanwhile is not drift.
        if self.rolling_out(promotion).await? {
            return Ok(None);
        }
        self.judge(target, &objects).await?;
        Ok(Some(objects))
    }

    /// How the app's live objects differ from its release.
    pub(super) async fn compare(
        &self,
        target: &Target,
        listed: Vec<(String, DynamicObject)>,
    ) -> Result<Vec<DriftedObject>, DeployError> {
        let promotion = &target.promotion;
        let namespace = promotion.namespace.as_str();
        let token = sanitize_token(&promotion.app);
        let cluster = &self.deployer.cluster;
        let app_manager = cluster.manager_of(&token);
        let resolved = self
            .deployer
            .resolve(promotion, target.manifests.as_ref().clone())
            .await?;
        let release: Vec<String> = resolved.iter().map(|(m, _, _)| m.display()).collect();
        let mut live: HashMap<String, DynamicObject> = HashMap::new();
        let mut labelled = Vec::new();
        for (kind, object) in listed {
            // An object being deleted is as good as gone.
            if object.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = format!("{kind}/{}", object.metadata.name.clone().unwrap_or_default());
            labelled.push(name.clone());
            live.insert(name, object);
        }
        let (app_manager, token) = (app_manager.as_str(), token.as_str());
        // Gathered first: a stream over a borrowing closure is not `Send` for every lifetime.
        let mut comparisons = Vec::with_capacity(resolved.len());
        for (manifest, resource, _) in &resolved {
            let found = live.get(&manifest.display()).cloned();
            comparisons.push(async move {
                let _permit = self.comparing.acquire().await.expect("the semaphore is never closed");
                let object = match found {
                    Some(o) => Some(o),
                    // Its labels may have been taken off: looked up by name.
                    None => cluster
                        .live(namespace, manifest, resource)
                        .await?
                        .filter(|o| o.metadata.deletion_timestamp.is_none()),
                };
                let Some(object) = object else {
                    return Ok::<_, DeployError>(Some(DriftedObject {
                        object: manifest.display(),
                        kind: DriftKind::Missing,
                        fields: Vec::new(),
                        fields_omitted: 0,
                    }));
                };
                let memo = format!("{namespace}/{}", manifest.display());
                let version = (
                    object.metadata.resource_version.clone().unwrap_or_default(),
                    promotion.promotion.clone(),
                );
                if self
                    .clean
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&memo)
                    == Some(&version)
                {
                    return Ok(None);
                }
                let expected = cluster.dry_run(namespace, token, manifest, resource).await?;
                let entries = object.metadata.managed_fields.clone().unwrap_or_default();
                let ours = [app_manager, cluster.shared_manager()];
                let (expected, live) = (to_json(&expected), to_json(&object));
                let drifted =
                    drift::compare_object(&manifest.kind, &manifest.display(), &expected, &live, &entries, &ours);
                if drifted.is_none() {
                    self.clean
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(memo, version);
                }
                Ok(drifted)
            });
        }
        // At most `drift.concurrency` at once, by the permits each takes.
        let compared = futures::future::try_join_all(comparisons).await?;
        let mut objects: Vec<DriftedObject> = compared.into_iter().flatten().collect();
        objects.extend(drift::extras(&labelled, &release));
        objects.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(objects)
    }
}

fn to_json(object: &DynamicObject) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or_default()
}
