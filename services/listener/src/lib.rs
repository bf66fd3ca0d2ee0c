//! `baton-listener` is Baton's front door. It receives signed push webhooks from GitHub,
//! GitLab, Gitea/Forgejo, Bitbucket Cloud and any HMAC-signing sender on
//! `POST /webhooks/<provider>`, or polls plain git remotes, and turns every push to a tracked
//! branch into one `dev.cdevents.change.merged.0.3.0` event — the start of a release, with a
//! fresh release id (`chainId`). It answers 2xx only once JetStream has acknowledged the event,
//! derives the event id from the host's delivery id so a redelivered webhook never starts a
//! second pipeline, and claims each released commit per ref in `baton-state`, so a later push of
//! the same commit (a replay under a new delivery id, a force-push back) starts none either.

pub mod app;
pub mod config;
pub mod poll;
pub mod providers;
pub mod push;
pub mod webhook;

pub use app::{Application, SERVICE, StartError};
