//! Approval requests: opening one for a release into an environment (superseding an open
//! request for an older release, never asking twice for a declined or expired one, never asking
//! for an image the environment's evidence gate refuses), closing it,
//! and the `approval.created/updated/closed` events that record it. Whether a vote counts is
//! decided in [`crate::gates::vote`]; the `approve` and `decline` commands carry it out.

use baton_kit::Outgoing;
use baton_schemas::EventType;
use baton_schemas::environments::Environment;
use baton_schemas::release::{ApprovalData, ApprovalKind, ReleaseData, user_urn};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::advance::Advance;
use crate::error::PromoteError;
use crate::gates::{self, Asking, Move};
use crate::manager::{AUTOMATION, Outcome, ReleaseManager, derive_id};
use crate::policy::Policy;
use crate::state::{self, Closure, PendingApproval, Trigger};

impl ReleaseManager {
    /// Opens an approval request for `release` into `env` (expiring `expires_after` from `now`),
    /// superseding an open request for an older release. `cause` is the event the request
    /// answers (empty for an operator's command); `asked_by` identifies what asked: the event,
    /// or the operator's request. A promotion request into an environment that requires
    /// evidence is opened only once the image's evidence verifies.
    ///
    /// # Errors
    /// [`PromoteError::EvidenceRefused`] naming the failed check (no request is opened; the
    /// caller holds the move); [`PromoteError::EvidenceStore`] when the registry cannot answer
    /// now (retried); any other [`PromoteError`].
    #[allow(clippy::too_many_arguments)]
    pub async fn request_approval(
        &self,
        policy: &Policy,
        release: &ReleaseData,
        env: &Environment,
        kind: ApprovalKind,
        requested_by: &str,
        reason: Option<String>,
        cause: &str,
        asked_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome<Advance>, PromoteError> {
        let key = state::approval_key(&release.app, &env.name);
        let existing = self.state.get::<PendingApproval>(&key).await?;
        let mut events = Vec::new();
        match gates::approval_request(existing.as_ref().map(|e| &e.value), release, kind) {
            Asking::AlreadyOpen(approval) => {
                return Ok(Outcome {
                    events,
                    value: Advance::AwaitingApproval(approval),
                });
            }
            Asking::NotAgain(closed) => {
                let reason = format!(
                    "the approval request for release {} into `{}` was {} ({}); it is not asked again",
                    release.release, env.name, closed.status, closed.reason
                );
                return Ok(Outcome {
                    events,
                    value: Advance::Held(reason),
                });
            }
            Asking::Open => {}
        }
        // The evidence gate, before anyone is asked: an image that cannot pass it is not put to
        // a vote. The write checks again (the evidence or the keys may change before the
        // quorum); a break-glass request asks to skip the gate, so it is not checked here.
        if kind == ApprovalKind::Promotion
            && let Some(required) = &env.evidence
        {
            let verified = Box::pin(self.verify_evidence(required, release, &env.name, None)).await?;
            events.extend(verified.events);
        }
        let current = self.state.current(&release.app, &env.name).await?;
        let current_release = match &current {
            Some(c) => self.state.release(&c.value.release).await?,
            None => None,
        };
        // Unique to the app, the release, the environment and what asked (the event, or the
        // operator's request): two requests never share an approval, nor the promotion derived
        // from it.
        let approval = derive_id(&[
            "approval",
            &release.app,
            &release.release,
            &env.name,
            kind_word(kind),
            asked_by,
        ]);
        let data = ApprovalData {
            approval: approval.clone(),
            kind,
            app: release.app.clone(),
            environment: env.name.clone(),
            release: release.clone(),
            current_release: current_release.as_ref().map(|r| r.release.clone()),
            current_image: current_release.as_ref().map(|r| r.image.reference.clone()),
            required: env.approvals.required,
            approvers: policy.file.approvers_of(env).into_iter().map(str::to_owned).collect(),
            votes: Vec::new(),
            expires_at: gates::expires_at(env, now),
            requested_by: requested_by.to_owned(),
            reason,
        };
        let record = PendingApproval {
            data: data.clone(),
            promotion: derive_id(&["promote", &approval]),
            cause: cause.to_owned(),
            closed: None,
            promotion_pending: false,
            trace: baton_kit::telemetry::traceparent(),
        };
        if let Some(open) = existing.as_ref().filter(|e| e.value.closed.is_none()) {
            let why = format!("superseded by release {}", release.release);
            events.push(self.approval_closed(&open.value, "cancelled", "rejected", AUTOMATION, &why));
        }
        if !self
            .state
            .compare_and_set(&key, &record, existing.as_ref().map(|e| e.revision))
            .await?
        {
            return Err(PromoteError::ApprovalContended {
                app: release.app.clone(),
                environment: env.name.clone(),
            });
        }
        events.push(self.event(
            EventType::ApprovalCreated,
            derive_id(&["approval.created", &approval]),
            &release.app,
            &approval,
            json!({
                "approvalDetailsUrl": format!("urn:baton:approval:{approval}"),
                "resourceTargetUrl": format!("urn:baton:release:{}:{}", release.release, env.name),
                "requestor": user_urn(requested_by),
            }),
            Some(&release.release),
            Some(cause),
            Some(serde_json::to_value(&data).expect("serializes")),
        ));
        Ok(Outcome {
            events,
            value: Advance::AwaitingApproval(approval),
        })
    }

    /// `approval.closed` for `pending` with `status` (approved, rejected, cancelled, expired).
    pub(crate) fn approval_closed(
        &self,
        pending: &PendingApproval,
        status: &str,
        decision: &str,
        responder: &str,
        reason: &str,
    ) -> Outgoing {
        let mut data = pending.data.clone();
        data.reason = Some(reason.to_owned());
        let id = derive_id(&["approval.closed", &data.approval]);
        self.approval_response(EventType::ApprovalClosed, id, &data, responder, decision, Some(status))
    }

    /// `approval.updated` for one vote.
    pub(crate) fn approval_updated(&self, pending: &PendingApproval, actor: &str, decision: &str) -> Outgoing {
        let data = &pending.data;
        let id = derive_id(&["approval.updated", &data.approval, actor]);
        self.approval_response(EventType::ApprovalUpdated, id, data, actor, decision, None)
    }

    /// An answer to the request `data` (caused by its `approval.created`): `responder`'s
    /// `decision`, and the request's `status` when the answer closes it.
    fn approval_response(
        &self,
        ty: EventType,
        id: String,
        data: &ApprovalData,
        responder: &str,
        decision: &str,
        status: Option<&str>,
    ) -> Outgoing {
        self.event(
            ty,
            id,
            &data.app,
            &data.approval,
            data.answer_content(responder, decision, status),
            Some(&data.release.release),
            Some(&derive_id(&["approval.created", &data.approval])),
            Some(serde_json::to_value(data).expect("serializes")),
        )
    }

    /// Closes an open approval request as of `now` (CAS); `false` when someone else changed it
    /// first.
    pub(crate) async fn close_approval(
        &self,
        key: &str,
        pending: &state::Versioned<PendingApproval>,
        status: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, PromoteError> {
        let mut closed = pending.value.clone();
        closed.closed = Some(Closure {
            status: status.to_owned(),
            reason: reason.to_owned(),
            at: now,
        });
        Ok(self.state.compare_and_set(key, &closed, Some(pending.revision)).await?)
    }
}

impl ReleaseManager {
    /// Carries out the promotion an approved request (`key`, as read) is owed: the move with the
    /// approval as its trigger, its events published, then the request's outbox mark cleared.
    /// Idempotent by the promotion id (a retry finds the commit an earlier attempt pushed, and
    /// the events' ids are derived). A failure that retrying cannot mend ends here as a
    /// `baton-promotion.held` with the reason; a transient one is returned and leaves the mark
    /// for the timers. A `retry` (by the timers) first checks that the environment still runs
    /// what the approvers saw it run: one that moved on meanwhile is not moved under them.
    ///
    /// # Errors
    /// A transient [`PromoteError`]; the promotion is then still owed.
    pub(crate) async fn carry_out(
        &self,
        policy: &Policy,
        key: &str,
        pending: &PendingApproval,
        retry: bool,
        now: DateTime<Utc>,
    ) -> Result<Advance, PromoteError> {
        let data = &pending.data;
        let release = &data.release;
        let trigger = Trigger::Approved {
            approval: data.approval.clone(),
            break_glass: data.kind == ApprovalKind::BreakGlass,
        };
        let cause = derive_id(&["approval.closed", &data.approval]);
        let advanced = match policy.environment(&data.environment) {
            Err(e) => Err(e),
            Ok(env) => {
                let request = Move {
                    release,
                    env,
                    trigger: &trigger,
                    promotion: &pending.promotion,
                };
                let moved_on = if retry {
                    self.state
                        .current(&release.app, &env.name)
                        .await?
                        .map(|c| c.value.release)
                        .filter(|running| *running != release.release && Some(running) != data.current_release.as_ref())
                } else {
                    None
                };
                match moved_on {
                    Some(running) => Ok(self.stop(
                        request,
                        &cause,
                        format!(
                            "`{}` moved on to release {running} after release {} was approved to replace {}; ask for a new approval",
                            env.name,
                            release.release,
                            data.current_release.as_deref().unwrap_or("nothing")
                        ),
                    )),
                    None => self.advance(policy, request, &cause, now).await,
                }
            }
        };
        let mut outcome = match advanced {
            Ok(outcome) => outcome,
            Err(e) if e.is_transient() => return Err(e),
            // Nothing to retry (the environment left the policy, say): recorded and done.
            Err(e) => Outcome {
                events: vec![self.held_approved(pending, &cause, &e.to_string())],
                value: Advance::Held(e.to_string()),
            },
        };
        if retry {
            // The vote and the closure, in case the command's own publish of them failed (same
            // ids: published twice, kept once).
            let closed = pending.closed.as_ref().map(|c| c.reason.as_str()).unwrap_or_default();
            let voter = data.votes.last().map(|v| v.actor.as_str()).unwrap_or(AUTOMATION);
            let answers = [
                self.approval_updated(pending, voter, "approved"),
                self.approval_closed(pending, "approved", "approved", voter, closed),
            ];
            outcome.events.splice(0..0, answers);
        }
        self.publish(&outcome.events).await?;
        self.promotion_done(key, data).await?;
        Ok(outcome.value)
    }

    /// `baton-promotion.held` of an approved request whose environment cannot be named.
    fn held_approved(&self, pending: &PendingApproval, cause: &str, reason: &str) -> Outgoing {
        let data = &pending.data;
        self.event(
            EventType::PromotionHeld,
            derive_id(&["held", &pending.promotion, reason]),
            &data.app,
            &data.release.release,
            serde_json::to_value(baton_schemas::extensions::PromotionHeldContent {
                app: data.app.clone(),
                environment: data.environment.clone(),
                reason: reason.to_owned(),
                retry_at: None,
            })
            .expect("serializes"),
            Some(&data.release.release),
            Some(cause),
            None,
        )
    }

    /// Clears the outbox mark of `approval` under `key`, unless the record is another request
    /// by now (a newer release's).
    async fn promotion_done(&self, key: &str, data: &ApprovalData) -> Result<(), PromoteError> {
        for _ in 0..5 {
            let Some(mut current) = self.state.get::<PendingApproval>(key).await? else {
                return Ok(());
            };
            if current.value.data.approval != data.approval || !current.value.promotion_pending {
                return Ok(());
            }
            current.value.promotion_pending = false;
            if self
                .state
                .compare_and_set(key, &current.value, Some(current.revision))
                .await?
            {
                return Ok(());
            }
        }
        Err(PromoteError::ApprovalContended {
            app: data.app.clone(),
            environment: data.environment.clone(),
        })
    }
}

fn kind_word(kind: ApprovalKind) -> &'static str {
    match kind {
        ApprovalKind::Promotion => "promotion",
        ApprovalKind::BreakGlass => "break-glass",
    }
}
