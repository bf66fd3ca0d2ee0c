//! The query parameters of the event log and its live stream, parsed: what each accepts is said
//! in the 400 that refuses it.

use baton_schemas::EventType;
use chrono::{DateTime, Utc};

use crate::http::{Params, WebError};
use crate::view::{EventFilter, short_type};

/// The event log's parameters (`/events`, `/api/events`, `/events/live`).
pub const EVENT_PARAMS: &[&str] = &["app", "type", "environment", "release", "since", "until", "limit"];

/// Rows a page shows unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rows one answer holds.
pub const MAX_LIMIT: usize = 1000;

/// The filter the parameters describe, times read at `now`.
///
/// # Errors
/// [`WebError::BadParameter`] naming the first bad one.
pub fn event_filter(params: &Params, now: DateTime<Utc>) -> Result<EventFilter, WebError> {
    let filter = EventFilter {
        app: params.get("app").map(str::to_owned),
        ty: params.get("type").map(event_type).transpose()?,
        environment: params.get("environment").map(str::to_owned),
        release: params.get("release").map(str::to_owned),
        since: params.get("since").map(|v| instant("since", v, now)).transpose()?,
        until: params.get("until").map(|v| instant("until", v, now)).transpose()?,
    };
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since >= until
    {
        return Err(WebError::bad("until", "must be after `since`"));
    }
    Ok(filter)
}

/// `limit`, 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
///
/// # Errors
/// [`WebError::BadParameter`] naming `limit`.
pub fn limit(params: &Params) -> Result<usize, WebError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| WebError::bad("limit", format!("`{v}` is not a number from 1 to {MAX_LIMIT}"))),
    }
}

/// An event type, as its full type string or `subject.predicate` (`service.deployed`).
///
/// # Errors
/// [`WebError::BadParameter`] naming `type` and listing the types.
pub fn event_type(value: &str) -> Result<EventType, WebError> {
    if let Ok(ty) = value.parse::<EventType>() {
        return Ok(ty);
    }
    EventType::ALL
        .iter()
        .copied()
        .find(|ty| short_type(*ty) == value)
        .ok_or_else(|| {
            let known: Vec<String> = EventType::ALL.iter().map(|t| short_type(*t)).collect();
            WebError::bad(
                "type",
                format!("unknown event type `{value}`; use one of {}", known.join(", ")),
            )
        })
}

/// A point in time: RFC 3339 (`2024-05-01T10:00:00Z`) or a duration before `now` (`90m`, `2h`,
/// `7days`).
///
/// # Errors
/// [`WebError::BadParameter`] naming `name`.
pub fn instant(name: &str, value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, WebError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    humantime::parse_duration(value)
        .ok()
        .and_then(|d| chrono::TimeDelta::from_std(d).ok())
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| {
            WebError::bad(
                name,
                format!(
                    "`{value}` is neither an RFC 3339 time (2024-05-01T10:00:00Z) nor a duration ago (90m, 2h, 7days)"
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params {
        Params::parse(Some(q), EVENT_PARAMS).unwrap()
    }

    #[test]
    fn types_are_read_whole_or_short() {
        assert_eq!(event_type("service.deployed").unwrap(), EventType::ServiceDeployed);
        assert_eq!(
            event_type("dev.cdevents.service.deployed.0.3.0").unwrap(),
            EventType::ServiceDeployed
        );
        let e = event_type("service.exploded").unwrap_err();
        assert!(e.to_string().starts_with("query parameter `type`"), "{e}");
        assert!(e.to_string().contains("baton-deployment.failed"), "{e}");
    }

    #[test]
    fn times_and_limits_name_their_parameter() {
        let now = "2024-05-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let f = event_filter(&params("since=2h&until=2024-05-01T11:30:00Z"), now).unwrap();
        assert_eq!(f.since.unwrap().to_rfc3339(), "2024-05-01T10:00:00+00:00");
        let e = event_filter(&params("since=yesterday"), now).unwrap_err();
        assert!(e.to_string().contains("`since`"), "{e}");
        let e = event_filter(&params("since=1h&until=2h"), now).unwrap_err();
        assert!(e.to_string().contains("`until`"), "{e}");
        assert_eq!(limit(&params("")).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(&params("limit=5")).unwrap(), 5);
        for bad in ["limit=0", "limit=5000", "limit=ten"] {
            assert!(limit(&params(bad)).unwrap_err().to_string().contains("`limit`"));
        }
    }
}
