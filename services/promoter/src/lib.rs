//! `baton-promoter` is Baton's release manager. It turns a successful test run into a
//! *release* (id = the `chainId`), and moves releases through the ordered environments of
//! `environments.yaml` in the config repo under each environment's policy: promote at once
//! (`auto`), or ask for approvals (`manual`: quorum, allowed approvers, no self-approval,
//! expiry), after a soak time in the previous environment and outside freeze windows, unless
//! the environment is pinned or the release quarantined.
//!
//! Every promotion, rollback and pin is a commit to the config repo (the app's manifests with
//! images pinned by digest, plus `.baton-release.yaml`), pushed fast-forward only, one
//! environment at a time (a lease in JetStream KV), and announced as `environment.modified` for
//! the deployer. When the deployer reports a release healthy the next environment is
//! evaluated; when it reports a failed rollout the promoter rolls the environment back to its
//! last healthy release, quarantines the failed one and pins the environment. An environment
//! may require evidence of the image (signatures, provenance, a passing test attestation, read
//! from the registry and verified with the config repo's keys) before any commit moves it.
//!
//! Operators (the `baton` CLI, the chat-ops bot) send commands by NATS request/reply on
//! `baton.cmd.promoter.<verb>`: approve, decline, promote, rollback, pin, unpin, mark-bad.

pub mod advance;
pub mod app;
pub mod approvals;
pub mod clock;
pub mod commands;
pub mod configrepo;
pub mod error;
pub mod evidence;
pub mod gates;
pub mod handler;
pub mod identity;
pub mod manager;
pub mod policy;
pub mod rebuild;
pub mod release;
pub mod render;
pub mod state;
pub mod timers;
pub mod write;

pub use app::{Application, SERVICE, STAGE, StartError};
