//! From CDEvents to CloudEvents and onto the stream: the one way Baton publishes an event.

use std::collections::BTreeMap;

use async_nats::jetstream;
use baton_schemas::{CdEvent, EventType, SchemaError, subjects, validate_event};
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use tracing::Instrument;

use crate::codec::{self, JSON};
use crate::fabric::{self, FabricError, Published};
use crate::telemetry;

/// An event a service wants on the stream: the CDEvent, the application it belongs to (which
/// picks the subject), and any extra CloudEvents extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The application (e.g. `acme/shop`); sanitized into the subject's `<app>` token.
    pub app: String,
    /// The CDEvent, which becomes the CloudEvent `data`.
    pub event: CdEvent,
    /// Extra CloudEvents extension attributes (lower-case alphanumeric names).
    pub extensions: BTreeMap<String, String>,
}

impl Outgoing {
    /// An outgoing event with no extra extensions.
    pub fn new(app: impl Into<String>, event: CdEvent) -> Self {
        Self {
            app: app.into(),
            event,
            extensions: BTreeMap::new(),
        }
    }
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event's type is not in Baton's catalog.
    #[error("refusing to publish `{0}`: not a type of Baton's event catalog")]
    UnknownType(String),
    /// An extension name is not lower-case letters and digits.
    #[error(
        "refusing to publish: `{0}` is not a valid CloudEvents extension name (lower-case letters and digits only)"
    )]
    InvalidExtension(String),
    /// The event does not satisfy its schema: a bug in the producer, never retried.
    #[error("refusing to publish an invalid event: {0}")]
    Invalid(#[from] SchemaError),
    /// JetStream did not acknowledge it: retry with the same id.
    #[error(transparent)]
    Fabric(#[from] FabricError),
}

impl PublishError {
    /// Whether retrying the same publish may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Fabric(_))
    }
}

impl crate::error::Classify for PublishError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::transient_if(self.is_transient())
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::UnknownType(_) => "publish_unknown_type",
            Self::InvalidExtension(_) => "publish_invalid_extension",
            Self::Invalid(_) => "publish_invalid_event",
            Self::Fabric(_) => "publish_unacknowledged",
        }
    }
}

impl From<PublishError> for crate::error::HandlerError {
    fn from(e: PublishError) -> Self {
        Self::classified(e)
    }
}

/// Events sent whose acks are awaited together: the progress events a handler announces while
/// it works (`build.started`, say) are each sent at once and confirmed before the handler
/// returns its outputs, so the work does not wait a round trip per announcement and the outputs
/// are still stored after them.
#[derive(Debug, Default)]
#[must_use = "events in flight are only stored once confirmed"]
pub struct InFlight(Vec<(EventType, fabric::Sent)>);

impl InFlight {
    /// Validates and sends `outgoing` (see [`send`]).
    ///
    /// # Errors
    /// As [`send`].
    pub async fn send(&mut self, js: &jetstream::Context, outgoing: &Outgoing) -> Result<(), PublishError> {
        self.0.push(send(js, outgoing).await?);
        Ok(())
    }

    /// Waits for JetStream to acknowledge every event sent; returns each one's type and ack, in
    /// the order they were sent.
    ///
    /// # Errors
    /// [`PublishError::Fabric`] for the first one it did not acknowledge.
    pub async fn confirmed(self) -> Result<Vec<(EventType, Published)>, PublishError> {
        let mut acked = Vec::with_capacity(self.0.len());
        for (ty, sent) in self.0 {
            acked.push((ty, sent.acked().await?));
        }
        Ok(acked)
    }
}

/// The CloudEvent that carries a CDEvent: same id, source, type and time; the subject id as
/// CloudEvent `subject`; the CDEvent JSON as `data`.
pub fn to_cloudevent(event: &CdEvent) -> Event {
    let data = serde_json::to_value(event).expect("a CDEvent always serializes");
    EventBuilderV10::new()
        .id(event.context.id.clone())
        .source(event.context.source.clone())
        .ty(event.context.ty.clone())
        .time(event.context.timestamp)
        .subject(event.subject.id.clone())
        .data(JSON, data)
        .build()
        .expect("id, source and type are always set")
}

/// Validates and publishes an event on `baton.events.<app>.<subject>.<predicate>` in binary
/// mode, in a `send` span (kind producer) of the current trace whose context the event carries,
/// and waits for the JetStream ack.
///
/// # Errors
/// [`PublishError::Invalid`] for an event that breaks its schema (a bug: do not retry),
/// [`PublishError::Fabric`] when JetStream did not acknowledge (retry: the id makes it safe).
pub async fn publish(js: &jetstream::Context, outgoing: &Outgoing) -> Result<(EventType, Published), PublishError> {
    let (ty, sent) = send(js, outgoing).await?;
    Ok((ty, sent.acked().await?))
}

/// [`publish`] without waiting for the ack: the event is validated and sent, and the caller
/// awaits [`fabric::Sent::acked`] before it relies on the event being stored (before acking the
/// event that caused it, say). Events sent in turn are stored in that order.
///
/// # Errors
/// As [`publish`]; [`PublishError::Fabric`] here means the event could not be sent.
pub async fn send(js: &jetstream::Context, outgoing: &Outgoing) -> Result<(EventType, fabric::Sent), PublishError> {
    let event = &outgoing.event;
    let ty: EventType = event
        .context
        .ty
        .parse()
        .map_err(|_| PublishError::UnknownType(event.context.ty.clone()))?;
    let data = serde_json::to_value(event).expect("a CDEvent always serializes");
    validate_event(ty, &data)?;
    if let Some(name) = outgoing.extensions.keys().find(|n| !codec::is_valid_extension_name(n)) {
        return Err(PublishError::InvalidExtension(name.clone()));
    }
    let payload = bytes::Bytes::from(serde_json::to_vec(&data).expect("a JSON value always serializes"));
    // The binary-mode headers are written straight from the CDEvent (the same attributes
    // `to_cloudevent` would carry), which keeps the hot path free of intermediate copies.
    let time = event.context.timestamp.to_rfc3339();
    let mut headers = codec::binary_headers(&codec::Attributes {
        id: &event.context.id,
        source: &event.context.source,
        ty: &event.context.ty,
        subject: Some(&event.subject.id),
        time: Some(&time),
        datacontenttype: JSON,
    });
    let subject = subjects::event_subject(&outgoing.app, ty);
    // The event carries the context of its own `send` span, so whoever handles it continues the
    // trace from its publication.
    let message = telemetry::Message::event(&subject, event);
    let span = telemetry::messaging_span(
        telemetry::Messaging::Send,
        &telemetry::Message {
            app: message.app.or(Some(&outgoing.app)),
            service: telemetry::service_of(event),
            ..message
        },
    );
    let trace = span.in_scope(telemetry::current_trace_headers);
    for (name, value) in trace.iter().map(|(n, v)| (n, v)).chain(&outgoing.extensions) {
        codec::insert_extension(&mut headers, name, value);
    }
    let sent = fabric::send_raw(
        js,
        &subject,
        headers,
        payload,
        &codec::percent_encode(&event.context.id),
    )
    .instrument(span)
    .await?;
    Ok((ty, sent))
}
