//! CloudEvents 1.0 over NATS: binary content mode out, binary or structured mode in.
//!
//! In binary mode every attribute and extension travels as a `ce-<name>` header whose value is
//! percent-encoded as the CloudEvents NATS binding demands (space, `"`, `%` and every character
//! outside printable US-ASCII become `%XX` of their UTF-8 bytes), `ce-datacontenttype` names the
//! media type of the payload, and the payload is the event's `data` (Baton: the CDEvent JSON).
//! Structured mode (`Content-Type: application/cloudevents+json`, the whole event as JSON) is
//! accepted on input so outside producers can publish the simple way.

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use bytes::Bytes;
use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Header prefix of CloudEvents attributes in binary mode.
pub const CE_PREFIX: &str = "ce-";
/// Content type of a structured-mode CloudEvent in JSON.
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";
/// Content type of Baton's event data.
pub const JSON: &str = "application/json";

/// A message that cannot be read as a CloudEvent. The message says which header or field is
/// wrong, so the producer can fix it; the stage runner dead-letters such messages with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A `ce-*` header value is not valid percent-encoded UTF-8.
    #[error("header `{header}` is malformed: {problem}")]
    MalformedHeader {
        /// The header name as received.
        header: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// A required attribute is missing.
    #[error(
        "not a CloudEvent: the `{0}` attribute is missing (binary mode needs `ce-specversion`, `ce-id`, `ce-source` and `ce-type` headers; structured mode needs Content-Type {STRUCTURED_JSON})"
    )]
    MissingAttribute(&'static str),
    /// The spec version is not 1.0.
    #[error("unsupported CloudEvents spec version `{0}`: Baton speaks CloudEvents 1.0 (`ce-specversion: 1.0`)")]
    UnsupportedSpecVersion(String),
    /// An attribute value has the wrong form (e.g. a `time` that is not RFC 3339).
    #[error("attribute `{attribute}` is invalid: {problem}")]
    InvalidAttribute {
        /// The attribute name.
        attribute: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The payload does not match its declared content type.
    #[error("payload is not valid {content_type}: {problem}")]
    InvalidPayload {
        /// The declared content type.
        content_type: String,
        /// What the parser said.
        problem: String,
    },
}

/// What the CloudEvents NATS binding percent-encodes in a header value: everything but
/// printable US-ASCII, and space, `"` and `%` (non-ASCII bytes are always encoded). Upper-case
/// hex, as the binding recommends.
const HEADER_ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Percent-encodes a header value as the CloudEvents NATS binding demands.
pub fn percent_encode(value: &str) -> std::borrow::Cow<'_, str> {
    utf8_percent_encode(value, HEADER_ENCODED).into()
}

/// The header of a context attribute, without allocating for the common ones.
fn header_name(attribute: &str) -> Option<&'static str> {
    Some(match attribute {
        "id" => "ce-id",
        "source" => "ce-source",
        "type" => "ce-type",
        "subject" => "ce-subject",
        "time" => "ce-time",
        "dataschema" => "ce-dataschema",
        "traceparent" => "ce-traceparent",
        "tracestate" => "ce-tracestate",
        _ => return None,
    })
}

/// Decodes a header value: first a double-quoted string is unescaped (RFC 7230 §3.2.6), then
/// one round of percent-decoding; byte sequences that are not valid UTF-8 are rejected.
///
/// # Errors
/// A dangling or non-hex `%` escape, an unterminated quoted string, or invalid UTF-8.
pub fn percent_decode(value: &str) -> Result<String, String> {
    let unquoted = unquote(value.trim())?;
    // The crate passes a malformed escape through as is; the binding makes it an error.
    let bytes = unquoted.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
        if !bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            return Err(format!("`%` at byte {i} is not followed by two hex digits"));
        }
    }
    percent_decode_str(&unquoted)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| format!("percent-decoded bytes are not valid UTF-8 ({e})"))
}

fn unquote(value: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Ok(value.into());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("quoted string ends with a lone backslash")?),
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out.into())
                } else {
                    Err("characters follow the closing quote".to_owned())
                };
            }
            c => out.push(c),
        }
    }
    Err("quoted string has no closing quote".to_owned())
}

/// Encodes an event in binary content mode: `ce-*` headers plus the data as payload.
/// (Publishing adds `Nats-Msg-Id` = the event id, so JetStream drops a duplicate publish.)
pub fn encode_binary(event: &Event) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    for (name, value) in event.iter() {
        if name == "datacontenttype" || name == "specversion" {
            continue;
        }
        let value = value.to_string();
        let value = percent_encode(&value);
        match header_name(name) {
            Some(header) => headers.insert(header, value.as_ref()),
            None => headers.insert(format!("{CE_PREFIX}{name}").as_str(), value.as_ref()),
        }
    }
    headers.insert("ce-specversion", "1.0");
    let (content_type, payload) = match event.data() {
        None => (event.datacontenttype().map(str::to_owned), Bytes::new()),
        Some(Data::Json(v)) => (
            Some(event.datacontenttype().unwrap_or(JSON).to_owned()),
            Bytes::from(serde_json::to_vec(v).expect("a JSON value always serializes")),
        ),
        Some(Data::String(s)) => (
            Some(event.datacontenttype().unwrap_or("text/plain").to_owned()),
            Bytes::from(s.clone().into_bytes()),
        ),
        Some(Data::Binary(b)) => (
            Some(event.datacontenttype().unwrap_or("application/octet-stream").to_owned()),
            Bytes::from(b.clone()),
        ),
    };
    if let Some(ct) = content_type {
        headers.insert("ce-datacontenttype", percent_encode(&ct).as_ref());
    }
    (headers, payload)
}

/// The context attributes of a binary-mode message, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// `id`.
    pub id: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `type`.
    pub ty: &'a str,
    /// `subject`, if any.
    pub subject: Option<&'a str>,
    /// `time` (RFC 3339), if any.
    pub time: Option<&'a str>,
    /// `datacontenttype` of the payload.
    pub datacontenttype: &'a str,
}

/// The `ce-*` headers of a binary-mode message with these attributes.
pub fn binary_headers(a: &Attributes<'_>) -> HeaderMap {
    // Static header names skip the per-insert validation and allocation of `&str` names.
    const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
    const ID: HeaderName = HeaderName::from_static("ce-id");
    const SOURCE: HeaderName = HeaderName::from_static("ce-source");
    const TYPE: HeaderName = HeaderName::from_static("ce-type");
    const SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
    const TIME: HeaderName = HeaderName::from_static("ce-time");
    const DATACONTENTTYPE: HeaderName = HeaderName::from_static("ce-datacontenttype");
    let mut headers = HeaderMap::new();
    headers.insert(SPECVERSION, "1.0");
    headers.insert(ID, percent_encode(a.id).as_ref());
    headers.insert(SOURCE, percent_encode(a.source).as_ref());
    headers.insert(TYPE, percent_encode(a.ty).as_ref());
    if let Some(subject) = a.subject {
        headers.insert(SUBJECT, percent_encode(subject).as_ref());
    }
    if let Some(time) = a.time {
        headers.insert(TIME, percent_encode(time).as_ref());
    }
    headers.insert(DATACONTENTTYPE, percent_encode(a.datacontenttype).as_ref());
    headers
}

/// Adds the extension attribute `name` (already checked with [`is_valid_extension_name`]).
pub fn insert_extension(headers: &mut HeaderMap, name: &str, value: &str) {
    let value = percent_encode(value);
    match header_name(name) {
        Some(header) => headers.insert(header, value.as_ref()),
        None => headers.insert(format!("{CE_PREFIX}{name}").as_str(), value.as_ref()),
    }
}

/// Decodes a NATS message into a CloudEvent: binary mode when `ce-specversion` is present,
/// structured mode when `Content-Type` is `application/cloudevents+json` (or, with no headers
/// at all, when the payload is a JSON object with a `specversion`).
///
/// # Errors
/// Says which header, attribute or payload is wrong; see [`CodecError`].
pub fn decode(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Event, CodecError> {
    let header = |name: &str| headers.and_then(|h| find_header(h, name));
    if header("ce-specversion").is_some() {
        return decode_binary(headers.expect("checked above"), payload);
    }
    let content_type = header("content-type").map(|v| v.to_ascii_lowercase());
    let structured = match &content_type {
        Some(ct) => ct.starts_with(STRUCTURED_JSON),
        None => payload.first() == Some(&b'{'),
    };
    if !structured {
        return Err(CodecError::MissingAttribute("specversion"));
    }
    decode_structured(payload)
}

fn find_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}

fn decode_binary(headers: &HeaderMap, payload: &[u8]) -> Result<Event, CodecError> {
    let mut builder = EventBuilderV10::new();
    let (mut id, mut source, mut ty, mut content_type, mut dataschema) = (None, None, None, None, None);
    for (name, values) in headers.iter() {
        let lower = AsRef::<str>::as_ref(name).to_ascii_lowercase();
        let Some(attribute) = lower.strip_prefix(CE_PREFIX) else {
            continue;
        };
        let raw = values.first().map(|v| v.as_str()).unwrap_or_default();
        let value = percent_decode(raw).map_err(|problem| CodecError::MalformedHeader {
            header: name.to_string(),
            problem,
        })?;
        match attribute {
            "specversion" if value != "1.0" => {
                return Err(CodecError::UnsupportedSpecVersion(value));
            }
            "specversion" => {}
            "id" => id = Some(value),
            "source" => source = Some(value),
            "type" => ty = Some(value),
            "subject" => builder = builder.subject(value),
            "time" => {
                chrono::DateTime::parse_from_rfc3339(&value).map_err(|e| CodecError::InvalidAttribute {
                    attribute: "time".into(),
                    problem: format!("`{value}` is not an RFC 3339 timestamp ({e})"),
                })?;
                builder = builder.time(value);
            }
            "datacontenttype" => content_type = Some(value),
            "dataschema" => dataschema = Some(value),
            ext if is_valid_extension_name(ext) => builder = builder.extension(ext, ExtensionValue::String(value)),
            other => {
                return Err(CodecError::MalformedHeader {
                    header: name.to_string(),
                    problem: format!(
                        "`{other}` is not a valid CloudEvents attribute name (lower-case letters and digits only)"
                    ),
                });
            }
        }
    }
    let id = id.filter(|s| !s.is_empty()).ok_or(CodecError::MissingAttribute("id"))?;
    let source = source
        .filter(|s| !s.is_empty())
        .ok_or(CodecError::MissingAttribute("source"))?;
    let ty = ty
        .filter(|s| !s.is_empty())
        .ok_or(CodecError::MissingAttribute("type"))?;
    builder = builder.id(id).source(source).ty(ty);
    if !payload.is_empty() || content_type.is_some() {
        let ct = content_type.unwrap_or_else(|| JSON.to_owned());
        let data = if is_json(&ct) {
            Data::Json(serde_json::from_slice(payload).map_err(|e| CodecError::InvalidPayload {
                content_type: ct.clone(),
                problem: e.to_string(),
            })?)
        } else {
            Data::Binary(payload.to_vec())
        };
        builder = match dataschema {
            Some(schema) => builder.data_with_schema(ct, schema.as_str(), data),
            None => builder.data(ct, data),
        };
    }
    builder.build().map_err(|e| CodecError::InvalidAttribute {
        attribute: "event".into(),
        problem: e.to_string(),
    })
}

fn decode_structured(payload: &[u8]) -> Result<Event, CodecError> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| CodecError::InvalidPayload {
        content_type: STRUCTURED_JSON.into(),
        problem: e.to_string(),
    })?;
    for required in ["specversion", "id", "source", "type"] {
        if value.get(required).is_none() {
            return Err(CodecError::MissingAttribute(match required {
                "specversion" => "specversion",
                "id" => "id",
                "source" => "source",
                _ => "type",
            }));
        }
    }
    match value.get("specversion").and_then(|v| v.as_str()) {
        Some("1.0") => {}
        other => {
            return Err(CodecError::UnsupportedSpecVersion(other.unwrap_or("").to_owned()));
        }
    }
    serde_json::from_value(value).map_err(|e| CodecError::InvalidPayload {
        content_type: STRUCTURED_JSON.into(),
        problem: e.to_string(),
    })
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == JSON || essence.ends_with("+json") || essence == "text/json"
}

/// CloudEvents extension names are lower-case ASCII letters and digits.
pub fn is_valid_extension_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A string extension attribute of an event, if present.
pub fn extension_str<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    match event.extension(name) {
        Some(ExtensionValue::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        EventBuilderV10::new()
            .id("id with spaces, % and \"quotes\" — ünïcødé ✓")
            .source("/baton/listener?repo=acme shop")
            .ty("dev.cdevents.change.merged.0.3.0")
            .subject("commit 0a1b %2F")
            .time("2026-11-22T03:00:00.123456Z")
            .extension("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .extension("tracestate", "vendor=a b,\"x\"=%")
            .data(JSON, json!({"context": {"id": "é"}, "n": 1}))
            .build()
            .unwrap()
    }

    #[test]
    fn encoding_follows_the_binding() {
        assert_eq!(percent_encode("Euro € 😀"), "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert_eq!(percent_encode("a%b\"c d"), "a%25b%22c%20d");
        assert_eq!(percent_encode("line\r\nbreak"), "line%0D%0Abreak");
        assert_eq!(percent_decode("Euro%20%e2%82%ac").unwrap(), "Euro €");
        // Unnecessary encoding is accepted.
        assert_eq!(percent_decode("%41bc").unwrap(), "Abc");
        // Quoted strings are unescaped first.
        assert_eq!(percent_decode("\"a \\\"b\\\" %20\"").unwrap(), "a \"b\"  ");
    }

    #[test]
    fn hostile_escapes_are_refused_naming_the_byte() {
        for (value, at) in [("%", 0), ("ab%4", 2), ("%zz", 0), ("a%%41", 1), ("%4g", 0)] {
            let problem = percent_decode(value).unwrap_err();
            assert!(problem.contains(&format!("byte {at}")), "{value}: {problem}");
        }
        // Well-formed escapes of bytes that are not UTF-8.
        assert!(percent_decode("%ff%fe").unwrap_err().contains("not valid UTF-8"));
        assert!(percent_decode("\"unterminated").is_err());
        // Every control character and the binding's specials survive a round trip.
        let hostile: String = (0u8..0x20).map(char::from).chain("\u{7f} \"%€".chars()).collect();
        let encoded = percent_encode(&hostile);
        assert!(
            encoded.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'),
            "{encoded}"
        );
        assert_eq!(percent_decode(&encoded).unwrap(), hostile);
    }

    #[test]
    fn binary_round_trip_keeps_everything() {
        let event = sample();
        let (headers, payload) = encode_binary(&event);
        for (name, values) in headers.iter() {
            for v in values {
                assert!(
                    v.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "{name}: {v:?} is not printable ASCII"
                );
            }
        }
        assert_eq!(find_header(&headers, "ce-datacontenttype"), Some("application/json"));
        let back = decode(Some(&headers), &payload).unwrap();
        assert_eq!(back.id(), event.id());
        assert_eq!(back.source(), event.source());
        assert_eq!(back.ty(), event.ty());
        assert_eq!(back.subject(), event.subject());
        assert_eq!(back.time(), event.time());
        assert_eq!(
            extension_str(&back, "traceparent"),
            extension_str(&event, "traceparent")
        );
        assert_eq!(extension_str(&back, "tracestate"), Some("vendor=a b,\"x\"=%"));
        assert_eq!(back.data(), event.data());
    }

    #[test]
    fn structured_mode_is_accepted() {
        let event = sample();
        let payload = serde_json::to_vec(&event).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", STRUCTURED_JSON);
        let back = decode(Some(&headers), &payload).unwrap();
        assert_eq!(back, event);
        // Without any header, a JSON object with a specversion is read as structured too.
        assert_eq!(decode(None, &payload).unwrap(), event);
    }

    #[test]
    fn malformed_headers_are_rejected_with_the_header_name() {
        let (headers, payload) = encode_binary(&sample());
        for (bad, expect) in [
            ("abc%2", "two hex digits"),
            ("abc%zz", "two hex digits"),
            ("%C0%A0", "UTF-8"),
            ("\"open", "closing quote"),
        ] {
            let mut h = headers.clone();
            h.insert("ce-subject", bad);
            let err = decode(Some(&h), &payload).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("ce-subject") && text.contains(expect), "{bad}: {text}");
        }
        let mut h = headers.clone();
        h.insert("ce-time", "yesterday");
        assert!(decode(Some(&h), &payload).unwrap_err().to_string().contains("RFC 3339"));
        let mut h = headers.clone();
        h.insert("ce-specversion", "0.3");
        assert!(matches!(
            decode(Some(&h), &payload),
            Err(CodecError::UnsupportedSpecVersion(_))
        ));
        let mut h = headers.clone();
        h.insert("ce-Bad_Name", "x");
        assert!(
            decode(Some(&h), &payload)
                .unwrap_err()
                .to_string()
                .contains("ce-Bad_Name")
        );
    }

    #[test]
    fn missing_attributes_and_bad_payloads_are_named() {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0");
        h.insert("ce-source", "/x");
        h.insert("ce-type", "t");
        assert_eq!(decode(Some(&h), b"{}").unwrap_err(), CodecError::MissingAttribute("id"));
        h.insert("ce-id", "1");
        h.insert("ce-datacontenttype", "application/json");
        assert!(
            decode(Some(&h), b"{not json")
                .unwrap_err()
                .to_string()
                .contains("payload is not valid application/json")
        );
        assert_eq!(
            decode(None, b"plain text").unwrap_err(),
            CodecError::MissingAttribute("specversion")
        );
    }
}
