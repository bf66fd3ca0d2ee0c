//! Blob uploads opened ahead of need. A registry takes a blob in two requests: `POST` opens an
//! upload session, `PUT` sends the bytes and closes it. Evidence's bytes exist only once the work
//! they prove is done, but its sessions can be opened while that work runs (the builder's steps,
//! the tester's tests), which leaves one request per blob on the way to the event. Against a
//! remote registry that is a round trip saved per attachment; against a local one that syncs
//! every file it writes, the few milliseconds its `POST` takes.
//!
//! Best effort, never a failure: a session that cannot be opened (a registry that wants a bearer
//! token, which only oci-client's full flow obtains) or no longer accepts its bytes (expired,
//! the registry restarted) is dropped, and the upload is made whole through oci-client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};

/// Longest an opened session is kept: registries purge idle uploads (Distribution after a week
/// by default, hosted ones sooner), and builds and test runs are shorter than this. One not used
/// by then (its build failed before publishing, and no other build of the repository came) is
/// forgotten and left to the registry's purge.
const MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// Most sessions kept open per repository; more are not opened.
const PER_REPOSITORY: usize = 8;

/// Upload sessions opened in one registry, per repository.
pub(super) struct Sessions {
    http: reqwest::Client,
    /// `http[s]://host[:port]/`.
    base: Url,
    /// Basic-auth credentials, or anonymous.
    basic: Option<(String, String)>,
    open: Mutex<HashMap<String, Vec<Opened>>>,
    /// Set once the registry refuses a session for want of a token: not asked again.
    unsupported: AtomicBool,
}

struct Opened {
    location: Url,
    at: Instant,
}

impl Sessions {
    /// Sessions in the registry at `address` (`host[:port]`), over HTTPS unless `insecure`.
    /// Installs the process's rustls provider (`baton_kit::tls`) if nobody has yet.
    pub(super) fn new(
        address: &str,
        insecure: bool,
        basic: Option<(String, String)>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Option<Self> {
        crate::tls::install_crypto_provider();
        let scheme = if insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{address}/")).ok()?;
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            // A session's bytes go to the registry named in the config, nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            // Over plain HTTP no certificate is checked: the system's are not loaded at start.
            .tls_built_in_root_certs(!insecure)
            .build()
            .ok()?;
        Some(Self {
            http,
            base,
            basic,
            open: Mutex::default(),
            unsupported: AtomicBool::new(false),
        })
    }

    /// Opens up to `count` sessions in `repository`, all at once, keeping at most
    /// [`PER_REPOSITORY`]. Failures are logged and otherwise ignored.
    pub(super) async fn open(&self, repository: &str, count: usize) {
        if self.unsupported.load(Ordering::Relaxed) {
            return;
        }
        let wanted = count.min(PER_REPOSITORY.saturating_sub(self.usable(repository)));
        let opened = futures::future::join_all((0..wanted).map(|_| self.open_one(repository))).await;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = open.entry(repository.to_owned()).or_default();
        for location in opened.into_iter().flatten() {
            if kept.len() < PER_REPOSITORY {
                kept.push(Opened {
                    location,
                    at: Instant::now(),
                });
            }
        }
    }

    /// Sends `data` (whose digest is `digest`) through a session opened in `repository`.
    /// `false` when there was none or the registry did not take it: the caller uploads it whole.
    pub(super) async fn upload(&self, repository: &str, data: &[u8], digest: &str) -> bool {
        let Some(mut location) = self.take(repository) else {
            return false;
        };
        location.query_pairs_mut().append_pair("digest", digest);
        let request = self
            .authorized(self.http.put(location))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec());
        match request.send().await {
            Ok(response) if response.status() == StatusCode::CREATED => true,
            Ok(response) => {
                tracing::debug!(repository, digest, status = %response.status(), "an opened upload session refused its blob; uploading it whole");
                false
            }
            Err(error) => {
                tracing::debug!(repository, digest, %error, "an opened upload session failed; uploading the blob whole");
                false
            }
        }
    }

    /// How many unexpired sessions `repository` has.
    fn usable(&self, repository: &str) -> usize {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get_mut(repository).map_or(0, |kept| {
            kept.retain(|session| session.at.elapsed() < MAX_AGE);
            kept.len()
        })
    }

    /// The newest unexpired session of `repository`, taken out: each is used once.
    fn take(&self, repository: &str) -> Option<Url> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = open.get_mut(repository)?;
        kept.retain(|session| session.at.elapsed() < MAX_AGE);
        kept.pop().map(|session| session.location)
    }

    async fn open_one(&self, repository: &str) -> Option<Url> {
        let url = self.base.join(&format!("v2/{repository}/blobs/uploads/")).ok()?;
        let response = match self
            .authorized(self.http.post(url))
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(repository, %error, "could not open an upload session ahead");
                return None;
            }
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            tracing::info!(repository, %status, "the registry wants more than basic credentials for uploads; evidence is uploaded without sessions opened ahead");
            self.unsupported.store(true, Ordering::Relaxed);
            return None;
        }
        if status != StatusCode::ACCEPTED {
            tracing::debug!(repository, %status, "could not open an upload session ahead");
            return None;
        }
        let header = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let location = session_location(&self.base, header);
        if location.is_none() {
            tracing::warn!(repository, location = header, registry = %self.base, "the registry placed an upload outside itself; not used");
        }
        location
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.basic {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }
}

/// The session a registry at `base` named in its `Location` header, relative or absolute; `None`
/// when it is not in that registry. Credentials go with the bytes, so only to the registry the
/// config names (CVE-2020-15157 was a client sending them where a registry pointed).
fn session_location(base: &Url, header: &str) -> Option<Url> {
    let location = base.join(header).ok()?;
    (!header.is_empty() && location.origin() == base.origin()).then_some(location)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(
            "127.0.0.1:1",
            true,
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("a valid address")
    }

    #[test]
    fn only_sessions_in_the_registry_itself_are_used() {
        let base = Url::parse("https://registry.example:5000/").unwrap();
        let at = |header: &str| session_location(&base, header).map(|url| url.to_string());
        assert_eq!(
            at("/v2/a/blobs/uploads/1?_state=x").as_deref(),
            Some("https://registry.example:5000/v2/a/blobs/uploads/1?_state=x")
        );
        assert_eq!(
            at("https://registry.example:5000/v2/a/blobs/uploads/1").as_deref(),
            Some("https://registry.example:5000/v2/a/blobs/uploads/1")
        );
        for elsewhere in [
            "https://attacker.example:5000/v2/a/blobs/uploads/1",
            "https://registry.example:5001/v2/a/blobs/uploads/1",
            "http://registry.example:5000/v2/a/blobs/uploads/1",
            "//attacker.example/v2/a/blobs/uploads/1",
            "",
        ] {
            assert_eq!(at(elsewhere), None, "{elsewhere}");
        }
    }

    #[test]
    fn sessions_are_used_once_and_expire() {
        let sessions = sessions();
        let location = |n: u32| Url::parse(&format!("http://127.0.0.1:1/v2/a/blobs/uploads/{n}")).unwrap();
        {
            let mut open = sessions.open.lock().unwrap();
            open.entry("a".to_owned()).or_default().extend([
                Opened {
                    location: location(1),
                    at: Instant::now().checked_sub(MAX_AGE * 2).unwrap(),
                },
                Opened {
                    location: location(2),
                    at: Instant::now(),
                },
            ]);
        }
        assert_eq!(sessions.usable("a"), 1, "the expired one is dropped");
        assert_eq!(sessions.take("b"), None, "sessions belong to their repository");
        assert_eq!(sessions.take("a"), Some(location(2)));
        assert_eq!(sessions.take("a"), None, "each is used once");
    }
}
