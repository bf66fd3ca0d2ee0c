//! The git repositories suites start from, made with the real `git` CLI ([`git`]): an app's
//! repository with its files committed, and the bare config repo the promoter owns, seeded with
//! its environments through a clone a suite can go on editing.

use std::path::{Path, PathBuf};

use crate::{HarnessError, create_dir, git, write_file};

/// A config repo's `environments.yaml` with one environment, `staging` (namespace
/// `shop-staging`), that takes every tested release automatically.
pub const STAGING_AUTO: &str = "environments:\n  - name: staging\n    namespace: shop-staging\n    policy: auto\n";

/// A config repo's `environments.yaml` with two environments: `staging` (namespace
/// `shop-staging`) takes every tested release automatically; `production` (`shop-production`)
/// is manual and needs two approvals out of alice, bob and erin, requested once staging runs a
/// release healthy and expiring an hour later. Erin's email is the one [`git`] commits with, so
/// she authors every app commit a suite makes and may not approve its releases.
pub const TWO_STAGES: &str = "\
environments:
  - name: staging
    namespace: shop-staging
    policy: auto
  - name: production
    namespace: shop-production
    policy: manual
    approvals:
      required: 2
      users: [alice, bob, erin]
      expires_after: 1h
people:
  erin:
    emails: [ada@example.com]
";

/// An app's `deploy/deployment.yaml`: Deployment `shop`, one replica of `image` (written with a
/// tag, as an app names its own image; the promoter pins it to the tested digest).
pub fn shop_deployment(image: &str) -> String {
    format!(
        "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector:
    matchLabels: {{app: shop}}
  template:
    metadata:
      labels: {{app: shop}}
    spec:
      containers:
        - name: shop
          image: {image}
"
    )
}

/// Creates a repository at `dir` (and the directory) on branch `main` with `files` (path in the
/// repository, content) committed as `first`; returns the commit.
///
/// # Errors
/// When a file cannot be written or git fails.
pub fn app_repo(dir: &Path, files: &[(&str, &str)]) -> Result<String, HarnessError> {
    create_dir(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    for (path, content) in files {
        write(&dir.join(path), content)?;
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-qm", "first"])?;
    git(dir, &["rev-parse", "HEAD"])
}

/// Creates the bare config repo `<root>/config.git` whose `main` holds `environments.yaml` with
/// `environments`, pushed from a clone at `<root>/<clone>`; returns the clone's path, for edits
/// a suite pushes later.
///
/// # Errors
/// When the file cannot be written or git fails.
pub fn config_repo(root: &Path, clone: &str, environments: &str) -> Result<PathBuf, HarnessError> {
    git(root, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
    git(root, &["clone", "-q", "config.git", clone])?;
    let work = root.join(clone);
    write(&work.join("environments.yaml"), environments)?;
    git(&work, &["add", "."])?;
    git(&work, &["commit", "-qm", "environments"])?;
    git(&work, &["push", "-q", "origin", "main"])?;
    Ok(work)
}

/// Writes `content` to `path`, creating its directory.
fn write(path: &Path, content: &str) -> Result<(), HarnessError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    write_file(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_repo_serves_its_environments_and_the_app_its_files() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let clone = config_repo(root.path(), "edit", "environments: []\n")?;
        assert_eq!(clone, root.path().join("edit"));
        let bare = root.path().join("config.git");
        assert_eq!(git(&bare, &["show", "main:environments.yaml"])?, "environments: []");

        let app = root.path().join("app");
        let commit = app_repo(
            &app,
            &[(".baton.yaml", "manifests: deploy\n"), ("deploy/a.yaml", "a: 1\n")],
        )?;
        assert_eq!(git(&app, &["rev-parse", "main"])?, commit);
        assert_eq!(git(&app, &["show", "HEAD:deploy/a.yaml"])?, "a: 1");
        Ok(())
    }
}
