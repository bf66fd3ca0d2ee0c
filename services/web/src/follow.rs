//! Keeping the view current: an ordered consumer on the events stream from its first message
//! (the catch-up), then live, observing each event once (into the view, and into the DORA
//! ledger when it is one of the types DORA reads); and a watch on the promoter's keys and the
//! deployer's drift records in the state bucket (every retained revision, then each change). Neither leaves anything on the
//! server: both are ephemeral consumers that the server removes when the service goes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_nats::jetstream::consumer::{self, pull::OrderedConfig};
use async_nats::jetstream::kv;
use baton_kit::dora;
use baton_kit::log::Record;
use baton_kit::service::StartError;
use baton_schemas::subjects;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// The keys of the state bucket the web reads: the promoter's, and the deployer's drift records.
const STATE_KEYS: [&str; 2] = ["promoter.>", "deployer.drift.>"];

/// Follows the events stream until `stop` is cancelled.
///
/// # Errors
/// When the stream cannot be read at all.
pub async fn events(shared: Arc<Shared>, stop: CancellationToken) -> Result<(), StartError> {
    let mut stream = shared.events.clone();
    let info = stream
        .info()
        .await
        .map_err(|e| StartError::failed("cannot read the events stream's state", e))?;
    let target = info.state.last_sequence;
    shared.progress.target.store(target, Ordering::Relaxed);
    if info.state.messages == 0 {
        shared.progress.events_caught_up.store(true, Ordering::Release);
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: vec![subjects::ALL_EVENTS.to_owned()],
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| StartError::failed("cannot create the event log's ordered consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| StartError::failed("cannot read the event log", e))?;
    let started = Instant::now();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // The ordered consumer recreates itself after a gap or a lost connection.
                tracing::warn!(error = %e, "reading the event log failed; resuming");
                continue;
            }
            None => {
                return Err(StartError::failed(
                    "the event log ended",
                    std::io::Error::other("no more messages"),
                ));
            }
        };
        let Ok(info) = message.info() else { continue };
        let sequence = info.stream_sequence;
        if let Some(record) = Record::decode(&message.subject, message.headers.as_ref(), &message.payload, sequence) {
            let live = shared.live.receiver_count() > 0;
            let mut view = shared.write();
            view.observe(&record);
            let out = live.then(|| view.latest()).flatten();
            drop(view);
            if let Some(out) = out {
                let _ = shared.live.send(Arc::new(out));
            }
            if record.event_type().is_some_and(|ty| dora::EVENT_TYPES.contains(&ty)) {
                shared.dora_mut().observe(&record.event);
            }
        }
        shared.progress.observed.store(sequence, Ordering::Relaxed);
        if sequence >= target && !shared.progress.events_caught_up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                events = sequence,
                seconds = started.elapsed().as_secs_f64(),
                "caught up with the event log"
            );
        }
    }
}

/// Follows the promoter's keys until `stop` is cancelled.
///
/// # Errors
/// When the bucket cannot be watched.
pub async fn state(shared: Arc<Shared>, kv: kv::Store, stop: CancellationToken) -> Result<(), StartError> {
    let mut any = false;
    for keys in STATE_KEYS {
        any |= kv
            .stream
            .info_with_subjects(format!("{}{keys}", kv.prefix))
            .await
            .map_err(|e| StartError::failed("cannot read the state bucket", e))?
            .try_next()
            .await
            .map_err(|e| StartError::failed("cannot read the state bucket", e))?
            .is_some();
    }
    if !any {
        shared.progress.state_loaded.store(true, Ordering::Release);
    }
    let mut entries = kv
        .watch_many_with_history(STATE_KEYS)
        .await
        .map_err(|e| StartError::failed("cannot watch the state bucket", e))?;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = entries.next() => next,
        };
        let entry = match next {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching the state bucket failed; resuming");
                continue;
            }
            None => {
                return Err(StartError::failed(
                    "the state watch ended",
                    std::io::Error::other("no more entries"),
                ));
            }
        };
        let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
        shared.write().apply_state(&entry.key, value);
        if entry.delta == 0 {
            shared.progress.state_loaded.store(true, Ordering::Release);
        }
    }
}
