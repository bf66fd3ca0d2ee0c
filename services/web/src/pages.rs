//! The server-rendered pages: askama templates (`templates/`, compiled with the crate, every
//! value HTML-escaped unless a template says otherwise, which only the server-made SVG charts
//! do), filled from the same data the JSON API answers with. Times are shown relative to the
//! request ("3m ago") with the exact time in a `<time>` element.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::http::{PageError, Params, WebError};
use crate::logs::{self, Log};
use crate::query;
use crate::release::{self, ReleaseDetail, segment};
use crate::shared::Shared;
use crate::view::matrix::MatrixCell;
use crate::view::{EventOut, short_type};

/// The page that says what went wrong.
#[derive(Debug, Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// The status's words.
    pub title: String,
    /// What went wrong and how to fix it.
    pub message: String,
}

/// How long ago `t` was, seen at `now`, in a few characters.
pub fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds();
    match s {
        s if s < 0 => "just now".to_owned(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// A duration in seconds, short.
pub fn took(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.1}h", seconds / 3600.0)
    } else if seconds >= 60.0 {
        format!("{}m{:02}s", (seconds / 60.0).floor(), (seconds % 60.0).floor())
    } else if seconds >= 1.0 {
        format!("{seconds:.1}s")
    } else {
        format!("{}ms", (seconds * 1000.0).round())
    }
}

/// The first `n` characters of `s` (ids, shas and digests are ASCII).
pub fn short(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

/// An RFC 3339 time for `<time datetime>`.
pub fn stamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What templates call to format ids, times and durations.
trait Helpers {
    /// The request's time.
    fn now(&self) -> DateTime<Utc>;

    /// How long ago `t` was.
    fn ago(&self, t: &DateTime<Utc>) -> String {
        ago(self.now(), *t)
    }

    /// `t` for `<time datetime>`.
    fn stamp(&self, t: &DateTime<Utc>) -> String {
        stamp(t)
    }

    /// The first `n` characters of `s`.
    fn short<'a>(&self, s: &'a str, n: usize) -> &'a str {
        short(s, n)
    }

    /// A duration, short.
    fn took(&self, seconds: &f64) -> String {
        took(*seconds)
    }
}

/// The environment matrix.
#[derive(Debug, Template)]
#[template(path = "matrix.html")]
pub struct MatrixPage {
    title: &'static str,
    now: DateTime<Utc>,
    environments: Vec<String>,
    rows: Vec<(String, Vec<MatrixCell>)>,
}

impl Helpers for MatrixPage {
    fn now(&self) -> DateTime<Utc> {
        self.now
    }
}

/// `GET /`.
///
/// # Errors
/// 400 for any query parameter.
pub async fn matrix(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Result<Html<String>, PageError> {
    Params::parse(raw.as_deref(), &[])?;
    let now = Utc::now();
    let matrix = shared.read().matrix(now);
    let page = MatrixPage {
        title: "Environments",
        now,
        environments: matrix.environments,
        rows: matrix.apps.into_iter().map(|r| (r.app, r.cells)).collect(),
    };
    Ok(Html(page.render()?))
}

/// A release.
#[derive(Debug, Template)]
#[template(path = "release.html")]
pub struct ReleasePage {
    title: String,
    now: DateTime<Utc>,
    release: ReleaseDetail,
}

impl Helpers for ReleasePage {
    fn now(&self) -> DateTime<Utc> {
        self.now
    }
}

/// `GET /releases/{id}`.
///
/// # Errors
/// 404 naming the id.
pub async fn release(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Html<String>, PageError> {
    Params::parse(raw.as_deref(), &[])?;
    let release = release::detail(&shared, &id).await?;
    let page = ReleasePage {
        title: format!("Release {} of {}", short(&release.id, 12), release.app),
        now: Utc::now(),
        release,
    };
    Ok(Html(page.render()?))
}

/// The event log.
#[derive(Debug, Template)]
#[template(path = "events.html")]
pub struct EventsPage {
    title: &'static str,
    now: DateTime<Utc>,
    events: Vec<EventOut>,
    /// The filters, to show and to hand to the live stream.
    filters: Vec<(&'static str, String)>,
    /// `/events/live?<filters>`.
    live_url: String,
    types: Vec<String>,
}

impl Helpers for EventsPage {
    fn now(&self) -> DateTime<Utc> {
        self.now
    }
}

/// `GET /events?app=&type=&environment=&release=&since=&until=&limit=`.
///
/// # Errors
/// 400 naming a bad parameter.
pub async fn events(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Result<Html<String>, PageError> {
    let params = Params::parse(raw.as_deref(), query::EVENT_PARAMS)?;
    let now = Utc::now();
    let filter = query::event_filter(&params, now)?;
    let limit = query::limit(&params)?;
    let events = shared.read().events(&filter, limit);
    let filters: Vec<(&'static str, String)> = query::EVENT_PARAMS
        .iter()
        .filter_map(|name| params.get(name).map(|v| (*name, v.to_owned())))
        .collect();
    let live: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            filters
                .iter()
                .filter(|(n, _)| !matches!(*n, "since" | "until" | "limit")),
        )
        .finish();
    let page = EventsPage {
        title: "Event log",
        now,
        events,
        live_url: if live.is_empty() {
            "/events/live".to_owned()
        } else {
            format!("/events/live?{live}")
        },
        filters,
        types: baton_schemas::EventType::ALL.iter().map(|t| short_type(*t)).collect(),
    };
    Ok(Html(page.render()?))
}

/// A step's log.
#[derive(Debug, Template)]
#[template(path = "log.html")]
pub struct LogPage {
    title: String,
    log: Log,
}

/// `GET /logs/{run}/{step}`.
///
/// # Errors
/// 404 when there is no such log.
pub async fn log(
    State(shared): State<Arc<Shared>>,
    Path((run, step)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Html<String>, PageError> {
    Params::parse(raw.as_deref(), &[])?;
    let log = logs::read(&shared.logs, &run, &step).await?;
    let page = LogPage {
        title: format!("Log of {} in {}", log.step, log.run),
        log,
    };
    Ok(Html(page.render()?))
}

/// Any other path.
pub async fn not_found(uri: axum::http::Uri) -> PageError {
    PageError(WebError::NotFound(format!(
        "nothing at {}; start from the matrix (/), the event log (/events) or DORA (/dora)",
        uri.path()
    )))
}

/// The one script: live updates of the event log.
pub const LIVE_JS: &str = include_str!("../static/live.js");
/// The one style sheet.
pub const STYLE_CSS: &str = include_str!("../static/style.css");
/// The icon every page names (without one, browsers ask for `/favicon.ico` and get a 404).
pub const FAVICON_SVG: &str = include_str!("../static/favicon.svg");

/// `GET /static/live.js`.
pub async fn live_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        LIVE_JS,
    )
        .into_response()
}

/// `GET /static/style.css`.
pub async fn style_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE_CSS,
    )
        .into_response()
}

/// `GET /static/favicon.svg`.
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        FAVICON_SVG,
    )
        .into_response()
}

/// A release's page address.
pub fn release_url(id: &str) -> String {
    format!("/releases/{}", segment(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short() {
        let now = "2024-05-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(ago(now, now - chrono::TimeDelta::seconds(30)), "30s ago");
        assert_eq!(ago(now, now - chrono::TimeDelta::minutes(90)), "1h ago");
        assert_eq!(took(0.25), "250ms");
        assert_eq!(took(75.0), "1m15s");
    }
}
