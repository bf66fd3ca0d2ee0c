//! The web as a [`Service`]: `build` validates the config, connects, checks the topology and
//! binds; `run_until_stopped` serves the pages and the API while the followers keep the view
//! current, until shutdown. `/readyz` answers 503 until the catch-up is done. `main`, `baton up`
//! and the tests use the same two calls (tests bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use baton_kit::service::{self, Env, HttpService, Runtime, Service, StartError};
use baton_kit::settings::Settings;
use baton_kit::source::Sources;
use baton_schemas::config::web::WebSettings;
use tokio_util::sync::CancellationToken;

use crate::layers::Layers;
use crate::metrics::{self, WebMetrics};
use crate::shared::Shared;
use crate::view::View;
use crate::{api, config, dora, follow, http, live, pages};

/// The service name: NATS connection name, OTel `service.name`.
pub const SERVICE: &str = "baton-web";

/// A built web service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    /// The pages, the API and the operations endpoint, bound; it also owns the config repo's
    /// mirror when that is in a temporary directory, so it is removed when the web stops.
    service: HttpService,
    /// The view the followers keep current and the handlers read.
    shared: Arc<Shared>,
}

impl Service for Application {
    const NAME: &'static str = SERVICE;
    type Config = WebSettings;

    /// Validates the config, connects to NATS, checks the provisioned topology and binds
    /// `http.listen`. The view fills once running.
    async fn build(settings: Settings<WebSettings>, env: Env<'_>) -> Result<Self, StartError> {
        let web = config::resolve(&settings.service, env)?;
        let runtime = Runtime::start(SERVICE, &settings.common).await?;
        let metrics = WebMetrics::default();
        metrics.register(&runtime.metrics);
        let (config_repo, cache) = match web.config_repo {
            Some(repo) => {
                let (dir, cache) = service::cache_dir(web.cache_dir.as_deref(), SERVICE)?;
                (Some((Sources::new(dir, web.credentials.clone()), repo)), cache)
            }
            None => (None, None),
        };
        let registry = web
            .registry
            .as_ref()
            .map(|r| Layers::new(&r.address, r.insecure, r.username.clone(), r.password.as_ref()));
        let shared = Arc::new(Shared::new(
            View::new(web.max_events),
            runtime.topology.events.clone(),
            runtime.topology.logs.clone(),
            config_repo,
            registry,
            metrics,
        ));
        let router = router(&runtime, Arc::clone(&shared));
        Ok(Self {
            service: HttpService::bind(runtime, router, cache).await?,
            shared,
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Serves and follows the stream and the state until `shutdown` is cancelled, then drains.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        tracing::info!(addr = %self.local_addr(), "{SERVICE} serving; catching up with the event log");
        let shared = self.shared;
        let state = self.service.runtime().topology.state.clone();
        // Live streams never end by themselves: they end at shutdown so the server can stop.
        let live = Arc::clone(&shared);
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            live.shutdown.cancel();
        });
        self.service
            .serve(
                |stop| async move {
                    tokio::try_join!(
                        follow::events(Arc::clone(&shared), stop.clone()),
                        follow::state(Arc::clone(&shared), state, stop),
                    )
                    .map(|_| ())
                },
                shutdown,
            )
            .await
    }
}

/// Every route: the operations endpoint, the pages, the live stream, the JSON API; behind the
/// failure counter, the readiness gate and the security headers.
fn router(runtime: &Runtime, shared: Arc<Shared>) -> Router {
    let web = Router::new()
        .route("/", get(pages::matrix))
        .route("/releases/{id}", get(pages::release))
        .route("/events", get(pages::events))
        .route("/events/live", get(live::stream))
        .route("/dora", get(dora::page))
        .route("/logs/{run}/{step}", get(pages::log))
        .route("/static/live.js", get(pages::live_js))
        .route("/static/style.css", get(pages::style_css))
        .route("/static/favicon.svg", get(pages::favicon))
        .route("/api/matrix", get(api::matrix))
        .route("/api/apps", get(api::apps))
        .route("/api/events", get(api::events))
        .route("/api/releases/{id}", get(api::release))
        .route("/api/dora", get(dora::api))
        .route("/api/logs/{run}/{step}", get(api::log))
        .route("/api", get(api::not_found))
        .route("/api/{*rest}", get(api::not_found))
        .fallback(pages::not_found)
        .with_state(Arc::clone(&shared));
    runtime
        .router()
        .merge(web)
        .layer(middleware::from_fn_with_state(
            shared.metrics.clone(),
            metrics::count_failures,
        ))
        .layer(middleware::from_fn_with_state(shared, readiness))
        .layer(middleware::from_fn(http::guard))
}

/// `/readyz` is 503 until the view has caught up; the kit's check (NATS, the stream) follows.
async fn readiness(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/readyz" && !shared.progress.ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", shared.progress.missing()),
        )
            .into_response();
    }
    next.run(request).await
}
