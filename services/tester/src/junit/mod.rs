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
//! [`JunitLimits::max_tag_bytes`]. A file larger than [`JunitLimits::max_bytes`] is refused, and
//! so is a read that takes longer than [`JunitLimits::max_read_time`].
//!
//! The report's path is written by the test step, so it is untrusted: only a regular file is
//! read. A FIFO, device or socket (or a symlink to one) would block the reading thread forever or
//! read without end, so [`read_report`] opens without blocking, checks what it opened, and
//! refuses anything else with [`JunitError::NotAFile`].
//!
//! The report's bytes come in through `source` (read-ahead, line counting, the size and tag
//! limits), what is kept of a failed case is held by `capture` (bounded prefixes cut at character
//! boundaries), and `parser` turns the XML into the summary.

use std::fs::{FileType, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;

use quick_xml::reader::Reader;

mod capture;
mod parser;
mod source;

use parser::Parser;
use source::Source;

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
    /// Names of passed cases kept in [`JunitSummary::passed_names`] (for the test-result
    /// attestation); later ones are only counted.
    pub max_passed_names: usize,
    /// Bytes kept of a failure message, and of a failed case's name and class.
    pub max_message_bytes: usize,
    /// Bytes kept of a failed case's output: the failure body (stack trace), then its
    /// `<system-out>`, then its `<system-err>`, in that order of priority.
    pub max_output_bytes: usize,
    /// Bytes allowed in one tag, comment or declaration, which the XML parser holds whole (a
    /// failure `message` attribute with a megabyte of assertion diff, say). Text and CDATA are
    /// streamed and not subject to this.
    pub max_tag_bytes: usize,
    /// How long reading one report may take. A report is read from a regular file, which never
    /// blocks for long, but a slow or stalled file system must not hold the tester either.
    pub max_read_time: Duration,
}

impl Default for JunitLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_failed_cases: 100,
            max_passed_names: 1000,
            max_message_bytes: 2 * 1024,
            max_output_bytes: 4 * 1024,
            max_tag_bytes: 16 * 1024 * 1024,
            max_read_time: Duration::from_secs(60),
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
    /// The names of the first [`JunitLimits::max_passed_names`] passed cases, in report order,
    /// as [`case_name`] writes them.
    pub passed_names: Vec<String>,
    /// Passed cases beyond those named in `passed_names`.
    pub passed_names_omitted: u64,
}

/// A case's name as attestations list it: `<class>.<name>` when the report gives a class (JUnit's
/// `classname`), else its name.
pub fn case_name(class: Option<&str>, name: &str) -> String {
    match class {
        Some(class) if !class.is_empty() => format!("{class}.{name}"),
        _ => name.to_owned(),
    }
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
    /// The report path names something other than a regular file: a FIFO, a device, a socket
    /// or a directory, directly or through a symlink. Reading one could block forever.
    #[error(
        "JUnit report {} is {kind}, not a regular file; the test step must write the report as a file",
        .path.display()
    )]
    NotAFile {
        /// The path looked at.
        path: PathBuf,
        /// What the path is, for the message: `a FIFO (named pipe)`, `a character device`, ….
        kind: &'static str,
    },
    /// Reading the report took longer than [`JunitLimits::max_read_time`].
    #[error(
        "JUnit report {} was not read within its time limit of {} s",
        display_source(.path.as_deref()),
        .limit.as_secs_f64()
    )]
    TimedOut {
        /// The report's path, if it was read from a file.
        path: Option<PathBuf>,
        /// [`JunitLimits::max_read_time`].
        limit: Duration,
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
            Self::NotAFile { .. } => "not_a_file",
            Self::TimedOut { .. } => "timed_out",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::Io { .. } => "io",
        }
    }

    /// Attaches the report's path to an error raised while parsing its contents.
    fn with_path(mut self, report: &Path) -> Self {
        match &mut self {
            Self::Missing { .. } | Self::NotAFile { .. } => {}
            Self::TimedOut { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Malformed { path, .. }
            | Self::Io { path, .. } => {
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
/// file's size, and so is the time it takes.
///
/// Only a regular file (or a symlink to one) is read. The file is opened with `O_NONBLOCK`, so a
/// FIFO or device swapped in at the path cannot block the open, and what was opened is checked
/// with `fstat` before a byte is read: there is no window between the check and the read.
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
    let not_a_file = |file_type: FileType| match non_file_kind(file_type) {
        Some(kind) => Err(JunitError::NotAFile {
            path: path.to_path_buf(),
            kind,
        }),
        None => Ok(()),
    };
    // Refuse what is plainly not a file before opening it: opening a device can have effects.
    not_a_file(std::fs::metadata(path).map_err(io_error)?.file_type())?;
    // The path may have changed since: open without blocking, then judge what was opened.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    not_a_file(metadata.file_type())?;
    if metadata.len() > limits.max_bytes {
        return Err(JunitError::TooLarge {
            path: Some(path.to_path_buf()),
            bytes: metadata.len(),
            limit: limits.max_bytes,
        });
    }
    parse_report(BufReader::new(file), limits).map_err(|error| error.with_path(path))
}

/// What a non-regular file is, for [`JunitError::NotAFile`]; `None` for a regular file.
fn non_file_kind(file_type: FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if file_type.is_char_device() {
        Some("a character device")
    } else if file_type.is_block_device() {
        Some("a block device")
    } else if file_type.is_socket() {
        Some("a socket")
    } else if file_type.is_dir() {
        Some("a directory")
    } else {
        Some("an unknown kind of file")
    }
}

/// Parses a JUnit report from `reader`, streaming it. A stream longer than
/// [`JunitLimits::max_bytes`] is refused with [`JunitError::TooLarge`], and one still being read
/// after [`JunitLimits::max_read_time`] with [`JunitError::TimedOut`] (checked between reads: a
/// single read that never returns is the caller's to bound).
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{BufWriter, Write as _};

    use super::*;

    // The real tools' reports and the helpers below serve the submodules' tests too.
    const SUREFIRE: &str = include_str!("fixtures/surefire.xml");
    pub(super) const PYTEST: &str = include_str!("fixtures/pytest.xml");
    const JEST: &str = include_str!("fixtures/jest-junit.xml");
    const GO: &str = include_str!("fixtures/go-junit-report.xml");
    const NEXTEST: &str = include_str!("fixtures/nextest.xml");
    pub(super) const FIXTURES: [&str; 5] = [SUREFIRE, PYTEST, JEST, GO, NEXTEST];

    pub(super) fn parse(xml: &str) -> Result<JunitSummary, JunitError> {
        parse_report(xml.as_bytes(), &JunitLimits::default())
    }

    pub(super) fn parse_ok(xml: &str) -> JunitSummary {
        parse(xml).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The malformation message and line, or a panic naming what parsed instead.
    pub(super) fn malformed(xml: impl AsRef<[u8]>) -> (String, u64) {
        match parse_report(xml.as_ref(), &JunitLimits::default()) {
            Err(JunitError::Malformed { message, line, .. }) => (message, line),
            other => panic!("expected a Malformed error, got {other:?}"),
        }
    }

    pub(super) fn counts(summary: &JunitSummary) -> [u64; 5] {
        [
            summary.suites,
            summary.tests,
            summary.failures,
            summary.errors,
            summary.skipped,
        ]
    }

    pub(super) fn names(summary: &JunitSummary) -> Vec<&str> {
        summary.failed_cases.iter().map(|case| case.name.as_str()).collect()
    }

    pub(super) fn millis(ms: u64) -> Option<Duration> {
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
            matches!(
                not_a_file,
                JunitError::NotAFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{not_a_file:?}"
        );
    }

    /// `read_report` on a thread, waited for a few seconds at most: a report path that blocks
    /// the reader fails the test instead of hanging it.
    fn read_report_promptly(path: &Path) -> Result<JunitSummary, JunitError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || sender.send(read_report(&path, &JunitLimits::default())));
        receiver
            .recv_timeout(Duration::from_secs(5))
            .expect("reading the report blocked")
    }

    #[test]
    fn a_fifo_or_device_at_the_report_path_is_refused_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("junit.xml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let error = read_report_promptly(&fifo).unwrap_err();
        assert!(
            matches!(&error, JunitError::NotAFile { path, kind: "a FIFO (named pipe)" } if *path == fifo),
            "{error:?}"
        );
        assert_eq!(error.metric_label(), "not_a_file");
        assert_eq!(
            error.to_string(),
            format!(
                "JUnit report {} is a FIFO (named pipe), not a regular file; the test step must write the report as a file",
                fifo.display()
            )
        );

        // Through a symlink, the path named is the one the step declared.
        let link = dir.path().join("reports.xml");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let error = read_report_promptly(&link).unwrap_err();
        assert!(
            matches!(&error, JunitError::NotAFile { path, kind: "a FIFO (named pipe)" } if *path == link),
            "{error:?}"
        );

        // A device reads without end (or nothing at all): refused the same way.
        let device = dir.path().join("zero.xml");
        std::os::unix::fs::symlink("/dev/zero", &device).unwrap();
        let error = read_report_promptly(&device).unwrap_err();
        assert!(
            matches!(
                &error,
                JunitError::NotAFile {
                    kind: "a character device",
                    ..
                }
            ),
            "{error:?}"
        );

        // A symlink to a regular file is still read.
        let report = dir.path().join("surefire.xml");
        std::fs::write(&report, SUREFIRE).unwrap();
        let latest = dir.path().join("latest.xml");
        std::os::unix::fs::symlink(&report, &latest).unwrap();
        assert_eq!(read_report_promptly(&latest).unwrap(), parse_ok(SUREFIRE));
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
