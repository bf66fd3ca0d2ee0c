//! The release manager: what the event handler, the operator commands and the timers share —
//! the config repo, the app repos, the state, the environment locks, JetStream and the clock —
//! and the pieces every decision uses: deterministic ids, events, publishing, and the
//! environments' health. The decisions themselves are in [`crate::gates`]; creating releases
//! in [`crate::release`], moving them in [`crate::advance`], approval requests in
//! [`crate::approvals`], the evidence gate in [`crate::evidence`] and config-repo commits in
//! [`crate::write`].

use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, kv};
use baton_kit::Outgoing;
use baton_kit::lease::Locks;
use baton_kit::source::Sources;
use baton_schemas::subjects::sanitize_token;
use baton_schemas::{CdEvent, EventType};
use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::configrepo::ConfigRepo;
use crate::error::PromoteError;
use crate::evidence::EvidenceRegistry;
use crate::policy::Policy;
use crate::state::{self, Current, HealthyRelease, State};

/// The actor named on automatic decisions.
pub const AUTOMATION: &str = "baton-promoter";

/// A decision's outcome: what happened and the events that record it.
#[derive(Debug)]
pub struct Outcome<T> {
    /// What happened.
    pub value: T,
    /// Events to publish.
    pub events: Vec<Outgoing>,
}

/// The release manager: turns tested images into releases and moves them through the
/// environments as commits to the config repo.
#[derive(Debug)]
pub struct ReleaseManager {
    pub(crate) repo: Arc<ConfigRepo>,
    pub(crate) sources: Sources,
    pub(crate) state: State,
    pub(crate) locks: Locks,
    pub(crate) jetstream: jetstream::Context,
    /// Nonces of signed commands already seen (keys `promoter.nonce.*` of `baton-handled`,
    /// kept as long as that bucket keeps entries: far longer than a command stays fresh).
    pub(crate) nonces: kv::Store,
    pub(crate) source: String,
    pub(crate) auto_rollback: bool,
    events_stream: String,
    /// The last valid policy, kept for when the config repo's `environments.yaml` is invalid.
    pub(crate) policy: Mutex<Option<Policy>>,
    /// Read once per operation; the decisions take that instant as an input.
    clock: Arc<dyn Clock>,
    /// Where environments' evidence is read.
    pub(crate) registry: EvidenceRegistry,
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

/// The first twelve characters of a commit or release id, for messages.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl ReleaseManager {
    /// A release manager over these parts, reading the time from the system clock.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        repo: Arc<ConfigRepo>,
        sources: Sources,
        state: State,
        locks: Locks,
        jetstream: jetstream::Context,
        nonces: kv::Store,
        auto_rollback: bool,
        registry: EvidenceRegistry,
    ) -> Self {
        Self {
            repo,
            sources,
            state,
            locks,
            jetstream,
            nonces,
            source: "/baton/promoter".to_owned(),
            auto_rollback,
            events_stream: "BATON_EVENTS".to_owned(),
            policy: Mutex::new(None),
            clock: Arc::new(SystemClock),
            registry,
        }
    }

    /// Reads the audit log from `stream` (the events stream's configured name).
    #[must_use]
    pub fn with_events_stream(mut self, stream: impl Into<String>) -> Self {
        self.events_stream = stream.into();
        self
    }

    /// Reads the time from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The events stream's name.
    pub fn events_stream(&self) -> &str {
        &self.events_stream
    }

    /// The current instant: read once at the start of an operation and passed down.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Runs blocking (libgit2) work off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PromoteError> + Send + 'static,
    ) -> Result<T, PromoteError> {
        tokio::task::spawn_blocking(f).await.map_err(PromoteError::Task)?
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
        let mut sent = baton_kit::events::InFlight::default();
        for event in events {
            sent.send(&self.jetstream, event).await.map_err(PromoteError::Publish)?;
        }
        sent.confirmed().await.map(|_| ()).map_err(PromoteError::Publish)
    }

    /// Marks `env` healthy (since `now`, unless it already was) for the promotion the deployer
    /// applied; `None` when the report is about an older promotion than the one the environment
    /// now has.
    pub(crate) async fn mark_healthy(
        &self,
        app: &str,
        env: &str,
        promotion: &str,
        now: DateTime<Utc>,
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
                next.healthy_since = Some(now);
            }
            next.last_healthy = Some(HealthyRelease {
                release: next.release.clone(),
                config_commit: next.config_commit.clone(),
            });
            if next == current.value || self.state.compare_and_set(&key, &next, Some(current.revision)).await? {
                return Ok(Some(next));
            }
        }
        Err(PromoteError::CurrentContended {
            app: app.to_owned(),
            environment: env.to_owned(),
        })
    }
}
