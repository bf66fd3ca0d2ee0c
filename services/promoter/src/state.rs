//! The promoter's small mutable state in JetStream KV (bucket `baton-state`, keys under
//! `promoter.`), every write compare-and-set where replicas could race:
//!
//! | key | holds |
//! | --- | --- |
//! | `promoter.release.<release>` | the release ([`ReleaseData`]) |
//! | `promoter.current.<app>.<env>` | what the environment runs, whether it is healthy, its last healthy release, the pin |
//! | `promoter.approval.<app>.<env>` | the open (or last closed) approval request |
//! | `promoter.scheduled.<app>.<env>` | a promotion waiting for a soak or a freeze to end |
//! | `promoter.bad.<release>` | a quarantined release |
//! | `promoter.policy` | the last valid `environments.yaml` |
//! | `promoter.trace.<release>` | the release's W3C `traceparent`, so an operator's command joins its trace |
//!
//! Everything here can be rebuilt from the event stream and the config repo
//! ([`crate::rebuild`]).

use async_nats::jetstream::kv;
use baton_kit::error::BoxError;
use baton_schemas::release::{ApprovalData, Pin, PromotionAction, ReleaseData};
use baton_schemas::subjects::sanitize_token;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// KV key prefix of the promoter.
pub const PREFIX: &str = "promoter";

/// The state store failed, or holds a record the promoter cannot read. Always worth retrying:
/// KV comes back, and a record is rewritten by the next decision or a rebuild.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// KV did not do `operation` on `key`.
    #[error("the promoter's state store failed while {operation} `{key}`: {source}")]
    Store {
        /// What was being done, e.g. `reading`.
        operation: &'static str,
        /// The key (or the prefix of the keys listed).
        key: String,
        /// KV's error.
        #[source]
        source: BoxError,
    },
    /// The record at `key` is not what the promoter writes there.
    #[error("the promoter's state store failed: {key}: {source}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    /// KV failed `operation` on `key`.
    fn store(operation: &'static str, key: &str, source: impl Into<BoxError>) -> Self {
        Self::Store {
            operation,
            key: key.to_owned(),
            source: source.into(),
        }
    }

    /// The error's metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Store { .. } => "state_store",
            Self::Unreadable { .. } => "state_unreadable",
        }
    }
}

/// A value and the revision it was read at (for compare-and-set).
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its KV revision.
    pub revision: u64,
}

/// What an environment runs for an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    /// The release.
    pub release: String,
    /// The promotion that put it there.
    pub promotion: String,
    /// That promotion's config-repo commit.
    pub config_commit: String,
    /// Promote or rollback (pins keep the previous action's release).
    pub action: PromotionAction,
    /// Since when the deployer reports it healthy (`None`: not yet, or failed).
    pub healthy_since: Option<DateTime<Utc>>,
    /// The last release that was healthy here (the auto-rollback target).
    pub last_healthy: Option<HealthyRelease>,
    /// The pin, if the environment is pinned.
    pub pinned: Option<Pin>,
}

/// A release that ran healthy in an environment, and where its manifests are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthyRelease {
    /// The release.
    pub release: String,
    /// The config-repo commit whose manifests ran healthy.
    pub config_commit: String,
}

/// How a promotion was asked for: decides which gates apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Trigger {
    /// Tests passed or the previous environment is healthy: every gate applies.
    Auto,
    /// An approval request reached its quorum (a human decision: pins do not hold it back).
    Approved {
        /// The approval request.
        approval: String,
        /// A break-glass approval also overrides freeze windows.
        break_glass: bool,
    },
    /// An operator's `promote` command.
    Operator {
        /// Who.
        actor: String,
        /// Sent with `breakGlass`: the move skips the evidence gate (and is recorded so).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        break_glass: bool,
    },
}

/// An approval request, open or closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The request as announced (votes updated as they come).
    pub data: ApprovalData,
    /// The promotion id used once the quorum is reached.
    pub promotion: String,
    /// The event that opened the request (the cause of the promotion).
    pub cause: String,
    /// Set once the request is closed.
    pub closed: Option<Closure>,
    /// Approved, and its promotion not carried through yet: the outbox of an approval. Set in
    /// the same compare-and-set that closes the request, cleared once the promotion is
    /// committed and announced, scheduled, or held with its reason on the stream; the timers
    /// carry out what is still set (a busy lease, a failed push, a crash in between).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promotion_pending: bool,
    /// The W3C `traceparent` of the span that opened the request: votes, the promotion and the
    /// expiry continue the release's trace from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// How an approval request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// `approved`, `rejected`, `cancelled` or `expired`.
    pub status: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A promotion waiting for a time (end of a soak or a freeze).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    /// The release.
    pub release: String,
    /// The environment it waits to enter.
    pub environment: String,
    /// The promotion id.
    pub promotion: String,
    /// Not before this time.
    pub not_before: DateTime<Utc>,
    /// How it was asked for.
    pub trigger: Trigger,
    /// The event that caused it.
    pub cause: String,
    /// What it waits for.
    pub waiting_for: String,
    /// The W3C `traceparent` of the span that scheduled it: the promotion carried out when it is
    /// due continues the release's trace from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl Scheduled {
    /// Whether `other` schedules the same promotion (whichever span scheduled it).
    pub fn same_as(&self, other: &Self) -> bool {
        Self {
            trace: other.trace.clone(),
            ..self.clone()
        } == *other
    }
}

/// A quarantined release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRelease {
    /// Who marked it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The release quarantined. The record is kept under its id, its app's commit and its
    /// image digest, so another release of the same commit or image is quarantined too.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release: String,
}

/// The last valid `environments.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// The config-repo commit it was read at.
    pub commit: String,
    /// Its text.
    pub text: String,
}

/// Typed access to the promoter's keys.
#[derive(Debug, Clone)]
pub struct State {
    kv: kv::Store,
}

/// Key of a release.
pub fn release_key(release: &str) -> String {
    format!("{PREFIX}.release.{}", sanitize_token(release))
}

/// Key of a quarantine record.
pub fn bad_key(release: &str) -> String {
    format!("{PREFIX}.bad.{}", sanitize_token(release))
}

/// Keys of the quarantine record of `release`: by release id, by the app's commit and by the
/// image digest, in that order.
pub fn bad_keys(release: &ReleaseData) -> [String; 3] {
    [
        bad_key(&release.release),
        format!(
            "{PREFIX}.bad-commit.{}.{}",
            sanitize_token(&release.app),
            sanitize_token(&release.commit)
        ),
        format!("{PREFIX}.bad-digest.{}", sanitize_token(&release.image.digest)),
    ]
}

/// Key of what `env` runs for `app`.
pub fn current_key(app: &str, env: &str) -> String {
    format!("{PREFIX}.current.{}.{env}", sanitize_token(app))
}

/// Key of the approval request for `app` into `env`.
pub fn approval_key(app: &str, env: &str) -> String {
    format!("{PREFIX}.approval.{}.{env}", sanitize_token(app))
}

/// Key of the scheduled promotion of `app` into `env`.
pub fn scheduled_key(app: &str, env: &str) -> String {
    format!("{PREFIX}.scheduled.{}.{env}", sanitize_token(app))
}

/// Key of the `traceparent` a release's trace is continued from by operators' commands.
pub fn trace_key(release: &str) -> String {
    format!("{PREFIX}.trace.{}", sanitize_token(release))
}

/// Key of the last valid policy.
pub const POLICY_KEY: &str = "promoter.policy";

/// Key of the last valid `people.yaml` (a [`PolicyRecord`]).
pub const PEOPLE_KEY: &str = "promoter.people";

/// Key of the last valid public key `keys/<name>.pem` (a [`PolicyRecord`]).
pub fn key_key(name: &str) -> String {
    format!("promoter.key.{name}")
}

impl State {
    /// State in `kv`.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Reads `key`.
    ///
    /// # Errors
    /// [`StateError`] when KV fails or the value is not a `T`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, StateError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| StateError::store("reading", key, e))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let value = serde_json::from_slice(&entry.value).map_err(|source| StateError::Unreadable {
                    key: key.to_owned(),
                    source,
                })?;
                Ok(Some(Versioned {
                    value,
                    revision: entry.revision,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Writes `key` unconditionally.
    ///
    /// # Errors
    /// [`StateError`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<u64, StateError> {
        let bytes = serde_json::to_vec(value).expect("state records serialize");
        self.kv
            .put(key, bytes.into())
            .await
            .map_err(|e| StateError::store("writing", key, e))
    }

    /// Writes `key` only if it is still at `expected` (`None`: only if absent). `Ok(false)`
    /// when someone else wrote first.
    ///
    /// # Errors
    /// [`StateError`] when KV fails.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn compare_and_set<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        expected: Option<u64>,
    ) -> Result<bool, StateError> {
        let bytes: bytes::Bytes = serde_json::to_vec(value).expect("state records serialize").into();
        match expected {
            Some(revision) => match self.kv.update(key, bytes, revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(StateError::store("updating", key, e)),
            },
            None => match self.kv.create(key, bytes).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(StateError::store("creating", key, e)),
            },
        }
    }

    /// Deletes `key` if it is still at `revision`.
    ///
    /// # Errors
    /// [`StateError`] when KV fails (a lost race is not an error).
    pub async fn delete_at(&self, key: &str, revision: u64) -> Result<(), StateError> {
        match self.kv.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(StateError::store("deleting", key, e)),
        }
    }

    /// Every key starting with `prefix`.
    ///
    /// # Errors
    /// [`StateError`].
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let keys = self
            .kv
            .keys()
            .await
            .map_err(|e| StateError::store("listing the keys under", prefix, e))?;
        let all: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| StateError::store("listing the keys under", prefix, e))?;
        Ok(all.into_iter().filter(|k| k.starts_with(prefix)).collect())
    }

    /// The release `id`.
    ///
    /// # Errors
    /// [`StateError`].
    pub async fn release(&self, id: &str) -> Result<Option<ReleaseData>, StateError> {
        Ok(self.get(&release_key(id)).await?.map(|v| v.value))
    }

    /// The `traceparent` `release`'s trace is continued from (`None` for a release created
    /// before traces were kept, or rebuilt from the stream).
    ///
    /// # Errors
    /// [`StateError`].
    pub async fn trace(&self, release: &str) -> Result<Option<String>, StateError> {
        Ok(self.get(&trace_key(release)).await?.map(|v| v.value))
    }

    /// The quarantine record that covers `release`: its own, or one of another release of the
    /// same app commit or the same image digest (a replayed push, or the same image rebuilt).
    ///
    /// # Errors
    /// [`StateError`].
    pub async fn bad(&self, release: &ReleaseData) -> Result<Option<BadRelease>, StateError> {
        let [by_release, by_commit, by_digest] = bad_keys(release);
        let (a, b, c) = tokio::try_join!(
            self.get::<BadRelease>(&by_release),
            self.get::<BadRelease>(&by_commit),
            self.get::<BadRelease>(&by_digest),
        )?;
        Ok(a.or(b).or(c).map(|v| v.value))
    }

    /// What `env` runs for `app`.
    ///
    /// # Errors
    /// [`StateError`].
    pub async fn current(&self, app: &str, env: &str) -> Result<Option<Versioned<Current>>, StateError> {
        self.get(&current_key(app, env)).await
    }
}
