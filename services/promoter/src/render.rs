//! Rendering an app's manifests for an environment: every container image of the app is pinned
//! to the release's digest, so what the config repo holds is exactly what runs.
//!
//! A container's `image` is the app's when its name (without tag or digest) is the built
//! image's `<registry>/<repository>` or just `<repository>`; e.g. for
//! `127.0.0.1:5000/baton/acme_shop` both `127.0.0.1:5000/baton/acme_shop:latest` and
//! `baton/acme_shop` become `127.0.0.1:5000/baton/acme_shop@sha256:…`. Other images (sidecars,
//! databases) are left as written. Manifests that name no image of the app are refused: the
//! release would not change what runs.

use baton_schemas::payloads::ImageInfo;
use yaml_serde::Value;

/// One rendered manifest file, relative to the environment's app folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Path relative to the manifests directory, e.g. `deployment.yaml`.
    pub path: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Why manifests could not be rendered. Always the user's to fix: permanent.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file is not text.
    #[error("{path}: not valid YAML: {source}")]
    NotText {
        /// The file.
        path: String,
        /// Where it stops being UTF-8.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A file is not YAML.
    #[error("{path}: not valid YAML: {source}")]
    Yaml {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: yaml_serde::Error,
    },
    /// No manifest file at all.
    #[error("the manifests directory `{dir}` holds no .yaml, .yml or .json file")]
    Empty {
        /// The directory.
        dir: String,
    },
    /// No container runs the app's image.
    #[error(
        "no container in `{dir}` runs the app's image: write `image: {repository}` (any tag) in the app's containers so Baton can pin it to the release's digest"
    )]
    NoAppImage {
        /// The directory.
        dir: String,
        /// The image name to write.
        repository: String,
    },
}

/// Renders the manifest files of `dir` (path relative to `dir`, bytes), pinning the app's images
/// to `image`. Files come out in path order; documents keep their order and keys.
///
/// # Errors
/// [`RenderError`]: not YAML, no manifest, or no container running the app's image.
pub fn render(dir: &str, files: &[(String, Vec<u8>)], image: &ImageInfo) -> Result<Vec<RenderedFile>, RenderError> {
    let mut files: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(p, _)| baton_schemas::release::is_manifest_file(p))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    if files.is_empty() {
        return Err(RenderError::Empty { dir: dir.to_owned() });
    }
    let names = AppImageNames::new(image);
    let mut pinned = 0usize;
    let mut rendered = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let path_in_dir = || format!("{dir}/{path}");
        let yaml_error = |source| RenderError::Yaml {
            path: path_in_dir(),
            source,
        };
        let text = std::str::from_utf8(bytes).map_err(|source| RenderError::NotText {
            path: path_in_dir(),
            source,
        })?;
        let mut out = String::new();
        for document in yaml_serde::Deserializer::from_str(text) {
            let mut value: Value = serde::Deserialize::deserialize(document).map_err(yaml_error)?;
            if value.is_null() {
                continue;
            }
            pinned += pin_images(&mut value, &names, &image.reference, false);
            if !out.is_empty() {
                out.push_str("---\n");
            }
            out.push_str(&yaml_serde::to_string(&value).map_err(yaml_error)?);
        }
        rendered.push(RenderedFile {
            path: path.clone(),
            bytes: out.into_bytes(),
        });
    }
    if pinned == 0 {
        return Err(RenderError::NoAppImage {
            dir: dir.to_owned(),
            repository: format!("{}/{}", image.registry, image.repository),
        });
    }
    Ok(rendered)
}

/// The names an app's image may be written as.
struct AppImageNames {
    full: String,
    short: String,
}

impl AppImageNames {
    fn new(image: &ImageInfo) -> Self {
        Self {
            full: format!("{}/{}", image.registry, image.repository),
            short: image.repository.clone(),
        }
    }

    fn matches(&self, reference: &str) -> bool {
        let name = image_name(reference);
        name == self.full || name == self.short
    }
}

/// An image reference without its digest and tag (a `:` after the last `/` starts the tag; a
/// `:` before it is a registry port).
fn image_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

/// Walks a manifest, replacing the `image` of containers (`containers`, `initContainers`,
/// `ephemeralContainers` lists, at any depth: pods, pod templates, job templates) that run the
/// app. Returns how many were pinned.
fn pin_images(value: &mut Value, names: &AppImageNames, pinned_ref: &str, in_container_list: bool) -> usize {
    match value {
        Value::Mapping(map) => {
            let mut count = 0;
            if in_container_list
                && let Some(Value::String(image)) = map.get_mut("image")
                && names.matches(image)
            {
                *image = pinned_ref.to_owned();
                count += 1;
            }
            for (key, child) in map.iter_mut() {
                let is_list = matches!(
                    key.as_str(),
                    Some("containers" | "initContainers" | "ephemeralContainers")
                );
                count += pin_images(child, names, pinned_ref, is_list);
            }
            count
        }
        Value::Sequence(items) => items
            .iter_mut()
            .map(|item| pin_images(item, names, pinned_ref, in_container_list))
            .sum(),
        Value::Tagged(tagged) => pin_images(&mut tagged.value, names, pinned_ref, in_container_list),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageInfo {
        ImageInfo {
            registry: "127.0.0.1:5000".into(),
            repository: "baton/acme_shop".into(),
            tag: "abc".into(),
            digest: "sha256:1111".into(),
            reference: "127.0.0.1:5000/baton/acme_shop@sha256:1111".into(),
            purl: "pkg:oci/acme_shop@sha256%3A1111".into(),
            uploaded_bytes: 0,
        }
    }

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  template:
    spec:
      initContainers:
        - name: migrate
          image: baton/acme_shop:latest
      containers:
        - name: shop
          image: 127.0.0.1:5000/baton/acme_shop:v1
        - name: cache
          image: redis:7
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop
data:
  image: baton/acme_shop
";

    #[test]
    fn pins_every_container_of_the_app_and_nothing_else() {
        let files = vec![
            ("deployment.yaml".to_owned(), DEPLOYMENT.as_bytes().to_vec()),
            ("README.md".to_owned(), b"not a manifest".to_vec()),
        ];
        let out = render("deploy/k8s", &files, &image()).unwrap();
        assert_eq!(out.len(), 1);
        let text = String::from_utf8(out[0].bytes.clone()).unwrap();
        assert_eq!(
            text.matches("127.0.0.1:5000/baton/acme_shop@sha256:1111").count(),
            2,
            "{text}"
        );
        assert!(text.contains("image: redis:7"), "{text}");
        assert!(
            text.contains("image: baton/acme_shop\n"),
            "a ConfigMap value is not a container: {text}"
        );
        assert!(text.contains("---\n"), "both documents are kept: {text}");
        // Rendering is deterministic: the same input gives the same bytes.
        assert_eq!(render("deploy/k8s", &files, &image()).unwrap(), out);
    }

    #[test]
    fn refuses_manifests_without_the_app_image_or_invalid_yaml() {
        let other = vec![(
            "d.yaml".to_owned(),
            b"kind: Pod\nspec:\n  containers:\n    - image: nginx\n".to_vec(),
        )];
        let err = render("k8s", &other, &image()).unwrap_err();
        assert!(
            err.to_string().contains("image: 127.0.0.1:5000/baton/acme_shop"),
            "{err}"
        );
        let broken = vec![("d.yaml".to_owned(), b"kind: [unclosed\n".to_vec())];
        assert!(matches!(
            render("k8s", &broken, &image()),
            Err(RenderError::Yaml { .. })
        ));
        let binary = vec![("d.yaml".to_owned(), vec![0xff, 0xfe])];
        assert!(matches!(
            render("k8s", &binary, &image()),
            Err(RenderError::NotText { .. })
        ));
        assert!(matches!(render("k8s", &[], &image()), Err(RenderError::Empty { .. })));
    }

    #[test]
    fn image_names_drop_tags_and_digests_but_keep_ports() {
        assert_eq!(image_name("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b");
        assert_eq!(image_name("127.0.0.1:5000/a/b@sha256:ff"), "127.0.0.1:5000/a/b");
        assert_eq!(image_name("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(image_name("redis:7"), "redis");
    }
}
