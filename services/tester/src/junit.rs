//! JUnit XML reports: the tester reads the report a test step wrote and turns it into a verdict.
//!
//! A test step may declare a JUnit report (`target/nextest/ci/junit.xml`, `reports/TEST-*.xml`,
//! …). [`read_report`] reads it into a [`JunitSummary`]: how many cases ran, failed, errored or
//! were skipped, and the first few failed cases in detail, so the release's test outcome can say
//! *which* test broke and why. Every common dialect is understood (JUnit 4/5 Ant format, Maven
//! Surefire, pytest, jest-junit, go-junit-report, cargo nextest): the numbers come from the
//! `<testcase>` elements actually present, never from the suites' `tests=`/`failures=`
//! attributes, which are optional and sometimes wrong.
//!
//! Reports can be huge (a chatty suite writes megabytes of `<system-out>` per case), so the
//! report is streamed and memory stays bounded by [`JunitLimits`]: text and CDATA bodies are
//! read in chunks and only a bounded prefix of a failed case's message and output is kept;
//! passing cases keep nothing. One tag (with its attributes) is parsed whole, up to
//! [`JunitLimits::max_tag_bytes`]. A file larger than [`JunitLimits::max_bytes`] is refused.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;

/// Appended to every message or output that was cut to fit its limit.
pub const TRUNCATION_MARKER: &str = "…(truncated)";

/// How much of a report is read and kept. The defaults suit CI reports of any realistic size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JunitLimits {
    /// A report larger than this is refused with [`JunitError::TooLarge`] rather than read: a
    /// runaway test that logs gigabytes must not stall the tester.
    pub max_bytes: u64,
    /// Failed cases kept in detail in [`JunitSummary::failed_cases`]; later ones are only counted
    /// (in [`JunitSummary::failed_cases_omitted`]) so a broken build with 10,000 failures stays
    /// a small outcome.
    pub max_failed_cases: usize,
    /// Bytes kept of a failure message, and of a failed case's name and class.
    pub max_message_bytes: usize,
    /// Bytes kept of a failed case's output: the failure body (stack trace), then its
    /// `<system-out>`, then its `<system-err>`, in that order of priority.
    pub max_output_bytes: usize,
    /// Bytes allowed in one tag, comment or declaration, which the XML parser holds whole (a
    /// failure `message` attribute with a megabyte of assertion diff, say). Text and CDATA are
    /// streamed and not subject to this.
    pub max_tag_bytes: usize,
}

impl Default for JunitLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_failed_cases: 100,
            max_message_bytes: 2 * 1024,
            max_output_bytes: 4 * 1024,
            max_tag_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What a JUnit report says about a test run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JunitSummary {
    /// `<testsuite>` elements, nested ones included.
    pub suites: u64,
    /// `<testcase>` elements: every case is exactly one of passed, failed, errored or skipped.
    pub tests: u64,
    /// Cases with a `<failure>` (an assertion did not hold).
    pub failures: u64,
    /// Cases with an `<error>` (the test could not run to its assertion), and no `<failure>`
    /// before it.
    pub errors: u64,
    /// Cases with a `<skipped>` and neither `<failure>` nor `<error>`.
    pub skipped: u64,
    /// The sum of the cases' `time`s; when no case has one, the top-level suites' `time`s (or
    /// the `<testsuites>` root's). `None` when the report records no time at all.
    pub duration: Option<Duration>,
    /// The first [`JunitLimits::max_failed_cases`] failed or errored cases, in report order.
    pub failed_cases: Vec<FailedCase>,
    /// Failed or errored cases beyond those kept in `failed_cases`.
    pub failed_cases_omitted: u64,
}

impl JunitSummary {
    /// Whether the run passed: no case failed or errored. Skipped cases do not fail a run, and
    /// neither does an empty report.
    pub fn passed(&self) -> bool {
        self.failures == 0 && self.errors == 0
    }

    /// Cases that passed.
    pub fn passed_cases(&self) -> u64 {
        self.tests
            .saturating_sub(self.failures)
            .saturating_sub(self.errors)
            .saturating_sub(self.skipped)
    }
}

/// A failed or errored test case, as much of it as the limits allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCase {
    /// The case's `name` (empty if the report gave none), cut to [`JunitLimits::max_message_bytes`].
    pub name: String,
    /// The case's `classname`: a class, module or package depending on the tool.
    pub class: Option<String>,
    /// Whether an assertion failed or the test errored.
    pub kind: FailureKind,
    /// The failure's `message` attribute or, when it has none (jest-junit), the first line of its
    /// body; cut to [`JunitLimits::max_message_bytes`] and then marked [`TRUNCATION_MARKER`].
    pub message: Option<String>,
    /// The failure's `type` attribute: usually the exception class.
    pub type_name: Option<String>,
    /// The failure body (usually a stack trace), then the case's `<system-out>` and
    /// `<system-err>` under a `--- system-out ---`/`--- system-err ---` heading, cut to
    /// [`JunitLimits::max_output_bytes`] and then marked [`TRUNCATION_MARKER`].
    pub output: Option<String>,
    /// The case's `time`.
    pub duration: Option<Duration>,
}

/// How a test case went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// `<failure>`: an assertion did not hold.
    Failure,
    /// `<error>`: the test could not run to its assertions (an unexpected exception, a setup
    /// error, a build failure).
    Error,
}

/// Why a JUnit report could not be read. All of these are permanent: reading the same report
/// again gives the same answer.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    /// The report does not exist: the test step did not write it where it said it would.
    #[error("JUnit report {} does not exist; did the test step write it?", .path.display())]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The report is larger than [`JunitLimits::max_bytes`].
    #[error(
        "JUnit report {} is too large: at least {bytes} bytes, the limit is {limit} bytes",
        display_source(.path.as_deref())
    )]
    TooLarge {
        /// The report's path, if it was read from a file.
        path: Option<PathBuf>,
        /// The report's size, or for a stream the bytes read when it crossed the limit.
        bytes: u64,
        /// [`JunitLimits::max_bytes`].
        limit: u64,
    },
    /// The report is not a well-formed JUnit XML document.
    #[error(
        "malformed JUnit report {}, line {line} (byte {offset}): {message}",
        display_source(.path.as_deref())
    )]
    Malformed {
        /// The report's path, if it was read from a file.
        path: Option<PathBuf>,
        /// 1-based line where the offending markup starts.
        line: u64,
        /// 0-based byte offset where the offending markup starts.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// The report could not be read.
    #[error("cannot read JUnit report {}", display_source(.path.as_deref()))]
    Io {
        /// The report's path, if it was read from a file.
        path: Option<PathBuf>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl JunitError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::Io { .. } => "io",
        }
    }

    /// Attaches the report's path to an error raised while parsing its contents.
    fn with_path(mut self, report: &Path) -> Self {
        match &mut self {
            Self::Missing { .. } => {}
            Self::TooLarge { path, .. } | Self::Malformed { path, .. } | Self::Io { path, .. } => {
                *path = Some(report.to_path_buf());
            }
        }
        self
    }
}

fn display_source(path: Option<&Path>) -> std::path::Display<'_> {
    path.unwrap_or(Path::new("<stream>")).display()
}

/// Reads the JUnit report at `path`, streaming it: memory use is bounded by `limits`, not by the
/// file's size.
///
/// ```no_run
/// use baton_tester::junit::{JunitLimits, read_report};
///
/// let summary = read_report("target/nextest/ci/junit.xml".as_ref(), &JunitLimits::default())?;
/// if !summary.passed() {
///     for case in &summary.failed_cases {
///         tracing::warn!(name = %case.name, message = ?case.message, "test failed");
///     }
/// }
/// # Ok::<(), baton_tester::junit::JunitError>(())
/// ```
pub fn read_report(path: &Path, limits: &JunitLimits) -> Result<JunitSummary, JunitError> {
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            JunitError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            JunitError::Io {
                path: Some(path.to_path_buf()),
                source,
            }
        }
    };
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    if metadata.is_dir() {
        return Err(io_error(io::Error::new(
            io::ErrorKind::IsADirectory,
            "the report path is a directory",
        )));
    }
    if metadata.len() > limits.max_bytes {
        return Err(JunitError::TooLarge {
            path: Some(path.to_path_buf()),
            bytes: metadata.len(),
            limit: limits.max_bytes,
        });
    }
    let file = File::open(path).map_err(io_error)?;
    parse_report(BufReader::new(file), limits).map_err(|error| error.with_path(path))
}

/// Parses a JUnit report from `reader`, streaming it. A stream longer than
/// [`JunitLimits::max_bytes`] is refused with [`JunitError::TooLarge`].
pub fn parse_report<R: BufRead>(reader: R, limits: &JunitLimits) -> Result<JunitSummary, JunitError> {
    parse_with_stats(reader, limits).map(|(summary, _)| summary)
}

fn parse_with_stats<R: Read>(reader: R, limits: &JunitLimits) -> Result<(JunitSummary, ParseStats), JunitError> {
    let mut xml = Reader::from_reader(Source::new(reader, limits));
    let config = xml.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    config.trim_text(false);
    Parser::new(limits).run(&mut xml)
}

/// Memory high-water marks of one parse, so tests can check that memory stays bounded.
#[derive(Debug, Default, Clone, Copy)]
struct ParseStats {
    /// The largest capacity of the XML parser's event buffer (one tag at a time).
    max_event_buffer: usize,
    /// The largest capacity of any captured body.
    max_capture: usize,
}

// --- The byte source --------------------------------------------------------------------------

/// Bytes read ahead of the parser; also the room [`Source::peek`] has to look ahead.
const CHUNK_BYTES: usize = 64 * 1024;

/// The report's bytes, as the XML parser and the text pump see them. Owns the read buffer so it
/// can look a few bytes ahead across reads (to spot `<![CDATA[`), count lines for error
/// positions, and stop a report that crosses the size limit or a tag that crosses the tag limit.
struct Source<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Start of the unconsumed bytes in `buffer`.
    pos: usize,
    /// End of the bytes read into `buffer`.
    filled: usize,
    eof: bool,
    /// Bytes read from `inner`.
    read: u64,
    /// Bytes consumed by the parser: the offset of the next byte.
    consumed: u64,
    /// The 1-based line of the next byte.
    line: u64,
    max_bytes: u64,
    max_tag_bytes: u64,
    /// Where the markup being parsed started, while the XML parser reads one.
    tag_start: Option<u64>,
    /// Why reading stopped, when it stopped on a limit rather than an I/O error.
    stop: Option<Stop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    TooLarge,
    TagTooLarge,
}

impl Stop {
    fn io_error(self) -> io::Error {
        io::Error::other(match self {
            Self::TooLarge => "the JUnit report exceeds its size limit",
            Self::TagTooLarge => "a tag in the JUnit report exceeds its size limit",
        })
    }
}

impl<R: Read> Source<R> {
    fn new(inner: R, limits: &JunitLimits) -> Self {
        Self {
            inner,
            buffer: vec![0; CHUNK_BYTES].into_boxed_slice(),
            pos: 0,
            filled: 0,
            eof: false,
            read: 0,
            consumed: 0,
            line: 1,
            max_bytes: limits.max_bytes,
            max_tag_bytes: u64::try_from(limits.max_tag_bytes).unwrap_or(u64::MAX),
            tag_start: None,
            stop: None,
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.consumed,
            line: self.line,
        }
    }

    /// Returns at least `want` unconsumed bytes (fewer only at the end of the input).
    fn peek(&mut self, want: usize) -> io::Result<&[u8]> {
        let want = want.min(self.buffer.len());
        while self.filled - self.pos < want && !self.eof {
            if self.pos > 0 {
                self.buffer.copy_within(self.pos..self.filled, 0);
                self.filled -= self.pos;
                self.pos = 0;
            }
            self.read_more()?;
        }
        Ok(&self.buffer[self.pos..self.filled])
    }

    /// Reads once into the free end of `buffer`.
    fn read_more(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop {
            return Err(stop.io_error());
        }
        loop {
            match self.inner.read(&mut self.buffer[self.filled..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.filled += n;
                    self.read += n as u64;
                    if self.read > self.max_bytes {
                        self.stop = Some(Stop::TooLarge);
                        return Err(Stop::TooLarge.io_error());
                    }
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Source<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(stop) = self.stop {
            return Err(stop.io_error());
        }
        if self.pos == self.filled && !self.eof {
            self.pos = 0;
            self.filled = 0;
            self.read_more()?;
        }
        let mut end = self.filled;
        if let Some(start) = self.tag_start {
            // Hand out at most one byte past the tag limit: a longer tag comes back for more.
            let used = self.consumed - start;
            if used > self.max_tag_bytes {
                self.stop = Some(Stop::TagTooLarge);
                return Err(Stop::TagTooLarge.io_error());
            }
            let allowed = usize::try_from(self.max_tag_bytes - used)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            end = end.min(self.pos.saturating_add(allowed));
        }
        Ok(&self.buffer[self.pos..end])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.filled - self.pos);
        let consumed = &self.buffer[self.pos..self.pos + amount];
        self.line += memchr::memchr_iter(b'\n', consumed).count() as u64;
        self.pos += amount;
        self.consumed += amount as u64;
    }
}

/// A place in the report, for error messages.
#[derive(Debug, Clone, Copy)]
struct Position {
    offset: u64,
    line: u64,
}

impl Position {
    fn malformed(self, message: impl Into<String>) -> JunitError {
        JunitError::Malformed {
            path: None,
            line: self.line,
            offset: self.offset,
            message: message.into(),
        }
    }
}

// --- Bounded text -----------------------------------------------------------------------------

/// A prefix of a text body, at most `limit` bytes.
#[derive(Debug, Default)]
struct Capture {
    bytes: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            truncated: false,
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.truncated = false;
    }

    fn push(&mut self, mut data: &[u8]) {
        if self.bytes.is_empty() {
            // Leading blank lines are indentation, not output: keep the room for the text.
            let start = data.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(data.len());
            data = &data[start..];
        }
        let room = self.limit - self.bytes.len();
        if data.len() > room {
            self.truncated = true;
            data = &data[..room];
        }
        self.bytes.extend_from_slice(data);
    }

    /// The captured text with XML line ends (`\r\n`, `\r` → `\n`), trailing whitespace trimmed.
    /// Invalid UTF-8 is replaced rather than refused: output is for people, not for parsing.
    fn text(&self) -> Option<String> {
        let mut bytes = self.bytes.as_slice();
        if self.truncated
            && let Err(error) = std::str::from_utf8(bytes)
            && error.error_len().is_none()
        {
            // The cut fell inside a character: drop its first bytes.
            bytes = &bytes[..error.valid_up_to()];
        }
        let text = String::from_utf8_lossy(bytes);
        let text = if text.contains('\r') {
            text.replace("\r\n", "\n").replace('\r', "\n")
        } else {
            text.into_owned()
        };
        let text = text.trim_end();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// Cuts `text` to at most `limit` bytes at a character boundary, marking the cut.
fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let cut = text.floor_char_boundary(limit);
    format!("{}{TRUNCATION_MARKER}", &text[..cut])
}

/// A `time` attribute as a duration: decimal seconds, maybe with `,` thousands separators
/// (Surefire in some locales). Anything else is no duration, never an error.
fn parse_seconds(value: &str) -> Option<Duration> {
    let value = value.trim();
    let seconds = if value.contains(',') {
        let (integer, fraction) = value.split_once('.').unwrap_or((value, ""));
        let mut groups = integer.split(',');
        let first = groups.next()?;
        if first.is_empty() || first.len() > 3 || !groups.all(|group| group.len() == 3) {
            return None;
        }
        let digits: String = integer.chars().filter(|c| *c != ',').collect();
        if fraction.is_empty() {
            digits
        } else {
            format!("{digits}.{fraction}")
        }
    } else {
        value.to_owned()
    };
    if !seconds.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None; // no signs, exponents, `inf` or `NaN`
    }
    Duration::try_from_secs_f64(seconds.parse().ok()?).ok()
}

fn add_time(total: &mut Option<Duration>, time: Option<Duration>) {
    if let Some(time) = time {
        *total = Some(total.unwrap_or_default().saturating_add(time));
    }
}

// --- The parser -------------------------------------------------------------------------------

/// What an open element means to the summary.
#[derive(Debug)]
enum Role {
    /// The `<testsuites>` root.
    Suites,
    /// A `<testsuite>`, the root or nested.
    Suite,
    /// A `<testcase>`.
    Case,
    /// A `<failure>` or `<error>` directly in a case: its body is the failure's detail.
    Failure,
    /// A case's own `<system-out>` or `<system-err>`.
    Output(Stream),
    /// Anything else; its text is skipped. The name is kept for error messages.
    Other(Box<str>),
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Out,
    Err,
}

#[derive(Debug)]
struct Frame {
    role: Role,
    /// Where the element opened, for "not closed" errors.
    line: u64,
}

impl Frame {
    fn name(&self) -> &str {
        match &self.role {
            Role::Suites => "testsuites",
            Role::Suite => "testsuite",
            Role::Case => "testcase",
            Role::Failure => "failure",
            Role::Output(Stream::Out) => "system-out",
            Role::Output(Stream::Err) => "system-err",
            Role::Other(name) => name,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Skipped,
    Failed(FailureKind),
}

/// The case being read. Reused from case to case so a passing case allocates little.
#[derive(Debug)]
struct CaseState {
    name: String,
    class: Option<String>,
    duration: Option<Duration>,
    outcome: Outcome,
    message: Option<String>,
    type_name: Option<String>,
    /// Whether this case would be kept in detail if it fails; if not, nothing is captured.
    keep_detail: bool,
    body: Capture,
    stdout: Capture,
    stderr: Capture,
}

/// Where text read from the report goes.
enum Sink<'a> {
    /// Outside the root element: only whitespace may be there.
    Outside { root_seen: bool },
    /// Inside the root, not wanted.
    Discard,
    /// Part of a failed case's detail.
    Keep(&'a mut Capture),
}

impl Sink<'_> {
    fn accept(&mut self, data: &[u8], at: Position) -> Result<(), JunitError> {
        match self {
            Self::Discard => Ok(()),
            Self::Keep(capture) => {
                capture.push(data);
                Ok(())
            }
            Self::Outside { root_seen } => {
                let Some(stray) = data.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')) else {
                    return Ok(());
                };
                let at = Position {
                    offset: at.offset + stray as u64,
                    line: at.line + memchr::memchr_iter(b'\n', &data[..stray]).count() as u64,
                };
                let found = &data[stray..data.len().min(stray + 24)];
                Err(at.malformed(if *root_seen {
                    format!("text after the root element: {:?}", String::from_utf8_lossy(found))
                } else if found.starts_with(&[0xFF, 0xFE]) || found.starts_with(&[0xFE, 0xFF]) {
                    "the report is UTF-16 encoded; only UTF-8 reports are supported".to_owned()
                } else {
                    format!(
                        "not an XML document: expected `<`, found {:?}",
                        String::from_utf8_lossy(found)
                    )
                }))
            }
        }
    }
}

struct Parser<'l> {
    limits: &'l JunitLimits,
    summary: JunitSummary,
    stack: Vec<Frame>,
    root_seen: bool,
    case: CaseState,
    case_time: Option<Duration>,
    suite_time: Option<Duration>,
    root_time: Option<Duration>,
    stats: ParseStats,
}

impl<'l> Parser<'l> {
    fn new(limits: &'l JunitLimits) -> Self {
        Self {
            limits,
            summary: JunitSummary::default(),
            stack: Vec::new(),
            root_seen: false,
            case: CaseState {
                name: String::new(),
                class: None,
                duration: None,
                outcome: Outcome::Passed,
                message: None,
                type_name: None,
                keep_detail: false,
                body: Capture::new(limits.max_output_bytes),
                stdout: Capture::new(limits.max_output_bytes),
                stderr: Capture::new(limits.max_output_bytes),
            },
            case_time: None,
            suite_time: None,
            root_time: None,
            stats: ParseStats::default(),
        }
    }

    fn run<R: Read>(mut self, xml: &mut Reader<Source<R>>) -> Result<(JunitSummary, ParseStats), JunitError> {
        let mut buffer = Vec::new();
        loop {
            self.pump(xml)?;
            let at = xml.get_ref().position();
            xml.get_mut().tag_start = Some(at.offset);
            self.stats.max_event_buffer = self.stats.max_event_buffer.max(buffer.capacity());
            buffer.clear();
            let event = xml.read_event_into(&mut buffer);
            xml.get_mut().tag_start = None;
            let event = event.map_err(|error| xml_error(xml.get_ref(), error, at))?;
            match event {
                Event::Start(tag) => self.open(&tag, at)?,
                Event::Empty(tag) => {
                    self.open(&tag, at)?;
                    self.close(at)?;
                }
                Event::End(_) => self.close(at)?,
                Event::Text(text) => self.sink().accept(text.as_bytes(), at)?,
                Event::CData(data) => self.sink().accept(data.as_bytes(), at)?,
                Event::GeneralRef(reference) => {
                    let resolved = resolve_reference(&reference, at)?;
                    let mut utf8 = [0; 4];
                    let text = match resolved {
                        Resolved::Char(c) => c.encode_utf8(&mut utf8),
                        Resolved::Str(s) => s,
                    };
                    self.sink().accept(text.as_bytes(), at)?;
                }
                Event::Decl(_) | Event::PI(_) | Event::DocType(_) | Event::Comment(_) => {}
                Event::Eof => return self.finish(at),
            }
        }
    }

    /// Where text at the current place in the report goes.
    fn sink(&mut self) -> Sink<'_> {
        let Some(frame) = self.stack.last() else {
            return Sink::Outside {
                root_seen: self.root_seen,
            };
        };
        if !self.case.keep_detail {
            return Sink::Discard;
        }
        match frame.role {
            Role::Failure => Sink::Keep(&mut self.case.body),
            Role::Output(Stream::Out) => Sink::Keep(&mut self.case.stdout),
            Role::Output(Stream::Err) => Sink::Keep(&mut self.case.stderr),
            _ => Sink::Discard,
        }
    }

    /// Streams the text (and CDATA sections) up to the next markup or entity reference into the
    /// current sink, so a body of any size goes through a fixed buffer.
    fn pump<R: Read>(&mut self, xml: &mut Reader<Source<R>>) -> Result<(), JunitError> {
        loop {
            let at = xml.get_ref().position();
            if at.offset == 0 {
                // A UTF-8 byte order mark may open the document.
                let bom = match xml.get_mut().peek(UTF8_BOM.len()) {
                    Ok(head) => head.starts_with(UTF8_BOM),
                    Err(error) => return Err(stream_error(xml.get_ref(), error, at)),
                };
                if bom {
                    xml.stream().consume(UTF8_BOM.len());
                    continue;
                }
            }
            let mut stream = xml.stream();
            let available = match stream.fill_buf() {
                Ok(available) => available,
                Err(error) => return Err(stream_error(stream.get_ref(), error, at)),
            };
            let text_len = match memchr::memchr2(b'<', b'&', available) {
                Some(0) if available[0] == b'&' => return Ok(()),
                Some(0) => {
                    let head = match stream.get_mut().peek(CDATA_OPEN.len()) {
                        Ok(head) => head,
                        Err(error) => return Err(stream_error(stream.get_ref(), error, at)),
                    };
                    if !head.starts_with(CDATA_OPEN) || self.stack.is_empty() {
                        return Ok(()); // markup, for the XML parser
                    }
                    stream.consume(CDATA_OPEN.len());
                    drop(stream);
                    self.pump_cdata(xml, at)?;
                    continue;
                }
                Some(text_len) => text_len,
                None => available.len(),
            };
            if text_len == 0 {
                return Ok(()); // end of input
            }
            let result = self.sink().accept(&available[..text_len], at);
            stream.consume(text_len);
            result?;
        }
    }

    /// Streams a CDATA section's content, after its `<![CDATA[`, into the current sink.
    fn pump_cdata<R: Read>(&mut self, xml: &mut Reader<Source<R>>, opened: Position) -> Result<(), JunitError> {
        loop {
            let at = xml.get_ref().position();
            let mut stream = xml.stream();
            let available = match stream.get_mut().peek(CDATA_CLOSE.len()) {
                Ok(available) => available,
                Err(error) => return Err(stream_error(stream.get_ref(), error, at)),
            };
            if available.len() < CDATA_CLOSE.len() {
                return Err(opened.malformed("unexpected end of file: a CDATA section is not closed (`]]>` missing)"));
            }
            let (text_len, close_len) = match memchr::memmem::find(available, CDATA_CLOSE) {
                Some(end) => (end, CDATA_CLOSE.len()),
                // Keep the last two bytes: they may be the start of a `]]>` split across reads.
                None => (available.len() - (CDATA_CLOSE.len() - 1), 0),
            };
            let result = self.sink().accept(&available[..text_len], at);
            stream.consume(text_len + close_len);
            result?;
            if close_len > 0 {
                return Ok(());
            }
        }
    }

    fn open(&mut self, tag: &BytesStart<'_>, at: Position) -> Result<(), JunitError> {
        let local_name = tag.local_name();
        let name = local_name.as_ref();
        let parent = self.stack.last().map(|frame| &frame.role);
        let role = match (parent, name) {
            (None, _) if self.root_seen => {
                return Err(at.malformed(format!(
                    "a second root element <{}>; a report has one <testsuites> or <testsuite> root",
                    name
                )));
            }
            (None, "testsuites") => Role::Suites,
            (None | Some(Role::Suites | Role::Suite), "testsuite") => Role::Suite,
            (None, _) => {
                return Err(at.malformed(format!(
                    "the root element is <{}>, expected <testsuites> or <testsuite>",
                    name
                )));
            }
            (Some(Role::Suites | Role::Suite), "testcase") => Role::Case,
            (Some(Role::Case), "failure") => Role::Failure,
            (Some(Role::Case), "error") => Role::Failure,
            (Some(Role::Case), "system-out") => Role::Output(Stream::Out),
            (Some(Role::Case), "system-err") => Role::Output(Stream::Err),
            // Also <skipped>, <properties>, suite-level output, and Surefire's and nextest's
            // <flakyFailure>/<rerunFailure>: reruns that do not decide the case's outcome.
            _ => Role::Other(name.into()),
        };
        let attributes = Attributes::read(tag, at)?;
        match (&role, name) {
            (Role::Suites, _) => self.root_time = attributes.time,
            (Role::Suite, _) => {
                self.summary.suites += 1;
                if matches!(parent, None | Some(Role::Suites)) {
                    add_time(&mut self.suite_time, attributes.time);
                }
            }
            (Role::Case, _) => self.start_case(attributes),
            (Role::Failure, kind) if !matches!(self.case.outcome, Outcome::Failed(_)) => {
                let kind = if kind == "error" {
                    FailureKind::Error
                } else {
                    FailureKind::Failure
                };
                self.case.outcome = Outcome::Failed(kind);
                let limit = self.limits.max_message_bytes;
                self.case.message = (attributes.message.as_deref().map(str::trim))
                    .filter(|message| !message.is_empty())
                    .map(|message| truncate(message, limit));
                self.case.type_name = attributes.type_name.map(|type_name| truncate(type_name.trim(), limit));
            }
            (Role::Other(_), "skipped")
                if matches!(parent, Some(Role::Case)) && self.case.outcome == Outcome::Passed =>
            {
                self.case.outcome = Outcome::Skipped;
            }
            _ => {}
        }
        self.root_seen = true;
        self.stack.push(Frame { role, line: at.line });
        Ok(())
    }

    fn start_case(&mut self, attributes: Attributes) {
        let limit = self.limits.max_message_bytes;
        let case = &mut self.case;
        case.name.clear();
        if let Some(name) = attributes.name {
            case.name.push_str(&truncate(&name, limit));
        }
        case.class = attributes.class.map(|class| truncate(&class, limit));
        case.duration = attributes.time;
        case.outcome = Outcome::Passed;
        case.message = None;
        case.type_name = None;
        case.keep_detail = self.summary.failed_cases.len() < self.limits.max_failed_cases;
        case.body.clear();
        case.stdout.clear();
        case.stderr.clear();
    }

    fn close(&mut self, at: Position) -> Result<(), JunitError> {
        let frame = self
            .stack
            .pop()
            .ok_or_else(|| at.malformed("a closing tag with no element open"))?;
        if let Role::Case = frame.role {
            self.finish_case();
        }
        Ok(())
    }

    fn finish_case(&mut self) {
        let summary = &mut self.summary;
        let case = &mut self.case;
        summary.tests += 1;
        add_time(&mut self.case_time, case.duration);
        let kind = match case.outcome {
            Outcome::Passed => return,
            Outcome::Skipped => {
                summary.skipped += 1;
                return;
            }
            Outcome::Failed(kind) => kind,
        };
        match kind {
            FailureKind::Failure => summary.failures += 1,
            FailureKind::Error => summary.errors += 1,
        }
        if !case.keep_detail {
            summary.failed_cases_omitted += 1;
            return;
        }
        let body = case.body.text();
        let message = case.message.take().or_else(|| {
            let first_line = body.as_deref()?.lines().map(str::trim).find(|line| !line.is_empty())?;
            Some(truncate(first_line, self.limits.max_message_bytes))
        });
        let output = assemble_output(
            [
                (None, body, case.body.truncated),
                (Some("--- system-out ---\n"), case.stdout.text(), case.stdout.truncated),
                (Some("--- system-err ---\n"), case.stderr.text(), case.stderr.truncated),
            ],
            self.limits.max_output_bytes,
        );
        summary.failed_cases.push(FailedCase {
            name: case.name.clone(),
            class: case.class.take(),
            kind,
            message,
            type_name: case.type_name.take(),
            output,
            duration: case.duration,
        });
    }

    fn finish(mut self, at: Position) -> Result<(JunitSummary, ParseStats), JunitError> {
        if let Some(frame) = self.stack.last() {
            return Err(at.malformed(format!(
                "unexpected end of file: <{}> opened on line {} is not closed (is the report truncated?)",
                frame.name(),
                frame.line
            )));
        }
        if !self.root_seen {
            return Err(at.malformed(if at.offset == 0 {
                "the report is empty"
            } else {
                "no root element: expected <testsuites> or <testsuite>"
            }));
        }
        self.summary.duration = self.case_time.or(self.root_time).or(self.suite_time);
        // The capture buffers are reused from case to case: their capacity is their high-water mark.
        let captures = [&self.case.body, &self.case.stdout, &self.case.stderr];
        self.stats.max_capture = captures
            .iter()
            .map(|capture| capture.bytes.capacity())
            .max()
            .unwrap_or(0);
        Ok((self.summary, self.stats))
    }
}

const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];
const CDATA_OPEN: &[u8] = b"<![CDATA[";
const CDATA_CLOSE: &[u8] = b"]]>";

/// Joins a failed case's output sections in priority order within `limit` bytes.
fn assemble_output<const N: usize>(
    sections: [(Option<&str>, Option<String>, bool); N],
    limit: usize,
) -> Option<String> {
    let mut output = String::new();
    for (heading, text, truncated) in sections {
        let Some(text) = text else { continue };
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(heading.unwrap_or_default());
        let room = limit.saturating_sub(output.len());
        let cut = text.floor_char_boundary(room);
        output.push_str(&text[..cut]);
        if cut < text.len() || truncated {
            output.push_str(TRUNCATION_MARKER);
            break;
        }
    }
    (!output.is_empty()).then_some(output)
}

/// The attributes the summary uses, decoded; every attribute is checked for bad entities.
#[derive(Debug, Default)]
struct Attributes {
    name: Option<String>,
    class: Option<String>,
    time: Option<Duration>,
    message: Option<String>,
    type_name: Option<String>,
}

impl Attributes {
    fn read(tag: &BytesStart<'_>, at: Position) -> Result<Self, JunitError> {
        let mut attributes = Self::default();
        let tag_name = || tag.local_name().as_ref().to_owned();
        for attribute in tag.attributes() {
            let attribute =
                attribute.map_err(|error| at.malformed(format!("bad attribute in <{}>: {error}", tag_name())))?;
            let value = attribute.normalized_value(XmlVersion::Implicit1_0).map_err(|error| {
                at.malformed(format!(
                    "bad value of attribute `{}` in <{}>: {error}",
                    attribute.key.as_ref(),
                    tag_name()
                ))
            })?;
            match attribute.key.as_ref() {
                "name" => attributes.name = Some(value.into_owned()),
                "classname" => attributes.class = Some(value.into_owned()),
                "time" => attributes.time = parse_seconds(&value),
                "message" => attributes.message = Some(value.into_owned()),
                "type" => attributes.type_name = Some(value.into_owned()).filter(|t| !t.trim().is_empty()),
                _ => {}
            }
        }
        Ok(attributes)
    }
}

enum Resolved {
    Char(char),
    Str(&'static str),
}

fn resolve_reference(reference: &BytesRef<'_>, at: Position) -> Result<Resolved, JunitError> {
    match reference.resolve_char_ref() {
        Ok(Some(c)) => Ok(Resolved::Char(c)),
        Ok(None) => quick_xml::escape::resolve_xml_entity(reference)
            .map(Resolved::Str)
            .ok_or_else(|| at.malformed(format!("unknown entity `&{};`", &**reference))),
        Err(error) => Err(at.malformed(format!("bad character reference `&{};`: {error}", &**reference))),
    }
}

/// Maps an error from the XML parser, which may be the source's own limit in disguise.
fn xml_error<R>(source: &Source<R>, error: quick_xml::Error, at: Position) -> JunitError {
    match error {
        quick_xml::Error::Io(error) => {
            let error =
                Arc::try_unwrap(error).unwrap_or_else(|shared| io::Error::new(shared.kind(), shared.to_string()));
            stream_error(source, error, at)
        }
        error => at.malformed(format!("invalid XML: {error}")),
    }
}

fn stream_error<R>(source: &Source<R>, error: io::Error, at: Position) -> JunitError {
    match source.stop {
        Some(Stop::TooLarge) => JunitError::TooLarge {
            path: None,
            bytes: source.read,
            limit: source.max_bytes,
        },
        Some(Stop::TagTooLarge) => at.malformed(format!(
            "a tag is larger than the limit of {} bytes (JunitLimits::max_tag_bytes)",
            source.max_tag_bytes
        )),
        None if error.kind() == io::ErrorKind::InvalidData => at.malformed(format!("invalid text: {error}")),
        None => JunitError::Io {
            path: None,
            source: error,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufWriter, Write as _};

    use super::*;

    const SUREFIRE: &str = include_str!("junit_fixtures/surefire.xml");
    const PYTEST: &str = include_str!("junit_fixtures/pytest.xml");
    const JEST: &str = include_str!("junit_fixtures/jest-junit.xml");
    const GO: &str = include_str!("junit_fixtures/go-junit-report.xml");
    const NEXTEST: &str = include_str!("junit_fixtures/nextest.xml");
    const FIXTURES: [&str; 5] = [SUREFIRE, PYTEST, JEST, GO, NEXTEST];

    fn parse(xml: &str) -> Result<JunitSummary, JunitError> {
        parse_report(xml.as_bytes(), &JunitLimits::default())
    }

    fn parse_ok(xml: &str) -> JunitSummary {
        parse(xml).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The malformation message and line, or a panic naming what parsed instead.
    fn malformed(xml: impl AsRef<[u8]>) -> (String, u64) {
        match parse_report(xml.as_ref(), &JunitLimits::default()) {
            Err(JunitError::Malformed { message, line, .. }) => (message, line),
            other => panic!("expected a Malformed error, got {other:?}"),
        }
    }

    fn counts(summary: &JunitSummary) -> [u64; 5] {
        [
            summary.suites,
            summary.tests,
            summary.failures,
            summary.errors,
            summary.skipped,
        ]
    }

    fn names(summary: &JunitSummary) -> Vec<&str> {
        summary.failed_cases.iter().map(|case| case.name.as_str()).collect()
    }

    fn millis(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    fn assert_close(actual: Option<Duration>, expected_ms: u64) {
        let actual = actual.expect("a duration").as_secs_f64() * 1000.0;
        assert!(
            (actual - expected_ms as f64).abs() < 0.01,
            "{actual} ms, expected {expected_ms} ms"
        );
    }

    #[test]
    fn surefire_report() {
        let summary = parse_ok(SUREFIRE);
        assert_eq!(counts(&summary), [1, 6, 1, 1, 1]);
        assert!(!summary.passed());
        assert_eq!(summary.passed_cases(), 3, "the flaky case passed on rerun");
        assert_eq!(names(&summary), ["appliesVatPerCountry", "rejectsNegativeAmounts"]);
        // Case times, one of them with a thousands separator.
        assert_close(summary.duration, 42 + 1_200_105 + 3 + 815 + 11);

        let vat = &summary.failed_cases[0];
        assert_eq!(vat.class.as_deref(), Some("com.example.billing.InvoiceServiceTest"));
        assert_eq!(vat.kind, FailureKind::Failure);
        assert_eq!(vat.message.as_deref(), Some("expected: <119.00> but was: <100.00>"));
        assert_eq!(vat.type_name.as_deref(), Some("org.opentest4j.AssertionFailedError"));
        assert_eq!(vat.duration, millis(1_200_105));
        let output = vat.output.as_deref().unwrap();
        assert!(
            output.starts_with("org.opentest4j.AssertionFailedError: expected: <119.00> but was: <100.00>\n\tat "),
            "{output}"
        );
        assert!(output.ends_with(
            "(InvoiceServiceTest.java:58)\n--- system-out ---\n12:00:01.123 [main] INFO  c.e.billing.InvoiceService - computing VAT for DE"
        ), "{output}");

        let npe = &summary.failed_cases[1];
        assert_eq!(npe.kind, FailureKind::Error);
        assert_eq!(
            npe.message.as_deref(),
            Some(r#"Cannot invoke "com.example.billing.TaxTable.rate(String)" because "this.taxes" is null"#)
        );
        assert_eq!(npe.type_name.as_deref(), Some("java.lang.NullPointerException"));
        let output = npe.output.as_deref().unwrap();
        assert!(
            output.starts_with("java.lang.NullPointerException: Cannot invoke \""),
            "{output}"
        );
        assert!(
            output.ends_with("\n--- system-err ---\nWARNING: tax table not loaded"),
            "{output}"
        );
    }

    #[test]
    fn pytest_report() {
        let summary = parse_ok(PYTEST);
        assert_eq!(counts(&summary), [1, 6, 1, 1, 2]);
        assert_eq!(names(&summary), ["test_rounding[2.675-2.68]", "test_currency_service"]);
        assert_close(summary.duration, 7);

        let rounding = &summary.failed_cases[0];
        assert_eq!(rounding.class.as_deref(), Some("tests.test_pricing"));
        assert_eq!(
            rounding.message.as_deref(),
            Some("AssertionError: assert 2.67 == 2.68\n +  where 2.67 = round_price(2.675)"),
            "a character reference is kept as the character, even a newline in an attribute"
        );
        assert_eq!(rounding.type_name, None);
        let output = rounding.output.as_deref().unwrap();
        assert!(
            output.contains("\n>       assert round_price(value) == expected\n"),
            "{output}"
        );
        assert!(
            output.ends_with(
                "tests/test_pricing.py:14: AssertionError\n--- system-out ---\n\
                 --------------------------------- Captured Log ---------------------------------\n\
                 DEBUG    pricing:pricing.py:22 rounding 2.675"
            ),
            "{output}"
        );

        let setup = &summary.failed_cases[1];
        assert_eq!(setup.kind, FailureKind::Error);
        assert_eq!(
            setup.message.as_deref(),
            Some(r#"failed on setup with "ConnectionRefusedError: [Errno 111] Connection refused""#)
        );
    }

    #[test]
    fn jest_junit_report() {
        let summary = parse_ok(JEST);
        assert_eq!(counts(&summary), [3, 5, 1, 1, 1]);
        assert_eq!(
            names(&summary),
            ["Cart computes the total with discounts", "src/checkout.test.js"]
        );
        assert_close(summary.duration, 6 + 13 + 21);

        // jest-junit writes no `message`: the body's first line stands in.
        let total = &summary.failed_cases[0];
        assert_eq!(
            total.message.as_deref(),
            Some("Error: expect(received).toBe(expected) // Object.is equality")
        );
        assert!(
            total
                .output
                .as_deref()
                .unwrap()
                .contains("Expected: 30\nReceived: 25\n")
        );

        let suite = &summary.failed_cases[1];
        assert_eq!(suite.kind, FailureKind::Error);
        assert_eq!(suite.class.as_deref(), Some("Test suite failed to run"));
        assert_eq!(suite.message.as_deref(), Some("● Test suite failed to run"));
        let output = suite.output.as_deref().unwrap();
        assert!(
            output.contains("Cannot find module './payment' from 'src/checkout.test.js'"),
            "{output}"
        );
        assert!(
            !output.contains("indexing"),
            "suite-level output is not a case's: {output}"
        );
    }

    #[test]
    fn go_junit_report() {
        let summary = parse_ok(GO);
        assert_eq!(counts(&summary), [3, 6, 2, 1, 1]);
        assert_eq!(
            names(&summary),
            ["TestTotal/with_discount", "TestTotal", "[build failed]"]
        );
        assert_close(summary.duration, 23);

        let subtest = &summary.failed_cases[0];
        assert_eq!(subtest.class.as_deref(), Some("github.com/acme/shop/cart"));
        assert_eq!(subtest.message.as_deref(), Some("Failed"));
        assert_eq!(
            subtest.output.as_deref(),
            Some("cart_test.go:42: Total() = 25, want 30")
        );
        assert_eq!(summary.failed_cases[1].output, None, "an empty CDATA body is no output");

        let build = &summary.failed_cases[2];
        assert_eq!(build.kind, FailureKind::Error);
        assert_eq!(build.message.as_deref(), Some("Build error"));
        assert_eq!(
            build.output.as_deref(),
            Some("payment/gateway.go:17:2: undefined: retryPolicy")
        );
    }

    #[test]
    fn nextest_report() {
        let summary = parse_ok(NEXTEST);
        assert_eq!(
            counts(&summary),
            [2, 5, 1, 0, 0],
            "a flaky test that passed on retry is no failure"
        );
        assert_eq!(names(&summary), ["tls::tests::rejects_expired_certificate"]);
        assert_close(summary.duration, 11 + 27 + 1204 + 1002 + 118);

        let tls = &summary.failed_cases[0];
        assert_eq!(tls.class.as_deref(), Some("baton-kit"));
        assert_eq!(tls.type_name.as_deref(), Some("test failure with exit code 101"));
        assert_eq!(
            tls.message.as_deref(),
            Some("thread 'tls::tests::rejects_expired_certificate' panicked at services/kit/src/tls.rs:88:9:")
        );
        let output = tls.output.as_deref().unwrap();
        let body = output.find("right: Err(Expired)").unwrap();
        let stdout = output.find("--- system-out ---\nrunning 1 test\n").unwrap();
        let stderr = output.find("--- system-err ---\nthread 'tls::tests").unwrap();
        assert!(body < stdout && stdout < stderr, "{output}");
    }

    /// Bytes one at a time: every token and CDATA delimiter gets split across reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            let Some(slot) = out.first_mut() else { return Ok(0) };
            *slot = first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn reading_in_tiny_pieces_gives_the_same_summary() {
        for fixture in FIXTURES {
            let trickled = parse_report(
                BufReader::with_capacity(1, Trickle(fixture.as_bytes())),
                &JunitLimits::default(),
            );
            assert_eq!(trickled.unwrap(), parse_ok(fixture));
        }
    }

    #[test]
    fn counts_cases_not_the_suites_claims() {
        let summary = parse_ok(
            r#"<testsuites tests="100" failures="0" errors="0">
                <testsuite name="outer" tests="1" failures="0">
                  <testsuite name="inner">
                    <testcase name="a"/>
                    <testcase name="b"><failure/></testcase>
                  </testsuite>
                  <testcase name="c"><skipped/><error message="late"/></testcase>
                  <testcase name="d"><failure message="first"/><error message="second"/></testcase>
                </testsuite>
              </testsuites>"#,
        );
        assert_eq!(counts(&summary), [2, 4, 2, 1, 0]);
        assert_eq!(names(&summary), ["b", "c", "d"]);
        assert_eq!(summary.failed_cases[0].message, None);
        assert_eq!(
            summary.failed_cases[1].kind,
            FailureKind::Error,
            "a failure outranks a skip"
        );
        assert_eq!(
            summary.failed_cases[2].kind,
            FailureKind::Failure,
            "the first failure decides"
        );
        assert_eq!(summary.failed_cases[2].message.as_deref(), Some("first"));
        assert_eq!(summary.duration, None);
    }

    #[test]
    fn bare_testsuite_root_and_surefire_reruns() {
        let summary = parse_ok(
            r#"<?xml version="1.0"?>
            <!-- generated -->
            <testsuite name="s" time="2.5">
              <testcase name="flaky"><flakyFailure message="m"/><flakyError message="e"/></testcase>
              <testcase name="broken"><failure message="third try"/><rerunFailure message="first"/><rerunFailure/></testcase>
              <testcase name="namespaced"><x:failure xmlns:x="urn:x" message="prefixes are ignored"/></testcase>
            </testsuite>"#,
        );
        assert_eq!(counts(&summary), [1, 3, 2, 0, 0]);
        assert_eq!(summary.failed_cases[0].message.as_deref(), Some("third try"));
        assert_eq!(summary.duration, millis(2500), "no case time: the suite's");
    }

    #[test]
    fn an_empty_root_is_an_empty_passing_run() {
        for xml in [
            "<testsuites/>",
            "\u{feff}<testsuite name=\"none\" tests=\"0\"></testsuite>\n",
        ] {
            let summary = parse_ok(xml);
            assert_eq!(
                summary,
                JunitSummary {
                    suites: summary.suites,
                    ..JunitSummary::default()
                }
            );
            assert!(summary.passed());
        }
    }

    #[test]
    fn durations_fall_back_and_tolerate_odd_times() {
        let root =
            parse_ok(r#"<testsuites time="9"><testsuite time="4"><testcase time="x"/></testsuite></testsuites>"#);
        assert_eq!(root.duration, millis(9_000));
        let suites = parse_ok(
            r#"<testsuites><testsuite time="1.5"><testsuite time="1"/></testsuite><testsuite time="2"/></testsuites>"#,
        );
        assert_eq!(
            suites.duration,
            millis(3_500),
            "nested suites are inside their parent's time"
        );

        assert_eq!(parse_seconds("0.25"), millis(250));
        assert_eq!(parse_seconds(" 12 "), millis(12_000));
        assert_eq!(parse_seconds("1,234.5"), millis(1_234_500));
        assert_eq!(parse_seconds("12,345,678"), millis(12_345_678_000));
        for odd in [
            "", "0,5", "1,23.4", ",123", "-1", "+1", "1e3", "NaN", "inf", "1.2.3", "PT1S", "١",
        ] {
            assert_eq!(parse_seconds(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn entities_are_decoded_everywhere() {
        let summary = parse_ok(
            "<testsuite><testcase name=\"a&amp;b &#x3C;&#62;\" classname=\"&quot;q&apos;\">\
             <failure message=\"x &lt; y\">body &lt;tag&gt; &#x1F600; &amp;&amp; <![CDATA[&lt; raw]]></failure>\
             </testcase></testsuite>",
        );
        let case = &summary.failed_cases[0];
        assert_eq!(case.name, "a&b <>");
        assert_eq!(case.class.as_deref(), Some("\"q'"));
        assert_eq!(case.message.as_deref(), Some("x < y"));
        assert_eq!(case.output.as_deref(), Some("body <tag> 😀 && &lt; raw"));
    }

    #[test]
    fn line_ends_are_normalised_and_bad_utf8_replaced() {
        let summary = parse_report(
            &b"<testsuite><testcase name=\"a\"><failure>one\r\ntwo\rthree \xFF\xFE end</failure></testcase></testsuite>"[..],
            &JunitLimits::default(),
        )
        .unwrap();
        assert_eq!(
            summary.failed_cases[0].output.as_deref(),
            Some("one\ntwo\nthree \u{FFFD}\u{FFFD} end")
        );
    }

    fn failing_cases(count: usize, body: &str) -> String {
        let mut xml = String::from("<testsuite>");
        for i in 0..count {
            xml.push_str(&format!(
                r#"<testcase name="t{i}"><failure message="m{i}">{body}</failure></testcase>"#
            ));
        }
        xml + "</testsuite>"
    }

    #[test]
    fn keeps_only_the_first_failed_cases() {
        let limits = JunitLimits {
            max_failed_cases: 2,
            ..JunitLimits::default()
        };
        let summary = parse_report(failing_cases(5, "trace").as_bytes(), &limits).unwrap();
        assert_eq!(summary.failures, 5);
        assert_eq!(names(&summary), ["t0", "t1"]);
        assert_eq!(summary.failed_cases_omitted, 3);

        let none = JunitLimits {
            max_failed_cases: 0,
            ..JunitLimits::default()
        };
        let summary = parse_report(failing_cases(3, "trace").as_bytes(), &none).unwrap();
        assert_eq!(
            (
                summary.failures,
                summary.failed_cases.len(),
                summary.failed_cases_omitted
            ),
            (3, 0, 3)
        );
    }

    #[test]
    fn truncates_messages_and_output_at_char_boundaries() {
        let limits = JunitLimits {
            max_message_bytes: 10,
            max_output_bytes: 40,
            ..JunitLimits::default()
        };
        let long = "é".repeat(50); // two bytes each
        let xml = format!(
            r#"<testsuite><testcase name="{long}"><failure message="{long}">{long}</failure>
               <system-out>{long}</system-out></testcase>
               <testcase name="b"><error>short body</error><system-out>{long}</system-out></testcase></testsuite>"#
        );
        let summary = parse_report(xml.as_bytes(), &limits).unwrap();
        let first = &summary.failed_cases[0];
        let cut = format!("{}{TRUNCATION_MARKER}", "é".repeat(5));
        assert_eq!(first.name, cut);
        assert_eq!(first.message.as_deref(), Some(cut.as_str()));
        assert_eq!(
            first.output,
            Some(format!("{}{TRUNCATION_MARKER}", "é".repeat(20))),
            "the body comes first"
        );

        let second = &summary.failed_cases[1];
        assert_eq!(second.message.as_deref(), Some("short body"));
        let output = second.output.as_deref().unwrap();
        assert_eq!(
            output,
            format!("short body\n--- system-out ---\n{}{TRUNCATION_MARKER}", "é".repeat(5))
        );
    }

    #[test]
    fn malformed_reports_are_errors_with_a_position() {
        let cases: [(&[u8], &str); 18] = [
            (b"", "the report is empty"),
            (b" \n\t ", "no root element"),
            (
                b"Tests passed: 12, failed: 0",
                "not an XML document: expected `<`, found \"Tests passed",
            ),
            (b"\x7fELF\x02\x01\x01\x00\x00\x00", "not an XML document"),
            (b"\xFF\xFE<\x00t\x00", "UTF-16"),
            (b"{\"tests\": 3}", "not an XML document"),
            (b"<html><body>404</body></html>", "the root element is <html>"),
            (
                b"<testsuite><testcase name=\"a\">",
                "<testcase> opened on line 1 is not closed",
            ),
            (
                b"<testsuite><testcase name=\"a\"></testsuite>",
                "expected `</testcase>`, but `</testsuite>` was found",
            ),
            (b"<testsuite><testcase name=\"a", "invalid XML"),
            (
                b"<testsuite></testsuite><testsuite/>",
                "a second root element <testsuite>",
            ),
            (b"<testsuite/>trailing", "text after the root element"),
            (
                b"<testsuite><testcase><failure>&nbsp;</failure></testcase></testsuite>",
                "unknown entity `&nbsp;`",
            ),
            (b"<testsuite>&#0;</testsuite>", "bad character reference `&#0;`"),
            (b"<testsuite>a & b</testsuite>", "invalid XML"),
            (
                b"<testsuite name=\"&bogus;\"/>",
                "bad value of attribute `name` in <testsuite>",
            ),
            (b"<testsuite a=\"1\" a=\"2\"/>", "bad attribute in <testsuite>"),
            (
                b"<testsuite><system-out><![CDATA[never closed",
                "a CDATA section is not closed",
            ),
        ];
        for (xml, expected) in cases {
            let (message, _) = malformed(xml);
            assert!(
                message.contains(expected),
                "{:?}: {message:?} lacks {expected:?}",
                String::from_utf8_lossy(xml)
            );
        }
    }

    #[test]
    fn errors_point_at_the_offending_line() {
        let (message, line) = malformed("<testsuites>\n  <testsuite>\n    <testcase name=\"a\">\n  </testsuite>\n");
        assert!(message.contains("`</testsuite>` was found"), "{message}");
        assert_eq!(line, 4);
        let (_, line) = malformed("<testsuite>\n\n  <!-- x -->\n  <failure>&oops;</failure></testsuite>");
        assert_eq!(line, 4);
        // The first `&gt` of the pytest fixture opens its fifth line.
        let error = parse(PYTEST.replace("&gt;", "&gt").as_str()).unwrap_err();
        assert_eq!(error.metric_label(), "malformed");
        let text = error.to_string();
        assert!(
            text.starts_with("malformed JUnit report <stream>, line 5 (byte "),
            "{text}"
        );
    }

    #[test]
    fn a_truncated_report_is_never_a_panic_or_a_success() {
        for fixture in FIXTURES {
            let end = fixture.trim_end().rfind('<').unwrap();
            for cut in (0..end).filter(|cut| fixture.is_char_boundary(*cut)) {
                let error = parse(&fixture[..cut]).expect_err("a truncated report");
                assert!(matches!(error, JunitError::Malformed { .. }), "cut at {cut}: {error:?}");
            }
        }
    }

    #[test]
    fn a_tag_over_the_tag_limit_is_refused() {
        let limits = JunitLimits {
            max_tag_bytes: 1024,
            ..JunitLimits::default()
        };
        let xml = format!(r#"<testsuite><testcase name="{}"/></testsuite>"#, "n".repeat(4096));
        match parse_report(xml.as_bytes(), &limits) {
            Err(JunitError::Malformed { message, offset, .. }) => {
                assert!(message.contains("max_tag_bytes"), "{message}");
                assert_eq!(offset, 11);
            }
            other => panic!("{other:?}"),
        }
        // Text is streamed, so it is not held to the tag limit.
        let xml = format!("<testsuite><system-out>{}</system-out></testsuite>", "o".repeat(4096));
        assert_eq!(parse_report(xml.as_bytes(), &limits).unwrap().suites, 1);
    }

    #[test]
    fn read_report_checks_the_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        let missing = read_report(&path, &JunitLimits::default()).unwrap_err();
        assert!(
            matches!(&missing, JunitError::Missing { path: p } if *p == path),
            "{missing:?}"
        );
        assert!(missing.to_string().contains("does not exist"));

        std::fs::write(&path, SUREFIRE).unwrap();
        let summary = read_report(&path, &JunitLimits::default()).unwrap();
        assert_eq!(summary, parse_ok(SUREFIRE));

        let small = JunitLimits {
            max_bytes: 100,
            ..JunitLimits::default()
        };
        match read_report(&path, &small) {
            Err(JunitError::TooLarge {
                path: Some(p),
                bytes,
                limit: 100,
            }) => {
                assert_eq!((p, bytes), (path.clone(), SUREFIRE.len() as u64));
            }
            other => panic!("{other:?}"),
        }
        // A stream is held to the same limit as it is read.
        match parse_report(SUREFIRE.as_bytes(), &small) {
            Err(
                error @ JunitError::TooLarge {
                    path: None, limit: 100, ..
                },
            ) => {
                assert_eq!(error.metric_label(), "too_large");
            }
            other => panic!("{other:?}"),
        }

        std::fs::write(&path, "<testsuite>").unwrap();
        match read_report(&path, &JunitLimits::default()) {
            Err(error @ JunitError::Malformed { path: Some(_), .. }) => {
                assert!(error.to_string().contains("junit.xml, line 1 (byte 11)"), "{error}");
            }
            other => panic!("{other:?}"),
        }

        let not_a_file = read_report(dir.path(), &JunitLimits::default()).unwrap_err();
        assert!(
            matches!(not_a_file, JunitError::Io { path: Some(_), .. }),
            "{not_a_file:?}"
        );
    }

    /// Roughly 55 MB: many passing cases with large `<system-out>` (half CDATA, half escaped
    /// text), plus failed and skipped cases whose bodies are a megabyte long.
    fn write_huge_report(path: &Path) -> io::Result<u64> {
        const PASSING: usize = 40_000;
        let line = "2025-03-14T09:45:00Z DEBUG pool: connection 42 checked out &amp; returned in 3ms\n";
        let blob = line.repeat(12); // ~1 KB
        let huge = "E at com.example.Deep.call(Deep.java:1) &lt;generated&gt;\n".repeat(16_000); // ~1 MB
        let mut out = BufWriter::new(File::create(path)?);
        writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(out, r#"<testsuites tests="1" failures="0">"#)?;
        for suite in 0..4 {
            writeln!(out, r#"  <testsuite name="suite-{suite}" tests="0">"#)?;
            for case in 0..PASSING / 4 {
                write!(
                    out,
                    r#"    <testcase name="case-{case}" classname="pkg.Suite{suite}" time="0.001">"#
                )?;
                if case % 2 == 0 {
                    write!(out, "<system-out><![CDATA[{blob}]]></system-out>")?;
                } else {
                    write!(out, "<system-out>{blob}</system-out><system-err>{line}</system-err>")?;
                }
                writeln!(out, "</testcase>")?;
            }
            write!(
                out,
                r#"    <testcase name="fails-{suite}" time="1"><failure message="boom {suite}">"#
            )?;
            if suite % 2 == 0 {
                write!(out, "<![CDATA[{huge}]]>")?;
            } else {
                write!(out, "{huge}")?;
            }
            writeln!(out, "</failure><system-out>{huge}</system-out></testcase>")?;
            writeln!(
                out,
                r#"    <testcase name="skips-{suite}"><skipped/><system-out>{huge}</system-out></testcase>"#
            )?;
            writeln!(out, "  </testsuite>")?;
        }
        writeln!(out, "</testsuites>")?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
        Ok(std::fs::metadata(path)?.len())
    }

    #[test]
    fn a_50_megabyte_report_is_read_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.xml");
        let size = write_huge_report(&path).unwrap();
        assert!(size > 50 * 1024 * 1024, "{size} bytes");

        let limits = JunitLimits::default();
        let file = BufReader::new(File::open(&path).unwrap());
        let (summary, stats) = parse_with_stats(file, &limits).unwrap();
        assert_eq!(counts(&summary), [4, 40_008, 4, 0, 4]);
        assert_eq!(names(&summary), ["fails-0", "fails-1", "fails-2", "fails-3"]);
        assert_close(summary.duration, 40_000 + 4_000);
        for (suite, case) in summary.failed_cases.iter().enumerate() {
            assert_eq!(case.message, Some(format!("boom {suite}")));
            let output = case.output.as_deref().unwrap();
            assert!(
                output.starts_with("E at com.example.Deep.call(Deep.java:1) "),
                "{}",
                &output[..80]
            );
            assert!(output.ends_with(TRUNCATION_MARKER));
            assert!(output.len() <= limits.max_output_bytes + TRUNCATION_MARKER.len());
            let expected = if suite % 2 == 0 {
                "&lt;generated&gt;"
            } else {
                "<generated>"
            };
            assert!(output.contains(expected), "CDATA is raw, text is decoded");
        }
        // What was held at once: one tag, and a few KiB per failed case.
        assert!(stats.max_event_buffer <= 4096, "{stats:?}");
        assert!(stats.max_capture <= 2 * limits.max_output_bytes, "{stats:?}");

        // The same file is refused outright under a smaller limit.
        let small = JunitLimits {
            max_bytes: 10_000_000,
            ..JunitLimits::default()
        };
        assert!(matches!(read_report(&path, &small), Err(JunitError::TooLarge { bytes, .. }) if bytes == size));
    }
}
