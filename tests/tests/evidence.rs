//! Evidence Baton writes, checked by verifiers that share none of its code, against a real
//! CNCF Distribution registry: a Python verifier of cosign signatures
//! (`tests/scripts/verify_cosign.py`, the `cryptography` package, reading the registry over
//! HTTP itself) accepts an image Baton signed and refuses an unsigned one and one signed by
//! another key; a Python verifier of DSSE (`tests/scripts/verify_dsse.py`) checks the envelope
//! and the SLSA provenance Baton attached; skopeo (containers/image) with a `sigstoreSigned`
//! policy copies an image Baton signed and refuses an unsigned one and one signed by another key;
//! skopeo reads the `.sig` and `.att` manifests as stored; keys made by `openssl` load, or are
//! refused naming what they are; a registry refusing pushes fails the attachment for good, an
//! unreachable one transiently; what a hostile registry serves (oversized or mislabelled layers,
//! an oversized manifest) is read within bounds.
//!
//! Debian bookworm's skopeo (1.9) refuses every `sigstoreSigned` policy (a Debian-local change,
//! "sigstore disabled"), so the policy check runs Debian trixie's skopeo 1.18, which `just setup`
//! installs into a cache (`scripts/install-skopeo-sigstore.sh`, [`skopeo_sigstore`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};
use baton_kit::evidence::{
    BaseImageRecord, BuildRecord, EvidenceStore, PublicKey, SLSA_PROVENANCE_V1, SigningKey, StepRecord, Subject,
    TEST_RESULT_V0_1, TestOutcome, TestRecord, open_envelope, provenance, seal, sign_image, test_result,
    verify_image_signature,
};
use baton_tests::registry::{RegistryServer, skopeo_sigstore};
use chrono::{TimeZone, Utc};
use serde_json::Value;
use tempfile::TempDir;

const BUILDER_ID: &str = "https://baton.dev/builder/v1";
const SOURCE: &str = "https://git.example.com/acme/shop.git";
const COMMIT: &str = "4f6c1d2e8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d";

/// Runs `command`, returning its output whatever its exit status.
fn run(command: &mut Command) -> Result<Output> {
    command.output().with_context(|| format!("running {command:?}"))
}

/// Runs `command`, which must succeed.
fn succeed(command: &mut Command) -> Result<Output> {
    let output = run(command)?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// A key made by `openssl` (`args` after `openssl`, writing to `-out <path>`), in `dir`.
fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    let path = dir.join(name);
    succeed(Command::new("openssl").args(args).arg("-out").arg(&path))?;
    Ok(path)
}

/// A P-256 key in SEC1 PEM, as `openssl ecparam -genkey` writes it (with its EC PARAMETERS).
fn sec1_key(dir: &Path, name: &str) -> Result<PathBuf> {
    openssl_key(dir, name, &["ecparam", "-name", "prime256v1", "-genkey"])
}

/// A P-256 key in PKCS#8 PEM, as `openssl genpkey` writes it.
fn pkcs8_key(dir: &Path, name: &str) -> Result<PathBuf> {
    openssl_key(
        dir,
        name,
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
}

/// The public half of a private key file, PEM, as `openssl` derives it.
fn openssl_public(dir: &Path, private: &Path) -> Result<PathBuf> {
    let path = private.with_extension("pub.pem");
    succeed(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(private)
            .arg("-out")
            .arg(&path)
            .current_dir(dir),
    )?;
    Ok(path)
}

/// A registry, Baton's evidence store for it, and room for keys and envelopes.
struct Fixture {
    server: RegistryServer,
    store: EvidenceStore,
    dir: TempDir,
}

impl Fixture {
    fn start() -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        let server = RegistryServer::start()?;
        let store = EvidenceStore::new(&server.address(), true, None, None);
        Ok(Self {
            server,
            store,
            dir: tempfile::tempdir()?,
        })
    }

    /// Pushes the busybox image to `repository:v1`; its subject.
    fn push(&self, repository: &str) -> Result<Subject> {
        let digest = self.server.push_busybox_base(repository, "v1")?;
        Ok(Subject {
            name: format!("{}/{repository}", self.server.address()),
            digest,
        })
    }

    /// `tests/scripts/verify_cosign.py` on the image `subject` in `repository`, trusting only
    /// `public_pem`: it reads the registry over HTTP itself.
    fn verify_cosign(&self, repository: &str, subject: &Subject, public_pem: &Path) -> Result<Output> {
        run(Command::new("python3")
            .arg(script("verify_cosign.py"))
            .args(["--registry-url", &self.server.url(), "--repository", repository])
            .args(["--digest", &subject.digest, "--identity", &subject.name])
            .arg("--public-key")
            .arg(public_pem))
    }
}

/// A verifier in `tests/scripts`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

fn write_public(dir: &Path, name: &str, key: &PublicKey) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, key.to_pem())?;
    Ok(path)
}

#[tokio::test]
async fn an_independent_verifier_accepts_a_baton_signed_image_and_refuses_unsigned_and_foreign_ones() -> Result<()> {
    let fixture = Fixture::start()?;
    let dir = fixture.dir.path();
    let baton = SigningKey::from_pem_file(&sec1_key(dir, "baton.pem")?)?;
    let stranger = SigningKey::from_pem_file(&pkcs8_key(dir, "stranger.pem")?)?;
    let trusted = write_public(dir, "baton.pub.pem", &baton.public_key())?;

    let signed = fixture.push("acme/shop")?;
    let manifest = fixture
        .store
        .attach_signature("acme/shop", &signed, &sign_image(&baton, &signed))
        .await?;
    // Attaching the same signature again (a retried build) changes nothing.
    let again = fixture
        .store
        .attach_signature("acme/shop", &signed, &sign_image(&baton, &signed))
        .await?;
    assert_eq!(again, manifest);

    let accepted = fixture.verify_cosign("acme/shop", &signed, &trusted)?;
    assert!(
        accepted.status.success(),
        "the verifier refused Baton's signature: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    // As containers/image reads it: cosign's tag, layer type and annotation.
    let hex = signed.digest.trim_start_matches("sha256:");
    let stored = fixture
        .server
        .skopeo_inspect(&format!("{}:sha256-{hex}.sig", signed.name), true)?;
    assert_eq!(stored["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let layers = stored["layers"].as_array().context("layers")?;
    assert_eq!(layers.len(), 1, "{stored}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    assert!(layers[0]["annotations"]["dev.cosignproject.cosign/signature"].is_string());
    assert_eq!(
        stored["artifactType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    assert_eq!(stored["config"]["mediaType"], EMPTY_CONFIG_MEDIA_TYPE);

    let unsigned = fixture.push("acme/unsigned")?;
    let refused = fixture.verify_cosign("acme/unsigned", &unsigned, &trusted)?;
    assert!(!refused.status.success(), "the verifier accepted an unsigned image");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no signature"), "{stderr}");
    assert!(
        fixture
            .store
            .fetch("acme/unsigned", &unsigned.digest)
            .await?
            .signatures
            .is_empty()
    );

    let foreign = fixture.push("acme/foreign")?;
    fixture
        .store
        .attach_signature("acme/foreign", &foreign, &sign_image(&stranger, &foreign))
        .await?;
    let refused = fixture.verify_cosign("acme/foreign", &foreign, &trusted)?;
    assert!(
        !refused.status.success(),
        "the verifier accepted an image signed by another key"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("does not verify"), "{stderr}");

    // A valid signature of the image under another repository's name is not this one's.
    let renamed = Subject {
        name: format!("{}/acme/elsewhere", fixture.server.address()),
        ..signed.clone()
    };
    let refused = fixture.verify_cosign("acme/shop", &renamed, &trusted)?;
    assert!(
        !refused.status.success(),
        "the verifier accepted another repository's signature"
    );

    // Baton's own reading agrees with the verifier's.
    let evidence = fixture.store.fetch("acme/shop", &signed.digest).await?;
    assert_eq!(evidence.signature_manifest.as_deref(), Some(manifest.as_str()));
    assert_eq!(
        verify_image_signature(&evidence.signatures[0], &signed, &[baton.public_key()]),
        Ok(baton.public_key().key_id())
    );
    let evidence = fixture.store.fetch("acme/foreign", &foreign.digest).await?;
    let refusal = verify_image_signature(&evidence.signatures[0], &foreign, &[baton.public_key()]).unwrap_err();
    assert_eq!(refusal.check, "signature");
    Ok(())
}

/// The upload sessions open in `repository` of the fixture's registry (Distribution keeps one
/// directory per session until its blob is put).
fn open_sessions(fixture: &Fixture, repository: &str) -> Result<usize> {
    let uploads = fixture
        .server
        .storage_dir()
        .join("docker/registry/v2/repositories")
        .join(repository)
        .join("_uploads");
    match fs::read_dir(&uploads) {
        Ok(entries) => Ok(entries.count()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error).with_context(|| format!("reading {}", uploads.display())),
    }
}

#[tokio::test]
async fn sessions_opened_ahead_carry_the_evidence_and_lost_ones_are_not_missed() -> Result<()> {
    let fixture = Fixture::start()?;
    let dir = fixture.dir.path();
    let key = SigningKey::from_pem_file(&sec1_key(dir, "baton.pem")?)?;
    let trusted = write_public(dir, "baton.pub.pem", &key.public_key())?;
    let subject = fixture.push("acme/shop")?;

    // Opened while the build runs: one for the signature's layer, one for the shared config
    // (the repository's first attachment).
    fixture.store.prepare("acme/shop", 2).await;
    assert_eq!(open_sessions(&fixture, "acme/shop")?, 2);
    fixture
        .store
        .attach_signature("acme/shop", &subject, &sign_image(&key, &subject))
        .await?;
    assert_eq!(open_sessions(&fixture, "acme/shop")?, 0, "both sessions carried a blob");
    let accepted = fixture.verify_cosign("acme/shop", &subject, &trusted)?;
    assert!(
        accepted.status.success(),
        "the verifier refused what came through the sessions: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    // A registry that lost its sessions (purged, its storage replaced) refuses their bytes: the
    // signature is uploaded whole instead.
    fixture.store.prepare("acme/shop", 1).await;
    assert_eq!(open_sessions(&fixture, "acme/shop")?, 1);
    let uploads = fixture
        .server
        .storage_dir()
        .join("docker/registry/v2/repositories/acme/shop/_uploads");
    fs::remove_dir_all(&uploads)?;
    let other = SigningKey::from_pem_file(&pkcs8_key(dir, "other.pem")?)?;
    fixture
        .store
        .attach_signature("acme/shop", &subject, &sign_image(&other, &subject))
        .await?;
    let evidence = fixture.store.fetch("acme/shop", &subject.digest).await?;
    assert_eq!(evidence.signatures.len(), 2, "both signatures are there");
    verify_image_signature(&evidence.signatures[1], &subject, &[other.public_key()])
        .map_err(|refusal| anyhow::anyhow!("{refusal:?}"))?;

    // Sessions are kept per repository, a few at most.
    fixture.store.prepare("acme/other", 100).await;
    assert_eq!(open_sessions(&fixture, "acme/other")?, 8);
    assert_eq!(open_sessions(&fixture, "acme/shop")?, 0);
    Ok(())
}

/// OCI's empty descriptor, the config every `.sig` and `.att` manifest names.
const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

#[tokio::test]
async fn attaching_uploads_the_shared_config_again_when_the_registry_lost_it() -> Result<()> {
    let fixture = Fixture::start()?;
    let key = SigningKey::from_pem_file(&sec1_key(fixture.dir.path(), "baton.pem")?)?;
    let first = fixture.push("acme/shop")?;
    fixture
        .store
        .attach_signature("acme/shop", &first, &sign_image(&key, &first))
        .await?;
    let config_url = format!("{}/v2/acme/shop/blobs/{EMPTY_CONFIG_DIGEST}", fixture.server.url());
    let http = reqwest::Client::new();
    assert_eq!(
        http.head(&config_url).send().await?.status(),
        200,
        "the config was uploaded"
    );

    // The registry loses it (an operator deleting it, a collector): the store, which uploaded it
    // itself, still believes it there.
    let deleted = http.delete(&config_url).send().await?;
    assert_eq!(deleted.status(), 202, "{}", deleted.text().await?);
    assert_eq!(http.head(&config_url).send().await?.status(), 404);

    // A second key's signature makes a new manifest, naming the lost config.
    let other = SigningKey::from_pem_file(&pkcs8_key(fixture.dir.path(), "other.pem")?)?;
    let signed = fixture
        .store
        .attach_signature("acme/shop", &first, &sign_image(&other, &first))
        .await?;
    assert_eq!(http.head(&config_url).send().await?.status(), 200, "uploaded again");
    let evidence = fixture.store.fetch("acme/shop", &first.digest).await?;
    assert_eq!(evidence.signature_manifest.as_deref(), Some(signed.as_str()));
    assert_eq!(evidence.signatures.len(), 2);
    Ok(())
}

/// `skopeo copy` of `subject` into a directory, under a policy trusting only images of this
/// registry signed by `public_pem` (`sigstoreSigned`, cosign's attachments read from the
/// registry).
fn skopeo_copy_under_policy(fixture: &Fixture, subject: &Subject, public_pem: &Path, name: &str) -> Result<Output> {
    let dir = fixture.dir.path().join(name);
    let registries = dir.join("registries.d");
    fs::create_dir_all(&registries)?;
    let registry = fixture.server.address();
    fs::write(
        registries.join("baton.yaml"),
        format!("docker:\n  {registry}:\n    use-sigstore-attachments: true\n"),
    )?;
    let policy = dir.join("policy.json");
    let requirement = serde_json::json!([{
        "type": "sigstoreSigned",
        "keyPath": public_pem,
        "signedIdentity": {"type": "matchRepository"},
    }]);
    fs::write(
        &policy,
        serde_json::to_vec(&serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {registry.clone(): requirement}},
        }))?,
    )?;
    run(Command::new(skopeo_sigstore()?)
        .arg("--policy")
        .arg(&policy)
        .arg("--registries.d")
        .arg(&registries)
        .args(["copy", "--src-tls-verify=false", "--retry-times", "0"])
        .arg(format!("docker://{}@{}", subject.name, subject.digest))
        .arg(format!("dir:{}", dir.join("copy").display())))
}

#[tokio::test]
async fn skopeo_with_a_sigstore_policy_copies_a_baton_signed_image_and_refuses_unsigned_and_foreign_ones() -> Result<()>
{
    let fixture = Fixture::start()?;
    let dir = fixture.dir.path();
    let baton = SigningKey::from_pem_file(&sec1_key(dir, "baton.pem")?)?;
    let stranger = SigningKey::from_pem_file(&pkcs8_key(dir, "stranger.pem")?)?;
    // The public half as openssl derives it, not as Baton writes it.
    let trusted = openssl_public(dir, &dir.join("baton.pem"))?;

    let signed = fixture.push("acme/shop")?;
    fixture
        .store
        .attach_signature("acme/shop", &signed, &sign_image(&baton, &signed))
        .await?;
    let copied = skopeo_copy_under_policy(&fixture, &signed, &trusted, "signed")?;
    assert!(
        copied.status.success(),
        "skopeo refused Baton's signature: {}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert!(dir.join("signed/copy/manifest.json").is_file());

    let unsigned = fixture.push("acme/unsigned")?;
    let refused = skopeo_copy_under_policy(&fixture, &unsigned, &trusted, "unsigned")?;
    assert!(!refused.status.success(), "skopeo copied an unsigned image");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no signature exists"), "{stderr}");

    let foreign = fixture.push("acme/foreign")?;
    fixture
        .store
        .attach_signature("acme/foreign", &foreign, &sign_image(&stranger, &foreign))
        .await?;
    let refused = skopeo_copy_under_policy(&fixture, &foreign, &trusted, "foreign")?;
    assert!(
        !refused.status.success(),
        "skopeo copied an image signed by another key"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("signature verification failed"), "{stderr}");

    // Baton's own signature, copied under another repository's name, does not pass either: the
    // payload names the repository it was made for.
    let elsewhere = fixture.push("acme/elsewhere")?;
    let copied_signature = sign_image(
        &baton,
        &Subject {
            name: signed.name.clone(),
            digest: elsewhere.digest.clone(),
        },
    );
    fixture
        .store
        .attach_signature("acme/elsewhere", &elsewhere, &copied_signature)
        .await?;
    let refused = skopeo_copy_under_policy(&fixture, &elsewhere, &trusted, "elsewhere")?;
    assert!(
        !refused.status.success(),
        "skopeo accepted a signature made for another repository"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not accepted"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn an_independent_verifier_accepts_the_provenance_and_refuses_a_tampered_one() -> Result<()> {
    let fixture = Fixture::start()?;
    let dir = fixture.dir.path();
    let key_file = pkcs8_key(dir, "builder.pem")?;
    let builder = SigningKey::from_pem_file(&key_file)?;
    let tester = SigningKey::from_pem_file(&sec1_key(dir, "tester.pem")?)?;
    // The public half as openssl derives it, not as Baton writes it.
    let public = openssl_public(dir, &key_file)?;
    assert_eq!(
        PublicKey::from_pem(&fs::read_to_string(&public)?)?,
        builder.public_key()
    );

    let subject = fixture.push("acme/shop")?;
    let base_digest = format!("sha256:{}", "e".repeat(64));
    let build = BuildRecord {
        builder_id: BUILDER_ID.to_owned(),
        repository: SOURCE.to_owned(),
        git_ref: "refs/heads/main".to_owned(),
        commit: COMMIT.to_owned(),
        pipeline_digest: format!("sha256:{}", "c".repeat(64)),
        base_image: Some(BaseImageRecord {
            name: "docker.io/library/busybox:1.36".to_owned(),
            digest: base_digest.clone(),
        }),
        steps: vec![
            StepRecord {
                name: "compile".to_owned(),
                exit_code: Some(0),
                status: "succeeded".to_owned(),
            },
            StepRecord {
                name: "unit".to_owned(),
                exit_code: Some(0),
                status: "succeeded".to_owned(),
            },
        ],
        run_id: "build-1".to_owned(),
        started: Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap(),
        finished: Utc.with_ymd_and_hms(2026, 3, 1, 10, 2, 30).unwrap(),
    };
    let first = fixture
        .store
        .attach_attestation(
            "acme/shop",
            &subject,
            &seal(&builder, &provenance(&subject, &build)),
            SLSA_PROVENANCE_V1,
        )
        .await?;
    let verdict = TestRecord {
        tester_id: "https://baton.dev/tester/v1".to_owned(),
        result: TestOutcome::Passed,
        configuration: Vec::new(),
        passed_tests: vec!["cart::adds".to_owned()],
        warned_tests: Vec::new(),
        failed_tests: Vec::new(),
        counts: [("passed".to_owned(), 1)].into(),
        run_id: "test-1".to_owned(),
    };
    let second = fixture
        .store
        .attach_attestation(
            "acme/shop",
            &subject,
            &seal(&tester, &test_result(&subject, &verdict)),
            TEST_RESULT_V0_1,
        )
        .await?;
    assert_ne!(first, second, "the tester's attestation is appended to a new manifest");

    // As stored: both layers, in order, annotated as cosign annotates attestations.
    let hex = subject.digest.trim_start_matches("sha256:");
    let stored = fixture
        .server
        .skopeo_inspect(&format!("{}:sha256-{hex}.att", subject.name), true)?;
    let layers = stored["layers"].as_array().context("layers")?;
    let predicate_types: Vec<&Value> = layers
        .iter()
        .map(|layer| &layer["annotations"]["predicateType"])
        .collect();
    assert_eq!(predicate_types, [SLSA_PROVENANCE_V1, TEST_RESULT_V0_1]);
    assert!(
        layers
            .iter()
            .all(|layer| layer["mediaType"] == "application/vnd.dsse.envelope.v1+json")
    );
    // Every attachment names OCI's empty config, typed by its layers.
    assert_eq!(stored["artifactType"], "application/vnd.dsse.envelope.v1+json");
    assert_eq!(stored["config"]["mediaType"], EMPTY_CONFIG_MEDIA_TYPE);
    assert_eq!(stored["config"]["size"], 2);

    let evidence = fixture.store.fetch("acme/shop", &subject.digest).await?;
    assert_eq!(evidence.attestation_manifest.as_deref(), Some(second.as_str()));
    assert_eq!(evidence.attestations.len(), 2);
    assert!(evidence.signatures.is_empty() && evidence.signature_manifest.is_none());
    let (statement, _) = open_envelope(
        &evidence.attestations[1],
        &subject,
        &[tester.public_key()],
        TEST_RESULT_V0_1,
    )?;
    assert_eq!(statement.predicate["result"], "PASSED");

    let verify = |envelope: &Value, commit: &str| -> Result<Output> {
        let file = dir.join("envelope.json");
        fs::write(&file, serde_json::to_vec(envelope)?)?;
        run(Command::new("python3")
            .arg(script("verify_dsse.py"))
            .arg("--envelope")
            .arg(&file)
            .arg("--public-key")
            .arg(&public)
            .args([
                "--digest",
                &subject.digest,
                "--builder",
                BUILDER_ID,
                "--repository",
                SOURCE,
            ])
            .args(["--commit", commit, "--base-digest", &base_digest, "--steps", "2"]))
    };
    let envelope = serde_json::to_value(&evidence.attestations[0])?;
    let accepted = verify(&envelope, COMMIT)?;
    assert!(
        accepted.status.success(),
        "the verifier refused Baton's provenance: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("verified"));

    // Another commit than the one built.
    let refused = verify(&envelope, &"0".repeat(40))?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("commit"));

    // The payload rewritten after signing: its commit changed, Baton's signature kept.
    let rewritten = seal(
        &builder,
        &provenance(
            &subject,
            &BuildRecord {
                commit: "1".repeat(40),
                ..build.clone()
            },
        ),
    );
    let mut tampered = envelope.clone();
    tampered["payload"] = rewritten.payload.into();
    let refused = verify(&tampered, &"1".repeat(40))?;
    assert!(!refused.status.success(), "the verifier accepted a tampered envelope");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no signature verifies"));

    // A second build of the same digest (another commit) attaches through the call made for a
    // first attestation; its guess that the tag is new is wrong here, and the result is the same:
    // the held layers, then the new one, under a config listing all three.
    let third = fixture
        .store
        .attach_attestation(
            "acme/shop",
            &subject,
            &seal(
                &builder,
                &provenance(
                    &subject,
                    &BuildRecord {
                        commit: "9".repeat(40),
                        ..build.clone()
                    },
                ),
            ),
            SLSA_PROVENANCE_V1,
        )
        .await?;
    let stored = fixture
        .server
        .skopeo_inspect(&format!("{}:sha256-{hex}.att", subject.name), true)?;
    let predicate_types: Vec<&Value> = stored["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|layer| &layer["annotations"]["predicateType"])
        .collect();
    assert_eq!(
        predicate_types,
        [SLSA_PROVENANCE_V1, TEST_RESULT_V0_1, SLSA_PROVENANCE_V1]
    );
    assert_eq!(stored["config"]["mediaType"], EMPTY_CONFIG_MEDIA_TYPE);
    let evidence = fixture.store.fetch("acme/shop", &subject.digest).await?;
    assert_eq!(evidence.attestation_manifest.as_deref(), Some(third.as_str()));
    assert_eq!(evidence.attestations.len(), 3);
    Ok(())
}

#[test]
fn keys_made_by_openssl_load_and_others_are_refused_naming_what_they_are() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    for private in [sec1_key(dir, "sec1.pem")?, pkcs8_key(dir, "pkcs8.pem")?] {
        let key = SigningKey::from_pem_file(&private)?;
        let public = fs::read_to_string(openssl_public(dir, &private)?)?;
        assert_eq!(PublicKey::from_pem(&public)?, key.public_key(), "{}", private.display());
    }

    let refused = |path: PathBuf| SigningKey::from_pem_file(&path).unwrap_err().to_string();
    let rsa = openssl_key(
        dir,
        "rsa.pem",
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )?;
    let message = refused(rsa.clone());
    assert!(message.contains("an RSA key, not ECDSA P-256"), "{message}");
    let p384 = openssl_key(dir, "p384.pem", &["ecparam", "-name", "secp384r1", "-genkey"])?;
    let message = refused(p384.clone());
    assert!(message.contains("an ECDSA P-384 key, not ECDSA P-256"), "{message}");
    let p384_pkcs8 = openssl_key(
        dir,
        "p384-pkcs8.pem",
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    )?;
    let message = refused(p384_pkcs8);
    assert!(message.contains("an ECDSA P-384 key, not ECDSA P-256"), "{message}");
    // Their public halves are refused as trusted keys too.
    for private in [rsa, p384] {
        let public = fs::read_to_string(openssl_public(dir, &private)?)?;
        let message = PublicKey::from_pem(&public).unwrap_err().to_string();
        assert!(message.contains("not ECDSA P-256"), "{message}");
    }
    let missing = SigningKey::from_pem_file(&dir.join("absent.pem")).unwrap_err();
    assert!(missing.to_string().contains("absent.pem"), "{missing}");
    Ok(())
}

#[tokio::test]
async fn a_registry_refusing_evidence_fails_permanently_and_an_unreachable_one_transiently() -> Result<()> {
    let mut fixture = Fixture::start()?;
    let key = SigningKey::from_pem_file(&sec1_key(fixture.dir.path(), "baton.pem")?)?;
    let subject = fixture.push("acme/shop")?;
    let signature = sign_image(&key, &subject);

    fixture.server.restart_read_only(true)?;
    let refused = fixture
        .store
        .attach_signature("acme/shop", &subject, &signature)
        .await
        .unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
    assert_eq!(refused.metric_label(), "evidence_registry");
    // Reading still works: nothing is there yet.
    let evidence = fixture.store.fetch("acme/shop", &subject.digest).await?;
    assert!(evidence.signatures.is_empty() && evidence.signature_manifest.is_none());

    fixture.server.kill()?;
    let unreachable = fixture
        .store
        .attach_signature("acme/shop", &subject, &signature)
        .await
        .unwrap_err();
    assert!(unreachable.is_transient(), "{unreachable}");
    let unreachable = fixture.store.fetch("acme/shop", &subject.digest).await.unwrap_err();
    assert!(unreachable.is_transient(), "{unreachable}");
    Ok(())
}

/// Uploads `data` as a blob of `repository` straight over the registry API; its digest.
async fn put_blob(registry: &str, repository: &str, data: Vec<u8>) -> Result<String> {
    use sha2::Digest as _;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
    let client = reqwest::Client::new();
    let started = client
        .post(format!("{registry}/v2/{repository}/blobs/uploads/"))
        .send()
        .await?;
    ensure!(started.status() == 202, "upload not started: {}", started.status());
    let location = started.headers()["location"].to_str()?.to_owned();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{registry}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let put = client
        .put(format!("{location}{separator}digest={digest}"))
        .body(data)
        .send()
        .await?;
    ensure!(put.status() == 201, "blob refused: {}", put.text().await?);
    Ok(digest)
}

/// Puts `manifest` (OCI) at `repository:tag` straight over the registry API.
async fn put_manifest(registry: &str, repository: &str, tag: &str, manifest: &Value) -> Result<()> {
    let response = reqwest::Client::new()
        .put(format!("{registry}/v2/{repository}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(manifest)?)
        .send()
        .await?;
    ensure!(response.status() == 201, "manifest refused: {}", response.text().await?);
    Ok(())
}

#[tokio::test]
async fn evidence_a_hostile_registry_serves_is_read_within_bounds() -> Result<()> {
    let fixture = Fixture::start()?;
    let registry = fixture.server.url();
    let key = SigningKey::from_pem_file(&sec1_key(fixture.dir.path(), "baton.pem")?)?;
    let subject = fixture.push("acme/shop")?;
    let hex = subject.digest.trim_start_matches("sha256:");
    let signature = sign_image(&key, &subject);

    let config = put_blob(&registry, "acme/shop", b"{}".to_vec()).await?;
    let payload = put_blob(&registry, "acme/shop", signature.payload.clone()).await?;
    let big = put_blob(&registry, "acme/shop", vec![b'x'; 70 * 1024]).await?;
    let simple_signing = "application/vnd.dev.cosign.simplesigning.v1+json";
    let annotations = serde_json::json!({"dev.cosignproject.cosign/signature": signature.signature});
    let layer = |media_type: &str, digest: &str, size: usize| serde_json::json!({"mediaType": media_type, "digest": digest, "size": size, "annotations": annotations});
    let manifest = |layers: Vec<Value>| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": layers,
        })
    };
    put_manifest(
        &registry,
        "acme/shop",
        &format!("sha256-{hex}.sig"),
        &manifest(vec![
            // Larger than any signature payload: never downloaded.
            layer(simple_signing, &big, 70 * 1024),
            // Not a signature layer.
            layer("text/plain", &payload, signature.payload.len()),
            // Claims fewer bytes than the blob holds: the read stops there.
            layer(simple_signing, &big, 100),
            layer(simple_signing, &payload, signature.payload.len()),
        ]),
    )
    .await?;
    let evidence = fixture.store.fetch("acme/shop", &subject.digest).await?;
    assert_eq!(
        evidence.signatures,
        std::slice::from_ref(&signature),
        "only the real signature is read"
    );
    verify_image_signature(&evidence.signatures[0], &subject, &[key.public_key()])?;

    // A manifest over the cap (a 300 KiB annotation) is refused whole, for good.
    let mut padded = layer(simple_signing, &payload, signature.payload.len());
    padded["annotations"]["padding"] = "p".repeat(300 * 1024).into();
    put_manifest(
        &registry,
        "acme/shop",
        &format!("sha256-{hex}.att"),
        &manifest(vec![padded]),
    )
    .await?;
    let refused = fixture.store.fetch("acme/shop", &subject.digest).await.unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
    assert_eq!(refused.metric_label(), "evidence_malformed");
    assert!(refused.to_string().contains("more than the 262144 read"), "{refused}");
    Ok(())
}
