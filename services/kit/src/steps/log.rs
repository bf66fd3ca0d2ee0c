//! A step's log: its output split into lines in bounded memory, secrets masked and long lines
//! cut, each line published live on core NATS (skipped, never waited for, when NATS falls
//! behind) and spooled to a temporary file that is stored whole in the object store once the
//! step ends; the last lines are kept for the outcome.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use async_nats::{Client, Subject};
use baton_schemas::payloads::LogLocation;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{MASK, MAX_LINE_BYTES, MIN_MASKED_LEN, TAIL_LINE_BYTES, TAIL_LINES};
use crate::secret::Secret;

/// The spooled log is written to its file in blocks of about this size.
const SPOOL_BLOCK: usize = 256 * 1024;
/// Live lines waiting to be published; beyond this, lines are skipped live (never in the store).
const LIVE_QUEUE: usize = 1024;
/// Longest one live publish may wait for the NATS client before the line is given up.
const LIVE_PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest the live publisher may take to send what is queued once the step has ended.
const LIVE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a step's whole log is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRef {
    /// Object store bucket, e.g. `baton-logs`.
    pub bucket: String,
    /// Object name, `<run>/<step>.log`.
    pub object: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of lines (each ends with `\n` in the stored log).
    pub lines: u64,
    /// SHA-256 of the stored bytes, hex: lets a reader check the log it fetched is whole.
    pub sha256: String,
}

impl From<&LogRef> for LogLocation {
    fn from(log: &LogRef) -> Self {
        Self {
            bucket: log.bucket.clone(),
            object: log.object.clone(),
            bytes: log.bytes,
            lines: log.lines,
        }
    }
}

/// Why a step's log could not be stored. The step's status never depends on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The runner was built without an object store ([`StepRunner::offline`](super::StepRunner::offline)).
    #[error("no log store is configured")]
    NotConfigured,
    /// The temporary file the log is spooled to failed, so the log would not be whole.
    #[error("cannot spool the log to a temporary file: {reason}")]
    Spool {
        /// Why.
        reason: String,
    },
    /// The object store refused the log or could not be reached in time.
    #[error("cannot store the log as {object} in {bucket}: {reason}")]
    Store {
        /// The bucket.
        bucket: String,
        /// The object name.
        object: String,
        /// Why.
        reason: String,
    },
}

/// Finds secret values in a line. Every occurrence is found, overlapping ones included, in one
/// pass over the line whatever the number of secrets.
#[derive(Debug, Default)]
pub(super) struct Masker {
    /// `None` when there is nothing to mask: the common case costs nothing.
    searcher: Option<AhoCorasick>,
    /// Length of the longest value: how much of a cut line must still be searched.
    longest: usize,
}

impl Masker {
    pub(super) fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Result<Self, String> {
        let mut values: Vec<&[u8]> = secrets
            .into_iter()
            .flat_map(|secret| secret.expose().split(|b| *b == b'\n'))
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|value| value.len() >= MIN_MASKED_LEN)
            .collect();
        values.sort_unstable();
        values.dedup();
        if values.is_empty() {
            return Ok(Self::default());
        }
        let longest = values.iter().map(|v| v.len()).max().unwrap_or(0);
        let searcher = AhoCorasick::new(&values).map_err(|e| e.to_string())?;
        Ok(Self {
            searcher: Some(searcher),
            longest,
        })
    }

    /// The byte ranges of `line` to hide, sorted and merged.
    fn ranges(&self, line: &[u8]) -> Vec<(usize, usize)> {
        let Some(searcher) = &self.searcher else {
            return Vec::new();
        };
        let mut ranges: Vec<(usize, usize)> = searcher
            .find_overlapping_iter(line)
            .map(|m| (m.start(), m.end()))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

/// Writes `line` to `out` with every secret replaced by [`MASK`], keeping at most about `limit`
/// bytes of it; a cut never reveals part of a secret and is followed by a marker saying how many
/// bytes were left out (counting `dropped`, the bytes of the line never kept in memory).
fn render_line(line: &[u8], masker: &Masker, limit: usize, dropped: u64, out: &mut Vec<u8>) {
    let mut position = 0;
    for (start, end) in masker.ranges(line) {
        if start >= limit {
            break;
        }
        out.extend_from_slice(&line[position..start]);
        out.extend_from_slice(MASK.as_bytes());
        position = end;
    }
    let end = if position >= limit {
        position
    } else if line.len() <= limit {
        line.len()
    } else {
        char_boundary(line, limit).max(position)
    };
    out.extend_from_slice(&line[position..end]);
    let cut = (line.len() - end) as u64 + dropped;
    if cut > 0 {
        out.extend_from_slice(format!(" [baton: line cut, {cut} more bytes]").as_bytes());
    }
}

/// The largest index `<= at` not inside a UTF-8 sequence (as far as the bytes are UTF-8), so a
/// cut line stays readable.
fn char_boundary(bytes: &[u8], at: usize) -> usize {
    let mut at = at.min(bytes.len());
    let floor = at.saturating_sub(3);
    while at > floor && at < bytes.len() && (bytes[at] & 0b1100_0000) == 0b1000_0000 {
        at -= 1;
    }
    at
}

/// Splits a byte stream into lines, keeping at most `keep` bytes of any line in memory.
#[derive(Debug)]
struct LineSplitter {
    /// The line being assembled (its first `keep` bytes).
    line: Vec<u8>,
    /// Bytes of the current line beyond `keep`, counted but not kept.
    dropped: u64,
    keep: usize,
}

impl LineSplitter {
    fn new(keep: usize) -> Self {
        Self {
            line: Vec::new(),
            dropped: 0,
            keep,
        }
    }

    /// Feeds output; `emit(line, dropped)` gets every completed line without its `\n`.
    fn feed(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8], u64)) {
        while let Some(newline) = memchr::memchr(b'\n', chunk) {
            let part = &chunk[..newline];
            if self.line.is_empty() && self.dropped == 0 && part.len() <= self.keep {
                emit(part, 0);
            } else {
                self.append(part);
                emit(&self.line, self.dropped);
                self.line.clear();
                self.dropped = 0;
            }
            chunk = &chunk[newline + 1..];
        }
        self.append(chunk);
    }

    /// Emits the last line when the output did not end with `\n`.
    fn finish(&mut self, emit: &mut impl FnMut(&[u8], u64)) {
        if !self.line.is_empty() || self.dropped > 0 {
            emit(&self.line, self.dropped);
            self.line.clear();
            self.dropped = 0;
        }
    }

    fn append(&mut self, part: &[u8]) {
        let take = self.keep.saturating_sub(self.line.len()).min(part.len());
        self.line.extend_from_slice(&part[..take]);
        self.dropped += (part.len() - take) as u64;
    }
}

/// Where a step's lines go: masked and cut, then to the spool file, the tail and the live log.
pub(super) struct LogSink {
    splitter: LineSplitter,
    lines: LineSink,
}

/// Everything done with one complete line (split from [`LogSink`] so the splitter can lend
/// its buffer while the line is handled).
struct LineSink {
    masker: Masker,
    /// Reused buffer for masked or cut lines.
    scratch: Vec<u8>,
    spool: Spool,
    tail: Tail,
    live: Option<LiveLog>,
    lines: u64,
}

impl LogSink {
    pub(super) fn new(masker: Masker, live: Option<LiveLog>) -> Self {
        Self {
            splitter: LineSplitter::new(MAX_LINE_BYTES + masker.longest),
            lines: LineSink {
                masker,
                scratch: Vec::new(),
                spool: Spool::new(),
                tail: Tail::default(),
                live,
                lines: 0,
            },
        }
    }

    pub(super) async fn feed(&mut self, chunk: &[u8]) {
        let lines = &mut self.lines;
        self.splitter
            .feed(chunk, &mut |line, dropped| lines.line(line, dropped));
        if self.lines.spool.pending.len() >= SPOOL_BLOCK {
            self.lines.spool.write_pending().await;
        }
    }

    /// Whether one of the last lines (the tail) contains `needle`.
    pub(super) fn tail_mentions(&self, needle: &str) -> bool {
        let needle = needle.as_bytes();
        self.lines
            .tail
            .lines
            .iter()
            .any(|line| line.windows(needle.len()).any(|w| w == needle))
    }

    /// Adds a line of Baton's own (after the step's output, which it completes first).
    pub(super) fn note(&mut self, text: &str) {
        let lines = &mut self.lines;
        self.splitter.finish(&mut |line, dropped| lines.line(line, dropped));
        self.lines.line(text.as_bytes(), 0);
    }

    /// Ends the log: flushes the live log, stores the spooled log, returns the tail.
    pub(super) async fn finish(
        mut self,
        store: Option<&ObjectStore>,
        bucket: &str,
        object: &str,
        store_timeout: Duration,
    ) -> (Result<LogRef, LogError>, Vec<String>, u64) {
        let lines = &mut self.lines;
        self.splitter.finish(&mut |line, dropped| lines.line(line, dropped));
        let LineSink {
            spool,
            tail,
            live,
            lines,
            ..
        } = self.lines;
        // The live log drains while the stored log is written: neither waits for the other.
        let drained = async {
            match live {
                Some(live) => live.finish().await,
                None => 0,
            }
        };
        let stored = async {
            match store {
                None => Err(LogError::NotConfigured),
                Some(store) => {
                    let stored = tokio::time::timeout(store_timeout, spool.store(store, bucket, object, lines)).await;
                    stored.unwrap_or_else(|_| {
                        Err(LogError::Store {
                            bucket: bucket.to_owned(),
                            object: object.to_owned(),
                            reason: format!("timed out after {}", humantime::format_duration(store_timeout)),
                        })
                    })
                }
            }
        };
        let (live_skipped, log) = tokio::join!(drained, stored);
        (log, tail.into_lines(), live_skipped)
    }
}

impl LineSink {
    fn line(&mut self, raw: &[u8], dropped: u64) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let line = if self.masker.searcher.is_none() && dropped == 0 && raw.len() <= MAX_LINE_BYTES {
            raw
        } else {
            scratch.clear();
            render_line(raw, &self.masker, MAX_LINE_BYTES, dropped, &mut scratch);
            &scratch[..]
        };
        self.spool.push(line);
        self.tail.push(line);
        if let Some(live) = &mut self.live {
            live.offer(line);
        }
        self.lines += 1;
        self.scratch = scratch;
    }
}

/// The whole log, spooled to an anonymous temporary file (deleted when closed) so a flood of
/// output never accumulates in memory.
struct Spool {
    /// The file, or the first failure to create or write it (the log is no longer whole).
    file: Result<tokio::fs::File, String>,
    /// Lines not yet written to the file.
    pending: Vec<u8>,
    hasher: Sha256,
    bytes: u64,
}

impl Spool {
    fn new() -> Self {
        Self {
            file: tempfile::tempfile()
                .map(tokio::fs::File::from_std)
                .map_err(|e| e.to_string()),
            pending: Vec::with_capacity(SPOOL_BLOCK),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, line: &[u8]) {
        if self.file.is_ok() {
            self.pending.extend_from_slice(line);
            self.pending.push(b'\n');
        }
    }

    async fn write_pending(&mut self) {
        if let Ok(file) = &mut self.file {
            match file.write_all(&self.pending).await {
                Ok(()) => {
                    self.hasher.update(&self.pending);
                    self.bytes += self.pending.len() as u64;
                }
                Err(e) => self.file = Err(e.to_string()),
            }
        }
        self.pending.clear();
    }

    async fn store(mut self, store: &ObjectStore, bucket: &str, object: &str, lines: u64) -> Result<LogRef, LogError> {
        self.write_pending().await;
        let spool_error = |reason: String| LogError::Spool { reason };
        let mut file = self.file.map_err(spool_error)?;
        file.flush().await.map_err(|e| spool_error(e.to_string()))?;
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(|e| spool_error(e.to_string()))?;
        let sha256 = hex::encode(self.hasher.finalize());
        let object = unused_name(store, object).await.map_err(|reason| LogError::Store {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
            reason,
        })?;
        let object = object.as_str();
        let meta = ObjectMetadata {
            name: object.to_owned(),
            description: Some("Baton step log".to_owned()),
            metadata: [("sha256".to_owned(), sha256.clone())].into(),
            ..Default::default()
        };
        let info = store.put(meta, &mut file).await.map_err(|e| LogError::Store {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
            reason: e.to_string(),
        })?;
        if info.size as u64 != self.bytes {
            return Err(LogError::Store {
                bucket: bucket.to_owned(),
                object: object.to_owned(),
                reason: format!("stored {} bytes of {}", info.size, self.bytes),
            });
        }
        Ok(LogRef {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
            bytes: self.bytes,
            lines,
            sha256,
        })
    }
}

/// `object`, or when an object of that name exists (the log of an earlier attempt of the same
/// run, retried), `<object without .log>.<n>.log` with the first `n` from 2 that is free.
/// Storing over an existing object would replace it, and the object store then purges the old
/// object's chunks, which the builder's and tester's NATS users may not do
/// (`deploy/base/nats/auth.conf`): a purge's subject filter cannot be confined by permissions,
/// so a user allowed one could empty the whole log store. Every attempt's log is kept instead.
async fn unused_name(store: &ObjectStore, object: &str) -> Result<String, String> {
    let stem = object.strip_suffix(".log").unwrap_or(object);
    let mut candidate = object.to_owned();
    for n in 2u32.. {
        match store.info(&candidate).await {
            Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => return Ok(candidate),
            Err(e) => return Err(format!("cannot look up {candidate}: {e}")),
            Ok(_) => candidate = format!("{stem}.{n}.log"),
        }
    }
    unreachable!("an unused name is found before u32 runs out")
}

/// The last [`TAIL_LINES`] lines, each cut at [`TAIL_LINE_BYTES`]; buffers are reused so a flood
/// of lines does not allocate.
#[derive(Default)]
struct Tail {
    lines: VecDeque<Vec<u8>>,
}

impl Tail {
    fn push(&mut self, line: &[u8]) {
        let mut kept = if self.lines.len() == TAIL_LINES {
            self.lines.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        kept.clear();
        if line.len() <= TAIL_LINE_BYTES {
            kept.extend_from_slice(line);
        } else {
            kept.extend_from_slice(&line[..char_boundary(line, TAIL_LINE_BYTES)]);
            kept.extend_from_slice(" …".as_bytes());
        }
        self.lines.push_back(kept);
    }

    fn into_lines(self) -> Vec<String> {
        self.lines
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .collect()
    }
}

/// Live lines go through a bounded queue to a task publishing them on core NATS: the step never
/// waits for NATS, and lines are skipped (and counted, and announced) when NATS falls behind.
pub(super) struct LiveLog {
    queue: mpsc::Sender<Bytes>,
    publisher: JoinHandle<()>,
    /// Lines skipped since the last announcement.
    skipped: u64,
    skipped_total: u64,
}

impl LiveLog {
    pub(super) fn start(client: Client, subject: String) -> Self {
        let (queue, lines) = mpsc::channel(LIVE_QUEUE);
        Self {
            queue,
            publisher: tokio::spawn(publish_live(client, Subject::from(subject), lines)),
            skipped: 0,
            skipped_total: 0,
        }
    }

    fn offer(&mut self, line: &[u8]) {
        if self.skipped > 0 && self.queue.capacity() > 0 {
            self.announce_skipped();
        }
        if self.queue.capacity() == 0 || self.queue.try_send(Bytes::copy_from_slice(line)).is_err() {
            self.skipped += 1;
        }
    }

    fn announce_skipped(&mut self) {
        let notice = format!(
            "baton: {} lines not shown live (output faster than the live log); the stored log has them",
            self.skipped
        );
        if self.queue.try_send(Bytes::from(notice)).is_ok() {
            self.skipped_total += self.skipped;
            self.skipped = 0;
        }
    }

    /// Lets queued lines go out (for a short while at most); returns how many were skipped.
    async fn finish(mut self) -> u64 {
        if self.skipped > 0 {
            self.announce_skipped();
        }
        let skipped = self.skipped_total + self.skipped;
        drop(self.queue);
        if tokio::time::timeout(LIVE_DRAIN_TIMEOUT, &mut self.publisher)
            .await
            .is_err()
        {
            self.publisher.abort();
            tracing::debug!("live log lines still queued were dropped");
        }
        skipped
    }
}

async fn publish_live(client: Client, subject: Subject, mut lines: mpsc::Receiver<Bytes>) {
    let mut failures = 0_u64;
    while let Some(line) = lines.recv().await {
        let published = tokio::time::timeout(LIVE_PUBLISH_TIMEOUT, client.publish(subject.clone(), line)).await;
        if !matches!(published, Ok(Ok(()))) {
            failures += 1;
            if failures == 1 {
                tracing::warn!(%subject, "NATS is not taking live log lines; the stored log will have them");
            }
        }
    }
    if failures == 0 {
        // So subscribers have every line before the step's outcome is announced.
        let _ = tokio::time::timeout(LIVE_DRAIN_TIMEOUT, client.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> Masker {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Masker::new(&secrets).unwrap()
    }

    fn render(line: &str, masker: &Masker, limit: usize) -> String {
        let mut out = Vec::new();
        render_line(line.as_bytes(), masker, limit, 0, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_occurrence_of_every_secret_is_masked() {
        let m = masker(&["hunter22", "tok-9f8e", "abc"]);
        assert_eq!(
            render("pw=hunter22 again hunter22, tok-9f8e; abc stays", &m, 1000),
            "pw=*** again ***, ***; abc stays"
        );
        // Overlapping secrets hide their union, not just the first found.
        let m = masker(&["abcdef", "defghi"]);
        assert_eq!(render("xxabcdefghiyy", &m, 1000), "xx***yy");
        // Each line of a multi-line secret (a PEM key) is masked on its own.
        let m = masker(&["-----BEGIN KEY-----\r\nAAAABBBB\nCC\n"]);
        assert_eq!(render("AAAABBBB", &m, 1000), "***");
        assert_eq!(render("-----BEGIN KEY-----", &m, 1000), "***");
        assert_eq!(render("CC", &m, 1000), "CC");
    }

    #[test]
    fn short_or_no_secrets_mask_nothing() {
        let m = masker(&["a", "42", "xyz", ""]);
        assert!(m.searcher.is_none());
        assert_eq!(render("a 42 xyz", &m, 1000), "a 42 xyz");
    }

    #[test]
    fn long_lines_are_cut_with_a_marker_never_inside_a_secret() {
        let none = Masker::default();
        assert_eq!(render("0123456789", &none, 4), "0123 [baton: line cut, 6 more bytes]");
        assert_eq!(render("0123", &none, 4), "0123");
        // A secret straddling the cut is hidden whole.
        let m = masker(&["SECRETVALUE"]);
        let out = render("012SECRETVALUE456", &m, 5);
        assert_eq!(out, "012*** [baton: line cut, 3 more bytes]");
        assert!(!out.contains("SE"));
        // Bytes the splitter already dropped are counted in the marker.
        let mut out = Vec::new();
        render_line(b"0123", &none, 4, 10, &mut out);
        assert_eq!(out, b"0123 [baton: line cut, 10 more bytes]");
        // A cut never splits a UTF-8 character.
        assert_eq!(render("ééé", &none, 3), "é [baton: line cut, 4 more bytes]");
    }

    #[test]
    fn splitter_bounds_memory_and_keeps_partial_lines() {
        let mut splitter = LineSplitter::new(8);
        let mut lines = Vec::new();
        let mut emit = |line: &[u8], dropped: u64| lines.push((String::from_utf8_lossy(line).into_owned(), dropped));
        splitter.feed(b"one\ntw", &mut emit);
        splitter.feed(b"o\n", &mut emit);
        for _ in 0..1000 {
            splitter.feed(b"xxxxxxxxxx", &mut emit);
            assert!(splitter.line.len() <= 8);
        }
        splitter.feed(b"\nlast", &mut emit);
        splitter.finish(&mut emit);
        assert_eq!(
            lines,
            vec![
                ("one".to_owned(), 0),
                ("two".to_owned(), 0),
                ("xxxxxxxx".to_owned(), 9992),
                ("last".to_owned(), 0)
            ]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines_cut_short() {
        let mut tail = Tail::default();
        for i in 0..200 {
            tail.push(format!("line {i}").as_bytes());
        }
        tail.push(&vec![b'x'; 10_000]);
        let lines = tail.into_lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 151");
        assert!(lines[49].len() <= TAIL_LINE_BYTES + 4 && lines[49].ends_with('…'));
    }
}
