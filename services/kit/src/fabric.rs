//! The NATS fabric: connecting, the JetStream topology's streams and buckets, and publishing
//! events.
//!
//! [`provision`] creates the streams, KV buckets and object store, or updates them in place when
//! their settings changed; it is idempotent and never destroys data. Only an admin may run it:
//! it is a part of [`crate::provision::apply`], the provisioning step, while services bind to
//! what was provisioned with [`crate::provision::check`]. Publishing always waits for the
//! JetStream ack and sets `Nats-Msg-Id` to the CloudEvent id, so a retried publish is stored once.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::{Client, HeaderMap};
use baton_schemas::config::{JetStreamSettings, NatsSettings};
use baton_schemas::subjects;
use bytes::Bytes;
use cloudevents::{AttributesReader, Event};

use crate::codec;
use crate::secret::Secret;

/// KV bucket of handled event ids (per stage), so a redelivered event is not handled twice.
pub const HANDLED_BUCKET: &str = "baton-handled";
/// KV bucket of small mutable state: current release per app/environment, last polled sha, …
pub const STATE_BUCKET: &str = "baton-state";
/// KV bucket of leases (one promotion per environment at a time), taken with compare-and-set.
pub const LOCKS_BUCKET: &str = "baton-locks";

/// What can go wrong talking to NATS. `is_transient` separates "try again" from "give up".
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// NATS could not be reached at start-up.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The configured URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
    /// A stream, bucket or object store could not be created or updated.
    #[error("cannot provision JetStream {what}: {source}")]
    Provision {
        /// Which piece, e.g. `stream BATON_EVENTS`.
        what: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
    /// A service found pieces of the topology missing: it refuses to start (it may not create
    /// them).
    #[error("the JetStream topology is not provisioned: missing {}; {}", missing.join(", "), crate::provision::FIX)]
    Unprovisioned {
        /// Each missing piece, e.g. `stream BATON_EVENTS`, `consumer builder of stream BATON_EVENTS`.
        missing: Vec<String>,
    },
    /// A provisioned piece does not fit the service: it refuses to start.
    #[error(
        "{what} is provisioned otherwise than this service needs ({differs}); {}",
        crate::provision::FIX
    )]
    Misprovisioned {
        /// The piece, e.g. `consumer builder of stream BATON_EVENTS`.
        what: String,
        /// How it differs.
        differs: String,
    },
    /// Provisioning would create a durable consumer on a stream that already holds events for
    /// it, and the operator has not said whether it skips or replays them.
    #[error(
        "consumer {consumer} is missing while stream {stream} holds events for it (the newest at sequence {sequence}): \
         created from the start it would handle every one again. Run `baton admin provision` again with \
         --consumer-history skip (start after the newest; events published since it went missing are not handled: \
         push again or promote by hand) or --consumer-history replay (handle them all again)"
    )]
    ConsumerHistory {
        /// The consumer (stage) name.
        consumer: String,
        /// The events stream.
        stream: String,
        /// Sequence of the newest event the consumer would receive.
        sequence: u64,
    },
    /// JetStream did not acknowledge a publish (NATS down, timeout, no stream).
    #[error("JetStream did not acknowledge the event published on {subject}: {source}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

impl FabricError {
    /// Whether trying again later may succeed: NATS comes back, but a topology that is missing,
    /// provisioned otherwise or waiting for an operator's choice stays so until someone acts.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Provision { .. } | Self::Publish { .. } => true,
            Self::Unprovisioned { .. } | Self::Misprovisioned { .. } | Self::ConsumerHistory { .. } => false,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Provision { .. } => "provision",
            Self::Unprovisioned { .. } => "unprovisioned",
            Self::Misprovisioned { .. } => "misprovisioned",
            Self::ConsumerHistory { .. } => "consumer_history",
            Self::Publish { .. } => "publish",
        }
    }
}

/// Connects to NATS, retrying until `connect_timeout`, with the service's name on the connection.
///
/// # Errors
/// When no server answered within the timeout, or the credentials file cannot be read.
pub async fn connect(settings: &NatsSettings, service: &str) -> Result<Client, FabricError> {
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    loop {
        let mut options = async_nats::ConnectOptions::new()
            .name(service)
            .connection_timeout(Duration::from_secs(2).min(settings.connect_timeout))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS, reconnecting")
                    }
                    other => tracing::debug!(event = %other, "NATS connection event"),
                }
            });
        if let Some(path) = &settings.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| FabricError::Connect {
                url: settings.url.clone(),
                source: format!("credentials file {}: {e}", path.display()).into(),
            })?;
        }
        if let Some(user) = &settings.user {
            let password = nats_password(settings).map_err(|reason| FabricError::Connect {
                url: settings.url.clone(),
                source: format!("the password of NATS user {user}: {reason}").into(),
            })?;
            let password = String::from_utf8(password.expose().to_vec()).map_err(|_| FabricError::Connect {
                url: settings.url.clone(),
                source: format!("the password of NATS user {user} is not UTF-8").into(),
            })?;
            // Answers (JetStream API, publish acks, pulled messages) come to an inbox prefix of
            // this user's own, which its NATS permissions can confine it to.
            options = options
                .user_and_password(user.clone(), password)
                .custom_inbox_prefix(inbox_prefix(user));
        }
        // `nats.url` may list several servers, comma-separated (a cluster's members).
        let servers: Vec<&str> = settings
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        match options.connect(servers).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, url = %settings.url, "NATS not reachable yet, retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(FabricError::Connect {
                    url: settings.url.clone(),
                    source: e.into(),
                });
            }
        }
    }
}

/// The inbox prefix of a connection as NATS user `user`: `_INBOX_<user>`, so
/// `deploy/base/nats/auth.conf` can let each user subscribe to its own replies only.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{}", subjects::sanitize_token(user))
}

/// The password of `nats.user`, from `nats.password_file` or the variable `nats.password_env`.
fn nats_password(settings: &NatsSettings) -> Result<Secret, String> {
    match (&settings.password_file, &settings.password_env) {
        (Some(path), _) => Secret::from_file(path),
        (None, Some(name)) => Secret::from_env(name, &|name| std::env::var(name).ok()),
        (None, None) => Err("set nats.password_env or nats.password_file".to_owned()),
    }
}

/// Handles to the provisioned JetStream topology.
#[derive(Clone)]
pub struct Topology {
    /// The JetStream context everything is reached through.
    pub jetstream: jetstream::Context,
    /// The events stream (the audit log).
    pub events: stream::Stream,
    /// The dead-letter stream.
    pub deadletter: stream::Stream,
    /// Handled event ids per stage.
    pub handled: kv::Store,
    /// Current releases, last polled shas, and other small state.
    pub state: kv::Store,
    /// Leases (locks) taken with compare-and-set.
    pub locks: kv::Store,
    /// Build and test logs.
    pub logs: object_store::ObjectStore,
    /// The settings the topology was provisioned from.
    pub settings: JetStreamSettings,
}

impl Topology {
    /// The handles to a topology provisioned from `settings`, one argument per piece in the
    /// order of the fields: what [`provision`] creates and [`crate::provision::check`] finds.
    #[allow(
        clippy::too_many_arguments,
        reason = "one handle per provisioned piece, as the fields list them"
    )]
    pub(crate) fn new(
        jetstream: jetstream::Context,
        events: stream::Stream,
        deadletter: stream::Stream,
        handled: kv::Store,
        state: kv::Store,
        locks: kv::Store,
        logs: object_store::ObjectStore,
        settings: &JetStreamSettings,
    ) -> Self {
        Self {
            jetstream,
            events,
            deadletter,
            handled,
            state,
            locks,
            logs,
            settings: settings.clone(),
        }
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("events", &self.settings.events_stream)
            .field("deadletter", &self.settings.deadletter_stream)
            .field("logs", &self.settings.logs_bucket)
            .finish_non_exhaustive()
    }
}

/// Stream configuration of the events stream.
pub fn events_stream_config(s: &JetStreamSettings) -> stream::Config {
    stream::Config {
        name: s.events_stream.clone(),
        description: Some("Baton events: the audit log of every release".into()),
        subjects: vec![subjects::ALL_EVENTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: s.events_max_age,
        duplicate_window: s.duplicate_window,
        num_replicas: s.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Stream configuration of the dead-letter stream.
pub fn deadletter_stream_config(s: &JetStreamSettings) -> stream::Config {
    stream::Config {
        name: s.deadletter_stream.clone(),
        description: Some("Baton dead letters: messages a stage could not handle, with the reason".into()),
        subjects: vec![subjects::ALL_DEADLETTERS.into()],
        storage: stream::StorageType::File,
        max_age: s.deadletter_max_age,
        duplicate_window: s.duplicate_window.min(s.deadletter_max_age.max(Duration::from_secs(1))),
        num_replicas: s.replicas,
        ..Default::default()
    }
}

/// Creates or updates the streams, KV buckets and object store (not the consumers: see
/// [`crate::provision::apply`]). Needs an admin's connection; services call
/// [`crate::provision::check`] instead.
///
/// # Errors
/// When JetStream refuses a configuration (e.g. more replicas than servers) or is unreachable.
pub async fn provision(
    client: &Client,
    settings: &JetStreamSettings,
    remember_handled: Duration,
) -> Result<Topology, FabricError> {
    let js = jetstream::new(client.clone());
    let events = ensure_stream(&js, events_stream_config(settings)).await?;
    let deadletter = ensure_stream(&js, deadletter_stream_config(settings)).await?;
    let handled = ensure_kv(
        &js,
        kv::Config {
            bucket: HANDLED_BUCKET.into(),
            description: "Event ids each stage has handled (idempotency)".into(),
            history: 1,
            max_age: remember_handled,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        },
    )
    .await?;
    let state = ensure_kv(
        &js,
        kv::Config {
            bucket: STATE_BUCKET.into(),
            description: "Baton state: current releases, last polled shas".into(),
            history: 16,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        },
    )
    .await?;
    let locks = ensure_kv(
        &js,
        kv::Config {
            bucket: LOCKS_BUCKET.into(),
            description: "Baton leases, taken with compare-and-set".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            // Per-message TTL: the server removes a lease its holder stopped renewing
            // (crate::lease), leaving a delete marker for a second.
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await?;
    let logs = match js.get_object_store(&settings.logs_bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: settings.logs_bucket.clone(),
                description: Some("Baton build and test logs".into()),
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| FabricError::Provision {
                what: format!("object store {}", settings.logs_bucket),
                source: e.into(),
            })?,
    };
    Ok(Topology::new(
        js, events, deadletter, handled, state, locks, logs, settings,
    ))
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream, FabricError> {
    let name = config.name.clone();
    let err = |e: async_nats::Error| FabricError::Provision {
        what: format!("stream {name}"),
        source: e,
    };
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let current = existing.info().await.map_err(|e| err(e.into()))?.config.clone();
            if differs(&current, &config) {
                tracing::info!(stream = %name, "updating stream configuration");
                js.update_stream(&config).await.map_err(|e| err(e.into()))?;
            }
            js.get_stream(&name).await.map_err(|e| err(e.into()))
        }
        Err(_) => js.create_stream(config.clone()).await.map_err(|e| err(e.into())),
    }
}

/// Only the settings Baton owns are compared, so fields the server fills in never trigger
/// a needless update.
fn differs(current: &stream::Config, wanted: &stream::Config) -> bool {
    current.subjects != wanted.subjects
        || current.max_age != wanted.max_age
        || current.duplicate_window != wanted.duplicate_window
        || current.num_replicas != wanted.num_replicas
        || current.description != wanted.description
}

async fn ensure_kv(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, FabricError> {
    let bucket = config.bucket.clone();
    js.create_or_update_key_value(config)
        .await
        .map_err(|e| FabricError::Provision {
            what: format!("key-value bucket {bucket}"),
            source: e.into(),
        })
}

/// The outcome of a publish JetStream acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Sequence of the event in the stream.
    pub sequence: u64,
    /// True when JetStream recognised the id and dropped this copy.
    pub duplicate: bool,
}

/// Publishes a CloudEvent in binary mode on `subject` and waits for the JetStream ack.
///
/// # Errors
/// When JetStream does not acknowledge (the caller retries; the id makes the retry safe).
pub async fn publish_event(js: &jetstream::Context, subject: &str, event: &Event) -> Result<Published, FabricError> {
    let (headers, payload) = codec::encode_binary(event);
    publish_raw(js, subject, headers, payload, &codec::percent_encode(event.id())).await
}

/// Publishes raw headers and payload with a message id, waiting for the JetStream ack.
///
/// # Errors
/// When JetStream does not acknowledge.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
    message_id: &str,
) -> Result<Published, FabricError> {
    send_raw(js, subject, headers, payload, message_id).await?.acked().await
}

/// A publish sent to JetStream whose ack has not been awaited yet. Publishes sent one after
/// another on a connection are stored in that order, so several can be in flight at once.
#[derive(Debug)]
#[must_use = "a publish is only safe once its ack has been awaited"]
pub struct Sent {
    subject: String,
    ack: jetstream::context::PublishAckFuture,
}

impl Sent {
    /// Waits for JetStream to acknowledge the publish.
    ///
    /// # Errors
    /// When JetStream does not acknowledge (the caller retries; the id makes the retry safe).
    pub async fn acked(self) -> Result<Published, FabricError> {
        let subject = self.subject;
        let ack = self.ack.await.map_err(|e| FabricError::Publish {
            subject,
            source: e.into(),
        })?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Sends raw headers and payload with a message id, without waiting for the ack.
///
/// # Errors
/// When the message could not be sent.
pub async fn send_raw(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
    message_id: &str,
) -> Result<Sent, FabricError> {
    let message = jetstream::message::PublishMessage::build()
        .headers(headers)
        .payload(payload)
        .message_id(message_id);
    let ack = js
        .send_publish(subject.to_owned(), message)
        .await
        .map_err(|e| FabricError::Publish {
            subject: subject.to_owned(),
            source: e.into(),
        })?;
    Ok(Sent {
        subject: subject.to_owned(),
        ack,
    })
}
