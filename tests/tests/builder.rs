//! The builder against real servers: a real git repository, nats-server and CNCF Distribution.
//! Every way a build can go wrong ends in a clear `build.finished` (or a retry when the
//! machinery is at fault), and the builder keeps serving other builds. Every image it pushes is
//! signed and its provenance attested in the registry, read back and verified here through
//! `baton_kit::evidence`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::evidence::{
    EvidenceStore, PublicKey, SLSA_PROVENANCE_V1, Subject, open_envelope, verify_image_signature,
};
use baton_schemas::EventType;
use baton_schemas::payloads::{BuildData, Outcome, SignedData};
use baton_tests::keys::SigningKeyFile;
use baton_tests::push::Push;
use baton_tests::registry::RegistryServer;
use baton_tests::{NatsServer, app, git};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

/// An application repository whose commits the tests build.
struct AppRepo {
    dir: PathBuf,
}

impl AppRepo {
    fn new(root: &Path) -> Result<Self> {
        let dir = root.join("app");
        std::fs::create_dir(&dir)?;
        git(&dir, &["init", "-q", "-b", "main"])?;
        Ok(Self { dir })
    }

    /// Commits `files` (path, content) and returns the sha.
    fn commit(&self, files: &[(&str, &str)]) -> Result<String> {
        for (path, content) in files {
            let p = self.dir.join(path);
            std::fs::create_dir_all(p.parent().context("a parent")?)?;
            std::fs::write(p, content)?;
        }
        git(&self.dir, &["add", "-A"])?;
        git(&self.dir, &["commit", "-qm", "change", "--allow-empty"])?;
        Ok(git(&self.dir, &["rev-parse", "HEAD"])?)
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

struct TestBuilder {
    /// The builder's operations endpoint.
    addr: std::net::SocketAddr,
    nats: NatsServer,
    registry: RegistryServer,
    js: async_nats::jetstream::Context,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), baton_builder::StartError>>>,
    /// The key images are signed with, unless the config turns signing off.
    key: SigningKeyFile,
}

impl TestBuilder {
    async fn start() -> Result<Self> {
        Self::start_with("", &|_| None).await
    }

    /// A builder whose config adds `config` (YAML sections beside `registry`; a `signing`
    /// section there replaces the one naming [`TestBuilder::key`]), reading its secrets
    /// through `env`.
    async fn start_with(config: &str, env: baton_kit::service::Env<'_>) -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        let nats = NatsServer::start()?;
        let registry = RegistryServer::start()?;
        let mut common = app::common(&nats.url());
        common.runner.max_deliver = 3;
        common.runner.backoff_initial = Duration::from_millis(100);
        common.runner.ack_wait = Duration::from_secs(5);
        let key = SigningKeyFile::generate()?;
        let stop = CancellationToken::new();
        let running =
            app::spawn::<baton_builder::Application>(common, builder_config(&registry, &key, config)?, env, &stop)
                .await?;
        let task = Some(running.task);
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        Ok(Self {
            addr: running.addr,
            nats,
            registry,
            js,
            stop,
            task,
            key,
        })
    }

    /// Stops the running builder and starts another on the same servers, with `config` and the
    /// runner's settings changed by `runner`.
    async fn restart_with(
        &mut self,
        config: &str,
        runner: impl FnOnce(&mut baton_schemas::config::RunnerSettings),
    ) -> Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        let mut common = app::common(&self.nats.url());
        common.runner.max_deliver = 3;
        common.runner.backoff_initial = Duration::from_millis(100);
        common.runner.ack_wait = Duration::from_secs(5);
        runner(&mut common.runner);
        self.stop = CancellationToken::new();
        let running = app::spawn::<baton_builder::Application>(
            common,
            builder_config(&self.registry, &self.key, config)?,
            &|_| None,
            &self.stop,
        )
        .await?;
        self.addr = running.addr;
        self.task = Some(running.task);
        Ok(())
    }

    /// Publishes the `change.merged` of a push of `sha` from `url`; returns its release id.
    async fn push(&self, url: &str, sha: &str, delivery: &str) -> Result<String> {
        Push {
            app: "acme/shop",
            clone_url: url,
            commit: sha,
            delivery,
        }
        .publish(&self.js)
        .await
    }

    /// The `build.finished` of `release`.
    async fn finished(&self, release: &str) -> Result<BuildData> {
        let event =
            baton_tests::events::wait_for_release(&self.js, EventType::BuildFinished, release, Duration::from_secs(60))
                .await?;
        Ok(event.custom_data_as()?)
    }

    async fn published_for(&self, release: &str) -> Result<usize> {
        Ok(baton_tests::events::of(&self.js, EventType::ArtifactPublished)
            .await?
            .iter()
            .filter(|e| e.context.chain_id.as_deref() == Some(release))
            .count())
    }

    async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        Ok(())
    }
}

/// The builder's config: `registry` (the test's), `key` as `signing` unless `config` has its
/// own `signing` section, and `config`.
fn builder_config(
    registry: &RegistryServer,
    key: &SigningKeyFile,
    config: &str,
) -> Result<baton_schemas::config::builder::BuilderSettings> {
    let signing = if config.contains("signing:") {
        String::new()
    } else {
        key.signing_section()
    };
    Ok(yaml_serde::from_str(&format!(
        "registry:\n  address: {}\n  insecure: true\n{signing}{config}",
        registry.address()
    ))?)
}

const GOOD: &str = "build:\n  steps:\n    - name: compile\n      run: mkdir -p out && cp src/* out/\nimage:\n  base: scratch\n  add:\n    - {from: out/static.txt, to: /srv/static.txt}\n    - {from: out/app, to: /srv/app, mode: '0755'}\n  entrypoint: [/srv/app]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_commit_gives_the_same_digest_and_a_change_uploads_only_its_layer() -> Result<()> {
    // Signing off: the blobs counted here are the image's. Each build's evidence is new by design
    // (its provenance records its own run and times), and is checked by the signing tests.
    let b = TestBuilder::start_with("signing:\n  enabled: false\n", &|_| None).await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let first = repo.commit(&[
        (".baton.yaml", GOOD),
        ("src/app", "v1"),
        ("src/static.txt", &"x".repeat(100_000)),
    ])?;

    let one = b.finished(&b.push(&repo.url(), &first, "a").await?).await?;
    let image_one = one.image.clone().with_context(|| format!("{one:?}"))?;
    assert!(image_one.uploaded_bytes > 0);
    let blobs_after_first = b.registry.blob_count();

    // The same commit again (another delivery): same digest, nothing uploaded.
    let again = b.finished(&b.push(&repo.url(), &first, "b").await?).await?;
    let image_again = again.image.context("image")?;
    assert_eq!(image_again.digest, image_one.digest, "reproducible");
    assert_eq!(image_again.uploaded_bytes, 0, "the registry had every blob");
    assert_eq!(b.registry.blob_count(), blobs_after_first);

    // One file changes: the one new layer, its config and its manifest are new; nothing else.
    let second = repo.commit(&[("src/app", "v2")])?;
    let two = b.finished(&b.push(&repo.url(), &second, "c").await?).await?;
    let image_two = two.image.context("image")?;
    assert_ne!(image_two.digest, image_one.digest);
    assert!(image_two.uploaded_bytes > 0 && image_two.uploaded_bytes < image_one.uploaded_bytes + 4096);
    assert_eq!(
        b.registry.blob_count(),
        blobs_after_first + 3,
        "layer + config + manifest"
    );
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busybox_base_is_reused_by_digest() -> Result<()> {
    let b = TestBuilder::start().await?;
    let base = b.registry.push_busybox_base("base/busybox", "1")?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let pipeline = format!(
        "build:\n  steps:\n    - {{name: make, run: 'echo hi > hello'}}\nimage:\n  base: {}/base/busybox:1\n  add:\n    - {{from: hello, to: /hello}}\n  cmd: [/bin/sh]\n",
        b.registry.address()
    );
    let sha = repo.commit(&[(".baton.yaml", &pipeline)])?;
    let build = b.finished(&b.push(&repo.url(), &sha, "a").await?).await?;
    let image = build.image.clone().with_context(|| format!("{build:?}"))?;
    let manifest = b.registry.skopeo_inspect(&image.reference, true)?;
    let base_manifest = b
        .registry
        .skopeo_inspect(&format!("{}/base/busybox@{base}", b.registry.address()), true)?;
    let layers = manifest["layers"].as_array().context("layers")?;
    assert_eq!(layers.len(), 2);
    assert_eq!(
        layers[0]["digest"], base_manifest["layers"][0]["digest"],
        "the base layer is referenced by digest"
    );
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_build_fails_with_a_clear_reason_and_the_builder_keeps_going() -> Result<()> {
    let b = TestBuilder::start().await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    // (case, files of its commit, what its failure reason must mention)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "missing pipeline",
            vec![("README", "no pipeline".into())],
            ".baton.yaml is missing",
        ),
        (
            "invalid pipeline",
            vec![(
                ".baton.yaml",
                "build:\n  steps:\n    - name: a\n      rn: make\n".into(),
            )],
            "line 4",
        ),
        (
            "failing step",
            vec![(
                ".baton.yaml",
                "build:\n  steps:\n    - {name: compile, run: 'echo broken >&2; exit 3'}\n".into(),
            )],
            "build step `compile`",
        ),
        (
            "hanging step",
            vec![(
                ".baton.yaml",
                "build:\n  steps:\n    - {name: hang, run: 'sleep 600', timeout: 1s}\n".into(),
            )],
            "build step `hang`",
        ),
        (
            "missing file",
            vec![(
                ".baton.yaml",
                "image:\n  base: scratch\n  add:\n    - {from: nothing/here, to: /x}\n".into(),
            )],
            "nothing/here",
        ),
        (
            "path traversal",
            vec![(
                ".baton.yaml",
                "image:\n  base: scratch\n  add:\n    - {from: ../../etc/passwd, to: /x}\n".into(),
            )],
            "../../etc/passwd",
        ),
        (
            "missing base",
            vec![(
                ".baton.yaml",
                format!("image:\n  base: {}/no/such-base:1\n  add: []\n", b.registry.address()),
            )],
            "no/such-base",
        ),
    ];
    let mut releases = Vec::new();
    for (name, files, _) in &cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let sha = repo.commit(&files)?;
        // Each case stands alone: remove what the previous one added.
        releases.push(b.push(&repo.url(), &sha, name).await?);
        git(&repo.dir, &["rm", "-rq", "--ignore-unmatch", "."])?;
    }
    for ((name, _, expected), release) in cases.iter().zip(&releases) {
        let build = b.finished(release).await?;
        assert_eq!(build.outcome, Some(Outcome::Failure), "{name}: {build:?}");
        let reason = build.reason.clone().unwrap_or_default();
        assert!(
            reason.contains(expected),
            "{name}: `{reason}` should mention `{expected}`"
        );
        assert_eq!(
            b.published_for(release).await?,
            0,
            "{name}: nothing further happens for that commit"
        );
    }
    let hang = b.finished(&releases[3]).await?;
    assert_eq!(hang.steps[0].status, "timed_out");
    let failing = b.finished(&releases[2]).await?;
    assert_eq!(failing.steps[0].exit_code, Some(3));
    assert!(
        failing.steps[0].tail.iter().any(|l| l.contains("broken")),
        "{:?}",
        failing.steps[0].tail
    );
    assert!(failing.steps[0].log.is_some(), "the whole log is kept");

    // The builder still builds good commits.
    let good = repo.commit(&[(".baton.yaml", GOOD), ("src/app", "ok"), ("src/static.txt", "static")])?;
    let build = b.finished(&b.push(&repo.url(), &good, "good").await?).await?;
    assert_eq!(build.outcome, Some(Outcome::Success), "{build:?}");
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_commit_fails_but_an_unreachable_repository_is_retried() -> Result<()> {
    let b = TestBuilder::start().await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    repo.commit(&[(".baton.yaml", GOOD), ("src/app", "v1"), ("src/static.txt", "static")])?;

    // The commit is not in the repository: permanent, the build fails at once.
    let missing = b.push(&repo.url(), &"1".repeat(40), "missing").await?;
    let build = b.finished(&missing).await?;
    assert_eq!(build.outcome, Some(Outcome::Failure));
    assert!(build.reason.unwrap_or_default().contains("is not in"));

    // The repository cannot be reached: transient, retried, and after max deliveries the build
    // ends as an error (and the push is dead-lettered with the reason).
    let started = Instant::now();
    let unreachable = b.push("file:///nonexistent/repo.git", &"2".repeat(40), "gone").await?;
    let build = b.finished(&unreachable).await?;
    assert_eq!(build.outcome, Some(Outcome::Error), "{build:?}");
    assert!(
        build
            .reason
            .unwrap_or_default()
            .contains("still failing after 3 attempts")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it was retried with backoff"
    );
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_is_retried_then_reported() -> Result<()> {
    let mut b = TestBuilder::start().await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let sha = repo.commit(&[(".baton.yaml", GOOD), ("src/app", "v1"), ("src/static.txt", "static")])?;
    b.registry.kill()?;
    let release = b.push(&repo.url(), &sha, "down").await?;
    let build = b.finished(&release).await?;
    assert_eq!(build.outcome, Some(Outcome::Error), "{build:?}");
    assert!(
        build.reason.unwrap_or_default().contains(&b.registry.address()),
        "the reason names the registry"
    );
    let _ = &b.nats;
    b.stop().await
}

/// The repositories the registry holds (from its storage: the folders with a `_manifests`).
fn repositories(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
            let path = entry.path();
            if path.join("_manifests").is_dir() {
                found.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
            } else if path.is_dir() && !entry.file_name().to_string_lossy().starts_with('_') {
                walk(root, &path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort();
    found
}

/// `image.name` stays under `registry.repository_prefix` (the default, `baton`, here): any app
/// could otherwise push into any repository the builder can write to. A name outside the prefix
/// fails the build with the reason in `build.finished`, and nothing reaches the registry; a name
/// under it is used as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_name_outside_the_repository_prefix_fails_the_build() -> Result<()> {
    let b = TestBuilder::start().await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let named = |name: &str| GOOD.replace("image:\n", &format!("image:\n  name: '{name}'\n"));
    let registry_host = format!("{}/x", b.registry.address());
    // (case, image.name, what the reason must say)
    let cases = [
        (
            "sibling",
            "other-team/app",
            "outside this builder's repository prefix `baton`",
        ),
        ("climbing", "../other-app", "its part `..` is not"),
        ("other registry", registry_host.as_str(), "names a registry"),
        ("uppercase", "baton/Shop", "its part `Shop` is not"),
    ];
    let mut releases = Vec::new();
    for (case, name, _) in &cases {
        let sha = repo.commit(&[
            (".baton.yaml", &named(name)),
            ("src/app", case),
            ("src/static.txt", "s"),
        ])?;
        releases.push(b.push(&repo.url(), &sha, case).await?);
    }
    for ((case, name, expected), release) in cases.iter().zip(&releases) {
        let build = b.finished(release).await?;
        assert_eq!(build.outcome, Some(Outcome::Failure), "{case}: {build:?}");
        let reason = build.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with(&format!(".baton.yaml: image.name: `{name}`")) && reason.contains(expected),
            "{case}: `{reason}` should mention `{expected}`"
        );
        assert!(build.steps.is_empty(), "{case}: refused before any step ran");
        assert_eq!(b.published_for(release).await?, 0, "{case}");
    }
    let stored = b.registry.storage_dir().join("docker/registry/v2/repositories");
    assert_eq!(repositories(&stored), Vec::<String>::new(), "nothing was pushed");

    // A name under the prefix is the repository.
    let sha = repo.commit(&[(".baton.yaml", &named("baton/custom/app"))])?;
    let build = b.finished(&b.push(&repo.url(), &sha, "under").await?).await?;
    assert_eq!(build.outcome, Some(Outcome::Success), "{build:?}");
    assert_eq!(build.image.context("image")?.repository, "baton/custom/app");
    assert_eq!(repositories(&stored), ["baton/custom/app"]);
    b.stop().await
}

/// The value of the secret `SHOP_TOKEN` the builder grants to `acme/shop`.
const SHOP_TOKEN: &str = "s3cr3t-shop-t0ken";

/// A builder granting `SHOP_TOKEN` to `acme/shop` (the app every push of this suite is) and
/// `OTHER_TOKEN` to other repositories only, with memory at most 8 GiB per step.
async fn granting_builder() -> Result<TestBuilder> {
    TestBuilder::start_with(
        "limits:\n  memory_bytes: 8589934592\nsteps:\n  secrets:\n    SHOP_TOKEN:\n      value_env: SHOP_TOKEN_VALUE\n      repositories: [acme/shop]\n    OTHER_TOKEN:\n      value_env: OTHER_TOKEN_VALUE\n      repositories: [acme/other, acme/shop-*]\n",
        &|name| match name {
            "SHOP_TOKEN_VALUE" => Some(SHOP_TOKEN.to_owned()),
            "OTHER_TOKEN_VALUE" => Some("other-t0ken-value".to_owned()),
            _ => None,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_asking_above_the_maxima_or_for_an_ungranted_secret_fails_the_build_naming_the_field() -> Result<()> {
    let b = granting_builder().await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    // (case, its pipeline, the reason it must fail with)
    let cases = [
        (
            "above the maximum",
            "build:\n  steps:\n    - {name: first, run: 'true'}\n    - name: compile\n      run: make\n      limits: {memory_bytes: 17179869184}\n",
            ".baton.yaml: build.steps[1] (compile): limits.memory_bytes 17179869184 is above this builder's maximum 8589934592",
        ),
        (
            "not granted",
            "build:\n  steps:\n    - name: publish\n      run: 'true'\n      secrets: [OTHER_TOKEN]\n",
            ".baton.yaml: build.steps[0] (publish): secret OTHER_TOKEN is not granted to acme/shop (grants are in the builder's steps.secrets)",
        ),
        (
            "reserved name",
            "build:\n  steps:\n    - name: publish\n      run: 'true'\n      secrets: [BATON_TOKEN]\n",
            ".baton.yaml: build.steps[0] (publish): secrets[0] \"BATON_TOKEN\" is set by Baton for every step",
        ),
        (
            "unknown limit",
            "build:\n  steps:\n    - name: compile\n      run: make\n      limits: {memroy_bytes: 1}\n",
            "memroy_bytes",
        ),
    ];
    let mut releases = Vec::new();
    for (name, pipeline, _) in &cases {
        let sha = repo.commit(&[(".baton.yaml", pipeline)])?;
        releases.push(b.push(&repo.url(), &sha, name).await?);
    }
    for ((name, _, expected), release) in cases.iter().zip(&releases) {
        let build = b.finished(release).await?;
        assert_eq!(build.outcome, Some(Outcome::Failure), "{name}: {build:?}");
        let reason = build.reason.clone().unwrap_or_default();
        assert!(reason.contains(expected), "{name}: `{reason}` should say `{expected}`");
        assert!(build.steps.is_empty(), "{name}: no step runs: {:?}", build.steps);
    }
    let unknown = b.finished(&releases[3]).await?.reason.unwrap_or_default();
    assert!(unknown.contains("build.steps[0].limits"), "{unknown}");
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_secret_reaches_its_step_only_and_is_masked_in_its_log() -> Result<()> {
    let b = granting_builder().await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let sha = repo.commit(&[(
        ".baton.yaml",
        &format!(
            "build:\n  steps:\n    - name: publish\n      run: 'test \"$SHOP_TOKEN\" = {SHOP_TOKEN} && echo \"token: $SHOP_TOKEN\" && test \"$(ulimit -n)\" = 64'\n      secrets: [SHOP_TOKEN]\n      limits: {{open_files: 64}}\n    - name: after\n      run: 'test -z \"${{SHOP_TOKEN:-}}\" && test \"$(ulimit -n)\" != 64 && echo clean'\n"
        ),
    )])?;
    let build = b.finished(&b.push(&repo.url(), &sha, "granted").await?).await?;
    assert_eq!(build.outcome, Some(Outcome::Success), "{build:?}");
    let [publish, after] = build.steps.as_slice() else {
        panic!("two steps ran: {:?}", build.steps);
    };
    assert_eq!(publish.tail, vec!["token: ***"], "{publish:?}");
    assert_eq!(after.tail, vec!["clean"], "{after:?}");

    // The stored log is masked too.
    let log = publish.log.clone().context("the log is stored")?;
    let mut object = b.js.get_object_store(&log.bucket).await?.get(&log.object).await?;
    let mut stored = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut object, &mut stored).await?;
    assert!(stored.contains("token: ***"), "{stored}");
    assert!(!stored.contains(SHOP_TOKEN), "{stored}");
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsandboxed_builder_says_so_in_its_readiness() -> Result<()> {
    let sandboxed = TestBuilder::start().await?;
    let unsandboxed = TestBuilder::start_with("steps:\n  executor: unsandboxed\n", &|_| None).await?;
    let readyz = async |b: &TestBuilder| -> Result<(u16, String)> {
        let response = reqwest::get(format!("http://{}/readyz", b.addr)).await?;
        Ok((response.status().as_u16(), response.text().await?))
    };
    assert_eq!(readyz(&sandboxed).await?, (200, "ready\n".to_owned()));
    let (status, body) = readyz(&unsandboxed).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("ready\nwarning: {}\n", baton_kit::steps::UNSANDBOXED_WARNING)
    );
    assert!(body.contains("steps.executor is unsandboxed"), "{body}");
    sandboxed.stop().await?;
    unsandboxed.stop().await
}

/// Without bubblewrap the builder refuses to start (exit 64, before connecting anywhere), naming
/// `steps.executor`, why, and the two ways out; `unsandboxed` gets past the check.
#[test]
fn a_builder_that_cannot_sandbox_refuses_to_start() -> Result<()> {
    let binary = baton_tests::process::service_binary("baton-builder")?;
    let dir = tempfile::tempdir()?;
    let run = |config: &str| -> Result<(Option<i32>, String)> {
        let file = dir.path().join("builder.yaml");
        // Nothing listens on port 1: a start that got past the check fails to connect instead.
        std::fs::write(
            &file,
            format!("nats:\n  url: nats://127.0.0.1:1\n  connect_timeout: 1s\n{config}"),
        )?;
        let out = std::process::Command::new(&binary)
            .arg("--config")
            .arg(&file)
            .env_clear()
            // No bwrap (nor anything else) on this PATH.
            .env("PATH", dir.path().join("empty"))
            .env("HOME", dir.path())
            .output()?;
        Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let (code, stderr) = run("")?;
    assert_eq!(code, Some(64), "{stderr}");
    for words in [
        "steps.executor",
        "`bwrap` is not installed",
        "apt-get install bubblewrap",
        "steps.executor: unsandboxed",
    ] {
        assert!(stderr.contains(words), "`{words}` in:\n{stderr}");
    }
    let key = SigningKeyFile::generate()?;
    let (code, stderr) = run(&format!("steps:\n  executor: unsandboxed\n{}", key.signing_section()))?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("steps.executor is unsandboxed"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    Ok(())
}

/// The evidence the registry holds for `image`, read as a promoter would.
async fn evidence_of(
    registry: &RegistryServer,
    image: &baton_schemas::payloads::ImageInfo,
) -> Result<(baton_kit::evidence::Evidence, Subject)> {
    let store = EvidenceStore::new(&registry.address(), true, None, None);
    let evidence = store.fetch(&image.repository, &image.digest).await?;
    let subject = Subject {
        name: format!("{}/{}", image.registry, image.repository),
        digest: image.digest.clone(),
    };
    Ok((evidence, subject))
}

/// A refusal as an error naming its check.
fn refused(refusal: baton_kit::evidence::Refusal) -> anyhow::Error {
    anyhow::anyhow!("refused by check `{}`: {}", refusal.check, refusal.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_is_signed_and_its_provenance_names_what_it_was_built_from() -> Result<()> {
    let b = TestBuilder::start().await?;
    let base_digest = b.registry.push_busybox_base("base/busybox", "1")?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let pipeline = format!(
        "build:\n  steps:\n    - name: compile\n      run: mkdir -p out && cp src/* out/\n    - name: check\n      run: test -f out/app\n\
         image:\n  base: {}/base/busybox:1\n  add:\n    - {{from: out/app, to: /srv/app, mode: '0755'}}\n",
        b.registry.address()
    );
    let sha = repo.commit(&[(".baton.yaml", &pipeline), ("src/app", "v1")])?;
    let release = b.push(&repo.url(), &sha, "signed").await?;
    let build = b.finished(&release).await?;
    assert_eq!(build.outcome, Some(Outcome::Success), "{build:?}");
    let image = build.image.clone().context("the build's image")?;

    // The signature verifies with the builder's public key, over this digest.
    let public = PublicKey::from_pem(b.key.public_pem())?;
    let (evidence, subject) = evidence_of(&b.registry, &image).await?;
    let [signature] = &evidence.signatures[..] else {
        anyhow::bail!("one signature expected, found {}", evidence.signatures.len())
    };
    let key_id = verify_image_signature(signature, &subject, std::slice::from_ref(&public)).map_err(refused)?;
    assert_eq!(key_id, public.key_id());
    let other = PublicKey::from_pem(SigningKeyFile::generate()?.public_pem())?;
    let refusal = verify_image_signature(signature, &subject, &[other]).expect_err("another key verifies nothing");
    assert_eq!(refusal.check, "signature");

    // The provenance: signed by the same key, about this digest, naming the builder, the
    // source, the pipeline file's digest, the base's digest, the steps and the run.
    let [attestation] = &evidence.attestations[..] else {
        anyhow::bail!("one attestation expected, found {}", evidence.attestations.len())
    };
    let (statement, attested_by) =
        open_envelope(attestation, &subject, std::slice::from_ref(&public), SLSA_PROVENANCE_V1).map_err(refused)?;
    assert_eq!(attested_by, public.key_id());
    let predicate = &statement.predicate;
    assert_eq!(predicate["runDetails"]["builder"]["id"], "https://baton.dev/builder/v1");
    let source = &predicate["buildDefinition"]["externalParameters"]["source"];
    assert_eq!(source["repository"], repo.url(), "{predicate:#}");
    assert_eq!(source["commit"], sha.as_str(), "{predicate:#}");
    assert_eq!(source["ref"], "refs/heads/main", "{predicate:#}");
    let pipeline_digest = format!("sha256:{}", hex::encode(Sha256::digest(pipeline.as_bytes())));
    assert_eq!(
        predicate["buildDefinition"]["externalParameters"]["pipeline"]["digest"], pipeline_digest,
        "{predicate:#}"
    );
    let dependencies = predicate["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .context("resolvedDependencies")?;
    let base_hex = base_digest.trim_start_matches("sha256:");
    assert!(
        dependencies.iter().any(|d| d["digest"]["sha256"] == base_hex
            && d["uri"].as_str().is_some_and(|uri| uri.contains("base/busybox:1"))),
        "the base by digest: {predicate:#}"
    );
    assert!(
        dependencies.iter().any(|d| d["digest"]["gitCommit"] == sha.as_str()),
        "the commit: {predicate:#}"
    );
    let steps: Vec<(String, i64, String)> = predicate["runDetails"]["byproducts"]
        .as_array()
        .context("byproducts")?
        .iter()
        .map(|step| {
            (
                step["name"].as_str().unwrap_or_default().to_owned(),
                step["annotations"]["exitCode"].as_i64().unwrap_or(-1),
                step["annotations"]["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("step/compile".to_owned(), 0, "succeeded".to_owned()),
            ("step/check".to_owned(), 0, "succeeded".to_owned())
        ],
        "{predicate:#}"
    );
    let metadata = &predicate["runDetails"]["metadata"];
    assert_eq!(metadata["invocationId"], build.run.as_str(), "{predicate:#}");
    let started = chrono::DateTime::parse_from_rfc3339(metadata["startedOn"].as_str().context("startedOn")?)?;
    let finished = chrono::DateTime::parse_from_rfc3339(metadata["finishedOn"].as_str().context("finishedOn")?)?;
    assert!(started <= finished, "{predicate:#}");

    // artifact.signed: the image's purl, the signature, the key and the evidence's manifests.
    let signed =
        baton_tests::events::wait_for_release(&b.js, EventType::ArtifactSigned, &release, Duration::from_secs(10))
            .await?;
    assert_eq!(signed.subject.id, image.purl);
    assert_eq!(signed.subject.content["signature"], signature.signature.as_str());
    let data: SignedData = signed.custom_data_as()?;
    assert_eq!(data.key_id, public.key_id());
    assert_eq!(data.commit, sha);
    assert_eq!(data.image.digest, image.digest);
    assert_eq!(Some(&data.signature_manifest), evidence.signature_manifest.as_ref());
    assert_eq!(Some(&data.attestation_manifest), evidence.attestation_manifest.as_ref());
    // `baton trace` and `baton events` show it with the key.
    let (summary, _) = baton::render::summary(&baton_kit::log::Record {
        sequence: 1,
        app: "acme_shop".into(),
        event: signed,
    });
    let key_hex = public.key_id().trim_start_matches("sha256:").to_owned();
    assert!(
        summary.starts_with(&format!("signed by key {}", &key_hex[..8])),
        "{summary}"
    );
    b.stop().await
}

/// A builder without a usable key refuses to start (exit 64, before connecting anywhere),
/// naming `signing.key_file`: no key, a key file that is not there, a key that is not P-256.
#[test]
fn a_builder_without_its_signing_key_refuses_to_start_naming_the_field() -> Result<()> {
    let binary = baton_tests::process::service_binary("baton-builder")?;
    let dir = tempfile::tempdir()?;
    let p384 = dir.path().join("p384.pem");
    baton_tests::process::run(
        std::process::Command::new("openssl")
            .args(["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out"])
            .arg(&p384),
    )?;
    let run = |signing: &str| -> Result<(Option<i32>, String)> {
        let file = dir.path().join("builder.yaml");
        // Nothing listens on port 1: a start that got past the check fails to connect instead.
        std::fs::write(
            &file,
            format!(
                "nats:\n  url: nats://127.0.0.1:1\n  connect_timeout: 1s\nsteps:\n  executor: unsandboxed\n{signing}"
            ),
        )?;
        let out = std::process::Command::new(&binary)
            .arg("--config")
            .arg(&file)
            .env_clear()
            .env("HOME", dir.path())
            .output()?;
        Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    for (signing, words) in [
        ("", "is required"),
        ("signing:\n  key_file: /nonexistent/key.pem\n", "/nonexistent/key.pem"),
        (
            &format!("signing:\n  key_file: {:?}\n", p384.display().to_string()),
            "p384.pem",
        ),
    ] {
        let (code, stderr) = run(signing)?;
        assert_eq!(code, Some(64), "{signing}: {stderr}");
        assert!(stderr.contains("signing.key_file"), "{signing}: {stderr}");
        assert!(stderr.contains(words), "`{words}` in:\n{stderr}");
    }
    // Off, it starts (and fails only to connect), saying so.
    let (code, stderr) = run("signing:\n  enabled: false\n")?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("signing.enabled is false"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_signing_off_the_builder_says_so_in_its_readiness_and_pushes_no_signature() -> Result<()> {
    let b = TestBuilder::start_with("signing:\n  enabled: false\n", &|_| None).await?;
    let response = reqwest::get(format!("http://{}/readyz", b.addr)).await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.text().await?,
        format!("ready\nwarning: {}\n", baton_builder::config::UNSIGNED_WARNING)
    );
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let sha = repo.commit(&[(".baton.yaml", GOOD), ("src/app", "v1"), ("src/static.txt", "static")])?;
    let release = b.push(&repo.url(), &sha, "unsigned").await?;
    let build = b.finished(&release).await?;
    assert_eq!(build.outcome, Some(Outcome::Success), "{build:?}");
    let (evidence, _) = evidence_of(&b.registry, &build.image.context("the build's image")?).await?;
    assert!(
        evidence.signatures.is_empty() && evidence.signature_manifest.is_none(),
        "{evidence:?}"
    );
    assert!(evidence.attestations.is_empty(), "{evidence:?}");
    assert!(
        baton_tests::events::of(&b.js, EventType::ArtifactSigned)
            .await?
            .is_empty()
    );
    assert_eq!(b.published_for(&release).await?, 1);
    b.stop().await
}

/// A registry that takes the image but refuses its signature: the image is pushed first by a
/// builder that does not sign, then the registry goes read-only (Distribution's maintenance
/// mode: reads served, every push refused with 405) and a signing builder builds the same
/// commit. Its image push has nothing to write; the signature's push is refused, and the build
/// is retried, not failed. Once the registry takes pushes again, a retry signs the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_refusing_the_signature_makes_the_build_retry() -> Result<()> {
    let mut b = TestBuilder::start_with("signing:\n  enabled: false\n", &|_| None).await?;
    let dir = tempfile::tempdir()?;
    let repo = AppRepo::new(dir.path())?;
    let sha = repo.commit(&[(".baton.yaml", GOOD), ("src/app", "v1"), ("src/static.txt", "static")])?;
    let unsigned = b.finished(&b.push(&repo.url(), &sha, "unsigned").await?).await?;
    assert_eq!(unsigned.outcome, Some(Outcome::Success), "{unsigned:?}");

    b.registry.restart_read_only(true)?;
    // Retries enough, and slow enough, to outlast the registry's restart below.
    b.restart_with("", |runner| {
        runner.max_deliver = 30;
        runner.backoff_initial = Duration::from_millis(200);
        runner.backoff_max = Duration::from_secs(1);
    })
    .await?;
    let release = b.push(&repo.url(), &sha, "refused").await?;
    let retried = baton_tests::metric_line(b.addr, "evidence_registry", Duration::from_secs(30)).await?;
    assert!(retried.contains("transient"), "{retried}");
    let finished = baton_tests::events::of(&b.js, EventType::BuildFinished).await?;
    assert!(
        !finished
            .iter()
            .any(|e| e.context.chain_id.as_deref() == Some(release.as_str())),
        "a refused signature does not end the build"
    );

    b.registry.restart_read_only(false)?;
    let build = b.finished(&release).await?;
    assert_eq!(build.outcome, Some(Outcome::Success), "{build:?}");
    let image = build.image.context("the build's image")?;
    assert_eq!(Some(&image.digest), unsigned.image.as_ref().map(|i| &i.digest));
    let (evidence, subject) = evidence_of(&b.registry, &image).await?;
    let public = PublicKey::from_pem(b.key.public_pem())?;
    let [signature] = &evidence.signatures[..] else {
        anyhow::bail!("one signature expected: {evidence:?}")
    };
    verify_image_signature(signature, &subject, &[public]).map_err(refused)?;
    baton_tests::events::wait_for_release(&b.js, EventType::ArtifactSigned, &release, Duration::from_secs(10)).await?;
    b.stop().await
}
