//! The client of the promoter's operator commands (`baton.cmd.promoter.<verb>`), used by the
//! CLI and the chat-ops bot alike: it serialises the [`CommandRequest`], waits at most a
//! timeout for the reply, tells "no promoter is running" apart from "it did not answer in
//! time", and decodes the [`CommandReply`]. What the caller shows the person is its own.
//!
//! With a [`Signer`] ([`CommandClient::with_signer`]) every command is signed (DESIGN.md §4,
//! "Signed commands"): the request gets `issuedAt` (now) and a fresh `nonce`, is serialised
//! once, and those exact bytes are both signed and sent, the signature in the
//! [`SIGNATURE_HEADER`] header.
//!
//! Each command is sent in a `send baton.cmd.promoter.<verb>` span (kind producer) whose
//! `traceparent` rides in the request's NATS headers: the promoter joins the release's trace and
//! links its work to this span, so the person's action shows in the release's timeline.

use std::time::Duration;

use baton_schemas::commands::{CommandReply, CommandRequest, PROMOTER, Verb};
use baton_schemas::subjects;
use chrono::{DateTime, Utc};

use tracing::Instrument;

use crate::signing::{SIGNATURE_HEADER, Signer, SigningError};
use crate::telemetry;

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
    /// The command could not be signed; nothing was sent.
    #[error("cannot sign the command: {0}")]
    Sign(#[source] SigningError),
}

/// Sends promoter commands over one NATS connection.
#[derive(Debug, Clone)]
pub struct CommandClient {
    client: async_nats::Client,
    timeout: Duration,
    /// Signs every command when set; the promoter refuses unsigned ones.
    signer: Option<Signer>,
}

impl CommandClient {
    /// Commands over `client`, each waiting at most `timeout` for its reply.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            signer: None,
        }
    }

    /// Signs every command with `signer`.
    #[must_use]
    pub fn with_signer(mut self, signer: Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The signer commands are signed with, if any.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// Sends `request` as `verb` and returns the promoter's reply, accepted or refused. With a
    /// signer, the request sent carries `issuedAt` (now) and a new `nonce` in place of its own.
    ///
    /// # Errors
    /// [`CommandError`] when the command cannot be signed, or no reply arrives or it cannot be
    /// read.
    pub async fn send(&self, verb: Verb, request: &CommandRequest) -> Result<CommandReply, CommandError> {
        use async_nats::client::RequestErrorKind;
        let (body, headers) = match &self.signer {
            None => (serde_json::to_vec(request).expect("a command request serializes"), None),
            Some(signer) => {
                // Signing through an agent is a blocking round trip on its socket.
                let (signer, request) = (signer.clone(), request.clone());
                let nonce = uuid::Uuid::new_v4().to_string();
                let signed = tokio::task::spawn_blocking(move || signed_command(&signer, request, Utc::now(), nonce))
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                    .map_err(CommandError::Sign)?;
                (signed.body, Some(signed.headers))
            }
        };
        let subject = subjects::command_subject(PROMOTER, verb.as_str());
        let span = telemetry::messaging_span(
            telemetry::Messaging::Send,
            &telemetry::Message {
                subject: &subject,
                id: request.request_id.as_deref(),
                release: request.release.as_deref(),
                app: request.app.as_deref(),
                environment: request.environment.as_deref(),
                ..telemetry::Message::default()
            },
        );
        let mut headers = headers.unwrap_or_default();
        for (name, value) in span.in_scope(telemetry::current_trace_headers) {
            headers.insert(name.as_str(), value.as_str());
        }
        // The request carries the timeout itself: the connection's own request timeout (10 s
        // unless configured) would otherwise cut a longer wait short. The outer timeout bounds
        // the send as well, should the connection be stuck.
        let sent = async_nats::Request::new()
            .payload(body.into())
            .headers(headers)
            .timeout(Some(self.timeout));
        let request = tokio::time::timeout(self.timeout, self.client.send_request(subject, sent)).instrument(span);
        let message = match request.await {
            Ok(Ok(message)) => message,
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => return Err(CommandError::NoPromoter),
            Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => return Err(CommandError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(CommandError::Request(e)),
            Err(_) => return Err(CommandError::Timeout(self.timeout)),
        };
        serde_json::from_slice(&message.payload).map_err(CommandError::Reply)
    }
}

/// A signed command as it goes on the wire.
#[derive(Debug)]
struct SignedCommand {
    /// The serialised request: the bytes signed, and the bytes sent.
    body: Vec<u8>,
    /// The [`SIGNATURE_HEADER`] over `body`.
    headers: async_nats::HeaderMap,
}

/// `request` with `issued_at` and `nonce`, serialised once and signed over those bytes.
fn signed_command(
    signer: &Signer,
    mut request: CommandRequest,
    issued_at: DateTime<Utc>,
    nonce: String,
) -> Result<SignedCommand, SigningError> {
    request.issued_at = Some(issued_at);
    request.nonce = Some(nonce);
    let body = serde_json::to_vec(&request).expect("a command request serializes");
    let signature = signer.sign(&body)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(SIGNATURE_HEADER, signature.as_str());
    Ok(SignedCommand { body, headers })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use ssh_key::PrivateKey;
    use ssh_key::private::{Ed25519Keypair, KeypairData};

    use super::*;
    use crate::signing;

    fn signer(seed: u8) -> Signer {
        let key = PrivateKey::new(KeypairData::from(Ed25519Keypair::from_seed(&[seed; 32])), "alice").unwrap();
        Signer::from_private_key(key).unwrap()
    }

    #[test]
    fn the_bytes_sent_are_the_bytes_signed_with_issued_at_and_nonce() {
        let alice = signer(7);
        let request = CommandRequest {
            actor: "alice".into(),
            release: Some("r1".into()),
            environment: Some("production".into()),
            // Filled anew for every send: a stale one in the caller's request is replaced.
            nonce: Some("old".into()),
            ..CommandRequest::default()
        };
        let now = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let signed = signed_command(&alice, request.clone(), now, "n-1".into()).unwrap();

        let header = signed
            .headers
            .get(SIGNATURE_HEADER)
            .expect("the signature header")
            .as_str();
        let verified = signing::verify(&signed.body, header, &[alice.public_key().clone()]).unwrap();
        assert_eq!(verified.fingerprint, alice.fingerprint());

        let sent: CommandRequest = serde_json::from_slice(&signed.body).unwrap();
        assert_eq!(
            sent,
            CommandRequest {
                issued_at: Some(now),
                nonce: Some("n-1".into()),
                ..request
            }
        );
        let json: serde_json::Value = serde_json::from_slice(&signed.body).unwrap();
        assert_eq!(json["issuedAt"], "2026-01-02T03:04:05Z");
        assert_eq!(json["nonce"], "n-1");

        // One byte more or less than what was signed does not verify.
        let mut other = signed.body.clone();
        other.push(b' ');
        assert!(signing::verify(&other, header, &[alice.public_key().clone()]).is_err());
    }
}
