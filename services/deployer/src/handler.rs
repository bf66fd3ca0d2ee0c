//! The deployer's stage: one promotion in, one verdict out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use baton_kit::lease::{Lease, Locks};
use baton_kit::source::Sources;
use baton_kit::{Handler, HandlerError, Incoming, Outgoing};
use baton_schemas::drift::{DriftData, DriftRecord, SyncState, drift_key};
use baton_schemas::extensions::{DeploymentFailedContent, DeploymentStartedContent, EnvironmentSyncedContent};
use baton_schemas::release::{DeploymentData, PodReport, PromotionAction, PromotionData};
use baton_schemas::subjects::sanitize_token;
use baton_schemas::{CdEvent, EventType};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cluster::Cluster;
use crate::error::{ClusterError, DeployError};
use crate::manifests::{
    self, APP_LABEL, COMMIT_ANNOTATION, ENVIRONMENT_LABEL, MANAGED_BY, Manifest, PROMOTION_ANNOTATION, RELEASE_LABEL,
};
use crate::rollout::{self, Interrupt, Limits, Verdict, Workload};
use kube::core::ApiResource;

/// The event types the deployer consumes.
pub const HANDLES: [EventType; 1] = [EventType::EnvironmentModified];

/// The newest promotion seen for an app in an environment (the later wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Latest {
    sequence: u64,
    promotion: String,
    /// Its config-repo commit: "later" is the config repo's order (a descendant commit), which
    /// can differ from the stream's when promoter replicas announce commits out of order or a
    /// retried promotion re-announces an old commit. Absent in records written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_commit: Option<String>,
}

/// The last promotion that rolled out healthy, and how it was reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Deployed {
    promotion: String,
    release: String,
    reported: String,
}

/// The deployer.
#[derive(Debug, Clone)]
pub struct Deployer {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Config-repo mirrors and credentials.
    pub sources: Sources,
    /// `baton-state`: the newest promotion per app and environment, and the last healthy one.
    pub state: kv::Store,
    /// One rollout per app and namespace.
    pub locks: Locks,
    /// The lease bucket the locks live in: read to tell whether a rollout holds an app's lease.
    pub leases: kv::Store,
    /// For progress events published during a rollout.
    pub jetstream: jetstream::Context,
    /// How rollouts are judged.
    pub limits: Limits,
}

pub(crate) fn latest_key(app: &str, env: &str) -> String {
    format!("deployer.latest.{}.{env}", sanitize_token(app))
}

fn deployed_key(app: &str, env: &str) -> String {
    format!("deployer.deployed.{}.{env}", sanitize_token(app))
}

/// The key prefix of [`applied_key`]: every app and environment the deployer applied.
pub(crate) const APPLIED_PREFIX: &str = "deployer.applied";

/// The promotion whose objects an app's environment runs (the last one applied), as
/// [`PromotionData`]: what drift detection compares the live objects with.
pub(crate) fn applied_key(app: &str, env: &str) -> String {
    format!("{APPLIED_PREFIX}.{}.{env}", sanitize_token(app))
}

/// The rollout lease of an app in a namespace (KV `baton-locks`): one rollout, or heal, at a
/// time.
pub(crate) fn lease_key(namespace: &str, app: &str) -> String {
    format!("deploy.{namespace}.{}", sanitize_token(app))
}

/// The label selector of an app's objects in an environment.
pub(crate) fn selector(token: &str, environment: &str) -> String {
    format!("{APP_LABEL}={token},{ENVIRONMENT_LABEL}={environment}")
}

/// The labels and annotations Baton stamps on every object of `promotion`.
fn stamps(promotion: &PromotionData) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let labels = BTreeMap::from([
        (MANAGED_BY.to_owned(), "baton".to_owned()),
        (APP_LABEL.to_owned(), sanitize_token(&promotion.app)),
        (ENVIRONMENT_LABEL.to_owned(), promotion.environment.clone()),
        (RELEASE_LABEL.to_owned(), sanitize_label(&promotion.release.release)),
    ]);
    let annotations = BTreeMap::from([
        (PROMOTION_ANNOTATION.to_owned(), promotion.promotion.clone()),
        (COMMIT_ANNOTATION.to_owned(), promotion.config_commit.clone()),
    ]);
    (labels, annotations)
}

/// What one pass of the apply path did.
pub(crate) struct Rollout {
    /// The objects applied, `Kind/name`.
    pub(crate) applied: Vec<String>,
    /// The objects pruned.
    pub(crate) pruned: Vec<String>,
    /// How the rollout went.
    pub(crate) verdict: Verdict,
    /// How long the rollout was waited for, in milliseconds.
    pub(crate) waited: u64,
}

impl Handler for Deployer {
    #[tracing::instrument(skip_all, fields(event.id = %event.id(), event.type = %event.event_type, chain.id = event.chain_id().unwrap_or("")))]
    async fn handle(&self, event: Arc<Incoming>) -> Result<Vec<Outgoing>, HandlerError> {
        let promotion: PromotionData = event.cdevent.custom_data_as().map_err(DeployError::InvalidPromotion)?;
        if !promotion.action.changes_manifests() {
            return Ok(Vec::new());
        }
        match self.deploy(&event, &promotion).await {
            Ok(events) => Ok(events),
            // The release cannot be deployed: reported, not retried.
            Err(e) if e.is_release_fault() => Ok(vec![self.failed(
                &event,
                &promotion,
                &e.to_string(),
                Vec::new(),
                Vec::new(),
            )]),
            Err(e) => Err(e.into()),
        }
    }
}

impl Deployer {
    async fn deploy(&self, event: &Incoming, promotion: &PromotionData) -> Result<Vec<Outgoing>, DeployError> {
        // A sync or restore never takes over from a rollout under way: it would put back what
        // that promotion is replacing.
        if promotion.action.reapplies()
            && let Some(holder) = self.rollout_holder(&promotion.namespace, &promotion.app).await?
        {
            return Ok(vec![self.superseded(event, promotion, &holder)]);
        }
        // The namespace is made ready while the lease is decided: a rollout needs it, and
        // making sure of it twice (for a promotion that turns out superseded) is harmless.
        let namespace = self
            .cluster
            .ensure_namespace(&promotion.namespace, &promotion.environment);
        let (namespace, claimed) = tokio::join!(namespace, self.claim(event, promotion));
        // From here on the lease is a guard: a failure below, or the handler cancelled by its
        // deadline or a shutdown, releases it when dropped.
        let (key, lease) = match claimed? {
            Claim::Ours { key, lease } => (key, *lease),
            Claim::Superseded(events) => return Ok(events),
        };
        namespace?;
        let mut guard = Guard {
            deployer: self,
            key,
            promotion: promotion.promotion.clone(),
            lease,
            renewed: Instant::now(),
        };
        // A later promotion recorded while we waited for the lease is applied by its own
        // handler, maybe already: applying ours now would put the older release back.
        let result = match self.latest(promotion).await.filter(|l| *l != promotion.promotion) {
            Some(newer) => Ok(vec![self.superseded(event, promotion, &format!("promotion {newer}"))]),
            None => self.roll_out(event, promotion, &mut guard).await,
        };
        // Released and waited for before the verdict is acked, not left to the drop: a replica
        // stopping right after (the runner finishes its events, then drains the connection)
        // would otherwise lose the release and hold the app's next rollout until the lease
        // expires.
        guard.lease.release().await;
        result
    }

    /// Records this promotion as the environment's latest unless a later one is known, and
    /// takes the rollout lease of the app in its namespace.
    async fn claim(&self, event: &Incoming, promotion: &PromotionData) -> Result<Claim, DeployError> {
        const RECORDING: &str = "recording the latest promotion";
        let key = latest_key(&promotion.app, &promotion.environment);
        // The later promotion wins: record ours unless a later one is already known.
        loop {
            let entry = self
                .state
                .entry(&key)
                .await
                .map_err(|e| DeployError::state(RECORDING, e))?;
            let current = entry
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| serde_json::from_slice::<Latest>(&e.value).ok());
            match current {
                Some(latest) if latest.promotion == promotion.promotion => break,
                Some(latest) if self.is_later(&latest, event.stream_sequence, promotion).await? => {
                    return Ok(Claim::Superseded(vec![self.superseded(
                        event,
                        promotion,
                        &format!("promotion {}", latest.promotion),
                    )]));
                }
                _ => {}
            }
            let ours = serde_json::to_vec(&Latest {
                sequence: event.stream_sequence,
                promotion: promotion.promotion.clone(),
                config_commit: Some(promotion.config_commit.clone()),
            })
            .expect("serializes");
            // Another replica wrote first: look again. Any other failure is the store's.
            match entry {
                Some(e) => match self.state.update(&key, ours.into(), e.revision).await {
                    Ok(_) => break,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(DeployError::state(RECORDING, e)),
                },
                None => match self.state.create(&key, ours.into()).await {
                    Ok(_) => break,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(DeployError::state(RECORDING, e)),
                },
            }
        }
        let lease = self
            .locks
            .acquire(
                &lease_key(&promotion.namespace, &promotion.app),
                &format!("rollout of {}", promotion.promotion),
            )
            .await?;
        Ok(Claim::Ours {
            key,
            lease: Box::new(lease),
        })
    }

    async fn roll_out(
        &self,
        event: &Incoming,
        promotion: &PromotionData,
        guard: &mut Guard<'_>,
    ) -> Result<Vec<Outgoing>, DeployError> {
        let started = self.event(
            event,
            EventType::DeploymentStarted,
            "deployment.started",
            serde_json::to_value(DeploymentStartedContent {
                environment: promotion.environment.clone(),
                app: promotion.app.clone(),
                artifact_id: promotion.release.image.purl.clone(),
            })
            .expect("serializes"),
            self.data(promotion, None, Vec::new(), Vec::new(), Vec::new()),
        );
        // The announcement and the release's files do not wait for each other; a fault in the
        // release's files is still what gets reported, with nothing of it applied.
        let announce = async {
            baton_kit::events::publish(&self.jetstream, &started)
                .await
                .map_err(DeployError::Announce)
        };
        let (announced, manifests) = tokio::join!(announce, self.manifests(promotion));
        announced?;
        let manifests = manifests?;
        let Rollout {
            applied,
            pruned,
            verdict,
            waited,
        } = self
            // A sync or restore takes back what was changed by hand, as a heal does.
            .apply_and_watch(promotion, manifests, guard, promotion.action.reapplies())
            .await?;
        Ok(match verdict {
            Verdict::Healthy if promotion.action.reapplies() => vec![self.resynced(event, promotion, waited).await?],
            Verdict::Healthy => vec![self.healthy(event, promotion, applied, pruned, waited).await?],
            Verdict::Failed { reason, pods } => vec![self.failed(event, promotion, &reason, pods, applied)],
            Verdict::Superseded => {
                let newer = self.latest(promotion).await.unwrap_or_default();
                vec![self.superseded(event, promotion, &format!("promotion {newer}"))]
            }
        })
    }

    /// Resolves and stamps the release's objects (namespace, Baton's labels and annotations):
    /// what applying `promotion` sends, and what drift is judged against.
    pub(crate) async fn resolve(
        &self,
        promotion: &PromotionData,
        manifests: Vec<Manifest>,
    ) -> Result<Vec<(Manifest, ApiResource, bool)>, DeployError> {
        let (labels, annotations) = stamps(promotion);
        let mut resolved = Vec::with_capacity(manifests.len());
        for mut manifest in manifests {
            manifests::check_namespace(&manifest, &promotion.namespace)?;
            let (group, version) = manifest.group_version();
            let (group, version) = (group.to_owned(), version.to_owned());
            let (resource, namespaced) = self.cluster.resolve(&group, &version, &manifest.kind).await?;
            if !namespaced {
                return Err(ClusterError::ClusterScoped {
                    file: manifest.file.clone(),
                    object: manifest.display(),
                    namespace: promotion.namespace.clone(),
                }
                .into());
            }
            manifests::stamp(&mut manifest, Some(&promotion.namespace), &labels, &annotations);
            resolved.push((manifest, resource, namespaced));
        }
        Ok(resolved)
    }

    /// The normal apply path, shared by promotions and healing: applies the release's objects
    /// (all checked by a dry run first), records them as what the environment runs, prunes what
    /// the release no longer has and watches the rollout until a verdict. With `take_back` (a
    /// heal, a sync, a restore) it takes back the fields the release sets that another manager
    /// changed (server-side apply's force); the fields it does not set stay theirs.
    pub(crate) async fn apply_and_watch(
        &self,
        promotion: &PromotionData,
        manifests: Vec<Manifest>,
        guard: &mut Guard<'_>,
        take_back: bool,
    ) -> Result<Rollout, DeployError> {
        let resolved = self.resolve(promotion, manifests).await?;
        let token = sanitize_token(&promotion.app);
        self.cluster
            .check_owners(&promotion.namespace, &token, &resolved)
            .await?;
        let applied = self
            .cluster
            .apply(&promotion.namespace, &token, &resolved, take_back)
            .await?;
        tracing::info!(app = %promotion.app, environment = %promotion.environment, applied = applied.len(), "applied");
        // What the environment runs now: drift is judged against it.
        self.state
            .put(
                applied_key(&promotion.app, &promotion.environment),
                serde_json::to_vec(promotion).expect("serializes").into(),
            )
            .await
            .map_err(|e| DeployError::state("recording the applied promotion", e))?;
        let selector = selector(&token, &promotion.environment);
        let workloads: Vec<Workload> = resolved.iter().filter_map(|(m, _, _)| Workload::of(m)).collect();
        // What the release no longer has is deleted while its pods come up, as `kubectl apply
        // --prune` followed by `kubectl rollout status` would, without waiting for one another.
        // A failed prune is retried with the whole promotion, as before the watch.
        let waiting = Instant::now();
        let (pruned, verdict) = tokio::join!(
            self.cluster.prune(&promotion.namespace, &token, &selector, &resolved),
            rollout::watch(
                self.cluster.client(),
                &promotion.namespace,
                &selector,
                &workloads,
                self.limits,
                guard,
            )
        );
        let waited = u64::try_from(waiting.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (pruned, verdict) = (pruned?, verdict?);
        tracing::info!(app = %promotion.app, environment = %promotion.environment, pruned = pruned.len(), "pruned");
        Ok(Rollout {
            applied,
            pruned,
            verdict,
            waited,
        })
    }

    /// Who holds the rollout lease of `app` in `namespace` (a rollout or a heal under way), if
    /// anyone does. A record past its expiry is a holder that stopped.
    pub(crate) async fn rollout_holder(&self, namespace: &str, app: &str) -> Result<Option<String>, DeployError> {
        let lease = self
            .leases
            .entry(lease_key(namespace, app))
            .await
            .map_err(|e| DeployError::state("reading the rollout lease", e))?;
        Ok(lease.filter(|e| e.operation == kv::Operation::Put).and_then(|e| {
            let record: serde_json::Value = serde_json::from_slice(&e.value).ok()?;
            let expires = record
                .get("expires_at")?
                .as_str()?
                .parse::<chrono::DateTime<chrono::Utc>>()
                .ok();
            expires.is_none_or(|at| at > chrono::Utc::now()).then(|| {
                record
                    .get("purpose")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("a rollout")
                    .to_owned()
            })
        }))
    }

    /// Whether `latest` is a later promotion than `promotion` (stream sequence `sequence`): its
    /// commit descends from ours in the config repo. Only when the two commits are unrelated
    /// (history rewritten) or `latest` names none does the stream's order decide.
    async fn is_later(&self, latest: &Latest, sequence: u64, promotion: &PromotionData) -> Result<bool, DeployError> {
        let Some(theirs) = latest.config_commit.clone() else {
            return Ok(latest.sequence > sequence);
        };
        let sources = self.sources.clone();
        let (url, ours) = (promotion.config_repository.clone(), promotion.config_commit.clone());
        let order = tokio::task::spawn_blocking(move || -> Result<Option<bool>, DeployError> {
            sources.mirror_with(&url, &ours)?;
            let mirror = sources.mirror_with(&url, &theirs)?;
            let history = |source| DeployError::History {
                url: url.clone(),
                ours: ours.clone(),
                theirs: theirs.clone(),
                source,
            };
            // Both are commits of the mirror now, so both parse.
            let (a, b) = (
                git2::Oid::from_str(&ours).map_err(history)?,
                git2::Oid::from_str(&theirs).map_err(history)?,
            );
            if mirror.graph_descendant_of(b, a).map_err(history)? {
                Ok(Some(true))
            } else if mirror.graph_descendant_of(a, b).map_err(history)? {
                Ok(Some(false))
            } else {
                Ok(None)
            }
        })
        .await
        .map_err(DeployError::Task)??;
        Ok(order.unwrap_or(latest.sequence > sequence))
    }

    async fn latest(&self, promotion: &PromotionData) -> Option<String> {
        let bytes = self
            .state
            .get(latest_key(&promotion.app, &promotion.environment))
            .await
            .ok()??;
        serde_json::from_slice::<Latest>(&bytes).ok().map(|l| l.promotion)
    }

    /// The folder's files at the promotion's commit, parsed.
    #[tracing::instrument(level = "debug", skip_all)]
    pub(crate) async fn manifests(&self, promotion: &PromotionData) -> Result<Vec<Manifest>, DeployError> {
        let sources = self.sources.clone();
        let (url, commit, folder) = (
            promotion.config_repository.clone(),
            promotion.config_commit.clone(),
            promotion.manifests_path.clone(),
        );
        let files = tokio::task::spawn_blocking(move || sources.files_at(&url, &commit, &folder))
            .await
            .map_err(DeployError::Task)??;
        Ok(manifests::parse(&promotion.manifests_path, &files)?)
    }

    fn data(
        &self,
        promotion: &PromotionData,
        reason: Option<String>,
        applied: Vec<String>,
        pruned: Vec<String>,
        failing_pods: Vec<PodReport>,
    ) -> DeploymentData {
        DeploymentData {
            promotion: promotion.promotion.clone(),
            action: promotion.action,
            app: promotion.app.clone(),
            environment: promotion.environment.clone(),
            namespace: promotion.namespace.clone(),
            release: promotion.release.release.clone(),
            config_commit: promotion.config_commit.clone(),
            image: promotion.release.image.reference.clone(),
            reason,
            applied,
            pruned,
            failing_pods,
            rollout_wait_ms: None,
        }
    }

    /// An event about `data`'s promotion. Its id derives from the promotion, not from the
    /// delivery: the same promotion delivered twice (a redelivery, a re-sent promotion) yields
    /// the same ids, which JetStream drops as duplicates, so a success is never reported twice.
    fn event(
        &self,
        incoming: &Incoming,
        ty: EventType,
        label: &str,
        content: serde_json::Value,
        data: DeploymentData,
    ) -> Outgoing {
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("baton:deployer:{}:{label}", data.promotion).as_bytes(),
        )
        .to_string();
        let event = CdEvent::new(ty, id, incoming.stage_source.clone(), data.release.clone(), content)
            .and_then(|e| e.with_custom_data(&data))
            .expect("deployer events serialize")
            .caused_by(incoming.id())
            .with_chain_id(incoming.chain_id().unwrap_or(&data.release));
        Outgoing::new(data.app.clone(), event)
    }

    async fn healthy(
        &self,
        incoming: &Incoming,
        promotion: &PromotionData,
        applied: Vec<String>,
        pruned: Vec<String>,
        waited_ms: u64,
    ) -> Result<Outgoing, DeployError> {
        let key = deployed_key(&promotion.app, &promotion.environment);
        let previous = self
            .state
            .get(&key)
            .await
            .map_err(|e| DeployError::state("reading the last healthy rollout", e))?
            .and_then(|b| serde_json::from_slice::<Deployed>(&b).ok());
        // A redelivered promotion reports what its first delivery reported.
        let reported = match &previous {
            Some(p) if p.promotion == promotion.promotion => p.reported.clone(),
            _ if promotion.action == PromotionAction::Rollback => "rolledback".to_owned(),
            Some(_) => "upgraded".to_owned(),
            None => "deployed".to_owned(),
        };
        let record = Deployed {
            promotion: promotion.promotion.clone(),
            release: promotion.release.release.clone(),
            reported: reported.clone(),
        };
        self.state
            .put(&key, serde_json::to_vec(&record).expect("serializes").into())
            .await
            .map_err(|e| DeployError::state("recording the healthy rollout", e))?;
        let ty = match reported.as_str() {
            "rolledback" => EventType::ServiceRolledBack,
            "upgraded" => EventType::ServiceUpgraded,
            _ => EventType::ServiceDeployed,
        };
        let content = json!({
            "environment": {"id": promotion.environment, "source": format!("/namespaces/{}", promotion.namespace)},
            "artifactId": promotion.release.image.purl,
        });
        tracing::info!(app = %promotion.app, environment = %promotion.environment, release = %promotion.release.release, %reported, "rollout healthy");
        Ok(self.event(
            incoming,
            ty,
            "deployment.healthy",
            content,
            DeploymentData {
                rollout_wait_ms: Some(waited_ms),
                ..self.data(promotion, None, applied, pruned, Vec::new())
            },
        ))
    }

    /// A sync or restore rolled out healthy: the environment matches its config commit again,
    /// recorded as `baton-environment.synced` (not as a deployment: no release moved) and in the
    /// drift record `baton status` reads.
    async fn resynced(
        &self,
        incoming: &Incoming,
        promotion: &PromotionData,
        waited_ms: u64,
    ) -> Result<Outgoing, DeployError> {
        let now = chrono::Utc::now();
        let record = DriftRecord {
            state: SyncState::Synced,
            config_commit: promotion.config_commit.clone(),
            objects: Vec::new(),
            objects_omitted: 0,
            fingerprint: String::new(),
            since: now,
            heal_failed: None,
        };
        self.state
            .put(
                drift_key(&promotion.app, &promotion.environment),
                serde_json::to_vec(&record).expect("serializes").into(),
            )
            .await
            .map_err(|e| DeployError::state("recording the environment in sync", e))?;
        let how = if promotion.action == PromotionAction::Restore {
            "restored"
        } else {
            "synced"
        };
        tracing::info!(app = %promotion.app, environment = %promotion.environment, commit = %promotion.config_commit, how, "in sync again");
        let content = EnvironmentSyncedContent {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
            how: how.to_owned(),
        };
        let data = DriftData {
            synced_at: Some(now),
            rollout_wait_ms: Some(waited_ms),
            ..DriftData::of(promotion, now)
        };
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("baton:deployer:{}:synced", promotion.promotion).as_bytes(),
        )
        .to_string();
        let event = CdEvent::new(
            EventType::EnvironmentSynced,
            id,
            incoming.stage_source.clone(),
            promotion.release.release.clone(),
            content,
        )
        .and_then(|e| e.with_custom_data(&data))
        .expect("deployer events serialize")
        .caused_by(incoming.id())
        .with_chain_id(incoming.chain_id().unwrap_or(&promotion.release.release));
        Ok(Outgoing::new(promotion.app.clone(), event))
    }

    fn failed(
        &self,
        incoming: &Incoming,
        promotion: &PromotionData,
        reason: &str,
        pods: Vec<PodReport>,
        applied: Vec<String>,
    ) -> Outgoing {
        tracing::warn!(app = %promotion.app, environment = %promotion.environment, release = %promotion.release.release, reason, "rollout failed");
        let content = serde_json::to_value(DeploymentFailedContent {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
            artifact_id: promotion.release.image.purl.clone(),
            reason: reason.to_owned(),
        })
        .expect("serializes");
        self.event(
            incoming,
            EventType::DeploymentFailed,
            "deployment.failed",
            content,
            self.data(promotion, Some(reason.to_owned()), applied, Vec::new(), pods),
        )
    }

    /// `baton-deployment.superseded`: `newer` (e.g. `promotion <id>`) took over.
    fn superseded(&self, incoming: &Incoming, promotion: &PromotionData, newer: &str) -> Outgoing {
        let reason = format!("superseded by {newer} of the same environment");
        let content = serde_json::to_value(DeploymentFailedContent {
            environment: promotion.environment.clone(),
            app: promotion.app.clone(),
            artifact_id: promotion.release.image.purl.clone(),
            reason: reason.clone(),
        })
        .expect("serializes");
        self.event(
            incoming,
            EventType::DeploymentSuperseded,
            "deployment.superseded",
            content,
            self.data(promotion, Some(reason), Vec::new(), Vec::new(), Vec::new()),
        )
    }
}

/// Label values: at most 63 characters of letters, digits, `-`, `_`, `.`.
fn sanitize_label(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

/// What [`Deployer::claim`] decided.
enum Claim {
    /// This promotion rolls out: the key it is recorded under, and the lease.
    Ours { key: String, lease: Box<Lease> },
    /// A later promotion is known: what to announce instead.
    Superseded(Vec<Outgoing>),
}

/// During a rollout: renews the lease, and stops the watch when a later promotion arrived.
/// Holds the lease, so dropping the guard (the handler cancelled) releases it.
pub(crate) struct Guard<'a> {
    pub(crate) deployer: &'a Deployer,
    /// The `baton-state` key of the app's newest promotion in the environment.
    pub(crate) key: String,
    /// The promotion rolling out; the newest one recorded only ever moves on to later ones.
    pub(crate) promotion: String,
    pub(crate) lease: Lease,
    pub(crate) renewed: Instant,
}

impl Interrupt for Guard<'_> {
    type Error = DeployError;

    async fn interrupted(&mut self) -> Result<bool, DeployError> {
        let locks = &self.deployer.locks;
        if self.renewed.elapsed() >= locks.lease_time() / 3 {
            // Lost to another replica that took the namespace over: the event is retried.
            locks.renew(&self.lease).await?;
            self.renewed = Instant::now();
        }
        let latest = self
            .deployer
            .state
            .get(&self.key)
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Latest>(&b).ok());
        Ok(latest.is_some_and(|l| l.promotion != self.promotion))
    }
}
