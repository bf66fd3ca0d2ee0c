//! The live event log: `GET /events/live` is a stream of server-sent events, one `event: baton`
//! per new event the filters admit, its data the event's JSON row (as `/api/events` gives it).
//! It is fed by the view's own subscription to the stream (`baton.events.>`, the ordered
//! consumer that keeps the view current), so a row arrives with its stream sequence, and no
//! request opens a NATS subscription of its own. A subscriber too slow to keep up skips what it
//! missed; every stream ends at shutdown. At most [`MAX_LIVE_STREAMS`] are open at once: one
//! more is a 503 (the page's script retries), not another connection held open.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::http::{ApiError, Params, WebError};
use crate::query;
use crate::shared::{MAX_LIVE_STREAMS, Shared};

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /events/live?app=&type=&environment=&release=&since=&until=`.
///
/// # Errors
/// 400 naming a bad parameter; 503 when [`MAX_LIVE_STREAMS`] are open.
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
    // The permit lives in the stream's state: it is given back when the client goes away.
    let slot = Arc::clone(&shared.live_slots)
        .try_acquire_owned()
        .map_err(|_| WebError::Unavailable {
            what: format!("{MAX_LIVE_STREAMS} live streams are open, the most this server keeps"),
            reason: "try again later, or reload the event log".to_owned(),
        })?;
    let receiver = shared.live.subscribe();
    let stop = shared.shutdown.clone();
    let state = (receiver, stop, filter, slot);
    let events = futures::stream::unfold(state, |(mut receiver, stop, filter, slot)| async move {
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
                    return Some((Ok(sse), (receiver, stop, filter, slot)));
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
