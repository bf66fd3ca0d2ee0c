//! Evidence about images: who built a digest, from what, and whether its tests passed, in the
//! formats that independent verifiers read.
//!
//! - [`keys`]: ECDSA P-256 keys in PEM (cosign's default), the signing half from a file and the
//!   public half from the config repo;
//! - [`cosign`]: cosign's simple signing, a signature over the manifest digest and repository;
//! - [`statement`]: in-toto Statements with an SLSA Provenance v1 predicate (the builder) or a
//!   test-result predicate (the tester);
//! - [`dsse`]: the DSSE envelope that signs a statement;
//! - [`verify`]: pure verification, where every [`Refusal`] names the check that failed;
//! - [`store`]: attaching and fetching all of it in the registry, at cosign's tags
//!   (`sha256-<hex>.sig`, `sha256-<hex>.att`), with upload sessions opened ahead (`session`).
//!
//! The builder signs and attests what it pushes, the tester attests its verdict, and the
//! promoter fetches and verifies the evidence before it moves an environment to a digest.

pub mod cosign;
pub mod dsse;
mod error;
pub mod keys;
mod session;
pub mod statement;
pub mod store;
pub mod verify;

pub use cosign::{ImageSignature, Subject, sign_image, simple_signing_payload};
pub use dsse::{Envelope, EnvelopeSignature, IN_TOTO_PAYLOAD_TYPE, seal};
pub use error::EvidenceError;
pub use keys::{PublicKey, SigningKey};
pub use statement::{
    BATON_BUILD_TYPE, BaseImageRecord, BuildRecord, ResourceDescriptor, SLSA_PROVENANCE_V1, STATEMENT_V1, Statement,
    StepRecord, TEST_RESULT_V0_1, TestOutcome, TestRecord, provenance, test_result,
};
pub use store::{Evidence, EvidenceStore};
pub use verify::{
    ProvenanceRequirement, Refusal, check_provenance, check_test_result, open_envelope, verify_image_signature,
};

#[cfg(test)]
mod tests;
