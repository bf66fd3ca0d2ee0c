//! What an app should run: the promotion the deployer last applied to its environment, that
//! release's manifests, and the environment's `drift` policy at its config repo's head (contract
//! item 1 of [`super`]), with the keys of the caches that keep them.

use std::sync::Arc;

use baton_schemas::environments::{DriftPolicy, ENVIRONMENTS_FILE, EnvironmentsFile};
use baton_schemas::release::PromotionData;
use futures::TryStreamExt as _;

use super::{Detector, Target};
use crate::error::DeployError;
use crate::handler::APPLIED_PREFIX;

impl Detector {
    /// Every promotion the deployer applied, one per app and environment.
    pub(super) async fn applied(&self) -> Result<Vec<PromotionData>, DeployError> {
        const READING: &str = "listing the applied promotions";
        let state = &self.deployer.state;
        let keys: Vec<String> = state
            .keys()
            .await
            .map_err(|e| DeployError::state(READING, e))?
            .try_filter(|k| futures::future::ready(k.starts_with(&format!("{APPLIED_PREFIX}."))))
            .try_collect()
            .await
            .map_err(|e| DeployError::state(READING, e))?;
        let entries = futures::future::join_all(keys.iter().map(|k| state.get(k))).await;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(bytes) = entry.map_err(|e| DeployError::state(READING, e))?
                && let Ok(promotion) = serde_json::from_slice::<PromotionData>(&bytes)
            {
                out.push(promotion);
            }
        }
        Ok(out)
    }

    /// The release to compare an app with, unless its environment ignores drift.
    pub(super) async fn target(&self, promotion: PromotionData) -> Result<Option<Target>, DeployError> {
        let policy = self.policy(&promotion).await;
        if policy == DriftPolicy::Ignore {
            return Ok(None);
        }
        let key = manifests_key(&promotion);
        let cached = self
            .manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let manifests = match cached {
            Some(m) => m,
            None => {
                let parsed = Arc::new(self.deployer.manifests(&promotion).await?);
                self.manifests
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, Arc::clone(&parsed));
                parsed
            }
        };
        Ok(Some(Target {
            promotion,
            manifests,
            policy,
        }))
    }

    /// Remembers the head commit `url` advertises (its `HEAD`, else its first branch); an
    /// unreachable repo keeps the last one known.
    pub(super) async fn read_head(&self, url: String) {
        let sources = self.deployer.sources.clone();
        let remote = url.clone();
        let refs = tokio::task::spawn_blocking(move || sources.ls_remote(&remote)).await;
        let head = match refs {
            Ok(Ok(refs)) => refs
                .iter()
                .find(|r| r.name == "HEAD")
                .or_else(|| refs.iter().find(|r| r.name.starts_with("refs/heads/")))
                .map(|r| r.sha.clone()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, url, "cannot read the config repo's head; the last one known stays");
                None
            }
            Err(_) => None,
        };
        if let Some(head) = head {
            self.heads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(url, head);
        }
    }

    /// The environment's `drift` policy in `environments.yaml` at the config repo's head (as of
    /// the last pass; the promotion's commit before any); `report` when the file is missing or
    /// invalid there.
    async fn policy(&self, promotion: &PromotionData) -> DriftPolicy {
        let commit = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&promotion.config_repository)
            .cloned()
            .unwrap_or_else(|| promotion.config_commit.clone());
        let key = policy_key(promotion, &commit);
        if let Some(p) = self
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return *p;
        }
        let sources = self.deployer.sources.clone();
        let url = promotion.config_repository.clone();
        let text = tokio::task::spawn_blocking(move || -> Option<String> {
            let mirror = sources.mirror_with(&url, &commit).ok()?;
            let oid = git2::Oid::from_str(&commit).ok()?;
            let tree = mirror.find_commit(oid).ok()?.tree().ok()?;
            let entry = tree.get_path(std::path::Path::new(ENVIRONMENTS_FILE)).ok()?;
            let blob = entry.to_object(&mirror).ok()?.into_blob().ok()?;
            String::from_utf8(blob.content().to_vec()).ok()
        })
        .await
        .ok()
        .flatten();
        let policy = text
            .and_then(|t| EnvironmentsFile::parse(&t).ok())
            .and_then(|f| f.get(&promotion.environment).map(|e| e.drift))
            .unwrap_or_default();
        self.policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, policy);
        policy
    }
}

/// The key of a promotion's parsed manifests in [`Detector`]'s cache: its config repo, commit
/// and folder.
pub(super) fn manifests_key(promotion: &PromotionData) -> String {
    format!(
        "{}\0{}\0{}",
        promotion.config_repository, promotion.config_commit, promotion.manifests_path
    )
}

/// The key of an environment's `drift` policy at `commit` of its config repo in [`Detector`]'s
/// cache.
pub(super) fn policy_key(promotion: &PromotionData, commit: &str) -> String {
    format!("{}\0{commit}\0{}", promotion.config_repository, promotion.environment)
}
