//! Bitbucket Cloud webhooks (Bitbucket Data Center's `repo:refs_changed` is a different
//! format and is not handled here).
//!
//! - Signature: `X-Hub-Signature: sha256=<hex>`, HMAC-SHA256 of the raw body keyed with the
//!   webhook's secret.
//! - Event: `X-Event-Key` (`repo:push`, `diagnostics:ping`, ...); delivery id:
//!   `X-Request-UUID`.
//! - Push payload: `push.changes[]`, one per ref the push moved. Each has `new` (`null` when
//!   the ref was deleted) and `old` (`null` when it was created), both
//!   `{type: "branch" | "tag", name, target: {hash, message, date, author: {raw, user},
//!   links.html.href}}`; `commits[]` (newest first, at most 5, `truncated` says when more were
//!   pushed); `created`, `closed`, `forced`. `repository{name, full_name, links.html.href}` and
//!   `actor{display_name, nickname}` describe the whole delivery.
//!
//! Bitbucket names refs by their short name and type; they are turned into full refs
//! (`refs/heads/<name>`, `refs/tags/<name>`) like every other host sends them.

use baton_schemas::payloads::{CommitInfo, Person, RepositoryInfo};
use http::HeaderMap;
use serde_json::Value;

use super::fields::{self, Field, Listed, ZERO_SHA};
use super::{Delivery, PayloadError, Push, SignatureError, event_header, signature};

pub(super) const SIGNATURE_HEADER: &str = "X-Hub-Signature";
pub(super) const EVENT_HEADER: &str = "X-Event-Key";
pub(super) const DELIVERY_HEADER: &str = "X-Request-UUID";

pub(super) fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<(), SignatureError> {
    signature::verify_prefixed_hmac_sha256(headers, SIGNATURE_HEADER, body, secret)
}

pub(super) fn interpret(headers: &HeaderMap, payload: &Value) -> Result<Delivery, PayloadError> {
    match event_header(headers, &[EVENT_HEADER])? {
        "repo:push" => parse_pushes(payload).map(Delivery::Push),
        "diagnostics:ping" => Ok(Delivery::Ping),
        other => Ok(Delivery::ignored(format_args!(
            "Bitbucket event `{other}` is not a push"
        ))),
    }
}

/// One [`Push`] per change: a single `git push` may move several branches and tags.
fn parse_pushes(payload: &Value) -> Result<Vec<Push>, PayloadError> {
    let root = Field::root(payload).object()?;
    let repository = repository(&root.get("repository"))?;
    let pusher = account(&root.get("actor"));
    root.get("push")
        .get("changes")
        .array()?
        .iter()
        .map(|change| parse_change(change, &repository, pusher.as_ref()))
        .collect()
}

fn parse_change(
    change: &Field<'_>,
    repository: &RepositoryInfo,
    pusher: Option<&Person>,
) -> Result<Push, PayloadError> {
    let change = change.object()?;
    let new = change.get("new").optional_object()?;
    let old = change.get("old").optional_object()?;
    let Some(reference) = new.as_ref().or(old.as_ref()) else {
        return Err(change.invalid("neither `new` nor `old` describes the ref"));
    };
    let git_ref = full_ref(reference)?;
    let before = match &old {
        Some(old) => old.get("target").object()?.get("hash").sha()?,
        None => ZERO_SHA.to_owned(),
    };
    let head_commit = match &new {
        Some(new) if !change.get("closed").flag() => Some(commit(&new.get("target"))?),
        _ => None,
    };
    let after = head_commit
        .as_ref()
        .map_or_else(|| ZERO_SHA.to_owned(), |head| head.id.clone());
    let commits = fields::commit_list(&change.get("commits"), commit)?;
    Ok(Push {
        git_ref,
        before,
        repository: repository.clone(),
        commits: fields::oldest_first(commits, &after, Listed::NewestFirst),
        head_commit,
        pusher: pusher.cloned(),
        after,
    })
}

/// `refs/heads/<name>` or `refs/tags/<name>` from Bitbucket's `{type, name}`.
fn full_ref(reference: &Field<'_>) -> Result<String, PayloadError> {
    let kind = reference.get("type");
    let prefix = match kind.required_str()? {
        "branch" => "refs/heads/",
        "tag" => "refs/tags/",
        other => return Err(kind.invalid(format!("expected `branch` or `tag`, found `{other}`"))),
    };
    Ok(format!("{prefix}{}", reference.get("name").required_str()?))
}

/// A Bitbucket commit: `{hash, message, date, author: {raw, user}, links: {html: {href}}}`.
fn commit(commit: &Field<'_>) -> Result<CommitInfo, PayloadError> {
    let commit = commit.object()?;
    Ok(CommitInfo {
        id: commit.get("hash").sha()?,
        message: commit.get("message").text()?.to_owned(),
        timestamp: commit.get("date").optional_str(),
        author: author(&commit.get("author")),
        committer: None,
        url: commit.get("links").get("html").get("href").optional_str(),
    })
}

/// The commit's git author from `raw` (`Name <email>`), and the Bitbucket account it maps to,
/// if any, from `user`.
fn author(author: &Field<'_>) -> Person {
    let (name, email) = author
        .get("raw")
        .optional_str()
        .map_or((None, None), |raw| split_raw_author(&raw));
    let user = author.get("user");
    Person {
        name: name.or_else(|| user.get("display_name").optional_str()),
        email,
        username: user.get("nickname").optional_str(),
    }
}

/// `("Emma", "emma@example.com")` from `Emma <emma@example.com>`; a raw author without an
/// address is all name.
fn split_raw_author(raw: &str) -> (Option<String>, Option<String>) {
    let non_empty = |text: &str| Some(text.trim()).filter(|text| !text.is_empty()).map(str::to_owned);
    match raw.rsplit_once('<') {
        Some((name, rest)) if rest.trim_end().ends_with('>') => {
            let email = rest.trim_end().trim_end_matches('>');
            (non_empty(name), non_empty(email))
        }
        _ => (non_empty(raw), None),
    }
}

/// A Bitbucket account (`actor`, `user`): no e-mail address is ever exposed.
fn account(account: &Field<'_>) -> Option<Person> {
    fields::person(
        account.get("display_name").optional_str(),
        None,
        account.get("nickname").optional_str(),
    )
}

/// The repository. Webhook payloads carry no clone link, so the HTTPS one is derived from
/// the full name unless a `links.clone` entry is present.
fn repository(repository: &Field<'_>) -> Result<RepositoryInfo, PayloadError> {
    let repository = repository.object()?;
    let full_name = repository.get("full_name").required_str()?.to_owned();
    let links = repository.get("links");
    let clone_url =
        https_clone_link(&links.get("clone")).unwrap_or_else(|| format!("https://bitbucket.org/{full_name}.git"));
    Ok(RepositoryInfo {
        name: repository
            .get("name")
            .optional_str()
            .unwrap_or_else(|| fields::last_segment(&full_name).to_owned()),
        html_url: links.get("html").get("href").optional_str(),
        clone_url,
        full_name,
    })
}

/// The `https` entry of the API's `links.clone: [{name, href}]`, without the user name
/// Bitbucket puts in it (`https://emma@bitbucket.org/...`).
fn https_clone_link(clone_links: &Field<'_>) -> Option<String> {
    let links = clone_links.optional_array().ok()?;
    let href = links
        .iter()
        .find(|link| link.get("name").optional_str().as_deref() == Some("https"))?
        .get("href")
        .optional_str()?;
    Some(without_user_info(&href))
}

/// `https://host/path` from `https://user@host/path`; other URLs unchanged.
fn without_user_info(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{}", &rest[authority_end..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ANOTHER_SECRET, SECRET, headers, hmac_hex, json_headers};
    use super::super::{Provider, delivery_id, interpret, parse_body, repository_full_name, verify_signature};
    use super::*;

    const PUSH: &str = include_str!("fixtures/bitbucket-push.json");
    const MULTI: &str = include_str!("fixtures/bitbucket-push-multi.json");

    fn verify_with(headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        verify_signature(Provider::Bitbucket, headers, body, SECRET, "X-Baton-Signature")
    }

    fn read(event: &str, body: &str) -> Result<Delivery, PayloadError> {
        let headers = json_headers(&[(EVENT_HEADER, event)]);
        let payload = parse_body(Provider::Bitbucket, &headers, body.as_bytes()).unwrap();
        interpret(Provider::Bitbucket, &headers, &payload)
    }

    fn pushes(body: &str) -> Vec<Push> {
        match read("repo:push", body) {
            Ok(Delivery::Push(pushes)) => pushes,
            other => panic!("expected pushes, got {other:?}"),
        }
    }

    #[test]
    fn signatures_are_checked() {
        let signature = format!("sha256={}", hmac_hex(SECRET, PUSH.as_bytes()));
        assert_eq!(
            verify_with(&headers(&[(SIGNATURE_HEADER, &signature)]), PUSH.as_bytes()),
            Ok(())
        );

        assert_eq!(
            verify_with(&headers(&[]), PUSH.as_bytes()),
            Err(SignatureError::Missing {
                header: SIGNATURE_HEADER.into()
            })
        );
        let bare = hmac_hex(SECRET, PUSH.as_bytes());
        assert!(matches!(
            verify_with(&headers(&[(SIGNATURE_HEADER, &bare)]), PUSH.as_bytes()),
            Err(SignatureError::Malformed { .. })
        ));
        let wrong = format!("sha256={}", hmac_hex(ANOTHER_SECRET, PUSH.as_bytes()));
        assert_eq!(
            verify_with(&headers(&[(SIGNATURE_HEADER, &wrong)]), PUSH.as_bytes()),
            Err(SignatureError::Mismatch {
                header: SIGNATURE_HEADER.into()
            })
        );
        let mut altered = PUSH.as_bytes().to_vec();
        altered[0] = b' ';
        assert_eq!(
            verify_with(&headers(&[(SIGNATURE_HEADER, &signature)]), &altered),
            Err(SignatureError::Mismatch {
                header: SIGNATURE_HEADER.into()
            })
        );
    }

    #[test]
    fn a_push_is_read_faithfully_and_put_oldest_first() {
        let pushes = pushes(PUSH);
        assert_eq!(pushes.len(), 1);
        let push = &pushes[0];
        assert_eq!(push.git_ref, "refs/heads/main");
        assert_eq!(push.before, "1e65c05c1d5171631d92438a13901ca7dae9618c");
        assert_eq!(push.after, "709d658dc5b6d6afcd46049c2f332ee3f515a67d");
        assert!(!push.is_deletion());

        assert_eq!(push.repository.name, "shop");
        assert_eq!(push.repository.full_name, "acme/shop");
        assert_eq!(push.repository.clone_url, "https://bitbucket.org/acme/shop.git");
        assert_eq!(
            push.repository.html_url.as_deref(),
            Some("https://bitbucket.org/acme/shop")
        );

        let ids: Vec<_> = push.commits.iter().map(|commit| &commit.id[..7]).collect();
        assert_eq!(ids, ["03f4a72", "709d658"], "Bitbucket lists newest first");
        assert_eq!(push.commits[0].message, "Add the cart\n");
        assert_eq!(push.commits[0].author.name.as_deref(), Some("Emma Smith"));
        assert_eq!(
            push.commits[0].author.username, None,
            "an author without a Bitbucket account"
        );

        let head = push.head_commit.as_ref().expect("head commit");
        assert_eq!(head.id, push.after);
        assert_eq!(head.message, "Fix the cart total\n");
        assert_eq!(head.timestamp.as_deref(), Some("2015-06-09T03:34:49+00:00"));
        assert_eq!(head.author.name.as_deref(), Some("Emma Smith"));
        assert_eq!(head.author.email.as_deref(), Some("emma@example.com"));
        assert_eq!(head.author.username.as_deref(), Some("emma"));
        assert_eq!(
            head.url.as_deref(),
            Some("https://bitbucket.org/acme/shop/commits/709d658dc5b6d6afcd46049c2f332ee3f515a67d")
        );

        let pusher = push.pusher.as_ref().expect("pusher");
        assert_eq!(pusher.name.as_deref(), Some("Emma Smith"));
        assert_eq!(pusher.username.as_deref(), Some("emma"));
        assert_eq!(pusher.email, None);
    }

    #[test]
    fn each_change_of_a_delivery_is_a_push() {
        let pushes = pushes(MULTI);
        let refs: Vec<_> = pushes.iter().map(|push| push.git_ref.as_str()).collect();
        assert_eq!(
            refs,
            [
                "refs/heads/feature/cart",
                "refs/tags/v1.4.0",
                "refs/heads/old-experiment"
            ]
        );

        let [created, tag, deleted] = &pushes[..] else {
            panic!("three pushes")
        };
        assert_eq!(created.before, ZERO_SHA);
        assert_eq!(created.after, "8d2f5c7a9b1e3f4d6c8a0b2e4f6a8c0d2e4f6a8c");
        assert_eq!(created.branch(), Some("feature/cart"));
        assert_eq!(created.commits.len(), 1);

        assert_eq!(tag.tag(), Some("v1.4.0"));
        assert_eq!(tag.before, ZERO_SHA);
        assert_eq!(tag.after, "709d658dc5b6d6afcd46049c2f332ee3f515a67d");
        assert_eq!(
            tag.head_commit.as_ref().map(|commit| commit.message.as_str()),
            Some("Fix the cart total\n")
        );

        assert!(deleted.is_deletion());
        assert_eq!(deleted.after, ZERO_SHA);
        assert_eq!(deleted.before, "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678");
        assert_eq!(deleted.head_commit, None);
        assert!(deleted.commits.is_empty());
        assert_eq!(deleted.repository.full_name, "acme/shop");
    }

    #[test]
    fn ping_and_other_events() {
        assert_eq!(read("diagnostics:ping", PUSH), Ok(Delivery::Ping));
        assert_eq!(
            read("pullrequest:created", PUSH),
            Ok(Delivery::Ignored {
                reason: "ignored: Bitbucket event `pullrequest:created` is not a push".into()
            })
        );
    }

    #[test]
    fn invalid_changes_name_the_field() {
        let mut payload: Value = serde_json::from_str(MULTI).unwrap();
        payload["push"]["changes"][1]["new"]["target"]["hash"] = "not-a-sha".into();
        let error = interpret(Provider::Bitbucket, &headers(&[(EVENT_HEADER, "repo:push")]), &payload);
        assert_eq!(
            error,
            Err(PayloadError::InvalidField {
                field: "push.changes[1].new.target.hash".into(),
                message: "expected a full commit sha (40 or 64 hex digits)".into()
            })
        );

        payload["push"]["changes"][1]["new"]["type"] = "named_branch".into();
        let error = interpret(Provider::Bitbucket, &headers(&[(EVENT_HEADER, "repo:push")]), &payload).unwrap_err();
        assert!(matches!(error, PayloadError::InvalidField { ref field, .. } if field == "push.changes[1].new.type"));

        payload["push"]["changes"][0]["new"] = Value::Null;
        payload["push"]["changes"][0]["old"] = Value::Null;
        let error = interpret(Provider::Bitbucket, &headers(&[(EVENT_HEADER, "repo:push")]), &payload).unwrap_err();
        assert!(matches!(error, PayloadError::InvalidField { ref field, .. } if field == "push.changes[0]"));
    }

    #[test]
    fn raw_authors_are_split() {
        assert_eq!(
            split_raw_author("Emma Smith <emma@example.com>"),
            (Some("Emma Smith".into()), Some("emma@example.com".into()))
        );
        assert_eq!(split_raw_author("emma"), (Some("emma".into()), None));
        assert_eq!(
            split_raw_author("<emma@example.com>"),
            (None, Some("emma@example.com".into()))
        );
        assert_eq!(split_raw_author("Broken <"), (Some("Broken <".into()), None));
    }

    #[test]
    fn an_explicit_clone_link_wins_without_its_user() {
        let mut payload: Value = serde_json::from_str(PUSH).unwrap();
        payload["repository"]["links"]["clone"] = serde_json::json!([
            {"name": "ssh", "href": "git@bitbucket.example.com:acme/shop.git"},
            {"name": "https", "href": "https://emma@bitbucket.example.com/acme/shop.git"}
        ]);
        let Ok(Delivery::Push(pushes)) =
            interpret(Provider::Bitbucket, &headers(&[(EVENT_HEADER, "repo:push")]), &payload)
        else {
            panic!("expected pushes")
        };
        assert_eq!(
            pushes[0].repository.clone_url,
            "https://bitbucket.example.com/acme/shop.git"
        );
    }

    #[test]
    fn repository_and_delivery_id_are_read() {
        let payload: Value = serde_json::from_str(PUSH).unwrap();
        assert_eq!(
            repository_full_name(Provider::Bitbucket, &payload).as_deref(),
            Some("acme/shop")
        );
        let with_id = headers(&[(DELIVERY_HEADER, "d1a6e1f0-4b1e-4f59-9c21-1f0e7f1c2b3a")]);
        assert_eq!(
            delivery_id(Provider::Bitbucket, &with_id).as_deref(),
            Some("d1a6e1f0-4b1e-4f59-9c21-1f0e7f1c2b3a")
        );
    }
}
