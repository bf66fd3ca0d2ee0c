//! Reading Baton's event log: the events stream replayed (from the start or a point in time),
//! then followed live, through an ephemeral ordered consumer that leaves nothing behind.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use baton_schemas::{CdEvent, EventType, subjects};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::CliError;

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
/// [`CliError`] when the stream cannot be read.
pub async fn read(
    js: &jetstream::Context,
    stream: &str,
    query: &Query,
    mut each: impl FnMut(Record) -> bool,
) -> Result<(), CliError> {
    let unavailable = |e: &dyn std::fmt::Display| CliError::Nats(format!("cannot read the event stream {stream}: {e}"));
    let stream = js.get_stream(stream).await.map_err(|e| {
        CliError::Nats(format!(
            "no event stream {stream} on this server ({e}): is Baton running against it? Pass --nats or set BATON_NATS_URL"
        ))
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
            .map_err(|e| CliError::Usage(format!("--since: {e}")))?,
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
        if let Some(record) = decode(&message, sequence)
            && !each(record)
        {
            return Ok(());
        }
        if left == 0 && !query.follow {
            return Ok(());
        }
    }
}

fn decode(message: &jetstream::Message, sequence: u64) -> Option<Record> {
    let cloudevent = baton_kit::codec::decode(message.headers.as_ref(), &message.payload).ok()?;
    let Some(cloudevents::Data::Json(data)) = cloudevent.data() else {
        return None;
    };
    let event: CdEvent = serde_json::from_value(data.clone()).ok()?;
    let app = subjects::app_of(&message.subject).unwrap_or_default().to_owned();
    Some(Record { sequence, app, event })
}
