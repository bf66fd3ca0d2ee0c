//! `baton-schemas` is the contract every Baton service is built against, and nothing else:
//! the catalog of event types Baton emits or consumes (with their CDEvents type strings and
//! versions), the CDEvent envelope that travels as CloudEvent `data`, the payloads Baton carries
//! in `customData` and in its own extension events, the NATS subjects events live on, the typed
//! configuration files operators write, and the JSON Schemas generated from all of them into
//! `schemas/json/`.
//!
//! The crate is types-only: it depends on nothing async, so any tool can use it to read Baton's
//! event log. The services build on it through `baton-kit`.

pub mod catalog;
pub mod cdevent;
pub mod commands;
pub mod config;
pub mod drift;
pub mod environments;
pub mod extensions;
pub mod generate;
pub mod payloads;
pub mod people;
pub mod pipeline;
pub mod release;
pub mod subjects;
pub mod userfile;
pub mod validate;

pub use catalog::{EventType, Vocabulary};
pub use cdevent::{CdEvent, Context, EmbeddedLink, Subject};
pub use validate::{SchemaError, validate_event};
