//! `baton-kit` is the runtime every Baton service shares, so none of them re-implements it:
//!
//! - [`service`]: the [`service::Service`] trait every service implements, its `main`, start-up
//!   ([`service::Runtime`]) and serving with one shutdown;
//! - [`error`]: the one failure shape (transient or permanent, a metric label, the source);
//! - [`command`], [`signing`]: the client of the promoter's operator commands (CLI and
//!   chat-ops) and their SSH signatures;
//! - [`codec`]: CloudEvents over NATS in binary mode (structured mode accepted on input);
//! - [`fabric`]: connecting to NATS, the JetStream topology's streams (events stream,
//!   dead-letter stream, KV buckets, log object store), and publishing with `Nats-Msg-Id`;
//! - [`provision`]: the admin's provisioning step (streams, buckets and every stage's durable
//!   consumer) and the start-time check every service makes instead of provisioning;
//! - [`events`]: turning a CDEvent into a published, validated, traced CloudEvent;
//! - [`runner`]: the stage runner — durable pull consumer, validation, idempotency, retries
//!   with backoff, dead letters, heartbeats, deadlines and graceful drain;
//! - [`telemetry`], [`metrics`], [`health`]: logs, traces, `/healthz`, `/readyz`, `/metrics`;
//! - [`steps`], [`source`]: the step executor (on the host, in a sandbox, or as Pods in build
//!   namespaces), and every service's git access (cached mirrors, checkouts, a folder's files at
//!   a commit, commit walks, `ls-remote`, credentials);
//! - [`evidence`]: image signatures and attestations (cosign's format, in-toto statements in
//!   DSSE envelopes: SLSA provenance, test results), kept in the registry beside the image and
//!   verified before promotion; [`oci`]: what a registry's error means;
//! - [`log`]: reading the event log (replayed, then followed) as the CLI and the web UI do;
//! - [`dora`]: DORA's four key metrics per app and environment, computed from the events;
//! - [`lease`]: leases in JetStream KV (one promotion per environment, one rollout per
//!   namespace);
//! - [`settings`], [`shutdown`], [`tls`]: typed config with exit code 64, SIGTERM/SIGINT, and
//!   the one rustls crypto provider.

pub mod codec;
pub mod command;
pub mod dora;
pub mod error;
pub mod events;
pub mod evidence;
pub mod fabric;
pub mod health;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod oci;
pub mod provision;
pub mod runner;
pub mod secret;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod signing;
pub mod source;
pub mod steps;
pub mod telemetry;
pub mod tls;

pub use error::{ErrorKind, HandlerError};
pub use events::Outgoing;
pub use runner::{Handler, Incoming, Stage, StageRunner};
