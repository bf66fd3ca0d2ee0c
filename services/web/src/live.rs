//! The live event log: `GET /events/live` is a stream of server-sent events, one `event: baton`
//! per new event the filters admit, its data the event's JSON row (as `/api/events` gives it).
//! It is fed by the view's own subscription to the stream (`baton.events.>`, the ordered
//! consumer that keeps the view current), so a row arrives with its stream sequence, and no
//! request opens a NATS subscription of its own. A subscriber too slow to keep up skips what it
//! missed; every stream ends at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::http::{ApiError, Params};
use crate::query;
use crate::shared::Shared;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /events/live?app=&type=&environment=&release=&since=&until=`.
///
/// # Errors
/// 400 naming a bad parameter.
pub async fn stream(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let params = Params::parse(raw.as_deref(), query::EVENT_PARAMS)?;
    let mut filter = query::event_filter(&params, chrono::Utc::now())?;
    // A live stream is about what comes next: `since` and `until` of the page it serves are
    // about the past.
    filter.since = None;
    filter.until = None;
    let receiver = shared.live.subscribe();
    let stop = shared.shutdown.clone();
    let events = futures::stream::unfold((receiver, stop, filter), |(mut receiver, stop, filter)| async move {
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return None,
                next = receiver.recv() => next,
            };
            match next {
                Ok(event) if filter.admits(&event) => {
                    let data = serde_json::to_string(&*event).unwrap_or_default();
                    let sse = Event::default()
                        .event("baton")
                        .id(event.sequence.to_string())
                        .data(data);
                    return Some((Ok(sse), (receiver, stop, filter)));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "a live subscriber fell behind");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
