//! DORA's four key metrics of an application in an environment, computed from the event log:
//! deployment frequency, lead time for changes, change failure rate and time to restore.
//!
//! A [`DoraLedger`] is fed every event in stream order ([`DoraLedger::observe`]) and keeps only
//! what the formulas need: when each change's first commit was made, and per release and
//! environment a few timestamps (never the events). The web UI keeps one current from its
//! consumer; `baton dora` fills one from a replay. [`DoraLedger::report`] then answers any
//! window `[from, to)`, with a series of buckets for charts. The formulas, the events they read
//! and their edge cases are written in `docs/dora.md`; this module implements exactly that:
//!
//! 1. A **change** is a release (its id is the `chainId`). It starts at the earliest commit
//!    timestamp its `change.merged` carried (the event's own time when no commit has one).
//! 2. A release's **rollout** in an environment is *settled* at its first outcome there: healthy
//!    (`service.deployed`, `service.upgraded`) or failed. It **failed** there when its rollout
//!    failed (`baton-deployment.failed` of a promotion), when the environment was rolled back
//!    from it (`environment.modified` or `service.rolledback` moving away from it), or when it
//!    was quarantined (`baton-release.quarantined`) while it was the environment's release. A
//!    failure learned after the rollout settled still counts: it is the change's fate.
//! 3. A **deployment** is a release's first healthy event in an environment: later healthy
//!    events of the same release there (a re-applied promotion, a rollback to it) are not new
//!    deployments, and a rollback is a restore, never a deployment.
//! 4. An environment is **failing** from a failure there until its next healthy event
//!    (deployed, upgraded or rolled back): that healthy event is a **restore**. An environment
//!    that never ran anything healthy has nothing to restore, so a failure there opens nothing.
//! 5. A report counts deployments and restores by when they happened, and changes by when
//!    they settled, inside `[from, to)`; medians are `None` (no data) when nothing was counted.

use std::collections::{BTreeMap, HashMap};

use baton_schemas::release::PromotionAction;
use baton_schemas::{CdEvent, EventType};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most buckets a report's series holds: a finer bucket is widened so that the series of a
/// long window stays small.
pub const MAX_BUCKETS: u64 = 1000;

/// The event types the ledger reads; [`DoraLedger::observe`] ignores every other. A reader of
/// the log may subscribe to these alone.
pub const EVENT_TYPES: &[EventType] = &[
    EventType::ChangeMerged,
    EventType::EnvironmentModified,
    EventType::ServiceDeployed,
    EventType::ServiceUpgraded,
    EventType::ServiceRolledBack,
    EventType::DeploymentFailed,
    EventType::ReleaseQuarantined,
];

/// Seconds in a day: deployment frequency is per day.
const SECONDS_PER_DAY: f64 = 86_400.0;

/// The DORA figures of every application and environment seen, kept current event by event.
#[derive(Debug, Clone, Default)]
pub struct DoraLedger {
    /// When each change (by release id) began: the earliest commit of its `change.merged`.
    change_started: HashMap<String, DateTime<Utc>>,
    /// Per application (as the events' `customData` names it), per environment.
    apps: BTreeMap<String, BTreeMap<String, Scope>>,
}

/// One application in one environment.
#[derive(Debug, Clone, Default)]
struct Scope {
    /// The release of the environment's latest rollout (under way, healthy or failed): what a
    /// rollback moves away from and what a quarantine finds "there".
    current: Option<String>,
    /// Whether any release ever ran healthy here: before that, a failure takes nothing down.
    served: bool,
    /// Since when the environment is failing, until its next healthy event.
    failing_since: Option<DateTime<Utc>>,
    /// Each release rolled out here.
    rollouts: HashMap<String, Rollout>,
    /// Each restore, in stream order.
    restores: Vec<Restore>,
}

/// What a release's rollout into one environment came to.
#[derive(Debug, Clone, Copy, Default)]
struct Rollout {
    /// Its first healthy event here: the deployment.
    deployed_at: Option<DateTime<Utc>>,
    /// First commit → that deployment, in seconds, when the change's start is known.
    lead_time: Option<f64>,
    /// Its first outcome here (healthy or failed): when the change counts.
    settled_at: Option<DateTime<Utc>>,
    /// Whether it failed here.
    failed: bool,
}

/// An environment healthy again after a failure.
#[derive(Debug, Clone, Copy)]
struct Restore {
    /// The healthy event.
    at: DateTime<Utc>,
    /// How long the environment had been failing.
    seconds: f64,
}

/// The figures of one application in one environment over `[from, to)`. Numbers that need data
/// are `None` when there was none ("no data", not zero).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DoraReport {
    /// The application.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// Start of the window (included).
    pub from: DateTime<Utc>,
    /// End of the window (excluded).
    pub to: DateTime<Utc>,
    /// Deployments in the window.
    pub deployments: u64,
    /// Deployments per day of the window.
    pub deployments_per_day: f64,
    /// Median lead time for changes of the window's deployments, in seconds.
    pub lead_time_seconds: Option<f64>,
    /// Failed changes ÷ changes (0..=1); `None` when no change settled in the window.
    pub change_failure_rate: Option<f64>,
    /// Changes settled in the window that failed.
    pub failed_changes: u64,
    /// Changes settled in the window (healthy or failed): the rate's denominator.
    pub changes: u64,
    /// Median time to restore of the window's restores, in seconds.
    pub time_to_restore_seconds: Option<f64>,
    /// Restores in the window.
    pub restores: u64,
    /// The same figures per bucket, oldest first, covering the window (the last bucket may be
    /// shorter).
    pub series: Vec<DoraBucket>,
}

/// The figures of one bucket of a [`DoraReport`]'s series.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DoraBucket {
    /// Start (included).
    pub start: DateTime<Utc>,
    /// End (excluded).
    pub end: DateTime<Utc>,
    /// Deployments in the bucket.
    pub deployments: u64,
    /// Median lead time of the bucket's deployments, in seconds.
    pub lead_time_seconds: Option<f64>,
    /// Change failure rate of the changes settled in the bucket.
    pub change_failure_rate: Option<f64>,
    /// Median time to restore of the bucket's restores, in seconds.
    pub time_to_restore_seconds: Option<f64>,
}

impl DoraLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one event (any type; irrelevant ones are ignored), in stream order.
    pub fn observe(&mut self, event: &CdEvent) {
        let Some(ty) = event.event_type() else {
            return;
        };
        let at = event.context.timestamp;
        let data = event.custom_data.as_ref();
        match ty {
            EventType::ChangeMerged => self.change_merged(event),
            EventType::EnvironmentModified => {
                if let Some(p) = view::<PromotionView>(data) {
                    let scope = self.scope(&p.app, &p.environment);
                    match p.action {
                        PromotionAction::Promote => scope.current = Some(p.release.release),
                        PromotionAction::Rollback => scope.rolled_back_to(&p.release.release, at),
                        // A pin, a sync or a restore moves the environment to no other release.
                        PromotionAction::Pin
                        | PromotionAction::Unpin
                        | PromotionAction::Sync
                        | PromotionAction::Restore => {}
                    }
                }
            }
            EventType::ServiceDeployed | EventType::ServiceUpgraded => {
                if let Some(d) = view::<DeploymentView>(data) {
                    let lead_time = self.change_started.get(&d.release).map(|start| seconds(at - *start));
                    self.scope(&d.app, &d.environment).deployed(d.release, at, lead_time);
                }
            }
            EventType::ServiceRolledBack => {
                if let Some(d) = view::<DeploymentView>(data) {
                    let scope = self.scope(&d.app, &d.environment);
                    scope.rolled_back_to(&d.release, at);
                    scope.healthy(at);
                }
            }
            EventType::DeploymentFailed => {
                if let Some(d) = view::<DeploymentView>(data) {
                    self.scope(&d.app, &d.environment)
                        .rollout_failed(d.release, d.action, at);
                }
            }
            EventType::ReleaseQuarantined => self.quarantined(event),
            _ => {}
        }
    }

    /// The applications and environments seen, sorted.
    pub fn scopes(&self) -> Vec<(String, String)> {
        self.apps
            .iter()
            .flat_map(|(app, envs)| envs.keys().map(move |env| (app.clone(), env.clone())))
            .collect()
    }

    /// The environments `app` was seen in, sorted (none for an app never promoted).
    pub fn environments(&self, app: &str) -> Vec<String> {
        self.apps
            .get(app)
            .map(|envs| envs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Figures for `app` in `environment` over `[from, to)`, with a series in buckets of
    /// `bucket` from `from` on (the last one ends at `to`). A bucket of zero or less is the
    /// whole window; one so fine that the series would exceed [`MAX_BUCKETS`] is widened to
    /// fit. An app or environment never seen reports no data.
    pub fn report(
        &self,
        app: &str,
        environment: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket: TimeDelta,
    ) -> DoraReport {
        let scope = self.apps.get(app).and_then(|envs| envs.get(environment));
        let whole = Figures::of(scope, from, to);
        let days = seconds(to - from) / SECONDS_PER_DAY;
        let series = buckets(from, to, bucket)
            .into_iter()
            .map(|(start, end)| {
                let f = Figures::of(scope, start, end);
                DoraBucket {
                    start,
                    end,
                    deployments: f.deployments,
                    change_failure_rate: f.failure_rate(),
                    lead_time_seconds: median(f.lead_times),
                    time_to_restore_seconds: median(f.restore_times),
                }
            })
            .collect();
        DoraReport {
            app: app.to_owned(),
            environment: environment.to_owned(),
            from,
            to,
            deployments: whole.deployments,
            deployments_per_day: if days > 0.0 {
                whole.deployments as f64 / days
            } else {
                0.0
            },
            change_failure_rate: whole.failure_rate(),
            failed_changes: whole.failed,
            changes: whole.changes,
            restores: whole.restore_times.len() as u64,
            lead_time_seconds: median(whole.lead_times),
            time_to_restore_seconds: median(whole.restore_times),
            series,
        }
    }

    fn scope(&mut self, app: &str, environment: &str) -> &mut Scope {
        self.apps
            .entry(app.to_owned())
            .or_default()
            .entry(environment.to_owned())
            .or_default()
    }

    /// A push starts a change: its earliest commit (or, without commit times, the push itself).
    fn change_merged(&mut self, event: &CdEvent) {
        let Some(release) = event.context.chain_id.as_deref() else {
            return;
        };
        let first_commit = view::<PushView>(event.custom_data.as_ref())
            .into_iter()
            .flat_map(|push| push.commits.into_iter().chain(push.head_commit))
            .filter_map(|commit| commit.timestamp)
            .filter_map(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .min();
        let start = first_commit.unwrap_or(event.context.timestamp);
        self.change_started
            .entry(release.to_owned())
            .and_modify(|t| *t = (*t).min(start))
            .or_insert(start);
    }

    /// A quarantine fails the release in each environment where it is the release now.
    fn quarantined(&mut self, event: &CdEvent) {
        let Some(quarantine) = view::<QuarantineView>(Some(&event.subject.content)) else {
            return;
        };
        let release = event.context.chain_id.as_deref().unwrap_or(&event.subject.id);
        let Some(envs) = self.apps.get_mut(&quarantine.app) else {
            return;
        };
        for scope in envs.values_mut() {
            if scope.current.as_deref() == Some(release) {
                scope.fail(release, event.context.timestamp);
            }
        }
    }
}

impl Scope {
    fn rollout(&mut self, release: &str) -> &mut Rollout {
        self.rollouts.entry(release.to_owned()).or_default()
    }

    /// The environment is failing from `at`, unless it already is or never served.
    fn outage(&mut self, at: DateTime<Utc>) {
        if self.served && self.failing_since.is_none() {
            self.failing_since = Some(at);
        }
    }

    /// `release` failed here at `at`.
    fn fail(&mut self, release: &str, at: DateTime<Utc>) {
        let rollout = self.rollout(release);
        rollout.failed = true;
        rollout.settled_at.get_or_insert(at);
        self.outage(at);
    }

    /// A healthy event: it restores a failing environment.
    fn healthy(&mut self, at: DateTime<Utc>) {
        if let Some(since) = self.failing_since.take() {
            self.restores.push(Restore {
                at,
                seconds: seconds(at - since),
            });
        }
        self.served = true;
    }

    /// `release` runs healthy here (deployed or upgraded).
    fn deployed(&mut self, release: String, at: DateTime<Utc>, lead_time: Option<f64>) {
        let rollout = self.rollout(&release);
        if rollout.deployed_at.is_none() {
            rollout.deployed_at = Some(at);
            rollout.lead_time = lead_time;
        }
        rollout.settled_at.get_or_insert(at);
        self.current = Some(release);
        self.healthy(at);
    }

    /// The environment is re-pointed to `target`: the release it moves away from failed here.
    fn rolled_back_to(&mut self, target: &str, at: DateTime<Utc>) {
        if let Some(from) = self.current.take().filter(|c| c != target) {
            self.fail(&from, at);
        }
        self.current = Some(target.to_owned());
    }

    /// A rollout failed. A promotion's failure is its release's; a rollback's failure leaves the
    /// environment failing but fails no change (the release rolled back to was not a new one).
    fn rollout_failed(&mut self, release: String, action: PromotionAction, at: DateTime<Utc>) {
        match action {
            // Re-applying what ran (a rollback, a sync, a restore) fails no new change.
            PromotionAction::Rollback | PromotionAction::Sync | PromotionAction::Restore => self.outage(at),
            _ => {
                self.fail(&release, at);
                self.current = Some(release);
            }
        }
    }
}

/// What one stretch of time holds.
#[derive(Debug, Default)]
struct Figures {
    deployments: u64,
    lead_times: Vec<f64>,
    changes: u64,
    failed: u64,
    restore_times: Vec<f64>,
}

impl Figures {
    fn of(scope: Option<&Scope>, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let mut figures = Self::default();
        let Some(scope) = scope else {
            return figures;
        };
        let inside = |t: Option<DateTime<Utc>>| t.is_some_and(|t| from <= t && t < to);
        for rollout in scope.rollouts.values() {
            if inside(rollout.deployed_at) {
                figures.deployments += 1;
                figures.lead_times.extend(rollout.lead_time);
            }
            if inside(rollout.settled_at) {
                figures.changes += 1;
                figures.failed += u64::from(rollout.failed);
            }
        }
        figures.restore_times = scope
            .restores
            .iter()
            .filter(|r| inside(Some(r.at)))
            .map(|r| r.seconds)
            .collect();
        figures
    }

    fn failure_rate(&self) -> Option<f64> {
        (self.changes > 0).then(|| self.failed as f64 / self.changes as f64)
    }
}

/// The buckets covering `[from, to)`, each `bucket` long but the last.
fn buckets(from: DateTime<Utc>, to: DateTime<Utc>, bucket: TimeDelta) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let span = u64::try_from((to - from).num_milliseconds()).unwrap_or(0);
    if span == 0 {
        return Vec::new();
    }
    let asked = u64::try_from(bucket.num_milliseconds()).unwrap_or(0);
    let step = if asked == 0 { span } else { asked }.max(span.div_ceil(MAX_BUCKETS));
    let step = TimeDelta::milliseconds(i64::try_from(step).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + step).min(to);
        out.push((start, end));
        start = end;
    }
    out
}

/// The median, `None` for no values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// A duration in seconds, never negative (a commit clock ahead of the cluster's counts as 0).
fn seconds(delta: TimeDelta) -> f64 {
    (delta.num_milliseconds().max(0) as f64) / 1000.0
}

/// `customData` (or a subject's content) read as the few fields the ledger needs; `None` when
/// it does not have them.
fn view<T: serde::de::DeserializeOwned>(data: Option<&Value>) -> Option<T> {
    T::deserialize(data?).ok()
}

/// The fields of `PromotionData` the ledger reads.
#[derive(Deserialize)]
struct PromotionView {
    action: PromotionAction,
    app: String,
    environment: String,
    release: ReleaseRef,
}

/// The id of a `ReleaseData`.
#[derive(Deserialize)]
struct ReleaseRef {
    release: String,
}

/// The fields of `DeploymentData` the ledger reads.
#[derive(Deserialize)]
struct DeploymentView {
    action: PromotionAction,
    app: String,
    environment: String,
    release: String,
}

/// The commits of `PushData`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushView {
    head_commit: Option<CommitTime>,
    #[serde(default)]
    commits: Vec<CommitTime>,
}

/// A commit's time.
#[derive(Deserialize)]
struct CommitTime {
    timestamp: Option<String>,
}

/// The app of `ReleaseQuarantinedContent`.
#[derive(Deserialize)]
struct QuarantineView {
    app: String,
}

#[cfg(test)]
mod tests;
