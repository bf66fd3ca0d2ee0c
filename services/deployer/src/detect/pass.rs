//! The full pass: every app the deployer applied is compared, namespace by namespace, and the
//! caches are trimmed to what is still applied (contract item 2 of [`super`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use baton_schemas::release::PromotionData;
use baton_schemas::subjects::sanitize_token;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::DynamicObject;

use super::target::{manifests_key, policy_key};
use super::{Detector, PassSummary, Target};
use crate::cluster::Cluster;
use crate::error::DeployError;
use crate::manifests::{APP_LABEL, ENVIRONMENT_LABEL};

impl Detector {
    /// Compares every app the deployer applied, namespace by namespace (each kind listed once
    /// per namespace), reports what changed, and heals where the policy says.
    ///
    /// # Errors
    /// When the records of what was applied cannot be read. An app that cannot be compared is
    /// logged and left for the next pass.
    pub async fn pass(&self) -> Result<PassSummary, DeployError> {
        let started = Instant::now();
        let applied = self.applied().await?;
        let repos: BTreeSet<String> = applied.iter().map(|p| p.config_repository.clone()).collect();
        for url in repos {
            self.read_head(url).await;
        }
        self.forget_unused(&applied);
        let mut by_namespace: BTreeMap<String, Vec<Target>> = BTreeMap::new();
        for promotion in applied {
            match self.target(promotion).await {
                Ok(Some(target)) => by_namespace
                    .entry(target.promotion.namespace.clone())
                    .or_default()
                    .push(target),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read a release to compare; the next pass tries again"),
            }
        }
        let mut summary = PassSummary::default();
        let namespaces = futures::stream::iter(by_namespace.into_iter().map(|(namespace, targets)| async move {
            let kinds = Cluster::listed_kinds(targets.iter().flat_map(|t| t.manifests.iter()));
            let listed = self
                .deployer
                .cluster
                .labelled(&namespace, APP_LABEL, &kinds)
                .await?;
            let mut per_app: HashMap<(String, String), Vec<(String, DynamicObject)>> = HashMap::new();
            for (kind, object) in listed {
                let labels = object.metadata.labels.clone().unwrap_or_default();
                if let (Some(app), Some(env)) = (labels.get(APP_LABEL), labels.get(ENVIRONMENT_LABEL)) {
                    per_app.entry((app.clone(), env.clone())).or_default().push((kind, object));
                }
            }
            let watched: BTreeSet<(String, String, String)> = targets
                .iter()
                .flat_map(|t| t.manifests.iter())
                .map(|m| {
                    let (g, v) = m.group_version();
                    (g.to_owned(), v.to_owned(), m.kind.clone())
                })
                .collect();
            let checked = futures::future::join_all(targets.into_iter().map(|target| {
                let key = (sanitize_token(&target.promotion.app), target.promotion.environment.clone());
                let listed = per_app.remove(&key).unwrap_or_default();
                async move {
                    let objects = target.manifests.len();
                    match self.check(&target, listed).await {
                        Ok(Some(drifted)) => (objects, !drifted.is_empty()),
                        Ok(None) => (0, false),
                        Err(e) => {
                            tracing::warn!(error = %e, app = %target.promotion.app, environment = %target.promotion.environment, "drift check failed; the next pass tries again");
                            (0, false)
                        }
                    }
                }
            }))
            .await;
            Ok::<_, DeployError>((namespace, watched, checked))
        }))
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await?;
        for (namespace, watched, checked) in namespaces {
            summary.watched.insert(namespace, watched);
            for (objects, drifted) in checked {
                summary.apps += usize::from(objects > 0);
                summary.objects += objects;
                summary.drifted += usize::from(drifted);
            }
        }
        self.metrics.pass_seconds.observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            apps = summary.apps,
            objects = summary.objects,
            drifted = summary.drifted,
            "drift pass"
        );
        Ok(summary)
    }

    /// Drops what the caches hold for promotions no longer applied and commits no longer at a
    /// config repo's head: each promotion adds to them, and a deployer runs for months.
    fn forget_unused(&self, applied: &[PromotionData]) {
        let manifests: HashSet<String> = applied.iter().map(manifests_key).collect();
        let promotions: HashSet<&str> = applied.iter().map(|p| p.promotion.as_str()).collect();
        let heads = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let policies: HashSet<String> = applied
            .iter()
            .map(|p| {
                let commit = heads.get(&p.config_repository).unwrap_or(&p.config_commit);
                policy_key(p, commit)
            })
            .collect();
        self.manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, _| manifests.contains(key));
        self.policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, _| policies.contains(key));
        self.clean
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, (_, promotion)| promotions.contains(promotion.as_str()));
    }
}
