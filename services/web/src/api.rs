//! The JSON API behind every page (docs/web.md): what a page shows, as data, for other tools.
//! Every answer is computed from the view (or, for a release, its events fetched by sequence);
//! none re-reads the stream.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;

use crate::http::{ApiError, Params, WebError};
use crate::logs::{self, Log};
use crate::query;
use crate::release::{self, ReleaseDetail};
use crate::shared::Shared;
use crate::view::EventOut;
use crate::view::matrix::Matrix;

/// `GET /api/matrix`.
///
/// # Errors
/// 400 for any query parameter (it takes none).
pub async fn matrix(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Result<Json<Matrix>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(shared.read().matrix(chrono::Utc::now())))
}

/// One app of `/api/apps`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOut {
    /// Its name.
    pub app: String,
    /// Its subject token.
    pub token: String,
    /// How many releases it had.
    pub releases: usize,
    /// The newest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_release: Option<String>,
}

/// `GET /api/apps`.
///
/// # Errors
/// 400 for any query parameter.
pub async fn apps(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Result<Json<Vec<AppOut>>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    let view = shared.read();
    let mut apps: Vec<AppOut> = view
        .apps
        .iter()
        // Records of commands that concern no app are filed under a token that is no app's.
        .filter(|a| &*a.token != baton_schemas::subjects::NO_APP)
        .map(|a| AppOut {
            app: a.name.to_string(),
            token: a.token.to_string(),
            releases: a.releases.len(),
            latest_release: a.releases.last().map(|r| view.releases[*r as usize].id.to_string()),
        })
        .collect();
    apps.sort_by(|a, b| a.app.cmp(&b.app));
    Ok(Json(apps))
}

/// `/api/events`'s answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsOut {
    /// Newest first.
    pub events: Vec<EventOut>,
    /// The last sequence the view has observed.
    pub last_sequence: u64,
}

/// `GET /api/events?app=&type=&environment=&release=&since=&until=&limit=`.
///
/// # Errors
/// 400 naming a bad parameter.
pub async fn events(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Result<Json<EventsOut>, ApiError> {
    let params = Params::parse(raw.as_deref(), query::EVENT_PARAMS)?;
    let filter = query::event_filter(&params, chrono::Utc::now())?;
    let limit = query::limit(&params)?;
    let view = shared.read();
    Ok(Json(EventsOut {
        events: view.events(&filter, limit),
        last_sequence: view.last_sequence,
    }))
}

/// `GET /api/releases/{id}`.
///
/// # Errors
/// 404 naming the id.
pub async fn release(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReleaseDetail>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(release::detail(&shared, &id).await?))
}

/// `GET /api/logs/{run}/{step}`.
///
/// # Errors
/// 404 when there is no such log.
pub async fn log(
    State(shared): State<Arc<Shared>>,
    Path((run, step)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Log>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(logs::read(&shared.logs, &run, &step).await?))
}

/// Any other path under `/api/`.
pub async fn not_found() -> ApiError {
    ApiError(WebError::NotFound(
        "no such API route; docs/web.md lists them: /api/matrix, /api/apps, /api/events, /api/releases/<id>, /api/logs/<run>/<step>, /api/dora".to_owned(),
    ))
}
