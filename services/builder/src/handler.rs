//! The builder's stage: for each `change.merged`, fetch the exact commit, run the build steps
//! of its `.baton.yaml`, assemble the image and push it while signing it and attesting its
//! provenance, emitting `build.queued`, `build.started`, then `artifact.packaged`,
//! `artifact.published`, `artifact.signed` and `build.finished`.
//!
//! Each build step runs with the limits and secrets the builder's [`StepPolicy`] gives it; every
//! step is checked before any runs.
//!
//! A build that fails because of the commit (an invalid pipeline file, a step asking for more
//! than the builder allows, a failing step, a missing file, a base image that does not exist) is
//! *handled*: it ends with `build.finished` and outcome `failure` and the reason, and nothing
//! further happens for that commit. A failure of the machinery (an unreachable repository, a
//! registry that is down, a registry refusing the image's signature or attestation) is
//! *transient*: the event is retried with backoff, and only when retries are exhausted does the
//! build end with outcome `error`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream;
use baton_kit::events::InFlight;
use baton_kit::steps::{StepPolicy, StepRequest, StepRunner};
use baton_kit::{Handler, HandlerError, Incoming, Outgoing};
use baton_schemas::payloads::{BuildData, ImageInfo, Outcome, PushData};
use baton_schemas::pipeline::{PIPELINE_FILE, Pipeline};

use crate::events;
use crate::evidence::{self, Attested, Attester, BuildFacts, PublishError};
use crate::image::{self, Registry};
use baton_kit::source::Sources;

/// The builder's handler.
#[derive(Debug)]
pub struct Builder {
    /// Mirrors and workspaces.
    pub sources: Sources,
    /// Runs the build steps and keeps their logs.
    pub steps: StepRunner,
    /// What each build step may have: limits within the maxima, the secrets granted to its
    /// repository.
    pub policy: StepPolicy,
    /// Where images go.
    pub registry: Registry,
    /// Signs and attests every pushed image; `None` when `signing.enabled` is false.
    pub attester: Option<Attester>,
    /// Repository prefix in the registry: every image goes under it, `image.name` included.
    pub repository_prefix: String,
    /// For publishing `build.queued`/`build.started` as they happen.
    pub jetstream: jetstream::Context,
}

/// How one build attempt ended, before it becomes events.
enum Attempt {
    /// The commit built (and, with an image section, its image is in the registry, with its
    /// evidence when signing is on).
    Built {
        image: Option<ImageInfo>,
        signed: Option<Box<Attested>>,
    },
    /// The commit cannot be built: the reason, for `build.finished`.
    Failed(String),
}

impl Builder {
    fn data(incoming: &Incoming, push: &PushData) -> BuildData {
        BuildData {
            app: push.app.clone(),
            commit: push.after.clone(),
            git_ref: Some(push.git_ref.clone()),
            repository: push.repository.clone_url.clone(),
            run: events::build_id(incoming),
            outcome: None,
            reason: None,
            steps: Vec::new(),
            image: None,
            pushed_by: push.pusher.clone(),
        }
    }

    async fn announce(&self, announced: &mut InFlight, event: Outgoing) -> Result<(), HandlerError> {
        announced
            .send(&self.jetstream, &event)
            .await
            .map_err(HandlerError::from)
    }

    async fn attempt(
        &self,
        incoming: &Incoming,
        data: &mut BuildData,
        announced: &mut InFlight,
    ) -> Result<Attempt, HandlerError> {
        let workspace = match self
            .sources
            .checkout_workspace(&data.repository, &data.commit, "build-")
            .await
        {
            Ok(workspace) => workspace,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => return Ok(Attempt::Failed(e.to_string())),
        };
        let (pipeline, pipeline_digest) = match std::fs::read_to_string(workspace.path().join(PIPELINE_FILE)) {
            Ok(text) => match Pipeline::parse(&text) {
                Ok(p) => (p, image::sha256_digest(text.as_bytes())),
                Err(e) => return Ok(Attempt::Failed(e.to_string())),
            },
            Err(_) => {
                return Ok(Attempt::Failed(format!(
                    "{PIPELINE_FILE} is missing at the root of commit {}: add one (see docs/pipeline.md)",
                    data.commit
                )));
            }
        };
        // Where the image goes is decided before anything runs: a name outside the registry
        // prefix fails the build as any other mistake in the pipeline file does.
        let image = match &pipeline.image {
            Some(spec) => {
                match crate::config::image_repository(&self.repository_prefix, &data.app, spec.name.as_deref()) {
                    Ok(repository) => Some((spec, repository)),
                    Err(e) => return Ok(Attempt::Failed(format!("{PIPELINE_FILE}: {e}"))),
                }
            }
            None => None,
        };
        // So is a step asking for more than this builder allows: every step is checked before
        // any runs.
        let grants = match self.policy.allow_all(&data.app, "build.steps", &pipeline.build.steps) {
            Ok(grants) => grants,
            Err(e) => return Ok(Attempt::Failed(format!("{PIPELINE_FILE}: {e}"))),
        };
        self.announce(announced, events::started(incoming, data)).await?;
        if let (Some(attester), Some((_, repository))) = (&self.attester, &image) {
            tokio::spawn(attester.prepare(repository));
        }
        let started = chrono::Utc::now();
        let no_extra_env = BTreeMap::new();
        for (step, grant) in pipeline.build.steps.iter().zip(&grants) {
            let outcome = self
                .steps
                .run(StepRequest {
                    run_id: &data.run,
                    app: &data.app,
                    step,
                    workspace: workspace.path(),
                    extra_env: &no_extra_env,
                    secrets: &[],
                    secret_env: &grant.secrets,
                    limits: Some(&grant.limits),
                })
                .await;
            data.steps.push(outcome.report(&step.name));
            if !outcome.status.succeeded() {
                return Ok(Attempt::Failed(format!(
                    "build step `{}` {}",
                    step.name, outcome.status
                )));
            }
        }
        let Some((spec, repository)) = image else {
            return Ok(Attempt::Built {
                image: None,
                signed: None,
            });
        };
        let job = image::ImageJob {
            spec,
            workspace: workspace.path(),
            commit: &data.commit,
            source_url: &data.repository,
            registry: &self.registry,
            repository: &repository,
        };
        let assembled = match image::assemble(&job).await {
            Ok(assembled) => assembled,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => return Ok(Attempt::Failed(e.to_string())),
        };
        let facts = BuildFacts {
            data,
            pipeline_digest: &pipeline_digest,
            started,
            finished: chrono::Utc::now(),
        };
        let (pushed, signed) = match evidence::publish(&assembled, self.attester.as_ref(), &facts).await {
            Ok(published) => published,
            Err(PublishError::Image(e)) if e.is_transient() => return Err(e.into()),
            Err(PublishError::Image(e)) => return Ok(Attempt::Failed(e.to_string())),
            Err(PublishError::Evidence(e)) => return Err(evidence::attach_failed(e)),
        };
        let signed = signed.map(Box::new);
        Ok(Attempt::Built {
            image: Some(pushed.info()),
            signed,
        })
    }
}

impl Handler for Builder {
    async fn handle(&self, incoming: Arc<Incoming>) -> Result<Vec<Outgoing>, HandlerError> {
        let push: PushData = incoming.cdevent.custom_data_as().map_err(|e| {
            HandlerError::permanent(
                "invalid_input",
                format!("change.merged without push data in customData: {e}"),
            )
        })?;
        let mut data = Self::data(&incoming, &push);
        let mut announced = InFlight::default();
        self.announce(&mut announced, events::queued(&incoming, &data)).await?;
        let attempt = self.attempt(&incoming, &mut data, &mut announced).await?;
        announced.confirmed().await.map_err(HandlerError::from)?;
        let mut outputs = Vec::new();
        match attempt {
            Attempt::Built { image, signed } => {
                if let Some(image) = &image {
                    data.image = Some(image.clone());
                    outputs.push(events::packaged(&incoming, &data, image, &data.repository));
                    outputs.push(events::published(&incoming, &data, image));
                }
                if let Some(signed) = &signed {
                    outputs.push(events::signed(&incoming, &signed.data, &signed.signature));
                }
                data.outcome = Some(Outcome::Success);
                tracing::info!(app = %data.app, commit = %data.commit, image = ?data.image.as_ref().map(|i| &i.reference), "build succeeded");
            }
            Attempt::Failed(reason) => {
                tracing::info!(app = %data.app, commit = %data.commit, %reason, "build failed");
                data.outcome = Some(Outcome::Failure);
                data.reason = Some(reason);
            }
        }
        outputs.push(events::finished(&incoming, &data));
        Ok(outputs)
    }

    fn on_give_up(&self, incoming: &Incoming, reason: &str) -> Vec<Outgoing> {
        let Ok(push) = incoming.cdevent.custom_data_as::<PushData>() else {
            return Vec::new();
        };
        let mut data = Self::data(incoming, &push);
        data.outcome = Some(Outcome::Error);
        data.reason = Some(format!("the build could not run: {reason}"));
        vec![events::finished(incoming, &data)]
    }
}
