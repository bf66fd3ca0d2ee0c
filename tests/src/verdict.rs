//! The tester's verdict for suites that drive the promoter without running a tester: one
//! `testsuiterun.finished` for a commit of an app, naming an image pinned by a digest derived
//! from the case, as the tester would publish it.

use std::path::Path;

use async_nats::jetstream;
use baton_kit::{Outgoing, events};
use baton_schemas::payloads::{ImageInfo, Outcome, TestCounts, TestData};
use baton_schemas::{CdEvent, EventType};
use serde_json::json;
use sha2::{Digest, Sha256};

/// One verdict to publish.
#[derive(Debug, Clone)]
pub struct Verdict<'a> {
    /// The app (`acme/shop`).
    pub app: &'a str,
    /// The commit that was tested.
    pub commit: &'a str,
    /// The app repo's URL: where the promoter reads the manifests it renders.
    pub repository: String,
    /// `host:port` of the registry the image is said to be in.
    pub registry: &'a str,
    /// The image's repository there.
    pub image_repository: &'a str,
    /// Names the run (`test-<case>`) and the event (`finished-<case>`).
    pub case: &'a str,
    /// What the image's digest is the SHA-256 of: distinct inputs, distinct images.
    pub digest_seed: &'a str,
    /// The release (`chainId`).
    pub release: &'a str,
    /// The test run's outcome.
    pub outcome: Outcome,
    /// The commit declared no tests (an untested release).
    pub untested: bool,
    /// Who pushed the commit, as the listener recorded it.
    pub pushed_by: Option<baton_schemas::payloads::Person>,
}

impl<'a> Verdict<'a> {
    /// The tester's success for `commit` of `acme/shop` (the repository at `repo`) in `case`,
    /// naming an image of `127.0.0.1:5000/baton/acme_shop` (the image the suites' shop
    /// manifests run) at a digest derived from the case. Change fields as a test needs.
    pub fn shop(commit: &'a str, repo: &Path, case: &'a str, release: &'a str) -> Self {
        Self {
            app: "acme/shop",
            commit,
            repository: format!("file://{}", repo.display()),
            registry: "127.0.0.1:5000",
            image_repository: "baton/acme_shop",
            case,
            digest_seed: case,
            release,
            outcome: Outcome::Success,
            untested: false,
            pushed_by: None,
        }
    }

    /// The image the verdict names, with its purl as the builder writes it.
    pub fn image(&self) -> ImageInfo {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(self.digest_seed.as_bytes())));
        let (registry, repository) = (self.registry, self.image_repository);
        let name = repository.rsplit('/').next().unwrap_or(repository);
        ImageInfo {
            registry: registry.into(),
            repository: repository.into(),
            tag: self.commit.into(),
            reference: format!("{registry}/{repository}@{digest}"),
            purl: format!(
                "pkg:oci/{name}@{}?repository_url={registry}/{repository}",
                digest.replace(':', "%3A")
            ),
            digest,
            uploaded_bytes: 0,
        }
    }

    /// The `testsuiterun.finished` event.
    ///
    /// # Errors
    /// When the event cannot be built (a bug in the suite's values).
    pub fn event(&self) -> anyhow::Result<Outgoing> {
        let data = TestData {
            app: self.app.into(),
            commit: self.commit.into(),
            repository: self.repository.clone(),
            image: Some(self.image()),
            run: format!("test-{}", self.case),
            outcome: Some(self.outcome),
            reason: None,
            no_tests_declared: self.untested,
            counts: TestCounts::default(),
            failed_cases: vec![],
            steps: vec![],
            pushed_by: self.pushed_by.clone(),
        };
        let event = CdEvent::new(
            EventType::TestSuiteRunFinished,
            format!("finished-{}", self.case),
            "/baton/tester",
            format!("{}@{}", self.app, self.commit),
            json!({"environment": {"id": "baton-tester"}, "testSuite": {"id": "unit"}, "outcome": self.outcome}),
        )?
        .with_chain_id(self.release)
        .with_custom_data(data)?;
        Ok(Outgoing::new(self.app, event))
    }

    /// Publishes the event and waits for JetStream's ack.
    ///
    /// # Errors
    /// When the event cannot be built or is not acknowledged.
    pub async fn publish(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        events::publish(js, &self.event()?).await?;
        Ok(())
    }
}
