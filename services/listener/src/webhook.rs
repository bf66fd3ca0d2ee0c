//! `POST /webhooks/<provider>`: verify, parse, filter, publish, and only then answer 2xx.
//!
//! Order of checks: the provider in the path (404), the body size (413), its content type and
//! JSON (415/400), the repository (404), the signature over the raw bytes (401), the event
//! type (202 "ignored" for anything but a push), then each pushed ref (202 "ignored" for
//! deletions and untracked refs). Accepted pushes are recorded ([`push::record`]): published as
//! `change.merged` unless their commit was released on that ref already. The answer is 202 once
//! every one is recorded, or 503 if NATS did not answer in time, so the host retries (the
//! deterministic event id makes the retry harmless).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_schemas::config::listener::WebhookSettings;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Repositories;
use crate::providers::{self, BodyError, Delivery, PayloadError, Provider, SignatureError};
use crate::push;

/// Everything the webhook endpoint needs.
#[derive(Debug, Clone)]
pub struct WebhookState {
    /// The configured repositories.
    pub repositories: Repositories,
    /// Where events are published.
    pub jetstream: jetstream::Context,
    /// The `baton-state` bucket, where each released commit is claimed per ref.
    pub state: kv::Store,
    /// Body limit, generic signature header, publish timeout.
    pub settings: Arc<WebhookSettings>,
    /// Request counters.
    pub metrics: WebhookMetrics,
}

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `github`, `gitlab`, … or `unknown`.
    pub provider: String,
    /// `accepted`, `duplicate`, `already_released`, `ignored`, `ping`, `unauthorized`,
    /// `not_found`, `bad_request`, `unsupported_media_type`, `too_large`, `unavailable`.
    pub outcome: String,
}

/// The listener's own metrics.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    /// Webhook requests by provider and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Requests refused for a missing or wrong signature, by provider.
    pub rejected_signatures: Family<RequestLabels, Counter>,
}

impl WebhookMetrics {
    /// Registers the counters in the service's registry.
    pub fn register(&self, metrics: &baton_kit::metrics::Metrics) {
        metrics.with_registry(|r| {
            r.register(
                "webhook_requests",
                "Webhook requests by provider and outcome",
                self.requests.clone(),
            );
            r.register(
                "webhook_rejected_signatures",
                "Webhook requests refused for a missing or wrong signature",
                self.rejected_signatures.clone(),
            );
        });
    }

    fn count(&self, provider: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// What was wrong with a webhook request. Every message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `/webhooks/<provider>` names no provider Baton knows.
    #[error(
        "unknown provider `{0}`: use /webhooks/github, /webhooks/gitlab, /webhooks/gitea, /webhooks/bitbucket or /webhooks/generic"
    )]
    UnknownProvider(String),
    /// The body is over the limit.
    #[error(
        "the body is larger than {limit} bytes (webhook.max_body_bytes); push fewer commits at once or raise the limit"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Wrong content type or malformed JSON.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The repository is not configured for this provider.
    #[error("repository `{name}` is not configured for {provider}: add it to the listener's `repositories`")]
    UnknownRepository {
        /// The provider.
        provider: &'static str,
        /// The repository name from the payload.
        name: String,
    },
    /// The payload names no repository.
    #[error("the payload names no repository (expected the {provider} push format)")]
    NoRepository {
        /// The provider.
        provider: &'static str,
    },
    /// Missing or wrong signature.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A required field of the push is missing or malformed.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// NATS (the state bucket or JetStream) did not record the push in time.
    #[error("Baton cannot record the push right now ({0}); retry the delivery")]
    Unavailable(String),
}

impl WebhookError {
    fn status(&self) -> StatusCode {
        match self {
            Self::UnknownProvider(_) | Self::UnknownRepository { .. } => StatusCode::NOT_FOUND,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(BodyError::UnsupportedContentType { .. }) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Body(_) | Self::NoRepository { .. } | Self::Payload(_) => StatusCode::BAD_REQUEST,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Label for the request counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::UnknownProvider(_) | Self::UnknownRepository { .. } => "not_found",
            Self::TooLarge { .. } => "too_large",
            Self::Body(BodyError::UnsupportedContentType { .. }) => "unsupported_media_type",
            Self::Body(_) | Self::NoRepository { .. } | Self::Payload(_) => "bad_request",
            Self::Signature(_) => "unauthorized",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        (self.status(), Json(serde_json::json!({"error": self.to_string()}))).into_response()
    }
}

/// One recorded push in the answer.
#[derive(Debug, Serialize)]
struct AcceptedPush {
    /// The event on the stream that started the release.
    event: String,
    /// The release (`chainId`).
    release: String,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// Whether the release existed before this request: a redelivery, or a commit released
    /// on this ref already.
    duplicate: bool,
    /// Whether another push released this commit on this ref already, so this one published
    /// nothing.
    already_released: bool,
    /// Why nothing was published, for an already released commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Answer {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    accepted: Vec<AcceptedPush>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignored: Vec<String>,
}

/// The handler of `POST /webhooks/{provider}`.
pub async fn receive(
    State(state): State<WebhookState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let label = provider.parse::<Provider>().map(Provider::as_str).unwrap_or("unknown");
    match handle(&state, &provider, &headers, body).await {
        Ok((status, outcome, answer)) => {
            state.metrics.count(label, outcome);
            (status, Json(answer)).into_response()
        }
        Err(e) => {
            state.metrics.count(label, e.metric_label());
            if matches!(e, WebhookError::Signature(_)) {
                state
                    .metrics
                    .rejected_signatures
                    .get_or_create(&RequestLabels {
                        provider: label.into(),
                        outcome: "rejected".into(),
                    })
                    .inc();
            }
            if matches!(e, WebhookError::Unavailable(_)) {
                tracing::error!(provider = label, error = %e, "webhook not recorded");
            } else {
                tracing::info!(provider = label, error = %e, "webhook refused");
            }
            e.into_response()
        }
    }
}

async fn handle(
    state: &WebhookState,
    provider: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, &'static str, Answer), WebhookError> {
    let provider: Provider = provider
        .parse()
        .map_err(|_| WebhookError::UnknownProvider(provider.to_owned()))?;
    let limit = state.settings.max_body_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| WebhookError::TooLarge { limit })?;
    let json = providers::parse_body(provider, headers, &body)?;
    let name = providers::repository_full_name(provider, &json).ok_or(WebhookError::NoRepository {
        provider: provider.as_str(),
    })?;
    let repo = state
        .repositories
        .webhook_target(provider, &name)
        .ok_or_else(|| WebhookError::UnknownRepository {
            provider: provider.as_str(),
            name: name.clone(),
        })?;
    match &repo.secret {
        Some(secret) => providers::verify_signature(
            provider,
            headers,
            &body,
            secret.expose(),
            &state.settings.generic_signature_header,
        )?,
        None => {
            tracing::warn!(repository = %repo.name, "accepting an UNSIGNED webhook: `insecure: true` is for local experiments only")
        }
    }
    let delivery_id = providers::delivery_id(provider, headers).unwrap_or_else(|| {
        // No delivery id: the body's hash still makes an exact redelivery a duplicate.
        format!("sha256-{}", hex::encode(Sha256::digest(&body)))
    });
    let pushes = match providers::interpret(provider, headers, &json)? {
        Delivery::Ping => {
            return Ok((
                StatusCode::OK,
                "ping",
                Answer {
                    ignored: vec!["pong: the webhook is set up".into()],
                    ..Answer::default()
                },
            ));
        }
        Delivery::Ignored { reason } => {
            return Ok((
                StatusCode::ACCEPTED,
                "ignored",
                Answer {
                    ignored: vec![reason],
                    ..Answer::default()
                },
            ));
        }
        Delivery::Push(pushes) => pushes,
    };

    let mut answer = Answer::default();
    let mut accepted = Vec::new();
    for p in &pushes {
        match push::accept(repo, p) {
            Ok(()) => accepted.push(p),
            Err(push::Ignored(reason)) => answer.ignored.push(reason),
        }
    }
    if accepted.is_empty() {
        tracing::info!(repository = %repo.name, delivery = %delivery_id, reasons = ?answer.ignored, "push ignored");
        return Ok((StatusCode::ACCEPTED, "ignored", answer));
    }
    let timeout = state.settings.publish_timeout;
    let (mut any_new, mut any_released) = (false, false);
    for p in accepted {
        let recorded = tokio::time::timeout(
            timeout,
            push::record(&state.state, &state.jetstream, repo, provider.as_str(), &delivery_id, p),
        )
        .await
        .map_err(|_| WebhookError::Unavailable(format!("NATS did not answer within {}", fmt_duration(timeout))))?
        .map_err(|e| WebhookError::Unavailable(e.to_string()))?;
        let (event, release, duplicate, reason) = match recorded {
            push::Recorded::Published {
                event,
                release,
                duplicate,
            } => {
                tracing::info!(
                    repository = %repo.name, delivery = %delivery_id, event.id = %event, chain.id = %release,
                    git_ref = %p.git_ref, sha = %p.after, duplicate, "push recorded"
                );
                any_new |= !duplicate;
                (event, release, duplicate, None)
            }
            push::Recorded::AlreadyReleased(first) => {
                tracing::info!(
                    repository = %repo.name, delivery = %delivery_id, git_ref = %p.git_ref, sha = %p.after,
                    chain.id = %first.release, first.event = %first.event, first.delivery = %first.delivery,
                    first.at = %first.at, "push of an already released commit recorded; no new release"
                );
                any_released = true;
                let reason = first.reason();
                (first.event, first.release, true, Some(reason))
            }
        };
        answer.accepted.push(AcceptedPush {
            event,
            release,
            git_ref: p.git_ref.clone(),
            sha: p.after.clone(),
            duplicate,
            already_released: reason.is_some(),
            reason,
        });
    }
    let outcome = match (any_new, any_released) {
        (true, _) => "accepted",
        (false, true) => "already_released",
        (false, false) => "duplicate",
    };
    Ok((StatusCode::ACCEPTED, outcome, answer))
}

fn fmt_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
