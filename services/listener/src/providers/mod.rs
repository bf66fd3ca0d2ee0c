//! Git hosts' push webhooks, verified and read into Baton's types.
//!
//! This is the part of the listener that knows each git host's dialect: which header carries
//! the signature and how it is computed, which header names the event, and where a push
//! payload keeps its ref, shas, commits and repository. Everything here is pure (no I/O, no
//! async), so the HTTP layer stays thin and every host's format is unit-tested against
//! fixtures shaped like real deliveries (`providers/fixtures/`).
//!
//! The HTTP layer calls, in order:
//! 1. [`parse_body`] — content type check and JSON parsing (GitHub's form-encoded
//!    `payload=` too);
//! 2. [`repository_full_name`] — to find the configured repository, and thus its secret,
//!    *before* trusting anything else in the body;
//! 3. [`verify_signature`] — over the raw body bytes, in constant time;
//! 4. [`interpret`] — the event as a [`Delivery`]: a ping, pushes, or something ignored.
//!
//! ```no_run
//! use baton_listener::providers::{self, Delivery, Provider};
//! # fn handle(headers: http::HeaderMap, body: bytes::Bytes, secret: &[u8]) -> anyhow::Result<()> {
//! let provider: Provider = "github".parse()?;
//! let json = providers::parse_body(provider, &headers, &body)?;
//! let _repo = providers::repository_full_name(provider, &json);
//! providers::verify_signature(
//!     provider,
//!     &headers,
//!     &body,
//!     secret,
//!     providers::DEFAULT_GENERIC_SIGNATURE_HEADER,
//! )?;
//! if let Delivery::Push(pushes) = providers::interpret(provider, &headers, &json)? {
//!     for push in pushes {
//!         println!("{} moved to {}", push.git_ref, push.after);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;

use baton_schemas::payloads::{CommitInfo, Person, RepositoryInfo};
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde_json::Value;

mod bitbucket;
mod fields;
mod generic;
mod gitea;
mod github;
mod gitlab;
mod signature;
#[cfg(test)]
mod test_support;

pub use fields::ZERO_SHA;

/// The header the generic provider reads its signature from unless the listener's config
/// names another one.
pub const DEFAULT_GENERIC_SIGNATURE_HEADER: &str = "X-Baton-Signature";

pub use baton_schemas::config::listener::{UnknownProviderError, WebhookProvider as Provider};

/// Why a request body could not be read as a webhook payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is not JSON (or, for GitHub, a form carrying JSON); the HTTP layer answers 415.
    #[error("unsupported content type `{found}`: configure the webhook with content type application/json")]
    UnsupportedContentType {
        /// The `Content-Type` the request carried (`none` when it had none).
        found: String,
    },
    /// The body is not a JSON object; the HTTP layer answers 400.
    #[error("the body is not a JSON object ({message}): send the git host's push payload unchanged")]
    MalformedJson {
        /// What is wrong, with serde's line and column when the JSON itself is broken.
        message: String,
    },
}

impl BodyError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BodyError::UnsupportedContentType { .. } => "unsupported_content_type",
            BodyError::MalformedJson { .. } => "malformed_json",
        }
    }
}

/// Why a delivery's signature (or token) was rejected; the HTTP layer answers 401.
///
/// Messages name the header and never include the secret or the expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request carries no signature.
    #[error("header `{header}` is missing: configure the webhook's secret on the git host to match the listener's")]
    Missing {
        /// The header that was expected.
        header: String,
    },
    /// The signature header is there but cannot be a valid signature.
    #[error(
        "header `{header}` is malformed ({problem}): check that the webhook posts to the listener's endpoint for its git host"
    )]
    Malformed {
        /// The offending header.
        header: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// The signature does not match the body and the configured secret.
    #[error(
        "header `{header}` does not match the listener's secret: configure the same secret on the git host and in the listener, and make sure nothing alters the body in transit"
    )]
    Mismatch {
        /// The header whose signature did not match.
        header: String,
    },
}

impl SignatureError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SignatureError::Missing { .. } => "signature_missing",
            SignatureError::Malformed { .. } => "signature_malformed",
            SignatureError::Mismatch { .. } => "signature_mismatch",
        }
    }
}

/// Why a verified payload could not be interpreted; the HTTP layer answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The header naming the event is absent.
    #[error("header `{header}` is missing: the git host sends it with every webhook delivery")]
    MissingHeader {
        /// The header that was expected.
        header: String,
    },
    /// The header naming the event is not readable text.
    #[error("header `{header}` is malformed ({problem})")]
    InvalidHeader {
        /// The offending header.
        header: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// A field of the payload is missing or has the wrong type.
    #[error("field `{field}` is invalid: {message}; send the git host's push payload unchanged")]
    InvalidField {
        /// JSON path of the field, e.g. `push.changes[0].new.target.hash`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl PayloadError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PayloadError::MissingHeader { .. } => "event_header_missing",
            PayloadError::InvalidHeader { .. } => "event_header_invalid",
            PayloadError::InvalidField { .. } => "invalid_field",
        }
    }
}

/// What a verified delivery asks Baton to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The host checks that the webhook works (GitHub's `ping` on creation, for one).
    Ping,
    /// Refs moved. Usually one push; a Bitbucket delivery carries one per changed ref.
    Push(Vec<Push>),
    /// An event Baton does not act on; the HTTP layer acknowledges it with this reason so the
    /// host's delivery log says why nothing happened.
    Ignored {
        /// Why, e.g. "ignored: GitHub event `issues` is not a push".
        reason: String,
    },
}

impl Delivery {
    fn ignored(reason: impl fmt::Display) -> Self {
        Delivery::Ignored {
            reason: format!("ignored: {reason}"),
        }
    }
}

/// One ref that moved, the same whichever host reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1`.
    pub git_ref: String,
    /// The full sha the ref pointed to before; [`ZERO_SHA`] for a created ref.
    pub before: String,
    /// The full sha the ref points to now; [`ZERO_SHA`] for a deleted ref (also when the host
    /// only said "deleted" with a flag, so [`Push::is_deletion`] is one check).
    pub after: String,
    /// The repository pushed to.
    pub repository: RepositoryInfo,
    /// The commit `after` points to, when the host described it (never for a deletion).
    pub head_commit: Option<CommitInfo>,
    /// The commits the host listed, oldest first whatever order the host sent them in. Hosts
    /// cap the list (GitLab at 20, Gitea at 5 by default, Bitbucket at 5).
    pub commits: Vec<CommitInfo>,
    /// Who pushed, when the host said.
    pub pusher: Option<Person>,
}

impl Push {
    /// Whether the push deleted the ref: there is nothing to build then.
    pub fn is_deletion(&self) -> bool {
        fields::is_zero_sha(&self.after)
    }

    /// The branch name when a branch moved (`main` for `refs/heads/main`).
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }

    /// The tag name when a tag was pushed (`v1` for `refs/tags/v1`).
    pub fn tag(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/tags/")
    }
}

/// Reads the request body as a JSON object.
///
/// Accepts `application/json` (with any parameters, e.g. `; charset=utf-8`) from every host,
/// and `application/x-www-form-urlencoded` with the JSON in a `payload` field from GitHub,
/// whose webhook settings offer that content type.
pub fn parse_body(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<Value, BodyError> {
    let content_type = match headers.get(CONTENT_TYPE) {
        None => {
            return Err(BodyError::UnsupportedContentType {
                found: "none".to_owned(),
            });
        }
        Some(value) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => parse_json_object(body),
        "application/x-www-form-urlencoded" if provider == Provider::Github => {
            parse_json_object(form_payload(body)?.as_bytes())
        }
        _ => Err(BodyError::UnsupportedContentType { found: content_type }),
    }
}

/// The `payload` field of a form-encoded body, where GitHub puts the JSON.
fn form_payload(body: &[u8]) -> Result<String, BodyError> {
    form_urlencoded::parse(body)
        .find(|(name, _)| name == "payload")
        .map(|(_, payload)| payload.into_owned())
        .ok_or_else(|| BodyError::MalformedJson {
            message: "the form-encoded body has no `payload` field".to_owned(),
        })
}

fn parse_json_object(bytes: &[u8]) -> Result<Value, BodyError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| BodyError::MalformedJson {
        message: error.to_string(),
    })?;
    if !value.is_object() {
        return Err(BodyError::MalformedJson {
            message: "expected a JSON object at the top level".to_owned(),
        });
    }
    Ok(value)
}

/// The repository's full name as the host spells it (`acme/shop`, or
/// `group/subgroup/shop` on GitLab), read before the signature is verified so the listener
/// can look up that repository's secret. Untrusted until [`verify_signature`] succeeds.
pub fn repository_full_name(provider: Provider, payload: &Value) -> Option<String> {
    match provider {
        // GitHub, Gitea and Bitbucket all name it `repository.full_name`.
        Provider::Github | Provider::Gitea | Provider::Bitbucket => fields::Field::root(payload)
            .get("repository")
            .get("full_name")
            .optional_str(),
        Provider::Gitlab => gitlab::repository_full_name(payload),
        Provider::Generic => generic::repository_full_name(payload),
    }
}

/// Checks the delivery's signature (or token) against `secret`, over the raw `body` bytes
/// exactly as received, in constant time.
///
/// `generic_header` is the header the [`Provider::Generic`] sender signs in (usually
/// [`DEFAULT_GENERIC_SIGNATURE_HEADER`]); other providers ignore it.
pub fn verify_signature(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    generic_header: &str,
) -> Result<(), SignatureError> {
    match provider {
        Provider::Github => github::verify(headers, body, secret),
        Provider::Gitlab => gitlab::verify(headers, secret),
        Provider::Gitea => gitea::verify(headers, body, secret),
        Provider::Bitbucket => bitbucket::verify(headers, body, secret),
        Provider::Generic => generic::verify(headers, body, secret, generic_header),
    }
}

/// The host's id for this delivery, which it reuses on redelivery: the listener derives the
/// event id from it so a redelivered push is recognised as a duplicate.
pub fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match provider {
        Provider::Github => &[github::DELIVERY_HEADER],
        Provider::Gitlab => &[gitlab::DELIVERY_HEADER],
        Provider::Gitea => &gitea::DELIVERY_HEADERS,
        Provider::Bitbucket => &[bitbucket::DELIVERY_HEADER],
        Provider::Generic => &[generic::DELIVERY_HEADER],
    };
    names
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .find(|id| !id.is_empty())
        .map(str::to_owned)
}

/// Reads a verified payload: the event header decides what it is, the body says what moved.
pub fn interpret(provider: Provider, headers: &HeaderMap, payload: &Value) -> Result<Delivery, PayloadError> {
    match provider {
        Provider::Github => github::interpret(headers, payload),
        Provider::Gitlab => gitlab::interpret(headers, payload),
        Provider::Gitea => gitea::interpret(headers, payload),
        Provider::Bitbucket => bitbucket::interpret(headers, payload),
        Provider::Generic => generic::interpret(headers, payload),
    }
}

/// The value of the first of `names` that is present, or `None` when none is.
fn optional_event_header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Result<Option<&'h str>, PayloadError> {
    let Some((name, value)) = names.iter().find_map(|name| Some((*name, headers.get(*name)?))) else {
        return Ok(None);
    };
    value
        .to_str()
        .map(|text| Some(text.trim()))
        .map_err(|_| PayloadError::InvalidHeader {
            header: name.to_owned(),
            problem: "it contains characters other than visible ASCII".to_owned(),
        })
}

/// The value of the first of `names` that is present; the host always sends one.
fn event_header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Result<&'h str, PayloadError> {
    optional_event_header(headers, names)?.ok_or_else(|| PayloadError::MissingHeader {
        header: names.join(" or "),
    })
}

#[cfg(test)]
mod tests;
