//! The watch between full passes: objects carrying Baton's app label are followed per namespace
//! and kind, and an app is compared as soon as one of its objects changes or is deleted
//! (contract item 2 of [`super`]).

use baton_schemas::release::PromotionData;
use futures::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::Detector;
use crate::cluster::Cluster;
use crate::error::DeployError;
use crate::handler::{applied_key, selector};
use crate::manifests::{APP_LABEL, ENVIRONMENT_LABEL};

impl Detector {
    /// Follows the objects of `kind` carrying Baton's app label in `namespace`, sending the
    /// namespace, app and environment of each change and deletion to `changed`. Whether the watch
    /// started: not for a kind the apiserver does not serve or could not say it serves.
    pub(super) async fn watch(
        &self,
        watches: &mut tokio::task::JoinSet<()>,
        namespace: &str,
        group: &str,
        version: &str,
        kind: &str,
        changed: mpsc::Sender<(String, String, String)>,
    ) -> bool {
        let Some(api) = self.deployer.cluster.listable(group, version, kind, namespace).await else {
            return false;
        };
        let namespace = namespace.to_owned();
        let config = watcher::Config::default().labels(APP_LABEL);
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        watches.spawn(async move {
            loop {
                let object = match stream.next().await {
                    None => return,
                    Some(Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o))) => o,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "drift watch failed; it backs off and lists again");
                        continue;
                    }
                };
                let labels = object.metadata.labels.unwrap_or_default();
                if let (Some(app), Some(env)) = (labels.get(APP_LABEL), labels.get(ENVIRONMENT_LABEL))
                    && changed
                        .send((namespace.clone(), app.clone(), env.clone()))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        true
    }

    /// Compares one app in one environment (`app` as its label token), as the watch of
    /// `namespace` asks. The labels that ask are anyone's to write: an object in another
    /// namespace than the environment's asks nothing.
    pub(super) async fn check_one(&self, namespace: &str, app: &str, environment: &str) -> Result<(), DeployError> {
        let Some(bytes) = self
            .deployer
            .state
            .get(applied_key(app, environment))
            .await
            .map_err(|e| DeployError::state("reading the applied promotion", e))?
        else {
            return Ok(());
        };
        let Ok(promotion) = serde_json::from_slice::<PromotionData>(&bytes) else {
            return Ok(());
        };
        if promotion.namespace != namespace {
            return Ok(());
        }
        let Some(target) = self.target(promotion).await? else {
            return Ok(());
        };
        let kinds = Cluster::listed_kinds(target.manifests.iter());
        let listed = self
            .deployer
            .cluster
            .labelled(&target.promotion.namespace, &selector(app, environment), &kinds)
            .await?;
        self.check(&target, listed).await?;
        Ok(())
    }
}
