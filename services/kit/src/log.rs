//! Reading Baton's event log: the events stream replayed (from the start or a point in time),
//! then followed live, through an ephemeral ordered consumer that leaves nothing behind. The CLI
//! (`baton events`, `trace`, `releases`) and the web UI read it so.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use baton_schemas::release::user_of_urn;
use baton_schemas::{CdEvent, EventType, subjects};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

/// Why the log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The server has no such stream.
    #[error(
        "no event stream {stream} on this server ({reason}): is Baton running against it? Pass --nats or set BATON_NATS_URL"
    )]
    NoStream {
        /// The stream's name.
        stream: String,
        /// What the server said.
        reason: String,
    },
    /// Reading it failed.
    #[error("cannot read the event stream {stream}: {reason}")]
    Unavailable {
        /// The stream's name.
        stream: String,
        /// What failed.
        reason: String,
    },
    /// The start time cannot be given to the server.
    #[error("--since: {0}")]
    Since(String),
}

/// One event of the log.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The application token of its subject.
    pub app: String,
    /// The CDEvent.
    pub event: CdEvent,
}

impl Record {
    /// The record of a message of the events stream published on `subject`, stored at
    /// `sequence`; `None` when it is not a CloudEvent carrying a CDEvent.
    pub fn decode(
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        sequence: u64,
    ) -> Option<Self> {
        let cloudevent = crate::codec::decode(headers, payload).ok()?;
        let Some(cloudevents::Data::Json(data)) = cloudevent.data() else {
            return None;
        };
        let event: CdEvent = serde_json::from_value(data.clone()).ok()?;
        let app = subjects::app_of(subject).unwrap_or_default().to_owned();
        Some(Self { sequence, app, event })
    }

    /// Its catalog type, when it is one.
    pub fn event_type(&self) -> Option<EventType> {
        self.event.event_type()
    }

    /// When it happened.
    pub fn time(&self) -> DateTime<Utc> {
        self.event.context.timestamp
    }

    /// The release it belongs to.
    pub fn chain(&self) -> Option<&str> {
        self.event.context.chain_id.as_deref()
    }
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Subject filters (default: every event).
    pub filters: Vec<String>,
    /// Only events published after this time.
    pub since: Option<DateTime<Utc>>,
    /// Keep reading new events.
    pub follow: bool,
}

/// The subject filter of `ty` (one type) for `app` (or every app).
pub fn filter(app: Option<&str>, ty: Option<EventType>) -> String {
    let app = app.map_or_else(|| "*".to_owned(), subjects::sanitize_token);
    match ty {
        Some(ty) => format!("{}.{app}.{}.{}", subjects::EVENTS_PREFIX, ty.subject(), ty.predicate()),
        None => format!("{}.{app}.>", subjects::EVENTS_PREFIX),
    }
}

/// Reads the log: calls `each` for every event in order; returns when the replay is done (or,
/// following, never unless `each` says stop by returning `false`).
///
/// # Errors
/// [`LogError`] when the stream cannot be read.
pub async fn read(
    js: &jetstream::Context,
    stream: &str,
    query: &Query,
    mut each: impl FnMut(Record) -> bool,
) -> Result<(), LogError> {
    let unavailable = |e: &dyn std::fmt::Display| LogError::Unavailable {
        stream: stream.to_owned(),
        reason: e.to_string(),
    };
    let stream = js.get_stream(stream).await.map_err(|e| LogError::NoStream {
        stream: stream.to_owned(),
        reason: e.to_string(),
    })?;
    let filters = if query.filters.is_empty() {
        vec![subjects::ALL_EVENTS.to_owned()]
    } else {
        query.filters.clone()
    };
    let deliver_policy = match query.since {
        Some(start) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                start.timestamp_nanos_opt().unwrap_or_default(),
            ))
            .map_err(|e| LogError::Since(e.to_string()))?,
        },
        None => consumer::DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    let mut consumer = consumer;
    let pending = consumer.info().await.map_err(|e| unavailable(&e))?.num_pending;
    if pending == 0 && !query.follow {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    loop {
        let next = if query.follow {
            messages.next().await
        } else {
            match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(m) => m,
                Err(_) => return Ok(()),
            }
        };
        let Some(message) = next else { return Ok(()) };
        let message = message.map_err(|e| unavailable(&e))?;
        let info = message.info().map_err(|e| unavailable(&e))?;
        let (sequence, left) = (info.stream_sequence, info.pending);
        if let Some(record) = Record::decode(&message.subject, message.headers.as_ref(), &message.payload, sequence)
            && !each(record)
        {
            return Ok(());
        }
        if left == 0 && !query.follow {
            return Ok(());
        }
    }
}

/// How an event reads: its tone in a terminal's colours or a page's classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// It went well.
    Good,
    /// It went wrong.
    Bad,
    /// Something waits.
    Waiting,
    /// Neutral.
    Plain,
    /// Unimportant.
    Dim,
}

/// The first eight characters of an id or a sha, as one-line summaries show them.
pub fn short(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

fn text(v: &Value, path: &[&str]) -> String {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_str().map(str::to_owned).unwrap_or_default()
}

/// The `subject.predicate` of an event's type, e.g. `service.deployed`.
pub fn kind(record: &Record) -> String {
    match record.event_type() {
        Some(ty) => format!("{}.{}", ty.subject(), ty.predicate()),
        None => record.event.context.ty.clone(),
    }
}

/// A one-line summary of what the event says, and its tone: what `baton events` prints and the
/// web UI's event log shows.
pub fn summary(record: &Record) -> (String, Tone) {
    let null = Value::Null;
    let data = record.event.custom_data.as_ref().unwrap_or(&null);
    let content = &record.event.subject.content;
    let outcome = |o: &str| if o == "success" { Tone::Good } else { Tone::Bad };
    match record.event_type() {
        Some(EventType::ChangeMerged) => {
            let pusher = text(data, &["pusher", "username"]);
            let commits = data["commits"].as_array().map_or(0, Vec::len);
            (
                format!(
                    "push of {} to {} ({commits} commit{}){}",
                    short(&text(data, &["after"])),
                    text(data, &["ref"]).trim_start_matches("refs/heads/"),
                    if commits == 1 { "" } else { "s" },
                    if pusher.is_empty() {
                        String::new()
                    } else {
                        format!(" by {pusher}")
                    }
                ),
                Tone::Plain,
            )
        }
        Some(EventType::BuildFinished | EventType::TestSuiteRunFinished) => {
            let o = text(data, &["outcome"]);
            let reason = text(data, &["reason"]);
            let counts = &data["counts"];
            let tests = counts["tests"].as_u64().filter(|n| *n > 0).map(|n| {
                format!(
                    ", {n} tests, {} failed",
                    counts["failures"].as_u64().unwrap_or(0) + counts["errors"].as_u64().unwrap_or(0)
                )
            });
            (
                format!(
                    "{o}{}{}",
                    tests.unwrap_or_default(),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ),
                outcome(&o),
            )
        }
        Some(EventType::ArtifactPublished) => (text(data, &["image", "reference"]), Tone::Good),
        Some(EventType::ArtifactSigned) => {
            let digest = |field: &str| text(data, &[field]).trim_start_matches("sha256:").to_owned();
            (
                format!(
                    "signed by key {} (.sig {}, .att {})",
                    short(text(data, &["keyId"]).trim_start_matches("sha256:")),
                    short(&digest("signatureManifest")),
                    short(&digest("attestationManifest"))
                ),
                Tone::Good,
            )
        }
        Some(EventType::ReleaseCreated) => (
            format!("release of commit {}", short(&text(content, &["commit"]))),
            Tone::Plain,
        ),
        Some(EventType::EnvironmentModified) => (
            format!(
                "{} → {} (config {}) by {}{}",
                text(data, &["action"]),
                text(data, &["environment"]),
                short(&text(data, &["configCommit"])),
                text(data, &["actor"]),
                if data["pinned"].as_bool() == Some(true) {
                    ", pinned"
                } else {
                    ""
                }
            ),
            Tone::Plain,
        ),
        Some(EventType::ApprovalCreated) => (
            format!(
                "{}: {} approval(s) needed from {}",
                text(data, &["environment"]),
                data["required"].as_u64().unwrap_or(1),
                data["approvers"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ),
            Tone::Waiting,
        ),
        Some(EventType::ApprovalUpdated) => (
            format!(
                "{}: {} by {}",
                text(data, &["environment"]),
                text(content, &["decision"]),
                user_of_urn(&text(content, &["responder"]))
            ),
            Tone::Plain,
        ),
        Some(EventType::ApprovalClosed) => {
            let status = text(content, &["status"]);
            (
                format!(
                    "{}: {status} ({})",
                    text(data, &["environment"]),
                    text(data, &["reason"])
                ),
                if status == "approved" { Tone::Good } else { Tone::Bad },
            )
        }
        Some(EventType::ServiceDeployed | EventType::ServiceUpgraded | EventType::ServiceRolledBack) => (
            format!("{} runs {}", text(data, &["environment"]), text(data, &["image"])),
            Tone::Good,
        ),
        Some(EventType::DeploymentStarted) => (
            format!("rolling out to {}", text(data, &["environment"])),
            Tone::Waiting,
        ),
        Some(EventType::DeploymentFailed | EventType::DeploymentSuperseded) => (
            format!("{}: {}", text(content, &["environment"]), text(content, &["reason"])),
            Tone::Bad,
        ),
        Some(EventType::PromotionHeld) => (
            format!("{}: {}", text(content, &["environment"]), text(content, &["reason"])),
            Tone::Waiting,
        ),
        Some(EventType::ReleaseQuarantined) => (
            format!(
                "quarantined by {}: {}",
                text(content, &["actor"]),
                text(content, &["reason"])
            ),
            Tone::Bad,
        ),
        Some(EventType::CommandRejected) => (
            format!(
                "{} by {} refused: {}",
                text(content, &["verb"]),
                text(content, &["actor"]),
                text(content, &["reason"])
            ),
            Tone::Bad,
        ),
        Some(EventType::PolicyRejected) => (text(content, &["reason"]), Tone::Bad),
        Some(EventType::EnvironmentDrifted) => {
            let objects: Vec<&str> = content["objects"]
                .as_array()
                .map(|o| o.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            // Those the report left out (`objectsOmitted`) count too.
            let omitted = content["objectsOmitted"].as_u64().unwrap_or(0);
            let count = objects.len() as u64 + omitted;
            (
                format!(
                    "{} drifted: {count} object{} ({}), policy {}",
                    text(content, &["environment"]),
                    if count == 1 { "" } else { "s" },
                    baton_schemas::drift::names_and_more(&objects, 3, omitted),
                    text(content, &["policy"])
                ),
                Tone::Bad,
            )
        }
        Some(EventType::EnvironmentSynced) => (
            format!(
                "{} in sync again ({})",
                text(content, &["environment"]),
                text(content, &["how"])
            ),
            Tone::Good,
        ),
        Some(EventType::EnvironmentUnhealed) => (
            format!(
                "{} not healed: {}",
                text(content, &["environment"]),
                text(content, &["reason"])
            ),
            Tone::Bad,
        ),
        _ => (record.event.subject.id.clone(), Tone::Dim),
    }
}
