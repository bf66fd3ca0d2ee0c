//! Where a step runs: its `workdir`, checked to stay inside the workspace (relative, without
//! `..`, not through a symlink leading out) and resolved to a directory of it.

use std::path::{Component, Path, PathBuf};

/// A `workdir` that cannot be used: steps must stay inside their workspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkdirError {
    /// An absolute `workdir` would point outside the workspace.
    #[error("workdir `{workdir}` is refused: it escapes the workspace (write a path relative to the repository root)")]
    Absolute {
        /// The `workdir` as written.
        workdir: String,
    },
    /// A `..` component could climb out of the workspace.
    #[error("workdir `{workdir}` is refused: it escapes the workspace (`..` is not allowed)")]
    ParentDir {
        /// The `workdir` as written.
        workdir: String,
    },
    /// A symlink in the workspace leads outside it.
    #[error("workdir `{workdir}` is refused: it escapes the workspace through a symlink to {}", resolved.display())]
    SymlinkEscape {
        /// The `workdir` as written.
        workdir: String,
        /// Where it resolves to.
        resolved: PathBuf,
    },
    /// The `workdir` is not a directory of the workspace.
    #[error("workdir `{workdir}` is not a directory of the workspace: {reason}")]
    Missing {
        /// The `workdir` as written.
        workdir: String,
        /// Why.
        reason: String,
    },
    /// The workspace itself cannot be resolved.
    #[error("workspace {} cannot be used: {reason}", path.display())]
    Workspace {
        /// The workspace.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where a step runs: the canonical workspace and the canonical working directory inside it.
///
/// # Errors
/// When `workdir` is absolute, contains `..`, resolves outside the workspace through a symlink,
/// or is not an existing directory.
pub fn resolve_workdir(workspace: &Path, workdir: Option<&str>) -> Result<(PathBuf, PathBuf), WorkdirError> {
    let root = workspace.canonicalize().map_err(|e| WorkdirError::Workspace {
        path: workspace.to_owned(),
        reason: e.to_string(),
    })?;
    let Some(workdir) = workdir.filter(|w| !w.is_empty()) else {
        return Ok((root.clone(), root));
    };
    let relative = check_workdir(workdir)?;
    let resolved = root.join(relative).canonicalize().map_err(|e| WorkdirError::Missing {
        workdir: workdir.to_owned(),
        reason: e.to_string(),
    })?;
    if !resolved.starts_with(&root) {
        return Err(WorkdirError::SymlinkEscape {
            workdir: workdir.to_owned(),
            resolved,
        });
    }
    if !resolved.is_dir() {
        return Err(WorkdirError::Missing {
            workdir: workdir.to_owned(),
            reason: "not a directory".to_owned(),
        });
    }
    Ok((root, resolved))
}

/// The lexical part of the workdir check: relative, and no `..`.
fn check_workdir(workdir: &str) -> Result<&Path, WorkdirError> {
    let path = Path::new(workdir);
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => {
                return Err(WorkdirError::Absolute {
                    workdir: workdir.to_owned(),
                });
            }
            Component::ParentDir => {
                return Err(WorkdirError::ParentDir {
                    workdir: workdir.to_owned(),
                });
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_must_stay_in_the_workspace() {
        assert!(matches!(check_workdir("/etc"), Err(WorkdirError::Absolute { .. })));
        assert!(matches!(
            check_workdir("a/../../b"),
            Err(WorkdirError::ParentDir { .. })
        ));
        assert!(matches!(check_workdir(".."), Err(WorkdirError::ParentDir { .. })));
        assert!(check_workdir("./src/app").is_ok());

        let workspace = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(workspace.path().join("src/app")).unwrap();
        std::fs::write(workspace.path().join("file"), "").unwrap();
        std::os::unix::fs::symlink(outside.path(), workspace.path().join("out")).unwrap();
        std::os::unix::fs::symlink("src", workspace.path().join("in")).unwrap();
        let root = workspace.path().canonicalize().unwrap();

        assert_eq!(
            resolve_workdir(workspace.path(), None).unwrap(),
            (root.clone(), root.clone())
        );
        assert_eq!(
            resolve_workdir(workspace.path(), Some("src/app")).unwrap().1,
            root.join("src/app")
        );
        assert_eq!(
            resolve_workdir(workspace.path(), Some("in/app")).unwrap().1,
            root.join("src/app")
        );
        let escape = resolve_workdir(workspace.path(), Some("out")).unwrap_err();
        assert!(matches!(escape, WorkdirError::SymlinkEscape { .. }));
        assert!(escape.to_string().contains("escapes the workspace"), "{escape}");
        assert!(matches!(
            resolve_workdir(workspace.path(), Some("nope")),
            Err(WorkdirError::Missing { .. })
        ));
        assert!(matches!(
            resolve_workdir(workspace.path(), Some("file")),
            Err(WorkdirError::Missing { .. })
        ));
    }
}
