//! One TLS crypto provider per process. Baton puts every TLS user (async-nats, kube, reqwest,
//! git2's https via its own stack aside) on rustls with aws-lc-rs; installing it explicitly at
//! start avoids the panic rustls raises when two providers are compiled in and none is chosen.

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
