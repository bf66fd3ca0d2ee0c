//! Pulling a pod's images before anything runs: a failed pull shows `ErrImagePull`, then
//! `ImagePullBackOff`, and is tried again until it succeeds.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use super::PodContext;
use super::status::{Slot, State, record};
use crate::image::PulledImage;

/// Pause after a failed pull before `ImagePullBackOff` ends and the pull is tried again.
const PULL_BACK_OFF: Duration = Duration::from_secs(2);

impl PodContext<'_> {
    /// Every container's image, retried (`ErrImagePull`, `ImagePullBackOff`) until pulled.
    pub(super) async fn pull_all(&self, init: &[Container], main: &[Container]) -> HashMap<String, PulledImage> {
        let mut images: HashMap<String, PulledImage> = HashMap::new();
        let slots = init
            .iter()
            .enumerate()
            .map(|(i, c)| (Slot::Init(i), c))
            .chain(main.iter().enumerate().map(|(i, c)| (Slot::Main(i), c)));
        for (slot, container) in slots {
            let image = container.image.clone().unwrap_or_default();
            loop {
                if images.contains_key(&image) {
                    break;
                }
                match self.executor.images.pull(&image).await {
                    Ok(pulled) => {
                        images.insert(image.clone(), pulled);
                        break;
                    }
                    Err(error) => {
                        let message = error.to_string();
                        let waiting = |reason: &str| State::Waiting {
                            reason: reason.to_owned(),
                            message: Some(message.clone()),
                        };
                        self.reporter
                            .update(|state| record(state, slot).state = waiting("ErrImagePull"))
                            .await;
                        tokio::time::sleep(PULL_BACK_OFF).await;
                        self.reporter
                            .update(|state| record(state, slot).state = waiting("ImagePullBackOff"))
                            .await;
                        tokio::time::sleep(PULL_BACK_OFF).await;
                    }
                }
            }
        }
        images
    }
}
