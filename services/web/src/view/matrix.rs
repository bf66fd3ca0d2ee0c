//! The environment matrix: one row per app, one cell per environment, each cell saying what runs
//! there, whether its live objects still match (the deployer's drift record) and what stands in
//! the way of the next release. Computed from the view at `now` (freeze
//! windows and expiries depend on it), a pure function so it is unit-tested with a fixed clock.

use baton_schemas::EventType;
use baton_schemas::drift::names_and_more;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{AppId, EnvId, View};

/// The whole matrix.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Matrix {
    /// The columns, in promotion order.
    pub environments: Vec<String>,
    /// The rows, by app name.
    pub apps: Vec<Row>,
    /// When it was computed.
    pub at: DateTime<Utc>,
}

/// One app.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The app's name.
    pub app: String,
    /// One cell per environment, in the matrix's column order.
    pub cells: Vec<MatrixCell>,
}

/// One app in one environment.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MatrixCell {
    /// The environment.
    pub environment: String,
    /// What runs there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<CellRelease>,
    /// Since when it runs there (healthy since, else promoted at).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// `healthy`, `failed`, `rolling-out`, `pending` (promoted, no rollout yet) or `unknown`.
    pub health: &'static str,
    /// The pin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Mark>,
    /// The running release's quarantine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<Mark>,
    /// The freeze window in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen: Option<Frozen>,
    /// The open approval request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<PendingApproval>,
    /// The promotion held, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldPromotion>,
    /// Whether the live objects match the config commit, as the deployer last found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// A `sync` or `restore` of the running release under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reapplying: Option<Reapply>,
}

/// The deployer's drift record of a cell.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// `synced` or `drifted`.
    pub state: &'static str,
    /// The objects that differ, as `Kind/name` (empty when synced): those the record lists.
    pub objects: Vec<String>,
    /// Objects that differ beyond those listed.
    #[serde(skip_serializing_if = "baton_schemas::drift::is_zero")]
    pub objects_omitted: u64,
    /// Since when.
    pub since: DateTime<Utc>,
    /// Why the last heal did not end the drift, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_failed: Option<String>,
}

impl SyncStatus {
    /// How many objects differ, listed or not.
    pub fn count(&self) -> u64 {
        self.objects.len() as u64 + self.objects_omitted
    }

    /// The objects that differ, for a tooltip: `Kind/name, …` and how many more.
    pub fn names(&self) -> String {
        names_and_more(&self.objects, usize::MAX, self.objects_omitted)
    }
}

/// A `sync` or `restore` not yet reported synced.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reapply {
    /// `sync` or `restore`.
    pub action: String,
    /// When it was committed.
    pub at: DateTime<Utc>,
}

/// A release in a cell.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CellRelease {
    /// Its id.
    pub id: String,
    /// Its commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Its image digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A pin or a quarantine: who, why, when.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// Who.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A freeze window covering `now`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Frozen {
    /// The window's name.
    pub window: String,
    /// When it ends.
    pub until: DateTime<Utc>,
}

/// An open approval request.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingApproval {
    /// The request's id.
    pub id: String,
    /// The release waiting.
    pub release: String,
    /// Who may approve.
    pub approvers: Vec<String>,
    /// How many approvals are needed.
    pub required: u32,
    /// The decisions so far.
    pub votes: Vec<Vote>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// One decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Vote {
    /// Who.
    pub actor: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A promotion the promoter holds back.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeldPromotion {
    /// The release held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Why.
    pub reason: String,
    /// Since when.
    pub at: DateTime<Utc>,
    /// When it goes ahead by itself, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl View {
    /// The matrix at `now`.
    pub fn matrix(&self, now: DateTime<Utc>) -> Matrix {
        let order = self.environment_order();
        // An app is a row once it has a release: events recorded under a token that is no app
        // (a command concerning no app goes under `subjects::NO_APP`) make no row.
        let mut apps: Vec<AppId> = (0..self.apps.len())
            .filter(|a| !self.apps[*a].releases.is_empty())
            .map(|a| AppId::try_from(a).unwrap_or(AppId::MAX))
            .collect();
        apps.sort_by(|a, b| self.apps[*a as usize].name.cmp(&self.apps[*b as usize].name));
        Matrix {
            environments: order.iter().map(|e| self.environment_name(*e).to_owned()).collect(),
            apps: apps
                .into_iter()
                .map(|app| Row {
                    app: self.apps[app as usize].name.to_string(),
                    cells: order.iter().map(|env| self.cell(app, *env, now)).collect(),
                })
                .collect(),
            at: now,
        }
    }

    /// One cell at `now`.
    pub fn cell(&self, app: AppId, env: EnvId, now: DateTime<Utc>) -> MatrixCell {
        let token = &self.apps[app as usize].token;
        let environment = self.environment_name(env);
        let key = (token.clone(), Box::<str>::from(environment));
        let events = self.cells.get(&(app, env));
        let current = self.promoter.current.get(&key);
        let release_id = current.map(|c| c.release.as_str()).or_else(|| {
            events
                .and_then(|c| c.modified.as_ref())
                .map(|m| &*self.releases[m.release as usize].id)
        });
        let release = release_id.map(|id| {
            let known = self.release_named(id).ok().map(|r| &self.releases[r as usize]);
            CellRelease {
                id: id.to_owned(),
                commit: known.and_then(|r| r.commit.as_deref()).map(str::to_owned),
                digest: known.and_then(|r| r.image.as_ref()).map(|i| i.digest.clone()),
            }
        });
        let rollout = events.and_then(|c| c.rollout.as_ref());
        let rollout_of_current = rollout.filter(|r| {
            r.release
                .is_some_and(|id| Some(&*self.releases[id as usize].id) == release_id)
        });
        let health = match rollout_of_current.map(|r| r.ty) {
            _ if rollout_of_current.is_some_and(super::Rollout::is_healthy) => "healthy",
            Some(EventType::DeploymentFailed) => "failed",
            Some(EventType::DeploymentStarted | EventType::DeploymentSuperseded) => "rolling-out",
            _ if current.is_some_and(|c| c.healthy_since.is_some()) => "healthy",
            _ if release.is_some() => "pending",
            _ => "unknown",
        };
        let since = current
            .and_then(|c| c.healthy_since)
            .or_else(|| rollout_of_current.filter(|_| health == "healthy").map(|r| r.at))
            .or_else(|| events.and_then(|c| c.modified.as_ref()).map(|m| m.at));
        let pinned = current.and_then(|c| c.pinned.as_ref()).map(|p| Mark {
            by: p.by.clone(),
            reason: p.reason.clone(),
            at: p.at,
        });
        let quarantined = release_id
            .and_then(|id| {
                self.promoter
                    .bad
                    .get(baton_schemas::subjects::sanitize_token(id).as_str())
            })
            .map(|b| Mark {
                by: b.actor.clone(),
                reason: b.reason.clone(),
                at: b.at,
            });
        let frozen = self
            .promoter
            .policy
            .as_ref()
            .and_then(|p| p.get(environment))
            .and_then(|e| {
                e.freeze.iter().find_map(|w| {
                    w.active_until(now).map(|until| Frozen {
                        window: w.label(),
                        until,
                    })
                })
            });
        let approval = self
            .promoter
            .approvals
            .get(&key)
            .filter(|a| a.closed.is_none() && a.data.expires_at > now)
            .map(|a| PendingApproval {
                id: a.data.approval.clone(),
                release: a.data.release.release.clone(),
                approvers: a.data.approvers.clone(),
                required: a.data.required,
                votes: a
                    .data
                    .votes
                    .iter()
                    .map(|v| Vote {
                        actor: v.actor.clone(),
                        decision: v.decision.clone(),
                        at: v.at,
                    })
                    .collect(),
                expires_at: a.data.expires_at,
            });
        let held = match self.promoter.scheduled.get(&key) {
            Some(s) => Some(HeldPromotion {
                release: Some(s.release.clone()),
                reason: s.waiting_for.clone(),
                at: s.not_before,
                until: Some(s.not_before.to_rfc3339()),
            }),
            None => events.and_then(|c| c.held.as_ref()).map(|h| HeldPromotion {
                release: h.release.map(|r| self.releases[r as usize].id.to_string()),
                reason: h.reason.to_string(),
                at: h.at,
                until: h.retry_at.as_deref().map(str::to_owned),
            }),
        };
        let sync = self.drift.get(&key).map(|d| SyncStatus {
            state: d.state.as_str(),
            objects: d.objects.clone(),
            objects_omitted: d.objects_omitted,
            since: d.since,
            heal_failed: d.heal_failed.clone(),
        });
        let reapplying = events
            .and_then(|c| c.reapplying.as_ref())
            .filter(|r| Some(&*self.releases[r.release as usize].id) == release_id)
            .map(|r| Reapply {
                action: r.action.to_string(),
                at: r.at,
            });
        MatrixCell {
            environment: environment.to_owned(),
            release,
            since,
            health,
            pinned,
            quarantined,
            frozen,
            approval,
            held,
            sync,
            reapplying,
        }
    }
}
