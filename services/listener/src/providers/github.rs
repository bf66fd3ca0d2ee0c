//! GitHub (and GitHub Enterprise Server) webhooks.
//!
//! - Signature: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body keyed with
//!   the webhook's secret. The older SHA-1 `X-Hub-Signature` is not accepted.
//! - Event: `X-GitHub-Event` (`push`, `ping`, ...); delivery id: `X-GitHub-Delivery`.
//! - Push payload: `ref`, `before`, `after`, `created`, `deleted`, `forced`, `repository`,
//!   `head_commit` (`null` when a ref is deleted), `commits` (oldest first, at most 2048),
//!   `pusher` (`{name, email}`, where `name` is the account's login).

use baton_schemas::payloads::Person;
use http::HeaderMap;
use serde_json::Value;

use super::fields::{self, Field, Listed, ZERO_SHA};
use super::{Delivery, PayloadError, Push, SignatureError, event_header, signature};

pub(super) const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
pub(super) const EVENT_HEADER: &str = "X-GitHub-Event";
pub(super) const DELIVERY_HEADER: &str = "X-GitHub-Delivery";

pub(super) fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<(), SignatureError> {
    signature::verify_prefixed_hmac_sha256(headers, SIGNATURE_HEADER, body, secret)
}

pub(super) fn interpret(headers: &HeaderMap, payload: &Value) -> Result<Delivery, PayloadError> {
    match event_header(headers, &[EVENT_HEADER])? {
        "push" => Ok(Delivery::Push(vec![parse_push(payload, PusherName::IsLogin)?])),
        "ping" => Ok(Delivery::Ping),
        other => Ok(Delivery::ignored(format_args!("GitHub event `{other}` is not a push"))),
    }
}

/// What the `name` of a GitHub-shaped `pusher` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PusherName {
    /// GitHub puts the account's login there, so it is also the username.
    IsLogin,
    /// A display name; the username, if any, is in `username`.
    IsDisplayName,
}

/// Reads a push in GitHub's shape; Baton's generic payload is a subset of it.
pub(super) fn parse_push(payload: &Value, pusher_name: PusherName) -> Result<Push, PayloadError> {
    let root = Field::root(payload).object()?;
    let after = if root.get("deleted").flag() {
        ZERO_SHA.to_owned()
    } else {
        root.get("after").sha()?
    };
    fields::standard_push(
        &root,
        after,
        Listed::OldestFirst,
        pusher(&root.get("pusher"), pusher_name),
    )
}

fn pusher(pusher: &Field<'_>, pusher_name: PusherName) -> Option<Person> {
    let name = pusher.get("name").optional_str();
    let username = match pusher_name {
        PusherName::IsLogin => pusher.get("username").optional_str().or_else(|| name.clone()),
        PusherName::IsDisplayName => pusher.get("username").optional_str(),
    };
    fields::person(name, pusher.get("email").optional_str(), username)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ANOTHER_SECRET, SECRET, headers, hmac_hex, json_headers};
    use super::super::{
        BodyError, Provider, ZERO_SHA, delivery_id, interpret, parse_body, repository_full_name, verify_signature,
    };
    use super::*;

    const PUSH: &str = include_str!("fixtures/github-push.json");
    const TAG: &str = include_str!("fixtures/github-tag-push.json");
    const DELETE: &str = include_str!("fixtures/github-delete.json");
    const PING: &str = include_str!("fixtures/github-ping.json");

    fn verify_with(headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        verify_signature(Provider::Github, headers, body, SECRET, "X-Baton-Signature")
    }

    fn read(event: &str, body: &str) -> Delivery {
        let headers = json_headers(&[(EVENT_HEADER, event)]);
        let payload = parse_body(Provider::Github, &headers, body.as_bytes()).unwrap();
        interpret(Provider::Github, &headers, &payload).unwrap()
    }

    fn single_push(event: &str, body: &str) -> Push {
        match read(event, body) {
            Delivery::Push(mut pushes) if pushes.len() == 1 => pushes.remove(0),
            other => panic!("expected one push, got {other:?}"),
        }
    }

    #[test]
    fn a_correct_signature_is_accepted_in_either_case() {
        let signature = format!("sha256={}", hmac_hex(SECRET, PUSH.as_bytes()));
        assert_eq!(
            verify_with(&headers(&[(SIGNATURE_HEADER, &signature)]), PUSH.as_bytes()),
            Ok(())
        );
        let upper = format!("SHA256={}", hmac_hex(SECRET, PUSH.as_bytes()).to_uppercase());
        assert_eq!(
            verify_with(&headers(&[(SIGNATURE_HEADER, &upper)]), PUSH.as_bytes()),
            Ok(())
        );
    }

    #[test]
    fn a_missing_signature_names_the_header() {
        let error = verify_with(&headers(&[]), PUSH.as_bytes()).unwrap_err();
        assert_eq!(
            error,
            SignatureError::Missing {
                header: SIGNATURE_HEADER.into()
            }
        );
        assert!(error.to_string().contains("`X-Hub-Signature-256` is missing"));
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let hex = hmac_hex(SECRET, PUSH.as_bytes());
        for value in [
            hex.clone(),
            format!("sha1={hex}"),
            format!("sha256={}", &hex[..10]),
            format!("sha256={}zz", &hex[2..]),
        ] {
            let error = verify_with(&headers(&[(SIGNATURE_HEADER, &value)]), PUSH.as_bytes());
            assert!(
                matches!(error, Err(SignatureError::Malformed { .. })),
                "{value}: {error:?}"
            );
        }
    }

    #[test]
    fn a_wrong_secret_or_an_altered_body_is_a_mismatch() {
        let wrong = format!("sha256={}", hmac_hex(ANOTHER_SECRET, PUSH.as_bytes()));
        let error = verify_with(&headers(&[(SIGNATURE_HEADER, &wrong)]), PUSH.as_bytes()).unwrap_err();
        assert_eq!(
            error,
            SignatureError::Mismatch {
                header: SIGNATURE_HEADER.into()
            }
        );
        assert!(
            !error.to_string().contains(&wrong[7..]),
            "the message leaks the signature"
        );

        let signature = format!("sha256={}", hmac_hex(SECRET, PUSH.as_bytes()));
        let mut altered = PUSH.as_bytes().to_vec();
        altered[10] ^= 1;
        let error = verify_with(&headers(&[(SIGNATURE_HEADER, &signature)]), &altered);
        assert_eq!(
            error,
            Err(SignatureError::Mismatch {
                header: SIGNATURE_HEADER.into()
            })
        );
    }

    #[test]
    fn a_push_is_read_faithfully() {
        let push = single_push("push", PUSH);
        assert_eq!(push.git_ref, "refs/heads/main");
        assert_eq!(push.branch(), Some("main"));
        assert_eq!(push.tag(), None);
        assert_eq!(push.before, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
        assert_eq!(push.after, "4f0e6a2b1d7c93e8a5b2c1d0e9f8a7b6c5d4e3f2");
        assert!(!push.is_deletion());

        assert_eq!(push.repository.name, "Hello-World");
        assert_eq!(push.repository.full_name, "Codertocat/Hello-World");
        assert_eq!(
            push.repository.clone_url,
            "https://github.com/Codertocat/Hello-World.git"
        );
        assert_eq!(
            push.repository.html_url.as_deref(),
            Some("https://github.com/Codertocat/Hello-World")
        );

        let ids: Vec<_> = push.commits.iter().map(|commit| commit.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "a10867b14bb761a232cd80139fbd4c0d33264240",
                "4f0e6a2b1d7c93e8a5b2c1d0e9f8a7b6c5d4e3f2"
            ]
        );
        assert_eq!(push.commits[0].message, "Add the checkout service");
        assert_eq!(push.commits[0].author.username.as_deref(), Some("Codertocat"));

        let head = push.head_commit.expect("head commit");
        assert_eq!(head.id, push.after);
        assert_eq!(head.message, "Fix the price rounding\n\nPrices were rounded down.");
        assert_eq!(head.timestamp.as_deref(), Some("2019-05-15T15:20:30-05:00"));
        assert_eq!(head.author.name.as_deref(), Some("Mona Lisa"));
        assert_eq!(head.author.email.as_deref(), Some("mona@github.com"));
        assert_eq!(head.author.username.as_deref(), Some("octocat"));
        assert_eq!(
            head.url.as_deref(),
            Some("https://github.com/Codertocat/Hello-World/commit/4f0e6a2b1d7c93e8a5b2c1d0e9f8a7b6c5d4e3f2")
        );

        let pusher = push.pusher.expect("pusher");
        assert_eq!(pusher.name.as_deref(), Some("Codertocat"));
        assert_eq!(pusher.username.as_deref(), Some("Codertocat"));
        assert_eq!(
            pusher.email.as_deref(),
            Some("21031067+Codertocat@users.noreply.github.com")
        );
    }

    #[test]
    fn a_tag_push_names_the_tag() {
        let push = single_push("push", TAG);
        assert_eq!(push.git_ref, "refs/tags/v1.2.0");
        assert_eq!(push.tag(), Some("v1.2.0"));
        assert_eq!(push.branch(), None);
        assert_eq!(push.before, ZERO_SHA);
        assert!(push.commits.is_empty());
        assert_eq!(push.head_commit.map(|commit| commit.id), Some(push.after));
    }

    #[test]
    fn a_deleted_branch_is_a_deletion_without_head_commit() {
        let push = single_push("push", DELETE);
        assert!(push.is_deletion());
        assert_eq!(push.after, ZERO_SHA);
        assert_eq!(push.before, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
        assert_eq!(push.head_commit, None);
        assert!(push.commits.is_empty());
    }

    #[test]
    fn ping_and_other_events() {
        assert_eq!(read("ping", PING), Delivery::Ping);
        assert_eq!(
            read("issues", PING),
            Delivery::Ignored {
                reason: "ignored: GitHub event `issues` is not a push".into()
            }
        );
    }

    #[test]
    fn the_event_header_is_required() {
        let payload: Value = serde_json::from_str(PUSH).unwrap();
        assert_eq!(
            interpret(Provider::Github, &headers(&[]), &payload),
            Err(PayloadError::MissingHeader {
                header: EVENT_HEADER.into()
            })
        );
    }

    #[test]
    fn a_form_encoded_body_carries_the_payload() {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", PUSH)
            .finish();
        let form = headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            (EVENT_HEADER, "push"),
        ]);
        let payload = parse_body(Provider::Github, &form, body.as_bytes()).unwrap();
        assert_eq!(payload, serde_json::from_str::<Value>(PUSH).unwrap());

        // The signature covers the body as sent, form encoding included.
        let signature = format!("sha256={}", hmac_hex(SECRET, body.as_bytes()));
        let signed = headers(&[(SIGNATURE_HEADER, &signature)]);
        assert_eq!(verify_with(&signed, body.as_bytes()), Ok(()));

        let without_payload = parse_body(Provider::Github, &form, b"other=1");
        assert!(matches!(without_payload, Err(BodyError::MalformedJson { .. })));
    }

    #[test]
    fn repository_and_delivery_id_are_read() {
        let payload: Value = serde_json::from_str(PUSH).unwrap();
        assert_eq!(
            repository_full_name(Provider::Github, &payload).as_deref(),
            Some("Codertocat/Hello-World")
        );
        let with_id = headers(&[(DELIVERY_HEADER, "72d3162e-cc78-11e3-81ab-4c9367dc0958")]);
        assert_eq!(
            delivery_id(Provider::Github, &with_id).as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(delivery_id(Provider::Github, &headers(&[])), None);
    }

    #[test]
    fn a_missing_sha_names_the_field() {
        let mut payload: Value = serde_json::from_str(PUSH).unwrap();
        payload["commits"][1]["id"] = Value::Null;
        let error = interpret(Provider::Github, &headers(&[(EVENT_HEADER, "push")]), &payload).unwrap_err();
        assert_eq!(
            error,
            PayloadError::InvalidField {
                field: "commits[1].id".into(),
                message: "required field is missing".into()
            }
        );
    }
}
