//! Release and run ids as the command line takes them. Each is checked before anything is sent
//! (a release id is a UUID; a run id is `build-` or `test-` and a UUID), and a unique prefix of
//! one, such as the first eight characters `baton events` shows, is resolved to the full id
//! against the ids Baton has recorded. A signed command therefore always carries the id in
//! full: the promoter never guesses.

use std::collections::BTreeSet;

use crate::CliError;

/// The fewest characters of a UUID taken as a prefix: fewer would match half the log.
pub const MIN_PREFIX: usize = 4;

/// What a UUID looks like, character by character (`x` a hex digit).
const UUID_TEMPLATE: &str = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";

/// The kinds of run, as their ids begin.
const RUN_KINDS: [&str; 2] = ["build-", "test-"];

/// Which kind of id a text names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A release (the chain id every event of it carries).
    Release,
    /// A build or test run (its logs are stored under it).
    Run,
}

impl IdKind {
    fn noun(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Run => "run",
        }
    }

    /// What an id of this kind looks like, and where the user finds one.
    fn looks_like(self) -> &'static str {
        match self {
            Self::Release => {
                "a release id is a UUID such as 5cc719e8-2b0f-5d3e-9a41-0c6f1e2d3b4a, or a unique prefix of one of at least 4 characters (`baton events` shows the first 8, `baton releases <app>` the whole id)"
            }
            Self::Run => {
                "a run id is build- or test- and a UUID, such as test-5cc719e8-2b0f-5d3e-9a41-0c6f1e2d3b4a, or a unique prefix of one with at least 4 characters of the UUID (`baton events` shows them as `run test-5cc719e8`)"
            }
        }
    }

    /// Where the full ids of this kind are listed, for a prefix that matches none.
    fn where_listed(self) -> &'static str {
        match self {
            Self::Release => "`baton releases <app>` lists an app's releases",
            Self::Run => "run ids are in build and test events (`baton events --type build.finished`)",
        }
    }
}

/// An id the user typed, checked: the whole id, or the start of one to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// A whole id: used as it is.
    Full(String),
    /// The start of an id: [`resolve`] finds which.
    Prefix(String),
}

impl Typed {
    /// Checks `text` as an id of `kind`.
    ///
    /// # Errors
    /// [`CliError::Usage`] saying what an id looks like, when `text` is not an id of `kind` or
    /// the start of one of at least [`MIN_PREFIX`] characters of its UUID.
    pub fn parse(kind: IdKind, text: &str) -> Result<Self, CliError> {
        let lowered = text.trim().to_ascii_lowercase();
        let uuid_part = match kind {
            IdKind::Release => Some(lowered.as_str()),
            IdKind::Run => RUN_KINDS.iter().find_map(|k| lowered.strip_prefix(k)),
        };
        let refused = || CliError::Usage(format!("`{text}` is not a {} id: {}", kind.noun(), kind.looks_like()));
        let uuid_part = uuid_part.ok_or_else(refused)?;
        if uuid_part.len() < MIN_PREFIX || !fits_uuid(uuid_part) {
            return Err(refused());
        }
        Ok(if uuid_part.len() == UUID_TEMPLATE.len() {
            Self::Full(lowered)
        } else {
            Self::Prefix(lowered)
        })
    }
}

/// Whether `text` is a UUID or the start of one, in lower case.
fn fits_uuid(text: &str) -> bool {
    text.len() <= UUID_TEMPLATE.len()
        && text.bytes().zip(UUID_TEMPLATE.bytes()).all(|(c, t)| match t {
            b'x' => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            _ => c == t,
        })
}

/// The one id of `known` that starts with `prefix`.
///
/// # Errors
/// [`CliError::NotFound`] when none does, [`CliError::Usage`] naming them when several do.
pub fn resolve<'a>(kind: IdKind, prefix: &str, known: impl IntoIterator<Item = &'a str>) -> Result<String, CliError> {
    let matching: BTreeSet<&str> = known.into_iter().filter(|id| id.starts_with(prefix)).collect();
    let mut each = matching.iter();
    match (each.next(), each.next()) {
        (Some(id), None) => Ok((*id).to_owned()),
        (None, _) => Err(CliError::NotFound(format!(
            "no {} id starts with `{prefix}`; {}",
            kind.noun(),
            kind.where_listed()
        ))),
        (Some(_), Some(_)) => Err(CliError::Usage(format!(
            "`{prefix}` is the start of {} {} ids: {}; type more of the one you mean",
            matching.len(),
            kind.noun(),
            matching.iter().copied().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// A run id as one-line output shows it: its kind and the first eight characters of its UUID
/// (`test-5cc719e8`), a unique prefix [`Typed::parse`] takes back.
pub fn short_run(run: &str) -> String {
    RUN_KINDS
        .iter()
        .find_map(|k| {
            run.strip_prefix(k)
                .map(|rest| format!("{k}{}", baton_kit::log::short(rest)))
        })
        .unwrap_or_else(|| run.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "5cc719e8-2b0f-5d3e-9a41-0c6f1e2d3b4a";

    #[test]
    fn a_whole_id_is_used_as_it_is_and_a_start_is_resolved() {
        assert_eq!(
            Typed::parse(IdKind::Release, RELEASE).ok(),
            Some(Typed::Full(RELEASE.into()))
        );
        assert_eq!(
            Typed::parse(IdKind::Release, "5CC719E8").ok(),
            Some(Typed::Prefix("5cc719e8".into())),
            "upper case is the same id"
        );
        assert_eq!(
            Typed::parse(IdKind::Release, "5cc719e8-2b").ok(),
            Some(Typed::Prefix("5cc719e8-2b".into()))
        );
        let run = format!("test-{RELEASE}");
        assert_eq!(Typed::parse(IdKind::Run, &run).ok(), Some(Typed::Full(run.clone())));
        assert_eq!(
            Typed::parse(IdKind::Run, "build-5cc7").ok(),
            Some(Typed::Prefix("build-5cc7".into()))
        );
    }

    #[test]
    fn what_is_no_id_is_refused_saying_what_an_id_looks_like() {
        for (kind, text) in [
            (IdKind::Release, "5cc"),
            (IdKind::Release, "no-such-release"),
            (IdKind::Release, "5cc719e82b0f"),
            (IdKind::Release, &format!("{RELEASE}0")),
            (IdKind::Release, "test-5cc719e8"),
            (IdKind::Run, "5cc719e8"),
            (IdKind::Run, "build-5cc"),
            (IdKind::Run, "test-cli"),
        ] {
            let Err(CliError::Usage(message)) = Typed::parse(kind, text) else {
                panic!("{text} is refused");
            };
            assert!(message.contains(text), "{message}");
            assert!(message.contains("UUID"), "{message}");
        }
    }

    #[test]
    fn a_prefix_resolves_to_the_one_id_it_starts_or_names_the_candidates() {
        let known = [
            RELEASE,
            "5cc7aa00-0000-5000-8000-000000000000",
            "0badf00d-0000-5000-8000-000000000000",
        ];
        assert_eq!(resolve(IdKind::Release, "5cc719", known).ok().as_deref(), Some(RELEASE));
        let Err(CliError::Usage(ambiguous)) = resolve(IdKind::Release, "5cc7", known) else {
            panic!("ambiguous");
        };
        assert!(
            ambiguous.contains(RELEASE) && ambiguous.contains("5cc7aa00-") && !ambiguous.contains("0badf00d"),
            "{ambiguous}"
        );
        assert!(matches!(
            resolve(IdKind::Release, "ffff", known),
            Err(CliError::NotFound(_))
        ));
        assert_eq!(
            resolve(IdKind::Release, "5cc719", [RELEASE, RELEASE]).ok().as_deref(),
            Some(RELEASE),
            "the same id seen twice is one id"
        );
    }

    #[test]
    fn a_short_run_id_is_a_prefix_that_parses_back() {
        let run = format!("build-{RELEASE}");
        assert_eq!(short_run(&run), "build-5cc719e8");
        assert_eq!(
            Typed::parse(IdKind::Run, &short_run(&run)).ok(),
            Some(Typed::Prefix("build-5cc719e8".into()))
        );
    }
}
