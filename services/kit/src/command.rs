//! The client of the promoter's operator commands (`baton.cmd.promoter.<verb>`), used by the
//! CLI and the chat-ops bot alike: it serialises the [`CommandRequest`], waits at most a
//! timeout for the reply, tells "no promoter is running" apart from "it did not answer in
//! time", and decodes the [`CommandReply`]. What the caller shows the person is its own.

use std::time::Duration;

use baton_schemas::commands::{CommandReply, CommandRequest, PROMOTER, Verb};
use baton_schemas::subjects;

/// Why a command got no reply the caller can use.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Nothing subscribes to the command's subject.
    #[error("no promoter is running to answer")]
    NoPromoter,
    /// The promoter did not answer within the timeout.
    #[error("the promoter did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The request could not be sent or its reply not received.
    #[error("the promoter did not answer: {0}")]
    Request(#[source] async_nats::client::RequestError),
    /// The reply is not a command reply.
    #[error("the promoter's answer is not a command reply: {0}")]
    Reply(#[source] serde_json::Error),
}

/// Sends promoter commands over one NATS connection.
#[derive(Debug, Clone)]
pub struct CommandClient {
    client: async_nats::Client,
    timeout: Duration,
}

impl CommandClient {
    /// Commands over `client`, each waiting at most `timeout` for its reply.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// Sends `request` as `verb` and returns the promoter's reply, accepted or refused.
    ///
    /// # Errors
    /// [`CommandError`] when no reply arrives or it cannot be read.
    pub async fn send(&self, verb: Verb, request: &CommandRequest) -> Result<CommandReply, CommandError> {
        use async_nats::client::RequestErrorKind;
        let body = serde_json::to_vec(request).expect("a command request serializes");
        let subject = subjects::command_subject(PROMOTER, verb.as_str());
        // The request carries the timeout itself: the connection's own request timeout (10 s
        // unless configured) would otherwise cut a longer wait short. The outer timeout bounds
        // the send as well, should the connection be stuck.
        let sent = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(self.timeout));
        let message = match tokio::time::timeout(self.timeout, self.client.send_request(subject, sent)).await {
            Ok(Ok(message)) => message,
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => return Err(CommandError::NoPromoter),
            Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => return Err(CommandError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(CommandError::Request(e)),
            Err(_) => return Err(CommandError::Timeout(self.timeout)),
        };
        serde_json::from_slice(&message.payload).map_err(CommandError::Reply)
    }
}
