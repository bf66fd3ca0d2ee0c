use baton_schemas::drift::{DriftKind, SyncState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use serde_json::json;

use super::*;

fn deployment(image: &str, replicas: u32, label: Option<&str>) -> Value {
    let mut labels = json!({"baton.dev/app": "shop"});
    if let Some(extra) = label {
        labels["team"] = json!(extra);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "resourceVersion": "7", "generation": 3, "labels": labels},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [
                {"name": "shop", "image": image, "ports": [{"containerPort": 80}]},
                {"name": "sidecar", "image": "proxy:1"},
            ]}},
        },
        "status": {"replicas": 2},
    })
}

fn entry(manager: &str, seconds: i64, fields: Value) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: Some(manager.to_owned()),
        operation: Some("Update".to_owned()),
        time: Some(Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())),
        fields_v1: Some(FieldsV1(fields)),
        ..Default::default()
    }
}

#[test]
fn a_changed_image_is_named_by_container_and_volatile_metadata_and_status_are_not() {
    let expected = deployment("shop@sha256:aa", 2, None);
    let mut live = deployment("nginx:latest", 2, None);
    live["metadata"]["resourceVersion"] = json!("8");
    live["metadata"]["generation"] = json!(4);
    live["status"]["replicas"] = json!(3);
    let changed = changed_fields(&expected, &live);
    assert_eq!(changed.len(), 1, "{changed:?}");
    let ChangedField {
        path,
        expected: e,
        live: l,
        fields_v1,
    } = &changed[0];
    assert_eq!(path, "spec.template.spec.containers[name=shop].image");
    assert_eq!(e.as_ref(), Some(&json!("shop@sha256:aa")));
    assert_eq!(l.as_ref(), Some(&json!("nginx:latest")));
    assert_eq!(
        fields_v1,
        &[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            r#"k:{"name":"shop"}"#,
            "f:image"
        ]
    );
    assert!(changed_fields(&expected, &expected.clone()).is_empty());
}

#[test]
fn added_and_removed_fields_and_labels_count() {
    let expected = deployment("a", 2, None);
    let live = deployment("a", 2, Some("payments"));
    let changed = changed_fields(&expected, &live);
    assert_eq!(changed[0].path, "metadata.labels.team");
    assert_eq!(
        (changed[0].expected.as_ref(), changed[0].live.as_ref()),
        (None, Some(&json!("payments")))
    );
    // A list without a merge key is compared whole.
    let e = json!({"spec": {"args": ["a", "b"]}});
    let l = json!({"spec": {"args": ["a"]}});
    let changed = changed_fields(&e, &l);
    assert_eq!(changed[0].path, "spec.args");
    assert_eq!(changed[0].live, Some(json!(["a"])));
}

#[test]
fn who_changed_a_field_comes_from_the_managed_fields_and_ours_is_never_named() {
    let expected = deployment("shop@sha256:aa", 2, None);
    let live = deployment("nginx:latest", 2, None);
    let image = json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
        r#"k:{"name":"shop"}"#: {".": {}, "f:image": {}}
    }}}}});
    let entries = vec![
        entry("baton/shop", 100, json!({"f:spec": {"f:replicas": {}}})),
        entry("kubectl-set", 200, image.clone()),
    ];
    let compare = |entries: &[ManagedFieldsEntry]| {
        compare_object(
            "Deployment",
            "Deployment/shop",
            &expected,
            &live,
            entries,
            &["baton/shop"],
        )
        .unwrap()
    };
    let drifted = compare(&entries);
    assert_eq!(drifted.kind, DriftKind::Changed);
    let field = &drifted.fields[0];
    assert_eq!(field.changed_by.as_deref(), Some("kubectl-set"));
    assert_eq!(field.changed_at.map(|t| t.timestamp()), Some(200));
    // Baton's own manager is never "who changed it".
    let drifted = compare(&[entry("baton/shop", 100, image)]);
    assert_eq!(drifted.fields[0].changed_by, None);
}

#[test]
fn a_secrets_values_are_redacted_both_ways() {
    let expected = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "aHVudGVyMg=="}});
    let live = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "c2VjcmV0"}});
    let drifted = compare_object("Secret", "Secret/s", &expected, &live, &[], &[]).unwrap();
    let field = &drifted.fields[0];
    assert_eq!(field.path, "data.password");
    assert_eq!(field.expected, Some(json!(REDACTED)));
    assert_eq!(field.live, Some(json!(REDACTED)));
    let text = serde_json::to_string(&drifted).unwrap();
    assert!(!text.contains("c2VjcmV0") && !text.contains("aHVudGVyMg=="), "{text}");
}

#[test]
fn a_huge_live_value_is_reported_by_size_and_digest_and_still_changes_the_fingerprint() {
    let configmap = |value: &str| json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"page": value}});
    let expected = configmap("hello");
    let (one, other) = ("a".repeat(1 << 20), "b".repeat(1 << 20));
    let first = compare_object("ConfigMap", "ConfigMap/c", &expected, &configmap(&one), &[], &[]).unwrap();
    let second = compare_object("ConfigMap", "ConfigMap/c", &expected, &configmap(&other), &[], &[]).unwrap();
    let text = serde_json::to_string(&first).unwrap();
    assert!(text.len() < 2 * MAX_REPORTED_VALUE, "{} bytes reported", text.len());
    assert_eq!(first.fields[0].path, "data.page");
    assert_eq!(first.fields[0].expected, Some(json!("hello")));
    let live = first.fields[0].live.as_ref().and_then(Value::as_str).unwrap();
    assert!(
        live.starts_with(&format!("<{} bytes, sha256 ", one.len() + 2)),
        "{live}"
    );
    assert_ne!(fingerprint(&[first]), fingerprint(&[second]));
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap()
}

fn changed(object: &str, live: &str) -> DriftedObject {
    DriftedObject {
        object: object.to_owned(),
        kind: DriftKind::Changed,
        fields: vec![FieldDrift {
            path: "spec.x".into(),
            expected: Some(json!("a")),
            live: Some(json!(live)),
            changed_by: None,
            changed_at: None,
        }],
        fields_omitted: 0,
    }
}

#[test]
fn a_flood_of_drift_is_reported_within_one_message_and_still_fingerprinted_whole() {
    // Someone who can create and edit objects in the namespace: five thousand extra objects
    // with the app's labels and the longest names Kubernetes allows, and a Deployment with a
    // thousand changed fields, each value as large as a report carries.
    let huge = "x".repeat(10 * MAX_REPORTED_VALUE);
    let mut deployment = changed("Deployment/shop", "b");
    deployment.fields = (0..1000)
        .map(|i| {
            let mut field = FieldDrift {
                path: format!("spec.template.metadata.annotations.note-{i}"),
                expected: Some(json!(huge)),
                live: Some(json!(format!("{huge}{i}"))),
                changed_by: Some("kubectl-edit".into()),
                changed_at: Some(at(i)),
            };
            bounded(&mut field.expected);
            bounded(&mut field.live);
            field
        })
        .collect();
    let labelled: Vec<String> = (0..5000).map(|i| format!("ConfigMap/{i:0>253}")).collect();
    let mut objects = extras(&labelled, &[]);
    objects.push(deployment);

    let (shown, omitted) = listed(&objects);
    assert!(shown.len() <= MAX_LISTED_OBJECTS);
    assert_eq!(shown.len() as u64 + omitted, 5001, "every object is listed or counted");
    assert_eq!(
        shown[0].object,
        "ConfigMap/".to_owned() + &"0".repeat(253),
        "in name order"
    );
    let json = serde_json::to_vec(&shown).unwrap();
    assert!(json.len() <= MAX_LISTED_BYTES, "{} bytes listed", json.len());
    // The Deployment sorts after the ConfigMaps, so it is counted, not listed.
    assert!(shown.iter().all(|o| o.kind == DriftKind::Extra));

    // Listed first, its fields are capped and counted.
    let (alone, none_left) = listed(&objects[objects.len() - 1..]);
    assert_eq!(none_left, 0);
    assert_eq!(alone[0].fields.len(), MAX_LISTED_FIELDS);
    assert_eq!(alone[0].fields_omitted, 1000 - MAX_LISTED_FIELDS as u64);

    // The record keeps the names listed and the count; the fingerprint still sees all: a change
    // in the last of the omitted objects is a new drift.
    let Transition::Drifted(record) = transition(None, "c1", &objects, at(1)) else {
        panic!("a drift")
    };
    assert_eq!(record.objects.len(), shown.len());
    assert_eq!(record.objects_omitted, omitted);
    assert!(serde_json::to_vec(&record).unwrap().len() < 512 * 1024);
    let mut changed_last = objects.clone();
    changed_last.last_mut().unwrap().fields[999].live = Some(json!("another"));
    assert_ne!(fingerprint(&objects), fingerprint(&changed_last));
}

#[test]
fn a_drift_is_reported_once_again_when_it_changes_and_synced_when_it_ends() {
    let first = transition(None, "c1", &[], at(1));
    let Transition::Record(synced) = first else {
        panic!("the first look records the state: {first:?}")
    };
    assert_eq!(synced.state, SyncState::Synced);
    assert_eq!(transition(Some(&synced), "c1", &[], at(2)), Transition::Unchanged);

    let drift = [changed("Deployment/shop", "b")];
    let Transition::Drifted(drifted) = transition(Some(&synced), "c1", &drift, at(3)) else {
        panic!("a drift is reported")
    };
    assert_eq!(drifted.objects, ["Deployment/shop"]);
    assert_eq!(drifted.since, at(3));
    assert_eq!(
        transition(Some(&drifted), "c1", &drift, at(4)),
        Transition::Unchanged,
        "not again at the next pass"
    );
    let worse = [changed("Deployment/shop", "c"), changed("ConfigMap/settings", "d")];
    let Transition::Drifted(again) = transition(Some(&drifted), "c1", &worse, at(5)) else {
        panic!("a drift that changed is reported again")
    };
    assert_eq!(again.since, at(3), "since the drift began");
    assert_eq!(again.objects, ["ConfigMap/settings", "Deployment/shop"]);
    let Transition::Synced(ended) = transition(Some(&again), "c1", &[], at(6)) else {
        panic!("the end of a drift is reported")
    };
    assert_eq!((ended.state, ended.since), (SyncState::Synced, at(6)));
    // A new commit in sync is recorded quietly.
    assert!(matches!(transition(Some(&ended), "c2", &[], at(7)), Transition::Record(r) if r.config_commit == "c2"));
}

#[test]
fn extras_are_the_labelled_objects_the_release_lacks() {
    let labelled = vec!["ConfigMap/a".to_owned(), "ConfigMap/hand-made".to_owned()];
    let found = extras(&labelled, &["ConfigMap/a".to_owned()]);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].object.as_str(), found[0].kind),
        ("ConfigMap/hand-made", DriftKind::Extra)
    );
}
