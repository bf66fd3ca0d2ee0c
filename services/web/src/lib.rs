//! `baton-web` is Baton's read-only web UI and its JSON API. It shows what the event log, the
//! promoter's state and the log store already hold: the environment matrix (which release of
//! each app runs where, healthy or not, pinned, quarantined, frozen, waiting for approval or
//! held), each release's page (its events as a timeline, its changelog, its manifests against
//! each environment's, its image layers against the previous release's, its build and test logs,
//! its approvals), the event log with filters and live updates, and DORA metrics.
//!
//! It builds its view incrementally ([`view`]): an ordered consumer replays the events stream
//! from its first message and then follows it, and a watch follows the promoter's keys and the
//! deployer's drift records ([`follow`]); the same consumer feeds the DORA ledger ([`dora`]); no request re-reads the
//! stream. Pages are rendered on the server ([`pages`],
//! askama templates escaped by default, SVG charts made on the server by [`chart`]), with one small script for live updates
//! ([`live`], server-sent events). It changes nothing: every method but GET is refused, and the
//! buttons to act stay in chat and the CLI.

pub mod api;
pub mod app;
pub mod chart;
pub mod config;
pub mod diff;
pub mod dora;
pub mod follow;
pub mod http;
pub mod layers;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod pages;
pub mod query;
pub mod release;
pub mod shared;
pub mod view;

pub use app::{Application, SERVICE};
