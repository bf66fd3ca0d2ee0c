//! The operations endpoint every service serves: `/healthz` (the process is alive), `/readyz`
//! (NATS is connected and the events stream answers, followed by the warnings an operator must
//! see, such as steps running unsandboxed) and `/metrics` (Prometheus text).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the endpoint needs to answer.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// The service's NATS connection.
    pub client: async_nats::Client,
    /// Name of the events stream readiness checks.
    pub events_stream: String,
    /// The service's metrics.
    pub metrics: Metrics,
}

/// The router with the three operations routes; services may merge their own routes into it.
pub fn router(state: HealthState) -> Router {
    router_with_warnings(state, Vec::new())
}

/// [`router`], with `/readyz` adding each of `warnings` as a line `warning: …` after its
/// verdict, ready or not: what the service runs without that an operator must know about.
pub fn router_with_warnings(state: HealthState, warnings: Vec<String>) -> Router {
    let readiness = Readiness {
        warnings: warnings.into(),
        state: state.clone(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz).with_state(readiness))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// What `/readyz` needs: the health state and the warnings it repeats.
#[derive(Debug, Clone)]
struct Readiness {
    state: HealthState,
    warnings: Arc<[String]>,
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let (status, mut body) = verdict(&readiness.state).await;
    for warning in readiness.warnings.iter() {
        body.push_str(&format!("warning: {warning}\n"));
    }
    (status, body)
}

async fn verdict(state: &HealthState) -> (StatusCode, String) {
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: NATS is not connected\n".to_owned(),
        );
    }
    let js = jetstream::new(state.client.clone());
    match tokio::time::timeout(Duration::from_secs(2), js.get_stream(&state.events_stream)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: stream {} unreachable: {e}\n", state.events_stream),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: stream {} did not answer within 2s\n", state.events_stream),
        ),
    }
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.encode(),
    )
}

/// Binds `addr` and serves `router` until `shutdown` resolves. Returns the bound address
/// (useful with port 0) and the server task.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await });
    Ok((local, task))
}
