//! The tester against a real nats-server, a real git repository and CNCF Distribution: steps
//! that pass, fail, fail through their JUnit report, hang, or write a broken report each give the
//! right outcome and counts on the stream, and each verdict is attested on the image in the
//! registry, signed with the tester's key.

use std::time::Duration;

use anyhow::{Context as _, Result};
use baton_kit::evidence::{EvidenceStore, PublicKey, Subject, TEST_RESULT_V0_1, open_envelope};
use baton_kit::{Outgoing, events};
use baton_schemas::payloads::{BuildData, ImageInfo, Outcome, TestData};
use baton_schemas::{CdEvent, EventType};
use baton_tests::keys::SigningKeyFile;
use baton_tests::registry::RegistryServer;
use baton_tests::{NatsServer, app, git};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

struct TestTester {
    /// The tester's operations endpoint.
    addr: std::net::SocketAddr,
    _nats: NatsServer,
    /// Where the (pretend) images are, and their attestations go.
    registry: RegistryServer,
    /// The key verdicts are attested with, unless the config says otherwise.
    key: SigningKeyFile,
    js: async_nats::jetstream::Context,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), baton_tester::StartError>>,
    repo: tempfile::TempDir,
}

impl TestTester {
    async fn start() -> Result<Self> {
        Self::start_with(Default::default(), &|_| None).await
    }

    /// A tester with `config`, reading its secrets through `env`; its `registry` is the test's
    /// and, unless `config` names a key or turns signing off, it signs with [`TestTester::key`].
    async fn start_with(
        mut config: baton_schemas::config::tester::TesterSettings,
        env: baton_kit::service::Env<'_>,
    ) -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        let nats = NatsServer::start()?;
        let registry = RegistryServer::start()?;
        let key = SigningKeyFile::generate()?;
        config.registry.address = registry.address();
        config.registry.insecure = true;
        if config.signing.key_file.is_none() {
            config.signing.key_file = Some(key.path().to_owned());
        }
        let stop = CancellationToken::new();
        let tester = app::spawn::<baton_tester::Application>(app::common(&nats.url()), config, env, &stop).await?;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        let repo = tempfile::tempdir()?;
        git(repo.path(), &["init", "-q", "-b", "main"])?;
        Ok(Self {
            addr: tester.addr,
            _nats: nats,
            registry,
            key,
            js,
            stop,
            task: tester.task,
            repo,
        })
    }

    /// Commits a `.baton.yaml` (and more files) and publishes its `artifact.published`;
    /// returns the release id and the commit.
    async fn publish(&self, case: &str, files: &[(&str, &str)]) -> Result<(String, String)> {
        for (path, content) in files {
            std::fs::write(self.repo.path().join(path), content)?;
        }
        git(self.repo.path(), &["add", "-A"])?;
        git(self.repo.path(), &["commit", "-qm", case, "--allow-empty"])?;
        let sha = git(self.repo.path(), &["rev-parse", "HEAD"])?;
        // Each case its own digest, so each has its own attestations.
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(case.as_bytes())));
        let registry = self.registry.address();
        let image = ImageInfo {
            registry: registry.clone(),
            repository: "baton/acme/shop".into(),
            tag: sha.clone(),
            digest: digest.clone(),
            reference: format!("{registry}/baton/acme/shop@{digest}"),
            purl: format!("pkg:oci/shop@{digest}?repository_url={registry}/baton/acme/shop&tag={sha}"),
            uploaded_bytes: 0,
        };
        let data = BuildData {
            app: "acme/shop".into(),
            commit: sha.clone(),
            git_ref: Some("refs/heads/main".into()),
            repository: format!("file://{}", self.repo.path().display()),
            run: format!("build-{case}"),
            outcome: Some(Outcome::Success),
            reason: None,
            steps: vec![],
            image: Some(image.clone()),
            pushed_by: None,
        };
        let release = format!("release-{case}");
        let event = CdEvent::new(
            EventType::ArtifactPublished,
            format!("published-{case}"),
            "/baton/builder",
            image.purl,
            serde_json::json!({}),
        )?
        .with_chain_id(&release)
        .with_custom_data(data)?;
        events::publish(&self.js, &Outgoing::new("acme/shop", event)).await?;
        Ok((release, sha))
    }

    async fn finished(&self, release: &str) -> Result<(CdEvent, TestData)> {
        let event = baton_tests::events::wait_for_release(
            &self.js,
            EventType::TestSuiteRunFinished,
            release,
            Duration::from_secs(60),
        )
        .await?;
        let test = event.custom_data_as()?;
        Ok((event, test))
    }

    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await???;
        Ok(())
    }
}

const FAILING_REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="cart" tests="3" failures="1">
    <testcase classname="cart.Totals" name="adds_items" time="0.01"/>
    <testcase classname="cart.Totals" name="applies_discount" time="0.02">
      <failure message="expected 90, got 100" type="AssertionError">assert total == 90</failure>
    </testcase>
    <testcase classname="cart.Totals" name="rounds" time="0.01"><skipped/></testcase>
  </testsuite>
</testsuites>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_run_gives_the_right_outcome_and_counts() -> Result<()> {
    let t = TestTester::start().await?;

    // Passing steps see the image, the commit and the release.
    let (pass, sha) = t
        .publish(
            "pass",
            &[(".baton.yaml", "test:\n  steps:\n    - name: env\n      run: test -n \"$BATON_IMAGE\" && test \"$BATON_RELEASE\" = release-pass && echo \"$BATON_COMMIT\" > seen\n    - name: check\n      run: test \"$(cat seen)\" = \"$BATON_COMMIT\"\n")],
        )
        .await?;
    let (event, data) = t.finished(&pass).await?;
    assert_eq!(data.outcome, Some(Outcome::Success), "{data:?}");
    assert_eq!(event.subject.content["outcome"], "success");
    assert_eq!(event.subject.content["environment"]["id"], "baton-tester");
    assert_eq!(data.commit, sha);
    assert_eq!(data.steps.len(), 2);
    assert_eq!(
        event
            .context
            .links
            .as_ref()
            .and_then(|l| l[0].from.as_ref())
            .map(|f| f.context_id.as_str()),
        Some("published-pass"),
        "linked to the artifact.published that caused it"
    );

    // A step that exits non-zero.
    let (fail, _) = t
        .publish(
            "fail",
            &[(
                ".baton.yaml",
                "test:\n  steps:\n    - {name: unit, run: 'echo 1 failed; exit 1'}\n",
            )],
        )
        .await?;
    let (event, data) = t.finished(&fail).await?;
    assert_eq!(data.outcome, Some(Outcome::Failure));
    assert_eq!(event.subject.content["outcome"], "failure");
    assert!(data.reason.unwrap_or_default().contains("test step `unit`"));

    // Exit 0, but the JUnit report has a failure.
    let (junit, _) = t
        .publish(
            "junit",
            &[
                (
                    ".baton.yaml",
                    "test:\n  steps:\n    - {name: unit, run: 'cp report.src junit.xml', junit: junit.xml}\n",
                ),
                ("report.src", FAILING_REPORT),
            ],
        )
        .await?;
    let (_, data) = t.finished(&junit).await?;
    assert_eq!(data.outcome, Some(Outcome::Failure), "{data:?}");
    assert_eq!(
        (
            data.counts.tests,
            data.counts.failures,
            data.counts.errors,
            data.counts.skipped
        ),
        (3, 1, 0, 1)
    );
    assert_eq!(data.failed_cases[0].name, "applies_discount");
    assert_eq!(data.failed_cases[0].class.as_deref(), Some("cart.Totals"));
    assert_eq!(data.failed_cases[0].message.as_deref(), Some("expected 90, got 100"));

    // A step that hangs is killed at its timeout.
    let (hang, _) = t
        .publish(
            "hang",
            &[(
                ".baton.yaml",
                "test:\n  steps:\n    - {name: hang, run: 'sleep 600', timeout: 1s}\n",
            )],
        )
        .await?;
    let (_, data) = t.finished(&hang).await?;
    assert_eq!(data.outcome, Some(Outcome::Failure));
    assert_eq!(data.steps[0].status, "timed_out");

    // A broken report, and a missing one: the run errors with the reason.
    let (broken, _) = t
        .publish("broken", &[(".baton.yaml", "test:\n  steps:\n    - {name: unit, run: 'echo \"<testsuite><testcase\" > junit.xml', junit: junit.xml}\n")])
        .await?;
    let (event, data) = t.finished(&broken).await?;
    assert_eq!(data.outcome, Some(Outcome::Error), "{data:?}");
    assert_eq!(event.subject.content["outcome"], "error");
    assert!(data.reason.unwrap_or_default().contains("JUnit report"));
    let (missing, _) = t
        .publish(
            "missing",
            &[(
                ".baton.yaml",
                "test:\n  steps:\n    - {name: unit, run: 'true', junit: nowhere.xml}\n",
            )],
        )
        .await?;
    let (_, data) = t.finished(&missing).await?;
    assert_eq!(data.outcome, Some(Outcome::Error), "{data:?}");

    // No test steps: passes, explicitly.
    let (none, _) = t.publish("none", &[(".baton.yaml", "build:\n  steps: []\n")]).await?;
    let (_, data) = t.finished(&none).await?;
    assert_eq!(data.outcome, Some(Outcome::Success));
    assert!(data.no_tests_declared);
    assert_eq!(data.reason.as_deref(), Some("no tests declared"));

    // Independent steps run together: each waits for the other's marker (sequentially, the
    // first would wait in vain and fail).
    let wait_for = |mine: &str, theirs: &str| {
        format!("touch {mine}; for i in $(seq 100); do [ -f {theirs} ] && exit 0; sleep 0.05; done; exit 1")
    };
    let parallel = format!(
        "test:\n  steps:\n    - {{name: a, run: '{}', independent: true}}\n    - {{name: b, run: '{}', independent: true}}\n",
        wait_for("a.ready", "b.ready"),
        wait_for("b.ready", "a.ready")
    );
    let (together, _) = t.publish("parallel", &[(".baton.yaml", &parallel)]).await?;
    let (_, data) = t.finished(&together).await?;
    assert_eq!(data.outcome, Some(Outcome::Success), "{data:?}");

    // A suite that runs past its own timeout.
    let (slow, _) = t
        .publish(
            "suite-timeout",
            &[(
                ".baton.yaml",
                "test:\n  timeout: 1s\n  steps:\n    - {name: slow, run: 'sleep 30', timeout: 60s}\n",
            )],
        )
        .await?;
    let (_, data) = t.finished(&slow).await?;
    assert_eq!(data.outcome, Some(Outcome::Failure));
    assert!(
        data.reason.unwrap_or_default().contains("exceeded its timeout"),
        "the suite's timeout bounds the run"
    );
    t.stop().await
}

/// A step can put anything at its report's path. A FIFO there (here through a symlink) used to
/// block the tester's reading thread forever, so no `testsuiterun.finished` ever came; now the
/// run errors at once, naming the path and what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_report_path_errors_the_run_instead_of_hanging_it() -> Result<()> {
    let t = TestTester::start().await?;
    // The step makes the FIFO in its workspace, where the report is declared.
    let pipeline = "test:\n  steps:\n    - {name: unit, run: 'mkfifo junit.xml', junit: junit.xml}\n";
    let (release, _) = t.publish("fifo", &[(".baton.yaml", pipeline)]).await?;
    // Reading the report would block for good (nobody writes the FIFO): a regression fails here.
    let Ok(finished) = tokio::time::timeout(Duration::from_secs(30), t.finished(&release)).await else {
        anyhow::bail!("no testsuiterun.finished: reading the report blocked on the FIFO");
    };
    let (_, data) = finished?;
    assert_eq!(data.outcome, Some(Outcome::Error), "{data:?}");
    let reason = data.reason.unwrap_or_default();
    assert!(
        reason.contains("junit.xml is a FIFO (named pipe), not a regular file"),
        "{reason}"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_steps_get_their_own_grants_and_one_asking_too_much_fails_the_run() -> Result<()> {
    const PACT_TOKEN: &str = "pact-t0ken-value";
    let config = yaml_serde::from_str(
        "limits:\n  processes: 512\nsteps:\n  secrets:\n    PACT_TOKEN:\n      value_env: PACT\n      repositories: [acme/*]\n",
    )?;
    let t = TestTester::start_with(config, &|name| (name == "PACT").then(|| PACT_TOKEN.to_owned())).await?;

    // Independent steps run together, each with its own grant.
    let (release, _) = t
        .publish(
            "granted",
            &[(
                ".baton.yaml",
                &format!(
                    "test:\n  steps:\n    - {{name: first, run: 'test -z \"${{PACT_TOKEN:-}}\"'}}\n    - {{name: without, run: 'test -z \"${{PACT_TOKEN:-}}\" && echo none', independent: true}}\n    - name: contract\n      run: 'test \"$PACT_TOKEN\" = {PACT_TOKEN} && echo \"pact: $PACT_TOKEN\"'\n      secrets: [PACT_TOKEN]\n      independent: true\n"
                ),
            )],
        )
        .await?;
    let (_, test) = t.finished(&release).await?;
    assert_eq!(test.outcome, Some(Outcome::Success), "{test:?}");
    let tails: Vec<_> = test.steps.iter().map(|s| (s.name.as_str(), s.tail.clone())).collect();
    assert_eq!(
        tails,
        [
            ("first", vec![]),
            ("without", vec!["none".to_owned()]),
            ("contract", vec!["pact: ***".to_owned()])
        ]
    );

    let (release, _) = t
        .publish(
            "too-much",
            &[(
                ".baton.yaml",
                "test:\n  steps:\n    - {name: unit, run: 'true'}\n    - name: load\n      run: 'true'\n      limits: {processes: 100000}\n",
            )],
        )
        .await?;
    let (event, test) = t.finished(&release).await?;
    assert_eq!(test.outcome, Some(Outcome::Failure), "{test:?}");
    assert_eq!(
        test.reason.as_deref(),
        Some(".baton.yaml: test.steps[1] (load): limits.processes 100000 is above this tester's maximum 512")
    );
    assert!(test.steps.is_empty(), "no step runs: {:?}", test.steps);
    assert_eq!(event.subject.content["outcome"], "failure");
    t.stop().await
}

/// The test-result attestations on `image`, opened with `key`: (result, passed, failed, counts).
async fn attested(
    registry: &RegistryServer,
    key: &SigningKeyFile,
    image: &ImageInfo,
) -> Result<Vec<(String, Vec<String>, Vec<String>, serde_json::Value)>> {
    let store = EvidenceStore::new(&registry.address(), true, None, None);
    let evidence = store.fetch(&image.repository, &image.digest).await?;
    let subject = Subject {
        name: format!("{}/{}", image.registry, image.repository),
        digest: image.digest.clone(),
    };
    let public = PublicKey::from_pem(key.public_pem())?;
    let names = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    evidence
        .attestations
        .iter()
        .map(|envelope| {
            let (statement, key_id) =
                open_envelope(envelope, &subject, std::slice::from_ref(&public), TEST_RESULT_V0_1)
                    .map_err(|r| anyhow::anyhow!("refused by `{}`: {}", r.check, r.reason))?;
            assert_eq!(key_id, public.key_id());
            let p = &statement.predicate;
            Ok((
                p["result"].as_str().unwrap_or_default().to_owned(),
                names(&p["passedTests"]),
                names(&p["failedTests"]),
                p["baton"]["counts"].clone(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verdict_is_attested_on_the_image_naming_the_failing_case() -> Result<()> {
    let t = TestTester::start().await?;
    let (failing, _) = t
        .publish(
            "attested-failing",
            &[
                (
                    ".baton.yaml",
                    "test:\n  steps:\n    - {name: unit, run: 'cp report.src junit.xml', junit: junit.xml}\n",
                ),
                ("report.src", FAILING_REPORT),
            ],
        )
        .await?;
    let (_, data) = t.finished(&failing).await?;
    assert_eq!(data.outcome, Some(Outcome::Failure), "{data:?}");
    let image = data.image.clone().context("the tested image")?;
    let [(result, passed, failed, counts)] = &attested(&t.registry, &t.key, &image).await?[..] else {
        anyhow::bail!("one test-result attestation expected on {}", image.digest)
    };
    assert_eq!(result, "FAILED");
    assert_eq!(failed, &["cart.Totals.applies_discount"]);
    assert_eq!(passed, &["cart.Totals.adds_items"]);
    assert_eq!(counts["tests"], 3, "{counts}");
    assert_eq!(counts["failed"], 1, "{counts}");
    assert_eq!(counts["skipped"], 1, "{counts}");
    assert_eq!(counts["passed"], 1, "{counts}");

    // A passing run is attested PASSED; another key opens neither.
    let (passing, _) = t
        .publish(
            "attested-passing",
            &[(".baton.yaml", "test:\n  steps:\n    - {name: ok, run: 'true'}\n")],
        )
        .await?;
    let (_, data) = t.finished(&passing).await?;
    assert_eq!(data.outcome, Some(Outcome::Success), "{data:?}");
    let image = data.image.clone().context("the tested image")?;
    let results: Vec<String> = attested(&t.registry, &t.key, &image)
        .await?
        .into_iter()
        .map(|(result, ..)| result)
        .collect();
    assert_eq!(results, ["PASSED"]);
    let stranger = SigningKeyFile::generate()?;
    assert!(
        attested(&t.registry, &stranger, &image).await.is_err(),
        "another key opens it"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tester_with_signing_off_says_so_and_attests_nothing() -> Result<()> {
    let t = TestTester::start_with(yaml_serde::from_str("signing:\n  enabled: false\n")?, &|_| None).await?;
    let readyz = reqwest::get(format!("http://{}/readyz", t.addr)).await?.text().await?;
    assert_eq!(
        readyz,
        format!("ready\nwarning: {}\n", baton_tester::config::UNATTESTED_WARNING)
    );
    let (release, _) = t
        .publish(
            "unattested",
            &[(".baton.yaml", "test:\n  steps:\n    - {name: ok, run: 'true'}\n")],
        )
        .await?;
    let (_, data) = t.finished(&release).await?;
    assert_eq!(data.outcome, Some(Outcome::Success), "{data:?}");
    assert!(
        attested(&t.registry, &t.key, &data.image.context("the tested image")?)
            .await?
            .is_empty()
    );
    t.stop().await
}

/// A registry that refuses the attestation (Distribution's read-only mode: every push refused
/// with 405) makes the run retry instead of finishing without its evidence; once the registry
/// takes pushes again, a retry attests the verdict and announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_refusing_the_attestation_makes_the_run_retry() -> Result<()> {
    let mut t = TestTester::start().await?;
    t.registry.restart_read_only(true)?;
    let (release, _) = t
        .publish(
            "refused",
            &[(".baton.yaml", "test:\n  steps:\n    - {name: ok, run: 'true'}\n")],
        )
        .await?;
    let retried = baton_tests::metric_line(t.addr, "evidence_registry", Duration::from_secs(30)).await?;
    assert!(retried.contains("transient"), "{retried}");
    let finished = baton_tests::events::of(&t.js, EventType::TestSuiteRunFinished).await?;
    assert!(
        !finished
            .iter()
            .any(|e| e.context.chain_id.as_deref() == Some(release.as_str())),
        "a refused attestation does not announce the verdict"
    );

    t.registry.restart_read_only(false)?;
    let (_, data) = t.finished(&release).await?;
    assert_eq!(data.outcome, Some(Outcome::Success), "{data:?}");
    let results: Vec<String> = attested(&t.registry, &t.key, &data.image.context("the tested image")?)
        .await?
        .into_iter()
        .map(|(result, ..)| result)
        .collect();
    assert_eq!(results, ["PASSED"]);
    t.stop().await
}
