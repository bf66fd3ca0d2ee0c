//! Reading what the services published: every event of one type in the events stream, decoded
//! and validated against the schema of its type, for suites to assert on; and waiting until the
//! events a suite expects have arrived.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use baton_schemas::{CdEvent, EventType, subjects};
use futures::StreamExt;

/// Every event of type `ty` in `BATON_EVENTS` so far, in order, each validated against its
/// schema (a schema-invalid event fails the call).
///
/// # Errors
/// When the stream cannot be read or an event is not a valid CDEvent of its type.
pub async fn of(js: &jetstream::Context, ty: EventType) -> anyhow::Result<Vec<CdEvent>> {
    Ok(with_subjects(js, ty)
        .await?
        .into_iter()
        .map(|(_, event)| event)
        .collect())
}

/// [`of`], each event with the subject it was published on.
///
/// # Errors
/// As [`of`].
pub async fn with_subjects(js: &jetstream::Context, ty: EventType) -> anyhow::Result<Vec<(String, CdEvent)>> {
    let stream = js.get_stream("BATON_EVENTS").await?;
    // An ephemeral consumer, removed by the server once the suite stops reading.
    let mut c = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subjects::event_filter(ty),
            deliver_policy: consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await?;
    let pending = c.info().await?.num_pending;
    let mut out = Vec::new();
    if pending > 0 {
        let mut batch = c.fetch().max_messages(usize::try_from(pending)?).messages().await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            let ce = baton_kit::codec::decode(m.headers.as_ref(), &m.payload)?;
            let Some(cloudevents::Data::Json(data)) = ce.data() else {
                anyhow::bail!("an event without JSON data on {}", m.subject)
            };
            baton_schemas::validate_event(ty, data)?;
            out.push((m.subject.to_string(), serde_json::from_value(data.clone())?));
        }
    }
    Ok(out)
}

/// Waits until at least `count` events of type `ty` match `pred`, and returns the matching ones
/// (validated as by [`of`]).
///
/// # Errors
/// When the stream cannot be read, an event is invalid, or `timeout` passes first (the error
/// says how many matched).
pub async fn wait_for(
    js: &jetstream::Context,
    ty: EventType,
    count: usize,
    timeout: Duration,
    pred: impl Fn(&CdEvent) -> bool,
) -> anyhow::Result<Vec<CdEvent>> {
    crate::eventually(timeout, &format!("{count} {ty} events"), async || {
        let found: Vec<CdEvent> = of(js, ty).await?.into_iter().filter(|e| pred(e)).collect();
        Ok(if found.len() >= count {
            Ok(found)
        } else {
            Err(format!("{} arrived", found.len()))
        })
    })
    .await
}

/// The first event of type `ty` in release `release` (its `chainId`), once it has arrived.
///
/// # Errors
/// As [`wait_for`].
pub async fn wait_for_release(
    js: &jetstream::Context,
    ty: EventType,
    release: &str,
    timeout: Duration,
) -> anyhow::Result<CdEvent> {
    let mut found = wait_for(js, ty, 1, timeout, |e| e.context.chain_id.as_deref() == Some(release)).await?;
    Ok(found.swap_remove(0))
}
