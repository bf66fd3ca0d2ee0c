//! `baton-builder`: commit → daemonless OCI image in a registry.
pub mod image;
