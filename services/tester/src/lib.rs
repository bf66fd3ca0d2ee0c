//! `baton-tester` runs the declared tests against the built commit and its image. On each
//! `artifact.published` it checks out the same commit from the shared cached mirror, runs the
//! test steps of `.baton.yaml` with the kit's step executor (`BATON_IMAGE`, `BATON_COMMIT`,
//! `BATON_RELEASE` in their environment; per-step and per-suite timeouts; independent steps in
//! parallel), reads their JUnit reports with bounded memory, and emits
//! `testsuiterun.started` and `testsuiterun.finished` with the outcome, the counts and the
//! failed cases, linked to the artifact and in the same release. Each verdict is attested on
//! the image too: an in-toto test-result attestation, signed with the tester's key, appended to
//! the image's `.att` in the registry.

pub mod app;
pub mod config;
pub mod evidence;
pub mod handler;
pub mod junit;

pub use app::{Application, SERVICE, StartError};
