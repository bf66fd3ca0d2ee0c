//! GitLab webhooks (GitLab.com and self-managed).
//!
//! - Authentication: no signature; GitLab sends the webhook's "secret token" verbatim in
//!   `X-Gitlab-Token`, which is compared with the secret in constant time.
//! - Event: `X-Gitlab-Event` (`Push Hook`, `Tag Push Hook`, ...); delivery id:
//!   `X-Gitlab-Event-UUID`. GitLab has no ping: its "Test" button sends a real `Push Hook`.
//! - Push payload: `object_kind`, `ref`, `before`, `after`, `checkout_sha` (`null` when a ref
//!   is deleted), `user_name`, `user_username`, `user_email`, `project{name,
//!   path_with_namespace, git_http_url, web_url}`, `commits[]{id, message, timestamp, url,
//!   author{name, email}}` (at most 20), `total_commits_count`.
//!
//! GitLab's commit order changed over the years (oldest first in the documentation's example,
//! newest first in deliveries since about version 14), so the order is told from where the
//! pushed head sits in the list; see [`fields::oldest_first`].

use baton_schemas::payloads::{Person, RepositoryInfo};
use http::HeaderMap;
use serde_json::Value;

use super::fields::{self, Field, Listed};
use super::{Delivery, PayloadError, Push, SignatureError, event_header, signature};

pub(super) const TOKEN_HEADER: &str = "X-Gitlab-Token";
pub(super) const EVENT_HEADER: &str = "X-Gitlab-Event";
pub(super) const DELIVERY_HEADER: &str = "X-Gitlab-Event-UUID";

/// What GitLab puts in `user_email` when the pusher keeps their e-mail address private.
const REDACTED: &str = "[REDACTED]";

pub(super) fn verify(headers: &HeaderMap, secret: &[u8]) -> Result<(), SignatureError> {
    let token = signature::header(headers, TOKEN_HEADER)?;
    signature::verify_token(TOKEN_HEADER, token, secret)
}

pub(super) fn repository_full_name(payload: &Value) -> Option<String> {
    Field::root(payload)
        .get("project")
        .get("path_with_namespace")
        .optional_str()
}

pub(super) fn interpret(headers: &HeaderMap, payload: &Value) -> Result<Delivery, PayloadError> {
    match event_header(headers, &[EVENT_HEADER])? {
        "Push Hook" | "Tag Push Hook" => Ok(Delivery::Push(vec![parse_push(payload)?])),
        other => Ok(Delivery::ignored(format_args!("GitLab event `{other}` is not a push"))),
    }
}

fn parse_push(payload: &Value) -> Result<Push, PayloadError> {
    let root = Field::root(payload).object()?;
    let after = root.get("after").sha()?;
    let checkout_sha = root.get("checkout_sha").optional_sha()?; // `null` for a deleted ref
    let commits = fields::commit_list(&root.get("commits"), fields::standard_commit)?;
    let head_ids: Vec<&str> = [Some(after.as_str()), checkout_sha.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    // GitLab sends no separate head commit: it is the listed commit `after` (or, for an
    // annotated tag, `checkout_sha`) names.
    let head_commit = fields::find_commit(&commits, &head_ids);
    Ok(Push {
        git_ref: root.get("ref").full_ref()?,
        before: root.get("before").sha()?,
        repository: repository(&root.get("project"))?,
        commits: fields::oldest_first(commits, &after, Listed::OldestFirst),
        head_commit,
        pusher: pusher(&root),
        after,
    })
}

/// The repository from `project`: GitLab's `name` is the display name ("Diaspora"), the
/// full name is the path (`mike/diaspora`), which is what the listener's config names.
fn repository(project: &Field<'_>) -> Result<RepositoryInfo, PayloadError> {
    let project = project.object()?;
    let full_name = project.get("path_with_namespace").required_str()?.to_owned();
    Ok(RepositoryInfo {
        name: project
            .get("name")
            .optional_str()
            .unwrap_or_else(|| fields::last_segment(&full_name).to_owned()),
        clone_url: project.get("git_http_url").required_str()?.to_owned(),
        html_url: project.get("web_url").optional_str(),
        full_name,
    })
}

fn pusher(root: &Field<'_>) -> Option<Person> {
    let email = root.get("user_email").optional_str().filter(|email| email != REDACTED);
    fields::person(
        root.get("user_name").optional_str(),
        email,
        root.get("user_username").optional_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ANOTHER_SECRET, SECRET, headers, json_headers};
    use super::super::{
        Provider, ZERO_SHA, delivery_id, interpret, parse_body, repository_full_name, verify_signature,
    };
    use super::*;

    const PUSH: &str = include_str!("fixtures/gitlab-push.json");
    const TAG: &str = include_str!("fixtures/gitlab-tag-push.json");

    fn verify_with(headers: &HeaderMap) -> Result<(), SignatureError> {
        verify_signature(Provider::Gitlab, headers, PUSH.as_bytes(), SECRET, "X-Baton-Signature")
    }

    fn read_value(event: &str, payload: &Value) -> Delivery {
        interpret(Provider::Gitlab, &headers(&[(EVENT_HEADER, event)]), payload).unwrap()
    }

    fn single_push(event: &str, body: &str) -> Push {
        let headers = json_headers(&[]);
        let payload = parse_body(Provider::Gitlab, &headers, body.as_bytes()).unwrap();
        match read_value(event, &payload) {
            Delivery::Push(mut pushes) if pushes.len() == 1 => pushes.remove(0),
            other => panic!("expected one push, got {other:?}"),
        }
    }

    #[test]
    fn the_token_must_equal_the_secret() {
        let secret = std::str::from_utf8(SECRET).unwrap();
        assert_eq!(verify_with(&headers(&[(TOKEN_HEADER, secret)])), Ok(()));

        let wrong = std::str::from_utf8(ANOTHER_SECRET).unwrap();
        let error = verify_with(&headers(&[(TOKEN_HEADER, wrong)])).unwrap_err();
        assert_eq!(
            error,
            SignatureError::Mismatch {
                header: TOKEN_HEADER.into()
            }
        );
        assert!(!error.to_string().contains(secret) && !error.to_string().contains(wrong));

        let prefix = &secret[..secret.len() - 1];
        assert!(matches!(
            verify_with(&headers(&[(TOKEN_HEADER, prefix)])),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn a_missing_or_malformed_token_is_rejected() {
        assert_eq!(
            verify_with(&headers(&[])),
            Err(SignatureError::Missing {
                header: TOKEN_HEADER.into()
            })
        );
        assert!(matches!(
            verify_with(&headers(&[(TOKEN_HEADER, "")])),
            Err(SignatureError::Malformed { .. })
        ));
        let mut not_ascii = HeaderMap::new();
        not_ascii.insert(TOKEN_HEADER, http::HeaderValue::from_bytes(b"s\xffcret").unwrap());
        assert!(matches!(verify_with(&not_ascii), Err(SignatureError::Malformed { .. })));
    }

    #[test]
    fn the_token_does_not_depend_on_the_body() {
        // GitLab signs nothing: a token is valid whatever the body, which is why the
        // listener must still serve webhooks over TLS only.
        let secret = std::str::from_utf8(SECRET).unwrap();
        let result = verify_signature(
            Provider::Gitlab,
            &headers(&[(TOKEN_HEADER, secret)]),
            b"altered",
            SECRET,
            "",
        );
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn a_push_is_read_faithfully_and_put_oldest_first() {
        let push = single_push("Push Hook", PUSH);
        assert_eq!(push.git_ref, "refs/heads/master");
        assert_eq!(push.branch(), Some("master"));
        assert_eq!(push.before, "95790bf891e76fee5e1747ab589903a6a1f80f22");
        assert_eq!(push.after, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
        assert!(!push.is_deletion());

        assert_eq!(push.repository.name, "Diaspora");
        assert_eq!(push.repository.full_name, "mike/diaspora");
        assert_eq!(push.repository.clone_url, "http://example.com/mike/diaspora.git");
        assert_eq!(
            push.repository.html_url.as_deref(),
            Some("http://example.com/mike/diaspora")
        );

        // The fixture lists newest first, as current GitLab versions do.
        let ids: Vec<_> = push.commits.iter().map(|commit| commit.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327",
                "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
            ]
        );
        assert_eq!(push.commits[0].author.name.as_deref(), Some("Jordi Mallach"));
        assert_eq!(push.commits[0].author.email.as_deref(), Some("jordi@softcatala.org"));
        assert_eq!(push.commits[0].author.username, None);

        let head = push.head_commit.clone().expect("head commit");
        assert_eq!(head.id, push.after);
        assert_eq!(head.message, "fixed readme");
        assert_eq!(head.timestamp.as_deref(), Some("2012-01-03T23:36:29+02:00"));
        assert_eq!(head.author.name.as_deref(), Some("GitLab dev user"));
        assert_eq!(
            head.url.as_deref(),
            Some("http://example.com/mike/diaspora/-/commit/da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
        );

        let pusher = push.pusher.clone().expect("pusher");
        assert_eq!(pusher.name.as_deref(), Some("John Smith"));
        assert_eq!(pusher.username.as_deref(), Some("jsmith"));
        assert_eq!(pusher.email.as_deref(), Some("john@example.com"));

        // Older GitLab versions (and the documentation) list oldest first: same result.
        let mut payload: Value = serde_json::from_str(PUSH).unwrap();
        if let Some(commits) = payload["commits"].as_array_mut() {
            commits.reverse();
        }
        assert_eq!(read_value("Push Hook", &payload), Delivery::Push(vec![push]));
    }

    #[test]
    fn a_tag_push_names_the_tag() {
        let push = single_push("Tag Push Hook", TAG);
        assert_eq!(push.git_ref, "refs/tags/v1.0.0");
        assert_eq!(push.tag(), Some("v1.0.0"));
        assert_eq!(push.before, ZERO_SHA);
        assert_eq!(push.after, "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7");
        assert_eq!(push.head_commit, None, "GitLab lists no commits for a tag");
        let pusher = push.pusher.expect("pusher");
        assert_eq!(pusher.email, None);
        assert_eq!(pusher.username.as_deref(), Some("jsmith"));
    }

    #[test]
    fn a_deleted_branch_is_a_deletion() {
        let mut payload: Value = serde_json::from_str(PUSH).unwrap();
        payload["after"] = ZERO_SHA.into();
        payload["checkout_sha"] = Value::Null;
        payload["commits"] = serde_json::json!([]);
        payload["total_commits_count"] = 0.into();
        payload["user_email"] = REDACTED.into();
        let Delivery::Push(pushes) = read_value("Push Hook", &payload) else {
            panic!("expected a push")
        };
        assert!(pushes[0].is_deletion());
        assert_eq!(pushes[0].head_commit, None);
        assert_eq!(pushes[0].pusher.as_ref().and_then(|pusher| pusher.email.clone()), None);
    }

    #[test]
    fn other_events_are_ignored_and_the_event_header_is_required() {
        let payload: Value = serde_json::from_str(PUSH).unwrap();
        assert_eq!(
            read_value("Merge Request Hook", &payload),
            Delivery::Ignored {
                reason: "ignored: GitLab event `Merge Request Hook` is not a push".into()
            }
        );
        assert_eq!(
            interpret(Provider::Gitlab, &headers(&[]), &payload),
            Err(PayloadError::MissingHeader {
                header: EVENT_HEADER.into()
            })
        );
    }

    #[test]
    fn repository_and_delivery_id_are_read() {
        let payload: Value = serde_json::from_str(PUSH).unwrap();
        assert_eq!(
            repository_full_name(Provider::Gitlab, &payload).as_deref(),
            Some("mike/diaspora")
        );
        let with_id = headers(&[(DELIVERY_HEADER, "9cb1e1b3-2d2c-4e5c-9f5f-2d0e6b8b1e0a")]);
        assert_eq!(
            delivery_id(Provider::Gitlab, &with_id).as_deref(),
            Some("9cb1e1b3-2d2c-4e5c-9f5f-2d0e6b8b1e0a")
        );
    }

    #[test]
    fn a_missing_project_names_the_field() {
        let mut payload: Value = serde_json::from_str(PUSH).unwrap();
        payload["project"]["git_http_url"] = 3.into();
        assert_eq!(
            interpret(Provider::Gitlab, &headers(&[(EVENT_HEADER, "Push Hook")]), &payload),
            Err(PayloadError::InvalidField {
                field: "project.git_http_url".into(),
                message: "expected a string, found a number".into()
            })
        );
    }
}
