//! The ledger against a fixture history whose figures are computed by hand below.
//!
//! The history (2026, UTC; `acme/shop` in staging and production, and one deployment of
//! `acme/cart` that must not leak into the shop's figures). Each release's change starts at its
//! earliest commit:
//!
//! | release | change starts | staging | production |
//! | --- | --- | --- | --- |
//! | r1 | Feb 27 07:00 | deployed Feb 27 09:10 (before the window) | promoted Mar 1 10:00, failed 10:20 (nothing ever ran healthy there); quarantined 10:21 |
//! | r2 | Mar 2 10:00 | upgraded Mar 2 12:30 | deployed Mar 2 14:30 |
//! | r3 | Mar 4 08:00 | upgraded Mar 4 10:00, again 10:05 | upgraded Mar 4 12:00; rolled back from by an operator Mar 5 09:00, back on r2 09:15 |
//! | r4 | Mar 7 08:00 (no commit times: the push) | upgraded Mar 7 09:00 | failed Mar 7 10:30; quarantined 10:31; rolled back 10:32, back on r2 10:40 |
//! | r5 | Mar 8 11:00 | upgraded Mar 8 13:20 | upgraded Mar 10 22:00; rolled back from Mar 11 09:00 (after the window), back on r2 09:30 |
//!
//! The window is `[Mar 1, Mar 11)`: 10 days, in two buckets of 5 days.
//!
//! Production:
//! - deployments: r2 (Mar 2 14:30), r3 (Mar 4 12:00), r5 (Mar 10 22:00) = 3, 0.3 a day; the
//!   rollbacks to r2 are restores, r1 and r4 never ran healthy.
//! - lead times: r2 10:00 → 14:30 = 16 200 s; r3 08:00 → 12:00 = 14 400 s; r5 Mar 8 11:00 →
//!   Mar 10 22:00 = 59 h = 212 400 s; median 16 200 s.
//! - changes settled in the window: r1 (failed), r2, r3 (rolled back from), r4 (failed), r5
//!   (rolled back from after the window: its fate still counts) = 4 failed of 5 = 0.8.
//! - restores: Mar 5 09:00 → 09:15 = 900 s; Mar 7 10:30 → 10:40 = 600 s (r1's failure opened
//!   none: nothing had run there); Mar 11 09:30 is after the window. Median 750 s, 2 restores.
//! - bucket Mar 1–6: deployments r2, r3 = 2, lead (16 200 + 14 400) / 2 = 15 300 s; changes
//!   r1, r2, r3, failed r1, r3 = 2/3; restore 900 s.
//! - bucket Mar 6–11: deployment r5 = 1, lead 212 400 s; changes r4, r5, both failed = 1.0;
//!   restore 600 s.
//!
//! Staging:
//! - deployments: r2 (Mar 2 12:30), r3 (Mar 4 10:00; its second upgrade is not a new one), r4
//!   (Mar 7 09:00), r5 (Mar 8 13:20) = 4, 0.4 a day; r1's (Feb 27) is before the window.
//! - lead times: r2 9 000 s, r3 7 200 s, r4 3 600 s, r5 8 400 s; median (7 200 + 8 400) / 2 =
//!   7 800 s.
//! - changes settled in the window: r2, r3, r4 (quarantined while staging ran it), r5 = 1 of 4
//!   = 0.25; r1 settled Feb 27, before the window, though its quarantine is inside.
//! - restores: r1's quarantine Mar 1 10:21 → r2 Mar 2 12:30 = 26 h 09 min = 94 140 s; r4's
//!   quarantine Mar 7 10:31 → r5 Mar 8 13:20 = 26 h 49 min = 96 540 s; median 95 340 s.
//! - bucket Mar 1–6: deployments r2, r3 = 2, lead (9 000 + 7 200) / 2 = 8 100 s; changes 0 of 2
//!   = 0.0; restore 94 140 s.
//! - bucket Mar 6–11: deployments r4, r5 = 2, lead (3 600 + 8 400) / 2 = 6 000 s; changes 1 of
//!   2 = 0.5; restore 96 540 s.

use baton_schemas::extensions::ReleaseQuarantinedContent;
use baton_schemas::payloads::{CommitInfo, ImageInfo, Person, PushData, RepositoryInfo};
use baton_schemas::release::{DeploymentData, PromotionAction, PromotionData, ReleaseData};
use baton_schemas::{CdEvent, EventType};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::json;

use super::{DoraBucket, DoraLedger, DoraReport, MAX_BUCKETS};

const SHOP: &str = "acme/shop";
const CART: &str = "acme/cart";

fn t(month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, hour, minute, 0).unwrap()
}

fn mar(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    t(3, day, hour, minute)
}

/// Events as Baton's services publish them, with the fixture's times.
#[derive(Default)]
struct History {
    events: Vec<CdEvent>,
    /// Makes each event id unique.
    next: u32,
}

impl History {
    fn add(
        &mut self,
        ty: EventType,
        at: DateTime<Utc>,
        subject: &str,
        chain: &str,
        content: serde_json::Value,
    ) -> &mut CdEvent {
        self.next += 1;
        let mut event = CdEvent::new(ty, format!("event-{}", self.next), "/baton/test", subject, content)
            .unwrap()
            .with_chain_id(chain);
        event.context.timestamp = at;
        self.events.push(event);
        self.events.last_mut().unwrap()
    }

    /// A push starting `release`, its commits made at `commits` (`None`: no time given).
    fn push(&mut self, app: &str, release: &str, at: DateTime<Utc>, commits: &[Option<DateTime<Utc>>]) {
        let commits: Vec<CommitInfo> = commits
            .iter()
            .enumerate()
            .map(|(i, time)| CommitInfo {
                id: format!("{release}-{i}"),
                message: "change".into(),
                timestamp: time.map(|t| t.to_rfc3339()),
                author: Person::default(),
                committer: None,
                url: None,
            })
            .collect();
        let data = PushData {
            app: app.into(),
            provider: "generic".into(),
            delivery_id: release.into(),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            tag: None,
            before: "0".repeat(40),
            after: commits.last().unwrap().id.clone(),
            repository: RepositoryInfo {
                name: "shop".into(),
                full_name: app.into(),
                clone_url: "file:///nowhere".into(),
                html_url: None,
            },
            head_commit: commits.last().unwrap().clone(),
            commits,
            pusher: None,
        };
        let event = self.add(EventType::ChangeMerged, at, &data.after, release, json!({}));
        event.custom_data = Some(serde_json::to_value(data).unwrap());
    }

    /// The promoter's `environment.modified` moving `environment` to `release`.
    fn modified(&mut self, app: &str, environment: &str, release: &str, action: PromotionAction, at: DateTime<Utc>) {
        let data = PromotionData {
            promotion: format!("promotion-{}", self.next),
            action,
            app: app.into(),
            environment: environment.into(),
            namespace: environment.into(),
            release: release_data(app, release, at),
            previous_release: None,
            config_repository: "file:///config".into(),
            config_commit: "c".repeat(40),
            manifests_path: format!("{environment}/acme_shop"),
            actor: "baton-promoter".into(),
            reason: None,
            pinned: false,
            break_glass: false,
            evidence: None,
        };
        let event = self.add(EventType::EnvironmentModified, at, environment, release, json!({}));
        event.custom_data = Some(serde_json::to_value(data).unwrap());
    }

    fn promote(&mut self, app: &str, environment: &str, release: &str, at: DateTime<Utc>) {
        self.modified(app, environment, release, PromotionAction::Promote, at);
    }

    fn rollback(&mut self, app: &str, environment: &str, to: &str, at: DateTime<Utc>) {
        self.modified(app, environment, to, PromotionAction::Rollback, at);
    }

    /// The deployer's report of type `ty` on `release` in `environment`.
    fn deployer(&mut self, ty: EventType, app: &str, environment: &str, release: &str, at: DateTime<Utc>) {
        let action = if ty == EventType::ServiceRolledBack {
            PromotionAction::Rollback
        } else {
            PromotionAction::Promote
        };
        let data = DeploymentData {
            promotion: format!("promotion-{}", self.next),
            action,
            app: app.into(),
            environment: environment.into(),
            namespace: environment.into(),
            release: release.into(),
            config_commit: "c".repeat(40),
            image: "registry/app@sha256:0".into(),
            reason: (ty == EventType::DeploymentFailed).then(|| "CrashLoopBackOff".into()),
            applied: vec![],
            pruned: vec![],
            failing_pods: vec![],
            rollout_wait_ms: None,
        };
        let event = self.add(ty, at, release, release, json!({"environment": {"id": environment}}));
        event.custom_data = Some(serde_json::to_value(data).unwrap());
    }

    fn quarantined(&mut self, app: &str, release: &str, at: DateTime<Utc>) {
        let content = serde_json::to_value(ReleaseQuarantinedContent {
            app: app.into(),
            actor: "baton-promoter".into(),
            reason: "rollout in `production` failed".into(),
        })
        .unwrap();
        self.add(EventType::ReleaseQuarantined, at, release, release, content);
    }
}

fn release_data(app: &str, release: &str, at: DateTime<Utc>) -> ReleaseData {
    ReleaseData {
        release: release.into(),
        app: app.into(),
        commit: "a".repeat(40),
        repository: "file:///nowhere".into(),
        image: ImageInfo {
            registry: "registry".into(),
            repository: "baton/acme_shop".into(),
            tag: "a".repeat(40),
            digest: "sha256:0".into(),
            reference: "registry/baton/acme_shop@sha256:0".into(),
            purl: "pkg:oci/acme_shop@sha256%3A0".into(),
            uploaded_bytes: 0,
        },
        author: None,
        pushed_by: None,
        tested: true,
        test_run: None,
        previous_release: None,
        changelog: vec![],
        created_at: at,
    }
}

/// The history of the module's table, in stream order.
fn fixture() -> History {
    use EventType::{DeploymentFailed, DeploymentStarted, ServiceDeployed, ServiceRolledBack, ServiceUpgraded};
    let mut h = History::default();
    // r1: healthy in staging before the window; its first production rollout fails.
    h.push(
        SHOP,
        "r1",
        t(2, 27, 8, 0),
        &[Some(t(2, 27, 7, 0)), Some(t(2, 27, 7, 30))],
    );
    h.promote(SHOP, "staging", "r1", t(2, 27, 9, 0));
    h.deployer(ServiceDeployed, SHOP, "staging", "r1", t(2, 27, 9, 10));
    h.promote(SHOP, "production", "r1", mar(1, 10, 0));
    h.deployer(DeploymentStarted, SHOP, "production", "r1", mar(1, 10, 1));
    h.deployer(DeploymentFailed, SHOP, "production", "r1", mar(1, 10, 20));
    h.quarantined(SHOP, "r1", mar(1, 10, 21));
    // r2: healthy everywhere; production's first healthy release.
    h.push(SHOP, "r2", mar(2, 11, 0), &[Some(mar(2, 10, 0))]);
    h.promote(SHOP, "staging", "r2", mar(2, 12, 0));
    h.deployer(ServiceUpgraded, SHOP, "staging", "r2", mar(2, 12, 30));
    h.promote(SHOP, "production", "r2", mar(2, 14, 0));
    h.deployer(ServiceDeployed, SHOP, "production", "r2", mar(2, 14, 30));
    // Another app the same days.
    h.push(CART, "c1", mar(3, 0, 0), &[Some(mar(2, 23, 0))]);
    h.promote(CART, "production", "c1", mar(3, 0, 30));
    h.deployer(ServiceDeployed, CART, "production", "c1", mar(3, 1, 0));
    // r3: deployed twice in staging; rolled back from production by an operator.
    h.push(SHOP, "r3", mar(4, 9, 0), &[Some(mar(4, 8, 0)), Some(mar(4, 8, 40))]);
    h.promote(SHOP, "staging", "r3", mar(4, 9, 30));
    h.deployer(ServiceUpgraded, SHOP, "staging", "r3", mar(4, 10, 0));
    h.deployer(ServiceUpgraded, SHOP, "staging", "r3", mar(4, 10, 5));
    h.promote(SHOP, "production", "r3", mar(4, 11, 0));
    h.deployer(ServiceUpgraded, SHOP, "production", "r3", mar(4, 12, 0));
    h.rollback(SHOP, "production", "r2", mar(5, 9, 0));
    h.deployer(ServiceRolledBack, SHOP, "production", "r2", mar(5, 9, 15));
    // r4: no commit times; fails in production, is quarantined (staging runs it), rolled back.
    h.push(SHOP, "r4", mar(7, 8, 0), &[None]);
    h.promote(SHOP, "staging", "r4", mar(7, 8, 30));
    h.deployer(ServiceUpgraded, SHOP, "staging", "r4", mar(7, 9, 0));
    h.promote(SHOP, "production", "r4", mar(7, 10, 0));
    h.deployer(DeploymentFailed, SHOP, "production", "r4", mar(7, 10, 30));
    h.quarantined(SHOP, "r4", mar(7, 10, 31));
    h.rollback(SHOP, "production", "r2", mar(7, 10, 32));
    h.deployer(ServiceRolledBack, SHOP, "production", "r2", mar(7, 10, 40));
    // r5: healthy in the window, rolled back from production after it.
    h.push(SHOP, "r5", mar(8, 12, 0), &[Some(mar(8, 11, 0))]);
    h.promote(SHOP, "staging", "r5", mar(8, 13, 0));
    h.deployer(ServiceUpgraded, SHOP, "staging", "r5", mar(8, 13, 20));
    h.promote(SHOP, "production", "r5", mar(10, 20, 0));
    h.deployer(ServiceUpgraded, SHOP, "production", "r5", mar(10, 22, 0));
    h.rollback(SHOP, "production", "r2", mar(11, 9, 0));
    h.deployer(ServiceRolledBack, SHOP, "production", "r2", mar(11, 9, 30));
    h
}

fn ledger() -> DoraLedger {
    let mut ledger = DoraLedger::new();
    for event in &fixture().events {
        ledger.observe(event);
    }
    ledger
}

fn report(ledger: &DoraLedger, app: &str, environment: &str) -> DoraReport {
    ledger.report(app, environment, mar(1, 0, 0), mar(11, 0, 0), TimeDelta::days(5))
}

fn bucket(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    deployments: u64,
    lead: f64,
    rate: f64,
    restore: f64,
) -> DoraBucket {
    DoraBucket {
        start,
        end,
        deployments,
        lead_time_seconds: Some(lead),
        change_failure_rate: Some(rate),
        time_to_restore_seconds: Some(restore),
    }
}

#[test]
fn production_figures_are_the_hand_computed_ones() {
    let production = report(&ledger(), SHOP, "production");
    assert_eq!(
        production,
        DoraReport {
            app: SHOP.into(),
            environment: "production".into(),
            from: mar(1, 0, 0),
            to: mar(11, 0, 0),
            deployments: 3,
            deployments_per_day: 0.3,
            lead_time_seconds: Some(16_200.0),
            change_failure_rate: Some(0.8),
            failed_changes: 4,
            changes: 5,
            time_to_restore_seconds: Some(750.0),
            restores: 2,
            series: vec![
                bucket(mar(1, 0, 0), mar(6, 0, 0), 2, 15_300.0, 2.0 / 3.0, 900.0),
                bucket(mar(6, 0, 0), mar(11, 0, 0), 1, 212_400.0, 1.0, 600.0),
            ],
        }
    );
}

#[test]
fn staging_figures_are_the_hand_computed_ones() {
    let staging = report(&ledger(), SHOP, "staging");
    assert_eq!(staging.deployments, 4);
    assert!(
        (staging.deployments_per_day - 0.4).abs() < 1e-12,
        "{}",
        staging.deployments_per_day
    );
    assert_eq!(staging.lead_time_seconds, Some(7_800.0));
    assert_eq!((staging.failed_changes, staging.changes), (1, 4));
    assert_eq!(staging.change_failure_rate, Some(0.25));
    assert_eq!((staging.restores, staging.time_to_restore_seconds), (2, Some(95_340.0)));
    assert_eq!(
        staging.series,
        vec![
            bucket(mar(1, 0, 0), mar(6, 0, 0), 2, 8_100.0, 0.0, 94_140.0),
            bucket(mar(6, 0, 0), mar(11, 0, 0), 2, 6_000.0, 0.5, 96_540.0),
        ]
    );
}

#[test]
fn scopes_are_every_app_and_environment_seen_sorted() {
    let ledger = ledger();
    let owned = |a: &str, e: &str| (a.to_owned(), e.to_owned());
    assert_eq!(
        ledger.scopes(),
        [
            owned(CART, "production"),
            owned(SHOP, "production"),
            owned(SHOP, "staging")
        ]
    );
    assert_eq!(ledger.environments(SHOP), ["production", "staging"]);
    assert!(ledger.environments("acme/unknown").is_empty());
    let cart = report(&ledger, CART, "production");
    // c1: Mar 2 23:00 → Mar 3 01:00; nothing of the shop's.
    assert_eq!((cart.deployments, cart.lead_time_seconds), (1, Some(7_200.0)));
    assert_eq!((cart.changes, cart.restores), (1, 0));
}

#[test]
fn no_data_is_none_not_zero() {
    let ledger = ledger();
    // Before anything happened, and in an environment never seen.
    for empty in [
        ledger.report(SHOP, "production", t(1, 1, 0, 0), t(2, 1, 0, 0), TimeDelta::days(7)),
        report(&ledger, SHOP, "qa"),
        report(&DoraLedger::new(), SHOP, "production"),
    ] {
        assert_eq!(empty.deployments, 0);
        assert_eq!(empty.deployments_per_day, 0.0);
        assert_eq!(empty.lead_time_seconds, None);
        assert_eq!(empty.change_failure_rate, None);
        assert_eq!(empty.time_to_restore_seconds, None);
        assert_eq!((empty.changes, empty.failed_changes, empty.restores), (0, 0, 0));
        assert!(empty.series.iter().all(|b| b.deployments == 0
            && b.lead_time_seconds.is_none()
            && b.change_failure_rate.is_none()
            && b.time_to_restore_seconds.is_none()));
    }
}

#[test]
fn a_window_counts_only_what_happened_inside_it() {
    let ledger = ledger();
    // [Mar 5 09:10, Mar 7 10:35): the restore at 09:15, no deployment; r4 settled (failed) at 10:30.
    let narrow = ledger.report(SHOP, "production", mar(5, 9, 10), mar(7, 10, 35), TimeDelta::zero());
    assert_eq!(narrow.deployments, 0);
    assert_eq!(narrow.lead_time_seconds, None);
    assert_eq!((narrow.failed_changes, narrow.changes), (1, 1));
    assert_eq!((narrow.restores, narrow.time_to_restore_seconds), (1, Some(900.0)));
    // A bucket of zero is the whole window.
    assert_eq!(narrow.series.len(), 1);
    assert_eq!((narrow.series[0].start, narrow.series[0].end), (narrow.from, narrow.to));
    // After the window: r5's rollback restores production in 30 minutes.
    let after = ledger.report(SHOP, "production", mar(11, 0, 0), mar(12, 0, 0), TimeDelta::days(1));
    assert_eq!((after.restores, after.time_to_restore_seconds), (1, Some(1_800.0)));
    assert_eq!(
        after.changes, 0,
        "r5 settled when it ran healthy, inside the earlier window"
    );
}

#[test]
fn buckets_cover_the_window_and_stay_few() {
    let ledger = ledger();
    let uneven = ledger.report(SHOP, "staging", mar(1, 0, 0), mar(11, 0, 0), TimeDelta::days(4));
    let edges: Vec<_> = uneven.series.iter().map(|b| (b.start, b.end)).collect();
    assert_eq!(
        edges,
        [
            (mar(1, 0, 0), mar(5, 0, 0)),
            (mar(5, 0, 0), mar(9, 0, 0)),
            (mar(9, 0, 0), mar(11, 0, 0))
        ]
    );
    let total: u64 = uneven.series.iter().map(|b| b.deployments).sum();
    assert_eq!(total, uneven.deployments);
    let fine = ledger.report(SHOP, "staging", t(1, 1, 0, 0), t(12, 31, 0, 0), TimeDelta::seconds(1));
    assert!(fine.series.len() as u64 <= MAX_BUCKETS, "{}", fine.series.len());
    assert_eq!(fine.series.last().map(|b| b.end), Some(fine.to));
    let backwards = ledger.report(SHOP, "staging", mar(11, 0, 0), mar(1, 0, 0), TimeDelta::days(1));
    assert!(backwards.series.is_empty());
    assert_eq!(backwards.deployments_per_day, 0.0);
}

#[test]
fn a_report_round_trips_as_camel_case_json() {
    let production = report(&ledger(), SHOP, "production");
    let json = serde_json::to_value(&production).unwrap();
    for key in [
        "deploymentsPerDay",
        "leadTimeSeconds",
        "changeFailureRate",
        "failedChanges",
        "timeToRestoreSeconds",
        "series",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["series"][0]["leadTimeSeconds"], 15_300.0);
    assert_eq!(serde_json::from_value::<DoraReport>(json).unwrap(), production);
}

#[test]
fn a_large_history_keeps_a_few_timestamps_per_release_and_environment() {
    // 200 apps × 3 environments, 100 000 events: the ledger holds no event, only one start per
    // change and one rollout per release and environment.
    let mut ledger = DoraLedger::new();
    let mut h = History::default();
    let start = mar(1, 0, 0);
    let (mut events, mut pushes) = (0, 0);
    'rounds: for round in 0..100 {
        for app in 0..200 {
            let app = format!("acme/app-{app}");
            let release = format!("{app}-r{round}");
            let at = start + TimeDelta::hours(i64::from(round));
            h.push(&app, &release, at, &[Some(at)]);
            for env in ["dev", "staging", "production"] {
                h.promote(&app, env, &release, at);
                h.deployer(
                    EventType::ServiceUpgraded,
                    &app,
                    env,
                    &release,
                    at + TimeDelta::minutes(5),
                );
            }
            pushes += 1;
            for event in h.events.drain(..) {
                ledger.observe(&event);
                events += 1;
            }
            if events >= 100_000 {
                break 'rounds;
            }
        }
    }
    assert_eq!(ledger.scopes().len(), 600);
    assert_eq!(ledger.change_started.len(), pushes);
    let rollouts: usize = ledger
        .apps
        .values()
        .flat_map(|envs| envs.values())
        .map(|scope| scope.rollouts.len() + scope.restores.len())
        .sum();
    assert_eq!(rollouts, 3 * pushes);
    let report = ledger.report(
        "acme/app-7",
        "production",
        start,
        start + TimeDelta::days(30),
        TimeDelta::days(1),
    );
    assert_eq!(report.lead_time_seconds, Some(300.0));
    assert_eq!(
        report.deployments, 72,
        "rounds 0..=71 reached app 7 (7 events per app and round)"
    );
}

#[test]
fn every_type_it_reads_counts_and_no_other() {
    let everything = ledger();
    let mut read_only = DoraLedger::new();
    for event in fixture()
        .events
        .iter()
        .filter(|e| e.event_type().is_some_and(|t| super::EVENT_TYPES.contains(&t)))
    {
        read_only.observe(event);
    }
    // The fixture's `baton-deployment.started` events are left out without a difference.
    assert!(
        fixture().events.len()
            > fixture()
                .events
                .iter()
                .filter(|e| e.event_type().is_some_and(|t| super::EVENT_TYPES.contains(&t)))
                .count()
    );
    assert_eq!(
        report(&read_only, SHOP, "production"),
        report(&everything, SHOP, "production")
    );
    // The fixture uses every type read: leaving one out changes something.
    for left_out in super::EVENT_TYPES {
        let mut partial = DoraLedger::new();
        for event in fixture().events.iter().filter(|e| e.event_type() != Some(*left_out)) {
            partial.observe(event);
        }
        let changed = [SHOP, CART].iter().any(|app| {
            ["production", "staging"]
                .iter()
                .any(|env| report(&partial, app, env) != report(&everything, app, env))
        });
        assert!(changed, "{left_out} makes no difference");
    }
}
