//! `baton-deployer` applies releases to Kubernetes. On each `environment.modified` that changes
//! manifests (a promotion or a rollback) it reads the environment's folder from the config repo
//! at the promotion's commit, makes sure the namespace exists, server-side applies every object
//! as field manager `baton` (all checked by a dry run first, so a rejected release leaves nothing
//! half-applied), labels them with app, environment and release, prunes this app's objects the
//! release no longer has, and watches the rollout until it is healthy or has failed
//! (`ProgressDeadlineExceeded`, crash loops, image pull errors, timeout).
//!
//! It reports `service.deployed` (first time), `service.upgraded`, `service.rolledback` (a
//! rollback), or `baton-deployment.failed` with the reason and the failing pods; progress as
//! `baton-deployment.started`; and `baton-deployment.superseded` when a newer promotion of the
//! same environment took over. One rollout per app and namespace at a time (a lease in KV).
//!
//! Beside the stage it keeps checking that the cluster follows the config repo ([`detect`],
//! decided by [`drift`]): the live objects of every app it applied are compared with the
//! manifests of that environment's config commit, on a watch and in a periodic full pass; a
//! drift is reported once as `baton-environment.drifted`, its end as `baton-environment.synced`,
//! and the environment's `drift: heal` re-applies the config commit (a heal that does not end the
//! drift is reported as `baton-environment.unhealed`). An operator's `sync` or
//! `restore` (`environment.modified` with those actions) is applied like a promotion and reported
//! as `baton-environment.synced`.

pub mod app;
pub mod cluster;
pub mod detect;
pub mod drift;
pub mod error;
pub mod handler;
pub mod manifests;
pub mod rollout;

pub use app::{Application, SERVICE, STAGE, StartError};
