//! The commands that change what an environment runs: `promote` (through the gates, or
//! break-glass through an approval), `rollback` to an earlier release from the config repo's
//! history, and `sync` and `restore`, which apply the config repo's head again.

use std::sync::Arc;

use baton_schemas::EventType;
use baton_schemas::commands::{CommandReply, Verb};
use baton_schemas::release::{ApprovalKind, PromotionAction, PromotionData, ReleaseData, ReleaseFile};

use super::{Command, Done, Refusal, refuse};
use crate::advance::Advance;
use crate::error::PromoteError;
use crate::gates::{self, Move, OperatorGate, Previous};
use crate::manager::{app_dir, derive_id, short};
use crate::state::Trigger;

impl Command<'_> {
    pub(super) async fn promote(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let release = self.release().await?;
        let env_name = self.required(&self.request.environment, "environment")?;
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let policy = policy.value;
        let env = policy.environment(env_name)?;
        let before = policy.file.previous_before(&env.name);
        let (quarantined, current_before) = tokio::try_join!(promoter.state.bad(&release), async {
            match before {
                Some(before) => promoter.state.current(&release.app, &before.name).await,
                None => Ok(None),
            }
        })?;
        let previous = before.map(|env| Previous {
            env,
            current: current_before.as_ref().map(|c| &c.value),
        });
        let gate = gates::operator_promote(
            &release,
            env,
            quarantined.as_ref(),
            previous,
            self.request.break_glass,
            self.now,
        );
        let advanced = match gate {
            OperatorGate::Refuse(refusal) => return Err(refuse(refusal.message(&release, &env.name), Some(&release))),
            OperatorGate::BreakGlass => {
                promoter
                    .request_approval(
                        &policy,
                        &release,
                        env,
                        ApprovalKind::BreakGlass,
                        &self.request.actor,
                        self.request.reason.clone(),
                        &self.id,
                        &self.id,
                        self.now,
                    )
                    .await?
            }
            OperatorGate::Gates => {
                let trigger = Trigger::Operator {
                    actor: self.request.actor.clone(),
                    break_glass: self.request.break_glass,
                };
                let promotion = derive_id(&["operator-promote", &self.id, &env.name]);
                let request = Move {
                    release: &release,
                    env,
                    trigger: &trigger,
                    promotion: &promotion,
                };
                promoter.advance(&policy, request, "", self.now).await?
            }
        };
        if let Advance::Held(reason) = &advanced.value {
            // The hold is the release's, as `baton status` shows it, and the refusal the command's.
            if let Err(e) = promoter.publish(&advanced.events).await {
                tracing::warn!(error = %e, "could not record a held promotion");
            }
            return Err(refuse(reason.clone(), Some(&release)));
        }
        events.extend(advanced.events);
        let mut reply = CommandReply::ok(describe(&advanced.value, &release, &env.name));
        reply.release = Some(release.release.clone());
        match &advanced.value {
            Advance::Promoted(commit) => reply.config_commit = Some(commit.clone()),
            Advance::AwaitingApproval(id) => reply.approval = Some(id.clone()),
            _ => {}
        }
        Ok((reply, events))
    }

    pub(super) async fn rollback(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let app = self.required(&self.request.app, "app")?.to_owned();
        let env_name = self.required(&self.request.environment, "environment")?;
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let policy = policy.value;
        let env = policy.environment(env_name)?.clone();
        let repo = Arc::clone(&promoter.repo);
        let dir = app_dir(&env.name, &app);
        let history = promoter.blocking(move || Ok(repo.history(&dir, 200)?)).await?;
        let refused = |reason: String| Refusal::Refused {
            reason,
            app: Some(app.clone()),
            release: self.request.release.clone(),
        };
        let Some((_, now)) = history.first() else {
            return Err(refused(format!("{app} has never been promoted to `{}`", env.name)));
        };
        let runs = |action: PromotionAction| matches!(action, PromotionAction::Promote | PromotionAction::Rollback);
        let mut target = None;
        for (commit, file) in &history {
            if !runs(file.action) || file.release.release == now.release.release && self.request.release.is_none() {
                continue;
            }
            if let Some(wanted) = &self.request.release
                && &file.release.release != wanted
            {
                continue;
            }
            let bad = promoter.state.bad(&file.release).await?;
            if bad.is_some() {
                if self.request.release.is_some() {
                    return Err(refused(format!(
                        "release {} is quarantined; roll back to another one",
                        file.release.release
                    )));
                }
                continue;
            }
            target = Some((commit.clone(), file.release.clone()));
            break;
        }
        let Some((from_commit, release)) = target else {
            return Err(refused(match &self.request.release {
                Some(r) => format!(
                    "release {r} never ran in `{}`; `baton releases {app}` lists what did",
                    env.name
                ),
                None => format!("there is no earlier release of {app} in `{}` to roll back to", env.name),
            }));
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("rolled back by {}", self.request.actor));
        let promotion = derive_id(&["operator-rollback", &self.id]);
        let rolled_back = promoter
            .rollback(
                &env,
                &release,
                &from_commit,
                &self.request.actor,
                &reason,
                &promotion,
                "",
                self.request.break_glass,
                self.now,
            )
            .await;
        let written = match rolled_back {
            Ok(written) => written,
            // The environment requires evidence the target's image lacks: held, like a promotion.
            Err(e @ PromoteError::EvidenceRefused { .. }) => {
                let reason = e.to_string();
                let held = promoter.held_event(&release, &env.name, &promotion, "", &reason, None);
                if let Err(e) = promoter.publish(&[held]).await {
                    tracing::warn!(error = %e, "could not record a held rollback");
                }
                return Err(refused(reason));
            }
            Err(e) => return Err(e.into()),
        };
        events.extend(written.events);
        let mut reply = CommandReply::ok(format!(
            "`{}` rolled back to release {} (image {}) and pinned; `baton unpin {app} {}` resumes automatic promotion",
            env.name, release.release, release.image.reference, env.name
        ));
        reply.config_commit = Some(written.value.config_commit);
        reply.release = Some(release.release);
        Ok((reply, events))
    }

    /// `sync` (one app) and `restore` (every app of the environment): announces the manifests at
    /// the config repo's head again, one `environment.modified` per app, so the deployer applies
    /// them as they are: no commit, no new promotion of a release, the same digests.
    pub(super) async fn reapply(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let env_name = self.required(&self.request.environment, "environment")?;
        let app = match self.verb {
            Verb::Sync => Some(self.required(&self.request.app, "app")?.to_owned()),
            _ => None,
        };
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let env = policy.value.environment(env_name)?.clone();
        let repo = Arc::clone(&promoter.repo);
        let (head, files) = promoter.blocking(move || Ok(repo.release_files_at_head()?)).await?;
        let wanted = app.as_deref().map(|a| app_dir(&env.name, a));
        let prefix = format!("{}/", env.name);
        let apps: Vec<(String, ReleaseFile)> = files
            .into_iter()
            .filter(|(dir, _)| dir.starts_with(&prefix) && wanted.as_ref().is_none_or(|w| w == dir))
            .collect();
        if apps.is_empty() {
            return Err(Refusal::Refused {
                reason: match &app {
                    Some(a) => format!(
                        "{a} has never been promoted to `{}`: there is nothing to sync",
                        env.name
                    ),
                    None => format!(
                        "nothing has been promoted to `{}`: there is nothing to restore",
                        env.name
                    ),
                },
                app,
                release: None,
            });
        }
        let action = if self.verb == Verb::Sync {
            PromotionAction::Sync
        } else {
            PromotionAction::Restore
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("{} by {}", action.as_str(), self.request.actor));
        let mut named = Vec::new();
        for (dir, file) in apps {
            let promotion = derive_id(&[action.as_str(), &self.id, &dir]);
            let release = file.release;
            named.push(format!("{} (release {})", release.app, release.release));
            let data = PromotionData {
                promotion: promotion.clone(),
                action,
                app: release.app.clone(),
                environment: env.name.clone(),
                namespace: env.namespace.clone(),
                release: release.clone(),
                previous_release: None,
                config_repository: promoter.repo.url().to_owned(),
                config_commit: head.clone(),
                manifests_path: dir,
                actor: self.request.actor.clone(),
                reason: Some(reason.clone()),
                pinned: file.pinned.is_some(),
                break_glass: false,
                evidence: None,
            };
            events.push(promoter.event(
                EventType::EnvironmentModified,
                derive_id(&["environment.modified", &promotion]),
                &release.app,
                &env.name,
                serde_json::json!({"name": env.name}),
                Some(&release.release),
                None,
                Some(serde_json::to_value(&data).expect("serializes")),
            ));
        }
        let mut reply = CommandReply::ok(format!(
            "`{}`: applying config commit {} again for {}; `baton status` shows when it is in sync",
            env.name,
            short(&head),
            named.join(", ")
        ));
        reply.config_commit = Some(head);
        Ok((reply, events))
    }
}

/// What a promotion attempt came to, as the reply's message says it.
pub(super) fn describe(advance: &Advance, release: &ReleaseData, env: &str) -> String {
    match advance {
        Advance::Promoted(commit) => format!(
            "release {} promoted to `{env}` (config commit {commit})",
            release.release
        ),
        Advance::AwaitingApproval(id) => {
            format!("release {} waits for approval {id} to enter `{env}`", release.release)
        }
        Advance::Scheduled(at, why) => format!("release {} enters `{env}` at {at} ({why})", release.release),
        Advance::Held(reason) => reason.clone(),
        Advance::AlreadyThere => format!("release {} already runs in `{env}`", release.release),
    }
}
