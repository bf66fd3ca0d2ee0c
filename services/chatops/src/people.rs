//! Who a chat user is. `people.yaml` at the config repo's head is the one place that maps chat
//! ids to people (`people.<name>.chat`), and the promoter checks every command the bot sends
//! against that same file, so the bot reads it there too, through the kit's git [`Sources`].
//!
//! A read is used for `people.refresh` (30 s by default). A chat id the read does not list
//! makes the bot look at the head again at once, so a chat id just added works at the next
//! request. Looking again costs one `ls-remote`; the file is read only when the head moved, and
//! concurrent look-ups share one look, whether it succeeds or fails. An invalid file is refused (its field at fault logged)
//! and the last valid one stays in use, as the promoter does; a missing file maps nobody. When
//! the repository cannot be reached, the last read stays in use. The bot's mapping only fills
//! the command's `actor`: a stale one cannot widen anything, because the promoter judges the
//! command against the file at the head.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton_kit::source::{SourceError, Sources};
use baton_schemas::people::{PEOPLE_FILE, PeopleFile};
use baton_schemas::userfile::FileError;

/// Why nobody can be looked up. Transient: the user is told to try again.
#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    /// The config repo cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The branch is not in the repository.
    #[error("{url} has no branch {branch} (people.branch)")]
    NoBranch {
        /// The repository.
        url: String,
        /// The branch configured.
        branch: String,
    },
    /// `people.yaml` at the head is invalid, and no valid one was read before.
    #[error(transparent)]
    Invalid(#[from] FileError),
    /// The blocking git task failed.
    #[error("the git task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl PeopleError {
    /// Label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Source(_) | Self::Task(_) => "git",
            Self::NoBranch { .. } => "no_branch",
            Self::Invalid(_) => "invalid_people",
        }
    }
}

/// One read of the file.
#[derive(Debug, Clone)]
struct Read {
    /// The commit it was read at.
    head: String,
    /// Its content, or the last valid one when the file at `head` is invalid.
    people: Arc<PeopleFile>,
    /// When the head was last looked at successfully: the read is used for `refresh` from then.
    at: Instant,
    /// When the head was last looked at, successfully or not: look-ups that waited for that
    /// look share its outcome instead of each asking the repository again.
    looked: Instant,
}

/// `people.yaml` of one branch of the config repo, read at its head and cached.
#[derive(Debug)]
pub struct People {
    sources: Sources,
    repository: String,
    branch: String,
    refresh: Duration,
    last: Mutex<Option<Arc<Read>>>,
    /// Held while the head is looked at, so concurrent look-ups share one read.
    reading: tokio::sync::Mutex<()>,
}

impl People {
    /// The file of `branch` in `repository`, read through `sources`, each read used for
    /// `refresh`.
    pub fn new(sources: Sources, repository: String, branch: String, refresh: Duration) -> Self {
        Self {
            sources,
            repository,
            branch,
            refresh,
            last: Mutex::new(None),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn last(&self) -> Option<Arc<Read>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The person whose chat ids include `chat`, as the file says (`None`: nobody's).
    ///
    /// # Errors
    /// [`PeopleError`] when the file cannot be read and was never read before.
    pub async fn person(&self, chat: &str) -> Result<Option<String>, PeopleError> {
        let asked = Instant::now();
        if let Some(read) = self.last()
            && read.at.elapsed() < self.refresh
            && let Some(person) = read.people.by_chat(chat)
        {
            return Ok(Some(person.to_owned()));
        }
        let reading = self.reading.lock().await;
        // Another look-up may have looked at the head while this one waited.
        let read = match self.last() {
            Some(read) if read.looked >= asked => read,
            last => match self.look_again(last.as_deref()).await {
                Ok(read) => read,
                Err(e) => match last {
                    Some(last) => {
                        tracing::warn!(error = %e, commit = %last.head, "cannot look at the config repo's head: {PEOPLE_FILE} as last read stays in use");
                        self.keep(Read {
                            looked: Instant::now(),
                            ..Read::clone(&last)
                        })
                    }
                    None => return Err(e),
                },
            },
        };
        drop(reading);
        Ok(read.people.by_chat(chat).map(str::to_owned))
    }

    /// Looks at the branch's head and reads the file there when it moved; keeps and returns the
    /// new read.
    async fn look_again(&self, last: Option<&Read>) -> Result<Arc<Read>, PeopleError> {
        let (sources, url, branch) = (self.sources.clone(), self.repository.clone(), self.branch.clone());
        let known = last.map(|r| r.head.clone());
        let at_head = tokio::task::spawn_blocking(move || read_at_head(&sources, &url, &branch, known.as_deref()))
            .await
            .map_err(PeopleError::Task)??;
        let now = Instant::now();
        let read = match at_head {
            AtHead::Unchanged(head) => Read {
                head,
                people: Arc::clone(&last.expect("unchanged from a read").people),
                at: now,
                looked: now,
            },
            AtHead::Moved { head, text } => {
                let people = match text.map(|t| PeopleFile::parse(&t)).transpose() {
                    Ok(file) => Arc::new(file.unwrap_or_default()),
                    Err(e) => match last {
                        Some(last) => {
                            tracing::warn!(error = %e, commit = %head, "{PEOPLE_FILE} at the config repo's head is invalid: the last valid one stays in use");
                            Arc::clone(&last.people)
                        }
                        None => return Err(e.into()),
                    },
                };
                Read {
                    head,
                    people,
                    at: now,
                    looked: now,
                }
            }
        };
        Ok(self.keep(read))
    }

    /// Keeps `read` as the last one and returns it.
    fn keep(&self, read: Read) -> Arc<Read> {
        let read = Arc::new(read);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&read));
        read
    }
}

/// What the head holds, compared with the last read.
enum AtHead {
    /// The head is the commit last read.
    Unchanged(String),
    /// A new head, and the file's text there (`None`: no such file).
    Moved { head: String, text: Option<String> },
}

/// Looks at the head of `branch` in `url` (`ls-remote`) and, when it is not `known`, fetches it
/// and reads the file. Blocking.
fn read_at_head(sources: &Sources, url: &str, branch: &str, known: Option<&str>) -> Result<AtHead, PeopleError> {
    let name = format!("refs/heads/{branch}");
    let head = sources
        .ls_remote(url)?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| PeopleError::NoBranch {
            url: url.to_owned(),
            branch: branch.to_owned(),
        })?
        .sha;
    if known == Some(head.as_str()) {
        return Ok(AtHead::Unchanged(head));
    }
    let mirror = sources.mirror_with(url, &head)?;
    let local = |e: git2::Error| SourceError::Local(e.message().to_owned());
    let oid = git2::Oid::from_str(&head).map_err(local)?;
    let tree = mirror.find_commit(oid).and_then(|c| c.tree()).map_err(local)?;
    let text = match tree.get_path(std::path::Path::new(PEOPLE_FILE)) {
        Ok(entry) => {
            let blob = entry.to_object(&mirror).and_then(|o| o.peel_to_blob()).map_err(local)?;
            Some(String::from_utf8_lossy(blob.content()).into_owned())
        }
        Err(_) => None,
    };
    Ok(AtHead::Moved { head, text })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Commits `content` as `file` in the clone at `<dir>/edit` and pushes it.
    fn commit(dir: &Path, file: &str, content: &str) {
        let edit = dir.join("edit");
        std::fs::write(edit.join(file), content).unwrap();
        git(&edit, &["add", "."]);
        git(&edit, &["commit", "-qm", file]);
        git(&edit, &["push", "-q", "origin", "main"]);
    }

    /// A bare repo at `<dir>/config.git` whose `main` holds `file` with `content` (pushed from a
    /// clone at `<dir>/edit`), and its `people.yaml` read with `refresh`.
    fn seeded(dir: &Path, file: &str, content: &str, refresh: Duration) -> People {
        git(dir, &["init", "-q", "--bare", "-b", "main", "config.git"]);
        git(dir, &["clone", "-q", "config.git", "edit"]);
        commit(dir, file, content);
        People::new(
            Sources::new(dir.join("cache"), vec![]),
            format!("file://{}", dir.join("config.git").display()),
            "main".into(),
            refresh,
        )
    }

    #[tokio::test]
    async fn a_chat_id_maps_through_the_head_and_a_new_one_works_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let alice = "people:\n  alice:\n    chat: [U1]\n";
        let people = seeded(dir.path(), PEOPLE_FILE, alice, Duration::from_secs(3600));
        assert_eq!(people.person("U1").await.unwrap().as_deref(), Some("alice"));
        assert_eq!(people.person("U2").await.unwrap(), None);

        // Added after the last read, within the refresh: found, because a miss looks again.
        commit(dir.path(), PEOPLE_FILE, &format!("{alice}  bob:\n    chat: [U2]\n"));
        assert_eq!(people.person("U2").await.unwrap().as_deref(), Some("bob"));

        // An invalid file (one chat id for two people) keeps the last valid one.
        commit(
            dir.path(),
            PEOPLE_FILE,
            "people:\n  bob:\n    chat: [U2]\n  carol:\n    chat: [U2]\n",
        );
        assert_eq!(people.person("U3").await.unwrap(), None);
        assert_eq!(people.person("U2").await.unwrap().as_deref(), Some("bob"));
    }

    #[tokio::test]
    async fn a_malformed_first_file_is_refused_and_odd_chat_ids_match_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let people = seeded(dir.path(), PEOPLE_FILE, "people: [alice\n", Duration::from_secs(3600));
        let e = people.person("U1").await.unwrap_err();
        assert_eq!(e.metric_label(), "invalid_people", "{e}");
        assert!(e.to_string().starts_with(PEOPLE_FILE), "{e}");

        commit(dir.path(), PEOPLE_FILE, "people:\n  alice:\n    chat: [U1]\n");
        for odd in ["", " U1", "U1\n", "u1", "*", "U1,U2", "<@U1>"] {
            assert_eq!(people.person(odd).await.unwrap(), None, "{odd:?}");
        }
        assert_eq!(people.person("U1").await.unwrap().as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn a_hit_is_used_for_the_refresh_then_the_head_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let alice = "people:\n  alice:\n    chat: [U1]\n";
        let people = seeded(dir.path(), PEOPLE_FILE, alice, Duration::from_millis(300));
        assert_eq!(people.person("U1").await.unwrap().as_deref(), Some("alice"));
        commit(dir.path(), PEOPLE_FILE, "people:\n  bob:\n    chat: [U1]\n");
        assert_eq!(people.person("U1").await.unwrap().as_deref(), Some("alice"), "cached");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(people.person("U1").await.unwrap().as_deref(), Some("bob"));
    }

    #[tokio::test]
    async fn without_a_file_nobody_is_mapped_and_an_unreadable_repo_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let people = seeded(
            dir.path(),
            "environments.yaml",
            "environments: []\n",
            Duration::from_secs(30),
        );
        assert_eq!(people.person("U1").await.unwrap(), None);

        let sources = people.sources.clone();
        let other = People::new(
            sources.clone(),
            people.repository.clone(),
            "release".into(),
            Duration::from_secs(30),
        );
        let e = other.person("U1").await.unwrap_err();
        assert_eq!(e.metric_label(), "no_branch", "{e}");
        let gone = People::new(
            sources,
            format!("file://{}", dir.path().join("absent.git").display()),
            "main".into(),
            Duration::from_secs(30),
        );
        assert_eq!(gone.person("U1").await.unwrap_err().metric_label(), "git");
    }
}
