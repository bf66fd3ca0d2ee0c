//! The listener's `change.merged` for suites and benches that drive the builder without running a
//! listener: one commit pushed to `main` of an app, as the listener records a generic webhook's
//! delivery.

use async_nats::jetstream;
use baton_kit::{Outgoing, events};
use baton_schemas::payloads::{CommitInfo, Person, PushData, RepositoryInfo};
use baton_schemas::{CdEvent, EventType};
use serde_json::json;

/// One push to publish.
#[derive(Debug, Clone)]
pub struct Push<'a> {
    /// The app (`acme/shop`).
    pub app: &'a str,
    /// Where the builder fetches the commit from.
    pub clone_url: &'a str,
    /// The pushed commit.
    pub commit: &'a str,
    /// The webhook delivery: names the event and the release (`release-<delivery>`).
    pub delivery: &'a str,
}

impl Push<'_> {
    /// The release (`chainId`) the push starts.
    pub fn release(&self) -> String {
        format!("release-{}", self.delivery)
    }

    /// The `change.merged` event, pushed by Ada.
    ///
    /// # Errors
    /// When the event cannot be built (a bug in the values).
    pub fn event(&self) -> anyhow::Result<Outgoing> {
        let ada = Person {
            name: Some("Ada".into()),
            ..Person::default()
        };
        let commit = CommitInfo {
            id: self.commit.into(),
            message: "change".into(),
            timestamp: None,
            author: ada.clone(),
            committer: None,
            url: None,
        };
        let data = PushData {
            app: self.app.into(),
            provider: "generic".into(),
            delivery_id: self.delivery.into(),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            tag: None,
            before: "0".repeat(40),
            after: self.commit.into(),
            repository: RepositoryInfo {
                name: self.app.rsplit('/').next().unwrap_or(self.app).into(),
                full_name: self.app.into(),
                clone_url: self.clone_url.into(),
                html_url: None,
            },
            head_commit: commit.clone(),
            commits: vec![commit],
            pusher: Some(ada),
        };
        let event = CdEvent::new(
            EventType::ChangeMerged,
            format!("generic:{}:refs/heads/main", self.delivery),
            "/baton/listener",
            self.commit,
            json!({"repository": {"id": self.app, "source": self.clone_url}}),
        )?
        .with_chain_id(self.release())
        .with_custom_data(data)?;
        Ok(Outgoing::new(self.app, event))
    }

    /// Publishes the event, waits for JetStream's ack and returns the release.
    ///
    /// # Errors
    /// When the event cannot be built or is not acknowledged.
    pub async fn publish(&self, js: &jetstream::Context) -> anyhow::Result<String> {
        events::publish(js, &self.event()?).await?;
        Ok(self.release())
    }
}

/// Commits greeting `n` to the app checked out in `dir/shop` (`src/greeting.txt`), pushes it to
/// `main` of its remote `dir/shop.git`, and returns the generic webhook body a git host sends for
/// that push (repository `app`, the commit authored by Ada) and the new head. The caller signs and
/// sends it as its listener expects.
///
/// # Errors
/// When the file cannot be written or git fails.
pub fn greeting_pushed(dir: &std::path::Path, app: &str, n: u32) -> Result<(String, String), crate::HarnessError> {
    let shop = dir.join("shop");
    let greeting = shop.join("src/greeting.txt");
    std::fs::write(&greeting, format!("hello {n}\n")).map_err(|source| crate::HarnessError::Io {
        path: greeting.clone(),
        source,
    })?;
    let message = format!("greeting {n}");
    crate::git(&shop, &["commit", "-qam", &message])?;
    let before = crate::git(&shop, &["rev-parse", "origin/main"])?;
    crate::git(&shop, &["push", "-q", "origin", "main"])?;
    let after = crate::git(&shop, &["rev-parse", "HEAD"])?;
    let author = serde_json::json!({"name": "Ada", "email": "ada@example.com"});
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "repository": {"full_name": app, "clone_url": format!("file://{}", dir.join("shop.git").display())},
        "head_commit": {"id": after, "message": message, "author": author},
        "commits": [{"id": after, "message": message, "author": author}],
        "pusher": {"name": "ada"},
    })
    .to_string();
    Ok((body, after))
}
