//! Helpers shared by the providers' unit tests.

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

/// The secret the tests' webhooks are configured with.
pub(super) const SECRET: &[u8] = b"It's a Secret to Everybody";

/// A secret the listener does not know.
pub(super) const ANOTHER_SECRET: &[u8] = b"not the configured secret";

/// Headers from `(name, value)` pairs.
pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
                HeaderValue::from_str(value).expect("valid header value"),
            )
        })
        .collect()
}

/// Headers of a JSON delivery, plus `pairs`.
pub(super) fn json_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut all = headers(pairs);
    all.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    all
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret`, as the hosts compute it.
pub(super) fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
