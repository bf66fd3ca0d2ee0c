//! The checks every host's signature scheme is built from, all constant time.
//!
//! Timing matters: a comparison that stops at the first differing byte lets an attacker
//! guess a valid signature byte by byte. HMACs are checked with [`Mac::verify_slice`]; plain
//! tokens are hashed first so that even their lengths are compared in constant time.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::SignatureError;

/// Length in hex digits of an HMAC-SHA256.
const SHA256_HEX_LEN: usize = 64;

/// The value of the signature header `name`, as text.
pub(super) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, SignatureError> {
    let value = headers.get(name).ok_or_else(|| SignatureError::Missing {
        header: name.to_owned(),
    })?;
    let text = value.to_str().map_err(|_| SignatureError::Malformed {
        header: name.to_owned(),
        problem: "it contains characters other than visible ASCII".to_owned(),
    })?;
    Ok(text.trim())
}

/// The hex digits of a `sha256=<hex>` value (the prefix is matched case-insensitively).
pub(super) fn strip_sha256_prefix<'v>(header: &str, value: &'v str) -> Result<&'v str, SignatureError> {
    const PREFIX: &str = "sha256=";
    match value.split_at_checked(PREFIX.len()) {
        Some((prefix, hex)) if prefix.eq_ignore_ascii_case(PREFIX) => Ok(hex),
        _ => Err(SignatureError::Malformed {
            header: header.to_owned(),
            problem: "expected `sha256=` followed by 64 hex digits".to_owned(),
        }),
    }
}

/// Checks that `hex_signature` is HMAC-SHA256(`secret`, `body`).
pub(super) fn verify_hmac_sha256(
    header: &str,
    hex_signature: &str,
    body: &[u8],
    secret: &[u8],
) -> Result<(), SignatureError> {
    let signature = decode_hex_signature(header, hex_signature)?;
    let mismatch = || SignatureError::Mismatch {
        header: header.to_owned(),
    };
    // HMAC accepts keys of any length, so this cannot fail; if it ever did, failing closed
    // (as a mismatch) is the safe answer.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| mismatch())?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| mismatch())
}

fn decode_hex_signature(header: &str, hex_signature: &str) -> Result<Vec<u8>, SignatureError> {
    let malformed = |problem: &str| SignatureError::Malformed {
        header: header.to_owned(),
        problem: problem.to_owned(),
    };
    if hex_signature.len() != SHA256_HEX_LEN {
        return Err(malformed("expected an HMAC-SHA256 of 64 hex digits"));
    }
    // `hex` accepts upper and lower case alike.
    hex::decode(hex_signature).map_err(|_| malformed("it contains characters that are not hex digits"))
}

/// Checks that a shared-secret token (GitLab's scheme) equals `secret`.
///
/// Both sides are hashed before the constant-time comparison, so a wrong guess reveals
/// neither where it differs nor whether its length was right.
/// Verifies the `sha256=<hex>` HMAC-SHA256 of `body` in header `name` (GitHub's and
/// Bitbucket's scheme).
pub(super) fn verify_prefixed_hmac_sha256(
    headers: &HeaderMap,
    name: &str,
    body: &[u8],
    secret: &[u8],
) -> Result<(), SignatureError> {
    let hex = strip_sha256_prefix(name, header(headers, name)?)?;
    verify_hmac_sha256(name, hex, body, secret)
}

pub(super) fn verify_token(header: &str, token: &str, secret: &[u8]) -> Result<(), SignatureError> {
    if token.is_empty() {
        return Err(SignatureError::Malformed {
            header: header.to_owned(),
            problem: "the token is empty".to_owned(),
        });
    }
    let equal = Sha256::digest(token.as_bytes()).ct_eq(&Sha256::digest(secret));
    if bool::from(equal) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch {
            header: header.to_owned(),
        })
    }
}
