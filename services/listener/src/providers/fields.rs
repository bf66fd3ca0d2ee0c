//! Reading untrusted JSON without panicking, while remembering where we are in it.
//!
//! Every host module walks its payload through a [`Field`]: a value (or its absence) paired
//! with the JSON path that led to it. When a required field is missing or has the wrong type,
//! the error names the exact path (`push.changes[0].new.target.hash`), which is what a person
//! debugging a webhook delivery needs to see.
//!
//! Two kinds of fields get different treatment on purpose:
//! - *required* fields (refs, shas, the repository's name and clone URL, commit ids) reject the
//!   delivery when missing or mistyped: without them Baton cannot build anything;
//! - *descriptive* fields (names, e-mails, URLs, timestamps) are read leniently: a host that
//!   sends `null` or an unexpected type there should not stop a release.

use baton_schemas::payloads::{CommitInfo, Person, RepositoryInfo};
use serde_json::Value;

use super::{PayloadError, Push};

/// The sha git hosts send for "no commit": `before` of a new ref, `after` of a deleted one.
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Whether `sha` is all zeros: "no commit" in SHA-1 and SHA-256 repositories alike.
pub(super) fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|byte| byte == b'0')
}

/// A JSON value (or its absence) and the path that led to it.
#[derive(Debug, Clone)]
pub(super) struct Field<'a> {
    /// JSON path from the payload's root, e.g. `commits[2].author.name`; empty for the root.
    path: String,
    /// `None` when the field is absent (or its parent was not an object/array).
    value: Option<&'a Value>,
}

impl<'a> Field<'a> {
    /// The whole payload.
    pub(super) fn root(value: &'a Value) -> Self {
        Self {
            path: String::new(),
            value: Some(value),
        }
    }

    /// The member `key` of this object; absent when this is not an object or has no such key.
    pub(super) fn get(&self, key: &str) -> Field<'a> {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        Field {
            path,
            value: self.value.and_then(|value| value.get(key)),
        }
    }

    /// An [`PayloadError::InvalidField`] naming this field.
    pub(super) fn invalid(&self, message: impl Into<String>) -> PayloadError {
        PayloadError::InvalidField {
            field: self.path.clone(),
            message: message.into(),
        }
    }

    /// The value unless it is absent or `null` (hosts use both for "not there").
    fn present(&self) -> Option<&'a Value> {
        self.value.filter(|value| !value.is_null())
    }

    /// A required string, which may be empty (e.g. a commit message).
    pub(super) fn text(&self) -> Result<&'a str, PayloadError> {
        match self.present() {
            Some(Value::String(text)) => Ok(text),
            Some(other) => Err(self.invalid(format!("expected a string, found {}", kind(other)))),
            None => Err(self.invalid("required field is missing")),
        }
    }

    /// A required, non-empty string.
    pub(super) fn required_str(&self) -> Result<&'a str, PayloadError> {
        let text = self.text()?;
        if text.trim().is_empty() {
            return Err(self.invalid("expected a non-empty string"));
        }
        Ok(text)
    }

    /// A descriptive string: `None` when absent, `null`, empty or not a string.
    pub(super) fn optional_str(&self) -> Option<String> {
        self.present()
            .and_then(Value::as_str)
            .filter(|text| !text.trim().is_empty())
            .map(str::to_owned)
    }

    /// `true` only when the field is the JSON boolean `true` (hosts' `created`, `deleted`...).
    pub(super) fn flag(&self) -> bool {
        matches!(self.present(), Some(Value::Bool(true)))
    }

    /// A required object.
    pub(super) fn object(&self) -> Result<Field<'a>, PayloadError> {
        match self.present() {
            Some(Value::Object(_)) => Ok(self.clone()),
            Some(other) => Err(self.invalid(format!("expected an object, found {}", kind(other)))),
            None => Err(self.invalid("required object is missing")),
        }
    }

    /// An optional object: `None` when absent or `null` (e.g. GitHub's `head_commit` of a
    /// deleted branch), an error when it is something else than an object.
    pub(super) fn optional_object(&self) -> Result<Option<Field<'a>>, PayloadError> {
        match self.present() {
            None => Ok(None),
            Some(_) => self.object().map(Some),
        }
    }

    /// The elements of a required array.
    pub(super) fn array(&self) -> Result<Vec<Field<'a>>, PayloadError> {
        match self.present() {
            Some(Value::Array(items)) => Ok(self.elements(items)),
            Some(other) => Err(self.invalid(format!("expected an array, found {}", kind(other)))),
            None => Err(self.invalid("required array is missing")),
        }
    }

    /// The elements of an optional array: empty when absent or `null`.
    pub(super) fn optional_array(&self) -> Result<Vec<Field<'a>>, PayloadError> {
        match self.present() {
            None => Ok(Vec::new()),
            Some(_) => self.array(),
        }
    }

    fn elements(&self, items: &'a [Value]) -> Vec<Field<'a>> {
        items
            .iter()
            .enumerate()
            .map(|(index, item)| Field {
                path: format!("{}[{index}]", self.path),
                value: Some(item),
            })
            .collect()
    }

    /// A full commit sha (40 hex digits, or 64 for SHA-256 repositories), lowercased so that
    /// shas from different fields of one payload compare equal.
    pub(super) fn sha(&self) -> Result<String, PayloadError> {
        let sha = self.required_str()?;
        let is_hex = sha.bytes().all(|byte| byte.is_ascii_hexdigit());
        if !is_hex || !matches!(sha.len(), 40 | 64) {
            return Err(self.invalid("expected a full commit sha (40 or 64 hex digits)"));
        }
        Ok(sha.to_ascii_lowercase())
    }

    /// An optional full commit sha: `None` when absent, `null` or empty.
    pub(super) fn optional_sha(&self) -> Result<Option<String>, PayloadError> {
        match self.optional_str() {
            None if matches!(self.present(), None | Some(Value::String(_))) => Ok(None),
            _ => self.sha().map(Some),
        }
    }

    /// A full git ref such as `refs/heads/main`: downstream stages tell branches from tags by
    /// the prefix, so a short name would be ambiguous.
    pub(super) fn full_ref(&self) -> Result<String, PayloadError> {
        let git_ref = self.required_str()?;
        let is_full = git_ref
            .strip_prefix("refs/")
            .is_some_and(|rest| !rest.is_empty() && !git_ref.chars().any(char::is_whitespace));
        if !is_full {
            return Err(self.invalid("expected a full ref such as `refs/heads/main`"));
        }
        Ok(git_ref.to_owned())
    }
}

/// The JSON type of `value`, for "expected X, found Y" messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A person, or `None` when the host told us nothing about them.
pub(super) fn person(name: Option<String>, email: Option<String>, username: Option<String>) -> Option<Person> {
    let person = Person { name, email, username };
    (person != Person::default()).then_some(person)
}

/// A commit in the shape GitHub, GitLab, Gitea and Baton's generic payload share:
/// `{id, message, timestamp, url, author: {name, email, username}}`.
pub(super) fn standard_commit(commit: &Field<'_>) -> Result<CommitInfo, PayloadError> {
    let commit = commit.object()?;
    let author = commit.get("author");
    Ok(CommitInfo {
        id: commit.get("id").sha()?,
        message: commit.get("message").text()?.to_owned(),
        timestamp: commit.get("timestamp").optional_str(),
        author: Person {
            name: author.get("name").optional_str(),
            email: author.get("email").optional_str(),
            username: author.get("username").optional_str(),
        },
        committer: None,
        url: commit.get("url").optional_str(),
    })
}

/// Every element of `commits` (an optional array) read with `read`.
pub(super) fn commit_list(
    commits: &Field<'_>,
    read: impl Fn(&Field<'_>) -> Result<CommitInfo, PayloadError>,
) -> Result<Vec<CommitInfo>, PayloadError> {
    commits.optional_array()?.iter().map(read).collect()
}

/// A repository in the shape GitHub, Gitea and Baton's generic payload share:
/// `{name, full_name, clone_url, html_url}`. `name` falls back to the last part of `full_name`.
pub(super) fn standard_repository(repository: &Field<'_>) -> Result<RepositoryInfo, PayloadError> {
    let repository = repository.object()?;
    let full_name = repository.get("full_name").required_str()?.to_owned();
    Ok(RepositoryInfo {
        name: repository
            .get("name")
            .optional_str()
            .unwrap_or_else(|| last_segment(&full_name).to_owned()),
        clone_url: repository.get("clone_url").required_str()?.to_owned(),
        html_url: repository.get("html_url").optional_str(),
        full_name,
    })
}

/// `shop` from `acme/shop` (or from `group/subgroup/shop` on GitLab).
pub(super) fn last_segment(full_name: &str) -> &str {
    full_name.rsplit('/').next().unwrap_or(full_name)
}

/// The order in which a host documents its `commits` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listed {
    /// Chronological, as GitHub sends them.
    OldestFirst,
    /// Reverse chronological, as Gitea and Bitbucket send them (like `git log`).
    NewestFirst,
}

/// Puts `commits` oldest first, which is what [`super::Push::commits`] promises.
///
/// The pushed head (`after`) is the newest commit, so its position tells the order apart
/// whatever the host's version: GitLab, for one, switched from oldest-first to newest-first
/// around version 14. When the head is not in the list (hosts cap the list), the order the
/// host documents decides.
pub(super) fn oldest_first(mut commits: Vec<CommitInfo>, after: &str, listed: Listed) -> Vec<CommitInfo> {
    let head_position = commits.iter().position(|commit| commit.id == after);
    let newest_first = match head_position {
        Some(0) => commits.len() > 1,
        Some(_) => false,
        None => listed == Listed::NewestFirst,
    };
    if newest_first {
        commits.reverse();
    }
    commits
}

/// A push in the shape GitHub, Gitea and Baton's generic payload share: `ref`, `before`,
/// `repository`, `commits` and `head_commit` (`null` or absent: the listed commit whose id is
/// `after`), given the pushed head `after` as the host means it, the order the host lists its
/// commits in, and the pusher as the host describes them.
pub(super) fn standard_push(
    root: &Field<'_>,
    after: String,
    listed: Listed,
    pusher: Option<Person>,
) -> Result<Push, PayloadError> {
    let commits = commit_list(&root.get("commits"), standard_commit)?;
    let head_commit = match root.get("head_commit").optional_object()? {
        Some(head) => Some(standard_commit(&head)?),
        None => find_commit(&commits, &[&after]),
    };
    Ok(Push {
        git_ref: root.get("ref").full_ref()?,
        before: root.get("before").sha()?,
        repository: standard_repository(&root.get("repository"))?,
        commits: oldest_first(commits, &after, listed),
        head_commit: head_commit.filter(|_| !is_zero_sha(&after)),
        pusher,
        after,
    })
}

/// The commit among `commits` whose id is one of `ids`, for hosts that do not send the head
/// commit separately.
pub(super) fn find_commit(commits: &[CommitInfo], ids: &[&str]) -> Option<CommitInfo> {
    commits.iter().find(|commit| ids.contains(&commit.id.as_str())).cloned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn commit(id: char) -> CommitInfo {
        CommitInfo {
            id: id.to_string().repeat(40),
            message: String::new(),
            timestamp: None,
            author: Person::default(),
            committer: None,
            url: None,
        }
    }

    fn ids(commits: &[CommitInfo]) -> String {
        commits.iter().filter_map(|commit| commit.id.chars().next()).collect()
    }

    #[test]
    fn errors_name_the_json_path() {
        let payload = json!({"push": {"changes": [{"new": {"target": {"hash": 7}}}]}});
        let root = Field::root(&payload);
        let changes = root.get("push").get("changes").array().unwrap();
        let error = changes[0].get("new").get("target").get("hash").sha().unwrap_err();
        assert_eq!(
            error,
            PayloadError::InvalidField {
                field: "push.changes[0].new.target.hash".into(),
                message: "expected a string, found a number".into(),
            }
        );
    }

    #[test]
    fn shas_must_be_full_and_hex() {
        let payload = json!({"short": "abc123", "upper": "ABCDEF0123456789ABCDEF0123456789ABCDEF01"});
        let root = Field::root(&payload);
        assert!(root.get("short").sha().is_err());
        assert_eq!(
            root.get("upper").sha().unwrap(),
            "abcdef0123456789abcdef0123456789abcdef01"
        );
    }

    #[test]
    fn refs_must_be_full() {
        let payload = json!({"short": "main", "full": "refs/heads/main", "bare": "refs/"});
        let root = Field::root(&payload);
        assert!(root.get("short").full_ref().is_err());
        assert!(root.get("bare").full_ref().is_err());
        assert_eq!(root.get("full").full_ref().unwrap(), "refs/heads/main");
    }

    #[test]
    fn descriptive_fields_are_lenient() {
        let payload = json!({"a": null, "b": 5, "c": "", "d": "x"});
        let root = Field::root(&payload);
        assert_eq!(root.get("a").optional_str(), None);
        assert_eq!(root.get("b").optional_str(), None);
        assert_eq!(root.get("c").optional_str(), None);
        assert_eq!(root.get("missing").optional_str(), None);
        assert_eq!(root.get("d").optional_str().as_deref(), Some("x"));
    }

    #[test]
    fn commit_order_follows_the_head_then_the_documented_order() {
        let newest_first = vec![commit('c'), commit('b'), commit('a')];
        let head = "c".repeat(40);
        assert_eq!(
            ids(&oldest_first(newest_first.clone(), &head, Listed::OldestFirst)),
            "abc"
        );

        let oldest = vec![commit('a'), commit('b'), commit('c')];
        assert_eq!(ids(&oldest_first(oldest, &head, Listed::NewestFirst)), "abc");

        let unknown_head = "f".repeat(40);
        assert_eq!(
            ids(&oldest_first(newest_first, &unknown_head, Listed::NewestFirst)),
            "abc"
        );
    }
}
