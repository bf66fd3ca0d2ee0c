//! The promoter's `environment.modified`: for suites and benches that drive the deployer without
//! running a promoter, one tested release promoted into an environment at a config-repo commit,
//! as the promoter publishes it; for suites that run one, the promotion it announced, awaited.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use baton_kit::Outgoing;
use baton_schemas::payloads::ImageInfo;
use baton_schemas::release::{PromotionAction, PromotionData, ReleaseData};
use baton_schemas::{CdEvent, EventType};
use serde_json::json;

/// One promotion.
#[derive(Debug, Clone)]
pub struct Promotion<'a> {
    /// The app (`acme/shop`).
    pub app: &'a str,
    /// The environment (`staging`).
    pub environment: &'a str,
    /// Its namespace (`shop-staging`).
    pub namespace: &'a str,
    /// The promotion's id: what the deployer's verdict names.
    pub promotion: String,
    /// The release (`chainId`).
    pub release: String,
    /// The image the release runs.
    pub image: &'a ImageInfo,
    /// Promote, roll back, ...
    pub action: PromotionAction,
    /// The config repo's URL.
    pub config_repository: String,
    /// The config-repo commit holding the environment's manifests.
    pub config_commit: &'a str,
    /// The manifests' folder in that commit (`staging/acme_shop`).
    pub manifests_path: String,
    /// Who promoted.
    pub actor: &'a str,
}

impl Promotion<'_> {
    /// The promotion as the event carries it: a tested release with no history.
    pub fn data(&self) -> PromotionData {
        PromotionData {
            promotion: self.promotion.clone(),
            action: self.action,
            app: self.app.into(),
            environment: self.environment.into(),
            namespace: self.namespace.into(),
            release: ReleaseData {
                release: self.release.clone(),
                app: self.app.into(),
                commit: "0".repeat(40),
                repository: "file:///nowhere".into(),
                image: self.image.clone(),
                author: None,
                pushed_by: None,
                tested: true,
                test_run: None,
                previous_release: None,
                changelog: vec![],
                created_at: chrono::Utc::now(),
            },
            previous_release: None,
            config_repository: self.config_repository.clone(),
            config_commit: self.config_commit.into(),
            manifests_path: self.manifests_path.clone(),
            actor: self.actor.into(),
            reason: None,
            pinned: false,
            break_glass: false,
            evidence: None,
        }
    }
}

/// `data` as the `environment.modified` the promoter publishes, with event id `id`.
///
/// # Errors
/// When the event cannot be built (a bug in the values).
pub fn event(data: &PromotionData, id: &str) -> anyhow::Result<Outgoing> {
    let event = CdEvent::new(
        EventType::EnvironmentModified,
        id,
        "/baton/promoter",
        data.environment.clone(),
        json!({"name": data.environment}),
    )?
    .with_chain_id(&data.release.release)
    .with_custom_data(data)?;
    Ok(Outgoing::new(data.app.as_str(), event))
}

/// The promotion of `release` into `environment` the promoter announced (the latest, should it
/// have announced several), once it has arrived.
///
/// # Errors
/// As [`events::wait_for`](crate::events::wait_for), or when the event carries no promotion.
pub async fn announced(
    js: &jetstream::Context,
    release: &str,
    environment: &str,
    timeout: Duration,
) -> anyhow::Result<PromotionData> {
    let found = crate::events::wait_for(js, EventType::EnvironmentModified, 1, timeout, |e| {
        e.context.chain_id.as_deref() == Some(release)
            && e.custom_data_as::<PromotionData>()
                .is_ok_and(|p| p.environment == environment)
    })
    .await?;
    Ok(found.last().context("one event")?.custom_data_as()?)
}
