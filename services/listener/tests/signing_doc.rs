//! docs/listener.md's signing one-liner, run as the page writes it: it prints a bare hex
//! signature that the listener's generic provider accepts in the header the page's `curl` sends
//! it in, and refuses for another body.

use std::process::Command;

use baton_listener::providers::{DEFAULT_GENERIC_SIGNATURE_HEADER, Provider, verify_signature};
use http::{HeaderMap, HeaderValue};

/// The line of the page that computes `sig`.
fn one_liner() -> String {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/listener.md"))
        .expect("docs/listener.md reads");
    page.lines()
        .find(|line| line.starts_with("sig=$("))
        .expect("docs/listener.md has the line `sig=$(…)`")
        .to_owned()
}

fn signed(signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        DEFAULT_GENERIC_SIGNATURE_HEADER,
        HeaderValue::from_str(&format!("sha256={signature}")).expect("a header value"),
    );
    headers
}

#[test]
fn the_pages_one_liner_prints_a_signature_the_generic_provider_accepts() {
    let body = r#"{"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567"}"#;
    let secret = "s3cret with spaces";
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{}\nprintf %s \"$sig\"", one_liner()))
        .env("body", body)
        .env("secret", secret)
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let signature = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()),
        "a bare hex signature: {signature:?}"
    );
    let headers = signed(&signature);
    let verify = |body: &str| {
        verify_signature(
            Provider::Generic,
            &headers,
            body.as_bytes(),
            secret.as_bytes(),
            DEFAULT_GENERIC_SIGNATURE_HEADER,
        )
    };
    assert!(verify(body).is_ok(), "accepted over the body it signed");
    assert!(
        verify(&body.replace("main", "next")).is_err(),
        "refused over another body"
    );
}
