//! Reading the YAML files users write (`.baton.yaml`, `environments.yaml`): every problem is
//! reported with the file, the line and the field at fault, and what to do about it.

use serde::de::DeserializeOwned;

/// A user file that cannot be used, with the field and line at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {location}{message}")]
pub struct FileError {
    /// The file, e.g. `.baton.yaml`.
    pub file: String,
    /// `line L column C, field `a.b`: ` when known.
    pub location: String,
    /// The field at fault (`a.b[2].c`), empty when the problem is the whole file.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FileError {
    /// A problem found after parsing, in `field`.
    pub fn in_field(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            file: file.to_owned(),
            location: format!("field `{field}`: "),
            field,
            message: message.into(),
        }
    }
}

/// Deserializes `text` as the YAML file `file`, naming the line and field of a problem.
///
/// # Errors
/// The first problem serde finds.
pub fn from_yaml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, FileError> {
    let deserializer = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .location()
            .map(|l| format!("line {} column {}, ", l.line(), l.column()))
            .unwrap_or_default();
        let (field, shown) = if field == "." {
            (String::new(), String::new())
        } else {
            let shown = format!("field `{field}`: ");
            (field, shown)
        };
        FileError {
            file: file.to_owned(),
            location: format!("{line}{shown}"),
            field,
            message: strip_location(&inner.to_string()),
        }
    })
}

/// serde_yaml's messages end with " at line L column C", which the location already says.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}
