//! Slack's request signing (<https://api.slack.com/authentication/verifying-requests-from-slack>):
//! `X-Slack-Signature` is `v0=` followed by the hex HMAC-SHA256, keyed with the app's signing
//! secret, of `v0:<X-Slack-Request-Timestamp>:<raw body>`. The comparison is constant-time, and
//! a timestamp further than the replay window from now (either way) is refused, so a captured
//! request cannot be sent again later.

use std::time::Duration;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// Header carrying the request's Unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// The signature scheme's version prefix.
pub const VERSION: &str = "v0";

/// Why a request is not accepted as Slack's. Every message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is absent.
    #[error("the {0} header is missing: only requests signed by Slack are accepted")]
    Missing(&'static str),
    /// The timestamp is not a Unix time.
    #[error("X-Slack-Request-Timestamp must be the request's Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is outside the replay window.
    #[error(
        "X-Slack-Request-Timestamp is {age}s away from now, more than the {window}s allowed: \
         refused as a possible replay (check the sender's clock)"
    )]
    Stale {
        /// Seconds between the timestamp and now.
        age: u64,
        /// The window in seconds.
        window: u64,
    },
    /// The signature is malformed or does not match.
    #[error(
        "X-Slack-Signature does not match the body: sign `v0:<timestamp>:<body>` with HMAC-SHA256 \
         and the app's signing secret, and send `v0=<hex>`"
    )]
    Mismatch,
}

impl SignatureError {
    /// Label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_header",
            Self::BadTimestamp | Self::Stale { .. } => "stale",
            Self::Mismatch => "bad_signature",
        }
    }
}

/// The `X-Slack-Signature` value for `body` sent at `timestamp` (what Slack computes).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "{VERSION}={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(VERSION.as_bytes());
    mac.update(b":");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// Verifies a request's headers and raw body against the signing secret, with `now` as the
/// current Unix time.
///
/// # Errors
/// See [`SignatureError`].
pub fn verify(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    window: Duration,
) -> Result<(), SignatureError> {
    let timestamp = header(headers, TIMESTAMP_HEADER, "X-Slack-Request-Timestamp")?;
    let signature = header(headers, SIGNATURE_HEADER, "X-Slack-Signature")?;
    let sent: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
    let age = now.abs_diff(sent);
    if age > window.as_secs() {
        return Err(SignatureError::Stale {
            age,
            window: window.as_secs(),
        });
    }
    let expected = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h.trim()).ok())
        .ok_or(SignatureError::Mismatch)?;
    // `verify_slice` compares in constant time.
    mac(secret, timestamp, body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

fn header<'h>(headers: &'h HeaderMap, name: &str, display: &'static str) -> Result<&'h str, SignatureError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::Missing(display))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn headers(ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TIMESTAMP_HEADER, ts.parse().unwrap());
        h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        h
    }

    #[test]
    fn slacks_documented_example_verifies() {
        // The example of Slack's "Verifying requests from Slack" page.
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign(secret, "1531420618", body), signature);
        verify(
            secret,
            &headers("1531420618", signature),
            body,
            1_531_420_618 + 60,
            WINDOW,
        )
        .unwrap();
    }

    #[test]
    fn tampering_replays_and_missing_headers_are_refused() {
        let secret = b"secret";
        let body = b"text=approve+r1";
        let now = 1_700_000_000;
        let good = sign(secret, &now.to_string(), body);
        let h = headers(&now.to_string(), &good);
        verify(secret, &h, body, now, WINDOW).unwrap();
        assert_eq!(
            verify(secret, &h, b"text=approve+r2", now, WINDOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(b"other", &h, body, now, WINDOW), Err(SignatureError::Mismatch));
        assert!(matches!(
            verify(secret, &h, body, now + 301, WINDOW),
            Err(SignatureError::Stale { .. })
        ));
        assert!(matches!(
            verify(secret, &h, body, now - 301, WINDOW),
            Err(SignatureError::Stale { .. })
        ));
        let bad = headers(&now.to_string(), good.trim_start_matches("v0="));
        assert_eq!(verify(secret, &bad, body, now, WINDOW), Err(SignatureError::Mismatch));
        let bad = headers(&now.to_string(), "v0=zz");
        assert_eq!(verify(secret, &bad, body, now, WINDOW), Err(SignatureError::Mismatch));
        let bad = headers("yesterday", &good);
        assert_eq!(
            verify(secret, &bad, body, now, WINDOW),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(secret, &HeaderMap::new(), body, now, WINDOW),
            Err(SignatureError::Missing("X-Slack-Request-Timestamp"))
        );
    }
}
