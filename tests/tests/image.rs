//! Image assembly against a real registry (CNCF Distribution): what the builder pushes is read
//! back with skopeo, an independent client, and with the registry's own storage; reproducible
//! layers, skipped and mounted blobs, a real busybox base reused by digest, and every kind of
//! bad input or broken registry ending in a clear, classified error.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use baton_builder::image::{self, ImageError, ImageJob, PushedImage, Registry};
use baton_schemas::pipeline::{AddEntry, ImageSpec};
use baton_tests::registry::RegistryServer;
use serde_json::{Value, json};
use tempfile::TempDir;

const SOURCE_URL: &str = "https://git.example.com/acme/shop.git";
const FIRST_COMMIT: &str = "4f6c1d2e8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d";
const SECOND_COMMIT: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";
const REVISION_LABEL: &str = "org.opencontainers.image.revision";
const SOURCE_LABEL: &str = "org.opencontainers.image.source";

/// A registry, a client for it, and room for workspaces.
struct Fixture {
    server: RegistryServer,
    registry: Registry,
    dir: TempDir,
}

impl Fixture {
    fn start() -> Result<Self> {
        baton_kit::tls::install_crypto_provider();
        let server = RegistryServer::start()?;
        let registry = Registry::new(server.address(), true, None, None);
        Ok(Self {
            server,
            registry,
            dir: tempfile::tempdir()?,
        })
    }

    /// A fresh workspace directory named `name` holding `files` (`path`, content, mode).
    fn workspace(&self, name: &str, files: &[(&str, &str, u32)]) -> Result<PathBuf> {
        let workspace = self.dir.path().join(name);
        for (path, content, mode) in files {
            write(&workspace, path, content, *mode)?;
        }
        fs::create_dir_all(&workspace)?;
        Ok(workspace)
    }

    async fn push(
        &self,
        workspace: &Path,
        spec: &ImageSpec,
        commit: &str,
        repository: &str,
    ) -> Result<PushedImage, ImageError> {
        let job = ImageJob {
            spec,
            workspace,
            commit,
            source_url: SOURCE_URL,
            registry: &self.registry,
            repository,
        };
        image::assemble_and_push(&job).await
    }

    /// The manifest as stored, read by skopeo.
    fn manifest(&self, reference: &str) -> Result<Value> {
        Ok(self
            .server
            .skopeo_inspect(&format!("{}/{reference}", self.server.address()), true)?)
    }

    /// The image config, read by skopeo.
    fn config(&self, reference: &str) -> Result<Value> {
        Ok(self
            .server
            .skopeo_inspect(&format!("{}/{reference}", self.server.address()), false)?)
    }
}

fn write(workspace: &Path, path: &str, content: &str, mode: u32) -> Result<()> {
    let path = workspace.join(path);
    fs::create_dir_all(path.parent().context("a parent")?)?;
    fs::write(&path, content)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn add(from: &str, to: &str, mode: Option<&str>) -> AddEntry {
    AddEntry {
        from: from.into(),
        to: to.into(),
        mode: mode.map(Into::into),
    }
}

const SHOP_FILES: &[(&str, &str, u32)] = &[
    ("target/release/shop", "#!/bin/sh\necho shop\n", 0o755),
    ("static/index.html", "<h1>shop</h1>", 0o644),
    ("static/css/site.css", "body { color: black }", 0o644),
    ("README.md", "not in the image", 0o644),
];

fn shop_spec(base: &str) -> ImageSpec {
    ImageSpec {
        name: None,
        base: base.into(),
        add: vec![
            add("target/release/shop", "/app/shop", Some("0755")),
            add("static", "/app/static", None),
        ],
        entrypoint: vec!["/app/shop".into()],
        cmd: vec!["--port".into(), "8080".into()],
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        workdir: Some("/app".into()),
        user: Some("65532:65532".into()),
        expose: vec!["8080/tcp".into()],
        labels: BTreeMap::from([("org.opencontainers.image.title".into(), "shop".into())]),
    }
}

/// Bytes a push of `manifest` (read back from the registry) must have sent when every blob
/// was new: its layers from `first_layer` on, its config and itself (compact JSON has the same
/// length whatever the key order).
fn expected_upload(manifest: &Value, first_layer: usize) -> Result<u64> {
    let layers = manifest["layers"].as_array().context("layers")?;
    let layer_bytes: u64 = layers[first_layer..]
        .iter()
        .filter_map(|layer| layer["size"].as_u64())
        .sum();
    let config_bytes = manifest["config"]["size"].as_u64().context("config size")?;
    Ok(layer_bytes + config_bytes + serde_json::to_vec(manifest)?.len() as u64)
}

/// `tar -tv` of a layer fetched straight from the registry's HTTP API.
async fn list_layer(server: &RegistryServer, repository: &str, digest: &str) -> Result<String> {
    let url = format!("{}/v2/{repository}/blobs/{digest}", server.url());
    let blob = reqwest::get(&url).await?.error_for_status()?.bytes().await?;
    let mut tar = Command::new("tar")
        .args(["-tvz", "--numeric-owner", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("GNU tar")?;
    tar.stdin.take().context("stdin")?.write_all(&blob)?;
    let output = tar.wait_with_output()?;
    if !output.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
async fn scratch_image_is_pushed_and_read_back_by_another_client() -> Result<()> {
    let fixture = Fixture::start()?;
    let workspace = fixture.workspace("ws", SHOP_FILES)?;

    let pushed = fixture
        .push(&workspace, &shop_spec("scratch"), FIRST_COMMIT, "acme/shop")
        .await?;

    let address = fixture.server.address();
    assert_eq!(pushed.tag, FIRST_COMMIT);
    assert!(
        pushed.digest.starts_with("sha256:") && pushed.digest.len() == 71,
        "{}",
        pushed.digest
    );
    assert_eq!(pushed.reference, format!("{address}/acme/shop@{}", pushed.digest));
    assert_eq!(
        pushed.purl,
        format!(
            "pkg:oci/shop@{}?repository_url={address}/acme/shop&tag={FIRST_COMMIT}",
            pushed.digest
        )
    );
    assert_eq!(pushed.info().purl, pushed.purl);
    assert_eq!((pushed.skipped_blobs, pushed.mounted_blobs), (0, 0));

    let manifest = fixture.manifest(&format!("acme/shop:{FIRST_COMMIT}"))?;
    assert_eq!(
        fixture.manifest(&format!("acme/shop@{}", pushed.digest))?,
        manifest,
        "the tag names the digest"
    );
    assert_eq!(manifest["mediaType"], image::MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["mediaType"], image::CONFIG_MEDIA_TYPE);
    assert_eq!(manifest["config"]["digest"], pushed.config_digest.as_str());
    let layers = manifest["layers"].as_array().context("layers")?;
    assert_eq!(layers.len(), 2, "one layer per `add` entry");
    assert_eq!(layers[0]["mediaType"], image::LAYER_MEDIA_TYPE);
    assert_eq!(layers[0]["digest"], pushed.layers[0].digest.as_str());
    assert_eq!(pushed.uploaded_bytes, expected_upload(&manifest, 0)?);
    assert_eq!(fixture.server.blob_count(), 4, "two layers, config, manifest");

    let config = fixture.config(&format!("acme/shop:{FIRST_COMMIT}"))?;
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    assert_eq!(config["created"], image::CREATED);
    assert_eq!(config["config"]["Entrypoint"], json!(["/app/shop"]));
    assert_eq!(config["config"]["Cmd"], json!(["--port", "8080"]));
    assert_eq!(config["config"]["Env"], json!(["RUST_LOG=info"]));
    assert_eq!(config["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(config["config"]["WorkingDir"], "/app");
    assert_eq!(config["config"]["User"], "65532:65532");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels[REVISION_LABEL], FIRST_COMMIT);
    assert_eq!(labels[SOURCE_LABEL], SOURCE_URL);
    assert_eq!(labels["org.opencontainers.image.title"], "shop");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(2));

    // One layer per `add` entry, each with its parent directories.
    let binary = list_layer(&fixture.server, "acme/shop", &pushed.layers[0].digest).await?;
    let names = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter_map(|line| line.split_whitespace().last())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(names(&binary), ["app/", "app/shop"], "{binary}");
    let statics = list_layer(&fixture.server, "acme/shop", &pushed.layers[1].digest).await?;
    assert_eq!(
        names(&statics),
        [
            "app/",
            "app/static/",
            "app/static/css/",
            "app/static/css/site.css",
            "app/static/index.html"
        ],
        "{statics}"
    );
    let listing = format!("{binary}{statics}");
    for line in listing.lines() {
        assert!(
            line.contains(" 0/0 ") && line.contains("1970-01-01 00:00"),
            "root-owned, mtime 0: {line}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("app/shop")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-r--r--") && l.ends_with("index.html")),
        "{listing}"
    );
    Ok(())
}

#[tokio::test]
async fn same_inputs_give_the_same_digest_and_the_second_push_uploads_nothing() -> Result<()> {
    let fixture = Fixture::start()?;
    let first_checkout = fixture.workspace("checkout-1", SHOP_FILES)?;
    // Another checkout of the same commit: other mtimes, a group-writable umask.
    let second_checkout = fixture.workspace("checkout-2", &[])?;
    for (path, content, mode) in SHOP_FILES {
        write(&second_checkout, path, content, mode | 0o020)?;
        fs::File::options()
            .write(true)
            .open(second_checkout.join(path))?
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890))?;
    }
    let spec = shop_spec("scratch");

    let first = fixture.push(&first_checkout, &spec, FIRST_COMMIT, "acme/shop").await?;
    let blobs = fixture.server.blob_count();
    let second = fixture.push(&second_checkout, &spec, FIRST_COMMIT, "acme/shop").await?;

    assert_eq!(second.digest, first.digest);
    assert_eq!(second.layers, first.layers);
    assert_eq!(second.config_digest, first.config_digest);
    assert_eq!(second.uploaded_bytes, 0, "every blob and the tag were already there");
    assert_eq!(second.skipped_blobs, 3, "two layers and config");
    assert_eq!(fixture.server.blob_count(), blobs);
    Ok(())
}

#[tokio::test]
async fn a_new_commit_uploads_only_the_new_layer_config_and_manifest() -> Result<()> {
    let fixture = Fixture::start()?;
    fixture.server.push_busybox_base("acme/base", "1")?;
    let base = format!("{}/acme/base:1", fixture.server.address());
    let spec = shop_spec(&base);
    let workspace = fixture.workspace("ws", SHOP_FILES)?;
    let first = fixture.push(&workspace, &spec, FIRST_COMMIT, "acme/shop").await?;
    assert_eq!(first.mounted_blobs, 1, "the base layer came from acme/base");
    let blobs = fixture.server.blob_count();

    write(&workspace, "static/index.html", "<h1>shop, now with a sale</h1>", 0o644)?;
    let second = fixture.push(&workspace, &spec, SECOND_COMMIT, "acme/shop").await?;

    assert_ne!(second.digest, first.digest);
    assert_eq!(second.layers[0], first.layers[0], "same base layer");
    assert_eq!(second.layers[1], first.layers[1], "same layer for the unchanged binary");
    assert_ne!(
        second.layers[2].digest, first.layers[2].digest,
        "new layer for the changed static files"
    );
    assert_eq!(
        (second.skipped_blobs, second.mounted_blobs),
        (2, 0),
        "the base layer and the binary's layer were skipped"
    );
    let manifest = fixture.manifest(&format!("acme/shop:{SECOND_COMMIT}"))?;
    assert_eq!(
        second.uploaded_bytes,
        expected_upload(&manifest, 2)?,
        "new layer + config + manifest"
    );
    assert!(second.uploaded_bytes < first.layers[0].size, "far less than the base");
    assert_eq!(fixture.server.blob_count(), blobs + 3, "new layer, config and manifest");
    let config = fixture.config(&format!("acme/shop@{}", second.digest))?;
    assert_eq!(config["config"]["Labels"][REVISION_LABEL], SECOND_COMMIT);
    // The first commit's image is still there, unchanged.
    assert_eq!(
        fixture.config(&format!("acme/shop:{FIRST_COMMIT}"))?["config"]["Labels"][REVISION_LABEL],
        FIRST_COMMIT
    );
    Ok(())
}

#[tokio::test]
async fn a_busybox_base_is_reused_by_digest() -> Result<()> {
    let fixture = Fixture::start()?;
    let base_digest = fixture.server.push_busybox_base("base/busybox", "1.36")?;
    let base_manifest = fixture.manifest(&format!("base/busybox@{base_digest}"))?;
    let base_config = fixture.config(&format!("base/busybox@{base_digest}"))?;
    let base_layer = &base_manifest["layers"][0];
    let base_name = format!("{}/base/busybox:1.36", fixture.server.address());
    let blobs = fixture.server.blob_count();
    let workspace = fixture.workspace("ws", SHOP_FILES)?;

    let pushed = fixture
        .push(&workspace, &shop_spec(&base_name), FIRST_COMMIT, "acme/shop")
        .await?;

    assert_eq!(pushed.layers.len(), 3, "the base layer, then one per `add` entry");
    assert_eq!(
        pushed.layers[0].digest,
        base_layer["digest"].as_str().context("digest")?
    );
    assert_eq!(
        (pushed.mounted_blobs, pushed.skipped_blobs),
        (1, 0),
        "mounted, not uploaded"
    );
    let manifest = fixture.manifest(&format!("acme/shop:{FIRST_COMMIT}"))?;
    assert_eq!(
        pushed.uploaded_bytes,
        expected_upload(&manifest, 1)?,
        "no base bytes uploaded"
    );
    assert_eq!(fixture.server.blob_count(), blobs + 4, "the base layer is stored once");
    assert_eq!(manifest["layers"][0], *base_layer);
    assert_eq!(manifest["layers"][1]["digest"], pushed.layers[1].digest.as_str());
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.name"],
        base_name.as_str()
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.digest"],
        base_digest.as_str()
    );

    let config = fixture.config(&format!("acme/shop@{}", pushed.digest))?;
    assert_eq!(config["rootfs"]["diff_ids"][0], base_config["rootfs"]["diff_ids"][0]);
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        config["config"]["Env"],
        json!([base_config["config"]["Env"][0], "RUST_LOG=info"])
    );
    assert_eq!(config["config"]["Cmd"], json!(["--port", "8080"]));
    assert_eq!(config["config"]["Labels"][REVISION_LABEL], FIRST_COMMIT);
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.title"], "shop",
        "the spec wins"
    );
    assert_eq!(
        config["history"].as_array().map(Vec::len),
        Some(3),
        "the base's entry and one per `add` entry"
    );

    // Pushed into the base's own repository, the base layer is simply there (blobs are
    // per repository: the app layer and config are uploaded again).
    let beside = fixture
        .push(&workspace, &shop_spec(&base_name), FIRST_COMMIT, "base/busybox")
        .await?;
    assert_eq!((beside.skipped_blobs, beside.mounted_blobs), (1, 0), "the base layer");
    assert_eq!(beside.uploaded_bytes, pushed.uploaded_bytes);
    assert_eq!(beside.digest, pushed.digest, "the same image in another repository");
    Ok(())
}

#[tokio::test]
async fn a_base_in_another_registry_is_copied() -> Result<()> {
    let fixture = Fixture::start()?;
    let elsewhere = RegistryServer::start()?;
    elsewhere.push_busybox_base("library/busybox", "1.36")?;
    let base = format!("{}/library/busybox:1.36", elsewhere.address());
    let base_manifest = elsewhere.skopeo_inspect(&base, true)?;
    let workspace = fixture.workspace("ws", SHOP_FILES)?;

    // Without being told, the builder speaks HTTPS to the base's registry, which fails.
    let error = match fixture
        .push(&workspace, &shop_spec(&base), FIRST_COMMIT, "acme/shop")
        .await
    {
        Ok(pushed) => bail!("pulled over plain HTTP without being allowed to: {}", pushed.reference),
        Err(error) => error,
    };
    assert!(matches!(error, ImageError::BaseUnavailable { .. }), "{error:?}");

    let registry =
        Registry::new(fixture.server.address(), true, None, None).with_insecure_registries(&[elsewhere.address()]);
    let job = ImageJob {
        spec: &shop_spec(&base),
        workspace: &workspace,
        commit: FIRST_COMMIT,
        source_url: SOURCE_URL,
        registry: &registry,
        repository: "acme/shop",
    };
    let pushed = image::assemble_and_push(&job).await?;

    assert_eq!((pushed.mounted_blobs, pushed.skipped_blobs), (0, 0));
    let manifest = fixture.manifest(&format!("acme/shop@{}", pushed.digest))?;
    assert_eq!(
        manifest["layers"][0], base_manifest["layers"][0],
        "the base layer, by the same digest"
    );
    assert_eq!(
        pushed.uploaded_bytes,
        expected_upload(&manifest, 0)?,
        "the base layer was copied"
    );
    assert_eq!(
        fixture.server.blob_count(),
        5,
        "base layer, two app layers, config, manifest"
    );
    Ok(())
}

/// Asserts `result` is a permanent error whose message contains every one of `needles`.
fn assert_permanent(result: Result<PushedImage, ImageError>, needles: &[&str]) -> ImageError {
    let error = match result {
        Ok(pushed) => panic!("expected an error, pushed {}", pushed.reference),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(!error.is_transient(), "permanent: {message}");
    for needle in needles {
        assert!(message.contains(needle), "`{needle}` missing from: {message}");
    }
    error
}

#[tokio::test]
async fn bad_files_are_refused_before_anything_is_pushed() -> Result<()> {
    let fixture = Fixture::start()?;
    let workspace = fixture.workspace("ws", SHOP_FILES)?;
    write(fixture.dir.path(), "outside/secret.txt", "secret", 0o644)?;
    symlink("../outside/secret.txt", workspace.join("secret-link"))?;
    symlink("../../outside", workspace.join("static/escape"))?;
    let with_add = |entries: Vec<AddEntry>| ImageSpec {
        add: entries,
        ..shop_spec("scratch")
    };

    let missing = fixture
        .push(
            &workspace,
            &with_add(vec![add("target/release/shopp", "/app/shop", None)]),
            FIRST_COMMIT,
            "acme/shop",
        )
        .await;
    let error = assert_permanent(missing, &["image.add[0].from", "`target/release/shopp` does not exist"]);
    assert!(matches!(error, ImageError::SourceMissing { .. }), "{error:?}");

    let traversal = fixture
        .push(
            &workspace,
            &with_add(vec![add("../outside/secret.txt", "/s", None)]),
            FIRST_COMMIT,
            "acme/shop",
        )
        .await;
    let error = assert_permanent(traversal, &["image.add[0].from", "outside the workspace", "`..`"]);
    assert!(matches!(error, ImageError::PathOutsideWorkspace { .. }), "{error:?}");

    let absolute = fixture
        .push(
            &workspace,
            &with_add(vec![add("/etc/passwd", "/s", None)]),
            FIRST_COMMIT,
            "acme/shop",
        )
        .await;
    assert_permanent(absolute, &["`/etc/passwd` is outside the workspace", "absolute"]);

    let through_symlink = fixture
        .push(
            &workspace,
            &with_add(vec![add("secret-link", "/s", None)]),
            FIRST_COMMIT,
            "acme/shop",
        )
        .await;
    assert_permanent(through_symlink, &["`secret-link` is outside the workspace", "symlink"]);

    let symlink_in_tree = fixture
        .push(
            &workspace,
            &with_add(vec![add("static", "/srv", None)]),
            FIRST_COMMIT,
            "acme/shop",
        )
        .await;
    let error = assert_permanent(
        symlink_in_tree,
        &["static/escape", "../../outside", "outside the added tree"],
    );
    assert!(matches!(error, ImageError::SymlinkOutsideTree { .. }), "{error:?}");

    let relative_to = fixture
        .push(
            &workspace,
            &with_add(vec![add("README.md", "app/README.md", None)]),
            FIRST_COMMIT,
            "acme/shop",
        )
        .await;
    assert_permanent(
        relative_to,
        &[
            "image.add[0].to",
            "must be an absolute path in the image, e.g. `/app/README.md`",
        ],
    );

    assert_eq!(fixture.server.blob_count(), 0, "nothing reached the registry");
    Ok(())
}

#[tokio::test]
async fn a_base_that_does_not_exist_is_a_permanent_error() -> Result<()> {
    let fixture = Fixture::start()?;
    let workspace = fixture.workspace("ws", SHOP_FILES)?;
    let base = format!("{}/base/nope:1.0", fixture.server.address());

    let missing = fixture
        .push(&workspace, &shop_spec(&base), FIRST_COMMIT, "acme/shop")
        .await;
    let error = assert_permanent(missing, &["cannot pull the base image", &base, "UNKNOWN", "image.base"]);
    assert!(matches!(error, ImageError::BaseUnavailable { .. }), "{error:?}");

    let malformed = fixture
        .push(&workspace, &shop_spec("Not A Reference!"), FIRST_COMMIT, "acme/shop")
        .await;
    let error = assert_permanent(
        malformed,
        &["image.base", "`Not A Reference!` is not a valid image reference"],
    );
    assert!(matches!(error, ImageError::InvalidReference { .. }), "{error:?}");

    let bad_repository = fixture
        .push(&workspace, &shop_spec("scratch"), FIRST_COMMIT, "Acme/Shop")
        .await;
    assert_permanent(
        bad_repository,
        &["repository: `Acme/Shop` is not a repository name", "lower-case"],
    );
    assert_eq!(fixture.server.blob_count(), 0);
    Ok(())
}

#[tokio::test]
async fn a_registry_that_is_down_is_a_transient_error() -> Result<()> {
    let mut fixture = Fixture::start()?;
    let workspace = fixture.workspace("ws", SHOP_FILES)?;
    let base = format!("{}/base/busybox:1", fixture.server.address());
    fixture.server.push_busybox_base("base/busybox", "1")?;
    fixture.server.kill()?;

    let error = match fixture
        .push(&workspace, &shop_spec("scratch"), FIRST_COMMIT, "acme/shop")
        .await
    {
        Ok(pushed) => bail!("pushed {} to a registry that is down", pushed.reference),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(error.is_transient(), "{message}");
    assert!(matches!(error, ImageError::Push { .. }), "{error:?}");
    assert!(
        message.contains(&fixture.server.address()) && message.contains("retried"),
        "{message}"
    );
    assert!(
        message.to_lowercase().contains("connect"),
        "says what failed: {message}"
    );

    let error = match fixture
        .push(&workspace, &shop_spec(&base), FIRST_COMMIT, "acme/shop")
        .await
    {
        Ok(pushed) => bail!("pulled a base from a registry that is down for {}", pushed.reference),
        Err(error) => error,
    };
    assert!(error.is_transient(), "{error}");
    assert!(matches!(error, ImageError::BaseUnavailable { .. }), "{error:?}");
    assert!(error.to_string().contains(&base), "{error}");
    Ok(())
}
