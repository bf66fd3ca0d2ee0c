//! The bot's stage (durable consumer `chatops`): approval requests and release news posted to
//! the Slack incoming webhook. A failed post (non-2xx, network, timeout) is transient — the
//! runner retries with backoff, then dead-letters. No other stage waits for this consumer, so a
//! chat outage delays messages, never a release.

use std::sync::Arc;
use std::time::Duration;

use baton_kit::provision;
use baton_kit::secret::Secret;
use baton_kit::{Handler, HandlerError, Incoming, Outgoing};
use baton_schemas::EventType;

use crate::messages;

/// The event types the bot posts about: those its provisioned consumer filters, as
/// [`provision::CHATOPS`] lists them.
pub const HANDLES: &[EventType] = provision::CHATOPS.handles;

/// The stage handler.
#[derive(Debug, Clone)]
pub struct ChatStage {
    /// Posts to Slack.
    pub http: reqwest::Client,
    /// The incoming webhook (a secret: it holds a token; never logged).
    pub webhook: Arc<Secret>,
    /// Longest one post may take.
    pub timeout: Duration,
}

impl Handler for ChatStage {
    #[tracing::instrument(skip_all, fields(event.id = %event.id(), event.type = %event.event_type, chain.id = event.chain_id().unwrap_or("")))]
    async fn handle(&self, event: Arc<Incoming>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(message) = messages::for_event(event.event_type, &event.cdevent)
            .map_err(|e| HandlerError::permanent("invalid_input", e))?
        else {
            return Ok(Vec::new());
        };
        let url = std::str::from_utf8(self.webhook.expose())
            .map_err(|_| HandlerError::permanent("invalid_config", "the incoming-webhook URL is not UTF-8"))?;
        let response = self
            .http
            .post(url)
            .timeout(self.timeout)
            .json(&message)
            .send()
            .await
            // `without_url`: the URL holds the webhook's token.
            .map_err(|e| {
                HandlerError::transient("chat_unreachable", format!("chat is unreachable: {}", e.without_url()))
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(HandlerError::transient(
                "chat_refused",
                format!("chat answered {status} to the incoming webhook; retrying"),
            ));
        }
        tracing::info!("posted to chat");
        Ok(Vec::new())
    }
}
