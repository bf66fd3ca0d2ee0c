//! Baton's own webhook format, for senders that are not one of the supported git hosts: a CI
//! job, a `post-receive` hook on a plain git server, a script.
//!
//! # Request
//!
//! `POST /webhooks/generic` with `Content-Type: application/json` and:
//! - the signature header (`X-Baton-Signature` unless the listener's config names another):
//!   `sha256=<hex>` or just `<hex>`, the HMAC-SHA256 of the exact body bytes keyed with the
//!   repository's secret, e.g.
//!   `printf %s "$body" | openssl dgst -sha256 -hmac "$secret" | sed 's/^.* /sha256=/'`;
//! - `X-Baton-Event` (optional): `push` (the default) or `ping`; anything else is ignored;
//! - `X-Baton-Delivery` (optional): a unique id per delivery, reused when retrying, so that
//!   Baton recognises a retried delivery as a duplicate.
//!
//! # Body
//!
//! A subset of GitHub's push payload, so that GitHub-compatible senders work unchanged:
//!
//! ```json
//! {
//!   "ref": "refs/heads/main",
//!   "before": "0000000000000000000000000000000000000000",
//!   "after": "9f3c2e1d0b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e",
//!   "repository": {
//!     "name": "shop",
//!     "full_name": "acme/shop",
//!     "clone_url": "https://git.example.com/acme/shop.git",
//!     "html_url": "https://git.example.com/acme/shop"
//!   },
//!   "head_commit": {
//!     "id": "9f3c2e1d0b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e",
//!     "message": "Fix the cart total",
//!     "timestamp": "2024-05-02T10:15:00Z",
//!     "url": "https://git.example.com/acme/shop/commit/9f3c2e1d",
//!     "author": {"name": "Emma Smith", "email": "emma@example.com", "username": "emma"}
//!   },
//!   "commits": [],
//!   "pusher": {"name": "Emma Smith", "email": "emma@example.com", "username": "emma"}
//! }
//! ```
//!
//! Required: `ref` (a full ref), `before` and `after` (full shas; all zeros for a created or
//! deleted ref), `repository.full_name` and `repository.clone_url`. Optional:
//! `repository.name` (defaults to the last part of `full_name`), `repository.html_url`,
//! `head_commit` (defaults to the listed commit whose `id` is `after`), `commits` (oldest
//! first, in `head_commit`'s shape), `pusher`, and `deleted: true` instead of an all-zero
//! `after`. Other fields are ignored.

use http::HeaderMap;
use serde_json::Value;

use super::fields::Field;
use super::github::{self, PusherName};
use super::{Delivery, PayloadError, SignatureError, optional_event_header, signature};

pub(super) const EVENT_HEADER: &str = "X-Baton-Event";
pub(super) const DELIVERY_HEADER: &str = "X-Baton-Delivery";

pub(super) fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    signature_header: &str,
) -> Result<(), SignatureError> {
    let value = signature::header(headers, signature_header)?;
    let hex = signature::strip_sha256_prefix(signature_header, value).unwrap_or(value);
    signature::verify_hmac_sha256(signature_header, hex, body, secret)
}

/// `repository.full_name`, or `repository.name` for senders that only know a short name.
pub(super) fn repository_full_name(payload: &Value) -> Option<String> {
    let repository = Field::root(payload).get("repository");
    repository
        .get("full_name")
        .optional_str()
        .or_else(|| repository.get("name").optional_str())
}

pub(super) fn interpret(headers: &HeaderMap, payload: &Value) -> Result<Delivery, PayloadError> {
    match optional_event_header(headers, &[EVENT_HEADER])?.unwrap_or("push") {
        "push" => Ok(Delivery::Push(vec![github::parse_push(
            payload,
            PusherName::IsDisplayName,
        )?])),
        "ping" => Ok(Delivery::Ping),
        other => Ok(Delivery::ignored(format_args!("generic event `{other}` is not a push"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ANOTHER_SECRET, SECRET, headers, hmac_hex, json_headers};
    use super::super::{
        DEFAULT_GENERIC_SIGNATURE_HEADER, Provider, Push, ZERO_SHA, delivery_id, interpret, parse_body,
        repository_full_name, verify_signature,
    };
    use super::*;

    const PUSH: &str = include_str!("fixtures/generic-push.json");

    fn verify_in(header: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        verify_signature(Provider::Generic, headers, body, SECRET, header)
    }

    fn payload() -> Value {
        parse_body(Provider::Generic, &json_headers(&[]), PUSH.as_bytes()).unwrap()
    }

    fn single_push(headers: &HeaderMap, payload: &Value) -> Push {
        match interpret(Provider::Generic, headers, payload) {
            Ok(Delivery::Push(mut pushes)) if pushes.len() == 1 => pushes.remove(0),
            other => panic!("expected one push, got {other:?}"),
        }
    }

    #[test]
    fn prefixed_and_bare_signatures_are_accepted() {
        let hex = hmac_hex(SECRET, PUSH.as_bytes());
        for value in [format!("sha256={hex}"), hex.clone(), hex.to_uppercase()] {
            let signed = headers(&[(DEFAULT_GENERIC_SIGNATURE_HEADER, &value)]);
            assert_eq!(
                verify_in(DEFAULT_GENERIC_SIGNATURE_HEADER, &signed, PUSH.as_bytes()),
                Ok(()),
                "{value}"
            );
        }
    }

    #[test]
    fn the_configured_header_is_the_one_read() {
        let value = hmac_hex(SECRET, PUSH.as_bytes());
        let signed = headers(&[("X-Ci-Signature", &value)]);
        assert_eq!(verify_in("X-Ci-Signature", &signed, PUSH.as_bytes()), Ok(()));
        assert_eq!(
            verify_in(DEFAULT_GENERIC_SIGNATURE_HEADER, &signed, PUSH.as_bytes()),
            Err(SignatureError::Missing {
                header: DEFAULT_GENERIC_SIGNATURE_HEADER.into()
            })
        );
        // A header name that cannot exist is simply never found.
        assert!(matches!(
            verify_in("bad header\n", &signed, PUSH.as_bytes()),
            Err(SignatureError::Missing { .. })
        ));
    }

    #[test]
    fn malformed_and_wrong_signatures_are_rejected() {
        let header = DEFAULT_GENERIC_SIGNATURE_HEADER;
        let malformed = verify_in(header, &headers(&[(header, "sha256=xyz")]), PUSH.as_bytes());
        assert!(matches!(malformed, Err(SignatureError::Malformed { .. })));
        let wrong = hmac_hex(ANOTHER_SECRET, PUSH.as_bytes());
        assert_eq!(
            verify_in(header, &headers(&[(header, &wrong)]), PUSH.as_bytes()),
            Err(SignatureError::Mismatch { header: header.into() })
        );
        let right = hmac_hex(SECRET, PUSH.as_bytes());
        let mut altered = PUSH.as_bytes().to_vec();
        altered.push(b'\n');
        assert_eq!(
            verify_in(header, &headers(&[(header, &right)]), &altered),
            Err(SignatureError::Mismatch { header: header.into() })
        );
    }

    #[test]
    fn a_push_is_read_without_an_event_header() {
        let push = single_push(&headers(&[]), &payload());
        assert_eq!(push.git_ref, "refs/heads/main");
        assert_eq!(push.before, "4c1e7b2a9d0f3e6c8b5a2d9f1e4c7b0a3d6f9e2c");
        assert_eq!(push.after, "9f3c2e1d0b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e");
        assert_eq!(push.repository.name, "shop");
        assert_eq!(push.repository.full_name, "acme/shop");
        assert_eq!(push.repository.clone_url, "https://git.example.com/acme/shop.git");
        assert_eq!(push.repository.html_url, None);

        let ids: Vec<_> = push.commits.iter().map(|commit| &commit.id[..7]).collect();
        assert_eq!(ids, ["e1d2c3b", "9f3c2e1"]);
        let head = push.head_commit.as_ref().expect("head commit, found among the commits");
        assert_eq!(head.message, "Fix the cart total");
        assert_eq!(head.timestamp.as_deref(), Some("2024-05-02T10:15:00Z"));
        assert_eq!(head.author.name.as_deref(), Some("Emma Smith"));
        assert_eq!(head.author.email.as_deref(), Some("emma@example.com"));

        let pusher = push.pusher.as_ref().expect("pusher");
        assert_eq!(pusher.name.as_deref(), Some("CI bot"));
        assert_eq!(pusher.username, None, "a generic pusher's name is not a login");

        let explicit = single_push(&headers(&[(EVENT_HEADER, "push")]), &payload());
        assert_eq!(explicit, push);
    }

    #[test]
    fn a_minimal_payload_is_enough() {
        let minimal = serde_json::json!({
            "ref": "refs/tags/v3",
            "before": ZERO_SHA,
            "after": "9f3c2e1d0b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e",
            "repository": {"full_name": "acme/shop", "clone_url": "https://git.example.com/acme/shop.git"}
        });
        let push = single_push(&headers(&[]), &minimal);
        assert_eq!(push.tag(), Some("v3"));
        assert_eq!(push.repository.name, "shop");
        assert_eq!((push.head_commit, push.commits, push.pusher), (None, vec![], None));
    }

    #[test]
    fn deletions_ping_and_other_events() {
        let mut deleted = payload();
        deleted["deleted"] = true.into();
        let push = single_push(&headers(&[]), &deleted);
        assert!(push.is_deletion());
        assert_eq!(push.head_commit, None);

        assert_eq!(
            interpret(Provider::Generic, &headers(&[(EVENT_HEADER, "ping")]), &payload()),
            Ok(Delivery::Ping)
        );
        assert_eq!(
            interpret(Provider::Generic, &headers(&[(EVENT_HEADER, "build")]), &payload()),
            Ok(Delivery::Ignored {
                reason: "ignored: generic event `build` is not a push".into()
            })
        );
    }

    #[test]
    fn required_fields_are_named() {
        let mut payload = payload();
        if let Some(repository) = payload["repository"].as_object_mut() {
            repository.remove("clone_url");
        }
        assert_eq!(
            interpret(Provider::Generic, &headers(&[]), &payload),
            Err(PayloadError::InvalidField {
                field: "repository.clone_url".into(),
                message: "required field is missing".into()
            })
        );
        payload["ref"] = "main".into();
        let error = interpret(Provider::Generic, &headers(&[]), &payload).unwrap_err();
        assert!(error.to_string().contains("`ref`"), "{error}");
    }

    #[test]
    fn repository_and_delivery_id_are_read() {
        assert_eq!(
            repository_full_name(Provider::Generic, &payload()).as_deref(),
            Some("acme/shop")
        );
        let short = serde_json::json!({"repository": {"name": "shop"}});
        assert_eq!(repository_full_name(Provider::Generic, &short).as_deref(), Some("shop"));
        let with_id = headers(&[(DELIVERY_HEADER, "ci-run-4711")]);
        assert_eq!(delivery_id(Provider::Generic, &with_id).as_deref(), Some("ci-run-4711"));
    }
}
