//! What every service does at start, in one place: connect to NATS, provision the JetStream
//! topology, and set up metrics. A service's `Application::build` calls [`Runtime::start`].

use async_nats::Client;
use baton_schemas::config::CommonSettings;

use crate::fabric::{self, FabricError, Topology};
use crate::health::HealthState;
use crate::metrics::Metrics;

/// A started service's connection to the fabric.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The service's name, e.g. `baton-listener`; the NATS connection name and `service.name`.
    pub service: String,
    /// The NATS connection.
    pub client: Client,
    /// The provisioned streams, buckets and object store.
    pub topology: Topology,
    /// The service's metrics.
    pub metrics: Metrics,
}

impl Runtime {
    /// Connects (retrying up to `nats.connect_timeout`) and provisions the topology.
    ///
    /// # Errors
    /// When NATS cannot be reached or refuses the topology.
    pub async fn start(service: &str, settings: &CommonSettings) -> Result<Self, FabricError> {
        let client = fabric::connect(&settings.nats, service).await?;
        let topology = fabric::provision(&client, &settings.jetstream, settings.runner.remember_handled).await?;
        tracing::info!(nats = %settings.nats.url, stream = %settings.jetstream.events_stream, "connected and provisioned");
        Ok(Self {
            service: service.to_owned(),
            client,
            topology,
            metrics: Metrics::new(),
        })
    }

    /// What the operations endpoint needs.
    pub fn health_state(&self) -> HealthState {
        HealthState {
            client: self.client.clone(),
            events_stream: self.topology.settings.events_stream.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Flushes and drains the NATS connection: the last step of a graceful shutdown.
    pub async fn drain(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "draining the NATS connection failed");
        }
    }
}
