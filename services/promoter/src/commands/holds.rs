//! The commands that hold a release or an environment where it is: `pin` and `unpin` an
//! environment's release for one app, `mark-bad` (quarantine a release and cancel what waits
//! for it) and `unquarantine`.

use baton_schemas::commands::CommandReply;
use baton_schemas::release::{Pin, PromotionAction};

use super::{Command, Done, Refusal, refuse};
use crate::error::PromoteError;
use crate::manager::derive_id;
use crate::state::{self, PendingApproval, Scheduled};
use crate::write::Write;

impl Command<'_> {
    pub(super) async fn pin(&self, pin: bool) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let app = self.required(&self.request.app, "app")?;
        let env_name = self.required(&self.request.environment, "environment")?;
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let policy = policy.value;
        let env = policy.environment(env_name)?;
        let current = promoter.state.current(app, &env.name).await?;
        let Some(current) = current else {
            return Err(Refusal::Refused {
                reason: format!(
                    "{app} has never been promoted to `{}`: there is nothing to pin",
                    env.name
                ),
                app: Some(app.to_owned()),
                release: None,
            });
        };
        if current.value.pinned.is_some() == pin {
            let word = if pin { "already pinned" } else { "not pinned" };
            return Ok((CommandReply::ok(format!("`{}` is {word} for {app}", env.name)), events));
        }
        let Some(release) = promoter.state.release(&current.value.release).await? else {
            return Err(Refusal::Failed(PromoteError::UnknownRelease(current.value.release)));
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("{} by {}", if pin { "pinned" } else { "unpinned" }, self.request.actor));
        let write = Write {
            action: if pin {
                PromotionAction::Pin
            } else {
                PromotionAction::Unpin
            },
            promotion: derive_id(&[if pin { "pin" } else { "unpin" }, &self.id]),
            actor: self.request.actor.clone(),
            reason: Some(reason.clone()),
            pinned: pin.then(|| Pin {
                by: self.request.actor.clone(),
                reason,
                at: self.now,
            }),
            break_glass: false,
            restore_from: None,
            cause: String::new(),
        };
        let written = promoter.write(&release, env, write).await?;
        events.extend(written.events);
        let mut reply = CommandReply::ok(if pin {
            format!(
                "`{}` pinned to release {} for {app}: automatic promotion leaves it alone",
                env.name, release.release
            )
        } else {
            format!("`{}` unpinned for {app}: automatic promotion resumes", env.name)
        });
        reply.config_commit = Some(written.value.config_commit);
        reply.release = Some(release.release);
        Ok((reply, events))
    }

    pub(super) async fn mark_bad(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let release = self.release().await?;
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("marked bad by {}", self.request.actor));
        let mut events = vec![
            promoter
                .quarantine(&release, &self.request.actor, &reason, None, self.now)
                .await?,
        ];
        // Whatever waits for this release stops waiting.
        let policy = promoter.policy().await?;
        events.extend(policy.events);
        for env in &policy.value.file.environments {
            let key = state::approval_key(&release.app, &env.name);
            if let Some(p) = promoter.state.get::<PendingApproval>(&key).await?
                && p.value.closed.is_none()
                && p.value.data.release.release == release.release
                && promoter
                    .close_approval(&key, &p, "cancelled", &reason, self.now)
                    .await?
            {
                events.push(promoter.approval_closed(&p.value, "cancelled", "rejected", &self.request.actor, &reason));
            }
            let key = state::scheduled_key(&release.app, &env.name);
            if let Some(s) = promoter.state.get::<Scheduled>(&key).await?
                && s.value.release == release.release
            {
                promoter.state.delete_at(&key, s.revision).await?;
            }
        }
        let mut reply = CommandReply::ok(format!(
            "release {} is quarantined: it is never promoted again",
            release.release
        ));
        reply.release = Some(release.release);
        Ok((reply, events))
    }

    /// Lifts a release's quarantine (under its id, its commit and its image), recorded as
    /// `baton-release.unquarantined`.
    pub(super) async fn unquarantine(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let release = self.release().await?;
        let Some(bad) = promoter.state.bad(&release).await? else {
            return Err(refuse(
                format!("release {} is not quarantined", release.release),
                Some(&release),
            ));
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("lifted by {}", self.caller.person));
        let event = promoter
            .unquarantine(&release, &bad, &self.caller.person, &reason)
            .await?;
        let mut reply = CommandReply::ok(format!(
            "release {} is no longer quarantined (it was: {}); it moves on with the next event that concerns it",
            release.release, bad.reason
        ));
        reply.release = Some(release.release);
        Ok((reply, vec![event]))
    }
}
