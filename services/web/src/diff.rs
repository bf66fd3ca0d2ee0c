//! Manifest diffs that never show a secret. Every manifest file is read as YAML (JSON is YAML
//! too), each document re-written in one canonical form with the values of every `Secret`'s
//! `data` and `stringData` replaced by `<redacted>` (the keys stay, so a diff still shows that a
//! key was added or removed), and the canonical texts are compared line by line. A file that is
//! not valid YAML is not shown at all: what cannot be read cannot be redacted. Nor is a file
//! with a key given twice in one mapping: read as a JSON value, the last `kind` would win, so
//! `kind: Secret` followed by `kind: ConfigMap` would show the Secret's data.

use serde::Deserialize as _;
use serde::Serialize;
use serde_json::Value;
use similar::{ChangeTag, TextDiff};

/// Longest one file's diff may compute before settling for a coarser answer.
const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(200);

/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// One file of a comparison.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileDiff {
    /// Its path in the manifests folder.
    pub path: String,
    /// `added`, `removed`, `changed` or `same`.
    pub status: &'static str,
    /// The changed lines with their context, in hunks.
    pub hunks: Vec<Vec<DiffLine>>,
}

/// One line of a hunk.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiffLine {
    /// `+` (only in the release), `-` (only in the environment) or ` ` (both).
    pub tag: &'static str,
    /// The line, without its newline.
    pub text: String,
}

/// The canonical text of a manifest file, its Secrets redacted.
pub fn canonical(path: &str, bytes: &[u8]) -> String {
    let unreadable = || format!("# {path} is not shown: it is not valid YAML, so it cannot be redacted\n");
    let Ok(text) = std::str::from_utf8(bytes) else {
        return unreadable();
    };
    let mut out = String::new();
    // The same documents read twice: as YAML values, which refuse a repeated key, and as JSON
    // values, which are redacted and written.
    let checked = yaml_serde::Deserializer::from_str(text);
    for (document, check) in yaml_serde::Deserializer::from_str(text).zip(checked) {
        if yaml_serde::Value::deserialize(check).is_err() {
            return unreadable();
        }
        let Ok(mut value) = Value::deserialize(document) else {
            return unreadable();
        };
        if value.is_null() {
            continue;
        }
        redact(&mut value);
        let Ok(yaml) = yaml_serde::to_string(&value) else {
            return unreadable();
        };
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&yaml);
    }
    out
}

/// Replaces the values of every `Secret`'s `data` and `stringData`, wherever it is (a `List`'s
/// items too).
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("kind").and_then(Value::as_str) == Some("Secret") {
                for field in ["data", "stringData"] {
                    match map.get_mut(field) {
                        Some(Value::Object(entries)) => {
                            for entry in entries.values_mut() {
                                *entry = Value::String(REDACTED.to_owned());
                            }
                        }
                        Some(other) if !other.is_null() => *other = Value::String(REDACTED.to_owned()),
                        _ => {}
                    }
                }
            }
            for child in map.values_mut() {
                redact(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Compares the release's canonical files with the environment's, both sorted by path.
pub fn compare(release: &[(String, String)], environment: &[(String, String)]) -> Vec<FileDiff> {
    let mut paths: Vec<&str> = release
        .iter()
        .chain(environment)
        .map(|(path, _)| path.as_str())
        .collect();
    paths.sort_unstable();
    paths.dedup();
    let find =
        |files: &'_ [(String, String)], path: &str| files.iter().find(|(p, _)| p == path).map(|(_, text)| text.clone());
    paths
        .into_iter()
        .map(|path| {
            let ours = find(release, path);
            let theirs = find(environment, path);
            let status = match (&ours, &theirs) {
                (Some(_), None) => "added",
                (None, Some(_)) => "removed",
                (Some(a), Some(b)) if a == b => "same",
                _ => "changed",
            };
            let hunks = if status == "same" {
                Vec::new()
            } else {
                hunks(
                    theirs.as_deref().unwrap_or_default(),
                    ours.as_deref().unwrap_or_default(),
                )
            };
            FileDiff {
                path: path.to_owned(),
                status,
                hunks,
            }
        })
        .collect()
}

/// The changes from `old` to `new`, with context. The diff is bounded in time: past
/// [`DIFF_DEADLINE`] it settles for a coarser (still correct) answer, so two large, unlike
/// manifests cannot hold a request.
fn hunks(old: &str, new: &str) -> Vec<Vec<DiffLine>> {
    let diff = TextDiff::configure().timeout(DIFF_DEADLINE).diff_lines(old, new);
    diff.grouped_ops(CONTEXT)
        .iter()
        .map(|group| {
            group
                .iter()
                .flat_map(|op| diff.iter_changes(op))
                .map(|change| DiffLine {
                    tag: match change.tag() {
                        ChangeTag::Insert => "+",
                        ChangeTag::Delete => "-",
                        ChangeTag::Equal => " ",
                    },
                    text: change.value().trim_end_matches('\n').to_owned(),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: aHVudGVyMg==\nstringData:\n  token: s3cr3t-t0ken\n";

    #[test]
    fn secrets_are_redacted_keys_kept() {
        let text = canonical("secret.yaml", SECRET.as_bytes());
        assert!(!text.contains("aHVudGVyMg=="), "{text}");
        assert!(!text.contains("s3cr3t-t0ken"), "{text}");
        assert!(text.contains("password: <redacted>"), "{text}");
        assert!(text.contains("token: <redacted>"), "{text}");
    }

    #[test]
    fn secrets_inside_lists_and_json_are_redacted_too() {
        let list = r#"{"kind":"List","items":[{"kind":"Secret","data":{"k":"c2VjcmV0"}}]}"#;
        let text = canonical("list.json", list.as_bytes());
        assert!(!text.contains("c2VjcmV0") && text.contains(REDACTED), "{text}");
    }

    #[test]
    fn a_repeated_key_hides_the_file_rather_than_a_secret_as_another_kind() {
        for hostile in [
            "kind: Secret\ndata:\n  password: aHVudGVyMg==\nkind: ConfigMap\n",
            r#"{"kind":"Secret","stringData":{"token":"s3cr3t-t0ken"},"kind":"ConfigMap"}"#,
            "kind: ConfigMap\n---\nkind: Secret\nmetadata: {name: db}\ndata: {password: aHVudGVyMg==}\nkind: List\n",
        ] {
            let text = canonical("hostile.yaml", hostile.as_bytes());
            assert!(
                !text.contains("aHVudGVyMg==") && !text.contains("s3cr3t-t0ken"),
                "{hostile:?} shows a secret: {text}"
            );
            assert!(text.contains("not shown"), "{text}");
        }
    }

    #[test]
    fn an_unreadable_file_is_not_shown() {
        let text = canonical("bad.yaml", b"kind: Secret\ndata: {password: [unclosed\n");
        assert!(!text.contains("password"), "{text}");
        assert!(text.contains("not shown"), "{text}");
    }

    #[test]
    fn redacted_values_compare_equal_and_other_changes_show() {
        let ours = vec![("s.yaml".to_owned(), canonical("s.yaml", SECRET.as_bytes()))];
        let changed = SECRET.replace("aHVudGVyMg==", "bmV3LXBhc3N3b3Jk");
        let theirs = vec![("s.yaml".to_owned(), canonical("s.yaml", changed.as_bytes()))];
        let diff = compare(&ours, &theirs);
        assert_eq!(diff[0].status, "same", "redacted values compare equal");
        let deployment = "kind: Deployment\nspec:\n  replicas: 2\n";
        let ours = vec![("d.yaml".to_owned(), canonical("d.yaml", deployment.as_bytes()))];
        let theirs = vec![(
            "d.yaml".to_owned(),
            canonical("d.yaml", deployment.replace('2', "3").as_bytes()),
        )];
        let diff = compare(&ours, &theirs);
        assert_eq!(diff[0].status, "changed");
        let lines: Vec<String> = diff[0].hunks[0]
            .iter()
            .map(|l| format!("{}{}", l.tag, l.text))
            .collect();
        assert!(
            lines.contains(&"-  replicas: 3".to_owned()) && lines.contains(&"+  replicas: 2".to_owned()),
            "{lines:?}"
        );
        let diff = compare(&ours, &[]);
        assert_eq!(diff[0].status, "added");
    }
}
