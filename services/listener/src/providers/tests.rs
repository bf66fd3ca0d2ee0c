//! Tests of what every provider shares: provider names, body parsing, and robustness against
//! arbitrary input.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::test_support::{headers, json_headers};
use super::*;

#[test]
fn provider_names_round_trip() {
    for provider in Provider::ALL {
        assert_eq!(provider.as_str().parse::<Provider>(), Ok(provider));
        assert_eq!(provider.to_string(), provider.as_str());
        assert_eq!(serde_json::to_value(provider).unwrap(), json!(provider.as_str()));
        assert_eq!(
            serde_json::from_value::<Provider>(json!(provider.as_str())).unwrap(),
            provider
        );
    }
}

#[test]
fn forgejo_is_gitea() {
    assert_eq!("forgejo".parse::<Provider>(), Ok(Provider::Gitea));
    assert_eq!(
        serde_json::from_value::<Provider>(json!("forgejo")).unwrap(),
        Provider::Gitea
    );
}

#[test]
fn an_unknown_provider_lists_the_valid_ones() {
    let error = "GitHub".parse::<Provider>().unwrap_err();
    assert_eq!(error, UnknownProviderError { found: "GitHub".into() });
    let message = error.to_string();
    for name in ["github", "gitlab", "gitea", "forgejo", "bitbucket", "generic"] {
        assert!(message.contains(name), "{message} does not list {name}");
    }
    assert!(serde_json::from_value::<Provider>(json!("svn")).is_err());
}

#[test]
fn json_bodies_are_accepted_with_or_without_charset() {
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON ;charset=UTF-8",
    ] {
        for provider in Provider::ALL {
            let headers = headers(&[("content-type", content_type)]);
            assert_eq!(
                parse_body(provider, &headers, br#"{"ref": "x"}"#),
                Ok(json!({"ref": "x"}))
            );
        }
    }
}

#[test]
fn other_content_types_are_unsupported() {
    let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
    let error = parse_body(Provider::Gitlab, &form, b"payload=%7B%7D").unwrap_err();
    assert_eq!(
        error,
        BodyError::UnsupportedContentType {
            found: "application/x-www-form-urlencoded".into()
        }
    );
    assert!(
        error
            .to_string()
            .contains("configure the webhook with content type application/json")
    );
    assert_eq!(error.metric_label(), "unsupported_content_type");

    let text = headers(&[("content-type", "text/plain")]);
    assert!(matches!(
        parse_body(Provider::Github, &text, b"{}"),
        Err(BodyError::UnsupportedContentType { .. })
    ));
    assert_eq!(
        parse_body(Provider::Github, &HeaderMap::new(), b"{}"),
        Err(BodyError::UnsupportedContentType { found: "none".into() })
    );
}

#[test]
fn malformed_json_reports_where() {
    let error = parse_body(Provider::Github, &json_headers(&[]), b"{\n  \"ref\": }").unwrap_err();
    let BodyError::MalformedJson { message } = &error else {
        panic!("expected malformed JSON, got {error:?}")
    };
    assert!(message.contains("line 2 column"), "{message}");
    assert_eq!(error.metric_label(), "malformed_json");

    for not_an_object in [&b"[]"[..], b"\"push\"", b"null", b"42"] {
        assert!(matches!(
            parse_body(Provider::Generic, &json_headers(&[]), not_an_object),
            Err(BodyError::MalformedJson { .. })
        ));
    }
    // A form whose payload is not JSON is malformed JSON too.
    let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
    assert!(matches!(
        parse_body(Provider::Github, &form, b"payload=nope"),
        Err(BodyError::MalformedJson { .. })
    ));
}

#[test]
fn pushes_classify_their_ref() {
    let push = Push {
        git_ref: "refs/heads/release/2.x".into(),
        before: ZERO_SHA.into(),
        after: "0".repeat(64),
        repository: RepositoryInfo {
            name: "shop".into(),
            full_name: "acme/shop".into(),
            clone_url: "https://example.com/acme/shop.git".into(),
            html_url: None,
        },
        head_commit: None,
        commits: vec![],
        pusher: None,
    };
    assert_eq!(push.branch(), Some("release/2.x"));
    assert_eq!(push.tag(), None);
    assert!(push.is_deletion(), "SHA-256 repositories delete with 64 zeros");
}

#[test]
fn error_messages_say_how_to_fix_and_never_hold_secrets() {
    let missing = SignatureError::Missing {
        header: "X-Hub-Signature-256".into(),
    };
    assert_eq!(
        missing.to_string(),
        "header `X-Hub-Signature-256` is missing: configure the webhook's secret on the git host to match the listener's"
    );
    let field = PayloadError::InvalidField {
        field: "push.changes[0].new.target.hash".into(),
        message: "x".into(),
    };
    assert!(field.to_string().contains("`push.changes[0].new.target.hash`"));
    assert_eq!(field.metric_label(), "invalid_field");
}

#[test]
fn a_non_ascii_event_header_is_invalid() {
    let mut headers = HeaderMap::new();
    headers.insert("X-GitHub-Event", HeaderValue::from_bytes(b"pu\xffsh").unwrap());
    assert!(matches!(
        interpret(Provider::Github, &headers, &json!({})),
        Err(PayloadError::InvalidHeader { .. })
    ));
}

/// A tiny xorshift PRNG: deterministic, so a failure reproduces, and no extra dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound as u64).unwrap_or_default()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        (0..self.below(max_len + 1))
            .map(|_| self.next().to_le_bytes()[0])
            .collect()
    }
}

const FIXTURES: [&str; 12] = [
    include_str!("fixtures/github-push.json"),
    include_str!("fixtures/github-tag-push.json"),
    include_str!("fixtures/github-delete.json"),
    include_str!("fixtures/github-ping.json"),
    include_str!("fixtures/gitlab-push.json"),
    include_str!("fixtures/gitlab-tag-push.json"),
    include_str!("fixtures/gitea-push.json"),
    include_str!("fixtures/bitbucket-push.json"),
    include_str!("fixtures/bitbucket-push-multi.json"),
    include_str!("fixtures/generic-push.json"),
    "{}",
    "{\"push\": {\"changes\": [{}]}}",
];

const KEYS: [&str; 32] = [
    "ref",
    "before",
    "after",
    "repository",
    "full_name",
    "clone_url",
    "name",
    "commits",
    "head_commit",
    "id",
    "message",
    "author",
    "push",
    "changes",
    "new",
    "old",
    "target",
    "hash",
    "type",
    "project",
    "path_with_namespace",
    "git_http_url",
    "pusher",
    "deleted",
    "closed",
    "links",
    "clone",
    "href",
    "raw",
    "user",
    "checkout_sha",
    "login",
];

const STRINGS: [&str; 12] = [
    "refs/heads/main",
    "refs/tags/v1",
    "refs/",
    "main",
    "branch",
    "tag",
    "0000000000000000000000000000000000000000",
    "709d658dc5b6d6afcd46049c2f332ee3f515a67d",
    "",
    "https",
    "Emma <emma@example.com> <",
    "https://u@h/p.git",
];

const HEADER_NAMES: [&str; 14] = [
    "content-type",
    "X-GitHub-Event",
    "X-Gitlab-Event",
    "X-Gitea-Event",
    "X-Forgejo-Event",
    "X-Event-Key",
    "X-Baton-Event",
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "X-Gitlab-Token",
    "X-Gitea-Signature",
    "X-Forgejo-Signature",
    "X-Baton-Signature",
    "X-GitHub-Delivery",
];

const HEADER_VALUES: [&str; 12] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "push",
    "ping",
    "Push Hook",
    "Tag Push Hook",
    "repo:push",
    "diagnostics:ping",
    "sha256=",
    "sha256=709d658dc5b6d6afcd46049c2f332ee3f515a67d709d658dc5b6d6afcd46",
    "",
    "text/plain",
];

fn random_value(rng: &mut XorShift, depth: u32) -> Value {
    let choice = if depth == 0 { rng.below(5) } else { rng.below(7) };
    match choice {
        0 => Value::Null,
        1 => Value::Bool(rng.next().is_multiple_of(2)),
        2 => json!(rng.next() % 1000),
        3 | 4 => json!(rng.pick(&STRINGS)),
        5 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth - 1)).collect()),
        _ => Value::Object(
            (0..rng.below(6))
                .map(|_| (rng.pick(&KEYS).to_owned(), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// Replaces one node somewhere inside `value` by a random one.
fn mutate(value: &mut Value, rng: &mut XorShift) {
    let mut node = value;
    loop {
        let stop = rng.below(4) == 0;
        let child_count = match &*node {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if stop || child_count == 0 {
            *node = random_value(rng, 3);
            return;
        }
        let index = rng.below(child_count);
        node = match node {
            Value::Object(map) => match map.values_mut().nth(index) {
                Some(child) => child,
                None => return,
            },
            Value::Array(items) => &mut items[index],
            _ => return,
        };
    }
}

fn random_headers(rng: &mut XorShift) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for _ in 0..rng.below(6) {
        let name = HeaderName::from_bytes(rng.pick(&HEADER_NAMES).as_bytes()).expect("valid header name");
        let value = if rng.below(4) == 0 {
            HeaderValue::from_bytes(&rng.bytes(16))
        } else {
            HeaderValue::from_str(rng.pick(&HEADER_VALUES))
        };
        if let Ok(value) = value {
            headers.insert(name, value);
        }
    }
    headers
}

fn random_body(rng: &mut XorShift) -> Vec<u8> {
    match rng.below(4) {
        0 => rng.bytes(64),
        1 => {
            let mut body = rng.pick(&FIXTURES).as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                if !body.is_empty() {
                    let at = rng.below(body.len());
                    body[at] = rng.next().to_le_bytes()[0];
                }
            }
            body
        }
        2 => {
            let mut value: Value = serde_json::from_str(rng.pick(&FIXTURES)).expect("fixtures are JSON");
            for _ in 0..=rng.below(3) {
                mutate(&mut value, rng);
            }
            serde_json::to_vec(&value).expect("a Value serialises")
        }
        _ => serde_json::to_vec(&random_value(rng, 4)).expect("a Value serialises"),
    }
}

/// Whatever arrives, the providers answer with a value or an error, never a panic.
#[test]
fn arbitrary_input_never_panics() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut interpreted = 0;
    for _ in 0..5000 {
        let provider = rng.pick(&Provider::ALL);
        let mut headers = random_headers(&mut rng);
        if rng.below(3) != 0 {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let body = random_body(&mut rng);

        let _ = verify_signature(provider, &headers, &body, b"secret", DEFAULT_GENERIC_SIGNATURE_HEADER);
        let _ = delivery_id(provider, &headers);
        if let Ok(payload) = parse_body(provider, &headers, &body) {
            let _ = repository_full_name(provider, &payload);
            for provider in Provider::ALL {
                for event in ["push", "Push Hook", "repo:push"] {
                    let mut with_event = headers.clone();
                    for name in ["X-GitHub-Event", "X-Gitlab-Event", "X-Gitea-Event", "X-Event-Key"] {
                        with_event.insert(name, HeaderValue::from_static(event));
                    }
                    if interpret(provider, &with_event, &payload).is_ok() {
                        interpreted += 1;
                    }
                }
            }
        }
    }
    assert!(
        interpreted > 100,
        "the loop should reach the parsers, reached them {interpreted} times"
    );
}
