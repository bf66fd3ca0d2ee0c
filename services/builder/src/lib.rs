//! `baton-builder` turns a pushed commit into an immutable OCI image. On each
//! `change.merged` it fetches the exact commit into a cached mirror and a fresh workspace,
//! runs the build steps of the repository's `.baton.yaml` with the kit's step executor (clean
//! environment, rlimits, timeouts, live logs), assembles the image without a Docker daemon —
//! reproducible layers on a base reused by digest — and pushes it, tagged with the commit and
//! identified by its digest, then signs it and attests its SLSA provenance beside it in the
//! registry (cosign's `.sig` and `.att` tags). It emits `build.queued`, `build.started`,
//! `artifact.packaged`, `artifact.published`, `artifact.signed` and `build.finished`, all in the
//! release (`chainId`) of the push.

pub mod app;
pub mod config;
pub mod events;
pub mod evidence;
pub mod handler;
pub mod image;

pub use app::{Application, SERVICE, StartError};
