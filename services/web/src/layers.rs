//! An image's layers against the previous release's, read from the registry through oci-client
//! (as the evidence store reads it). Manifests are addressed by digest, so what was read once
//! is kept (up to `CACHE`, 512, images): a release page reads the registry the first time only.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use baton_kit::secret::Secret;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Serialize;
use serde_json::Value;

use crate::view::Image;

/// How many images' layer lists are kept.
const CACHE: usize = 512;
/// The largest manifest read.
const MANIFEST_LIMIT: usize = 1024 * 1024;
/// Most image indexes followed from an image to its manifest (an index of indexes is legal,
/// a long chain is not something a build pushes).
const MAX_INDEX_DEPTH: usize = 4;

/// Manifests and indexes the web reads.
const MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// One layer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

/// The release's layers against the previous release's.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LayerComparison {
    /// The release compared with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Each of the release's layers, `shared` with the previous image or `new`.
    pub layers: Vec<ComparedLayer>,
    /// The previous image's layers this one no longer has.
    pub removed: Vec<Layer>,
}

/// A layer and whether the previous image had it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComparedLayer {
    /// The layer.
    #[serde(flatten)]
    pub layer: Layer,
    /// `shared` or `new`.
    pub status: &'static str,
}

/// Why layers could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    /// The image is in another registry than the one configured.
    #[error("the image is in {image}, not in the configured registry {configured}")]
    OtherRegistry {
        /// The image's registry.
        image: String,
        /// `registry.address`.
        configured: String,
    },
    /// The registry failed or refused.
    #[error("the registry could not be read ({0})")]
    Registry(String),
    /// The manifest is not one the web reads.
    #[error("the image's manifest cannot be read: {0}")]
    Malformed(String),
}

/// Layer lists by image digest, and the digests in the order they were read (the oldest go first).
type Cache = (HashMap<String, Vec<Layer>>, VecDeque<String>);

/// Reads image manifests from one registry.
pub struct Layers {
    address: String,
    auth: RegistryAuth,
    client: Client,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layers")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Layers {
    /// The registry at `address`, over HTTPS unless `insecure`, with basic authentication when
    /// both `username` and `password` are given.
    pub fn new(address: &str, insecure: bool, username: Option<String>, password: Option<&Secret>) -> Self {
        baton_kit::tls::install_crypto_provider();
        let auth = match (username, password) {
            (Some(user), Some(password)) => {
                RegistryAuth::Basic(user, String::from_utf8_lossy(password.expose()).into_owned())
            }
            _ => RegistryAuth::Anonymous,
        };
        let plain_http = if insecure { vec![address.to_owned()] } else { Vec::new() };
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http),
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(20)),
            ..ClientConfig::default()
        });
        Self {
            address: address.to_owned(),
            auth,
            client,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// `image`'s layers against `previous`'s (named `previous_id`).
    ///
    /// # Errors
    /// [`LayersError`] when either manifest cannot be read.
    pub async fn compare(
        &self,
        image: &Image,
        previous: Option<(&str, &Image)>,
    ) -> Result<LayerComparison, LayersError> {
        let ours = self.layers(image).await?;
        let theirs = match previous {
            Some((_, image)) => self.layers(image).await?,
            None => Vec::new(),
        };
        Ok(LayerComparison {
            previous: previous.map(|(id, _)| id.to_owned()),
            layers: ours
                .iter()
                .map(|layer| ComparedLayer {
                    layer: layer.clone(),
                    status: if theirs.iter().any(|l| l.digest == layer.digest) {
                        "shared"
                    } else {
                        "new"
                    },
                })
                .collect(),
            removed: theirs
                .into_iter()
                .filter(|l| !ours.iter().any(|o| o.digest == l.digest))
                .collect(),
        })
    }

    async fn layers(&self, image: &Image) -> Result<Vec<Layer>, LayersError> {
        if image.registry != self.address {
            return Err(LayersError::OtherRegistry {
                image: image.registry.clone(),
                configured: self.address.clone(),
            });
        }
        if let Some(layers) = self.cache.lock().ok().and_then(|c| c.0.get(&image.digest).cloned()) {
            return Ok(layers);
        }
        let mut digest = image.digest.clone();
        let mut indexes_followed = 0;
        // An index: the first platform's manifest (Baton's builder pushes single manifests).
        let layers = loop {
            let manifest = self.manifest(&image.repository, &digest).await?;
            if let Some(first) = manifest
                .get("manifests")
                .and_then(Value::as_array)
                .and_then(|m| m.first())
            {
                // Whoever can push to the registry could chain indexes: follow a few at most.
                indexes_followed += 1;
                if indexes_followed > MAX_INDEX_DEPTH {
                    return Err(LayersError::Malformed(format!(
                        "more than {MAX_INDEX_DEPTH} image indexes in a row"
                    )));
                }
                match first.get("digest").and_then(Value::as_str) {
                    Some(next) if next != digest => {
                        digest = next.to_owned();
                        continue;
                    }
                    _ => return Err(LayersError::Malformed("an index without a manifest".to_owned())),
                }
            }
            break manifest
                .get("layers")
                .and_then(Value::as_array)
                .ok_or_else(|| LayersError::Malformed("no layers".to_owned()))?
                .iter()
                .map(|l| Layer {
                    digest: l.get("digest").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    size: l.get("size").and_then(Value::as_u64).unwrap_or_default(),
                    media_type: l
                        .get("mediaType")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                })
                .collect::<Vec<_>>();
        };
        if let Ok(mut cache) = self.cache.lock() {
            let (map, order) = &mut *cache;
            if map.insert(image.digest.clone(), layers.clone()).is_none() {
                order.push_back(image.digest.clone());
            }
            while order.len() > CACHE {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Ok(layers)
    }

    async fn manifest(&self, repository: &str, digest: &str) -> Result<Value, LayersError> {
        let reference = Reference::with_digest(self.address.clone(), repository.to_owned(), digest.to_owned());
        let (body, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, MEDIA_TYPES)
            .await
            .map_err(|e| LayersError::Registry(baton_kit::oci::describe(&e).0))?;
        if body.len() > MANIFEST_LIMIT {
            return Err(LayersError::Malformed(format!(
                "{} bytes, more than the {MANIFEST_LIMIT} read",
                body.len()
            )));
        }
        serde_json::from_slice(&body).map_err(|e| LayersError::Malformed(e.to_string()))
    }
}
