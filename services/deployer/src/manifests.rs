//! An environment's manifests as the deployer applies them: read from the config repo's folder
//! at the promotion's commit, parsed (multi-document YAML or JSON), checked (every object needs
//! `apiVersion`, `kind` and `metadata.name`; none may target another namespace), and stamped with
//! the namespace and Baton's labels, so the objects of an app in an environment can be found
//! (and pruned) later.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Label: who manages the object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the app (its NATS token).
pub const APP_LABEL: &str = "baton.dev/app";
/// Label: the environment.
pub const ENVIRONMENT_LABEL: &str = "baton.dev/environment";
/// Label: the release.
pub const RELEASE_LABEL: &str = "baton.dev/release";
/// Annotation: the promotion applied.
pub const PROMOTION_ANNOTATION: &str = "baton.dev/promotion";
/// Annotation: the config-repo commit applied.
pub const COMMIT_ANNOTATION: &str = "baton.dev/config-commit";

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file it came from.
    pub file: String,
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `Deployment`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// The whole object.
    pub object: Value,
}

impl Manifest {
    /// `Kind/name`, as reports name it.
    pub fn display(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// The group of `apiVersion` (empty for the core group) and its version.
    pub fn group_version(&self) -> (&str, &str) {
        match self.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", self.api_version.as_str()),
        }
    }
}

/// Why the manifests cannot be applied: always the manifests' fault (permanent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ManifestError {
    /// The file at fault (`<folder>/<file>`).
    pub file: String,
    /// What is wrong.
    pub message: String,
}

/// Parses every manifest file (path, bytes) of `folder`, in path order.
///
/// # Errors
/// The first file that is not YAML or holds an object Kubernetes cannot take.
pub fn parse(folder: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<Manifest>, ManifestError> {
    let mut files: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(p, _)| baton_schemas::release::is_manifest_file(p))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (path, bytes) in files {
        let file = format!("{folder}/{path}");
        let error = |message: String| ManifestError {
            file: file.clone(),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| error(format!("not UTF-8: {e}")))?;
        for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(document)
                .map_err(|e: yaml_serde::Error| error(format!("not valid YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let at = |what: &str| error(format!("document {}: {what}", index + 1));
            let Value::Object(map) = &value else {
                return Err(at(
                    "is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
                ));
            };
            let field = |name: &str| map.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
            let api_version = field("apiVersion").ok_or_else(|| at("has no `apiVersion`"))?.to_owned();
            let kind = field("kind").ok_or_else(|| at("has no `kind`"))?.to_owned();
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at(&format!("the {kind} has no `metadata.name`")))?
                .to_owned();
            out.push(Manifest {
                file: file.clone(),
                api_version,
                kind,
                name,
                object: value,
            });
        }
    }
    if out.is_empty() {
        return Err(ManifestError {
            file: folder.to_owned(),
            message: "holds no Kubernetes object to apply".into(),
        });
    }
    Ok(out)
}

/// Refuses an object that names a namespace other than the environment's.
///
/// # Errors
/// When `metadata.namespace` is set to another namespace.
pub fn check_namespace(manifest: &Manifest, namespace: &str) -> Result<(), ManifestError> {
    match manifest
        .object
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(other) if other != namespace => Err(ManifestError {
            file: manifest.file.clone(),
            message: format!(
                "{} targets namespace `{other}`, but this environment deploys only to `{namespace}`; remove `metadata.namespace` (Baton sets it)",
                manifest.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// Sets the namespace (for namespaced kinds), Baton's labels and annotations.
pub fn stamp(
    manifest: &mut Manifest,
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) {
    let Some(object) = manifest.object.as_object_mut() else {
        return;
    };
    let metadata = object.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    if let Some(namespace) = namespace {
        metadata.insert("namespace".into(), Value::String(namespace.to_owned()));
    }
    for (key, entries) in [("labels", labels), ("annotations", annotations)] {
        let target = metadata.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        if let Some(target) = target.as_object_mut() {
            for (k, v) in entries {
                target.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_document_and_names_what_is_missing() {
        let files = vec![
            (
                "app.yaml".to_owned(),
                b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b}\n"
                    .to_vec(),
            ),
            (".baton-release.yaml".to_owned(), b"not: applied".to_vec()),
        ];
        let parsed = parse("staging/shop", &files).unwrap();
        assert_eq!(
            parsed.iter().map(Manifest::display).collect::<Vec<_>>(),
            ["ConfigMap/a", "Deployment/b"]
        );
        assert_eq!(parsed[1].group_version(), ("apps", "v1"));
        assert_eq!(parsed[0].group_version(), ("", "v1"));

        let nameless = vec![(
            "x.yaml".to_owned(),
            b"apiVersion: v1\nkind: Service\nmetadata: {}\n".to_vec(),
        )];
        let err = parse("staging/shop", &nameless).unwrap_err();
        assert!(
            err.to_string().contains("staging/shop/x.yaml") && err.to_string().contains("metadata.name"),
            "{err}"
        );
        let broken = vec![("x.yaml".to_owned(), b"kind: [".to_vec())];
        assert!(parse("f", &broken).unwrap_err().message.contains("not valid YAML"));
        let scalar = vec![("x.yaml".to_owned(), b"just words".to_vec())];
        assert!(
            parse("f", &scalar)
                .unwrap_err()
                .message
                .contains("not a Kubernetes object")
        );
        assert!(parse("f", &[]).is_err());
    }

    #[test]
    fn another_namespace_is_refused_and_stamping_sets_ours() {
        let files = vec![(
            "a.yaml".to_owned(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: kube-system, labels: {x: y}}\n".to_vec(),
        )];
        let mut parsed = parse("f", &files).unwrap();
        let err = check_namespace(&parsed[0], "shop-staging").unwrap_err();
        assert!(
            err.message.contains("kube-system") && err.message.contains("shop-staging"),
            "{err}"
        );
        let labels = BTreeMap::from([(APP_LABEL.to_owned(), "shop".to_owned())]);
        stamp(&mut parsed[0], Some("shop-staging"), &labels, &BTreeMap::new());
        assert!(check_namespace(&parsed[0], "shop-staging").is_ok());
        assert_eq!(parsed[0].object["metadata"]["labels"]["x"], "y");
        assert_eq!(parsed[0].object["metadata"]["labels"][APP_LABEL], "shop");
    }
}
