//! The release manager's decisions, shared by the event handler, the operator commands and the
//! timers: create a release, evaluate an environment's gates, open and settle approval
//! requests, and write promotions, rollbacks and pins to the config repo under the
//! environment's lock.

use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use baton_kit::Outgoing;
use baton_kit::source::Sources;
use baton_schemas::environments::{ENVIRONMENTS_FILE, Environment, EnvironmentsFile, PromotionPolicy};
use baton_schemas::extensions::{
    PolicyRejectedContent, PromotionHeldContent, ReleaseCreatedContent, ReleaseQuarantinedContent,
};
use baton_schemas::payloads::{Person, TestData};
use baton_schemas::pipeline::{PIPELINE_FILE, Pipeline};
use baton_schemas::release::{
    ApprovalData, ApprovalKind, ChangeEntry, Pin, PromotionAction, PromotionData, RELEASE_FILE, ReleaseData,
    ReleaseFile,
};
use baton_schemas::subjects::sanitize_token;
use baton_schemas::{CdEvent, EventType};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::configrepo::{Change, ConfigRepo, RepoError};
use crate::render;
use crate::state::{
    self, BadRelease, Closure, Current, HealthyRelease, PendingApproval, PolicyRecord, Scheduled, State, StateError,
    Trigger,
};
use baton_kit::lease::{LockError, Locks};

/// The actor named on automatic decisions.
pub const AUTOMATION: &str = "baton-promoter";
/// Most commits listed in a release's changelog.
const CHANGELOG_LIMIT: usize = 100;

/// Why a decision could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    /// Worth retrying (git host, KV or lock busy).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (a broken pipeline file, a manifest without the app's image).
    #[error("{0}")]
    Permanent(String),
}

impl From<StateError> for PromoteError {
    fn from(e: StateError) -> Self {
        Self::Transient(e.to_string())
    }
}

impl From<LockError> for PromoteError {
    fn from(e: LockError) -> Self {
        Self::Transient(e.to_string())
    }
}

impl From<RepoError> for PromoteError {
    fn from(e: RepoError) -> Self {
        if e.is_transient() {
            Self::Transient(e.to_string())
        } else {
            Self::Permanent(e.to_string())
        }
    }
}

/// The policy in force: a valid `environments.yaml` and the commit it was read at.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file.
    pub file: EnvironmentsFile,
    /// Its config-repo commit.
    pub commit: String,
}

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

/// A decision's outcome: what happened and the events that record it.
#[derive(Debug)]
pub struct Outcome<T> {
    /// What happened.
    pub value: T,
    /// Events to publish.
    pub events: Vec<Outgoing>,
}

/// The release manager.
#[derive(Debug)]
pub struct Promoter {
    pub(crate) repo: Arc<ConfigRepo>,
    pub(crate) sources: Sources,
    pub(crate) state: State,
    pub(crate) locks: Locks,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) source: String,
    pub(crate) auto_rollback: bool,
    events_stream: String,
    policy: Mutex<Option<Policy>>,
}

/// A deterministic id for a decision derived from `parts`.
pub fn derive_id(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("baton:promoter:{}", parts.join(":")).as_bytes(),
    )
    .to_string()
}

/// The config-repo folder of `app` in `env`.
pub fn app_dir(env: &str, app: &str) -> String {
    format!("{env}/{}", sanitize_token(app))
}

fn urn_user(actor: &str) -> String {
    let safe: String = actor
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("urn:baton:user:{safe}")
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl Promoter {
    /// A promoter over these parts.
    pub fn new(
        repo: Arc<ConfigRepo>,
        sources: Sources,
        state: State,
        locks: Locks,
        jetstream: jetstream::Context,
        auto_rollback: bool,
    ) -> Self {
        Self {
            repo,
            sources,
            state,
            locks,
            jetstream,
            source: "/baton/promoter".to_owned(),
            auto_rollback,
            events_stream: "BATON_EVENTS".to_owned(),
            policy: Mutex::new(None),
        }
    }

    /// Reads the audit log from `stream` (the events stream's configured name).
    #[must_use]
    pub fn with_events_stream(mut self, stream: impl Into<String>) -> Self {
        self.events_stream = stream.into();
        self
    }

    /// The events stream's name.
    pub fn events_stream(&self) -> &str {
        &self.events_stream
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PromoteError> + Send + 'static,
    ) -> Result<T, PromoteError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| PromoteError::Transient(format!("a git task failed: {e}")))?
    }

    /// An event of this promoter.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &self,
        ty: EventType,
        id: String,
        app: &str,
        subject: &str,
        content: serde_json::Value,
        chain: Option<&str>,
        cause: Option<&str>,
        custom: Option<serde_json::Value>,
    ) -> Outgoing {
        let mut event = CdEvent::new(ty, id, self.source.clone(), subject, content).expect("JSON content serializes");
        if let Some(chain) = chain {
            event = event.with_chain_id(chain);
        }
        if let Some(cause) = cause.filter(|c| !c.is_empty()) {
            event = event.caused_by(cause);
        }
        if let Some(custom) = custom {
            event = event.with_custom_data(custom).expect("JSON custom data serializes");
        }
        Outgoing::new(app, event)
    }

    /// Publishes events outside the stage runner (commands, timers).
    ///
    /// # Errors
    /// The first event JetStream did not accept.
    pub async fn publish(&self, events: &[Outgoing]) -> Result<(), PromoteError> {
        let failed =
            |e: baton_kit::events::PublishError| PromoteError::Transient(format!("cannot record the event: {e}"));
        let mut sent = baton_kit::events::InFlight::default();
        for event in events {
            sent.send(&self.jetstream, event).await.map_err(failed)?;
        }
        sent.confirmed().await.map(|_| ()).map_err(failed)
    }

    /// The policy in force: the config repo's `environments.yaml` at its head when valid, else
    /// the last valid one (and a `baton-policy.rejected` event naming the field at fault).
    ///
    /// # Errors
    /// Transient when the repo is unreachable or no valid policy was ever seen.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn policy(&self) -> Result<Outcome<Policy>, PromoteError> {
        let repo = Arc::clone(&self.repo);
        let (commit, bytes) = self.blocking(move || Ok(repo.read_at_head(ENVIRONMENTS_FILE)?)).await?;
        let text = bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
        let parsed = match &text {
            Some(text) => EnvironmentsFile::parse(text),
            None => Err(baton_schemas::userfile::FileError::in_field(
                ENVIRONMENTS_FILE,
                "",
                "the config repo has no environments.yaml at its root: add one (see docs/promoter.md)",
            )),
        };
        match parsed {
            Ok(file) => {
                let policy = Policy {
                    file,
                    commit: commit.clone(),
                };
                let changed = self
                    .policy
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .replace(policy.clone())
                    .is_none_or(|old| old.commit != commit);
                if changed && let Some(text) = text {
                    self.state
                        .put(state::POLICY_KEY, &PolicyRecord { commit, text })
                        .await?;
                }
                Ok(Outcome {
                    value: policy,
                    events: Vec::new(),
                })
            }
            Err(error) => {
                let last = self.last_valid_policy().await?;
                let content = PolicyRejectedContent {
                    file: ENVIRONMENTS_FILE.to_owned(),
                    field: error.field.clone(),
                    reason: error.to_string(),
                    policy_in_force: last.as_ref().map(|p| p.commit.clone()),
                };
                tracing::error!(%error, commit, "environments.yaml is invalid; keeping the last valid policy");
                let event = self.event(
                    EventType::PolicyRejected,
                    derive_id(&["policy-rejected", &commit]),
                    "config",
                    &commit,
                    serde_json::to_value(content).expect("serializes"),
                    None,
                    None,
                    None,
                );
                match last {
                    Some(policy) => Ok(Outcome {
                        value: policy,
                        events: vec![event],
                    }),
                    None => {
                        // Record the refusal before asking to be retried.
                        self.publish(&[event]).await?;
                        Err(PromoteError::Transient(format!(
                            "no valid environments.yaml in the config repo yet: {error}"
                        )))
                    }
                }
            }
        }
    }

    async fn last_valid_policy(&self) -> Result<Option<Policy>, PromoteError> {
        if let Some(p) = self
            .policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Ok(Some(p));
        }
        let record = self.state.get::<PolicyRecord>(state::POLICY_KEY).await?;
        Ok(record.and_then(|r| {
            EnvironmentsFile::parse(&r.value.text).ok().map(|file| Policy {
                file,
                commit: r.value.commit,
            })
        }))
    }

    /// Turns a successful test run into a release and moves it toward the first environment.
    ///
    /// # Errors
    /// [`PromoteError`].
    pub async fn create_release(
        &self,
        event_id: &str,
        chain: &str,
        test: &TestData,
    ) -> Result<Outcome<Advance>, PromoteError> {
        let Some(image) = test.image.clone() else {
            return Err(PromoteError::Permanent(
                "the test run names no image: the commit's pipeline has no `image` section, so there is nothing to release".into(),
            ));
        };
        // The app repo's commit is fetched while the policy is read from the config repo; the
        // changelog below then finds it in the mirror. A failed fetch is reported there.
        let prefetch = {
            let sources = self.sources.clone();
            let (repository, commit) = (test.repository.clone(), test.commit.clone());
            self.blocking(move || {
                let _ = sources.mirror_with(&repository, &commit);
                Ok(())
            })
        };
        let (policy, _) = tokio::join!(self.policy(), prefetch);
        let Outcome {
            value: policy,
            mut events,
        } = policy?;
        let first = policy.file.environments[0].clone();
        let release = match self.state.release(chain).await? {
            Some(existing) => existing,
            None => {
                let previous = self.state.current(&test.app, &first.name).await?;
                let previous_release = match &previous {
                    Some(c) => self.state.release(&c.value.release).await?,
                    None => None,
                };
                let sources = self.sources.clone();
                let (repository, commit) = (test.repository.clone(), test.commit.clone());
                let since = previous_release.as_ref().map(|r| r.commit.clone());
                let (author, changelog) = self
                    .blocking(move || {
                        let mirror = sources.mirror_with(&repository, &commit).map_err(|e| {
                            if e.is_transient() {
                                PromoteError::Transient(e.to_string())
                            } else {
                                PromoteError::Permanent(e.to_string())
                            }
                        })?;
                        commit_story(&mirror, &commit, since.as_deref())
                            .map_err(|e| PromoteError::Transient(e.message().to_owned()))
                    })
                    .await?;
                let release = ReleaseData {
                    release: chain.to_owned(),
                    app: test.app.clone(),
                    commit: test.commit.clone(),
                    repository: test.repository.clone(),
                    image: image.clone(),
                    author,
                    pushed_by: test.pushed_by.clone(),
                    tested: !test.no_tests_declared,
                    test_run: Some(test.run.clone()),
                    previous_release: previous_release.map(|r| r.release),
                    changelog,
                    created_at: Utc::now(),
                };
                self.state.put(&state::release_key(chain), &release).await?;
                release
            }
        };
        events.push(
            self.event(
                EventType::ReleaseCreated,
                derive_id(&["release.created", chain]),
                &release.app,
                chain,
                serde_json::to_value(ReleaseCreatedContent {
                    app: release.app.clone(),
                    commit: release.commit.clone(),
                    artifact_id: image.purl.clone(),
                })
                .expect("serializes"),
                Some(chain),
                Some(event_id),
                Some(serde_json::to_value(&release).expect("serializes")),
            ),
        );
        let promotion = derive_id(&["promote", event_id, &first.name]);
        let outcome = self
            .advance(&policy, &release, &first, Trigger::Auto, event_id, &promotion)
            .await?;
        events.extend(outcome.events);
        Ok(Outcome {
            value: outcome.value,
            events,
        })
    }

    /// Moves `release` toward `env` under its policy: refuse (quarantined, untested), hold
    /// (pinned), ask (manual), wait (soak, freeze), or promote.
    ///
    /// # Errors
    /// [`PromoteError`].
    pub async fn advance(
        &self,
        policy: &Policy,
        release: &ReleaseData,
        env: &Environment,
        trigger: Trigger,
        cause: &str,
        promotion: &str,
    ) -> Result<Outcome<Advance>, PromoteError> {
        let held = |reason: String, retry_at: Option<DateTime<Utc>>| {
            self.event(
                EventType::PromotionHeld,
                derive_id(&["held", promotion, &reason]),
                &release.app,
                &release.release,
                serde_json::to_value(PromotionHeldContent {
                    app: release.app.clone(),
                    environment: env.name.clone(),
                    reason: reason.clone(),
                    retry_at: retry_at.map(|t| t.to_rfc3339()),
                })
                .expect("serializes"),
                Some(&release.release),
                Some(cause),
                None,
            )
        };
        // Not promoted, and not by itself later: the reason on the stream and to the caller.
        let stop = |reason: String| Outcome {
            events: vec![held(reason.clone(), None)],
            value: Advance::Held(reason),
        };
        if let Some(bad) = self.state.bad(&release.release).await? {
            let reason = format!(
                "release {} is quarantined ({}, by {}): it is never promoted again",
                release.release, bad.reason, bad.actor
            );
            return Ok(stop(reason));
        }
        if !release.tested && !env.allow_untested {
            let reason = format!(
                "commit {} declares no test steps and `{}` requires tested releases (set `allow_untested: true` to allow them)",
                short(&release.commit),
                env.name
            );
            return Ok(stop(reason));
        }
        let current = self.state.current(&release.app, &env.name).await?;
        if let Some(c) = &current
            && c.value.release == release.release
            && c.value.promotion != promotion
            && trigger == Trigger::Auto
        {
            return Ok(Outcome {
                events: Vec::new(),
                value: Advance::AlreadyThere,
            });
        }
        if trigger == Trigger::Auto
            && let Some(pin) = current.as_ref().and_then(|c| c.value.pinned.clone())
        {
            let reason = format!(
                "`{}` is pinned by {} ({}); `baton unpin {} {}` lets releases in again",
                env.name, pin.by, pin.reason, release.app, env.name
            );
            return Ok(stop(reason));
        }
        let now = Utc::now();
        let frozen = env
            .freeze
            .iter()
            .find_map(|w| w.active_until(now).map(|end| (w.label(), end)));
        let break_glass = matches!(trigger, Trigger::Approved { break_glass: true, .. });
        match &trigger {
            Trigger::Auto if env.policy == PromotionPolicy::Manual => {
                return self
                    .request_approval(policy, release, env, ApprovalKind::Promotion, AUTOMATION, None, cause)
                    .await;
            }
            Trigger::Operator { actor } => {
                if let Some((window, end)) = &frozen {
                    return Ok(Outcome {
                        events: Vec::new(),
                        value: Advance::Held(format!(
                            "`{}` is frozen ({window}) until {end}; ask for a break-glass promotion (`--break-glass`) if it cannot wait",
                            env.name
                        )),
                    });
                }
                if env.policy == PromotionPolicy::Manual {
                    return self
                        .request_approval(policy, release, env, ApprovalKind::Promotion, actor, None, cause)
                        .await;
                }
            }
            _ => {}
        }
        // Time gates: soak in the previous environment, then freeze windows.
        if let Some(previous) = policy.file.previous_before(&env.name)
            && !env.soak.is_zero()
        {
            let there = self.state.current(&release.app, &previous.name).await?;
            let healthy_since = there
                .as_ref()
                .filter(|c| c.value.release == release.release)
                .and_then(|c| c.value.healthy_since);
            let Some(since) = healthy_since else {
                let reason = format!(
                    "release {} is not running healthy in `{}`, so it cannot soak there before `{}`",
                    release.release, previous.name, env.name
                );
                return Ok(stop(reason));
            };
            let ready = since + chrono::Duration::from_std(env.soak).unwrap_or_default();
            if ready > now {
                let waiting = format!("soak in `{}` until {ready}", previous.name);
                return self
                    .schedule(release, env, trigger, cause, promotion, ready, waiting, &held)
                    .await;
            }
        }
        if let Some((window, end)) = frozen
            && !break_glass
        {
            let waiting = format!("freeze window {window} of `{}` until {end}", env.name);
            return self
                .schedule(release, env, trigger, cause, promotion, end, waiting, &held)
                .await;
        }
        let actor = match &trigger {
            Trigger::Auto => AUTOMATION.to_owned(),
            Trigger::Approved { approval, .. } => format!("approval {approval}"),
            Trigger::Operator { actor } => actor.clone(),
        };
        let pinned = current.and_then(|c| c.value.pinned);
        let written = self
            .write(
                release,
                env,
                Write {
                    action: PromotionAction::Promote,
                    promotion: promotion.to_owned(),
                    actor,
                    reason: break_glass.then(|| "break-glass promotion during a freeze window".to_owned()),
                    pinned,
                    break_glass,
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
            // The release itself cannot be deployed (no pipeline file, no manifests, no image of
            // the app in them): say so on the stream instead of retrying.
            Err(PromoteError::Permanent(reason)) => Ok(stop(reason)),
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn schedule(
        &self,
        release: &ReleaseData,
        env: &Environment,
        trigger: Trigger,
        cause: &str,
        promotion: &str,
        at: DateTime<Utc>,
        waiting_for: String,
        held: &(dyn Fn(String, Option<DateTime<Utc>>) -> Outgoing + Sync),
    ) -> Result<Outcome<Advance>, PromoteError> {
        let key = state::scheduled_key(&release.app, &env.name);
        let record = Scheduled {
            release: release.release.clone(),
            environment: env.name.clone(),
            promotion: promotion.to_owned(),
            not_before: at,
            trigger,
            cause: cause.to_owned(),
            waiting_for: waiting_for.clone(),
        };
        let existing = self.state.get::<Scheduled>(&key).await?;
        if existing.as_ref().is_some_and(|e| e.value == record) {
            return Ok(Outcome {
                events: Vec::new(),
                value: Advance::Scheduled(at, waiting_for),
            });
        }
        // A newer release replaces a waiting older one.
        self.state.put(&key, &record).await?;
        Ok(Outcome {
            events: vec![held(format!("waiting for the {waiting_for}"), Some(at))],
            value: Advance::Scheduled(at, waiting_for),
        })
    }

    /// Opens an approval request for `release` into `env`, superseding an open request for an
    /// older release.
    ///
    /// # Errors
    /// [`PromoteError`].
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
    ) -> Result<Outcome<Advance>, PromoteError> {
        let key = state::approval_key(&release.app, &env.name);
        let existing = self.state.get::<PendingApproval>(&key).await?;
        let mut events = Vec::new();
        if let Some(open) = existing.as_ref().filter(|e| e.value.closed.is_none())
            && open.value.data.release.release == release.release
            && open.value.data.kind == kind
        {
            return Ok(Outcome {
                events,
                value: Advance::AwaitingApproval(open.value.data.approval.clone()),
            });
        }
        if let Some(done) = existing.as_ref()
            && done.value.data.release.release == release.release
            && done.value.data.kind == kind
            && let Some(closed) = &done.value.closed
            && closed.status != "approved"
        {
            let reason = format!(
                "the approval request for release {} into `{}` was {} ({}); it is not asked again",
                release.release, env.name, closed.status, closed.reason
            );
            return Ok(Outcome {
                events,
                value: Advance::Held(reason),
            });
        }
        let current = self.state.current(&release.app, &env.name).await?;
        let current_release = match &current {
            Some(c) => self.state.release(&c.value.release).await?,
            None => None,
        };
        let approval = derive_id(&["approval", cause, &env.name, kind_word(kind)]);
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
            expires_at: Utc::now() + chrono::Duration::from_std(env.approvals.expires_after).unwrap_or_default(),
            requested_by: requested_by.to_owned(),
            reason,
        };
        let record = PendingApproval {
            data: data.clone(),
            promotion: derive_id(&["promote", &approval]),
            cause: cause.to_owned(),
            closed: None,
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
            return Err(PromoteError::Transient(format!(
                "the approval request for {} into `{}` changed meanwhile; retrying",
                release.app, env.name
            )));
        }
        events.push(self.event(
            EventType::ApprovalCreated,
            derive_id(&["approval.created", &approval]),
            &release.app,
            &approval,
            json!({
                "approvalDetailsUrl": format!("urn:baton:approval:{approval}"),
                "resourceTargetUrl": format!("urn:baton:release:{}:{}", release.release, env.name),
                "requestor": urn_user(requested_by),
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
        self.event(
            EventType::ApprovalClosed,
            derive_id(&["approval.closed", &data.approval]),
            &data.app,
            &data.approval,
            json!({
                "approvalDetailsUrl": format!("urn:baton:approval:{}", data.approval),
                "resourceTargetUrl": format!("urn:baton:release:{}:{}", data.release.release, data.environment),
                "responder": urn_user(responder),
                "decision": decision,
                "status": status,
            }),
            Some(&data.release.release),
            Some(&derive_id(&["approval.created", &data.approval])),
            Some(serde_json::to_value(&data).expect("serializes")),
        )
    }

    /// `approval.updated` for one vote.
    pub(crate) fn approval_updated(&self, pending: &PendingApproval, actor: &str, decision: &str) -> Outgoing {
        let data = &pending.data;
        self.event(
            EventType::ApprovalUpdated,
            derive_id(&["approval.updated", &data.approval, actor]),
            &data.app,
            &data.approval,
            json!({
                "approvalDetailsUrl": format!("urn:baton:approval:{}", data.approval),
                "resourceTargetUrl": format!("urn:baton:release:{}:{}", data.release.release, data.environment),
                "responder": urn_user(actor),
                "decision": decision,
            }),
            Some(&data.release.release),
            Some(&derive_id(&["approval.created", &data.approval])),
            Some(serde_json::to_value(data).expect("serializes")),
        )
    }

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
        let lease = self
            .locks
            .acquire(
                &format!("env.{}", env.name),
                &format!("{} {}", write.action.as_str(), release.release),
            )
            .await?;
        let result = self.write_locked(release, env, write).await;
        self.locks.release(lease).await;
        result
    }

    async fn write_locked(
        &self,
        release: &ReleaseData,
        env: &Environment,
        write: Write,
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
            PromotionAction::Pin | PromotionAction::Unpin => None,
        };
        let now = Utc::now();
        let file = ReleaseFile {
            release: release.clone(),
            promotion: write.promotion.clone(),
            action: write.action,
            actor: write.actor.clone(),
            at: now,
            pinned: write.pinned.clone(),
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
                let data = self.promotion_data(release, env, &write, &dir, &committed.commit, None);
                let event = self.modified_event(release, env, &write, &data);
                return Ok(Outcome {
                    value: data,
                    events: vec![event],
                });
            }
        }
        let previous = current.as_ref().map(|c| c.value.clone());
        let next = match write.action {
            PromotionAction::Promote | PromotionAction::Rollback => Current {
                release: release.release.clone(),
                promotion: write.promotion.clone(),
                config_commit: committed.commit.clone(),
                action: write.action,
                healthy_since: None,
                last_healthy: previous.as_ref().and_then(|p| p.last_healthy.clone()),
                pinned: write.pinned.clone(),
            },
            PromotionAction::Pin | PromotionAction::Unpin => match previous.clone() {
                Some(mut c) => {
                    c.pinned = write.pinned.clone();
                    c
                }
                None => Current {
                    release: release.release.clone(),
                    promotion: write.promotion.clone(),
                    config_commit: committed.commit.clone(),
                    action: write.action,
                    healthy_since: None,
                    last_healthy: None,
                    pinned: write.pinned.clone(),
                },
            },
        };
        // Under the environment's lock: nobody else writes this key now.
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

    fn promotion_data(
        &self,
        release: &ReleaseData,
        env: &Environment,
        write: &Write,
        dir: &str,
        commit: &str,
        previous_release: Option<String>,
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

    /// Reads the app's manifests at the release's commit and pins its images.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn render(&self, release: &ReleaseData) -> Result<Vec<(String, Vec<u8>)>, PromoteError> {
        let sources = self.sources.clone();
        let release = release.clone();
        self.blocking(move || {
            let mirror = sources
                .mirror_with(&release.repository, &release.commit)
                .map_err(|e| PromoteError::Transient(e.to_string()))?;
            let oid =
                git2::Oid::from_str(&release.commit).map_err(|e| PromoteError::Permanent(e.message().to_owned()))?;
            let commit = mirror
                .find_commit(oid)
                .map_err(|e| PromoteError::Permanent(e.message().to_owned()))?;
            let tree = commit
                .tree()
                .map_err(|e| PromoteError::Transient(e.message().to_owned()))?;
            let pipeline_text = tree
                .get_path(std::path::Path::new(PIPELINE_FILE))
                .ok()
                .and_then(|e| e.to_object(&mirror).ok())
                .and_then(|o| o.into_blob().ok())
                .map(|b| String::from_utf8_lossy(b.content()).into_owned())
                .ok_or_else(|| {
                    PromoteError::Permanent(format!("commit {} has no {PIPELINE_FILE}", short(&release.commit)))
                })?;
            let pipeline = Pipeline::parse(&pipeline_text).map_err(|e| PromoteError::Permanent(e.to_string()))?;
            let dir = pipeline.manifests.ok_or_else(|| {
                PromoteError::Permanent(format!(
                    "{PIPELINE_FILE} of commit {} names no `manifests` directory, so there is nothing to deploy",
                    short(&release.commit)
                ))
            })?;
            let dir = dir.trim_matches('/').to_owned();
            let subtree = tree
                .get_path(std::path::Path::new(&dir))
                .ok()
                .and_then(|e| e.to_object(&mirror).ok())
                .and_then(|o| o.into_tree().ok())
                .ok_or_else(|| {
                    PromoteError::Permanent(format!(
                        "the manifests directory `{dir}` named in {PIPELINE_FILE} does not exist at commit {}",
                        short(&release.commit)
                    ))
                })?;
            let mut files = Vec::new();
            subtree
                .walk(git2::TreeWalkMode::PreOrder, |root, entry| {
                    if entry.kind() == Some(git2::ObjectType::Blob)
                        && let Some(blob) = entry.to_object(&mirror).ok().and_then(|o| o.into_blob().ok())
                    {
                        files.push((
                            format!("{root}{}", entry.name().unwrap_or_default()),
                            blob.content().to_vec(),
                        ));
                    }
                    git2::TreeWalkResult::Ok
                })
                .map_err(|e| PromoteError::Transient(e.message().to_owned()))?;
            let rendered =
                render::render(&dir, &files, &release.image).map_err(|e| PromoteError::Permanent(e.to_string()))?;
            Ok(rendered.into_iter().map(|f| (f.path, f.bytes)).collect())
        })
        .await
    }

    /// Quarantines `release`: never promoted again.
    ///
    /// # Errors
    /// [`PromoteError`].
    pub async fn quarantine(
        &self,
        release: &ReleaseData,
        actor: &str,
        reason: &str,
        cause: Option<&str>,
    ) -> Result<Outgoing, PromoteError> {
        let key = state::bad_key(&release.release);
        let record = BadRelease {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at: Utc::now(),
        };
        // The first reason stays.
        self.state.compare_and_set(&key, &record, None).await?;
        Ok(self.event(
            EventType::ReleaseQuarantined,
            derive_id(&["quarantined", &release.release]),
            &release.app,
            &release.release,
            serde_json::to_value(ReleaseQuarantinedContent {
                app: release.app.clone(),
                actor: actor.to_owned(),
                reason: reason.to_owned(),
            })
            .expect("serializes"),
            Some(&release.release),
            cause,
            None,
        ))
    }

    /// Rolls `env` back to `target` (the manifests of `from_commit`, byte for byte) and pins it.
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
                    at: Utc::now(),
                }),
                break_glass: false,
                restore_from: Some(from_commit.to_owned()),
                cause: cause.to_owned(),
            },
        )
        .await
    }

    /// The policy's environment `name`, or a permanent error naming the known ones.
    pub fn environment<'p>(&self, policy: &'p Policy, name: &str) -> Result<&'p Environment, PromoteError> {
        policy.file.get(name).ok_or_else(|| {
            let known: Vec<&str> = policy.file.environments.iter().map(|e| e.name.as_str()).collect();
            PromoteError::Permanent(format!(
                "unknown environment `{name}`; environments.yaml defines {}",
                known.join(", ")
            ))
        })
    }

    /// Closes an open approval request (CAS); `false` when someone else changed it first.
    pub(crate) async fn close_approval(
        &self,
        key: &str,
        pending: &state::Versioned<PendingApproval>,
        status: &str,
        reason: &str,
    ) -> Result<bool, PromoteError> {
        let mut closed = pending.value.clone();
        closed.closed = Some(Closure {
            status: status.to_owned(),
            reason: reason.to_owned(),
            at: Utc::now(),
        });
        Ok(self.state.compare_and_set(key, &closed, Some(pending.revision)).await?)
    }

    /// Marks `env` healthy for the promotion the deployer applied; `None` when the report is
    /// about an older promotion than the one the environment now has.
    pub(crate) async fn mark_healthy(
        &self,
        app: &str,
        env: &str,
        promotion: &str,
    ) -> Result<Option<Current>, PromoteError> {
        let key = state::current_key(app, env);
        for _ in 0..5 {
            let Some(current) = self.state.current(app, env).await? else {
                return Ok(None);
            };
            if current.value.promotion != promotion {
                return Ok(None);
            }
            let mut next = current.value.clone();
            if next.healthy_since.is_none() {
                next.healthy_since = Some(Utc::now());
            }
            next.last_healthy = Some(HealthyRelease {
                release: next.release.clone(),
                config_commit: next.config_commit.clone(),
            });
            if next == current.value || self.state.compare_and_set(&key, &next, Some(current.revision)).await? {
                return Ok(Some(next));
            }
        }
        Err(PromoteError::Transient(format!(
            "the state of {app} in `{env}` keeps changing; retrying"
        )))
    }
}

/// One config-repo write.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) action: PromotionAction,
    pub(crate) promotion: String,
    pub(crate) actor: String,
    pub(crate) reason: Option<String>,
    pub(crate) pinned: Option<Pin>,
    pub(crate) break_glass: bool,
    pub(crate) restore_from: Option<String>,
    pub(crate) cause: String,
}

fn kind_word(kind: ApprovalKind) -> &'static str {
    match kind {
        ApprovalKind::Promotion => "promotion",
        ApprovalKind::BreakGlass => "break-glass",
    }
}

fn person(signature: &git2::Signature<'_>) -> Person {
    Person {
        name: signature.name().ok().map(str::to_owned),
        email: signature.email().ok().map(str::to_owned),
        username: None,
    }
}

/// The commit's author and the commits since `since` (newest first, capped).
fn commit_story(
    repo: &git2::Repository,
    commit: &str,
    since: Option<&str>,
) -> Result<(Option<Person>, Vec<ChangeEntry>), git2::Error> {
    let oid = git2::Oid::from_str(commit)?;
    let head = repo.find_commit(oid)?;
    let author = Some(person(&head.author()));
    let mut walk = repo.revwalk()?;
    walk.push(oid)?;
    if let Some(since) = since.and_then(|s| git2::Oid::from_str(s).ok())
        && repo.find_commit(since).is_ok()
    {
        walk.hide(since)?;
    }
    let mut changelog = Vec::new();
    for id in walk.take(CHANGELOG_LIMIT) {
        let c = repo.find_commit(id?)?;
        changelog.push(ChangeEntry {
            commit: c.id().to_string(),
            summary: c.summary().ok().flatten().unwrap_or_default().to_owned(),
            author: person(&c.author()),
        });
    }
    Ok((author, changelog))
}
