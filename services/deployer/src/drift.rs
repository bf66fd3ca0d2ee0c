//! Drift, decided without I/O: how a live object differs from what applying the release would
//! make of it, who changed each field (from the object's managedFields), what a report may say
//! of a Secret, and whether a comparison starts, changes or ends a drift (so a drift is reported
//! once, not at every pass). [`crate::detect`] reads the cluster and acts around these.
//!
//! What applying the release would make of an object is the apiserver's answer to a server-side
//! apply dry run by the app's field manager, forced: it holds the release's values for every
//! field the release sets and leaves alone what other managers own that the release does not
//! set (an autoscaler's `replicas`). So every difference between it and the live object is a
//! field the release manages that someone changed.

use baton_schemas::drift::{DriftKind, DriftRecord, DriftedObject, FieldDrift, REDACTED, SyncState};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde_json::Value;
use sha2::Digest as _;

/// Metadata the apiserver or controllers keep that no release sets: never drift.
const VOLATILE_METADATA: &[&str] = &[
    "resourceVersion",
    "managedFields",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
];

/// One step of a field's path: a map key, or the element of a list of named objects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    /// An element of a list of maps that each carry `key` (e.g. `name`), as server-side apply
    /// merges `containers`, `env`, `ports`, `volumes`.
    Named {
        key: &'static str,
        value: Value,
    },
}

/// The keys lists of maps are merged by, in the order they are tried.
const MERGE_KEYS: &[&str] = &["name", "containerPort", "port", "mountPath", "ip"];

fn merge_key(list: &[Value]) -> Option<&'static str> {
    if list.is_empty() {
        return None;
    }
    MERGE_KEYS.iter().copied().find(|key| {
        let mut seen = Vec::new();
        list.iter().all(|item| match item.get(key) {
            Some(v) if !v.is_null() && !seen.contains(&v) => {
                seen.push(v);
                true
            }
            _ => false,
        })
    })
}

fn display(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Named { key, value } => {
                let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                out.push_str(&format!("[{key}={value}]"));
            }
        }
    }
    out
}

/// A field of a live object that differs from the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedField {
    /// As reports name it: `spec.template.spec.containers[name=shop].image`.
    pub path: String,
    /// The release's value, if it sets one.
    pub expected: Option<Value>,
    /// The live value, if there is one.
    pub live: Option<Value>,
    /// The path as managedFields' `fieldsV1` spells it (`f:spec`, `k:{"name":"shop"}`).
    pub fields_v1: Vec<String>,
}

/// The fields of `live` that differ from `expected` (the forced dry run of the release), as
/// paths with both values, in path order. `status`, the type and the metadata the apiserver
/// keeps are left out; labels and annotations count.
pub fn changed_fields(expected: &Value, live: &Value) -> Vec<ChangedField> {
    let mut out = Vec::new();
    let (Some(expected), Some(live)) = (expected.as_object(), live.as_object()) else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = expected.keys().chain(live.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        // A listed object may come without its type; the type is the object's identity anyway.
        if key == "status" || key == "apiVersion" || key == "kind" {
            continue;
        }
        let (e, l) = (expected.get(key), live.get(key));
        if key == "metadata" {
            let strip = |v: Option<&Value>| {
                let mut v = v.cloned().unwrap_or(Value::Null);
                if let Some(map) = v.as_object_mut() {
                    for volatile in VOLATILE_METADATA {
                        map.remove(*volatile);
                    }
                }
                v
            };
            walk(
                &mut vec![Step::Key(key.clone())],
                Some(&strip(e)),
                Some(&strip(l)),
                &mut out,
            );
        } else {
            walk(&mut vec![Step::Key(key.clone())], e, l, &mut out);
        }
    }
    out.into_iter()
        .map(|(path, expected, live)| ChangedField {
            path: display(&path),
            expected,
            live,
            fields_v1: fields_v1_path(&path),
        })
        .collect()
}

fn walk(
    path: &mut Vec<Step>,
    expected: Option<&Value>,
    live: Option<&Value>,
    out: &mut Vec<(Vec<Step>, Option<Value>, Option<Value>)>,
) {
    match (expected, live) {
        (Some(Value::Object(e)), Some(Value::Object(l))) => {
            let mut keys: Vec<&String> = e.keys().chain(l.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                path.push(Step::Key(key.clone()));
                walk(path, e.get(key), l.get(key), out);
                path.pop();
            }
        }
        (Some(Value::Array(e)), Some(Value::Array(l))) if e != l => {
            match merge_key(e).filter(|k| merge_key(l) == Some(*k)) {
                Some(key) => {
                    let mut names: Vec<&Value> = e.iter().chain(l.iter()).filter_map(|item| item.get(key)).collect();
                    names.dedup();
                    let mut unique: Vec<&Value> = Vec::new();
                    for name in names {
                        if !unique.contains(&name) {
                            unique.push(name);
                        }
                    }
                    for name in unique {
                        let find = |list: &'_ [Value]| list.iter().find(|item| item.get(key) == Some(name)).cloned();
                        let (ei, li) = (find(e), find(l));
                        path.push(Step::Named {
                            key,
                            value: name.clone(),
                        });
                        walk(path, ei.as_ref(), li.as_ref(), out);
                        path.pop();
                    }
                }
                None => out.push((path.clone(), expected.cloned(), live.cloned())),
            }
        }
        (e, l) if e != l => out.push((path.clone(), e.cloned(), l.cloned())),
        _ => {}
    }
}

/// The path in managedFields' `fieldsV1` form (`f:spec`, `k:{"name":"shop"}`).
fn fields_v1_path(path: &[Step]) -> Vec<String> {
    path.iter()
        .map(|step| match step {
            Step::Key(k) => format!("f:{k}"),
            Step::Named { key, value } => {
                let mut one = serde_json::Map::new();
                one.insert((*key).to_owned(), value.clone());
                format!("k:{}", Value::Object(one))
            }
        })
        .collect()
}

/// Who owns the field at `path` (`fieldsV1` form) among `entries` other than `ours`: the manager
/// whose set holds the field itself or the element it belongs to, with the time of its write.
/// The latest such write wins when several managers share it.
pub fn owner_of(
    entries: &[ManagedFieldsEntry],
    ours: &[&str],
    path: &[String],
) -> Option<(String, Option<DateTime<Utc>>)> {
    entries
        .iter()
        .filter(|e| e.manager.as_deref().is_some_and(|m| !ours.contains(&m)))
        .filter(|e| e.fields_v1.as_ref().is_some_and(|f| holds(&f.0, path)))
        .max_by_key(|e| e.time.as_ref().map(|t| t.0))
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.time
                    .as_ref()
                    .map(|t| DateTime::<Utc>::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()),
            )
        })
}

/// Whether a `fieldsV1` set holds `path` (the field, or a list element on its way that the set
/// owns as a whole).
fn holds(set: &Value, path: &[String]) -> bool {
    let mut node = set;
    for (i, step) in path.iter().enumerate() {
        let Some(next) = node.get(step) else {
            // A key element's set may spell its key with other members first: match by key.
            let Some(map) = node.as_object() else { return false };
            let Some(found) = step
                .strip_prefix("k:")
                .and_then(|k| serde_json::from_str::<Value>(k).ok())
                .and_then(|k| {
                    map.iter().find_map(|(name, v)| {
                        let other: Value = serde_json::from_str(name.strip_prefix("k:")?).ok()?;
                        k.as_object()?
                            .iter()
                            .all(|(kk, kv)| other.get(kk) == Some(kv))
                            .then_some(v)
                    })
                })
            else {
                return false;
            };
            node = found;
            if i + 1 == path.len() {
                return true;
            }
            continue;
        };
        node = next;
    }
    true
}

/// The largest value, as JSON, a report carries. A larger one (anyone who can edit an object can
/// put a megabyte in one field) stands as its size and a digest, so the report stays small
/// enough to publish and another live value still makes another fingerprint.
const MAX_REPORTED_VALUE: usize = 1024;

fn bounded(value: &mut Option<Value>) {
    if let Some(v) = value {
        let text = v.to_string();
        if text.len() > MAX_REPORTED_VALUE {
            let digest = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8]);
            *v = Value::String(format!("<{} bytes, sha256 {digest}...>", text.len()));
        }
    }
}

/// Replaces a Secret's values (`data`, `stringData`) in a field drift with [`REDACTED`].
pub fn redact(kind: &str, field: &mut FieldDrift) {
    if kind != "Secret" || !(field.path.starts_with("data") || field.path.starts_with("stringData")) {
        return;
    }
    for value in [&mut field.expected, &mut field.live] {
        if value.is_some() {
            *value = Some(Value::String(REDACTED.to_owned()));
        }
    }
}

/// What a live object of the release, compared with its forced dry run, says: `None` when they
/// match.
pub fn compare_object(
    kind: &str,
    object: &str,
    expected: &Value,
    live: &Value,
    entries: &[ManagedFieldsEntry],
    ours: &[&str],
) -> Option<DriftedObject> {
    let fields: Vec<FieldDrift> = changed_fields(expected, live)
        .into_iter()
        .map(
            |ChangedField {
                 path,
                 expected,
                 live,
                 fields_v1,
             }| {
                let owner = live.as_ref().and_then(|_| owner_of(entries, ours, &fields_v1));
                let mut field = FieldDrift {
                    path,
                    expected,
                    live,
                    changed_by: owner.as_ref().map(|(m, _)| m.clone()),
                    changed_at: owner.and_then(|(_, t)| t),
                };
                redact(kind, &mut field);
                bounded(&mut field.expected);
                bounded(&mut field.live);
                field
            },
        )
        .collect();
    (!fields.is_empty()).then(|| DriftedObject {
        object: object.to_owned(),
        kind: DriftKind::Changed,
        fields,
        fields_omitted: 0,
    })
}

/// A fingerprint of what differs: the objects, how, which fields and their live values
/// (hashed, so a Secret's value is not kept).
pub fn fingerprint(objects: &[DriftedObject]) -> String {
    let mut sorted: Vec<&DriftedObject> = objects.iter().collect();
    sorted.sort_by(|a, b| (&a.object, a.kind).cmp(&(&b.object, b.kind)));
    let mut hasher = sha2::Sha256::new();
    for o in sorted {
        hasher.update(format!("{}\0{:?}\0", o.object, o.kind));
        for f in &o.fields {
            hasher.update(format!(
                "{}\0{}\0",
                f.path,
                f.live.as_ref().map(Value::to_string).unwrap_or_default()
            ));
        }
    }
    hex::encode(&hasher.finalize()[..16])
}

/// What one comparison means for the record kept of an app's drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing to write or report.
    Unchanged,
    /// Write the record, report nothing (the first look found it in sync, or a new commit).
    Record(DriftRecord),
    /// A drift began or changed: write the record, report `drifted`.
    Drifted(DriftRecord),
    /// A reported drift ended: write the record, report `synced`.
    Synced(DriftRecord),
}

/// Most objects a drift report lists; the rest are counted (`objectsOmitted`).
const MAX_LISTED_OBJECTS: usize = 200;
/// Most fields listed per object; the rest are counted (`fieldsOmitted`).
const MAX_LISTED_FIELDS: usize = 32;
/// Most bytes the listed objects take as JSON. With values capped at [`MAX_REPORTED_VALUE`], an
/// object's listed fields take at most ~70 KiB, so a report (an event, a drift record) stays far
/// below a NATS message's 1 MiB however many objects someone labels or fields they change.
const MAX_LISTED_BYTES: usize = 256 * 1024;

/// What a report lists of `objects`, in name order: as many as fit 200 objects and 256 KiB
/// (`MAX_LISTED_OBJECTS`, `MAX_LISTED_BYTES`), each with at most 32 fields
/// (`MAX_LISTED_FIELDS`); and how many objects are left out. The fingerprint is taken over all of them, never over this.
pub fn listed(objects: &[DriftedObject]) -> (Vec<DriftedObject>, u64) {
    let mut sorted: Vec<&DriftedObject> = objects.iter().collect();
    sorted.sort_by(|a, b| (&a.object, a.kind).cmp(&(&b.object, b.kind)));
    let mut listed = Vec::new();
    let mut bytes = 0;
    for object in sorted {
        if listed.len() == MAX_LISTED_OBJECTS {
            break;
        }
        let kept = object.fields.len().min(MAX_LISTED_FIELDS);
        let object = DriftedObject {
            fields: object.fields[..kept].to_vec(),
            fields_omitted: object.fields_omitted + (object.fields.len() - kept) as u64,
            ..object.clone()
        };
        let size = serde_json::to_vec(&object).map_or(0, |json| json.len());
        if bytes + size > MAX_LISTED_BYTES {
            break;
        }
        bytes += size;
        listed.push(object);
    }
    let omitted = (objects.len() - listed.len()) as u64;
    (listed, omitted)
}

/// The names (`Kind/name`) a report lists of `objects`, sorted and without repeats, and how many
/// objects are left out.
pub fn listed_names(objects: &[DriftedObject]) -> (Vec<String>, u64) {
    let (listed, omitted) = listed(objects);
    let mut names: Vec<String> = listed.into_iter().map(|o| o.object).collect();
    names.dedup();
    (names, omitted)
}

/// Decides what a comparison at `commit` that found `objects` means after `previous`, as of `now`.
pub fn transition(
    previous: Option<&DriftRecord>,
    commit: &str,
    objects: &[DriftedObject],
    now: DateTime<Utc>,
) -> Transition {
    if objects.is_empty() {
        let synced = DriftRecord {
            state: SyncState::Synced,
            config_commit: commit.to_owned(),
            objects: Vec::new(),
            objects_omitted: 0,
            fingerprint: String::new(),
            since: now,
            heal_failed: None,
        };
        return match previous {
            Some(p) if p.state == SyncState::Drifted => Transition::Synced(synced),
            Some(p) if p.config_commit == commit => Transition::Unchanged,
            Some(p) => Transition::Record(DriftRecord {
                since: p.since,
                ..synced
            }),
            None => Transition::Record(synced),
        };
    }
    let fingerprint = fingerprint(objects);
    let since = match previous {
        Some(p) if p.state == SyncState::Drifted && p.fingerprint == fingerprint && p.config_commit == commit => {
            return Transition::Unchanged;
        }
        Some(p) if p.state == SyncState::Drifted => p.since,
        _ => now,
    };
    // Listed only for a record to write: the same drift seen again costs its fingerprint alone.
    let (names, objects_omitted) = listed_names(objects);
    Transition::Drifted(DriftRecord {
        state: SyncState::Drifted,
        config_commit: commit.to_owned(),
        objects: names,
        objects_omitted,
        fingerprint,
        since,
        heal_failed: None,
    })
}

/// The objects of `labelled` (`Kind/name`, carrying the app's labels in the environment) that
/// the release does not have.
pub fn extras(labelled: &[String], release: &[String]) -> Vec<DriftedObject> {
    labelled
        .iter()
        .filter(|name| !release.contains(name))
        .map(|name| DriftedObject {
            object: name.clone(),
            kind: DriftKind::Extra,
            fields: Vec::new(),
            fields_omitted: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests;
