//! Gitea and Forgejo webhooks (Forgejo, a Gitea fork, sends the same payloads under its own
//! header names; both spellings are accepted).
//!
//! - Signature: `X-Gitea-Signature` or `X-Forgejo-Signature`, the bare hex HMAC-SHA256 of the
//!   raw body keyed with the webhook's secret.
//! - Event: `X-Gitea-Event` / `X-Forgejo-Event` (`push`, ...); delivery id: `X-Gitea-Delivery`
//!   / `X-Forgejo-Delivery`. There is no ping: "Test delivery" sends a real `push`. Deleting
//!   a branch sends a `delete` event, which carries no shas and is ignored.
//! - Push payload: `ref`, `before`, `after`, `compare_url`, `commits[]{id, message, url,
//!   author{name, email, username}, timestamp}` (newest first, at most 5 by default),
//!   `head_commit` (Gitea 1.14 and later), `repository{name, full_name, clone_url, html_url}`,
//!   `pusher{login, username, full_name, email}`.

use baton_schemas::payloads::Person;
use http::HeaderMap;
use serde_json::Value;

use super::fields::{self, Field, Listed};
use super::{Delivery, PayloadError, Push, SignatureError, event_header, signature};

/// Signature headers, Gitea's first; a delivery carries one of them.
pub(super) const SIGNATURE_HEADERS: [&str; 2] = ["X-Gitea-Signature", "X-Forgejo-Signature"];
pub(super) const EVENT_HEADERS: [&str; 2] = ["X-Gitea-Event", "X-Forgejo-Event"];
pub(super) const DELIVERY_HEADERS: [&str; 2] = ["X-Gitea-Delivery", "X-Forgejo-Delivery"];

pub(super) fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<(), SignatureError> {
    let Some(name) = SIGNATURE_HEADERS.into_iter().find(|name| headers.contains_key(*name)) else {
        return Err(SignatureError::Missing {
            header: SIGNATURE_HEADERS.join(" or "),
        });
    };
    let hex = signature::header(headers, name)?;
    signature::verify_hmac_sha256(name, hex, body, secret)
}

pub(super) fn interpret(headers: &HeaderMap, payload: &Value) -> Result<Delivery, PayloadError> {
    match event_header(headers, &EVENT_HEADERS)? {
        "push" => Ok(Delivery::Push(vec![parse_push(payload)?])),
        other => Ok(Delivery::ignored(format_args!(
            "Gitea/Forgejo event `{other}` is not a push"
        ))),
    }
}

fn parse_push(payload: &Value) -> Result<Push, PayloadError> {
    let root = Field::root(payload).object()?;
    let after = root.get("after").sha()?;
    fields::standard_push(&root, after, Listed::NewestFirst, pusher(&root.get("pusher")))
}

/// Gitea's user: `login` is the account name (older versions also send it as `username`),
/// `full_name` the display name, often empty.
fn pusher(pusher: &Field<'_>) -> Option<Person> {
    fields::person(
        pusher.get("full_name").optional_str(),
        pusher.get("email").optional_str(),
        pusher
            .get("login")
            .optional_str()
            .or_else(|| pusher.get("username").optional_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ANOTHER_SECRET, SECRET, headers, hmac_hex, json_headers};
    use super::super::{
        Provider, ZERO_SHA, delivery_id, interpret, parse_body, repository_full_name, verify_signature,
    };
    use super::*;

    const PUSH: &str = include_str!("fixtures/gitea-push.json");

    fn verify_with(headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        verify_signature(Provider::Gitea, headers, body, SECRET, "X-Baton-Signature")
    }

    fn read(event_header: &str, event: &str, payload: &Value) -> Delivery {
        interpret(Provider::Gitea, &headers(&[(event_header, event)]), payload).unwrap()
    }

    fn payload() -> Value {
        parse_body(Provider::Gitea, &json_headers(&[]), PUSH.as_bytes()).unwrap()
    }

    #[test]
    fn gitea_and_forgejo_signatures_are_accepted() {
        let signature = hmac_hex(SECRET, PUSH.as_bytes());
        for header in SIGNATURE_HEADERS {
            assert_eq!(
                verify_with(&headers(&[(header, &signature)]), PUSH.as_bytes()),
                Ok(()),
                "{header}"
            );
            let upper = signature.to_uppercase();
            assert_eq!(
                verify_with(&headers(&[(header, &upper)]), PUSH.as_bytes()),
                Ok(()),
                "{header}"
            );
        }
    }

    #[test]
    fn a_missing_signature_names_both_headers() {
        let error = verify_with(&headers(&[]), PUSH.as_bytes()).unwrap_err();
        assert_eq!(
            error,
            SignatureError::Missing {
                header: "X-Gitea-Signature or X-Forgejo-Signature".into()
            }
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let hex = hmac_hex(SECRET, PUSH.as_bytes());
        for value in [
            format!("sha256={hex}"),
            hex[..63].to_owned(),
            format!("{}g", &hex[..63]),
        ] {
            let error = verify_with(&headers(&[("X-Forgejo-Signature", &value)]), PUSH.as_bytes());
            assert_eq!(
                error.as_ref().map_err(SignatureError::metric_label),
                Err("signature_malformed"),
                "{value}"
            );
        }
    }

    #[test]
    fn a_wrong_secret_or_an_altered_body_is_a_mismatch() {
        let wrong = hmac_hex(ANOTHER_SECRET, PUSH.as_bytes());
        let error = verify_with(&headers(&[("X-Forgejo-Signature", &wrong)]), PUSH.as_bytes());
        assert_eq!(
            error,
            Err(SignatureError::Mismatch {
                header: "X-Forgejo-Signature".into()
            })
        );

        let signature = hmac_hex(SECRET, PUSH.as_bytes());
        let mut altered = PUSH.as_bytes().to_vec();
        let last = altered.len() - 2;
        altered[last] ^= 0x20;
        let error = verify_with(&headers(&[("X-Gitea-Signature", &signature)]), &altered);
        assert_eq!(
            error,
            Err(SignatureError::Mismatch {
                header: "X-Gitea-Signature".into()
            })
        );
    }

    #[test]
    fn a_push_is_read_faithfully_and_put_oldest_first() {
        let Delivery::Push(pushes) = read("X-Gitea-Event", "push", &payload()) else {
            panic!("expected a push")
        };
        let push = &pushes[0];
        assert_eq!(push.git_ref, "refs/heads/develop");
        assert_eq!(push.before, "28e1879d029cb852e4844d9c718537df08844e03");
        assert_eq!(push.after, "bffeb74224043ba2feb48d137756c8a9331c449a");
        assert_eq!(push.repository.name, "webhooks");
        assert_eq!(push.repository.full_name, "gitea/webhooks");
        assert_eq!(push.repository.clone_url, "http://localhost:3000/gitea/webhooks.git");
        assert_eq!(
            push.repository.html_url.as_deref(),
            Some("http://localhost:3000/gitea/webhooks")
        );

        let ids: Vec<_> = push.commits.iter().map(|commit| &commit.id[..7]).collect();
        assert_eq!(ids, ["0c2c1a3", "5b1f0e9", "bffeb74"], "Gitea lists newest first");
        assert_eq!(push.commits[0].message, "Add the webhook handler\n");
        assert_eq!(push.commits[0].author.username.as_deref(), Some("alice"));
        assert_eq!(push.commits[0].timestamp.as_deref(), Some("2017-03-13T13:40:02-04:00"));

        let head = push.head_commit.as_ref().expect("head commit");
        assert_eq!(head.id, push.after);
        assert_eq!(head.message, "Webhooks Yay!\n");
        assert_eq!(head.author.name.as_deref(), Some("Gitea"));
        assert_eq!(head.author.email.as_deref(), Some("someone@gitea.io"));
        assert_eq!(head.author.username.as_deref(), Some("gitea"));
        assert_eq!(head.timestamp.as_deref(), Some("2017-03-13T13:52:11-04:00"));

        let pusher = push.pusher.as_ref().expect("pusher");
        assert_eq!(pusher.name.as_deref(), Some("Gitea"));
        assert_eq!(pusher.username.as_deref(), Some("gitea"));
        assert_eq!(pusher.email.as_deref(), Some("someone@gitea.io"));

        // Forgejo's headers, and an older Gitea without `head_commit`, read the same.
        let mut older = payload();
        if let Some(root) = older.as_object_mut() {
            root.remove("head_commit");
        }
        assert_eq!(read("X-Forgejo-Event", "push", &older), Delivery::Push(pushes.clone()));
    }

    #[test]
    fn a_tag_push_and_a_new_branch() {
        let mut tag = payload();
        tag["ref"] = "refs/tags/v2.0.0".into();
        tag["before"] = ZERO_SHA.into();
        let Delivery::Push(pushes) = read("X-Gitea-Event", "push", &tag) else {
            panic!("expected a push")
        };
        assert_eq!(pushes[0].tag(), Some("v2.0.0"));
        assert_eq!(pushes[0].before, ZERO_SHA);
        assert!(!pushes[0].is_deletion());
    }

    #[test]
    fn a_push_to_zero_is_a_deletion() {
        let mut deleted = payload();
        deleted["after"] = ZERO_SHA.into();
        deleted["commits"] = serde_json::json!([]);
        deleted["head_commit"] = Value::Null;
        let Delivery::Push(pushes) = read("X-Gitea-Event", "push", &deleted) else {
            panic!("expected a push")
        };
        assert!(pushes[0].is_deletion());
        assert_eq!(pushes[0].head_commit, None);
    }

    #[test]
    fn other_events_are_ignored() {
        assert_eq!(
            read("X-Forgejo-Event", "delete", &payload()),
            Delivery::Ignored {
                reason: "ignored: Gitea/Forgejo event `delete` is not a push".into()
            }
        );
        assert_eq!(
            interpret(Provider::Gitea, &headers(&[]), &payload()),
            Err(PayloadError::MissingHeader {
                header: "X-Gitea-Event or X-Forgejo-Event".into()
            })
        );
    }

    #[test]
    fn repository_and_delivery_id_are_read() {
        assert_eq!(
            repository_full_name(Provider::Gitea, &payload()).as_deref(),
            Some("gitea/webhooks")
        );
        for header in DELIVERY_HEADERS {
            let with_id = headers(&[(header, "f6266f16-1bf3-46a5-9ea4-602e06ead473")]);
            assert_eq!(
                delivery_id(Provider::Gitea, &with_id).as_deref(),
                Some("f6266f16-1bf3-46a5-9ea4-602e06ead473")
            );
        }
    }
}
