//! The promoter's keys in the `baton-state` bucket, as the web reads them: what each
//! environment runs (`promoter.current.<app>.<env>`), the approval request
//! (`promoter.approval.<app>.<env>`), a promotion waiting for a soak or a freeze
//! (`promoter.scheduled.<app>.<env>`), quarantined releases (`promoter.bad.<release>`) and the
//! last valid `environments.yaml` (`promoter.policy`); and the deployer's drift record of each
//! environment (`deployer.drift.<app>.<env>`). The promoter writes its keys
//! (services/promoter/src/state.rs), the deployer its drift records; the web only reads the fields
//! it shows, so a field either adds later never breaks it.

use baton_schemas::drift::SyncState;
use baton_schemas::environments::EnvironmentsFile;
use baton_schemas::release::{ApprovalData, Pin};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// What an environment runs for an app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Current {
    /// The release.
    pub release: String,
    /// The config-repo commit of the promotion that put it there.
    #[serde(default)]
    pub config_commit: String,
    /// Since when it is healthy (`None`: not yet, or failed).
    #[serde(default)]
    pub healthy_since: Option<DateTime<Utc>>,
    /// The pin, when pinned.
    #[serde(default)]
    pub pinned: Option<Pin>,
}

/// An approval request, open or closed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Approval {
    /// The request and its votes.
    pub data: ApprovalData,
    /// Set once closed.
    #[serde(default)]
    pub closed: Option<Closure>,
}

/// How an approval request ended.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Closure {
    /// `approved`, `rejected`, `cancelled` or `expired`.
    pub status: String,
}

/// A promotion waiting for a time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Scheduled {
    /// The release.
    pub release: String,
    /// Not before this time.
    pub not_before: DateTime<Utc>,
    /// What it waits for (a soak, a freeze window).
    #[serde(default)]
    pub waiting_for: String,
}

/// A quarantined release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Bad {
    /// Who marked it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Whether an environment's live objects match its config commit, as the deployer last found
/// (the fields of `baton_schemas::drift::DriftRecord` the matrix shows).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// `synced` or `drifted`.
    pub state: SyncState,
    /// The objects that differ, as `Kind/name`: those the record lists.
    #[serde(default)]
    pub objects: Vec<String>,
    /// Objects that differ beyond those listed.
    #[serde(default)]
    pub objects_omitted: u64,
    /// When the state began.
    pub since: DateTime<Utc>,
    /// Why the last heal did not end the drift.
    #[serde(default)]
    pub heal_failed: Option<String>,
}

/// The last valid `environments.yaml` as the promoter keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct PolicyRecord {
    text: String,
}

/// One key of the bucket, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Key<'a> {
    /// `promoter.current.<app token>.<env>`.
    Current(&'a str, &'a str),
    /// `promoter.approval.<app token>.<env>`.
    Approval(&'a str, &'a str),
    /// `promoter.scheduled.<app token>.<env>`.
    Scheduled(&'a str, &'a str),
    /// `promoter.bad.<release token>`.
    Bad(&'a str),
    /// `promoter.policy`.
    Policy,
    /// `deployer.drift.<app token>.<env>`.
    Drift(&'a str, &'a str),
}

impl<'a> Key<'a> {
    /// The key `key`, when it is one the web reads.
    pub fn parse(key: &'a str) -> Option<Self> {
        if let Some(rest) = key.strip_prefix("deployer.drift.") {
            return rest
                .split_once('.')
                .filter(|(app, env)| !app.is_empty() && !env.is_empty())
                .map(|(a, e)| Self::Drift(a, e));
        }
        let rest = key.strip_prefix("promoter.")?;
        if rest == "policy" {
            return Some(Self::Policy);
        }
        let (kind, rest) = rest.split_once('.')?;
        let cell = || {
            rest.split_once('.')
                .filter(|(app, env)| !app.is_empty() && !env.is_empty())
        };
        match kind {
            "current" => cell().map(|(a, e)| Self::Current(a, e)),
            "approval" => cell().map(|(a, e)| Self::Approval(a, e)),
            "scheduled" => cell().map(|(a, e)| Self::Scheduled(a, e)),
            "bad" if !rest.is_empty() => Some(Self::Bad(rest)),
            _ => None,
        }
    }
}

/// The environments of `environments.yaml` kept under `promoter.policy`, when it parses.
pub fn policy(value: &[u8]) -> Option<EnvironmentsFile> {
    let record: PolicyRecord = serde_json::from_slice(value).ok()?;
    EnvironmentsFile::parse(&record.text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_app_and_environment() {
        assert_eq!(
            Key::parse("promoter.current.acme_shop.production"),
            Some(Key::Current("acme_shop", "production"))
        );
        assert_eq!(
            Key::parse("promoter.approval.shop.prod"),
            Some(Key::Approval("shop", "prod"))
        );
        assert_eq!(Key::parse("promoter.bad.rel-1"), Some(Key::Bad("rel-1")));
        assert_eq!(Key::parse("promoter.policy"), Some(Key::Policy));
        assert_eq!(Key::parse("promoter.bad-commit.shop.abc"), None);
        assert_eq!(Key::parse("promoter.release.rel-1"), None);
        assert_eq!(Key::parse("promoter.current.shop"), None);
        assert_eq!(Key::parse("poll.shop.main"), None);
        assert_eq!(
            Key::parse("deployer.drift.acme_shop.staging"),
            Some(Key::Drift("acme_shop", "staging"))
        );
        assert_eq!(Key::parse("deployer.drift.acme_shop"), None);
        assert_eq!(Key::parse("deployer.lease.acme_shop.staging"), None);
    }

    #[test]
    fn the_current_record_is_read_as_the_promoter_writes_it() {
        let current: Current = serde_json::from_str(
            r#"{"release":"r1","promotion":"p","config_commit":"c1","action":"promote",
                "healthy_since":"2024-05-01T10:00:00Z","last_healthy":null,"pinned":null}"#,
        )
        .unwrap();
        assert_eq!(current.release, "r1");
        assert_eq!(current.config_commit, "c1");
        assert!(current.healthy_since.is_some());
    }

    #[test]
    fn the_drift_record_is_read_as_the_deployer_writes_it() {
        let record = baton_schemas::drift::DriftRecord {
            state: SyncState::Drifted,
            config_commit: "c1".into(),
            objects: vec!["Deployment/shop".into()],
            objects_omitted: 0,
            fingerprint: "f".into(),
            since: "2024-05-01T10:00:00Z".parse().unwrap(),
            heal_failed: Some("rollout failed".into()),
        };
        let drift: Drift = serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(drift.state, SyncState::Drifted);
        assert_eq!(drift.objects, ["Deployment/shop"]);
        assert_eq!(drift.since, record.since);
        assert_eq!(drift.heal_failed.as_deref(), Some("rollout failed"));
    }
}
