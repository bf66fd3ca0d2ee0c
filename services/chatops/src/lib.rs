//! `baton-chatops` is Baton's chat-ops bot, Slack-compatible. People approve releases from chat:
//! it receives signed slash commands (`/baton approve <release>`, …) on `POST /slack/commands`
//! and clicks on the Approve/Decline buttons of approval messages on `POST /slack/interactions`,
//! verifies each request with the Slack signing secret (HMAC-SHA256, replays refused), finds the
//! person the Slack user is in `people.yaml` (the config repo's, the one place chat ids are
//! mapped), and forwards the intent to the promoter's commands (`baton.cmd.promoter.<verb>`),
//! signed with the bot's own SSH key and naming the person and the Slack user id, so the
//! promoter can check that this bot may speak for that person through that chat id. It answers
//! in chat with the outcome. Its stage (durable
//! consumer `chatops`) posts approval requests and release news to an incoming webhook; a chat
//! outage delays those posts (retried with backoff) but never a release, because no other
//! stage waits for this consumer.

pub mod app;
pub mod commands;
pub mod config;
pub mod inbound;
pub mod messages;
pub mod mrkdwn;
pub mod outbound;
pub mod people;
pub mod signature;

pub use app::{Application, SERVICE, StartError};
