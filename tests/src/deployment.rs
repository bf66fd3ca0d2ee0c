//! The deployer's report on a promotion, for suites that drive the promoter without running a
//! deployer: `service.deployed` (`service.rolledback` for a rollback) when the promotion runs
//! healthy, `baton-deployment.failed` with the reason when it does not, as the deployer
//! publishes them.

use async_nats::jetstream;
use baton_kit::{Outgoing, events};
use baton_schemas::release::{DeploymentData, PromotionAction, PromotionData};
use baton_schemas::{CdEvent, EventType};
use serde_json::json;

/// The deployer's report on `promotion` (as the promoter announced it): healthy when `failure`
/// is `None`, failed with that reason otherwise. It lists no applied, pruned or failing objects.
///
/// # Errors
/// When the event cannot be built (a bug in the values).
pub fn report(promotion: &PromotionData, failure: Option<&str>) -> anyhow::Result<Outgoing> {
    let data = DeploymentData {
        promotion: promotion.promotion.clone(),
        action: promotion.action,
        app: promotion.app.clone(),
        environment: promotion.environment.clone(),
        namespace: promotion.namespace.clone(),
        release: promotion.release.release.clone(),
        config_commit: promotion.config_commit.clone(),
        image: promotion.release.image.reference.clone(),
        reason: failure.map(str::to_owned),
        applied: vec![],
        pruned: vec![],
        failing_pods: vec![],
        rollout_wait_ms: None,
    };
    let artifact = &promotion.release.image.purl;
    let (ty, content) = match (failure, promotion.action) {
        (Some(reason), _) => (
            EventType::DeploymentFailed,
            json!({"environment": promotion.environment, "app": promotion.app, "artifactId": artifact, "reason": reason}),
        ),
        (None, PromotionAction::Rollback) => (
            EventType::ServiceRolledBack,
            json!({"environment": {"id": promotion.environment}, "artifactId": artifact}),
        ),
        (None, _) => (
            EventType::ServiceDeployed,
            json!({"environment": {"id": promotion.environment}, "artifactId": artifact}),
        ),
    };
    let event = CdEvent::new(
        ty,
        format!("deployer-{}", promotion.promotion),
        "/baton/deployer",
        promotion.release.release.clone(),
        content,
    )?
    .with_chain_id(&promotion.release.release)
    .with_custom_data(data)?;
    Ok(Outgoing::new(promotion.app.as_str(), event))
}

/// Publishes the [`report`] on `promotion` and waits for JetStream's ack.
///
/// # Errors
/// When the event cannot be built or is not acknowledged.
pub async fn publish(js: &jetstream::Context, promotion: &PromotionData, failure: Option<&str>) -> anyhow::Result<()> {
    events::publish(js, &report(promotion, failure)?).await?;
    Ok(())
}
