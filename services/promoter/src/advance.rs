//! Moving a release toward an environment: read what the gates need (the quarantine record,
//! what the environment and the one before it run), let [`gates::promotion`] decide, then act
//! on the decision — record a hold, open an approval request, schedule the move for later, or
//! commit the promotion.

use baton_kit::Outgoing;
use baton_schemas::EventType;
use baton_schemas::extensions::PromotionHeldContent;
use baton_schemas::release::{ApprovalKind, PromotionAction};
use chrono::{DateTime, Utc};

use crate::error::PromoteError;
use crate::gates::{self, Decision, Facts, Move, Newer, Previous, Wait};
use crate::manager::{Outcome, ReleaseManager, derive_id};
use crate::policy::Policy;
use crate::state::{self, Scheduled, Trigger};
use crate::write::Write;

/// What happened to a request to move a release into an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// Promoted: the config-repo commit.
    Promoted(String),
    /// An approval request is open (its id).
    AwaitingApproval(String),
    /// Scheduled for later (soak, freeze).
    Scheduled(DateTime<Utc>, String),
    /// Not promoted, and not by itself later: why.
    Held(String),
    /// Already there.
    AlreadyThere,
}

impl ReleaseManager {
    /// Moves a release toward an environment under its policy as of `now`: refuse
    /// (quarantined, untested), hold (pinned), ask (manual; held instead when the image fails
    /// the environment's evidence gate), wait (soak, freeze), or promote.
    /// `cause` is the event (or command) the move answers.
    ///
    /// # Errors
    /// [`PromoteError`].
    pub async fn advance(
        &self,
        policy: &Policy,
        request: Move<'_>,
        cause: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome<Advance>, PromoteError> {
        let Move {
            release,
            env,
            promotion,
            ..
        } = request;
        let before = policy.file.previous_before(&env.name);
        let (quarantined, current, current_before) = tokio::try_join!(
            self.state.bad(release),
            self.state.current(&release.app, &env.name),
            async {
                match before {
                    Some(before) => self.state.current(&release.app, &before.name).await,
                    None => Ok(None),
                }
            },
        )?;
        let mut newer_running = match (request.trigger, &current) {
            (Trigger::Auto, Some(running)) if running.value.release != release.release => {
                self.newer_running(release, &running.value.release).await?
            }
            _ => None,
        };
        // A retry of a promotion whose commit was pushed before a crash, then overtaken: it goes
        // on, finds its commit and announces it, and the environment keeps the later release.
        if newer_running.is_some() {
            let (repo, id) = (std::sync::Arc::clone(&self.repo), promotion.to_owned());
            if self.blocking(move || Ok(repo.promotion_commit(&id)?)).await?.is_some() {
                newer_running = None;
            }
        }
        let facts = Facts {
            quarantined: quarantined.as_ref(),
            current: current.as_ref().map(|c| &c.value),
            previous: before.map(|env| Previous {
                env,
                current: current_before.as_ref().map(|c| &c.value),
            }),
            newer_running: newer_running.as_ref(),
        };
        let decision = gates::promotion(request, &facts, now);
        match decision {
            Decision::Hold(hold) => Ok(self.stop(request, cause, hold.message(release, &env.name))),
            Decision::Frozen { window, until } => Ok(Outcome {
                events: Vec::new(),
                value: Advance::Held(format!(
                    "`{}` is frozen ({window}) until {until}; ask for a break-glass promotion (`--break-glass`) if it cannot wait",
                    env.name
                )),
            }),
            Decision::AlreadyThere => Ok(Outcome {
                events: Vec::new(),
                value: Advance::AlreadyThere,
            }),
            Decision::AskApproval {
                requested_by,
                break_glass,
            } => {
                let asked = self
                    .request_approval(
                        policy,
                        release,
                        env,
                        if break_glass {
                            ApprovalKind::BreakGlass
                        } else {
                            ApprovalKind::Promotion
                        },
                        &requested_by,
                        None,
                        cause,
                        request.promotion,
                        now,
                    )
                    .await;
                match asked {
                    // The image cannot pass the environment's evidence gate: held before anyone
                    // is asked, as the write would hold it after their votes.
                    Err(e @ PromoteError::EvidenceRefused { .. }) => Ok(self.stop(request, cause, e.to_string())),
                    asked => asked,
                }
            }
            Decision::Wait(wait) => self.schedule(request, cause, &wait).await,
            Decision::Promote(promoted) => {
                let written = self
                    .write(
                        release,
                        env,
                        Write {
                            action: PromotionAction::Promote,
                            promotion: promotion.to_owned(),
                            reason: promoted.reason(),
                            actor: promoted.actor,
                            pinned: promoted.pinned,
                            break_glass: promoted.break_glass,
                            restore_from: None,
                            cause: cause.to_owned(),
                        },
                    )
                    .await;
                match written {
                    Ok(outcome) => Ok(Outcome {
                        value: Advance::Promoted(outcome.value.config_commit),
                        events: outcome.events,
                    }),
                    // The release itself cannot be deployed (no pipeline file, no manifests, no
                    // image of the app in them): say so on the stream instead of retrying.
                    Err(e) if !e.is_transient() => Ok(self.stop(request, cause, e.to_string())),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// `baton-promotion.held` for the move: why, and when it is retried by itself, if it is.
    fn held(&self, request: Move<'_>, cause: &str, reason: &str, retry_at: Option<DateTime<Utc>>) -> Outgoing {
        self.held_event(
            request.release,
            &request.env.name,
            request.promotion,
            cause,
            reason,
            retry_at,
        )
    }

    /// `baton-promotion.held` for promotion `promotion` of `release` into `environment`.
    pub(crate) fn held_event(
        &self,
        release: &baton_schemas::release::ReleaseData,
        environment: &str,
        promotion: &str,
        cause: &str,
        reason: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Outgoing {
        self.event(
            EventType::PromotionHeld,
            derive_id(&["held", promotion, reason]),
            &release.app,
            &release.release,
            serde_json::to_value(PromotionHeldContent {
                app: release.app.clone(),
                environment: environment.to_owned(),
                reason: reason.to_owned(),
                retry_at: retry_at.map(|t| t.to_rfc3339()),
            })
            .expect("serializes"),
            Some(&release.release),
            Some(cause),
            None,
        )
    }

    /// Not promoted, and not by itself later: the reason on the stream and to the caller.
    pub(crate) fn stop(&self, request: Move<'_>, cause: &str, reason: String) -> Outcome<Advance> {
        Outcome {
            events: vec![self.held(request, cause, &reason, None)],
            value: Advance::Held(reason),
        }
    }

    /// Records the move as waiting for `wait`; the timers carry it out when it is due. A newer
    /// release replaces a waiting older one; the same wait again records nothing new.
    async fn schedule(&self, request: Move<'_>, cause: &str, wait: &Wait) -> Result<Outcome<Advance>, PromoteError> {
        let (release, env) = (request.release, request.env);
        let (at, waiting_for) = (wait.until(), wait.describe(&env.name));
        let key = state::scheduled_key(&release.app, &env.name);
        let record = Scheduled {
            release: release.release.clone(),
            environment: env.name.clone(),
            promotion: request.promotion.to_owned(),
            not_before: at,
            trigger: request.trigger.clone(),
            cause: cause.to_owned(),
            waiting_for: waiting_for.clone(),
            trace: baton_kit::telemetry::traceparent(),
        };
        let existing = self.state.get::<Scheduled>(&key).await?;
        if existing.as_ref().is_some_and(|e| e.value.same_as(&record)) {
            return Ok(Outcome {
                events: Vec::new(),
                value: Advance::Scheduled(at, waiting_for),
            });
        }
        self.state.put(&key, &record).await?;
        Ok(Outcome {
            events: vec![self.held(request, cause, &format!("waiting for the {waiting_for}"), Some(at))],
            value: Advance::Scheduled(at, waiting_for),
        })
    }
}

impl ReleaseManager {
    /// The release `running` when its commit, in the app's repository, descends from
    /// `release`'s: `release` is older than what runs. Unrelated or equal commits, or a running
    /// release the state no longer knows, are not "newer".
    ///
    /// # Errors
    /// [`PromoteError`] when the state or the app repository cannot be read.
    async fn newer_running(
        &self,
        release: &baton_schemas::release::ReleaseData,
        running: &str,
    ) -> Result<Option<Newer>, PromoteError> {
        let Some(running) = self.state.release(running).await? else {
            return Ok(None);
        };
        if running.commit == release.commit || running.repository != release.repository {
            return Ok(None);
        }
        let (sources, url, newer, older) = (
            self.sources.clone(),
            release.repository.clone(),
            running.commit.clone(),
            release.commit.clone(),
        );
        let descends = self
            .blocking(move || {
                let mirror = sources.mirror_with(&url, &newer)?;
                let oid = |sha: &str| git2::Oid::from_str(sha);
                Ok(match (oid(&newer), oid(&older)) {
                    (Ok(newer), Ok(older)) if mirror.find_commit(older).is_ok() => {
                        mirror.graph_descendant_of(newer, older).unwrap_or(false)
                    }
                    _ => false,
                })
            })
            .await?;
        Ok(descends.then(|| Newer {
            release: running.release.clone(),
            commit: running.commit.clone(),
        }))
    }
}
