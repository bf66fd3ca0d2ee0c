//! Who sends a command. A command is accepted only when its `Baton-Signature` header is an SSH
//! signature (SSHSIG, namespace `baton-command`) over its exact body bytes, by a key that
//! `people.yaml` at the config repo's head lists for the person the body names as `actor` — or
//! for a bot that `people.yaml` lets speak for that person through the chat id the body names;
//! when its `issuedAt` is within [`COMMAND_WINDOW`] of now; and when its `nonce` was never seen
//! before (nonces are remembered in the `baton-handled` bucket, far longer than the window).
//! Every other command is refused with the check that failed, and recorded.
//!
//! `people.yaml` is read at the config repo's head for every command, so a key removed from it
//! stops working at the next command. An invalid file is refused with the field at fault (a
//! `baton-policy.rejected` event naming `people.yaml`), and the last valid one stays in force.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use baton_kit::signing::{self, VerifyError};
use baton_schemas::commands::CommandRequest;
use baton_schemas::people::{PEOPLE_FILE, PeopleFile, Signer};
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use crate::error::PromoteError;
use crate::manager::{Outcome, ReleaseManager};
use crate::state::{self, PolicyRecord};

/// How far a command's `issuedAt` may be from the promoter's clock, either way.
pub const COMMAND_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The channel of a command a person signed themselves (the CLI, or any tool with their key).
pub const CLI: &str = "cli";

/// A command's verified sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The person, as `people.yaml` names them (the command's `actor`).
    pub person: String,
    /// The fingerprint of the key that signed, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// `cli` when the person signed, else the bot's name.
    pub channel: String,
}

/// Why a command's sender is not proven. Each names the check that failed.
#[derive(Debug)]
pub enum Unproven {
    /// No `Baton-Signature` header.
    Unsigned,
    /// A field the check needs is missing or empty.
    Missing(&'static str),
    /// `issuedAt` too far from now.
    Stale {
        /// What the command says.
        issued_at: DateTime<Utc>,
        /// The promoter's clock.
        now: DateTime<Utc>,
    },
    /// The signature does not verify, or its key is listed for nobody.
    Signature(VerifyError),
    /// A listed key, but of someone other than the actor (and not a bot allowed to speak for
    /// them).
    NotTheActor {
        /// Whose key it is.
        signer: String,
        /// Who the command claims to be.
        actor: String,
    },
    /// A bot's key, but the bot may not speak for the actor through that chat id.
    BotMayNotSpeak {
        /// The bot.
        bot: String,
        /// The person claimed.
        actor: String,
        /// The chat id named (`None`: none).
        chat: Option<String>,
    },
    /// The nonce was used before.
    Replayed,
}

impl fmt::Display for Unproven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned => write!(
                f,
                "unsigned: the command has no {} header; sign it with your SSH key (`baton` does, with --key or ssh-agent)",
                signing::SIGNATURE_HEADER
            ),
            Self::Missing(field) => write!(f, "`{field}` is required in a signed command"),
            Self::Stale { issued_at, now } => write!(
                f,
                "stale: issuedAt {issued_at} is more than {} from the promoter's clock ({now}); send it again, freshly signed",
                humantime::format_duration(COMMAND_WINDOW)
            ),
            Self::Signature(VerifyError::UnknownKey { fingerprint, .. }) => write!(
                f,
                "signed by an unknown key {fingerprint}: add its public key (`ssh-keygen -y -f KEY`, or the .pub file) under your name's `keys` in people.yaml in the config repo"
            ),
            Self::Signature(e) => write!(f, "bad signature: {e}"),
            Self::NotTheActor { signer, actor } => {
                write!(f, "signed with {signer}'s key, but claims to be {actor}")
            }
            Self::BotMayNotSpeak { bot, actor, chat } => match chat {
                Some(chat) => write!(
                    f,
                    "the bot {bot} may not speak for {actor} through chat id {chat}: people.yaml must list {chat} under {actor}'s `chat` and {actor} (or `*`) under the bot's `speaks_for`"
                ),
                None => write!(
                    f,
                    "the bot {bot} speaks for {actor} without naming the chat user (chatId)"
                ),
            },
            Self::Replayed => write!(f, "replayed: this nonce was used before; sign a fresh command"),
        }
    }
}

impl Unproven {
    /// The failed check, as a short label for metrics and events.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::Missing(_) => "missing_field",
            Self::Stale { .. } => "stale",
            Self::Signature(e) => e.metric_label(),
            Self::NotTheActor { .. } => "not_the_actor",
            Self::BotMayNotSpeak { .. } => "bot_may_not_speak",
            Self::Replayed => "replayed_nonce",
        }
    }
}

impl ReleaseManager {
    /// `people.yaml` in force: the config repo's at its head when valid (an empty file when
    /// there is none: nobody may act), else the last valid one, with a `baton-policy.rejected`
    /// event naming the field at fault.
    ///
    /// # Errors
    /// Transient when the repo or the state cannot be read.
    pub(crate) async fn people(&self) -> Result<Outcome<PeopleFile>, PromoteError> {
        let repo = Arc::clone(&self.repo);
        let (commit, bytes) = self.blocking(move || Ok(repo.read_at_head(PEOPLE_FILE)?)).await?;
        let Some(bytes) = bytes else {
            return Ok(Outcome {
                value: PeopleFile::default(),
                events: Vec::new(),
            });
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match PeopleFile::parse(&text) {
            Ok(file) => {
                let last = self.state.get::<PolicyRecord>(state::PEOPLE_KEY).await?;
                if last.is_none_or(|l| l.value.commit != commit) {
                    self.state
                        .put(state::PEOPLE_KEY, &PolicyRecord { commit, text })
                        .await?;
                }
                Ok(Outcome {
                    value: file,
                    events: Vec::new(),
                })
            }
            Err(error) => {
                let last = self.state.get::<PolicyRecord>(state::PEOPLE_KEY).await?;
                tracing::error!(%error, commit, "people.yaml is invalid; keeping the last valid one");
                let event = self.policy_rejected(
                    "people-rejected",
                    PEOPLE_FILE,
                    &commit,
                    &error,
                    last.as_ref().map(|l| l.value.commit.clone()),
                );
                let value = last
                    .and_then(|l| PeopleFile::parse(&l.value.text).ok())
                    .unwrap_or_default();
                Ok(Outcome {
                    value,
                    events: vec![event],
                })
            }
        }
    }

    /// Proves who sent `body` (the command's exact bytes, parsed as `request`), signed as
    /// `header` says, against `people`, as of `now`; then spends its nonce.
    ///
    /// # Errors
    /// [`Unproven`] naming the check that failed; a store failure is transient and returned as
    /// [`PromoteError`] in the outer result.
    pub(crate) async fn authenticate(
        &self,
        people: &PeopleFile,
        body: &[u8],
        header: Option<&str>,
        request: &CommandRequest,
        now: DateTime<Utc>,
    ) -> Result<Result<Caller, Unproven>, PromoteError> {
        let caller = match prove(people, body, header, request, now) {
            Ok(caller) => caller,
            Err(unproven) => return Ok(Err(unproven)),
        };
        let nonce = request.nonce.as_deref().unwrap_or_default();
        let key = format!(
            "promoter.nonce.{}",
            hex::encode(&Sha256::digest(format!("{}\n{nonce}", caller.fingerprint).as_bytes())[..16])
        );
        match self.nonces.create(&key, now.to_rfc3339().into_bytes().into()).await {
            Ok(_) => Ok(Ok(caller)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Err(Unproven::Replayed)),
            Err(e) => Err(PromoteError::Nonces(e.to_string())),
        }
    }
}

/// The checks that need no store, in order: signed, fields present, fresh, a listed key, the
/// actor's (or a bot's allowed to speak for the actor through the chat id named).
fn prove(
    people: &PeopleFile,
    body: &[u8],
    header: Option<&str>,
    request: &CommandRequest,
    now: DateTime<Utc>,
) -> Result<Caller, Unproven> {
    let header = header.ok_or(Unproven::Unsigned)?;
    let issued_at = request.issued_at.ok_or(Unproven::Missing("issuedAt"))?;
    if request.nonce.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(Unproven::Missing("nonce"));
    }
    let window = chrono::Duration::from_std(COMMAND_WINDOW).unwrap_or(chrono::Duration::minutes(5));
    if issued_at < now - window || issued_at > now + window {
        return Err(Unproven::Stale { issued_at, now });
    }
    // Every key the file lists, with its owner: the signature says which one signed.
    let mut keys = Vec::new();
    let mut owners = Vec::new();
    for name in people.people.keys().chain(people.bots.keys()) {
        if let Some((signer, lines)) = people.signer(name) {
            for line in lines {
                if let Ok(key) = signing::parse_authorized_key(line) {
                    keys.push(key);
                    owners.push(signer);
                }
            }
        }
    }
    let verified = signing::verify(body, header, &keys).map_err(Unproven::Signature)?;
    let owner = keys
        .iter()
        .position(|k| k.key_data() == verified.key.key_data())
        .map(|i| owners[i])
        .expect("verify returns one of the keys it was given");
    let actor = request.actor.as_str();
    match owner {
        Signer::Person(person) if person == actor => Ok(Caller {
            person: person.to_owned(),
            fingerprint: verified.fingerprint,
            channel: CLI.to_owned(),
        }),
        Signer::Person(person) => Err(Unproven::NotTheActor {
            signer: person.to_owned(),
            actor: actor.to_owned(),
        }),
        Signer::Bot(bot) => match request.chat_id.as_deref() {
            Some(chat) if people.bot_speaks_for(bot, actor, chat) => Ok(Caller {
                person: actor.to_owned(),
                fingerprint: verified.fingerprint,
                channel: bot.to_owned(),
            }),
            chat => Err(Unproven::BotMayNotSpeak {
                bot: bot.to_owned(),
                actor: actor.to_owned(),
                chat: chat.map(str::to_owned),
            }),
        },
    }
}
