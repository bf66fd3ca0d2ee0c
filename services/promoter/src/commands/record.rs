//! What a command is recorded as: `baton-command.accepted` with the proven sender ahead of what
//! an accepted command did, `baton-command.rejected` with the reason for a refused one (and with
//! the failed check for one whose sender is not proven), each filed under its app and the
//! release whose timeline it joins.

use baton_schemas::EventType;
use baton_schemas::commands::{CommandReply, CommandRequest, Verb};
use baton_schemas::extensions::{CommandAcceptedContent, CommandRejectedContent};
use baton_schemas::subjects::NO_APP;

use super::Command;
use crate::identity::Unproven;
use crate::manager::{ReleaseManager, derive_id};

/// Records a command whose sender is not proven, with what it claimed and the check that
/// failed, and answers it.
pub(super) async fn refuse_unproven(
    promoter: &ReleaseManager,
    verb: Verb,
    request: &CommandRequest,
    unproven: &Unproven,
) -> CommandReply {
    let reason = unproven.to_string();
    let request_id = request
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (app, release) = filed_under(promoter, request.app.as_deref(), request.release.as_deref()).await;
    let event = promoter.event(
        EventType::CommandRejected,
        derive_id(&[
            "command.unproven",
            &request_id,
            verb.as_str(),
            request.nonce.as_deref().unwrap_or_default(),
        ]),
        &app,
        &request_id,
        serde_json::to_value(CommandRejectedContent {
            verb: verb.as_str().to_owned(),
            actor: request.actor.clone(),
            reason: reason.clone(),
            check: Some(unproven.check().to_owned()),
            person: None,
            key_fingerprint: None,
            channel: None,
        })
        .expect("serializes"),
        release.as_deref(),
        None,
        Some(serde_json::to_value(request).expect("serializes")),
    );
    if let Err(e) = promoter.publish(&[event]).await {
        tracing::warn!(error = %e, "could not record an unproven command");
    }
    tracing::warn!(%verb, claimed = %request.actor, check = unproven.check(), %reason, "command refused: sender not proven");
    CommandReply::refused(reason)
}

/// What a command's record (`baton-command.accepted` or `.rejected`) is filed under: the app
/// token of its subject, and the release whose timeline (`chainId`) it joins. The release only
/// when the promoter knows it: an id it never created has no timeline. The app as the command
/// names it, else as that release names it, else [`NO_APP`]: never an app the command did not
/// concern.
async fn filed_under(promoter: &ReleaseManager, app: Option<&str>, release: Option<&str>) -> (String, Option<String>) {
    let known = match release {
        Some(id) => promoter.state.release(id).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot read the release a command names; its record joins no timeline");
            None
        }),
        None => None,
    };
    let app = app
        .map(str::to_owned)
        .or_else(|| known.as_ref().map(|r| r.app.clone()))
        .unwrap_or_else(|| NO_APP.to_owned());
    (app, known.map(|r| r.release))
}

impl Command<'_> {
    /// `baton-command.accepted`: the proven sender and what they asked.
    pub(super) async fn accepted(&self) -> baton_kit::Outgoing {
        let (app, release) = filed_under(
            self.promoter,
            self.request.app.as_deref(),
            self.request.release.as_deref(),
        )
        .await;
        self.promoter.event(
            EventType::CommandAccepted,
            derive_id(&["command.accepted", &self.id]),
            &app,
            &self.request_id,
            serde_json::to_value(CommandAcceptedContent {
                verb: self.verb.as_str().to_owned(),
                person: self.caller.person.clone(),
                key_fingerprint: self.caller.fingerprint.clone(),
                channel: self.caller.channel.clone(),
            })
            .expect("serializes"),
            release.as_deref(),
            None,
            Some(serde_json::to_value(&self.request).expect("serializes")),
        )
    }

    /// `baton-command.rejected`: the proven sender, what they asked and why it was refused; the
    /// refusal is the reply, with the release the record joins.
    pub(super) async fn reject(&self, reason: String, app: Option<String>, release: Option<String>) -> CommandReply {
        let promoter = self.promoter;
        let (app, release) = filed_under(promoter, app.as_deref(), release.as_deref()).await;
        let event = promoter.event(
            EventType::CommandRejected,
            derive_id(&["command.rejected", &self.id, self.verb.as_str()]),
            &app,
            &self.request_id,
            serde_json::to_value(CommandRejectedContent {
                verb: self.verb.as_str().to_owned(),
                actor: self.request.actor.clone(),
                reason: reason.clone(),
                check: None,
                person: Some(self.caller.person.clone()),
                key_fingerprint: Some(self.caller.fingerprint.clone()),
                channel: Some(self.caller.channel.clone()),
            })
            .expect("serializes"),
            release.as_deref(),
            None,
            Some(serde_json::to_value(&self.request).expect("serializes")),
        );
        if let Err(e) = promoter.publish(&[event]).await {
            tracing::warn!(error = %e, "could not record a refused command");
        }
        tracing::info!(verb = %self.verb, actor = %self.request.actor, %reason, "command refused");
        let mut reply = CommandReply::refused(reason);
        reply.release = release;
        reply
    }
}
