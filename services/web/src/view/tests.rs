//! The view from a handful of events and state entries, with a fixed clock.

use baton_kit::log::Record;
use baton_schemas::{CdEvent, EventType};
use serde_json::{Value, json};

use super::*;

fn record(sequence: u64, ty: EventType, chain: &str, content: Value, data: Value) -> Record {
    let event = CdEvent::new(ty, format!("e-{sequence}"), "/baton/promoter", "s", content)
        .unwrap()
        .with_chain_id(chain)
        .with_custom_data(data)
        .unwrap();
    Record {
        sequence,
        app: "acme_shop".into(),
        event,
    }
}

fn story(view: &mut View) {
    view.observe(&record(
        1,
        EventType::ChangeMerged,
        "rel-aaaaaaaa-1",
        json!({}),
        json!({"app": "acme/shop", "after": "c0ffee00112233", "ref": "refs/heads/main", "commits": []}),
    ));
    view.observe(&record(
        2,
        EventType::EnvironmentModified,
        "rel-aaaaaaaa-1",
        json!({}),
        json!({"app": "acme/shop", "environment": "staging", "action": "promote", "actor": "baton-promoter",
               "configCommit": "cfg1", "manifestsPath": "staging/acme_shop"}),
    ));
    view.observe(&record(
        3,
        EventType::ServiceDeployed,
        "rel-aaaaaaaa-1",
        json!({}),
        json!({"app": "acme/shop", "environment": "staging", "image": "r/acme_shop@sha256:1"}),
    ));
    view.observe(&record(
        4,
        EventType::DeploymentFailed,
        "rel-aaaaaaab-2",
        json!({"environment": "production", "reason": "CrashLoopBackOff"}),
        json!({"app": "acme/shop", "environment": "production"}),
    ));
}

#[test]
fn a_release_is_found_by_its_id_or_a_unique_prefix() {
    let mut view = View::new(1000);
    story(&mut view);
    let first = view.release_named("rel-aaaaaaaa-1").unwrap();
    assert_eq!(view.release_named("rel-aaaaaaaa").unwrap(), first);
    assert_eq!(view.release_named("rel-aaa"), Err(Lookup::TooShort));
    assert!(matches!(view.release_named("rel-aaaaaaa"), Err(Lookup::Ambiguous(ids)) if ids.len() == 2));
    assert_eq!(view.release_named("rel-zzzzzzzz"), Err(Lookup::NotFound));
    assert_eq!(view.releases[first as usize].commit.as_deref(), Some("c0ffee00112233"));
    assert_eq!(view.releases[first as usize].sequences, [1, 2, 3]);
}

#[test]
fn events_are_filtered_newest_first() {
    let mut view = View::new(1000);
    story(&mut view);
    let all = view.events(&EventFilter::default(), 10);
    assert_eq!(all.iter().map(|e| e.sequence).collect::<Vec<_>>(), [4, 3, 2, 1]);
    assert_eq!(all[0].app, "acme/shop");
    assert!(all[0].failed);
    let staging = EventFilter {
        environment: Some("staging".into()),
        ..EventFilter::default()
    };
    assert_eq!(view.events(&staging, 10).len(), 2);
    let by_app = EventFilter {
        app: Some("acme/shop".into()),
        ty: Some(EventType::ServiceDeployed),
        ..EventFilter::default()
    };
    assert_eq!(view.events(&by_app, 10)[0].sequence, 3);
    assert!(by_app.admits(&view.events(&by_app, 10)[0]));
    let unknown = EventFilter {
        app: Some("other".into()),
        ..EventFilter::default()
    };
    assert!(view.events(&unknown, 10).is_empty());
}

#[test]
fn old_rows_leave_memory_but_releases_stay() {
    let mut view = View::new(2);
    story(&mut view);
    assert_eq!(view.len(), 2);
    let release = EventFilter {
        release: Some("rel-aaaaaaaa-1".into()),
        ..EventFilter::default()
    };
    assert_eq!(view.events(&release, 10).len(), 1, "only its rows still in memory");
    assert_eq!(view.releases.len(), 2);
}

#[test]
fn the_matrix_joins_events_and_the_promoters_state() {
    let mut view = View::new(1000);
    story(&mut view);
    view.apply_state(
        "promoter.current.acme_shop.staging",
        Some(br#"{"release":"rel-aaaaaaaa-1","config_commit":"cfg1","healthy_since":"2024-05-01T10:00:00Z","pinned":{"by":"alice","reason":"hotfix <b>","at":"2024-05-01T11:00:00Z"}}"#),
    );
    view.apply_state(
        "promoter.policy",
        Some(br#"{"commit":"c","text":"environments:\n  - name: staging\n    namespace: shop-staging\n    policy: auto\n  - name: production\n    namespace: shop-production\n    policy: manual\n    approvals: {users: [bob]}\n"}"#),
    );
    let now = "2024-05-01T12:00:00Z".parse().unwrap();
    let matrix = view.matrix(now);
    assert_eq!(matrix.environments, ["staging", "production"]);
    let staging = &matrix.apps[0].cells[0];
    assert_eq!(matrix.apps[0].app, "acme/shop");
    assert_eq!(staging.health, "healthy");
    assert_eq!(
        staging.release.as_ref().unwrap().commit.as_deref(),
        Some("c0ffee00112233")
    );
    assert_eq!(staging.pinned.as_ref().unwrap().reason, "hotfix <b>");
    let production = &matrix.apps[0].cells[1];
    assert!(production.release.is_none(), "{production:?}");
    view.apply_state("promoter.current.acme_shop.staging", None);
    assert_eq!(
        view.matrix(now).apps[0].cells[0].health,
        "healthy",
        "the events still say so"
    );
    assert!(view.matrix(now).apps[0].cells[0].pinned.is_none());
}

#[test]
fn an_event_naming_no_app_keeps_the_apps_name() {
    let mut view = View::new(1000);
    story(&mut view);
    // A refused command is recorded under the app's token and names no app: the row keeps the
    // name the release's events gave it, not the token.
    view.observe(&record(
        5,
        EventType::CommandRejected,
        "rel-aaaaaaab-2",
        json!({"actor": "alice", "person": "alice", "verb": "approve", "reason": "no approval request"}),
        json!({"actor": "alice", "environment": "production", "release": "rel-aaaaaaab-2"}),
    ));
    let matrix = view.matrix(chrono::Utc::now());
    let rows: Vec<&str> = matrix.apps.iter().map(|row| row.app.as_str()).collect();
    assert_eq!(rows, ["acme/shop"]);
}

#[test]
fn events_of_no_app_make_no_matrix_row() {
    let mut view = View::new(1000);
    story(&mut view);
    // A refused command concerning no app is recorded under `subjects::NO_APP`, outside any
    // release.
    let event = CdEvent::new(EventType::CommandRejected, "e-9", "/baton/promoter", "s", json!({}))
        .unwrap()
        .with_custom_data(json!({"actor": "mallory", "reason": "unknown release"}))
        .unwrap();
    view.observe(&Record {
        sequence: 9,
        app: baton_schemas::subjects::NO_APP.into(),
        event,
    });
    let matrix = view.matrix(chrono::Utc::now());
    let rows: Vec<&str> = matrix.apps.iter().map(|row| row.app.as_str()).collect();
    assert_eq!(rows, ["acme/shop"]);
}

/// The staging cell of acme/shop at a fixed time.
fn staging(view: &View) -> matrix::MatrixCell {
    let now = "2024-05-01T12:00:00Z".parse().unwrap();
    view.matrix(now).apps[0].cells[0].clone()
}

/// An event of the deployer about staging's first release.
fn deployer_event(sequence: u64, ty: EventType, content: Value) -> Record {
    record(
        sequence,
        ty,
        "rel-aaaaaaaa-1",
        content,
        json!({"app": "acme/shop", "environment": "staging"}),
    )
}

/// An operator's `sync` or `restore` of staging.
fn reapply(sequence: u64, action: &str) -> Record {
    record(
        sequence,
        EventType::EnvironmentModified,
        "rel-aaaaaaaa-1",
        json!({}),
        json!({"app": "acme/shop", "environment": "staging", "action": action, "actor": "alice",
               "configCommit": "cfg1", "manifestsPath": "staging/acme_shop"}),
    )
}

#[test]
fn a_sync_reapplies_the_current_release_and_its_synced_event_settles_it() {
    let mut view = View::new(1000);
    story(&mut view);
    let promoted = staging(&view).since;
    view.observe(&reapply(5, "sync"));
    view.observe(&deployer_event(
        6,
        EventType::DeploymentStarted,
        json!({"environment": "staging", "app": "acme/shop"}),
    ));
    let cell = staging(&view);
    assert_eq!(cell.health, "healthy", "the release's own rollout stands");
    assert_eq!(cell.reapplying.as_ref().map(|r| r.action.as_str()), Some("sync"));
    assert_eq!(cell.release.as_ref().unwrap().id, "rel-aaaaaaaa-1");
    assert_eq!(
        cell.since, promoted,
        "a sync moves no release: still since its promotion"
    );
    let modified = view.cells.values().find_map(|c| c.modified.as_ref()).unwrap();
    assert_eq!(&*modified.action, "promote", "a sync is no promotion");

    view.observe(&deployer_event(
        7,
        EventType::EnvironmentSynced,
        json!({"environment": "staging", "app": "acme/shop", "how": "synced"}),
    ));
    let cell = staging(&view);
    assert_eq!(cell.health, "healthy");
    assert_eq!(cell.since, promoted);
    assert!(cell.reapplying.is_none(), "{cell:?}");
    let log = view.events(&EventFilter::default(), 1);
    assert_eq!(log[0].summary, "staging in sync again (synced)");
    assert_eq!(log[0].tone, "good");
}

#[test]
fn a_restore_whose_rollout_fails_marks_the_cell_failed_until_it_heals() {
    let mut view = View::new(1000);
    story(&mut view);
    view.observe(&reapply(5, "restore"));
    view.observe(&deployer_event(
        6,
        EventType::DeploymentFailed,
        json!({"environment": "staging", "reason": "CrashLoopBackOff"}),
    ));
    let cell = staging(&view);
    assert_eq!(cell.health, "failed");
    assert!(cell.reapplying.is_none());
    view.observe(&deployer_event(
        7,
        EventType::EnvironmentSynced,
        json!({"environment": "staging", "app": "acme/shop", "how": "healed"}),
    ));
    assert_eq!(staging(&view).health, "healthy");
}

#[test]
fn a_drift_that_ends_by_itself_settles_no_rollout() {
    let mut view = View::new(1000);
    story(&mut view);
    view.observe(&deployer_event(
        5,
        EventType::DeploymentFailed,
        json!({"environment": "staging", "reason": "CrashLoopBackOff"}),
    ));
    view.observe(&deployer_event(
        6,
        EventType::EnvironmentSynced,
        json!({"environment": "staging", "app": "acme/shop", "how": "resolved"}),
    ));
    let now = "2024-05-01T12:00:00Z".parse().unwrap();
    assert_eq!(view.matrix(now).apps[0].cells[0].health, "failed");
}

#[test]
fn the_matrix_shows_the_deployers_drift_record() {
    let mut view = View::new(1000);
    story(&mut view);
    view.observe(&record(
        5,
        EventType::EnvironmentDrifted,
        "rel-aaaaaaaa-1",
        json!({"environment": "staging", "app": "acme/shop", "policy": "heal",
               "objects": ["Deployment/shop", "Service/shop", "ConfigMap/a", "Secret/<b>"]}),
        json!({"app": "acme/shop", "environment": "staging"}),
    ));
    let log = view.events(&EventFilter::default(), 1);
    assert_eq!(
        log[0].summary,
        "staging drifted: 4 objects (Deployment/shop, Service/shop, ConfigMap/a and 1 more), policy heal"
    );
    assert_eq!(log[0].tone, "bad");
    view.observe(&record(
        6,
        EventType::EnvironmentDrifted,
        "rel-aaaaaaaa-1",
        json!({"environment": "staging", "app": "acme/shop", "policy": "report",
               "objects": ["ConfigMap/a", "ConfigMap/b"], "objectsOmitted": 4998}),
        json!({"app": "acme/shop", "environment": "staging"}),
    ));
    let log = view.events(&EventFilter::default(), 1);
    assert_eq!(
        log[0].summary,
        "staging drifted: 5000 objects (ConfigMap/a, ConfigMap/b and 4998 more), policy report"
    );

    let record = baton_schemas::drift::DriftRecord {
        state: baton_schemas::drift::SyncState::Drifted,
        config_commit: "cfg1".into(),
        objects: vec!["Deployment/shop".into(), "Secret/<b>".into()],
        objects_omitted: 3,
        fingerprint: "f".into(),
        since: "2024-05-01T11:00:00Z".parse().unwrap(),
        heal_failed: Some("rollout failed: <script>".into()),
    };
    let key = baton_schemas::drift::drift_key("acme/shop", "staging");
    view.apply_state(&key, Some(&serde_json::to_vec(&record).unwrap()));
    let now = "2024-05-01T12:00:00Z".parse().unwrap();
    let sync = view.matrix(now).apps[0].cells[0].sync.clone().unwrap();
    assert_eq!(sync.state, "drifted");
    assert_eq!(sync.objects, ["Deployment/shop", "Secret/<b>"]);
    assert_eq!(sync.count(), 5, "the objects the record left out count");
    assert_eq!(sync.names(), "Deployment/shop, Secret/<b> and 3 more");
    assert_eq!(sync.since, record.since);
    assert_eq!(sync.heal_failed.as_deref(), Some("rollout failed: <script>"));
    assert!(
        view.matrix(now).apps[0].cells[1].sync.is_none(),
        "production has no record"
    );

    let synced = baton_schemas::drift::DriftRecord {
        state: baton_schemas::drift::SyncState::Synced,
        objects: Vec::new(),
        objects_omitted: 0,
        heal_failed: None,
        ..record
    };
    view.apply_state(&key, Some(&serde_json::to_vec(&synced).unwrap()));
    let sync = view.matrix(now).apps[0].cells[0].sync.clone().unwrap();
    assert_eq!(sync.state, "synced");
    assert!(sync.objects.is_empty());
    view.apply_state(&key, None);
    assert!(view.matrix(now).apps[0].cells[0].sync.is_none());
}
