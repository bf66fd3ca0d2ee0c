//! The builder's events: `build.queued`, `build.started`, `build.finished`,
//! `artifact.packaged`, `artifact.published` and `artifact.signed` (CDEvents 0.5.1), each following the
//! `change.merged` that caused it, in the same release (`chainId`), with ids derived from it so
//! a redelivered push never emits twice.

use baton_kit::{Incoming, Outgoing};
use baton_schemas::EventType;
use baton_schemas::payloads::{BuildData, ImageInfo, Outcome, SignedData};
use serde_json::json;

/// The build's subject id: one build per pushed commit event.
pub fn build_id(incoming: &Incoming) -> String {
    format!("build-{}", incoming.derive_id("build"))
}

fn event(
    incoming: &Incoming,
    ty: EventType,
    label: &str,
    subject: &str,
    content: serde_json::Value,
    data: &BuildData,
) -> Outgoing {
    let e = incoming
        .follow_up(ty, label, subject, content)
        .and_then(|e| e.with_custom_data(data))
        .expect("builder events serialize");
    Outgoing::new(incoming.app.clone(), e)
}

/// `build.queued`: the push was accepted for building.
pub fn queued(incoming: &Incoming, data: &BuildData) -> Outgoing {
    event(
        incoming,
        EventType::BuildQueued,
        "build.queued",
        &build_id(incoming),
        json!({}),
        data,
    )
}

/// `build.started`: the source is checked out and the steps begin.
pub fn started(incoming: &Incoming, data: &BuildData) -> Outgoing {
    event(
        incoming,
        EventType::BuildStarted,
        "build.started",
        &build_id(incoming),
        json!({}),
        data,
    )
}

/// `build.finished`, with `artifactId` set when an image was published.
pub fn finished(incoming: &Incoming, data: &BuildData) -> Outgoing {
    let content = match &data.image {
        Some(image) if data.outcome == Some(Outcome::Success) => json!({"artifactId": image.purl}),
        _ => json!({}),
    };
    event(
        incoming,
        EventType::BuildFinished,
        "build.finished",
        &build_id(incoming),
        content,
        data,
    )
}

/// `artifact.packaged`: the image exists (subject id: its purl), built from the commit.
pub fn packaged(incoming: &Incoming, data: &BuildData, image: &ImageInfo, source: &str) -> Outgoing {
    let content = json!({"change": {"id": data.commit, "source": source}});
    event(
        incoming,
        EventType::ArtifactPackaged,
        "artifact.packaged",
        &image.purl,
        content,
        data,
    )
}

/// `artifact.published`: the image is in the registry, pinned by digest.
pub fn published(incoming: &Incoming, data: &BuildData, image: &ImageInfo) -> Outgoing {
    event(
        incoming,
        EventType::ArtifactPublished,
        "artifact.published",
        &image.purl,
        json!({}),
        data,
    )
}

/// `artifact.signed`: the image's signature and provenance are in the registry (subject id: its
/// purl, as `artifact.published`'s); `signature` is the cosign signature, base64, and
/// `customData` names the key and the `.sig` and `.att` manifests.
pub fn signed(incoming: &Incoming, data: &SignedData, signature: &str) -> Outgoing {
    let e = incoming
        .follow_up(
            EventType::ArtifactSigned,
            "artifact.signed",
            &data.image.purl,
            json!({"signature": signature}),
        )
        .and_then(|e| e.with_custom_data(data))
        .expect("builder events serialize");
    Outgoing::new(incoming.app.clone(), e)
}
