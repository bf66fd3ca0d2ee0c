//! What a registry's error means, for every crate that talks to registries through oci-client
//! (the builder's image push, the evidence store): the registry's own words, and whether
//! retrying may help.

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};

/// Longest message kept of what a registry said.
const MESSAGE_LIMIT: usize = 500;

/// The registry's message for `error`, and whether retrying may help.
pub fn describe(error: &OciDistributionError) -> (String, bool) {
    use OciDistributionError as E;
    match error {
        E::RegistryError { envelope, .. } => (envelope_message(envelope), envelope_is_transient(envelope)),
        E::ServerError { code, message, .. } => {
            let transient = *code >= 500 || *code == 429 || *code == 408;
            let text = match serde_json::from_str::<OciEnvelope>(message) {
                Ok(envelope) => envelope_message(&envelope),
                Err(_) if message.trim().is_empty() => "no message".to_owned(),
                Err(_) => truncate(message.trim()),
            };
            (format!("HTTP {code}: {text}"), transient)
        }
        E::UnauthorizedError { url } => (format!("not authorized for {url}"), false),
        E::AuthenticationFailure(reason) => (format!("authentication failed: {}", truncate(reason)), false),
        // Connection refused or reset, DNS, timeouts: the network, or a corrupted transfer.
        E::RequestError(_) | E::IoError(_) | E::DigestError(_) => (error_chain(error), true),
        _ => (error_chain(error), false),
    }
}

/// Whether the registry gave an error code `wanted` accepts for `error`, whether oci-client
/// parsed its envelope or left it in a server error's message.
pub fn has_error_code(error: &OciDistributionError, wanted: impl Fn(&OciErrorCode) -> bool) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| wanted(&e.code)),
        OciDistributionError::ServerError { message, .. } => serde_json::from_str::<OciEnvelope>(message)
            .is_ok_and(|envelope| envelope.errors.iter().any(|e| wanted(&e.code))),
        _ => false,
    }
}

/// `CODE: message` for each error the registry listed.
fn envelope_message(envelope: &OciEnvelope) -> String {
    let parts: Vec<String> = envelope
        .errors
        .iter()
        .map(|error| {
            let code = serde_json::to_value(&error.code)
                .ok()
                .and_then(|code| code.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", error.code));
            if error.message.is_empty() {
                code
            } else {
                format!("{code}: {}", truncate(&error.message))
            }
        })
        .collect();
    if parts.is_empty() {
        "the registry gave no reason".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Rate limits and expired upload sessions pass; everything else the registry says is final.
fn envelope_is_transient(envelope: &OciEnvelope) -> bool {
    envelope.errors.iter().any(|error| {
        matches!(
            error.code,
            OciErrorCode::Toomanyrequests | OciErrorCode::BlobUploadUnknown
        )
    })
}

/// An error and its sources, `outer: inner: innermost`, repeated messages dropped.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    truncate(&text)
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io;

    #[test]
    fn registry_failures_are_classified() {
        let envelope = |code: &str| {
            serde_json::from_value::<OciEnvelope>(json!({"errors": [{"code": code, "message": "m"}]})).unwrap()
        };
        let registry = |code: &str| OciDistributionError::RegistryError {
            envelope: envelope(code),
            url: "u".into(),
        };
        assert_eq!(
            describe(&registry("MANIFEST_UNKNOWN")),
            ("MANIFEST_UNKNOWN: m".to_owned(), false)
        );
        assert!(describe(&registry("TOOMANYREQUESTS")).1);
        let server = |code: u16, message: &str| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: message.into(),
        };
        assert!(describe(&server(503, "down")).1);
        assert!(!describe(&server(405, "")).1);
        let (message, transient) = describe(&server(405, r#"{"errors":[{"code":"UNSUPPORTED","message":"no"}]}"#));
        assert_eq!((message.as_str(), transient), ("HTTP 405: UNSUPPORTED: no", false));
        assert!(describe(&OciDistributionError::IoError(io::Error::other("reset"))).1);
        assert!(!describe(&OciDistributionError::UnauthorizedError { url: "u".into() }).1);
        let blob_unknown = |code: &OciErrorCode| *code == OciErrorCode::ManifestBlobUnknown;
        let unknown = r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
        assert!(has_error_code(&server(400, unknown), blob_unknown));
        assert!(has_error_code(&registry("MANIFEST_BLOB_UNKNOWN"), blob_unknown));
        assert!(!has_error_code(&registry("NAME_UNKNOWN"), blob_unknown));
        assert!(!has_error_code(&server(400, "<html>bad request</html>"), blob_unknown));
    }
}
