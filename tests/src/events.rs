//! Reading what the services published: every event of one type in the events stream, decoded
//! and validated against the schema of its type, for suites to assert on.

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
    let stream = js.get_stream("BATON_EVENTS").await?;
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
                anyhow::bail!("an event without JSON data")
            };
            baton_schemas::validate_event(ty, data)?;
            out.push(serde_json::from_value(data.clone())?);
        }
    }
    Ok(out)
}
