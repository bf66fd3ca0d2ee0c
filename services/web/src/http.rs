//! What every answer of the web has in common: the security headers (a Content-Security-Policy
//! without inline script or style, `nosniff`, no referrer), GET only (every other method is
//! 405), query parameters checked by name (an unknown or malformed one is a 400 naming it and
//! what it accepts), and errors that say what to fix, as JSON under `/api/` and as a page
//! elsewhere.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::metrics::Failure;

/// The Content-Security-Policy of every answer: scripts, styles and images only from this
/// origin (never inline), connections (the live event stream) only back to it, no plugins, no
/// framing, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Adds the security headers to every answer and refuses every method but GET and HEAD: the web
/// is read-only.
pub async fn guard(request: Request, next: Next) -> Response {
    let mut response = if matches!(*request.method(), Method::GET | Method::HEAD) {
        next.run(request).await
    } else {
        let mut refused = (
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not allowed: the web UI is read-only (GET only); approve, promote and roll back with the baton CLI or in chat\n",
                request.method()
            ),
        )
            .into_response();
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        refused
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A query parameter is unknown, repeated or malformed.
    #[error("query parameter `{name}`: {problem}")]
    BadParameter {
        /// The parameter.
        name: String,
        /// What is wrong and what it accepts.
        problem: String,
    },
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something the answer needs (the event stream, the log store) failed.
    #[error("{what}: {reason}")]
    Unavailable {
        /// What could not be read.
        what: String,
        /// Why.
        reason: String,
    },
    /// The page could not be rendered.
    #[error("the page could not be rendered: {0}")]
    Render(#[from] askama::Error),
}

impl WebError {
    /// `name` is wrong: `problem` says how and what it accepts.
    pub fn bad(name: &str, problem: impl Into<String>) -> Self {
        Self::BadParameter {
            name: name.to_owned(),
            problem: problem.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadParameter { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error's metric label: the `reason` of `baton_web_failed_requests_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadParameter { .. } => "bad_parameter",
            Self::NotFound(_) => "not_found",
            Self::Unavailable { .. } => "unavailable",
            Self::Render(_) => "render",
        }
    }

    fn parameter(&self) -> Option<&str> {
        match self {
            Self::BadParameter { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// A [`WebError`] answered as JSON: `{"error": …, "parameter": …}`.
#[derive(Debug)]
pub struct ApiError(pub WebError);

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self.0, WebError::Render(_) | WebError::Unavailable { .. }) {
            tracing::warn!(error = %self.0, "request failed");
        }
        let mut body = json!({ "error": self.0.to_string() });
        if let Some(name) = self.0.parameter() {
            body["parameter"] = json!(name);
        }
        let mut response = (self.0.status(), Json(body)).into_response();
        response.extensions_mut().insert(Failure::of(&self.0));
        response
    }
}

/// A [`WebError`] answered as a page.
#[derive(Debug)]
pub struct PageError(pub WebError);

impl<E: Into<WebError>> From<E> for PageError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if matches!(self.0, WebError::Render(_) | WebError::Unavailable { .. }) {
            tracing::warn!(error = %self.0, "page failed");
        }
        let status = self.0.status();
        let page = crate::pages::ErrorPage {
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message: self.0.to_string(),
        };
        let mut response = match askama::Template::render(&page) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, self.0.to_string()).into_response(),
        };
        response.extensions_mut().insert(Failure::of(&self.0));
        response
    }
}

/// The query parameters of a request, checked against the names a route accepts.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The parameters of `query`, refusing names not in `accepted` and repeated names.
    ///
    /// # Errors
    /// [`WebError::BadParameter`] naming the parameter.
    pub fn parse(query: Option<&str>, accepted: &[&str]) -> Result<Self, WebError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !accepted.contains(&name.as_ref()) {
                return Err(WebError::bad(
                    &name,
                    format!("unknown parameter; this page accepts {}", accepted.join(", ")),
                ));
            }
            if params.iter().any(|(n, _)| *n == name) {
                return Err(WebError::bad(&name, "given twice; give it once"));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self(params))
    }

    /// The value of `name`, when given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_repeated_parameters_are_named() {
        let e = Params::parse(Some("app=shop&colour=red"), &["app", "limit"]).unwrap_err();
        assert_eq!(e.parameter(), Some("colour"));
        assert!(e.to_string().contains("accepts app, limit"), "{e}");
        let e = Params::parse(Some("app=a&app=b"), &["app"]).unwrap_err();
        assert_eq!(e.parameter(), Some("app"));
        let p = Params::parse(Some("app=acme%2Fshop&limit="), &["app", "limit"]).unwrap();
        assert_eq!(p.get("app"), Some("acme/shop"));
        assert_eq!(p.get("limit"), None);
    }
}
