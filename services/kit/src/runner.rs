//! The stage runner: how every Baton service consumes events.
//!
//! A service declares which event types it handles and a [`Handler`]. The runner owns a durable
//! pull consumer shared by all replicas of the service (scale out by adding replicas), and for
//! each event it:
//!
//! 1. decodes the CloudEvent (binary or structured) and validates the CDEvent against the
//!    schema of its type — a message that fails never reaches the handler and is dead-lettered
//!    with the reason;
//! 2. on a redelivery, skips an event id the stage already handled (idempotency: remembered in
//!    JetStream KV whenever an ack could not be confirmed);
//! 3. runs the handler under a deadline, sending in-progress heartbeats so JetStream does not
//!    redeliver a long step;
//! 4. publishes the handler's output events and waits for their JetStream acks, and only then
//!    acks the input (and waits for the server to confirm the ack);
//! 5. on a transient error naks with exponential backoff; on a permanent error, an exceeded
//!    deadline or too many deliveries, publishes the handler's "failed" outcome events,
//!    dead-letters the message (original headers and payload, plus the reason) and terminates it.
//!
//! On shutdown it stops pulling, lets in-flight handlers finish within the grace period and
//! naks what is left, so another replica picks it up at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::message::{AckKind, Message};
use baton_schemas::config::RunnerSettings;
use baton_schemas::{CdEvent, EventType, subjects, validate_event};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::codec;
pub use crate::error::HandlerError;
use crate::events::{self, Outgoing};
use crate::fabric::{self, FabricError, Topology};
use crate::metrics::{Metrics, StageMetrics};
use crate::{provision, telemetry};

/// Most events asked for in one pull.
const MAX_PULL: usize = 256;
/// How long one pull waits on the server for events before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Header on a dead letter: why the stage gave up.
pub const DEADLETTER_REASON: &str = "Baton-Deadletter-Reason";
/// Header on a dead letter: the stage that gave up.
pub const DEADLETTER_STAGE: &str = "Baton-Deadletter-Stage";
/// Header on a dead letter: the subject the message was published on.
pub const DEADLETTER_SUBJECT: &str = "Baton-Original-Subject";
/// Header on a dead letter: its sequence in the events stream.
pub const DEADLETTER_SEQUENCE: &str = "Baton-Original-Sequence";
/// Header on a dead letter: how many times it was delivered.
pub const DEADLETTER_DELIVERIES: &str = "Baton-Deliveries";

/// What a stage is: its name (the durable consumer every replica shares), the event types it
/// handles, and the CloudEvents `source` of the events it emits.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Durable consumer name, e.g. `builder`.
    pub name: String,
    /// Event types this stage consumes.
    pub handles: Vec<EventType>,
    /// CloudEvents/CDEvents `source` of the events it emits, e.g. `/baton/builder`.
    pub source: String,
}

impl Stage {
    /// A stage named `name`, emitting as `/baton/<name>`.
    pub fn new(name: impl Into<String>, handles: impl IntoIterator<Item = EventType>) -> Self {
        let name = name.into();
        Self {
            source: format!("/baton/{name}"),
            name,
            handles: handles.into_iter().collect(),
        }
    }
}

/// An event delivered to a handler: decoded, validated, and with its delivery facts.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Catalog type of the event.
    pub event_type: EventType,
    /// The CloudEvent as received (attributes, extensions, data).
    pub cloudevent: Event,
    /// The CDEvent from the CloudEvent's data.
    pub cdevent: CdEvent,
    /// The subject it was published on.
    pub subject: String,
    /// The application token of the subject (`baton.events.<app>.…`).
    pub app: String,
    /// How many times it has been delivered (1 on the first attempt).
    pub delivered: u64,
    /// Its sequence in the events stream.
    pub stream_sequence: u64,
    /// The `source` of the stage handling it, for the events the handler emits.
    pub stage_source: String,
}

impl Incoming {
    /// The event id.
    pub fn id(&self) -> &str {
        &self.cdevent.context.id
    }

    /// The release id (`chainId`) the event belongs to.
    pub fn chain_id(&self) -> Option<&str> {
        self.cdevent.context.chain_id.as_deref()
    }

    /// A deterministic id for an event this handler emits in response: the same input and
    /// label always give the same id, so a redelivered input re-emits an event JetStream drops
    /// as a duplicate.
    pub fn derive_id(&self, label: &str) -> String {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("baton:{}:{label}", self.id()).as_bytes(),
        )
        .to_string()
    }

    /// A follow-up CDEvent: derived id, this stage as source, the same `chainId`, and a link
    /// to this event as its cause.
    ///
    /// # Errors
    /// Fails only if `content` cannot be represented as JSON.
    pub fn follow_up(
        &self,
        ty: EventType,
        label: &str,
        subject_id: impl Into<String>,
        content: impl serde::Serialize,
    ) -> Result<CdEvent, serde_json::Error> {
        let mut event = CdEvent::new(
            ty,
            self.derive_id(label),
            self.stage_source.clone(),
            subject_id,
            content,
        )?
        .caused_by(self.id());
        if let Some(chain) = self.chain_id() {
            event = event.with_chain_id(chain);
        }
        Ok(event)
    }
}

/// What a stage does with an event.
pub trait Handler: Send + Sync + 'static {
    /// Handles one event and returns the events to emit. Called again for a redelivered event
    /// whose first attempt did not finish, so side effects must be idempotent; output events
    /// should use [`Incoming::derive_id`] (or [`Incoming::follow_up`]) so re-emitting them is
    /// harmless.
    fn handle(&self, event: Arc<Incoming>) -> impl Future<Output = Result<Vec<Outgoing>, HandlerError>> + Send;

    /// Events to emit when the runner gives up on an event (permanent error, deadline, too
    /// many deliveries), e.g. a `build.finished` with a failure outcome. Default: none.
    fn on_give_up(&self, _event: &Incoming, _reason: &str) -> Vec<Outgoing> {
        Vec::new()
    }
}

/// The runner could not start or keep consuming.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The durable consumer could not be created or updated.
    #[error("cannot create the durable consumer `{stage}`: {source}")]
    Consumer {
        /// The stage.
        stage: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
    /// The durable consumer is not provisioned as the stage needs (or cannot be read).
    #[error(transparent)]
    Topology(#[from] FabricError),
}

/// Delay before redelivery attempt `delivered + 1`: `initial * 2^(delivered-1)`, capped.
pub fn backoff(settings: &RunnerSettings, delivered: u64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1).min(30)).unwrap_or(30);
    settings
        .backoff_initial
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(settings.backoff_max)
}

/// Runs one stage: consumes its events and drives its handler until `shutdown` resolves.
#[derive(Debug)]
pub struct StageRunner<H> {
    inner: Arc<Inner<H>>,
}

#[derive(Debug)]
struct Inner<H> {
    stage: Stage,
    handler: H,
    topology: Topology,
    settings: RunnerSettings,
    metrics: StageMetrics,
    grace: Duration,
}

impl<H: Handler> StageRunner<H> {
    /// A runner for `stage` on a provisioned topology.
    pub fn new(stage: Stage, handler: H, topology: Topology, settings: RunnerSettings, metrics: Metrics) -> Self {
        let metrics = StageMetrics::new(metrics, &stage.name);
        Self {
            inner: Arc::new(Inner {
                stage,
                handler,
                topology,
                settings,
                metrics,
                grace: Duration::from_secs(20),
            }),
        }
    }

    /// How long in-flight handlers may finish after shutdown before they are naked.
    #[must_use]
    pub fn with_grace_period(self, grace: Duration) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| unreachable!("a fresh runner is not shared"));
        Self {
            inner: Arc::new(Inner { grace, ..inner }),
        }
    }

    /// Creates (or updates) the durable consumer as [`provision::apply`] would, from the start
    /// of the stream when it is new. Needs a connection allowed to manage consumers (an admin's,
    /// or a server without users); a service's own user may only [`check_consumer`] it.
    ///
    /// [`check_consumer`]: Self::check_consumer
    ///
    /// # Errors
    /// When JetStream refuses the consumer.
    pub async fn ensure_consumer(&self) -> Result<consumer::Consumer<pull::Config>, RunnerError> {
        let inner = &self.inner;
        let config = provision::consumer_config(
            &inner.stage.name,
            &inner.stage.handles,
            &inner.settings,
            consumer::DeliverPolicy::All,
        );
        inner
            .topology
            .events
            .create_consumer(config)
            .await
            .map_err(|e| RunnerError::Consumer {
                stage: inner.stage.name.clone(),
                source: e.into(),
            })
    }

    /// The provisioned durable consumer, checked against the stage ([`provision::check_consumer`]):
    /// one `CONSUMER.INFO`. Called by [`StageRunner::run`]; call it earlier to refuse to start
    /// before anything else is set up.
    ///
    /// # Errors
    /// [`RunnerError::Topology`] naming what is missing or wrong, and how to provision it.
    pub async fn check_consumer(&self) -> Result<consumer::Consumer<pull::Config>, RunnerError> {
        let inner = &self.inner;
        Ok(provision::check_consumer(
            &inner.topology,
            &inner.stage.name,
            &inner.stage.handles,
            &inner.settings,
        )
        .await?)
    }

    /// Consumes until `shutdown` resolves, then drains in-flight work within the grace period.
    ///
    /// # Errors
    /// When the consumer is not provisioned as the stage needs.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunnerError> {
        let consumer = self.check_consumer().await?;
        let inner = Arc::clone(&self.inner);
        let permits = Arc::new(Semaphore::new(inner.settings.concurrency.max(1)));
        let hard_stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        tracing::info!(stage = %inner.stage.name, "stage runner started");
        'outer: loop {
            // Events are pulled only for free handler slots: one waiting in a local buffer would
            // sit out its ack_wait there, and JetStream would hand it to another replica too.
            let first = tokio::select! {
                () = &mut shutdown => break 'outer,
                p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let mut slots = vec![first];
            while slots.len() < MAX_PULL {
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => slots.push(permit),
                    Err(_) => break,
                }
            }
            let pulled = tokio::select! {
                () = &mut shutdown => break 'outer,
                b = consumer.batch().max_messages(slots.len()).expires(PULL_EXPIRES).messages() => b,
            };
            let mut messages = match pulled {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull messages, retrying");
                    drop(slots);
                    tokio::select! {
                        () = &mut shutdown => break 'outer,
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue 'outer,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    () = &mut shutdown => break 'outer,
                    m = messages.next() => m,
                };
                match next {
                    Some(Ok(message)) => {
                        let Some(permit) = slots.pop() else {
                            // The server never sends more than asked; should it, hand it back.
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            continue;
                        };
                        let inner = Arc::clone(&inner);
                        let hard_stop = hard_stop.clone();
                        tasks.spawn(async move {
                            process(&inner, message, &hard_stop).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        // Missed heartbeats or a reconnect: the next pull recovers.
                        tracing::debug!(error = %e, "pull hiccup");
                    }
                    // The pull is done (filled or expired); unused slots are freed.
                    None => continue 'outer,
                }
                while tasks.try_join_next().is_some() {}
            }
        }
        tracing::info!(stage = %inner.stage.name, in_flight = tasks.len(), "stopping: no new events pulled");
        if tokio::time::timeout(inner.grace, drain(&mut tasks)).await.is_err() {
            tracing::warn!(stage = %inner.stage.name, "grace period over: handing unfinished events back");
            hard_stop.cancel();
            drain(&mut tasks).await;
        }
        // Acks and naks are queued on the connection; make sure they reach the server before
        // the caller drops or drains it, so handed-back events are redelivered at once.
        if let Err(e) = inner.topology.jetstream.client().flush().await {
            tracing::warn!(error = %e, "cannot flush the last acks");
        }
        Ok(())
    }
}

async fn drain(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// What happened to one delivery, for metrics and logs.
enum Outcome {
    Handled,
    Duplicate,
    Retried,
    GaveUp(&'static str),
    HandedBack,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Duplicate => "duplicate",
            Self::Retried => "retried",
            Self::GaveUp(label) => label,
            Self::HandedBack => "handed_back",
        }
    }
}

async fn process<H: Handler>(inner: &Inner<H>, message: Message, hard_stop: &CancellationToken) {
    let (stream_sequence, delivered) = match message.info() {
        Ok(info) => (info.stream_sequence, u64::try_from(info.delivered).unwrap_or(1)),
        Err(_) => (0, 1),
    };
    let incoming = match decode_incoming(inner, &message, stream_sequence, delivered) {
        Ok(incoming) => Arc::new(incoming),
        Err(reason) => {
            tracing::warn!(stage = %inner.stage.name, subject = %message.subject, %reason, "rejecting an invalid event");
            let outcome = dead_letter(inner, &message, None, &reason, delivered, "invalid").await;
            inner.metrics.count("invalid", outcome.label());
            return;
        }
    };
    let type_label = incoming.event_type.as_str();
    // The stage's span for the event carries the release's attributes the event names, so each
    // stage's part of a release's trace can be found by release, app, environment and commit.
    let about = telemetry::Message::event(&incoming.subject, &incoming.cdevent);
    let span = telemetry::messaging_span(
        telemetry::Messaging::Process,
        &telemetry::Message {
            app: about.app.or(Some(&incoming.app)),
            group: Some(&inner.stage.name),
            service: Some(&inner.stage.name),
            ..about
        },
    );
    // Continue the sender's trace when it sent one (and someone records spans).
    if !span.is_disabled()
        && codec::extension_str(&incoming.cloudevent, "traceparent").is_some()
        && let Err(e) = span.set_parent(telemetry::extract_trace_context(&incoming.cloudevent))
    {
        tracing::debug!(error = %e, "cannot continue the sender's trace");
    }
    let started = Instant::now();
    let outcome = handle_one(inner, &message, Arc::clone(&incoming), delivered, hard_stop)
        .instrument(span)
        .await;
    inner.metrics.observe(type_label, started.elapsed().as_secs_f64());
    inner.metrics.count(type_label, outcome.label());
}

fn decode_incoming<H>(
    inner: &Inner<H>,
    message: &Message,
    stream_sequence: u64,
    delivered: u64,
) -> Result<Incoming, String> {
    let cloudevent = codec::decode(message.headers.as_ref(), &message.payload).map_err(|e| e.to_string())?;
    let event_type: EventType = cloudevent
        .ty()
        .parse()
        .map_err(|e: baton_schemas::catalog::UnknownEventType| e.to_string())?;
    if !inner.stage.handles.contains(&event_type) {
        return Err(format!("stage `{}` does not handle `{event_type}`", inner.stage.name));
    }
    let data = match cloudevent.data() {
        Some(Data::Json(v)) => v,
        Some(_) => {
            return Err("event data is not JSON: Baton events carry their CDEvent as application/json".into());
        }
        None => return Err("event has no data: Baton events carry their CDEvent as data".into()),
    };
    validate_event(event_type, data).map_err(|e| e.to_string())?;
    let cdevent =
        <CdEvent as serde::Deserialize>::deserialize(data).map_err(|e| format!("event data is not a CDEvent: {e}"))?;
    if cdevent.context.id != cloudevent.id() {
        return Err(format!(
            "CloudEvent id `{}` differs from the CDEvent context id `{}`",
            cloudevent.id(),
            cdevent.context.id
        ));
    }
    let subject = message.subject.to_string();
    let app = subjects::app_of(&subject).unwrap_or("_").to_owned();
    Ok(Incoming {
        event_type,
        cloudevent,
        cdevent,
        subject,
        app,
        delivered,
        stream_sequence,
        stage_source: inner.stage.source.clone(),
    })
}

fn handled_key(stage: &str, event_id: &str) -> String {
    let digest = Sha256::digest(event_id.as_bytes());
    format!("{}.{}", subjects::sanitize_token(stage), hex::encode(&digest[..20]))
}

async fn handle_one<H: Handler>(
    inner: &Inner<H>,
    message: &Message,
    incoming: Arc<Incoming>,
    delivered: u64,
    hard_stop: &CancellationToken,
) -> Outcome {
    let settings = &inner.settings;
    if delivered > u64::from(settings.max_deliver) {
        let reason = format!(
            "gave up after {} deliveries: earlier attempts never finished (the handler crashed or lost its ack)",
            delivered - 1
        );
        return give_up(inner, message, &incoming, &reason, "dead_lettered").await;
    }
    let key = handled_key(&inner.stage.name, incoming.id());
    // A first delivery cannot have been handled by this stage; only a redelivery is looked up.
    if delivered > 1 {
        match inner.topology.handled.get(&key).await {
            Ok(Some(_)) => {
                tracing::debug!("already handled, acknowledging the redelivery");
                return ack(message, AckKind::Ack, Outcome::Duplicate).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the handled-events bucket, retrying later");
                return ack(
                    message,
                    AckKind::Nak(Some(backoff(settings, delivered))),
                    Outcome::Retried,
                )
                .await;
            }
        }
    }

    let handler = inner.handler.handle(Arc::clone(&incoming));
    let deadline = tokio::time::sleep(settings.handler_deadline);
    // The first heartbeat is due a third of ack_wait from now. (Awaiting an interval's
    // immediate first tick would cost a whole timer-wheel millisecond per event.)
    let period = settings.ack_wait / 3;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(handler, deadline);
    let result = loop {
        tokio::select! {
            r = &mut handler => break Some(r),
            () = &mut deadline => break None,
            () = hard_stop.cancelled() => {
                tracing::info!("shutting down: handing the event back");
                return ack(message, AckKind::Nak(None), Outcome::HandedBack).await;
            }
            _ = heartbeat.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
        }
    };

    match result {
        Some(Ok(outputs)) => {
            if let Err(e) = publish_all(inner, &outputs).await {
                return publish_failed(inner, message, &incoming, e, delivered).await;
            }
            // The ack is confirmed by the server. Only when that confirmation is lost can the
            // event come back, so only then is its id remembered, for the redelivery to skip.
            if let Err(e) = message
                .double_ack()
                .instrument(tracing::debug_span!("double_ack"))
                .await
            {
                tracing::warn!(error = %e, "ack not confirmed; remembering the event as handled");
                if let Err(e) = inner.topology.handled.put(&key, bytes::Bytes::from_static(b"1")).await {
                    // Outputs are deduplicated by id, so a second run is still harmless.
                    tracing::warn!(error = %e, "cannot remember the handled event id");
                }
            }
            Outcome::Handled
        }
        Some(Err(error)) => {
            inner.metrics.failed(
                incoming.event_type.as_str(),
                error.kind().as_str(),
                error.metric_label(),
            );
            let reason = error.reason();
            if !error.is_transient() {
                give_up(inner, message, &incoming, &reason, "dead_lettered").await
            } else if delivered >= u64::from(settings.max_deliver) {
                let reason = format!("still failing after {delivered} attempts: {reason}");
                give_up(inner, message, &incoming, &reason, "dead_lettered").await
            } else {
                let delay = backoff(settings, delivered);
                tracing::warn!(%reason, label = error.metric_label(), retry_in = ?delay, "transient failure, retrying");
                ack(message, AckKind::Nak(Some(delay)), Outcome::Retried).await
            }
        }
        None => {
            let reason = format!(
                "handler exceeded its deadline of {} and was cancelled",
                humantime::format_duration(settings.handler_deadline)
            );
            tracing::error!(%reason);
            give_up(inner, message, &incoming, &reason, "deadline_exceeded").await
        }
    }
}

/// Sends every output, then awaits their acks: the outputs are stored in order without a round
/// trip between each, and all of them are stored before the input is acked.
#[tracing::instrument(level = "debug", skip_all)]
async fn publish_all<H>(inner: &Inner<H>, outputs: &[Outgoing]) -> Result<(), events::PublishError> {
    let mut in_flight = events::InFlight::default();
    for out in outputs {
        in_flight.send(&inner.topology.jetstream, out).await?;
    }
    for (out, (ty, published)) in outputs.iter().zip(in_flight.confirmed().await?) {
        if published.duplicate {
            tracing::debug!(event.id = %out.event.context.id, "output already on the stream (deduplicated)");
        }
        inner.metrics.published(ty.as_str());
    }
    Ok(())
}

async fn publish_failed<H: Handler>(
    inner: &Inner<H>,
    message: &Message,
    incoming: &Incoming,
    error: events::PublishError,
    delivered: u64,
) -> Outcome {
    if error.is_transient() {
        tracing::warn!(%error, "output events not acknowledged, retrying");
        ack(
            message,
            AckKind::Nak(Some(backoff(&inner.settings, delivered))),
            Outcome::Retried,
        )
        .await
    } else {
        let reason = format!("the handler produced an event Baton cannot publish: {error}");
        give_up(inner, message, incoming, &reason, "dead_lettered").await
    }
}

async fn give_up<H: Handler>(
    inner: &Inner<H>,
    message: &Message,
    incoming: &Incoming,
    reason: &str,
    label: &'static str,
) -> Outcome {
    tracing::error!(%reason, "giving up on the event");
    let failure_events = inner.handler.on_give_up(incoming, reason);
    if let Err(e) = publish_all(inner, &failure_events).await {
        tracing::warn!(error = %e, "failure outcome not published, retrying later");
        return ack(
            message,
            AckKind::Nak(Some(backoff(&inner.settings, incoming.delivered))),
            Outcome::Retried,
        )
        .await;
    }
    dead_letter(inner, message, Some(incoming), reason, incoming.delivered, label).await
}

/// Publishes the original message (headers and payload) to the stage's dead-letter subject with
/// the reason, then terminates it. If the dead-letter publish fails the message is naked, so it
/// is never lost.
async fn dead_letter<H>(
    inner: &Inner<H>,
    message: &Message,
    incoming: Option<&Incoming>,
    reason: &str,
    delivered: u64,
    label: &'static str,
) -> Outcome {
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(DEADLETTER_REASON, header_safe(reason).as_str());
    headers.insert(DEADLETTER_STAGE, inner.stage.name.as_str());
    headers.insert(DEADLETTER_SUBJECT, message.subject.as_str());
    let sequence = incoming.map_or_else(
        || message.info().map(|i| i.stream_sequence).unwrap_or_default(),
        |i| i.stream_sequence,
    );
    headers.insert(DEADLETTER_SEQUENCE, sequence.to_string().as_str());
    headers.insert(DEADLETTER_DELIVERIES, delivered.to_string().as_str());
    let id = format!("{}-{}", subjects::sanitize_token(&inner.stage.name), sequence);
    let subject = subjects::deadletter_subject(&inner.stage.name);
    match fabric::publish_raw(
        &inner.topology.jetstream,
        &subject,
        headers,
        message.payload.clone(),
        &id,
    )
    .await
    {
        Ok(_) => ack(message, AckKind::Term, Outcome::GaveUp(label)).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot dead-letter the event, handing it back");
            ack(
                message,
                AckKind::Nak(Some(backoff(&inner.settings, delivered))),
                Outcome::Retried,
            )
            .await
        }
    }
}

/// Header values are single lines of printable text.
fn header_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

async fn ack(message: &Message, kind: AckKind, outcome: Outcome) -> Outcome {
    if let Err(e) = message.ack_with(kind).await {
        // The server redelivers after ack_wait; idempotency makes that harmless.
        tracing::warn!(error = %e, "acknowledgement not sent");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = RunnerSettings {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RunnerSettings::default()
        };
        let delays: Vec<_> = (1..=6).map(|n| backoff(&s, n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&s, 0).as_millis(), 100);
        assert_eq!(backoff(&s, u64::MAX), Duration::from_secs(1));
    }

    #[test]
    fn handled_keys_are_valid_kv_keys() {
        let k = handled_key("my stage", "id with spaces/and:colons");
        assert!(k.starts_with("my_stage."));
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'));
    }
}
