//! Writing to the config repo: one commit per promotion, rollback or pin of an app in an
//! environment, made under the environment's lease — the app's manifests at the release's
//! commit with its images pinned by digest (or, for a rollback, an earlier commit's manifests
//! byte for byte) and `.baton-release.yaml` — then what the environment runs is recorded and the
//! commit is announced as `environment.modified`. A write that moves an environment requiring
//! evidence to a digest passes [`crate::evidence`]'s gate first, and records what verified.

use std::sync::Arc;

use baton_kit::Outgoing;
use baton_kit::lease::Lease;
use baton_kit::source::{TreeFile, files_in};
use baton_schemas::EventType;
use baton_schemas::environments::Environment;
use baton_schemas::pipeline::{PIPELINE_FILE, Pipeline};
use baton_schemas::release::{
    EvidenceRecord, Pin, PromotionAction, PromotionData, RELEASE_FILE, ReleaseData, ReleaseFile,
};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::configrepo::{Change, file_in};
use crate::error::PromoteError;
use crate::manager::{Outcome, ReleaseManager, app_dir, derive_id, short};
use crate::render;
use crate::state::{self, Current, Scheduled};

/// The commit message's `Evidence:` line: what verified, or who skipped it.
fn describe_evidence(evidence: &EvidenceRecord) -> String {
    if let Some(skipped) = &evidence.skipped {
        return format!("skipped ({skipped})");
    }
    let mut verified: Vec<String> = evidence
        .signature
        .iter()
        .map(|s| format!("signature by {} ({})", s.key, s.manifest))
        .collect();
    verified.extend(
        evidence
            .attestations
            .iter()
            .map(|a| format!("{} by {} ({})", a.predicate_type, a.key, a.manifest)),
    );
    format!("verified: {}", verified.join(", "))
}

/// One config-repo write: what it does and how it is recorded.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) action: PromotionAction,
    /// The promotion's id: the commit's trailer, so a retry finds its commit.
    pub(crate) promotion: String,
    pub(crate) actor: String,
    pub(crate) reason: Option<String>,
    /// The environment's pin after the write.
    pub(crate) pinned: Option<Pin>,
    pub(crate) break_glass: bool,
    /// A rollback's source: the config-repo commit whose manifests are restored.
    pub(crate) restore_from: Option<String>,
    /// The event (or command) the write answers.
    pub(crate) cause: String,
}

impl ReleaseManager {
    /// Writes one commit to the config repo for `env` under its lock and records it.
    ///
    /// # Errors
    /// [`PromoteError`].
    pub(crate) async fn write(
        &self,
        release: &ReleaseData,
        env: &Environment,
        write: Write,
    ) -> Result<Outcome<PromotionData>, PromoteError> {
        // The evidence gate, before the lease: a move to a digest of an environment that
        // requires evidence verifies it first (or records that break-glass skipped it).
        let evidence = match (&env.evidence, write.action.changes_manifests()) {
            (Some(policy), true) => Some(
                Box::pin(self.verify_evidence(
                    policy,
                    release,
                    &env.name,
                    write.break_glass.then_some(write.actor.as_str()),
                ))
                .await?,
            ),
            _ => None,
        };
        let (evidence, mut events) = match evidence {
            Some(outcome) => (Some(outcome.value), outcome.events),
            None => (None, Vec::new()),
        };
        // The guard frees the environment when dropped: also at once when the handler is
        // cancelled (its deadline, a shutdown) in the middle of the write.
        let lease = self
            .locks
            .acquire(
                &format!("env.{}", env.name),
                &format!("{} {}", write.action.as_str(), release.release),
            )
            .await?;
        // Renewed while the render and the push run, however long they take.
        let result = self
            .locks
            .hold(&lease, self.write_locked(release, env, write, evidence, &lease))
            .await
            .map_err(PromoteError::from)
            .and_then(|written| written);
        // Released and waited for before the caller publishes and acks, not left to the drop's
        // background task: a replica stopping right after would otherwise lose the release and
        // hold the environment until the lease expires, and this replica's next write to the
        // environment (another app's promotion in the same tick) would find its own lease.
        lease.release().await;
        result.map(|mut written| {
            events.append(&mut written.events);
            written.events = events;
            written
        })
    }

    /// The write itself; `lease` is checked before the push and before recording, the writes a
    /// holder that lost the environment (paused past its lease) must not make.
    async fn write_locked(
        &self,
        release: &ReleaseData,
        env: &Environment,
        write: Write,
        evidence: Option<EvidenceRecord>,
        lease: &Lease,
    ) -> Result<Outcome<PromotionData>, PromoteError> {
        let dir = app_dir(&env.name, &release.app);
        let current = self.state.current(&release.app, &env.name).await?;
        let files = match write.action {
            PromotionAction::Promote => Some(self.render(release).await?),
            PromotionAction::Rollback => {
                let repo = Arc::clone(&self.repo);
                let (from, dir) = (write.restore_from.clone().unwrap_or_default(), dir.clone());
                Some(self.blocking(move || Ok(repo.files_at(&from, &dir)?)).await?)
            }
            // A sync or restore is no write: the promoter announces it without a commit.
            PromotionAction::Pin | PromotionAction::Unpin | PromotionAction::Sync | PromotionAction::Restore => None,
        };
        let file = ReleaseFile {
            release: release.clone(),
            promotion: write.promotion.clone(),
            action: write.action,
            actor: write.actor.clone(),
            // The time of the write itself, read under the environment's lease (not when the
            // operation began, which may be before another replica's write it waited for):
            // the release files' times follow the config repo's order.
            at: self.now(),
            pinned: write.pinned.clone(),
            evidence: evidence.clone(),
        };
        let mut message = format!(
            "{} {} release {} to {}\n\nRelease: {}\nApp commit: {}\nImage: {}\nActor: {}\n",
            write.action.as_str(),
            release.app,
            short(&release.release),
            env.name,
            release.release,
            release.commit,
            release.image.reference,
            write.actor,
        );
        if let Some(reason) = &write.reason {
            message.push_str(&format!("Reason: {reason}\n"));
        }
        if let Some(evidence) = &evidence {
            message.push_str(&format!("Evidence: {}\n", describe_evidence(evidence)));
        }
        let change = Change {
            promotion: write.promotion.clone(),
            dir: dir.clone(),
            files,
            release_file: yaml_serde::to_string(&file)
                .expect("a release file serializes")
                .into_bytes(),
            message,
        };
        let repo = Arc::clone(&self.repo);
        lease.check().await?;
        let committed = self.blocking(move || Ok(repo.commit(&change)?)).await?;
        // A retry whose commit an earlier attempt pushed, after which the environment moved on
        // (a later promotion committed while this one's lease had lapsed): announce it again,
        // but the environment's state stays the later promotion's, as the config repo says.
        if committed.existed {
            let (repo, path) = (Arc::clone(&self.repo), format!("{dir}/{RELEASE_FILE}"));
            let (_, at_head) = self.blocking(move || Ok(repo.read_at_head(&path)?)).await?;
            let moved_on = at_head
                .and_then(|bytes| yaml_serde::from_str::<ReleaseFile>(&String::from_utf8_lossy(&bytes)).ok())
                .is_some_and(|file| file.promotion != write.promotion);
            if moved_on {
                tracing::info!(
                    app = %release.app, environment = %env.name, promotion = %write.promotion,
                    "a retried promotion's commit was followed by a later one; the environment keeps the later"
                );
                let data = self.promotion_data(release, env, &write, &dir, &committed.commit, None, evidence);
                let event = self.modified_event(release, env, &write, &data);
                return Ok(Outcome {
                    value: data,
                    events: vec![event],
                });
            }
        }
        let previous = current.as_ref().map(|c| c.value.clone());
        // A pin or unpin changes only the pin of what the environment runs; anything else (or a
        // pin of an environment with no record yet) records this write as what it runs.
        let next = match (write.action, previous.clone()) {
            (PromotionAction::Pin | PromotionAction::Unpin, Some(mut c)) => {
                c.pinned = write.pinned.clone();
                c
            }
            _ => Current {
                release: release.release.clone(),
                promotion: write.promotion.clone(),
                config_commit: committed.commit.clone(),
                action: write.action,
                healthy_since: None,
                last_healthy: previous.as_ref().and_then(|p| p.last_healthy.clone()),
                pinned: write.pinned.clone(),
            },
        };
        // Under the environment's lease, checked again now: no other promotion writes this key
        // (a health report of the same promotion may; it changes only the health).
        lease.check().await?;
        self.state
            .put(&state::current_key(&release.app, &env.name), &next)
            .await?;
        let scheduled_key = state::scheduled_key(&release.app, &env.name);
        if let Some(s) = self.state.get::<Scheduled>(&scheduled_key).await?
            && s.value.promotion == write.promotion
        {
            self.state.delete_at(&scheduled_key, s.revision).await?;
        }
        let data = self.promotion_data(
            release,
            env,
            &write,
            &dir,
            &committed.commit,
            previous.map(|p| p.release).filter(|p| *p != release.release),
            evidence,
        );
        tracing::info!(
            app = %release.app, environment = %env.name, release = %release.release,
            action = write.action.as_str(), commit = %committed.commit, again = committed.existed,
            "config repo updated"
        );
        let event = self.modified_event(release, env, &write, &data);
        Ok(Outcome {
            value: data,
            events: vec![event],
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn promotion_data(
        &self,
        release: &ReleaseData,
        env: &Environment,
        write: &Write,
        dir: &str,
        commit: &str,
        previous_release: Option<String>,
        evidence: Option<EvidenceRecord>,
    ) -> PromotionData {
        PromotionData {
            promotion: write.promotion.clone(),
            action: write.action,
            app: release.app.clone(),
            environment: env.name.clone(),
            namespace: env.namespace.clone(),
            release: release.clone(),
            previous_release,
            config_repository: self.repo.url().to_owned(),
            config_commit: commit.to_owned(),
            manifests_path: dir.to_owned(),
            actor: write.actor.clone(),
            reason: write.reason.clone(),
            pinned: write.pinned.is_some(),
            break_glass: write.break_glass,
            evidence,
        }
    }

    /// `environment.modified` announcing `data`; its id derives from the promotion alone.
    fn modified_event(
        &self,
        release: &ReleaseData,
        env: &Environment,
        write: &Write,
        data: &PromotionData,
    ) -> Outgoing {
        self.event(
            EventType::EnvironmentModified,
            derive_id(&["environment.modified", &write.promotion]),
            &release.app,
            &env.name,
            json!({"name": env.name}),
            Some(&release.release),
            Some(&write.cause),
            Some(serde_json::to_value(data).expect("serializes")),
        )
    }

    /// Reads the app's manifests at the release's commit (the folder its pipeline file names)
    /// and pins its images.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn render(&self, release: &ReleaseData) -> Result<Vec<TreeFile>, PromoteError> {
        let sources = self.sources.clone();
        let release = release.clone();
        self.blocking(move || {
            let mirror = sources.mirror_with(&release.repository, &release.commit)?;
            let commit = &release.commit;
            let read = |source| PromoteError::AppRepoRead {
                url: release.repository.clone(),
                commit: commit.clone(),
                source,
            };
            let oid = git2::Oid::from_str(commit).map_err(read)?;
            let pipeline = file_in(&mirror, oid, PIPELINE_FILE)
                .map_err(read)?
                .ok_or_else(|| PromoteError::NoPipelineFile { commit: commit.clone() })?;
            let pipeline =
                Pipeline::parse(&String::from_utf8_lossy(&pipeline)).map_err(PromoteError::InvalidPipeline)?;
            let dir = pipeline
                .manifests
                .ok_or_else(|| PromoteError::NoManifestsDir { commit: commit.clone() })?;
            let dir = dir.trim_matches('/').to_owned();
            let missing = || PromoteError::MissingManifestsDir {
                dir: dir.clone(),
                commit: commit.clone(),
            };
            // The repository's root is not a manifests directory.
            if dir.is_empty() {
                return Err(missing());
            }
            let files = files_in(&mirror, oid, &dir).map_err(read)?.ok_or_else(missing)?;
            let rendered = render::render(&dir, &files, &release.image)?;
            Ok(rendered.into_iter().map(|f| (f.path, f.bytes)).collect())
        })
        .await
    }

    /// Rolls `env` back to `target` (the manifests of `from_commit`, byte for byte) and pins it,
    /// as decided `now`; `break_glass` skips the evidence gate (and is recorded).
    ///
    /// # Errors
    /// [`PromoteError`].
    #[allow(clippy::too_many_arguments)]
    pub async fn rollback(
        &self,
        env: &Environment,
        target: &ReleaseData,
        from_commit: &str,
        actor: &str,
        reason: &str,
        promotion: &str,
        cause: &str,
        break_glass: bool,
        now: DateTime<Utc>,
    ) -> Result<Outcome<PromotionData>, PromoteError> {
        self.write(
            target,
            env,
            Write {
                action: PromotionAction::Rollback,
                promotion: promotion.to_owned(),
                actor: actor.to_owned(),
                reason: Some(reason.to_owned()),
                pinned: Some(Pin {
                    by: actor.to_owned(),
                    reason: reason.to_owned(),
                    at: now,
                }),
                break_glass,
                restore_from: Some(from_commit.to_owned()),
                cause: cause.to_owned(),
            },
        )
        .await
    }
}
